//! Bad input: one clear line on stderr, a non-zero status, and nothing started.

use std::process::Command;

use crate::util::*;

/// Run handoff to completion; returns (exit code, stderr). The command it would run creates
/// a marker file, which must never appear.
fn run_bad(args: &[&str]) -> (i32, String, TempDir) {
    let dir = TempDir::new();
    let marker = dir.path().join("started");
    let out = Command::new(BIN)
        .args(args)
        .arg("--")
        .args(["touch", marker.to_str().expect("utf8")])
        .output()
        .expect("run handoff");
    assert!(!marker.exists(), "the child was started despite bad input");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), stderr, dir)
}

#[track_caller]
fn one_line(stderr: &str, needle: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{stderr}");
    assert!(
        lines[0].contains(needle),
        "{needle:?} not in {:?}",
        lines[0]
    );
}

#[test]
fn bad_listen_address() {
    let (code, err, _d) = run_bad(&["--listen", "127.0.0.1"]);
    assert_eq!(code, 2);
    one_line(&err, "127.0.0.1");
    let (code, err, _d) = run_bad(&["--listen", "::1:8080"]);
    assert_eq!(code, 2);
    one_line(&err, "bracket");
}

#[test]
fn bad_duration_and_signal() {
    let (code, err, _d) = run_bad(&["--listen", "127.0.0.1:0", "--drain-timeout", "soon"]);
    assert_eq!(code, 2);
    one_line(&err, "soon");
    let (code, err, _d) = run_bad(&["--listen", "127.0.0.1:0", "--stop-signal", "SIGFOO"]);
    assert_eq!(code, 2);
    one_line(&err, "FOO");
    let (code, err, _d) = run_bad(&["--listen", "127.0.0.1:0", "--stop-signal", "KILL"]);
    assert_eq!(code, 2);
    one_line(&err, "SIGKILL");
}

#[test]
fn missing_command() {
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    one_line(&String::from_utf8_lossy(&out.stderr), "COMMAND");
}

#[test]
fn command_not_found() {
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--", "no-such-program-xyz"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    one_line(
        &String::from_utf8_lossy(&out.stderr),
        "command not found: no-such-program-xyz",
    );
}

#[test]
fn port_in_use_names_the_address_and_leaves_no_socket_file() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = TempDir::new();
    let sock = dir.path().join("first.sock");
    let (code, err, _d) = run_bad(&[
        "--listen",
        &format!("unix:{}", sock.display()),
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]);
    assert_eq!(code, 1);
    one_line(&err, &format!("127.0.0.1:{port}: address already in use"));
    assert!(
        !sock.exists(),
        "the unix socket bound before the failure must be removed"
    );
}

#[test]
#[ignore = "needs root (runs handoff as nobody via setpriv); CI's root stage runs it with --ignored"]
fn privileged_port_says_why() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "needs root to run handoff as a user that may not bind port 1"
    );
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "--listen",
            "127.0.0.1:1",
            "--",
            "true",
        ])
        .output()
        .expect("setpriv (util-linux) runs");
    assert_eq!(out.status.code(), Some(1));
    one_line(&String::from_utf8_lossy(&out.stderr), "privileged");
}

#[test]
fn help_and_version_work() {
    let out = Command::new(BIN).arg("--help").output().expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--listen"));
    let out = Command::new(BIN).arg("--version").output().expect("run");
    assert!(out.status.success());
}

#[test]
fn a_runtime_directory_too_long_for_later_notify_sockets_is_refused_at_start() {
    // Long enough for generation 1's notify socket (…/handoff.PID.N/notify-1.sock), too long
    // for generation 18446744073709551615's: handoff must not fail only at some late reload.
    let dir = TempDir::new();
    let pad = 70usize
        .checked_sub(dir.path().as_os_str().len() + 1)
        .expect("temporary directory path too long for this test");
    let base = dir.path().join("x".repeat(pad));
    std::fs::create_dir(&base).expect("mkdir");
    assert_eq!(base.as_os_str().len(), 70);
    let marker = dir.path().join("started");
    let out = Command::new(BIN)
        .env("RUNTIME_DIRECTORY", &base)
        .env("XDG_RUNTIME_DIR", &base)
        .args(["--restart", "never", "--control", "none", "--"])
        .args(["touch", marker.to_str().expect("utf8")])
        .output()
        .expect("run handoff");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!marker.exists(), "the child was started: {err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    one_line(&err, "too long");
    one_line(&err, base.to_str().expect("utf8"));
    assert!(
        std::fs::read_dir(&base).expect("read").next().is_none(),
        "a runtime directory was left behind"
    );
}

