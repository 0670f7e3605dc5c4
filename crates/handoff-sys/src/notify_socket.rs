//! The per-child notify socket: the child's `NOTIFY_SOCKET`, received from like systemd's
//! manager does (src/shared/notify-recv.c): an invalid datagram is treated as no datagram.
//!
//! A *path* socket rather than an abstract one: several sd_notify implementations in the wild
//! do not understand `@` addresses. The socket lives in a private directory of handoff's.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    bind, recvmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessageOwned, MsgFlags,
    SockFlag, SockType, UnixAddr,
};

/// Largest datagram accepted (systemd's NOTIFY_BUFFER_MAX); longer ones are dropped whole.
pub const MAX_DATAGRAM: usize = 4096;

/// A private directory for notify sockets, removed (with its content) on drop.
#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
}

impl RuntimeDir {
    /// `$XDG_RUNTIME_DIR/handoff.PID.N` or `/tmp/handoff.PID.N`, mode 0700.
    pub fn create() -> io::Result<Self> {
        let base = std::env::var_os("RUNTIME_DIRECTORY")
            .or_else(|| std::env::var_os("XDG_RUNTIME_DIR"))
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let pid = std::process::id();
        let mut last = None;
        for n in 0..100u32 {
            let path = base.join(format!("handoff.{pid}.{n}"));
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free runtime directory name")))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Give the directory to the uid/gid the children run as, so they can reach their socket.
    pub fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        std::os::unix::fs::chown(&self.path, Some(uid), Some(gid))
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// One child's notify socket.
#[derive(Debug)]
pub struct NotifySocket {
    fd: OwnedFd,
    path: PathBuf,
}

/// What one receive produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// A well-formed datagram and the kernel-attested sender.
    Datagram {
        pid: u32,
        uid: u32,
        payload: Vec<u8>,
    },
    /// A datagram that must be ignored, and why (for a debug log).
    Invalid(&'static str),
    /// Nothing queued.
    Empty,
}

impl NotifySocket {
    /// Bind `dir/notify-GEN.sock` (non-blocking, close-on-exec, SO_PASSCRED) before the child
    /// exists, so its first datagram cannot be lost.
    pub fn bind(dir: &RuntimeDir, gen: u64) -> io::Result<Self> {
        let path = dir.path().join(format!("notify-{gen}.sock"));
        let _ = std::fs::remove_file(&path);
        let fd = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        // Without SO_PASSCRED the kernel attaches no sender credentials to what libsystemd
        // sends, and the sender could not be checked.
        setsockopt(&fd, sockopt::PassCred, &true)?;
        setsockopt(&fd, sockopt::RcvBuf, &(256 * 1024))?;
        bind(fd.as_raw_fd(), &UnixAddr::new(&path)?)?;
        // The directory is private; the socket itself must be writable by a child running
        // as another user (--user). Senders are checked by credentials anyway.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
        Ok(Self { fd, path })
    }

    /// The value for the child's `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Receive one datagram without blocking.
    pub fn recv(&self) -> io::Result<Received> {
        recv_one(self.fd.as_raw_fd())
    }
}

impl AsFd for NotifySocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for NotifySocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn recv_one(fd: RawFd) -> io::Result<Received> {
    let mut buf = [0u8; MAX_DATAGRAM];
    let mut iov = [IoSliceMut::new(&mut buf)];
    // Room for credentials and a few fds; more fds than that truncate the control data,
    // which makes the datagram invalid (and the kernel closes what did not fit).
    let mut cmsg = nix::cmsg_space!(libc::ucred, [RawFd; 16]);
    let msg = match recvmsg::<()>(
        fd,
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_TRUNC,
    ) {
        Ok(m) => m,
        Err(nix::errno::Errno::EAGAIN) => return Ok(Received::Empty),
        Err(nix::errno::Errno::EINTR) => return Ok(Received::Invalid("interrupted")),
        Err(e) => return Err(e.into()),
    };
    let mut creds = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::ScmCredentials(u) => creds = Some((u.pid(), u.uid())),
                ControlMessageOwned::ScmRights(fds) => {
                    // Close every fd: handoff keeps no fd store, and sd_notify_barrier()
                    // waits for exactly this close.
                    for f in fds {
                        // SAFETY: the kernel just gave us these fds; nobody else owns them.
                        unsafe { libc::close(f) };
                    }
                }
                _ => {}
            }
        }
    }
    let len = msg.bytes;
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Ok(Received::Invalid("control data truncated"));
    }
    if msg.flags.contains(MsgFlags::MSG_TRUNC) || len > MAX_DATAGRAM {
        return Ok(Received::Invalid("datagram too long"));
    }
    let Some((pid, uid)) = creds.filter(|(p, _)| *p > 0) else {
        return Ok(Received::Invalid("no sender credentials"));
    };
    Ok(Received::Datagram {
        pid: pid as u32,
        uid,
        payload: buf[..len].to_vec(),
    })
}

/// `sock`, registered with the current tokio runtime's reactor for readability.
pub fn register(sock: NotifySocket) -> io::Result<tokio::io::unix::AsyncFd<NotifySocket>> {
    // SAFETY: `NotifySocket` owns its fd (an `OwnedFd` field never replaced) for its whole
    // life, and `as_raw_fd` always returns that same fd.
    unsafe { tokio::io::unix::AsyncFd::register(sock) }.map_err(io::Error::from)
}
