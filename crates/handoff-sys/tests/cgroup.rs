//! A cgroup per generation, with real processes. Every test needs root (it creates cgroups
//! under the test's own, `handoff-sys-test.PID.N`, removed with everything in it even after
//! a failed assertion).

mod common;

use std::ffi::OsString;

use common::*;
use handoff_core::signal::Signal;
use handoff_sys::cgroup::{GenCgroup, Generations, Layout};
use handoff_sys::spawn::{resolve_program, spawn, Method, SpawnPlan};

/// Start `sh -c SCRIPT ARGS...` in the cgroup `cg`.
fn start_sh(cg: Join<'_>, script: &str, args: &[&str]) -> u32 {
    let sh = resolve_program("sh".as_ref()).expect("sh");
    let mut argv: Vec<OsString> = vec!["sh".into(), "-c".into(), script.into()];
    argv.extend(args.iter().map(OsString::from));
    let env = vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())];
    let plan = SpawnPlan::prepare(&sh, &argv, &env, &[], None)
        .expect("plan")
        .with_cgroup(cg.0, cg.1)
        .expect("cgroup fd");
    spawn(plan).expect("spawn")
}

fn start_sleep(cg: Join<'_>) -> u32 {
    start_sh(cg, "exec sleep 1000", &[])
}

/// Field `n` (0 = state) after the command name in /proc/PID/stat.
fn stat_field(pid: u32, n: usize) -> u32 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = s.rsplit_once(')').expect("stat format").1;
    rest.split_whitespace()
        .nth(n)
        .and_then(|f| f.parse().ok())
        .expect("stat field")
}

fn cgroup_of(pid: u32) -> String {
    let t = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    handoff_sys::cgroup::parse_own(&t).expect("0:: line")
}

/// A generation whose main process calls setsid() in a child that double-forks a
/// grandchild, then `stop` is applied to the generation: the grandchild was in it, and is
/// gone with it.
fn setsid_double_fork_then(stop: impl FnOnce(&GenCgroup)) {
    let t = TestCgroup::new();
    let gens = Generations::setup_in(&t.hier, &t.cg).expect("setup");
    assert_eq!(
        gens.layout(),
        Layout::Own {
            in_supervisor: false
        }
    );
    assert!(gens.cleaned().is_empty());
    let cg = gens.create(1).expect("create gen-1");
    assert_eq!(cg.path(), t.path.join("gen-1"));
    // The grandchild writes its pid here (not in the cgroup directory: no plain files there).
    let name = t.cg.rsplit('/').next().expect("name");
    let file = std::env::temp_dir().join(format!("{name}.grandchild"));
    let _ = std::fs::remove_file(&file);
    let script = r#"setsid sh -c 'sleep 1000 </dev/null >/dev/null 2>&1 & echo $! >"$0.tmp" && mv "$0.tmp" "$0"' "$0"; exec sleep 1000"#;
    let leader = start_sh(
        (cg.dir_fd(), cg.procs_fd()),
        script,
        &[file.to_str().expect("utf-8")],
    );
    wait_until("the grandchild's pid file", WAIT, || file.exists());
    let gc: u32 = std::fs::read_to_string(&file)
        .expect("read pid")
        .trim()
        .parse()
        .expect("pid");
    let _ = std::fs::remove_file(&file);
    let _guard = KillOnDrop(gc);
    // It left the leader's session and process group: killpg would not reach it.
    assert_ne!(stat_field(gc, 3), stat_field(leader, 3), "session of {gc}");
    assert_ne!(stat_field(gc, 2), leader, "process group of {gc}");
    assert_eq!(cgroup_of(gc), cg.cgroup());
    let pids = cg.pids().expect("pids");
    assert!(
        pids.contains(&gc) && pids.contains(&leader),
        "{pids:?} lacks grandchild {gc} or leader {leader}"
    );
    assert!(cg.is_populated().expect("events"));

    stop(&cg);
    assert!(
        cg.wait_empty(WAIT).expect("events"),
        "still populated: {:?}",
        cg.pids()
    );
    assert!(!alive(gc), "grandchild {gc} survived");
    let st = wait_child(leader);
    assert!(libc::WIFSIGNALED(st), "leader status {st:#x}");
    cg.remove().expect("remove");
    assert!(!t.path.join("gen-1").exists());
    drop(gens);
    drop(t);
}

