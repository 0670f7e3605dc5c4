//! The thin tokio shell around the state machine: it converts and performs, it never decides.
//!
//! ```text
//!   signals, SIGCHLD ─┐
//!   notify sockets ───┤                    ┌─────────────┐            ┌──────────────────┐
//!   control socket ───┼─► Input ─► dispatch ─► Supervisor ─► Action ─► perform (handoff-sys,
//!   --watch, watchdog ┤   (one enum)   (Event)└─────────────┘ (queue)   logs, replies, sd)  │
//!   next deadline ────┘                    ▲                                                │
//!                                          └──── results (Spawned, ProbeResult, ...) ◄───────┘
//! ```
//!
//! One `select!` turns whatever is ready into one [`Input`]; [`Driver::dispatch`] feeds it to
//! [`Supervisor::handle`] as an [`Event`]; [`Driver::perform`] carries out each resulting
//! [`Action`]. No input source can starve another: the `select!` is unbiased and every source
//! yields a bounded batch. Runs on a current-thread runtime on the main thread, which is also
//! the thread that forks (PR_SET_PDEATHSIG is tied to the forking thread).

use std::collections::HashMap;
use std::future::poll_fn;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use handoff_core::accepting::{self as acc, ListenerWait, QueueChange, QueueWatch};
use handoff_core::child_env::{self, Env, ListenerEnv};
use handoff_core::signal::Signal;
use handoff_core::supervisor::{
    Action, Event, ExitStatus, GenId, Pid, ReplyTo, Report, RequestId, Supervisor, Target,
};
use handoff_sys::accepting::{self, AcceptProbe};
use handoff_sys::cgroup::{GenCgroup, Generations};
use handoff_sys::listeners::{Kind, Listener};
use handoff_sys::notify_socket::{NotifySocket, RuntimeDir};
use handoff_sys::spawn::{self, Creds};
use handoff_sys::upgrade::Check;
use handoff_sys::{kill, reaper};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::control::{self, Command, Incoming};
use crate::intake::{Datagram, Intake};
use crate::sdnotify::SdNotify;
use crate::signals::{self, Signals};
use crate::upgrade::{self, CgroupsState, State};
use crate::watch::Watcher;
use crate::{logging, pidfile, status};

/// What the child runs and with which environment, fixed at start-up.
pub struct ChildSpec {
    pub program: PathBuf,
    pub argv: Vec<std::ffi::OsString>,
    /// handoff's environment minus the variables that describe handoff's own sockets.
    pub base_env: Env,
    /// `--user`/`--group`, resolved.
    pub creds: Option<Creds>,
    /// Set `LISTEN_PID` (not with `--no-listen-pid`).
    pub listen_pid: bool,
    /// `--stop-signal`: also what a child gets if handoff dies (PR_SET_PDEATHSIG).
    pub stop_signal: Signal,
}

/// The control sockets handoff listens on.
#[derive(Default)]
pub struct ControlSockets {
    pub listeners: Vec<std::os::unix::net::UnixListener>,
    /// The socket file, removed at exit.
    pub file: Option<control::SocketFile>,
}

/// The operational services of a run, each optional.
pub struct Services {
    pub control: ControlSockets,
    pub pid_file: Option<pidfile::Written>,
    /// handoff's own service manager (systemd's `NOTIFY_SOCKET`).
    pub manager: Option<SdNotify>,
    pub watcher: Option<Watcher>,
    /// `--ready-probe` command.
    pub probe: Option<String>,
    /// `--metrics`: the registry and the listener of its HTTP endpoint.
    pub metrics: Option<(crate::metrics::Metrics, std::net::TcpListener)>,
    /// A cgroup per generation, where handoff may create them; else generations are
    /// process groups (a worker that called setsid() then escapes them).
    pub cgroups: Option<Generations>,
    /// Bind adoption (`--adopt on`, supported, and a TCP listener to adopt).
    pub adopt: Option<crate::adopt::Adoption>,
}

/// Everything the event loop waits for, converted to one type.
enum Input {
    Signal(signals::Received),
    Notify(Vec<Datagram>),
    Control(Incoming),
    FileChanged,
    WatchdogTick,
    QueueCheck,
    Deadline,
    Scrape(crate::metrics::Scrape),
}

/// What an earlier image handed over (`handoff upgrade`), beyond the state machine and
/// what `Driver::new` takes.
pub struct Resumed {
    /// `handoff --version` of the image that exported the state.
    pub from: String,
    pub started: Instant,
    pub probes: HashMap<Pid, GenId>,
    /// Control connections still owed an answer.
    pub requests: Vec<(RequestId, OwnedFd)>,
    pub next_request: RequestId,
    pub notify: Vec<(GenId, NotifySocket, Pid)>,
    pub cgroup_of: HashMap<GenId, GenCgroup>,
    pub retiring: Vec<GenCgroup>,
    pub metrics: Option<crate::metrics::Counters>,
    pub queues: Vec<QueueWatch>,
}

