//! The per-child notify socket: the child's `NOTIFY_SOCKET`, received from like systemd's
//! manager does (src/shared/notify-recv.c): an invalid datagram is treated as no datagram.
//!
//! A *path* socket rather than an abstract one: several sd_notify implementations in the wild
//! do not understand `@` addresses. The socket lives in a private directory of handoff's.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, UnixAddr,
};

/// Largest datagram accepted (systemd's NOTIFY_BUFFER_MAX); longer ones are dropped whole.
pub const MAX_DATAGRAM: usize = 4096;

/// A private directory for notify sockets, removed (with its content) on drop.
///
/// It is owned by handoff's user and stays so, even when children run as another user
/// (`--user`): mode 0711 then (they may only traverse it to reach their socket, whose name
/// they are given; they cannot create, rename or remove anything in it), else 0700. A
/// directory the children could write to would let one swap its socket for a symlink and
/// redirect whatever handoff (maybe root) does to that path. Nothing in it is ever chmod-ed
/// or chown-ed by path: sockets get their mode from the umask at bind().
///
/// While it exists, handoff holds an exclusive `flock` on it (through an fd that children
/// do not inherit): that is how the next handoff started with the same base directory
/// tells the directory of a running handoff from one a killed handoff left behind (see
/// [`RuntimeDir::stale_removed`]).
#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
    /// The directory, open and `flock`ed for as long as it exists.
    lock: std::fs::File,
    /// Stale directories removed from the same base at creation.
    stale_removed: Vec<PathBuf>,
}

/// `sun_path`'s size: a socket path must fit in it with its terminating NUL.
const SUN_PATH: usize = 108;

fn notify_name(gen: u64) -> String {
    format!("notify-{gen}.sock")
}

impl RuntimeDir {
    /// `$RUNTIME_DIRECTORY/handoff.PID.N`, `$XDG_RUNTIME_DIR/handoff.PID.N` or
    /// `/tmp/handoff.PID.N`, mode 0700, for children running as handoff's own user.
    pub fn create() -> io::Result<Self> {
        Self::create_for(None)
    }

    /// Like [`RuntimeDir::create`]; `child_uid` is the uid children run as (`--user`): if it
    /// is not handoff's, the directory is mode 0711 so they can reach their socket.
    ///
    /// Fails, before creating anything, if the path of the last possible notify socket
    /// (generation `u64::MAX`) would not fit `sun_path`: better at start than at some reload.
    pub fn create_for(child_uid: Option<u32>) -> io::Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
        let base = std::env::var_os("RUNTIME_DIRECTORY")
            .or_else(|| std::env::var_os("XDG_RUNTIME_DIR"))
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        // SAFETY: geteuid cannot fail.
        let euid = unsafe { libc::geteuid() };
        let mode = if child_uid.is_some_and(|u| u != euid) {
            0o711
        } else {
            0o700
        };
        let pid = std::process::id();
        let stale_removed = remove_stale(&base, pid, euid);
        let mut last = None;
        for n in 0..100u32 {
            let path = base.join(format!("handoff.{pid}.{n}"));
            let longest = path.join(notify_name(u64::MAX)).as_os_str().len();
            if longest >= SUN_PATH {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "the runtime directory path {} is too long: notify socket paths in it would take up to {longest} bytes, and a unix socket path has at most {}; point RUNTIME_DIRECTORY or XDG_RUNTIME_DIR at a shorter directory",
                        path.display(),
                        SUN_PATH - 1
                    ),
                ));
            }
            // mkdir never follows a symlink planted at the name: that fails with EEXIST.
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    // The final mode is set on the directory opened without following links,
                    // after checking it is the one we made (owned by us).
                    let f = std::fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
                        .open(&path)?;
                    // Blocking: another handoff cleaning stale directories holds it only
                    // while it removes one, and it may have taken ours for one (it did if
                    // the directory is gone once we hold the lock: then take the next name).
                    flock(&f, libc::LOCK_EX)?;
                    let meta = f.metadata()?;
                    if meta.nlink() == 0 {
                        continue;
                    }
                    let dir = Self {
                        path,
                        lock: f,
                        stale_removed,
                    };
                    if meta.uid() != euid {
                        return Err(io::Error::other(format!(
                            "{} is not owned by handoff's user",
                            dir.path.display()
                        )));
                    }
                    dir.lock
                        .set_permissions(std::fs::Permissions::from_mode(mode))?;
                    return Ok(dir);
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

    /// The directory's fd (open and `flock`ed), for `handoff upgrade` to carry across exec.
    pub fn lock_fd(&self) -> RawFd {
        self.lock.as_raw_fd()
    }

    /// Take over the directory an earlier image of this process created: `fd` is its
    /// [`RuntimeDir::lock_fd`], which still holds the lock (a `flock` belongs to the open
    /// file, which survives exec). Checked: `fd` is a directory, the one at `path`.
    pub fn adopt(path: PathBuf, fd: RawFd) -> io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let lock = std::fs::File::from(crate::upgrade::take_fd(fd, "runtime directory")?);
        let (m, p) = (lock.metadata()?, std::fs::symlink_metadata(&path)?);
        if !m.is_dir() || m.dev() != p.dev() || m.ino() != p.ino() {
            return Err(io::Error::other(format!(
                "fd {fd} is not the runtime directory {}",
                path.display()
            )));
        }
        Ok(Self {
            path,
            lock,
            stale_removed: Vec::new(),
        })
    }

    /// The directories of handoffs that are no longer running (killed: their own clean-up
    /// never ran) that were removed from the same base directory at creation.
    pub fn stale_removed(&self) -> &[PathBuf] {
        &self.stale_removed
    }
}

