//! The generation state machine: every reload, drain, rollback and shutdown decision, every
//! answer to a control request and every message to handoff's own service manager.
//!
//! It is *sans-IO* in quinn-proto's sense: it owns no process, socket or clock. The shell
//! feeds it [`Event`]s with the current [`Instant`] through [`Supervisor::handle`], then drains
//! [`Supervisor::poll_action`] and performs each [`Action`] in order, and sleeps until
//! [`Supervisor::poll_timeout`]. Unit tests drive it with a fake clock and no processes.
//!
//! Rules that keep it simple:
//! - Every effect is an [`Action`]. [`Report`]s are telemetry only: the shell logs them and
//!   never acts on them.
//! - A generation's phase ([`Phase`]) carries the data valid in it (a pid once it exists, when
//!   it became ready, when it was told to stop): no optional pid, no zero sentinel.
//! - Phase changes go through one function, `set_phase`, which arms and disarms the
//!   generation's timers (as systemd's `service_set_state` does). The only other timer writes
//!   are `EXTEND_TIMEOUT_USEC` (which moves the current phase's deadline), the probe re-arm
//!   after a failed probe, and the two handoff-wide timers (restart back-off, watch debounce).
//! - Events that make no sense in the current phase (READY=1 from a draining child, an exit of
//!   an unknown pid) are ignored, never a panic.

mod state;
mod timers;

pub use state::{SupervisorState, STATE_VERSION};
use timers::{Timer, Timers};

use std::collections::VecDeque;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::accepting::Accepting;
use crate::notify::NotifyMessage;
use crate::signal::Signal;

/// Generation number: 1 for the first child, +1 for every child started since.
pub type GenId = u64;
/// A process id as the kernel reports it.
pub type Pid = u32;
/// Identifies one control request (`handoff reload|status|stop`) so its answer finds it.
pub type RequestId = u64;

/// How a process ended, as reported by the reaper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
    /// reached, `stop --force`, or a second SIGINT).
    pub const FORCED: i32 = 3;
    /// `handoff status`: handoff runs, but no generation is serving (starting, restarting after
    /// a crash, or stopping). As `systemctl status` exits 3 for a unit that is not active.
    pub const NOT_SERVING: i32 = 3;
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
    /// `--reload-signal`: a reload sends this signal to the serving generation (which reloads
    /// its configuration itself) instead of starting a new one. `handoff restart` still does.
    pub reload_signal: Option<Signal>,
    /// After the reload signal, how long a child has to answer `RELOADING=1` (systemd's
    /// notify-reload protocol) before handoff concludes it does not speak it.
    pub reload_ack_window: Duration,
    /// `handoff upgrade`: how long the candidate binary has to answer its check
    /// (`handoff check-upgrade`) before the upgrade is given up.
    pub upgrade_check_timeout: Duration,
    /// A generation still starting after this long is checked for a wrapper (`npm start`,
    /// `sh -c` without `exec`) whose child sees the wrapper's `LISTEN_PID`: a hint for the log.
    pub wrapper_check_after: Option<Duration>,
    /// Readiness without READY=1 (`--detect-ready`): scan a starting generation's process
    /// tree at this interval for tasks waiting to accept on its listeners. `None`: off.
    pub detect_interval: Option<Duration>,
    /// A generation with nothing to follow (the first, or after one made ready by the
    /// fallback) is ready by detection only once its accept-wait has held this long without
    /// a single notify datagram from it (`--detect-grace`): a notifier whose runtime waits
    /// on the listener early must not be judged ready before its READY=1.
    pub detect_grace: Duration,
    /// Prove edge-triggered servers (Go, tokio: their /proc view cannot be trusted) ready with
    /// connections of handoff's own that they must accept (`--detect-ready auto`).
    pub detect_prove: bool,
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
            reload_signal: None,
            reload_ack_window: Duration::from_millis(500),
            upgrade_check_timeout: Duration::from_secs(10),
            wrapper_check_after: None,
            detect_interval: None,
            detect_grace: Duration::from_secs(5),
            detect_prove: false,
        }
    }
}

/// Who is waiting for the answer to a request, and for which answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyTo {
    /// Nobody: a signal, a watched file, handoff itself.
    Nobody,
    /// Answer as soon as the request is accepted (`handoff reload --no-wait`).
    Now(RequestId),
    /// Answer with the outcome (`handoff reload`).
    WhenDone(RequestId),
}

/// Everything that can happen to handoff, already validated and typed by the shell.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// SIGHUP, a control command or a watched file: reload (a new generation, or the reload
    /// signal with `--reload-signal`). `restart` (`handoff restart`) always starts a new
    /// generation.
    Reload { reply: ReplyTo, restart: bool },
    /// SIGTERM/SIGINT, or `handoff stop` (`request`, answered now and again at exit). A
    /// repeated stop is the same graceful stop; it becomes "kill everything now" only when a
    /// person clearly asks: `force` (`handoff stop --force`), or a second SIGINT (Ctrl-C twice).
    Shutdown {
        signal: Signal,
        request: Option<RequestId>,
        force: bool,
    },
    /// `handoff status`: answered at once with [`Outcome::Status`].
    Status { request: RequestId },
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
    /// The answer to [`Action::Scan`]: whether `gen` waits to accept on every stream
    /// listener, and the first fd some task of it waits on.
    Accepting {
        gen: GenId,
        seen: Accepting,
        fd: Option<u32>,
    },
    /// The answer to [`Action::CheckListeners`]: how many listeners the shell found broken
    /// (a child called `shutdown()` on them) and re-created.
    ListenersRestored { count: usize },
    /// `handoff upgrade`: check the handoff binary `binary` ([`Action::CheckUpgrade`]), then
    /// exec it under the same pid with this state ([`Action::Exec`]). `request` is answered
    /// by the new image once it serves ([`Event::Upgraded`]), or with why not.
    Upgrade { request: RequestId, binary: PathBuf },
    /// The answer to [`Action::CheckUpgrade`]: the candidate's version, or why it cannot
    /// take over.
    UpgradeChecked { result: Result<String, String> },
    /// [`Action::Exec`] failed: exec returned, this image keeps running.
    ExecFailed { error: String },
    /// This image was started by `handoff upgrade` and imported the state (versions of the
    /// image that exported it and of this one).
    Upgraded { from: String, to: String },
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
#[must_use]
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
    /// `gen` is gone: close its notify socket and, when `leftovers` names its process group,
    /// SIGKILL whatever is left in it (forked workers that outlived their master).
    Retire { gen: GenId, leftovers: Option<Pid> },
    /// The process of `gen` exited: check whether it broke a shared listener, re-create what
    /// it broke, and answer with [`Event::ListenersRestored`].
    CheckListeners { gen: GenId },
    /// Run the readiness probe for `gen` (whose main process is `pid`) and answer with
    /// `ProbeResult`.
    Probe { gen: GenId, pid: Pid },
    /// The probe of `gen` still running is no longer needed: kill it (its result will be
    /// ignored).
    StopProbe { gen: GenId },
    /// `gen` (main process `pid`) is still starting after `--ready-timeout`'s first second:
    /// look for a wrapper whose child ignores the sockets, and say so (a diagnostic only).
    CheckWrapper { gen: GenId, pid: Pid },
    /// Scan `gen`'s process tree (main process `pid`) for tasks waiting to accept, and
    /// answer with [`Event::Accepting`]. With `prove`, listeners only waited on through
    /// edge-triggered epoll are proven with a connection of handoff's own, which this
    /// generation must accept.
    Scan { gen: GenId, pid: Pid, prove: bool },
    /// `gen` no longer needs proving: close handoff's proof-of-accept connections to it.
    StopProving { gen: GenId },
    /// handoff is stopping and no generation will accept any more: close handoff's own copy
    /// of the listeners it bound (and remove their socket files), so that new connections
    /// are refused as soon as the draining generations close theirs, instead of waiting in a
    /// queue nobody will serve. Sockets from a socket unit stay: the service manager keeps
    /// them for the next start.
    CloseListeners,
    /// Tell handoff's own service manager (systemd's `NOTIFY_SOCKET`), if it has one.
    Tell(ManagerMessage),
    /// Run the candidate binary of an upgrade as a child, with the state, to check that it
    /// can take over (`handoff check-upgrade`); answer with [`Event::UpgradeChecked`].
    CheckUpgrade { binary: PathBuf },
    /// The check of the candidate binary ran out of time: kill it (its result is ignored).
    StopUpgradeCheck,
    /// Exec `binary` under the same pid with [`Supervisor::export`]'s state, once every
    /// action queued before this one is performed (none is queued after it). If exec
    /// returns, answer with [`Event::ExecFailed`]. Events may still arrive before the exec
    /// (signals already received): exec only while [`Supervisor::exec_pending`] holds.
    Exec { binary: PathBuf },
    /// Answer control request `request`.
    Reply {
        request: RequestId,
        outcome: Outcome,
    },
    /// A fact worth logging. Telemetry only: nothing else depends on it.
    Report(Report),
    /// handoff is done: clean up and exit with this code.
    Exit(i32),
}

