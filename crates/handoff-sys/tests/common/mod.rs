//! Helpers shared by the test binaries that need a cgroup of their own (root only).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use handoff_sys::cgroup::{self, Hierarchy};

pub const WAIT: Duration = Duration::from_secs(20);

/// Poll `cond` until it is true or `timeout` passes.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[track_caller]
pub fn assert_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test creates cgroups: run it as root with --ignored"
    );
}

/// A cgroup of this test, `<own>/handoff-sys-test.PID.N`: on drop, everything in it is
/// killed (cgroup.kill) and the whole tree removed, also after a failed assertion.
pub struct TestCgroup {
    pub hier: Hierarchy,
    /// Its cgroup path ("/handoff-sys-test.12.0").
    pub cg: String,
    pub path: PathBuf,
}

impl TestCgroup {
    #[track_caller]
    pub fn new() -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        assert_root();
        let hier = cgroup::detect().expect("cgroup v2");
        let name = format!(
            "handoff-sys-test.{}.{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let cg = if hier.own == "/" {
            format!("/{name}")
        } else {
            format!("{}/{name}", hier.own)
        };
        let path = hier.mount.join(cg.trim_start_matches('/'));
        std::fs::create_dir(&path).expect("create test cgroup");
        Self { hier, cg, path }
    }

    /// A cgroup below this one (created), and its path.
    pub fn sub(&self, rel: &str) -> PathBuf {
        let p = self.path.join(rel);
        std::fs::create_dir_all(&p).expect("create cgroup");
        p
    }

    /// The cgroup `dir` and its `cgroup.procs` opened for writing (for
    /// SpawnPlan::with_cgroup).
    pub fn fds(dir: &Path) -> CgFds {
        CgFds {
            dir: std::fs::File::open(dir).expect("open the cgroup"),
            procs: std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))
                .expect("open cgroup.procs"),
        }
    }
}

/// A cgroup's directory and `cgroup.procs`, as SpawnPlan::with_cgroup takes them.
pub struct CgFds {
    pub dir: std::fs::File,
    pub procs: std::fs::File,
}

impl CgFds {
    pub fn join(&self) -> Join<'_> {
        use std::os::fd::AsFd;
        (self.dir.as_fd(), self.procs.as_fd())
    }
}

/// (directory, cgroup.procs) of a cgroup to start a child in.
pub type Join<'a> = (std::os::fd::BorrowedFd<'a>, std::os::fd::BorrowedFd<'a>);

pub fn populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

fn remove_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        let end = Instant::now() + WAIT;
        while populated(&self.path) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        remove_tree(&self.path);
    }
}

/// Wait for our child `pid`; its raw status.
pub fn wait_child(pid: u32) -> i32 {
    let mut st = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid as i32, &mut st, 0) };
    st
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    handoff_sys::procfs::is_running(pid)
}

/// SIGKILLs `pid` on drop if it is still running: for a process a failed test could leave
/// behind (a grandchild that escaped its cgroup).
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if alive(self.0) {
            // SAFETY: plain kill of a process this test started (not yet reaped by anyone
            // but init, which the check above saw alive).
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}
