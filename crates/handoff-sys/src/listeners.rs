//! Binding the listening sockets handoff holds for its whole life.
//!
//! Every socket is close-on-exec in handoff (socket2 creates them `SOCK_CLOEXEC`); only the
//! spawn code places copies at 3.. in a child. No `SO_REUSEPORT`: handoff holds the one
//! socket, so there is one accept queue that survives every generation, and no stranger can
//! bind the same port and take part of the traffic.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use handoff_core::listen::{Host, InetAddr, ListenAddr, ListenSpec};
use serde::{Deserialize, Serialize};
use socket2::{Domain, SockAddr, Socket, Type};

/// What kind of socket a listener is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Tcp,
    Udp,
    Unix,
}

impl Kind {
    /// The name shown in logs and `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Unix => "unix",
        }
    }
}

/// A bound, listening socket.
#[derive(Debug)]
pub struct Listener {
    /// The name passed in `LISTEN_FDNAMES`.
    pub name: String,
    /// Where it actually listens (the real port when 0 was asked for).
    pub local: String,
    /// A unix socket file handoff created, with its identity, to remove at exit.
    pub unix_file: Option<UnixFile>,
    /// `tcp`, `udp` or `unix`.
    pub kind: Kind,
    /// Received from handoff's own parent (a systemd socket unit, or its file-descriptor
    /// store) rather than bound.
    pub inherited: bool,
    /// Bound by handoff and put in its service manager's file-descriptor store: the
    /// manager keeps it open across a restart of handoff (or a crash), so handoff leaves it
    /// (and its socket file) to the manager at exit, as it does with an inherited one.
    pub stored: bool,
    /// Given as `:PORT` (every interface, both families): bind adoption gives it to a child
    /// that binds `[::]:PORT` with or without `IPV6_V6ONLY` (see `handoff_core::adopt`).
    pub all_interfaces: bool,
    /// How to bind it again (bound sockets only).
    rebind: Option<Rebind>,
    fd: OwnedFd,
}

/// The exact address and options a socket was bound with, to re-create it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Rebind {
    Inet {
        addr: SocketAddr,
        v6only: Option<bool>,
        udp: bool,
        backlog: i32,
    },
    Unix {
        path: PathBuf,
        backlog: i32,
        access: UnixAccess,
    },
}

/// `--socket-mode` and `--socket-owner`: the permissions and owner of a unix socket file
/// handoff creates. Kept with the listener, so that a re-created socket gets them too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnixAccess {
    /// Permission bits (`0o660`); `None` leaves them to the umask. Only the 0777 bits apply:
    /// setuid, setgid and sticky mean nothing on a socket.
    pub mode: Option<u32>,
    /// Owner and group; `None` (or a `None` half) leaves it as created.
    pub owner: Option<(Option<u32>, Option<u32>)>,
}

/// A listener as `handoff upgrade` carries it across exec: its fd (by number: it stays
/// open, close-on-exec cleared for that exec only) and what handoff knows about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerState {
    pub fd: i32,
    pub name: String,
    pub local: String,
    pub kind: Kind,
    pub inherited: bool,
    pub stored: bool,
    /// Given as `:PORT` (bind adoption gives it to a `[::]:PORT` bind).
    pub all_interfaces: bool,
    unix_file: Option<UnixFile>,
    rebind: Option<Rebind>,
}

impl Listener {
    /// What [`Listener::adopt`] needs to take this listener over after an exec.
    pub fn export(&self) -> ListenerState {
        ListenerState {
            fd: std::os::fd::AsRawFd::as_raw_fd(&self.fd),
            name: self.name.clone(),
            local: self.local.clone(),
            kind: self.kind,
            inherited: self.inherited,
            stored: self.stored,
            all_interfaces: self.all_interfaces,
            unix_file: self.unix_file.clone(),
            rebind: self.rebind.clone(),
        }
    }

