//! A cgroup (v2) per generation: a generation is *all* of its processes, including a worker
//! that called `setsid()` or double-forked, which its process group no longer holds.
//!
//! ```text
//!   <own>                  handoff's cgroup (/proc/self/cgroup, the `0::` line)
//!   ├── supervisor         handoff itself, only if <own> has controllers enabled
//!   ├── gen-1              one per generation; the child is created in it (or joins it before exec)
//!   └── gen-2
//! ```
//!
//! That is the layout when handoff's cgroup is its own (systemd with `Delegate=yes`: nothing
//! else lives in it). When other processes share it (root starting handoff from a shell, a
//! test harness, several handoffs side by side), the generations go one level down, in
//! `<own>/handoff.PID/gen-N`, so that one handoff never mistakes another's generations for
//! stale ones.
//!
//! Rules kept here:
//! - only cgroups under handoff's own cgroup are touched, and only those named `gen-*`,
//!   `supervisor` and `handoff.PID`, created by handoff's uid;
//! - no path is followed: every directory is opened `O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC` from
//!   its parent's fd, every file with `openat(O_NOFOLLOW)`, and directories are created and
//!   removed with `mkdirat`/`unlinkat` on those fds (root must never act on a path someone
//!   else can change);
//! - cgroup v2's "no internal processes" rule: if handoff's cgroup has controllers enabled in
//!   `cgroup.subtree_control`, handoff first moves itself into the leaf `<own>/supervisor`,
//!   as systemd-managed supervisors do;
//! - a child is created in its generation's cgroup (`CLONE_INTO_CGROUP`), or joins it itself
//!   before exec where handoff forks, by writing "0" to the `cgroup.procs` fd opened before
//!   ([`GenCgroup::dir_fd`], [`GenCgroup::procs_fd`],
//!   [`crate::spawn::SpawnPlan::with_cgroup`]), so nothing it forks can escape;
//! - a process is signalled through a pidfd, after checking that the process the pidfd
//!   designates is in the cgroup (a pid read from `cgroup.procs` may have been reused by
//!   the time it is signalled);
//! - nothing here blocks for long: [`GenCgroup::kill`] only sends, [`Generations::setup`]
//!   waits at most [`STALE_WAIT`] for stale generations to die, and `Drop` never waits.

use std::collections::BTreeSet;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use handoff_core::signal::Signal;

/// Where cgroup v2 may be mounted: the unified layout, then the hybrid one.
const MOUNTS: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];

/// `statfs.f_type` of a cgroup2 filesystem (linux/magic.h; its libc type varies by target).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// How long [`Generations::setup`] waits for the processes of stale generations to die.
pub const STALE_WAIT: Duration = Duration::from_secs(2);

/// Deepest cgroup tree walked below a generation (a root child may create sub-cgroups).
const MAX_DEPTH: usize = 16;

/// The cgroup v2 hierarchy and handoff's place in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where cgroup2 is mounted.
    pub mount: PathBuf,
    /// handoff's own cgroup as /proc/self/cgroup names it: "/" or "/a/b".
    pub own: String,
}

/// Find the cgroup v2 hierarchy (checked by filesystem magic, not by name) and handoff's own
/// cgroup in it. The error is one line, for a warning at start.
pub fn detect() -> Result<Hierarchy, String> {
    let mount = MOUNTS.iter().map(Path::new).find(|p| is_cgroup2(p)).ok_or(
        "no cgroup v2 (neither /sys/fs/cgroup nor /sys/fs/cgroup/unified is a cgroup2 mount)",
    )?;
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let own = parse_own(&text).ok_or("no cgroup v2 entry (0::/...) in /proc/self/cgroup")?;
    Ok(Hierarchy {
        mount: mount.to_path_buf(),
        own,
    })
}

fn is_cgroup2(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: an all-zero statfs is a valid out-buffer; c is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC
    }
}

fn fd_is_cgroup2(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: an all-zero statfs is a valid out-buffer; fd is valid.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::fstatfs(fd.as_raw_fd(), &mut st) == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC
    }
}

/// The cgroup v2 path in the text of /proc/PID/cgroup (the `0::` line), if it is a clean
/// absolute path: no empty, `.` or `..` component (a removed cgroup shows " (deleted)").
pub fn parse_own(text: &str) -> Option<String> {
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    components(path)?;
    Some(path.to_string())
}

