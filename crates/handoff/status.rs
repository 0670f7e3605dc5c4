//! How handoff describes itself: `status` (JSON and text), the answers to control requests,
//! and the messages for its service manager. Rendering only: every decision was made by the
//! state machine.

use std::time::Instant;

use handoff_core::supervisor::{InPlace, ManagerMessage, Outcome, ReloadOutcome, Snapshot};
use handoff_sys::listeners::Listener;
use serde_json::{json, Value};

use crate::control::VERSION;

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

fn tenths(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

/// One line for a person: what a reload did.
pub fn reload_message(o: &ReloadOutcome) -> String {
    let ms = o.after.as_secs_f64() * 1e3;
    match (&o.failure, o.in_place, o.serving) {
        (None, Some(InPlace::Confirmed), _) => {
            return format!(
                "reloaded in place: generation {} reported RELOADING=1, then READY=1 after {ms:.0} ms",
                o.gen
            )
        }
        (None, Some(InPlace::Signalled(sig)), _) => {
            return format!(
                "reload signal {sig} delivered to generation {}; it does not report reload progress (RELOADING=1), so its outcome is not known",
                o.gen
            )
        }
        (Some(why), Some(_), _) => {
            return format!("reload in place of generation {} failed: it {why}", o.gen)
        }
        _ => {}
    }
    match (&o.failure, o.serving) {
        (None, serving) => format!(
            "reload finished: generation {} (pid {}) serving, ready after {:.0} ms",
            o.gen,
            serving.map_or_else(|| "?".to_string(), |s| s.1.to_string()),
            o.after.as_secs_f64() * 1e3
        ),
        (Some(why), Some((sg, sp))) => format!(
            "new generation {} {why}; still serving generation {sg}, pid {sp}",
            o.gen
        ),
        (Some(why), None) => format!("new generation {} {why}; no generation is serving", o.gen),
    }
}

/// The answer line to a control request (protocol version [`VERSION`]). `status` is the
/// rendered status, used for [`Outcome::Status`].
pub fn reply_line(outcome: &Outcome, status: impl FnOnce() -> Value) -> String {
    let v = match outcome {
        Outcome::ReloadRequested => {
            json!({"v": VERSION, "ok": true, "message": "reload requested"})
        }
        Outcome::Reload(o) => {
            let message = reload_message(o);
            json!({
                "v": VERSION, "ok": o.ok(), "gen": o.gen,
                "serving_gen": o.serving.map(|s| s.0), "serving_pid": o.serving.map(|s| s.1),
                "duration_ms": ms(o.after),
                "message": if o.ok() { Some(&message) } else { None },
                "error": if o.ok() { None } else { Some(&message) },
            })
        }
        Outcome::ShuttingDown => {
            json!({"v": VERSION, "ok": false, "error": "handoff is shutting down"})
        }
        Outcome::Status => json!({"v": VERSION, "ok": true, "status": status()}),
        Outcome::Stopping => json!({
            "v": VERSION, "ok": true, "pid": std::process::id(), "message": "stopping"
        }),
        Outcome::Stopped { code } => json!({
            "v": VERSION, "ok": true, "pid": std::process::id(), "code": code,
            "message": "stopped",
        }),
        Outcome::Upgraded { from, to } => json!({
            "v": VERSION, "ok": true, "pid": std::process::id(), "from": from, "to": to,
            "message": format!("upgraded from handoff {from} to {to}"),
            "status": status(),
        }),
        Outcome::UpgradeFailed(why) => json!({"v": VERSION, "ok": false, "error": why}),
    };
    v.to_string()
}

/// What `status` says of handoff itself, besides the state machine.
pub struct About<'a> {
    pub listeners: &'a [Listener],
    /// Per listener: its accept queue (TCP only) and whether it is stuck (connections wait
    /// and no generation accepts them).
    pub queues: &'a [(Option<u32>, bool)],
    pub started: Instant,
    /// The child's command line.
    pub command: &'a [std::ffi::OsString],
    /// How a generation's processes are known: `cgroup` (its own cgroup v2: also workers
    /// that left its process group) or `process group`.
    pub tracking: &'static str,
}

