//! The child's view of the socket-activation contract, read from /proc by the test itself
//! (never through a shell, which would normalise the signal state for its own children).

use crate::util::*;

/// A child that does nothing but exist: every fd it has was given to it.
fn sleeper(extra: &[&str]) -> Handoff {
    let b = handoff();
    let sock = b.dir().join("app.sock");
    b.args(["--listen", "web=127.0.0.1:0", "--listen"])
        .arg(format!("unix:{}", sock.display()))
        .args(["--ready-after", "50ms"])
        .args(extra.iter().copied())
        .args(["--", "sleep", "300"])
        // Variables handoff must never pass through as they are.
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDS", "7")
        .env("LISTEN_PIDFDID", "12345")
        .env("WATCHDOG_USEC", "1000000")
        .env("NOTIFY_SOCKET", "/nonexistent")
        .env("KEEP_ME", "yes")
        .start()
}

#[test]
fn listeners_at_3_and_nothing_else_leaks() {
    // An fd handoff inherits without CLOEXEC (as from a sloppy parent) must not reach the child.
    let leak = std::fs::File::open("/dev/null").expect("open");
    use std::os::fd::AsRawFd;
    let leak_fd = leak.as_raw_fd();
    // SAFETY: clearing FD_CLOEXEC on our own fd so that handoff inherits it.
    unsafe { libc::fcntl(leak_fd, libc::F_SETFD, 0) };
    let h = sleeper(&[]);
    drop(leak);
    let pid = h.gen_pid(1);
    // Right after exec the dynamic loader briefly holds the libraries it maps open: wait for
    // the fd table to settle. A leaked fd never goes away, so this still fails on a leak.
    let mut fds = Vec::new();
    let settled = |fds: &[(i32, String)]| fds.iter().map(|(n, _)| *n).eq(0..5);
    let end = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < end {
        fds = crate::util::fds(pid);
        if settled(&fds) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(settled(&fds), "child fds: {fds:?}");
    assert!(fds[3].1.starts_with("socket:"), "{fds:?}");
    assert!(fds[4].1.starts_with("socket:"), "{fds:?}");
    // Negative control: handoff itself did inherit it, so the test is not vacuous.
    let inherited = std::fs::read_link(format!("/proc/{}/fd/{leak_fd}", h.pid)).expect("inherited");
    assert_eq!(inherited.display().to_string(), "/dev/null");
}

#[test]
fn environment_is_the_socket_activation_contract() {
    let h = sleeper(&[]);
    let pid = h.gen_pid(1);
    let env = environ(pid);
    assert_eq!(
        env.get("LISTEN_PID"),
        Some(&pid.to_string()),
        "LISTEN_PID must be the child's own pid"
    );
    assert_eq!(env.get("LISTEN_FDS").map(String::as_str), Some("2"));
    assert_eq!(
        env.get("LISTEN_FDNAMES").map(String::as_str),
        Some("web:unknown")
    );
    assert_eq!(
        env.get("LISTEN_FDS_FIRST_FD").map(String::as_str),
        Some("3")
    );
    assert_eq!(env.get("HANDOFF_GENERATION").map(String::as_str), Some("1"));
    assert_eq!(env.get("KEEP_ME").map(String::as_str), Some("yes"));
    assert!(
        !env.contains_key("LISTEN_PIDFDID"),
        "inherited LISTEN_PIDFDID must be dropped"
    );
    assert!(!env.contains_key("WATCHDOG_USEC"));
    let ns = env.get("NOTIFY_SOCKET").expect("NOTIFY_SOCKET");
    assert_ne!(ns, "/nonexistent");
    let meta = std::fs::symlink_metadata(ns).expect("notify socket exists");
    use std::os::unix::fs::FileTypeExt;
    assert!(meta.file_type().is_socket());
    // Its own process group, so that a forking server can be stopped as a whole.
    let pgrp = handoff_sys::procfs::stat(pid).expect("stat").pgrp;
    assert_eq!(pgrp, pid);
}

#[test]
fn each_generation_gets_its_own_listen_pid_and_notify_socket() {
    let h = sleeper(&[]);
    let p1 = h.ready(1);
    let e1 = environ(p1);
    h.reload();
    let p2 = h.ready(2);
    let e2 = environ(p2);
    assert_eq!(e2.get("LISTEN_PID"), Some(&p2.to_string()));
    assert_eq!(e2.get("HANDOFF_GENERATION").map(String::as_str), Some("2"));
    assert_ne!(e1.get("NOTIFY_SOCKET"), e2.get("NOTIFY_SOCKET"));
}

#[test]
fn signal_mask_and_dispositions_are_clean() {
    // Start handoff with signals blocked and ignored (as nohup, a CI runner or a shell's
    // background job would). The child must start clean anyway, like a systemd service.
    // SAFETY: sigprocmask/signal are async-signal-safe.
    let b = unsafe {
        handoff().pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            libc::sigaddset(&mut set, libc::SIGALRM);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            libc::signal(libc::SIGQUIT, libc::SIG_IGN);
            libc::signal(libc::SIGWINCH, libc::SIG_IGN);
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            Ok(())
        })
    };
    let h = b
        .args([
            "--listen",
            "127.0.0.1:0",
            "--ready-after",
            "50ms",
            "--",
            "sleep",
            "300",
        ])
        .start();
    let pid = h.gen_pid(1);
    // Negative control: handoff itself did inherit the blocked/ignored state.
    let hq = u64::from_str_radix(&status_field(h.pid, "SigIgn"), 16).expect("hex");
    assert_ne!(
        hq & (1 << (libc::SIGQUIT - 1)),
        0,
        "handoff should have inherited SIGQUIT ignored"
    );
    assert_eq!(status_field(pid, "SigBlk"), "0000000000000000");
    assert_eq!(status_field(pid, "SigIgn"), "0000000000000000");
    // And handoff still handles SIGHUP although it was started with it ignored.
    h.reload();
    h.ready(2);
}