/// What handoff tells its service manager (sd_notify).
#[derive(Clone, Debug, PartialEq)]
pub enum ManagerMessage {
    /// `READY=1` and the serving generation as `STATUS=`: the first generation is ready, or a
    /// reload ended well.
    Ready { gen: GenId, pid: Pid },
    /// Only `STATUS=`: a replacement after a crash serves (no reload was announced).
    Serving { gen: GenId, pid: Pid },
    /// `RELOADING=1` with `MONOTONIC_USEC` (Type=notify-reload needs both in one datagram).
    Reloading { gen: GenId },
    /// A reload failed: systemd has no message for that, so the reload ends (`READY=1`) and
    /// `STATUS=` says why; `handoff reload`'s exit status is the authoritative outcome.
    ReloadFailed(ReloadOutcome),
    /// `STOPPING=1`.
    Stopping,
}

/// The answer to a control request.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The reload was accepted (`--no-wait`).
    ReloadRequested,
    /// The reload this request waited for ended.
    Reload(ReloadOutcome),
    /// The request cannot be carried out: handoff is stopping.
    ShuttingDown,
    /// `handoff status`: the shell renders [`Supervisor::snapshot`] with what it holds.
    Status,
    /// `handoff stop` was accepted; a final [`Outcome::Stopped`] follows at exit.
    Stopping,
    /// handoff is about to exit with `code` (a `stop` request's final answer).
    Stopped { code: i32 },
    /// `handoff upgrade`: the new image (`to`) serves, with the state of `from`.
    Upgraded { from: String, to: String },
    /// `handoff upgrade` did not happen; this image keeps running.
    UpgradeFailed(String),
}

impl Outcome {
    /// Whether the request gets no further answer after this one.
    pub fn is_final(&self) -> bool {
        !matches!(self, Self::Stopping)
    }
}

/// How a reload ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    /// The generation the reload started.
    pub gen: GenId,
    /// `None` when it took over; why it did not otherwise.
    pub failure: Option<FailReason>,
    /// From its start to READY=1 or to the failure.
    pub after: Duration,
    /// The generation serving afterwards, and its pid.
    pub serving: Option<(GenId, Pid)>,
    /// `None` for a new generation; for a reload in place (`--reload-signal`), whether the
    /// child confirmed it (`RELOADING=1` then `READY=1`) or only got the signal.
    pub in_place: Option<InPlace>,
}

/// How a reload in place (`--reload-signal`) ended up known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InPlace {
    /// The child answered `RELOADING=1`, then `READY=1`.
    Confirmed,
    /// The signal was delivered; the child does not report reload progress.
    Signalled(Signal),
}

impl ReloadOutcome {
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }
}

/// Why a generation is killed with SIGKILL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillReason {
    /// It did not exit within the drain timeout.
    DrainTimeout,
    /// `handoff stop --force`, or a second SIGINT.
    Forced,
}

/// Why a new generation did not take over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailReason {
    /// The process could not be started.
    SpawnFailed(String),
    /// It exited before it reported READY=1.
    ExitedBeforeReady(ExitStatus),
    /// It did not report READY=1 in time.
    ReadyTimeout(Duration),
    /// handoff was asked to stop while it was starting.
    Shutdown,
    /// A reload in place: `RELOADING=1` came, but not `READY=1` within the ready timeout.
    ReloadNotFinished(Duration),
    /// Seen accepting on `fd` (by the accept-wait scan) but no READY=1 within the ready
    /// timeout, while another generation serves.
    AcceptingWithoutReady { fd: u32, waited: Duration },
    /// Not ready within the ready timeout, and never seen waiting to accept on any listener.
    NeverAccepting(Duration),
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
            Self::ReloadNotFinished(d) => write!(
                f,
                "reported RELOADING=1 but not READY=1 within {:.1}s (ready timeout)",
                d.as_secs_f64()
            ),
            Self::AcceptingWithoutReady { fd, waited } => write!(
                f,
                "not ready after {:.1}s (ready timeout): accepting on fd {fd} but no READY=1: send READY=1, or pass --ready-after",
                waited.as_secs_f64()
            ),
            Self::NeverAccepting(d) => write!(
                f,
                "not ready after {:.1}s (ready timeout), and never seen accepting on its listeners: does it take the sockets handoff passes (fd 3.., LISTEN_FDS), or bind a port of its own?",
                d.as_secs_f64()
            ),
        }
    }
}

/// Why a generation was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartReason {
    /// The first child.
    Initial,
    /// A reload request.
    Reload,
    /// The serving child died and the restart policy replaces it.
    Restart,
}

impl StartReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initial => "initial",
            Self::Reload => "reload",
            Self::Restart => "restart",
        }
    }
}

/// How a generation became ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadyBy {
    /// It sent READY=1.
    Notify,
    /// `--ready-after` elapsed.
    ReadyAfter,
    /// `--ready-probe` succeeded.
    Probe,
    /// Detection: a task of it waits to accept on every listener, or it accepted handoff's
    /// proof-of-accept connection.
    Detected,
    /// The ready timeout passed while it was seen accepting and nothing else served: ready,
    /// with a warning, rather than killed while it serves.
    Fallback,
}

impl ReadyBy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Notify => "notify",
            Self::ReadyAfter => "ready-after",
            Self::Probe => "probe",
            Self::Detected => "detected",
            Self::Fallback => "fallback",
        }
    }
}

