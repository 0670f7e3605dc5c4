//! Parsing one `sd_notify(3)` datagram, as systemd's `src/shared/notify-recv.c` and
//! `service_notify_message()` do.
//!
//! A datagram is a list of `KEY=VALUE` assignments separated by newlines. Like systemd,
//! values are matched exactly (`READY=1`, not `READY=yes`), lines are split on both `\n` and
//! `\r`, and anything not understood is ignored rather than rejecting the whole message, so
//! servers written for newer systemd keep working.

use std::fmt;

/// What one datagram said. Fields are `false`/`None` when absent or malformed.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NotifyMessage {
    /// `READY=1`.
    pub ready: bool,
    /// `RELOADING=1`.
    pub reloading: bool,
    /// `STOPPING=1`.
    pub stopping: bool,
    /// `STATUS=...`, kept as sent; the last one wins.
    pub status: Option<String>,
    /// `EXTEND_TIMEOUT_USEC=n`.
    pub extend_timeout_usec: Option<u64>,
    /// `MAINPID=n`, a positive pid.
    pub mainpid: Option<u32>,
    /// `WATCHDOG=1`.
    pub watchdog: bool,
    /// `ERRNO=n`, a non-negative errno.
    pub errno: Option<i32>,
    /// `BARRIER=1`.
    pub barrier: bool,
    /// Lines ignored: no `=`, or a key handoff does not act on (FDSTORE=1, MONOTONIC_USEC=...).
    pub unknown: usize,
    /// What was ignored and why (unknown keys, lines without `=`, values not understood such
    /// as `READY=true`), in order; at most [`MAX_IGNORED`] of them.
    pub ignored: Vec<Ignored>,
}

/// Most ignored lines a [`NotifyMessage`] keeps (the rest are only counted in `unknown`).
pub const MAX_IGNORED: usize = 16;

/// One line of a datagram that handoff did not act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ignored {
    /// The line as sent.
    pub line: String,
    pub why: IgnoreReason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IgnoreReason {
    /// No `=` in the line.
    NoAssignment,
    /// A key handoff does not act on.
    UnknownKey,
    /// A known key with a value it does not understand (`READY=true`, `MAINPID=x`).
    BadValue,
}

impl IgnoreReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoAssignment => "not KEY=VALUE",
            Self::UnknownKey => "unknown key",
            Self::BadValue => "value not understood",
        }
    }
}

/// Parse one datagram payload.
///
/// Rejected, as systemd rejects them: an empty payload, and a NUL byte anywhere except as
/// the very last byte (systemd tolerates one trailing NUL from senders that include the C
/// string terminator). Stricter than systemd: the payload must be UTF-8 as a whole, since
/// only STATUS carries free text and systemd drops a non-UTF-8 STATUS anyway.
pub fn parse_notify(payload: &[u8]) -> Result<NotifyMessage, NotifyParseError> {
    let err = |kind| Err(NotifyParseError { kind });
    let body = payload.strip_suffix(&[0]).unwrap_or(payload);
    if body.is_empty() {
        return err(ErrorKind::Empty);
    }
    if let Some(offset) = body.iter().position(|&b| b == 0) {
        return err(ErrorKind::EmbeddedNul { offset });
    }
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(e) => {
            return err(ErrorKind::InvalidUtf8 {
                offset: e.valid_up_to(),
            })
        }
    };
    let mut msg = NotifyMessage::default();
    for line in text.split(['\n', '\r']).filter(|l| !l.is_empty()) {
        let Some((key, value)) = line.split_once('=') else {
            msg.unknown += 1;
            msg.ignore(line, IgnoreReason::NoAssignment);
            continue;
        };
        let flag = |set: &mut bool| {
            *set |= value == "1";
            value == "1"
        };
        let understood = match key {
            "READY" => flag(&mut msg.ready),
            "RELOADING" => flag(&mut msg.reloading),
            "STOPPING" => flag(&mut msg.stopping),
            "WATCHDOG" => flag(&mut msg.watchdog),
            "BARRIER" => flag(&mut msg.barrier),
            "STATUS" => {
                msg.status = Some(value.to_owned());
                true
            }
            "EXTEND_TIMEOUT_USEC" => parse_digits::<u64>(value)
                .map(|n| msg.extend_timeout_usec = Some(n))
                .is_some(),
            // A pid_t is an i32; 0 is not a process.
            "MAINPID" => parse_digits::<u32>(value)
                .filter(|&n| n > 0 && n <= i32::MAX as u32)
                .map(|n| msg.mainpid = Some(n))
                .is_some(),
            "ERRNO" => parse_digits::<i32>(value)
                .map(|n| msg.errno = Some(n))
                .is_some(),
            _ => {
                msg.unknown += 1;
                msg.ignore(line, IgnoreReason::UnknownKey);
                continue;
            }
        };
        if !understood {
            msg.ignore(line, IgnoreReason::BadValue);
        }
    }
    Ok(msg)
}

