//! The thin tokio shell around the state machine.
//!
//! One `select!` only *converts* what happens (signals, notify datagrams, SIGCHLD, the next
//! deadline) into [`Event`]s; [`Supervisor::handle`] decides; [`Driver::apply`] performs the
//! resulting actions. Runs on a current-thread runtime on the main thread, which is also the
//! thread that forks (PR_SET_PDEATHSIG is tied to the forking thread).

use std::collections::HashMap;
use std::ffi::OsString;
use std::future::poll_fn;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::task::Poll;
use std::time::Instant;

use handoff_core::notify::parse_notify;
use handoff_core::signal::Signal;
use handoff_core::supervisor::{
    Action, Event, GenId, Phase, Report, StartReason, Supervisor, Target,
};
use handoff_sys::listeners::Listener;
use handoff_sys::notify_socket::{NotifySocket, Received, RuntimeDir};
use handoff_sys::spawn::Creds;
use handoff_sys::{kill, procfs, reaper, spawn};
use sd_notify::NotifyState;
use serde_json::{json, Value};
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::control::{self, Command, Incoming};
use crate::sdnotify::SdNotify;
use crate::{logging, pidfile};

/// What the child runs and with which environment, fixed at start-up.
pub struct ChildSpec {
    pub program: PathBuf,
    pub argv: Vec<OsString>,
    /// handoff's environment minus the variables that describe handoff's own sockets.
    pub base_env: Vec<(OsString, OsString)>,
    /// `--user`/`--group`, resolved.
    pub creds: Option<Creds>,
}

/// The control sockets handoff listens on.
#[derive(Default)]
pub struct ControlSockets {
    pub listeners: Vec<std::os::unix::net::UnixListener>,
    /// The socket file, removed at exit.
    pub file: Option<control::SocketFile>,
}

/// The optional operational pieces of a run.
pub struct Extras {
    pub control: ControlSockets,
    pub pid_file: Option<pidfile::Written>,
    pub sd: Option<SdNotify>,
    pub watcher: Option<Watcher>,
    pub probe: Option<String>,
}

/// `--watch`: the file watcher (kept alive) and its events.
pub struct Watcher {
    _inner: notify::RecommendedWatcher,
    rx: mpsc::UnboundedReceiver<()>,
}

/// The outcome of the last reload, for `status`.
struct LastReload {
    gen: GenId,
    ok: bool,
    duration: std::time::Duration,
    message: String,
    at: Instant,
}

pub struct Driver {
    sup: Supervisor,
    listeners: Vec<Listener>,
    child: ChildSpec,
    runtime_dir: RuntimeDir,
    notify: HashMap<GenId, AsyncFd<NotifySocket>>,
    /// Notify messages from strangers ignored so far (logged sparsely: a flood must not
    /// turn into a log flood).
    ignored_notify: u64,
    /// When the last READY=1 was received, to measure the hand-over (ready → stop signal).
    ready_rx: Option<Instant>,
    /// When the last reload request arrived, to measure request → spawned.
    reload_rx: Option<Instant>,
    /// When the last signal was sent (for the hand-over latency).
    signal_sent: Option<Instant>,
    /// Set by `Action::Exit`.
    exit: Option<i32>,
    extras: Extras,
    started: Instant,
    /// `handoff reload` clients waiting for the reload that will start next.
    pending_waiters: Vec<oneshot::Sender<String>>,
    /// ... and those waiting for a reload in flight, by generation.
    waiters: HashMap<GenId, Vec<oneshot::Sender<String>>>,
    /// Why a generation failed, for the reload reply.
    fail_reasons: HashMap<GenId, String>,
    last_reload: Option<LastReload>,
    /// Running `--ready-probe` processes: pid → generation.
    probes: HashMap<u32, GenId>,
    /// READY=1 already sent to our own service manager.
    sd_ready: bool,
}

impl Driver {
    pub fn new(
        sup: Supervisor,
        listeners: Vec<Listener>,
        child: ChildSpec,
        runtime_dir: RuntimeDir,
        extras: Extras,
    ) -> Self {
        Self {
            sup,
            listeners,
            child,
            runtime_dir,
            notify: HashMap::new(),
            ignored_notify: 0,
            ready_rx: None,
            reload_rx: None,
            signal_sent: None,
            exit: None,
            extras,
            started: Instant::now(),
            pending_waiters: Vec::new(),
            waiters: HashMap::new(),
            fail_reasons: HashMap::new(),
            last_reload: None,
            probes: HashMap::new(),
            sd_ready: false,
        }
    }

