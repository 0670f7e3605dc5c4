//! The state machine's state as data: what `handoff upgrade` carries across exec.
//!
//! [`Supervisor::export`] turns the state into a [`SupervisorState`], [`Supervisor::import`]
//! turns one back into a supervisor that behaves exactly as the exported one would (the same
//! actions after the same events: the unit tests check it for every phase). It is taken
//! between two events, with every action performed (the queue is empty).
//!
//! Instants cannot cross exec as such: each one is stored as signed nanoseconds relative to
//! the `now` given to `export` (negative: in the past; positive: a deadline to come). The
//! importer passes the instant that corresponds to that `now` in its own clock (the shell
//! measures the time the exec took with CLOCK_MONOTONIC, which survives exec), so a
//! deadline keeps its remaining time and one that passed during the exec fires at once.
//!
//! The serialized form (serde, JSON in the shell) is part of the state document described
//! in ARCHITECTURE.md ("The upgrade state"); its version is [`STATE_VERSION`]. Unknown
//! fields are refused: a change of any kind is a new version, and a reader that does not
//! list a version refuses it before the exec.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{
    Failure, GenId, Generation, InPlaceReload, PendingReload, Phase, Pid, Policy, ReadyBy,
    ReloadOutcome, RequestId, ShutdownState, StartReason, Supervisor, Timer, Timers, UpgradeState,
};

/// Version of the upgrade state document (this part of it and the shell's). Bumped on any
/// change to either.
pub const STATE_VERSION: u32 = 1;

/// An instant, as nanoseconds relative to the export's `now` (negative: before it).
type Rel = i64;

fn rel(t: Instant, now: Instant) -> Rel {
    if t >= now {
        i64::try_from((t - now).as_nanos()).unwrap_or(i64::MAX)
    } else {
        i64::try_from((now - t).as_nanos()).map_or(i64::MIN, |n| -n)
    }
}

fn abs(r: Rel, now: Instant) -> Instant {
    let d = Duration::from_nanos(r.unsigned_abs());
    if r >= 0 {
        now + d
    } else {
        // Before the clock's origin (cannot happen with CLOCK_MONOTONIC): the earliest we have.
        now.checked_sub(d).unwrap_or(now)
    }
}

