//! handoff-sys: every OS effect of handoff, Linux only. All `unsafe` lives here.
//!
//! Invariants:
//! - every fd handoff opens is close-on-exec; only [`spawn`] places listeners at 3.. in a child;
//! - exactly one reaper ([`reaper::reap_one`]) calls `waitpid`;
//! - between fork and exec only async-signal-safe calls on memory prepared before the fork.
pub mod kill;
pub mod listeners;
pub mod notify_socket;
pub mod peer;
pub mod procfs;
pub mod reaper;
pub mod spawn;

/// Mark every fd ≥ 3 that handoff inherited close-on-exec, except `keep`, so that nothing
/// handoff's own parent leaked reaches a child.
pub fn cloexec_inherited(keep: &[i32]) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if fd >= 3 && !keep.contains(&fd) {
            // SAFETY: fcntl on a possibly-closed fd just fails with EBADF.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}
