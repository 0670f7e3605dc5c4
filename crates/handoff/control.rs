//! The control socket: `handoff reload | status | stop` talk to a running handoff over a unix
//! stream socket with a small line-delimited JSON protocol.
//!
//! Protocol version 1. The client sends one line, `{"v":1,"cmd":"reload","wait":true}`; the
//! server answers with one line, `{"v":1,"ok":true,...}` or `{"v":1,"ok":false,"error":"..."}`.
//! `stop` answers at once, then keeps the connection open until handoff exits, so the client
//! can wait for the end. Requests longer than [`MAX_REQUEST`] or malformed get an error reply.
//!
//! Who may connect: the same uid as handoff, or root (checked with SO_PEERCRED right after
//! accept(), before anything is read); the socket file is mode 0600 as well. Anyone else gets
//! one error line, written without waiting for its request, and is disconnected at once.
//! At most [`MAX_CONNECTIONS`] connections are served at once; more are answered the same
//! way. A client has [`REQUEST_TIMEOUT`] to send its request. When accept() itself fails
//! (out of fds or memory) handoff waits before the next attempt instead of spinning.
//!
//! Every handoff also listens on the abstract address `@handoff-control-PID`, which is how
//! `--pid-file` finds it without knowing the path it was started with. Anyone can bind an
//! abstract name or a free path, so the client checks who answers (SO_PEERCRED again): root or
//! its own uid, and with `--pid-file` the pid in the file.

use std::io::{self, BufRead, BufReader, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{SocketAddr, UnixListener as StdListener, UnixStream as StdStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use handoff_sys::peer::{peer_cred, PeerCred};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

/// Protocol version spoken by this build.
pub const VERSION: u32 = 1;
/// Longest request line accepted.
pub const MAX_REQUEST: usize = 4096;
/// Most control connections served at once, over all control sockets: requests being read,
/// `reload` clients waiting for the outcome, `stop` clients waiting for the exit.
pub const MAX_CONNECTIONS: usize = 32;
/// Time a client has to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed accept(), doubled after each further failure up to the second value.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(1));

const DENIED: &str = "permission denied: only the user running handoff, or root, may control it";
const TOO_MANY: &str = "too many control connections at once; try again later";

/// A client request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Request {
    pub v: u32,
    pub cmd: Command,
    /// For `reload`: answer when the outcome is known (default), or at once.
    #[serde(default = "yes")]
    pub wait: bool,
    /// For `stop`: kill every generation now instead of letting them drain.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// For `upgrade`: the handoff binary to exec (absolute); by default the one handoff was
    /// started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    Reload,
    /// A reload that always starts a new generation (`handoff restart`).
    Restart,
    Status,
    Stop,
    /// Exec a new handoff binary under the same pid, children untouched (`handoff upgrade`).
    Upgrade,
}

/// Parse one request line; the error is the reply's text.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    if line.len() > MAX_REQUEST {
        return Err(format!("request too long (limit {MAX_REQUEST} bytes)"));
    }
    let req: Request =
        serde_json::from_slice(line).map_err(|e| format!("malformed request: {e}"))?;
    if req.v != VERSION {
        return Err(format!(
            "unsupported protocol version {} (this handoff speaks {VERSION})",
            req.v
        ));
    }
    Ok(req)
}

/// An error reply line.
pub fn error_reply(msg: &str) -> String {
    serde_json::json!({ "v": VERSION, "ok": false, "error": msg }).to_string()
}

/// A request on its way to the event loop, with where to send the answer lines. The
/// connection is closed once the event loop drops `reply` (after the final answer).
pub struct Incoming {
    pub req: Request,
    pub reply: mpsc::UnboundedSender<String>,
    /// A duplicate of the connection's fd: `handoff upgrade` carries it across the exec, so
    /// that the new image answers a request the old one could not (the upgrade itself, a
    /// `reload` waiting for its outcome, a `stop` waiting for the exit).
    pub conn: Option<std::os::fd::OwnedFd>,
}

/// The address a `--pid-file` client derives from the pid.
pub fn abstract_addr(pid: u32) -> io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(format!("handoff-control-{pid}").as_bytes())
}

/// Where the control socket is when `--control` is not given: `$RUNTIME_DIRECTORY` (systemd's
/// `RuntimeDirectory=`), else `$XDG_RUNTIME_DIR`, else `/run` for root, else `/tmp`.
pub fn default_path() -> PathBuf {
    let dir = std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|d| {
            d.to_str()
                .and_then(|s| s.split(':').next())
                .map(PathBuf::from)
        })
        .or_else(|| std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from));
    let uid = handoff_sys::euid();
    match dir {
        Some(d) => d.join("handoff.sock"),
        None if uid == 0 => PathBuf::from("/run/handoff.sock"),
        None => PathBuf::from(format!("/tmp/handoff-{uid}.sock")),
    }
}

