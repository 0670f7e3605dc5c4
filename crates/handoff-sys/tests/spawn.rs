//! Real clone/exec and fork/exec through `spawn`, with an allocation tripwire: this test
//! binary's global allocator aborts if it is ever called in a process other than the test
//! itself, i.e. in a cloned or forked child before exec. Another thread allocates all the
//! time meanwhile, so a child started while the allocator lock is held would also deadlock or
//! abort here; a `CLONE_VM` child that allocated would corrupt the test's own heap.
//!
//! With a cgroup (SpawnPlan::with_cgroup) a forked child also writes "0" to `cgroup.procs`
//! before exec: /dev/null stands in for it in the test that runs as any user, a real cgroup
//! (`CLONE_INTO_CGROUP` and the write) in the root one. A negative control shows the
//! tripwire does fire on an allocation, on both paths.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

use handoff_sys::adopt;
use handoff_sys::spawn::{resolve_program, spawn, spawn_how, Method, SpawnPlan};

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

/// The method this machine starts children with by default: clone3 where the clone entry is
/// written (x86_64), fork elsewhere.
fn native() -> Method {
    if cfg!(target_arch = "x86_64") {
        Method::Clone
    } else {
        Method::Fork
    }
}

#[test]
fn no_allocation_between_clone_and_exec_and_exec_errors_come_back() {
    let noise = Noise::start();
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let prog = resolve_program("true".as_ref()).expect("true in PATH");
    let env = vec![("LISTEN_FDS".into(), "1".into())];
    // Stands in for a cgroup.procs opened O_WRONLY: a forked child's write of "0" succeeds.
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("/dev/null");
    for method in [Method::Clone, Method::Fork] {
        for i in 0..200 {
            let mut plan = SpawnPlan::prepare(&prog, &["true".into()], &env, &[l.as_fd()], None)
                .expect("plan")
                .with_method(method);
            if method == Method::Fork && i % 2 == 1 {
                plan = plan
                    .with_cgroup(null.as_fd(), null.as_fd())
                    .expect("cgroup fd");
            }
            // Half of the children with the bind-adoption step too (seccomp filter,
            // SCM_RIGHTS), which must not allocate either.
            let adopt = if i % 4 >= 2 {
                let (parent, child) = adopt::channel().expect("channel");
                plan = plan.with_adopt(child);
                Some(parent)
            } else {
                None
            };
            let (pid, how) = spawn_how(plan).expect("spawn");
            let want = if method == Method::Clone {
                native()
            } else {
                method
            };
            assert_eq!(how, want, "started by {how:?}");
            if let Some(parent) = adopt {
                let installed = parent.receive().expect("the child sent its seccomp fd");
                assert!(installed.notify.as_raw_fd() > 2);
            }
            let st = wait(pid);
            assert!(
                libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
                "{method:?} child status {st:#x}: aborted in the child?"
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
        .expect("plan")
        .with_method(method);
        let err = spawn(plan).expect_err("must fail");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{method:?}");
        // So is a cgroup that cannot be joined (here: not a cgroup, and not open for
        // writing): clone3 refuses it, a forked child's write fails, before exec.
        let ro = std::fs::File::open("/dev/null").expect("/dev/null");
        let plan = SpawnPlan::prepare(&prog, &["true".into()], &env, &[l.as_fd()], None)
            .expect("plan")
            .with_method(method)
            .with_cgroup(ro.as_fd(), ro.as_fd())
            .expect("cgroup fd");
        let err = spawn(plan).expect_err("must fail");
        assert_eq!(err.raw_os_error(), Some(libc::EBADF), "{method:?}");
    }
    drop(noise);
}

/// Allocates: what the child must never do.
fn allocate() {
    let v = std::hint::black_box(vec![1u8; 64]);
    drop(v);
}

#[test]
fn the_tripwire_fires_on_an_allocation_in_the_child() {
    // Negative control: the same allocator check, with a hook that allocates in the child
    // just before exec, on each path. The child is killed by SIGABRT before exec, and spawn
    // says so.
    let _noise = Noise::start();
    let prog = resolve_program("true".as_ref()).expect("true in PATH");
    // SAFETY: deliberately not async-signal-safe: the allocation must abort the child.
    let plan = unsafe {
        SpawnPlan::prepare(&prog, &["true".into()], &[], &[], None)
            .expect("plan")
            .with_method(Method::Clone)
            .with_child_hook(allocate)
    };
    let err = spawn(plan).expect_err("the child must not reach exec");
    assert!(
        err.to_string()
            .contains(&format!("signal {}", libc::SIGABRT)),
        "clone: {err}: the tripwire did not fire"
    );
    // The fork path, through std's own pre_exec hook.
    let mut cmd = std::process::Command::new("true");
    // SAFETY: deliberately not async-signal-safe: the allocation must abort the child.
    unsafe {
        cmd.pre_exec(|| {
            allocate();
            Ok(())
        });
    }
    let st = cmd.spawn().expect("spawn").wait().expect("wait");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        st.signal(),
        Some(libc::SIGABRT),
        "fork: child {st}: the tripwire did not fire"
    );
}

#[test]
#[ignore = "needs root (creates cgroups)"]
fn no_allocation_between_clone_and_exec_with_a_real_cgroup() {
    let t = common::TestCgroup::new();
    let gens = handoff_sys::cgroup::Generations::setup_in(&t.hier, &t.cg).expect("setup");
    let cg = gens.create(1).expect("create");
    let noise = Noise::start();
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let env = vec![("LISTEN_FDS".into(), "1".into())];
    let prog = resolve_program("true".as_ref()).expect("true in PATH");
    for i in 0..200 {
        let method = if i % 2 == 0 {
            Method::Clone
        } else {
            Method::Fork
        };
        let plan = SpawnPlan::prepare(&prog, &["true".into()], &env, &[l.as_fd()], None)
            .expect("plan")
            .with_method(method)
            .with_cgroup(cg.dir_fd(), cg.procs_fd())
            .expect("cgroup fd");
        let (pid, how) = spawn_how(plan).expect("spawn");
        assert_eq!(
            how,
            if method == Method::Clone {
                native()
            } else {
                method
            }
        );
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
        .with_cgroup(cg.dir_fd(), cg.procs_fd())
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

/// The uids (real, effective, saved, fs) of every thread of this process.
fn thread_uids() -> Vec<String> {
    let mut uids = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").expect("tasks") {
        let status = std::fs::read_to_string(t.expect("task").path().join("status"));
        if let Ok(status) = status {
            if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
                uids.push(line.to_string());
            }
        }
    }
    uids
}

#[test]
#[ignore = "needs root (drops a child's privileges); CI's root stage runs it with --ignored"]
fn a_cloned_child_drops_its_privileges_and_only_its_own() {
    // A CLONE_VM child shares handoff's memory and runs while handoff's other threads do:
    // its credentials change, theirs must not.
    common::assert_root();
    let noise = Noise::start(); // a second thread, as handoff has
    let before = thread_uids();
    assert!(before.len() >= 2, "{before:?}");
    let prog = resolve_program("sleep".as_ref()).expect("sleep in PATH");
    let (creds, _, _) = handoff_sys::spawn::resolve_creds("nobody", None).expect("nobody");
    let nobody = creds.uid;
    let plan = SpawnPlan::prepare(
        &prog,
        &["sleep".into(), "1000".into()],
        &[],
        &[],
        Some(creds),
    )
    .expect("plan");
    let (pid, how) = spawn_how(plan).expect("spawn");
    assert_eq!(how, native());
    let child = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("child status");
    let after = thread_uids();
    // SAFETY: our own child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait(pid);
    drop(noise);
    assert!(
        child
            .lines()
            .any(|l| l == format!("Uid:\t{nobody}\t{nobody}\t{nobody}\t{nobody}")),
        "the child is not nobody: {child}"
    );
    assert!(
        after.iter().all(|u| u == "Uid:\t0\t0\t0\t0"),
        "a thread of the parent changed its uid: {after:?}"
    );
}
