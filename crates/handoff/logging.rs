//! Logging: a tracing subscriber on stderr, and the rendering of core reports.
//!
//! Every event carries an `event` field (`spawned`, `ready`, `stopping`, ...) plus the
//! generation and pid it concerns, so that `--log-format json` is machine-readable: the
//! integration tests and the benchmark read exactly these lines.
//!
//! One line per event, in one of two shapes ([`render`]):
//!
//! - text: logfmt, `time=... level=INFO msg="generation ready" event=ready gen=2 pid=42
//!   ready_ms=3.1`. Every value is a field, and only a field: the message is the event's
//!   `msg` field, a fixed phrase without values (the formatted message is JSON's).
//! - JSON: `{"timestamp":"...","level":"INFO","event":"ready","gen":2,...,"message":"..."}`
//!   with the formatted message, which may repeat values for a reader without a parser.
//!
//! Under systemd (stderr is the journal stream `JOURNAL_STREAM` names) each line starts with
//! its syslog priority, `<3>` to `<7>` (sd-daemon(3)), and has no timestamp: journald stamps
//! it. The prefix rather than journald's native protocol keeps stderr the one stream (in
//! order with the child's lines, which share it) and costs nothing.
//!
//! Field names avoid what log platforms reserve: no `status` (Datadog's severity), and no
//! event field named `time`, `level`, `msg`, `message` or `timestamp`.

use std::fmt::{self, Write as _};
use std::io::{self, Write};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

use handoff_core::supervisor::{FailReason, KillReason, Report};
use tracing::field::{Field, Visit};
use tracing::{error, info, warn, Event, Level, Subscriber};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::fmt::{format::Writer, FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::cli::{LogFormat, LogLevel};

/// stderr for the log, ignoring write errors: when the reader of handoff's stderr goes away
/// (a log pipe whose reader died: EPIPE; a closed terminal: EIO), lines are lost and the
/// service goes on. With `std::io::stderr` a failed write makes tracing-subscriber report it
/// with `eprintln!`, which panics on the same broken stderr, and the release build aborts on
/// panic.
#[derive(Clone, Copy, Debug, Default)]
pub struct LossyStderr;

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // One event is one call (tracing-subscriber formats it into a buffer first); the lock
        // keeps its pieces together if the pipe takes it in several writes.
        let _ = io::stderr().lock().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

/// Write `line` and a newline to stderr, ignoring errors (see [`LossyStderr`]).
pub fn stderr_line(line: &str) {
    let _ = LossyStderr.write_all(format!("{line}\n").as_bytes());
}

/// Longest text from a child that is logged, in bytes after escaping (then "…").
pub const MAX_CHILD_TEXT: usize = 512;

/// Text a child chose (`STATUS=`), made safe for a log line and a terminal: control
/// characters (C0, DEL, C1) are escaped as `\n`, `\t`, `\x1b`, `\u{9b}`, as are the Unicode
/// line and paragraph separators and the bidirectional-text controls, and `\` itself (so that
/// an escape in the output always means an escape); at most [`MAX_CHILD_TEXT`] bytes are
/// kept, then "…". A child thus cannot forge log lines, colour or clear a terminal, or set its
/// title.
pub fn child_text(text: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(text.len().min(MAX_CHILD_TEXT + 3));
    let mut esc = String::new();
    for c in text.chars() {
        esc.clear();
        match c {
            '\\' => esc.push_str("\\\\"),
            '\n' => esc.push_str("\\n"),
            '\r' => esc.push_str("\\r"),
            '\t' => esc.push_str("\\t"),
            '\0'..='\x1f' | '\x7f' => {
                let _ = write!(esc, "\\x{:02x}", c as u32);
            }
            '\u{80}'..='\u{9f}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}' => {
                let _ = write!(esc, "\\u{{{:x}}}", c as u32);
            }
            c => esc.push(c),
        }
        if out.len() + esc.len() > MAX_CHILD_TEXT {
            out.push('…');
            break;
        }
        out.push_str(&esc);
    }
    out
}

/// How lines look: JSON or logfmt, and whether stderr is the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Style {
    pub json: bool,
    /// `<N>` priority prefix, no timestamp.
    pub journal: bool,
}

static STYLE: OnceLock<Style> = OnceLock::new();

