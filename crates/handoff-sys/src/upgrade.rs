//! `handoff upgrade`'s OS side: the state document in a memfd, the fds that cross exactly
//! one exec, the signals held back across it, the check of the candidate binary, and the
//! exec itself.
//!
//! Rules kept here:
//! - every fd stays close-on-exec except, for the one exec of an upgrade, the fds the state
//!   names ([`set_cloexec`] off just before [`exec`], on again if it returns); the new image
//!   marks every fd it inherited close-on-exec again at once ([`crate::cloexec_inherited`])
//!   and takes each one it was given with [`take_fd`];
//! - the signals handoff handles are blocked across the exec ([`block_signals`]): one that
//!   arrives meanwhile stays pending (the mask and pending signals survive exec) and reaches
//!   the new image once it has installed its handlers and unblocks them
//!   ([`unblock_signals`]), instead of killing it with the default action (SIGHUP, SIGTERM);
//! - the candidate is first run as a child ([`spawn_check`]), never exec'd blind.

use std::ffi::{CString, OsString};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use handoff_core::signal::Signal;

/// The signals handoff handles, held back across the exec.
pub const HANDLED: [Signal; 6] = [
    Signal::HUP,
    Signal::INT,
    Signal::TERM,
    Signal::USR1,
    Signal::USR2,
    Signal::CHLD,
];

/// Take ownership of `fd`, an fd an earlier image of this process named in the state: it
/// must be open. It is made close-on-exec. `what` names it in the error.
pub fn take_fd(fd: RawFd, what: &str) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only checks that the fd is open.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::other(format!(
            "the {what} fd {fd} named in the state is not open"
        )));
    }
    set_cloexec(fd, true)?;
    // SAFETY: the exporting image handed this open fd over to this image alone; nothing
    // else in this process owns it (each fd is named once in the state, checked by the
    // caller).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Set or clear `FD_CLOEXEC` on `fd`.
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    let flag = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: fcntl on an fd number; a closed one fails with EBADF.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flag) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An anonymous file (memfd) holding `data`, close-on-exec, at offset 0.
pub fn memfd(name: &str, data: &[u8]) -> io::Result<OwnedFd> {
    let c = CString::new(name).map_err(|_| io::Error::other("NUL in memfd name"))?;
    // SAFETY: a NUL-terminated name; the result is a new fd we own.
    let fd = unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut f = std::fs::File::from(fd);
    io::Write::write_all(&mut f, data)?;
    io::Seek::seek(&mut f, io::SeekFrom::Start(0))?;
    Ok(f.into())
}

/// Everything in the file `fd` from offset 0 (pread: whoever shares the open file and its
/// offset does not matter), at most `max` bytes.
pub fn read_from_start(fd: BorrowedFd<'_>, max: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        // SAFETY: buf is valid for its length; pread on a valid fd.
        let n = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                out.len() as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n as usize]);
        if out.len() > max {
            return Err(io::Error::other(format!("longer than {max} bytes")));
        }
    }
}

fn sigset(signals: &[Signal]) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set; sigaddset with valid numbers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, s.number());
        }
        set
    }
}