/// The components of an absolute cgroup path, or None if it is not clean.
fn components(path: &str) -> Option<Vec<&str>> {
    let rest = path.strip_prefix('/')?;
    if rest.is_empty() {
        return Some(vec![]);
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let clean = parts.iter().all(|c| {
        !c.is_empty() && *c != "." && *c != ".." && !c.contains('\0') && !c.ends_with(" (deleted)")
    });
    clean.then_some(parts)
}

/// `child` is `parent` or below it.
fn is_under(child: &str, parent: &str) -> bool {
    child == parent
        || (parent == "/" && child.starts_with('/'))
        || child
            .strip_prefix(parent)
            .is_some_and(|r| r.starts_with('/'))
}

fn join(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

// ---- fd-relative file operations (never following a link) -------------------------------

fn cname(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

fn open_at(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: openat on a valid dirfd and NUL-terminated name; the result is a new fd we own.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_dir(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    open_at(dir, &cname(name)?, libc::O_RDONLY | libc::O_DIRECTORY)
}

fn read_fd(fd: BorrowedFd<'_>) -> io::Result<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn read_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<String> {
    let fd = open_at(dir, name, libc::O_RDONLY)?;
    read_fd(fd.as_fd())
}

fn write_fd(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<()> {
    // SAFETY: data is valid for data.len() bytes.
    let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != data.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
    }
    Ok(())
}

fn write_at(dir: BorrowedFd<'_>, name: &CStr, data: &[u8]) -> io::Result<()> {
    let fd = open_at(dir, name, libc::O_WRONLY)?;
    write_fd(fd.as_fd(), data)
}

fn mkdir_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let c = cname(name)?;
    // SAFETY: valid dirfd and NUL-terminated name. mkdirat never follows a link at `name`.
    if unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o755) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn rmdir_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let c = cname(name)?;
    // SAFETY: valid dirfd and NUL-terminated name. unlinkat never follows a link at `name`.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether handoff's effective uid may write `name` in `dir` (`.` for the directory itself).
fn writable(dir: BorrowedFd<'_>, name: &CStr) -> bool {
    // SAFETY: valid dirfd and NUL-terminated name.
    unsafe {
        libc::faccessat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::W_OK,
            libc::AT_EACCESS | libc::AT_SYMLINK_NOFOLLOW,
        ) == 0
    }
}

fn owner(fd: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: an all-zero stat is a valid out-buffer; fd is valid.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st.st_uid)
    }
}

/// The names of the subdirectories (child cgroups) of `dir`.
fn subdirs(dir: BorrowedFd<'_>) -> io::Result<Vec<String>> {
    // A fresh fd of the same directory: closedir() closes the fd it was given.
    let fd = open_at(dir, c".", libc::O_RDONLY | libc::O_DIRECTORY)?;
    // SAFETY: fdopendir takes ownership of the fd on success (into_raw_fd); on failure we
    // close it ourselves.
    let d = unsafe {
        use std::os::fd::IntoRawFd;
        let raw = fd.into_raw_fd();
        let d = libc::fdopendir(raw);
        if d.is_null() {
            let e = io::Error::last_os_error();
            libc::close(raw);
            return Err(e);
        }
        d
    };
    let mut out = Vec::new();
    loop {
        // SAFETY: d is a valid DIR*; the entry is read before the next readdir call.
        let ent = unsafe { libc::readdir(d) };
        if ent.is_null() {
            break;
        }
        // SAFETY: ent points at a valid dirent with a NUL-terminated d_name.
        let (ty, name) = unsafe { ((*ent).d_type, CStr::from_ptr((*ent).d_name.as_ptr())) };
        if ty != libc::DT_DIR {
            continue;
        }
        if let Ok(n) = name.to_str() {
            if n != "." && n != ".." {
                out.push(n.to_string());
            }
        }
    }
    // SAFETY: d came from fdopendir and is closed once.
    unsafe { libc::closedir(d) };
    out.sort();
    Ok(out)
}

