//! The generation state machine: every reload, drain, rollback and shutdown decision.
//!
//! It is *sans-IO* in quinn-proto's sense: it owns no process, socket or clock. The shell
//! feeds it [`Event`]s with the current [`Instant`] through [`Supervisor::handle`], then drains
//! [`Supervisor::poll_action`] and performs each [`Action`], and sleeps until
//! [`Supervisor::poll_timeout`]. Unit tests drive it with a fake clock and no processes.
//!
//! Rules that keep it simple:
//! - Phase changes go through one function, `set_phase`, which arms and disarms the matching
//!   timers (as systemd's `service_set_state` does). Handlers never touch timers directly.
//! - Timers are keyed by generation, never by pid: once a generation has exited its timers are
//!   gone, so a late deadline can never signal a pid that was reaped and reused.
//! - Events that make no sense in the current phase (READY=1 from a draining child, an exit of
//!   an unknown pid) are ignored, never a panic.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use crate::notify::NotifyMessage;
use crate::signal::Signal;

/// Generation number: 1 for the first child, +1 for every child started since.
pub type GenId = u64;
/// A process id as the kernel reports it.
pub type Pid = u32;

/// How a process ended, as reported by the reaper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// `exit(code)`.
    Exited(i32),
    /// Killed by a signal.
    Signaled(Signal),
}

impl ExitStatus {
    /// The shell convention: the code itself, or 128 + the signal number.
    pub fn as_exit_code(self) -> i32 {
        match self {
            Self::Exited(code) => code,
            Self::Signaled(sig) => 128 + sig.number(),
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited(code) => write!(f, "exit status {code}"),
            Self::Signaled(sig) => write!(f, "killed by {sig}"),
        }
    }
}

/// Documented exit codes of handoff itself (see README, "Exit status").
pub mod exit_code {
    /// Stopped on request; every child exited within the drain timeout.
    pub const OK: i32 = 0;
    /// Could not start: bad listener, the first child could not be executed, ...
    pub const FAILURE: i32 = 1;
    /// Invalid command line (clap's convention).
    pub const USAGE: i32 = 2;
    /// Stopped on request, but some processes had to be killed with SIGKILL (drain timeout
    /// reached, or a second stop signal).
    pub const FORCED: i32 = 3;
}

/// Whether a child that dies on its own is replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Start a new generation, with exponential back-off.
    Always,
    /// Exit with the child's status.
    Never,
}

/// Configuration of the state machine, already validated.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Sent to a generation's main process to make it drain.
    pub stop_signal: Signal,
    /// Time a stopping generation has before its process group is killed.
    pub drain_timeout: Duration,
    /// Time a new child has to report READY=1.
    pub ready_timeout: Duration,
    /// Treat a child as ready after this delay, for servers that cannot notify.
    pub ready_after: Option<Duration>,
    /// What to do when the serving child dies on its own.
    pub restart: RestartPolicy,
    /// First back-off delay before restarting a crashed child; doubled at each crash.
    pub backoff_initial: Duration,
    /// Upper bound of the back-off delay.
    pub backoff_max: Duration,
    /// A child that served at least this long resets the back-off.
    pub backoff_reset_after: Duration,
    /// How long to wait for a process group to die after SIGKILL before giving up on it.
    pub kill_wait: Duration,
    /// Run a readiness probe at this interval while a child starts (`--ready-probe`).
    pub probe_interval: Option<Duration>,
    /// Quiet time after the last watched-file change before reloading (`--watch-debounce`).
    pub watch_debounce: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            stop_signal: Signal::TERM,
            drain_timeout: Duration::from_secs(30),
            ready_timeout: Duration::from_secs(60),
            ready_after: None,
            restart: RestartPolicy::Always,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            backoff_reset_after: Duration::from_secs(10),
            kill_wait: Duration::from_secs(5),
            probe_interval: None,
            watch_debounce: Duration::from_millis(500),
        }
    }
}

