//! The control socket under abuse: strangers and floods cannot deny service, accept errors do
//! not make handoff spin, and the client talks only to the real handoff.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::util::*;

/// The cap on concurrent control connections (control.rs `MAX_CONNECTIONS`).
const CAP: usize = 32;

/// CPU handoff may use in one second while connections are held: an idle event loop uses
/// none; a loop spinning on accept() uses a whole core.
const IDLE_CPU: f64 = 0.2;

/// `setrlimit(RLIMIT_NOFILE, n)`, for `pre_exec`.
fn set_nofile(n: u64) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: setrlimit is async-signal-safe and only reads `lim`.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Set the soft RLIMIT_NOFILE of another process (same user); returns the previous limits.
fn prlimit_nofile(pid: u32, soft: u64) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reading the current limits into `old`.
    let r = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: `new` is a valid rlimit; the old value is not asked for.
    let r = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    old
}

fn restore_nofile(pid: u32, lim: libc::rlimit) {
    // SAFETY: `lim` is a valid rlimit.
    let r = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// A python3 one-liner run as `uid` (uid 65534: nobody) or as ourselves, in `/`.
fn python_as(uid: Option<u32>, script: &str, args: &[&str]) -> Command {
    // Debian's python3: one under /root (pyenv) is not readable by nobody.
    let mut c = match uid {
        Some(u) => {
            let mut c = Command::new("setpriv");
            c.args([
                format!("--reuid={u}"),
                format!("--regid={u}"),
                "--clear-groups".into(),
                "/usr/bin/python3".into(),
            ]);
            c
        }
        None => Command::new("python3"),
    };
    c.arg("-c").arg(script).args(args).current_dir("/");
    c
}

/// Opens N connections to a unix address (`@name` is abstract), prints how many it holds and
/// the error that stopped it, then holds them until killed.
const HOLD: &str = r#"
import socket, sys
addr, n = sys.argv[1], int(sys.argv[2])
if addr.startswith("@"):
    addr = "\0" + addr[1:]
held, err = [], ""
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(addr)
    except OSError as e:
        err = repr(e)
        s.close()
        break
    held.append(s)
print(len(held), err, flush=True)
sys.stdin.read()
"#;

/// Run [`HOLD`]; returns the process (killed on drop) and how many connections it holds.
fn hold_connections(uid: Option<u32>, addr: &str, n: usize) -> (KillOnDrop, usize) {
    let mut c = python_as(uid, HOLD, &[addr, &n.to_string()]);
    let limit = n as u64 + 64;
    // SAFETY: set_nofile only calls setrlimit (async-signal-safe).
    unsafe { c.pre_exec(move || set_nofile(limit)) };
    let child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the connection holder");
    let mut guard = KillOnDrop(child);
    let mut line = String::new();
    // Bounded: each connect gives up after 5 s, and the first failure ends the loop.
    BufReader::new(guard.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("holder's report");
    let held = line
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("holder failed: {line:?}"));
    eprintln!("holder: {}", line.trim());
    (guard, held)
}

/// One request on a new connection; the reply, or None if none came within `timeout`.
fn try_request(sock: &Path, body: &[u8], timeout: Duration) -> Option<Value> {
    let mut s = UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    let _ = s.write_all(body);
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    serde_json::from_str(&line).ok()
}

const STATUS: &[u8] = b"{\"v\":1,\"cmd\":\"status\"}\n";

#[test]
#[ignore = "needs root"]
fn strangers_holding_connections_cannot_deny_service() {
    assert!(is_root(), "needs root: the stranger runs as uid 65534");
    let b = handoff();
    let pidf = b.dir().join("handoff.pid");
    // The usual default soft limit, well below the stranger's 2,000 connections.
    // SAFETY: set_nofile only calls setrlimit (async-signal-safe).
    let b = unsafe { b.pre_exec(|| set_nofile(1024)) };
    let h = b
        .args(["--listen", "127.0.0.1:0", "--pid-file"])
        .arg(&pidf)
        .args(["--", "python3", &fixture()])
        .start();
    h.ready(1);

    let addr = format!("@handoff-control-{}", h.pid);
    let (_stranger, held) = hold_connections(Some(65534), &addr, 2000);
    assert!(held >= 1500, "the stranger got only {held} connections");

    let cpu = cpu_used_during(h.pid, Duration::from_secs(1));
    assert!(
        cpu < IDLE_CPU,
        "handoff used {cpu:.2} s of CPU in 1 s while a stranger held {held} connections"
    );
    // handoff keeps none of them open.
    wait_until("handoff to close the stranger's connections", WAIT, || {
        fds(h.pid).len() < 64
    });
    // The owner (root) still gets through, on the very address the stranger floods.
    let (code, out, err) = output_within(
        Command::new(BIN)
            .args(["reload", "--timeout", "20s", "--pid-file"])
            .arg(&pidf),
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "{out}{err}");
    h.wait(
        "reload_finished",
        &[("gen", 2.into()), ("result", "ok".into())],
    );
    assert!(alive(h.pid));
}

#[test]
fn connections_beyond_the_cap_are_refused_at_once() {
    let h = with_fixture(&[], &[]);
    h.ready(1);
    let sock = h.control();
    let base = fds(h.pid).len();
    // Same user (trusted), idle, more than the cap, held for the whole test.
    let held: Vec<UnixStream> = (0..3 * CAP)
        .map(|_| UnixStream::connect(&sock).expect("connect"))
        .collect();
    // Beyond the cap, a new connection is answered at once, without waiting for a request.
    let mut refusal = Value::Null;
    wait_until(
        "a connection beyond the cap to be refused",
        WAIT,
        || match try_request(&sock, b"", Duration::from_secs(1)) {
            Some(v) => {
                refusal = v;
                true
            }
            None => false,
        },
    );
    assert_eq!(refusal["ok"], false, "{refusal}");
    assert!(
        refusal["error"]
            .as_str()
            .is_some_and(|e| e.contains("too many")),
        "{refusal}"
    );
    let n = fds(h.pid).len();
    assert!(
        n <= base + CAP + 2,
        "handoff holds {n} fds ({base} before {} connections)",
        held.len()
    );
    let cpu = cpu_used_during(h.pid, Duration::from_secs(1));
    assert!(cpu < IDLE_CPU, "handoff used {cpu:.2} s of CPU in 1 s");
    // The idle ones time out (5 s without a request) and free their slots, although their
    // client keeps its end open: the owner's commands work again.
    wait_until("status to be answered again", WAIT, || {
        try_request(&sock, STATUS, Duration::from_secs(1)).is_some_and(|v| v["ok"] == true)
    });
    let (code, out, err) = h.cmd(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    drop(held);
}

#[test]
fn accept_errors_back_off_instead_of_spinning() {
    let h = with_fixture(&[], &[]);
    h.ready(1);
    let sock = h.control();
    // Lower handoff's fd limit so that it can open exactly two more fds: new fds take the
    // lowest free numbers, which must stay below the limit (fds above it may exist).
    let used: Vec<i32> = fds(h.pid).into_iter().map(|(fd, _)| fd).collect();
    let limit = (0..)
        .filter(|n| !used.contains(n))
        .nth(1)
        .expect("free fd numbers")
        + 1;
    let old = prlimit_nofile(h.pid, limit as u64);
    // More connections than that: accept() fails with EMFILE for the rest.
    let held: Vec<UnixStream> = (0..12)
        .map(|_| UnixStream::connect(&sock).expect("connect"))
        .collect();
    wait_until("handoff to reach its fd limit", WAIT, || {
        let below = fds(h.pid).iter().filter(|(fd, _)| *fd < limit).count();
        below == limit as usize
    });
    let cpu = cpu_used_during(h.pid, Duration::from_secs(1));
    assert!(
        cpu < IDLE_CPU,
        "handoff used {cpu:.2} s of CPU in 1 s at its fd limit"
    );
    restore_nofile(h.pid, old);
    drop(held);
    wait_until("status to be answered again", WAIT, || {
        try_request(&sock, STATUS, Duration::from_secs(1)).is_some_and(|v| v["ok"] == true)
    });
    let (code, out, err) = h.cmd(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
}

/// Listens on a unix address (`@name` is abstract, `@self` is `@handoff-control-OWNPID`),
/// prints "listening PID", and answers every request as if a reload had succeeded.
const SQUAT: &str = r#"
import os, socket, sys
addr = sys.argv[1]
if addr == "@self":
    addr = "@handoff-control-%d" % os.getpid()
if addr.startswith("@"):
    addr = "\0" + addr[1:]
l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
l.bind(addr)
l.listen(16)
print("listening", os.getpid(), flush=True)
while True:
    c, _ = l.accept()
    c.settimeout(5)
    try:
        c.recv(4096)
        c.sendall(b'{"v":1,"ok":true,"pid":%d,"message":"reload finished"}\n' % os.getpid())
    except OSError:
        pass
    c.close()
"#;

/// Run [`SQUAT`]; returns the process (killed on drop) and its pid once it listens.
fn squat(uid: Option<u32>, addr: &str) -> (KillOnDrop, u32) {
    let child = python_as(uid, SQUAT, &[addr])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the squatter");
    let mut guard = KillOnDrop(child);
    let mut line = String::new();
    // Bounded: the squatter prints this line or dies (EOF).
    BufReader::new(guard.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("squatter's report");
    let pid = line
        .strip_prefix("listening ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("squatter failed: {line:?}"));
    (guard, pid)
}

/// `handoff SUB ARGS...` must refuse to talk to the squatter: exit 1, one line on stderr
/// containing every string of `says`, nothing on stdout.
#[track_caller]
fn refused(args: &[&str], target: &[&std::ffi::OsStr], says: &[String]) {
    for sub in ["reload", "status", "stop"] {
        let mut c = Command::new(BIN);
        c.arg(sub).args(args).args(target);
        if sub != "status" {
            c.args(["--timeout", "3s"]);
        }
        let (code, out, err) = output_within(&mut c, Duration::from_secs(20));
        assert_eq!(code, 1, "{sub}: {out}{err}");
        assert_eq!(out, "", "{sub}: nothing on stdout");
        assert_eq!(err.lines().count(), 1, "{sub}: {err}");
        for s in says {
            assert!(err.contains(s.as_str()), "{sub}: {err:?} should say {s:?}");
        }
        assert!(!err.contains("reload finished"), "{sub}: {err}");
    }
}

#[test]
#[ignore = "needs root"]
fn the_client_refuses_a_control_socket_served_by_another_user() {
    assert!(is_root(), "needs root: the squatter runs as uid 65534");
    let dir = TempDir::new();
    // A directory the squatter (nobody) may create its socket in.
    let d = dir.path().join("squat");
    std::fs::create_dir(&d).expect("mkdir");
    std::os::unix::fs::chown(&d, Some(65534), Some(65534)).expect("chown");
    let path = d.join("control.sock");
    let (_sq, sq_pid) = squat(Some(65534), path.to_str().expect("utf-8 path"));
    refused(
        &["--control"],
        &[path.as_os_str()],
        &[
            format!(
                "control socket {} is served by uid 65534 (pid {sq_pid})",
                path.display()
            ),
            "not by root or uid 0; refusing to talk to it".into(),
        ],
    );

    // The abstract address of the pid in a pid file: its own pid, so only the uid betrays it.
    let (_sq, sq_pid) = squat(Some(65534), "@self");
    let pidf = dir.path().join("squat.pid");
    std::fs::write(&pidf, format!("{sq_pid}\n")).expect("write pid file");
    refused(
        &["--pid-file"],
        &[pidf.as_os_str()],
        &[
            format!("@handoff-control-{sq_pid}"),
            format!("is served by uid 65534 (pid {sq_pid})"),
            "refusing to talk to it".into(),
        ],
    );
}

#[test]
fn the_client_refuses_an_abstract_address_served_by_another_pid() {
    // Someone (here: the same user) bound @handoff-control-N before the handoff with pid N.
    let victim = KillOnDrop(
        Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("start sleep"),
    );
    let n = victim.0.id();
    let (_sq, sq_pid) = squat(None, &format!("@handoff-control-{n}"));
    let dir = TempDir::new();
    let pidf = dir.path().join("app.pid");
    std::fs::write(&pidf, format!("{n}\n")).expect("write pid file");
    refused(
        &["--pid-file"],
        &[pidf.as_os_str()],
        &[
            format!("@handoff-control-{n}"),
            format!("is served by pid {sq_pid}"),
            format!("not by pid {n} from {}", pidf.display()),
            "refusing to talk to it".into(),
        ],
    );
}

#[test]
fn a_control_path_in_use_names_its_owner() {
    let h = with_fixture(&[], &[]);
    h.ready(1);
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let (code, out, err) = output_within(
        Command::new(BIN).env("HANDOFF_CONTROL", h.control()).args([
            "--listen",
            "127.0.0.1:0",
            "--",
            "python3",
            &fixture(),
        ]),
        Duration::from_secs(20),
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!(
            "control socket {} is in use, owned by uid {me} (pid {})",
            h.control().display(),
            h.pid
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}