#[test]
#[ignore = "needs root (creates cgroups)"]
fn a_setsid_double_forked_grandchild_is_in_its_generation_and_killed_with_it() {
    setsid_double_fork_then(|cg| cg.kill().expect("kill"));
}

#[test]
#[ignore = "needs root (creates cgroups)"]
fn kill_without_cgroup_kill_reaches_the_grandchild_too() {
    // The fallback for kernels before 5.14: freeze, SIGKILL every pid, thaw.
    setsid_double_fork_then(|cg| cg.kill_by_pids().expect("kill"));
}

#[test]
#[ignore = "needs root (creates cgroups)"]
fn signal_reaches_every_process_of_the_generation() {
    setsid_double_fork_then(|cg| {
        assert_eq!(cg.signal(Signal::TERM).expect("signal"), 2);
    });
}

#[test]
#[ignore = "needs root (creates cgroups)"]
fn a_populated_generation_is_not_removed() {
    let t = TestCgroup::new();
    let gens = Generations::setup_in(&t.hier, &t.cg).expect("setup");
    let cg = gens.create(4).expect("create");
    let pid = start_sleep((cg.dir_fd(), cg.procs_fd()));
    let err = cg.remove().expect_err("must not remove a populated cgroup");
    assert!(err.to_string().contains(&pid.to_string()), "{err}");
    assert!(t.path.join("gen-4").is_dir());
    // A second create of the same generation refuses it too.
    assert!(gens.create(4).is_err());
    cg.kill().expect("kill");
    assert!(cg.wait_empty(WAIT).expect("events"));
    wait_child(pid);
    cg.remove().expect("remove once empty");
}

#[test]
#[ignore = "needs root (creates cgroups)"]
fn stale_generations_of_a_killed_handoff_are_cleaned_at_start() {
    let t = TestCgroup::new();
    // An earlier handoff's generation 7, still serving after that handoff died.
    let gen7 = t.sub("gen-7");
    let old = start_sleep(TestCgroup::fds(&gen7).join());
    assert!(populated(&gen7));

    let gens = Generations::setup_in(&t.hier, &t.cg).expect("setup");
    assert_eq!(
        gens.layout(),
        Layout::Own {
            in_supervisor: false
        }
    );
    let cleaned = gens.cleaned();
    assert_eq!(cleaned.len(), 1, "{cleaned:?}");
    assert_eq!(cleaned[0].cgroup, format!("{}/gen-7", t.cg));
    assert_eq!(cleaned[0].killed, vec![old]);
    assert_eq!(cleaned[0].removed, Ok(()));
    let st = wait_child(old);
    assert!(
        libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGKILL,
        "status {st:#x}"
    );
    assert!(!gen7.exists(), "gen-7 not removed");
}

