//! The one timer table (quinn-proto's `TimerTable`): every deadline of the state machine, keyed
//! by what it is for. Generation timers are keyed by generation, never by pid: once a
//! generation is gone its timers are gone, so a late deadline can never signal a pid that was
//! reaped and reused.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::GenId;

/// What a deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Timer {
    /// `--ready-after` elapsed: the child counts as ready.
    ReadyAfter(GenId),
    /// `--ready-timeout` elapsed: the child failed to start.
    ReadyDeadline(GenId),
    /// Next run of the readiness probe.
    Probe(GenId),
    /// Next accept-wait scan of a starting generation (`--detect-ready`).
    Scan(GenId),
    /// Still starting: look for a wrapper hiding the sockets (a diagnostic).
    WrapperCheck(GenId),
    /// `--drain-timeout` elapsed: SIGKILL the group.
    KillDeadline(GenId),
    /// SIGKILL sent long ago and still not reaped: give up on it.
    ReapDeadline(GenId),
    /// Back-off before replacing a crashed child.
    Restart,
    /// Watched files are quiet again: reload.
    WatchDebounce,
    /// A reload in place: the time a child has to answer `RELOADING=1`.
    InPlaceAck,
    /// A reload in place: `RELOADING=1` came; the time it has to send `READY=1`.
    InPlaceDone,
    /// `handoff upgrade`: the candidate binary's check ran out of time.
    UpgradeCheck,
}

impl Timer {
    /// The generation the timer belongs to (`None` for handoff-wide timers).
    pub(crate) fn gen(self) -> Option<GenId> {
        match self {
            Self::ReadyAfter(g)
            | Self::ReadyDeadline(g)
            | Self::Probe(g)
            | Self::Scan(g)
            | Self::WrapperCheck(g)
            | Self::KillDeadline(g)
            | Self::ReapDeadline(g) => Some(g),
            Self::Restart
            | Self::WatchDebounce
            | Self::InPlaceAck
            | Self::InPlaceDone
            | Self::UpgradeCheck => None,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Timers {
    at: BTreeMap<Timer, Instant>,
}

impl Timers {
    pub(crate) fn set(&mut self, t: Timer, at: Instant) {
        self.at.insert(t, at);
    }

    pub(crate) fn get(&self, t: Timer) -> Option<Instant> {
        self.at.get(&t).copied()
    }

    pub(crate) fn cancel(&mut self, t: Timer) {
        self.at.remove(&t);
    }

    /// EXTEND_TIMEOUT semantics: an armed deadline becomes at least `at`; an unarmed one
    /// stays unarmed.
    pub(crate) fn extend(&mut self, t: Timer, at: Instant) {
        if let Some(cur) = self.at.get_mut(&t) {
            *cur = (*cur).max(at);
        }
    }

    pub(crate) fn clear_gen(&mut self, gen: GenId) {
        self.at.retain(|t, _| t.gen() != Some(gen));
    }

    pub(crate) fn clear(&mut self) {
        self.at.clear();
    }

    /// Every armed timer and its deadline, in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Timer, Instant)> + '_ {
        self.at.iter().map(|(t, at)| (*t, *at))
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.at.values().min().copied()
    }

    /// The earliest deadline of generation `gen`.
    pub(crate) fn next_of(&self, gen: GenId) -> Option<Instant> {
        self.at
            .iter()
            .filter(|(t, _)| t.gen() == Some(gen))
            .map(|(_, at)| *at)
            .min()
    }

    /// Remove and return the earliest timer that has expired at `now`.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<Timer> {
        let (t, _) = self
            .at
            .iter()
            .filter(|(_, at)| **at <= now)
            .min_by_key(|(t, at)| (**at, **t))
            .map(|(t, at)| (*t, *at))?;
        self.at.remove(&t);
        Some(t)
    }
}
