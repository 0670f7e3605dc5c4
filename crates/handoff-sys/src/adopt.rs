//! Bind adoption: a child (or any descendant) that binds a TCP address handoff holds gets
//! handoff's listening socket instead of EADDRINUSE.
//!
//! # Mechanism
//! - Before fork, [`channel`] builds the seccomp BPF program ([`program`]) and a socketpair.
//! - Between clone and exec, [`ChildSide::install`] (called by `spawn::child_exec`, before the
//!   privilege drop so that a root handoff needs no `NO_NEW_PRIVS`) installs the filter with
//!   `SECCOMP_FILTER_FLAG_NEW_LISTENER` and sends the notification fd to handoff with
//!   `SCM_RIGHTS`. Async-signal-safe syscalls only, nothing allocated.
//! - The filter is inherited by every descendant (`npm start`, `sh -c`, forked workers) and
//!   cannot be removed. It sends `bind`, `listen` and `shutdown` (except `SHUT_WR`, which Node
//!   calls on every connection) to handoff, and allows everything else in BPF: unrelated
//!   syscalls pay only the filter (tens of ns), accepted connections nothing.
//! - In handoff, one thread per generation ([`Watch::start`]) waits on that fd (it must never
//!   wait for the event loop: a child's `bind()` blocks until it is answered) and answers:
//!   - `bind` of a held TCP address (decided by `handoff_core::adopt::decide`: exact address,
//!     stream socket, port ≠ 0): `SECCOMP_IOCTL_NOTIF_ADDFD` with `SECCOMP_ADDFD_FLAG_SETFD`
//!     puts the held listener at the child's fd (its own socket is closed), and `bind()`
//!     returns 0. Anything else: `SECCOMP_USER_NOTIF_FLAG_CONTINUE`, the kernel runs it.
//!   - `listen` on a held socket: 0, without calling `listen()`: the server's backlog argument
//!     would otherwise shrink the queue shared by every generation (`listen(5)` in Python).
//!     handoff's `--backlog` stays.
//!   - `shutdown(SHUT_RD|SHUT_RDWR)` on a held socket: 0, without shutting it down: it would
//!     stop the listener for every generation and refuse connections.
//!
//! The child's memory and fds are read with `process_vm_readv`, `/proc/TID/fd`,
//! `pidfd_getfd`; `SECCOMP_IOCTL_NOTIF_ID_VALID` is checked after every read and before
//! acting, so that data read from a task that died (and whose tid was reused) is never acted
//! on. Every path answers the notification, or the child would hang; whatever cannot be read
//! or done is answered with CONTINUE (the behaviour without handoff).
//!
//! # Limits (see the README's "Servers that bind their own port")
//! - Linux ≥ 5.9 (ADDFD with SETFD); [`probe`] says why not otherwise, and handoff serves
//!   `LISTEN_FDS` servers as before.
//! - Without `CAP_SYS_ADMIN`, the filter needs `NO_NEW_PRIVS`: setuid helpers run by the
//!   server do not gain privileges.
//! - Only the native architecture is covered: i386 (`int 0x80`, `socketcall`) and x32 syscalls
//!   are allowed unexamined, so a 32-bit server's own bind behaves as without handoff
//!   (EADDRINUSE on a held port; `LISTEN_FDS` still works).
//! - If handoff dies, a `bind`, `listen` or `shutdown` in the child fails with ENOSYS from
//!   then on (the filter stays); handoff's children get SIGTERM then anyway (PDEATHSIG). An
//!   upgrade of handoff itself would have to pass these fds on (a later issue).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use handoff_core::adopt::{self as policy, Decision, Held, Pass, Request};

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
/// The low 32 bits of `args[1]` (little-endian; `how` of shutdown is an int).
#[cfg(target_endian = "little")]
const OFF_ARG1_LO: u32 = 16 + 8;

