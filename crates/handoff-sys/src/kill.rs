//! Sending signals. ESRCH (already gone) is not an error: it is reported as `Ok(false)`.

use std::io;

use handoff_core::signal::Signal;

/// A signal syscall's result: sent, or the target was already gone (ESRCH), or an error.
pub(crate) fn check(r: i64) -> io::Result<bool> {
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ESRCH) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// `kill(pid, sig)`. Callers guarantee `pid` has not been reaped yet (the state machine only
/// targets live generations), so it cannot be a recycled pid.
pub fn signal(pid: u32, sig: Signal) -> io::Result<bool> {
    // SAFETY: plain syscall.
    check(unsafe { libc::kill(pid as libc::pid_t, sig.number()) }.into())
}

/// `killpg(pgid, sig)`: the whole process group of a generation.
pub fn signal_group(pgid: u32, sig: Signal) -> io::Result<bool> {
    if pgid <= 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing pgid <= 1",
        ));
    }
    // SAFETY: plain syscall.
    check(unsafe { libc::killpg(pgid as libc::pid_t, sig.number()) }.into())
}
