//! Is a generation accepting? Read from /proc (every task of its process tree), and, for
//! servers whose /proc view cannot be trusted, proven with a connection of handoff's own.
//! The parsing is in [`handoff_core::accepting`]; this module reads the files, the other
//! process's memory (`process_vm_readv`, as its parent or root) and knows the syscall numbers
//! (libc's `SYS_*`, so they are right on every architecture).
//!
//! Accept queues are measured on handoff's own copy of a TCP listener with `TCP_INFO`
//! (`tcpi_unacked` is the queue length of a listening socket): exact, and no walk through
//! /proc/net/tcp, which is long on a busy host.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use handoff_core::accepting::{self as parse, ListenerWait};
use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;

/// The syscalls a task waiting to accept can be blocked in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    Accept,
    Epoll,
    Poll,
    Select,
}

fn classify(nr: libc::c_long) -> Option<Wait> {
    // The syscalls every architecture has.
    if nr == libc::SYS_accept4 {
        return Some(Wait::Accept);
    }
    if nr == libc::SYS_epoll_pwait || nr == libc::SYS_epoll_pwait2 {
        return Some(Wait::Epoll);
    }
    if nr == libc::SYS_ppoll {
        return Some(Wait::Poll);
    }
    if nr == libc::SYS_pselect6 {
        return Some(Wait::Select);
    }
    // The older ones, where the architecture has them.
    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    ))]
    if nr == libc::SYS_accept {
        return Some(Wait::Accept);
    }
    #[cfg(target_arch = "x86_64")]
    {
        if nr == libc::SYS_epoll_wait {
            return Some(Wait::Epoll);
        }
        if nr == libc::SYS_poll {
            return Some(Wait::Poll);
        }
        if nr == libc::SYS_select {
            return Some(Wait::Select);
        }
    }
    None
}

/// A generation's process tree: `root` and its descendants (from `/proc/PID/task/*/children`
/// where the kernel has it, else from every process's parent).
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut out = vec![root];
    let children = |p: u32| -> Option<Vec<u32>> {
        let mut kids = Vec::new();
        for t in std::fs::read_dir(format!("/proc/{p}/task")).ok()? {
            let path = t.ok()?.path().join("children");
            let text = std::fs::read_to_string(path).ok()?;
            kids.extend(
                text.split_ascii_whitespace()
                    .filter_map(|k| k.parse::<u32>().ok()),
            );
        }
        Some(kids)
    };
    if children(root).is_none() {
        out.extend(crate::procfs::descendants(root));
        return out;
    }
    let mut i = 0;
    while i < out.len() && out.len() < 4096 {
        let kids = children(out[i]).unwrap_or_default();
        out.extend(kids);
        i += 1;
    }
    out
}

/// The inode of a socket handoff holds (to find it in the child's fds).
pub fn inode(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let meta = std::fs::File::from(fd.try_clone_to_owned()?).metadata()?;
    use std::os::unix::fs::MetadataExt;
    Ok(meta.ino())
}

/// One listener as a scan sees it: what waits on it, and the fd where the child holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub wait: ListenerWait,
    /// The fd (in the process where a task waits) that links to the listener.
    pub fd: Option<u32>,
}

/// For each listener inode in `inodes`: whether some task of `pids` waits to accept on it.
/// Processes that vanish or cannot be read are skipped.
pub fn scan(pids: &[u32], inodes: &[u64]) -> Vec<Seen> {
    let mut seen = vec![
        Seen {
            wait: ListenerWait::None,
            fd: None,
        };
        inodes.len()
    ];
    for &pid in pids {
        scan_process(pid, inodes, &mut seen);
    }
    seen
}