/// Facts for the log. Telemetry only.
#[derive(Clone, Debug, PartialEq)]
pub enum Report {
    /// A reload was requested; `coalesced` when it was folded into one already pending.
    ReloadRequested { coalesced: bool },
    /// A reload request arrived while shutting down and was dropped.
    ReloadIgnored,
    /// The process of `gen` exists; `since_request` is the time from the reload request.
    Spawned {
        gen: GenId,
        pid: Pid,
        reason: StartReason,
        since_request: Option<Duration>,
    },
    /// READY=1 (or `--ready-after`, or the probe) `after` the spawn.
    Ready {
        gen: GenId,
        pid: Pid,
        after: Duration,
    },
    /// The stop signal was sent. `handover_from` is when the successor's READY=1 arrived,
    /// when this stop is a hand-over.
    Stopping {
        gen: GenId,
        pid: Pid,
        signal: Signal,
        handover_from: Option<Instant>,
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
    /// A new generation did not take over; the previous one (if any) keeps serving. `pid` is
    /// `None` when no process was started.
    Failed {
        gen: GenId,
        pid: Option<Pid>,
        reason: FailReason,
    },
    /// The outcome of a reload.
    ReloadFinished(ReloadOutcome),
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
    /// `handoff upgrade` to `binary` was requested (its check starts).
    UpgradeRequested { binary: PathBuf },
    /// The candidate `binary` (version `version`) passed its check: exec it now.
    Exec { binary: PathBuf, version: String },
    /// The upgrade did not happen; this image keeps running.
    UpgradeFailed { error: String },
    /// This image took over from `from` (the `count`-th upgrade of this handoff).
    Upgraded {
        from: String,
        to: String,
        count: u64,
    },
    /// `gen` was judged ready without READY=1: a task waits to accept on every listener
    /// (`fd` the first), or it accepted a proof-of-accept connection (`proven`).
    ReadyDetected {
        gen: GenId,
        pid: Pid,
        fd: Option<u32>,
        proven: bool,
    },
    /// `gen` waits on its listeners only through edge-triggered epoll entries: handoff
    /// starts proving it with connections of its own.
    Proving {
        gen: GenId,
        pid: Pid,
        fd: Option<u32>,
    },
    /// The ready timeout passed while `gen` was seen accepting on `fd` with no READY=1, and
    /// nothing else serves: treated as ready so that it is not killed while it serves.
    ReadyWithoutNotify {
        gen: GenId,
        pid: Pid,
        fd: u32,
        waited: Duration,
    },
}

/// The lifecycle of one generation. Each phase carries what is known in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// `Action::Spawn` issued, no process yet.
    Spawning,
    /// Running, waiting for READY=1.
    Starting { pid: Pid },
    /// Ready and accepting.
    Serving { pid: Pid, ready_at: Instant },
    /// Stop signal sent `since`; draining until it exits or the drain timeout. `ready_at` is
    /// `None` for a generation stopped before it was ever ready.
    Draining {
        pid: Pid,
        since: Instant,
        ready_at: Option<Instant>,
    },
    /// SIGKILL sent to its group; waiting for the reaper. `since` is when it was first told
    /// to stop (stop signal or SIGKILL).
    Killing {
        pid: Pid,
        since: Instant,
        ready_at: Option<Instant>,
    },
}

impl Phase {
    /// The main process, once it exists.
    pub fn pid(&self) -> Option<Pid> {
        match *self {
            Self::Spawning => None,
            Self::Starting { pid }
            | Self::Serving { pid, .. }
            | Self::Draining { pid, .. }
            | Self::Killing { pid, .. } => Some(pid),
        }
    }

    /// When it became ready, if it ever did.
    pub fn ready_at(&self) -> Option<Instant> {
        match *self {
            Self::Spawning | Self::Starting { .. } => None,
            Self::Serving { ready_at, .. } => Some(ready_at),
            Self::Draining { ready_at, .. } | Self::Killing { ready_at, .. } => ready_at,
        }
    }

    /// The one name of the phase, in the log, in `status` and in the code.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Spawning => "spawning",
            Self::Starting { .. } => "starting",
            Self::Serving { .. } => "serving",
            Self::Draining { .. } => "draining",
            Self::Killing { .. } => "killing",
        }
    }

    fn is_starting(&self) -> bool {
        matches!(self, Self::Spawning | Self::Starting { .. })
    }
}

/// A snapshot of one generation, for `status`.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationStatus {
    pub gen: GenId,
    pub phase: Phase,
    pub reason: StartReason,
    pub age: Duration,
    pub time_to_ready: Option<Duration>,
    /// The generation's next deadline (ready timeout, drain timeout, ...).
    pub deadline: Option<Instant>,
    /// How it became ready, once it has.
    pub ready_by: Option<ReadyBy>,
    /// The fd a task of it was last seen waiting to accept on (detection only).
    pub accepting_fd: Option<u32>,
}

/// A generation that ended without being asked to: it failed to start, or died serving.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    Start(FailReason),
    Exited(ExitStatus),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Start(r) => write!(f, "did not start: {r}"),
            Self::Exited(st) => write!(f, "exited while serving: {st}"),
        }
    }
}

/// What `status` shows of the state machine.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Every live generation, oldest first.
    pub generations: Vec<GenerationStatus>,
    /// The generation serving (the newest one if several), and its pid.
    pub serving: Option<(GenId, Pid)>,
    /// Reloads started so far.
    pub reloads: u64,
    /// The last reload's outcome, and when it ended.
    pub last_reload: Option<(ReloadOutcome, Instant)>,
    pub shutting_down: bool,
    /// Generations that failed since one last became ready: more than one is a crash loop.
    pub failures_in_row: u32,
    /// The last failure, and when.
    pub last_failure: Option<(Failure, Instant)>,
    /// When the next replacement starts (restart back-off), if one is scheduled.
    pub next_restart: Option<Instant>,
    /// Upgrades (`handoff upgrade`) this handoff has been through, and when the last one
    /// ended (this image took over).
    pub upgrades: u64,
    pub last_upgrade: Option<Instant>,
}

#[derive(Clone, Debug)]
struct Generation {
    id: GenId,
    reason: StartReason,
    phase: Phase,
    /// When `Action::Spawn` was issued.
    started_at: Instant,
    /// When the reload that started it was requested.
    requested_at: Option<Instant>,
    /// Control requests waiting for the outcome of the reload that started it.
    waiters: Vec<RequestId>,
    /// A `--ready-probe` process is running for it.
    probe_running: bool,
    /// Some notify datagram came from it (any, not only READY=1): it is a notifier.
    notified: bool,
    /// Detection: when a scan first saw it waiting to accept on every listener.
    seen_since: Option<Instant>,
    /// Detection: the fd it was last seen waiting to accept on.
    seen_fd: Option<u32>,
    /// Detection: its scans prove edge-triggered listeners with connections of handoff's.
    prove: bool,
    /// How it became ready.
    ready_by: Option<ReadyBy>,
}

/// How detection may judge a starting generation (see [`Supervisor::judge`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Judge {
    /// Not at all: detection is off, an explicit rule applies, or it is a notifier.
    Off,
    /// Once its accept-wait has held for the grace period.
    AfterGrace,
    /// At the first scan that sees it accepting.
    AtOnce,
}

/// A reload requested while another generation was starting: it starts afterwards.
#[derive(Clone, Debug)]
struct PendingReload {
    requested_at: Instant,
    waiters: Vec<RequestId>,
    /// Some request was `handoff restart`: a new generation, whatever `--reload-signal` says.
    restart: bool,
}