impl Style {
    /// The style for `format` on this process's stderr.
    pub fn for_stderr(format: LogFormat) -> Style {
        Style {
            json: format == LogFormat::Json,
            journal: stderr_is_journal(),
        }
    }

    /// The style a run command line asks for, read before clap has parsed it (so that a
    /// usage error is JSON too with `--log-format json`): `--log-format json` or
    /// `--log-format=json` before `--`.
    pub fn from_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> Style {
        let mut json = false;
        let mut args = args.into_iter().skip(1);
        while let Some(a) = args.next() {
            match a.to_str() {
                Some("--") | None => break,
                Some("--log-format") => json = args.next().is_some_and(|v| v == "json"),
                Some(a) => {
                    if let Some(v) = a.strip_prefix("--log-format=") {
                        json = v == "json";
                    }
                }
            }
        }
        Style {
            json,
            journal: stderr_is_journal(),
        }
    }

    /// The style of this process's lines once set ([`init`], or `main` before parsing).
    pub fn current() -> Style {
        STYLE.get().copied().unwrap_or_default()
    }

    pub fn set(self) {
        let _ = STYLE.set(self);
    }
}

/// `JOURNAL_STREAM=DEV:INODE` (systemd.exec(5)): the device and inode of the stream
/// journald reads, decimal.
pub fn parse_journal_stream(v: &str) -> Option<(u64, u64)> {
    let (dev, ino) = v.split_once(':')?;
    let num = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    Some((num(dev)?, num(ino)?))
}

/// Whether stderr is the stream journald reads, as sd-daemon defines it: `JOURNAL_STREAM`
/// names stderr's device and inode (a redirected stderr under systemd is not the journal).
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(want) = std::env::var("JOURNAL_STREAM")
        .ok()
        .and_then(|v| parse_journal_stream(&v))
    else {
        return false;
    };
    // fstat through a duplicate: File takes ownership of what it is given.
    let Ok(fd) = io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .is_ok_and(|m| (m.dev(), m.ino()) == want)
}

/// syslog priority of a level (sd-daemon(3)): err, warning, info, debug.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// One field value.
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    Str(String),
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
}

/// The fields of one event, in order.
#[derive(Default)]
struct Fields(Vec<(&'static str, Val)>);

impl Visit for Fields {
    fn record_debug(&mut self, f: &Field, v: &dyn fmt::Debug) {
        self.0.push((f.name(), Val::Str(format!("{v:?}"))));
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        self.0.push((f.name(), Val::Str(v.to_owned())));
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.0.push((f.name(), Val::U64(v)));
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.0.push((f.name(), Val::I64(v)));
    }
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.0.push((f.name(), Val::F64(v)));
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.0.push((f.name(), Val::Bool(v)));
    }
}

/// A JSON string literal (also logfmt's quoting: `\"`, `\\`, `\n`, `\u001b`).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// A logfmt value: bare when it can be, else quoted.
fn logfmt_value(out: &mut String, v: &Val) {
    let _ = match v {
        Val::Str(s) => {
            let bare = !s.is_empty()
                && !s
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '=' | '"' | '\\'));
            if bare {
                out.write_str(s)
            } else {
                out.write_str(&quoted(s))
            }
        }
        Val::U64(n) => write!(out, "{n}"),
        Val::I64(n) => write!(out, "{n}"),
        Val::F64(x) => write!(out, "{x}"),
        Val::Bool(b) => write!(out, "{b}"),
    };
}

fn json_value(out: &mut String, v: &Val) {
    let _ = match v {
        Val::Str(s) => out.write_str(&quoted(s)),
        Val::U64(n) => write!(out, "{n}"),
        Val::I64(n) => write!(out, "{n}"),
        Val::F64(x) if x.is_finite() => write!(out, "{x}"),
        Val::F64(_) => out.write_str("null"),
        Val::Bool(b) => write!(out, "{b}"),
    };
}