#[test]
fn strict_child_accepts_the_sockets() {
    // The fixture exits 97 when LISTEN_PID is not its own pid, as libsystemd would ignore
    // the fds. Serving a request proves the whole chain.
    let h = with_fixture(&[], &[]);
    h.ready(1);
    let v = get_json(h.addr(0), "/env");
    assert_eq!(
        v["LISTEN_PID"].as_str().map(String::from),
        Some(v["pid"].to_string())
    );
}

#[test]
fn a_wrapper_hiding_the_sockets_is_named_in_the_log() {
    // `sh -c` without exec: its child gets LISTEN_PID of the shell, and a socket-activation
    // library there ignores the sockets. Here the child simply waits, never ready.
    let h = handoff()
        .args(["--listen", "127.0.0.1:0", "--", "sh", "-c"])
        .arg("python3 -c 'import time; time.sleep(60)'; exit $?")
        .start();
    let w = h.wait("wrapper_listen_pid", &[("gen", 1.into())]);
    assert_eq!(w["wrapper"], "sh", "{w}");
    assert_eq!(w["child"], "python3", "{w}");
    assert!(
        w["message"]
            .as_str()
            .is_some_and(|m| m.contains("--no-listen-pid")),
        "{w}"
    );
}

#[test]
fn no_listen_pid_leaves_it_out_and_keeps_the_rest() {
    let h = handoff()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--no-listen-pid",
            "--ready-after",
            "10ms",
        ])
        .args(["--", "sleep", "60"])
        .start();
    let pid = h.gen_pid(1);
    wait_until("the child has exec'd", WAIT, || {
        environ(pid).contains_key("LISTEN_FDS")
    });
    let env = environ(pid);
    assert_eq!(env.get("LISTEN_FDS").map(String::as_str), Some("1"));
    assert!(!env.contains_key("LISTEN_PID"), "{env:?}");
}
