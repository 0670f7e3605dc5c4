//! Reload, rollback, drain and group kill, with the Python fixture as the child.

use serde_json::json;

use std::time::{Duration, Instant};

use crate::util::*;

#[test]
fn reload_switches_generations_and_drains_the_old_one() {
    let h = with_fixture(&[], &[]);
    let p1 = h.ready(1);
    let addr = h.addr(0);
    assert_eq!(get_json(addr, "/")["gen"], 1);
    h.reload();
    let done = h.wait("reload_finished", &[("gen", 2.into())]);
    assert_eq!(done["result"], "ok");
    let p2 = h.ready(2);
    assert_ne!(p1, p2);
    let stop = h.wait("stopping", &[("gen", 1.into())]);
    assert_eq!(stop["signal"], "SIGTERM");
    let drained = h.wait("drained", &[("gen", 1.into())]);
    assert_eq!(drained["exit_status"], "exit status 0");
    wait_until("old generation gone", WAIT, || !alive(p1));
    assert_eq!(get_json(addr, "/")["gen"], 2);
}

#[test]
fn new_child_crashing_before_ready_rolls_back() {
    let h = fixture_with_args_file(&[]);
    let p1 = h.ready(1);
    std::fs::write(h.args_file(), "--exit-before-ready 3").expect("write args");
    h.reload();
    let done = h.wait("reload_finished", &[("gen", 2.into())]);
    assert_eq!(done["result"], "failed");
    assert_eq!(done["serving_gen"], 1);
    let failed = h.wait("failed", &[("gen", 2.into())]);
    assert!(
        failed["reason"]
            .as_str()
            .expect("reason")
            .contains("exit status 3"),
        "{failed}"
    );
    // The old generation was never touched and still serves.
    assert!(h.events("stopping").is_empty());
    assert!(alive(p1));
    assert_eq!(get_json(h.addr(0), "/")["pid"], p1);
    // And a later good reload still works.
    std::fs::write(h.args_file(), "").expect("write args");
    h.reload();
    assert_eq!(
        h.wait("reload_finished", &[("gen", 3.into())])["result"],
        "ok"
    );
}

#[test]
fn requests_a_never_ready_generation_accepted_are_served_when_it_is_stopped() {
    // A new generation that misses its ready deadline may already have accepted connections
    // from the shared socket. It gets the stop signal and drains them, as systemd would; it
    // used to be SIGKILLed, failing them.
    let h = fixture_with_args_file(&["--ready-timeout", "1500ms"]);
    h.ready(1);
    let addr = h.addr(0);
    std::fs::write(h.args_file(), "--never-ready").expect("write args");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(Outcome, Instant)>::new()));
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                let end = Instant::now() + Duration::from_secs(30);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < end {
                    let o = get(addr, "/slow?ms=700");
                    seen.lock().expect("seen").push((o, Instant::now()));
                }
            })
        })
        .collect();
    h.reload();
    let done = h.wait("reload_finished", &[("gen", 2.into())]);
    assert_eq!(done["result"], "failed");
    let failed_at = Instant::now();
    h.wait("reaped", &[("gen", 2.into())]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.join().expect("client");
    }
    let seen = seen.lock().expect("seen");
    let failures: Vec<_> = seen
        .iter()
        .filter(|(o, _)| !matches!(o, Outcome::Ok { status: 200, .. }))
        .collect();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    let drained_by_2 = seen.iter().any(|(o, at)| {
        *at > failed_at && matches!(o, Outcome::Ok { body, .. } if json_gen(body) == Some(2))
    });
    assert!(
        drained_by_2,
        "no request accepted by generation 2 was still in flight when it failed: the test proved nothing"
    );
}

#[test]
fn new_child_missing_the_ready_deadline_is_killed_and_rolled_back() {
    let h = fixture_with_args_file(&["--ready-timeout", "1s"]);
    let p1 = h.ready(1);
    std::fs::write(h.args_file(), "--never-ready --workers 2").expect("write args");
    h.reload();
    let p2 = h.gen_pid(2);
    let done = h.wait("reload_finished", &[("gen", 2.into())]);
    assert_eq!(done["result"], "failed");
    let failed = h.wait("failed", &[("gen", 2.into())]);
    assert!(
        failed["reason"]
            .as_str()
            .expect("reason")
            .contains("ready timeout"),
        "{failed}"
    );
    // The whole group of the failed child is gone, workers included.
    wait_until("failed group gone", WAIT, || {
        group_members(p2).iter().all(|p| !alive(*p))
    });
    assert!(alive(p1));
    assert_eq!(get_json(h.addr(0), "/")["pid"], p1);
}

#[test]
fn slow_in_flight_request_survives_a_reload() {
    let h = with_fixture(&[], &[]);
    let p1 = h.ready(1);
    let addr = h.addr(0);
    let slow = std::thread::spawn(move || get(addr, "/slow?ms=1500"));
    // The request is in flight once the old child has it; wait for that, not for a time.
    wait_until("slow request accepted", WAIT, || {
        get_json(addr, "/")["inflight"].as_u64().unwrap_or(0) >= 1
    });
    h.reload();
    h.wait("stopping", &[("gen", 1.into())]);
    match slow.join().expect("join") {
        Outcome::Ok { status, body } => {
            assert_eq!(status, 200);
            let v: serde_json::Value = serde_json::from_str(&body).expect("json");
            assert_eq!(v["pid"], p1, "served by the old generation");
        }
        other => panic!("slow request failed: {other:?}"),
    }
    h.wait("drained", &[("gen", 1.into())]);
}

