//! Transition tests: a fake clock, no processes, and the *exact* list of actions each event
//! produces (a spurious or missing action fails the test).
#![allow(clippy::unwrap_used)]

use super::*;

const T: Signal = Signal::TERM;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// A supervisor plus a fake clock. Every verb returns the actions it produced.
struct Harness {
    sup: Supervisor,
    now: Instant,
    /// Pids already reported exited: no action may target them afterwards.
    reaped: Vec<Pid>,
}

impl Harness {
    fn new(policy: Policy) -> (Self, Vec<Action>) {
        let now = Instant::now();
        let mut h = Self {
            sup: Supervisor::new(policy, now),
            now,
            reaped: Vec::new(),
        };
        let a = h.drain();
        (h, a)
    }

    /// Generation 1 spawned as pid 100 and ready.
    fn serving() -> Self {
        Self::serving_with(Policy::default())
    }

    fn serving_with(policy: Policy) -> Self {
        let (mut h, _) = Self::new(policy);
        h.spawned(1, 100);
        h.ready(1);
        h
    }

    /// A harness at the same instant whose supervisor is this one through export, JSON and
    /// import (with the same policy).
    fn twin(&self) -> Self {
        let state = self.sup.export(self.now);
        let json = serde_json::to_string(&state).unwrap();
        let back: SupervisorState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state, "JSON round trip");
        Self {
            sup: Supervisor::import(self.sup.policy.clone(), back, self.now),
            now: self.now,
            reaped: self.reaped.clone(),
        }
    }

    fn drain(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        while let Some(a) = self.sup.poll_action() {
            if let Action::Signal { pid, .. } = &a {
                assert!(
                    !self.reaped.contains(pid),
                    "signal to reaped pid {pid}: {a:?}"
                );
            }
            out.push(a);
        }
        out
    }

    fn ev(&mut self, e: Event) -> Vec<Action> {
        if let Event::Exited { pid, .. } = &e {
            self.reaped.push(*pid);
        }
        self.sup.handle(e, self.now);
        self.drain()
    }

    fn advance(&mut self, d: Duration) -> Vec<Action> {
        self.now += d;
        self.ev(Event::Timeout)
    }

    /// Jump to the next deadline and fire it.
    fn fire(&mut self) -> Vec<Action> {
        let at = self.sup.poll_timeout().expect("a timer is armed");
        self.now = self.now.max(at);
        self.ev(Event::Timeout)
    }

    fn spawned(&mut self, gen: GenId, pid: Pid) -> Vec<Action> {
        self.ev(Event::Spawned { gen, pid })
    }

    fn ready(&mut self, gen: GenId) -> Vec<Action> {
        let msg = NotifyMessage {
            ready: true,
            ..Default::default()
        };
        self.ev(Event::Notify { gen, msg })
    }

    fn exited(&mut self, pid: Pid, code: i32) -> Vec<Action> {
        self.ev(Event::Exited {
            pid,
            status: ExitStatus::Exited(code),
        })
    }

    fn killed(&mut self, pid: Pid, sig: Signal) -> Vec<Action> {
        self.ev(Event::Exited {
            pid,
            status: ExitStatus::Signaled(sig),
        })
    }

    fn reload(&mut self) -> Vec<Action> {
        self.ev(Event::Reload {
            reply: ReplyTo::Nobody,
            restart: false,
        })
    }

    fn reload_waiting(&mut self, request: RequestId) -> Vec<Action> {
        self.ev(Event::Reload {
            reply: ReplyTo::WhenDone(request),
            restart: false,
        })
    }

    fn shutdown(&mut self) -> Vec<Action> {
        self.ev(Event::Shutdown {
            signal: T,
            request: None,
            force: false,
        })
    }

    /// SIGINT (Ctrl-C).
    fn interrupt(&mut self) -> Vec<Action> {
        self.ev(Event::Shutdown {
            signal: Signal::INT,
            request: None,
            force: false,
        })
    }

    /// `handoff stop --force`.
    fn force_stop(&mut self) -> Vec<Action> {
        self.ev(Event::Shutdown {
            signal: T,
            request: None,
            force: true,
        })
    }

    /// Deadline of generation `gen`, relative to now.
    fn deadline_in(&self, gen: GenId) -> Option<Duration> {
        self.sup
            .snapshot(self.now)
            .generations
            .iter()
            .find(|g| g.gen == gen)
            .and_then(|g| g.deadline)
            .map(|d| d.saturating_duration_since(self.now))
    }
}

// ---- constructors for expected actions ---------------------------------------------------

fn spawn(gen: GenId) -> Action {
    Action::Spawn { gen }
}

fn term(gen: GenId, pid: Pid) -> Action {
    Action::Signal {
        gen,
        pid,
        target: Target::Leader,
        signal: T,
    }
}

fn kill9(gen: GenId, pid: Pid) -> Action {
    Action::Signal {
        gen,
        pid,
        target: Target::Group,
        signal: Signal::KILL,
    }
}

fn rep(r: Report) -> Action {
    Action::Report(r)
}

fn retire(gen: GenId, pid: Pid) -> Action {
    Action::Retire {
        gen,
        leftovers: Some(pid),
    }
}

fn tell(m: ManagerMessage) -> Action {
    Action::Tell(m)
}

fn reply(request: RequestId, outcome: Outcome) -> Action {
    Action::Reply { request, outcome }
}

fn spawned_rep(gen: GenId, pid: Pid, reason: StartReason, since: Option<Duration>) -> Action {
    rep(Report::Spawned {
        gen,
        pid,
        reason,
        since_request: since,
    })
}

fn stopping(gen: GenId, pid: Pid, handover_from: Option<Instant>) -> Action {
    rep(Report::Stopping {
        gen,
        pid,
        signal: T,
        handover_from,
    })
}

fn ok_outcome(gen: GenId, pid: Pid, after: Duration) -> ReloadOutcome {
    ReloadOutcome {
        gen,
        failure: None,
        after,
        serving: Some((gen, pid)),
        in_place: None,
    }
}

fn failed_outcome(
    gen: GenId,
    reason: FailReason,
    after: Duration,
    serving: Option<(GenId, Pid)>,
) -> ReloadOutcome {
    ReloadOutcome {
        gen,
        failure: Some(reason),
        after,
        serving,
        in_place: None,
    }
}

/// A reload request that starts generation `gen`: its spawn goes first, so that no log write
/// or message to the manager delays the child.
fn reload_started(gen: GenId) -> Vec<Action> {
    vec![
        spawn(gen),
        rep(Report::ReloadRequested { coalesced: false }),
        tell(ManagerMessage::Reloading { gen }),
    ]
}

// ---- the first generation ----------------------------------------------------------------

#[test]
fn first_generation_is_spawned_at_once_and_serves_on_ready() {
    let (mut h, a) = Harness::new(Policy::default());
    assert_eq!(a, vec![spawn(1)]);
    let a = h.spawned(1, 100);
    assert_eq!(a, vec![spawned_rep(1, 100, StartReason::Initial, None)]);
    assert_eq!(h.deadline_in(1), Some(secs(60)), "the ready timeout");
    h.now += ms(250);
    let a = h.ready(1);
    assert_eq!(
        a,
        vec![
            rep(Report::Ready {
                gen: 1,
                pid: 100,
                after: ms(250)
            }),
            tell(ManagerMessage::Ready { gen: 1, pid: 100 }),
        ]
    );
    assert_eq!(h.sup.serving(), Some((1, 100)));
    assert_eq!(h.sup.poll_timeout(), None, "no timer while simply serving");
}

#[test]
fn exec_failure_of_the_first_child_ends_handoff() {
    let (mut h, _) = Harness::new(Policy::default());
    let a = h.ev(Event::SpawnFailed {
        gen: 1,
        error: "No such file".into(),
    });
    assert_eq!(
        a,
        vec![
            Action::Retire {
                gen: 1,
                leftovers: None
            },
            rep(Report::Failed {
                gen: 1,
                pid: None,
                reason: FailReason::SpawnFailed("No such file".into())
            }),
            Action::Exit(exit_code::FAILURE),
        ]
    );
}

#[test]
fn first_generation_ready_timeout_is_stopped_gracefully_then_restarted() {
    let (mut h, _) = Harness::new(Policy::default());
    h.spawned(1, 100);
    let a = h.advance(secs(60));
    assert_eq!(
        a,
        vec![
            rep(Report::Failed {
                gen: 1,
                pid: Some(100),
                reason: FailReason::ReadyTimeout(secs(60))
            }),
            term(1, 100),
            stopping(1, 100, None),
        ]
    );
    assert_eq!(
        h.deadline_in(1),
        Some(secs(30)),
        "the drain timeout bounds it"
    );
    let a = h.killed(100, T);
    assert_eq!(
        a,
        vec![
            retire(1, 100),
            Action::CheckListeners { gen: 1 },
            rep(Report::Reaped {
                gen: 1,
                pid: 100,
                status: ExitStatus::Signaled(T)
            }),
            rep(Report::RestartScheduled { delay: ms(100) }),
        ]
    );
}

#[test]
fn restart_never_ends_handoff_when_the_first_child_is_never_ready() {
    // Before, a ready timeout restarted forever whatever --restart said.
    let (mut h, _) = Harness::new(Policy {
        restart: RestartPolicy::Never,
        ..Policy::default()
    });
    h.spawned(1, 100);
    h.advance(secs(60));
    let a = h.killed(100, T);
    assert_eq!(a.last(), Some(&Action::Exit(exit_code::FAILURE)), "{a:?}");
}

#[test]
fn restart_never_ends_handoff_when_a_replacement_cannot_be_executed() {
    let never = Policy {
        restart: RestartPolicy::Never,
        ..Policy::default()
    };
    // A reload whose binary is gone, then the serving child dies: nothing can serve.
    let mut h = Harness::serving_with(never);
    h.reload();
    h.ev(Event::SpawnFailed {
        gen: 2,
        error: "No such file".into(),
    });
    let a = h.exited(100, 0);
    assert_eq!(a.last(), Some(&Action::Exit(0)), "{a:?}");
}

#[test]
fn reload_during_the_first_start_runs_after_it() {
    let (mut h, _) = Harness::new(Policy::default());
    let a = h.reload();
    assert_eq!(a, vec![rep(Report::ReloadRequested { coalesced: false })]);
    h.spawned(1, 100);
    let a = h.ready(1);
    assert_eq!(
        a,
        vec![
            rep(Report::Ready {
                gen: 1,
                pid: 100,
                after: Duration::ZERO
            }),
            tell(ManagerMessage::Ready { gen: 1, pid: 100 }),
            spawn(2),
            tell(ManagerMessage::Reloading { gen: 2 }),
        ]
    );
}

