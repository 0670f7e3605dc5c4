//! Operating handoff: control commands, pid file, systemd notify and socket units, privilege
//! drop, readiness probes, file watching, PID 1, Server::Starter compatibility.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

#[test]
fn reload_command_reports_success_and_failure_with_its_exit_code() {
    let h = fixture_with_args_file(&[]);
    h.ready(1);
    let (code, out, err) = h.cmd(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("generation 2"), "{out}");
    // By the time it returned, the new generation serves and the old one was told to stop
    // (the wait only lets this test's log reader catch up).
    h.wait("stopping", &[("gen", 1.into())]);
    let p2 = h.ready(2);

    std::fs::write(h.args_file(), "--exit-before-ready 1").expect("write");
    let (code, out, err) = h.cmd(&["reload"]);
    assert_eq!(code, 1, "{out}{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("exited before ready (exit status 1)"),
        "{err}"
    );
    assert!(
        lines[0].contains(&format!("still serving generation 2, pid {p2}")),
        "{err}"
    );

    let (code, out, _) = h.cmd(&["reload", "--no-wait"]);
    assert_eq!(code, 0);
    assert!(out.contains("reload requested"));
}

#[test]
fn status_json_has_generations_listeners_and_the_last_reload() {
    let h = with_fixture(&[], &[]);
    h.ready(1);
    h.reload();
    h.wait("reload_finished", &[("gen", 2.into())]);
    h.wait("drained", &[("gen", 1.into())]);
    let (code, out, err) = h.cmd(&["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["pid"], h.pid);
    assert_eq!(v["reloads"], 1);
    assert_eq!(v["serving"]["gen"], 2);
    let gens = v["generations"].as_array().expect("generations");
    assert_eq!(gens.len(), 1);
    assert_eq!(gens[0]["state"], "serving");
    assert!(gens[0]["pid"].is_u64() && gens[0]["age_s"].is_number());
    assert!(gens[0]["time_to_ready_ms"].as_f64().expect("ttr") > 0.0);
    assert_eq!(v["listeners"][0]["fd"], 3);
    assert_eq!(v["listeners"][0]["kind"], "tcp");
    assert_eq!(v["last_reload"]["result"], "ok");
    assert!(v["last_reload"]["duration_ms"].is_number());
    let (code, text, _) = h.cmd(&["status"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("serving") && text.contains("last reload: ok"),
        "{text}"
    );
}

#[test]
fn stop_command_drains_and_waits_until_handoff_has_exited() {
    let mut h = with_fixture(&[], &[]);
    let p1 = h.ready(1);
    let (code, out, err) = h.cmd(&["stop"]);
    assert_eq!(code, 0, "{out}{err}");
    // Already gone when the command returned.
    assert!(!alive(h.pid) || h.wait_exit(Duration::from_millis(200)) == 0);
    assert!(!alive(p1));
    assert!(!h.control().exists(), "control socket removed at exit");
}

#[test]
fn stop_says_when_something_had_to_be_killed_and_exits_3() {
    // A child that ignores the stop signal is killed at the drain timeout: handoff exits 3,
    // and so does the `stop` client, saying why (before, it printed "stopped" and exited 0).
    let mut h = with_fixture(&["--drain-timeout", "300ms"], &["--ignore-term"]);
    h.ready(1);
    let (code, out, err) = h.cmd(&["stop"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("had to be killed"), "{out}");
    assert_eq!(h.wait_exit(Duration::from_secs(5)), 3);
}

#[test]
fn subcommands_say_plainly_when_nothing_runs_there() {
    let dir = TempDir::new();
    let sock = dir.path().join("nothing.sock");
    for sub in ["reload", "status", "stop"] {
        let out = Command::new(BIN)
            .args([sub, "--control"])
            .arg(&sock)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(1), "{sub}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("no handoff is running at control socket"),
            "{sub}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

fn raw_request(sock: &std::path::Path, body: &[u8]) -> Value {
    let mut s = UnixStream::connect(sock).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = s.write_all(body);
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("reply");
    serde_json::from_str(&line).expect("json reply")
}

#[test]
fn malformed_oversized_and_unknown_requests_get_an_error_reply() {
    let h = with_fixture(&[], &[]);
    h.ready(1);
    let sock = h.control();
    let v = raw_request(&sock, b"garbage\n");
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().expect("error").contains("malformed"));
    let v = raw_request(&sock, &vec![b'x'; 100_000]);
    assert!(
        v["error"].as_str().expect("error").contains("too long"),
        "{v}"
    );
    let v = raw_request(&sock, b"{\"v\":2,\"cmd\":\"status\"}\n");
    assert!(
        v["error"].as_str().expect("error").contains("version"),
        "{v}"
    );
    let v = raw_request(&sock, b"{\"v\":1,\"cmd\":\"explode\"}\n");
    assert_eq!(v["ok"], false);
    // Still alive and answering.
    let v = raw_request(&sock, b"{\"v\":1,\"cmd\":\"status\"}\n");
    assert_eq!(v["ok"], true);
    let mode = std::fs::metadata(&sock)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
    assert_eq!(mode.expect("meta"), 0o600);
}

#[test]
#[ignore = "needs root (runs a client as nobody); CI's root stage runs it with --ignored"]
fn another_users_requests_are_rejected() {
    assert!(is_root(), "needs root to run a client as another user");
    let b = handoff();
    let pidf = b.dir().join("handoff.pid");
    let h = b
        .args(["--listen", "127.0.0.1:0", "--pid-file"])
        .arg(&pidf)
        .args(["--", "python3", &fixture()])
        .start();
    h.ready(1);
    // Through the abstract address (no file permission in the way), so SO_PEERCRED decides.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "reload",
            "--pid-file",
        ])
        .arg(&pidf)
        .output()
        .expect("setpriv");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied"), "{err}");
    assert!(
        h.events("reload_requested").is_empty(),
        "the stranger's reload must not happen"
    );
    // The owner, through the same pid file, is accepted.
    let out = Command::new(BIN)
        .args(["status", "--pid-file"])
        .arg(&pidf)
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pid_file_is_written_refuses_a_second_start_and_is_removed() {
    let b = handoff();
    let pidf = b.dir().join("app.pid");
    let mut h = b
        .args(["--listen", "127.0.0.1:0", "--pid-file"])
        .arg(&pidf)
        .args(["--", "python3", &fixture()])
        .start();
    h.ready(1);
    assert_eq!(
        std::fs::read_to_string(&pidf).expect("pid file").trim(),
        h.pid.to_string()
    );
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(&pidf).expect("pid file");
    assert!(meta.is_file());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
    let marker = h.dir.path().join("second-started");
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--control", "none", "--pid-file"])
        .arg(&pidf)
        .args(["--", "touch"])
        .arg(&marker)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("belongs to a running handoff"), "{err}");
    assert!(!marker.exists());
    h.signal(libc::SIGTERM);
    assert_eq!(h.wait_exit(WAIT), 0);
    assert!(!pidf.exists(), "pid file removed at exit");
}

#[test]
fn a_symlink_planted_at_the_pid_files_temporary_name_is_never_followed() {
    // handoff writes PIDFILE via DIR/.NAME.PID.tmp. Someone who can write in DIR plants that
    // name as a symlink to a file of root's: root must not truncate (or write) it. The pid is
    // known in advance because the shell execs handoff.
    let dir = TempDir::new();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").expect("write victim");
    let pidf = dir.path().join("app.pid");
    let marker = dir.path().join("child-started");
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"v=$1 d=$2; shift 2; ln -s "$v" "$d/.app.pid.$$.tmp" && exec "$@""#)
        .arg("sh")
        .arg(&victim)
        .arg(dir.path())
        .arg(BIN)
        .args(["--restart", "never", "--control", "none", "--pid-file"])
        .arg(&pidf)
        .args(["--", "touch"])
        .arg(&marker)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "precious\n",
        "the symlink's target was written; stderr: {err}"
    );
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot write pid file") && err.contains("already exists"),
        "{err}"
    );
    assert!(!pidf.exists(), "a pid file was written");
    assert!(!marker.exists(), "the child was started");
}

#[test]
fn sockets_from_a_socket_unit_are_passed_through_with_the_childs_own_listen_pid() {
    // systemd's own tool: binds, waits for a connection, then execs handoff with LISTEN_FDS
    // for handoff's pid. handoff must use that socket and give the child its own LISTEN_PID.
    let dir = TempDir::new();
    let sock = dir.path().join("activated.sock");
    let b = handoff_under(&[
        "systemd-socket-activate",
        "-l",
        sock.to_str().expect("utf8"),
        "--fdname=web",
    ]);
    let h = b.args(["--", "python3", &fixture()]).start();
    wait_until("socket-activate listening", WAIT, || sock.exists());
    // The first connection makes systemd-socket-activate exec handoff.
    let mut s = UnixStream::connect(&sock).expect("connect");
    s.write_all(b"GET /env HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut s, &mut out).expect("read");
    let body = out.split_once("\r\n\r\n").expect("http").1;
    let env: Value = serde_json::from_str(body).expect("json");
    assert_eq!(
        env["LISTEN_PID"].as_str().map(String::from),
        Some(env["pid"].to_string())
    );
    assert_eq!(env["LISTEN_FDNAMES"], "web");
    assert!(
        env.get("LISTEN_PIDFDID").is_none_or(Value::is_null),
        "{env}"
    );
    let l = h.wait("listening", &[("index", 0.into())]);
    assert_eq!(l["inherited"], true);
    assert_eq!(l["name"], "web");
}

/// A fake service manager: collects what handoff sends to NOTIFY_SOCKET.
struct Manager {
    rx: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Manager {
    fn bind(addr: &str, dir: &std::path::Path) -> (Self, String) {
        let (sock, env) = if let Some(name) = addr.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            let a = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .expect("abstract");
            (
                UnixDatagram::bind_addr(&a).expect("bind abstract"),
                addr.to_string(),
            )
        } else {
            let p = dir.join(addr);
            (
                UnixDatagram::bind(&p).expect("bind"),
                p.display().to_string(),
            )
        };
        let (tx, rx) = std::sync::mpsc::channel();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let end = Instant::now() + Duration::from_secs(120);
            while Instant::now() < end {
                if let Ok(n) = sock.recv(&mut buf) {
                    if tx
                        .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                        .is_err()
                    {
                        break;
                    }
                }
            }
        });
        (
            Self {
                rx,
                seen: Vec::new(),
            },
            env,
        )
    }

    /// Wait for a datagram satisfying `pred`; returns it.
    #[track_caller]
    fn expect(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + WAIT;
        loop {
            if let Some(m) = self.seen.iter().find(|m| pred(m)) {
                let m = m.clone();
                self.seen.retain(|x| *x != m);
                return m;
            }
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(m) => self.seen.push(m),
                Err(_) => panic!("no {what} from handoff; got {:?}", self.seen),
            }
        }
    }
}