/// Everything that can happen to handoff, already validated and typed by the shell.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// SIGHUP, a control command or a watched file: start a new generation.
    Reload,
    /// SIGTERM/SIGINT or `handoff stop`. A second one means "kill everything now".
    Shutdown { signal: Signal },
    /// A signal to pass on to the serving child (SIGUSR1, SIGUSR2).
    Forward { signal: Signal },
    /// The shell started the process for `gen`.
    Spawned { gen: GenId, pid: Pid },
    /// The shell could not start the process for `gen` (exec failed, ...).
    SpawnFailed { gen: GenId, error: String },
    /// A datagram from `gen`'s notify socket, sender already checked.
    Notify { gen: GenId, msg: NotifyMessage },
    /// The single reaper collected `pid`. Unknown pids (adopted orphans) are ignored.
    Exited { pid: Pid, status: ExitStatus },
    /// `poll_timeout()` has passed.
    Timeout,
    /// A `--ready-probe` run for `gen` finished; `ok` when it exited 0.
    ProbeResult { gen: GenId, ok: bool },
    /// A watched file changed (`--watch`); reloads after the debounce delay.
    FileChanged,
}

/// Whom a signal is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// The generation's main process only.
    Leader,
    /// Its whole process group (the main process was started as the group leader, so the
    /// group id is its pid).
    Group,
}

/// What the shell must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Start the child for generation `gen` and answer with `Spawned` or `SpawnFailed`.
    Spawn { gen: GenId },
    /// Send `signal` to `pid` (or its group). `pid` has not been reaped yet.
    Signal {
        gen: GenId,
        pid: Pid,
        target: Target,
        signal: Signal,
    },
    /// `gen` is gone: SIGKILL whatever is left in its process group `pgid` (forked workers
    /// that outlived their master; `None` when no process was started), then drain and
    /// release the generation's notify socket.
    Release { gen: GenId, pgid: Option<Pid> },
    /// Run the readiness probe for `gen` (whose main process is `pid`) and answer with
    /// `ProbeResult`.
    Probe { gen: GenId, pid: Pid },
    /// A fact worth logging; also what `handoff reload` and `status` report.
    Report(Report),
    /// handoff is done: clean up and exit with this code.
    Exit(i32),
}

/// Why a generation is killed with SIGKILL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillReason {
    /// It did not exit within the drain timeout.
    DrainTimeout,
    /// It did not report READY=1 within the ready timeout.
    ReadyTimeout,
    /// A second stop request arrived.
    Forced,
}

/// Why a new generation did not take over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// The process could not be started.
    SpawnFailed(String),
    /// It exited before it reported READY=1.
    ExitedBeforeReady(ExitStatus),
    /// It did not report READY=1 in time.
    ReadyTimeout(Duration),
    /// handoff was asked to stop while it was starting.
    Shutdown,
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SpawnFailed(e) => write!(f, "could not be started: {e}"),
            Self::ExitedBeforeReady(st) => write!(f, "exited before ready ({st})"),
            Self::ReadyTimeout(d) => {
                write!(f, "not ready after {:.1}s (ready timeout)", d.as_secs_f64())
            }
            Self::Shutdown => write!(f, "shutdown requested while it was starting"),
        }
    }
}

/// Why a generation was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartReason {
    /// The first child.
    Initial,
    /// A reload request.
    Reload,
    /// The serving child died and the restart policy replaces it.
    Restart,
}