// ---- reloads -----------------------------------------------------------------------------

#[test]
fn reload_stops_the_old_generation_only_after_the_new_one_is_ready() {
    let mut h = Harness::serving();
    assert_eq!(h.reload(), reload_started(2));
    h.now += ms(5);
    let a = h.spawned(2, 200);
    assert_eq!(
        a,
        vec![spawned_rep(2, 200, StartReason::Reload, Some(ms(5)))],
        "old generation untouched while gen 2 starts"
    );
    assert_eq!(h.sup.serving(), Some((1, 100)));
    h.now += ms(200);
    let a = h.ready(2);
    assert_eq!(
        a,
        vec![
            term(1, 100),
            stopping(1, 100, Some(h.now)),
            rep(Report::Ready {
                gen: 2,
                pid: 200,
                after: ms(205)
            }),
            tell(ManagerMessage::Ready { gen: 2, pid: 200 }),
            rep(Report::ReloadFinished(ok_outcome(2, 200, ms(205)))),
        ]
    );
    assert_eq!(h.sup.serving(), Some((2, 200)));
    assert_eq!(h.deadline_in(1), Some(secs(30)), "the drain timeout");
    h.now += ms(40);
    let a = h.exited(100, 0);
    assert_eq!(
        a,
        vec![
            retire(1, 100),
            Action::CheckListeners { gen: 1 },
            rep(Report::Drained {
                gen: 1,
                pid: 100,
                after: ms(40),
                status: ExitStatus::Exited(0)
            }),
        ]
    );
    assert_eq!(h.sup.poll_timeout(), None);
}

#[test]
fn a_waiting_reload_request_is_answered_with_the_outcome() {
    let mut h = Harness::serving();
    let a = h.reload_waiting(7);
    assert_eq!(a, reload_started(2), "no answer before the outcome");
    h.spawned(2, 200);
    let a = h.ready(2);
    assert_eq!(
        a.last(),
        Some(&reply(
            7,
            Outcome::Reload(ok_outcome(2, 200, Duration::ZERO))
        ))
    );
    assert_eq!(
        h.sup.snapshot(h.now).last_reload,
        Some((ok_outcome(2, 200, Duration::ZERO), h.now))
    );
}

#[test]
fn a_no_wait_reload_request_is_answered_at_once() {
    let mut h = Harness::serving();
    let a = h.ev(Event::Reload {
        reply: ReplyTo::Now(3),
        restart: false,
    });
    let mut want = reload_started(2);
    want.insert(1, reply(3, Outcome::ReloadRequested));
    assert_eq!(a, want);
    h.spawned(2, 200);
    let a = h.ready(2);
    assert!(
        !a.iter().any(|a| matches!(a, Action::Reply { .. })),
        "answered once only: {a:?}"
    );
}

#[test]
fn new_child_crashing_before_ready_rolls_back() {
    let mut h = Harness::serving();
    h.reload_waiting(1);
    h.spawned(2, 200);
    h.now += ms(30);
    let a = h.exited(200, 1);
    let reason = FailReason::ExitedBeforeReady(ExitStatus::Exited(1));
    let outcome = failed_outcome(2, reason.clone(), ms(30), Some((1, 100)));
    assert_eq!(
        a,
        vec![
            retire(2, 200),
            Action::CheckListeners { gen: 2 },
            rep(Report::Failed {
                gen: 2,
                pid: Some(200),
                reason
            }),
            tell(ManagerMessage::ReloadFailed(outcome.clone())),
            rep(Report::ReloadFinished(outcome.clone())),
            reply(1, Outcome::Reload(outcome)),
        ],
        "the old generation keeps serving untouched; a failed reload is not retried"
    );
    assert_eq!(h.sup.serving(), Some((1, 100)));
    assert_eq!(h.sup.poll_timeout(), None);
}

#[test]
fn new_child_missing_its_ready_deadline_is_stopped_gracefully_and_rolled_back() {
    let mut h = Harness::serving();
    h.reload();
    h.spawned(2, 200);
    assert_eq!(h.advance(secs(59)), vec![]);
    let a = h.advance(secs(1));
    let reason = FailReason::ReadyTimeout(secs(60));
    let outcome = failed_outcome(2, reason.clone(), secs(60), Some((1, 100)));
    assert_eq!(
        a,
        vec![
            rep(Report::Failed {
                gen: 2,
                pid: Some(200),
                reason
            }),
            tell(ManagerMessage::ReloadFailed(outcome.clone())),
            rep(Report::ReloadFinished(outcome)),
            term(2, 200),
            stopping(2, 200, None),
        ],
        "it may have accepted connections already: the stop signal, not SIGKILL"
    );
    // It ignores the stop signal: the drain timeout kills it.
    let a = h.advance(secs(30));
    assert_eq!(
        a,
        vec![
            kill9(2, 200),
            rep(Report::Killed {
                gen: 2,
                pid: 200,
                reason: KillReason::DrainTimeout
            }),
        ]
    );
    let a = h.killed(200, Signal::KILL);
    assert_eq!(
        a,
        vec![
            retire(2, 200),
            Action::CheckListeners { gen: 2 },
            rep(Report::Reaped {
                gen: 2,
                pid: 200,
                status: ExitStatus::Signaled(Signal::KILL)
            }),
        ]
    );
    assert_eq!(h.sup.serving(), Some((1, 100)));
}

#[test]
fn ready_arriving_after_the_deadline_is_ignored() {
    let mut h = Harness::serving();
    h.reload();
    h.spawned(2, 200);
    h.advance(secs(60));
    assert_eq!(h.ready(2), vec![]);
    assert_eq!(h.sup.serving(), Some((1, 100)));
}

#[test]
fn exec_failure_on_reload_keeps_the_old_generation() {
    let mut h = Harness::serving();
    h.reload();
    let a = h.ev(Event::SpawnFailed {
        gen: 2,
        error: "No such file".into(),
    });
    let reason = FailReason::SpawnFailed("No such file".into());
    let outcome = failed_outcome(2, reason.clone(), Duration::ZERO, Some((1, 100)));
    assert_eq!(
        a,
        vec![
            Action::Retire {
                gen: 2,
                leftovers: None
            },
            rep(Report::Failed {
                gen: 2,
                pid: None,
                reason
            }),
            tell(ManagerMessage::ReloadFailed(outcome.clone())),
            rep(Report::ReloadFinished(outcome)),
        ]
    );
    assert_eq!(h.sup.serving(), Some((1, 100)));
}

#[test]
fn drain_timeout_kills_the_old_group() {
    let mut h = Harness::serving();
    h.reload();
    h.spawned(2, 200);
    h.ready(2);
    assert_eq!(h.advance(secs(29)), vec![]);
    let a = h.advance(secs(1));
    assert_eq!(
        a,
        vec![
            kill9(1, 100),
            rep(Report::Killed {
                gen: 1,
                pid: 100,
                reason: KillReason::DrainTimeout
            }),
        ]
    );
    assert_eq!(h.deadline_in(1), Some(secs(5)), "the reap deadline");
    let a = h.killed(100, Signal::KILL);
    assert_eq!(
        a,
        vec![
            retire(1, 100),
            Action::CheckListeners { gen: 1 },
            rep(Report::Drained {
                gen: 1,
                pid: 100,
                after: secs(30),
                status: ExitStatus::Signaled(Signal::KILL)
            }),
        ]
    );
    assert_eq!(h.sup.serving(), Some((2, 200)));
}

#[test]
fn several_old_generations_drain_at_once_each_with_its_own_deadline() {
    let mut h = Harness::serving();
    h.reload();
    h.spawned(2, 200);
    h.ready(2);
    h.now += secs(10);
    h.reload();
    h.spawned(3, 300);
    let a = h.ready(3);
    assert_eq!(a[..2], [term(2, 200), stopping(2, 200, Some(h.now))]);
    assert_eq!(h.deadline_in(1), Some(secs(20)));
    assert_eq!(h.deadline_in(2), Some(secs(30)));
    let a = h.advance(secs(20));
    assert_eq!(a[0], kill9(1, 100));
    assert_eq!(a.len(), 2);
    h.killed(100, Signal::KILL);
    let a = h.advance(secs(10));
    assert_eq!(a[0], kill9(2, 200));
    assert_eq!(a.len(), 2);
}

#[test]
fn reloads_during_a_start_coalesce_into_one_more_and_every_waiter_gets_it() {
    let mut h = Harness::serving();
    assert_eq!(h.reload_waiting(1), reload_started(2));
    let a = h.reload_waiting(2);
    assert_eq!(a, vec![rep(Report::ReloadRequested { coalesced: false })]);
    for r in 3..100 {
        let a = h.reload_waiting(r);
        assert_eq!(a, vec![rep(Report::ReloadRequested { coalesced: true })]);
    }
    h.spawned(2, 200);
    let a = h.ready(2);
    let replies: Vec<RequestId> = a
        .iter()
        .filter_map(|a| match a {
            Action::Reply { request, .. } => Some(*request),
            _ => None,
        })
        .collect();
    assert_eq!(replies, vec![1], "only the first waited for generation 2");
    assert_eq!(
        a[a.len() - 2..],
        [spawn(3), tell(ManagerMessage::Reloading { gen: 3 })],
        "exactly one more reload after the first"
    );
    h.spawned(3, 300);
    let a = h.ready(3);
    let replies: Vec<RequestId> = a
        .iter()
        .filter_map(|a| match a {
            Action::Reply { request, .. } => Some(*request),
            _ => None,
        })
        .collect();
    assert_eq!(replies, (2..100).collect::<Vec<_>>());
    assert!(!a.iter().any(|a| matches!(a, Action::Spawn { .. })));
    assert_eq!(h.sup.snapshot(h.now).reloads, 2);
}

#[test]
fn pending_reload_runs_after_a_failed_one() {
    let mut h = Harness::serving();
    h.reload();
    h.reload();
    h.spawned(2, 200);
    let a = h.exited(200, 1);
    assert_eq!(
        a[a.len() - 2..],
        [spawn(3), tell(ManagerMessage::Reloading { gen: 3 })]
    );
    assert_eq!(h.sup.serving(), Some((1, 100)));
}

#[test]
fn crash_while_draining_is_just_a_drained_generation() {
    let mut h = Harness::serving();
    h.reload();
    h.spawned(2, 200);
    h.ready(2);
    let a = h.killed(100, Signal::SEGV);
    assert_eq!(
        a,
        vec![
            retire(1, 100),
            Action::CheckListeners { gen: 1 },
            rep(Report::Drained {
                gen: 1,
                pid: 100,
                after: Duration::ZERO,
                status: ExitStatus::Signaled(Signal::SEGV)
            }),
        ]
    );
    assert_eq!(h.sup.poll_timeout(), None);
}