/// A reload in place in progress: the reload signal was sent to generation `gen`.
#[derive(Clone, Debug)]
struct InPlaceReload {
    gen: GenId,
    pid: Pid,
    started: Instant,
    /// `RELOADING=1` arrived.
    acked: bool,
    waiters: Vec<RequestId>,
}

#[derive(Clone, Debug)]
struct ShutdownState {
    forced: bool,
    /// `handoff stop` requests, answered again at exit.
    requests: Vec<RequestId>,
}

/// `handoff upgrade` in progress: its candidate is being checked, or, once `executing`, the
/// shell is about to exec it (the state it exports carries this, and the new image answers
/// `request`).
#[derive(Clone, Debug)]
struct UpgradeState {
    request: RequestId,
    binary: PathBuf,
    executing: bool,
}

/// The state machine. See the module documentation.
#[derive(Debug)]
pub struct Supervisor {
    policy: Policy,
    gens: Vec<Generation>,
    next_gen: GenId,
    pending_reload: Option<PendingReload>,
    shutdown: Option<ShutdownState>,
    /// Some process had to be SIGKILLed during shutdown.
    killed_any: bool,
    /// A child has been ready at least once: before that, exec failures end handoff.
    ever_ready: bool,
    /// READY=1 was sent to the service manager.
    manager_ready: bool,
    backoff: Duration,
    timers: Timers,
    actions: VecDeque<Action>,
    finished: Option<i32>,
    /// Exit code decided before the children are down (`--restart never`).
    finished_code: Option<i32>,
    reloads: u64,
    last_reload: Option<(ReloadOutcome, Instant)>,
    failures_in_row: u32,
    last_failure: Option<(Failure, Instant)>,
    in_place: Option<InPlaceReload>,
    upgrade: Option<UpgradeState>,
    upgrades: u64,
    last_upgrade: Option<Instant>,
    /// How the latest generation to become ready did: the next one follows it (READY=1 →
    /// only READY=1 counts; detection → detection counts at once).
    last_ready_by: Option<ReadyBy>,
}

impl Supervisor {
    /// A supervisor that immediately asks for generation 1.
    pub fn new(policy: Policy, now: Instant) -> Self {
        let backoff = policy.backoff_initial;
        let mut sup = Self {
            policy,
            gens: Vec::new(),
            next_gen: 1,
            pending_reload: None,
            shutdown: None,
            killed_any: false,
            ever_ready: false,
            manager_ready: false,
            backoff,
            timers: Timers::default(),
            actions: VecDeque::new(),
            finished: None,
            finished_code: None,
            reloads: 0,
            last_reload: None,
            failures_in_row: 0,
            last_failure: None,
            in_place: None,
            upgrade: None,
            upgrades: 0,
            last_upgrade: None,
            last_ready_by: None,
        };
        sup.start_generation(StartReason::Initial, now, None, Vec::new());
        sup
    }