fn parse_pids(text: &str) -> Vec<u32> {
    text.split_ascii_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Pids in the cgroup `dir` and every cgroup below it.
fn tree_pids(dir: BorrowedFd<'_>, depth: usize) -> io::Result<Vec<u32>> {
    let mut pids = parse_pids(&read_at(dir, c"cgroup.procs")?);
    if depth < MAX_DEPTH {
        for sub in subdirs(dir)? {
            if let Ok(fd) = open_dir(dir, &sub) {
                pids.extend(tree_pids(fd.as_fd(), depth + 1).unwrap_or_default());
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

fn populated(dir: BorrowedFd<'_>) -> io::Result<bool> {
    let text = read_at(dir, c"cgroup.events")?;
    Ok(events_populated(&text))
}

fn events_populated(text: &str) -> bool {
    text.lines().any(|l| l.trim() == "populated 1")
}

/// Remove the cgroup `name` in `parent` and every cgroup below it, deepest first.
fn remove_tree(parent: BorrowedFd<'_>, name: &str, depth: usize) -> io::Result<()> {
    if depth < MAX_DEPTH {
        if let Ok(fd) = open_dir(parent, name) {
            for sub in subdirs(fd.as_fd())? {
                remove_tree(fd.as_fd(), &sub, depth + 1)?;
            }
        }
    }
    rmdir_at(parent, name)
}

/// Whether `pid` is in cgroup `cg` or below it, by /proc/PID/cgroup.
fn pid_in(pid: u32, cg: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|t| parse_own(&t))
        .is_some_and(|p| is_under(&p, cg))
}

/// Send `sig` to `pid` if it is (still) in cgroup `cg`: through a pidfd opened *before* the
/// membership check, so that a pid reused in between is never signalled. Ok(false): it is
/// gone or elsewhere.
fn signal_member(pid: u32, sig: libc::c_int, cg: &str) -> io::Result<bool> {
    if pid <= 1 {
        return Ok(false);
    }
    // SAFETY: plain syscall; the result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ESRCH) => Ok(false),
            // Kernels before 5.3: check, then kill (the reuse window is back, but small).
            Some(libc::ENOSYS) => {
                if !pid_in(pid, cg) {
                    return Ok(false);
                }
                // SAFETY: plain syscall.
                let r = unsafe { libc::kill(pid as libc::pid_t, sig) };
                if r == 0 {
                    Ok(true)
                } else {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::ESRCH) {
                        Ok(false)
                    } else {
                        Err(e)
                    }
                }
            }
            _ => Err(e),
        };
    }
    // SAFETY: fd was just returned by pidfd_open and is owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    if !pid_in(pid, cg) {
        return Ok(false);
    }
    // SAFETY: plain syscall on a valid pidfd; no siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    crate::kill::check(r)
}

/// SIGKILL every process in the cgroup tree `dir` (path `cg`): `cgroup.kill` (Linux 5.14),
/// else freeze, SIGKILL every pid until no new one shows up (bounded), thaw. Only sends;
/// the processes are gone once `cgroup.events` says `populated 0`.
fn kill_tree(dir: BorrowedFd<'_>, cg: &str) -> io::Result<()> {
    match write_at(dir, c"cgroup.kill", b"1") {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => kill_tree_by_pids(dir, cg),
        Err(e) => Err(e),
    }
}

fn kill_tree_by_pids(dir: BorrowedFd<'_>, cg: &str) -> io::Result<()> {
    // Frozen (Linux 5.2), nothing can fork while we go through the list; SIGKILL still
    // kills a frozen process. Without a freezer, new pids are caught by the next round.
    let frozen = write_at(dir, c"cgroup.freeze", b"1").is_ok();
    let mut killed = BTreeSet::new();
    let mut res = Ok(());
    for _ in 0..100 {
        let pids = match tree_pids(dir, 0) {
            Ok(p) => p,
            Err(e) => {
                res = Err(e);
                break;
            }
        };
        let new: Vec<u32> = pids.into_iter().filter(|p| !killed.contains(p)).collect();
        if new.is_empty() {
            break;
        }
        for p in new {
            if let Err(e) = signal_member(p, libc::SIGKILL, cg) {
                res = Err(e);
            }
            killed.insert(p);
        }
    }
    if frozen {
        let _ = write_at(dir, c"cgroup.freeze", b"0");
    }
    res
}