    /// Run until the state machine says to exit; returns the exit code.
    pub async fn run(mut self, mut sig: Signals) -> i32 {
        let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel::<Incoming>();
        for l in std::mem::take(&mut self.extras.control.listeners) {
            tokio::spawn(control::serve(l, ctl_tx.clone()));
        }
        drop(ctl_tx);
        let mut watch_rx = self
            .extras
            .watcher
            .as_mut()
            .map(|w| std::mem::replace(&mut w.rx, mpsc::unbounded_channel().1));
        // The watchdog is fed from this loop: if the loop stalls, systemd notices.
        let mut watchdog = self
            .extras
            .sd
            .as_ref()
            .and_then(|s| s.watchdog)
            .map(tokio::time::interval);
        loop {
            self.drain_actions();
            if let Some(code) = self.exit {
                self.cleanup();
                return code;
            }
            let deadline = self.sup.poll_timeout();
            let leaders = self.leaders();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            // `biased`: notify datagrams first, so a READY=1 sent just before a child exits
            // is handled before its exit.
            tokio::select! {
                biased;
                msgs = poll_notify(&self.notify, &leaders) => {
                    for m in msgs {
                        self.on_datagram(m);
                    }
                }
                _ = sig.chld.recv() => self.reap(),
                _ = sig.hup.recv() => {
                    self.reload_rx = Some(Instant::now());
                    self.handle(Event::Reload);
                }
                _ = sig.term.recv() => self.handle(Event::Shutdown { signal: Signal::TERM }),
                _ = sig.int.recv() => self.handle(Event::Shutdown { signal: Signal::INT }),
                _ = sig.usr1.recv() => self.handle(Event::Forward { signal: Signal::USR1 }),
                _ = sig.usr2.recv() => self.handle(Event::Forward { signal: Signal::USR2 }),
                Some(inc) = ctl_rx.recv() => self.on_control(inc),
                Some(()) = recv_opt(&mut watch_rx) => {
                    while let Some(Ok(())) = watch_rx.as_mut().map(|r| r.try_recv()) {}
                    self.handle(Event::FileChanged);
                }
                _ = tick_opt(&mut watchdog) => {
                    if let Some(sd) = &self.extras.sd {
                        sd.send(&[NotifyState::Watchdog]);
                    }
                }
                _ = sleep => self.handle(Event::Timeout),
            }
        }
    }

    fn handle(&mut self, ev: Event) {
        self.sup.handle(ev, Instant::now());
    }

    /// Perform queued actions until none is left.
    fn drain_actions(&mut self) {
        while let Some(a) = self.sup.poll_action() {
            self.apply(a);
        }
    }

    fn apply(&mut self, action: Action) {
        match action {
            Action::Spawn { gen } => {
                if self.sup.start_reason(gen) == Some(StartReason::Reload) {
                    // `handoff reload` clients waiting for "the next reload" wait for this one.
                    let w = std::mem::take(&mut self.pending_waiters);
                    self.waiters.entry(gen).or_default().extend(w);
                    if let Some(sd) = &self.extras.sd {
                        sd.reloading(&format!("reloading: starting generation {gen}"));
                    }
                }
                let ev = self.spawn(gen);
                self.handle(ev);
            }
            Action::Probe { gen, pid } => self.run_probe(gen, pid),
            Action::Signal {
                gen,
                pid,
                target,
                signal,
            } => {
                let res = match target {
                    Target::Leader => kill::signal(pid, signal),
                    Target::Group => kill::signal_group(pid, signal),
                };
                // Stamped now: the woken child may preempt handoff before the log line.
                self.signal_sent = Some(Instant::now());
                if let Err(e) = res {
                    warn!(event = "signal_error", gen, pid, signal = %signal, "cannot send {signal} to {pid}: {e}");
                }
            }
            Action::Release { gen, pgid } => {
                // Workers that outlived their master would keep serving unsupervised.
                if let Some(pgid) = pgid {
                    if let Ok(true) = kill::signal_group(pgid, Signal::KILL) {
                        info!(
                            event = "leftovers_killed",
                            gen, pgid, "killed leftover processes of generation {gen}"
                        );
                    }
                }
                self.notify.remove(&gen);
                self.kill_probes(gen);
                self.check_listeners(gen);
            }
            Action::Report(r) => self.report(&r),
            Action::Exit(code) => self.exit = Some(code),
        }
    }