fn flock(f: &std::fs::File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock on a valid fd.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `handoff.PID.N` → PID.
fn runtime_dir_pid(name: &str) -> Option<u32> {
    let (pid, n) = name.strip_prefix("handoff.")?.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(n) {
        return None;
    }
    pid.parse().ok()
}

/// Whether `pid` is a running handoff (by /proc/PID/comm).
fn is_running_handoff(pid: u32) -> bool {
    crate::procfs::is_running(pid)
        && std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim_end() == "handoff")
}

/// Remove from `base` the `handoff.PID.N` directories of handoffs that are gone. One is
/// stale when it is a directory (never a symlink: nothing is followed), owned by `euid`,
/// not locked (every running handoff holds its directory's lock), and its PID is not a
/// running handoff (a handoff from before the lock existed). Our own pid's are skipped.
/// Everything is removed with unlinkat relative to fds opened `O_NOFOLLOW`, under the lock.
/// Best effort: whatever cannot be removed stays.
fn remove_stale(base: &Path, me: u32, euid: u32) -> Vec<PathBuf> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let Ok(entries) = std::fs::read_dir(base) else {
        return vec![];
    };
    let open_dir = |p: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(p)
    };
    let Ok(base_fd) = open_dir(base) else {
        return vec![];
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = runtime_dir_pid(name) else {
            continue;
        };
        if pid == me {
            continue;
        }
        // Relative to the base fd and O_NOFOLLOW: a symlink fails here (ELOOP).
        let Ok(dir) = open_at_dir(&base_fd, name) else {
            continue;
        };
        if !dir.metadata().is_ok_and(|m| m.uid() == euid) {
            continue;
        }
        if flock(&dir, libc::LOCK_EX | libc::LOCK_NB).is_err() || is_running_handoff(pid) {
            continue;
        }
        if empty_dir(&dir) && unlink_at(&base_fd, name, libc::AT_REMOVEDIR).is_ok() {
            removed.push(base.join(name));
        }
        // Dropping `dir` releases the lock; a handoff waiting for it finds it removed.
    }
    removed
}

fn open_at_dir(dir: &std::fs::File, name: &str) -> io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))?;
    // SAFETY: valid dirfd and NUL-terminated name; the result is a new fd we own.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by openat and is owned by nobody else.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

fn unlink_at(dir: &std::fs::File, name: &str, flags: libc::c_int) -> io::Result<()> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))?;
    // SAFETY: valid dirfd and NUL-terminated name; unlinkat never follows a link.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Unlink every entry of `dir` (sockets, files; an empty subdirectory too). True if it is
