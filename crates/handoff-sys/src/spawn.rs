//! Starting a child: socket-activation fds at 3.., its own `LISTEN_PID`, a clean signal state.
//!
//! `LISTEN_PID` must be the child's own pid, which exists only once the child does, and
//! handoff is multi-threaded (tokio), so between the clone and `exec` only async-signal-safe
//! calls on memory prepared beforehand are allowed: no allocation, no locks, no logging, no
//! formatting.
//!
//! # Two ways to start it
//! - **clone3 with `CLONE_VM | CLONE_VFORK`** (x86_64, Linux ≥ 5.3; the default): the child
//!   runs on a stack of its own ([`ChildStack`]) in handoff's memory, the way glibc's
//!   `posix_spawn` does, while the calling thread sleeps until it has exec'd. Nothing is
//!   copied (a `fork` copies every page table of handoff, then the child waits for a CPU:
//!   1–2 ms idle, several under load), and the child starts at once on the caller's CPU. With
//!   a generation cgroup, `CLONE_INTO_CGROUP` (Linux ≥ 5.7) creates the child in it: no
//!   migration, which costs an RCU grace period (5–40 ms measured) when the child writes its
//!   pid to `cgroup.procs`. Because the memory is shared while other threads of handoff run,
//!   the child touches only the plan, its own stack, and syscalls: glibc's `setuid` &co.
//!   would lock and walk handoff's thread list and mark each thread's descriptor (its "setxid
//!   broadcast"), racing with those threads, so credentials are changed with the raw syscalls
//!   in both ways.
//! - **fork** (std's `Command` with a `pre_exec` hook): where clone3 is refused (ENOSYS:
//!   kernels before 5.3, container seccomp profiles that hide it; EPERM), on other
//!   architectures, and with [`SpawnPlan::with_method`]. The child then writes "0" to the
//!   cgroup's `cgroup.procs` itself.
//!
//! [`SpawnPlan::prepare`] builds everything in the parent: the program path, `argv`, and an
//! `envp` with a preallocated `LISTEN_PID=` slot. The child code ([`child_exec`]) then does,
//! in this order (systemd's `safe_fork_full` order):
//! 1. reset every signal disposition to `SIG_DFL`, so that a signal arriving now cannot run a
//!    copy of handoff's handlers and be swallowed; move to a process group of its own; join
//!    the generation's cgroup (fork only; see above); then, with bind adoption
//!    ([`SpawnPlan::with_adopt`]), install the seccomp filter and send its fd to handoff
//!    ([`crate::adopt`]);
//! 2. drop privileges, ask for the generation's stop signal if handoff dies
//!    (`PR_SET_PDEATHSIG`, see [`SpawnPlan::with_death_signal`]), then check the parent did
//!    not already die;
//! 3. `dup2` the listeners to 3.. and mark every other fd above them close-on-exec;
//! 4. write the pid digits into the `LISTEN_PID=` slot;
//! 5. unblock all signals (the parent blocks them around the clone, see [`spawn`]);
//! 6. `execve` it. On failure the errno goes back to the parent (clone: in the plan's shared
//!    status cell; fork: std's CLOEXEC pipe), and `spawn` returns it as an `io::Error`.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use handoff_core::signal::Signal;

/// Room for `LISTEN_PID=` plus the largest pid (pid_max ≤ 2^22, but leave room for u64).
const PID_SLOT: usize = "LISTEN_PID=".len() + 21;

