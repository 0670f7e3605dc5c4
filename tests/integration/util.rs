//! Test helpers: run the real handoff binary, read its JSON log, wait for conditions with
//! deadlines (never fixed sleeps), and clean up every process on drop, even on panic.
#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_handoff");

pub fn fixture() -> String {
    format!("{}/tests/fixtures/child.py", env!("CARGO_MANIFEST_DIR"))
}

/// Default deadline for conditions that should hold quickly.
pub const WAIT: Duration = Duration::from_secs(20);

/// Poll `cond` until it is true or `timeout` passes.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[derive(Default)]
struct Log {
    events: Vec<Value>,
    raw: Vec<String>,
    closed: bool,
}

/// A running handoff, killed with everything it started when dropped.
pub struct Handoff {
    child: Option<Child>,
    log: Arc<(Mutex<Log>, Condvar)>,
    pub pid: u32,
    /// Temporary directory for this test (unix sockets, pid files, args files).
    pub dir: TempDir,
}

pub struct Builder {
    cmd: Command,
    dir: TempDir,
    /// With [`Builder::journal_stream`]: the end of handoff's stderr the test reads.
    journal: Option<std::os::unix::net::UnixStream>,
}

impl Builder {
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.cmd.arg(a.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, it: I) -> Self {
        for a in it {
            self.cmd.arg(a.into());
        }
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.cmd.env(k, v);
        self
    }

    pub fn env_remove(mut self, k: &str) -> Self {
        self.cmd.env_remove(k);
        self
    }

    /// Run `f` in the forked process before handoff is exec'd (to pre-set signal state).
    ///
    /// # Safety
    /// `f` must be async-signal-safe.
    pub unsafe fn pre_exec(
        mut self,
        f: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
    ) -> Self {
        // SAFETY: forwarded to the caller.
        unsafe { self.cmd.pre_exec(f) };
        self
    }

    /// Give handoff a stderr that is a unix stream socket, and `JOURNAL_STREAM` naming its
    /// device and inode, as systemd does when stderr is the journal (systemd.exec(5)).
    pub fn journal_stream(mut self) -> Self {
        use std::os::unix::fs::MetadataExt;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let fd = std::os::fd::OwnedFd::from(theirs);
        let meta = std::fs::File::from(fd.try_clone().expect("dup"))
            .metadata()
            .expect("fstat");
        self.cmd
            .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
            .stderr(Stdio::from(fd));
        self.journal = Some(ours);
        self
    }

    /// The test's temporary directory, before start.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The control socket this handoff will use.
    pub fn control(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    /// Start handoff, read its log until an event satisfies `until`, then close the read end
    /// of its stderr pipe: from then on every log line handoff writes fails (EPIPE). The
    /// returned [`Handoff`] knows the events read so far and reports its log as closed.
    pub fn start_then_close_stderr(mut self, until: impl Fn(&Value) -> bool) -> Handoff {
        self.cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = self.cmd.spawn().expect("start handoff");
        let pid = child.id();
        let stderr = child.stderr.take().expect("stderr");
        let mut log = Log::default();
        let mut r = BufReader::new(stderr);
        let mut line = String::new();
        let found = loop {
            line.clear();
            // Bounded by handoff itself: it writes `until`'s event or exits (EOF).
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break false,
                Ok(_) => {}
            }
            log.raw.push(line.trim_end().to_string());
            if let Ok(v) = serde_json::from_str::<Value>(line.trim()) {
                if v.get("event").is_some() {
                    let done = until(&v);
                    log.events.push(v);
                    if done {
                        break true;
                    }
                }
            }
        };
        drop(r); // the read end of the pipe: closed
        log.closed = true;
        let h = Handoff {
            child: Some(child),
            log: Arc::new((Mutex::new(log), Condvar::new())),
            pid,
            dir: self.dir,
        };
        assert!(
            found,
            "handoff exited before the awaited event; log:\n{}",
            h.raw_log()
        );
        h
    }