/// empty afterwards.
fn empty_dir(dir: &std::fs::File) -> bool {
    // Listed through /proc/self/fd/N: the directory we hold, whatever its path now.
    let Ok(entries) = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd())) else {
        return false;
    };
    let mut ok = true;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else {
            ok = false;
            continue;
        };
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
        ok &= unlink_at(dir, name, flags).is_ok();
    }
    ok
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        // remove_dir_all does not follow symlinks; nobody but handoff can write here anyway.
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
        let path = dir.path().join(notify_name(gen));
        // A stale file of an earlier generation: unlink never follows a symlink, and only
        // handoff can write in this directory.
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
        let addr = UnixAddr::new(&path)?;
        // A child running as another user (--user) must be able to write to the socket:
        // mode 0666, given at birth through the umask. No chmod by path afterwards, which a
        // swapped file could redirect. Senders are checked by their credentials anyway.
        crate::with_umask(0o111, || bind(fd.as_raw_fd(), &addr))?;
        Ok(Self { fd, path })
    }

    /// Throw away the datagrams queued so far (at most 1024; their fds are closed): on a
    /// socket bound before its generation's child exists, none of them is the child's.
    /// Returns how many there were.
    pub fn discard_pending(&self) -> usize {
        let mut n = 0;
        while n < 1024 {
            match recv_one(self.fd.as_raw_fd()) {
                Ok(Received::Empty) | Err(_) => break,
                Ok(_) => n += 1,
            }
        }
        n
    }

    /// The value for the child's `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Take over the notify socket an earlier image of this process bound at `path`, at
    /// `fd` (checked: a unix datagram socket bound to `path`).
    pub fn adopt(path: PathBuf, fd: RawFd) -> io::Result<Self> {
        let fd = crate::upgrade::take_fd(fd, "notify socket")?;
        let s = socket2::SockRef::from(&fd);
        let bound = s.local_addr()?;
        if s.r#type()? != socket2::Type::DGRAM || bound.as_pathname() != Some(path.as_path()) {
            return Err(io::Error::other(format!(
                "fd {} is not the notify socket {}",
                fd.as_raw_fd(),
                path.display()
            )));
        }
        Ok(Self { fd, path })
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
    recv_with_room(fd, MAX_FDS)
}

/// Most fds one datagram can carry: the kernel's `SCM_MAX_FD` (a `sendmsg` with more fails
/// with EINVAL, whether in one `SCM_RIGHTS` message or several).
pub const MAX_FDS: usize = 253;

/// Control buffer for the sender's credentials and [`MAX_FDS`] fds, as `u64`s for the
/// alignment `cmsghdr` needs.
const CMSG_WORDS: usize = {
    // SAFETY: CMSG_SPACE is pure arithmetic.
    let bytes = unsafe {
        libc::CMSG_SPACE(std::mem::size_of::<libc::ucred>() as u32)
            + libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32)
    } as usize;
    bytes.div_ceil(8)
};

