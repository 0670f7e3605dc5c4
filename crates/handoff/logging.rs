//! Logging: a tracing subscriber on stderr, and the rendering of core reports.
//!
//! Every event carries an `event` field (`spawned`, `ready`, `stopping`, ...) plus the
//! generation and pid it concerns, so that `--log-format json` is machine-readable: the
//! integration tests and the benchmark read exactly these lines.

use std::io::{self, Write};

use handoff_core::supervisor::{KillReason, Report};
use tracing::{info, warn};

use crate::cli::LogFormat;

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

pub fn init(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_writer(|| LossyStderr)
        .log_internal_errors(false)
        .with_target(false)
        .with_max_level(tracing::Level::INFO);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Log a report of the state machine.
pub fn report(r: &Report) {
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
            "generation {gen} started (pid {pid})"
        ),
        Report::Ready { gen, pid, after } => info!(
            event = "ready",
            gen,
            pid,
            ready_ms = ms(*after),
            "generation {gen} (pid {pid}) ready after {:.1} ms",
            ms(*after)
        ),
        Report::Stopping {
            gen,
            pid,
            signal,
            handover_from,
        } => {
            // The hand-over latency: READY=1 received → old generation told to stop. This
            // report comes right after the signal was sent, so now is when it was sent.
            let handover_us =
                handover_from.map(|t| (t.elapsed().as_secs_f64() * 1e9).round() / 1e3);
            info!(
                event = "stopping",
                gen,
                pid,
                signal = %signal,
                handover_us,
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
            status = %status,
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
                "killing process group of generation {gen} (pid {pid}): {why}"
            );
        }
        Report::Failed { gen, pid, reason } => warn!(
            event = "failed",
            gen,
            pid,
            reason = %reason,
            "generation {gen} failed: {reason}"
        ),
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
                    "reload finished: generation {gen} serving"
                ),
                (false, Some((sg, sp))) => warn!(
                    event = "reload_finished",
                    result = "failed",
                    gen,
                    duration_ms,
                    serving_gen = sg,
                    serving_pid = sp,
                    "reload failed; still serving generation {sg}, pid {sp}"
                ),
                (_, None) => warn!(
                    event = "reload_finished",
                    result = "failed",
                    gen,
                    duration_ms,
                    "reload failed; no generation is serving"
                ),
            }
        }
        Report::Exited { gen, pid, status } => warn!(
            event = "exited",
            gen,
            pid,
            status = %status,
            "serving generation {gen} (pid {pid}) exited on its own: {status}"
        ),
        Report::Reaped { gen, pid, status } => {
            info!(event = "reaped", gen, pid, status = %status, "failed generation {gen} (pid {pid}) is gone: {status}")
        }
        Report::RestartScheduled { delay } => info!(
            event = "restart_scheduled",
            delay_ms = ms(*delay),
            "starting a new generation in {:.0} ms",
            ms(*delay)
        ),
        Report::Status { gen, pid, text } => {
            let text = child_text(text);
            info!(event = "status", gen, pid, status = %text, "generation {gen}: {text}")
        }
        Report::ChildStopping { gen, pid } => {
            info!(
                event = "child_stopping",
                gen, pid, "generation {gen} (pid {pid}) reports STOPPING=1"
            )
        }
        Report::Forwarded { gen, signal } => match gen {
            Some(g) => {
                info!(event = "forwarded", gen = g, signal = %signal, "forwarded {signal} to generation {g}")
            }
            None => {
                warn!(event = "forward_dropped", signal = %signal, "{signal} not forwarded: no generation is serving")
            }
        },
        Report::ShutdownStarted { signal, forced } => {
            if *forced {
                warn!(event = "shutdown", forced = true, signal = %signal, "second stop request ({signal}): killing everything now");
            } else {
                info!(event = "shutdown", forced = false, signal = %signal, "stopping ({signal}): draining every generation");
            }
        }
        Report::Unkillable { gen, pid } => warn!(
            event = "unkillable",
            gen, pid, "generation {gen} (pid {pid}) did not die after SIGKILL; giving up on it"
        ),
    }
}

/// A line on stderr outside the log (a fatal error before logging exists). A write error is
/// ignored: there is nobody left to tell.
pub fn error_line(line: &str) {
    stderr_line(line);
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
