//! Parsing `--listen [NAME=]ADDR`.
//!
//! Only syntax is checked here; names like `localhost` are resolved, and sockets bound, by
//! the OS layer. Every error names the input and says how to write it instead.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::str::FromStr;

/// Longest unix socket path: `sun_path` is 108 bytes including the terminating NUL.
pub const MAX_UNIX_PATH: usize = 107;

/// Longest name in `LISTEN_FDNAMES` (systemd's `FDNAME_MAX`).
pub const MAX_NAME: usize = 255;

/// One `--listen` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenSpec {
    /// The name passed to the child in `LISTEN_FDNAMES`; `None` means "unknown".
    pub name: Option<String>,
    pub addr: ListenAddr,
}

/// Where to listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(InetAddr),
    /// Same host/port shape as TCP.
    Udp(InetAddr),
    /// A filesystem path, absolute or relative to handoff's working directory.
    Unix(PathBuf),
}

/// The host part of a TCP or UDP address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    /// The `:8080` form: every interface, IPv4 and IPv6.
    AllInterfaces,
    /// A host name such as `localhost`, resolved later by the OS layer.
    Name(String),
}

/// A host and port, for TCP and UDP alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InetAddr {
    pub host: Host,
    /// 0 lets the OS pick a free port.
    pub port: u16,
}

impl ListenSpec {
    /// Parse `[NAME=]ADDR`: `127.0.0.1:8080`, `[::1]:8080`, `:8080` or `8080` (every
    /// interface), `localhost:8080`, `tcp://…`, `udp://HOST:PORT`, `unix:PATH`, optionally `NAME=` first.
    pub fn parse(s: &str) -> Result<ListenSpec, ListenParseError> {
        let err = |reason: String| ListenParseError {
            input: s.to_owned(),
            reason,
        };
        if s.is_empty() {
            return Err(err(format!(
                "it is empty (expected [NAME=]ADDR, {EXAMPLE})"
            )));
        }
        let (name, rest) = split_name(s);
        if let Some(name) = name {
            check_name(name).map_err(&err)?;
            if rest.is_empty() {
                return Err(err(format!("no address after \"{name}=\" ({EXAMPLE})")));
            }
        }
        let addr = parse_addr(rest).map_err(err)?;
        Ok(ListenSpec {
            name: name.map(str::to_owned),
            addr,
        })
    }
}

impl FromStr for ListenSpec {
    type Err = ListenParseError;

    fn from_str(s: &str) -> Result<ListenSpec, ListenParseError> {
        ListenSpec::parse(s)
    }
}

const EXAMPLE: &str = "e.g. 127.0.0.1:8080, [::1]:8080, :8080 or unix:/run/app.sock";

/// Split off a `NAME=` prefix. The part before the first `=` is a name only if it cannot be
/// the start of an address (no `:`, `/` or `[`), so `unix:/a=b.sock` keeps its `=`.
fn split_name(s: &str) -> (Option<&str>, &str) {
    match s.split_once('=') {
        Some((name, rest)) if !name.contains([':', '/', '[']) => (Some(name), rest),
        _ => (None, s),
    }
}