#[test]
fn systemd_notifications_ready_reloading_watchdog_stopping() {
    let dir = TempDir::new();
    let (mut mgr, addr) = Manager::bind("notify.sock", dir.path());
    let b = handoff();
    let args = b.dir().join("child.args");
    let mut h = b
        .env("NOTIFY_SOCKET", &addr)
        .env("WATCHDOG_USEC", "200000")
        .args([
            "--listen",
            "127.0.0.1:0",
            "--",
            "python3",
            &fixture(),
            "--args-file",
        ])
        .arg(&args)
        .start();
    let p1 = h.ready(1);
    let m = mgr.expect("READY=1", |m| m.lines().any(|l| l == "READY=1"));
    assert!(
        m.contains(&format!("STATUS=serving generation 1 (pid {p1})")),
        "{m}"
    );
    for _ in 0..3 {
        mgr.expect("WATCHDOG=1", |m| m.lines().any(|l| l == "WATCHDOG=1"));
    }
    h.reload();
    let m = mgr.expect("RELOADING=1", |m| m.lines().any(|l| l == "RELOADING=1"));
    let usec = m
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC in the same datagram");
    assert!(usec.parse::<u64>().expect("number") > 0);
    mgr.expect("READY=1 after the reload", |m| {
        m.lines().any(|l| l == "READY=1") && m.contains("generation 2")
    });
    // A failed reload still ends the reload for systemd, and says why.
    std::fs::write(&args, "--exit-before-ready 1").expect("write");
    h.reload();
    let m = mgr.expect("READY=1 after a failed reload", |m| {
        m.contains("STATUS=reload failed")
    });
    assert!(m.lines().any(|l| l == "READY=1"), "{m}");
    h.signal(libc::SIGTERM);
    mgr.expect("STOPPING=1", |m| m.lines().any(|l| l == "STOPPING=1"));
    assert_eq!(h.wait_exit(WAIT), 0);
    let env = h.events("spawned");
    assert!(!env.is_empty());
}