fn scan_process(pid: u32, inodes: &[u64], seen: &mut [Seen]) {
    // The listener fds this process holds: fd → index in `inodes`.
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return;
    };
    let mut held: HashMap<i32, usize> = HashMap::new();
    for e in dir.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue;
        };
        let ino = link.to_str().and_then(parse::socket_inode);
        if let Some(i) = ino.and_then(|ino| inodes.iter().position(|&x| x == ino)) {
            held.insert(fd, i);
        }
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for t in tasks.flatten() {
        let Ok(line) = std::fs::read_to_string(t.path().join("syscall")) else {
            continue;
        };
        let Some(sc) = parse::parse_syscall(&line) else {
            continue;
        };
        let Some(kind) = libc::c_long::try_from(sc.nr).ok().and_then(classify) else {
            continue;
        };
        let mut mark = |i: usize, fd: i32, wait: ListenerWait| {
            let s = &mut seen[i];
            // Waiting (trusted) wins over edge-triggered; Proven is set by the prober only.
            if s.wait == ListenerWait::None || wait == ListenerWait::Waiting {
                s.wait = wait;
                s.fd = u32::try_from(fd).ok();
            }
        };
        match kind {
            Wait::Accept => {
                let fd = sc.args[0] as i32;
                if let Some(&i) = held.get(&fd) {
                    mark(i, fd, ListenerWait::Waiting);
                }
            }
            Wait::Epoll => {
                let epfd = sc.args[0] as i32;
                let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{epfd}")) else {
                    continue;
                };
                for e in parse::parse_epoll_fdinfo(&info) {
                    let Some(i) = inodes.iter().position(|&x| x == e.ino) else {
                        continue;
                    };
                    if !e.readable() {
                        continue;
                    }
                    // The fd that links to it now (the tfd number may be stale).
                    let fd = held
                        .iter()
                        .find(|(_, &j)| j == i)
                        .map_or(e.tfd, |(&fd, _)| fd);
                    let wait = if e.edge_triggered() {
                        ListenerWait::EdgeTriggered
                    } else {
                        ListenerWait::Waiting
                    };
                    mark(i, fd, wait);
                }
            }
            Wait::Poll => {
                // ppoll/poll(struct pollfd *fds, nfds_t nfds, ...)
                let nfds = (sc.args[1] as usize).min(65536);
                let Some(bytes) = read_memory(pid, sc.args[0], nfds * 8) else {
                    continue;
                };
                for (&fd, &i) in &held {
                    if parse::pollfds_contain(&bytes, fd, libc::POLLIN) {
                        mark(i, fd, ListenerWait::Waiting);
                    }
                }
            }
            Wait::Select => {
                // select/pselect6(int nfds, fd_set *readfds, ...)
                let (nfds, readfds) = (sc.args[0] as i64, sc.args[1]);
                if readfds == 0 {
                    continue;
                }
                let word = std::mem::size_of::<libc::c_ulong>();
                for (&fd, &i) in &held {
                    if i64::from(fd) >= nfds {
                        continue;
                    }
                    let at = readfds + (fd as u64 / (8 * word as u64)) * word as u64;
                    if read_memory(pid, at, word).is_some_and(|w| parse::fd_set_word_has(&w, fd)) {
                        mark(i, fd, ListenerWait::Waiting);
                    }
                }
            }
        }
    }
}

/// `len` bytes at `addr` in `pid`'s memory (process_vm_readv, else /proc/PID/mem).
fn read_memory(pid: u32, addr: u64, len: usize) -> Option<Vec<u8>> {
    if len == 0 {
        return Some(Vec::new());
    }
    let mut buf = vec![0u8; len];
    let remote = [RemoteIoVec {
        base: addr as usize,
        len,
    }];
    let n = process_vm_readv(
        Pid::from_raw(pid as i32),
        &mut [IoSliceMut::new(&mut buf)],
        &remote,
    );
    match n {
        Ok(n) if n == len => Some(buf),
        _ => {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
            f.read_exact_at(&mut buf, addr).ok()?;
            Some(buf)
        }
    }
}