/// Why the command or the user to run it as cannot be used. Found before anything starts.
#[derive(Debug)]
pub enum ResolveError {
    /// Not in `PATH` (a bare name).
    NotFound {
        program: String,
    },
    IsDirectory {
        program: String,
    },
    NotExecutable {
        program: String,
        source: io::Error,
    },
    /// Its `#!` line names an interpreter that is missing: exec would fail with ENOENT.
    MissingInterpreter {
        program: String,
        interpreter: PathBuf,
    },
    /// It cannot be read (a path given with a `/`).
    Unreadable {
        program: String,
        source: io::Error,
    },
    NulByte {
        what: String,
    },
    UnknownUser(String),
    UnknownGroup(String),
    /// The user or group database could not be read.
    Lookup {
        what: String,
        source: nix::Error,
    },
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound { program } => write!(
                f,
                "command not found: {program} (not in PATH; give a path such as ./{program})"
            ),
            Self::IsDirectory { program } => write!(f, "cannot run {program}: it is a directory"),
            Self::NotExecutable { program, source } => {
                write!(f, "cannot run {program}: not executable ({source})")
            }
            Self::MissingInterpreter {
                program,
                interpreter,
            } => write!(
                f,
                "cannot run {program}: its interpreter {} (named on its #! line) is missing or not executable",
                interpreter.display()
            ),
            Self::Unreadable { program, source } => write!(f, "cannot run {program}: {source}"),
            Self::NulByte { what } => write!(f, "{what} contains a NUL byte"),
            Self::UnknownUser(u) => write!(f, "unknown user {u} (not in the user database)"),
            Self::UnknownGroup(g) => write!(f, "unknown group {g} (not in the group database)"),
            Self::Lookup { what, source } => write!(f, "cannot look up {what}: {source}"),
        }
    }
}

impl std::error::Error for ResolveError {}

/// Find `program` the way a shell would (`PATH` unless it contains a `/`), and check that it
/// is an executable file, so that "not found" is a clear error before anything starts.
pub fn resolve_program(program: &OsStr) -> Result<PathBuf, ResolveError> {
    let shown = Path::new(program).display().to_string();
    let check = |p: &Path| -> Result<(), ResolveError> {
        let program = shown.clone();
        let meta = std::fs::metadata(p).map_err(|source| ResolveError::Unreadable {
            program: program.clone(),
            source,
        })?;
        if meta.is_dir() {
            return Err(ResolveError::IsDirectory { program });
        }
        let c = CString::new(p.as_os_str().as_bytes()).map_err(|_| ResolveError::NulByte {
            what: format!("the path {program}"),
        })?;
        // SAFETY: c is a valid NUL-terminated string.
        if unsafe { libc::access(c.as_ptr(), libc::X_OK) } != 0 {
            return Err(ResolveError::NotExecutable {
                program,
                source: io::Error::last_os_error(),
            });
        }
        if let Some(interpreter) = missing_interpreter(p) {
            return Err(ResolveError::MissingInterpreter {
                program,
                interpreter,
            });
        }
        Ok(())
    };
    if program.as_bytes().contains(&b'/') {
        let p = Path::new(program);
        check(p)?;
        let abs = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|source| ResolveError::Unreadable {
                    program: shown.clone(),
                    source,
                })?
                .join(p)
        };
        return Ok(abs);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let cand = dir.join(program);
        if cand.is_file() {
            match check(&cand) {
                Ok(()) => return Ok(cand),
                // The shell would run it and fail the same way: say why now.
                Err(e @ ResolveError::MissingInterpreter { .. }) => return Err(e),
                Err(_) => {}
            }
        }
    }
    Err(ResolveError::NotFound { program: shown })
}

/// The identity a child runs as (`--user`/`--group`), resolved before any fork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// Resolve `--user` (name or uid) and `--group` (name or gid) through the user database.
pub fn resolve_creds(
    user: &str,
    group: Option<&str>,
) -> Result<(Creds, String, PathBuf), ResolveError> {
    use nix::unistd::{Gid, Group, Uid, User};
    let u = match user.parse::<u32>() {
        Ok(n) => User::from_uid(Uid::from_raw(n)),
        Err(_) => User::from_name(user),
    }
    .map_err(|source| ResolveError::Lookup {
        what: format!("user {user}"),
        source,
    })?
    .ok_or_else(|| ResolveError::UnknownUser(user.to_string()))?;
    let gid = match group {
        None => u.gid.as_raw(),
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => Group::from_name(g)
                .map_err(|source| ResolveError::Lookup {
                    what: format!("group {g}"),
                    source,
                })?
                .ok_or_else(|| ResolveError::UnknownGroup(g.to_string()))?
                .gid
                .as_raw(),
        },
    };
    let cname = CString::new(u.name.as_bytes()).map_err(|_| ResolveError::NulByte {
        what: format!("the user name {}", u.name),
    })?;
    let mut groups: Vec<u32> = nix::unistd::getgrouplist(&cname, Gid::from_raw(gid))
        .map(|v| v.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|_| vec![gid]);
    groups.sort_unstable();
    groups.dedup();
    Ok((
        Creds {
            uid: u.uid.as_raw(),
            gid,
            groups,
        },
        u.name,
        u.dir,
    ))
}