/// A control socket file handoff created, removed when dropped if it is still the same file.
pub struct SocketFile {
    path: PathBuf,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether a live server answers at `path`; if so, who (None: it cannot be told).
fn in_use(path: &Path) -> Option<Option<PeerCred>> {
    StdStream::connect(path).ok().map(|s| peer_cred(&s).ok())
}

/// Bind the control socket at `path` (mode 0600). A stale file is replaced; a live one is an
/// error naming the path.
pub fn bind_path(path: &Path) -> Result<(StdListener, SocketFile), String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(format!(
                "cannot use control socket {}: the path exists and is not a socket",
                path.display()
            ))
        }
        Ok(_) => match in_use(path) {
            Some(owner) => {
                let who = match owner {
                    Some(c) => format!("owned by uid {} (pid {})", c.uid, c.pid),
                    None => "owned by an unknown process".into(),
                };
                return Err(format!(
                    "control socket {} is in use, {who}; give this one its own --control PATH",
                    path.display()
                ));
            }
            None => {
                let _ = std::fs::remove_file(path);
            }
        },
        Err(_) => {}
    }
    // Mode 0600 from the start: no window in which another user could connect, and no
    // chmod by path afterwards (which would follow a symlink swapped in meanwhile).
    let l = handoff_sys::with_umask(0o177, || StdListener::bind(path))
        .map_err(|e| format!("cannot create control socket {}: {e}", path.display()))?;
    let ino = std::fs::symlink_metadata(path)
        .map(|m| m.ino())
        .unwrap_or(0);
    Ok((
        l,
        SocketFile {
            path: path.to_path_buf(),
            ino,
        },
    ))
}

/// Bind this process's abstract control address.
pub fn bind_abstract() -> io::Result<StdListener> {
    StdListener::bind_addr(&abstract_addr(std::process::id())?)
}

/// Connections being served now (see [`MAX_CONNECTIONS`]).
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// One of the [`MAX_CONNECTIONS`] places, given back when dropped.
struct Slot;

impl Slot {
    fn take() -> Option<Slot> {
        ACTIVE
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < MAX_CONNECTIONS).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accept connections on `listener` forever, handing requests to `tx`. Every connection task
/// holds a clone of `alive` until it has written its last answer, so that handoff can wait
/// at exit for the final answers (`stop`'s exit code) to be written.
pub async fn serve(
    listener: StdListener,
    tx: mpsc::UnboundedSender<Incoming>,
    alive: mpsc::Sender<()>,
) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    let Ok(listener) = UnixListener::from_std(listener) else {
        return;
    };
    let me = handoff_sys::euid();
    let mut backoff: Option<Duration> = None;
    let mut failures: u64 = 0;
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => {
                backoff = None;
                s
            }
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS, ENOMEM: the pending connection stays queued and the
                // listener readable, so trying again at once would spin at 100 % CPU.
                let d = backoff.map_or(ACCEPT_BACKOFF.0, |d| (d * 2).min(ACCEPT_BACKOFF.1));
                backoff = Some(d);
                failures += 1;
                if failures <= 3 || failures.is_power_of_two() {
                    tracing::warn!(
                        event = "control_accept_error",
                        count = failures,
                        error = %e,
                        retry_ms = d.as_millis() as u64,
                        msg = "cannot accept a control connection",
                        "cannot accept a control connection: {e}; next attempt in {} ms",
                        d.as_millis()
                    );
                }
                tokio::time::sleep(d).await;
                continue;
            }
        };
        // Who it is, before reading anything: a stranger costs one write and one close.
        let allowed = stream
            .peer_cred()
            .is_ok_and(|c| c.uid() == me || c.uid() == 0);
        if !allowed {
            refuse(stream, DENIED);
            continue;
        }
        match Slot::take() {
            Some(slot) => {
                tokio::spawn(connection(stream, slot, tx.clone(), alive.clone()));
            }
            None => refuse(stream, TOO_MANY),
        }
    }
}

/// Answer with one error line, without waiting for the request or for the client to read,
/// then close. If the client already sent its request, it still reads this line first (and
/// then a reset instead of EOF); if it writes after the close, its write fails (EPIPE) and it
/// can still read the line.
fn refuse(stream: UnixStream, why: &str) {
    // A plain write(2) on the (still non-blocking) socket: tokio's `try_write` would skip the
    // write unless the reactor already saw the socket writable, which an older tokio does not
    // assume for a freshly accepted socket.
    if let Ok(s) = stream.into_std() {
        let _ = (&s).write(format!("{}\n", error_reply(why)).as_bytes());
    }
}

