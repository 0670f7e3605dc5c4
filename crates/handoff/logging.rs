//! Logging: a tracing subscriber on stderr, and the rendering of core reports.
//!
//! Every event carries an `event` field (`spawned`, `ready`, `stopping`, ...) plus the
//! generation and pid it concerns, so that `--log-format json` is machine-readable: the
//! integration tests and the benchmark read exactly these lines.

use handoff_core::supervisor::{KillReason, Report};
use tracing::{info, warn};

use crate::cli::LogFormat;

pub fn init(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
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
                KillReason::ReadyTimeout => "ready timeout reached",
                KillReason::Forced => "second stop request",
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
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}