/// systemd's `FileDescriptorName=` rules, minus the space it tolerates: 1..=255 printable
/// ASCII characters without `:` (the `LISTEN_FDNAMES` separator) or `=`.
fn check_name(name: &str) -> Result<(), String> {
    const RULE: &str = "names are 1-255 printable ASCII characters without spaces, ':' or '='";
    if name.is_empty() {
        return Err(format!(
            "empty name before '=' ({RULE}, e.g. http=127.0.0.1:8080)"
        ));
    }
    if name.len() > MAX_NAME {
        return Err(format!("name is {} bytes long ({RULE})", name.len()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !matches!(c, '!'..='~') || matches!(c, ':' | '='))
    {
        return Err(format!("name {name:?} contains {c:?} ({RULE})"));
    }
    Ok(())
}

fn parse_addr(s: &str) -> Result<ListenAddr, String> {
    if let Some(path) = strip_prefix_ignore_case(s, "unix:") {
        return parse_unix(path).map(ListenAddr::Unix);
    }
    if let Some((scheme, rest)) = s.split_once("://") {
        // Only a word is a scheme; anything else falls through to a host:port error.
        if !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric()) {
            return match scheme.to_ascii_lowercase().as_str() {
                "tcp" => parse_host_port(rest).map(ListenAddr::Tcp),
                "udp" => parse_host_port(rest).map(ListenAddr::Udp),
                _ => Err(format!(
                    "unknown scheme {scheme}://; use tcp://, udp:// or unix:"
                )),
            };
        }
    }
    parse_host_port(s).map(ListenAddr::Tcp)
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// A unix socket path (for a listener or the control socket), checked to fit `sun_path`.
pub fn parse_unix(path: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err("empty unix socket path (expected unix:/path/app.sock)".into());
    }
    if path.contains('\0') {
        return Err("unix socket path contains a NUL byte".into());
    }
    if path.len() > MAX_UNIX_PATH {
        return Err(format!(
            "unix socket path is {} bytes, the limit is {MAX_UNIX_PATH} (sun_path); \
             use a shorter path",
            path.len()
        ));
    }
    Ok(PathBuf::from(path))
}

/// The first address given twice in `specs` (by index), other than port 0, which means "any
/// free port" and may well be asked for twice.
pub fn find_duplicate(specs: &[ListenSpec]) -> Option<(usize, usize)> {
    let fixed = |a: &ListenAddr| match a {
        ListenAddr::Tcp(t) | ListenAddr::Udp(t) => t.port != 0,
        ListenAddr::Unix(_) => true,
    };
    (0..specs.len()).find_map(|j| {
        (0..j)
            .find(|&i| fixed(&specs[i].addr) && specs[i].addr == specs[j].addr)
            .map(|i| (i, j))
    })
}

const HOST_PORT: &str = "expected HOST:PORT, e.g. 127.0.0.1:8080";
const BRACKETS: &str = "put IPv6 addresses in brackets, e.g. [::1]:8080";

fn parse_host_port(s: &str) -> Result<InetAddr, String> {
    if s.is_empty() {
        return Err(format!("missing host and port ({HOST_PORT})"));
    }
    // A bare port is every interface, as systemd's `ListenStream=8080`,
    // `systemd-socket-activate -l 8080` and `start_server --port 8080` read it. No host name
    // is all digits (check_hostname refuses them), so this is never ambiguous.
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(InetAddr {
            host: Host::AllInterfaces,
            port: parse_port(s)?,
        });
    }
    if let Some(inner) = s.strip_prefix('[') {
        let Some((ip, after)) = inner.split_once(']') else {
            return Err(format!("missing ']' after the IPv6 address ({BRACKETS})"));
        };
        let ip: Ipv6Addr = ip.parse().map_err(|_| {
            if ip.contains('%') {
                format!("[{ip}]: zone indexes (%) are not supported; use a global or unique local address")
            } else {
                format!("[{ip}] is not an IPv6 address ({BRACKETS})")
            }
        })?;
        let port = match after.strip_prefix(':') {
            Some(p) => parse_port(p)?,
            None if after.is_empty() => {
                return Err("missing port (expected [IPV6]:PORT, e.g. [::1]:8080)".into())
            }
            None => {
                return Err(format!(
                    "unexpected {after:?} after ']' (expected [IPV6]:PORT, e.g. [::1]:8080)"
                ))
            }
        };
        return Ok(InetAddr {
            host: Host::Ip(IpAddr::V6(ip)),
            port,
        });
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("missing port ({HOST_PORT})"));
    };
    if host.contains(':') {
        if s.parse::<Ipv6Addr>().is_ok() || host.parse::<Ipv6Addr>().is_ok() {
            return Err(BRACKETS.into());
        }
        if let Some((scheme, _)) = host.split_once(':') {
            if scheme.eq_ignore_ascii_case("tcp") || scheme.eq_ignore_ascii_case("udp") {
                return Err(format!(
                    "write the scheme as {scheme}:// (e.g. {scheme}://127.0.0.1:8080)"
                ));
            }
        }
        return Err(format!("too many ':' ({HOST_PORT}; {BRACKETS})"));
    }
    let port = parse_port(port)?;
    Ok(InetAddr {
        host: parse_host(host)?,
        port,
    })
}

fn parse_port(p: &str) -> Result<u16, String> {
    if p.is_empty() {
        return Err(format!("missing port ({HOST_PORT})"));
    }
    // Digits only: u16::from_str would also take "+80".
    if !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid port {p:?} (expected a number 0-65535)"));
    }
    p.parse()
        .map_err(|_| format!("port {p} is out of range (0-65535)"))
}

fn parse_host(h: &str) -> Result<Host, String> {
    if h.is_empty() {
        return Ok(Host::AllInterfaces);
    }
    if let Ok(ip) = h.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    check_hostname(h)?;
    Ok(Host::Name(h.to_owned()))
}