    /// Take over the listener an earlier image of this process exported, at its fd. The fd
    /// must be an open socket (checked), of which this process becomes the owner.
    pub fn adopt(st: ListenerState) -> io::Result<Self> {
        let fd = crate::upgrade::take_fd(st.fd, "listener")?;
        // A socket, as it was: a fd number reused by something else is refused.
        socket2::SockRef::from(&fd).r#type()?;
        Ok(Self {
            name: st.name,
            local: st.local,
            unix_file: st.unix_file,
            kind: st.kind,
            inherited: st.inherited,
            stored: st.stored,
            all_interfaces: st.all_interfaces,
            rebind: st.rebind,
            fd,
        })
    }

    /// A socket handoff received through socket activation (`LISTEN_FDS` for its own pid).
    pub fn from_inherited(fd: OwnedFd, name: String) -> io::Result<Self> {
        let s = socket2::SockRef::from(&fd);
        let ty = s.r#type()?;
        let addr = s.local_addr()?;
        let (kind, local) = if let Some(sa) = addr.as_socket() {
            if ty == Type::DGRAM {
                (Kind::Udp, format!("udp://{sa}"))
            } else {
                (Kind::Tcp, sa.to_string())
            }
        } else if let Some(p) = addr.as_pathname() {
            (Kind::Unix, format!("unix:{}", p.display()))
        } else {
            (Kind::Unix, "unix:(unnamed)".to_string())
        };
        // CLOEXEC in handoff: only the spawn code passes copies on.
        // SAFETY: plain fcntl on an fd we own.
        unsafe {
            libc::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                libc::F_SETFD,
                libc::FD_CLOEXEC,
            )
        };
        Ok(Self {
            name,
            local,
            unix_file: None,
            kind,
            inherited: true,
            stored: false,
            all_interfaces: false,
            rebind: None,
            fd,
        })
    }

    /// Whether the service manager holds this socket (a socket unit's, or one handoff put in
    /// its file-descriptor store): handoff does not close it nor remove its file at exit.
    pub fn kept_by_manager(&self) -> bool {
        self.inherited || self.stored
    }

    /// Whether this listening socket no longer works: a process holding it called
    /// `shutdown()`, which acts on the socket shared by every generation (odoo#107539). The
    /// kernel then reports POLLHUP; a TCP socket also loses SO_ACCEPTCONN (and its port).
    pub fn is_broken(&self) -> bool {
        if self.kind == Kind::Udp {
            return false;
        }
        let mut p = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&self.fd),
            events: 0,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        let hup = n > 0 && p.revents & (libc::POLLHUP | libc::POLLERR) != 0;
        hup || matches!(is_listening(self.fd.as_fd()), Ok(false))
    }

    /// Replace a broken socket by a new one at the same address. Children that hold the old
    /// one cannot accept on it any more; the next generation gets the new one.
    pub fn restore(&mut self) -> io::Result<()> {
        match self.rebind.clone() {
            None => Err(io::Error::other(
                "it came from the service manager; restart the socket unit",
            )),
            Some(Rebind::Inet {
                addr,
                v6only,
                udp,
                backlog,
            }) => {
                self.fd = open_inet(addr, v6only, udp, backlog)?.into();
                Ok(())
            }
            Some(Rebind::Unix {
                path,
                backlog,
                access,
            }) => {
                // The old socket refuses connections; its file may be removed (if it is still
                // the one handoff created) and re-bound, with the same mode and owner.
                if let Some(f) = &self.unix_file {
                    f.remove();
                }
                let (sock, file) = bind_unix(&path, backlog, &access).map_err(io::Error::other)?;
                self.fd = sock.into();
                self.unix_file = Some(file);
                Ok(())
            }
        }
    }

    /// Whether this unix listener's socket file was deleted (or replaced) from under handoff:
    /// clients can no longer reach it by its path. [`Listener::restore`] binds it again.
    pub fn file_missing(&self) -> bool {
        self.unix_file.as_ref().is_some_and(|f| !f.is_ours())
    }

    /// Call listen() again with the backlog handoff bound this listener with. A child
    /// sharing the socket may call listen(fd, 2) on it (some servers call listen() on the
    /// socket they are given), which shrinks the accept queue for every later generation
    /// too; handoff calls this before each spawn. A no-op for UDP, for a socket that no
    /// longer listens (a broken one is for [`Listener::restore`]; listen() could revive it
    /// half-way) and for sockets from the service manager (their backlog is the socket
    /// unit's, unknown here).
    pub fn reassert_backlog(&self) -> io::Result<()> {
        let backlog = match &self.rebind {
            Some(Rebind::Inet {
                udp: false,
                backlog,
                ..
            })
            | Some(Rebind::Unix { backlog, .. }) => *backlog,
            _ => return Ok(()),
        };
        if self.is_broken() {
            return Ok(());
        }
        socket2::SockRef::from(&self.fd).listen(backlog)
    }

    /// The address in Server::Starter's `SERVER_STARTER_PORT` form (`HOST:PORT` or a path).
    pub fn starter_addr(&self) -> Option<String> {
        match self.kind {
            Kind::Tcp => Some(self.local.clone()),
            Kind::Unix => self.local.strip_prefix("unix:").map(str::to_string),
            Kind::Udp => None,
        }
    }
}