    fn report(&mut self, r: &Report) {
        match r {
            Report::Spawned { gen, pid, reason } => {
                let since = self
                    .reload_rx
                    .take()
                    .map(|t| (t.elapsed().as_secs_f64() * 1e6).round() / 1e3);
                info!(
                    event = "spawned",
                    gen,
                    pid,
                    reason = logging::start_reason(*reason),
                    request_to_spawn_ms = since,
                    "generation {gen} started (pid {pid})"
                );
            }
            Report::Stopping { gen, pid, signal } => {
                // The hand-over latency: READY=1 received → old generation told to stop.
                let sent = self.signal_sent.unwrap_or_else(Instant::now);
                let handover = self
                    .ready_rx
                    .map(|t| (sent.saturating_duration_since(t).as_secs_f64() * 1e9).round() / 1e3);
                info!(
                    event = "stopping",
                    gen,
                    pid,
                    signal = %signal,
                    handover_us = handover,
                    "sent {signal} to generation {gen} (pid {pid}): draining"
                );
            }
            Report::ReloadFinished {
                gen,
                ok,
                after,
                serving,
            } => {
                self.ready_rx = None;
                logging::report(r);
                self.reload_finished(*gen, *ok, *after, *serving);
            }
            Report::Failed { gen, reason, .. } => {
                self.fail_reasons.insert(*gen, reason.to_string());
                self.kill_probes(*gen);
                logging::report(r);
            }
            Report::Ready { gen, pid, .. } => {
                logging::report(r);
                self.kill_probes(*gen);
                if let Some(sd) = &self.extras.sd {
                    let status = format!("serving generation {gen} (pid {pid})");
                    if self.sd_ready && self.sup.start_reason(*gen) != Some(StartReason::Reload) {
                        sd.send(&[NotifyState::Status(&status)]);
                    } else {
                        // The first READY=1, or the end of a reload (after RELOADING=1).
                        sd.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
                    }
                }
                self.sd_ready = true;
            }
            Report::ShutdownStarted { .. } => {
                // Nothing is handed over at shutdown: no hand-over latency to report.
                self.ready_rx = None;
                logging::report(r);
                if let Some(sd) = &self.extras.sd {
                    sd.send(&[
                        NotifyState::Stopping,
                        NotifyState::Status("stopping: draining"),
                    ]);
                }
                for w in self.pending_waiters.drain(..) {
                    let _ = w.send(control::error_reply("handoff is shutting down"));
                }
            }
            Report::ReloadIgnored => {
                logging::report(r);
                for w in self.pending_waiters.drain(..) {
                    let _ = w.send(control::error_reply("handoff is shutting down"));
                }
            }
            other => logging::report(other),
        }
    }

    fn spawn(&mut self, gen: GenId) -> Event {
        match self.try_spawn(gen) {
            Ok(pid) => Event::Spawned { gen, pid },
            Err(error) => Event::SpawnFailed { gen, error },
        }
    }

