//! `handoff upgrade`: the state document that crosses the exec, the check a candidate binary
//! answers (`handoff check-upgrade`), and reading the state back in the new image.
//!
//! The document is JSON in a memfd whose fd number the new image finds in
//! `HANDOFF_STATE_FD`. Its layout is [`State`]; ARCHITECTURE.md ("The upgrade state")
//! describes it. Version rule: `handoff_state` is [`STATE_VERSION`]; it changes with any
//! change of the document (a field added, removed or meaning something else), unknown fields
//! are refused, and a reader takes exactly the versions it lists in [`READS`]. The old image
//! hands the very document to the candidate (`check-upgrade --state-version N`, document on
//! stdin) before it execs anything: a candidate that cannot read it says so and exits 1,
//! and the old image keeps running.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use handoff_core::supervisor::{ExitStatus, GenId, Pid, RequestId, SupervisorState};
use handoff_sys::cgroup::GenerationsState;
use handoff_sys::listeners::ListenerState;
use serde::{Deserialize, Serialize};

/// The version of the document this image writes.
pub const STATE_VERSION: u32 = handoff_core::supervisor::STATE_VERSION;
/// The versions this image reads.
pub const READS: [u32; 1] = [STATE_VERSION];
/// The variable that names the state's fd in the new image.
pub const ENV_FD: &str = "HANDOFF_STATE_FD";
/// Largest document read.
const MAX_STATE: usize = 16 << 20;

/// The state document (see the module documentation).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// The version, [`STATE_VERSION`].
    pub handoff_state: u32,
    /// `handoff --version` of the image that wrote it.
    pub written_by: String,
    /// CLOCK_MONOTONIC (ns) when it was written: the instants in it are relative to this.
    pub exported_at_ns: u64,
    /// The binary exec'd: the new image's default for the next upgrade.
    pub binary: PathBuf,
    /// The server's program, as resolved at the first start (not resolved again).
    pub program: PathBuf,
    /// handoff's start, relative to `exported_at_ns` (ns, negative: before).
    pub started: i64,
    /// Every fd the document names (each once); all others were closed by the exec.
    pub fds: Vec<i32>,
    pub supervisor: SupervisorState,
    pub listeners: Vec<ListenerState>,
    pub runtime_dir: (PathBuf, i32),
    pub notify: Vec<NotifyState>,
    pub control: Vec<i32>,
    /// The control socket file: path and inode.
    pub control_file: Option<(PathBuf, u64)>,
    pub pid_file: Option<PathBuf>,
    /// `--metrics`: its listener's fd and the counters.
    pub metrics: Option<(i32, crate::metrics::Counters)>,
    pub cgroups: Option<CgroupsState>,
    /// Running `--ready-probe` processes.
    pub probes: Vec<(Pid, GenId)>,
    /// Control connections still owed an answer, by request and fd.
    pub requests: Vec<(RequestId, i32)>,
    pub next_request: RequestId,
    /// Bind adoption: each generation's seccomp notification fd (its answering thread is
    /// started again by the new image), and the listeners' O_NONBLOCK as first adopted.
    pub adopt: Option<crate::adopt::AdoptState>,
    /// Each listener's accept-queue watch (stuck or not, and the checks so far).
    pub queues: Vec<handoff_core::accepting::QueueWatch>,
}

/// One generation's notify socket.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyState {
    pub gen: GenId,
    pub fd: i32,
    pub path: PathBuf,
    /// The generation's main process (senders are checked against it).
    pub leader: Pid,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CgroupsState {
    pub generations: GenerationsState,
    /// Each live generation's cgroup (`gen-N`).
    pub live: Vec<(GenId, String)>,
    /// Cgroups of retired generations whose last processes were still dying.
    pub retiring: Vec<String>,
}

/// The version a document says it has, read before anything else in it.
fn version_of(doc: &[u8]) -> Result<u32, String> {
    #[derive(Deserialize)]
    struct Peek {
        handoff_state: u32,
    }
    serde_json::from_slice::<Peek>(doc)
        .map(|p| p.handoff_state)
        .map_err(|e| format!("not a handoff state document: {e}"))
}

/// Parse a document, refusing a version this image does not read.
pub fn parse(doc: &[u8]) -> Result<State, String> {
    let v = version_of(doc)?;
    if !READS.contains(&v) {
        return Err(format!(
            "state version {v} is not one this handoff reads ({READS:?})"
        ));
    }
    let st: State = serde_json::from_slice(doc)
        .map_err(|e| format!("bad state document (version {v}): {e}"))?;
    let mut fds = st.fds.clone();
    fds.sort_unstable();
    fds.dedup();
    if fds.len() != st.fds.len() || fds.iter().any(|&f| f < 3) {
        return Err("bad state document: an fd is named twice, or is 0, 1 or 2".into());
    }
    Ok(st)
}

