//! Bind adoption: which held listener a child's own `bind()` gets.
//!
//! A server that does not take `LISTEN_FDS` creates its own socket and binds the port handoff
//! already holds. handoff-sys intercepts that `bind()` (seccomp user notification) and asks
//! [`decide`] what to do with it; on [`Decision::Adopt`] the child's fd is replaced by the held
//! listener and its `bind()` returns 0, otherwise the kernel runs the call as if handoff were
//! not there. This module is the whole policy, with no I/O:
//!
//! - only stream (TCP) sockets are adopted: a UDP bind to the same port (HTTP/3) keeps its
//!   own socket;
//! - port 0 ("any free port") is never adopted;
//! - the address must match **exactly**: same family, same IP, same port, and for the IPv6
//!   wildcard `[::]` the same `IPV6_V6ONLY` (a dual-stack `[::]` is not a v6-only `[::]`).
//!   No wildcard-to-specific or IPv4/IPv6 substitution: it would silently change what the
//!   server is reachable on (a server asking for `[::]` given `0.0.0.0` would stop serving
//!   IPv6 and report an IPv4 address; one asking for `127.0.0.1` given `0.0.0.0` would be
//!   exposed on every interface). A port match with another address is reported as
//!   [`Pass::OtherAddress`] so that handoff can say which `--listen` would have matched.
//! - one explicit exception: a listener given as `--listen :8080` ("every interface, both
//!   families", held as a dual-stack `[::]:8080`) is given to a `[::]:8080` bind whatever
//!   its `IPV6_V6ONLY`: the operator asked for both families. Go's `":8080"` and Node's
//!   `listen(8080)` ask for a dual-stack `[::]` anyway.
//! - never across families, not even wildcards: a `0.0.0.0:8080` bind (Python's
//!   `http.server 8080` where getaddrinfo prefers IPv4) is not given a `[::]` socket. The
//!   program's socket object keeps `AF_INET`, so it sizes its `accept()` address buffer for
//!   IPv4 and gets every client's IPv6 address truncated to garbage (seen with Python:
//!   client `::e036:cc17:1456:0`), which breaks logs and address-based access rules. Hold
//!   `--listen 0.0.0.0:8080` for such a server; handoff's `adopt_other_address` log line
//!   says so.

use std::net::{IpAddr, SocketAddr};

/// A TCP listener handoff holds, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    /// Its local address (the real port when `--listen` asked for port 0).
    pub addr: SocketAddr,
    /// `IPV6_V6ONLY` for an IPv6 socket; `false` for IPv4.
    pub v6only: bool,
    /// Given as `--listen :PORT`: a wildcard bind of the port in the same family matches
    /// whatever its `IPV6_V6ONLY` (see the module doc).
    pub any_wildcard: bool,
}

/// A `bind()` a child asked for, read from its memory and its socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub addr: SocketAddr,
    /// `SO_TYPE` is `SOCK_STREAM`.
    pub stream: bool,
    /// The child's socket's `IPV6_V6ONLY` (`false` for IPv4).
    pub v6only: bool,
}

/// What to do with a child's `bind()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Give it the held listener at this index.
    Adopt(usize),
    /// Let the kernel run it unchanged.
    Pass(Pass),
}

/// Why a `bind()` is left to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Not a stream socket (UDP on a held port stays the child's own).
    NotStream,
    /// Port 0: any free port.
    AnyPort,
    /// No held listener has this port.
    NotHeld,
    /// A held listener has this port at another address or family (index of the first):
    /// the kernel will most likely say EADDRINUSE, as it would without handoff.
    OtherAddress(usize),
}

/// The held listener that `req` gets, if any. See the module doc for the rules.
pub fn decide(req: &Request, held: &[Held]) -> Decision {
    if !req.stream {
        return Decision::Pass(Pass::NotStream);
    }
    if req.addr.port() == 0 {
        return Decision::Pass(Pass::AnyPort);
    }
    if let Some(i) = held.iter().position(|h| same(req, h)) {
        return Decision::Adopt(i);
    }
    match held.iter().position(|h| h.addr.port() == req.addr.port()) {
        Some(i) => Decision::Pass(Pass::OtherAddress(i)),
        None => Decision::Pass(Pass::NotHeld),
    }
}