#[test]
fn abstract_notify_socket_of_the_service_manager_works() {
    let dir = TempDir::new();
    let name = format!(
        "@handoff-test-{}-{}",
        std::process::id(),
        dir.path().display().to_string().len()
    );
    let (mut mgr, addr) = Manager::bind(&name, dir.path());
    let h = handoff()
        .env("NOTIFY_SOCKET", &addr)
        .args(["--listen", "127.0.0.1:0", "--", "python3", &fixture()])
        .start();
    h.ready(1);
    mgr.expect("READY=1", |m| m.lines().any(|l| l == "READY=1"));
}

#[test]
#[ignore = "needs root (drops the child's privileges); CI's root stage runs it with --ignored"]
fn child_runs_as_the_requested_user_with_its_groups() {
    assert!(is_root(), "dropping privileges needs root");
    // Debian's python3: a python under /root (pyenv) is not readable by nobody.
    let h = handoff()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--user",
            "nobody",
            "--",
            "/usr/bin/python3",
            &fixture(),
        ])
        .start();
    let pid = h.ready(1); // READY=1 arrived: the child could reach its notify socket as nobody
    let uid = status_field(pid, "Uid");
    assert_eq!(
        uid.split_whitespace().collect::<Vec<_>>(),
        vec!["65534"; 4],
        "Uid: {uid}"
    );
    let gid = status_field(pid, "Gid");
    assert!(gid.split_whitespace().all(|g| g == "65534"), "Gid: {gid}");
    assert_eq!(status_field(pid, "Groups"), "65534");
    assert_eq!(environ(pid).get("USER").map(String::as_str), Some("nobody"));
    // handoff itself is still root, and so could bind privileged ports.
    assert!(status_field(h.pid, "Uid").starts_with('0'));
    assert_eq!(get_json(h.addr(0), "/")["pid"], pid);
}