pub struct Driver {
    sup: Supervisor,
    listeners: Vec<Listener>,
    child: ChildSpec,
    runtime_dir: RuntimeDir,
    intake: Intake,
    services: Services,
    /// Running `--ready-probe` processes: pid → generation.
    probes: HashMap<Pid, GenId>,
    /// Control requests waiting for an answer, with a duplicate of their connection's fd (an
    /// upgrade carries it across the exec).
    requests: HashMap<RequestId, (mpsc::UnboundedSender<String>, Option<OwnedFd>)>,
    next_request: RequestId,
    /// The binary `handoff upgrade` execs by default: the path this image was started from.
    binary: PathBuf,
    /// The server's program, resolved once.
    program: PathBuf,
    /// The candidate binary of an upgrade, running its check.
    check: Option<(Check, PathBuf)>,
    /// Set by `Action::CheckUpgrade` / `Action::Exec`: done once the action queue is empty.
    want_check: Option<PathBuf>,
    want_exec: Option<PathBuf>,
    /// The fds of the control and metrics listeners (owned by their tasks), for an upgrade.
    control_fds: Vec<RawFd>,
    metrics_fd: Option<RawFd>,
    /// Set in an image started by an upgrade, until `run` takes it.
    resumed: Option<Resumed>,
    metrics: Option<crate::metrics::Metrics>,
    /// Each live generation's cgroup (with `Services::cgroups`).
    cgroup_of: HashMap<GenId, GenCgroup>,
    /// Cgroups of retired generations whose last processes are still dying.
    retiring: Vec<GenCgroup>,
    started: Instant,
    /// Set by `Action::Exit`.
    exit: Option<i32>,
    /// Proof-of-accept connections in flight, by generation and listener index.
    proofs: HashMap<(GenId, usize), Proof>,
    /// Each listener's accept queue, watched for connections nobody accepts.
    queues: Vec<QueueWatch>,
    /// When the last `Action::Signal` went out, for the hand-over latency of the `Stopping`
    /// report that follows it.
    signal_sent: Option<(GenId, Instant)>,
    /// The next generation, prepared once the last one has started (its notify socket bound,
    /// its environment and plan built), so that a reload goes straight to the clone.
    spare: Option<Prepared>,
}

/// A generation's child, prepared up to the clone (see [`Driver::prepare`]).
struct Prepared {
    gen: GenId,
    sock: NotifySocket,
    plan: spawn::SpawnPlan,
    adopt: Option<handoff_sys::adopt::ParentSide>,
    cgroup: Option<GenCgroup>,
    /// [`Driver::listener_ids`] when prepared.
    listeners: Vec<(u64, u64)>,
}

/// A generation that has exec'd, with what [`Driver::finish_start`] watches it by.
struct Started {
    pid: Pid,
    sock: NotifySocket,
    cgroup: Option<GenCgroup>,
    adopt: Option<handoff_sys::adopt::ParentSide>,
}

/// A proof-of-accept connection, and how many scans found it accepted by someone else.
struct Proof {
    probe: AcceptProbe,
    elsewhere: u32,
}

impl Driver {
    pub fn new(
        sup: Supervisor,
        listeners: Vec<Listener>,
        child: ChildSpec,
        runtime_dir: RuntimeDir,
        services: Services,
    ) -> Self {
        let program = child.program.clone();
        Self {
            sup,
            listeners,
            child,
            runtime_dir,
            intake: Intake::default(),
            services,
            probes: HashMap::new(),
            requests: HashMap::new(),
            next_request: 1,
            binary: handoff_sys::upgrade::self_exe().unwrap_or_else(|_| "/proc/self/exe".into()),
            program,
            check: None,
            want_check: None,
            want_exec: None,
            control_fds: Vec::new(),
            metrics_fd: None,
            resumed: None,
            metrics: None,
            cgroup_of: HashMap::new(),
            retiring: Vec::new(),
            started: Instant::now(),
            exit: None,
            proofs: HashMap::new(),
            queues: Vec::new(),
            spare: None,
            signal_sent: None,
        }
    }

    /// Carry on from what an earlier image handed over (`handoff upgrade`); `binary` is the
    /// one it exec'd.
    pub fn resume(mut self, r: Resumed, binary: PathBuf, program: PathBuf) -> Self {
        self.binary = binary;
        self.program = program.clone();
        self.child.program = program;
        self.started = r.started;
        self.probes = r.probes.clone();
        self.next_request = r.next_request;
        self.queues = r.queues.clone();
        self.resumed = Some(r);
        self
    }