/// The seccomp program: `bind`, `listen`, and `shutdown` other than `SHUT_WR` go to handoff;
/// everything else, and every syscall of another architecture (i386, x32), is allowed.
pub fn program() -> Vec<libc::sock_filter> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let ld = |k: u32| libc::sock_filter {
        code: (BPF_LD | BPF_W | BPF_ABS) as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jmp = |op: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (BPF_JMP | op | BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let ret = |k: u32| libc::sock_filter {
        code: (BPF_RET | BPF_K) as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let mut p = vec![ld(OFF_ARCH)];
    // Instruction indexes of the two returns at the end are computed from the length.
    #[cfg(target_arch = "x86_64")]
    const N: usize = 11;
    #[cfg(target_arch = "aarch64")]
    const N: usize = 10;
    let (allow, notify) = (N - 2, N - 1);
    let to = |from: usize, target: usize| (target - from - 1) as u8;
    p.push(jmp(BPF_JEQ, AUDIT_ARCH, 0, to(1, allow)));
    p.push(ld(OFF_NR));
    #[cfg(target_arch = "x86_64")]
    p.push(jmp(libc::BPF_JGE, X32_SYSCALL_BIT, to(p.len(), allow), 0));
    let i = p.len();
    p.push(jmp(BPF_JEQ, libc::SYS_bind as u32, to(i, notify), 0));
    p.push(jmp(BPF_JEQ, libc::SYS_listen as u32, to(i + 1, notify), 0));
    p.push(jmp(BPF_JEQ, libc::SYS_shutdown as u32, 0, to(i + 2, allow)));
    p.push(ld(OFF_ARG1_LO));
    let j = p.len();
    p.push(jmp(
        BPF_JEQ,
        libc::SHUT_WR as u32,
        to(j, allow),
        to(j, notify),
    ));
    p.push(ret(libc::SECCOMP_RET_ALLOW));
    p.push(ret(libc::SECCOMP_RET_USER_NOTIF));
    debug_assert_eq!(p.len(), N);
    p
}

/// What the child sends back: 0 or an errno, and how the filter was installed.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Report {
    errno: i32,
    /// `PR_SET_NO_NEW_PRIVS` had to be set.
    nnp: u8,
    /// `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` was accepted (Linux ≥ 5.19).
    killable: u8,
    _pad: [u8; 2],
}

/// The child's half: the BPF program and its end of the socketpair, prepared before fork.
pub struct ChildSide {
    prog: Box<[libc::sock_filter]>,
    sock: OwnedFd,
}

/// handoff's half: where the notification fd arrives.
pub struct ParentSide {
    sock: OwnedFd,
}

/// The filter and socketpair for one spawn.
pub fn channel() -> io::Result<(ParentSide, ChildSide)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((
        ParentSide { sock: a },
        ChildSide {
            prog: program().into_boxed_slice(),
            sock: b,
        },
    ))
}

impl ChildSide {
    /// Move the child's socket to an fd ≥ `min` (above the fds the child gets at 3..), so
    /// that no `dup2` of a listener lands on it.
    pub fn move_above(&mut self, min: RawFd) -> io::Result<()> {
        // SAFETY: plain fcntl on an fd we own; the result is a new fd we own.
        let fd = unsafe { libc::fcntl(self.sock.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by fcntl.
        self.sock = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(())
    }

    /// Install the filter and send its notification fd to handoff. Never fails the spawn:
    /// when the filter cannot be installed, the errno goes to handoff instead, and the child
    /// runs without adoption (its `LISTEN_FDS` still work).
    ///
    /// # Safety
    /// Only in a freshly forked child, before exec: async-signal-safe syscalls only, on
    /// memory prepared before the fork; nothing is allocated.
    pub unsafe fn install(&self) {
        let fprog = libc::sock_fprog {
            len: self.prog.len() as u16,
            filter: self.prog.as_ptr() as *mut libc::sock_filter,
        };
        let mut flags =
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
        let mut report = Report::default();
        let fd = loop {
            // SAFETY: fprog points at a valid program owned by self.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    flags,
                    &fprog as *const libc::sock_fprog,
                )
            };
            if r >= 0 {
                break r as RawFd;
            }
            // SAFETY: errno is thread-local and readable in any context.
            let e = unsafe { *libc::__errno_location() };
            if e == libc::EINVAL && flags & libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV != 0 {
                // Before Linux 5.19.
                flags &= !libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
            } else if e == libc::EACCES && report.nnp == 0 {
                // No CAP_SYS_ADMIN: a filter needs NO_NEW_PRIVS.
                // SAFETY: prctl with constant arguments.
                unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                report.nnp = 1;
            } else {
                report.errno = e;
                break -1;
            }
        };
        report.killable = u8::from(flags & libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV != 0);
        // SAFETY: stack buffers only; sendmsg and close are async-signal-safe.
        unsafe { send_fd(self.sock.as_raw_fd(), fd, &report) };
        if fd >= 0 {
            // The server must not hold its own notification fd.
            // SAFETY: closing the fd seccomp just returned. The raw syscall: glibc's close is a
            // cancellation point, which touches the calling thread's descriptor (handoff's, in
            // a CLONE_VM child).
            unsafe { libc::syscall(libc::SYS_close, fd) };
        }
    }
}