/// Facts for the log and for control clients.
#[derive(Clone, Debug, PartialEq)]
pub enum Report {
    /// A reload was requested; `coalesced` when it was folded into one already pending.
    ReloadRequested { coalesced: bool },
    /// A reload request arrived while shutting down and was dropped.
    ReloadIgnored,
    Spawned {
        gen: GenId,
        pid: Pid,
        reason: StartReason,
    },
    /// READY=1 (or `--ready-after`) `after` the spawn.
    Ready {
        gen: GenId,
        pid: Pid,
        after: Duration,
    },
    /// The stop signal was sent.
    Stopping {
        gen: GenId,
        pid: Pid,
        signal: Signal,
    },
    /// A generation that was told to stop has exited, `after` the stop signal.
    Drained {
        gen: GenId,
        pid: Pid,
        after: Duration,
        status: ExitStatus,
    },
    /// SIGKILL sent to the process group.
    Killed {
        gen: GenId,
        pid: Pid,
        reason: KillReason,
    },
    /// A new generation did not take over; the previous one (if any) keeps serving.
    Failed {
        gen: GenId,
        pid: Option<Pid>,
        reason: FailReason,
    },
    /// The outcome of a reload. `serving` is the generation serving afterwards.
    ReloadFinished {
        gen: GenId,
        ok: bool,
        after: Duration,
        serving: Option<(GenId, Pid)>,
    },
    /// The serving child died on its own.
    Exited {
        gen: GenId,
        pid: Pid,
        status: ExitStatus,
    },
    /// The process of a generation that failed to start is gone.
    Reaped {
        gen: GenId,
        pid: Pid,
        status: ExitStatus,
    },
    /// A replacement will be started after `delay`.
    RestartScheduled { delay: Duration },
    /// STATUS= from a child.
    Status { gen: GenId, pid: Pid, text: String },
    /// STOPPING=1 from a child.
    ChildStopping { gen: GenId, pid: Pid },
    /// A signal was forwarded to the serving child, or dropped because none serves.
    Forwarded { gen: Option<GenId>, signal: Signal },
    /// Shutdown began (or was escalated when `forced`).
    ShutdownStarted { signal: Signal, forced: bool },
    /// A process group did not die within `kill_wait` after SIGKILL (stuck in the kernel?).
    Unkillable { gen: GenId, pid: Pid },
}

/// The lifecycle of one generation, named after what its process is going through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// `Action::Spawn` issued, no pid yet.
    Spawning,
    /// Running, waiting for READY=1.
    Starting,
    /// Ready and accepting.
    Serving,
    /// Stop signal sent; draining until it exits or the drain timeout.
    Stopping,
    /// SIGKILL sent to its group; waiting for the reaper.
    Killing,
}

/// A snapshot of one generation, for `status`.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationStatus {
    pub gen: GenId,
    pub pid: Option<Pid>,
    pub phase: Phase,
    pub age: Duration,
    pub time_to_ready: Option<Duration>,
}

#[derive(Clone, Debug)]
struct Generation {
    id: GenId,
    pid: Option<Pid>,
    phase: Phase,
    reason: StartReason,
    spawned_at: Instant,
    ready_at: Option<Instant>,
    stop_at: Option<Instant>,
}

/// Deadlines, each keyed by the generation it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// `--ready-after` elapsed: the child counts as ready.
    ReadyAfter(GenId),
    /// `--ready-timeout` elapsed: the child failed to start.
    ReadyDeadline(GenId),
    /// `--drain-timeout` elapsed: SIGKILL the group.
    KillDeadline(GenId),
    /// SIGKILL sent long ago and still not reaped: give up on it.
    ReapDeadline(GenId),
    /// Next run of the readiness probe.
    Probe(GenId),
    /// Back-off before replacing a crashed child.
    Restart,
    /// Watched files are quiet again: reload.
    WatchDebounce,
}