    /// Run until the state machine says to exit; returns the exit code.
    pub async fn run(mut self, mut signals: Signals) -> i32 {
        let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel::<Incoming>();
        // Never sent on: closed once every connection task has ended.
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        let control = std::mem::take(&mut self.services.control.listeners);
        self.control_fds = control.iter().map(|l| l.as_raw_fd()).collect();
        let servers: Vec<_> = control
            .into_iter()
            .map(|l| tokio::spawn(control::serve(l, ctl_tx.clone(), alive_tx.clone())))
            .collect();
        let mut resumed = self.resumed.take();
        if let Some(r) = resumed.as_mut() {
            for (request, fd) in std::mem::take(&mut r.requests) {
                let tx = control::resume(fd, alive_tx.clone());
                self.requests.insert(request, (tx, None));
            }
            for (gen, sock, leader) in std::mem::take(&mut r.notify) {
                if let Err(e) = self.intake.add(gen, sock, leader) {
                    warn!("cannot watch the notify socket of generation {gen}: {e}");
                }
            }
            self.cgroup_of = std::mem::take(&mut r.cgroup_of);
            self.retiring = std::mem::take(&mut r.retiring);
        }
        drop((ctl_tx, alive_tx));
        let mut scrapes = self.services.metrics.take().map(|(m, l)| {
            let m = match resumed.as_ref().and_then(|r| r.metrics.as_ref()) {
                Some(c) => crate::metrics::Metrics::import(c),
                None => m,
            };
            self.metrics = Some(m);
            self.metrics_fd = Some(l.as_raw_fd());
            let (tx, rx) = mpsc::channel(8);
            tokio::spawn(crate::metrics::serve(l, tx));
            rx
        });
        if let Some(r) = resumed {
            // The new image serves: say so (this answers the upgrade request), then collect
            // what exited while the exec was under way.
            self.handle(Event::Upgraded {
                from: r.from,
                to: crate::VERSION.to_string(),
            });
            self.reap();
        }
        let changed = self.services.watcher.as_ref().map(|w| w.changed.clone());
        // The watchdog is fed from this loop: if the loop stalls, systemd notices.
        let mut watchdog = self
            .services
            .manager
            .as_ref()
            .and_then(|m| m.watchdog)
            .map(tokio::time::interval);
        // One timer, re-armed only when the state machine's deadline changes.
        // Accept queues nobody drains (a server that binds elsewhere, or never accepts).
        let mut queue_check = tokio::time::interval(std::time::Duration::from_secs(1));
        queue_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let sleep = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        loop {
            self.perform_all();
            if let Some(binary) = self.want_check.take() {
                self.start_check(binary);
                continue;
            }
            if let Some(binary) = self.want_exec.take() {
                self.exec(binary, &mut signals, &mut ctl_rx).await;
                continue;
            }
            if let Some(code) = self.exit {
                self.cleanup(code);
                // Let the connections write their last answers (a `stop` client waits for
                // the exit code), but never wait long for a client that does not read.
                for s in servers {
                    s.abort();
                }
                self.requests.clear();
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(1), alive_rx.recv()).await;
                return code;
            }
            let deadline = self.sup.poll_timeout();
            if deadline != armed {
                if let Some(d) = deadline {
                    sleep.as_mut().reset(d.into());
                }
                armed = deadline;
            }
            let input = tokio::select! {
                s = signals.recv() => Input::Signal(s),
                batch = poll_fn(|cx| self.intake.poll_batch(cx)) => Input::Notify(batch),
                Some(inc) = ctl_rx.recv() => Input::Control(inc),
                () = async { changed.as_ref().expect("guarded").notified().await }, if changed.is_some() => Input::FileChanged,
                _ = async { watchdog.as_mut().expect("guarded").tick().await }, if watchdog.is_some() => Input::WatchdogTick,
                _ = queue_check.tick() => Input::QueueCheck,
                () = &mut sleep, if armed.is_some() => Input::Deadline,
                Some(s) = async { scrapes.as_mut().expect("guarded").recv().await }, if scrapes.is_some() => Input::Scrape(s),
            };
            self.dispatch(input);
        }
    }

    /// Turn one input into events for the state machine (or, for the watchdog, its ping).
    fn dispatch(&mut self, input: Input) {
        use signals::Received as S;
        match input {
            Input::Signal(S::Child) => self.reap(),
            Input::Signal(S::Hangup) => self.handle(Event::Reload {
                reply: ReplyTo::Nobody,
                restart: false,
            }),
            Input::Signal(S::Terminate) => self.handle(Event::Shutdown {
                signal: Signal::TERM,
                request: None,
                force: false,
            }),
            Input::Signal(S::Interrupt) => self.handle(Event::Shutdown {
                signal: Signal::INT,
                request: None,
                force: false,
            }),
            Input::Signal(S::User1) => self.handle(Event::Forward {
                signal: Signal::USR1,
            }),
            Input::Signal(S::User2) => self.handle(Event::Forward {
                signal: Signal::USR2,
            }),
            Input::Notify(batch) => self.notify(batch),
            Input::Control(inc) => self.control(inc),
            Input::FileChanged => self.handle(Event::FileChanged),
            Input::WatchdogTick => {
                if let Some(m) = &self.services.manager {
                    m.watchdog();
                }
            }
            Input::QueueCheck => self.check_queues(),
            Input::Deadline => self.handle(Event::Timeout),
            Input::Scrape(reply) => {
                if let Some(m) = &self.metrics {
                    let _ = reply.send(m.render(&self.sup.snapshot(Instant::now())));
                }
            }
        }
    }

    fn handle(&mut self, ev: Event) {
        self.sup.handle(ev, Instant::now());
    }

    fn notify(&mut self, batch: Vec<Datagram>) {
        for d in batch {
            if let Some((gen, msg)) = self.intake.accept(d) {
                self.handle(Event::Notify { gen, msg });
            }
        }
    }

    fn control(&mut self, inc: Incoming) {
        let Incoming { req, reply, conn } = inc;
        let request = self.next_request;
        self.next_request += 1;
        self.requests.insert(request, (reply, conn));
        let ev = match req.cmd {
            Command::Status => Event::Status { request },
            Command::Stop => Event::Shutdown {
                signal: Signal::TERM,
                request: Some(request),
                force: req.force,
            },
            Command::Reload | Command::Restart => Event::Reload {
                reply: if req.wait {
                    ReplyTo::WhenDone(request)
                } else {
                    ReplyTo::Now(request)
                },
                restart: req.cmd == Command::Restart,
            },
            Command::Upgrade => Event::Upgrade {
                request,
                binary: req.binary.unwrap_or_else(|| self.binary.clone()),
            },
        };
        self.handle(ev);
    }

    /// SIGCHLD: collect every exited child.
    fn reap(&mut self) {
        // A child's last datagrams must be handled before its exit (READY=1 then crash).
        let last = self.intake.drain_now();
        self.notify(last);
        self.perform_all();
        // One pid at a time, performing the actions of each exit before the next waitpid: a
        // signal queued while handling one exit can then only target processes not yet
        // reaped, whose pids cannot have been reused.
        self.remove_empty_cgroups();
        while let Some((pid, status)) = reaper::reap_one() {
            let ev = match self.probes.remove(&pid) {
                Some(gen) => Event::ProbeResult {
                    gen,
                    ok: status == ExitStatus::Exited(0),
                },
                None if self.check.as_ref().is_some_and(|(c, _)| c.pid == pid) => {
                    let Some((mut c, binary)) = self.check.take() else {
                        continue;
                    };
                    let (out, err) = c.output();
                    Event::UpgradeChecked {
                        result: upgrade::check_result(&binary, status, &out, &err),
                    }
                }
                None => Event::Exited { pid, status },
            };
            self.handle(ev);
            self.perform_all();
        }
    }

    /// Perform queued actions until none is left.
    fn perform_all(&mut self) {
        while let Some(a) = self.sup.poll_action() {
            self.perform(a);
        }
    }

    fn perform(&mut self, action: Action) {
        match action {
            Action::Spawn { gen } => match self.spawn(gen) {
                Ok(started) => {
                    // The state machine first (it times the reload request → exec'd), then
                    // what can wait a few microseconds: the child's first datagram or bind
                    // is read or answered from the event loop or a thread started here.
                    self.handle(Event::Spawned {
                        gen,
                        pid: started.pid,
                    });
                    self.finish_start(gen, started);
                    self.prepare_spare(gen);
                }
                Err(error) => self.handle(Event::SpawnFailed { gen, error }),
            },
            Action::Signal {
                gen,
                pid,
                target,
                signal,
            } => {
                // Stamped as the signal goes out: the process it wakes may run on this CPU
                // before handoff does again, which is not handoff's latency.
                self.signal_sent = Some((gen, Instant::now()));
                let res = match (target, self.cgroup_of.get(&gen)) {
                    (Target::Leader, _) => kill::signal(pid, signal),
                    // The cgroup holds every process of the generation, also workers that
                    // left the process group (setsid, double fork).
                    (Target::Group, Some(cg)) if signal == Signal::KILL => cg.kill().map(|()| true),
                    (Target::Group, Some(cg)) => cg.signal(signal).map(|n| n > 0),
                    (Target::Group, None) => kill::signal_group(pid, signal),
                };
                if let Err(e) = res {
                    warn!(event = "signal_error", gen, pid, signal = %signal, error = %e, msg = "cannot send a signal", "cannot send {signal} to {pid}: {e}");
                }
            }
            Action::Retire { gen, leftovers } => {
                // Workers that outlived their master would keep serving unsupervised.
                if let Some(pgid) = leftovers {
                    if let Ok(true) = kill::signal_group(pgid, Signal::KILL) {
                        info!(
                            event = "leftovers_killed",
                            gen,
                            pgid,
                            msg = "killed leftover processes of the generation",
                            "killed leftover processes of generation {gen}"
                        );
                    }
                }
                if let Some(cg) = self.cgroup_of.remove(&gen) {
                    if cg.is_populated().unwrap_or(true) {
                        let pids = cg.pids().unwrap_or_default();
                        let _ = cg.kill();
                        info!(
                            event = "leftovers_killed",
                            gen,
                            cgroup = cg.cgroup(),
                            count = pids.len(),
                            msg = "killed leftover processes of the generation in its cgroup",
                            "killed {} leftover process(es) of generation {gen} in its cgroup",
                            pids.len()
                        );
                    }
                    // Removed once empty (checked on each SIGCHLD: they are our descendants).
                    self.retiring.push(cg);
                    self.remove_empty_cgroups();
                }
                self.intake.remove(gen);
                if let Some(a) = &mut self.services.adopt {
                    a.retire(gen);
                }
            }
            Action::CheckListeners { gen } => {
                let count = self.restore_listeners(gen);
                if let (Some(a), true) = (&self.services.adopt, count > 0) {
                    a.listeners_changed(&self.listeners);
                }
                self.handle(Event::ListenersRestored { count });
            }
            Action::CloseListeners => {
                for l in self.listeners.iter().filter(|l| !l.kept_by_manager()) {
                    if let Some(f) = &l.unix_file {
                        f.remove();
                    }
                }
                // Dropping closes handoff's copy; the draining generations hold theirs. The
                // service manager keeps its own (socket unit, fd store) for the next start.
                // The spare holds copies too: no generation starts after this.
                self.spare = None;
                self.listeners.retain(|l| l.kept_by_manager());
                if let Some(a) = &self.services.adopt {
                    a.listeners_changed(&self.listeners);
                }
            }
            Action::Probe { gen, pid } => self.run_probe(gen, pid),
            Action::CheckWrapper { gen, pid } => check_wrapper(gen, pid, self.child.listen_pid),
            Action::Scan { gen, pid, prove } => {
                let (seen, fd) = self.scan(gen, pid, prove);
                self.handle(Event::Accepting { gen, seen, fd });
            }
            Action::StopProving { gen } => self.proofs.retain(|(g, _), _| *g != gen),
            Action::StopProbe { gen } => {
                // Not yet reaped (the reaper removes it from `probes`): safe to signal.
                for (&pid, _) in self.probes.iter().filter(|(_, g)| **g == gen) {
                    let _ = kill::signal_group(pid, Signal::KILL);
                }
            }
            Action::Tell(m) => {
                if let Some(manager) = &self.services.manager {
                    manager.send(&status::manager_datagram(&m));
                }
            }
            Action::Reply { request, outcome } => {
                let line = status::reply_line(&outcome, || {
                    let now = Instant::now();
                    let about = status::About {
                        listeners: &self.listeners,
                        started: self.started,
                        command: &self.child.argv,
                        queues: &self
                            .listeners
                            .iter()
                            .enumerate()
                            .map(|(i, l)| {
                                let stuck = self.queues.get(i).is_some_and(QueueWatch::stuck);
                                (accepting::accept_queue(l.as_fd()), stuck)
                            })
                            .collect::<Vec<_>>(),
                        tracking: if self.services.cgroups.is_some() {
                            "cgroup"
                        } else {
                            "process group"
                        },
                    };
                    let mut v = status::json(&self.sup.snapshot(now), &about, now);
                    if let Some(a) = &self.services.adopt {
                        a.annotate(&mut v);
                    }
                    v
                });
                let tx = if outcome.is_final() {
                    self.requests.remove(&request).map(|(tx, _)| tx)
                } else {
                    self.requests.get(&request).map(|(tx, _)| tx.clone())
                };
                if let Some(tx) = tx {
                    let _ = tx.send(line);
                }
            }
            Action::Report(r) => {
                if let Some(m) = &self.metrics {
                    m.observe(&r);
                }
                let sent = match (&r, self.signal_sent.take()) {
                    (Report::Stopping { gen, .. }, Some((g, at))) if *gen == g => Some(at),
                    _ => None,
                };
                logging::report(&r, sent);
            }
            Action::Exit(code) => self.exit = Some(code),
            Action::CheckUpgrade { binary } => self.want_check = Some(binary),
            Action::StopUpgradeCheck => {
                // Not yet reaped (the reaper takes it out of `check`): safe to signal.
                if let Some((c, _)) = &self.check {
                    let _ = kill::signal_group(c.pid, Signal::KILL);
                }
            }
            Action::Exec { binary } => self.want_exec = Some(binary),
        }
    }

    /// Run the candidate binary of an upgrade with the state it would get, to check it
    /// can take over; the reaper turns its exit into `UpgradeChecked`.
    fn start_check(&mut self, binary: PathBuf) {
        let res = self.export_state(&binary).and_then(|st| {
            let doc = upgrade::write(&st)?;
            let v = upgrade::STATE_VERSION.to_string();
            let args = ["check-upgrade", "--state-version", v.as_str()];
            handoff_sys::upgrade::spawn_check(&binary, &args, doc.as_fd(), &upgrade::CHECK_DROP_ENV)
                .map_err(|e| format!("cannot execute {}: {e}", binary.display()))
        });
        match res {
            Ok(c) => self.check = Some((c, binary)),
            Err(e) => self.handle(Event::UpgradeChecked { result: Err(e) }),
        }
    }

    /// The upgrade's point of no return: exec `binary` under this pid with the state. If
    /// the exec returns, this image carries on and the upgrade failed.
    async fn exec(
        &mut self,
        binary: PathBuf,
        signals: &mut Signals,
        ctl_rx: &mut mpsc::UnboundedReceiver<Incoming>,
    ) {
        // From here, a signal waits (pending) for whichever image handles it next.
        if let Err(e) = handoff_sys::upgrade::block_signals() {
            let error = format!("cannot block signals for the exec: {e}");
            self.handle(Event::ExecFailed { error });
            return;
        }
        // What this image received but has not handled yet would be lost with it: signals
        // already taken by the handler, requests already read. Handle them first (one may be
        // a shutdown, which calls the upgrade off).
        loop {
            tokio::task::yield_now().await; // lets the runtime read its signal pipe
            let mut more = false;
            while let Ok(s) = tokio::time::timeout(Duration::ZERO, signals.recv()).await {
                self.dispatch(Input::Signal(s));
                more = true;
            }
            while let Ok(inc) = ctl_rx.try_recv() {
                self.dispatch(Input::Control(inc));
                more = true;
            }
            self.perform_all();
            if !more {
                break;
            }
        }
        self.want_check = None; // refused while an upgrade is in progress anyway
        if !self.sup.exec_pending() {
            handoff_sys::upgrade::unblock_signals();
            return;
        }
        // The spare does not cross (the next image prepares its own): remove its notify
        // socket's file now, which the exec would leave behind.
        self.spare = None;
        // No bind may be left received and unanswered by a thread the exec ends: stop the
        // adoption watches (their fds stay open and cross the exec).
        if let Some(a) = &mut self.services.adopt {
            a.suspend();
        }
        let error = match self.export_state(&binary).and_then(|st| {
            let doc = upgrade::write(&st)?;
            let mut fds = st.fds.clone();
            fds.push(doc.as_raw_fd());
            Ok((doc, fds))
        }) {
            Ok((doc, fds)) => match upgrade::set_cloexec(&fds, false) {
                Ok(()) => {
                    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
                    let env = upgrade::exec_env(doc.as_raw_fd());
                    let e = handoff_sys::upgrade::exec(&binary, &args, &env);
                    // Still here: the exec failed and this image is intact.
                    let _ = upgrade::set_cloexec(&fds, true);
                    format!("cannot execute {}: {e}", binary.display())
                }
                Err(e) => {
                    let _ = upgrade::set_cloexec(&fds, true);
                    format!("cannot pass the state on: {e}")
                }
            },
            Err(e) => e,
        };
        if let Some(a) = &mut self.services.adopt {
            a.unsuspend();
        }
        handoff_sys::upgrade::unblock_signals();
        self.handle(Event::ExecFailed { error });
    }

    /// The state document for an exec of `binary` now (see `upgrade`).
    fn export_state(&self, binary: &Path) -> Result<State, String> {
        let now = Instant::now();
        let exported_at_ns = handoff_sys::upgrade::monotonic_ns();
        let rel = |t: Instant| -> i64 {
            i64::try_from(now.saturating_duration_since(t).as_nanos()).map_or(i64::MIN, |n| -n)
        };
        let listeners: Vec<_> = self.listeners.iter().map(|l| l.export()).collect();
        let notify = self.intake.export();
        let cgroups = self.services.cgroups.as_ref().map(|g| CgroupsState {
            generations: g.export(),
            live: {
                let mut v: Vec<_> = self
                    .cgroup_of
                    .iter()
                    .map(|(gen, cg)| (*gen, cg.name().to_string()))
                    .collect();
                v.sort();
                v
            },
            retiring: self.retiring.iter().map(|c| c.name().to_string()).collect(),
        });
        let mut requests: Vec<(RequestId, i32)> = self
            .requests
            .iter()
            .filter_map(|(r, (_, fd))| Some((*r, fd.as_ref()?.as_raw_fd())))
            .collect();
        requests.sort();
        let runtime_dir = (
            self.runtime_dir.path().to_path_buf(),
            self.runtime_dir.lock_fd(),
        );
        let metrics = match (&self.metrics, self.metrics_fd) {
            (Some(m), Some(fd)) => Some((fd, m.export())),
            _ => None,
        };
        let mut fds: Vec<i32> = listeners.iter().map(|l| l.fd).collect();
        fds.push(runtime_dir.1);
        fds.extend(notify.iter().map(|n| n.fd));
        fds.extend(&self.control_fds);
        fds.extend(metrics.as_ref().map(|m| m.0));
        fds.extend(requests.iter().map(|r| r.1));
        let adopt = self.services.adopt.as_ref().map(|a| a.export());
        fds.extend(
            adopt
                .iter()
                .flat_map(|a| a.generations.iter().map(|g| g.fd)),
        );
        let mut probes: Vec<_> = self.probes.iter().map(|(p, g)| (*p, *g)).collect();
        probes.sort();
        Ok(State {
            handoff_state: upgrade::STATE_VERSION,
            written_by: crate::VERSION.to_string(),
            exported_at_ns,
            binary: binary.to_path_buf(),
            program: self.program.clone(),
            started: rel(self.started),
            fds,
            supervisor: self.sup.export(now),
            listeners,
            runtime_dir,
            notify,
            control: self.control_fds.clone(),
            control_file: self.services.control.file.as_ref().map(|f| f.export()),
            pid_file: self
                .services
                .pid_file
                .as_ref()
                .map(|p| p.path().to_path_buf()),
            metrics,
            cgroups,
            probes,
            requests,
            next_request: self.next_request,
            adopt,
            queues: self.queues.clone(),
        })
    }

    /// Start generation `gen`: returns once the child has exec'd; [`Driver::finish_start`]
    /// then watches it.
    fn spawn(&mut self, gen: GenId) -> Result<Started, String> {
        self.recreate_deleted_files(gen);
        // A spare for another generation or stale listeners is dropped first: dropping it
        // removes its socket file, which may be the path about to be bound again.
        let spare = self
            .spare
            .take()
            .filter(|p| p.gen == gen && p.listeners == self.listener_ids());
        let Prepared {
            sock,
            plan,
            adopt,
            cgroup,
            ..
        } = match spare {
            Some(p) => {
                // Nothing sent before the child exists can be the child's.
                p.sock.discard_pending();
                p
            }
            None => {
                let sock = NotifySocket::bind(&self.runtime_dir, gen)
                    .map_err(|e| format!("cannot create notify socket: {e}"))?;
                self.prepare(gen, sock)?
            }
        };
        handoff_sys::listeners::reassert_backlogs(&self.listeners); // undo a child's listen(fd, 2)
        let pid = spawn::spawn(plan).map_err(|e| {
            let program = self.child.program.display();
            match spawn::missing_interpreter(&self.child.program) {
                // The script was replaced since start-up (a deploy): say what is really missing.
                Some(i) if e.kind() == std::io::ErrorKind::NotFound => format!(
                    "cannot execute {program}: its interpreter {} (named on its #! line) is missing",
                    i.display()
                ),
                _ => format!("cannot execute {program}: {e}"),
            }
        })?;
        Ok(Started {
            pid,
            sock,
            cgroup,
            adopt,
        })
    }

    /// Everything generation `gen`'s child needs up to the clone, around its notify socket:
    /// its environment, its plan, its cgroup (with `--cgroups`), its adoption channel.
    fn prepare(&self, gen: GenId, sock: NotifySocket) -> Result<Prepared, String> {
        let cgroup = match &self.services.cgroups {
            Some(all) => match all.create(gen) {
                Ok(cg) => Some(cg),
                Err(e) => {
                    warn!(event = "cgroup_error", gen, error = %e, msg = "cannot create the generation's cgroup; tracked by its process group", "cannot create the cgroup of generation {gen}: {e}; it is tracked by its process group");
                    None
                }
            },
            None => None,
        };
        let starter: Vec<Option<String>> =
            self.listeners.iter().map(|l| l.starter_addr()).collect();
        let names: Vec<ListenerEnv> = self
            .listeners
            .iter()
            .zip(&starter)
            .map(|(l, s)| ListenerEnv {
                name: &l.name,
                starter_addr: s.as_deref(),
            })
            .collect();
        let env = child_env::generation(&self.child.base_env, &names, gen, sock.path().as_os_str());
        let fds: Vec<BorrowedFd<'_>> = self.listeners.iter().map(|l| l.as_fd()).collect();
        let plan = spawn::SpawnPlan::prepare(
            &self.child.program,
            &self.child.argv,
            &env,
            &fds,
            self.child.creds.clone(),
        )
        .map_err(|e| format!("cannot prepare {}: {e}", self.child.program.display()))?
        .with_death_signal(self.child.stop_signal);
        let plan = if self.child.listen_pid {
            plan
        } else {
            plan.without_listen_pid()
        };
        let plan = match &cgroup {
            Some(cg) => plan
                .with_cgroup(cg.dir_fd(), cg.procs_fd())
                .map_err(|e| format!("cannot prepare {}: {e}", self.child.program.display()))?,
            None => plan,
        };
        let (plan, adopt) = match &self.services.adopt {
            Some(a) => a.prepare(gen, plan),
            None => (plan, None),
        };
        Ok(Prepared {
            gen,
            sock,
            plan,
            adopt,
            cgroup,
            listeners: self.listener_ids(),
        })
    }

    /// Once generation `gen` has started, prepare gen + 1 (generations are numbered in
    /// order), so that the next reload goes straight to the clone. Best effort: if anything
    /// fails here, the spawn prepares again and reports it.
    fn prepare_spare(&mut self, gen: GenId) {
        self.spare = NotifySocket::bind(&self.runtime_dir, gen + 1)
            .ok()
            .and_then(|sock| self.prepare(gen + 1, sock).ok());
    }

    /// Which sockets the listeners are (device and inode of each): a listener re-created
    /// since a spare was prepared makes the spare's copies stale.
    fn listener_ids(&self) -> Vec<(u64, u64)> {
        self.listeners
            .iter()
            .map(|l| {
                nix::sys::stat::fstat(l.as_fd())
                    .map(|st| (st.st_dev, st.st_ino))
                    .unwrap_or((0, 0))
            })
            .collect()
    }

    /// Watch a generation that has just exec'd: its cgroup, its bind adoption, its notify
    /// socket.
    fn finish_start(&mut self, gen: GenId, started: Started) {
        let Started {
            pid,
            sock,
            cgroup,
            adopt,
        } = started;
        if let Some(cg) = cgroup {
            self.cgroup_of.insert(gen, cg);
        }
        if let (Some(a), Some(side)) = (&mut self.services.adopt, adopt) {
            a.started(gen, pid, side, &self.listeners);
        }
        if let Err(e) = self.intake.add(gen, sock, pid) {
            warn!("cannot watch the notify socket of generation {gen}: {e}");
        }
    }

    /// After a generation has exited: did it break a shared listener (`shutdown()` on it)?
    /// Re-create what it broke; the state machine decides what follows.
    fn restore_listeners(&mut self, gen: GenId) -> usize {
        let mut restored = 0;
        for (i, l) in self.listeners.iter_mut().enumerate() {
            if !l.is_broken() {
                continue;
            }
            match l.restore() {
                Ok(()) => {
                    self.spare = None; // it holds a copy of the broken one
                    warn!(event = "listener_restored", gen, index = i, addr = %l.local, msg = "listener stopped listening (a process called shutdown() on it); re-created it",
                        "listener {} stopped listening after generation {gen} exited (a process called shutdown() on it); re-created it", l.local);
                    restore_in_store(self.services.manager.as_ref(), l);
                    restored += 1;
                }
                Err(e) => {
                    error!(event = "listener_broken", gen, index = i, addr = %l.local, error = %e, msg = "listener stopped listening and cannot be re-created",
                    "listener {} stopped listening after generation {gen} exited and cannot be re-created: {e}", l.local)
                }
            }
        }
        restored
    }

    /// Remove the cgroups of retired generations that have emptied.
    fn remove_empty_cgroups(&mut self) {
        self.retiring
            .retain(|cg| cg.is_populated().unwrap_or(true) || cg.remove().is_err());
    }

    /// A unix socket file deleted from under handoff (a cleanup job, a deploy script) makes
    /// the listener unreachable by its path. Before a generation starts, bind it again: the
    /// new generation gets the new socket (the old ones keep theirs until they drain).
    fn recreate_deleted_files(&mut self, gen: GenId) {
        for (i, l) in self.listeners.iter_mut().enumerate() {
            if !l.file_missing() {
                continue;
            }
            match l.restore() {
                Ok(()) => {
                    warn!(event = "listener_restored", gen, index = i, addr = %l.local, msg = "socket file deleted or replaced; bound it again",
                    "the socket file of {} was deleted or replaced; bound it again for generation {gen}", l.local);
                    restore_in_store(self.services.manager.as_ref(), l);
                }
                Err(e) => {
                    error!(event = "listener_broken", gen, index = i, addr = %l.local, error = %e, msg = "socket file deleted or replaced and cannot be bound again",
                    "the socket file of {} was deleted or replaced and cannot be bound again: {e}", l.local)
                }
            }
        }
    }

    fn run_probe(&mut self, gen: GenId, pid: Pid) {
        let Some(cmd) = self.services.probe.clone() else {
            return;
        };
        let env = child_env::probe(&self.child.base_env, gen, pid);
        let argv: [std::ffi::OsString; 3] = ["sh".into(), "-c".into(), cmd.into()];
        let res =
            spawn::SpawnPlan::prepare(std::path::Path::new("/bin/sh"), &argv, &env, &[], None)
                .and_then(spawn::spawn);
        match res {
            Ok(probe) => {
                self.probes.insert(probe, gen);
            }
            Err(e) => {
                warn!(
                    event = "probe_error",
                    gen, error = %e, msg = "cannot run the ready probe", "cannot run the ready probe: {e}"
                );
                self.handle(Event::ProbeResult { gen, ok: false });
            }
        }
    }

    /// The processes of generation `gen` (main process `pid`): its cgroup, else its tree.
    fn generation_pids(&self, gen: GenId, pid: Pid) -> Vec<u32> {
        match self.cgroup_of.get(&gen).and_then(|cg| cg.pids().ok()) {
            Some(p) if !p.is_empty() => p,
            _ => accepting::process_tree(pid),
        }
    }

    /// The stream listeners (index, inode): the ones a server accepts on.
    fn stream_listeners(&self) -> Vec<(usize, u64)> {
        self.listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| l.kind != Kind::Udp)
            .filter_map(|(i, l)| Some((i, accepting::inode(l.as_fd()).ok()?)))
            .collect()
    }

    /// `Action::Scan`: does `gen` wait to accept on every stream listener? With `prove`,
    /// listeners waited on only edge-triggered get a proof-of-accept connection.
    fn scan(&mut self, gen: GenId, pid: Pid, prove: bool) -> (acc::Accepting, Option<u32>) {
        let pids = self.generation_pids(gen, pid);
        let stream = self.stream_listeners();
        let inodes: Vec<u64> = stream.iter().map(|(_, ino)| *ino).collect();
        let seen = accepting::scan(&pids, &inodes);
        let mut per = Vec::with_capacity(seen.len());
        for ((i, _), s) in stream.iter().zip(seen) {
            let mut wait = s.wait;
            if prove && wait == ListenerWait::EdgeTriggered && self.listeners[*i].kind == Kind::Tcp
            {
                wait = self.prove(gen, *i, &pids);
            }
            per.push((wait, s.fd));
        }
        acc::aggregate(&per)
    }

    /// One step of proving listener `i` for `gen`: a connection of handoff's own, which only
    /// counts when a process of `gen` accepts it. One in flight per listener; one accepted
    /// by another generation proves nothing and is replaced.
    fn prove(&mut self, gen: GenId, i: usize, pids: &[u32]) -> ListenerWait {
        if let Some(p) = self.proofs.get_mut(&(gen, i)) {
            match p.probe.accepted_inode() {
                None => return ListenerWait::EdgeTriggered, // still queued
                Some(ino) if accepting::holds_socket(pids, ino) => {
                    self.proofs.remove(&(gen, i)); // closed: the server sees EOF
                    return ListenerWait::Proven;
                }
                Some(_) => {
                    // Accepted elsewhere (or its fd not installed yet: look again first).
                    p.elsewhere += 1;
                    if p.elsewhere < 3 {
                        return ListenerWait::EdgeTriggered;
                    }
                    self.proofs.remove(&(gen, i));
                }
            }
        }
        let Ok(addr) = self.listeners[i].local.parse::<std::net::SocketAddr>() else {
            return ListenerWait::EdgeTriggered;
        };
        match AcceptProbe::connect(addr) {
            Ok(probe) => {
                self.proofs.insert(
                    (gen, i),
                    Proof {
                        probe,
                        elsewhere: 0,
                    },
                );
            }
            Err(e) => {
                debug!(event = "proof_error", gen, index = i, error = %e, msg = "cannot connect a proof-of-accept connection", "cannot connect to {addr} to prove generation {gen}: {e}")
            }
        }
        ListenerWait::EdgeTriggered
    }

    /// Every second: an accept queue that holds connections, does not shrink, and that no
    /// task of any generation waits on, is stuck; say so once, and once when it moves again.
    fn check_queues(&mut self) {
        let n = self.listeners.len();
        self.queues.resize_with(n, QueueWatch::default);
        let queued: Vec<Option<u32>> = self
            .listeners
            .iter()
            .map(|l| accepting::accept_queue(l.as_fd()))
            .collect();
        if queued.iter().all(|q| q.unwrap_or(0) == 0)
            && self
                .queues
                .iter()
                .all(|w| !w.stuck() && w.queued().unwrap_or(0) == 0)
        {
            for (w, q) in self.queues.iter_mut().zip(&queued) {
                if q.is_some() {
                    w.sample(0, false);
                }
            }
            return;
        }
        // Who waits to accept, over every live generation.
        let stream = self.stream_listeners();
        let inodes: Vec<u64> = stream.iter().map(|(_, ino)| *ino).collect();
        let mut pids = Vec::new();
        for g in self.sup.snapshot(Instant::now()).generations {
            if let Some(pid) = g.phase.pid() {
                pids.extend(self.generation_pids(g.gen, pid));
            }
        }
        let seen = accepting::scan(&pids, &inodes);
        for (i, q) in queued.iter().enumerate() {
            let Some(q) = *q else { continue };
            let waits = stream
                .iter()
                .zip(&seen)
                .any(|((j, _), s)| *j == i && s.wait != ListenerWait::None);
            let l = &self.listeners[i];
            match self.queues[i].sample(q, waits) {
                Some(QueueChange::Stuck { queued }) => {
                    warn!(event = "accept_queue_stuck", index = i, addr = %l.local, accept_queue = queued,
                        msg = "connections wait in the accept queue and no generation accepts them",
                        "{queued} connection(s) wait in the accept queue of {} and no generation accepts them: does the server take fd {} (LISTEN_FDS), or bind a port of its own?", l.local, 3 + i)
                }
                Some(QueueChange::Unstuck { queued }) => {
                    info!(event = "accept_queue_moving", index = i, addr = %l.local, accept_queue = queued,
                        msg = "the accept queue moves again", "the accept queue of {} moves again", l.local)
                }
                None => {}
            }
        }
    }

    /// Remove what handoff created and make sure no process of ours outlives us.
    fn cleanup(&mut self, code: i32) {
        self.intake.clear();
        self.services.adopt = None;
        self.services.pid_file = None;
        self.services.control.file = None;
        for l in self.listeners.iter().filter(|l| !l.kept_by_manager()) {
            if let Some(f) = &l.unix_file {
                f.remove();
            }
        }
        // Every generation's cgroup, emptied and removed (what a cgroup held may have left
        // the process tree, so the subreaper pass below would not see it).
        let cgroups: Vec<GenCgroup> = self
            .cgroup_of
            .drain()
            .map(|(_, cg)| cg)
            .chain(self.retiring.drain(..))
            .collect();
        for cg in &cgroups {
            if cg.is_populated().unwrap_or(true) {
                let _ = cg.kill();
            }
        }
        for cg in cgroups {
            let _ = cg.wait_empty(std::time::Duration::from_secs(2));
            let _ = cg.remove();
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
                msg = "killed leftover processes",
                "killed {} leftover process(es)",
                left.len()
            );
            reaper::reap_remaining(std::time::Duration::from_secs(2));
        }
        info!(event = "exit", code, "handoff exiting");
    }
}