/// Everything the post-fork code needs, allocated in the parent.
///
/// The raw pointers point into the `CString` heap buffers owned by the same struct, which
/// do not move when the struct does.
pub struct SpawnPlan {
    program: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _env: Vec<CString>,
    envp: Vec<*const libc::c_char>,
    /// `LISTEN_PID=` followed by NULs; the child writes its digits after the `=`.
    pid_slot: Box<[u8; PID_SLOT]>,
    /// Listener copies, all at fds ≥ 3 + n so that no `dup2` clobbers another source.
    sources: Vec<OwnedFd>,
    source_fds: Vec<RawFd>,
    parent_pid: libc::pid_t,
    creds: Option<Creds>,
    /// `PR_SET_PDEATHSIG`: what the child gets if handoff dies.
    death_signal: libc::c_int,
    /// A cgroup's directory, for `CLONE_INTO_CGROUP`.
    cgroup_dir: Option<OwnedFd>,
    /// The same cgroup's `cgroup.procs`, opened for writing: a forked child writes "0" to it.
    cgroup_procs: Option<OwnedFd>,
    /// Bind adoption: the seccomp filter to install (see [`crate::adopt`]).
    adopt: Option<crate::adopt::ChildSide>,
    method: Method,
    /// Written by a cloned child in handoff's memory: [`NOT_REACHED`] until it is about to
    /// exec, 0 then, its errno if the exec or a step before it failed.
    exec_status: AtomicI32,
    /// Tests only: run in the child just before exec (see [`SpawnPlan::with_child_hook`]).
    hook: Option<unsafe fn()>,
}

/// How [`spawn`] starts the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// clone3 with `CLONE_VM | CLONE_VFORK` on a stack of its own, falling back to `Fork`
    /// where the kernel refuses it. The default.
    Clone,
    /// fork, then exec (std's `Command`).
    Fork,
}

/// [`SpawnPlan::exec_status`] before the child got as far as `execve`.
const NOT_REACHED: i32 = -1;

// SAFETY: the raw pointers only point into buffers owned by the plan itself; nothing is shared.
unsafe impl Send for SpawnPlan {}
// SAFETY: as above; the plan is never mutated through a shared reference except in the child,
// which has its own copy of memory.
unsafe impl Sync for SpawnPlan {}

