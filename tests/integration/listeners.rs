//! Listener forms and socket files.

use std::os::unix::net::{UnixListener, UnixStream};

use crate::util::*;

#[test]
fn stale_unix_socket_file_is_replaced() {
    let b = handoff();
    let sock = b.dir().join("app.sock");
    drop(UnixListener::bind(&sock).expect("bind")); // leaves a file nobody listens on
    assert!(sock.exists());
    let h = b
        .arg("--listen")
        .arg(format!("api=unix:{}", sock.display()))
        .args(["--", "python3", &fixture()])
        .start();
    h.ready(1);
    let mut s = UnixStream::connect(&sock).expect("connect");
    use std::io::{Read, Write};
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    assert!(
        out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200"),
        "{out}"
    );
}

#[test]
fn live_unix_socket_or_regular_file_is_an_error() {
    let dir = TempDir::new();
    let live = dir.path().join("live.sock");
    let _l = UnixListener::bind(&live).expect("bind");
    let out = std::process::Command::new(BIN)
        .arg("--listen")
        .arg(format!("unix:{}", live.display()))
        .args(["--", "true"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already listening"));
    assert!(live.exists(), "a live socket must not be removed");

    let file = dir.path().join("plain");
    std::fs::write(&file, "x").expect("write");
    let out = std::process::Command::new(BIN)
        .arg("--listen")
        .arg(format!("unix:{}", file.display()))
        .args(["--", "true"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(std::fs::read_to_string(&file).expect("read"), "x");
}

#[test]
fn ipv6_udp_and_names_reach_the_child() {
    let h = handoff()
        .args([
            "--listen",
            "http=[::1]:0",
            "--listen",
            "dns=udp://127.0.0.1:0",
        ])
        .args(["--ready-after", "50ms", "--", "sleep", "300"])
        .start();
    let pid = h.gen_pid(1);
    let env = environ(pid);
    assert_eq!(
        env.get("LISTEN_FDNAMES").map(String::as_str),
        Some("http:dns")
    );
    let l0 = h.wait("listening", &[("index", 0.into())]);
    assert!(l0["addr"].as_str().expect("addr").starts_with("[::1]:"));
    let l1 = h.wait("listening", &[("index", 1.into())]);
    assert_eq!(l1["kind"], "udp");
    // Read once exec has settled (the dynamic loader holds files open for a moment).
    let numbers = || fds(pid).iter().map(|(n, _)| *n).collect::<Vec<_>>();
    wait_until("the child's fds to be 0..=4", WAIT, || {
        numbers() == vec![0, 1, 2, 3, 4]
    });
}

#[test]
fn connections_queue_while_no_child_accepts() {
    // The first child takes a while to start; a client connecting before then is not
    // refused: the kernel queues it on handoff's socket and the child serves it.
    let h = with_fixture(&[], &["--ready-delay", "0.5"]);
    let addr = h.addr(0);
    let v = get_json(addr, "/");
    assert_eq!(v["gen"], 1);
}

/// A unix listener with --socket-mode 0660 (and, if `owner`, --socket-owner nobody:nogroup)
/// that generation 1 breaks with shutdown() on its way out: the socket handoff re-creates
/// has the same mode and owner.
fn restored_unix_listener_keeps_its_access(owner: bool) {
    use std::io::{Read, Write};
    use std::os::unix::fs::MetadataExt;
    let b = handoff();
    let sock = b.dir().join("app.sock");
    let args = b.dir().join("child.args");
    std::fs::write(&args, "--shutdown-listener").expect("write");
    let mut opts = vec!["--socket-mode", "0660"];
    if owner {
        opts.extend(["--socket-owner", "nobody:nogroup"]);
    }
    let h = b
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .args(opts)
        .args(["--", "python3", &fixture(), "--args-file"])
        .arg(&args)
        .start();
    h.ready(1);
    let access = || {
        let m = std::fs::symlink_metadata(&sock).expect("socket file");
        if owner {
            (m.mode() & 0o7777, Some((m.uid(), m.gid())))
        } else {
            (m.mode() & 0o7777, None)
        }
    };
    let want = (0o660, owner.then_some((65534, 65534)));
    assert_eq!(access(), want, "as bound");
    std::fs::write(&args, "").expect("write");
    h.reload(); // gen 2 ready → gen 1 shuts the listener down on its way out
    h.wait("listener_restored", &[("gen", 1.into())]);
    assert_eq!(access(), want, "the re-created socket file");
    assert_eq!(
        h.wait("reload_finished", &[("gen", 3.into())])["result"],
        "ok"
    );
    let mut c = UnixStream::connect(&sock).expect("connect");
    c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut resp = String::new();
    c.read_to_string(&mut resp).expect("read");
    assert!(resp.contains("\"gen\": 3"), "{resp}");
}

#[test]
fn a_restored_unix_listener_keeps_its_socket_mode() {
    restored_unix_listener_keeps_its_access(false);
}

#[test]
#[ignore = "needs root"]
fn a_restored_unix_listener_keeps_its_socket_mode_and_owner() {
    assert_eq!(
        handoff_sys::euid(),
        0,
        "this test needs root: run it as root with --ignored"
    );
    restored_unix_listener_keeps_its_access(true);
}

/// The backlog of the TCP socket listening at `addr`: the Send-Q column `ss -ltn` shows for
/// a listening socket is its sk_max_ack_backlog (the Recv-Q, its current accept queue).
pub(crate) fn tcp_backlog(addr: std::net::SocketAddr) -> u32 {
    let out = std::process::Command::new("ss")
        .arg("-ltnH")
        .output()
        .expect("run ss (iproute2; bash .ci/setup installs it)");
    assert!(out.status.success(), "ss -ltnH failed");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[0] == "LISTEN" && f[3] == addr.to_string())
                .then(|| f[2].parse().expect("Send-Q"))
        })
        .unwrap_or_else(|| panic!("{addr} not listening in ss -ltn:\n{text}"))
}

#[test]
fn a_child_shrinking_the_backlog_does_not_shrink_it_for_the_next_generation() {
    // Without bind adoption: with it (the default), the child's listen() is answered without
    // being done, and the backlog never shrinks (adopt.rs tests it).
    let h = fixture_with_first_args(&["--backlog", "64", "--adopt", "off"], "--shrink-backlog 2");
    let args = h.args_file();
    h.ready(1);
    let addr = h.addr(0);
    // Generation 1 called listen(3, 2) on the shared socket before READY=1.
    assert_eq!(tcp_backlog(addr), 2);
    std::fs::write(&args, "").expect("write");
    h.reload();
    h.ready(2);
    assert_eq!(
        tcp_backlog(addr),
        64,
        "generation 2 got the backlog generation 1 set"
    );
}

#[test]
fn a_deleted_unix_socket_file_is_reported_and_bound_again_at_the_next_reload() {
    use std::io::{Read, Write};
    let b = handoff();
    let sock = b.dir().join("app.sock");
    let h = b
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .args(["--", "python3", &fixture()])
        .start();
    h.ready(1);
    std::fs::remove_file(&sock).expect("delete the socket file"); // a cleanup job, say
    let (code, out, err) = h.cmd(&["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let st: serde_json::Value = serde_json::from_str(&out).expect("status json");
    assert_eq!(st["listeners"][0]["file_missing"], true, "{st}");
    h.reload();
    h.ready(2);
    h.wait("listener_restored", &[("gen", 2.into())]);
    let mut c = UnixStream::connect(&sock).expect("the path works again");
    c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut resp = String::new();
    c.read_to_string(&mut resp).expect("read");
    let body = resp.split_once("\r\n\r\n").expect("response").1;
    assert_eq!(json_gen(body), Some(2), "{resp}");
}