#[test]
fn serving_death_during_a_reload_waits_for_the_new_generation() {
    let mut h = Harness::serving();
    h.reload();
    h.spawned(2, 200);
    let a = h.exited(100, 1);
    assert_eq!(
        a,
        vec![
            retire(1, 100),
            Action::CheckListeners { gen: 1 },
            rep(Report::Exited {
                gen: 1,
                pid: 100,
                status: ExitStatus::Exited(1)
            }),
        ]
    );
    let a = h.ready(2);
    assert!(!a.iter().any(|a| matches!(a, Action::Signal { .. })));
    assert_eq!(h.sup.serving(), Some((2, 200)));
}

// ---- restarts ----------------------------------------------------------------------------

#[test]
fn serving_child_death_restarts_with_exponential_backoff() {
    let mut h = Harness::serving();
    let a = h.exited(100, 1);
    assert_eq!(
        a,
        vec![
            retire(1, 100),
            Action::CheckListeners { gen: 1 },
            rep(Report::Exited {
                gen: 1,
                pid: 100,
                status: ExitStatus::Exited(1)
            }),
            rep(Report::RestartScheduled { delay: ms(100) }),
        ]
    );
    assert_eq!(h.advance(ms(99)), vec![], "not before the back-off");
    assert_eq!(h.advance(ms(1)), vec![spawn(2)]);
    let a = h.spawned(2, 200);
    assert_eq!(a, vec![spawned_rep(2, 200, StartReason::Restart, None)]);
    let a = h.exited(200, 1); // crash before ready: next delay doubles
    assert_eq!(
        a.last(),
        Some(&rep(Report::RestartScheduled { delay: ms(200) }))
    );
    h.advance(ms(200));
    h.spawned(3, 300);
    let a = h.ready(3);
    assert_eq!(
        a[1],
        tell(ManagerMessage::Serving { gen: 3, pid: 300 }),
        "no READY=1 again to the manager for a replacement"
    );
    h.now += secs(10); // served long enough: back-off resets
    let a = h.exited(300, 1);
    assert_eq!(
        a.last(),
        Some(&rep(Report::RestartScheduled { delay: ms(100) }))
    );
}

#[test]
fn backoff_is_capped() {
    let (mut h, _) = Harness::new(Policy::default());
    let mut last = Duration::ZERO;
    for (pid, gen) in (100..).zip(1..=12) {
        h.spawned(gen, pid);
        let a = h.exited(pid, 1);
        last = a
            .iter()
            .find_map(|a| match a {
                Action::Report(Report::RestartScheduled { delay }) => Some(*delay),
                _ => None,
            })
            .unwrap();
        assert_eq!(h.fire(), vec![spawn(gen + 1)]);
    }
    assert_eq!(last, secs(10));
}

#[test]
fn reload_overrides_a_pending_backoff() {
    let mut h = Harness::serving();
    h.exited(100, 1);
    assert_eq!(h.reload(), reload_started(2));
    assert_eq!(
        h.sup.poll_timeout(),
        None,
        "restart timer cancelled, no ready timer before spawn"
    );
}

#[test]
fn restart_never_exits_with_the_childs_status() {
    let never = Policy {
        restart: RestartPolicy::Never,
        ..Policy::default()
    };
    let mut h = Harness::serving_with(never.clone());
    let a = h.exited(100, 7);
    assert_eq!(
        a,
        vec![
            retire(1, 100),
            Action::CheckListeners { gen: 1 },
            rep(Report::Exited {
                gen: 1,
                pid: 100,
                status: ExitStatus::Exited(7)
            }),
            rep(Report::ShutdownStarted {
                signal: T,
                forced: false
            }),
            tell(ManagerMessage::Stopping),
            Action::CloseListeners,
            Action::Exit(7),
        ]
    );
    let mut h = Harness::serving_with(never);
    let a = h.killed(100, Signal::SEGV);
    assert_eq!(a.last(), Some(&Action::Exit(128 + 11)));
}

#[test]
fn restart_never_exits_when_the_first_child_dies_before_ready() {
    let (mut h, _) = Harness::new(Policy {
        restart: RestartPolicy::Never,
        ..Policy::default()
    });
    h.spawned(1, 100);
    let a = h.exited(100, 4);
    assert_eq!(a.last(), Some(&Action::Exit(4)));
}

#[test]
fn unkillable_first_generation_is_given_up_and_replaced() {
    // Found by the model test: a start that times out and then survives SIGKILL must not
    // leave handoff with nothing serving and nothing scheduled.
    let (mut h, _) = Harness::new(Policy::default());
    h.spawned(1, 100);
    h.fire(); // ready timeout → stop signal
    h.fire(); // drain timeout → SIGKILL
    let a = h.fire(); // reap deadline
    assert_eq!(
        a,
        vec![
            rep(Report::Unkillable { gen: 1, pid: 100 }),
            Action::Retire {
                gen: 1,
                leftovers: None
            },
            rep(Report::RestartScheduled { delay: ms(100) }),
        ]
    );
    assert_eq!(h.fire(), vec![spawn(2)]);
    assert_eq!(
        h.exited(100, 0),
        vec![],
        "a late exit of the forgotten pid changes nothing"
    );
}

// ---- shutdown ----------------------------------------------------------------------------

#[test]
fn shutdown_drains_and_exits_zero() {
    let mut h = Harness::serving();
    let a = h.shutdown();
    assert_eq!(
        a,
        vec![
            rep(Report::ShutdownStarted {
                signal: T,
                forced: false
            }),
            tell(ManagerMessage::Stopping),
            term(1, 100),
            stopping(1, 100, None),
            Action::CloseListeners,
        ]
    );
    let a = h.exited(100, 0);
    assert_eq!(
        a,
        vec![
            retire(1, 100),
            Action::CheckListeners { gen: 1 },
            rep(Report::Drained {
                gen: 1,
                pid: 100,
                after: Duration::ZERO,
                status: ExitStatus::Exited(0)
            }),
            Action::Exit(exit_code::OK),
        ]
    );
    assert_eq!(h.sup.finished(), Some(0));
    assert_eq!(h.reload(), vec![], "nothing happens after the end");
}

#[test]
fn a_stop_request_is_answered_at_once_and_again_with_the_exit_code() {
    let mut h = Harness::serving();
    let a = h.ev(Event::Shutdown {
        signal: T,
        request: Some(9),
        force: false,
    });
    assert_eq!(a[0], reply(9, Outcome::Stopping));
    assert!(!Outcome::Stopping.is_final());
    let a = h.exited(100, 0);
    assert_eq!(
        a[a.len() - 2..],
        [
            reply(9, Outcome::Stopped { code: 0 }),
            Action::Exit(exit_code::OK)
        ]
    );
}

#[test]
fn shutdown_counts_a_child_killed_by_the_stop_signal_as_clean() {
    let mut h = Harness::serving();
    h.shutdown();
    let a = h.killed(100, T);
    assert_eq!(a.last(), Some(&Action::Exit(exit_code::OK)));
}

#[test]
fn shutdown_past_the_drain_timeout_kills_and_exits_forced() {
    let mut h = Harness::serving();
    h.shutdown();
    let a = h.advance(secs(30));
    assert_eq!(
        a,
        vec![
            kill9(1, 100),
            rep(Report::Killed {
                gen: 1,
                pid: 100,
                reason: KillReason::DrainTimeout
            }),
        ]
    );
    let a = h.killed(100, Signal::KILL);
    assert_eq!(a.last(), Some(&Action::Exit(exit_code::FORCED)));
}

#[test]
fn a_repeated_sigterm_or_stop_is_one_graceful_stop() {
    // timeout(1) sends SIGTERM twice; `handoff stop` may be run twice.
    let mut h = Harness::serving();
    h.shutdown();
    assert_eq!(h.shutdown(), vec![]);
    let a = h.ev(Event::Shutdown {
        signal: T,
        request: Some(3),
        force: false,
    });
    assert_eq!(a, vec![reply(3, Outcome::Stopping)]);
    let a = h.exited(100, 0);
    assert_eq!(
        a[a.len() - 2..],
        [reply(3, Outcome::Stopped { code: 0 }), Action::Exit(0)]
    );
}

#[test]
fn a_second_interrupt_or_stop_force_kills_at_once() {
    let mut h = Harness::serving();
    h.interrupt();
    assert_eq!(
        h.interrupt(),
        vec![
            rep(Report::ShutdownStarted {
                signal: Signal::INT,
                forced: true,
            }),
            kill9(1, 100),
            rep(Report::Killed {
                gen: 1,
                pid: 100,
                reason: KillReason::Forced,
            }),
        ]
    );
    assert_eq!(h.interrupt(), vec![], "a third changes nothing");
    assert_eq!(h.force_stop(), vec![]);
    let a = h.killed(100, Signal::KILL);
    assert_eq!(a.last(), Some(&Action::Exit(exit_code::FORCED)));

    let mut h = Harness::serving();
    let a = h.force_stop();
    assert!(
        a.contains(&kill9(1, 100)),
        "--force kills even first: {a:?}"
    );
}

#[test]
fn shutdown_during_a_reload_stops_both_and_fails_the_reload() {
    let mut h = Harness::serving();
    h.reload_waiting(4);
    h.spawned(2, 200);
    let a = h.shutdown();
    let outcome = failed_outcome(2, FailReason::Shutdown, Duration::ZERO, Some((1, 100)));
    assert_eq!(
        a,
        vec![
            rep(Report::ShutdownStarted {
                signal: T,
                forced: false
            }),
            tell(ManagerMessage::Stopping),
            rep(Report::Failed {
                gen: 2,
                pid: Some(200),
                reason: FailReason::Shutdown
            }),
            // No READY=1 to the manager after STOPPING=1.
            rep(Report::ReloadFinished(outcome.clone())),
            reply(4, Outcome::Reload(outcome)),
            term(1, 100),
            stopping(1, 100, None),
            term(2, 200),
            stopping(2, 200, None),
            Action::CloseListeners,
        ]
    );
    assert_eq!(
        h.exited(200, 0).last(),
        Some(&rep(Report::Reaped {
            gen: 2,
            pid: 200,
            status: ExitStatus::Exited(0)
        }))
    );
    assert_eq!(h.exited(100, 0).last(), Some(&Action::Exit(0)));
}

#[test]
fn shutdown_answers_reload_requests_still_waiting_to_start() {
    let mut h = Harness::serving();
    h.reload();
    h.reload_waiting(5);
    let a = h.shutdown();
    assert!(a.contains(&reply(5, Outcome::ShuttingDown)), "{a:?}");
}

