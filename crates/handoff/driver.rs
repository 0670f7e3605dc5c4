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
use handoff_core::supervisor::{Action, Event, GenId, Report, Supervisor, Target};
use handoff_sys::listeners::Listener;
use handoff_sys::notify_socket::{NotifySocket, Received, RuntimeDir};
use handoff_sys::{kill, procfs, reaper, spawn};
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, info, warn};

use crate::logging;

/// What the child runs and with which environment, fixed at start-up.
pub struct ChildSpec {
    pub program: PathBuf,
    pub argv: Vec<OsString>,
    /// handoff's environment minus the variables that describe handoff's own sockets.
    pub base_env: Vec<(OsString, OsString)>,
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
    /// Set by `Action::Exit`.
    exit: Option<i32>,
}

impl Driver {
    pub fn new(
        sup: Supervisor,
        listeners: Vec<Listener>,
        child: ChildSpec,
        runtime_dir: RuntimeDir,
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
            exit: None,
        }
    }

    /// Run until the state machine says to exit; returns the exit code.
    pub async fn run(mut self, mut sig: Signals) -> i32 {
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
                let ev = self.spawn(gen);
                self.handle(ev);
            }
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
                let handover = self
                    .ready_rx
                    .map(|t| (t.elapsed().as_secs_f64() * 1e9).round() / 1e3);
                info!(
                    event = "stopping",
                    gen,
                    pid,
                    signal = %signal,
                    handover_us = handover,
                    "sent {signal} to generation {gen} (pid {pid}): draining"
                );
            }
            Report::ReloadFinished { .. } => {
                self.ready_rx = None;
                logging::report(r);
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
        let fds: Vec<BorrowedFd<'_>> = self.listeners.iter().map(|l| l.as_fd()).collect();
        let plan = spawn::SpawnPlan::prepare(&self.child.program, &self.child.argv, &env, &fds)
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
            self.handle(Event::Exited { pid, status });
            self.drain_actions();
        }
    }

    /// Remove what handoff created and make sure no process of ours outlives us.
    fn cleanup(&mut self) {
        self.notify.clear();
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