/// Wait until the cgroup `dir` has no live process, at most until `deadline`. Waits on
/// `cgroup.events` (the kernel notifies a change as POLLPRI), not by sleeping.
fn wait_unpopulated(dir: BorrowedFd<'_>, deadline: Instant) -> io::Result<bool> {
    let ev = open_at(dir, c"cgroup.events", libc::O_RDONLY)?;
    loop {
        // SAFETY: lseek on a valid fd.
        unsafe { libc::lseek(ev.as_raw_fd(), 0, libc::SEEK_SET) };
        if !events_populated(&read_fd(ev.as_fd())?) {
            return Ok(true);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let mut p = libc::pollfd {
            fd: ev.as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        };
        // Wake at least every 50 ms: a notification between the read and the poll is not
        // lost (kernfs remembers it per open file), but stay robust anyway.
        let ms = left.as_millis().min(50) as libc::c_int;
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, ms.max(1)) };
    }
}

// ---- the generations' parent ------------------------------------------------------------

/// Where handoff creates its generations' cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// handoff's cgroup is its alone (systemd with `Delegate=yes`): `<own>/gen-N`;
    /// `in_supervisor` if handoff moved itself into `<own>/supervisor` first.
    Own { in_supervisor: bool },
    /// Other processes share handoff's cgroup: `<own>/handoff.PID/gen-N`.
    Shared,
}

/// A stale cgroup cleaned at start: an earlier handoff's generation, left unsupervised when
/// that handoff was killed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleaned {
    /// Its cgroup path ("/a/gen-7").
    pub cgroup: String,
    /// The processes that were in it (killed).
    pub killed: Vec<u32>,
    /// Whether it could be removed (else why not).
    pub removed: Result<(), String>,
}

/// The cgroups of handoff's generations (see the module doc). Create with
/// [`Generations::setup`]; each generation's cgroup with [`Generations::create`].
#[derive(Debug)]
pub struct Generations {
    mount: PathBuf,
    own: String,
    /// The cgroup gen-N are created in, and its path.
    base: Arc<OwnedFd>,
    base_cg: String,
    layout: Layout,
    /// Layout::Shared: handoff's cgroup and the name of `handoff.PID` in it (removed on drop).
    instance: Option<(OwnedFd, String)>,
    /// Layout::Shared: handoff moved itself into `handoff.PID/supervisor`.
    moved: bool,
    cleaned: Vec<Cleaned>,
}

/// [`Generations`] as `handoff upgrade` carries it across exec: paths only (every
/// directory is opened again, without following links, by [`Generations::reopen`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationsState {
    mount: PathBuf,
    own: String,
    base_cg: String,
    layout: Layout,
    /// Layout::Shared: the name of `handoff.PID` in `own`.
    instance: Option<String>,
    moved: bool,
}

impl Generations {
    /// What [`Generations::reopen`] needs after an exec.
    pub fn export(&self) -> GenerationsState {
        GenerationsState {
            mount: self.mount.clone(),
            own: self.own.clone(),
            base_cg: self.base_cg.clone(),
            layout: self.layout,
            instance: self.instance.as_ref().map(|(_, n)| n.clone()),
            moved: self.moved,
        }
    }

    /// Open again the cgroups an earlier image of this process set up (same pid, so the
    /// same `handoff.PID`): nothing is created, moved or cleaned. `/proc/self/cgroup` is not
    /// read again: handoff may have moved itself into `supervisor` since.
    pub fn reopen(st: GenerationsState) -> Result<Self, String> {
        let open = |cg: &str| {
            open_cgroup(&st.mount, cg).map_err(|e| format!("cannot open cgroup {cg}: {e}"))
        };
        if !is_under(&st.base_cg, &st.own) {
            return Err(format!("cgroup {} is not under {}", st.base_cg, st.own));
        }
        let base = open(&st.base_cg)?;
        if !fd_is_cgroup2(base.as_fd()) {
            return Err(format!("{} is not on a cgroup2 filesystem", st.base_cg));
        }
        let instance = match st.instance {
            Some(name) => Some((open(&st.own)?, name)),
            None => None,
        };
        Ok(Self {
            mount: st.mount,
            own: st.own,
            base: Arc::new(base),
            base_cg: st.base_cg,
            layout: st.layout,
            instance,
            moved: st.moved,
            cleaned: Vec::new(),
        })
    }