#[test]
#[ignore = "needs root"]
fn the_notify_directory_stays_handoffs_and_a_child_of_another_user_cannot_change_it() {
    assert!(
        is_root(),
        "this test needs root: run it as root with --ignored"
    );
    let b = handoff();
    let base = b.dir().join("run");
    std::fs::create_dir(&base).expect("mkdir");
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let h = b
        .env("RUNTIME_DIRECTORY", base.to_str().expect("utf8"))
        .args(["--listen", "127.0.0.1:0", "--user", "nobody", "--"])
        .args(["/usr/bin/python3", &fixture()])
        .start();
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(args)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run setpriv")
            .success()
    };
    for gen in [1u64, 2] {
        if gen == 2 {
            h.reload();
        }
        // READY=1 arrived: the child, as nobody, could reach its notify socket.
        let pid = h.ready(gen);
        let sock = environ(pid)
            .get("NOTIFY_SOCKET")
            .cloned()
            .expect("NOTIFY_SOCKET");
        let sock = std::path::PathBuf::from(sock);
        let dir = sock.parent().expect("parent");
        assert_eq!(dir.parent(), Some(base.as_path()));
        let d = std::fs::symlink_metadata(dir).expect("dir");
        assert!(d.is_dir());
        assert_eq!(
            (d.uid(), d.mode() & 0o7777),
            (0, 0o711),
            "notify directory owner and mode"
        );
        let s = std::fs::symlink_metadata(&sock).expect("socket");
        assert!(s.file_type().is_socket());
        assert_eq!((s.uid(), s.mode() & 0o7777), (0, 0o666), "socket");
        // The child's user can only traverse the directory: it cannot swap its socket for a
        // symlink, nor plant, rename or remove anything there.
        let planted = dir.join("planted");
        assert!(!as_nobody(&["touch", planted.to_str().expect("utf8")]));
        assert!(!as_nobody(&[
            "ln",
            "-s",
            "/etc/shadow",
            planted.to_str().expect("utf8")
        ]));
        let moved = dir.join("moved");
        assert!(!as_nobody(&[
            "mv",
            sock.to_str().expect("utf8"),
            moved.to_str().expect("utf8")
        ]));
        assert!(!as_nobody(&["rm", "-f", sock.to_str().expect("utf8")]));
        assert!(std::fs::symlink_metadata(&sock).is_ok(), "socket removed");
        assert!(!planted.exists() && !moved.exists());
    }
}

#[test]
fn unknown_user_is_refused_before_anything_starts() {
    let dir = TempDir::new();
    let marker = dir.path().join("started");
    let out = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--control",
            "none",
            "--user",
            "no-such-user-xyz",
            "--",
            "touch",
        ])
        .arg(&marker)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown user no-such-user-xyz"));
    assert!(!marker.exists());
}

#[test]
fn ready_probe_decides_readiness_for_a_silent_child() {
    let b = handoff();
    let dir = b.dir().to_path_buf();
    let probe = format!(
        "test -e {}/ok-$HANDOFF_GENERATION-$HANDOFF_CHILD_PID",
        dir.display()
    );
    let h = b
        .args([
            "--listen",
            "127.0.0.1:0",
            "--ready-probe",
            &probe,
            "--ready-probe-interval",
            "50ms",
        ])
        .args(["--", "python3", &fixture(), "--no-notify"])
        .start();
    let pid = h.gen_pid(1);
    assert!(
        h.events("ready").is_empty(),
        "not ready before the probe succeeds"
    );
    std::fs::write(dir.join(format!("ok-1-{pid}")), "").expect("write");
    assert_eq!(h.ready(1), pid);
}

