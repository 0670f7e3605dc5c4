//! Restart on crash, shutdown and exit codes, signal forwarding, and leaks.

use std::time::Duration;

use crate::util::*;

#[test]
fn sigterm_drains_every_child_exits_zero_and_leaves_nothing() {
    let b = handoff();
    let sock = b.dir().join("app.sock");
    let mut h = b
        .args(["--listen", "127.0.0.1:0", "--listen"])
        .arg(format!("unix:{}", sock.display()))
        .args(["--", "python3", &fixture(), "--workers", "2"])
        .start();
    let p1 = h.ready(1);
    let members = group_members(p1);
    assert!(sock.exists());
    h.signal(libc::SIGTERM);
    assert_eq!(h.wait_exit(WAIT), 0, "log:\n{}", h.raw_log());
    assert!(
        members.iter().all(|p| !alive(*p)),
        "leftover processes: {members:?}"
    );
    assert!(!sock.exists(), "unix socket file must be removed at exit");
    h.wait("drained", &[("gen", 1.into())]);
}

#[test]
fn sigint_during_a_stop_kills_at_once_and_exits_3() {
    let mut h = with_fixture(&["--drain-timeout", "60s"], &["--ignore-term"]);
    let p1 = h.ready(1);
    h.signal(libc::SIGTERM);
    h.wait("stopping", &[("gen", 1.into())]);
    h.signal(libc::SIGINT);
    assert_eq!(h.wait_exit(WAIT), 3);
    assert!(!alive(p1));
}

#[test]
fn a_repeated_sigterm_is_one_graceful_stop() {
    // timeout(1), and service managers, repeat SIGTERM: that is not a request to kill.
    let mut h = with_fixture(&["--drain-timeout", "60s"], &["--stop-delay", "1"]);
    let p1 = h.ready(1);
    h.signal(libc::SIGTERM);
    h.wait("stopping", &[("gen", 1.into())]);
    h.signal(libc::SIGTERM);
    h.signal(libc::SIGTERM);
    assert_eq!(h.wait_exit(WAIT), 0, "drained, nothing killed");
    assert!(h.events("killed").is_empty(), "{}", h.raw_log());
    assert!(!alive(p1));
}

#[test]
fn stop_force_kills_at_once_and_exits_3() {
    let mut h = with_fixture(&["--drain-timeout", "60s"], &["--ignore-term"]);
    let p1 = h.ready(1);
    let (code, out, err) = h.cmd(&["stop", "--timeout", "300ms"]);
    assert_eq!(code, 1, "a plain stop waits for the drain: {out}{err}");
    assert!(err.contains("still running"), "{err}");
    let (code, out, err) = h.cmd(&["stop", "--force"]);
    assert_eq!(code, 3, "{out}{err}");
    assert_eq!(h.wait_exit(WAIT), 3);
    assert!(!alive(p1));
}

#[test]
fn restart_never_ends_handoff_when_the_child_is_never_ready() {
    // It used to restart a child that missed its ready deadline forever. Detection off: this
    // child accepts, and would otherwise be treated as ready at its ready timeout.
    let mut h = with_fixture(
        &[
            "--restart",
            "never",
            "--ready-timeout",
            "500ms",
            "--detect-ready",
            "off",
        ],
        &["--never-ready"],
    );
    h.wait("failed", &[("gen", 1.into())]);
    assert_eq!(h.wait_exit(WAIT), 1);
    assert!(h.events("spawned").len() == 1, "{}", h.raw_log());
}

#[test]
fn once_nothing_accepts_during_a_stop_new_connections_are_refused_at_once() {
    // The child stops accepting and closes its listeners at once, then drains for 5 s. New
    // clients must be refused now, not queued on handoff's copy of the socket for the whole
    // drain and then reset.
    let mut h = with_fixture(
        &["--drain-timeout", "60s"],
        &["--close-listeners-at-stop", "--stop-delay", "5"],
    );
    h.ready(1);
    let addr = h.addr(0);
    h.signal(libc::SIGTERM);
    h.wait("stopping", &[("gen", 1.into())]);
    wait_until(
        "a new connection is refused",
        Duration::from_secs(3),
        || {
            matches!(
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
            )
        },
    );
    assert!(alive(h.pid), "still draining");
    assert_eq!(h.wait_exit(WAIT), 0);
}

#[test]
fn drain_timeout_on_shutdown_exits_3() {
    let mut h = with_fixture(&["--drain-timeout", "500ms"], &["--ignore-term"]);
    h.ready(1);
    h.signal(libc::SIGTERM);
    assert_eq!(h.wait_exit(WAIT), 3);
    h.wait("killed", &[("gen", 1.into())]);
}