impl NotifyMessage {
    fn ignore(&mut self, line: &str, why: IgnoreReason) {
        if self.ignored.len() < MAX_IGNORED {
            self.ignored.push(Ignored {
                line: line.to_owned(),
                why,
            });
        }
    }
}

/// A decimal number of ASCII digits only: no sign, no spaces (Rust's parsers accept `+`).
fn parse_digits<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Why a datagram was dropped as a whole. Displays as one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyParseError {
    kind: ErrorKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ErrorKind {
    Empty,
    EmbeddedNul { offset: usize },
    InvalidUtf8 { offset: usize },
}

impl fmt::Display for NotifyParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid notify message: ")?;
        match self.kind {
            ErrorKind::Empty => {
                f.write_str("empty datagram (expected KEY=VALUE lines, e.g. READY=1)")
            }
            ErrorKind::EmbeddedNul { offset } => {
                write!(f, "embedded NUL byte at offset {offset}")
            }
            ErrorKind::InvalidUtf8 { offset } => write!(f, "not valid UTF-8 at offset {offset}"),
        }
    }
}

impl std::error::Error for NotifyParseError {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(p: &str) -> NotifyMessage {
        parse_notify(p.as_bytes()).unwrap()
    }
    fn err(p: &[u8]) -> String {
        let m = parse_notify(p).unwrap_err().to_string();
        assert!(!m.contains('\n'), "{m}");
        m
    }

    #[test]
    fn ready() {
        assert_eq!(
            ok("READY=1"),
            NotifyMessage {
                ready: true,
                ..Default::default()
            }
        );
    }

    #[test]
    fn trailing_newline() {
        assert!(ok("READY=1\n").ready);
    }

    #[test]
    fn crlf_lines() {
        let m = ok("READY=1\r\nSTATUS=up\r\n");
        assert!(m.ready);
        assert_eq!(m.status.as_deref(), Some("up"));
        assert_eq!(m.unknown, 0);
    }

    #[test]
    fn one_trailing_nul_is_tolerated() {
        assert!(parse_notify(b"READY=1\0").unwrap().ready);
    }

    #[test]
    fn empty_lines_skipped() {
        let m = ok("\n\nREADY=1\n\n\nSTOPPING=1\n");
        assert!(m.ready && m.stopping);
        assert_eq!(m.unknown, 0);
    }

    #[test]
    fn only_newlines_is_an_empty_message() {
        assert_eq!(ok("\n\n"), NotifyMessage::default());
    }

    #[test]
    fn ready_other_values_ignored() {
        assert!(!ok("READY=0").ready);
        assert!(!ok("READY=yes").ready);
        assert!(!ok("READY=1 ").ready);
        assert!(!ok("READY").ready);
        assert!(ok("READY=0\nREADY=1\nREADY=0").ready);
    }

    #[test]
    fn reloading_stopping_watchdog_barrier() {
        let m = ok("RELOADING=1\nSTOPPING=1\nWATCHDOG=1\nBARRIER=1");
        assert!(m.reloading && m.stopping && m.watchdog && m.barrier);
        assert!(!m.ready);
        let m = ok("RELOADING=0\nWATCHDOG=trigger\nBARRIER=2");
        assert!(!m.reloading && !m.watchdog && !m.barrier);
    }

    #[test]
    fn status_last_wins_and_kept_as_is() {
        let m = ok("STATUS=first\nSTATUS=  second = x \u{e9}");
        assert_eq!(m.status.as_deref(), Some("  second = x \u{e9}"));
        assert_eq!(ok("STATUS=").status.as_deref(), Some(""));
    }

    #[test]
    fn extend_timeout() {
        assert_eq!(
            ok("EXTEND_TIMEOUT_USEC=5000000").extend_timeout_usec,
            Some(5_000_000)
        );
        assert_eq!(ok("EXTEND_TIMEOUT_USEC=abc").extend_timeout_usec, None);
        assert_eq!(ok("EXTEND_TIMEOUT_USEC=-1").extend_timeout_usec, None);
        assert_eq!(ok("EXTEND_TIMEOUT_USEC=+1").extend_timeout_usec, None);
        assert_eq!(ok("EXTEND_TIMEOUT_USEC=").extend_timeout_usec, None);
        assert_eq!(
            ok("EXTEND_TIMEOUT_USEC=99999999999999999999999").extend_timeout_usec,
            None
        );
    }