/// The accept queue of a listening TCP socket handoff holds: connections the kernel has
/// completed and no process has accepted yet (`TCP_INFO`'s `tcpi_unacked`). `None` for a
/// socket that is not a listening TCP socket.
pub fn accept_queue(fd: BorrowedFd<'_>) -> Option<u32> {
    // SAFETY: tcp_info is plain old data; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` are valid for writes of `len` bytes; the kernel writes at
    // most that much and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    const TCP_LISTEN: u8 = 10;
    (rc == 0 && info.tcpi_state == TCP_LISTEN).then_some(info.tcpi_unacked)
}

/// A proof-of-accept connection: handoff connects to a listener and watches which process
/// accepts the connection. The server-side socket has inode 0 in /proc/net/tcp until some
/// process accepts it; then its `socket:[inode]` is in that process's fds.
#[derive(Debug)]
pub struct AcceptProbe {
    /// Kept open until the probe is dropped (the server sees connect, then EOF).
    _conn: TcpStream,
    /// The listener's port, and our end as /proc/net/tcp prints the remote side.
    port: u16,
    remote_addr: String,
    remote_port: u16,
    v6: bool,
}

impl AcceptProbe {
    /// Connect to the listener bound at `local` (a wildcard address is reached on loopback).
    pub fn connect(local: SocketAddr) -> io::Result<Self> {
        let ip = match local.ip() {
            IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let conn = TcpStream::connect_timeout(
            &SocketAddr::new(ip, local.port()),
            Duration::from_millis(50),
        )?;
        let me = conn.local_addr()?;
        Ok(Self {
            port: local.port(),
            remote_addr: parse::proc_net_addr(me.ip()),
            remote_port: me.port(),
            v6: me.is_ipv6(),
            _conn: conn,
        })
    }

    /// The inode of the server side of this connection once a process has accepted it;
    /// `None` while it waits in the accept queue (or if it cannot be found).
    pub fn accepted_inode(&self) -> Option<u64> {
        let file = if self.v6 {
            "/proc/net/tcp6"
        } else {
            "/proc/net/tcp"
        };
        let text = std::fs::read_to_string(file).ok()?;
        text.lines()
            .filter_map(parse::parse_tcp_line)
            .find(|l| {
                l.local_port == self.port
                    && l.remote_port == self.remote_port
                    && l.remote_addr == self.remote_addr
            })
            .map(|l| l.inode)
            .filter(|&ino| ino != 0)
    }
}

/// Whether some process of `pids` holds the socket with this inode.
pub fn holds_socket(pids: &[u32], ino: u64) -> bool {
    let want = format!("socket:[{ino}]");
    pids.iter().any(|p| {
        std::fs::read_dir(format!("/proc/{p}/fd")).is_ok_and(|d| {
            d.flatten()
                .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == want.as_str()))
        })
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn syscall_numbers_come_from_libc() {
        assert_eq!(classify(libc::SYS_accept4), Some(Wait::Accept));
        assert_eq!(classify(libc::SYS_epoll_pwait), Some(Wait::Epoll));
        assert_eq!(classify(libc::SYS_epoll_pwait2), Some(Wait::Epoll));
        assert_eq!(classify(libc::SYS_ppoll), Some(Wait::Poll));
        assert_eq!(classify(libc::SYS_pselect6), Some(Wait::Select));
        assert_eq!(classify(libc::SYS_read), None);
    }

    #[test]
    fn a_listener_of_our_own_has_an_empty_queue_then_one_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        use std::os::fd::AsFd;
        assert_eq!(accept_queue(l.as_fd()), Some(0));
        let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        assert_eq!(accept_queue(l.as_fd()), Some(1));
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(accept_queue(udp.as_fd()), None);
    }

    #[test]
    fn a_probe_is_seen_accepted_by_whoever_accepts_it() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = AcceptProbe::connect(l.local_addr().unwrap()).unwrap();
        assert_eq!(p.accepted_inode(), None, "waiting in the queue");
        let (conn, _) = l.accept().unwrap();
        let ino = p.accepted_inode().expect("accepted");
        use std::os::fd::AsFd;
        assert_eq!(inode(conn.as_fd()).unwrap(), ino);
        assert!(holds_socket(&[std::process::id()], ino));
    }
}