#[test]
fn crashed_child_is_replaced_and_clients_wait_instead_of_being_refused() {
    // Ready after 0.5 s: generation 2 cannot be ready before the client below has connected.
    let h = with_fixture(&[], &["--crash-after-ready", "0.3", "--ready-delay", "0.5"]);
    h.ready(1);
    let addr = h.addr(0);
    let exited = h.wait("exited", &[("gen", 1.into())]);
    assert_eq!(exited["exit_status"], "exit status 3");
    h.wait("restart_scheduled", &[]);
    // Nothing serves now (back-off, then generation 2 starts): a client connects and waits in
    // the kernel's queue of the socket handoff holds, and generation 2 answers it.
    assert!(
        h.events("ready").len() == 1,
        "generation 2 must not be ready yet for this check to mean anything"
    );
    let client = std::thread::spawn(move || get(addr, "/"));
    h.ready(2);
    match client.join().expect("client") {
        Outcome::Ok { status: 200, body } => assert_eq!(json_gen(&body), Some(2)),
        other => panic!("a client during the restart got {other:?}"),
    }
}

#[test]
fn restart_never_exits_with_the_child_status() {
    let mut h = with_fixture(&["--restart", "never"], &["--crash-after-ready", "0.2"]);
    h.ready(1);
    assert_eq!(h.wait_exit(WAIT), 3);
}

#[test]
fn usr1_is_forwarded_to_the_serving_child() {
    let h = with_fixture(&[], &[]);
    h.ready(1);
    let addr = h.addr(0);
    h.signal(libc::SIGUSR1);
    h.wait("forwarded", &[("gen", 1.into())]);
    wait_until("child saw SIGUSR1", WAIT, || {
        get_json(addr, "/")["signals"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s == "SIGUSR1"))
    });
}

#[test]
fn orphaned_workers_are_reaped_and_killed() {
    // A master that exits on SIGTERM without waiting for its workers (which ignore it).
    let mut h = with_fixture(&[], &["--workers", "2", "--orphan-workers"]);
    let p1 = h.ready(1);
    let members = group_members(p1);
    assert!(members.len() >= 3, "{members:?}");
    h.reload();
    h.ready(2);
    h.wait("drained", &[("gen", 1.into())]);
    wait_until("workers of the drained generation gone", WAIT, || {
        members.iter().all(|p| !alive(*p))
    });
    h.signal(libc::SIGTERM);
    assert_eq!(h.wait_exit(WAIT), 0);
}

#[test]
fn no_fd_leak_across_reloads() {
    let h = with_fixture(&[], &[]);
    h.ready(1);
    h.reload();
    h.ready(2);
    h.wait("drained", &[("gen", 1.into())]);
    let before = fds(h.pid).len();
    for gen in 3..=12u64 {
        h.reload();
        h.ready(gen);
        h.wait("drained", &[("gen", (gen - 1).into())]);
    }
    let after = fds(h.pid).len();
    assert_eq!(
        before, after,
        "handoff's fd count changed across 10 reloads"
    );
    let _ = Duration::ZERO;
}

#[test]
fn no_zombies_after_many_reloads() {
    let h = with_fixture(&[], &[]);
    h.ready(1);
    for gen in 2..=6u64 {
        h.reload();
        h.wait("drained", &[("gen", (gen - 1).into())]);
    }
    // Only the serving child is left as a child of handoff, and it is not a zombie.
    let kids: Vec<u32> = std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| handoff_sys::procfs::stat(p).is_some_and(|s| s.ppid == h.pid))
        .collect();
    let serving = h.ready(6);
    assert_eq!(kids, vec![serving], "children of handoff");
}

#[test]
fn children_stop_when_handoff_is_killed() {
    // No server may keep serving unsupervised: PR_SET_PDEATHSIG delivers the stop signal.
    let mut h = with_fixture(&[], &[]);
    let p1 = h.ready(1);
    h.signal(libc::SIGKILL);
    assert_eq!(h.wait_exit(WAIT), 128 + libc::SIGKILL);
    wait_until("child stopped after handoff died", WAIT, || !alive(p1));
}

#[test]
fn children_get_the_stop_signal_when_handoff_is_killed() {
    // A server that stops on INT and ignores TERM: PR_SET_PDEATHSIG must be --stop-signal,
    // else it keeps serving unsupervised, holding the port.
    let mut h = with_fixture(&["--stop-signal", "INT"], &["--stop-signals", "INT"]);
    let p1 = h.ready(1);
    h.signal(libc::SIGKILL);
    assert_eq!(h.wait_exit(WAIT), 128 + libc::SIGKILL);
    wait_until("child stopped after handoff died", WAIT, || !alive(p1));
}