    fn try_spawn(&mut self, gen: GenId) -> Result<u32, String> {
        let sock = NotifySocket::bind(&self.runtime_dir, gen)
            .map_err(|e| format!("cannot create notify socket: {e}"))?;
        let mut env = self.child.base_env.clone();
        if !self.listeners.is_empty() {
            let names: Vec<&str> = self.listeners.iter().map(|l| l.name.as_str()).collect();
            env.push(("LISTEN_FDS".into(), self.listeners.len().to_string().into()));
            env.push(("LISTEN_FDNAMES".into(), names.join(":").into()));
            // listenfd's extension; costs nothing, and makes listenfd-based servers exact.
            env.push(("LISTEN_FDS_FIRST_FD".into(), "3".into()));
        }
        env.push(("NOTIFY_SOCKET".into(), sock.path().as_os_str().to_owned()));
        env.push(("HANDOFF_GENERATION".into(), gen.to_string().into()));
        // Server::Starter's variables, so apps written for start_server (Starman,
        // go-server-starter) run unchanged: "127.0.0.1:8080=3;/tmp/app.sock=4".
        let starter: Vec<String> = self
            .listeners
            .iter()
            .enumerate()
            .filter_map(|(i, l)| Some(format!("{}={}", l.starter_addr()?, 3 + i)))
            .collect();
        if !starter.is_empty() {
            env.push(("SERVER_STARTER_PORT".into(), starter.join(";").into()));
            env.push(("SERVER_STARTER_GENERATION".into(), gen.to_string().into()));
        }
        let fds: Vec<BorrowedFd<'_>> = self.listeners.iter().map(|l| l.as_fd()).collect();
        handoff_sys::listeners::reassert_backlogs(&self.listeners); // undo a child's listen(fd, 2)
        let plan = spawn::SpawnPlan::prepare(
            &self.child.program,
            &self.child.argv,
            &env,
            &fds,
            self.child.creds.clone(),
        )
        .map_err(|e| format!("cannot prepare {}: {e}", self.child.program.display()))?;
        let pid = spawn::spawn(plan)
            .map_err(|e| format!("cannot execute {}: {e}", self.child.program.display()))?;
        // SAFETY: NotifySocket owns its fd for its whole life and always returns the same one.
        match unsafe { AsyncFd::register(sock) } {
            Ok(fd) => {
                self.notify.insert(gen, fd);
            }
            Err(e) => warn!("cannot watch the notify socket of generation {gen}: {e}"),
        }
        Ok(pid)
    }

    /// Main pid of every generation that has a notify socket.
    fn leaders(&self) -> HashMap<GenId, u32> {
        self.notify
            .keys()
            .filter_map(|g| Some((*g, self.sup.pid_of(*g)?)))
            .collect()
    }

    fn on_datagram(&mut self, m: Datagram) {
        let Datagram {
            gen,
            sender,
            belongs,
            payload,
        } = m;
        if !belongs {
            self.ignored_notify += 1;
            if self.ignored_notify <= 10 || self.ignored_notify.is_power_of_two() {
                warn!(
                    event = "notify_rejected",
                    gen,
                    sender,
                    count = self.ignored_notify,
                    "ignored notify message from pid {sender}: not part of generation {gen}"
                );
            }
            return;
        }
        match parse_notify(&payload) {
            Ok(msg) => {
                if msg.ready {
                    self.ready_rx = Some(Instant::now());
                }
                self.handle(Event::Notify { gen, msg });
            }
            Err(e) => debug!(gen, "ignored notify datagram from {sender}: {e}"),
        }
    }

    /// Read everything queued on every notify socket, synchronously.
    fn drain_notify(&mut self) {
        let leaders = self.leaders();
        let mut got = Vec::new();
        for (gen, fd) in &self.notify {
            // Bounded: a flood must not starve the reaper.
            for _ in 0..1024 {
                match fd.get_ref().recv() {
                    Ok(Received::Empty) | Err(_) => break,
                    Ok(r) => got.extend(attribute(*gen, r, &leaders)),
                }
            }
        }
        for m in got {
            self.on_datagram(m);
        }
    }

    fn reap(&mut self) {
        // A child's last datagrams must be handled before its exit (READY=1 then crash).
        self.drain_notify();
        self.drain_actions();
        // One pid at a time, acting on each before the next waitpid: a signal queued while
        // handling one exit can then only target processes not yet reaped, whose pids cannot
        // have been reused.
        while let Some((pid, status)) = reaper::reap_one() {
            if let Some(gen) = self.probes.remove(&pid) {
                let ok = status == handoff_core::supervisor::ExitStatus::Exited(0);
                self.handle(Event::ProbeResult { gen, ok });
            } else {
                self.handle(Event::Exited { pid, status });
            }
            self.drain_actions();
        }
    }

    /// Remove what handoff created and make sure no process of ours outlives us.
    fn cleanup(&mut self) {
        self.notify.clear();
        self.extras.pid_file = None;
        self.extras.control.file = None;
        for l in &self.listeners {
            if let Some(f) = &l.unix_file {
                f.remove();
            }
        }
        // Adopted orphans (workers of drained children) that are still around.
        let left = reaper::children();
        for &pid in &left {
            let _ = kill::signal(pid, Signal::KILL);
        }
        if !left.is_empty() {
            info!(
                event = "orphans_killed",
                count = left.len(),
                "killed {} leftover process(es)",
                left.len()
            );
            reaper::reap_remaining(std::time::Duration::from_secs(2));
        }
        info!(
            event = "exit",
            code = self.exit.unwrap_or(0),
            "handoff exiting"
        );
    }
}

