//! The single reaper. Exactly one place in handoff calls `waitpid`, so no exit status is ever
//! stolen (two reapers race: one gets ECHILD); handoff never uses `tokio::process`.

use handoff_core::signal::Signal;
use handoff_core::supervisor::ExitStatus;

/// Become a child subreaper: orphans of our children (workers of a drained server) are
/// re-parented to handoff instead of init, so handoff reaps them and nothing outlives it.
pub fn become_subreaper() -> std::io::Result<()> {
    // SAFETY: plain prctl.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Collect one child that has exited, without blocking. SIGCHLDs coalesce, so callers loop
/// until `None`.
pub fn reap_one() -> Option<(u32, ExitStatus)> {
    loop {
        let mut status = 0;
        // SAFETY: valid pointer; WNOHANG never blocks.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return None; // 0: children left but none exited; -1: ECHILD (none at all)
        }
        let st = if libc::WIFEXITED(status) {
            ExitStatus::Exited(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            match Signal::from_number(libc::WTERMSIG(status)) {
                Some(s) => ExitStatus::Signaled(s),
                None => ExitStatus::Exited(128 + libc::WTERMSIG(status)),
            }
        } else {
            continue;
        };
        return Some((pid as u32, st));
    }
}

/// At exit: reap whatever is left, for at most `max` (a process stuck in the kernel must not
/// keep handoff alive forever).
pub fn reap_remaining(max: std::time::Duration) {
    let deadline = std::time::Instant::now() + max;
    while std::time::Instant::now() < deadline {
        while reap_one().is_some() {}
        if children().is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Pids of handoff's remaining children (direct or adopted), from /proc.
pub fn children() -> Vec<u32> {
    // SAFETY: getpid never fails.
    let me = unsafe { libc::getpid() } as u32;
    crate::procfs::all_pids()
        .into_iter()
        .filter(|&p| crate::procfs::stat(p).is_some_and(|s| s.ppid == me))
        .collect()
}