impl SpawnPlan {
    /// Prepare a spawn of `program argv[1..]` with `env` (already scrubbed, without
    /// `LISTEN_PID`) and `listeners` to be placed at fds 3, 4, ...
    pub fn prepare(
        program: &Path,
        argv: &[OsString],
        env: &[(OsString, OsString)],
        listeners: &[BorrowedFd<'_>],
        creds: Option<Creds>,
    ) -> io::Result<Self> {
        let cstr = |b: &[u8]| {
            CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte"))
        };
        let program = cstr(program.as_os_str().as_bytes())?;
        let argv: Vec<CString> = argv
            .iter()
            .map(|a| cstr(a.as_bytes()))
            .collect::<io::Result<_>>()?;
        let mut argv_ptrs: Vec<_> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());

        let env: Vec<CString> = env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                cstr(&kv)
            })
            .collect::<io::Result<_>>()?;
        let mut pid_slot = Box::new([0u8; PID_SLOT]);
        pid_slot[..11].copy_from_slice(b"LISTEN_PID=");
        let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        if !listeners.is_empty() {
            envp.push(pid_slot.as_ptr().cast());
        }
        envp.push(std::ptr::null());

        let n = listeners.len() as RawFd;
        let mut sources = Vec::with_capacity(listeners.len());
        for l in listeners {
            // SAFETY: plain fcntl on a valid fd; the result is a new fd we own.
            let fd = unsafe { libc::fcntl(l.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3 + n) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: fd was just returned by fcntl and is owned by nobody else.
            sources.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let source_fds = sources.iter().map(|s| s.as_raw_fd()).collect();
        Ok(Self {
            program,
            _argv: argv,
            argv_ptrs,
            _env: env,
            envp,
            pid_slot,
            sources,
            source_fds,
            // SAFETY: getpid never fails.
            parent_pid: unsafe { libc::getpid() },
            creds,
            death_signal: libc::SIGTERM,
            cgroup_dir: None,
            cgroup_procs: None,
            adopt: None,
            method: Method::Clone,
            exec_status: AtomicI32::new(NOT_REACHED),
            hook: None,
        })
    }

    /// Start the child in the cgroup whose directory is `dir` and whose `cgroup.procs` is
    /// `procs` (opened `O_WRONLY`; see [`crate::cgroup::GenCgroup::dir_fd`] and
    /// [`crate::cgroup::GenCgroup::procs_fd`]), so that nothing it ever forks is outside it:
    /// a cloned child is created in it (`CLONE_INTO_CGROUP`); a forked one writes "0" to
    /// `procs` before anything else. If that fails, the child is not started and [`spawn`]
    /// returns the errno.
    pub fn with_cgroup(mut self, dir: BorrowedFd<'_>, procs: BorrowedFd<'_>) -> io::Result<Self> {
        // Copies owned by the plan (close-on-exec: the child does not keep them).
        self.cgroup_dir = Some(dir.try_clone_to_owned()?);
        self.cgroup_procs = Some(procs.try_clone_to_owned()?);
        Ok(self)
    }

    /// Start the child by `method` rather than the default [`Method::Clone`] (to compare
    /// them, or where fork is wanted).
    pub fn with_method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }

    /// Tests only: call `hook` in the child just before `execve`, to check what the child
    /// path allows (the allocation tripwire's negative control).
    ///
    /// # Safety
    /// `hook` runs between clone and exec, in handoff's memory with a cloned child: it must be
    /// async-signal-safe unless the test wants to see what happens when it is not.
    #[doc(hidden)]
    pub unsafe fn with_child_hook(mut self, hook: unsafe fn()) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Install the bind-adoption filter in the child (step 1c of [`child_exec`]). If its
    /// socket cannot be moved above the listeners' fds (out of fds), the child runs without
    /// it, and [`crate::adopt::ParentSide::receive`] says that nothing came.
    pub fn with_adopt(mut self, mut side: crate::adopt::ChildSide) -> Self {
        if side.move_above(3 + self.source_fds.len() as RawFd).is_ok() {
            self.adopt = Some(side);
        }
        self
    }

    /// Leave `LISTEN_PID` out of the child's environment: for a server started through a
    /// wrapper (`npm start`, `sh -c` without `exec`), whose own pid would not match, with a
    /// library that accepts a missing `LISTEN_PID` (as systemfd does for `cargo watch`).
    pub fn without_listen_pid(mut self) -> Self {
        let slot: *const libc::c_char = self.pid_slot.as_ptr().cast();
        self.envp.retain(|&p| p != slot);
        self
    }

    /// The signal the child gets if handoff dies, even by SIGKILL (`PR_SET_PDEATHSIG`);
    /// SIGTERM unless set. A server's generation should get its own stop signal
    /// (`--stop-signal`): one that stops on INT and ignores TERM would otherwise keep serving
    /// unsupervised, holding the port.
    pub fn with_death_signal(mut self, signal: Signal) -> Self {
        self.death_signal = signal.number();
        self
    }

    /// The listener copies can be closed once the child has exec'd.
    fn release_sources(&mut self) {
        self.sources.clear();
    }
}

