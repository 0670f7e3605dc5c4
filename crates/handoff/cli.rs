//! The command line: clap definitions that parse straight into handoff-core's types.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use handoff_core::listen::ListenSpec;
use handoff_core::signal::Signal;

const AFTER_HELP: &str = "\
Examples:
  handoff --listen 127.0.0.1:8080 -- python3 examples/python/server.py
  handoff -l http=:80 -l admin=unix:/run/app/admin.sock --stop-signal QUIT -- nginx -g 'daemon off;'
  handoff reload                 # zero-downtime reload; exit 0 once the new generation serves
  kill -HUP $(pidof handoff)     # the same, without waiting for the outcome

The child gets the sockets systemd-style: fds 3.., LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES,
and NOTIFY_SOCKET for READY=1. See README.md for the full contract.";

/// Restart or upgrade any server without refusing or dropping a connection.
///
/// handoff binds the listening sockets, starts COMMAND with them (systemd socket activation),
/// and on SIGHUP starts a new generation on the same sockets, waits until it reports ready,
/// then stops the old one and lets it drain.
#[derive(Debug, Parser)]
#[command(
    name = "handoff",
    version = crate::VERSION,
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub sub: Option<Sub>,

    #[command(flatten)]
    pub run: RunArgs,
}

/// Commands that talk to a running handoff.
#[derive(Debug, Subcommand)]
pub enum Sub {
    /// Reload the running handoff and wait for the outcome: exit 0 when the new generation
    /// serves and the old one was told to stop (or, with --reload-signal, when the serving one
    /// reloaded in place), 1 when the reload failed.
    Reload {
        #[command(flatten)]
        target: TargetArgs,
        /// Return as soon as the reload is requested.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this long.
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Start a new generation and wait for the outcome, as `reload` does without
    /// --reload-signal: the way to take a new binary when reloads happen in place.
    Restart {
        #[command(flatten)]
        target: TargetArgs,
        /// Return as soon as the restart is requested.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this long.
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Show the generations, listeners and the last reload.
    Status {
        #[command(flatten)]
        target: TargetArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Keep following: print a line each time the generations or the state change (JSON
        /// lines with --json), until handoff exits.
        #[arg(long)]
        watch: bool,
    },
    /// Print a shell completion script: handoff completions bash > /etc/bash_completion.d/handoff
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print a man page (roff): handoff man > handoff.1, handoff man reload >
    /// handoff-reload.1; or write them all with --dir
    #[command(hide = true)]
    Man {
        /// The subcommand whose page to print (reload, status, stop, completions); none for
        /// handoff(1).
        #[arg(value_name = "SUBCOMMAND")]
        page: Option<String>,
        /// Write every page (handoff.1, handoff-reload.1, ...) into this directory and print
        /// their paths.
        #[arg(long, value_name = "DIR", conflicts_with = "page")]
        dir: Option<PathBuf>,
    },
    /// Replace the running handoff by a new handoff binary under the same pid, children,
    /// sockets and generations untouched, and wait: exit 0 once the new image serves the
    /// control socket with the same generations, 1 (and the old image keeps running) if the
    /// binary is missing, not executable, fails its check or crashes at start.
    Upgrade {
        #[command(flatten)]
        target: TargetArgs,
        /// The handoff binary to run [default: the path the running handoff was started
        /// from, which a package upgrade has replaced]
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// Give up waiting after this long.
        #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// What `handoff upgrade` asks a candidate binary before it execs it: print the state
    /// versions this binary reads and its version, and exit 0 if it can take over the state
    /// document on stdin (version N).
    #[command(hide = true)]
    CheckUpgrade {
        #[arg(long, value_name = "N")]
        state_version: u32,
    },
    /// Stop the running handoff gracefully and wait until it has exited.
    Stop {
        #[command(flatten)]
        target: TargetArgs,
        /// Kill every generation now instead of letting them drain (exit status 3). Running
        /// `stop` again without it changes nothing: a repeated stop is the same graceful stop.
        #[arg(long)]
        force: bool,
        /// Give up waiting after this long.
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
    },
}

/// How a subcommand finds the running handoff.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// Its control socket [default: $RUNTIME_DIRECTORY/handoff.sock, else
    /// $XDG_RUNTIME_DIR/handoff.sock, else /run/handoff.sock (root) or /tmp/handoff-UID.sock]
    #[arg(long, value_name = "PATH", env = "HANDOFF_CONTROL", value_parser = parse_control)]
    pub control: Option<PathBuf>,
    /// Its pid file (written with --pid-file).
    #[arg(long, value_name = "PATH", conflicts_with = "control")]
    pub pid_file: Option<PathBuf>,
}

/// Running a server (the default command).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Socket to listen on and pass to the child, in order (fd 3, 4, ...). Repeatable.
    /// Forms: 127.0.0.1:8080, [::1]:8080, [::]:8080, :8080 or 8080 (all interfaces),
    /// tcp://HOST:PORT, udp://HOST:PORT (udp://53: all interfaces), unix:/path/app.sock. Prefix NAME= to name it in LISTEN_FDNAMES.
    #[arg(short, long = "listen", value_name = "[NAME=]ADDR", value_parser = parse_listen)]
    pub listen: Vec<ListenSpec>,

    /// Listen backlog (accept queue length); capped by net.core.somaxconn [default: somaxconn]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub backlog: Option<u32>,

    /// Reload in place: a reload (SIGHUP, `handoff reload`, --watch) sends this signal to the
    /// serving generation, which re-reads its configuration itself (nginx, gunicorn and
    /// many Go servers do on HUP), instead of starting a new generation. A child that speaks
    /// systemd's notify-reload (RELOADING=1 then READY=1) is waited for; otherwise the reload
    /// ends once the signal is delivered. `handoff restart` still starts a new generation.
    #[arg(long, value_name = "SIGNAL", value_parser = parse_signal)]
    pub reload_signal: Option<Signal>,

    /// Signal that asks a generation to drain and exit (e.g. QUIT for nginx, INT for lighttpd).
    #[arg(long, value_name = "SIGNAL", default_value = "TERM", value_parser = parse_signal)]
    pub stop_signal: Signal,

    /// Time a stopping generation has to exit before its process group is killed.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Time a new child has to report READY=1; then it is stopped (its stop signal, then the
    /// drain timeout: it may have accepted connections already) and the reload fails.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub ready_timeout: Duration,

    /// Consider a child ready after this delay, for servers that cannot send READY=1.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ready_after: Option<Duration>,

    /// Readiness for servers that send no READY=1: `auto` watches a starting generation in
    /// /proc for tasks waiting to accept on its listeners, and proves edge-triggered servers
    /// (Go, tokio) with connections of handoff's own; `scan` only watches; `off` neither.
    /// A server that sends any notify datagram is judged by its READY=1 only. See README,
    /// "Servers that cannot send READY=1".
    #[arg(long, value_enum, value_name = "MODE", default_value_t = DetectReady::Auto)]
    pub detect_ready: DetectReady,

    /// With nothing to follow (the first generation), detection judges a silent server
    /// ready only once it has waited to accept this long without a notify datagram.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub detect_grace: Duration,

    /// What to do when the serving child dies on its own.
    #[arg(long, value_enum, default_value_t = Restart::Always)]
    pub restart: Restart,

    /// Put the listeners handoff binds (those with a NAME=) in systemd's file-descriptor
    /// store, so that they outlive handoff: a restart or a crash of handoff refuses no
    /// connection. auto: when systemd says there is a store (FDSTORE=, systemd 254 and
    /// later); always: whenever there is a NOTIFY_SOCKET (the unit must set
    /// FileDescriptorStoreMax=; systemd 252 does not say); never.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = FdStore::Auto)]
    pub fd_store: FdStore,

    /// Log format on stderr: logfmt lines, or one JSON object per line. Under systemd each
    /// line starts with its journald priority (<3>..<7>) and has no timestamp.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Least severe level logged [default: info, or RUST_LOG (EnvFilter syntax, e.g.
    /// handoff=debug) when set; this option wins over RUST_LOG]
    #[arg(long, value_enum, value_name = "LEVEL")]
    pub log_level: Option<LogLevel>,

    /// Control socket for `handoff reload|status|stop` (mode 0600; same user or root).
    /// `none` disables it. [default: see `handoff status --help`; if another handoff already
    /// uses the default, this one runs without a path socket and warns]
    #[arg(long, value_name = "PATH", env = "HANDOFF_CONTROL", value_parser = parse_control)]
    pub control: Option<PathBuf>,

    /// A cgroup v2 per generation (as root, or under systemd with Delegate=yes): workers that
    /// left the process group (setsid, double fork) are still part of their generation,
    /// stopped and killed with it. Off by default: joining a cgroup costs each new generation
    /// 5-40 ms on today's kernels (the move waits for an RCU grace period).
    #[arg(long)]
    pub cgroups: bool,

    /// Do not set LISTEN_PID in the child's environment. For a server started through a
    /// wrapper (npm start, sh -c without exec), which would see the wrapper's pid there and
    /// ignore the sockets, when its socket-activation library accepts a missing LISTEN_PID
    /// (Rust's listenfd, systemfd's users). libsystemd and go-systemd do not: exec the server
    /// instead.
    #[arg(long)]
    pub no_listen_pid: bool,

    /// Serve Prometheus metrics at http://ADDR/metrics (IP:PORT, or :PORT for every
    /// interface). Never a port the child listens on.
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics_addr)]
    pub metrics: Option<std::net::SocketAddr>,