/// Receive one datagram, with room in the control buffer for `max_fds` fds (at most
/// [`MAX_FDS`]; less only in tests, to exercise truncation).
///
/// Every fd that arrives is closed, on every path: handoff keeps no fd store, and
/// sd_notify_barrier() waits for exactly this close. Fds that did not fit (MSG_CTRUNC) were
/// never installed: the kernel drops them itself. The control data is walked with the libc
/// macros even when truncated (nix refuses to iterate it then, which used to leak every fd
/// that did arrive: a child sending 17 fds 70 times exhausted handoff's fd limit).
fn recv_with_room(fd: RawFd, max_fds: usize) -> io::Result<Received> {
    let mut buf = [0u8; MAX_DATAGRAM];
    let mut cbuf = [0u64; CMSG_WORDS];
    // SAFETY: pure arithmetic.
    let room = unsafe {
        libc::CMSG_SPACE(std::mem::size_of::<libc::ucred>() as u32)
            + libc::CMSG_SPACE((max_fds.min(MAX_FDS) * std::mem::size_of::<RawFd>()) as u32)
    } as usize;
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (no name, no iov, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = room.min(std::mem::size_of_val(&cbuf)) as _;
    // SAFETY: msg points at live buffers of the stated lengths for the whole call.
    let n = unsafe {
        libc::recvmsg(
            fd,
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC | libc::MSG_TRUNC,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok(Received::Empty),
            Some(libc::EINTR) => Ok(Received::Invalid("interrupted")),
            _ => Err(e),
        };
    }
    // First close every fd that arrived, before anything can return.
    let mut creds = None;
    // SAFETY: msg describes cbuf, filled by the kernel up to msg_controllen; the macros
    // stay within it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            let len = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                    for i in 0..len / std::mem::size_of::<RawFd>() {
                        let f = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                        // The kernel just installed these fds for us; nobody else owns them.
                        libc::close(f);
                    }
                }
                (libc::SOL_SOCKET, libc::SCM_CREDENTIALS)
                    if len >= std::mem::size_of::<libc::ucred>() =>
                {
                    let u = std::ptr::read_unaligned(data.cast::<libc::ucred>());
                    creds = Some((u.pid, u.uid));
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let len = n as usize;
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Ok(Received::Invalid("control data truncated"));
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 || len > MAX_DATAGRAM {
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

/// Send `payload` with `fds` attached (`SCM_RIGHTS`) to the unix datagram socket `addr`: a
/// path, or `@name` for an abstract address (as `NOTIFY_SOCKET` gives them). This is how
/// handoff puts its listeners in its service manager's file-descriptor store (`FDSTORE=1`).
pub fn send_with_fds(addr: &[u8], payload: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let to = match addr.strip_prefix(b"@") {
        Some(name) => UnixAddr::new_abstract(name)?,
        None => UnixAddr::new(std::ffi::OsStr::from_bytes(addr))?,
    };
    let sock = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    sendmsg(
        sock.as_raw_fd(),
        &[std::io::IoSlice::new(payload)],
        cmsgs,
        MsgFlags::empty(),
        Some(&to),
    )?;
    Ok(())
}

/// `sock`, registered with the current tokio runtime's reactor for readability.
pub fn register(sock: NotifySocket) -> io::Result<tokio::io::unix::AsyncFd<NotifySocket>> {
    // SAFETY: `NotifySocket` owns its fd (an `OwnedFd` field never replaced) for its whole
    // life, and `as_raw_fd` always returns that same fd.
    unsafe { tokio::io::unix::AsyncFd::register(sock) }.map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::IoSlice;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixDatagram;

    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

    /// Whether every write end of the pipe whose read end is `r` is closed.
    fn writers_gone(r: BorrowedFd<'_>) -> bool {
        let mut p = libc::pollfd {
            fd: r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n == 1 && p.revents & libc::POLLHUP != 0
    }

    #[test]
    fn runtime_dir_names() {
        assert_eq!(runtime_dir_pid("handoff.123.0"), Some(123));
        assert_eq!(runtime_dir_pid("handoff.123.45"), Some(123));
        for bad in [
            "handoff.123",
            "handoff..0",
            "handoff.1x.0",
            "handoff.1.",
            "other.1.0",
        ] {
            assert_eq!(runtime_dir_pid(bad), None, "{bad}");
        }
    }

    #[test]
    fn fds_of_a_truncated_datagram_are_closed_too() {
        let dir = RuntimeDir::create().expect("dir");
        let sock = NotifySocket::bind(&dir, 7).expect("bind");
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let raw = [w.as_raw_fd(); 5];
        let s = UnixDatagram::unbound().expect("socket");
        sendmsg(
            s.as_raw_fd(),
            &[IoSlice::new(b"FDSTORE=1")],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            Some(&UnixAddr::new(sock.path()).expect("addr")),
        )
        .expect("sendmsg");
        drop(w); // the only write ends left are the five in flight
        assert!(!writers_gone(r.as_fd()));
        // Room for 2 of the 5: the kernel installs 2, drops 3, and flags MSG_CTRUNC.
        assert_eq!(
            recv_with_room(sock.as_raw_fd(), 2).expect("recv"),
            Received::Invalid("control data truncated")
        );
        assert!(
            writers_gone(r.as_fd()),
            "the fds that arrived with a truncated datagram are still open"
        );
    }
}