/// DNS syntax: dot-separated labels of letters, digits, `-` and `_` (container service names
/// use it). A numeric last label is refused because getaddrinfo reads `127.1` or `1.2.3` as
/// an abbreviated IPv4 address, which would bind somewhere unexpected.
fn check_hostname(h: &str) -> Result<(), String> {
    const RULE: &str = "use an IP address or a host name of letters, digits, '-' and '.'";
    if h.len() > 253 {
        return Err(format!("host name is {} bytes, the limit is 253", h.len()));
    }
    if let Some(c) = h
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!("invalid host {h:?}: {c:?} is not allowed ({RULE})"));
    }
    let trimmed = h.strip_suffix('.').unwrap_or(h); // "example.com." is fully qualified
    let labels: Vec<&str> = trimmed.split('.').collect();
    if labels.iter().any(|l| l.is_empty()) {
        return Err(format!("invalid host {h:?}: empty label ({RULE})"));
    }
    if let Some(l) = labels.iter().find(|l| l.len() > 63) {
        return Err(format!(
            "invalid host {h:?}: label {l:?} is longer than 63 characters"
        ));
    }
    if let Some(l) = labels
        .iter()
        .find(|l| l.starts_with('-') || l.ends_with('-'))
    {
        return Err(format!(
            "invalid host {h:?}: label {l:?} starts or ends with '-' ({RULE})"
        ));
    }
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "{h:?} is not a valid IPv4 address (expected four numbers 0-255, e.g. 127.0.0.1)"
        ));
    }
    Ok(())
}

impl fmt::Display for InetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::AllInterfaces => write!(f, ":{}", self.port),
            Host::Name(n) => write!(f, "{n}:{}", self.port),
        }
    }
}

/// The canonical form, which [`ListenSpec::parse`] reads back to the same address.
impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Udp(a) => write!(f, "udp://{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// `NAME=ADDR`, or just `ADDR` when unnamed.
impl fmt::Display for ListenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(n) = &self.name {
            write!(f, "{n}=")?;
        }
        write!(f, "{}", self.addr)
    }
}

/// Why a `--listen` argument was rejected. Displays as one line naming the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenParseError {
    input: String,
    reason: String,
}

impl ListenParseError {
    /// The string that was rejected.
    pub fn input(&self) -> &str {
        &self.input
    }
}

impl fmt::Display for ListenParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // {:?} quotes the input and escapes control characters, keeping the message one line.
        write!(
            f,
            "invalid listen address {:?}: {}",
            self.input, self.reason
        )
    }
}

impl std::error::Error for ListenParseError {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tcp(host: Host, port: u16) -> ListenAddr {
        ListenAddr::Tcp(InetAddr { host, port })
    }
    fn udp(host: Host, port: u16) -> ListenAddr {
        ListenAddr::Udp(InetAddr { host, port })
    }
    fn ip(s: &str) -> Host {
        Host::Ip(s.parse().unwrap())
    }
    fn ok(s: &str) -> ListenSpec {
        ListenSpec::parse(s).unwrap()
    }
    fn addr(s: &str) -> ListenAddr {
        let spec = ok(s);
        assert_eq!(spec.name, None);
        spec.addr
    }
    /// The error message, checked to name the input.
    fn err(s: &str) -> String {
        let e = ListenSpec::parse(s).unwrap_err();
        assert_eq!(e.input(), s);
        let m = e.to_string();
        assert!(m.contains(&format!("{s:?}")), "{m}");
        assert!(!m.contains('\n'), "{m}");
        m
    }

    #[test]
    fn ipv4() {
        assert_eq!(addr("127.0.0.1:8080"), tcp(ip("127.0.0.1"), 8080));
    }

    #[test]
    fn ipv4_unspecified() {
        assert_eq!(addr("0.0.0.0:8080"), tcp(ip("0.0.0.0"), 8080));
    }

    #[test]
    fn ipv6_loopback() {
        assert_eq!(addr("[::1]:8080"), tcp(ip("::1"), 8080));
    }

    #[test]
    fn ipv6_unspecified() {
        assert_eq!(addr("[::]:8080"), tcp(ip("::"), 8080));
    }

    #[test]
    fn all_interfaces() {
        assert_eq!(addr(":8080"), tcp(Host::AllInterfaces, 8080));
    }