#[test]
fn shutdown_while_spawning_stops_the_child_as_soon_as_it_exists() {
    let mut h = Harness::serving();
    h.reload();
    h.shutdown();
    let a = h.spawned(2, 200);
    assert_eq!(
        a,
        vec![
            spawned_rep(2, 200, StartReason::Reload, Some(Duration::ZERO)),
            rep(Report::Failed {
                gen: 2,
                pid: Some(200),
                reason: FailReason::Shutdown
            }),
            rep(Report::ReloadFinished(failed_outcome(
                2,
                FailReason::Shutdown,
                Duration::ZERO,
                None
            ))),
            term(2, 200),
            stopping(2, 200, None),
        ]
    );
    h.exited(100, 0);
    assert_eq!(h.exited(200, 0).last(), Some(&Action::Exit(0)));
}

#[test]
fn forced_shutdown_while_spawning_still_answers_the_reload_waiter() {
    // Found by the model test: the waiter of a reload whose child appeared after a second
    // stop request was never answered.
    let mut h = Harness::serving();
    h.reload_waiting(6);
    h.shutdown();
    h.force_stop();
    let a = h.spawned(2, 200);
    let outcome = failed_outcome(2, FailReason::Shutdown, Duration::ZERO, None);
    assert!(a.contains(&reply(6, Outcome::Reload(outcome))), "{a:?}");
    assert!(a.contains(&kill9(2, 200)), "{a:?}");
}

#[test]
fn shutdown_with_no_child_left_exits_at_once() {
    let mut h = Harness::serving();
    h.exited(100, 1); // restart scheduled
    let a = h.shutdown();
    assert_eq!(a.last(), Some(&Action::Exit(0)));
    assert_eq!(h.sup.poll_timeout(), None);
}

#[test]
fn reload_during_shutdown_is_refused() {
    let mut h = Harness::serving();
    h.shutdown();
    assert_eq!(h.reload(), vec![rep(Report::ReloadIgnored)]);
    assert_eq!(
        h.reload_waiting(8),
        vec![rep(Report::ReloadIgnored), reply(8, Outcome::ShuttingDown)]
    );
}

#[test]
fn requests_reaching_an_exited_supervisor_are_still_answered() {
    let mut h = Harness::serving();
    h.shutdown();
    h.exited(100, 0);
    assert_eq!(h.reload_waiting(1), vec![reply(1, Outcome::ShuttingDown)]);
    assert_eq!(
        h.ev(Event::Status { request: 2 }),
        vec![reply(2, Outcome::Status)]
    );
}

#[test]
fn unkillable_group_does_not_block_shutdown_forever() {
    let mut h = Harness::serving();
    h.shutdown();
    h.force_stop();
    let a = h.advance(secs(5));
    assert_eq!(
        a,
        vec![
            rep(Report::Unkillable { gen: 1, pid: 100 }),
            Action::Retire {
                gen: 1,
                leftovers: None
            },
            Action::Exit(exit_code::FORCED),
        ]
    );
}

// ---- notify messages, signals, probes, files, listeners ----------------------------------

#[test]
fn unknown_pid_exit_is_ignored() {
    let mut h = Harness::serving();
    assert_eq!(h.exited(4242, 0), vec![]);
    assert_eq!(h.sup.serving(), Some((1, 100)));
}

#[test]
fn ready_from_a_draining_generation_is_ignored() {
    let mut h = Harness::serving();
    h.reload();
    h.spawned(2, 200);
    h.ready(2);
    assert_eq!(h.ready(1), vec![]);
    assert_eq!(h.sup.serving(), Some((2, 200)));
}

#[test]
fn extend_timeout_pushes_the_ready_deadline() {
    let mut h = Harness::serving();
    h.reload();
    h.spawned(2, 200);
    h.now += secs(50);
    let msg = NotifyMessage {
        extend_timeout_usec: Some(30_000_000),
        ..Default::default()
    };
    assert_eq!(h.ev(Event::Notify { gen: 2, msg }), vec![]);
    assert_eq!(h.deadline_in(2), Some(secs(30)));
    assert_eq!(
        h.advance(secs(10)),
        vec![],
        "60 s passed, but the deadline moved to 80 s"
    );
    let a = h.advance(secs(20));
    assert!(a.contains(&term(2, 200)), "{a:?}");
}

#[test]
fn extend_timeout_never_shortens_a_deadline() {
    let mut h = Harness::serving();
    h.reload();
    h.spawned(2, 200);
    let msg = NotifyMessage {
        extend_timeout_usec: Some(1_000_000),
        ..Default::default()
    };
    h.ev(Event::Notify { gen: 2, msg });
    assert_eq!(h.deadline_in(2), Some(secs(60)));
}

#[test]
fn ready_after_makes_a_silent_child_ready() {
    let policy = Policy {
        ready_after: Some(ms(500)),
        ..Policy::default()
    };
    let (mut h, _) = Harness::new(policy);
    h.spawned(1, 100);
    assert_eq!(h.advance(ms(499)), vec![]);
    let a = h.advance(ms(1));
    assert_eq!(
        a,
        vec![
            rep(Report::Ready {
                gen: 1,
                pid: 100,
                after: ms(500)
            }),
            tell(ManagerMessage::Ready { gen: 1, pid: 100 }),
        ]
    );
}

#[test]
fn status_and_stopping_messages_are_reported() {
    let mut h = Harness::serving();
    let msg = NotifyMessage {
        status: Some("42 requests".into()),
        stopping: true,
        ..Default::default()
    };
    let a = h.ev(Event::Notify { gen: 1, msg });
    assert_eq!(
        a,
        vec![
            rep(Report::Status {
                gen: 1,
                pid: 100,
                text: "42 requests".into()
            }),
            rep(Report::ChildStopping { gen: 1, pid: 100 })
        ]
    );
}

#[test]
fn forwarded_signals_go_to_the_serving_leader() {
    let mut h = Harness::serving();
    let a = h.ev(Event::Forward {
        signal: Signal::USR1,
    });
    assert_eq!(
        a,
        vec![
            Action::Signal {
                gen: 1,
                pid: 100,
                target: Target::Leader,
                signal: Signal::USR1
            },
            rep(Report::Forwarded {
                gen: Some(1),
                signal: Signal::USR1
            }),
        ]
    );
    h.exited(100, 1);
    let a = h.ev(Event::Forward {
        signal: Signal::USR2,
    });
    assert_eq!(
        a,
        vec![rep(Report::Forwarded {
            gen: None,
            signal: Signal::USR2
        })]
    );
}

#[test]
fn status_requests_are_answered_at_once() {
    let mut h = Harness::serving();
    assert_eq!(
        h.ev(Event::Status { request: 11 }),
        vec![reply(11, Outcome::Status)]
    );
}

#[test]
fn ready_probe_runs_until_it_succeeds() {
    let policy = Policy {
        probe_interval: Some(ms(250)),
        ..Policy::default()
    };
    let (mut h, _) = Harness::new(policy);
    h.spawned(1, 100);
    let a = h.advance(Duration::ZERO);
    assert_eq!(
        a,
        vec![Action::Probe { gen: 1, pid: 100 }],
        "first probe at once"
    );
    assert_eq!(h.ev(Event::ProbeResult { gen: 1, ok: false }), vec![]);
    assert_eq!(h.advance(ms(249)), vec![]);
    let a = h.advance(ms(1));
    assert_eq!(a, vec![Action::Probe { gen: 1, pid: 100 }]);
    let a = h.ev(Event::ProbeResult { gen: 1, ok: true });
    assert_eq!(
        a,
        vec![
            rep(Report::Ready {
                gen: 1,
                pid: 100,
                after: ms(250)
            }),
            tell(ManagerMessage::Ready { gen: 1, pid: 100 }),
        ]
    );
    // No further probes once ready, and a late result changes nothing.
    assert_eq!(h.sup.poll_timeout(), None);
    assert_eq!(h.ev(Event::ProbeResult { gen: 1, ok: true }), vec![]);
}

#[test]
fn a_running_probe_is_stopped_when_the_child_becomes_ready_otherwise() {
    let policy = Policy {
        probe_interval: Some(ms(250)),
        ..Policy::default()
    };
    let (mut h, _) = Harness::new(policy);
    h.spawned(1, 100);
    h.advance(Duration::ZERO);
    let a = h.ready(1);
    assert_eq!(a[0], Action::StopProbe { gen: 1 });
    assert_eq!(
        h.ev(Event::ProbeResult { gen: 1, ok: false }),
        vec![],
        "the killed probe's result is ignored"
    );
}

#[test]
fn a_running_probe_is_stopped_when_the_child_dies() {
    let policy = Policy {
        probe_interval: Some(ms(250)),
        ..Policy::default()
    };
    let (mut h, _) = Harness::new(policy);
    h.spawned(1, 100);
    h.advance(Duration::ZERO);
    let a = h.exited(100, 1);
    assert_eq!(a[..2], [Action::StopProbe { gen: 1 }, retire(1, 100)]);
}

#[test]
fn a_burst_of_file_changes_gives_one_reload_after_the_quiet_time() {
    let mut h = Harness::serving();
    for _ in 0..50 {
        assert_eq!(h.ev(Event::FileChanged), vec![]);
        h.now += ms(10);
    }
    assert_eq!(
        h.advance(ms(489)),
        vec![],
        "500 ms after the last change, not before"
    );
    assert_eq!(h.advance(ms(1)), reload_started(2));
    // Changes during the reload coalesce into one more.
    h.ev(Event::FileChanged);
    let a = h.fire();
    assert_eq!(a, vec![rep(Report::ReloadRequested { coalesced: false })]);
    h.spawned(2, 200);
    let a = h.ready(2);
    assert_eq!(
        a[a.len() - 2..],
        [spawn(3), tell(ManagerMessage::Reloading { gen: 3 })]
    );
}

#[test]
fn a_restored_listener_starts_a_new_generation() {
    let mut h = Harness::serving();
    assert_eq!(h.ev(Event::ListenersRestored { count: 0 }), vec![]);
    assert_eq!(
        h.ev(Event::ListenersRestored { count: 1 }),
        reload_started(2)
    );
    h.shutdown();
    assert_eq!(
        h.ev(Event::ListenersRestored { count: 1 }),
        vec![],
        "not while stopping"
    );
}