/// One log line, newline included. `message` is the formatted message, `msg` the fixed
/// phrase text mode shows instead (when the event has one).
pub fn render(style: Style, level: Level, fields: &[(&str, Val)], now: SystemTime) -> String {
    let mut out = String::with_capacity(160);
    if style.journal {
        let _ = write!(out, "<{}>", priority(level));
    }
    let find = |k: &str| {
        fields.iter().find_map(|(n, v)| match v {
            Val::Str(s) if *n == k => Some(s.as_str()),
            _ => None,
        })
    };
    let message = find("message");
    let rest = fields
        .iter()
        .filter(|(k, _)| !matches!(*k, "message" | "msg"));
    if style.json {
        out.push('{');
        if !style.journal {
            let _ = write!(
                out,
                "\"timestamp\":\"{}\",",
                humantime::format_rfc3339_micros(now)
            );
        }
        let _ = write!(out, "\"level\":\"{level}\"");
        for (k, v) in rest {
            let _ = write!(out, ",\"{k}\":");
            json_value(&mut out, v);
        }
        if let Some(m) = message {
            let _ = write!(out, ",\"message\":{}", quoted(m));
        }
        out.push('}');
    } else {
        if !style.journal {
            let _ = write!(out, "time={} ", humantime::format_rfc3339_micros(now));
        }
        let _ = write!(out, "level={level}");
        if let Some(m) = find("msg").or(message) {
            out.push_str(" msg=");
            logfmt_value(&mut out, &Val::Str(m.to_owned()));
        }
        for (k, v) in rest {
            let _ = write!(out, " {k}=");
            logfmt_value(&mut out, v);
        }
    }
    out.push('\n');
    out
}

/// The event formatter: [`render`] for every event.
pub struct Lines(pub Style);

impl<S, N> FormatEvent<S, N> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut f = Fields::default();
        event.record(&mut f);
        let line = render(self.0, *event.metadata().level(), &f.0, SystemTime::now());
        writer.write_str(&line)
    }
}

/// What to log: `--log-level` when given, else `RUST_LOG` (tracing-subscriber's EnvFilter
/// syntax, e.g. `debug` or `handoff=debug`; targets it does not name stay at info), else
/// info. An explicit flag wins: it is the more specific request, and `RUST_LOG` may be set
/// for the child (a Rust server) rather than for handoff. Also returns why `RUST_LOG` was
/// not usable.
pub fn filter(flag: Option<LogLevel>, rust_log: Option<&str>) -> (EnvFilter, Option<String>) {
    let level = |l: LevelFilter| EnvFilter::default().add_directive(l.into());
    match (flag, rust_log.map(str::trim).filter(|s| !s.is_empty())) {
        (Some(l), _) => (level(l.filter()), None),
        (None, Some(s)) => match EnvFilter::builder()
            .with_default_directive(LevelFilter::INFO.into())
            .parse(s)
        {
            Ok(f) => (f, None),
            Err(e) => (level(LevelFilter::INFO), Some(e.to_string())),
        },
        (None, None) => (level(LevelFilter::INFO), None),
    }
}