async fn connection(
    mut stream: UnixStream,
    _slot: Slot,
    tx: mpsc::UnboundedSender<Incoming>,
    _alive: mpsc::Sender<()>,
) {
    let (rd, mut wr) = stream.split();
    // Bounded read: at most MAX_REQUEST + 1 bytes, within REQUEST_TIMEOUT.
    let mut rd =
        tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(rd, MAX_REQUEST as u64 + 1));
    let mut line = Vec::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, rd.read_until(b'\n', &mut line)).await;
    let reply = match read {
        Err(_) => Some(error_reply("timed out waiting for a request")),
        Ok(Err(e)) => Some(error_reply(&format!("read error: {e}"))),
        Ok(Ok(_)) => {
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            match parse_request(&line) {
                Err(e) => Some(error_reply(&e)),
                Ok(req) => {
                    let (otx, mut orx) = mpsc::unbounded_channel();
                    // Once there is a request to answer (not for idle connections).
                    let conn = std::os::fd::AsFd::as_fd(AsRef::<UnixStream>::as_ref(&wr))
                        .try_clone_to_owned()
                        .ok();
                    let inc = Incoming {
                        req,
                        reply: otx,
                        conn,
                    };
                    if tx.send(inc).is_err() {
                        Some(error_reply("handoff is exiting"))
                    } else {
                        // Every answer line until the event loop is done with the request
                        // (`stop` gets two: "stopping" now, how it ended at exit).
                        while let Some(r) = orx.recv().await {
                            if wr.write_all(format!("{r}\n").as_bytes()).await.is_err() {
                                break;
                            }
                        }
                        None
                    }
                }
            }
        }
    };
    if let Some(r) = reply {
        let _ = wr.write_all(format!("{r}\n").as_bytes()).await;
    }
}

/// Answer lines for a connection an earlier image of this process accepted (`handoff
/// upgrade` carried its fd across the exec): each line sent is written to it; it is closed
/// once the sender is dropped. Holds `alive` until then, as a connection task does.
pub fn resume(fd: std::os::fd::OwnedFd, alive: mpsc::Sender<()>) -> mpsc::UnboundedSender<String> {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let _alive = alive;
        let std = StdStream::from(fd);
        if std.set_nonblocking(true).is_err() {
            return;
        }
        let Ok(mut stream) = UnixStream::from_std(std) else {
            return;
        };
        while let Some(r) = rx.recv().await {
            if stream.write_all(format!("{r}\n").as_bytes()).await.is_err() {
                break;
            }
        }
    });
    tx
}

impl SocketFile {
    /// Its path and inode, for `handoff upgrade` to carry.
    pub fn export(&self) -> (PathBuf, u64) {
        (self.path.clone(), self.ino)
    }

    /// The control socket file an earlier image of this process created.
    pub fn adopt(path: PathBuf, ino: u64) -> Self {
        Self { path, ino }
    }
}

// ---- client side (handoff reload | status | stop) ---------------------------------------

/// Where a subcommand finds the running handoff.
pub enum Target {
    Path(PathBuf),
    Pid(u32, PathBuf),
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Self::Path(p) => format!("control socket {}", p.display()),
            Self::Pid(pid, f) => format!("pid {pid} (from {})", f.display()),
        }
    }

    /// The address, for messages about whoever listens there.
    fn address(&self) -> String {
        match self {
            Self::Path(p) => format!("control socket {}", p.display()),
            Self::Pid(pid, f) => format!(
                "control address @handoff-control-{pid} (pid file {})",
                f.display()
            ),
        }
    }

    /// Connect, and make sure the real handoff answers: the listening process is root or
    /// this user (SO_PEERCRED), and with `--pid-file` it is the pid in the file. Anyone can
    /// bind a free path or an abstract name; a squatter must not learn our request, nor make
    /// us report a reload that never happened.
    fn connect(&self) -> Result<StdStream, String> {
        let s = self.connect_raw()?;
        let c =
            peer_cred(&s).map_err(|e| format!("cannot tell who serves {}: {e}", self.address()))?;
        let me = handoff_sys::euid();
        if c.uid != 0 && c.uid != me {
            return Err(format!(
                "{} is served by uid {} (pid {}), not by root or uid {me}; refusing to talk to it",
                self.address(),
                c.uid,
                c.pid
            ));
        }
        if let Self::Pid(pid, f) = self {
            if c.pid != *pid {
                return Err(format!(
                    "{} is served by pid {} (uid {}), not by pid {pid} from {}; refusing to talk to it",
                    self.address(),
                    c.pid,
                    c.uid,
                    f.display()
                ));
            }
        }
        Ok(s)
    }

    fn connect_raw(&self) -> Result<StdStream, String> {
        let res = match self {
            Self::Path(p) => StdStream::connect(p),
            Self::Pid(pid, _) => abstract_addr(*pid).and_then(|a| StdStream::connect_addr(&a)),
        };
        res.map_err(|e| {
            let why = match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ECONNREFUSED) => {
                    "nothing is listening there".to_string()
                }
                Some(libc::EACCES) => "permission denied".to_string(),
                _ => e.to_string(),
            };
            format!("no handoff is running at {} ({why})", self.describe())
        })
    }
}