/// Signal streams, registered before any child exists.
pub struct Signals {
    chld: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> Self {
        let s = |k: SignalKind| signal(k).expect("installing a signal handler cannot fail");
        Self {
            chld: s(SignalKind::child()),
            hup: s(SignalKind::hangup()),
            term: s(SignalKind::terminate()),
            int: s(SignalKind::interrupt()),
            usr1: s(SignalKind::user_defined1()),
            usr2: s(SignalKind::user_defined2()),
        }
    }
}

/// A datagram from a generation's notify socket, attributed when it was received.
struct Datagram {
    gen: GenId,
    sender: u32,
    /// The sender is the generation's main process or one of its descendants.
    belongs: bool,
    payload: Vec<u8>,
}

/// Check the sender right after receiving, before the next datagram is read: a sender that
/// uses `BARRIER=1` (systemd-notify, sd_notify_barrier) waits until handoff closes the fd in
/// its *next* datagram, so it is guaranteed alive, and attributable, at this point. Accepting
/// descendants too matters: many servers notify from a helper process.
fn attribute(gen: GenId, r: Received, leaders: &HashMap<GenId, u32>) -> Option<Datagram> {
    match r {
        Received::Datagram { pid, payload, .. } => {
            let belongs = leaders
                .get(&gen)
                .is_some_and(|&leader| procfs::belongs_to(pid, leader));
            Some(Datagram {
                gen,
                sender: pid,
                belongs,
                payload,
            })
        }
        Received::Invalid(why) => {
            debug!(gen, "ignored notify datagram: {why}");
            None
        }
        Received::Empty => None,
    }
}

/// Wait until any notify socket is readable; return what it holds.
async fn poll_notify(
    socks: &HashMap<GenId, AsyncFd<NotifySocket>>,
    leaders: &HashMap<GenId, u32>,
) -> Vec<Datagram> {
    poll_fn(|cx| {
        let mut out = Vec::new();
        for (gen, fd) in socks {
            // Poll until Pending so that every socket has a waker registered when we return
            // Pending; stop early (data left) after a bounded batch so a flood cannot starve
            // the other arms.
            'sock: while let Poll::Ready(Ok(mut guard)) = fd.poll_read_ready(cx) {
                for _ in 0..256 {
                    match guard.get_inner().recv() {
                        Ok(Received::Empty) | Err(_) => {
                            guard.clear_ready();
                            continue 'sock;
                        }
                        Ok(r) => out.extend(attribute(*gen, r, leaders)),
                    }
                }
                // Data left: come back after the other arms had their turn.
                cx.waker().wake_by_ref();
                break;
            }
        }
        if out.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(out)
        }
    })
    .await
}

// ---- control requests, reload outcomes, probes ------------------------------------------

impl Driver {
    fn on_control(&mut self, inc: Incoming) {
        let Incoming { req, reply } = inc;
        match req.cmd {
            Command::Status => {
                let st = self.status_json();
                let _ = reply
                    .send(json!({"v": control::VERSION, "ok": true, "status": st}).to_string());
            }
            Command::Stop => {
                let _ = reply.send(
                    json!({"v": control::VERSION, "ok": true, "pid": std::process::id(), "message": "stopping"})
                        .to_string(),
                );
                self.handle(Event::Shutdown {
                    signal: Signal::TERM,
                });
            }
            Command::Reload => {
                if self.sup.is_shutting_down() {
                    let _ = reply.send(control::error_reply("handoff is shutting down"));
                    return;
                }
                if req.wait {
                    self.pending_waiters.push(reply);
                } else {
                    let _ = reply.send(
                        json!({"v": control::VERSION, "ok": true, "message": "reload requested"})
                            .to_string(),
                    );
                }
                self.reload_rx = Some(Instant::now());
                self.handle(Event::Reload);
            }
        }
    }