    pub fn start(mut self) -> Handoff {
        self.cmd.stdout(Stdio::null()).stdin(Stdio::null());
        if self.journal.is_none() {
            self.cmd.stderr(Stdio::piped());
        }
        let mut child = self.cmd.spawn().expect("start handoff");
        // Our copy of handoff's end goes with the Command: EOF once handoff has exited.
        drop(self.cmd);
        let pid = child.id();
        let stderr: Box<dyn Read + Send> = match self.journal.take() {
            Some(s) => Box::new(s),
            None => Box::new(child.stderr.take().expect("stderr")),
        };
        let log = Arc::new((Mutex::new(Log::default()), Condvar::new()));
        let l2 = log.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let (m, cv) = &*l2;
                let mut g = m.lock().expect("log lock");
                if std::env::var_os("HANDOFF_TEST_ECHO").is_some() {
                    eprint!("{line}");
                }
                g.raw.push(line.trim_end().to_string());
                if let Some(v) = json_event(&line) {
                    g.events.push(v);
                }
                cv.notify_all();
            }
            let (m, cv) = &*l2;
            m.lock().expect("log lock").closed = true;
            cv.notify_all();
        });
        Handoff {
            child: Some(child),
            log,
            pid,
            dir: self.dir,
        }
    }
}

/// handoff with `--log-format json` and the given arguments (`--` and the command included).
pub fn handoff() -> Builder {
    handoff_logging("json")
}

/// handoff with `--log-format FORMAT`; with `text`, only [`Handoff::raw_log`] sees the lines.
pub fn handoff_logging(format: &str) -> Builder {
    let dir = TempDir::new();
    let mut cmd = Command::new(BIN);
    cmd.arg("--log-format").arg(format);
    // Each handoff its own control socket: tests run in parallel.
    cmd.env("HANDOFF_CONTROL", dir.path().join("control.sock"));
    Builder {
        cmd,
        dir,
        journal: None,
    }
}

/// handoff started through another program (`unshare ... handoff`, `systemd-socket-activate
/// ... handoff`): `prefix` comes first, then the handoff binary and `--log-format json`.
pub fn handoff_under(prefix: &[&str]) -> Builder {
    let dir = TempDir::new();
    let mut cmd = Command::new(prefix[0]);
    cmd.args(&prefix[1..])
        .arg(BIN)
        .arg("--log-format")
        .arg("json");
    cmd.env("HANDOFF_CONTROL", dir.path().join("control.sock"));
    Builder {
        cmd,
        dir,
        journal: None,
    }
}

/// handoff on 127.0.0.1:0 running the fixture with `--args-file`: the fixture reads extra
/// arguments from that file at start, so a test can make the *next* generation misbehave
/// while the current one keeps serving. The file is [`Handoff::args_file`].
pub fn fixture_with_args_file(opts: &[&str]) -> Handoff {
    fixture_with_first_args(opts, "")
}

/// [`fixture_with_args_file`] with `first` already in the args file: generation 1 starts
/// with those arguments.
pub fn fixture_with_first_args(opts: &[&str], first: &str) -> Handoff {
    let b = handoff();
    std::fs::write(b.dir().join("child.args"), first).expect("write the args file");
    let args = b.dir().join("child.args");
    b.args(["--listen", "127.0.0.1:0"])
        .args(opts.iter().copied())
        .args(["--", "python3", &fixture(), "--args-file"])
        .arg(args)
        .start()
}

/// handoff (ready) whose child ignores fd 3, with two connections waiting in the listener's
/// queue that nobody will accept (kept open while the returned streams live).
pub fn listener_nobody_accepts_on() -> (Handoff, Vec<TcpStream>) {
    let h = handoff()
        .args(["--listen", "127.0.0.1:0", "--ready-after", "100ms", "--"])
        .args(["python3", "-c", "import time; time.sleep(120)"])
        .start();
    h.ready(1);
    let addr = h.addr(0);
    let waiting = (0..2)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    (h, waiting)
}