/// Whether clone3 is refused here (ENOSYS or EPERM once without a cgroup): then every later
/// spawn forks without trying it again.
static CLONE_REFUSED: AtomicBool = AtomicBool::new(false);

/// Start the child described by `plan` in its own process group. Returns its pid once it has
/// exec'd, or the exec error.
pub fn spawn(plan: SpawnPlan) -> io::Result<u32> {
    spawn_how(plan).map(|(pid, _)| pid)
}

/// [`spawn`], also saying which [`Method`] started the child (`Fork` where clone3 was
/// refused).
pub fn spawn_how(mut plan: SpawnPlan) -> io::Result<(u32, Method)> {
    // Block every signal on this thread across the clone: the child must not run a copy of
    // handoff's handlers before it has reset them (a SIGTERM sent to the new pid in that
    // window would otherwise be swallowed). Signals for handoff stay pending until restored.
    // SAFETY: sigset_t is a plain bit array; all-zero is a valid (empty) set.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid sigset pointers.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    let res = match plan.method {
        Method::Clone if !CLONE_REFUSED.load(Ordering::Relaxed) => {
            match clone_spawn(&mut plan) {
                Cloned::Started(pid) => Ok((pid, Method::Clone)),
                Cloned::Failed(e) => Err(e),
                Cloned::Refused(e) => {
                    let errno = e.raw_os_error();
                    let unavailable = matches!(errno, Some(libc::ENOSYS | libc::EPERM));
                    // E2BIG/EINVAL with a cgroup: a kernel without CLONE_INTO_CGROUP (< 5.7).
                    let no_into_cgroup = plan.cgroup_dir.is_some()
                        && matches!(errno, Some(libc::E2BIG | libc::EINVAL));
                    if unavailable && plan.cgroup_dir.is_none() {
                        CLONE_REFUSED.store(true, Ordering::Relaxed);
                    }
                    if unavailable || no_into_cgroup {
                        fork_spawn(&mut plan).map(|pid| (pid, Method::Fork))
                    } else {
                        // The cgroup is gone or refuses the child (ENOENT, EOPNOTSUPP, EBUSY…).
                        Err(e)
                    }
                }
            }
        }
        _ => fork_spawn(&mut plan).map(|pid| (pid, Method::Fork)),
    };
    // SAFETY: restores the mask saved above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
    plan.release_sources();
    res
}

/// Start the child with fork (std's `Command`, which forks when given a `pre_exec` hook).
fn fork_spawn(plan: &mut SpawnPlan) -> io::Result<u32> {
    let program = OsStr::from_bytes(plan.program.as_bytes()).to_owned();
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let ptr = PlanPtr(plan as *mut SpawnPlan);
    // SAFETY: child_exec only makes async-signal-safe calls on memory prepared above, and
    // `plan` outlives `spawn()` (std waits for the exec to succeed or fail before returning).
    unsafe {
        cmd.pre_exec(move || {
            let p = ptr;
            child_exec(&mut *p.0, true)
        });
    }
    let child = cmd.spawn()?;
    // We reap through our own single waitpid(-1) loop; std's Child must not wait. Dropping a
    // std Child neither waits nor kills.
    Ok(child.id())
}

#[derive(Clone, Copy)]
struct PlanPtr(*mut SpawnPlan);
// SAFETY: only dereferenced in the forked child, which is single-threaded.
unsafe impl Send for PlanPtr {}
// SAFETY: as above.
unsafe impl Sync for PlanPtr {}

/// What a clone3 spawn came to.
enum Cloned {
    /// It exec'd.
    Started(u32),
    /// The child failed before or at exec (and was reaped): the errno.
    Failed(io::Error),
    /// clone3 itself failed: nothing was started.
    Refused(io::Error),
}

