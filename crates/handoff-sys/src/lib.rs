//! handoff-sys: every OS effect of handoff, Linux only. All `unsafe` lives here.
//!
//! Invariants:
//! - every fd handoff opens is close-on-exec; only [`spawn`] places listeners at 3.. in a child;
//! - exactly one reaper ([`reaper::reap_one`]) calls `waitpid`, but for a child that failed
//!   before its exec, which [`spawn`] reaps itself;
//! - between clone (or fork) and exec only async-signal-safe calls on memory prepared before.
//! - cgroups are only created, killed and removed under handoff's own cgroup, through fds
//!   opened without following links ([`cgroup`]).
pub mod accepting;
pub mod adopt;
pub mod cgroup;
pub mod kill;
pub mod listeners;
pub mod notify_socket;
pub mod peer;
pub mod procfs;
pub mod reaper;
pub mod spawn;
pub mod upgrade;

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

/// handoff's effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Run `f` with the process umask set to `mask`, and restore the old one afterwards (also if
/// `f` panics). This is how handoff gives a socket file its mode from birth: bind() creates
/// the file with `0777 & !umask`, and a chmod by path afterwards could be redirected by
/// whoever can swap the file for a symlink in between.
///
/// The umask belongs to the whole process: a lock keeps the callers in handoff-sys apart
/// (tests run them in parallel threads); handoff itself creates files from one thread.
pub fn with_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    struct Restore(libc::mode_t);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: umask cannot fail.
            unsafe { libc::umask(self.0) };
        }
    }
    let _lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: umask cannot fail.
    let _restore = Restore(unsafe { libc::umask((mask & 0o777) as libc::mode_t) });
    f()
}
