//! The /proc accept-wait scan against real servers, each given a listening socket at fd 3
//! and held before serving by a gate (a line on stdin), so that "not yet" and "now" are both
//! observed without sleeping: poll (socketserver, http.server's loop), select, a blocking
//! accept, asyncio (level-triggered epoll, and the registered-but-blocked counter-example),
//! Node and Go (edge-triggered: reported as such, never as a trusted wait).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{wait_until, WAIT};
use handoff_core::accepting::ListenerWait;
use handoff_sys::accepting::{self, AcceptProbe};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// A child holding `l` at fd 3, killed on drop.
struct Server {
    child: Child,
}

impl Server {
    fn start(l: &TcpListener, cmd: &mut Command) -> Self {
        let fd = l.as_raw_fd();
        // SAFETY: dup2 is async-signal-safe; the closure touches nothing else.
        unsafe {
            cmd.pre_exec(move || {
                // dup2(3, 3) keeps close-on-exec: clear it then.
                let rc = if fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, 3)
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Server { child }
    }

    fn open_gate(&mut self) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    fn wait(&self, l: &TcpListener) -> ListenerWait {
        let ino = accepting::inode(l.as_fd()).unwrap();
        let pids = accepting::process_tree(self.child.id());
        accepting::scan(&pids, &[ino])[0].wait
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `cmd` on a fresh listener behind its gate; assert that nothing waits before the gate
/// opens (`before`), then that the scan reports `after`.
fn gated(mut cmd: Command, before: ListenerWait, after: ListenerWait) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut s = Server::start(&l, &mut cmd);
    // Until the gate opens the server is starting up or blocked in read(0): give it the time
    // to get there (its start-up is not observable otherwise), checking all along.
    let until = std::time::Instant::now() + std::time::Duration::from_millis(700);
    while std::time::Instant::now() < until {
        let w = s.wait(&l);
        assert!(
            w == before || w == ListenerWait::None,
            "before the gate: {w:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(s.wait(&l), before, "before the gate");
    s.open_gate();
    wait_until(&format!("{after:?}"), WAIT, || s.wait(&l) == after);
    // And it serves: a connection is accepted.
    let p = AcceptProbe::connect(l.local_addr().unwrap()).unwrap();
    wait_until("the probe accepted", WAIT, || p.accepted_inode().is_some());
}

fn python(mode: &str, extra: &[&str]) -> Command {
    let mut c = Command::new("python3");
    c.arg(fixtures().join("plain_server.py"))
        .arg(mode)
        .arg("--gate")
        .args(extra);
    c
}

#[test]
fn poll_server_is_seen_once_it_polls() {
    gated(
        python("poll", &[]),
        ListenerWait::None,
        ListenerWait::Waiting,
    );
}

#[test]
fn select_server_is_seen_once_it_selects() {
    gated(
        python("select", &[]),
        ListenerWait::None,
        ListenerWait::Waiting,
    );
}

#[test]
fn blocking_accept_is_seen() {
    gated(
        python("accept", &[]),
        ListenerWait::None,
        ListenerWait::Waiting,
    );
}

#[test]
fn asyncio_is_seen_once_its_loop_waits() {
    gated(
        python("asyncio", &[]),
        ListenerWait::None,
        ListenerWait::Waiting,
    );
}

#[test]
fn asyncio_registered_but_blocked_is_not_waiting() {
    // The listener is in the loop's epoll set, but the loop's only thread is blocked: the
    // entry alone is not readiness.
    gated(
        python("asyncio", &["--registered"]),
        ListenerWait::None,
        ListenerWait::Waiting,
    );
}

#[test]
fn node_is_seen_once_it_listens() {
    if Command::new("node").arg("--version").output().is_err() {
        eprintln!("node is not installed: skipped");
        return;
    }
    let mut c = Command::new("node");
    c.arg("-e").arg(
        "require('readline').createInterface({input: process.stdin}).once('line', () => \
         require('net').createServer(c => c.end()).listen({fd: 3}))",
    );
    gated(c, ListenerWait::None, ListenerWait::Waiting);
}

/// Builds tests/fixtures/go-plain (standard library only, offline); `None` without go.
pub fn go_plain() -> Option<PathBuf> {
    Command::new("go").arg("version").output().ok()?;
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go-plain");
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go");
    let st = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(fixtures().join("go-plain"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", cache.join("cache"))
        .env("GOPATH", cache.join("path"))
        .status()
        .unwrap();
    assert!(st.success(), "go build tests/fixtures/go-plain");
    Some(out)
}

#[test]
fn go_is_reported_edge_triggered_even_before_it_serves() {
    let Some(bin) = go_plain() else {
        eprintln!("go is not installed: skipped");
        return;
    };
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = Command::new(bin);
    // time.Sleep, not a gate: a sleeping goroutine is what makes an idle runtime thread park
    // in epoll_pwait (with a blocking read(0) its threads wait on futexes instead).
    c.env("GO_PLAIN_DELAY", "3s");
    let started = std::time::Instant::now();
    let s = Server::start(&l, &mut c);
    // Not serving yet (sleeping), but a runtime thread parks in epoll_pwait on the listener,
    // registered edge-triggered: untrusted, never `Waiting`.
    wait_until("the edge-triggered entry", WAIT, || {
        s.wait(&l) == ListenerWait::EdgeTriggered
    });
    let p = AcceptProbe::connect(l.local_addr().unwrap()).unwrap();
    if started.elapsed() < std::time::Duration::from_millis(2500) {
        assert_eq!(p.accepted_inode(), None, "Go does not accept before Serve");
    }
    wait_until("the probe accepted by the Go server", WAIT, || {
        p.accepted_inode()
            .is_some_and(|ino| accepting::holds_socket(&[s.child.id()], ino))
    });
    assert!(started.elapsed() >= std::time::Duration::from_secs(3));
}