/// [`Listener::reassert_backlog`] on each listener. An error can only come from a socket
/// that no longer listens, which [`Listener::is_broken`] reports; there is nothing more to do
/// about it here.
pub fn reassert_backlogs(listeners: &[Listener]) {
    for l in listeners {
        let _ = l.reassert_backlog();
    }
}

/// Sockets handoff itself received by socket activation, with their names. Only when
/// `LISTEN_PID` is handoff's own pid, as libsystemd checks.
pub fn take_inherited() -> Vec<(OwnedFd, String)> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let n: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if !pid_ok || n <= 0 {
        return Vec::new();
    }
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|s| s.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    (0..n)
        .filter_map(|i| {
            let fd = 3 + i;
            // SAFETY: F_GETFD only checks that the fd is open.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return None;
            }
            // SAFETY: the socket-activation contract hands fds 3..3+n to this process.
            let owned = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
            let name = names
                .get(i as usize)
                .filter(|n| !n.is_empty())
                .cloned()
                .unwrap_or_else(|| "unknown".into());
            Some((owned, name))
        })
        .collect()
}

/// Apply `--socket-mode` and `--socket-owner` to the unix socket file of a listener that is
/// already bound. [`bind_with`] is better: it gives the file its mode at birth, and a socket
/// re-created by [`Listener::restore`] gets the same access again; this one is for callers
/// that bound with [`bind`].
///
/// Never follows a path someone could have changed: the file is opened `O_PATH|O_NOFOLLOW`
/// and must still be the socket handoff created (same device and inode), and the mode and
/// owner are changed through that fd. A symlink swapped in at the path is refused, so a
/// root handoff cannot be made to chmod or chown another file.
pub fn set_unix_access(
    l: &Listener,
    mode: Option<u32>,
    owner: Option<(Option<u32>, Option<u32>)>,
) -> Result<(), String> {
    let Some(f) = &l.unix_file else { return Ok(()) };
    let fd = f
        .open_nofollow()
        .map_err(|e| format!("cannot set the access of {}: {e}", f.path.display()))?;
    if let Some(m) = mode {
        // fchmod() does not work on an O_PATH fd; /proc/self/fd/N names the very inode.
        let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
        std::fs::set_permissions(&proc, std::os::unix::fs::PermissionsExt::from_mode(m))
            .map_err(|e| format!("cannot set the mode of {}: {e}", f.path.display()))?;
    }
    if let Some((uid, gid)) = owner {
        fchown_empty_path(&fd, uid, gid)
            .map_err(|e| format!("cannot set the owner of {}: {e}", f.path.display()))?;
    }
    Ok(())
}