/// Room for one `SCM_RIGHTS` fd, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 32]);

/// `sendmsg` of `report`, with `fd` attached unless negative. Stack memory only.
unsafe fn send_fd(sock: RawFd, fd: RawFd, report: &Report) {
    let mut iov = libc::iovec {
        iov_base: report as *const Report as *mut libc::c_void,
        iov_len: std::mem::size_of::<Report>(),
    };
    let mut buf = CmsgBuf([0; 32]);
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if fd >= 0 {
        msg.msg_control = buf.0.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is arithmetic.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
        // SAFETY: the buffer holds one cmsghdr plus an int (32 ≥ CMSG_SPACE(4)).
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
        }
    }
    // SAFETY: msg points at live stack memory. The raw syscall, as for close above.
    unsafe {
        libc::syscall(
            libc::SYS_sendmsg,
            sock,
            &msg as *const libc::msghdr,
            libc::MSG_NOSIGNAL,
        )
    };
}

/// How the filter went in a child.
#[derive(Debug)]
pub struct Installed {
    /// The seccomp notification fd (close-on-exec).
    pub notify: OwnedFd,
    /// `NO_NEW_PRIVS` was set in the child.
    pub nnp: bool,
    /// Notified syscalls wait killably (Linux ≥ 5.19).
    pub killable: bool,
}

impl ParentSide {
    /// The notification fd the child sent (call once `spawn` returned: it has exec'd).
    pub fn receive(self) -> io::Result<Installed> {
        let mut report = Report::default();
        let mut iov = libc::iovec {
            iov_base: (&mut report as *mut Report).cast(),
            iov_len: std::mem::size_of::<Report>(),
        };
        let mut buf = CmsgBuf([0; 32]);
        // SAFETY: msghdr is plain data; all-zero is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = buf.0.as_mut_ptr().cast();
        msg.msg_controllen = buf.0.len();
        // SAFETY: msg points at live buffers; the child sent before exec, so no waiting.
        let n = unsafe {
            libc::recvmsg(
                self.sock.as_raw_fd(),
                &mut msg,
                libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut fd = None;
        // SAFETY: walking the control messages the kernel wrote into buf.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let raw = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>());
                    fd = Some(OwnedFd::from_raw_fd(raw));
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        if n as usize != std::mem::size_of::<Report>() {
            return Err(io::Error::other("the child sent no filter report"));
        }
        if report.errno != 0 {
            return Err(io::Error::from_raw_os_error(report.errno));
        }
        let notify = fd.ok_or_else(|| io::Error::other("the child sent no seccomp fd"))?;
        Ok(Installed {
            notify,
            nnp: report.nnp != 0,
            killable: report.killable != 0,
        })
    }
}

/// What [`probe`] found: adoption works, and whether children will need `NO_NEW_PRIVS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Support {
    pub needs_nnp: bool,
}

/// Whether this kernel and these privileges allow adoption: a throwaway thread installs an
/// allow-everything filter with a listener (on itself only: a filter, and `NO_NEW_PRIVS`,
/// belong to the thread) and checks that `SECCOMP_IOCTL_NOTIF_ADDFD` exists (Linux ≥ 5.9).
/// The error is one sentence for the log.
pub fn probe() -> Result<Support, String> {
    let scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").unwrap_or_default();
    if scope.trim() == "3" {
        return Err(
            "kernel.yama.ptrace_scope is 3: handoff may not read its children's memory".into(),
        );
    }
    std::thread::spawn(|| -> Result<Support, String> {
        let allow = [libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        }];
        let fprog = libc::sock_fprog {
            len: 1,
            filter: allow.as_ptr() as *mut libc::sock_filter,
        };
        let install = || {
            // SAFETY: fprog points at a valid one-instruction program.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                    &fprog as *const libc::sock_fprog,
                )
            };
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                // SAFETY: a new fd we own.
                Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
            }
        };
        let mut needs_nnp = false;
        let fd = match install() {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
                needs_nnp = true;
                // SAFETY: prctl with constant arguments; this thread only, and it ends here.
                unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                install().map_err(|e| format!("cannot install a seccomp filter: {e}"))?
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                return Err(format!(
                    "the kernel has no seccomp user notification (Linux ≥ 5.9 needed): {e}"
                ))
            }
            Err(e) => return Err(format!("cannot install a seccomp filter: {e}")),
        };
        let mut a = libc::seccomp_notif_addfd {
            id: 0,
            flags: libc::SECCOMP_ADDFD_FLAG_SETFD as u32,
            srcfd: u32::MAX,
            newfd: 0,
            newfd_flags: 0,
        };
        // SAFETY: a valid struct; srcfd -1 makes a supporting kernel fail with EBADF.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_ADDFD, &mut a) };
        let e = io::Error::last_os_error();
        if r == 0 || e.raw_os_error() != Some(libc::EBADF) {
            return Err(format!(
                "the kernel has no SECCOMP_IOCTL_NOTIF_ADDFD (Linux ≥ 5.9 needed): {e}"
            ));
        }
        Ok(Support { needs_nnp })
    })
    .join()
    .unwrap_or_else(|_| Err("the probe thread panicked".into()))
}