    fn reload_finished(
        &mut self,
        gen: GenId,
        ok: bool,
        after: std::time::Duration,
        serving: Option<(GenId, u32)>,
    ) {
        let message = if ok {
            format!(
                "reload finished: generation {gen} (pid {}) serving, ready after {:.0} ms",
                serving.map_or(0, |s| s.1),
                after.as_secs_f64() * 1e3
            )
        } else {
            let why = self
                .fail_reasons
                .remove(&gen)
                .unwrap_or_else(|| "did not take over".into());
            match serving {
                Some((sg, sp)) => {
                    format!("new generation {gen} {why}; still serving generation {sg}, pid {sp}")
                }
                None => format!("new generation {gen} {why}; no generation is serving"),
            }
        };
        if !ok {
            if let Some(sd) = &self.extras.sd {
                // systemd has no "reload failed" message: end the reload (READY=1) and say why in
                // STATUS=; `handoff reload` (the shipped ExecReload) reports the failure itself.
                sd.send(&[
                    NotifyState::Ready,
                    NotifyState::Status(&format!("reload failed: {message}")),
                ]);
            }
        }
        let line = json!({
            "v": control::VERSION, "ok": ok, "gen": gen,
            "serving_gen": serving.map(|s| s.0), "serving_pid": serving.map(|s| s.1),
            "duration_ms": (after.as_secs_f64() * 1e4).round() / 10.0,
            "message": if ok { Some(&message) } else { None },
            "error": if ok { None } else { Some(&message) },
        })
        .to_string();
        for w in self.waiters.remove(&gen).unwrap_or_default() {
            let _ = w.send(line.clone());
        }
        self.last_reload = Some(LastReload {
            gen,
            ok,
            duration: after,
            message,
            at: Instant::now(),
        });
    }

    /// After a generation has exited: did it break a shared listener (`shutdown()` on it)?
    /// Re-create it, and start a new generation on it, since the serving one holds the dead
    /// socket. Until that generation is ready, clients wait in the new socket's queue.
    fn check_listeners(&mut self, gen: GenId) {
        let mut restored = false;
        for (i, l) in self.listeners.iter_mut().enumerate() {
            if !l.is_broken() {
                continue;
            }
            match l.restore() {
                Ok(()) => {
                    warn!(event = "listener_restored", gen, index = i, addr = %l.local,
                        "listener {} stopped listening after generation {gen} exited (a process called shutdown() on it); re-created it and starting a new generation on it", l.local);
                    restored = true;
                }
                Err(e) => warn!(event = "listener_broken", gen, index = i, addr = %l.local,
                    "listener {} stopped listening after generation {gen} exited and cannot be re-created: {e}", l.local),
            }
        }
        if restored && !self.sup.is_shutting_down() {
            self.handle(Event::Reload);
        }
    }

    fn run_probe(&mut self, gen: GenId, pid: u32) {
        let Some(cmd) = self.extras.probe.clone() else {
            return;
        };
        let mut env = self.child.base_env.clone();
        env.push(("HANDOFF_CHILD_PID".into(), pid.to_string().into()));
        env.push(("HANDOFF_GENERATION".into(), gen.to_string().into()));
        let argv: Vec<OsString> = vec!["sh".into(), "-c".into(), cmd.into()];
        let res =
            spawn::SpawnPlan::prepare(std::path::Path::new("/bin/sh"), &argv, &env, &[], None)
                .and_then(spawn::spawn);
        match res {
            Ok(ppid) => {
                self.probes.insert(ppid, gen);
            }
            Err(e) => {
                warn!(
                    event = "probe_error",
                    gen, "cannot run the ready probe: {e}"
                );
                self.handle(Event::ProbeResult { gen, ok: false });
            }
        }
    }

    /// Stop probes of a generation that no longer needs them (not yet reaped: safe to signal).
    fn kill_probes(&mut self, gen: GenId) {
        for (&pid, _) in self.probes.iter().filter(|(_, g)| **g == gen) {
            let _ = kill::signal_group(pid, Signal::KILL);
        }
    }