/// The one word for where handoff stands: `serving`, `starting` (the first generation, or a
/// replacement, is on its way), `restarting` (in the restart back-off: a crash loop when
/// `failures_in_row` > 1), `stopping`.
pub fn overall_state(snap: &Snapshot) -> &'static str {
    if snap.shutting_down {
        "stopping"
    } else if snap.serving.is_some() {
        "serving"
    } else if snap.next_restart.is_some() {
        "restarting"
    } else {
        "starting"
    }
}

/// `status --json`.
pub fn json(snap: &Snapshot, about: &About, now: Instant) -> Value {
    let (listeners, started) = (about.listeners, about.started);
    let gens: Vec<Value> = snap
        .generations
        .iter()
        .map(|g| {
            json!({
                "gen": g.gen,
                "pid": g.phase.pid(),
                "state": g.phase.name(),
                "age_s": tenths(g.age),
                "time_to_ready_ms": g.time_to_ready.map(ms),
                "ready_by": g.ready_by.map(|r| r.as_str()),
                "accepting_fd": g.accepting_fd,
            })
        })
        .collect();
    let listeners: Vec<Value> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let (accept_queue, stuck) = about.queues.get(i).copied().unwrap_or((None, false));
            json!({
                "fd": 3 + i, "name": l.name, "addr": l.local, "kind": l.kind.as_str(),
                // Its socket file was deleted: unreachable by path until the next reload.
                "file_missing": l.file_missing(),
                "accept_queue": accept_queue,
                "stuck": stuck,
            })
        })
        .collect();
    let last = snap.last_reload.as_ref().map(|(o, at)| {
        json!({
            "gen": o.gen,
            "result": if o.ok() { "ok" } else { "failed" },
            "duration_ms": ms(o.after),
            "message": reload_message(o),
            "ago_s": tenths(now.saturating_duration_since(*at)),
        })
    });
    let command: Vec<String> = about
        .command
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    json!({
        "pid": std::process::id(),
        "version": crate::VERSION,
        "state": overall_state(snap),
        "command": command,
        "tracking": about.tracking,
        "failures_in_row": snap.failures_in_row,
        "last_failure": snap.last_failure.as_ref().map(|(f, at)| json!({
            "reason": f.to_string(),
            "ago_s": tenths(now.saturating_duration_since(*at)),
        })),
        "next_restart_in_s": snap.next_restart.map(|t| tenths(t.saturating_duration_since(now))),
        "uptime_s": tenths(now.saturating_duration_since(started)),
        "serving": snap.serving.map(|(g, p)| json!({"gen": g, "pid": p})),
        "generations": gens,
        "listeners": listeners,
        "reloads": snap.reloads,
        "last_reload": last,
        "upgrades": snap.upgrades,
        "upgraded_ago_s": snap.last_upgrade.map(|t| tenths(now.saturating_duration_since(t))),
    })
}

/// Remove what changes with the clock alone (ages, uptime), so that two statuses compare
/// equal when nothing happened (`status --watch`).
pub fn strip_clock(v: &mut Value) {
    if let Some(o) = v.as_object_mut() {
        for k in ["uptime_s", "next_restart_in_s", "upgraded_ago_s"] {
            o.remove(k);
        }
        for k in ["last_reload", "last_failure"] {
            if let Some(x) = o.get_mut(k).and_then(Value::as_object_mut) {
                x.remove("ago_s");
            }
        }
        // The queue length moves with the load; `stuck` stays.
        if let Some(ls) = o.get_mut("listeners").and_then(Value::as_array_mut) {
            for l in ls.iter_mut().filter_map(Value::as_object_mut) {
                l.remove("accept_queue");
            }
        }
        if let Some(gens) = o.get_mut("generations").and_then(Value::as_array_mut) {
            for g in gens.iter_mut().filter_map(Value::as_object_mut) {
                g.remove("age_s");
            }
        }
    }
}

/// One line for `status --watch`: the state, and each generation with its phase.
pub fn summary(v: &Value) -> String {
    let gens: Vec<String> = v["generations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            format!(
                "{} (pid {}) {}",
                g["gen"],
                g["pid"],
                g["state"].as_str().unwrap_or("?")
            )
        })
        .collect();
    let failures = match v["failures_in_row"].as_u64() {
        Some(n) if n > 0 => format!("; {n} failure(s) in a row"),
        _ => String::new(),
    };
    format!(
        "{}: generations {}; reloads {}{failures}",
        v["state"].as_str().unwrap_or("?"),
        if gens.is_empty() {
            "none".to_string()
        } else {
            gens.join(", ")
        },
        v["reloads"]
    )
}