// ---- answering notifications --------------------------------------------------------------

/// A listening socket a generation may be given: handoff's own copy, for one generation.
pub struct HeldSocket {
    /// Index of the listener (`fd 3 + index` in the child).
    pub index: usize,
    pub fd: OwnedFd,
    /// Inode of the socket, to recognise it in the child's fd table.
    pub ino: u64,
    /// Its address, for TCP listeners (only those are adopted).
    pub tcp: Option<Held>,
}

impl HeldSocket {
    /// A copy of `fd` (close-on-exec) with what adoption needs to know; `any_wildcard` for a
    /// `--listen :PORT` listener (see `handoff_core::adopt`).
    pub fn new(index: usize, fd: BorrowedFd<'_>, any_wildcard: bool) -> io::Result<Self> {
        let fd = fd.try_clone_to_owned()?;
        let s = socket2::SockRef::from(&fd);
        let ino = inode(fd.as_fd())?;
        let tcp = match (s.r#type()?, s.local_addr()?.as_socket()) {
            (socket2::Type::STREAM, Some(addr)) => Some(Held {
                addr,
                v6only: addr.is_ipv6() && s.only_v6()?,
                any_wildcard,
            }),
            _ => None,
        };
        Ok(Self {
            index,
            fd,
            ino,
            tcp,
        })
    }
}

/// The listeners every watch gives out: handoff's current ones, shared by all generations'
/// watches and replaced by the driver when they change (a listener re-created after a
/// child's `shutdown()`, the listeners closed at shutdown so that new clients are refused at
/// once). A watch holds no socket of its own.
#[derive(Clone, Default)]
pub struct HeldSet(Arc<Mutex<Vec<HeldSocket>>>);

impl HeldSet {
    pub fn replace(&self, held: Vec<HeldSocket>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = held;
    }
}

fn inode(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: stat is plain data; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and buffer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_ino)
}

/// Which generation's `O_NONBLOCK` the held sockets have: the file-status flags belong to the
/// socket's one open file description, shared by handoff and every generation, so only one
/// setting can exist. The first generation that adopts a listener sets it (its own socket's
/// flag); later ones that asked for the other setting are reported, not obeyed (a blocking
/// `accept()` server given a non-blocking socket would fail with EAGAIN; the reverse can at
/// worst block an event loop that lost an accept race). Kept for handoff's lifetime, per
/// listener index.
#[derive(Clone, Default)]
pub struct NonBlockPolicy(Arc<Mutex<Vec<Option<bool>>>>);