    #[test]
    fn bare_port_is_all_interfaces() {
        // As systemd's ListenStream=8080 and systemd-socket-activate -l 8080.
        assert_eq!(addr("8080"), tcp(Host::AllInterfaces, 8080));
        assert_eq!(addr("0"), tcp(Host::AllInterfaces, 0));
        assert_eq!(addr("tcp://8080"), tcp(Host::AllInterfaces, 8080));
        assert_eq!(addr("udp://53"), udp(Host::AllInterfaces, 53));
        assert_eq!(ok("http=80").addr, tcp(Host::AllInterfaces, 80));
        assert_eq!(ok("http=80").name.as_deref(), Some("http"));
        assert!(err("65536").contains("out of range"));
        assert!(err("99999999999999999999999").contains("out of range"));
    }

    #[test]
    fn host_name() {
        assert_eq!(
            addr("localhost:8080"),
            tcp(Host::Name("localhost".into()), 8080)
        );
        assert_eq!(
            addr("my_svc.example-1.com.:80"),
            tcp(Host::Name("my_svc.example-1.com.".into()), 80)
        );
    }

    #[test]
    fn tcp_scheme() {
        assert_eq!(addr("tcp://127.0.0.1:8080"), addr("127.0.0.1:8080"));
        assert_eq!(addr("TCP://[::1]:1"), tcp(ip("::1"), 1));
    }

    #[test]
    fn udp_ipv4() {
        assert_eq!(addr("udp://127.0.0.1:5353"), udp(ip("127.0.0.1"), 5353));
    }

    #[test]
    fn udp_ipv6() {
        assert_eq!(addr("udp://[::1]:53"), udp(ip("::1"), 53));
    }

    #[test]
    fn udp_all_interfaces() {
        assert_eq!(addr("udp://:53"), udp(Host::AllInterfaces, 53));
    }

    #[test]
    fn unix_absolute() {
        assert_eq!(
            addr("unix:/path/app.sock"),
            ListenAddr::Unix("/path/app.sock".into())
        );
    }

    #[test]
    fn unix_relative() {
        assert_eq!(
            addr("unix:relative/app.sock"),
            ListenAddr::Unix("relative/app.sock".into())
        );
    }

    #[test]
    fn unix_path_with_equals_is_not_a_name() {
        assert_eq!(
            addr("unix:/tmp/a=b.sock"),
            ListenAddr::Unix("/tmp/a=b.sock".into())
        );
    }

    #[test]
    fn unix_path_at_limit() {
        let p = format!("/{}", "a".repeat(MAX_UNIX_PATH - 1));
        assert_eq!(addr(&format!("unix:{p}")), ListenAddr::Unix(p.into()));
    }

    #[test]
    fn port_zero() {
        assert_eq!(addr("127.0.0.1:0"), tcp(ip("127.0.0.1"), 0));
    }

    #[test]
    fn port_max() {
        assert_eq!(addr(":65535"), tcp(Host::AllInterfaces, 65535));
    }

    #[test]
    fn named_tcp() {
        let s = ok("http=127.0.0.1:8080");
        assert_eq!(s.name.as_deref(), Some("http"));
        assert_eq!(s.addr, tcp(ip("127.0.0.1"), 8080));
    }

    #[test]
    fn named_unix() {
        let s = ok("api=unix:/run/a.sock");
        assert_eq!(s.name.as_deref(), Some("api"));
        assert_eq!(s.addr, ListenAddr::Unix("/run/a.sock".into()));
    }

    #[test]
    fn named_udp_and_ipv6() {
        assert_eq!(ok("dns=udp://[::1]:53").name.as_deref(), Some("dns"));
        assert_eq!(ok("v6=[::1]:80").addr, tcp(ip("::1"), 80));
    }

    #[test]
    fn name_of_max_length() {
        let n = "n".repeat(MAX_NAME);
        assert_eq!(ok(&format!("{n}=:80")).name, Some(n));
    }

    #[test]
    fn rejects_empty() {
        assert!(err("").contains("empty"));
    }

    #[test]
    fn rejects_missing_port() {
        let m = err("127.0.0.1");
        assert_eq!(
            m,
            "invalid listen address \"127.0.0.1\": missing port (expected HOST:PORT, e.g. 127.0.0.1:8080)"
        );
        assert!(err("127.0.0.1:").contains("missing port"));
        assert!(err("[::1]").contains("missing port"));
        assert!(err("[::1]:").contains("missing port"));
        assert!(err("localhost").contains("missing port"));
        assert!(err("udp://localhost").contains("missing port"));
    }