/// A stored listener was re-created: the store must hold the new socket, not the dead one.
fn restore_in_store(manager: Option<&SdNotify>, l: &Listener) {
    let Some(m) = manager.filter(|_| l.stored) else {
        return;
    };
    if let Err(e) = m
        .remove_fd(&l.name)
        .and_then(|()| m.store_fd(&l.name, l.as_fd()))
    {
        warn!(event = "fd_store_error", name = %l.name, error = %e, msg = "cannot put the listener in the service manager's fd store",
            "cannot put listener {} in the service manager's fd store: {e}", l.name);
    }
}

/// A generation still not ready: is its main process a wrapper (`npm start`, `sh -c` without
/// `exec`) whose child received the sockets with the *wrapper's* `LISTEN_PID`? Socket-
/// activation libraries then ignore the sockets, and the server binds its own port or never
/// gets ready. Say what to do (once per generation: the state machine asks once).
fn check_wrapper(gen: GenId, pid: Pid, listen_pid: bool) {
    use handoff_sys::procfs;
    if !listen_pid {
        return;
    }
    let leader = pid.to_string();
    for d in procfs::descendants(pid) {
        let sees_wrapper = procfs::environ_var(d, "LISTEN_PID").as_deref() == Some(leader.as_str())
            && procfs::environ_var(d, "LISTEN_FDS").is_some();
        if sees_wrapper {
            let wrapper = procfs::comm(pid).unwrap_or_default();
            let child = procfs::comm(d).unwrap_or_default();
            warn!(event = "wrapper_listen_pid", gen, pid, wrapper = %wrapper, child_pid = d, child = %child,
                msg = "the main process is a wrapper: its child sees the wrapper's LISTEN_PID and ignores the sockets",
                "generation {gen} is not ready: its main process {pid} ({wrapper}) is a wrapper, and its child {d} ({child}) has LISTEN_PID={pid}, not its own pid, so a socket-activation library there ignores the sockets. Make the wrapper exec the server (sh -c 'exec ...', or run the server directly instead of through npm/cargo), or pass --no-listen-pid if its library accepts a missing LISTEN_PID");
            return;
        }
    }
}