    fn status_json(&self) -> Value {
        let now = Instant::now();
        let gens: Vec<Value> = self
            .sup
            .status(now)
            .iter()
            .map(|g| {
                json!({
                    "gen": g.gen,
                    "pid": g.pid,
                    "state": match g.phase {
                        Phase::Spawning | Phase::Starting => "starting",
                        Phase::Serving => "serving",
                        Phase::Stopping => "draining",
                        Phase::Killing => "killing",
                    },
                    "age_s": (g.age.as_secs_f64() * 10.0).round() / 10.0,
                    "time_to_ready_ms": g.time_to_ready.map(|d| (d.as_secs_f64() * 1e4).round() / 10.0),
                })
            })
            .collect();
        let listeners: Vec<Value> = self
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| json!({"fd": 3 + i, "name": l.name, "addr": l.local, "kind": l.kind}))
            .collect();
        let last = self.last_reload.as_ref().map(|r| {
            json!({
                "gen": r.gen,
                "result": if r.ok { "ok" } else { "failed" },
                "duration_ms": (r.duration.as_secs_f64() * 1e4).round() / 10.0,
                "message": r.message,
                "ago_s": (now.duration_since(r.at).as_secs_f64() * 10.0).round() / 10.0,
            })
        });
        json!({
            "pid": std::process::id(),
            "uptime_s": (now.duration_since(self.started).as_secs_f64() * 10.0).round() / 10.0,
            "serving": self.sup.serving().map(|(g, p)| json!({"gen": g, "pid": p})),
            "generations": gens,
            "listeners": listeners,
            "reloads": self.sup.reload_count(),
            "last_reload": last,
        })
    }
}

/// `handoff status` as text.
pub fn status_text(v: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "handoff pid {}, up {}s, {} reload(s)",
        v["pid"], v["uptime_s"], v["reloads"]
    );
    let _ = writeln!(out, "generations:");
    for g in v["generations"].as_array().into_iter().flatten() {
        let ready = g["time_to_ready_ms"]
            .as_f64()
            .map(|m| format!(", ready in {m} ms"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:>4}  pid {:<8} {:<9} age {}s{ready}",
            g["gen"],
            g["pid"],
            g["state"].as_str().unwrap_or("?"),
            g["age_s"]
        );
    }
    let _ = writeln!(out, "listeners:");
    for l in v["listeners"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  fd {}  {:<8} {}",
            l["fd"],
            l["name"].as_str().unwrap_or(""),
            l["addr"].as_str().unwrap_or("")
        );
    }
    match v["last_reload"].as_object() {
        Some(r) => {
            let _ = writeln!(
                out,
                "last reload: {} ({} ms, {}s ago): {}",
                r["result"].as_str().unwrap_or("?"),
                r["duration_ms"],
                r["ago_s"],
                r["message"].as_str().unwrap_or("")
            );
        }
        None => {
            let _ = writeln!(out, "last reload: none");
        }
    }
    out
}

/// Start watching `paths` for `--watch`. A file is watched through its directory, so that a
/// deploy replacing it by rename (the usual atomic way) is still seen.
pub fn watch(paths: &[PathBuf]) -> Result<Option<Watcher>, String> {
    use notify::{EventKind, RecursiveMode, Watcher as _};
    if paths.is_empty() {
        return Ok(None);
    }
    let files: Vec<PathBuf> = paths
        .iter()
        .filter(|p| !p.is_dir())
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .collect();
    let dirs: Vec<PathBuf> = paths
        .iter()
        .filter(|p| p.is_dir())
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .collect();
    let (tx, rx) = mpsc::unbounded_channel();
    let (f2, d2) = (files.clone(), dirs.clone());
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        // Reads (opening a config file, running a binary) are not changes.
        if matches!(
            ev.kind,
            EventKind::Access(notify::event::AccessKind::Close(
                notify::event::AccessMode::Write
            ))
        ) || matches!(
            ev.kind,
            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
        ) {
            let relevant = ev
                .paths
                .iter()
                .any(|p| f2.iter().any(|f| f == p) || d2.iter().any(|d| p.starts_with(d)));
            if relevant {
                let _ = tx.send(());
            }
        }
    })
    .map_err(|e| format!("cannot watch files: {e}"))?;
    for d in &dirs {
        w.watch(d, RecursiveMode::Recursive)
            .map_err(|e| format!("cannot watch {}: {e}", d.display()))?;
    }
    for f in &files {
        let parent = f.parent().unwrap_or(std::path::Path::new("/"));
        w.watch(parent, RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch {}: {e}", f.display()))?;
    }
    Ok(Some(Watcher { _inner: w, rx }))
}

async fn recv_opt(rx: &mut Option<mpsc::UnboundedReceiver<()>>) -> Option<()> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

async fn tick_opt(t: &mut Option<tokio::time::Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}