    #[test]
    fn rejects_port_out_of_range() {
        assert!(err("127.0.0.1:65536").contains("out of range"));
        assert!(err(":99999999999999999999999").contains("out of range"));
    }

    #[test]
    fn rejects_non_numeric_port() {
        assert!(err("127.0.0.1:http").contains("invalid port"));
        assert!(err("127.0.0.1:+80").contains("invalid port"));
        assert!(err("127.0.0.1:80/").contains("invalid port"));
    }

    #[test]
    fn rejects_bare_ipv6() {
        let m = err("::1:8080");
        assert!(
            m.contains("put IPv6 addresses in brackets, e.g. [::1]:8080"),
            "{m}"
        );
        assert!(err("::1").contains("brackets"));
        assert!(err("fe80::1:80").contains("brackets"));
    }

    #[test]
    fn rejects_unknown_scheme() {
        let m = err("http://127.0.0.1:8080");
        assert!(
            m.contains("unknown scheme http://; use tcp://, udp:// or unix:"),
            "{m}"
        );
    }

    #[test]
    fn rejects_scheme_without_slashes() {
        assert!(err("tcp:127.0.0.1:80").contains("write the scheme as tcp://"));
        assert!(err("a:b:80").contains("too many ':'"));
    }

    #[test]
    fn rejects_empty_unix_path() {
        assert!(err("unix:").contains("empty unix socket path"));
    }

    #[test]
    fn rejects_long_unix_path() {
        let s = format!("unix:/{}", "a".repeat(MAX_UNIX_PATH));
        let m = err(&s);
        assert!(m.contains("107"), "{m}");
        assert!(m.contains("sun_path"), "{m}");
    }

    #[test]
    fn rejects_nul_in_unix_path() {
        assert!(err("unix:/tmp/a\0b").contains("NUL"));
    }

    #[test]
    fn rejects_invalid_host_characters() {
        assert!(err("exa mple:80").contains("' '"));
        assert!(err("ex!ample.com:80").contains("'!'"));
        assert!(err("ho/st:80").contains("'/'"));
    }

    #[test]
    fn rejects_bad_host_labels() {
        assert!(err("a..b:80").contains("empty label"));
        assert!(err("-a.com:80").contains("'-'"));
        assert!(err(&format!("{}.com:80", "a".repeat(64))).contains("63"));
    }

    #[test]
    fn rejects_invalid_ipv4() {
        assert!(err("256.0.0.1:80").contains("IPv4"));
        assert!(err("127.1:80").contains("IPv4"));
        assert!(err("010.0.0.1:80").contains("IPv4"));
    }

    #[test]
    fn rejects_bad_brackets() {
        assert!(err("[::1:80").contains("']'"));
        assert!(err("[127.0.0.1]:80").contains("not an IPv6 address"));
        assert!(err("[fe80::1%eth0]:80").contains("zone"));
        assert!(err("[::1]80").contains("after ']'"));
    }

    #[test]
    fn rejects_bad_names() {
        assert!(err("=127.0.0.1:80").contains("empty name"));
        assert!(err("my app=127.0.0.1:80").contains("' '"));
        assert!(err("caf\u{e9}=127.0.0.1:80").contains("printable ASCII"));
        assert!(err(&format!("{}=:80", "n".repeat(MAX_NAME + 1))).contains("256"));
        assert!(err("http=").contains("no address"));
    }

    #[test]
    fn error_escapes_control_characters() {
        let m = err("a\nb");
        assert!(m.contains("\"a\\nb\""), "{m}");
    }

    #[test]
    fn display_canonical_forms() {
        for s in [
            "127.0.0.1:8080",
            "[::1]:8080",
            ":8080",
            "udp://127.0.0.1:53",
            "unix:/run/app.sock",
            "localhost:8080",
        ] {
            assert_eq!(addr(s).to_string(), s);
        }
        assert_eq!(addr("tcp://127.0.0.1:80").to_string(), "127.0.0.1:80");
        assert_eq!(addr("[0:0::1]:80").to_string(), "[::1]:80");
        assert_eq!(ok("http=:80").to_string(), "http=:80");
    }

    #[test]
    fn from_str_works() {
        let s: ListenSpec = "x=:1".parse().unwrap();
        assert_eq!(s.name.as_deref(), Some("x"));
    }