/// `fchownat(fd, "", uid, gid, AT_EMPTY_PATH)`: chown the file `fd` refers to (also an
/// `O_PATH` fd), without resolving any path.
fn fchown_empty_path(fd: &OwnedFd, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    // SAFETY: a valid fd and a NUL-terminated empty path; -1 ((uid_t)-1) leaves an id as is.
    let r = unsafe {
        libc::fchownat(
            std::os::fd::AsRawFd::as_raw_fd(fd),
            c"".as_ptr(),
            uid.unwrap_or(u32::MAX),
            gid.unwrap_or(u32::MAX),
            libc::AT_EMPTY_PATH,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A socket file handoff created; removed at exit only if it is still the same file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnixFile {
    pub path: PathBuf,
    dev: u64,
    ino: u64,
}

impl UnixFile {
    /// The file at `path`, opened `O_PATH|O_NOFOLLOW`, if it is still the socket handoff
    /// created (a socket with the same device and inode); an error otherwise.
    fn open_nofollow(&self) -> io::Result<OwnedFd> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(self.path.as_os_str().as_bytes())?;
        // SAFETY: a NUL-terminated path; the fd returned is ours.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: just opened, owned by nobody else.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: an all-zero stat is a valid out-buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat on our fd (O_PATH fds allow it) into a valid buffer.
        if unsafe { libc::fstat(std::os::fd::AsRawFd::as_raw_fd(&fd), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFSOCK
            || st.st_dev != self.dev
            || st.st_ino != self.ino
        {
            return Err(io::Error::other(
                "the path is no longer the socket handoff created (replaced meanwhile)",
            ));
        }
        Ok(fd)
    }

    /// Remove the file if it is still the socket handoff created (not a successor's).
    /// unlink() never follows a symlink: at worst, a name someone swapped in meanwhile in
    /// that directory (who could remove it as well) is removed.
    pub fn remove(&self) {
        if self.is_ours() {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Whether the path still names the socket handoff created (not deleted, not replaced).
    pub fn is_ours(&self) -> bool {
        std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Why a listener could not be set up. Displays as one line naming the address and cause.
#[derive(Debug)]
pub struct BindError {
    pub addr: String,
    pub cause: String,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot listen on {}: {}", self.addr, self.cause)
    }
}

impl std::error::Error for BindError {}

fn explain(e: &io::Error, port: Option<u16>) -> String {
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => {
            "address already in use (another process listens there; stop it or choose another port)"
                .into()
        }
        Some(libc::EACCES) if port.is_some_and(|p| p < 1024) => format!(
            "permission denied (port {} is privileged: run as root or grant CAP_NET_BIND_SERVICE)",
            port.unwrap_or(0)
        ),
        Some(libc::EACCES) => "permission denied".into(),
        Some(libc::EADDRNOTAVAIL) => {
            "address not available (no interface on this machine has that address)".into()
        }
        _ => e.to_string(),
    }
}

/// The largest backlog the kernel accepts (`net.core.somaxconn`).
pub fn somaxconn() -> i32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096)
}

/// Bind and listen on `spec`. `backlog` is capped by the caller at somaxconn. A unix socket
/// file gets the umask's mode and handoff's owner; see [`bind_with`].
pub fn bind(spec: &ListenSpec, backlog: i32) -> Result<Listener, BindError> {
    bind_with(spec, backlog, &UnixAccess::default())
}

/// [`bind`], giving a unix socket file `access` (`--socket-mode`, `--socket-owner`), also
/// whenever [`Listener::restore`] re-creates it. Ignored for TCP and UDP.
pub fn bind_with(
    spec: &ListenSpec,
    backlog: i32,
    access: &UnixAccess,
) -> Result<Listener, BindError> {
    let shown = spec.addr.to_string();
    let err = |e: io::Error, port: Option<u16>| BindError {
        addr: shown.clone(),
        cause: explain(&e, port),
    };
    let name = spec.name.clone().unwrap_or_else(|| "unknown".into());
    match &spec.addr {
        ListenAddr::Tcp(a) | ListenAddr::Udp(a) => {
            let udp = matches!(spec.addr, ListenAddr::Udp(_));
            let (sock, local, v6only) =
                bind_inet(a, udp, backlog).map_err(|e| err(e, Some(a.port)))?;
            let addr = sock.local_addr().ok().and_then(|a| a.as_socket());
            Ok(Listener {
                name,
                local,
                unix_file: None,
                kind: if udp { Kind::Udp } else { Kind::Tcp },
                inherited: false,
                stored: false,
                all_interfaces: a.host == Host::AllInterfaces,
                rebind: addr.map(|addr| Rebind::Inet {
                    addr,
                    v6only,
                    udp,
                    backlog,
                }),
                fd: sock.into(),
            })
        }
        ListenAddr::Unix(path) => {
            let (sock, file) = bind_unix(path, backlog, access).map_err(|e| BindError {
                addr: shown.clone(),
                cause: e,
            })?;
            Ok(Listener {
                name,
                local: format!("unix:{}", path.display()),
                unix_file: Some(file),
                kind: Kind::Unix,
                inherited: false,
                stored: false,
                all_interfaces: false,
                rebind: Some(Rebind::Unix {
                    path: path.clone(),
                    backlog,
                    access: *access,
                }),
                fd: sock.into(),
            })
        }
    }
}

fn resolve(a: &InetAddr) -> io::Result<Vec<(SocketAddr, Option<bool>)>> {
    // The bool is IPV6_V6ONLY, always set explicitly for IPv6 sockets so the result does not
    // depend on net.ipv6.bindv6only.
    Ok(match &a.host {
        Host::Ip(ip) => vec![(SocketAddr::new(*ip, a.port), ip.is_ipv6().then_some(true))],
        // ":8080": every interface, both families: a dual-stack [::] socket, or 0.0.0.0 where
        // the machine has no IPv6.
        Host::AllInterfaces => vec![
            (
                SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), a.port),
                Some(false),
            ),
            (
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), a.port),
                None,
            ),
        ],
        Host::Name(n) => {
            let mut v: Vec<_> = (n.as_str(), a.port)
                .to_socket_addrs()?
                .map(|s| (s, s.is_ipv6().then_some(true)))
                .collect();
            // Prefer IPv4 for names like "localhost", which is what most clients try first.
            v.sort_by_key(|(s, _)| s.is_ipv6());
            v.truncate(1);
            if v.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "name has no address",
                ));
            }
            v
        }
    })
}