    /// Open the existing cgroup `name` (`gen-N`, as [`GenCgroup::name`] gave it) of a
    /// generation an earlier image of this process created.
    pub fn reopen_gen(&self, name: &str) -> io::Result<GenCgroup> {
        let gen_name = name
            .strip_prefix("gen-")
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if gen_name.is_none() {
            return Err(io::Error::other(format!(
                "{name:?} is not a generation's cgroup"
            )));
        }
        let dir = open_dir(self.base.as_fd(), name)?;
        let procs = open_at(dir.as_fd(), c"cgroup.procs", libc::O_WRONLY)?;
        let path = join(&self.base_cg, name);
        Ok(GenCgroup {
            parent: self.base.clone(),
            dir,
            procs,
            name: name.to_string(),
            fs_path: self.fs_path(&path),
            cgroup: path,
        })
    }

    /// Detect cgroup v2, check handoff may create cgroups in its own, move itself into
    /// `<own>/supervisor` if the "no internal processes" rule requires it, and clean the
    /// stale generations of an earlier handoff (see [`Generations::cleaned`]). Once per
    /// process. The error is one line saying why cgroups cannot be used, for a warning at
    /// start.
    pub fn setup() -> Result<Self, String> {
        let h = detect()?;
        Self::setup_with(&h, &h.own, true)
    }

    /// Like [`Generations::setup`], with `cgroup` (handoff's own or one below it) taken as
    /// handoff's own cgroup. For tests: the same code on a cgroup of the test's, except that
    /// the calling process is never moved (a test binary's threads are other tests).
    pub fn setup_in(h: &Hierarchy, cgroup: &str) -> Result<Self, String> {
        Self::setup_with(h, cgroup, false)
    }