fn same(req: &Request, h: &Held) -> bool {
    // IP and port only: flowinfo and scope id of an IPv6 sockaddr are not part of what a
    // listener is bound to for the addresses handoff holds (no link-local: --listen refuses
    // zone indexes).
    if req.addr.ip() != h.addr.ip() || req.addr.port() != h.addr.port() {
        return false;
    }
    match req.addr.ip() {
        IpAddr::V6(ip) if ip.is_unspecified() => h.any_wildcard || req.v6only == h.v6only,
        _ => true,
    }
}

/// Linux's `AF_INET`.
pub const AF_INET: u16 = 2;
/// Linux's `AF_INET6`.
pub const AF_INET6: u16 = 10;

/// The address in a raw `struct sockaddr` of `bytes.len()` bytes (the `addrlen` the child
/// passed, capped by the reader), as Linux lays it out; `None` for any other family or a
/// length the kernel would refuse (`sockaddr_in` needs 16 bytes, `sockaddr_in6` 24).
pub fn parse_sockaddr(bytes: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(bytes.get(0..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?);
    match family {
        AF_INET if bytes.len() >= 16 => {
            let ip: [u8; 4] = bytes[4..8].try_into().ok()?;
            Some(SocketAddr::new(IpAddr::from(ip), port))
        }
        AF_INET6 if bytes.len() >= 24 => {
            let ip: [u8; 16] = bytes[8..24].try_into().ok()?;
            Some(SocketAddr::new(IpAddr::from(ip), port))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn held(s: &str, v6only: bool) -> Held {
        Held {
            addr: s.parse().expect("addr"),
            v6only,
            any_wildcard: false,
        }
    }

    fn tcp(s: &str, v6only: bool) -> Request {
        Request {
            addr: s.parse().expect("addr"),
            stream: true,
            v6only,
        }
    }

    #[test]
    fn exact_address_is_adopted() {
        let h = [held("127.0.0.1:8080", false), held("127.0.0.1:9090", false)];
        assert_eq!(
            decide(&tcp("127.0.0.1:9090", false), &h),
            Decision::Adopt(1)
        );
        assert_eq!(
            decide(&tcp("127.0.0.1:8080", false), &h),
            Decision::Adopt(0)
        );
    }

    #[test]
    fn udp_port_zero_and_other_ports_pass() {
        let h = [held("127.0.0.1:8080", false)];
        let mut udp = tcp("127.0.0.1:8080", false);
        udp.stream = false;
        assert_eq!(decide(&udp, &h), Decision::Pass(Pass::NotStream));
        assert_eq!(
            decide(&tcp("127.0.0.1:0", false), &h),
            Decision::Pass(Pass::AnyPort)
        );
        assert_eq!(
            decide(&tcp("127.0.0.1:8081", false), &h),
            Decision::Pass(Pass::NotHeld)
        );
        assert_eq!(decide(&tcp("127.0.0.1:8080", false), &[]), {
            Decision::Pass(Pass::NotHeld)
        });
    }

    #[test]
    fn dual_stack_wildcard_matches_only_dual_stack() {
        // --listen :8080 holds [::]:8080 with v6only=0: Go ":8080", Node listen(8080),
        // python3 -m http.server 8080 all ask for exactly that.
        let dual = [held("[::]:8080", false)];
        assert_eq!(decide(&tcp("[::]:8080", false), &dual), Decision::Adopt(0));
        // A v6-only [::] must not be widened to IPv4 too.
        assert_eq!(
            decide(&tcp("[::]:8080", true), &dual),
            Decision::Pass(Pass::OtherAddress(0))
        );
        let v6only = [held("[::]:8080", true)];
        assert_eq!(decide(&tcp("[::]:8080", true), &v6only), Decision::Adopt(0));
        assert_eq!(
            decide(&tcp("[::]:8080", false), &v6only),
            Decision::Pass(Pass::OtherAddress(0))
        );
    }

    #[test]
    fn all_interfaces_listener_takes_any_ipv6_wildcard_but_not_ipv4() {
        let mut any = held("[::]:8080", false);
        any.any_wildcard = true;
        let h = [any];
        assert_eq!(decide(&tcp("[::]:8080", false), &h), Decision::Adopt(0));
        assert_eq!(decide(&tcp("[::]:8080", true), &h), Decision::Adopt(0));
        // Another family: the program would truncate its clients' addresses.
        assert_eq!(
            decide(&tcp("0.0.0.0:8080", false), &h),
            Decision::Pass(Pass::OtherAddress(0))
        );
        // Never a specific address: that would widen it to every interface.
        assert_eq!(
            decide(&tcp("127.0.0.1:8080", false), &h),
            Decision::Pass(Pass::OtherAddress(0))
        );
        assert_eq!(
            decide(&tcp("[::1]:8080", false), &h),
            Decision::Pass(Pass::OtherAddress(0))
        );
        // Without IPv6 `:8080` is held as 0.0.0.0:8080: only an IPv4 wildcard bind gets it.
        let mut v4 = held("0.0.0.0:8080", false);
        v4.any_wildcard = true;
        assert_eq!(
            decide(&tcp("0.0.0.0:8080", false), &[v4]),
            Decision::Adopt(0)
        );
        assert_eq!(
            decide(&tcp("[::]:8080", false), &[v4]),
            Decision::Pass(Pass::OtherAddress(0))
        );
    }

    #[test]
    fn no_family_or_wildcard_substitution() {
        // [::]:8080 asked while handoff holds 0.0.0.0:8080: not the same thing.
        let v4any = [held("0.0.0.0:8080", false)];
        assert_eq!(
            decide(&tcp("[::]:8080", false), &v4any),
            Decision::Pass(Pass::OtherAddress(0))
        );
        // 127.0.0.1 asked, 0.0.0.0 held: would expose the server on every interface.
        assert_eq!(
            decide(&tcp("127.0.0.1:8080", false), &v4any),
            Decision::Pass(Pass::OtherAddress(0))
        );
        // 0.0.0.0 asked, 127.0.0.1 held: would silently narrow it.
        let lo = [held("127.0.0.1:8080", false)];
        assert_eq!(
            decide(&tcp("0.0.0.0:8080", false), &lo),
            Decision::Pass(Pass::OtherAddress(0))
        );
        // The IPv4-mapped form is another family.
        assert_eq!(
            decide(&tcp("[::ffff:127.0.0.1]:8080", false), &lo),
            Decision::Pass(Pass::OtherAddress(0))
        );
        // v6only does not matter for a specific IPv6 address.
        let v6lo = [held("[::1]:8080", true)];
        assert_eq!(decide(&tcp("[::1]:8080", false), &v6lo), Decision::Adopt(0));
    }

    fn sockaddr_in(ip: [u8; 4], port: u16) -> Vec<u8> {
        let mut b = vec![0u8; 16];
        b[0..2].copy_from_slice(&AF_INET.to_ne_bytes());
        b[2..4].copy_from_slice(&port.to_be_bytes());
        b[4..8].copy_from_slice(&ip);
        b
    }

    fn sockaddr_in6(ip: [u8; 16], port: u16, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; 28];
        b[0..2].copy_from_slice(&AF_INET6.to_ne_bytes());
        b[2..4].copy_from_slice(&port.to_be_bytes());
        b[8..24].copy_from_slice(&ip);
        b.truncate(len);
        b
    }

    #[test]
    fn raw_sockaddrs() {
        assert_eq!(
            parse_sockaddr(&sockaddr_in([127, 0, 0, 1], 8080)),
            Some("127.0.0.1:8080".parse().expect("addr"))
        );
        let mut any6 = [0u8; 16];
        assert_eq!(
            parse_sockaddr(&sockaddr_in6(any6, 443, 28)),
            Some("[::]:443".parse().expect("addr"))
        );
        any6[15] = 1;
        // The RFC 2133 length (no scope id) is accepted by the kernel, so here too.
        assert_eq!(
            parse_sockaddr(&sockaddr_in6(any6, 443, 24)),
            Some("[::1]:443".parse().expect("addr"))
        );
        assert_eq!(parse_sockaddr(&sockaddr_in6(any6, 443, 23)), None);
        assert_eq!(parse_sockaddr(&sockaddr_in([1, 2, 3, 4], 1)[..15]), None);
        // AF_UNIX, AF_NETLINK, nothing.
        assert_eq!(parse_sockaddr(&[1, 0, b'/', b'x']), None);
        assert_eq!(parse_sockaddr(&[16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(parse_sockaddr(&[]), None);
    }

    fn any_addr() -> impl Strategy<Value = SocketAddr> {
        let ips = prop_oneof![
            Just(IpAddr::from([127, 0, 0, 1])),
            Just(IpAddr::from([0, 0, 0, 0])),
            Just(IpAddr::from([10, 0, 0, 1])),
            Just("::".parse::<IpAddr>().expect("ip")),
            Just("::1".parse::<IpAddr>().expect("ip")),
            Just("::ffff:127.0.0.1".parse::<IpAddr>().expect("ip")),
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
        ];
        (
            ips,
            prop_oneof![Just(0u16), Just(8080), 1u16..4, any::<u16>()],
        )
            .prop_map(|(ip, port)| SocketAddr::new(ip, port))
    }

    fn any_held() -> impl Strategy<Value = Held> {
        (any_addr(), any::<bool>(), any::<bool>()).prop_map(|(addr, v6only, any_wildcard)| Held {
            addr,
            v6only: addr.is_ipv6() && v6only,
            any_wildcard: any_wildcard && addr.ip().is_unspecified(),
        })
    }

    proptest! {
        /// An adopted bind always gets a listener with the very address it asked for, and a
        /// pass is never a held stream address: nothing is widened, narrowed or lost.
        #[test]
        fn adoption_is_exact(held in proptest::collection::vec(any_held(), 0..5),
                             addr in any_addr(), stream in any::<bool>(), v6only in any::<bool>()) {
            let req = Request { addr, stream, v6only: addr.is_ipv6() && v6only };
            match decide(&req, &held) {
                Decision::Adopt(i) => {
                    let h = held[i];
                    prop_assert!(stream && addr.port() != 0);
                    prop_assert_eq!(h.addr.port(), addr.port());
                    // Never another address, never another family.
                    prop_assert_eq!(h.addr.ip(), addr.ip());
                    if h.addr.ip().is_unspecified() && h.addr.is_ipv6() && !h.any_wildcard {
                        prop_assert_eq!(h.v6only, req.v6only);
                    }
                    // The first such listener.
                    prop_assert!(held[..i].iter().all(|o| !same(&req, o)));
                }
                Decision::Pass(Pass::NotStream) => prop_assert!(!stream),
                Decision::Pass(Pass::AnyPort) => prop_assert!(stream && addr.port() == 0),
                Decision::Pass(Pass::NotHeld) => {
                    prop_assert!(held.iter().all(|h| h.addr.port() != addr.port()));
                }
                Decision::Pass(Pass::OtherAddress(i)) => {
                    prop_assert_eq!(held[i].addr.port(), addr.port());
                    prop_assert!(held.iter().all(|h| !same(&req, h)));
                }
            }
        }

        /// Any bytes: no panic, and a parsed address round-trips through its layout.
        #[test]
        fn sockaddr_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Some(a) = parse_sockaddr(&bytes) {
                let again = match a {
                    SocketAddr::V4(v4) => sockaddr_in(v4.ip().octets(), v4.port()),
                    SocketAddr::V6(v6) => sockaddr_in6(v6.ip().octets(), v6.port(), 24),
                };
                prop_assert_eq!(parse_sockaddr(&again), Some(a));
            }
        }
    }
}