    #[test]
    fn mainpid() {
        assert_eq!(ok("MAINPID=1234").mainpid, Some(1234));
        assert_eq!(ok("MAINPID=0").mainpid, None);
        assert_eq!(ok("MAINPID=2147483648").mainpid, None);
        assert_eq!(ok("MAINPID=x").mainpid, None);
    }

    #[test]
    fn errno() {
        assert_eq!(ok("ERRNO=2").errno, Some(2));
        assert_eq!(ok("ERRNO=-2").errno, None);
        assert_eq!(ok("ERRNO=e").errno, None);
    }

    #[test]
    fn unknown_lines_counted() {
        let m = ok("READY=1\nFDSTORE=1\nno equals sign\nX_CUSTOM=1\nready=1");
        assert!(m.ready);
        assert_eq!(m.unknown, 4);
    }

    #[test]
    fn invalid_values_are_not_unknown() {
        assert_eq!(ok("MAINPID=x\nREADY=2").unknown, 0);
    }

    #[test]
    fn what_is_ignored_is_returned_with_why() {
        let m = ok("READY=true\nSTATUS=up\nX_CUSTOM=1\nhello\nMAINPID=0\nREADY=1\nWATCHDOG=1");
        assert!(m.ready && m.watchdog);
        let got: Vec<(&str, IgnoreReason)> =
            m.ignored.iter().map(|i| (i.line.as_str(), i.why)).collect();
        assert_eq!(
            got,
            [
                ("READY=true", IgnoreReason::BadValue),
                ("X_CUSTOM=1", IgnoreReason::UnknownKey),
                ("hello", IgnoreReason::NoAssignment),
                ("MAINPID=0", IgnoreReason::BadValue),
            ]
        );
        assert_eq!(m.unknown, 2);
        assert!(ok("READY=1\nSTATUS=x\nMAINPID=5").ignored.is_empty());
        // Bounded: a datagram of garbage keeps MAX_IGNORED lines, and counts them all.
        let flood = "X=1\n".repeat(1000);
        let m = ok(&flood);
        assert_eq!((m.ignored.len(), m.unknown), (MAX_IGNORED, 1000));
    }

    #[test]
    fn rejects_empty() {
        assert!(err(b"").contains("empty datagram"));
        assert!(err(b"\0").contains("empty datagram"));
    }

    #[test]
    fn rejects_embedded_nul() {
        assert!(err(b"READY=1\0STATUS=x").contains("NUL byte at offset 7"));
        assert!(err(b"\0READY=1").contains("offset 0"));
        assert!(err(b"READY=1\0\0").contains("offset 7"));
    }

    #[test]
    fn rejects_invalid_utf8() {
        assert!(err(b"READY=1\nSTATUS=\xff").contains("UTF-8 at offset 15"));
    }

    /// A line that never sets `ready`.
    fn other_line() -> impl Strategy<Value = String> {
        prop_oneof![
            "STATUS=[^\n\r\0]{0,30}",
            "(RELOADING|STOPPING|WATCHDOG|BARRIER)=[01]",
            "(MAINPID|ERRNO|EXTEND_TIMEOUT_USEC)=[0-9]{0,12}",
            "READY=(0|2|yes|)",
            "X_[A-Z_]{0,10}=[^\n\r\0]{0,20}",
            "[a-z ]{0,10}",
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(p in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Err(e) = parse_notify(&p) {
                let m = e.to_string();
                prop_assert!(!m.is_empty());
                prop_assert!(!m.contains('\n') && !m.contains('\r'), "{m}");
            }
        }

        #[test]
        fn arbitrary_strings_never_panic(s in any::<String>()) {
            let _ = parse_notify(s.as_bytes());
        }

        #[test]
        fn ready_is_found_among_other_lines(
            before in proptest::collection::vec(other_line(), 0..8),
            after in proptest::collection::vec(other_line(), 0..8),
            sep in prop_oneof![Just("\n"), Just("\r\n"), Just("\n\n")],
            trailing in any::<bool>(),
        ) {
            let mut lines = before.clone();
            lines.push("READY=1".into());
            lines.extend(after.iter().cloned());
            let mut p = lines.join(sep);
            if trailing {
                p.push('\n');
            }
            prop_assert!(parse_notify(p.as_bytes()).unwrap().ready);

            let mut without = before;
            without.extend(after);
            let p = without.join(sep);
            if let Ok(m) = parse_notify(p.as_bytes()) {
                prop_assert!(!m.ready);
            }
        }

        #[test]
        fn status_round_trips(s in "[^\n\r\0]{0,40}") {
            let m = parse_notify(format!("STATUS={s}\n").as_bytes()).unwrap();
            prop_assert_eq!(m.status, Some(s));
        }
    }
}
