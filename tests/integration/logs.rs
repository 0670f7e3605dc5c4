//! handoff's own log: losing its reader never costs the service, and what children say
//! cannot forge log lines or terminal escapes.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::util::*;

#[test]
fn a_vanished_log_reader_never_kills_handoff() {
    // stderr is a pipe whose read end is closed once generation 1 is ready: every later log
    // line fails with EPIPE (a log collector that died; a closed terminal gives EIO).
    let h = handoff()
        .args(["--listen", "127.0.0.1:0", "--", "python3", &fixture()])
        .start_then_close_stderr(|v| matches(v, "ready", &[("gen", 1.into())]));
    let control = h.control();
    for gen in 2..=4u64 {
        let (code, out, err) = output_within(
            Command::new(BIN)
                .args(["reload", "--timeout", "20s", "--control"])
                .arg(&control),
            Duration::from_secs(30),
        );
        assert_eq!(code, 0, "reload to generation {gen}: {out}{err}");
        assert!(out.contains(&format!("generation {gen}")), "{out}");
        assert!(alive(h.pid), "handoff died");
    }
    // A signal-driven reload logs as much, and nobody waits on it.
    h.reload();
    wait_until("generation 5 to serve", WAIT, || {
        let (code, out, _) = h.cmd(&["status", "--json"]);
        code == 0 && serde_json::from_str::<Value>(&out).is_ok_and(|v| v["serving"]["gen"] == 5)
    });
    assert!(alive(h.pid), "handoff died");
    let (code, out, err) = h.cmd(&["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("status json");
    assert_eq!(v["reloads"], 4, "{v}");
    assert_eq!(v["last_reload"]["result"], "ok", "{v}");
    assert_eq!(v["pid"], h.pid);
}

#[test]
fn control_characters_in_a_childs_status_are_escaped() {
    // ESC sequences (colour, clear screen, set the window title), a bell, a vertical tab,
    // a Unicode line separator, and what an injected log line would look like.
    let status = "STATUS=ok \x1b[31mred\x1b[0m\x07\x1b]0;pwned\x07 \x0b\u{2028}{\"event\":\"ready\",\"gen\":9}";
    let escaped =
        r#"ok \x1b[31mred\x1b[0m\x07\x1b]0;pwned\x07 \x0b\u{2028}{"event":"ready","gen":9}"#;
    for format in ["json", "text"] {
        let h = handoff_logging(format)
            .args(["--listen", "127.0.0.1:0", "--", "python3", &fixture()])
            .args(["--notify-message", status])
            .start();
        let line = |h: &Handoff| {
            h.raw_log()
                .lines()
                .find(|l| l.contains("generation 1: ok"))
                .map(str::to_string)
        };
        wait_until(&format!("the status line ({format})"), WAIT, || {
            line(&h).is_some()
        });
        let l = line(&h).expect("status line");
        assert!(
            !l.chars().any(|c| c.is_control()) && !l.contains('\u{2028}'),
            "{format}: raw control characters in {l:?}"
        );
        if format == "json" {
            let v = h.wait("status", &[("gen", 1.into())]);
            assert_eq!(v["status"], escaped, "{v}");
            assert_eq!(h.events("ready").len(), 1, "no forged event");
        } else {
            assert!(l.contains(escaped), "{l}");
        }
    }
}