/// Read a pid file written by `--pid-file`.
pub fn read_pid_file(path: &Path) -> Result<u32, String> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read pid file {}: {e}", path.display()))?;
    s.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .filter(|&p: &u32| p > 0)
        .ok_or_else(|| format!("pid file {} does not hold a pid", path.display()))
}

/// Send `req`; return the reply, parsed. With `until_eof`, also wait for the server to close
/// the connection (it does so when it is done with the request: for `stop`, at exit), and
/// return the last answer line it sent before that, if it sent a second one.
pub fn call(
    target: &Target,
    req: &Request,
    timeout: Option<Duration>,
    until_eof: bool,
) -> Result<(serde_json::Value, Option<serde_json::Value>), String> {
    let mut s = target.connect()?;
    s.set_read_timeout(timeout).map_err(|e| e.to_string())?;
    let line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    // If the write fails, the server may still have explained why (e.g. permission denied).
    let sent = s.write_all(format!("{line}\n").as_bytes());
    let mut r = BufReader::new(s);
    let mut answer = String::new();
    let timed_out = |e: io::Error| {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            "timed out waiting for handoff's answer".to_string()
        } else {
            format!("connection to handoff failed: {e}")
        }
    };
    let read = r.read_line(&mut answer);
    if answer.is_empty() {
        if let Err(e) = sent {
            return Err(format!("cannot send the request: {e}"));
        }
        read.map_err(timed_out)?;
        return Err("handoff closed the connection without answering".into());
    }
    let parse = |a: &str| -> Result<serde_json::Value, String> {
        serde_json::from_str(a.trim()).map_err(|e| format!("bad answer from handoff: {e}"))
    };
    let first = parse(&answer)?;
    let mut last = None;
    if until_eof {
        let mut rest = String::new();
        while r.read_line(&mut rest).is_ok_and(|n| n > 0) {
            if let Ok(v) = parse(&rest) {
                last = Some(v);
            }
            rest.clear();
        }
    }
    Ok((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn valid_requests() {
        let r = parse_request(br#"{"v":1,"cmd":"reload"}"#).expect("ok");
        assert_eq!(
            (r.cmd, r.wait),
            (Command::Reload, true),
            "wait defaults to true"
        );
        let r = parse_request(br#"{"v":1,"cmd":"status","wait":false}"#).expect("ok");
        assert_eq!(r.cmd, Command::Status);
    }

    #[test]
    fn invalid_requests_name_the_problem() {
        let e = parse_request(b"{").expect_err("bad");
        assert!(e.starts_with("malformed request"), "{e}");
        let e = parse_request(br#"{"v":9,"cmd":"stop"}"#).expect_err("bad");
        assert!(e.contains("version 9"), "{e}");
        let e = parse_request(&[b' '; MAX_REQUEST + 1]).expect_err("bad");
        assert!(e.contains("too long"), "{e}");
        let e = parse_request(br#"{"v":1,"cmd":"rm -rf"}"#).expect_err("bad");
        assert!(e.contains("unknown variant"), "{e}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_errors_are_one_line(b in proptest::collection::vec(any::<u8>(), 0..6000)) {
            if let Err(e) = parse_request(&b) {
                prop_assert!(!e.is_empty());
                prop_assert!(!e.contains('\n'), "{}", e);
                let reply: serde_json::Value = serde_json::from_str(&error_reply(&e)).expect("reply is JSON");
                prop_assert_eq!(&reply["ok"], &serde_json::Value::Bool(false));
            }
        }

        #[test]
        fn json_shaped_garbage_never_panics(v in any::<u32>(), cmd in "[a-z]{0,8}", wait in any::<bool>()) {
            let line = format!(r#"{{"v":{v},"cmd":"{cmd}","wait":{wait}}}"#);
            let _ = parse_request(line.as_bytes());
        }
    }
}