/// The supervisor's state; see the module documentation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorState {
    generations: Vec<GenerationState>,
    next_gen: GenId,
    pending_reload: Option<PendingReloadState>,
    shutdown: Option<ShutdownRecord>,
    killed_any: bool,
    ever_ready: bool,
    manager_ready: bool,
    backoff: Duration,
    timers: Vec<(Timer, Rel)>,
    finished: Option<i32>,
    finished_code: Option<i32>,
    reloads: u64,
    last_reload: Option<(ReloadOutcome, Rel)>,
    failures_in_row: u32,
    last_failure: Option<(Failure, Rel)>,
    in_place: Option<InPlaceState>,
    upgrade: Option<UpgradeRecord>,
    upgrades: u64,
    last_upgrade: Option<Rel>,
    /// How the latest generation to become ready did (the next one follows it).
    last_ready_by: Option<ReadyBy>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerationState {
    id: GenId,
    reason: StartReason,
    phase: PhaseState,
    started_at: Rel,
    requested_at: Option<Rel>,
    waiters: Vec<RequestId>,
    probe_running: bool,
    /// Some notify datagram came from it: a notifier, never judged by detection.
    notified: bool,
    /// Detection: when a scan first saw it waiting to accept (the grace runs from there).
    seen_since: Option<Rel>,
    seen_fd: Option<u32>,
    /// Its scans prove edge-triggered listeners (the driver's proof connections themselves
    /// do not cross the exec: the next scan makes new ones).
    prove: bool,
    ready_by: Option<ReadyBy>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum PhaseState {
    Spawning,
    Starting {
        pid: Pid,
    },
    Serving {
        pid: Pid,
        ready_at: Rel,
    },
    Draining {
        pid: Pid,
        since: Rel,
        ready_at: Option<Rel>,
    },
    Killing {
        pid: Pid,
        since: Rel,
        ready_at: Option<Rel>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PendingReloadState {
    requested_at: Rel,
    waiters: Vec<RequestId>,
    restart: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShutdownRecord {
    forced: bool,
    requests: Vec<RequestId>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InPlaceState {
    gen: GenId,
    pid: Pid,
    started: Rel,
    acked: bool,
    waiters: Vec<RequestId>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpgradeRecord {
    request: RequestId,
    binary: PathBuf,
    executing: bool,
}

impl PhaseState {
    fn from(p: Phase, now: Instant) -> Self {
        match p {
            Phase::Spawning => Self::Spawning,
            Phase::Starting { pid } => Self::Starting { pid },
            Phase::Serving { pid, ready_at } => Self::Serving {
                pid,
                ready_at: rel(ready_at, now),
            },
            Phase::Draining {
                pid,
                since,
                ready_at,
            } => Self::Draining {
                pid,
                since: rel(since, now),
                ready_at: ready_at.map(|r| rel(r, now)),
            },
            Phase::Killing {
                pid,
                since,
                ready_at,
            } => Self::Killing {
                pid,
                since: rel(since, now),
                ready_at: ready_at.map(|r| rel(r, now)),
            },
        }
    }

    fn into_phase(self, now: Instant) -> Phase {
        match self {
            Self::Spawning => Phase::Spawning,
            Self::Starting { pid } => Phase::Starting { pid },
            Self::Serving { pid, ready_at } => Phase::Serving {
                pid,
                ready_at: abs(ready_at, now),
            },
            Self::Draining {
                pid,
                since,
                ready_at,
            } => Phase::Draining {
                pid,
                since: abs(since, now),
                ready_at: ready_at.map(|r| abs(r, now)),
            },
            Self::Killing {
                pid,
                since,
                ready_at,
            } => Phase::Killing {
                pid,
                since: abs(since, now),
                ready_at: ready_at.map(|r| abs(r, now)),
            },
        }
    }
}

impl SupervisorState {
    /// Pids of every generation's main process (what the shell must still be the parent of).
    pub fn pids(&self) -> Vec<(GenId, Pid)> {
        self.generations
            .iter()
            .filter_map(|g| {
                let pid = match g.phase {
                    PhaseState::Spawning => return None,
                    PhaseState::Starting { pid }
                    | PhaseState::Serving { pid, .. }
                    | PhaseState::Draining { pid, .. }
                    | PhaseState::Killing { pid, .. } => pid,
                };
                Some((g.id, pid))
            })
            .collect()
    }

    /// Every control request the state still owes an answer to (the shell carries their
    /// connections across the exec).
    pub fn open_requests(&self) -> Vec<RequestId> {
        let mut r: Vec<RequestId> = self
            .generations
            .iter()
            .flat_map(|g| g.waiters.iter().copied())
            .chain(self.pending_reload.iter().flat_map(|p| p.waiters.clone()))
            .chain(self.shutdown.iter().flat_map(|s| s.requests.clone()))
            .chain(self.in_place.iter().flat_map(|i| i.waiters.clone()))
            .chain(self.upgrade.iter().map(|u| u.request))
            .collect();
        r.sort_unstable();
        r.dedup();
        r
    }
}

impl Supervisor {
    /// The state, with instants relative to `now`; see the module documentation. Take it
    /// between events, once every action was performed: queued actions are not part of it.
    pub fn export(&self, now: Instant) -> SupervisorState {
        debug_assert!(self.actions.is_empty(), "exported with actions queued");
        SupervisorState {
            generations: self
                .gens
                .iter()
                .map(|g| GenerationState {
                    id: g.id,
                    reason: g.reason,
                    phase: PhaseState::from(g.phase, now),
                    started_at: rel(g.started_at, now),
                    requested_at: g.requested_at.map(|t| rel(t, now)),
                    waiters: g.waiters.clone(),
                    probe_running: g.probe_running,
                    notified: g.notified,
                    seen_since: g.seen_since.map(|t| rel(t, now)),
                    seen_fd: g.seen_fd,
                    prove: g.prove,
                    ready_by: g.ready_by,
                })
                .collect(),
            next_gen: self.next_gen,
            pending_reload: self.pending_reload.as_ref().map(|p| PendingReloadState {
                requested_at: rel(p.requested_at, now),
                waiters: p.waiters.clone(),
                restart: p.restart,
            }),
            shutdown: self.shutdown.as_ref().map(|s| ShutdownRecord {
                forced: s.forced,
                requests: s.requests.clone(),
            }),
            killed_any: self.killed_any,
            ever_ready: self.ever_ready,
            manager_ready: self.manager_ready,
            backoff: self.backoff,
            timers: self
                .timers
                .iter()
                .map(|(t, at)| (t, rel(at, now)))
                .collect(),
            finished: self.finished,
            finished_code: self.finished_code,
            reloads: self.reloads,
            last_reload: self
                .last_reload
                .as_ref()
                .map(|(o, at)| (o.clone(), rel(*at, now))),
            failures_in_row: self.failures_in_row,
            last_failure: self
                .last_failure
                .as_ref()
                .map(|(f, at)| (f.clone(), rel(*at, now))),
            in_place: self.in_place.as_ref().map(|i| InPlaceState {
                gen: i.gen,
                pid: i.pid,
                started: rel(i.started, now),
                acked: i.acked,
                waiters: i.waiters.clone(),
            }),
            upgrade: self.upgrade.as_ref().map(|u| UpgradeRecord {
                request: u.request,
                binary: u.binary.clone(),
                executing: u.executing,
            }),
            upgrades: self.upgrades,
            last_upgrade: self.last_upgrade.map(|t| rel(t, now)),
            last_ready_by: self.last_ready_by,
        }
    }

    /// A supervisor with `policy` and the exported `state`, `now` being the instant that
    /// corresponds to the exporter's `now`. It starts nothing: it carries on where the
    /// exporter was.
    pub fn import(policy: Policy, state: SupervisorState, now: Instant) -> Self {
        let mut timers = Timers::default();
        for (t, at) in state.timers {
            timers.set(t, abs(at, now));
        }
        Self {
            policy,
            gens: state
                .generations
                .into_iter()
                .map(|g| Generation {
                    id: g.id,
                    reason: g.reason,
                    phase: g.phase.into_phase(now),
                    started_at: abs(g.started_at, now),
                    requested_at: g.requested_at.map(|t| abs(t, now)),
                    waiters: g.waiters,
                    probe_running: g.probe_running,
                    notified: g.notified,
                    seen_since: g.seen_since.map(|t| abs(t, now)),
                    seen_fd: g.seen_fd,
                    prove: g.prove,
                    ready_by: g.ready_by,
                })
                .collect(),
            next_gen: state.next_gen,
            pending_reload: state.pending_reload.map(|p| PendingReload {
                requested_at: abs(p.requested_at, now),
                waiters: p.waiters,
                restart: p.restart,
            }),
            shutdown: state.shutdown.map(|s| ShutdownState {
                forced: s.forced,
                requests: s.requests,
            }),
            killed_any: state.killed_any,
            ever_ready: state.ever_ready,
            manager_ready: state.manager_ready,
            backoff: state.backoff,
            timers,
            actions: Default::default(),
            finished: state.finished,
            finished_code: state.finished_code,
            reloads: state.reloads,
            last_reload: state.last_reload.map(|(o, at)| (o, abs(at, now))),
            failures_in_row: state.failures_in_row,
            last_failure: state.last_failure.map(|(f, at)| (f, abs(at, now))),
            in_place: state.in_place.map(|i| InPlaceReload {
                gen: i.gen,
                pid: i.pid,
                started: abs(i.started, now),
                acked: i.acked,
                waiters: i.waiters,
            }),
            upgrade: state.upgrade.map(|u| UpgradeState {
                request: u.request,
                binary: u.binary,
                executing: u.executing,
            }),
            upgrades: state.upgrades,
            last_upgrade: state.last_upgrade.map(|t| abs(t, now)),
            last_ready_by: state.last_ready_by,
        }
    }
}