#[test]
fn an_address_given_twice_says_so() {
    // It used to say "another process listens there".
    let (code, err, _d) = run_bad(&["--listen", "127.0.0.1:18091", "--listen", "127.0.0.1:18091"]);
    assert_eq!(code, 2);
    one_line(&err, "--listen 127.0.0.1:18091 is given twice");
}

#[test]
fn a_too_long_control_path_is_explained_like_a_listener_path() {
    // It used to say "path must be shorter than SUN_LEN", from deep inside std.
    let long = format!("/tmp/{}.sock", "c".repeat(120));
    let (code, err, _d) = run_bad(&["--listen", "127.0.0.1:0", "--control", &long]);
    assert_eq!(code, 2);
    one_line(&err, "control socket path is 130 bytes, the limit is 107");
}

#[test]
fn a_script_whose_interpreter_is_missing_names_the_interpreter() {
    // exec fails with ENOENT, which used to read "No such file or directory" about the script.
    let dir = TempDir::new();
    let script = dir.path().join("server.py");
    std::fs::write(&script, "#!/nonexistent/bin/python3\nprint('hi')\n").expect("write");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--"])
        .arg(&script)
        .output()
        .expect("run handoff");
    assert_eq!(out.status.code(), Some(1));
    one_line(
        &String::from_utf8_lossy(&out.stderr),
        "its interpreter /nonexistent/bin/python3 (named on its #! line) is missing",
    );
}

/// Run handoff with exactly `args` (no command appended); (exit code, stderr).
fn run_args(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().expect("run handoff");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn a_misspelt_option_keeps_clap_s_suggestion() {
    let (code, err) = run_args(&["--listn", "127.0.0.1:0", "--", "true"]);
    assert_eq!(code, 2);
    one_line(&err, "a similar argument exists: '--listen'");
    let (code, err) = run_args(&["status", "--jsn"]);
    assert_eq!(code, 2);
    one_line(&err, "a similar argument exists: '--json'");
    let (code, err) = run_args(&["relod"]);
    assert_eq!(code, 2);
    one_line(&err, "a similar subcommand exists: 'reload'");
}

#[test]
fn a_command_without_dashes_says_to_put_them() {
    let dir = TempDir::new();
    let marker = dir.path().join("started");
    let m = marker.to_str().expect("utf8");
    let (code, err) = run_args(&["-l", "127.0.0.1:0", "touch", m]);
    assert_eq!(code, 2);
    one_line(
        &err,
        &format!("put -- before the server's command: handoff -l 127.0.0.1:0 -- touch {m}"),
    );
    let (code, err) = run_args(&["./server"]);
    assert_eq!(code, 2);
    one_line(
        &err,
        "put -- before the server's command: handoff -- ./server",
    );
    assert!(!marker.exists(), "nothing started");
}

#[test]
fn man_pages_for_every_subcommand() {
    let out = Command::new(BIN)
        .args(["man", "reload"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH handoff-reload 1"), "{page}");
    let (code, err) = run_args(&["man", "nope"]);
    assert_eq!(code, 2);
    one_line(&err, "no man page for \"nope\"");
    let dir = TempDir::new();
    let out = Command::new(BIN)
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    for p in [
        "handoff.1",
        "handoff-reload.1",
        "handoff-status.1",
        "handoff-stop.1",
        "handoff-completions.1",
    ] {
        let text =
            std::fs::read_to_string(dir.path().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert!(text.contains(".SH NAME"), "{p}");
    }
}