#[cfg(not(target_arch = "x86_64"))]
fn clone_spawn(_plan: &mut SpawnPlan) -> Cloned {
    // The clone entry is written for x86_64 only; elsewhere handoff forks.
    Cloned::Refused(io::Error::from_raw_os_error(libc::ENOSYS))
}

/// Start the child with clone3(`CLONE_VM | CLONE_VFORK` [| `CLONE_INTO_CGROUP`]) on a stack
/// of its own. Returns when it has exec'd or exited.
#[cfg(target_arch = "x86_64")]
fn clone_spawn(plan: &mut SpawnPlan) -> Cloned {
    // One stack, kept between spawns (they never overlap: the caller sleeps until exec);
    // unmapping it each time would cost a TLB shootdown on every CPU running handoff.
    let mut kept = STACK.lock().unwrap_or_else(|e| e.into_inner());
    let stack = match kept.take().map_or_else(ChildStack::new, Ok) {
        Ok(s) => s,
        Err(e) => return Cloned::Failed(e),
    };
    let mut args = CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_VFORK) as u64,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.base as u64,
        stack_size: stack.len as u64,
        ..CloneArgs::default()
    };
    if let Some(dir) = &plan.cgroup_dir {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = dir.as_raw_fd() as u64;
    }
    plan.exec_status.store(NOT_REACHED, Ordering::Relaxed);
    // SAFETY: args describes a mapped stack that outlives the child's use of it (the parent
    // sleeps until the child has exec'd or exited); child_entry gets the plan, which lives
    // on this thread's stack frame for as long, and only makes async-signal-safe calls.
    let ret = unsafe { clone3_vfork(&args, child_entry, (plan as *mut SpawnPlan).cast()) };
    *kept = Some(stack);
    drop(kept);
    if ret < 0 {
        return Cloned::Refused(io::Error::from_raw_os_error(-ret as i32));
    }
    let pid = ret as libc::pid_t;
    match plan.exec_status.load(Ordering::Acquire) {
        0 => Cloned::Started(pid as u32),
        status => {
            let mut st = 0;
            // SAFETY: our own child, which has exited (CLONE_VFORK returned without an exec).
            unsafe { libc::waitpid(pid, &mut st, 0) };
            Cloned::Failed(if status == NOT_REACHED {
                let how = if libc::WIFSIGNALED(st) {
                    format!("was killed by signal {}", libc::WTERMSIG(st))
                } else {
                    format!("exited with status {}", libc::WEXITSTATUS(st))
                };
                io::Error::other(format!("the child {how} before exec"))
            } else {
                io::Error::from_raw_os_error(status)
            })
        }
    }
}

/// `struct clone_args` (linux/sched.h), up to `cgroup` (CLONE_ARGS_SIZE_VER2). Trailing
/// zero fields are accepted by kernels that know fewer of them.
#[cfg(target_arch = "x86_64")]
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

#[cfg(target_arch = "x86_64")]
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The cloned child's stack, kept between spawns.
#[cfg(target_arch = "x86_64")]
static STACK: std::sync::Mutex<Option<ChildStack>> = std::sync::Mutex::new(None);