#[test]
fn snapshot_lists_generations_with_their_phase() {
    let mut h = Harness::serving();
    h.reload();
    h.spawned(2, 200);
    let st = h.sup.snapshot(h.now);
    assert_eq!(st.generations.len(), 2);
    assert_eq!(st.generations[0].gen, 1);
    assert!(matches!(
        st.generations[0].phase,
        Phase::Serving { pid: 100, .. }
    ));
    assert_eq!(st.generations[1].phase, Phase::Starting { pid: 200 });
    assert_eq!(st.generations[1].phase.name(), "starting");
    assert_eq!(st.serving, Some((1, 100)));
}

mod model {
    //! Random plausible event sequences, checked against invariants after every step.
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Step {
        Reload,
        ReloadWaiting,
        Shutdown,
        Interrupt,
        Spawn,
        SpawnFail,
        Ready(u8),
        Reloading(u8),
        Restart,
        Exit(u8, i32),
        Advance(u16),
        Fire,
        /// Replace the twin by itself through export, JSON and import.
        Roundtrip,
        Upgrade,
        UpgradeChecked(bool),
        ExecFailed,
        Upgraded,
        /// A scan result for a live generation: 0 no, 1 yes, 2 edge-triggered, 3 proven.
        Accepting(u8, u8),
        /// A STATUS= datagram (makes the generation a notifier).
        Status(u8),
    }

    enum Input {
        Ev(Event),
        Advance(Duration),
        Fire,
    }

    impl Harness {
        fn input(&mut self, i: &Input) -> Vec<Action> {
            match i {
                Input::Ev(e) => self.ev(e.clone()),
                Input::Advance(d) => self.advance(*d),
                Input::Fire => self.fire(),
            }
        }
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            2 => Just(Step::Reload),
            1 => Just(Step::ReloadWaiting),
            1 => Just(Step::Shutdown),
            1 => Just(Step::Interrupt),
            4 => Just(Step::Spawn),
            1 => Just(Step::SpawnFail),
            4 => any::<u8>().prop_map(Step::Ready),
            2 => any::<u8>().prop_map(Step::Reloading),
            1 => Just(Step::Restart),
            3 => (any::<u8>(), 0..3i32).prop_map(|(g, c)| Step::Exit(g, c)),
            2 => (0..5000u16).prop_map(Step::Advance),
            2 => Just(Step::Fire),
            2 => Just(Step::Roundtrip),
            1 => Just(Step::Upgrade),
            1 => any::<bool>().prop_map(Step::UpgradeChecked),
            1 => Just(Step::ExecFailed),
            1 => Just(Step::Upgraded),
            6 => (any::<u8>(), 0..4u8).prop_map(|(g, k)| Step::Accepting(g, k)),
            1 => any::<u8>().prop_map(Step::Status),
        ]
    }

    proptest! {
        #[test]
        fn invariants_hold(steps in proptest::collection::vec(step(), 1..80), in_place in any::<bool>(), detect in any::<bool>()) {
            let policy = if detect {
                // Readiness without READY=1: scans, proofs, the grace and the fallback.
                Policy {
                    detect_interval: Some(ms(20)),
                    detect_grace: ms(30),
                    detect_prove: true,
                    reload_signal: in_place.then_some(Signal::HUP),
                    ..Policy::default()
                }
            } else {
                Policy {
                    probe_interval: Some(ms(300)),
                    reload_signal: in_place.then_some(Signal::HUP),
                    ..Policy::default()
                }
            };
            // Generations that sent a datagram (notifiers), how the last ready one became
            // ready (true: READY=1), generations whose scans prove.
            let mut notified: Vec<GenId> = Vec::new();
            let mut last_by_notify = false;
            let mut proving: Vec<GenId> = Vec::new();
            let (mut h, first) = Harness::new(policy.clone());
            let spawns = |a: &[Action]| -> Vec<GenId> {
                a.iter().filter_map(|a| match a { Action::Spawn { gen } => Some(*gen), _ => None }).collect()
            };
            let mut spawning: Vec<GenId> = spawns(&first);
            let mut live: Vec<(GenId, Pid)> = Vec::new();
            let mut next_pid = 100;
            let mut next_request = 1;
            let mut open_requests: Vec<RequestId> = Vec::new();
            // A twin of `h` that went through export, JSON and import at the start and at
            // every `Roundtrip` step: it must do exactly what `h` does.
            let mut twin = h.twin();
            for (n, s) in steps.into_iter().enumerate() {
                let input = match s {
                    // With detection, let generations live long enough to be judged.
                    Step::Shutdown | Step::Interrupt if detect && n < 40 => None,
                    Step::Reload => Some(Input::Ev(Event::Reload { reply: ReplyTo::Nobody, restart: false })),
                    Step::ReloadWaiting => {
                        next_request += 1;
                        open_requests.push(next_request);
                        Some(Input::Ev(Event::Reload { reply: ReplyTo::WhenDone(next_request), restart: false }))
                    }
                    Step::Shutdown => Some(Input::Ev(Event::Shutdown { signal: T, request: None, force: false })),
                    Step::Interrupt => Some(Input::Ev(Event::Shutdown { signal: Signal::INT, request: None, force: false })),
                    Step::Spawn if !spawning.is_empty() => {
                        let gen = spawning.remove(0);
                        next_pid += 1;
                        live.push((gen, next_pid));
                        Some(Input::Ev(Event::Spawned { gen, pid: next_pid }))
                    }
                    Step::SpawnFail if !spawning.is_empty() && (!detect || n >= 40) => {
                        let gen = spawning.remove(0);
                        Some(Input::Ev(Event::SpawnFailed { gen, error: "x".into() }))
                    }
                    // With detection, most servers are silent: few READY=1.
                    Step::Ready(k) if !live.is_empty() && (!detect || k % 4 == 0) => {
                        let (gen, _) = live[k as usize / 4 % live.len()];
                        notified.push(gen);
                        let msg = NotifyMessage { ready: true, ..Default::default() };
                        Some(Input::Ev(Event::Notify { gen, msg }))
                    }
                    Step::Status(k) if !live.is_empty() && (!detect || k % 4 == 0) => {
                        let (gen, _) = live[k as usize / 4 % live.len()];
                        notified.push(gen);
                        let msg = NotifyMessage { status: Some("starting".into()), ..Default::default() };
                        Some(Input::Ev(Event::Notify { gen, msg }))
                    }
                    Step::Accepting(k, kind) if !live.is_empty() => {
                        let (gen, _) = live[k as usize % live.len()];
                        let seen = [Accepting::No, Accepting::Yes, Accepting::EdgeTriggered, Accepting::Proven][kind as usize];
                        Some(Input::Ev(Event::Accepting { gen, seen, fd: (kind > 0).then_some(3) }))
                    }
                    Step::Reloading(k) if !live.is_empty() && (!detect || k % 4 == 0) => {
                        let (gen, _) = live[k as usize / 4 % live.len()];
                        notified.push(gen);
                        let msg = NotifyMessage { reloading: true, ..Default::default() };
                        Some(Input::Ev(Event::Notify { gen, msg }))
                    }
                    Step::Restart => Some(Input::Ev(Event::Reload { reply: ReplyTo::Nobody, restart: true })),
                    Step::Exit(k, c) if !live.is_empty() => {
                        let (_, pid) = live.remove(k as usize % live.len());
                        Some(Input::Ev(Event::Exited { pid, status: ExitStatus::Exited(c) }))
                    }
                    Step::Advance(m) => Some(Input::Advance(ms(m.into()))),
                    Step::Fire if h.sup.poll_timeout().is_some() => Some(Input::Fire),
                    Step::Roundtrip => {
                        twin = twin.twin();
                        None
                    }
                    Step::Upgrade => {
                        next_request += 1;
                        open_requests.push(next_request);
                        Some(Input::Ev(Event::Upgrade { request: next_request, binary: "/new/handoff".into() }))
                    }
                    Step::UpgradeChecked(ok) => Some(Input::Ev(Event::UpgradeChecked {
                        result: if ok { Ok("2.0".into()) } else { Err("refused".into()) },
                    })),
                    Step::ExecFailed => Some(Input::Ev(Event::ExecFailed { error: "ENOEXEC".into() })),
                    Step::Upgraded => Some(Input::Ev(Event::Upgraded { from: "1.0".into(), to: "2.0".into() })),
                    _ => None,
                };
                let a = input.as_ref().map(|i| h.input(i)).unwrap_or_default();
                let b = input.as_ref().map(|i| twin.input(i)).unwrap_or_default();
                prop_assert_eq!(&a, &b, "the imported twin acted differently");
                spawning.extend(spawns(&a));
                for act in &a {
                    match act {
                        Action::Report(Report::ReadyDetected { gen, .. }) => {
                            // READY=1 always wins: never a notifier, never after one.
                            prop_assert!(!notified.contains(gen), "notifier {} detected", gen);
                            prop_assert!(!last_by_notify, "gen {} detected after a READY=1 generation", gen);
                        }
                        Action::Report(Report::Proving { gen, .. }) => proving.push(*gen),
                        Action::StopProving { gen } => proving.retain(|g| g != gen),
                        _ => {}
                    }
                }
                for act in &a {
                    if let Action::Report(Report::Ready { gen, .. }) = act {
                        let other = a.iter().any(|x| matches!(x,
                            Action::Report(Report::ReadyDetected { gen: g, .. }
                                | Report::ReadyWithoutNotify { gen: g, .. }) if g == gen));
                        last_by_notify = !other;
                    }
                }
                for act in &a {
                    if let Action::Reply { request, outcome } = act {
                        // Every request is answered exactly once (reloads have no interim answer).
                        prop_assert!(open_requests.contains(request), "unexpected or second reply {:?}", act);
                        prop_assert!(outcome.is_final());
                        open_requests.retain(|r| r != request);
                    }
                }
                if h.sup.finished().is_some() {
                    prop_assert!(open_requests.is_empty(), "unanswered at exit: {:?}", open_requests);
                    // Exiting: the shell's cleanup kills whatever is left.
                    break;
                }
                let snap = h.sup.snapshot(h.now);
                // Proof-of-accept connections exist only for starting generations.
                for g in &proving {
                    prop_assert!(snap.generations.iter().any(|s| s.gen == *g && matches!(s.phase, Phase::Starting { .. })),
                        "gen {} proving outside of Starting", g);
                }
                // Never more than one generation starting at once.
                let starting = snap.generations.iter().filter(|g| g.phase.is_starting()).count();
                prop_assert!(starting <= 1);
                // Never more than one generation serving once events settle.
                let serving = snap.generations.iter()
                    .filter(|g| matches!(g.phase, Phase::Serving { .. })).count();
                prop_assert!(serving <= 1);
                // Each generation with a process carries its own deadline, the right one for its
                // phase; a serving one has none.
                for g in &snap.generations {
                    let left = g.deadline.map(|d| d.saturating_duration_since(h.now));
                    match g.phase {
                        Phase::Spawning => prop_assert_eq!(left, None),
                        Phase::Starting { .. } => {
                            // The ready deadline, or an earlier probe run.
                            prop_assert!(left.is_some_and(|l| l <= policy.ready_timeout), "{:?}", g);
                        }
                        Phase::Serving { .. } => prop_assert_eq!(left, None),
                        Phase::Draining { since, .. } => prop_assert_eq!(
                            g.deadline, Some(since + policy.drain_timeout)),
                        Phase::Killing { .. } => prop_assert!(
                            left.is_some_and(|l| l <= policy.kill_wait), "{:?}", g),
                    }
                }
            }
        }
    }
}

