//! A Linux signal number as a domain type, so handoff-core needs neither libc nor nix.
//!
//! The numbers are those of Linux on x86_64 and aarch64 (the generic layout); handoff does
//! not target the architectures (alpha, mips, sparc, parisc) that number signals differently.

use std::fmt;
use std::str::FromStr;

/// A signal number in `1..=64`, the range the Linux kernel accepts (`_NSIG` is 64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Signal(i32);

/// Names of signals 1..=31, indexed by `number - 1`, without the `SIG` prefix.
const NAMES: [&str; 31] = [
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
    "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
    "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
];

/// Names accepted by [`Signal::parse`] but never displayed (`kill -l` knows them too).
const ALIASES: [(&str, Signal); 3] = [
    ("IOT", Signal::ABRT),
    ("POLL", Signal::IO),
    ("CLD", Signal::CHLD),
];

/// Serialized as its number (the state `handoff upgrade` passes on).
impl serde::Serialize for Signal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i32(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Signal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i32::deserialize(d)?;
        Signal::from_number(n)
            .ok_or_else(|| serde::de::Error::custom(format!("signal number {n} out of range")))
    }
}

/// The highest signal number Linux accepts.
const MAX: i32 = 64;

impl Signal {
    pub const HUP: Signal = Signal(1);
    pub const INT: Signal = Signal(2);
    pub const QUIT: Signal = Signal(3);
    pub const ILL: Signal = Signal(4);
    pub const TRAP: Signal = Signal(5);
    pub const ABRT: Signal = Signal(6);
    pub const BUS: Signal = Signal(7);
    pub const FPE: Signal = Signal(8);
    pub const KILL: Signal = Signal(9);
    pub const USR1: Signal = Signal(10);
    pub const SEGV: Signal = Signal(11);
    pub const USR2: Signal = Signal(12);
    pub const PIPE: Signal = Signal(13);
    pub const ALRM: Signal = Signal(14);
    pub const TERM: Signal = Signal(15);
    pub const STKFLT: Signal = Signal(16);
    pub const CHLD: Signal = Signal(17);
    pub const CONT: Signal = Signal(18);
    pub const STOP: Signal = Signal(19);
    pub const TSTP: Signal = Signal(20);
    pub const TTIN: Signal = Signal(21);
    pub const TTOU: Signal = Signal(22);
    pub const URG: Signal = Signal(23);
    pub const XCPU: Signal = Signal(24);
    pub const XFSZ: Signal = Signal(25);
    pub const VTALRM: Signal = Signal(26);
    pub const PROF: Signal = Signal(27);
    pub const WINCH: Signal = Signal(28);
    pub const IO: Signal = Signal(29);
    pub const PWR: Signal = Signal(30);
    pub const SYS: Signal = Signal(31);

    /// The signal with number `n`, if `n` is in `1..=64`.
    pub fn from_number(n: i32) -> Option<Signal> {
        (1..=MAX).contains(&n).then_some(Signal(n))
    }

    /// The Linux signal number, as passed to `kill(2)`.
    pub fn number(self) -> i32 {
        self.0
    }

    /// `"SIGTERM"`, or `None` for the unnamed (real-time) signals 32..=64.
    pub fn name(self) -> Option<&'static str> {
        // Each arm is a literal so the result is &'static without allocating.
        Some(match self.0 {
            1 => "SIGHUP",
            2 => "SIGINT",
            3 => "SIGQUIT",
            4 => "SIGILL",
            5 => "SIGTRAP",
            6 => "SIGABRT",
            7 => "SIGBUS",
            8 => "SIGFPE",
            9 => "SIGKILL",
            10 => "SIGUSR1",
            11 => "SIGSEGV",
            12 => "SIGUSR2",
            13 => "SIGPIPE",
            14 => "SIGALRM",
            15 => "SIGTERM",
            16 => "SIGSTKFLT",
            17 => "SIGCHLD",
            18 => "SIGCONT",
            19 => "SIGSTOP",
            20 => "SIGTSTP",
            21 => "SIGTTIN",
            22 => "SIGTTOU",
            23 => "SIGURG",
            24 => "SIGXCPU",
            25 => "SIGXFSZ",
            26 => "SIGVTALRM",
            27 => "SIGPROF",
            28 => "SIGWINCH",
            29 => "SIGIO",
            30 => "SIGPWR",
            31 => "SIGSYS",
            _ => return None,
        })
    }

    /// Parse `TERM`, `SIGTERM`, `sigterm`, `term` or `15` (surrounding whitespace ignored).
    ///
    /// Real-time names (`SIGRTMIN+3`) are refused on purpose: their numbers depend on the C
    /// library (SIGRTMIN is 34 with glibc, 35 with musl), so a number is unambiguous.
    pub fn parse(s: &str) -> Result<Signal, SignalParseError> {
        let err = |kind| SignalParseError {
            input: s.to_owned(),
            kind,
        };
        let t = s.trim();
        if t.is_empty() {
            return Err(err(ErrorKind::Empty));
        }
        if t.bytes().all(|b| b.is_ascii_digit()) {
            // Digits only: no sign, so "-9" or "+9" are not quietly accepted.
            return t
                .parse::<i32>()
                .ok()
                .and_then(Signal::from_number)
                .ok_or_else(|| err(ErrorKind::OutOfRange));
        }
        if let Some(digits) = t.strip_prefix(['+', '-']) {
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err(ErrorKind::Signed));
            }
        }
        let upper = t.to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        if let Some(i) = NAMES.iter().position(|n| *n == bare) {
            // i < 31, so the cast cannot truncate.
            return Ok(Signal(i as i32 + 1));
        }
        if let Some((_, sig)) = ALIASES.iter().find(|(n, _)| *n == bare) {
            return Ok(*sig);
        }
        if bare.starts_with("RTMIN") || bare.starts_with("RTMAX") {
            return Err(err(ErrorKind::RealTime));
        }
        Err(err(ErrorKind::Unknown))
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "signal {}", self.0),
        }
    }
}

