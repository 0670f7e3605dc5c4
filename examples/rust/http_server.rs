//! A small, fast HTTP/1.1 keep-alive server used as handoff's child in `bench/`.
//!
//!     handoff --listen 127.0.0.1:8080 -- target/release/examples/http-server [--ready-delay-ms N]
//!     target/release/examples/http-server --bind 127.0.0.1:8080   # no handoff: the baseline
//!     start_server --port 127.0.0.1:8080 -- target/release/examples/http-server  # Server::Starter
//!     einhorn -m manual -b 127.0.0.1:8080 -- target/release/examples/http-server  # einhorn
//!
//! Under handoff (or systemd) it takes its listener from fd 3 (checking LISTEN_PID strictly,
//! exit 97 if it is not our pid); under einhorn, the fd in EINHORN_FD_0; under
//! Server::Starter, the first fd in SERVER_STARTER_PORT. Once ready it sends READY=1 to
//! $NOTIFY_SOCKET (if set) and, under einhorn, einhorn's manual ACK
//! (`{"command":"worker:ack","pid":PID}` and a newline, on a connection to
//! $EINHORN_SOCK_PATH). On SIGTERM/SIGINT (and SIGUSR2 under einhorn, its graceful-stop
//! signal) it stops accepting,
//! answers the requests in flight with `Connection: close`, closes keep-alive connections
//! idle for `--drain-idle-ms` (default 1000), prints one summary line on stderr and exits 0,
//! after at most ~5 s. One thread per connection, std + libc only.
use std::io::{ErrorKind::*, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// Set by the signal handler: stop accepting and drain.
static STOP: AtomicBool = AtomicBool::new(false);
/// Connections being served, so that the drain can wait for them.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
/// How draining connections ended: answered with `Connection: close`, or closed while idle.
static CLOSED_AFTER_RESPONSE: AtomicUsize = AtomicUsize::new(0);
static CLOSED_IDLE: AtomicUsize = AtomicUsize::new(0);
/// Connections that ended with an I/O error (reset by the client, ...), over our whole life.
static IO_ERRORS: AtomicUsize = AtomicUsize::new(0);
/// Idle connections and the accept loop look at STOP this often.
const TICK: Duration = Duration::from_millis(50);
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

extern "C" fn on_stop(_signal: libc::c_int) {
    STOP.store(true, SeqCst); // an atomic store is async-signal-safe
}

/// One line on stderr in a single write(): our stderr is shared with handoff's log, and
/// `eprintln!` writes piece by piece, which interleaves with handoff's lines mid-line.
fn say(msg: std::fmt::Arguments) {
    let _ = std::io::stderr().write_all(format!("http-server: {msg}\n").as_bytes());
}

fn usage(msg: &str) -> ! {
    say(format_args!(
        "{msg}\nusage: http-server [--bind ADDR] [--ready-delay-ms N] ..."
    ));
    std::process::exit(2)
}

fn main() {
    let (mut bind, mut ready_delay, mut drain_idle) = (None, 0u64, 1000u64);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let bad = format!("bad or missing value for {arg}");
        let mut value = || args.next().unwrap_or_else(|| usage(&bad));
        match arg.as_str() {
            "--bind" => bind = Some(value()),
            "--ready-delay-ms" => ready_delay = value().parse().unwrap_or_else(|_| usage(&bad)),
            "--drain-idle-ms" => drain_idle = value().parse().unwrap_or_else(|_| usage(&bad)),
            _ => usage(&format!("unknown argument {arg}")),
        }
    }
    // Under einhorn: its fd, its ACK once ready, and SIGUSR2 (its graceful stop) drains like
    // SIGTERM. Only when neither --bind nor LISTEN_FDS is given.
    let einhorn = bind.is_none()
        && std::env::var_os("LISTEN_FDS").is_none()
        && std::env::var_os("EINHORN_FD_COUNT").is_some();
    let listener = match (bind, std::env::var("LISTEN_FDS")) {
        (Some(addr), _) => {
            let l = TcpListener::bind(&addr).unwrap_or_else(|e| usage(&format!("{addr}: {e}")));
            // With port 0 the caller learns the port from this line (bench/ relies on it).
            let local = l.local_addr().expect("local_addr");
            say(format_args!("listening on {local}"));
            l
        }
        (None, Ok(n)) => {
            // Like sd_listen_fds(): the fds are ours only if LISTEN_PID names this process.
            let (pid, me) = (
                std::env::var("LISTEN_PID").unwrap_or_default(),
                std::process::id(),
            );
            if pid != me.to_string() {
                say(format_args!("LISTEN_PID={pid} is not our pid {me}"));
                std::process::exit(97);
            }
            if n.parse::<u32>().unwrap_or(0) < 1 {
                usage("LISTEN_FDS is set but no socket was passed");
            }
            // SAFETY: fd 3 is the listening socket handoff passed to us; nothing else owns it.
            unsafe { TcpListener::from_raw_fd(3) }
        }
        // einhorn (`-b ADDR`): EINHORN_FD_COUNT=1, EINHORN_FD_0=6 (its fd number).
        (None, Err(_)) if einhorn => {
            let (n, fd) = (
                std::env::var("EINHORN_FD_COUNT").unwrap_or_default(),
                std::env::var("EINHORN_FD_0").unwrap_or_default(),
            );
            let fd = match (n.parse::<u32>(), fd.parse::<libc::c_int>()) {
                (Ok(n), Ok(fd)) if n >= 1 && fd >= 0 => fd,
                _ => usage(&format!("bad EINHORN_FD_COUNT={n:?} / EINHORN_FD_0={fd:?}")),
            };
            // SAFETY: einhorn passed this listening socket to us; nothing else owns it.
            unsafe { TcpListener::from_raw_fd(fd) }
        }
        // Server::Starter (`start_server`): SERVER_STARTER_PORT=`127.0.0.1:8080=3;...`; we
        // take the fd after the last '=' of the first entry (handoff sets it too, but then
        // LISTEN_FDS wins above).
        (None, Err(_)) => match std::env::var("SERVER_STARTER_PORT") {
            Ok(spec) => {
                let fd = (spec.split(';').next())
                    .and_then(|first| first.rsplit_once('='))
                    .and_then(|(_, fd)| fd.trim().parse::<libc::c_int>().ok())
                    .filter(|fd| *fd >= 0)
                    .unwrap_or_else(|| usage(&format!("bad SERVER_STARTER_PORT={spec:?}")));
                // SAFETY: start_server passed this listening socket to us; nothing else owns it.
                unsafe { TcpListener::from_raw_fd(fd) }
            }
            Err(_) => usage("neither LISTEN_FDS, EINHORN_FD_COUNT, SERVER_STARTER_PORT nor --bind"),
        },
    };
    // Non-blocking: during a reload the old and new generations share the socket, and a
    // blocking accept() could wait forever for a connection the other process took.
    listener.set_nonblocking(true).expect("set_nonblocking");
    let handler = on_stop as extern "C" fn(libc::c_int) as libc::sighandler_t;
    let signals: &[libc::c_int] = if einhorn {
        &[libc::SIGTERM, libc::SIGINT, libc::SIGUSR2]
    } else {
        &[libc::SIGTERM, libc::SIGINT]
    };
    for &sig in signals {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, handler) };
    }

    // Pretend to load config / warm caches. The socket already listens, so connections wait
    // in its queue (or are accepted by the previous generation) until we start accepting.
    let ready_at = Instant::now() + Duration::from_millis(ready_delay);
    while Instant::now() < ready_at && !STOP.load(SeqCst) {
        std::thread::sleep(TICK.min(ready_at.saturating_duration_since(Instant::now())));
    }
    if STOP.load(SeqCst) {
        std::process::exit(0); // stopped before we were ready: nothing to drain
    }
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        let sent = UnixDatagram::unbound().and_then(|s| s.send_to(b"READY=1", &path));
        if let Err(e) = sent {
            say(format_args!("cannot notify {path:?}: {e}"));
        }
    }
    if einhorn {
        einhorn_ack();
    }

    let body = format!(
        "gen {} pid {}\n",
        std::env::var("HANDOFF_GENERATION").unwrap_or_else(|_| "0".into()),
        std::process::id()
    );
    let body: &'static str = Box::leak(body.into_boxed_str());
    let drain_idle = Duration::from_millis(drain_idle);
    let (fd, events) = (listener.as_raw_fd(), libc::POLLIN);
    while !STOP.load(SeqCst) {
        let mut pfd = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd; a signal interrupts poll() with EINTR, which is fine.
        unsafe { libc::poll(&mut pfd, 1, TICK.as_millis() as libc::c_int) };
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    ACTIVE.fetch_add(1, SeqCst);
                    std::thread::spawn(move || {
                        if serve(stream, body, drain_idle).is_err() {
                            IO_ERRORS.fetch_add(1, SeqCst);
                        }
                        ACTIVE.fetch_sub(1, SeqCst);
                    });
                }
                Err(e) if e.kind() == WouldBlock => break,
                Err(e) if e.kind() == Interrupted => {}
                Err(e) => {
                    say(format_args!("accept: {e}")); // e.g. EMFILE: back off a little
                    std::thread::sleep(TICK);
                    break;
                }
            }
        }
    }
    // Draining: no more accept(); connections still queued go to the new generation, which
    // shares the socket. Wait for the connections we own to finish their current request.
    let stopped = Instant::now();
    while ACTIVE.load(SeqCst) > 0 && stopped.elapsed() < DRAIN_LIMIT {
        std::thread::sleep(Duration::from_millis(5));
    }
    say(format_args!(
        "pid {} drained in {} ms: {} answered with Connection: close, {} closed \
         idle, {} still open; {} I/O errors",
        std::process::id(),
        stopped.elapsed().as_millis(),
        CLOSED_AFTER_RESPONSE.load(SeqCst),
        CLOSED_IDLE.load(SeqCst),
        ACTIVE.load(SeqCst),
        IO_ERRORS.load(SeqCst)
    ));
    std::process::exit(0);
}