/// handoff on 127.0.0.1:0 running the Python fixture with `child_args`.
pub fn with_fixture(opts: &[&str], child_args: &[&str]) -> Handoff {
    handoff()
        .args(["--listen", "127.0.0.1:0"])
        .args(opts.iter().copied())
        .args(["--", "python3", &fixture()])
        .args(child_args.iter().copied())
        .start()
}

impl Handoff {
    /// Wait for a log event satisfying `pred`, at most `timeout`; returns it.
    #[track_caller]
    pub fn wait_event(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let end = Instant::now() + timeout;
        let (m, cv) = &*self.log;
        let mut g = m.lock().expect("log lock");
        loop {
            if let Some(v) = g.events.iter().find(|v| pred(v)) {
                return v.clone();
            }
            let now = Instant::now();
            if now >= end || g.closed {
                let dump = g.raw.join("\n");
                drop(g);
                panic!(
                    "{} waiting for {what}; handoff log:\n{dump}",
                    if now >= end {
                        "timed out"
                    } else {
                        "handoff exited"
                    }
                );
            }
            g = cv.wait_timeout(g, end - now).expect("log lock").0;
        }
    }

    /// Wait for the n-th (1-based) event named `name` with the given field values.
    #[track_caller]
    pub fn wait(&self, name: &str, fields: &[(&str, Value)]) -> Value {
        self.wait_event(&format!("{name} {fields:?}"), WAIT, |v| {
            matches(v, name, fields)
        })
    }

    /// Every event so far with this name.
    pub fn events(&self, name: &str) -> Vec<Value> {
        let (m, _) = &*self.log;
        let g = m.lock().expect("log lock");
        g.events
            .iter()
            .filter(|v| v["event"] == name)
            .cloned()
            .collect()
    }

    pub fn raw_log(&self) -> String {
        let (m, _) = &*self.log;
        m.lock().expect("log lock").raw.join("\n")
    }

    /// The address of listener `index` from the `listening` event.
    pub fn addr(&self, index: u64) -> SocketAddr {
        let v = self.wait("listening", &[("index", index.into())]);
        v["addr"]
            .as_str()
            .expect("addr")
            .parse()
            .expect("socket addr")
    }

    /// Pid of generation `gen` (waits for its `spawned` event).
    pub fn gen_pid(&self, gen: u64) -> u32 {
        let v = self.wait("spawned", &[("gen", gen.into())]);
        v["pid"].as_u64().expect("pid") as u32
    }

    /// Wait until generation `gen` is ready; returns its pid.
    pub fn ready(&self, gen: u64) -> u32 {
        let v = self.wait("ready", &[("gen", gen.into())]);
        v["pid"].as_u64().expect("pid") as u32
    }

    /// The fixture's `--args-file` (see [`fixture_with_args_file`]).
    pub fn args_file(&self) -> PathBuf {
        self.dir.path().join("child.args")
    }

