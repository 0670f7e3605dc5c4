//! The command line: clap definitions that parse straight into handoff-core's types.

use std::ffi::OsString;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use handoff_core::listen::ListenSpec;
use handoff_core::signal::Signal;

const AFTER_HELP: &str = "\
Examples:
  handoff --listen 127.0.0.1:8080 -- python3 examples/python/server.py
  handoff -l http=:80 -l admin=unix:/run/app/admin.sock --stop-signal QUIT -- nginx -g 'daemon off;'
  kill -HUP $(pidof handoff)     # zero-downtime reload

The child gets the sockets systemd-style: fds 3.., LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES,
and NOTIFY_SOCKET for READY=1. See README.md for the full contract.";

/// Restart or upgrade any server without refusing or dropping a connection.
///
/// handoff binds the listening sockets, starts COMMAND with them (systemd socket activation),
/// and on SIGHUP starts a new generation on the same sockets, waits until it reports ready,
/// then stops the old one and lets it drain.
#[derive(Debug, Parser)]
#[command(name = "handoff", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Socket to listen on and pass to the child, in order (fd 3, 4, ...). Repeatable.
    /// Forms: 127.0.0.1:8080, [::1]:8080, [::]:8080, :8080 (all interfaces), tcp://HOST:PORT,
    /// udp://HOST:PORT, unix:/path/app.sock. Prefix NAME= to name it in LISTEN_FDNAMES.
    #[arg(short, long = "listen", value_name = "[NAME=]ADDR", value_parser = parse_listen)]
    pub listen: Vec<ListenSpec>,

    /// Listen backlog (accept queue length); capped by net.core.somaxconn [default: somaxconn]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub backlog: Option<u32>,

    /// Signal that asks a generation to drain and exit (e.g. QUIT for nginx, INT for lighttpd).
    #[arg(long, value_name = "SIGNAL", default_value = "TERM", value_parser = parse_signal)]
    pub stop_signal: Signal,

    /// Time a stopping generation has to exit before its process group is killed.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Time a new child has to report READY=1 before it is killed and the reload fails.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub ready_timeout: Duration,

    /// Consider a child ready after this delay, for servers that cannot send READY=1.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ready_after: Option<Duration>,

    /// What to do when the serving child dies on its own.
    #[arg(long, value_enum, default_value_t = Restart::Always)]
    pub restart: Restart,

    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// The server to run, with its arguments.
    #[arg(value_name = "COMMAND", required = true, last = true, num_args = 1..)]
    pub command: Vec<OsString>,
}

/// `--restart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Restart {
    /// Start a new generation, with exponential back-off (100 ms doubling up to 10 s).
    Always,
    /// Exit with the child's exit status.
    Never,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, fields at the top level.
    Json,
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

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration \"{s}\": {e} (examples: 500ms, 30s, 2m)"))?;
    if d.is_zero() {
        return Err(format!(
            "invalid duration \"{s}\": must be greater than zero"
        ));
    }
    Ok(d)
}
