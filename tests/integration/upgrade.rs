//! `handoff upgrade`: handoff execs a new binary under its own pid, children, sockets and
//! generations untouched; a bad binary never gets that far and the old image keeps serving.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

/// A copy of the handoff binary, named `handoff`, in `dir/name/`.
fn copy_of_handoff(dir: &Path, name: &str) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).expect("mkdir");
    let p = d.join("handoff");
    std::fs::copy(BIN, &p).expect("copy handoff");
    p
}

/// An executable script at `dir/name`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

/// handoff's fds, without its end of control connections (a `status` or `upgrade` client that
/// has just gone may not have been closed on handoff's side yet: accepted unix sockets carry
/// the control socket's path in /proc/net/unix, in state 03, connected).
fn held_fds(h: &Handoff) -> Vec<(i32, String)> {
    let control = h.control().display().to_string();
    let table = std::fs::read_to_string("/proc/net/unix").expect("/proc/net/unix");
    let connections: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 8 && f[5] == "03" && f[7] == control).then(|| format!("socket:[{}]", f[6]))
        })
        .collect();
    fds(h.pid)
        .into_iter()
        .filter(|(_, target)| !connections.contains(target))
        .collect()
}

fn status(h: &Handoff) -> Value {
    let (code, out, err) = h.cmd(&["status", "--json"]);
    assert_eq!(code, 0, "status: {err}");
    serde_json::from_str(&out).expect("status JSON")
}

/// (gen, pid, state) of every generation.
fn generations(st: &Value) -> Vec<(u64, u64, String)> {
    st["generations"]
        .as_array()
        .expect("generations")
        .iter()
        .map(|g| {
            (
                g["gen"].as_u64().expect("gen"),
                g["pid"].as_u64().expect("pid"),
                g["state"].as_str().expect("state").to_string(),
            )
        })
        .collect()
}

/// The listeners of a status, without the length of their accept queues (live, it moves
/// under load).
fn listeners(st: &Value) -> Value {
    let mut l = st["listeners"].clone();
    for x in l.as_array_mut().expect("listeners") {
        x.as_object_mut().expect("listener").remove("accept_queue");
    }
    l
}

fn exe(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).expect("readlink exe")
}

#[test]
fn upgrade_under_load_fails_no_request_and_keeps_pid_generations_and_sockets() {
    let h = with_fixture(&[], &["--ready-delay", "0.2"]);
    h.ready(1);
    let load = Load::start(h.addr(0), json_gen);
    h.reload();
    assert_eq!(
        h.wait("reload_finished", &[("gen", 2.into())])["result"],
        "ok"
    );
    wait_until("a response from generation 2", WAIT, || load.answered(2));
    // Generation 1 must be gone before the rounds compare generations before and after.
    h.wait("drained", &[("gen", 1.into())]);
    let fds_at_start = held_fds(&h);
    let mut fds_after_first = Vec::new();
    for round in 1..=3u64 {
        let before = status(&h);
        let new = copy_of_handoff(h.dir.path(), &format!("v{round}"));
        let t = Instant::now();
        let (code, out, err) = h.cmd(&["upgrade", "--binary", new.to_str().expect("utf-8")]);
        assert_eq!(code, 0, "upgrade {round}: {out}{err}");
        eprintln!("upgrade {round}: {:?}: {}", t.elapsed(), out.trim());
        assert!(out.contains("upgraded handoff"), "{out}");
        assert!(alive(h.pid), "same process");
        assert_eq!(exe(h.pid), new, "/proc/PID/exe is the new file");
        let after = status(&h);
        assert_eq!(after["pid"], h.pid, "status answered by the same pid");
        assert_eq!(after["upgrades"], round);
        assert!(after["upgraded_ago_s"].as_f64().is_some(), "{after}");
        assert_eq!(after["version"], before["version"]);
        assert_eq!(listeners(&after), listeners(&before));
        assert_eq!(after["reloads"], before["reloads"]);
        assert_eq!(
            generations(&after),
            generations(&before),
            "the same generations, pids and phases"
        );
        h.wait("upgraded", &[("count", round.into())]);
        if round == 1 {
            fds_after_first = held_fds(&h);
            eprintln!("fds before: {fds_at_start:?}\nfds after: {fds_after_first:?}");
        }
    }
    let held = held_fds(&h);
    assert_eq!(
        held.len(),
        fds_after_first.len(),
        "no fd gained or lost by the second and third upgrades: {held:?}"
    );
    // The upgraded image reloads as the first one did.
    h.reload();
    assert_eq!(
        h.wait("reload_finished", &[("gen", 3.into())])["result"],
        "ok"
    );
    wait_until("a response from generation 3", WAIT, || load.answered(3));
    let t = load.finish();
    t.assert_no_failures("upgrade", 101);
}