/// einhorn's manual ACK (`einhorn -m manual`): one line on its command socket,
/// `{"command":"worker:ack","pid":PID}` (JSON, which its YAML parser reads), then close.
fn einhorn_ack() {
    let Some(path) = std::env::var_os("EINHORN_SOCK_PATH") else {
        return say(format_args!("EINHORN_SOCK_PATH is not set: no ACK sent"));
    };
    let line = format!(
        "{{\"command\":\"worker:ack\",\"pid\":{}}}\n",
        std::process::id()
    );
    let sent = std::os::unix::net::UnixStream::connect(&path)
        .and_then(|mut s| s.write_all(line.as_bytes()));
    if let Err(e) = sent {
        say(format_args!("cannot ACK to einhorn at {path:?}: {e}"));
    }
}

/// Serves HTTP/1.1 requests (GET/HEAD without body) on one connection until it closes.
fn serve(mut stream: TcpStream, body: &str, drain_idle: Duration) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(TICK))?; // wake up now and then to notice a drain
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mut last_active = Instant::now();
    loop {
        // Answer every complete request already buffered (pipelining works too).
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            buf.drain(..end + 4);
            let http10 = head.lines().next().is_some_and(|l| l.ends_with("http/1.0"));
            let wants_close = http10 || head.contains("\r\nconnection: close");
            let close = wants_close || STOP.load(SeqCst);
            let (status, text) = if head.starts_with("get / ") || head.starts_with("head / ") {
                ("200 OK", body)
            } else {
                ("404 Not Found", "not found\n")
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{}",
                text.len(),
                if close { "Connection: close\r\n" } else { "" },
                if head.starts_with("head ") { "" } else { text },
            );
            stream.write_all(response.as_bytes())?;
            last_active = Instant::now();
            if close {
                if STOP.load(SeqCst) {
                    CLOSED_AFTER_RESPONSE.fetch_add(1, SeqCst);
                }
                return Ok(());
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(()), // the client closed the connection
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                last_active = Instant::now();
            }
            // Timed out (SO_RCVTIMEO) or interrupted. Idle between requests while draining:
            // close, and the client reconnects to the new generation. A request can race with
            // this close (HTTP clients retry it, wrk counts a read error), so only close
            // connections idle for `drain_idle`; active ones get `Connection: close` instead.
            Err(e) if matches!(e.kind(), WouldBlock | TimedOut | Interrupted) => {
                let idle = buf.is_empty() && last_active.elapsed() >= drain_idle;
                if idle && STOP.load(SeqCst) {
                    CLOSED_IDLE.fetch_add(1, SeqCst);
                    return Ok(());
                }
            }
            Err(e) => return Err(e),
        }
        if buf.len() > 64 * 1024 {
            return Ok(()); // headers far too long: not a client we care about
        }
    }
}