/// The cloned child's stack: 128 KiB mapped on demand (`MAP_NORESERVE`), with a guard page
/// below it so that an overflow faults instead of writing into handoff's memory.
#[cfg(target_arch = "x86_64")]
struct ChildStack {
    map: *mut libc::c_void,
    map_len: usize,
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by the value and used by one spawn at a time (under STACK's
// lock); nothing else points into it.
#[cfg(target_arch = "x86_64")]
unsafe impl Send for ChildStack {}

#[cfg(target_arch = "x86_64")]
impl ChildStack {
    const SIZE: usize = 128 * 1024;

    fn new() -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as usize;
        let map_len = Self::SIZE + page;
        // SAFETY: an anonymous private mapping; checked below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Self {
            map,
            map_len,
            // SAFETY: within the mapping.
            base: unsafe { map.cast::<u8>().add(page) },
            len: Self::SIZE,
        };
        // SAFETY: the lowest page of our own mapping.
        if unsafe { libc::mprotect(map, page, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }
}

#[cfg(target_arch = "x86_64")]
impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer used (the child exec'd or exited).
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

/// clone3 with the child running `entry(arg)` on `args.stack`, then exiting with its return
/// value. Returns the raw result in the parent: the pid, or -errno.
///
/// # Safety
/// `args.stack` must be a mapped stack the child may use until it execs or exits, and with
/// `CLONE_VM` `entry` must only make async-signal-safe calls on memory that stays valid.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_vfork(
    args: &CloneArgs,
    entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
) -> isize {
    let ret: isize;
    // SAFETY: the caller's contract. In the parent this is one syscall (clobbering rcx and
    // r11). The child resumes after it with rax = 0 and rsp at the top of its own stack
    // (16-byte aligned: page-aligned mapping), clears the frame pointer, calls entry with
    // arg and exits (SYS_exit: this child is a process of its own, not a thread); it never
    // returns into Rust code, so what it clobbers there does not matter.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r13",
            "call r12",
            "mov edi, eax",
            "mov eax, {exit}",
            "syscall",
            "ud2",
            "2:",
            exit = const libc::SYS_exit,
            inlateout("rax") libc::SYS_clone3 as isize => ret,
            in("rdi") args as *const CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") entry,
            in("r13") arg,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// The cloned child's entry: [`child_exec`], and its errno in the plan if that returns.
#[cfg(target_arch = "x86_64")]
extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: arg is the plan, alive and unused by the parent, which sleeps in clone3 until
    // this child execs or exits (CLONE_VFORK).
    let plan = unsafe { &mut *arg.cast::<SpawnPlan>() };
    // SAFETY: this is a freshly cloned child; child_exec only returns on failure.
    let err = unsafe { child_exec(plan, false) }.err();
    let errno = err.and_then(|e| e.raw_os_error()).unwrap_or(libc::EIO);
    plan.exec_status.store(errno.max(1), Ordering::Release);
    127
}

/// The code between clone (or fork) and exec. Async-signal-safe calls only; see the module
/// doc. `forked`: a fork's copy of handoff rather than a `CLONE_VM` child sharing its memory.
///
/// # Safety
/// Must only run in a freshly cloned or forked child.
unsafe fn child_exec(plan: &mut SpawnPlan, forked: bool) -> io::Result<()> {
    // SAFETY: raw syscalls on memory owned by `plan`, in a single-threaded child.
    unsafe {
        // 1. Default dispositions for every signal (handoff's handlers must never run here,
        //    and the child starts clean, as under systemd).
        //    The raw syscall, because glibc's sigaction() refuses its two reserved real-time
        //    signals (32, 33), which a parent may have left ignored. An all-zero kernel
        //    `struct sigaction` is SIG_DFL with no flags and an empty mask.
        let dfl = [0u64; 4];
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    dfl.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                );
            }
        }

        // 1a. A process group of its own, so that a forking server can be stopped as a whole
        //     (killpg). The parent sleeps until exec, so nobody signals the group before.
        if libc::setpgid(0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }

