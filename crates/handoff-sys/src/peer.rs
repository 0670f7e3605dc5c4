//! Who is at the other end of a unix stream socket (`SO_PEERCRED`).
//!
//! For a connected client socket this is the process that called `listen()` on the server
//! socket (credentials taken at `listen()` time); for an accepted socket it is the process
//! that called `connect()`.

use std::io;
use std::os::fd::AsFd;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

/// The kernel's view of the peer: pid, uid and gid as seen from this process's namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// `getsockopt(SO_PEERCRED)` on a unix socket.
pub fn peer_cred(sock: &impl AsFd) -> io::Result<PeerCred> {
    let c = getsockopt(sock, PeerCredentials).map_err(io::Error::from)?;
    Ok(PeerCred {
        pid: c.pid().max(0) as u32,
        uid: c.uid(),
        gid: c.gid(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_socketpair_peer_is_this_process() {
        let (a, _b) = UnixStream::pair().expect("socketpair");
        let c = peer_cred(&a).expect("SO_PEERCRED");
        assert_eq!(c.pid, std::process::id());
        // SAFETY: geteuid/getegid cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        assert_eq!((c.uid, c.gid), (uid, gid));
    }
}
