//! Listener invariants: no stranger can share a listener, and what a child does to the
//! shared socket does not outlive it.

use std::net::SocketAddr;

use handoff_core::listen::ListenSpec;
use handoff_sys::listeners::{self, Listener};
use socket2::{Domain, SockRef, Socket, Type};

fn spec(s: &str) -> ListenSpec {
    s.parse().expect("listen spec")
}

fn inet(l: &Listener) -> SocketAddr {
    SockRef::from(l)
        .local_addr()
        .expect("local addr")
        .as_socket()
        .expect("inet")
}

/// A second socket with SO_REUSEADDR (and `reuse_port` if asked) binding `addr`.
fn second_bind(addr: SocketAddr, ty: Type, reuse_port: bool) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, None)?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.bind(&addr.into())?;
    if ty == Type::STREAM {
        s.listen(16)?;
    }
    Ok(s)
}

#[test]
fn nobody_else_can_bind_a_udp_listeners_address() {
    let l = listeners::bind(&spec("udp://127.0.0.1:0"), 16).expect("bind");
    let addr = inet(&l);
    for reuse_port in [false, true] {
        match second_bind(addr, Type::DGRAM, reuse_port) {
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE), "{e}"),
            Ok(_) => panic!(
                "a second UDP socket (SO_REUSEADDR, SO_REUSEPORT {reuse_port}) bound {addr}: it would get part of the datagrams"
            ),
        }
    }
    let s = SockRef::from(&l);
    assert!(!s.reuse_address().expect("SO_REUSEADDR"));
    assert!(!s.reuse_port().expect("SO_REUSEPORT"));
}

#[test]
fn nobody_else_can_bind_a_tcp_listeners_address() {
    // TCP keeps SO_REUSEADDR (a restart must not wait for TIME_WAIT): on Linux it never lets
    // a second socket bind a port that is in LISTEN state, whoever owns it.
    for a in ["127.0.0.1:0", "[::1]:0"] {
        let l = match listeners::bind(&spec(a), 16) {
            Ok(l) => l,
            Err(e) if a.starts_with('[') => {
                eprintln!("{a}: {e} (no IPv6 here)");
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        let s = SockRef::from(&l);
        assert!(s.reuse_address().expect("SO_REUSEADDR"));
        assert!(!s.reuse_port().expect("SO_REUSEPORT"));
        let addr = inet(&l);
        for reuse_port in [false, true] {
            match second_bind(addr, Type::STREAM, reuse_port) {
                Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE), "{e}"),
                Ok(_) => panic!("a second TCP listener (SO_REUSEPORT {reuse_port}) on {addr}"),
            }
        }
    }
}