#[test]
#[ignore = "needs root (creates cgroups)"]
fn a_shared_cgroup_gets_an_instance_cgroup_and_other_handoffs_are_left_alone() {
    let t = TestCgroup::new();
    // Another process in the cgroup: handoff's is not its alone (a shell, a test harness).
    let neighbour = start_sleep(TestCgroup::fds(&t.path).join());
    // A live handoff's generations, in both layouts: never touched.
    let live_own = t.sub("gen-3");
    let live_own_pid = start_sleep(TestCgroup::fds(&live_own).join());
    // A live handoff is in its instance's supervisor leaf; its pid need not be visible (it
    // may run in another pid namespace).
    let live_shared = t.sub("handoff.999999998/gen-1");
    let live_shared_pid = start_sleep(TestCgroup::fds(&live_shared).join());
    let live_sup = t.sub("handoff.999999998/supervisor");
    let live_sup_pid = start_sleep(TestCgroup::fds(&live_sup).join());
    // An instance without that leaf cannot be judged: left alone too.
    let unknown = t.sub("handoff.999999997/gen-1");
    let unknown_pid = start_sleep(TestCgroup::fds(&unknown).join());
    // A dead handoff's: its supervisor leaf is empty. Cleaned.
    let dead = t.sub("handoff.999999999/gen-2");
    let _ = t.sub("handoff.999999999/supervisor");
    let dead_pid = start_sleep(TestCgroup::fds(&dead).join());

    let gens = Generations::setup_in(&t.hier, &t.cg).expect("setup");
    assert_eq!(gens.layout(), Layout::Shared);
    let me = std::process::id();
    assert_eq!(gens.path(), t.path.join(format!("handoff.{me}")));
    let cleaned = gens.cleaned();
    assert_eq!(cleaned.len(), 1, "{cleaned:?}");
    assert_eq!(cleaned[0].cgroup, format!("{}/handoff.999999999", t.cg));
    assert_eq!(cleaned[0].killed, vec![dead_pid]);
    assert_eq!(cleaned[0].removed, Ok(()));
    wait_child(dead_pid);
    assert!(!t.path.join("handoff.999999999").exists());
    for p in [
        neighbour,
        live_own_pid,
        live_shared_pid,
        live_sup_pid,
        unknown_pid,
    ] {
        assert!(alive(p), "{p} was killed");
    }

    let cg = gens.create(1).expect("create");
    assert_eq!(cg.cgroup(), format!("{}/handoff.{me}/gen-1", t.cg));
    let pid = start_sleep((cg.dir_fd(), cg.procs_fd()));
    assert_eq!(cg.pids().expect("pids"), vec![pid]);
    cg.kill().expect("kill");
    assert!(cg.wait_empty(WAIT).expect("events"));
    wait_child(pid);
    cg.remove().expect("remove");
    drop(cg);
    drop(gens);
    assert!(
        !t.path.join(format!("handoff.{me}")).exists(),
        "the instance cgroup is removed with the last generation"
    );
    drop(t);
    for p in [
        neighbour,
        live_own_pid,
        live_shared_pid,
        live_sup_pid,
        unknown_pid,
    ] {
        wait_child(p);
    }
}

#[test]
#[ignore = "needs root (creates cgroups)"]
fn a_child_that_cannot_join_its_cgroup_is_not_started() {
    let t = TestCgroup::new();
    let gens = Generations::setup_in(&t.hier, &t.cg).expect("setup");
    let cg = gens.create(1).expect("create");
    // Removed behind handoff's back: clone3 refuses CLONE_INTO_CGROUP with ENOENT; a forked
    // child's write of "0" fails with ENODEV.
    cg.remove().expect("remove");
    let sh = resolve_program("true".as_ref()).expect("true");
    for (method, errno) in [(Method::Clone, libc::ENOENT), (Method::Fork, libc::ENODEV)] {
        let plan = SpawnPlan::prepare(&sh, &["true".into()], &[], &[], None)
            .expect("plan")
            .with_method(method)
            .with_cgroup(cg.dir_fd(), cg.procs_fd())
            .expect("fd");
        let err = spawn(plan).expect_err("must not start");
        assert_eq!(err.raw_os_error(), Some(errno), "{method:?}: {err}");
    }
}

#[test]
#[ignore = "needs root (creates cgroups)"]
fn setup_in_the_real_own_cgroup_and_nothing_left_after() {
    assert_root();
    let h = handoff_sys::cgroup::detect().expect("cgroup v2");
    // setup_in, not setup: setup moves the calling process (with every thread of this test
    // binary, and what the other tests fork meanwhile) into a supervisor leaf. The handoff
    // binary's own start-up (the integration suite, run as root) covers that path.
    let gens = Generations::setup_in(&h, &h.own).expect("setup");
    assert_eq!(gens.own(), h.own);
    // This test binary shares its cgroup (with cargo, other tests' children): never the
    // layout that would take every gen-* in it for its own.
    if gens.layout() == Layout::Shared {
        let me = std::process::id();
        assert!(gens.path().ends_with(format!("handoff.{me}")));
    }
    let cg = gens.create(1).expect("create");
    let pid = start_sleep((cg.dir_fd(), cg.procs_fd()));
    let _guard = KillOnDrop(pid);
    assert_eq!(cg.pids().expect("pids"), vec![pid]);
    cg.kill().expect("kill");
    assert!(cg.wait_empty(WAIT).expect("events"));
    wait_child(pid);
    let (gen_dir, base) = (cg.path().to_path_buf(), gens.path());
    drop(cg); // empty: removed on drop
    assert!(!gen_dir.exists());
    drop(gens);
    if base != h.mount.join(h.own.trim_start_matches('/')) {
        assert!(!base.exists(), "{} left behind", base.display());
    }
}