    fn setup_with(h: &Hierarchy, cgroup: &str, move_self: bool) -> Result<Self, String> {
        if !is_under(cgroup, &h.own) || components(cgroup).is_none() {
            return Err(format!(
                "cgroup {cgroup} is not under handoff's own cgroup {}",
                h.own
            ));
        }
        let own = open_cgroup(&h.mount, cgroup)
            .map_err(|e| format!("cannot open cgroup {cgroup}: {e}"))?;
        if !fd_is_cgroup2(own.as_fd()) {
            return Err(format!("{cgroup} is not on a cgroup2 filesystem"));
        }
        if !writable(own.as_fd(), c".") || !writable(own.as_fd(), c"cgroup.procs") {
            return Err(format!(
                "cgroup {cgroup} not writable: run under systemd with Delegate=yes, or as root"
            ));
        }
        let me = std::process::id();
        // Only the cgroup's own processes: its children are generations, or not ours.
        let others = |dir: BorrowedFd<'_>| -> io::Result<bool> {
            let procs = read_at(dir, c"cgroup.procs")?;
            Ok(parse_pids(&procs).iter().any(|&p| p != me))
        };
        // Ours alone: no other process in it, nor in a `supervisor` leaf (where a live
        // handoff of the same layout would be).
        let supervisor = open_dir(own.as_fd(), "supervisor").ok();
        let shared = others(own.as_fd()).map_err(|e| format!("cannot read {cgroup}: {e}"))?
            || supervisor
                .as_ref()
                .is_some_and(|s| others(s.as_fd()).unwrap_or(true));
        let mut cleaned = Vec::new();
        let deadline = Instant::now() + STALE_WAIT;
        // Instance directories of handoffs that are gone, in either layout.
        for name in subdirs(own.as_fd()).map_err(|e| format!("cannot read {cgroup}: {e}"))? {
            let Some(pid) = name
                .strip_prefix("handoff.")
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me || !instance_alive(own.as_fd(), &name) {
                cleaned.extend(clean_stale(own.as_fd(), cgroup, &name, deadline));
            }
        }
        if shared {
            let name = format!("handoff.{me}");
            mkdir_at(own.as_fd(), &name)
                .map_err(|e| format!("cannot create cgroup {}: {e}", join(cgroup, &name)))?;
            let base = open_dir(own.as_fd(), &name)
                .map_err(|e| format!("cannot open cgroup {}: {e}", join(cgroup, &name)))?;
            // handoff itself lives in handoff.PID/supervisor while it runs: that is how
            // another handoff tells a live instance from a stale one, whatever pid
            // namespace either runs in (a pid is not visible across namespaces, a populated
            // cgroup is).
            if move_self {
                move_self_to_supervisor(base.as_fd()).map_err(|e| {
                    format!(
                        "cannot move handoff into {}/supervisor: {e}",
                        join(cgroup, &name)
                    )
                })?;
            }
            return Ok(Self {
                mount: h.mount.clone(),
                own: cgroup.to_string(),
                base: Arc::new(base),
                base_cg: join(cgroup, &name),
                layout: Layout::Shared,
                instance: Some((own, name)),
                moved: move_self,
                cleaned,
            });
        }
        // Ours alone: any gen-* is an earlier handoff's.
        for name in subdirs(own.as_fd()).map_err(|e| format!("cannot read {cgroup}: {e}"))? {
            if name.starts_with("gen-") {
                cleaned.extend(clean_stale(own.as_fd(), cgroup, &name, deadline));
            }
        }
        let controllers = read_at(own.as_fd(), c"cgroup.subtree_control")
            .map_err(|e| format!("cannot read {cgroup}/cgroup.subtree_control: {e}"))?;
        let in_supervisor = move_self && !controllers.trim().is_empty();
        if in_supervisor {
            move_self_to_supervisor(own.as_fd())
                .map_err(|e| format!("cannot move handoff into {cgroup}/supervisor (needed because {cgroup} has controllers enabled for its children): {e}"))?;
        }
        Ok(Self {
            mount: h.mount.clone(),
            own: cgroup.to_string(),
            base: Arc::new(own),
            base_cg: cgroup.to_string(),
            layout: Layout::Own { in_supervisor },
            instance: None,
            moved: false,
            cleaned,
        })
    }

    /// The cgroup of generation `gen`, `<base>/gen-N`, created empty, with its
    /// `cgroup.procs` open for the child to join ([`GenCgroup::procs_fd`]). An empty
    /// leftover of the same name is reused; one with processes is an error.
    pub fn create(&self, gen: u64) -> io::Result<GenCgroup> {
        let name = format!("gen-{gen}");
        let path = join(&self.base_cg, &name);
        match mkdir_at(self.base.as_fd(), &name) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let dir = open_dir(self.base.as_fd(), &name)?;
                if populated(dir.as_fd())? {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("cgroup {path} already exists and has processes"),
                    ));
                }
            }
            Err(e) => return Err(e),
        }
        let dir = open_dir(self.base.as_fd(), &name)?;
        let procs = open_at(dir.as_fd(), c"cgroup.procs", libc::O_WRONLY)?;
        Ok(GenCgroup {
            parent: self.base.clone(),
            dir,
            procs,
            name,
            fs_path: self.fs_path(&path),
            cgroup: path,
        })
    }

    /// What the stale-generation cleanup at start found (log each).
    pub fn cleaned(&self) -> &[Cleaned] {
        &self.cleaned
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// handoff's own cgroup ("/a/b"), as /proc/self/cgroup named it at start.
    pub fn own(&self) -> &str {
        &self.own
    }

    /// The directory the generations' cgroups are created in, e.g.
    /// `/sys/fs/cgroup/system.slice/app.service`.
    pub fn path(&self) -> PathBuf {
        self.fs_path(&self.base_cg)
    }

    fn fs_path(&self, cg: &str) -> PathBuf {
        self.mount.join(cg.trim_start_matches('/'))
    }
}

impl Drop for Generations {
    fn drop(&mut self) {
        // Layout::Shared: remove handoff.PID if its generations are gone (one rmdir, which
        // fails at once if not: never waits).
        if let Some((own, name)) = &self.instance {
            if self.moved {
                // Back into our own cgroup, so that the supervisor leaf can go too.
                let _ = write_at(
                    own.as_fd(),
                    c"cgroup.procs",
                    std::process::id().to_string().as_bytes(),
                );
                let _ = rmdir_at(self.base.as_fd(), "supervisor");
            }
            let _ = rmdir_at(own.as_fd(), name);
        }
    }
}