impl Timer {
    fn gen(self) -> Option<GenId> {
        match self {
            Self::ReadyAfter(g)
            | Self::ReadyDeadline(g)
            | Self::KillDeadline(g)
            | Self::ReapDeadline(g)
            | Self::Probe(g) => Some(g),
            Self::Restart | Self::WatchDebounce => None,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct ShutdownState {
    forced: bool,
}

/// The state machine. See the module documentation.
#[derive(Debug)]
pub struct Supervisor {
    policy: Policy,
    gens: Vec<Generation>,
    next_gen: GenId,
    /// A reload was requested while a generation was starting: start one more afterwards.
    pending_reload: bool,
    shutdown: Option<ShutdownState>,
    /// Some process had to be SIGKILLed during shutdown.
    killed_any: bool,
    /// A child has been ready at least once: before that, exec failures end handoff.
    ever_ready: bool,
    backoff: Duration,
    timers: BTreeMap<Timer, Instant>,
    actions: VecDeque<Action>,
    finished: Option<i32>,
    /// Exit code decided before the children are down (`--restart never`).
    finished_code: Option<i32>,
    reloads: u64,
}

impl Supervisor {
    /// A supervisor that immediately asks for generation 1.
    pub fn new(policy: Policy, now: Instant) -> Self {
        let backoff = policy.backoff_initial;
        let mut sup = Self {
            policy,
            gens: Vec::new(),
            next_gen: 1,
            pending_reload: false,
            shutdown: None,
            killed_any: false,
            ever_ready: false,
            backoff,
            timers: BTreeMap::new(),
            actions: VecDeque::new(),
            finished: None,
            finished_code: None,
            reloads: 0,
        };
        sup.start_generation(StartReason::Initial, now);
        sup
    }

    /// The only mutator: record `event`, then queue the actions that follow from it.
    pub fn handle(&mut self, event: Event, now: Instant) {
        if self.finished.is_some() {
            return;
        }
        match event {
            Event::Reload => self.on_reload(now),
            Event::Shutdown { signal } => self.on_shutdown(signal, now),
            Event::Forward { signal } => self.on_forward(signal),
            Event::Spawned { gen, pid } => self.on_spawned(gen, pid, now),
            Event::SpawnFailed { gen, error } => self.on_spawn_failed(gen, error, now),
            Event::Notify { gen, msg } => self.on_notify(gen, &msg, now),
            Event::Exited { pid, status } => self.on_exited(pid, status, now),
            Event::Timeout => self.on_timeout(now),
            Event::ProbeResult { gen, ok } => self.on_probe_result(gen, ok, now),
            Event::FileChanged => {
                if self.shutdown.is_none() {
                    // Trailing debounce: a burst of writes gives one reload, after it ends.
                    self.timers
                        .insert(Timer::WatchDebounce, now + self.policy.watch_debounce);
                }
            }
        }
        self.check_finished();
    }

    /// The next thing the shell must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to send `Event::Timeout` next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.values().min().copied()
    }

    /// `Some(code)` once handoff should exit (also queued as `Action::Exit`).
    pub fn finished(&self) -> Option<i32> {
        self.finished
    }

    /// The generation currently serving (the newest one if several).
    pub fn serving(&self) -> Option<(GenId, Pid)> {
        self.gens
            .iter()
            .rev()
            .find(|g| g.phase == Phase::Serving)
            .and_then(|g| g.pid.map(|p| (g.id, p)))
    }

    /// Whether a generation is being started right now.
    pub fn starting(&self) -> Option<GenId> {
        self.gens
            .iter()
            .find(|g| matches!(g.phase, Phase::Spawning | Phase::Starting))
            .map(|g| g.id)
    }

    /// Why generation `gen` was started.
    pub fn start_reason(&self, gen: GenId) -> Option<StartReason> {
        self.find(gen).map(|i| self.gens[i].reason)
    }

    /// Whether a shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_some()
    }

    /// Number of reloads started so far.
    pub fn reload_count(&self) -> u64 {
        self.reloads
    }

    /// Pid of a live generation's main process.
    pub fn pid_of(&self, gen: GenId) -> Option<Pid> {
        self.find(gen).and_then(|i| self.gens[i].pid)
    }

    /// A snapshot of every live generation, oldest first.
    pub fn status(&self, now: Instant) -> Vec<GenerationStatus> {
        self.gens
            .iter()
            .map(|g| GenerationStatus {
                gen: g.id,
                pid: g.pid,
                phase: g.phase,
                age: now.saturating_duration_since(g.spawned_at),
                time_to_ready: g
                    .ready_at
                    .map(|r| r.saturating_duration_since(g.spawned_at)),
            })
            .collect()
    }

    // ---- event handlers ------------------------------------------------------------------

    fn on_reload(&mut self, now: Instant) {
        if self.shutdown.is_some() {
            self.report(Report::ReloadIgnored);
            return;
        }
        if self.starting().is_some() {
            // Coalesce: however many requests arrive during a start, one more reload follows.
            self.report(Report::ReloadRequested {
                coalesced: self.pending_reload,
            });
            self.pending_reload = true;
            return;
        }
        self.report(Report::ReloadRequested { coalesced: false });
        // An explicit request overrides a pending back-off: the operator likely deployed a fix.
        self.timers.remove(&Timer::Restart);
        self.start_generation(StartReason::Reload, now);
    }

    fn on_shutdown(&mut self, signal: Signal, now: Instant) {
        match self.shutdown {
            Some(ShutdownState { forced: true }) => {}
            Some(_) => {
                self.shutdown = Some(ShutdownState { forced: true });
                self.report(Report::ShutdownStarted {
                    signal,
                    forced: true,
                });
                for i in 0..self.gens.len() {
                    if self.gens[i].pid.is_some() && self.gens[i].phase != Phase::Killing {
                        self.kill(i, KillReason::Forced, now);
                    }
                }
            }
            None => {
                self.shutdown = Some(ShutdownState { forced: false });
                self.report(Report::ShutdownStarted {
                    signal,
                    forced: false,
                });
                self.pending_reload = false;
                self.timers.remove(&Timer::Restart);
                self.timers.remove(&Timer::WatchDebounce);
                // First report the interrupted start (while the old generation still counts
                // as serving), then tell everyone to stop.
                if let Some(i) = self.gens.iter().position(|g| g.phase == Phase::Starting) {
                    self.fail_reload(i, FailReason::Shutdown, now);
                }
                for i in 0..self.gens.len() {
                    match self.gens[i].phase {
                        Phase::Starting | Phase::Serving => self.stop(i, now),
                        // Spawning: stopped as soon as its pid is known (on_spawned).
                        Phase::Spawning | Phase::Stopping | Phase::Killing => {}
                    }
                }
            }
        }
    }

    fn on_forward(&mut self, signal: Signal) {
        match self.serving() {
            Some((gen, pid)) => {
                self.actions.push_back(Action::Signal {
                    gen,
                    pid,
                    target: Target::Leader,
                    signal,
                });
                self.report(Report::Forwarded {
                    gen: Some(gen),
                    signal,
                });
            }
            None => self.report(Report::Forwarded { gen: None, signal }),
        }
    }

    fn on_spawned(&mut self, gen: GenId, pid: Pid, now: Instant) {
        let Some(i) = self.find(gen) else { return };
        if self.gens[i].phase != Phase::Spawning {
            return;
        }
        self.gens[i].pid = Some(pid);
        let reason = self.gens[i].reason;
        self.report(Report::Spawned { gen, pid, reason });
        self.set_phase(i, Phase::Starting, now);
        if let Some(sd) = self.shutdown {
            if sd.forced {
                self.kill(i, KillReason::Forced, now);
            } else {
                self.fail_reload(i, FailReason::Shutdown, now);
                self.stop(i, now);
            }
        }
    }

    fn on_spawn_failed(&mut self, gen: GenId, error: String, now: Instant) {
        let Some(i) = self.find(gen) else { return };
        if self.gens[i].phase != Phase::Spawning {
            return;
        }
        let g = self.gens[i].clone();
        self.remove(i);
        self.fail_start(&g, FailReason::SpawnFailed(error), now);
        if self.shutdown.is_none() {
            if self.ever_ready {
                self.after_failed_start(now);
            } else {
                // Nothing ever served: this is a configuration error, not a transient crash.
                self.finish(exit_code::FAILURE);
            }
        }
    }

    fn on_notify(&mut self, gen: GenId, msg: &NotifyMessage, now: Instant) {
        let Some(i) = self.find(gen) else { return };
        let Some(pid) = self.gens[i].pid else { return };
        // READY=1 first: the hand-over (stop signals) must not wait behind log lines.
        if msg.ready && self.gens[i].phase == Phase::Starting {
            self.become_ready(i, now);
        }
        if let Some(text) = &msg.status {
            self.report(Report::Status {
                gen,
                pid,
                text: text.clone(),
            });
        }
        if msg.stopping {
            self.report(Report::ChildStopping { gen, pid });
        }
        if let Some(usec) = msg.extend_timeout_usec {
            // systemd semantics: the current phase's deadline becomes at least now + usec.
            let timer = match self.gens[i].phase {
                Phase::Starting => Some(Timer::ReadyDeadline(gen)),
                Phase::Stopping => Some(Timer::KillDeadline(gen)),
                _ => None,
            };
            if let Some(t) = timer {
                let want = now + Duration::from_micros(usec);
                if let Some(at) = self.timers.get_mut(&t) {
                    *at = (*at).max(want);
                }
            }
        }
    }

    fn on_exited(&mut self, pid: Pid, status: ExitStatus, now: Instant) {
        let Some(i) = self.gens.iter().position(|g| g.pid == Some(pid)) else {
            return; // an adopted orphan, or a worker: nothing to decide
        };
        let g = self.gens[i].clone();
        let gen = g.id;
        if g.phase == Phase::Spawning {
            return;
        }
        // Release first (leftover workers killed, notify socket closed), so that every report
        // below describes a generation that is entirely gone.
        self.remove_exited(i, pid);
        match g.phase {
            Phase::Spawning => {}
            Phase::Starting => {
                self.fail_start(&g, FailReason::ExitedBeforeReady(status), now);
                if self.shutdown.is_none() {
                    if self.policy.restart == RestartPolicy::Never && self.serving().is_none() {
                        self.begin_exit(status.as_exit_code(), now);
                    } else {
                        self.after_failed_start(now);
                    }
                }
            }
            Phase::Serving => {
                self.report(Report::Exited { gen, pid, status });
                let served = g
                    .ready_at
                    .map_or(Duration::ZERO, |r| now.saturating_duration_since(r));
                if self.serving().is_some() || self.starting().is_some() {
                    // Another generation serves or is about to: nothing to replace.
                } else if self.policy.restart == RestartPolicy::Never {
                    self.begin_exit(status.as_exit_code(), now);
                } else {
                    if served >= self.policy.backoff_reset_after {
                        self.backoff = self.policy.backoff_initial;
                    }
                    self.schedule_restart(now);
                }
            }
            Phase::Stopping | Phase::Killing if g.ready_at.is_none() => {
                self.report(Report::Reaped { gen, pid, status });
                self.after_failed_start(now);
            }
            Phase::Stopping | Phase::Killing => {
                let after = g
                    .stop_at
                    .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
                self.report(Report::Drained {
                    gen,
                    pid,
                    after,
                    status,
                });
            }
        }
    }

    fn on_probe_result(&mut self, gen: GenId, ok: bool, now: Instant) {
        let Some(i) = self.find(gen) else { return };
        if self.gens[i].phase != Phase::Starting {
            return;
        }
        if ok {
            self.become_ready(i, now);
        } else if let Some(every) = self.policy.probe_interval {
            self.timers.insert(Timer::Probe(gen), now + every);
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        // Handle expired timers in deadline order; each handler may arm or disarm others.
        while let Some((timer, _)) = self
            .timers
            .iter()
            .filter(|(_, at)| **at <= now)
            .min_by_key(|(_, at)| **at)
            .map(|(t, at)| (*t, *at))
        {
            self.timers.remove(&timer);
            let idx = timer.gen().and_then(|g| self.find(g));
            match (timer, idx) {
                (Timer::Restart, _) if self.shutdown.is_none() && self.starting().is_none() => {
                    self.start_generation(StartReason::Restart, now);
                }
                (Timer::WatchDebounce, _) => self.on_reload(now),
                (Timer::Probe(gen), Some(i)) if self.gens[i].phase == Phase::Starting => {
                    // Not re-armed here: the next run is scheduled when this one reports.
                    if let Some(pid) = self.gens[i].pid {
                        self.actions.push_back(Action::Probe { gen, pid });
                    }
                }
                (Timer::ReadyAfter(_), Some(i)) if self.gens[i].phase == Phase::Starting => {
                    self.become_ready(i, now);
                }
                (Timer::ReadyDeadline(_), Some(i)) if self.gens[i].phase == Phase::Starting => {
                    let waited = now.saturating_duration_since(self.gens[i].spawned_at);
                    self.fail_reload(i, FailReason::ReadyTimeout(waited), now);
                    self.kill(i, KillReason::ReadyTimeout, now);
                    // The replacement (if any) is decided when the reaper reports the exit.
                }
                (Timer::KillDeadline(_), Some(i)) if self.gens[i].phase == Phase::Stopping => {
                    self.kill(i, KillReason::DrainTimeout, now);
                }
                (Timer::ReapDeadline(_), Some(i)) if self.gens[i].phase == Phase::Killing => {
                    let g = &self.gens[i];
                    let (gen, pid) = (g.id, g.pid.unwrap_or(0));
                    self.report(Report::Unkillable { gen, pid });
                    // Forget it (a late exit is then an unknown pid, never signalled again)
                    // and carry on as if it had exited: replace it if nothing serves.
                    self.remove(i);
                    self.after_failed_start(now);
                }
                _ => {} // stale: the generation left that phase
            }
        }
    }

    // ---- transitions ---------------------------------------------------------------------

    fn start_generation(&mut self, reason: StartReason, now: Instant) {
        let id = self.next_gen;
        self.next_gen += 1;
        if reason == StartReason::Reload {
            self.reloads += 1;
        }
        self.gens.push(Generation {
            id,
            pid: None,
            phase: Phase::Spawning,
            reason,
            spawned_at: now,
            ready_at: None,
            stop_at: None,
        });
        self.actions.push_back(Action::Spawn { gen: id });
    }

    fn become_ready(&mut self, i: usize, now: Instant) {
        let (gen, pid) = (self.gens[i].id, self.gens[i].pid.unwrap_or(0));
        let after = now.saturating_duration_since(self.gens[i].spawned_at);
        self.gens[i].ready_at = Some(now);
        self.ever_ready = true;
        self.set_phase(i, Phase::Serving, now);
        // Only now may older generations go: until this instant they were the ones accepting.
        // Their stop signals come before any report, so no log write delays the hand-over.
        for j in 0..self.gens.len() {
            if j != i && self.gens[j].phase == Phase::Serving {
                self.stop(j, now);
            }
        }
        self.report(Report::Ready { gen, pid, after });
        if self.gens[i].reason == StartReason::Reload {
            self.report(Report::ReloadFinished {
                gen,
                ok: true,
                after,
                serving: Some((gen, pid)),
            });
        }
        self.start_pending_reload(now);
    }

    /// Record that the starting generation `i` will not take over, and report it.
    fn fail_reload(&mut self, i: usize, reason: FailReason, now: Instant) {
        let g = self.gens[i].clone();
        self.fail_start(&g, reason, now);
    }

    fn fail_start(&mut self, g: &Generation, reason: FailReason, now: Instant) {
        let after = now.saturating_duration_since(g.spawned_at);
        self.report(Report::Failed {
            gen: g.id,
            pid: g.pid,
            reason,
        });
        if g.reason == StartReason::Reload {
            let serving = self.serving();
            self.report(Report::ReloadFinished {
                gen: g.id,
                ok: false,
                after,
                serving,
            });
        }
    }

    /// After a start that failed (and whose process is gone): follow up on pending requests
    /// or replace a missing server.
    fn after_failed_start(&mut self, now: Instant) {
        if self.shutdown.is_some() || self.starting().is_some() {
            return;
        }
        if self.pending_reload {
            self.start_pending_reload(now);
        } else if self.serving().is_none() {
            self.schedule_restart(now);
        }
    }

    fn start_pending_reload(&mut self, now: Instant) {
        if self.pending_reload && self.shutdown.is_none() && self.starting().is_none() {
            self.pending_reload = false;
            self.timers.remove(&Timer::Restart);
            self.start_generation(StartReason::Reload, now);
        }
    }

    fn schedule_restart(&mut self, now: Instant) {
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(self.policy.backoff_max);
        self.timers.insert(Timer::Restart, now + delay);
        self.report(Report::RestartScheduled { delay });
    }

    /// Send the stop signal to generation `i` and give it the drain timeout.
    fn stop(&mut self, i: usize, now: Instant) {
        let Some(pid) = self.gens[i].pid else { return };
        let gen = self.gens[i].id;
        let signal = self.policy.stop_signal;
        self.gens[i].stop_at = Some(now);
        self.set_phase(i, Phase::Stopping, now);
        self.actions.push_back(Action::Signal {
            gen,
            pid,
            target: Target::Leader,
            signal,
        });
        self.report(Report::Stopping { gen, pid, signal });
    }

    /// SIGKILL generation `i`'s whole process group.
    fn kill(&mut self, i: usize, reason: KillReason, now: Instant) {
        let Some(pid) = self.gens[i].pid else { return };
        let gen = self.gens[i].id;
        if self.gens[i].stop_at.is_none() {
            self.gens[i].stop_at = Some(now);
        }
        if self.shutdown.is_some() {
            self.killed_any = true;
        }
        self.set_phase(i, Phase::Killing, now);
        self.actions.push_back(Action::Signal {
            gen,
            pid,
            target: Target::Group,
            signal: Signal::KILL,
        });
        self.report(Report::Killed { gen, pid, reason });
    }

    /// Exit once everything is down, with `code`.
    fn begin_exit(&mut self, code: i32, now: Instant) {
        self.on_shutdown(self.policy.stop_signal, now);
        self.finished_code = Some(code);
    }

    fn check_finished(&mut self) {
        if self.finished.is_some() || self.shutdown.is_none() {
            return;
        }
        if self.gens.is_empty() {
            let code = self.finished_code.unwrap_or(if self.killed_any {
                exit_code::FORCED
            } else {
                exit_code::OK
            });
            self.finish(code);
        }
    }

    fn finish(&mut self, code: i32) {
        self.finished = Some(code);
        self.timers.clear();
        self.actions.push_back(Action::Exit(code));
    }

    // ---- bookkeeping ---------------------------------------------------------------------

    /// The one place a phase changes: derive the generation's timers from its new phase.
    fn set_phase(&mut self, i: usize, phase: Phase, now: Instant) {
        let gen = self.gens[i].id;
        self.gens[i].phase = phase;
        self.clear_timers(gen);
        match phase {
            Phase::Spawning | Phase::Serving => {}
            Phase::Starting => {
                self.timers
                    .insert(Timer::ReadyDeadline(gen), now + self.policy.ready_timeout);
                if let Some(d) = self.policy.ready_after {
                    self.timers.insert(Timer::ReadyAfter(gen), now + d);
                }
                if self.policy.probe_interval.is_some() {
                    // First probe at once: a fast child should not wait a whole interval.
                    self.timers.insert(Timer::Probe(gen), now);
                }
            }
            Phase::Stopping => {
                self.timers
                    .insert(Timer::KillDeadline(gen), now + self.policy.drain_timeout);
            }
            Phase::Killing => {
                self.timers
                    .insert(Timer::ReapDeadline(gen), now + self.policy.kill_wait);
            }
        }
    }

    fn clear_timers(&mut self, gen: GenId) {
        self.timers.retain(|t, _| t.gen() != Some(gen));
    }

    /// Generation `i`'s main process was reaped.
    fn remove_exited(&mut self, i: usize, pid: Pid) {
        let gen = self.gens[i].id;
        self.actions.push_back(Action::Release {
            gen,
            pgid: Some(pid),
        });
        self.clear_timers(gen);
        self.gens.remove(i);
    }

    /// Forget generation `i` without a reaped process (spawn failed, or unkillable).
    fn remove(&mut self, i: usize) {
        let gen = self.gens[i].id;
        self.actions.push_back(Action::Release { gen, pgid: None });
        self.clear_timers(gen);
        self.gens.remove(i);
    }

    fn find(&self, gen: GenId) -> Option<usize> {
        self.gens.iter().position(|g| g.id == gen)
    }

    fn report(&mut self, r: Report) {
        self.actions.push_back(Action::Report(r));
    }
}

#[cfg(test)]
mod tests;