#[test]
fn a_crash_loop_shows_as_failures_in_a_row_with_the_last_reason_and_next_retry() {
    let mut h = Harness::serving();
    h.exited(100, 3);
    h.fire();
    h.spawned(2, 200);
    h.exited(200, 3);
    let st = h.sup.snapshot(h.now);
    assert_eq!(st.failures_in_row, 2);
    assert_eq!(
        st.last_failure,
        Some((
            Failure::Start(FailReason::ExitedBeforeReady(ExitStatus::Exited(3))),
            h.now
        ))
    );
    assert_eq!(st.next_restart, Some(h.now + ms(200)));
    h.fire();
    h.spawned(3, 300);
    h.ready(3);
    let st = h.sup.snapshot(h.now);
    assert_eq!(st.failures_in_row, 0, "reset once a generation is ready");
    assert_eq!(st.next_restart, None);
}

// ---- reload in place (--reload-signal) ----------------------------------------------------

fn in_place_policy() -> Policy {
    Policy {
        reload_signal: Some(Signal::HUP),
        ..Policy::default()
    }
}

fn hup(gen: GenId, pid: Pid) -> Action {
    Action::Signal {
        gen,
        pid,
        target: Target::Leader,
        signal: Signal::HUP,
    }
}

#[test]
fn reload_in_place_waits_for_reloading_then_ready() {
    let mut h = Harness::serving_with(in_place_policy());
    let a = h.reload_waiting(1);
    assert_eq!(
        a,
        vec![
            rep(Report::ReloadRequested { coalesced: false }),
            tell(ManagerMessage::Reloading { gen: 1 }),
            hup(1, 100),
            rep(Report::Forwarded {
                gen: Some(1),
                signal: Signal::HUP
            }),
        ],
        "no new generation"
    );
    h.now += ms(100);
    let msg = NotifyMessage {
        reloading: true,
        ..Default::default()
    };
    assert_eq!(h.ev(Event::Notify { gen: 1, msg }), vec![]);
    h.now += ms(900); // past the 500 ms acknowledgement window: it did acknowledge
    let a = h.ready(1);
    let outcome = ReloadOutcome {
        gen: 1,
        failure: None,
        after: secs(1),
        serving: Some((1, 100)),
        in_place: Some(InPlace::Confirmed),
    };
    assert_eq!(
        a,
        vec![
            tell(ManagerMessage::Ready { gen: 1, pid: 100 }),
            rep(Report::ReloadFinished(outcome.clone())),
            reply(1, Outcome::Reload(outcome)),
        ]
    );
    assert_eq!(h.sup.poll_timeout(), None);
}

#[test]
fn reload_in_place_without_notify_reload_ends_when_the_signal_is_delivered() {
    let mut h = Harness::serving_with(in_place_policy());
    h.reload_waiting(1);
    let a = h.advance(ms(500));
    let outcome = ReloadOutcome {
        gen: 1,
        failure: None,
        after: ms(500),
        serving: Some((1, 100)),
        in_place: Some(InPlace::Signalled(Signal::HUP)),
    };
    assert_eq!(
        a,
        vec![
            tell(ManagerMessage::Ready { gen: 1, pid: 100 }),
            rep(Report::ReloadFinished(outcome.clone())),
            reply(1, Outcome::Reload(outcome)),
        ]
    );
}

#[test]
fn reload_in_place_that_never_finishes_fails_but_keeps_serving() {
    let mut h = Harness::serving_with(in_place_policy());
    h.reload_waiting(1);
    let msg = NotifyMessage {
        reloading: true,
        ..Default::default()
    };
    h.ev(Event::Notify { gen: 1, msg });
    let a = h.advance(secs(60));
    let reason = FailReason::ReloadNotFinished(secs(60));
    assert!(
        a.contains(&rep(Report::ReloadFinished(ReloadOutcome {
            gen: 1,
            failure: Some(reason),
            after: secs(60),
            serving: Some((1, 100)),
            in_place: Some(InPlace::Confirmed),
        }))),
        "{a:?}"
    );
    assert!(
        !a.iter().any(|a| matches!(a, Action::Signal { .. })),
        "{a:?}"
    );
    assert_eq!(h.sup.serving(), Some((1, 100)));
}

#[test]
fn restart_starts_a_new_generation_even_with_a_reload_signal() {
    let mut h = Harness::serving_with(in_place_policy());
    let a = h.ev(Event::Reload {
        reply: ReplyTo::Nobody,
        restart: true,
    });
    assert_eq!(a, reload_started(2));
}

#[test]
fn reloads_during_a_reload_in_place_coalesce_and_a_restart_among_them_wins() {
    let mut h = Harness::serving_with(in_place_policy());
    h.reload();
    assert_eq!(
        h.reload(),
        vec![rep(Report::ReloadRequested { coalesced: false })]
    );
    h.ev(Event::Reload {
        reply: ReplyTo::Nobody,
        restart: true,
    });
    let a = h.advance(ms(500)); // the first ends (signal delivered); the coalesced one starts
    assert_eq!(
        a[a.len() - 2..],
        [spawn(2), tell(ManagerMessage::Reloading { gen: 2 })],
        "{a:?}"
    );
}

#[test]
fn the_serving_child_dying_during_a_reload_in_place_fails_it() {
    let mut h = Harness::serving_with(in_place_policy());
    h.reload_waiting(1);
    let a = h.exited(100, 1);
    assert!(
        a.iter().any(
            |a| matches!(a, Action::Reply { request: 1, outcome: Outcome::Reload(o) } if !o.ok())
        ),
        "{a:?}"
    );
    assert_eq!(
        a.last(),
        Some(&rep(Report::RestartScheduled { delay: ms(100) }))
    );
}

// ---- export / import and `handoff upgrade` ------------------------------------------------

/// Run `steps` on `h` and on its twin through export/JSON/import; every step must give the
/// same actions in both.
type Step<'a> = &'a dyn Fn(&mut Harness) -> Vec<Action>;