impl NonBlockPolicy {
    /// Each listener's setting, by index (`None`: not adopted yet), for `handoff upgrade`.
    pub fn export(&self) -> Vec<Option<bool>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The policy an earlier image exported.
    pub fn import(settings: Vec<Option<bool>>) -> Self {
        Self(Arc::new(Mutex::new(settings)))
    }
}

/// Something a watch did, for the log and `status`. `pid` is the process (thread group) that
/// made the call, whichever of its threads it was.
#[derive(Debug, Clone)]
pub enum Notice {
    /// A bind was given the held listener.
    Adopted {
        pid: u32,
        fd: i32,
        index: usize,
        addr: SocketAddr,
        /// The held socket's O_NONBLOCK now.
        nonblock: bool,
        /// The child's socket had the other O_NONBLOCK; the first adopter's was kept.
        nonblock_kept: bool,
        /// Options set on the child's own socket that differ from the held one's and were
        /// lost with it (not copied: the held socket is shared by every generation).
        lost_options: Vec<&'static str>,
    },
    /// A bind of a second fd, or the same again: answered 0, no change.
    AlreadyAdopted { pid: u32, fd: i32, addr: SocketAddr },
    /// A bind on a held port at another address: left to the kernel (EADDRINUSE, most
    /// likely). `held` is the address handoff holds.
    OtherAddress {
        pid: u32,
        addr: SocketAddr,
        held: SocketAddr,
    },
    /// `listen()` on a held socket: answered 0, backlog unchanged.
    Listen { pid: u32, fd: i32, backlog: i32 },
    /// `shutdown()` on a held socket: answered 0, not done.
    Shutdown { pid: u32, fd: i32, how: i32 },
    /// Adoption failed; the call was left to the kernel.
    Error { pid: u32, what: String },
}

/// The thread answering one generation's notifications. Dropping it stops the thread, which
/// then closes the notification fd (later notified calls of that generation's processes fail
/// with ENOSYS; handoff drops it when the generation is retired, its leftovers killed).
pub struct Watch {
    stop: Option<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        // Closing the write end wakes the thread's poll (POLLHUP). It ends at once (handling
        // one notification makes no blocking call), and is joined so that its fds are closed
        // when the generation is retired, not some time later.
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Watch {
    /// Start answering `notify` with `held` (this generation's listeners). `tell` is called
    /// from the watch's thread.
    pub fn start(
        name: String,
        notify: OwnedFd,
        held: HeldSet,
        nonblock: NonBlockPolicy,
        tell: impl Fn(Notice) + Send + 'static,
    ) -> io::Result<Self> {
        let mut p = [0; 2];
        // SAFETY: valid array of two ints.
        if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh fds we own.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
        let handler = Handler {
            notify,
            held,
            nonblock,
        };
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || handler.run(r, &tell))?;
        Ok(Self {
            stop: Some(w),
            thread: Some(thread),
        })
    }
}

struct Handler {
    notify: OwnedFd,
    held: HeldSet,
    nonblock: NonBlockPolicy,
}

/// How to answer one notification.
enum Answer {
    Continue,
    Value(i64),
    /// The notification is no longer valid (the task died): nothing to answer.
    Gone,
}