pub fn init(format: LogFormat, flag: Option<LogLevel>) {
    let style = Style::for_stderr(format);
    style.set();
    let rust_log = std::env::var("RUST_LOG").ok();
    let (filter, bad) = filter(flag, rust_log.as_deref());
    tracing_subscriber::fmt()
        .with_writer(|| LossyStderr)
        .log_internal_errors(false)
        .with_env_filter(filter)
        .event_format(Lines(style))
        .init();
    if let Some(e) = bad {
        warn!(event = "rust_log_invalid", error = %e, msg = "RUST_LOG is not a valid filter; logging at info",
            "RUST_LOG is not a valid filter ({e}); logging at info");
    }
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Log a report of the state machine. Levels: ERROR when the service is degraded or a
/// reload failed (nothing serves, a generation failed to start, a reload failed, a process
/// that cannot be killed), WARN when something needed force or was refused, INFO otherwise.
/// `sent`: when the stop signal of a `Stopping` report went out (`None`: now).
pub fn report(r: &Report, sent: Option<Instant>) {
    match r {
        Report::ReloadRequested { coalesced } => {
            if *coalesced {
                info!(
                    event = "reload_coalesced",
                    "reload requested during a reload: already queued"
                );
            } else {
                info!(event = "reload_requested", "reload requested");
            }
        }
        Report::ReloadIgnored => info!(event = "reload_ignored", "reload ignored: shutting down"),
        Report::Spawned {
            gen,
            pid,
            reason,
            since_request,
        } => info!(
            event = "spawned",
            gen,
            pid,
            reason = reason.as_str(),
            request_to_spawn_ms = since_request.map(ms),
            msg = "generation started",
            "generation {gen} started (pid {pid})"
        ),
        Report::Ready { gen, pid, after } => info!(
            event = "ready",
            gen,
            pid,
            ready_ms = ms(*after),
            msg = "generation ready",
            "generation {gen} (pid {pid}) ready after {:.1} ms",
            ms(*after)
        ),
        Report::Stopping {
            gen,
            pid,
            signal,
            handover_from,
        } => {
            // The hand-over latency: READY=1 received → old generation told to stop.
            let sent = sent.unwrap_or_else(Instant::now);
            let handover_us = handover_from
                .map(|t| (sent.saturating_duration_since(t).as_secs_f64() * 1e9).round() / 1e3);
            info!(
                event = "stopping",
                gen,
                pid,
                signal = %signal,
                handover_us,
                msg = "stop signal sent: draining",
                "sent {signal} to generation {gen} (pid {pid}): draining"
            )
        }
        Report::Drained {
            gen,
            pid,
            after,
            status,
        } => info!(
            event = "drained",
            gen,
            pid,
            drain_ms = ms(*after),
            exit_status = %status,
            msg = "generation drained",
            "generation {gen} (pid {pid}) drained in {:.1} ms ({status})",
            ms(*after)
        ),
        Report::Killed { gen, pid, reason } => {
            let why = match reason {
                KillReason::DrainTimeout => "drain timeout reached",
                KillReason::Forced => "forced stop (stop --force, or a second interrupt)",
            };
            warn!(
                event = "killed",
                gen,
                pid,
                reason = why,
                msg = "killing the generation's process group",
                "killing process group of generation {gen} (pid {pid}): {why}"
            );
        }
        Report::Failed { gen, pid, reason } => {
            if matches!(reason, FailReason::Shutdown) {
                // Not a failure of the service: handoff was asked to stop.
                info!(event = "failed", gen, pid, reason = %reason, msg = "generation abandoned: shutting down",
                    "generation {gen} failed: {reason}");
            } else {
                error!(event = "failed", gen, pid, reason = %reason, msg = "generation failed to start",
                    "generation {gen} failed: {reason}");
            }
        }
        Report::ReloadFinished(o) => {
            let gen = o.gen;
            let duration_ms = ms(o.after);
            match (o.ok(), o.serving) {
                (true, Some((sg, sp))) => info!(
                    event = "reload_finished",
                    result = "ok",
                    gen,
                    duration_ms,
                    serving_gen = sg,
                    serving_pid = sp,
                    msg = "reload finished",
                    "reload finished: generation {gen} serving"
                ),
                (false, Some((sg, sp))) => error!(
                    event = "reload_finished",
                    result = "failed",
                    gen,
                    duration_ms,
                    serving_gen = sg,
                    serving_pid = sp,
                    msg = "reload failed; the previous generation keeps serving",
                    "reload failed; still serving generation {sg}, pid {sp}"
                ),
                (_, None) => error!(
                    event = "reload_finished",
                    result = "failed",
                    gen,
                    duration_ms,
                    msg = "reload failed; no generation is serving",
                    "reload failed; no generation is serving"
                ),
            }
        }
        Report::Exited { gen, pid, status } => error!(
            event = "exited",
            gen,
            pid,
            exit_status = %status,
            msg = "serving generation exited on its own",
            "serving generation {gen} (pid {pid}) exited on its own: {status}"
        ),
        Report::Reaped { gen, pid, status } => {
            info!(event = "reaped", gen, pid, exit_status = %status, msg = "failed generation is gone",
                "failed generation {gen} (pid {pid}) is gone: {status}")
        }
        Report::RestartScheduled { delay } => info!(
            event = "restart_scheduled",
            delay_ms = ms(*delay),
            msg = "new generation scheduled",
            "starting a new generation in {:.0} ms",
            ms(*delay)
        ),
        Report::Status { gen, pid, text } => {
            let text = child_text(text);
            info!(event = "status", gen, pid, child_status = %text, msg = "STATUS= from the child",
                "generation {gen}: {text}")
        }
        Report::ChildStopping { gen, pid } => {
            info!(
                event = "child_stopping",
                gen,
                pid,
                msg = "generation reports STOPPING=1",
                "generation {gen} (pid {pid}) reports STOPPING=1"
            )
        }
        Report::Forwarded { gen, signal } => match gen {
            Some(g) => {
                info!(event = "forwarded", gen = g, signal = %signal, msg = "signal forwarded to the serving generation",
                    "forwarded {signal} to generation {g}")
            }
            None => {
                warn!(event = "forward_dropped", signal = %signal, msg = "signal not forwarded: no generation is serving",
                    "{signal} not forwarded: no generation is serving")
            }
        },
        Report::ShutdownStarted { signal, forced } => {
            if *forced {
                warn!(event = "shutdown", forced = true, signal = %signal, msg = "second stop request: killing everything now",
                    "second stop request ({signal}): killing everything now");
            } else {
                info!(event = "shutdown", forced = false, signal = %signal, msg = "stopping: draining every generation",
                    "stopping ({signal}): draining every generation");
            }
        }
        Report::ReadyDetected {
            gen,
            pid,
            fd,
            proven,
        } => {
            if *proven {
                info!(event = "ready_detected", gen, pid, fd, proven = true,
                    msg = "generation ready without READY=1: it accepted a connection of handoff's own",
                    "generation {gen} (pid {pid}) is ready without READY=1: it accepted handoff's proof-of-accept connection{}",
                    fd.map(|f| format!(" on fd {f}")).unwrap_or_default())
            } else {
                info!(event = "ready_detected", gen, pid, fd, proven = false,
                    msg = "generation ready without READY=1: a task waits to accept on every listener",
                    "generation {gen} (pid {pid}) is ready without READY=1: a task of it waits to accept on every listener{}",
                    fd.map(|f| format!(" (fd {f})")).unwrap_or_default())
            }
        }
        Report::Proving { gen, pid, fd } => info!(event = "proving_accept", gen, pid, fd,
            msg = "generation waits on its listeners only through edge-triggered epoll: proving it accepts with connections of handoff's own",
            "generation {gen} (pid {pid}) waits on its listeners only through edge-triggered epoll (Go, tokio), which /proc cannot tell from serving: proving it accepts with connections of handoff's own (the server sees them close without a request); --detect-ready scan turns this off"),
        Report::ReadyWithoutNotify {
            gen,
            pid,
            fd,
            waited,
        } => warn!(event = "ready_without_notify", gen, pid, fd, waited_ms = ms(*waited),
            msg = "accepting but no READY=1: treated as ready so that it is not killed while it serves",
            "generation {gen} (pid {pid}) accepting on fd {fd} but no READY=1 within {:.1}s: treated as ready so that it is not killed while it serves; send READY=1, or pass --ready-after",
            waited.as_secs_f64()),
        Report::Unkillable { gen, pid } => error!(
            event = "unkillable",
            gen,
            pid,
            msg = "generation did not die after SIGKILL; giving up on it",
            "generation {gen} (pid {pid}) did not die after SIGKILL; giving up on it"
        ),
        Report::UpgradeRequested { binary } => info!(
            event = "upgrade_requested",
            binary = %binary.display(),
            msg = "upgrade requested: checking the new binary",
            "upgrade to {} requested: checking it",
            binary.display()
        ),
        Report::Exec { binary, version } => info!(
            event = "upgrade_exec",
            binary = %binary.display(),
            version = %version,
            msg = "the new binary passed its check; executing it under the same pid",
            "{} (handoff {version}) passed its check; executing it under the same pid",
            binary.display()
        ),
        Report::UpgradeFailed { error } => error!(
            event = "upgrade_failed",
            error = %error,
            msg = "upgrade failed; this handoff keeps running",
            "upgrade failed: {error}; this handoff keeps running"
        ),
        Report::Upgraded { from, to, count } => info!(
            event = "upgraded",
            from = %from,
            to = %to,
            count,
            msg = "upgraded: this image took over every generation",
            "upgraded from handoff {from} to {to}: every generation taken over"
        ),
    }
}

/// A fatal error that ends handoff (exit status `code`), as one line on stderr: in the log's
/// JSON shape with `--log-format json` (event `fatal`), else `handoff: error: ...`. Written
/// directly, not through the subscriber: it may not exist yet. A write error is ignored:
/// there is nobody left to tell.
pub fn fatal(text: &str, code: i32) {
    let style = Style::current();
    let line = if style.json {
        render(
            style,
            Level::ERROR,
            &[
                ("event", Val::Str("fatal".into())),
                ("code", Val::I64(code.into())),
                ("message", Val::Str(text.to_owned())),
            ],
            SystemTime::now(),
        )
    } else if style.journal {
        format!("<{}>handoff: error: {text}\n", priority(Level::ERROR))
    } else {
        format!("handoff: error: {text}\n")
    };
    let _ = LossyStderr.write_all(line.as_bytes());
}

/// An error line on stderr outside the log (a subcommand's error), with the journal's `<3>`
/// under systemd (`ExecReload=handoff reload`). A write error is ignored.
pub fn error_line(line: &str) {
    if Style::current().journal {
        stderr_line(&format!("<{}>{line}", priority(Level::ERROR)));
    } else {
        stderr_line(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_text_is_kept() {
        assert_eq!(
            child_text("serving 12 req/s, caf\u{e9} ☕"),
            "serving 12 req/s, caf\u{e9} ☕"
        );
        assert_eq!(child_text(""), "");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            child_text("ok\n{\"event\":\"ready\"}"),
            r#"ok\n{"event":"ready"}"#
        );
        assert_eq!(
            child_text("\x1b[31mred\x1b[0m\x07\r\t\0\x7f"),
            r"\x1b[31mred\x1b[0m\x07\r\t\x00\x7f"
        );
        assert_eq!(child_text("a\u{9b}2J\u{85}b"), r"a\u{9b}2J\u{85}b");
        assert_eq!(
            child_text("x\u{2028}y\u{202e}z\u{2066}"),
            r"x\u{2028}y\u{202e}z\u{2066}"
        );
        // A backslash is escaped too: "\x1b" in the log always was an ESC.
        assert_eq!(child_text(r"C:\x1b"), r"C:\\x1b");
    }

    #[test]
    fn long_text_is_cut_with_an_ellipsis() {
        let t = child_text(&"a".repeat(10_000));
        assert_eq!(t, format!("{}…", "a".repeat(MAX_CHILD_TEXT)));
        assert_eq!(
            child_text(&"a".repeat(MAX_CHILD_TEXT)),
            "a".repeat(MAX_CHILD_TEXT)
        );
        // Never inside a character, nor inside an escape.
        let t = child_text(&"é".repeat(MAX_CHILD_TEXT));
        assert_eq!(t, format!("{}…", "é".repeat(MAX_CHILD_TEXT / 2)));
        let t = child_text(&"\x1b".repeat(MAX_CHILD_TEXT));
        assert_eq!(t, format!("{}…", r"\x1b".repeat(MAX_CHILD_TEXT / 4)));
    }

    fn fields(v: &[(&'static str, Val)]) -> Vec<(&'static str, Val)> {
        v.to_vec()
    }

    #[test]
    fn text_is_logfmt_with_the_short_message() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_500_000);
        let f = fields(&[
            ("event", Val::Str("failed".into())),
            ("gen", Val::U64(2)),
            (
                "reason",
                Val::Str("exited before ready (exit status 1)".into()),
            ),
            ("odd", Val::Str("a=\"b\"\\\n".into())),
            ("empty", Val::Str(String::new())),
            ("ms", Val::F64(3.25)),
            ("msg", Val::Str("generation failed to start".into())),
            ("message", Val::Str("generation 2 failed: ...".into())),
        ]);
        let style = Style::default();
        assert_eq!(
            render(style, Level::ERROR, &f, t),
            "time=1970-01-01T00:00:01.500000Z level=ERROR msg=\"generation failed to start\" \
             event=failed gen=2 reason=\"exited before ready (exit status 1)\" \
             odd=\"a=\\\"b\\\"\\\\\\n\" empty=\"\" ms=3.25\n"
        );
        // Without `msg`, the message is the text message.
        let f = fields(&[
            ("event", Val::Str("reload_requested".into())),
            ("message", Val::Str("reload requested".into())),
        ]);
        assert_eq!(
            render(style, Level::INFO, &f, t),
            "time=1970-01-01T00:00:01.500000Z level=INFO msg=\"reload requested\" event=reload_requested\n"
        );
    }

    #[test]
    fn json_keeps_the_formatted_message_and_drops_msg() {
        let t = std::time::UNIX_EPOCH;
        let f = fields(&[
            ("event", Val::Str("ready".into())),
            ("gen", Val::U64(2)),
            ("ok", Val::Bool(true)),
            ("nan", Val::F64(f64::NAN)),
            ("msg", Val::Str("generation ready".into())),
            ("message", Val::Str("generation 2 \"x\" ready".into())),
        ]);
        let line = render(
            Style {
                json: true,
                journal: false,
            },
            Level::INFO,
            &f,
            t,
        );
        assert_eq!(
            line,
            "{\"timestamp\":\"1970-01-01T00:00:00.000000Z\",\"level\":\"INFO\",\"event\":\"ready\",\
             \"gen\":2,\"ok\":true,\"nan\":null,\"message\":\"generation 2 \\\"x\\\" ready\"}\n"
        );
        assert!(serde_json::from_str::<serde_json::Value>(&line).is_ok());
    }

    #[test]
    fn under_journald_a_priority_prefix_and_no_timestamp() {
        let f = fields(&[("event", Val::Str("exited".into()))]);
        let t = SystemTime::now();
        let j = |json| Style {
            json,
            journal: true,
        };
        assert_eq!(
            render(j(false), Level::ERROR, &f, t),
            "<3>level=ERROR event=exited\n"
        );
        assert_eq!(
            render(j(false), Level::WARN, &f, t),
            "<4>level=WARN event=exited\n"
        );
        assert_eq!(
            render(j(false), Level::INFO, &f, t),
            "<6>level=INFO event=exited\n"
        );
        assert_eq!(
            render(j(false), Level::DEBUG, &f, t),
            "<7>level=DEBUG event=exited\n"
        );
        assert_eq!(
            render(j(false), Level::TRACE, &f, t),
            "<7>level=TRACE event=exited\n"
        );
        assert_eq!(
            render(j(true), Level::ERROR, &f, t),
            "<3>{\"level\":\"ERROR\",\"event\":\"exited\"}\n"
        );
    }

    #[test]
    fn journal_stream_values() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8:"), None);
        assert_eq!(parse_journal_stream(":1"), None);
        assert_eq!(parse_journal_stream("8:1:2"), None);
        assert_eq!(parse_journal_stream("+8:1"), None);
        assert_eq!(parse_journal_stream(""), None);
    }

    #[test]
    fn the_log_format_is_read_before_parsing() {
        let s = |v: &[&str]| Style::from_args(v.iter().map(std::ffi::OsString::from)).json;
        assert!(s(&["handoff", "--log-format", "json", "-l", "x"]));
        assert!(s(&["handoff", "-l", ":1", "--log-format=json"]));
        assert!(!s(&["handoff", "--log-format", "text"]));
        assert!(!s(&["handoff", "--", "app", "--log-format", "json"]));
    }

    #[test]
    fn log_level_wins_over_rust_log() {
        use tracing_subscriber::filter::LevelFilter as L;
        let hint = |flag, env| {
            let (f, bad) = filter(flag, env);
            (f.max_level_hint(), bad.is_some())
        };
        assert_eq!(hint(None, None), (Some(L::INFO), false));
        assert_eq!(hint(None, Some("debug")), (Some(L::DEBUG), false));
        assert_eq!(hint(None, Some("  ")), (Some(L::INFO), false));
        assert_eq!(hint(None, Some("handoff=trace")), (Some(L::TRACE), false));
        assert_eq!(
            hint(Some(LogLevel::Warn), Some("debug")),
            (Some(L::WARN), false)
        );
        assert_eq!(hint(Some(LogLevel::Debug), None), (Some(L::DEBUG), false));
        assert_eq!(hint(None, Some("handoff=loud")), (Some(L::INFO), true));
    }

    /// Every report rendered in text mode through the real subscriber stack.
    fn text_of(r: &Report) -> String {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0
                    .lock()
                    .map_err(|_| io::ErrorKind::Other)?
                    .extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .event_format(Lines(Style::default()))
            .finish();
        tracing::subscriber::with_default(sub, || report(r, None));
        let bytes = buf.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8(bytes).unwrap_or_default()
    }

    #[test]
    fn no_report_repeats_a_value_in_its_text_message() {
        use handoff_core::signal::Signal;
        use handoff_core::supervisor::{ExitStatus, ReloadOutcome, StartReason};
        use std::time::Duration;
        let d = Duration::from_millis(1234);
        let st = ExitStatus::Exited(3);
        let reports = [
            Report::ReloadRequested { coalesced: false },
            Report::ReloadRequested { coalesced: true },
            Report::ReloadIgnored,
            Report::Spawned {
                gen: 12,
                pid: 4242,
                reason: StartReason::Reload,
                since_request: Some(d),
            },
            Report::Ready {
                gen: 12,
                pid: 4242,
                after: d,
            },
            Report::Stopping {
                gen: 11,
                pid: 4141,
                signal: Signal::TERM,
                handover_from: Some(Instant::now()),
            },
            Report::Drained {
                gen: 11,
                pid: 4141,
                after: d,
                status: st,
            },
            Report::Killed {
                gen: 11,
                pid: 4141,
                reason: KillReason::DrainTimeout,
            },
            Report::Failed {
                gen: 12,
                pid: Some(4242),
                reason: FailReason::ExitedBeforeReady(st),
            },
            Report::ReloadFinished(ReloadOutcome {
                gen: 12,
                failure: None,
                after: d,
                serving: Some((12, 4242)),
                in_place: None,
            }),
            Report::ReloadFinished(ReloadOutcome {
                gen: 12,
                failure: Some(FailReason::ReadyTimeout(d)),
                after: d,
                serving: Some((11, 4141)),
                in_place: None,
            }),
            Report::ReloadFinished(ReloadOutcome {
                gen: 12,
                failure: Some(FailReason::ReadyTimeout(d)),
                after: d,
                serving: None,
                in_place: None,
            }),
            Report::Exited {
                gen: 12,
                pid: 4242,
                status: st,
            },
            Report::Reaped {
                gen: 12,
                pid: 4242,
                status: st,
            },
            Report::RestartScheduled { delay: d },
            Report::Status {
                gen: 12,
                pid: 4242,
                text: "warming up".into(),
            },
            Report::ChildStopping { gen: 12, pid: 4242 },
            Report::Forwarded {
                gen: Some(12),
                signal: Signal::USR1,
            },
            Report::Forwarded {
                gen: None,
                signal: Signal::USR1,
            },
            Report::ShutdownStarted {
                signal: Signal::INT,
                forced: false,
            },
            Report::ShutdownStarted {
                signal: Signal::INT,
                forced: true,
            },
            Report::Unkillable { gen: 12, pid: 4242 },
            Report::UpgradeRequested {
                binary: "/usr/bin/handoff".into(),
            },
            Report::Exec {
                binary: "/usr/bin/handoff".into(),
                version: "0.2.0".into(),
            },
            Report::UpgradeFailed {
                error: "cannot execute".into(),
            },
            Report::Upgraded {
                from: "0.1.0".into(),
                to: "0.2.0".into(),
                count: 12,
            },
        ];
        for r in &reports {
            let line = text_of(r);
            assert!(
                line.ends_with('\n') && line.matches('\n').count() == 1,
                "{r:?}: {line:?}"
            );
            let msg_start = line
                .find(" msg=\"")
                .map(|i| i + 6)
                .or_else(|| line.find(" msg=").map(|i| i + 5));
            let msg_start = msg_start.unwrap_or_else(|| panic!("no msg: {line}"));
            let msg_end = if line[msg_start..].starts_with('"') {
                msg_start + 1 + line[msg_start + 1..].find('"').expect("closing quote")
            } else {
                msg_start
                    + line[msg_start..]
                        .find(' ')
                        .unwrap_or(line.len() - msg_start)
            };
            let msg = &line[msg_start..msg_end];
            for v in [
                "12",
                "11",
                "4242",
                "4141",
                "1234",
                "1234.0",
                "SIGTERM",
                "SIGUSR1",
                "SIGINT",
                "warming",
                "exit status 3",
            ] {
                assert!(
                    !msg.contains(v),
                    "{v} repeated in the message of {r:?}: {line}"
                );
            }
            assert!(line.contains(" event="), "{line}");
        }
    }

    proptest! {
        #[test]
        fn output_is_bounded_and_free_of_controls(s in any::<String>()) {
            let t = child_text(&s);
            prop_assert!(t.len() <= MAX_CHILD_TEXT + '…'.len_utf8());
            prop_assert!(!t.chars().any(|c| c.is_control()), "{:?}", t);
            let bad = t.contains(['\u{2028}', '\u{2029}', '\u{202e}']);
            prop_assert!(!bad, "{:?}", t);
            if s.len() <= MAX_CHILD_TEXT / 8 {
                prop_assert!(!t.ends_with('…') || s.ends_with('…'));
            }
        }
    }
}
