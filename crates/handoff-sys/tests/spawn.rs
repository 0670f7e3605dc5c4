//! Real fork/exec through `spawn`, with an allocation tripwire: this test binary's global
//! allocator aborts if it is ever called in a process other than the test itself, i.e. in a
//! forked child before exec. Another thread allocates all the time meanwhile, so a child
//! forked while the allocator lock is held would also deadlock or abort here.
//!
//! With a cgroup fd (SpawnPlan::with_cgroup) the child also writes "0" to it before exec:
//! /dev/null stands in for `cgroup.procs` in the test that runs as any user, a real cgroup
//! in the root one. A negative control shows the tripwire does fire on an allocation.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

use handoff_sys::adopt;
use handoff_sys::spawn::{resolve_program, spawn, SpawnPlan};

static PARENT: AtomicI32 = AtomicI32::new(0);

struct Tripwire;

// SAFETY: forwards to the system allocator; only adds a check.
unsafe impl GlobalAlloc for Tripwire {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        check();
        // SAFETY: forwarded.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        check();
        // SAFETY: forwarded.
        unsafe { System.dealloc(p, l) }
    }
}

fn check() {
    let parent = PARENT.load(Ordering::Relaxed);
    // SAFETY: getpid is async-signal-safe and cannot fail.
    if parent != 0 && unsafe { libc::getpid() } != parent {
        // SAFETY: abort is async-signal-safe.
        unsafe { libc::abort() };
    }
}

#[global_allocator]
static ALLOC: Tripwire = Tripwire;

fn wait(pid: u32) -> i32 {
    let mut st = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid as i32, &mut st, 0) };
    st
}

/// Arms the tripwire and allocates on another thread until dropped.
struct Noise {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Noise {
    fn start() -> Self {
        // SAFETY: getpid cannot fail.
        PARENT.store(unsafe { libc::getpid() }, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut v: Vec<Vec<u8>> = Vec::new();
            while !s2.load(Ordering::Relaxed) {
                v.push(vec![0; 64]);
                if v.len() > 1000 {
                    v.clear();
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Noise {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn no_allocation_between_fork_and_exec_and_exec_errors_come_back() {
    let noise = Noise::start();
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let prog = resolve_program("true".as_ref()).expect("true in PATH");
    let env = vec![("LISTEN_FDS".into(), "1".into())];
    // Stands in for a cgroup.procs opened O_WRONLY: the child's write of "0" succeeds.
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("/dev/null");
    for i in 0..200 {
        let mut plan =
            SpawnPlan::prepare(&prog, &["true".into()], &env, &[l.as_fd()], None).expect("plan");
        if i % 2 == 1 {
            plan = plan.with_cgroup(null.as_fd()).expect("cgroup fd");
        }
        // Half of the children with the bind-adoption step too (seccomp filter, SCM_RIGHTS),
        // which must not allocate either.
        let adopt = if i % 4 >= 2 {
            let (parent, child) = adopt::channel().expect("channel");
            plan = plan.with_adopt(child);
            Some(parent)
        } else {
            None
        };
        let pid = spawn(plan).expect("spawn");
        if let Some(parent) = adopt {
            let installed = parent.receive().expect("the child sent its seccomp fd");
            assert!(installed.notify.as_raw_fd() > 2);
        }
        let st = wait(pid);
        assert!(
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            "child status {st:#x}: aborted in the child?"
        );
    }
    // An exec failure is an error in the parent, with the errno.
    let plan = SpawnPlan::prepare(
        "/nonexistent/prog".as_ref(),
        &["x".into()],
        &env,
        &[l.as_fd()],
        None,
    )
    .expect("plan");
    let err = spawn(plan).expect_err("must fail");
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    // So is a failure to join the cgroup (here: an fd not open for writing), before exec.
    let ro = std::fs::File::open("/dev/null").expect("/dev/null");
    let plan = SpawnPlan::prepare(&prog, &["true".into()], &env, &[l.as_fd()], None)
        .expect("plan")
        .with_cgroup(ro.as_fd())
        .expect("cgroup fd");
    let err = spawn(plan).expect_err("must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    drop(noise);
}

#[test]
fn the_tripwire_fires_on_an_allocation_in_the_child() {
    // Negative control: the same allocator check, with a pre-exec hook that allocates.
    let _noise = Noise::start();
    let mut cmd = std::process::Command::new("true");
    // SAFETY: deliberately not async-signal-safe: the allocation must abort the child.
    unsafe {
        cmd.pre_exec(|| {
            let v = std::hint::black_box(vec![1u8; 64]);
            drop(v);
            Ok(())
        });
    }
    let st = cmd.spawn().expect("spawn").wait().expect("wait");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        st.signal(),
        Some(libc::SIGABRT),
        "child {st}: the tripwire did not fire"
    );
}

#[test]
#[ignore = "needs root (creates cgroups)"]
fn no_allocation_between_fork_and_exec_with_a_real_cgroup() {
    let t = common::TestCgroup::new();
    let gens = handoff_sys::cgroup::Generations::setup_in(&t.hier, &t.cg).expect("setup");
    let cg = gens.create(1).expect("create");
    let noise = Noise::start();
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let env = vec![("LISTEN_FDS".into(), "1".into())];
    let prog = resolve_program("true".as_ref()).expect("true in PATH");
    for _ in 0..200 {
        let plan = SpawnPlan::prepare(&prog, &["true".into()], &env, &[l.as_fd()], None)
            .expect("plan")
            .with_cgroup(cg.procs_fd())
            .expect("cgroup fd");
        let pid = spawn(plan).expect("spawn");
        let st = wait(pid);
        assert!(
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            "child status {st:#x}: aborted in the child?"
        );
    }
    // And the child is in the cgroup by the time it runs its program.
    let prog = resolve_program("sleep".as_ref()).expect("sleep in PATH");
    let plan = SpawnPlan::prepare(&prog, &["sleep".into(), "1000".into()], &env, &[], None)
        .expect("plan")
        .with_cgroup(cg.procs_fd())
        .expect("cgroup fd");
    let pid = spawn(plan).expect("spawn");
    drop(noise);
    assert_eq!(cg.pids().expect("pids"), vec![pid]);
    cg.kill().expect("kill");
    let st = wait(pid);
    assert!(libc::WIFSIGNALED(st), "status {st:#x}");
    assert!(cg.wait_empty(common::WAIT).expect("events"));
    cg.remove().expect("remove");
}