/// `handoff status` as text.
pub fn text(v: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "handoff {} pid {}: {}, up {}s, {} reload(s)",
        v["version"].as_str().unwrap_or("?"),
        v["pid"],
        v["state"].as_str().unwrap_or("?"),
        v["uptime_s"],
        v["reloads"]
    );
    if let Some(n) = v["upgrades"].as_u64().filter(|n| *n > 0) {
        let _ = writeln!(
            out,
            "upgraded {n} time(s), last {}s ago (handoff upgrade)",
            v["upgraded_ago_s"]
        );
    }
    if let Some(cmd) = v["command"].as_array() {
        let words: Vec<&str> = cmd.iter().filter_map(|w| w.as_str()).collect();
        let _ = writeln!(out, "command: {}", words.join(" "));
    }
    if let Some(t) = v["tracking"].as_str() {
        let _ = writeln!(out, "generations tracked by: {t}");
    }
    if let Some(f) = v["last_failure"].as_object() {
        let retry = v["next_restart_in_s"]
            .as_f64()
            .map(|s| format!("; next start in {s}s"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "failures in a row: {} (last {}s ago: {}){retry}",
            v["failures_in_row"],
            f["ago_s"],
            f["reason"].as_str().unwrap_or("?")
        );
    }
    let _ = writeln!(out, "generations:");
    for g in v["generations"].as_array().into_iter().flatten() {
        let ready = g["time_to_ready_ms"]
            .as_f64()
            .map(|m| format!(", ready in {m} ms"))
            .unwrap_or_default();
        let adopted: Vec<String> = g["adopted"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| format!("fd {} {}", a["fd"], a["addr"].as_str().unwrap_or("?")))
            .collect();
        let adopted = if adopted.is_empty() {
            String::new()
        } else {
            format!(", adopted its bind: {}", adopted.join(", "))
        };
        let _ = writeln!(
            out,
            "  {:>4}  pid {:<8} {:<9} age {}s{ready}{adopted}",
            g["gen"],
            g["pid"],
            g["state"].as_str().unwrap_or("?"),
            g["age_s"]
        );
    }
    let _ = writeln!(out, "listeners:");
    for l in v["listeners"].as_array().into_iter().flatten() {
        let missing = if l["file_missing"] == true {
            "  (socket file deleted: bound again at the next reload)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  fd {}  {:<8} {}{missing}",
            l["fd"],
            l["name"].as_str().unwrap_or(""),
            l["addr"].as_str().unwrap_or("")
        );
    }
    match v["last_reload"].as_object() {
        Some(r) => {
            let _ = writeln!(
                out,
                "last reload: {} ({} ms, {}s ago): {}",
                r["result"].as_str().unwrap_or("?"),
                r["duration_ms"],
                r["ago_s"],
                r["message"].as_str().unwrap_or("")
            );
        }
        None => {
            let _ = writeln!(out, "last reload: none");
        }
    }
    out
}

/// What to send the service manager for `m`: the assignments of one datagram (systemd reads
/// one datagram at a time, so related assignments must travel together).
pub enum ManagerDatagram {
    /// `READY=1`, `STATUS=...`.
    Ready(String),
    /// `STATUS=...`.
    Status(String),
    /// `RELOADING=1`, `MONOTONIC_USEC=now`, `STATUS=...`.
    Reloading(String),
    /// `STOPPING=1`, `STATUS=...`.
    Stopping(String),
}

pub fn manager_datagram(m: &ManagerMessage) -> ManagerDatagram {
    match m {
        ManagerMessage::Ready { gen, pid } => {
            ManagerDatagram::Ready(format!("serving generation {gen} (pid {pid})"))
        }
        ManagerMessage::Serving { gen, pid } => {
            ManagerDatagram::Status(format!("serving generation {gen} (pid {pid})"))
        }
        ManagerMessage::Reloading { gen } => {
            ManagerDatagram::Reloading(format!("reloading: starting generation {gen}"))
        }
        ManagerMessage::ReloadFailed(o) => {
            ManagerDatagram::Ready(format!("reload failed: {}", reload_message(o)))
        }
        ManagerMessage::Stopping => ManagerDatagram::Stopping("stopping: draining".into()),
    }
}