#[test]
fn child_ignoring_stop_signal_is_killed_with_its_workers_after_the_drain_timeout() {
    let h = with_fixture(
        &["--drain-timeout", "1s"],
        &["--ignore-term", "--workers", "2"],
    );
    let p1 = h.ready(1);
    let members = group_members(p1);
    assert!(
        members.len() >= 3,
        "leader and two workers expected: {members:?}"
    );
    h.reload();
    h.ready(2);
    let killed = h.wait("killed", &[("gen", 1.into())]);
    assert_eq!(killed["reason"], "drain timeout reached");
    h.wait(
        "drained",
        &[
            ("gen", 1.into()),
            ("exit_status", json!("killed by SIGKILL")),
        ],
    );
    wait_until("old group gone", WAIT, || {
        members.iter().all(|p| !alive(*p))
    });
}

#[test]
fn sighups_during_a_reload_coalesce_into_one_more() {
    let mut h = with_fixture(&[], &["--ready-delay", "0.5"]);
    h.ready(1);
    h.reload();
    h.gen_pid(2); // generation 2 is starting: everything from now on must coalesce
    for _ in 0..20 {
        h.reload();
    }
    assert_eq!(
        h.wait("reload_finished", &[("gen", 2.into())])["result"],
        "ok"
    );
    assert_eq!(
        h.wait("reload_finished", &[("gen", 3.into())])["result"],
        "ok"
    );
    // A fourth generation would have been spawned the moment generation 3 became ready,
    // before handoff could handle this SIGTERM.
    h.signal(libc::SIGTERM);
    assert_eq!(h.wait_exit(WAIT), 0);
    assert_eq!(
        h.events("spawned").len(),
        3,
        "exactly one reload after the first"
    );
}

#[test]
fn notify_from_a_descendant_is_accepted() {
    let h = with_fixture(&[], &["--notify-from-child"]);
    h.ready(1);
    assert_eq!(get_json(h.addr(0), "/")["gen"], 1);
}

#[test]
fn extend_timeout_and_status_are_honoured() {
    let h = with_fixture(
        // The first datagram must arrive within the ready timeout even on a loaded machine;
        // the child is then ready only after the timeout would have expired.
        &["--ready-timeout", "4s"],
        &[
            "--notify-message",
            "EXTEND_TIMEOUT_USEC=20000000\nSTATUS=warming up",
            "--ready-delay",
            "5",
        ],
    );
    h.wait(
        "status",
        &[("gen", 1.into()), ("child_status", json!("warming up"))],
    );
    h.ready(1);
    assert!(h.events("failed").is_empty());
    let ready = h.wait("ready", &[("gen", 1.into())]);
    assert!(
        ready["ready_ms"].as_f64().expect("ready_ms") > 4000.0,
        "{ready}"
    );
}

/// A handoff with `--reload-signal HUP` over a fixture that re-reads `config` on SIGHUP.
fn in_place(child_opts: &[&str]) -> (Handoff, std::path::PathBuf) {
    let b = handoff();
    let config = b.dir().join("config");
    std::fs::write(&config, "v1").expect("write config");
    let h = b
        .args(["--listen", "127.0.0.1:0", "--reload-signal", "HUP"])
        .args([
            "--",
            "python3",
            &fixture(),
            "--reload-on",
            "HUP",
            "--config-file",
        ])
        .arg(&config)
        .args(child_opts)
        .start();
    (h, config)
}

#[test]
fn reload_in_place_signals_the_serving_child_which_rereads_its_config() {
    let (h, config) = in_place(&[]);
    let p1 = h.ready(1);
    let addr = h.addr(0);
    assert_eq!(get_json(addr, "/")["config"], "v1");
    std::fs::write(&config, "v2").expect("write config");
    let (code, out, err) = h.cmd(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("reload signal SIGHUP delivered to generation 1"),
        "{out}"
    );
    // Delivered is all handoff can know of a child that does not report progress.
    wait_until("the child re-read its config", WAIT, || {
        get_json(addr, "/")["config"] == "v2"
    });
    assert_eq!(
        get_json(addr, "/")["pid"],
        p1,
        "the same process, reloaded in place"
    );
    assert_eq!(h.events("spawned").len(), 1, "no new generation");
    // `handoff restart` still starts one.
    let (code, out, err) = h.cmd(&["restart"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("generation 2"), "{out}");
}

#[test]
fn reload_in_place_waits_for_a_child_speaking_notify_reload() {
    let (h, config) = in_place(&["--notify-reload"]);
    h.ready(1);
    let addr = h.addr(0);
    std::fs::write(&config, "v2").expect("write config");
    let (code, out, err) = h.cmd(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("RELOADING=1, then READY=1"), "{out}");
    // READY=1 came after the re-read: no need to wait.
    assert_eq!(get_json(addr, "/")["config"], "v2");
}