/// Open the cgroup `cg` below the cgroup2 mount, one component at a time, never following a
/// link.
fn open_cgroup(mount: &Path, cg: &str) -> io::Result<OwnedFd> {
    let m = CString::new(mount.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: NUL-terminated path; the result is a new fd we own.
    let fd = unsafe {
        libc::open(
            m.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by open and is owned by nobody else.
    let mut dir = unsafe { OwnedFd::from_raw_fd(fd) };
    let parts = components(cg)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a clean cgroup path"))?;
    for c in parts {
        dir = open_dir(dir.as_fd(), c)?;
    }
    Ok(dir)
}

/// Whether the handoff instance `name` (`handoff.PID`, in `own`) is alive: a live handoff is
/// in its `supervisor` leaf. One without that leaf (or whose leaf cannot be read) counts as
/// alive: the safe way to be wrong.
fn instance_alive(own: BorrowedFd<'_>, name: &str) -> bool {
    let Ok(inst) = open_dir(own, name) else {
        return true;
    };
    match open_dir(inst.as_fd(), "supervisor") {
        Ok(sup) => populated(sup.as_fd()).unwrap_or(true),
        Err(_) => true,
    }
}

/// Kill what is in the stale cgroup `name` (in `parent`, path `parent_cg`), wait for it to
/// die (until `deadline`), remove it. None if it is not ours to clean (another uid's).
fn clean_stale(
    parent: BorrowedFd<'_>,
    parent_cg: &str,
    name: &str,
    deadline: Instant,
) -> Option<Cleaned> {
    let cg = join(parent_cg, name);
    let dir = open_dir(parent, name).ok()?;
    if owner(dir.as_fd()).ok()? != crate::euid() {
        return None;
    }
    let killed = tree_pids(dir.as_fd(), 0).unwrap_or_default();
    let mut removed = Ok(());
    if !killed.is_empty() {
        if let Err(e) = kill_tree(dir.as_fd(), &cg) {
            removed = Err(format!("cannot kill its processes: {e}"));
        }
        match wait_unpopulated(dir.as_fd(), deadline) {
            Ok(true) => {}
            Ok(false) => removed = Err(format!("its processes did not exit within {STALE_WAIT:?}")),
            Err(e) => removed = Err(format!("cannot read cgroup.events: {e}")),
        }
    }
    if removed.is_ok() {
        removed = remove_tree(parent, name, 0).map_err(|e| e.to_string());
    }
    Some(Cleaned {
        cgroup: cg,
        killed,
        removed,
    })
}

fn move_self_to_supervisor(own: BorrowedFd<'_>) -> io::Result<()> {
    match mkdir_at(own, "supervisor") {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let dir = open_dir(own, "supervisor")?;
    // Writing a pid to cgroup.procs moves the whole process, every thread.
    write_at(
        dir.as_fd(),
        c"cgroup.procs",
        std::process::id().to_string().as_bytes(),
    )
}

// ---- one generation ---------------------------------------------------------------------

/// One generation's cgroup. Dropping it closes its fds and removes the cgroup if it is
/// already empty (one non-blocking `rmdir`); it never kills nor waits.
#[derive(Debug)]
pub struct GenCgroup {
    parent: Arc<OwnedFd>,
    dir: OwnedFd,
    /// `cgroup.procs`, O_WRONLY, for the child to write "0" to before exec.
    procs: OwnedFd,
    name: String,
    cgroup: String,
    fs_path: PathBuf,
}

impl GenCgroup {
    /// The fd a forked child writes "0" to, between fork and exec, to join this cgroup: give
    /// it to [`crate::spawn::SpawnPlan::with_cgroup`] with [`GenCgroup::dir_fd`].
    pub fn procs_fd(&self) -> BorrowedFd<'_> {
        self.procs.as_fd()
    }

    /// Its directory, for `CLONE_INTO_CGROUP` (a cloned child is created in the cgroup).
    pub fn dir_fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// Its directory's name in the generations' cgroup (`gen-3`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its cgroup path, as /proc/PID/cgroup shows it ("/a/gen-3").
    pub fn cgroup(&self) -> &str {
        &self.cgroup
    }

    /// Its directory, e.g. `/sys/fs/cgroup/system.slice/app.service/gen-3`.
    pub fn path(&self) -> &Path {
        &self.fs_path
    }

    /// Every process of the generation (in this cgroup or one a process created below it),
    /// sorted.
    pub fn pids(&self) -> io::Result<Vec<u32>> {
        tree_pids(self.dir.as_fd(), 0)
    }

    /// Whether any live process is left (`cgroup.events`: `populated`). Zombies do not count.
    pub fn is_populated(&self) -> io::Result<bool> {
        populated(self.dir.as_fd())
    }

    /// Send `sig` to every process of the generation; returns how many got it.
    pub fn signal(&self, sig: Signal) -> io::Result<usize> {
        let mut n = 0;
        let mut err = None;
        for pid in self.pids()? {
            match signal_member(pid, sig.number(), &self.cgroup) {
                Ok(true) => n += 1,
                Ok(false) => {}
                Err(e) => err = Some(e),
            }
        }
        match err {
            Some(e) if n == 0 => Err(e),
            _ => Ok(n),
        }
    }

    /// SIGKILL every process of the generation: `cgroup.kill` (Linux 5.14), else each pid
    /// until no new one appears (bounded). Only sends: the generation is gone once
    /// [`GenCgroup::is_populated`] says false (each exit also reaches handoff as SIGCHLD,
    /// since handoff is their subreaper).
    pub fn kill(&self) -> io::Result<()> {
        kill_tree(self.dir.as_fd(), &self.cgroup)
    }

    /// [`GenCgroup::kill`]'s fallback for kernels without `cgroup.kill`, public for tests.
    #[doc(hidden)]
    pub fn kill_by_pids(&self) -> io::Result<()> {
        kill_tree_by_pids(self.dir.as_fd(), &self.cgroup)
    }

    /// Wait until no live process is left, at most `timeout` (blocking: for tests and the
    /// end of a run). True if empty.
    pub fn wait_empty(&self, timeout: Duration) -> io::Result<bool> {
        wait_unpopulated(self.dir.as_fd(), Instant::now() + timeout)
    }

    /// Remove the cgroup (and any a process created below it). Fails, leaving it in place,
    /// if a process is still in it: the error names them.
    pub fn remove(&self) -> io::Result<()> {
        match remove_tree(self.parent.as_fd(), &self.name, 0) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                let pids = self.pids().unwrap_or_default();
                Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!(
                        "cgroup {} still has processes {pids:?}; left in place",
                        self.cgroup
                    ),
                ))
            }
            Err(e) => Err(e),
        }
    }
}