    /// Write handoff's pid to this file (atomically; removed at exit). Refuses to start if
    /// the pid in it belongs to a running handoff.
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<PathBuf>,

    /// Run the child as this user (name or uid); handoff binds first, as root if needed.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// Run the child with this group (name or gid) [default: the user's primary group]
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,

    /// Permissions of the unix socket files handoff creates, in octal.
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    pub socket_mode: Option<u32>,

    /// Owner of the unix socket files handoff creates: USER, USER:GROUP or :GROUP.
    #[arg(long, value_name = "USER:GROUP")]
    pub socket_owner: Option<String>,

    /// Run CMD (with sh -c) until it exits 0; the child is ready then. Its environment has
    /// HANDOFF_CHILD_PID and HANDOFF_GENERATION. Aim it at something generation-specific.
    #[arg(long, value_name = "CMD")]
    pub ready_probe: Option<String>,

    /// Time between two runs of --ready-probe.
    #[arg(long, value_name = "DURATION", default_value = "250ms", value_parser = parse_duration)]
    pub ready_probe_interval: Duration,

    /// Reload when this file or directory (recursively) changes. Repeatable.
    #[arg(long, value_name = "PATH")]
    pub watch: Vec<PathBuf>,

    /// Quiet time after the last change before a --watch reload starts.
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse_duration)]
    pub watch_debounce: Duration,

    /// A server that binds a --listen TCP address itself (not using LISTEN_FDS) gets handoff's
    /// socket instead of EADDRINUSE, in every generation (seccomp; Linux >= 5.9). Without
    /// CAP_SYS_ADMIN, children run with no_new_privs. See README "Servers that bind their own
    /// port".
    #[arg(long, value_enum, default_value_t = Adopt::On)]
    pub adopt: Adopt,

    /// The server to run, with its arguments.
    #[arg(value_name = "COMMAND", required = true, last = true, num_args = 1..)]
    pub command: Vec<OsString>,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let m = u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|_| format!("invalid mode \"{s}\": expected octal digits, e.g. 0660"))?;
    if m > 0o7777 {
        return Err(format!("invalid mode \"{s}\": at most 7777"));
    }
    Ok(m)
}