impl Handler {
    fn run(self, stop: OwnedFd, tell: &dyn Fn(Notice)) {
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.notify.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: stop.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return;
            }
            if fds[1].revents != 0 {
                return;
            }
            if fds[0].revents & libc::POLLIN != 0 {
                self.one(tell);
            } else if fds[0].revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                // Every process of the generation is gone.
                return;
            }
        }
    }

    fn one(&self, tell: &dyn Fn(Notice)) {
        // SAFETY: seccomp_notif is plain data; RECV requires it zeroed.
        let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and struct of the size the ioctl encodes.
        if unsafe {
            libc::ioctl(
                self.notify.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_RECV,
                &mut req,
            )
        } != 0
        {
            // ENOENT: the task died or was interrupted before we got it. Nothing to answer.
            return;
        }
        // What to log, told only once the child has its answer: logging must not delay it.
        let mut notes = Vec::new();
        let held = self.held.0.lock().unwrap_or_else(|e| e.into_inner());
        let answer = match i64::from(req.data.nr) {
            n if n == libc::SYS_bind => self.bind(&held, &req, &mut notes),
            n if n == libc::SYS_listen => {
                self.on_held(&held, &req, &mut notes, |pid, fd| Notice::Listen {
                    pid,
                    fd,
                    backlog: req.data.args[1] as i32,
                })
            }
            n if n == libc::SYS_shutdown => {
                self.on_held(&held, &req, &mut notes, |pid, fd| Notice::Shutdown {
                    pid,
                    fd,
                    how: req.data.args[1] as i32,
                })
            }
            _ => Answer::Continue,
        };
        drop(held);
        let mut resp = libc::seccomp_notif_resp {
            id: req.id,
            val: 0,
            error: 0,
            flags: 0,
        };
        match answer {
            Answer::Gone => {
                notes.into_iter().for_each(tell);
                return;
            }
            Answer::Continue => resp.flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
            Answer::Value(v) => resp.val = v,
        }
        // SAFETY: valid fd and struct. ENOENT (the task died meanwhile) needs nothing more.
        unsafe {
            libc::ioctl(
                self.notify.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SEND,
                &mut resp,
            )
        };
        notes.into_iter().for_each(tell);
    }

    fn valid(&self, id: u64) -> bool {
        let mut id = id;
        // SAFETY: valid fd and u64.
        let r = unsafe {
            libc::ioctl(
                self.notify.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_ID_VALID,
                &mut id,
            )
        };
        r == 0
    }

    /// The held socket at the child's `fd`, if it is one (by inode, via /proc/TID/fd).
    fn held_at(held: &[HeldSocket], tid: u32, fd: i32) -> Option<&HeldSocket> {
        let link = std::fs::read_link(format!("/proc/{tid}/fd/{fd}")).ok()?;
        let ino: u64 = link
            .to_str()?
            .strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()?;
        held.iter().find(|h| h.ino == ino)
    }

    /// `listen` or `shutdown`: answered 0 on a held socket, left to the kernel otherwise.
    fn on_held(
        &self,
        held: &[HeldSocket],
        req: &libc::seccomp_notif,
        tell: &mut Vec<Notice>,
        notice: impl Fn(u32, i32) -> Notice,
    ) -> Answer {
        let fd = req.data.args[0] as i32;
        if req.pid == 0 || Self::held_at(held, req.pid, fd).is_none() {
            return Answer::Continue;
        }
        if !self.valid(req.id) {
            return Answer::Gone;
        }
        tell.push(notice(process_of(req.pid), fd));
        Answer::Value(0)
    }

    fn bind(
        &self,
        held: &[HeldSocket],
        req: &libc::seccomp_notif,
        tell: &mut Vec<Notice>,
    ) -> Answer {
        let tid = req.pid;
        let fd = req.data.args[0] as i32;
        if tid == 0 {
            // Not in handoff's pid namespace: nothing can be read.
            return Answer::Continue;
        }
        let Some(addr) = read_sockaddr(tid, req.data.args[1], req.data.args[2]) else {
            return Answer::Continue;
        };
        // The cheap check first: most binds that are not ours (port 0, other ports, Go's
        // IPv6 probes) stop here.
        if addr.port() == 0
            || !held
                .iter()
                .any(|h| h.tcp.is_some_and(|t| t.addr.port() == addr.port()))
        {
            return Answer::Continue;
        }
        if let Some(h) = Self::held_at(held, tid, fd) {
            // A bind again of an adopted fd (a restarted call, or a server binding twice):
            // 0, as for the first one, when it asks for the same address.
            let again = Request {
                addr,
                stream: true,
                v6only: h.tcp.is_some_and(|t| t.v6only),
            };
            if h.tcp
                .is_some_and(|t| policy::decide(&again, &[t]) == Decision::Adopt(0))
            {
                if !self.valid(req.id) {
                    return Answer::Gone;
                }
                tell.push(Notice::AlreadyAdopted {
                    pid: process_of(tid),
                    fd,
                    addr,
                });
                return Answer::Value(0);
            }
            return Answer::Continue;
        }
        let child = match ChildSocket::get(tid, fd) {
            Ok(c) => c,
            Err(e) => {
                tell.push(Notice::Error {
                    pid: process_of(tid),
                    what: format!("cannot inspect fd {fd} to bind {addr}: {e}"),
                });
                return Answer::Continue;
            }
        };
        if child.family != addr_family(&addr) {
            return Answer::Continue; // the kernel will refuse it (EINVAL/EAFNOSUPPORT)
        }
        let tcp: Vec<Held> = held.iter().filter_map(|h| h.tcp).collect();
        let tcp_held: Vec<&HeldSocket> = held.iter().filter(|h| h.tcp.is_some()).collect();
        let request = Request {
            addr,
            stream: child.stream,
            v6only: child.v6only,
        };
        let h = match policy::decide(&request, &tcp) {
            Decision::Adopt(i) => tcp_held[i],
            Decision::Pass(Pass::OtherAddress(i)) => {
                if !self.valid(req.id) {
                    return Answer::Gone;
                }
                tell.push(Notice::OtherAddress {
                    pid: process_of(tid),
                    addr,
                    held: tcp[i].addr,
                });
                return Answer::Continue;
            }
            Decision::Pass(_) => return Answer::Continue,
        };
        let lost_options = child.differing_options(h.fd.as_fd());
        // Everything read; from here on, act only if it was read from the notified task.
        if !self.valid(req.id) {
            return Answer::Gone;
        }
        let (nonblock, nonblock_kept) = match self.apply_nonblock(h, child.nonblock) {
            Ok(v) => v,
            Err(e) => {
                tell.push(Notice::Error {
                    pid: process_of(tid),
                    what: format!(
                        "cannot set O_NONBLOCK on {}: {e}",
                        h.tcp.map_or(addr, |t| t.addr)
                    ),
                });
                return Answer::Continue;
            }
        };
        let mut add = libc::seccomp_notif_addfd {
            id: req.id,
            flags: libc::SECCOMP_ADDFD_FLAG_SETFD as u32,
            srcfd: h.fd.as_raw_fd() as u32,
            newfd: fd as u32,
            newfd_flags: if child.cloexec {
                libc::O_CLOEXEC as u32
            } else {
                0
            },
        };
        // SAFETY: valid fd and struct: installs our socket at the child's fd (like dup2).
        if unsafe {
            libc::ioctl(
                self.notify.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_ADDFD,
                &mut add,
            )
        } < 0
        {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                return Answer::Gone;
            }
            tell.push(Notice::Error {
                pid: process_of(tid),
                what: format!("cannot give fd {fd} the listener {addr}: {e}"),
            });
            return Answer::Continue;
        }
        tell.push(Notice::Adopted {
            pid: process_of(tid),
            fd,
            index: h.index,
            addr,
            nonblock,
            nonblock_kept,
            lost_options,
        });
        Answer::Value(0)
    }

    /// The held socket's O_NONBLOCK after this adoption, and whether the child asked for the
    /// other one (see [`NonBlockPolicy`]).
    fn apply_nonblock(&self, h: &HeldSocket, wanted: bool) -> io::Result<(bool, bool)> {
        let mut table = self.nonblock.0.lock().unwrap_or_else(|e| e.into_inner());
        if table.len() <= h.index {
            table.resize(h.index + 1, None);
        }
        let setting = *table[h.index].get_or_insert(wanted);
        // SAFETY: fcntl on our fd.
        let fl = unsafe { libc::fcntl(h.fd.as_raw_fd(), libc::F_GETFL) };
        if fl < 0 {
            return Err(io::Error::last_os_error());
        }
        let now = fl & libc::O_NONBLOCK != 0;
        if now != setting {
            let fl = if setting {
                fl | libc::O_NONBLOCK
            } else {
                fl & !libc::O_NONBLOCK
            };
            // SAFETY: fcntl on our fd.
            if unsafe { libc::fcntl(h.fd.as_raw_fd(), libc::F_SETFL, fl) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok((setting, setting != wanted))
    }
}

/// The process (thread group) of thread `tid`, for the log: a server may bind from any thread
/// (Go does), and seccomp names the thread. `tid` itself if it cannot be read.
fn process_of(tid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(tid)
}

fn addr_family(a: &SocketAddr) -> i32 {
    if a.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

/// The `struct sockaddr` a task passed to bind, read from its memory.
fn read_sockaddr(tid: u32, ptr: u64, len: u64) -> Option<SocketAddr> {
    let len = (len as usize).min(128);
    let mut buf = [0u8; 128];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: ptr as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: local points at our buffer of at least len bytes; the remote side is the
    // kernel's to check.
    let n = unsafe { libc::process_vm_readv(tid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if n != len as isize {
        return None;
    }
    policy::parse_sockaddr(&buf[..len])
}

/// The child's own socket, inspected through a copy (`pidfd_getfd`).
struct ChildSocket {
    family: i32,
    stream: bool,
    v6only: bool,
    /// The file-status flag of its open file description.
    nonblock: bool,
    /// The fd flag of the child's fd.
    cloexec: bool,
    fd: OwnedFd,
}

impl ChildSocket {
    fn get(tid: u32, fd: i32) -> io::Result<Self> {
        // pidfd_open wants a process id: a thread's is its Tgid.
        let tgid = process_of(tid) as i32;
        // SAFETY: pidfd_open returns a new fd or -1.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, tgid, 0) };
        if pidfd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd we own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
        // SAFETY: pidfd_getfd returns a new close-on-exec fd or -1.
        let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
        if copy < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd we own.
        let copy = unsafe { OwnedFd::from_raw_fd(copy as RawFd) };
        let s = socket2::SockRef::from(&copy);
        let family = getsockopt_int(copy.as_fd(), libc::SOL_SOCKET, libc::SO_DOMAIN)?;
        let stream = s.r#type()? == socket2::Type::STREAM;
        let v6only = family == libc::AF_INET6 && s.only_v6()?;
        // SAFETY: fcntl on our copy, which shares the child's open file description.
        let fl = unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_GETFL) };
        let fdinfo = std::fs::read_to_string(format!("/proc/{tid}/fdinfo/{fd}"))?;
        let flags = fdinfo
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|v| i32::from_str_radix(v.trim(), 8).ok())
            .unwrap_or(0);
        Ok(Self {
            family,
            stream,
            v6only,
            nonblock: fl >= 0 && fl & libc::O_NONBLOCK != 0,
            cloexec: flags & libc::O_CLOEXEC != 0,
            fd: copy,
        })
    }

    /// Options that differ between the child's socket and the held one, by name.
    fn differing_options(&self, held: BorrowedFd<'_>) -> Vec<&'static str> {
        const OPTIONS: [(&str, i32, i32); 8] = [
            ("SO_REUSEPORT", libc::SOL_SOCKET, libc::SO_REUSEPORT),
            ("SO_KEEPALIVE", libc::SOL_SOCKET, libc::SO_KEEPALIVE),
            ("SO_RCVBUF", libc::SOL_SOCKET, libc::SO_RCVBUF),
            ("SO_SNDBUF", libc::SOL_SOCKET, libc::SO_SNDBUF),
            ("TCP_NODELAY", libc::IPPROTO_TCP, libc::TCP_NODELAY),
            (
                "TCP_DEFER_ACCEPT",
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
            ),
            ("TCP_FASTOPEN", libc::IPPROTO_TCP, libc::TCP_FASTOPEN),
            ("TCP_MAXSEG", libc::IPPROTO_TCP, libc::TCP_MAXSEG),
        ];
        OPTIONS
            .iter()
            .filter(|(_, level, opt)| {
                getsockopt_int(self.fd.as_fd(), *level, *opt).ok()
                    != getsockopt_int(held, *level, *opt).ok()
            })
            .map(|(name, _, _)| *name)
            .collect()
    }
}

fn getsockopt_int(fd: BorrowedFd<'_>, level: i32, opt: i32) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd, int buffer and its length.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}