    fn arb_host() -> impl Strategy<Value = Host> {
        prop_oneof![
            any::<u32>().prop_map(|n| Host::Ip(IpAddr::V4(Ipv4Addr::from(n)))),
            any::<u128>().prop_map(|n| Host::Ip(IpAddr::V6(Ipv6Addr::from(n)))),
            Just(Host::AllInterfaces),
            "[a-z][a-z0-9-]{0,10}[a-z0-9](\\.[a-z]{1,8}){0,3}".prop_map(Host::Name),
        ]
    }

    fn arb_addr() -> impl Strategy<Value = ListenAddr> {
        prop_oneof![
            (arb_host(), any::<u16>()).prop_map(|(host, port)| tcp(host, port)),
            (arb_host(), any::<u16>()).prop_map(|(host, port)| udp(host, port)),
            "/?[a-zA-Z0-9._=@ -]{1,20}(/[a-zA-Z0-9._-]{1,20}){0,3}"
                .prop_map(|p| ListenAddr::Unix(p.into())),
        ]
    }

    /// Valid names that the `NAME=` syntax can express (no '/' or '[').
    fn arb_name() -> impl Strategy<Value = Option<String>> {
        proptest::option::of("[!-.0-9;<>-Z\\\\-~]{1,40}")
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in any::<String>()) {
            if let Err(e) = ListenSpec::parse(&s) {
                let m = e.to_string();
                prop_assert!(!m.is_empty());
                prop_assert!(!m.contains('\n') && !m.contains('\r'), "{m}");
            }
        }

        #[test]
        fn address_like_strings_never_panic(s in "[a-z0-9:\\[\\]=/.%@ -]{0,24}") {
            if let Err(e) = ListenSpec::parse(&s) {
                let m = e.to_string();
                prop_assert!(!m.is_empty());
                prop_assert!(!m.contains('\n'), "{m}");
            }
        }

        #[test]
        fn display_round_trips(name in arb_name(), addr in arb_addr()) {
            let spec = ListenSpec { name, addr };
            let shown = spec.to_string();
            prop_assert_eq!(ListenSpec::parse(&shown).unwrap(), spec.clone());
            prop_assert_eq!(ListenSpec::parse(&spec.addr.to_string()).unwrap().addr, spec.addr);
        }

        #[test]
        fn generated_ipv4_specs_parse(n in any::<u32>(), port in any::<u16>(), name in arb_name()) {
            let ip = Ipv4Addr::from(n);
            let s = match &name {
                Some(name) => format!("{name}=tcp://{ip}:{port}"),
                None => format!("{ip}:{port}"),
            };
            let spec = ListenSpec::parse(&s).unwrap();
            prop_assert_eq!(spec.name, name);
            prop_assert_eq!(spec.addr, tcp(Host::Ip(IpAddr::V4(ip)), port));
        }

        #[test]
        fn generated_ipv6_specs_parse(n in any::<u128>(), port in any::<u16>(), name in arb_name()) {
            let ip = Ipv6Addr::from(n);
            let s = match &name {
                Some(name) => format!("{name}=udp://[{ip}]:{port}"),
                None => format!("udp://[{ip}]:{port}"),
            };
            let spec = ListenSpec::parse(&s).unwrap();
            prop_assert_eq!(spec.name, name);
            prop_assert_eq!(spec.addr, udp(Host::Ip(IpAddr::V6(ip)), port));
        }

        #[test]
        fn ports_above_u16_rejected(port in 65536u64..=u64::MAX) {
            let m = ListenSpec::parse(&format!(":{port}")).unwrap_err().to_string();
            prop_assert!(m.contains("out of range"), "{}", m);
        }
    }

    #[test]
    fn the_same_address_twice_is_found_but_not_port_0() {
        let specs = |v: &[&str]| -> Vec<ListenSpec> {
            v.iter().map(|a| a.parse().expect("valid")).collect()
        };
        assert_eq!(
            find_duplicate(&specs(&["127.0.0.1:8080", "unix:/a", "127.0.0.1:8080"])),
            Some((0, 2))
        );
        assert_eq!(
            find_duplicate(&specs(&["unix:/a", "b=unix:/a"])),
            Some((0, 1)),
            "names do not make an address different"
        );
        assert_eq!(
            find_duplicate(&specs(&[
                "127.0.0.1:0",
                "127.0.0.1:0",
                "udp://127.0.0.1:8080"
            ])),
            None
        );
        assert_eq!(
            find_duplicate(&specs(&["127.0.0.1:8080", "udp://127.0.0.1:8080"])),
            None,
            "TCP and UDP on one port are two sockets"
        );
    }
}