fn same_after_import(h: &mut Harness, steps: &[Step<'_>]) {
    let mut twin = h.twin();
    for (i, step) in steps.iter().enumerate() {
        let a = step(h);
        let b = step(&mut twin);
        assert_eq!(a, b, "step {i}: the imported supervisor acted differently");
    }
    assert_eq!(h.sup.export(h.now), twin.sup.export(twin.now));
}

#[test]
fn import_of_export_behaves_alike_while_starting_with_a_probe_and_a_waiting_reload() {
    let policy = Policy {
        probe_interval: Some(ms(250)),
        ..Policy::default()
    };
    let mut h = Harness::serving_with(policy);
    h.reload_waiting(7);
    h.spawned(2, 200);
    let a = h.advance(Duration::ZERO);
    assert_eq!(
        a,
        vec![Action::Probe { gen: 2, pid: 200 }],
        "a probe is running"
    );
    h.reload_waiting(8); // pending, coalesced
    h.now += ms(100);
    same_after_import(
        &mut h,
        &[
            &|h| h.ev(Event::ProbeResult { gen: 2, ok: false }),
            &|h| h.fire(),
            &|h| h.ev(Event::ProbeResult { gen: 2, ok: true }),
            &|h| h.spawned(3, 300),
            &|h| h.advance(secs(61)), // gen 3's ready deadline
            &|h| h.fire(),
        ],
    );
}

#[test]
fn import_of_export_keeps_a_drain_deadline_and_kills_at_the_same_instant() {
    let mut h = Harness::serving();
    h.reload();
    h.spawned(2, 200);
    h.ready(2); // gen 1 drains, 30 s
    h.now += secs(12);
    let twin = h.twin();
    assert_eq!(twin.deadline_in(1), Some(secs(18)), "remaining drain time");
    same_after_import(
        &mut h,
        &[
            &|h| h.advance(secs(17)),
            &|h| h.advance(secs(1)), // SIGKILL now
            &|h| h.fire(),           // the reap deadline: unkillable
            &|h| h.exited(200, 1),
            &|h| h.fire(),
        ],
    );
}

#[test]
fn import_of_export_behaves_alike_in_restart_back_off_and_in_place_reload() {
    let mut h = Harness::serving();
    h.exited(100, 3); // restart scheduled, 100 ms
    same_after_import(
        &mut h,
        &[&|h| h.fire(), &|h| h.spawned(2, 200), &|h| h.ready(2)],
    );
    let mut h = Harness::serving_with(in_place_policy());
    h.reload_waiting(3);
    let msg = NotifyMessage {
        reloading: true,
        ..Default::default()
    };
    h.ev(Event::Notify { gen: 1, msg });
    same_after_import(&mut h, &[&|h| h.advance(secs(2)), &|h| h.ready(1)]);
}

#[test]
fn import_of_export_behaves_alike_while_stopping() {
    let mut h = Harness::serving();
    h.reload();
    h.spawned(2, 200);
    h.ev(Event::Shutdown {
        signal: T,
        request: Some(4),
        force: false,
    });
    same_after_import(
        &mut h,
        &[
            &|h| h.exited(200, 0),
            &|h| h.interrupt(), // a second Ctrl-C: kill
            &|h| h.killed(100, Signal::KILL),
        ],
    );
    assert_eq!(h.sup.finished(), Some(exit_code::FORCED));
}

fn upgrade(request: RequestId) -> Event {
    Event::Upgrade {
        request,
        binary: "/usr/bin/handoff".into(),
    }
}

#[test]
fn upgrade_checks_the_binary_then_execs_it_and_the_new_image_answers() {
    let mut h = Harness::serving();
    let a = h.ev(upgrade(5));
    assert_eq!(
        a,
        vec![
            rep(Report::UpgradeRequested {
                binary: "/usr/bin/handoff".into()
            }),
            Action::CheckUpgrade {
                binary: "/usr/bin/handoff".into()
            },
        ]
    );
    assert!(!h.sup.exec_pending());
    let a = h.ev(Event::UpgradeChecked {
        result: Ok("0.2.0".into()),
    });
    assert_eq!(
        a,
        vec![
            rep(Report::Exec {
                binary: "/usr/bin/handoff".into(),
                version: "0.2.0".into()
            }),
            Action::Exec {
                binary: "/usr/bin/handoff".into()
            },
        ]
    );
    assert!(h.sup.exec_pending());
    assert_eq!(h.sup.poll_timeout(), None, "the check's deadline is gone");
    // The new image: same generations, and it answers the request.
    let mut new = h.twin();
    assert!(new.sup.exec_pending());
    let a = new.ev(Event::Upgraded {
        from: "0.1.0".into(),
        to: "0.2.0".into(),
    });
    assert_eq!(
        a,
        vec![
            rep(Report::Upgraded {
                from: "0.1.0".into(),
                to: "0.2.0".into(),
                count: 1
            }),
            reply(
                5,
                Outcome::Upgraded {
                    from: "0.1.0".into(),
                    to: "0.2.0".into()
                }
            ),
        ]
    );
    let st = new.sup.snapshot(new.now);
    assert_eq!((st.upgrades, st.last_upgrade), (1, Some(new.now)));
    assert_eq!(st.serving, Some((1, 100)));
    assert!(!new.sup.exec_pending());
}

#[test]
fn a_refused_or_failed_upgrade_keeps_everything_and_says_why() {
    let mut h = Harness::serving();
    h.ev(upgrade(1));
    let a = h.ev(Event::UpgradeChecked {
        result: Err("it reads state versions [2]".into()),
    });
    let why = "it reads state versions [2]".to_string();
    assert_eq!(
        a,
        vec![
            rep(Report::UpgradeFailed { error: why.clone() }),
            reply(1, Outcome::UpgradeFailed(why)),
        ]
    );
    // Exec itself failing.
    h.ev(upgrade(2));
    h.ev(Event::UpgradeChecked {
        result: Ok("x".into()),
    });
    let a = h.ev(Event::ExecFailed {
        error: "exec failed: ENOENT".into(),
    });
    assert_eq!(
        a.last(),
        Some(&reply(
            2,
            Outcome::UpgradeFailed("exec failed: ENOENT".into())
        ))
    );
    assert!(!h.sup.exec_pending());
    assert_eq!(h.sup.serving(), Some((1, 100)));
    assert_eq!(h.sup.snapshot(h.now).upgrades, 0);
}

#[test]
fn an_upgrade_check_that_hangs_is_stopped_and_a_second_upgrade_is_refused_meanwhile() {
    let mut h = Harness::serving();
    h.ev(upgrade(1));
    let a = h.ev(upgrade(2));
    assert_eq!(
        a,
        vec![reply(
            2,
            Outcome::UpgradeFailed("another upgrade is in progress".into())
        )]
    );
    assert_eq!(h.advance(ms(9999)), vec![]);
    let a = h.advance(ms(1));
    let why = "the new binary did not answer its check within 10 s".to_string();
    assert_eq!(
        a,
        vec![
            Action::StopUpgradeCheck,
            rep(Report::UpgradeFailed { error: why.clone() }),
            reply(1, Outcome::UpgradeFailed(why)),
        ]
    );
    // Its late answer changes nothing.
    assert_eq!(
        h.ev(Event::UpgradeChecked {
            result: Ok("x".into())
        }),
        vec![]
    );
}

#[test]
fn a_shutdown_calls_off_an_upgrade_and_one_while_stopping_is_refused() {
    let mut h = Harness::serving();
    h.ev(upgrade(1));
    let a = h.shutdown();
    assert!(a.contains(&Action::StopUpgradeCheck), "{a:?}");
    assert!(a.contains(&reply(1, Outcome::ShuttingDown)), "{a:?}");
    assert_eq!(h.ev(upgrade(2)), vec![reply(2, Outcome::ShuttingDown)]);
    // Between Exec and the exec itself: the shell checks exec_pending.
    let mut h = Harness::serving();
    h.ev(upgrade(1));
    h.ev(Event::UpgradeChecked {
        result: Ok("x".into()),
    });
    let a = h.shutdown();
    assert!(!a.contains(&Action::StopUpgradeCheck), "{a:?}");
    assert!(a.contains(&reply(1, Outcome::ShuttingDown)), "{a:?}");
    assert!(!h.sup.exec_pending());
}

#[test]
fn exported_state_lists_the_pids_and_the_requests_it_owes() {
    let mut h = Harness::serving();
    h.reload_waiting(3);
    h.spawned(2, 200);
    h.ev(upgrade(9));
    h.ev(Event::UpgradeChecked {
        result: Ok("x".into()),
    });
    let st = h.sup.export(h.now);
    assert_eq!(st.pids(), vec![(1, 100), (2, 200)]);
    assert_eq!(st.open_requests(), vec![3, 9]);
}

#[test]
fn an_upgrade_requested_before_a_first_start_that_fails_is_answered() {
    // Found by the model: the exit after a failed first start left the request unanswered.
    let (mut h, _) = Harness::new(Policy::default());
    h.ev(upgrade(1));
    let a = h.ev(Event::SpawnFailed {
        gen: 1,
        error: "ENOENT".into(),
    });
    assert!(a.contains(&Action::StopUpgradeCheck), "{a:?}");
    assert!(a.contains(&reply(1, Outcome::ShuttingDown)), "{a:?}");
    assert_eq!(a.last(), Some(&Action::Exit(exit_code::FAILURE)));
}

#[test]
fn a_generation_still_starting_is_checked_for_a_wrapper_once() {
    let (mut h, _) = Harness::new(Policy {
        wrapper_check_after: Some(secs(1)),
        ..Policy::default()
    });
    h.spawned(1, 100);
    assert_eq!(h.advance(ms(999)), vec![]);
    assert_eq!(
        h.advance(ms(1)),
        vec![Action::CheckWrapper { gen: 1, pid: 100 }]
    );
    assert_eq!(h.advance(secs(10)), vec![], "once");
    // A generation ready before the check is not checked.
    h.ready(1);
    h.reload();
    h.spawned(2, 200);
    h.ready(2);
    assert!(!h
        .advance(secs(2))
        .iter()
        .any(|a| matches!(a, Action::CheckWrapper { .. })));
}

// ---- readiness without READY=1 (--detect-ready) -----------------------------------------

fn detect_policy() -> Policy {
    Policy {
        detect_interval: Some(ms(20)),
        detect_grace: secs(5),
        detect_prove: true,
        ..Policy::default()
    }
}

impl Harness {
    fn accepting(&mut self, gen: GenId, seen: Accepting, fd: Option<u32>) -> Vec<Action> {
        self.ev(Event::Accepting { gen, seen, fd })
    }

    fn status_line(&mut self, gen: GenId) -> Vec<Action> {
        let msg = NotifyMessage {
            status: Some("starting".into()),
            ..Default::default()
        };
        self.ev(Event::Notify { gen, msg })
    }
}

fn ready_rep(gen: GenId, pid: Pid, after: Duration) -> Action {
    rep(Report::Ready { gen, pid, after })
}

fn detected(gen: GenId, pid: Pid, fd: u32, proven: bool) -> Action {
    rep(Report::ReadyDetected {
        gen,
        pid,
        fd: Some(fd),
        proven,
    })
}

#[test]
fn a_starting_generation_is_scanned_until_it_is_ready() {
    let (mut h, _) = Harness::new(detect_policy());
    h.spawned(1, 100);
    assert_eq!(h.advance(ms(19)), vec![]);
    let scan = Action::Scan {
        gen: 1,
        pid: 100,
        prove: false,
    };
    assert_eq!(h.advance(ms(1)), vec![scan.clone()]);
    assert_eq!(h.advance(ms(20)), vec![scan]);
    h.ready(1);
    assert_eq!(h.advance(ms(100)), vec![], "no scan once ready");
}

#[test]
fn a_silent_first_generation_is_ready_once_its_accept_wait_held_for_the_grace() {
    let (mut h, _) = Harness::new(detect_policy());
    h.spawned(1, 100);
    h.now += ms(20);
    assert_eq!(h.accepting(1, Accepting::No, None), vec![]);
    h.now += ms(20);
    assert_eq!(h.accepting(1, Accepting::Yes, Some(3)), vec![]);
    h.now += ms(4999);
    assert_eq!(h.accepting(1, Accepting::Yes, Some(3)), vec![]);
    h.now += ms(1);
    assert_eq!(
        h.accepting(1, Accepting::Yes, Some(3)),
        vec![
            ready_rep(1, 100, ms(5040)),
            tell(ManagerMessage::Ready { gen: 1, pid: 100 }),
            detected(1, 100, 3, false),
        ]
    );
    assert_eq!(
        h.sup.snapshot(h.now).generations[0].ready_by,
        Some(ReadyBy::Detected)
    );
}

#[test]
fn after_a_detected_generation_the_next_is_ready_at_its_first_accepting_scan() {
    let (mut h, _) = Harness::new(detect_policy());
    h.spawned(1, 100);
    h.accepting(1, Accepting::Yes, Some(3));
    h.now += secs(5);
    h.accepting(1, Accepting::Yes, Some(3));
    assert_eq!(h.sup.serving(), Some((1, 100)));
    h.reload();
    h.spawned(2, 200);
    h.now += ms(20);
    assert_eq!(h.accepting(2, Accepting::No, None), vec![]);
    h.now += ms(20);
    assert_eq!(
        h.accepting(2, Accepting::Yes, Some(3)),
        vec![
            term(1, 100),
            stopping(1, 100, Some(h.now)),
            ready_rep(2, 200, ms(40)),
            tell(ManagerMessage::Ready { gen: 2, pid: 200 }),
            rep(Report::ReloadFinished(ok_outcome(2, 200, ms(40)))),
            detected(2, 200, 3, false),
        ]
    );
}

#[test]
fn a_notifier_is_never_judged_ready_by_detection() {
    // Any datagram (here STATUS=) makes a generation a notifier, whatever it accepts.
    let (mut h, _) = Harness::new(detect_policy());
    h.spawned(1, 100);
    h.status_line(1);
    h.accepting(1, Accepting::Yes, Some(3));
    h.now += secs(10);
    assert_eq!(h.accepting(1, Accepting::Yes, Some(3)), vec![]);
    assert_eq!(h.sup.serving(), None);
    h.ready(1);
    // The next generation follows it: only READY=1 counts, even before any datagram.
    h.reload();
    h.spawned(2, 200);
    h.accepting(2, Accepting::Yes, Some(3));
    h.now += secs(10);
    assert_eq!(h.accepting(2, Accepting::Yes, Some(3)), vec![]);
    assert_eq!(h.sup.serving(), Some((1, 100)));
    assert!(h
        .ready(2)
        .contains(&tell(ManagerMessage::Ready { gen: 2, pid: 200 })));
}

#[test]
fn a_notifier_whose_runtime_waits_early_is_ready_only_at_its_ready() {
    // asyncio with start_serving, then 2 s of work before READY=1: the loop waits on the
    // listener at once, but the grace (5 s) outlasts the silence before READY=1.
    let (mut h, _) = Harness::new(detect_policy());
    h.spawned(1, 100);
    for _ in 0..100 {
        h.now += ms(20);
        assert_eq!(h.accepting(1, Accepting::Yes, Some(3)), vec![]);
    }
    let a = h.ready(1);
    assert_eq!(
        a,
        vec![
            ready_rep(1, 100, secs(2)),
            tell(ManagerMessage::Ready { gen: 1, pid: 100 }),
        ]
    );
    assert_eq!(
        h.sup.snapshot(h.now).generations[0].ready_by,
        Some(ReadyBy::Notify)
    );
}

#[test]
fn edge_triggered_waits_are_proven_only_when_no_ready_can_come() {
    let (mut h, _) = Harness::new(detect_policy());
    h.spawned(1, 100);
    h.now += ms(20);
    assert_eq!(h.accepting(1, Accepting::EdgeTriggered, Some(3)), vec![]);
    h.now += secs(5);
    assert_eq!(
        h.accepting(1, Accepting::EdgeTriggered, Some(3)),
        vec![rep(Report::Proving {
            gen: 1,
            pid: 100,
            fd: Some(3)
        })],
        "not trusted: proven with connections of handoff's own"
    );
    assert_eq!(h.sup.serving(), None);
    assert_eq!(
        h.fire(),
        vec![Action::Scan {
            gen: 1,
            pid: 100,
            prove: true
        }]
    );
    assert_eq!(h.accepting(1, Accepting::EdgeTriggered, Some(3)), vec![]);
    let after = ms(5020);
    let a = h.accepting(1, Accepting::Proven, Some(3));
    assert_eq!(
        a,
        vec![
            Action::StopProving { gen: 1 },
            ready_rep(1, 100, after),
            tell(ManagerMessage::Ready { gen: 1, pid: 100 }),
            detected(1, 100, 3, true),
        ]
    );
}

#[test]
fn without_proving_an_edge_triggered_wait_never_makes_a_generation_ready() {
    let (mut h, _) = Harness::new(Policy {
        detect_prove: false,
        ..detect_policy()
    });
    h.spawned(1, 100);
    h.accepting(1, Accepting::EdgeTriggered, Some(3));
    h.now += secs(10);
    assert_eq!(h.accepting(1, Accepting::EdgeTriggered, Some(3)), vec![]);
    assert_eq!(h.sup.serving(), None);
}

#[test]
fn explicit_ready_after_wins_over_detection() {
    let (mut h, _) = Harness::new(Policy {
        ready_after: Some(secs(8)),
        ..detect_policy()
    });
    h.spawned(1, 100);
    h.accepting(1, Accepting::Yes, Some(3));
    h.now += secs(6);
    assert_eq!(h.accepting(1, Accepting::Yes, Some(3)), vec![]);
    h.now += secs(2);
    let a = h.ev(Event::Timeout);
    assert!(a.contains(&ready_rep(1, 100, secs(8))), "{a:?}");
    assert_eq!(
        h.sup.snapshot(h.now).generations[0].ready_by,
        Some(ReadyBy::ReadyAfter)
    );
}

#[test]
fn a_generation_that_accepts_without_ready_is_not_killed_when_nothing_else_serves() {
    let (mut h, _) = Harness::new(detect_policy());
    h.spawned(1, 100);
    h.status_line(1); // a notifier that never sends READY=1
    h.now += ms(20);
    h.accepting(1, Accepting::Yes, Some(3));
    h.now = h.now - ms(20) + secs(60);
    let a = h.ev(Event::Timeout);
    let scan = Action::Scan {
        gen: 1,
        pid: 100,
        prove: false,
    };
    assert_eq!(
        a,
        vec![
            scan, // overdue: the fake clock jumped
            ready_rep(1, 100, secs(60)),
            tell(ManagerMessage::Ready { gen: 1, pid: 100 }),
            rep(Report::ReadyWithoutNotify {
                gen: 1,
                pid: 100,
                fd: 3,
                waited: secs(60)
            }),
        ],
        "ready with a warning: no stop signal, no restart loop"
    );
    assert_eq!(
        h.sup.snapshot(h.now).generations[0].ready_by,
        Some(ReadyBy::Fallback)
    );
}

#[test]
fn a_reload_whose_generation_accepts_without_ready_fails_saying_what_was_seen() {
    let mut h = Harness::serving_with(detect_policy()); // gen 1 ready by READY=1
    h.reload_waiting(9);
    h.spawned(2, 200);
    h.now += ms(20);
    assert_eq!(h.accepting(2, Accepting::Yes, Some(3)), vec![]);
    h.now = h.now - ms(20) + secs(60);
    let a = h.ev(Event::Timeout);
    let reason = FailReason::AcceptingWithoutReady {
        fd: 3,
        waited: secs(60),
    };
    let outcome = failed_outcome(2, reason.clone(), secs(60), Some((1, 100)));
    assert_eq!(
        a,
        vec![
            Action::Scan {
                gen: 2,
                pid: 200,
                prove: false,
            }, // overdue: the fake clock jumped
            rep(Report::Failed {
                gen: 2,
                pid: Some(200),
                reason: reason.clone()
            }),
            tell(ManagerMessage::ReloadFailed(outcome.clone())),
            rep(Report::ReloadFinished(outcome.clone())),
            reply(9, Outcome::Reload(outcome)),
            term(2, 200),
            stopping(2, 200, None),
        ]
    );
    assert_eq!(
        reason.to_string(),
        "not ready after 60.0s (ready timeout): accepting on fd 3 but no READY=1: send READY=1, or pass --ready-after"
    );
}

#[test]
fn a_generation_never_seen_accepting_fails_saying_so() {
    let mut h = Harness::serving_with(detect_policy());
    h.reload();
    h.spawned(2, 200);
    h.now += secs(60);
    let a = h.ev(Event::Timeout);
    assert!(
        a.contains(&rep(Report::Failed {
            gen: 2,
            pid: Some(200),
            reason: FailReason::NeverAccepting(secs(60))
        })),
        "{a:?}"
    );
    assert!(FailReason::NeverAccepting(secs(60))
        .to_string()
        .contains("never seen accepting"));
}

#[test]
fn scans_of_a_generation_that_is_gone_are_ignored() {
    let (mut h, _) = Harness::new(detect_policy());
    h.spawned(1, 100);
    h.exited(100, 1);
    assert_eq!(h.accepting(1, Accepting::Yes, Some(3)), vec![]);
}

// ---- export / import of the detection state -------------------------------------------------

#[test]
fn import_of_export_keeps_an_accept_wait_mid_grace_and_the_scan_timer() {
    // The grace runs from the first accepting scan (seen_since): an import must neither
    // restart it nor lose it.
    let (mut h, _) = Harness::new(detect_policy());
    h.spawned(1, 100);
    h.now += ms(20);
    h.accepting(1, Accepting::Yes, Some(3));
    h.now += secs(3);
    same_after_import(
        &mut h,
        &[
            &|h| h.fire(), // the next scan (Timer::Scan crossed)
            &|h| h.advance(ms(1999)),
            &|h| h.accepting(1, Accepting::Yes, Some(3)), // 4.999 s: not yet
            &|h| h.advance(ms(1)),
            &|h| h.accepting(1, Accepting::Yes, Some(3)), // 5 s: ready, detected
        ],
    );
    assert_eq!(h.sup.serving(), Some((1, 100)));
}

#[test]
fn import_of_export_keeps_how_the_last_generation_became_ready() {
    // gen 1 ready by detection: after the import, gen 2 is still ready at its first
    // accepting scan (last_ready_by), and its ready_by shows in status.
    let (mut h, _) = Harness::new(detect_policy());
    h.spawned(1, 100);
    h.accepting(1, Accepting::Yes, Some(3));
    h.now += secs(5);
    h.accepting(1, Accepting::Yes, Some(3));
    h.reload();
    h.spawned(2, 200);
    let twin = h.twin();
    assert_eq!(
        twin.sup.snapshot(twin.now).generations[0].ready_by,
        Some(ReadyBy::Detected)
    );
    same_after_import(
        &mut h,
        &[&|h| h.advance(ms(20)), &|h| {
            h.accepting(2, Accepting::Yes, Some(3))
        }],
    );
    assert_eq!(h.sup.serving(), Some((2, 200)));
    // And a READY=1 generation: the next must send READY=1 too, across an import.
    let (mut h, _) = Harness::new(detect_policy());
    h.spawned(1, 100);
    h.ready(1);
    h.reload();
    h.spawned(2, 200);
    same_after_import(
        &mut h,
        &[
            &|h| h.accepting(2, Accepting::Yes, Some(3)),
            &|h| h.advance(secs(10)),
            &|h| h.accepting(2, Accepting::Yes, Some(3)),
            &|h| h.ready(2),
        ],
    );
}

#[test]
fn import_of_export_keeps_a_notifier_and_a_generation_being_proven() {
    // A notifier (any datagram) stays one after the import.
    let (mut h, _) = Harness::new(detect_policy());
    h.spawned(1, 100);
    h.status_line(1);
    h.accepting(1, Accepting::Yes, Some(3));
    same_after_import(
        &mut h,
        &[
            &|h| h.advance(secs(10)),
            &|h| h.accepting(1, Accepting::Yes, Some(3)),
            &|h| h.ready(1),
        ],
    );
    // Proving: the import's next scan proves again (the driver's connections restart).
    let (mut h, _) = Harness::new(detect_policy());
    h.spawned(1, 100);
    h.now += ms(20);
    h.accepting(1, Accepting::EdgeTriggered, Some(3));
    h.now += secs(5);
    h.accepting(1, Accepting::EdgeTriggered, Some(3)); // Proving
    same_after_import(
        &mut h,
        &[
            &|h| h.fire(), // Scan { prove: true }
            &|h| h.accepting(1, Accepting::EdgeTriggered, Some(3)),
            &|h| h.accepting(1, Accepting::Proven, Some(3)),
        ],
    );
}

#[test]
fn import_of_export_keeps_the_wrapper_check() {
    let (mut h, _) = Harness::new(Policy {
        wrapper_check_after: Some(secs(1)),
        ..Policy::default()
    });
    h.spawned(1, 100);
    h.now += ms(600);
    same_after_import(&mut h, &[&|h| h.advance(ms(399)), &|h| h.advance(ms(1))]);
}