#[test]
fn a_draining_generation_keeps_its_drain_deadline_across_an_upgrade() {
    let h = fixture_with_args_file(&["--drain-timeout", "4s"]);
    std::fs::write(h.args_file(), "--ignore-term").expect("write args");
    h.ready(1);
    std::fs::write(h.args_file(), "").expect("write args");
    h.reload();
    h.wait("stopping", &[("gen", 1.into())]);
    let stopped = Instant::now();
    let before = status(&h);
    assert_eq!(generations(&before)[0].2, "draining");
    let new = copy_of_handoff(h.dir.path(), "new");
    let (code, out, err) = h.cmd(&["upgrade", "--binary", new.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(generations(&status(&h)), generations(&before));
    // Killed at its deadline, counted from its stop signal in the old image.
    let killed = h.wait_event("gen 1 killed", Duration::from_secs(10), |v| {
        v["event"] == "killed" && v["gen"] == 1
    });
    let at = stopped.elapsed();
    assert_eq!(killed["reason"], "drain timeout reached", "{killed}");
    assert!(
        at >= Duration::from_millis(3900) && at < Duration::from_millis(5500),
        "killed {at:?} after its stop signal; the drain timeout is 4 s"
    );
    h.wait("drained", &[("gen", 1.into())]);
}

#[test]
fn a_reload_waiting_across_an_upgrade_gets_its_outcome_from_the_new_image() {
    let h = with_fixture(&[], &["--ready-delay", "1.5"]);
    h.ready(1);
    let mut reload = KillOnDrop(
        Command::new(BIN)
            .arg("reload")
            .env("HANDOFF_CONTROL", h.control())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("handoff reload"),
    );
    h.wait("spawned", &[("gen", 2.into())]);
    let new = copy_of_handoff(h.dir.path(), "new");
    let (code, out, err) = h.cmd(&["upgrade", "--binary", new.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{out}{err}");
    let st = status(&h);
    assert_eq!(generations(&st)[1].2, "starting", "{st}");
    let mut ok = None;
    wait_until("handoff reload to exit", WAIT, || {
        ok = reload.0.try_wait().expect("try_wait");
        ok.is_some()
    });
    let mut stdout = String::new();
    std::io::Read::read_to_string(reload.0.stdout.as_mut().expect("stdout"), &mut stdout)
        .expect("read");
    assert_eq!(ok.and_then(|s| s.code()), Some(0), "{stdout}");
    assert!(stdout.contains("generation 2"), "{stdout}");
}

#[test]
fn a_bad_binary_is_refused_before_the_exec_and_the_old_image_keeps_serving() {
    let h = with_fixture(&[], &[]);
    let p1 = h.ready(1);
    let d = h.dir.path();
    let not_executable = copy_of_handoff(d, "noexec");
    std::fs::set_permissions(&not_executable, std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let cases: Vec<(PathBuf, &str)> = vec![
        (d.join("missing/handoff"), "No such file or directory"),
        (not_executable, "Permission denied"),
        (
            script(d, "fails.sh", "echo 'cannot run here' >&2; exit 1"),
            "refused to take over (exit status 1): cannot run here",
        ),
        (
            script(
                d,
                "newer.sh",
                r#"echo '{"handoff_check_upgrade":1,"version":"9.0","state_versions":[2]}'"#,
            ),
            "reads state versions [2], not 1",
        ),
        (
            script(d, "crashes.sh", "kill -SEGV $$"),
            "killed by SIGSEGV during its upgrade check",
        ),
        (
            script(d, "silent.sh", "exit 0"),
            "did not answer the upgrade check as a handoff does",
        ),
    ];
    let exe_before = exe(h.pid);
    for (binary, why) in cases {
        let (code, out, err) = h.cmd(&["upgrade", "--binary", binary.to_str().expect("utf-8")]);
        assert_eq!(code, 1, "{binary:?}: {out}{err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(
            err.starts_with("handoff: upgrade failed: ") && err.contains(why),
            "{binary:?}: {err}"
        );
        // Nothing changed: same image, same generation, still serving.
        assert_eq!(exe(h.pid), exe_before);
        let st = status(&h);
        assert_eq!(st["upgrades"], 0);
        assert_eq!(st["serving"]["pid"], p1);
        assert_eq!(get_json(h.addr(0), "/")["pid"], p1);
        let failed = h.wait_event("upgrade_failed", WAIT, |v| {
            v["event"] == "upgrade_failed" && v["error"].as_str().is_some_and(|e| e.contains(why))
        });
        assert_eq!(failed["level"], "ERROR");
    }
    // And a good binary still goes through afterwards.
    let good = copy_of_handoff(d, "good");
    let (code, out, err) = h.cmd(&["upgrade", "--binary", good.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{out}{err}");
}

/// A Python server that binds the address handoff holds itself (bind adoption gives it
/// handoff's socket); `GET /bind` makes it bind a new socket to that address again, and
/// answers `bind ok` or `bind errno N`.
const SELF_BINDER: &str = r#"
import http.server, os, signal, socket, sys, threading
host, port = sys.argv[1].rsplit(":", 1)
gen = os.environ["HANDOFF_GENERATION"]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/bind":
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind((host, int(port)))
                what = "bind ok"
            except OSError as e:
                what = "bind errno %d" % e.errno
            s.close()
        else:
            what = "hello"
        body = f"{what} from generation {gen} (pid {os.getpid()})\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer((host, int(port)), H)
srv.daemon_threads = False
signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=srv.shutdown).start())
srv.serve_forever()
srv.server_close()
"#;

fn body(addr: std::net::SocketAddr, path: &str, h: &Handoff) -> String {
    match get(addr, path) {
        Outcome::Ok { status: 200, body } => body,
        other => panic!("GET {path}: {other:?}\n{}", h.raw_log()),
    }
}

#[test]
fn a_server_that_binds_its_own_port_keeps_bind_adoption_across_an_upgrade() {
    let mut h = handoff()
        .args(["--listen", "127.0.0.1:0", "--ready-after", "300ms"])
        .args([
            "--",
            "sh",
            "-c",
            "exec python3 -c \"$0\" \"${SERVER_STARTER_PORT%%=*}\"",
        ])
        .arg(SELF_BINDER)
        .start();
    let pid = h.ready(1);
    let addr = h.addr(0);
    let a = h.wait("adopted", &[("gen", 1.into())]);
    assert_eq!(a["addr"], addr.to_string(), "{a}");
    assert!(body(addr, "/", &h).starts_with("hello from generation 1"));
    let new = copy_of_handoff(h.dir.path(), "new");
    let (code, out, err) = h.cmd(&["upgrade", "--binary", new.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{out}{err}");
    h.wait("upgraded", &[("count", 1.into())]);
    // The adopted socket is handoff's own listener: it still serves.
    assert_eq!(
        body(addr, "/", &h),
        format!("hello from generation 1 (pid {pid})\n")
    );
    // A new bind of the held address by that generation, after the upgrade: the new image's
    // watch answers it (without one it would fail with ENOSYS, or hang).
    let t = Instant::now();
    let b = body(addr, "/bind", &h);
    assert!(
        b.starts_with("bind ok from generation 1"),
        "{b}\n{}",
        h.raw_log()
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let answered = || {
        let n = |e: &str| h.events(e).iter().filter(|v| v["gen"] == 1).count();
        n("adopted") + n("adopt_rebind")
    };
    wait_until("the bind after the upgrade in the log", WAIT, || {
        answered() == 2
    });
    // What generation 1 adopted before the upgrade is still in status.
    let st = status(&h);
    let g1 = st["generations"]
        .as_array()
        .expect("generations")
        .iter()
        .find(|g| g["gen"] == 1)
        .expect("generation 1")
        .clone();
    assert_eq!(g1["adopted"][0]["addr"], addr.to_string(), "{st}");
    // And a generation started by the new image adopts as the first did.
    h.reload();
    let done = h.wait("reload_finished", &[("gen", 2.into())]);
    assert_eq!(done["result"], "ok", "{done}\n{}", h.raw_log());
    h.wait("adopted", &[("gen", 2.into())]);
    let drained = h.wait("drained", &[("gen", 1.into())]);
    assert_eq!(drained["exit_status"], "exit status 0", "{drained}");
    assert!(body(addr, "/bind", &h).starts_with("bind ok from generation 2"));
    h.signal(libc::SIGTERM);
    assert_eq!(h.wait_exit(WAIT), 0, "{}", h.raw_log());
}

#[test]
fn a_stuck_accept_queue_stays_stuck_across_an_upgrade_and_is_not_reported_again() {
    // The child ignores fd 3: connections wait in the queue and nobody accepts them.
    let (h, _waiting) = listener_nobody_accepts_on();
    h.wait_event("accept_queue_stuck", Duration::from_secs(20), |v| {
        v["event"] == "accept_queue_stuck"
    });
    let new = copy_of_handoff(h.dir.path(), "new");
    let (code, out, err) = h.cmd(&["upgrade", "--binary", new.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{out}{err}");
    let st = status(&h);
    assert_eq!(st["listeners"][0]["stuck"], true, "{st}");
    // Some checks of the new image's queue watch (one a second) pass: still one report.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(h.events("accept_queue_stuck").len(), 1, "{}", h.raw_log());
    assert_eq!(status(&h)["listeners"][0]["stuck"], true);
}