/// In the new image, before anything else: the state an upgrade passed, if any (the
/// variable is removed, the memfd closed).
pub fn take_state() -> Option<Result<State, String>> {
    let v = std::env::var_os(ENV_FD)?;
    std::env::remove_var(ENV_FD);
    let fd: i32 = match v.to_str().and_then(|s| s.parse().ok()) {
        Some(fd) => fd,
        None => return Some(Err(format!("{ENV_FD}={v:?} is not an fd number"))),
    };
    let fd = match handoff_sys::upgrade::take_fd(fd, "state") {
        Ok(fd) => fd,
        Err(e) => return Some(Err(e.to_string())),
    };
    let doc = handoff_sys::upgrade::read_from_start(fd.as_fd(), MAX_STATE)
        .map_err(|e| format!("cannot read the state: {e}"));
    Some(doc.and_then(|d| parse(&d)))
}

/// `handoff check-upgrade --state-version N` (the document on stdin): what a candidate
/// binary answers before the old image execs it. Prints one JSON line and exits 0 when it
/// can take over; one line on stderr and exit 1 otherwise.
pub fn check(state_version: u32) -> Result<i32, crate::errors::Error> {
    use std::io::Read;
    let refuse = |why: String| Err(crate::errors::Error::Control(why));
    if !READS.contains(&state_version) {
        return refuse(format!(
            "cannot take over: state version {state_version} is not one this handoff ({}) reads ({READS:?})",
            crate::VERSION
        ));
    }
    let mut doc = Vec::new();
    if let Err(e) = std::io::stdin()
        .take(MAX_STATE as u64 + 1)
        .read_to_end(&mut doc)
    {
        return refuse(format!("cannot read the state on stdin: {e}"));
    }
    if let Err(why) = parse(&doc) {
        return refuse(format!("cannot take over: {why}"));
    }
    let line = serde_json::json!({
        "handoff_check_upgrade": 1,
        "version": crate::VERSION,
        "state_versions": READS,
    });
    println!("{line}");
    Ok(0)
}

/// What the old image makes of the candidate's check: its version, or why it cannot take
/// over (one line).
pub fn check_result(
    binary: &std::path::Path,
    status: ExitStatus,
    stdout: &str,
    stderr: &str,
) -> Result<String, String> {
    let b = binary.display();
    let said = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| crate::logging::child_text(l.trim()));
    match status {
        ExitStatus::Exited(0) => {}
        ExitStatus::Exited(code) => {
            return Err(match said {
                Some(s) => format!("{b} refused to take over (exit status {code}): {s}"),
                None => format!("{b} failed its upgrade check (exit status {code}, no message)"),
            })
        }
        ExitStatus::Signaled(sig) => {
            return Err(format!(
                "{b} was killed by {sig} during its upgrade check (does it crash at start?)"
            ))
        }
    }
    let v: serde_json::Value = stdout
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["handoff_check_upgrade"] == 1)
        .ok_or_else(|| format!("{b} did not answer the upgrade check as a handoff does"))?;
    let reads: Vec<u64> = v["state_versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(serde_json::Value::as_u64)
        .collect();
    let version = v["version"].as_str().unwrap_or("?").to_string();
    if !reads.contains(&u64::from(STATE_VERSION)) {
        return Err(format!(
            "{b} (handoff {version}) reads state versions {reads:?}, not {STATE_VERSION}"
        ));
    }
    Ok(version)
}

/// The environment for the new image: this one's, without the socket-activation variables
/// that described this process's start (their fds are long taken), with the state's fd.
pub fn exec_env(state_fd: i32) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    const DROP: [&str; 5] = [
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "LISTEN_PIDFDID",
        ENV_FD,
    ];
    let mut env: Vec<_> = std::env::vars_os()
        .filter(|(k, _)| !DROP.iter().any(|d| k == d))
        .collect();
    env.push((ENV_FD.into(), state_fd.to_string().into()));
    env
}

/// Variables the check must not see (they describe this process's own sockets).
pub const CHECK_DROP_ENV: [&str; 7] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "LISTEN_PIDFDID",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    ENV_FD,
];

/// The fds of a document, to clear close-on-exec on for the exec (and set it again if the
/// exec fails).
pub fn set_cloexec(fds: &[i32], on: bool) -> Result<(), String> {
    for &fd in fds {
        handoff_sys::upgrade::set_cloexec(fd, on).map_err(|e| format!("fd {fd}: {e}"))?;
    }
    Ok(())
}

/// A memfd holding `st` as JSON.
pub fn write(st: &State) -> Result<OwnedFd, String> {
    let doc = serde_json::to_vec(st).map_err(|e| format!("cannot write the state: {e}"))?;
    handoff_sys::upgrade::memfd("handoff-state", &doc)
        .map_err(|e| format!("cannot write the state: {e}"))
}