/// `--restart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Restart {
    /// Start a new generation, with exponential back-off (100 ms doubling up to 10 s).
    Always,
    /// Exit with the child's exit status.
    Never,
}

/// `--fd-store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FdStore {
    /// When the service manager announces a store (`FDSTORE=N`, systemd 254 and later).
    Auto,
    /// Whenever there is a service manager (`NOTIFY_SOCKET`).
    Always,
    /// Never.
    Never,
}

/// `--adopt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Adopt {
    /// Adopt binds of held TCP addresses (if the kernel allows it; handoff says when not).
    On,
    /// No seccomp filter: a server's own bind of a held address gets EADDRINUSE.
    Off,
}

/// `--detect-ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DetectReady {
    /// Watch /proc, and prove edge-triggered servers with connections of handoff's own.
    Auto,
    /// Watch /proc only: no connections of handoff's own.
    Scan,
    /// No detection: READY=1, --ready-after or --ready-probe only.
    Off,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, fields at the top level.
    Json,
}

/// `--log-level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    /// The service is degraded: nothing serves, a generation or a reload failed.
    Error,
    /// Something needed force or was refused.
    Warn,
    /// Every step of every generation.
    Info,
    /// Also what handoff ignores (notify lines it does not understand).
    Debug,
    Trace,
}