    /// The control socket of this handoff.
    pub fn control(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    /// Run `handoff ARGS` (a subcommand) against this instance; (exit code, stdout, stderr).
    pub fn cmd(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(BIN)
            .args(args)
            .env("HANDOFF_CONTROL", self.control())
            .output()
            .expect("run handoff subcommand");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill of the handoff process we started.
        unsafe { libc::kill(self.pid as i32, sig) };
    }

    pub fn reload(&self) {
        self.signal(libc::SIGHUP);
    }

    /// Wait for handoff to exit; returns its exit code (or 128+signal).
    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let child = self.child.as_mut().expect("running");
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                use std::os::unix::process::ExitStatusExt;
                return st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0));
            }
            if Instant::now() >= end {
                panic!(
                    "handoff did not exit within {timeout:?}; log:\n{}",
                    self.raw_log()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Pids handoff reported spawning.
    pub fn spawned_pids(&self) -> Vec<u32> {
        self.events("spawned")
            .iter()
            .filter_map(|v| v["pid"].as_u64().map(|p| p as u32))
            .collect()
    }
}

/// The syslog priority prefix of a line (`<6>...`, journald's), and the rest.
pub fn priority(line: &str) -> (Option<u8>, &str) {
    let b = line.as_bytes();
    if b.len() >= 3 && b[0] == b'<' && b[1].is_ascii_digit() && b[2] == b'>' {
        (Some(b[1] - b'0'), &line[3..])
    } else {
        (None, line)
    }
}

/// handoff's JSON log line as an event (with `_priority` when it had a journald prefix).
pub fn json_event(line: &str) -> Option<Value> {
    let (prio, body) = priority(line.trim());
    let mut v = serde_json::from_str::<Value>(body).ok()?;
    v.get("event")?;
    if let Some(p) = prio {
        v["_priority"] = p.into();
    }
    Some(v)
}

/// A logfmt line as (key, value) pairs, values unquoted (JSON-style escapes); `None` if it
/// is not logfmt (every token `key=value`, a value quoted when it has spaces, `=` or `"`).
pub fn logfmt(line: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = line.trim_end_matches('\n');
    loop {
        rest = rest.trim_start_matches(' ');
        if rest.is_empty() {
            return Some(out);
        }
        let eq = rest.find('=')?;
        let key = &rest[..eq];
        if key.is_empty() || key.contains([' ', '"']) {
            return None;
        }
        rest = &rest[eq + 1..];
        let value = if rest.starts_with('"') {
            let b = rest.as_bytes();
            let mut i = 1;
            loop {
                match b.get(i)? {
                    b'\\' => i += 2,
                    b'"' => break,
                    _ => i += 1,
                }
            }
            let v = serde_json::from_str::<String>(&rest[..=i]).ok()?;
            rest = &rest[i + 1..];
            if !(rest.is_empty() || rest.starts_with(' ')) {
                return None;
            }
            v
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            let v = &rest[..end];
            if v.is_empty() || v.contains(['"', '=']) {
                return None;
            }
            rest = &rest[end..];
            v.to_string()
        };
        out.push((key.to_string(), value));
    }
}

pub fn matches(v: &Value, name: &str, fields: &[(&str, Value)]) -> bool {
    v["event"] == name && fields.iter().all(|(k, want)| &v[*k] == want)
}

impl Drop for Handoff {
    fn drop(&mut self) {
        // Freeze handoff first (if it is still ours to signal): its generations then stay
        // alive, none is restarted, and each generation's process group can be killed while
        // its leader still holds the group id. Killing handoff first let PR_SET_PDEATHSIG
        // end a leader (`sh -c`) before its group was killed, and its grandchild lived on.
        if self.child.is_some() {
            // SAFETY: our own child, not yet waited for.
            unsafe { libc::kill(self.pid as i32, libc::SIGSTOP) };
        }
        let mut pids = self.spawned_pids();
        // Generations whose `spawned` line the test did not read (a closed log) too.
        pids.extend(children_of(self.pid));
        for pid in pids {
            if alive(pid) {
                // SAFETY: signalling processes this test started (through handoff), by group
                // while the leader is alive, then by pid.
                unsafe {
                    libc::kill(-(pid as i32), libc::SIGKILL);
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    handoff_sys::procfs::is_running(pid)
}

/// The direct children of `pid` (every thread's).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

/// CPU time `pid` has used so far (user + system), in seconds, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> f64 {
    let st = handoff_sys::procfs::stat(pid).expect("read stat");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (st.utime + st.stime) as f64 / hz
}

/// CPU time `pid` uses during the next `window` (a measurement, not a synchronisation).
pub fn cpu_used_during(pid: u32, window: Duration) -> f64 {
    let before = cpu_seconds(pid);
    std::thread::sleep(window);
    cpu_seconds(pid) - before
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A helper process killed (and reaped) when dropped, even on panic.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run `cmd` to completion, killing it if it takes longer than `timeout` (then panics).
#[track_caller]
pub fn output_within(cmd: &mut Command, timeout: Duration) -> (i32, String, String) {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut guard = KillOnDrop(child);
    let read = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = read(
        guard
            .0
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = read(
        guard
            .0
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let end = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = guard.0.try_wait().expect("try_wait") {
            break st;
        }
        assert!(
            Instant::now() < end,
            "{cmd:?} did not finish within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    (
        status.code().unwrap_or(-1),
        out.join().expect("stdout reader"),
        err.join().expect("stderr reader"),
    )
}

/// Every pid whose process group is `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(d) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| handoff_sys::procfs::stat(p).is_some_and(|s| s.pgrp == pgid))
        .collect()
}

/// /proc/PID/environ as a map. handoff logs a spawn once the kernel has switched the child
/// to its new program, a moment before the new environment block is set up (it reads empty
/// then): wait for it to appear. Every child handoff starts has an environment.
pub fn environ(pid: u32) -> HashMap<String, String> {
    let mut raw = Vec::new();
    wait_until("the child's environment", WAIT, || {
        raw = std::fs::read(format!("/proc/{pid}/environ")).expect("read environ");
        !raw.is_empty()
    });
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let s = String::from_utf8_lossy(kv);
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// A field of /proc/PID/status, e.g. "SigBlk".
pub fn status_field(pid: u32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    s.lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// Open fds of `pid` with their link targets.
pub fn fds(pid: u32) -> Vec<(i32, String)> {
    let mut v: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read fd dir")
        .filter_map(|e| {
            let e = e.ok()?;
            let n = e.file_name().to_str()?.parse().ok()?;
            let t = std::fs::read_link(e.path()).ok()?;
            Some((n, t.display().to_string()))
        })
        .collect();
    v.sort();
    v
}

/// Outcome of one HTTP request.
#[derive(Debug)]
pub enum Outcome {
    Ok { status: u16, body: String },
    Refused,
    Reset,
    Timeout,
    Other(String),
}

fn classify(e: &std::io::Error) -> Outcome {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => Outcome::Refused,
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => Outcome::Reset,
        WouldBlock | TimedOut => Outcome::Timeout,
        _ => Outcome::Other(e.to_string()),
    }
}

/// One HTTP/1.1 request on a new connection.
pub fn get(addr: SocketAddr, path: &str) -> Outcome {
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
        Ok(s) => s,
        Err(e) => return classify(&e),
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    if let Err(e) = s.write_all(req.as_bytes()) {
        return classify(&e);
    }
    let mut buf = Vec::new();
    if let Err(e) = s.read_to_end(&mut buf) {
        return classify(&e);
    }
    parse_response(&buf).unwrap_or(Outcome::Reset)
}

fn parse_response(buf: &[u8]) -> Option<Outcome> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(Outcome::Ok {
        status,
        body: body.to_string(),
    })
}

/// `GET path` expecting 200; returns the JSON body.
#[track_caller]
pub fn get_json(addr: SocketAddr, path: &str) -> Value {
    match get(addr, path) {
        Outcome::Ok { status: 200, body } => serde_json::from_str(&body).expect("json body"),
        other => panic!("GET {path}: {other:?}"),
    }
}

/// A keep-alive HTTP/1.1 client that reconnects when the server closes the connection.
pub struct KeepAlive {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl KeepAlive {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, conn: None }
    }

    /// One request. A request on a *reused* connection that the server had already closed
    /// (no byte of response) is retried once on a new connection, as every HTTP client does;
    /// the second bool tells whether that happened.
    pub fn get(&mut self, path: &str) -> (Outcome, bool) {
        let reused = self.conn.is_some();
        match self.try_get(path) {
            Err((e, got_bytes)) if reused && !got_bytes => {
                self.conn = None;
                let _ = e;
                (
                    self.try_get(path).unwrap_or_else(|(e, _)| classify(&e)),
                    true,
                )
            }
            Err((e, _)) => {
                self.conn = None;
                (classify(&e), false)
            }
            Ok(o) => (o, false),
        }
    }

    fn try_get(&mut self, path: &str) -> Result<Outcome, (std::io::Error, bool)> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(10))
                .map_err(|e| (e, false))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))
                .map_err(|e| (e, false))?;
            self.conn = Some(BufReader::new(s));
        }
        let r = self.conn.as_mut().expect("conn");
        let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
        r.get_mut()
            .write_all(req.as_bytes())
            .map_err(|e| (e, false))?;
        let mut line = String::new();
        let n = r.read_line(&mut line).map_err(|e| (e, false))?;
        if n == 0 {
            return Err((std::io::ErrorKind::UnexpectedEof.into(), false));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                (
                    std::io::Error::other(format!("bad status line {line:?}")),
                    true,
                )
            })?;
        let mut len = 0usize;
        let mut close = false;
        loop {
            let mut h = String::new();
            r.read_line(&mut h).map_err(|e| (e, true))?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).map_err(|e| (e, true))?;
        if close {
            self.conn = None;
        }
        Ok(Outcome::Ok {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "handoff-test.{}.{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- load during reloads ----------------------------------------------------------------

/// What the load clients saw.
#[derive(Default, Debug)]
pub struct Tally {
    pub ok: u64,
    pub failed: Vec<String>,
    pub retried_keepalive: u64,
    pub gens: BTreeSet<u64>,
}

fn record(t: &Mutex<Tally>, client: &str, o: Outcome, gen_of: fn(&str) -> Option<u64>) {
    let mut t = t.lock().expect("tally");
    match o {
        Outcome::Ok { status: 200, body } => {
            t.ok += 1;
            match gen_of(&body) {
                Some(g) => {
                    t.gens.insert(g);
                }
                None => t.failed.push(format!("no generation in body {body:?}")),
            }
        }
        other => t.failed.push(format!("{client}: {other:?}")),
    }
}

/// Two clients sending requests until dropped (and at most for 90 s).
pub struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    clients: Vec<JoinHandle<()>>,
}

impl Load {
    /// `gen_of` reads the generation out of a response body.
    pub fn start(addr: SocketAddr, gen_of: fn(&str) -> Option<u64>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let hard_stop = Instant::now() + Duration::from_secs(90);
        let running = {
            let stop = stop.clone();
            move || !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop
        };
        let mut clients = Vec::new();
        {
            let (running, tally) = (running.clone(), tally.clone());
            clients.push(std::thread::spawn(move || {
                let mut c = KeepAlive::new(addr);
                while running() {
                    let (o, retried) = c.get("/");
                    if retried {
                        tally.lock().expect("tally").retried_keepalive += 1;
                    }
                    record(&tally, "keep-alive", o, gen_of);
                }
            }));
        }
        {
            let tally = tally.clone();
            clients.push(std::thread::spawn(move || {
                while running() {
                    record(&tally, "new connection", get(addr, "/"), gen_of);
                }
            }));
        }
        Load {
            stop,
            tally,
            clients,
        }
    }

    /// Whether some response came from generation `gen`.
    pub fn answered(&self, gen: u64) -> bool {
        self.tally.lock().expect("tally").gens.contains(&gen)
    }

    /// Stops the clients and returns what they saw.
    pub fn finish(mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients.drain(..) {
            c.join().expect("client thread");
        }
        std::mem::take(&mut *self.tally.lock().expect("tally"))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // Also on a failed assertion: the clients stop at their next request.
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Tally {
    /// Print a summary line, then assert that no request failed and that at least `min_ok`
    /// succeeded (fewer would not mean anything).
    #[track_caller]
    pub fn assert_no_failures(&self, label: &str, min_ok: u64) {
        eprintln!(
            "{label}: {} ok, {} failed, {} keep-alive retries, generations {:?}",
            self.ok,
            self.failed.len(),
            self.retried_keepalive,
            self.gens
        );
        assert!(
            self.failed.is_empty(),
            "failed requests: {:?}",
            &self.failed[..self.failed.len().min(10)]
        );
        assert!(
            self.ok >= min_ok,
            "too few requests to mean anything: {}",
            self.ok
        );
    }
}

/// The generation in a fixture's JSON body (`{"gen": N, ...}`).
pub fn json_gen(body: &str) -> Option<u64> {
    serde_json::from_str::<Value>(body).ok()?["gen"].as_u64()
}