/// A socket bound (and, for TCP, listening) at exactly `addr`, with handoff's options:
/// SO_REUSEADDR for TCP only, IPV6_V6ONLY as given, close-on-exec (socket2's default), and
/// never SO_REUSEPORT.
///
/// No stranger may share the address (tests/listeners.rs checks each claim):
/// - UDP: SO_REUSEADDR on two UDP sockets lets both bind the same address, whatever their
///   owners, and the kernel then hands datagrams to either: another local user could read
///   them. So a UDP listener is bound without it, and any later bind there fails.
/// - TCP: Linux never lets a socket bind a port on which another socket is in LISTEN state,
///   SO_REUSEADDR or not, same user or not (checked on 6.x as root and as nobody, against
///   127.0.0.1, 0.0.0.0 and a dual-stack [::]). SO_REUSEADDR only lets handoff bind while
///   connections of a previous run sit in TIME_WAIT, so it is kept.
/// - SO_REUSEPORT would let any process of the same user join the port and take a share of
///   the connections: never set.
fn open_inet(
    addr: SocketAddr,
    v6only: Option<bool>,
    udp: bool,
    backlog: i32,
) -> io::Result<Socket> {
    let ty = if udp { Type::DGRAM } else { Type::STREAM };
    let sock = Socket::new(Domain::for_address(addr), ty, None)?;
    if !udp {
        sock.set_reuse_address(true)?;
    }
    if let Some(only) = v6only {
        sock.set_only_v6(only)?;
    }
    sock.bind(&addr.into())?;
    if !udp {
        sock.listen(backlog)?;
    }
    Ok(sock)
}