#[test]
fn unix_socket_mode() {
    let b = handoff();
    let sock = b.dir().join("app.sock");
    let h = b
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .args(["--socket-mode", "0660"])
        .args(["--ready-after", "10ms", "--", "sleep", "300"])
        .start();
    h.ready(1);
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&sock).expect("socket file");
    assert_eq!(m.mode() & 0o7777, 0o660);
}

#[test]
#[ignore = "needs root (gives the socket to nobody); CI's root stage runs it with --ignored"]
fn unix_socket_owner() {
    assert!(is_root(), "changing a file's owner needs root");
    let b = handoff();
    let sock = b.dir().join("app.sock");
    let h = b
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .args(["--socket-mode", "0660", "--socket-owner", "nobody:nogroup"])
        .args(["--ready-after", "10ms", "--", "sleep", "300"])
        .start();
    h.ready(1);
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&sock).expect("socket file");
    assert_eq!(m.mode() & 0o7777, 0o660);
    assert_eq!((m.uid(), m.gid()), (65534, 65534));
}

#[test]
fn a_burst_of_writes_to_a_watched_file_gives_exactly_one_reload() {
    let b = handoff();
    let conf = b.dir().join("app.conf");
    std::fs::write(&conf, "v1").expect("write");
    let h = b
        .args(["--listen", "127.0.0.1:0", "--watch"])
        .arg(&conf)
        .args(["--watch-debounce", "300ms", "--", "python3", &fixture()])
        .start();
    h.ready(1);
    for i in 0..20 {
        std::fs::write(&conf, format!("v{i}")).expect("write");
    }
    // The way deploys replace files: write elsewhere, rename over.
    let tmp = h.dir.path().join("app.conf.new");
    std::fs::write(&tmp, "final").expect("write");
    std::fs::rename(&tmp, &conf).expect("rename");
    h.wait("reload_finished", &[("gen", 2.into())]);
    // All writes happened well within one debounce period, so they are one reload.
    let (_, out, _) = h.cmd(&["status", "--json"]);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["reloads"], 1, "{v}");
}

/// Host pids of the children of `pid`.
fn is_zombie(pid: u32) -> bool {
    handoff_sys::procfs::stat(pid).is_some_and(|s| s.state == 'Z')
}

#[test]
#[ignore = "needs root (unshare --pid); CI's root stage runs it with --ignored"]
fn as_pid_1_it_reaps_orphans_and_drains_on_sigterm() {
    assert!(
        Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "true"])
            .status()
            .is_ok_and(|s| s.success()),
        "cannot create a PID namespace here (unshare --pid --fork failed): needs root"
    );
    let mut h = handoff_under(&["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--",
            "python3",
            &fixture(),
            "--workers",
            "2",
            "--orphan-workers",
        ])
        .start();
    h.ready(1);
    // handoff is the child of unshare; inside the namespace it is pid 1.
    let mut hpid = 0;
    wait_until("handoff running under unshare", WAIT, || {
        hpid = children_of(h.pid).first().copied().unwrap_or(0);
        hpid != 0
    });
    let st = std::fs::read_to_string(format!("/proc/{hpid}/status")).expect("status");
    let nspid = st.lines().find(|l| l.starts_with("NSpid:")).expect("NSpid");
    assert!(
        nspid.split_whitespace().last() == Some("1"),
        "handoff is pid 1 in its namespace: {nspid}"
    );
    // A reload leaves the old master's workers as orphans of pid 1: they must be reaped.
    // SAFETY: signalling the handoff process this test started.
    unsafe { libc::kill(hpid as i32, libc::SIGHUP) };
    h.wait("drained", &[("gen", 1.into())]);
    wait_until("no zombie under pid 1", WAIT, || {
        children_of(hpid).iter().all(|p| !is_zombie(*p))
    });
    // docker stop: SIGTERM to pid 1 drains and exits 0.
    // SAFETY: signalling the handoff process this test started.
    unsafe { libc::kill(hpid as i32, libc::SIGTERM) };
    assert_eq!(h.wait_exit(WAIT), 0);
    h.wait("drained", &[("gen", 2.into())]);
}

#[test]
fn server_starter_port_is_set_for_start_server_apps() {
    let b = handoff();
    let sock = b.dir().join("s.sock");
    let h = b
        .args(["--listen", "127.0.0.1:0", "--listen"])
        .arg(format!("unix:{}", sock.display()))
        .args(["--ready-after", "10ms", "--", "sleep", "300"])
        .start();
    let pid = h.gen_pid(1);
    let addr = h.addr(0);
    let env = environ(pid);
    assert_eq!(
        env.get("SERVER_STARTER_PORT").map(String::as_str),
        Some(format!("{addr}=3;{}=4", sock.display()).as_str())
    );
    assert_eq!(
        env.get("SERVER_STARTER_GENERATION").map(String::as_str),
        Some("1")
    );
}