    /// The only mutator: record `event`, then queue the actions that follow from it.
    pub fn handle(&mut self, event: Event, now: Instant) {
        if self.finished.is_some() {
            // Requests that reach an exiting handoff still get an answer.
            match event {
                Event::Reload {
                    reply: ReplyTo::Now(request) | ReplyTo::WhenDone(request),
                    ..
                }
                | Event::Shutdown {
                    request: Some(request),
                    ..
                }
                | Event::Upgrade { request, .. } => self.reply(request, Outcome::ShuttingDown),
                Event::Status { request } => self.reply(request, Outcome::Status),
                _ => {}
            }
            return;
        }
        match event {
            Event::Reload { reply, restart } => self.on_reload(reply, restart, now),
            Event::Shutdown {
                signal,
                request,
                force,
            } => self.on_shutdown(signal, request, force, now),
            Event::Status { request } => self.reply(request, Outcome::Status),
            Event::Forward { signal } => self.on_forward(signal),
            Event::Spawned { gen, pid } => self.on_spawned(gen, pid, now),
            Event::SpawnFailed { gen, error } => self.on_spawn_failed(gen, error, now),
            Event::Notify { gen, msg } => self.on_notify(gen, &msg, now),
            Event::Exited { pid, status } => self.on_exited(pid, status, now),
            Event::Timeout => self.on_timeout(now),
            Event::ProbeResult { gen, ok } => self.on_probe_result(gen, ok, now),
            Event::Accepting { gen, seen, fd } => self.on_accepting(gen, seen, fd, now),
            Event::FileChanged => {
                if self.shutdown.is_none() {
                    // Trailing debounce: a burst of writes gives one reload, after it ends.
                    self.timers
                        .set(Timer::WatchDebounce, now + self.policy.watch_debounce);
                }
            }
            Event::ListenersRestored { count } => {
                // The serving generation holds the dead socket: only a new generation gets
                // the new one. Until it is ready, clients wait in the new socket's queue.
                if count > 0 && self.shutdown.is_none() {
                    // A new generation: only it gets the new socket.
                    self.on_reload(ReplyTo::Nobody, true, now);
                }
            }
            Event::Upgrade { request, binary } => self.on_upgrade(request, binary, now),
            Event::UpgradeChecked { result } => self.on_upgrade_checked(result),
            Event::ExecFailed { error } => {
                if self.upgrade.as_ref().is_some_and(|u| u.executing) {
                    self.upgrade_failed(error);
                }
            }
            Event::Upgraded { from, to } => {
                self.upgrades += 1;
                self.last_upgrade = Some(now);
                self.report(Report::Upgraded {
                    from: from.clone(),
                    to: to.clone(),
                    count: self.upgrades,
                });
                if let Some(u) = self.upgrade.take() {
                    self.reply(u.request, Outcome::Upgraded { from, to });
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
        self.timers.next()
    }

    /// Whether [`Action::Exec`] still stands: the candidate passed its check and nothing
    /// since (a shutdown) called the upgrade off.
    pub fn exec_pending(&self) -> bool {
        self.upgrade.as_ref().is_some_and(|u| u.executing)
    }

    /// `Some(code)` once handoff should exit (also queued as `Action::Exit`).
    pub fn finished(&self) -> Option<i32> {
        self.finished
    }

    /// The generation currently serving (the newest one if several).
    pub fn serving(&self) -> Option<(GenId, Pid)> {
        self.gens.iter().rev().find_map(|g| match g.phase {
            Phase::Serving { pid, .. } => Some((g.id, pid)),
            _ => None,
        })
    }

    /// What `status` shows.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let generations = self
            .gens
            .iter()
            .map(|g| GenerationStatus {
                gen: g.id,
                phase: g.phase,
                reason: g.reason,
                age: now.saturating_duration_since(g.started_at),
                time_to_ready: g
                    .phase
                    .ready_at()
                    .map(|r| r.saturating_duration_since(g.started_at)),
                deadline: self.timers.next_of(g.id),
                ready_by: g.ready_by,
                accepting_fd: g.seen_fd,
            })
            .collect();
        Snapshot {
            generations,
            serving: self.serving(),
            reloads: self.reloads,
            last_reload: self.last_reload.clone(),
            shutting_down: self.shutdown.is_some(),
            failures_in_row: self.failures_in_row,
            last_failure: self.last_failure.clone(),
            next_restart: self.timers.get(Timer::Restart),
            upgrades: self.upgrades,
            last_upgrade: self.last_upgrade,
        }
    }

    // ---- event handlers ------------------------------------------------------------------

    fn on_upgrade(&mut self, request: RequestId, binary: PathBuf, now: Instant) {
        if self.shutdown.is_some() {
            self.reply(request, Outcome::ShuttingDown);
            return;
        }
        if self.upgrade.is_some() {
            let why = "another upgrade is in progress".to_string();
            self.reply(request, Outcome::UpgradeFailed(why));
            return;
        }
        self.report(Report::UpgradeRequested {
            binary: binary.clone(),
        });
        self.upgrade = Some(UpgradeState {
            request,
            binary: binary.clone(),
            executing: false,
        });
        self.timers
            .set(Timer::UpgradeCheck, now + self.policy.upgrade_check_timeout);
        self.actions.push_back(Action::CheckUpgrade { binary });
    }

    fn on_upgrade_checked(&mut self, result: Result<String, String>) {
        let Some(u) = self.upgrade.as_mut().filter(|u| !u.executing) else {
            return; // a late answer to a check that ran out of time
        };
        self.timers.cancel(Timer::UpgradeCheck);
        match result {
            Ok(version) => {
                u.executing = true;
                let binary = u.binary.clone();
                self.report(Report::Exec {
                    binary: binary.clone(),
                    version,
                });
                // Last: the shell execs once everything before it is performed.
                self.actions.push_back(Action::Exec { binary });
            }
            Err(why) => self.upgrade_failed(why),
        }
    }

    /// The upgrade in progress did not happen: say why to whoever asked.
    fn upgrade_failed(&mut self, why: String) {
        if let Some(u) = self.upgrade.take() {
            self.timers.cancel(Timer::UpgradeCheck);
            self.report(Report::UpgradeFailed { error: why.clone() });
            self.reply(u.request, Outcome::UpgradeFailed(why));
        }
    }

    fn on_reload(&mut self, reply: ReplyTo, restart: bool, now: Instant) {
        if self.shutdown.is_some() {
            self.report(Report::ReloadIgnored);
            if let ReplyTo::Now(r) | ReplyTo::WhenDone(r) = reply {
                self.reply(r, Outcome::ShuttingDown);
            }
            return;
        }
        let mark = self.actions.len();
        if let ReplyTo::Now(r) = reply {
            self.reply(r, Outcome::ReloadRequested);
        }
        let waiters: Vec<RequestId> = match reply {
            ReplyTo::WhenDone(r) => vec![r],
            _ => Vec::new(),
        };
        if self.starting().is_some() || self.in_place.is_some() {
            // Coalesce: however many requests arrive during a reload, one more follows, and
            // every waiter waits for that one.
            self.report(Report::ReloadRequested {
                coalesced: self.pending_reload.is_some(),
            });
            let p = self.pending_reload.get_or_insert_with(|| PendingReload {
                requested_at: now,
                waiters: Vec::new(),
                restart: false,
            });
            p.waiters.extend(waiters);
            p.restart |= restart;
            return;
        }
        self.report(Report::ReloadRequested { coalesced: false });
        // An explicit request overrides a pending back-off: the operator likely deployed a fix.
        self.timers.cancel(Timer::Restart);
        self.begin_reload(restart, now, now, waiters);
        // The new generation's spawn goes before the answer and the report of this request,
        // as stop signals go before the reports of a hand-over: no write delays the child.
        let spawn = self
            .actions
            .iter()
            .skip(mark)
            .position(|a| matches!(a, Action::Spawn { .. }));
        if let Some(at) = spawn {
            if let Some(a) = self.actions.remove(mark + at) {
                self.actions.insert(mark, a);
            }
        }
    }

    /// Start a reload: the reload signal to the serving generation (`--reload-signal`, unless
    /// `restart`), or a new generation.
    fn begin_reload(
        &mut self,
        restart: bool,
        now: Instant,
        requested_at: Instant,
        waiters: Vec<RequestId>,
    ) {
        match (self.policy.reload_signal, self.serving(), restart) {
            (Some(signal), Some((gen, pid)), false) => {
                self.reloads += 1;
                self.tell(ManagerMessage::Reloading { gen });
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
                self.in_place = Some(InPlaceReload {
                    gen,
                    pid,
                    started: requested_at,
                    acked: false,
                    waiters,
                });
                self.timers
                    .set(Timer::InPlaceAck, now + self.policy.reload_ack_window);
            }
            _ => self.start_generation(StartReason::Reload, now, Some(requested_at), waiters),
        }
    }

    /// The reload in place ends: `failure` is `None` when it went well.
    fn finish_in_place(&mut self, failure: Option<FailReason>, how: InPlace, now: Instant) {
        let Some(ip) = self.in_place.take() else {
            return;
        };
        self.timers.cancel(Timer::InPlaceAck);
        self.timers.cancel(Timer::InPlaceDone);
        let outcome = ReloadOutcome {
            gen: ip.gen,
            failure,
            after: now.saturating_duration_since(ip.started),
            serving: self.serving(),
            in_place: Some(how),
        };
        if self.shutdown.is_some() {
            // The manager was told STOPPING=1: no READY=1 after that.
        } else if outcome.ok() {
            self.tell(ManagerMessage::Ready {
                gen: ip.gen,
                pid: ip.pid,
            });
        } else {
            self.tell(ManagerMessage::ReloadFailed(outcome.clone()));
        }
        self.reload_finished(outcome, ip.waiters, now);
        self.start_pending_reload(now);
    }

    fn on_shutdown(
        &mut self,
        signal: Signal,
        request: Option<RequestId>,
        force: bool,
        now: Instant,
    ) {
        if let Some(r) = request {
            self.reply(r, Outcome::Stopping);
        }
        let again = match &mut self.shutdown {
            Some(s) => {
                s.requests.extend(request);
                true
            }
            None => {
                self.begin_shutdown(signal, request, now);
                false
            }
        };
        // `timeout(1)` and service managers repeat SIGTERM; only a person escalates.
        if force || (again && signal == Signal::INT) {
            self.force_shutdown(signal, now);
        }
    }

    /// The graceful stop: every generation gets the stop signal and the drain timeout.
    fn begin_shutdown(&mut self, signal: Signal, request: Option<RequestId>, now: Instant) {
        self.shutdown = Some(ShutdownState {
            forced: false,
            requests: request.into_iter().collect(),
        });
        self.report(Report::ShutdownStarted {
            signal,
            forced: false,
        });
        self.tell(ManagerMessage::Stopping);
        if let Some(p) = self.pending_reload.take() {
            for r in p.waiters {
                self.reply(r, Outcome::ShuttingDown);
            }
        }
        self.timers.cancel(Timer::Restart);
        self.timers.cancel(Timer::WatchDebounce);
        if let Some(u) = self.upgrade.take() {
            self.timers.cancel(Timer::UpgradeCheck);
            if !u.executing {
                self.actions.push_back(Action::StopUpgradeCheck);
            }
            self.reply(u.request, Outcome::ShuttingDown);
        }
        if self.in_place.is_some() {
            self.finish_in_place(Some(FailReason::Shutdown), InPlace::Confirmed, now);
        }
        // First report the interrupted start (while the old generation still counts as
        // serving), then tell everyone to stop.
        if let Some(i) = self
            .gens
            .iter()
            .position(|g| matches!(g.phase, Phase::Starting { .. }))
        {
            let g = self.gens[i].clone();
            self.fail_start(&g, FailReason::Shutdown, now);
        }
        for i in 0..self.gens.len() {
            match self.gens[i].phase {
                Phase::Starting { .. } | Phase::Serving { .. } => self.stop(i, None, now),
                // Spawning: stopped as soon as its pid is known (on_spawned).
                Phase::Spawning | Phase::Draining { .. } | Phase::Killing { .. } => {}
            }
        }
        // After the stop signals: no generation is started any more, so nobody needs
        // handoff's copy of the sockets.
        self.actions.push_back(Action::CloseListeners);
    }

    /// Kill every generation's process group now.
    fn force_shutdown(&mut self, signal: Signal, now: Instant) {
        let Some(s) = &mut self.shutdown else { return };
        if std::mem::replace(&mut s.forced, true) {
            return;
        }
        self.report(Report::ShutdownStarted {
            signal,
            forced: true,
        });
        for i in 0..self.gens.len() {
            if matches!(
                self.gens[i].phase,
                Phase::Starting { .. } | Phase::Serving { .. } | Phase::Draining { .. }
            ) {
                self.kill(i, KillReason::Forced, now);
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
        let g = &self.gens[i];
        let (reason, since_request) = (
            g.reason,
            g.requested_at.map(|t| now.saturating_duration_since(t)),
        );
        self.report(Report::Spawned {
            gen,
            pid,
            reason,
            since_request,
        });
        self.set_phase(i, Phase::Starting { pid }, now);
        if let Some(forced) = self.shutdown.as_ref().map(|s| s.forced) {
            let g = self.gens[i].clone();
            self.fail_start(&g, FailReason::Shutdown, now);
            if forced {
                self.kill(i, KillReason::Forced, now);
            } else {
                self.stop(i, None, now);
            }
        }
    }

    fn on_spawn_failed(&mut self, gen: GenId, error: String, now: Instant) {
        let Some(i) = self.find(gen) else { return };
        if self.gens[i].phase != Phase::Spawning {
            return;
        }
        let g = self.remove(i, None);
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
        let Some(pid) = self.gens[i].phase.pid() else {
            return;
        };
        // Any datagram makes it a notifier: detection waits for its READY=1.
        self.gens[i].notified = true;
        // READY=1 first: the hand-over (stop signals) must not wait behind log lines.
        if msg.ready && matches!(self.gens[i].phase, Phase::Starting { .. }) {
            self.become_ready(i, ReadyBy::Notify, now);
        }
        // systemd's notify-reload protocol, during a reload in place.
        if let Some(ip) = self.in_place.as_mut().filter(|ip| ip.gen == gen) {
            if msg.reloading && !ip.acked {
                ip.acked = true;
                self.timers.cancel(Timer::InPlaceAck);
                self.timers
                    .set(Timer::InPlaceDone, now + self.policy.ready_timeout);
            }
            if msg.ready && ip.acked {
                self.finish_in_place(None, InPlace::Confirmed, now);
            }
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
                Phase::Starting { .. } => Some(Timer::ReadyDeadline(gen)),
                Phase::Draining { .. } => Some(Timer::KillDeadline(gen)),
                _ => None,
            };
            if let Some(t) = timer {
                self.timers.extend(t, now + Duration::from_micros(usec));
            }
        }
    }

    fn on_exited(&mut self, pid: Pid, status: ExitStatus, now: Instant) {
        let Some(i) = self.gens.iter().position(|g| g.phase.pid() == Some(pid)) else {
            return; // an adopted orphan, or a worker: nothing to decide
        };
        // Retire first (leftover workers killed, notify socket closed), so that every report
        // below describes a generation that is entirely gone.
        let g = self.remove(i, Some(pid));
        let gen = g.id;
        self.actions.push_back(Action::CheckListeners { gen });
        match g.phase {
            Phase::Spawning => {} // no pid: not found above
            Phase::Starting { .. } => {
                self.fail_start(&g, FailReason::ExitedBeforeReady(status), now);
                if self.shutdown.is_none() {
                    if self.policy.restart == RestartPolicy::Never && self.serving().is_none() {
                        self.begin_exit(status.as_exit_code(), now);
                    } else {
                        self.after_failed_start(now);
                    }
                }
            }
            Phase::Serving { ready_at, .. } => {
                self.report(Report::Exited { gen, pid, status });
                self.failed(Failure::Exited(status), now);
                if self.in_place.as_ref().is_some_and(|ip| ip.gen == gen) {
                    let how = InPlace::Confirmed;
                    self.finish_in_place(Some(FailReason::ExitedBeforeReady(status)), how, now);
                }
                let served = now.saturating_duration_since(ready_at);
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
            Phase::Draining { ready_at: None, .. } | Phase::Killing { ready_at: None, .. } => {
                self.report(Report::Reaped { gen, pid, status });
                self.after_failed_start(now);
            }
            Phase::Draining { since, .. } | Phase::Killing { since, .. } => {
                self.report(Report::Drained {
                    gen,
                    pid,
                    after: now.saturating_duration_since(since),
                    status,
                });
            }
        }
    }

    fn on_probe_result(&mut self, gen: GenId, ok: bool, now: Instant) {
        let Some(i) = self.find(gen) else { return };
        self.gens[i].probe_running = false;
        if !matches!(self.gens[i].phase, Phase::Starting { .. }) {
            return;
        }
        if ok {
            self.become_ready(i, ReadyBy::Probe, now);
        } else if let Some(every) = self.policy.probe_interval {
            self.timers.set(Timer::Probe(gen), now + every);
        }
    }

    /// How detection may judge the starting generation `g`.
    fn judge(&self, g: &Generation) -> Judge {
        let p = &self.policy;
        // Explicit choices win; a notifier is judged by its READY=1 only.
        if p.detect_interval.is_none()
            || p.ready_after.is_some()
            || p.probe_interval.is_some()
            || g.notified
        {
            return Judge::Off;
        }
        match self.last_ready_by {
            Some(ReadyBy::Notify) => Judge::Off,
            Some(ReadyBy::Detected) => Judge::AtOnce,
            _ => Judge::AfterGrace,
        }
    }

    fn on_accepting(&mut self, gen: GenId, seen: Accepting, fd: Option<u32>, now: Instant) {
        let Some(i) = self.find(gen) else { return };
        let Phase::Starting { pid } = self.gens[i].phase else {
            return;
        };
        if fd.is_some() {
            self.gens[i].seen_fd = fd;
        }
        let judge = self.judge(&self.gens[i]);
        if judge == Judge::Off || seen == Accepting::No {
            return;
        }
        let since = *self.gens[i].seen_since.get_or_insert(now);
        if judge == Judge::AfterGrace && now < since + self.policy.detect_grace {
            return;
        }
        match seen {
            Accepting::Yes | Accepting::Proven => {
                self.become_ready(i, ReadyBy::Detected, now);
                self.report(Report::ReadyDetected {
                    gen,
                    pid,
                    fd,
                    proven: seen == Accepting::Proven,
                });
            }
            Accepting::EdgeTriggered if self.policy.detect_prove && !self.gens[i].prove => {
                self.gens[i].prove = true;
                self.report(Report::Proving { gen, pid, fd });
            }
            Accepting::EdgeTriggered | Accepting::No => {}
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        // Expired timers in deadline order; each handler may arm or disarm others.
        while let Some(timer) = self.timers.pop_expired(now) {
            let idx = timer.gen().and_then(|g| self.find(g));
            let phase = idx.map(|i| self.gens[i].phase);
            match (timer, idx, phase) {
                (Timer::Restart, _, _) if self.shutdown.is_none() && self.starting().is_none() => {
                    self.start_generation(StartReason::Restart, now, None, Vec::new());
                }
                (Timer::WatchDebounce, _, _) => self.on_reload(ReplyTo::Nobody, false, now),
                (Timer::UpgradeCheck, _, _) => {
                    self.actions.push_back(Action::StopUpgradeCheck);
                    let limit = self.policy.upgrade_check_timeout.as_secs_f64();
                    self.upgrade_failed(format!(
                        "the new binary did not answer its check within {limit:.0} s"
                    ));
                }
                (Timer::InPlaceAck, _, _) => {
                    // No RELOADING=1: the child does not speak notify-reload; the signal was
                    // delivered, which is all that can be known.
                    if let Some(signal) = self.policy.reload_signal {
                        self.finish_in_place(None, InPlace::Signalled(signal), now);
                    }
                }
                (Timer::InPlaceDone, _, _) => {
                    let waited = self.in_place.as_ref().map_or(Duration::ZERO, |ip| {
                        now.saturating_duration_since(ip.started)
                    });
                    self.finish_in_place(
                        Some(FailReason::ReloadNotFinished(waited)),
                        InPlace::Confirmed,
                        now,
                    );
                }
                (Timer::Probe(gen), Some(i), Some(Phase::Starting { pid })) => {
                    // Not re-armed here: the next run is scheduled when this one reports.
                    self.gens[i].probe_running = true;
                    self.actions.push_back(Action::Probe { gen, pid });
                }
                (Timer::ReadyAfter(_), Some(i), Some(Phase::Starting { .. })) => {
                    self.become_ready(i, ReadyBy::ReadyAfter, now);
                }
                (Timer::Scan(gen), Some(i), Some(Phase::Starting { pid })) => {
                    let prove = self.gens[i].prove;
                    self.actions.push_back(Action::Scan { gen, pid, prove });
                    if let Some(every) = self.policy.detect_interval {
                        self.timers.set(Timer::Scan(gen), now + every);
                    }
                }
                (Timer::WrapperCheck(gen), Some(_), Some(Phase::Starting { pid })) => {
                    self.actions.push_back(Action::CheckWrapper { gen, pid });
                }
                (Timer::ReadyDeadline(gen), Some(i), Some(Phase::Starting { pid })) => {
                    let g = self.gens[i].clone();
                    let waited = now.saturating_duration_since(g.started_at);
                    let reason = match (g.seen_fd, self.serving()) {
                        (Some(fd), None) => {
                            // It serves and nothing else does: killing it would only start
                            // the same thing again. Ready, with a warning that says why.
                            self.become_ready(i, ReadyBy::Fallback, now);
                            self.report(Report::ReadyWithoutNotify {
                                gen,
                                pid,
                                fd,
                                waited,
                            });
                            continue;
                        }
                        (Some(fd), Some(_)) => FailReason::AcceptingWithoutReady { fd, waited },
                        (None, _) if self.policy.detect_interval.is_some() => {
                            FailReason::NeverAccepting(waited)
                        }
                        (None, _) => FailReason::ReadyTimeout(waited),
                    };
                    self.fail_start(&g, reason, now);
                    // Gracefully, as systemd does: it may already have accepted connections
                    // from the shared socket, which SIGKILL would fail. The drain timeout
                    // still bounds it. What follows is decided when the reaper reports it.
                    self.stop(i, None, now);
                }
                (Timer::KillDeadline(_), Some(i), Some(Phase::Draining { .. })) => {
                    self.kill(i, KillReason::DrainTimeout, now);
                }
                (Timer::ReapDeadline(gen), Some(i), Some(Phase::Killing { pid, .. })) => {
                    self.report(Report::Unkillable { gen, pid });
                    // Forget it (a late exit is then an unknown pid, never signalled again)
                    // and carry on as if it had exited: replace it if nothing serves.
                    self.remove(i, None);
                    self.after_failed_start(now);
                }
                _ => {} // stale: the generation left that phase (its timers went with it)
            }
        }
    }

    // ---- transitions ---------------------------------------------------------------------

    fn start_generation(
        &mut self,
        reason: StartReason,
        now: Instant,
        requested_at: Option<Instant>,
        waiters: Vec<RequestId>,
    ) {
        let id = self.next_gen;
        self.next_gen += 1;
        // The spawn first: the message to the service manager must not delay the child.
        self.actions.push_back(Action::Spawn { gen: id });
        if reason == StartReason::Reload {
            self.reloads += 1;
            self.tell(ManagerMessage::Reloading { gen: id });
        }
        self.gens.push(Generation {
            id,
            reason,
            phase: Phase::Spawning,
            started_at: now,
            requested_at,
            waiters,
            probe_running: false,
            notified: false,
            seen_since: None,
            seen_fd: None,
            prove: false,
            ready_by: None,
        });
    }

    fn become_ready(&mut self, i: usize, by: ReadyBy, now: Instant) {
        let Phase::Starting { pid } = self.gens[i].phase else {
            return;
        };
        self.gens[i].ready_by = Some(by);
        self.last_ready_by = Some(by);
        let gen = self.gens[i].id;
        let after = now.saturating_duration_since(self.gens[i].started_at);
        self.ever_ready = true;
        self.failures_in_row = 0;
        self.set_phase(i, Phase::Serving { pid, ready_at: now }, now);
        // Only now may older generations go: until this instant they were the ones accepting.
        // Their stop signals come before any report, so no log write delays the hand-over.
        for j in 0..self.gens.len() {
            if j != i && matches!(self.gens[j].phase, Phase::Serving { .. }) {
                self.stop(j, Some(now), now);
            }
        }
        self.report(Report::Ready { gen, pid, after });
        let reason = self.gens[i].reason;
        if !self.manager_ready || reason == StartReason::Reload {
            // The first READY=1, or the end of a reload (after RELOADING=1).
            self.tell(ManagerMessage::Ready { gen, pid });
        } else {
            self.tell(ManagerMessage::Serving { gen, pid });
        }
        self.manager_ready = true;
        if reason == StartReason::Reload {
            let waiters = std::mem::take(&mut self.gens[i].waiters);
            self.reload_finished(
                ReloadOutcome {
                    gen,
                    failure: None,
                    after,
                    serving: Some((gen, pid)),
                    in_place: None,
                },
                waiters,
                now,
            );
        }
        self.start_pending_reload(now);
    }

    /// Report that the starting generation `g` will not take over, and answer whoever waits
    /// for it.
    fn fail_start(&mut self, g: &Generation, reason: FailReason, now: Instant) {
        if reason != FailReason::Shutdown {
            self.failed(Failure::Start(reason.clone()), now);
        }
        self.report(Report::Failed {
            gen: g.id,
            pid: g.phase.pid(),
            reason: reason.clone(),
        });
        if g.reason == StartReason::Reload {
            let outcome = ReloadOutcome {
                gen: g.id,
                failure: Some(reason),
                after: now.saturating_duration_since(g.started_at),
                serving: self.serving(),
                in_place: None,
            };
            // Once stopping, the manager was told STOPPING=1: no READY=1 after that.
            if self.shutdown.is_none() {
                self.tell(ManagerMessage::ReloadFailed(outcome.clone()));
            }
            let waiters = match self.find(g.id) {
                Some(i) => std::mem::take(&mut self.gens[i].waiters),
                None => g.waiters.clone(),
            };
            self.reload_finished(outcome, waiters, now);
        }
    }

    fn reload_finished(&mut self, outcome: ReloadOutcome, waiters: Vec<RequestId>, now: Instant) {
        self.report(Report::ReloadFinished(outcome.clone()));
        for r in waiters {
            self.reply(r, Outcome::Reload(outcome.clone()));
        }
        self.last_reload = Some((outcome, now));
    }

    /// After a start that failed (and whose process is gone): follow up on pending requests
    /// or replace a missing server.
    fn after_failed_start(&mut self, now: Instant) {
        if self.shutdown.is_some() || self.starting().is_some() {
            return;
        }
        if self.pending_reload.is_some() {
            self.start_pending_reload(now);
        } else if self.serving().is_some() {
            // A failed reload: the old generation keeps serving.
        } else if self.policy.restart == RestartPolicy::Never {
            // Nothing serves and nothing may be restarted: a start that failed is a failure.
            self.begin_exit(exit_code::FAILURE, now);
        } else {
            self.schedule_restart(now);
        }
    }

    fn start_pending_reload(&mut self, now: Instant) {
        if self.shutdown.is_some() || self.starting().is_some() {
            return;
        }
        if self.in_place.is_some() {
            return;
        }
        if let Some(p) = self.pending_reload.take() {
            self.timers.cancel(Timer::Restart);
            self.begin_reload(p.restart, now, p.requested_at, p.waiters);
        }
    }

    fn failed(&mut self, f: Failure, now: Instant) {
        self.failures_in_row += 1;
        self.last_failure = Some((f, now));
    }

    fn schedule_restart(&mut self, now: Instant) {
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(self.policy.backoff_max);
        self.timers.set(Timer::Restart, now + delay);
        self.report(Report::RestartScheduled { delay });
    }

    /// Send the stop signal to generation `i` and give it the drain timeout. `handover_from`
    /// is when the successor became ready, for a hand-over.
    fn stop(&mut self, i: usize, handover_from: Option<Instant>, now: Instant) {
        let phase = self.gens[i].phase;
        let Some(pid) = phase.pid() else { return };
        let gen = self.gens[i].id;
        let signal = self.policy.stop_signal;
        let ready_at = phase.ready_at();
        self.set_phase(
            i,
            Phase::Draining {
                pid,
                since: now,
                ready_at,
            },
            now,
        );
        self.actions.push_back(Action::Signal {
            gen,
            pid,
            target: Target::Leader,
            signal,
        });
        self.report(Report::Stopping {
            gen,
            pid,
            signal,
            handover_from,
        });
    }

    /// SIGKILL generation `i`'s whole process group.
    fn kill(&mut self, i: usize, reason: KillReason, now: Instant) {
        let phase = self.gens[i].phase;
        let Some(pid) = phase.pid() else { return };
        let gen = self.gens[i].id;
        let since = match phase {
            Phase::Draining { since, .. } | Phase::Killing { since, .. } => since,
            _ => now,
        };
        if self.shutdown.is_some() {
            self.killed_any = true;
        }
        let ready_at = phase.ready_at();
        self.set_phase(
            i,
            Phase::Killing {
                pid,
                since,
                ready_at,
            },
            now,
        );
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
        self.on_shutdown(self.policy.stop_signal, None, false, now);
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
        // A start that failed ends handoff without a shutdown: an upgrade is off too.
        if let Some(u) = self.upgrade.take() {
            if !u.executing {
                self.actions.push_back(Action::StopUpgradeCheck);
            }
            self.reply(u.request, Outcome::ShuttingDown);
        }
        if let Some(p) = self.pending_reload.take() {
            for r in p.waiters {
                self.reply(r, Outcome::ShuttingDown);
            }
        }
        let stops = self
            .shutdown
            .as_mut()
            .map(|s| std::mem::take(&mut s.requests))
            .unwrap_or_default();
        for r in stops {
            self.reply(r, Outcome::Stopped { code });
        }
        self.actions.push_back(Action::Exit(code));
    }

    // ---- bookkeeping ---------------------------------------------------------------------

    /// The one place a phase changes: derive the generation's timers from its new phase.
    fn set_phase(&mut self, i: usize, phase: Phase, now: Instant) {
        let gen = self.gens[i].id;
        let was_starting = matches!(self.gens[i].phase, Phase::Starting { .. });
        self.gens[i].phase = phase;
        self.timers.clear_gen(gen);
        if was_starting && !matches!(phase, Phase::Starting { .. }) {
            self.stop_probe(i);
        }
        let p = &self.policy;
        match phase {
            Phase::Spawning | Phase::Serving { .. } => {}
            Phase::Starting { .. } => {
                self.timers
                    .set(Timer::ReadyDeadline(gen), now + p.ready_timeout);
                if let Some(d) = p.ready_after {
                    self.timers.set(Timer::ReadyAfter(gen), now + d);
                }
                if p.probe_interval.is_some() {
                    // First probe at once: a fast child should not wait a whole interval.
                    self.timers.set(Timer::Probe(gen), now);
                }
                if let Some(d) = p.wrapper_check_after {
                    self.timers.set(Timer::WrapperCheck(gen), now + d);
                }
                if let Some(d) = p.detect_interval {
                    self.timers.set(Timer::Scan(gen), now + d);
                }
            }
            Phase::Draining { .. } => {
                self.timers
                    .set(Timer::KillDeadline(gen), now + p.drain_timeout);
            }
            Phase::Killing { .. } => {
                self.timers.set(Timer::ReapDeadline(gen), now + p.kill_wait);
            }
        }
    }

    fn stop_probe(&mut self, i: usize) {
        if std::mem::take(&mut self.gens[i].probe_running) {
            self.actions.push_back(Action::StopProbe {
                gen: self.gens[i].id,
            });
        }
        if std::mem::take(&mut self.gens[i].prove) {
            self.actions.push_back(Action::StopProving {
                gen: self.gens[i].id,
            });
        }
    }

    /// Forget generation `i`: retire it (killing the leftovers of its process group when its
    /// main process `leftovers` was reaped) and drop its timers.
    fn remove(&mut self, i: usize, leftovers: Option<Pid>) -> Generation {
        self.stop_probe(i);
        let g = self.gens.remove(i);
        self.actions.push_back(Action::Retire {
            gen: g.id,
            leftovers,
        });
        self.timers.clear_gen(g.id);
        g
    }

    fn starting(&self) -> Option<GenId> {
        self.gens
            .iter()
            .find(|g| g.phase.is_starting())
            .map(|g| g.id)
    }

    fn find(&self, gen: GenId) -> Option<usize> {
        self.gens.iter().position(|g| g.id == gen)
    }

    fn report(&mut self, r: Report) {
        self.actions.push_back(Action::Report(r));
    }

    fn tell(&mut self, m: ManagerMessage) {
        self.actions.push_back(Action::Tell(m));
    }

    fn reply(&mut self, request: RequestId, outcome: Outcome) {
        self.actions.push_back(Action::Reply { request, outcome });
    }
}

#[cfg(test)]
mod tests;