/// Block [`HANDLED`] in the calling thread (the main thread, which execs).
pub fn block_signals() -> io::Result<()> {
    let set = sigset(&HANDLED);
    // SAFETY: a valid set; no old set wanted.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Unblock [`HANDLED`] in the calling thread: after a failed exec, or in the new image once
/// its handlers are installed (what arrived during the exec is delivered then).
pub fn unblock_signals() {
    let set = sigset(&HANDLED);
    // SAFETY: a valid set; no old set wanted. Cannot fail with SIG_UNBLOCK and a valid set.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
}

/// Replace this process's image: `execve(binary, argv, env)`. Returns only if the exec
/// failed, with why; this image is then intact.
pub fn exec(binary: &Path, argv: &[OsString], env: &[(OsString, OsString)]) -> io::Error {
    let c = |b: &[u8]| CString::new(b).map_err(|_| io::Error::other("NUL in an argument"));
    let build = || -> io::Result<(CString, Vec<CString>, Vec<CString>)> {
        let path = c(binary.as_os_str().as_bytes())?;
        let args = argv
            .iter()
            .map(|a| c(a.as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let vars = env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                c(&kv)
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok((path, args, vars))
    };
    let (path, args, vars) = match build() {
        Ok(x) => x,
        Err(e) => return e,
    };
    let mut argp: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argp.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = vars.iter().map(|v| v.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: NUL-terminated strings and NULL-terminated arrays that outlive the call.
    unsafe { libc::execve(path.as_ptr(), argp.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

/// The path this process's binary was started from (`/proc/self/exe`), without the
/// " (deleted)" the kernel appends once a package upgrade replaced the file: the path is
/// what an upgrade execs by default.
pub fn self_exe() -> io::Result<PathBuf> {
    let p = std::fs::read_link("/proc/self/exe")?;
    let b = p.as_os_str().as_bytes();
    Ok(match b.strip_suffix(b" (deleted)") {
        Some(s) => PathBuf::from(std::ffi::OsStr::from_bytes(s)),
        None => p,
    })
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `Instant` reads, which survives exec.
pub fn monotonic_ns() -> u64 {
    // SAFETY: an all-zero timespec is a valid out-buffer; CLOCK_MONOTONIC always exists.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts
    };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Set this process's name (`/proc/self/comm`, 15 bytes at most): after an upgrade to a
/// binary of another file name, handoff is still named `handoff` (pid files and runtime
/// directories are recognised by it).
pub fn set_comm(name: &str) {
    if let Ok(c) = CString::new(name) {
        // SAFETY: PR_SET_NAME reads a NUL-terminated string (truncated to 16 bytes).
        unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr(), 0, 0, 0) };
    }
}

/// The candidate binary of an upgrade, running its check.
#[derive(Debug)]
pub struct Check {
    pub pid: u32,
    stdout: std::fs::File,
    stderr: std::fs::File,
}

/// Run `binary args...` as a child in a process group of its own, with `stdin` as its
/// standard input and its output captured, without the variables in `drop_env`. Errors
/// are those of the exec itself (missing, not executable, wrong format). The single reaper
/// reaps it; read its output with [`Check::output`] once it has exited.
pub fn spawn_check(
    binary: &Path,
    args: &[&str],
    stdin: BorrowedFd<'_>,
    drop_env: &[&str],
) -> io::Result<Check> {
    let mut cmd = std::process::Command::new(binary);
    cmd.args(args)
        .stdin(std::process::Stdio::from(stdin.try_clone_to_owned()?))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    for v in drop_env {
        cmd.env_remove(v);
    }
    let mut child = cmd.spawn()?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(io::Error::other("no pipes to the check"));
    };
    let nonblocking = |fd: RawFd| {
        // SAFETY: fcntl on a pipe fd we own.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    };
    nonblocking(stdout.as_raw_fd());
    nonblocking(stderr.as_raw_fd());
    // The Child is dropped without waiting: the single reaper collects it.
    Ok(Check {
        pid: child.id(),
        stdout: std::fs::File::from(OwnedFd::from(stdout)),
        stderr: std::fs::File::from(OwnedFd::from(stderr)),
    })
}

impl Check {
    /// What it wrote to stdout and stderr (what is buffered: at most 64 KiB each, without
    /// waiting for a descendant that may still hold the pipes).
    pub fn output(&mut self) -> (String, String) {
        let read = |f: &mut std::fs::File| {
            let mut buf = vec![0u8; 65536];
            let mut n = 0;
            while n < buf.len() {
                match f.read(&mut buf[n..]) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
            }
            buf.truncate(n);
            String::from_utf8_lossy(&buf).into_owned()
        };
        (read(&mut self.stdout), read(&mut self.stderr))
    }
}