#[test]
fn starman_runs_unchanged_and_reloads() {
    let starman = ["/usr/bin/starman", "/usr/local/bin/starman"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let starman =
        starman.expect("starman is not installed (Debian package starman; .ci/setup installs it)");
    let b = handoff();
    let app = b.dir().join("app.psgi");
    std::fs::write(
        &app,
        "sub { my $b = \"{\\\"pid\\\": $$, \\\"gen\\\": $ENV{SERVER_STARTER_GENERATION}}\"; \
         [200, ['Content-Type' => 'application/json', 'Content-Length' => length $b], [$b]] };\n",
    )
    .expect("write app");
    // Starman cannot notify; its graceful stop signal is QUIT.
    let h = b
        .args([
            "--listen",
            "127.0.0.1:0",
            "--ready-after",
            "1500ms",
            "--stop-signal",
            "QUIT",
        ])
        .args(["--", starman, "--workers", "2"])
        .arg(&app)
        .start();
    h.ready(1);
    let addr = h.addr(0);
    assert_eq!(get_json(addr, "/")["gen"], 1);
    h.reload();
    h.wait("reload_finished", &[("gen", 2.into())]);
    // Starman's workers, when told to stop, may close a connection they accepted but had not
    // read yet (a reset); no supervisor can save those. What handoff answers for: nothing is
    // ever refused (the socket is always there), and generation 2 takes over.
    let mut resets = 0;
    wait_until("generation 2 answers", WAIT, || match get(addr, "/") {
        Outcome::Ok { status: 200, body } => {
            serde_json::from_str::<Value>(&body).is_ok_and(|v| v["gen"] == 2)
        }
        Outcome::Reset => {
            resets += 1;
            false
        }
        other => panic!("GET / during the switch-over: {other:?}"),
    });
    h.wait("drained", &[("gen", 1.into())]);
    assert!(
        h.events("listener_restored").is_empty(),
        "Starman broke the shared listener"
    );
    if resets > 0 {
        eprintln!("starman: {resets} connection(s) reset by stopping Starman workers");
    }
}

#[test]
fn status_is_a_probe_and_shows_a_crash_loop_as_such() {
    // Serving: exit 0, with the version and the child's command.
    let h = with_fixture(&[], &[]);
    h.ready(1);
    let (code, out, err) = h.cmd(&["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let st: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(st["state"], "serving");
    assert!(
        st["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{st}"
    );
    assert!(st["command"][0] == "python3", "{st}");
    drop(h);
    // A child that never gets ready: status exits 3 and says why, with the next retry.
    let h = with_fixture(&[], &["--exit-before-ready", "7"]);
    h.wait("restart_scheduled", &[]);
    h.wait("spawned", &[("gen", 2.into())]);
    h.wait_event("a second failure", WAIT, |v| {
        v["event"] == "failed" && v["gen"] == 2
    });
    let (code, out, err) = h.cmd(&["status", "--json"]);
    assert_eq!(code, 3, "nothing serves: {out}{err}");
    let st: Value = serde_json::from_str(&out).expect("json");
    assert!(st["failures_in_row"].as_u64() >= Some(2), "{st}");
    assert!(
        st["last_failure"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("exit status 7")),
        "{st}"
    );
    let (code, text, _) = h.cmd(&["status"]);
    assert_eq!(code, 3);
    assert!(text.contains("failures in a row"), "{text}");
}

#[test]
fn status_watch_follows_a_reload_and_ends_with_handoff() {
    let mut h = with_fixture(&[], &[]);
    h.ready(1);
    let mut watch = Command::new(BIN)
        .args(["status", "--watch"])
        .env("HANDOFF_CONTROL", h.control())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("status --watch");
    let out = watch.stdout.take().expect("stdout");
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().expect("lines").push(l);
            }
        })
    };
    let seen = |needle: &str| {
        lines
            .lock()
            .expect("lines")
            .iter()
            .any(|l| l.contains(needle))
    };
    wait_until("the first line", WAIT, || seen("serving: generations 1"));
    h.reload();
    h.wait("drained", &[("gen", 1.into())]);
    wait_until("a line with generation 2 serving alone", WAIT, || {
        lines
            .lock()
            .expect("lines")
            .iter()
            .any(|l| l.starts_with("serving: generations 2 ") && !l.contains(", "))
    });
    h.signal(libc::SIGTERM);
    assert_eq!(h.wait_exit(WAIT), 0);
    let end = Instant::now() + WAIT;
    let code = loop {
        if let Some(st) = watch.try_wait().expect("wait") {
            break st.code();
        }
        if Instant::now() > end {
            let _ = watch.kill();
            panic!("status --watch did not end with handoff");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    reader.join().expect("reader");
    assert_eq!(code, Some(0), "{:?}", lines.lock().expect("lines"));
}

/// `GET /metrics` on `addr`: the body.
fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut s, &mut out).expect("read");
    let (head, body) = out.split_once("\r\n\r\n").expect("response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// The value of the sample `name` (with its labels) in a scrape.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_follow_reloads_and_generations() {
    let h = fixture_with_args_file(&["--metrics", "127.0.0.1:0", "--ready-timeout", "1s"]);
    let addr = h.wait("metrics", &[])["addr"]
        .as_str()
        .expect("addr")
        .to_string();
    h.ready(1);
    let m = scrape(&addr);
    assert_eq!(sample(&m, "handoff_generation"), Some(1.0), "{m}");
    assert_eq!(
        sample(&m, "handoff_reloads_total{result=\"ok\"}"),
        Some(0.0),
        "{m}"
    );
    h.reload();
    h.wait("drained", &[("gen", 1.into())]);
    // A failing reload too.
    std::fs::write(h.args_file(), "--exit-before-ready 1").expect("write args");
    h.reload();
    h.wait("reload_finished", &[("gen", 3.into())]);
    let m = scrape(&addr);
    assert_eq!(sample(&m, "handoff_generation"), Some(2.0), "{m}");
    assert_eq!(
        sample(&m, "handoff_reloads_total{result=\"ok\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "handoff_reloads_total{result=\"failed\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "handoff_generations{state=\"serving\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(sample(&m, "handoff_ready_seconds_count"), Some(2.0), "{m}");
    assert_eq!(sample(&m, "handoff_drain_seconds_count"), Some(1.0), "{m}");
    assert!(
        sample(&m, "handoff_last_reload_success_timestamp_seconds").is_some_and(|t| t > 1.7e9),
        "{m}"
    );
}

#[test]
fn metrics_never_share_a_port_with_the_child() {
    let out = Command::new(BIN)
        .args([
            "--listen",
            ":18097",
            "--metrics",
            "127.0.0.1:18097",
            "--",
            "true",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("would share a port"));
}

/// A Kubernetes ConfigMap update, as the kubelet's atomic writer does it: a new timestamped
/// directory, `..data` renamed over to point at it, the old directory deleted.
fn configmap_update(dir: &std::path::Path, n: u32, content: &str) {
    let new = dir.join(format!("..2026_{n}"));
    std::fs::create_dir(&new).expect("mkdir");
    std::fs::write(new.join("app.yaml"), content).expect("write");
    let old = std::fs::read_link(dir.join("..data")).expect("..data");
    std::os::unix::fs::symlink(format!("..2026_{n}"), dir.join("..data_tmp")).expect("symlink");
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("rename");
    std::fs::remove_dir_all(dir.join(old)).expect("remove the old version");
}

/// Reloads so far, and no other one started within three debounce periods (an absence can
/// only be observed over a window).
fn settled_reloads(h: &Handoff) -> u64 {
    std::thread::sleep(Duration::from_millis(600));
    let (_, out, _) = h.cmd(&["status", "--json"]);
    let v: Value = serde_json::from_str(&out).expect("json");
    v["reloads"].as_u64().expect("reloads")
}

#[test]
fn a_watched_configmap_file_reloads_once_per_update() {
    // Before: the file was resolved once, into the first timestamped directory, which the
    // first update deletes: one reload, then never again.
    let b = handoff();
    let vol = b.dir().join("config");
    std::fs::create_dir(&vol).expect("mkdir");
    std::fs::create_dir(vol.join("..2026_0")).expect("mkdir");
    std::fs::write(vol.join("..2026_0/app.yaml"), "v0").expect("write");
    std::os::unix::fs::symlink("..2026_0", vol.join("..data")).expect("symlink");
    std::os::unix::fs::symlink("..data/app.yaml", vol.join("app.yaml")).expect("symlink");
    let h = b
        .args(["--listen", "127.0.0.1:0", "--watch"])
        .arg(vol.join("app.yaml"))
        .args(["--watch-debounce", "200ms", "--", "python3", &fixture()])
        .start();
    h.ready(1);
    for n in 1..=3u32 {
        configmap_update(&vol, n, &format!("v{n}"));
        h.wait("reload_finished", &[("gen", (n as u64 + 1).into())]);
        assert_eq!(settled_reloads(&h), n as u64, "one reload per update");
    }
}

#[test]
fn a_path_through_a_flipped_current_symlink_reloads_once_per_deploy() {
    // Before: resolved once to releases/1; flips of `current` were never seen.
    let b = handoff();
    let app = b.dir().join("app");
    for n in 1..=3 {
        let r = app.join(format!("releases/{n}"));
        std::fs::create_dir_all(&r).expect("mkdir");
        std::fs::write(r.join("config.yml"), format!("release {n}")).expect("write");
    }
    std::os::unix::fs::symlink("releases/1", app.join("current")).expect("symlink");
    let h = b
        .args(["--listen", "127.0.0.1:0", "--watch"])
        .arg(app.join("current/config.yml"))
        .args(["--watch-debounce", "200ms", "--", "python3", &fixture()])
        .start();
    h.ready(1);
    for n in 2..=3u64 {
        // `ln -sfn` the atomic way: a new link renamed over the old one.
        std::os::unix::fs::symlink(format!("releases/{n}"), app.join("current.new"))
            .expect("symlink");
        std::fs::rename(app.join("current.new"), app.join("current")).expect("rename");
        h.wait("reload_finished", &[("gen", n.into())]);
        assert_eq!(settled_reloads(&h), n - 1, "one reload per deploy");
    }
}

#[test]
#[ignore = "needs root (bind-mounts a file, as a Kubernetes subPath does)"]
fn a_watched_file_on_a_mount_of_its_own_gets_a_warning() {
    assert_eq!(handoff_sys::euid(), 0, "needs root to mount");
    let b = handoff();
    let src = b.dir().join("configmap-app.yaml");
    let dst = b.dir().join("app.yaml");
    std::fs::write(&src, "v1").expect("write");
    std::fs::write(&dst, "").expect("write");
    let ok = Command::new("mount")
        .arg("--bind")
        .args([&src, &dst])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "mount --bind failed");
    struct Umount(std::path::PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _umount = Umount(dst.clone());
    let h = b
        .args(["--listen", "127.0.0.1:0", "--watch"])
        .arg(&dst)
        .args(["--", "python3", &fixture()])
        .start();
    let w = h.wait("watch_subpath", &[]);
    assert!(
        w["message"].as_str().is_some_and(|m| m.contains("subPath")),
        "{w}"
    );
}

/// Receive one datagram and the fds attached to it (a service manager's fd store).
fn recv_with_fds(sock: &UnixDatagram) -> (String, Vec<std::os::fd::OwnedFd>) {
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut buf = [0u8; 4096];
    let mut cbuf = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid; it then points at live buffers for the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    // SAFETY: msg describes valid buffers.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    assert!(n >= 0, "recvmsg: {}", std::io::Error::last_os_error());
    let mut fds = Vec::new();
    // SAFETY: walking the control data the kernel filled, with the libc macros.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / 4 {
                    let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>().add(i));
                    fds.push(std::os::fd::OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    (
        String::from_utf8_lossy(&buf[..n as usize]).into_owned(),
        fds,
    )
}

#[test]
fn fd_store_always_puts_each_named_listener_in_the_managers_store() {
    let dir = TempDir::new();
    let path = dir.path().join("notify.sock");
    let mgr = UnixDatagram::bind(&path).expect("bind");
    mgr.set_read_timeout(Some(WAIT)).expect("timeout");
    let h = handoff()
        .env("NOTIFY_SOCKET", path.to_str().expect("utf-8"))
        .args([
            "--fd-store",
            "always",
            "--listen",
            "http=127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--",
            "python3",
            &fixture(),
        ])
        .start();
    // The first datagram: the named listener, before anything else is said.
    let (text, fds) = recv_with_fds(&mgr);
    assert_eq!(text, "FDSTORE=1\nFDNAME=http\nFDPOLL=0\n");
    assert_eq!(fds.len(), 1, "one fd attached");
    let stored = socket2::SockRef::from(&fds[0]);
    assert_eq!(
        stored.local_addr().expect("addr").as_socket(),
        Some(h.addr(0)),
        "the stored fd is the listener http"
    );
    assert!(stored.is_listener().expect("SO_ACCEPTCONN"));
    h.wait("fd_stored", &[("names", "http".into())]);
    let unnamed = h.wait("fd_store_unnamed", &[]);
    assert_eq!(unnamed["addr"], h.addr(1).to_string());
    h.ready(1);
    // Without --fd-store (auto) and no FDSTORE= from the manager: nothing is stored.
    let h2 = handoff()
        .env("NOTIFY_SOCKET", path.to_str().expect("utf-8"))
        .args(["--listen", "http=127.0.0.1:0", "--", "python3", &fixture()])
        .start();
    h2.ready(1);
    let (text, fds) = recv_with_fds(&mgr);
    assert!(text.contains("READY=1") && fds.is_empty(), "{text}");
    assert!(h2.events("fd_stored").is_empty());
}