impl FromStr for Signal {
    type Err = SignalParseError;

    fn from_str(s: &str) -> Result<Signal, SignalParseError> {
        Signal::parse(s)
    }
}

/// Why a string is not a signal. Displays as one line naming the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalParseError {
    input: String,
    kind: ErrorKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ErrorKind {
    Empty,
    OutOfRange,
    Signed,
    RealTime,
    Unknown,
}

impl SignalParseError {
    /// The string that was rejected.
    pub fn input(&self) -> &str {
        &self.input
    }
}

impl fmt::Display for SignalParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // {:?} quotes the input and escapes control characters, keeping the message one line.
        let input = &self.input;
        match self.kind {
            ErrorKind::Empty => write!(
                f,
                "empty signal {input:?}: use a name like TERM, QUIT, INT, USR1 or a number 1-64"
            ),
            ErrorKind::OutOfRange => write!(
                f,
                "invalid signal {input:?}: signal numbers go from 1 to 64"
            ),
            ErrorKind::Signed => write!(
                f,
                "invalid signal {input:?}: write the number without a sign, from 1 to 64"
            ),
            ErrorKind::RealTime => write!(
                f,
                "unsupported signal {input:?}: real-time signal numbers depend on the C library; \
                 give the number instead (32-64)"
            ),
            ErrorKind::Unknown => write!(
                f,
                "unknown signal {input:?}: use a name like TERM, QUIT, INT, USR1 or a number 1-64"
            ),
        }
    }
}

impl std::error::Error for SignalParseError {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn constants_have_linux_numbers() {
        let expected = [
            (Signal::HUP, 1),
            (Signal::INT, 2),
            (Signal::QUIT, 3),
            (Signal::KILL, 9),
            (Signal::USR1, 10),
            (Signal::USR2, 12),
            (Signal::PIPE, 13),
            (Signal::ALRM, 14),
            (Signal::TERM, 15),
            (Signal::CHLD, 17),
            (Signal::CONT, 18),
            (Signal::STOP, 19),
            (Signal::TSTP, 20),
            (Signal::WINCH, 28),
        ];
        for (sig, n) in expected {
            assert_eq!(sig.number(), n, "{sig}");
        }
    }

    #[test]
    fn from_number_range() {
        assert_eq!(Signal::from_number(0), None);
        assert_eq!(Signal::from_number(-1), None);
        assert_eq!(Signal::from_number(65), None);
        assert_eq!(Signal::from_number(1), Some(Signal::HUP));
        assert_eq!(Signal::from_number(64).map(Signal::number), Some(64));
    }

    #[test]
    fn names_and_display() {
        assert_eq!(Signal::TERM.name(), Some("SIGTERM"));
        assert_eq!(Signal::STKFLT.name(), Some("SIGSTKFLT"));
        assert_eq!(Signal::SYS.name(), Some("SIGSYS"));
        assert_eq!(Signal::TERM.to_string(), "SIGTERM");
        let rt = Signal::from_number(40).unwrap();
        assert_eq!(rt.name(), None);
        assert_eq!(rt.to_string(), "signal 40");
        assert_eq!(Signal::from_number(32).unwrap().name(), None);
    }

    #[test]
    fn names_table_matches_name() {
        for (i, n) in NAMES.iter().enumerate() {
            let sig = Signal::from_number(i as i32 + 1).unwrap();
            assert_eq!(sig.name().unwrap(), format!("SIG{n}"));
        }
    }