impl Drop for GenCgroup {
    fn drop(&mut self) {
        // One rmdir: fails at once (EBUSY, ENOENT) if it has processes or is already gone.
        let _ = rmdir_at(self.parent.as_fd(), &self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cgroup_from_proc_self_cgroup() {
        let hybrid = "9:name=systemd:/\n4:memory:/x/y\n0::/\n";
        assert_eq!(parse_own(hybrid).as_deref(), Some("/"));
        let unified = "0::/system.slice/app.service\n";
        assert_eq!(
            parse_own(unified).as_deref(),
            Some("/system.slice/app.service")
        );
        assert_eq!(parse_own("4:memory:/x\n"), None, "v1 only");
        assert_eq!(parse_own("0::/a/../b\n"), None);
        assert_eq!(parse_own("0::/a//b\n"), None);
        assert_eq!(parse_own("0::relative\n"), None);
        assert_eq!(parse_own("0::/a/b (deleted)\n"), None);
    }

    #[test]
    fn paths_under_a_cgroup() {
        assert!(is_under("/a/b", "/a"));
        assert!(is_under("/a", "/a"));
        assert!(is_under("/a", "/"));
        assert!(!is_under("/ab", "/a"));
        assert!(!is_under("/", "/a"));
        assert_eq!(join("/", "gen-1"), "/gen-1");
        assert_eq!(join("/a", "gen-1"), "/a/gen-1");
    }

    #[test]
    fn populated_line() {
        assert!(events_populated("populated 1\nfrozen 0\n"));
        assert!(!events_populated("populated 0\nfrozen 0\n"));
    }
}
