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

/// A fresh directory under the temporary directory, removed on drop.
struct Dir(std::path::PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("handoff-sys-test.{}.{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir(&p).expect("mkdir");
        Self(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mode_of(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).expect("stat").mode() & 0o7777
}

#[test]
fn set_unix_access_never_follows_a_symlink_swapped_in_for_the_socket() {
    use std::os::unix::fs::PermissionsExt;
    let d = Dir::new("swap");
    let sock = d.0.join("app.sock");
    let victim = d.0.join("victim");
    std::fs::write(&victim, "secret").expect("write");
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let l = listeners::bind(&spec(&format!("unix:{}", sock.display())), 16).expect("bind");
    // Whoever can write in the socket's directory replaces the socket by a symlink.
    std::fs::remove_file(&sock).expect("rm");
    std::os::unix::fs::symlink(&victim, &sock).expect("symlink");
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    let r = listeners::set_unix_access(&l, Some(0o666), Some((Some(euid), None)));
    assert_eq!(
        mode_of(&victim),
        0o600,
        "the symlink's target was chmod-ed ({r:?})"
    );
    assert!(r.is_err(), "a swapped socket file was accepted");
    // Same with another socket in its place.
    std::fs::remove_file(&sock).expect("rm");
    let _other = std::os::unix::net::UnixListener::bind(&sock).expect("bind other");
    let before = mode_of(&sock);
    assert!(listeners::set_unix_access(&l, Some(0o666), None).is_err());
    assert_eq!(mode_of(&sock), before);
}

#[test]
fn a_unix_listener_gets_its_mode_at_birth_and_again_when_restored() {
    use handoff_sys::listeners::UnixAccess;
    let d = Dir::new("restore");
    let sock = d.0.join("app.sock");
    let access = UnixAccess {
        mode: Some(0o640),
        owner: None,
    };
    let mut l = listeners::bind_with(&spec(&format!("unix:{}", sock.display())), 16, &access)
        .expect("bind");
    assert_eq!(mode_of(&sock), 0o640);
    // A child calls shutdown() on the shared socket; handoff re-creates it.
    SockRef::from(&l)
        .shutdown(std::net::Shutdown::Both)
        .expect("shutdown");
    assert!(l.is_broken());
    l.restore().expect("restore");
    assert!(!l.is_broken());
    assert_eq!(
        mode_of(&sock),
        0o640,
        "the restored socket lost --socket-mode"
    );
    std::os::unix::net::UnixStream::connect(&sock).expect("connect to the restored socket");
}

#[test]
#[ignore = "needs root"]
fn a_unix_listener_gets_its_owner_at_birth_and_again_when_restored() {
    use handoff_sys::listeners::UnixAccess;
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        handoff_sys::euid(),
        0,
        "this test needs root: run it as root with --ignored"
    );
    let d = Dir::new("owner");
    let sock = d.0.join("app.sock");
    let access = UnixAccess {
        mode: Some(0o660),
        owner: Some((Some(65534), Some(65534))),
    };
    let mut l = listeners::bind_with(&spec(&format!("unix:{}", sock.display())), 16, &access)
        .expect("bind");
    let owner = |p: &std::path::Path| {
        let m = std::fs::symlink_metadata(p).expect("stat");
        (m.uid(), m.gid(), m.mode() & 0o7777)
    };
    assert_eq!(owner(&sock), (65534, 65534, 0o660));
    SockRef::from(&l)
        .shutdown(std::net::Shutdown::Both)
        .expect("shutdown");
    l.restore().expect("restore");
    assert_eq!(owner(&sock), (65534, 65534, 0o660), "restored socket");
}

#[test]
fn reassert_backlog_leaves_a_broken_listener_for_restore() {
    // listen() on a TCP socket a child shut down would make it listen again, on a new
    // ephemeral port: reassert_backlog must not, so that restore() re-creates it in place.
    let mut l = listeners::bind(&spec("127.0.0.1:0"), 16).expect("bind");
    let addr = inet(&l);
    SockRef::from(&l)
        .shutdown(std::net::Shutdown::Both)
        .expect("shutdown");
    l.reassert_backlog().expect("reassert");
    assert!(l.is_broken(), "reassert_backlog revived a shut-down socket");
    l.restore().expect("restore");
    assert_eq!(inet(&l), addr);
    l.reassert_backlog().expect("reassert");
    assert!(!l.is_broken());
    std::net::TcpStream::connect(addr).expect("connect");
}