    #[test]
    fn parse_bare_name() {
        assert_eq!(Signal::parse("TERM").unwrap(), Signal::TERM);
    }

    #[test]
    fn parse_sig_prefixed_name() {
        assert_eq!(Signal::parse("SIGTERM").unwrap(), Signal::TERM);
    }

    #[test]
    fn parse_lowercase_prefixed_name() {
        assert_eq!(Signal::parse("sigterm").unwrap(), Signal::TERM);
    }

    #[test]
    fn parse_lowercase_name() {
        assert_eq!(Signal::parse("term").unwrap(), Signal::TERM);
        assert_eq!(Signal::parse("usr1").unwrap(), Signal::USR1);
        assert_eq!(Signal::parse("SigWinch").unwrap(), Signal::WINCH);
    }

    #[test]
    fn parse_number() {
        assert_eq!(Signal::parse("15").unwrap(), Signal::TERM);
        assert_eq!(Signal::parse("3").unwrap(), Signal::QUIT);
        assert_eq!(Signal::parse("64").unwrap().number(), 64);
    }

    #[test]
    fn parse_trims_whitespace() {
        assert_eq!(Signal::parse(" QUIT\n").unwrap(), Signal::QUIT);
    }

    #[test]
    fn parse_aliases() {
        assert_eq!(Signal::parse("IOT").unwrap(), Signal::ABRT);
        assert_eq!(Signal::parse("SIGPOLL").unwrap(), Signal::IO);
        assert_eq!(Signal::parse("cld").unwrap(), Signal::CHLD);
    }

    #[test]
    fn parse_every_display_name() {
        for n in 1..=MAX {
            let sig = Signal::from_number(n).unwrap();
            if let Some(name) = sig.name() {
                assert_eq!(Signal::parse(name).unwrap(), sig);
            }
            assert_eq!(Signal::parse(&n.to_string()).unwrap(), sig);
        }
    }

    fn err(s: &str) -> String {
        let e = Signal::parse(s).unwrap_err();
        assert_eq!(e.input(), s);
        e.to_string()
    }

    #[test]
    fn rejects_unknown_name() {
        let m = err("FOO");
        assert_eq!(
            m,
            "unknown signal \"FOO\": use a name like TERM, QUIT, INT, USR1 or a number 1-64"
        );
    }

    #[test]
    fn rejects_empty() {
        assert!(err("").contains("empty signal"));
        assert!(err("  ").contains("empty signal"));
    }

    #[test]
    fn rejects_zero() {
        assert!(err("0").contains("\"0\""));
    }

    #[test]
    fn rejects_too_large_number() {
        assert!(err("65").contains("\"65\""));
        assert!(err("99999999999999999999").contains("1 to 64"));
    }

    #[test]
    fn rejects_signed_number() {
        assert!(err("-9").contains("\"-9\": write the number without a sign"));
        assert!(err("+9").contains("\"+9\""));
        assert!(err("-TERM").contains("unknown signal"));
    }

    #[test]
    fn rejects_bare_sig() {
        assert!(err("SIG").contains("\"SIG\""));
    }

    #[test]
    fn rejects_realtime_names() {
        let m = err("SIGRTMIN+3");
        assert!(m.contains("\"SIGRTMIN+3\""), "{m}");
        assert!(m.contains("number"), "{m}");
    }

    #[test]
    fn rejects_name_with_junk() {
        assert!(err("TERM!").contains("\"TERM!\""));
    }

    #[test]
    fn from_str_works() {
        assert_eq!("INT".parse::<Signal>().unwrap(), Signal::INT);
        assert!("nope".parse::<Signal>().is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_errors_are_one_line(s in any::<String>()) {
            if let Err(e) = Signal::parse(&s) {
                let m = e.to_string();
                prop_assert!(!m.is_empty());
                prop_assert!(!m.contains('\n') && !m.contains('\r'), "{m}");
            }
        }

        #[test]
        fn signal_like_strings_never_panic(s in "(?i)(sig)?[a-z0-9+-]{0,8}") {
            if let Err(e) = Signal::parse(&s) {
                let m = e.to_string();
                prop_assert!(!m.is_empty() && !m.contains('\n'));
            }
        }

        #[test]
        fn numbers_round_trip(n in 1..=MAX) {
            let sig = Signal::from_number(n).unwrap();
            prop_assert_eq!(Signal::parse(&n.to_string()).unwrap(), sig);
            prop_assert_eq!(sig.number(), n);
        }

        #[test]
        fn out_of_range_numbers_rejected(n in prop_oneof![i32::MIN..=0, (MAX + 1)..=i32::MAX]) {
            prop_assert!(Signal::from_number(n).is_none());
            prop_assert!(Signal::parse(&n.to_string()).is_err());
        }
    }
}