fn bind_inet(a: &InetAddr, udp: bool, backlog: i32) -> io::Result<(Socket, String, Option<bool>)> {
    let mut last = None;
    for (addr, v6only) in resolve(a)? {
        let sock = match open_inet(addr, v6only, udp, backlog) {
            Ok(s) => s,
            // ":8080" on a machine without IPv6: fall back to 0.0.0.0.
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                last = Some(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        let local = sock
            .local_addr()?
            .as_socket()
            .map(|s| s.to_string())
            .unwrap_or_else(|| addr.to_string());
        let local = if udp { format!("udp://{local}") } else { local };
        return Ok((sock, local, v6only));
    }
    Err(last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT)))
}

/// Bind a unix stream socket at `path` and listen, with `access`.
///
/// handoff may be root and the directory writable by others (the children's user), so no
/// step follows a path they could swap:
/// - a stale socket file is removed with unlink(), which never follows a symlink (the
///   connect() that tells stale from live only talks to a socket);
/// - the mode comes from the umask around bind(): the file is born with it;
/// - the owner is set through an `O_PATH|O_NOFOLLOW` fd of the file, checked to be the
///   socket just bound (a socket, same device and inode as right after bind), before
///   listen(): until then connecting is refused. What is left: someone able to write the
///   directory could swap in another socket between bind() and that check; root would then
///   chown that socket file (with fs.protected_hardlinks, only one of theirs).
fn bind_unix(path: &Path, backlog: i32, access: &UnixAccess) -> Result<(Socket, UnixFile), String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(
                "the path exists and is not a socket; remove it or choose another path".into(),
            )
        }
        Ok(_) => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(
                    "a server is already listening on this socket; stop it or choose another path"
                        .into(),
                ),
                // Nobody listens: a stale file left by a crash. Replace it.
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    std::fs::remove_file(path)
                        .map_err(|e| format!("cannot remove stale socket file: {e}"))?;
                }
                Err(e) => return Err(format!("cannot check the existing socket file: {e}")),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(explain(&e, None)),
    }
    let sock = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(|e| e.to_string())?;
    let addr = SockAddr::unix(path).map_err(|e| e.to_string())?;
    match access.mode {
        Some(m) => crate::with_umask(!m & 0o777, || sock.bind(&addr)),
        None => sock.bind(&addr),
    }
    .map_err(|e| explain(&e, None))?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    let file = UnixFile {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    if let Some((uid, gid)) = access.owner {
        if let Err(e) = file
            .open_nofollow()
            .and_then(|fd| fchown_empty_path(&fd, uid, gid))
        {
            file.remove();
            return Err(format!("cannot set the owner of the socket file: {e}"));
        }
    }
    if let Err(e) = sock.listen(backlog) {
        file.remove();
        return Err(explain(&e, None));
    }
    Ok((sock, file))
}

/// Bind every spec in order; on any failure, undo what was done (remove created socket
/// files) and return the error: nothing half-started.
pub fn bind_all(specs: &[ListenSpec], backlog: i32) -> Result<Vec<Listener>, BindError> {
    let mut out: Vec<Listener> = Vec::with_capacity(specs.len());
    for spec in specs {
        match bind(spec, backlog) {
            Ok(l) => out.push(l),
            Err(e) => {
                for l in &out {
                    if let Some(f) = &l.unix_file {
                        f.remove();
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(out)
}

/// `SO_ACCEPTCONN`: whether a stream socket is still listening. A child that calls
/// `shutdown()` on the shared socket turns it off for every process.
pub fn is_listening(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let s = socket2::SockRef::from(&fd);
    if s.r#type()? != Type::STREAM {
        return Ok(true);
    }
    s.is_listener()
}