#[test]
fn a_child_shutting_down_the_shared_listener_is_detected_and_repaired() {
    // See odoo#107539: shutdown() on an inherited listening socket stops it for everyone.
    // With bind adoption (the default) the shutdown() is not even done (adopt.rs tests it);
    // without it, handoff repairs the damage.
    let h = fixture_with_first_args(&["--adopt", "off"], "--shutdown-listener");
    let args = h.args_file();
    h.ready(1);
    let addr = h.addr(0);
    std::fs::write(&args, "").expect("write");
    h.reload(); // gen 2 ready → gen 1 gets SIGTERM and shuts the listener down on its way out
    h.wait("drained", &[("gen", 1.into())]);
    let w = h.wait("listener_restored", &[("gen", 1.into())]);
    assert_eq!(w["addr"], addr.to_string());
    // handoff started generation 3 on the re-created socket, at the same address.
    assert_eq!(
        h.wait("reload_finished", &[("gen", 3.into())])["result"],
        "ok"
    );
    assert_eq!(get_json(addr, "/")["gen"], 3);
}

#[test]
fn the_next_start_removes_the_notify_directories_a_killed_handoff_left() {
    let base = TempDir::new();
    let start = || {
        handoff()
            .env("RUNTIME_DIRECTORY", base.path().to_str().expect("utf-8"))
            .args(["--listen", "127.0.0.1:0", "--", "python3", &fixture()])
            .start()
    };
    // A running handoff's directory: left alone.
    let a = start();
    let pa = a.ready(1);
    let a_sock = std::path::PathBuf::from(&environ(pa)["NOTIFY_SOCKET"]);
    let a_dir = a_sock.parent().expect("notify directory").to_path_buf();
    assert_eq!(a_dir.parent(), Some(base.path()));
    // What a SIGKILLed handoff left (pid 999999999 cannot exist): its directory and socket.
    let stale = base.path().join("handoff.999999999.0");
    std::fs::create_dir(&stale).expect("mkdir");
    drop(std::os::unix::net::UnixDatagram::bind(stale.join("notify-1.sock")).expect("bind"));
    // A dead handoff's pid now used by a process that is not a handoff (this test).
    let reused = base
        .path()
        .join(format!("handoff.{}.0", std::process::id()));
    std::fs::create_dir(&reused).expect("mkdir");
    std::fs::write(reused.join("notify-2.sock"), "").expect("write");
    // A symlink with such a name is not followed: its target stays whole.
    let target = base.path().join("elsewhere");
    std::fs::create_dir(&target).expect("mkdir");
    std::fs::write(target.join("keep"), "").expect("write");
    let link = base.path().join("handoff.999999998.0");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");

    let b = start();
    b.ready(1);
    b.wait(
        "stale_removed",
        &[("path", stale.display().to_string().into())],
    );
    assert!(!stale.exists(), "{} is still there", stale.display());
    assert!(!reused.exists(), "{} is still there", reused.display());
    assert!(target.join("keep").exists(), "followed the symlink");
    assert!(link.symlink_metadata().is_ok(), "removed a symlink");
    assert!(
        a_sock.exists(),
        "removed the directory of a running handoff"
    );
    // And the running one still works: its next generation's socket is made in it.
    a.reload();
    a.ready(2);
}

#[test]
#[ignore = "needs root (creates a cgroup per generation); CI's root stage runs it with --ignored"]
fn workers_that_left_the_process_group_go_with_their_generation() {
    // Serving workers that called setsid(): only a cgroup still knows they belong to their
    // generation. Before cgroups they survived the reload and kept answering, unseen.
    assert_eq!(handoff_sys::euid(), 0, "needs root to create cgroups");
    let b = handoff();
    let pids = b.dir().join("pids");
    let h = b
        .args([
            "--listen",
            "127.0.0.1:0",
            "--cgroups",
            "--",
            "python3",
            &fixture(),
        ])
        .args([
            "--workers",
            "2",
            "--workers-serve",
            "--workers-setsid",
            "--orphan-workers",
        ])
        .arg("--pid-file")
        .arg(&pids)
        .start();
    h.ready(1);
    let (code, out, _) = h.cmd(&["status", "--json"]);
    assert_eq!(code, 0);
    let st: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(st["tracking"], "cgroup", "{st}");
    let workers: Vec<u32> = std::fs::read_to_string(&pids)
        .expect("pid file")
        .split_whitespace()
        .skip(2)
        .map(|p| p.parse().expect("pid"))
        .collect();
    assert_eq!(workers.len(), 2);
    h.reload();
    h.ready(2);
    h.wait("drained", &[("gen", 1.into())]);
    wait_until("generation 1's setsid workers are gone", WAIT, || {
        workers.iter().all(|&w| !alive(w))
    });
    let addr = h.addr(0);
    for _ in 0..30 {
        assert_eq!(get_json(addr, "/")["gen"], 2, "generation 1 still answers");
    }
}