        // 1b. Join the generation's cgroup (a cloned child was created in it), first: still
        //     privileged (the kernel checks the write against the cgroup's owner), before the
        //     listener fds are moved (this fd may be one of the targets 3..), and before
        //     anything could fork.
        if let (true, Some(fd)) = (forked, &plan.cgroup_procs) {
            let zero = b"0";
            let n = libc::write(fd.as_raw_fd(), zero.as_ptr().cast(), zero.len());
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if n != zero.len() as isize {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
        }

        // 1c. Bind adoption: the seccomp filter, once in the cgroup and before the privilege
        //     drop (a root handoff's CAP_SYS_ADMIN then spares the child NO_NEW_PRIVS); its
        //     notification fd goes to handoff. Async-signal-safe, allocation-free (adopt.rs).
        if let Some(a) = &plan.adopt {
            a.install();
        }

        // 2a. Drop privileges: supplementary groups, then gid, then uid (the reverse order
        //     would leave no permission to change the groups). A child that would still be
        //     root after a requested drop is never started. Raw syscalls: glibc's wrappers
        //     would lock and mark the thread descriptors of handoff, whose memory a cloned
        //     child shares (see the module doc).
        if let Some(c) = &plan.creds {
            let (uid, gid) = (c.uid as libc::c_long, c.gid as libc::c_long);
            if libc::syscall(libc::SYS_setgroups, c.groups.len(), c.groups.as_ptr()) != 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if c.uid != 0 && (libc::getuid() == 0 || libc::geteuid() == 0) {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
        }

        // 2. If handoff dies (even SIGKILL), the child is told to stop (by its own stop
        //    signal) rather than serve on unsupervised. The thread that forked is handoff's
        //    main thread, which lives as long as handoff, so the per-thread semantics of
        //    PDEATHSIG are safe here. Set after the uid change, which would clear it.
        libc::prctl(libc::PR_SET_PDEATHSIG, plan.death_signal, 0, 0, 0);
        if libc::getppid() != plan.parent_pid {
            libc::_exit(1);
        }

        // 3. Listeners to 3.. (dup2 clears FD_CLOEXEC on the target; sources are ≥ 3+n so no
        //    target is a source), then everything above them close-on-exec. CLOSE_RANGE_CLOEXEC
        //    rather than closing keeps std's error pipe usable until exec.
        let n = plan.source_fds.len() as libc::c_int;
        for (i, &src) in plan.source_fds.iter().enumerate() {
            if libc::dup2(src, 3 + i as libc::c_int) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let first = (3 + n) as libc::c_uint;
        if libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) != 0
        {
            // Kernels before 5.11: mark them one by one.
            let mut lim: libc::rlimit = std::mem::zeroed();
            let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                lim.rlim_cur.min(1 << 16) as libc::c_int
            } else {
                4096
            };
            for fd in first as libc::c_int..max {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }

        // 4. LISTEN_PID=<our pid>, written with a hand-made itoa into the preallocated slot.
        let mut pid = libc::getpid() as u64;
        let mut digits = [0u8; 20];
        let mut k = digits.len();
        loop {
            k -= 1;
            digits[k] = b'0' + (pid % 10) as u8;
            pid /= 10;
            if pid == 0 {
                break;
            }
        }
        let slot = &mut *plan.pid_slot;
        let nd = digits.len() - k;
        slot[11..11 + nd].copy_from_slice(&digits[k..]);
        slot[11 + nd] = 0;

        // 5. Empty signal mask: the parent blocked everything around fork.
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());

        if let Some(hook) = plan.hook {
            hook();
        }

        // 6. Exec. Only returns on failure. From here on a cloned child's parent reads 0
        //    (it wakes only once the exec succeeded or the child exited).
        plan.exec_status.store(0, Ordering::Relaxed);
        libc::execve(
            plan.program.as_ptr(),
            plan.argv_ptrs.as_ptr(),
            plan.envp.as_ptr(),
        );
        Err(io::Error::last_os_error())
    }
}

/// The interpreter named by `program`'s `#!` line, when it is missing or not executable: then
/// exec fails with ENOENT, which would otherwise read as if `program` itself were missing.
pub fn missing_interpreter(program: &Path) -> Option<PathBuf> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(program).ok()?.read(&mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = line.split(|&b| b == b'\n').next()?;
    let interp = line
        .split(|b| b.is_ascii_whitespace())
        .find(|w| !w.is_empty())?;
    let interp = PathBuf::from(OsStr::from_bytes(interp));
    let c = CString::new(interp.as_os_str().as_bytes()).ok()?;
    // SAFETY: c is a valid NUL-terminated string.
    let ok = unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 && interp.is_file();
    (!ok).then_some(interp)
}