impl LogLevel {
    pub fn filter(self) -> tracing_subscriber::filter::LevelFilter {
        use tracing_subscriber::filter::LevelFilter;
        match self {
            Self::Error => LevelFilter::ERROR,
            Self::Warn => LevelFilter::WARN,
            Self::Info => LevelFilter::INFO,
            Self::Debug => LevelFilter::DEBUG,
            Self::Trace => LevelFilter::TRACE,
        }
    }
}

fn parse_listen(s: &str) -> Result<ListenSpec, String> {
    ListenSpec::parse(s).map_err(|e| e.to_string())
}

fn parse_signal(s: &str) -> Result<Signal, String> {
    let sig = Signal::parse(s).map_err(|e| e.to_string())?;
    if sig == Signal::KILL || sig == Signal::STOP {
        return Err(format!(
            "{sig} cannot be used here: it cannot be caught, so the child could not drain"
        ));
    }
    Ok(sig)
}

/// A duration: `500ms`, `30s`, `2m`, `1h30m`, or a bare number of seconds (`30`, `1.5`), as
/// systemd reads `TimeoutStopSec=30`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = |e: &dyn std::fmt::Display| {
        format!("invalid duration \"{s}\": {e} (examples: 30, 500ms, 30s, 2m)")
    };
    let t = s.trim();
    let d = match bare_seconds(t) {
        Some(secs) => secs.ok_or_else(|| bad(&"number too large"))?,
        None => humantime::parse_duration(t).map_err(|e| bad(&e))?,
    };
    if d.is_zero() {
        return Err(format!(
            "invalid duration \"{s}\": must be greater than zero"
        ));
    }
    Ok(d)
}

/// `--metrics ADDR`: `IP:PORT`, `[IPv6]:PORT`, or `:PORT` for every interface.
fn parse_metrics_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    let full = match s.strip_prefix(':') {
        Some(port) => format!("[::]:{port}"),
        None => s.to_string(),
    };
    full.parse().map_err(|_| {
        format!("invalid metrics address \"{s}\": expected IP:PORT or :PORT, e.g. 127.0.0.1:9100")
    })
}

/// `DIGITS[.DIGITS]` as seconds: `None` if `t` is not of that form, `Some(None)` if too large.
fn bare_seconds(t: &str) -> Option<Option<Duration>> {
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || (t.contains('.') && frac.is_empty()) {
        return None;
    }
    let Ok(secs) = int.parse::<u64>() else {
        return Some(None);
    };
    // Nanoseconds from at most 9 fraction digits; more are below the clock's resolution.
    let nanos = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(9)
        .fold(0u32, |n, b| n * 10 + u32::from(b - b'0'));
    Some(Some(Duration::new(secs, nanos)))
}

/// `--control PATH` (or `none`): a unix socket path must fit `sun_path`, said as clearly as
/// for a `--listen unix:` path.
fn parse_control(s: &str) -> Result<PathBuf, String> {
    if s == "none" {
        return Ok(PathBuf::from(s));
    }
    handoff_core::listen::parse_unix(s)
        .map_err(|e| e.replace("unix socket path", "control socket path"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("0s")
            .expect_err("zero")
            .contains("greater than zero"));
        assert!(parse_duration("soon")
            .expect_err("bad")
            .contains("\"soon\""));
    }

    #[test]
    fn bare_numbers_are_seconds() {
        // As systemd's TimeoutStopSec=30.
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration(" 5 "), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.25"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("0")
            .expect_err("zero")
            .contains("greater than zero"));
        assert!(parse_duration("1.").is_err());
        assert!(parse_duration(".5").is_err());
        assert!(parse_duration("99999999999999999999999").is_err());
    }

    #[test]
    fn signals_that_cannot_drain_are_refused() {
        assert_eq!(parse_signal("quit"), Ok(Signal::QUIT));
        assert!(parse_signal("KILL")
            .expect_err("kill")
            .contains("cannot be caught"));
        assert!(parse_signal("19").expect_err("stop").contains("SIGSTOP"));
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("17777").is_err());
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    proptest! {
        #[test]
        fn value_parsers_never_panic_and_errors_are_one_line(s in "\\PC{0,40}") {
            let errors = [parse_duration(&s).err(), parse_signal(&s).err(), parse_mode(&s).err(), parse_listen(&s).err()];
            for e in errors.into_iter().flatten() {
                prop_assert!(!e.is_empty() && !e.contains('\n'), "{}", e);
            }
        }
    }
}
