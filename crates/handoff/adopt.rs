//! Bind adoption in the binary: one [`handoff_sys::adopt::Watch`] per generation, its notices
//! turned into log events and `status` fields. The policy is `handoff_core::adopt`, the
//! mechanism `handoff_sys::adopt`; this only wires them to the driver.
//!
//! Log events: `adopted` (gen, pid, fd, addr, index, nonblock), `adopt_other_address` (a
//! bind of a held port at another address, left to the kernel), `adopt_nonblock_kept`,
//! `adopt_options_lost`, `adopt_listen` (listen() answered without changing the backlog),
//! `adopt_shutdown` (shutdown() of a held socket swallowed), `adopt_error`,
//! `adopt_unavailable` (once per generation where the filter could not be installed).
//!
//! Across `handoff upgrade`: each generation's notification fd is kept twice, once by its
//! watch's thread and once here (a duplicate), so that the state document can name it. Before
//! the exec every watch is stopped and joined ([`Adoption::suspend`]): no notification is left
//! received but unanswered (the kernel would keep that bind blocked for good). A bind made
//! meanwhile waits in the kernel until the new image's watch, started by
//! [`Adoption::import`], receives it. If the exec fails, [`Adoption::unsuspend`] restarts them.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use handoff_core::supervisor::{GenId, Pid};
use handoff_sys::adopt::{self, HeldSet, HeldSocket, NonBlockPolicy, Notice, ParentSide, Watch};
use handoff_sys::listeners::{Kind, Listener};
use handoff_sys::spawn::SpawnPlan;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{info, warn};

/// What was adopted, per generation, for `status`.
type Table = Arc<Mutex<HashMap<GenId, Vec<Value>>>>;

pub struct Adoption {
    held: HeldSet,
    nonblock: NonBlockPolicy,
    watches: HashMap<GenId, Watch>,
    /// Each watched generation's notification fd (a duplicate of the watch's): what an
    /// upgrade hands over, and what a watch is started again from.
    notify: HashMap<GenId, OwnedFd>,
    adopted: Table,
}

/// What crosses `handoff upgrade` (a part of the state document, `adopt`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdoptState {
    /// Generations being answered, each with its seccomp notification fd.
    pub generations: Vec<AdoptGen>,
    /// Each listener's O_NONBLOCK as its first adopter set it (by index).
    pub nonblock: Vec<Option<bool>>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdoptGen {
    pub gen: GenId,
    pub fd: i32,
    /// What it adopted so far (as `status` shows it).
    pub adopted: Vec<Value>,
}

impl Adoption {
    /// Adoption for children of a handoff holding `listeners`, or `None` when no listener is
    /// TCP (nothing to adopt: no filter, and no NO_NEW_PRIVS, is imposed on the child).
    pub fn new(listeners: &[Listener]) -> Option<Self> {
        listeners.iter().any(|l| l.kind == Kind::Tcp).then(|| Self {
            held: HeldSet::default(),
            nonblock: NonBlockPolicy::default(),
            watches: HashMap::new(),
            notify: HashMap::new(),
            adopted: Table::default(),
        })
    }

    /// What an upgrade carries (see the module documentation); the fds stay open here.
    pub fn export(&self) -> AdoptState {
        let table = self.adopted.lock().unwrap_or_else(|e| e.into_inner());
        let mut generations: Vec<AdoptGen> = self
            .notify
            .iter()
            .map(|(&gen, fd)| AdoptGen {
                gen,
                fd: fd.as_raw_fd(),
                adopted: table.get(&gen).cloned().unwrap_or_default(),
            })
            .collect();
        generations.sort_by_key(|g| g.gen);
        AdoptState {
            generations,
            nonblock: self.nonblock.export(),
        }
    }

    /// In the image started by an upgrade: take back each generation's notification fd and
    /// answer it again.
    pub fn import(st: AdoptState, listeners: &[Listener]) -> Result<Self, String> {
        let mut a = Self {
            held: HeldSet::default(),
            nonblock: NonBlockPolicy::import(st.nonblock),
            watches: HashMap::new(),
            notify: HashMap::new(),
            adopted: Table::default(),
        };
        a.listeners_changed(listeners);
        for g in st.generations {
            let what = format!("seccomp notification (generation {})", g.gen);
            let fd = handoff_sys::upgrade::take_fd(g.fd, &what).map_err(|e| e.to_string())?;
            // What the fd is: a number reused by something else is refused.
            let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !link.contains("seccomp") {
                return Err(format!("the {what} fd {} is {link:?}", g.fd));
            }
            a.adopted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(g.gen, g.adopted);
            a.watch(g.gen, None, fd);
        }
        Ok(a)
    }

    /// Before the exec of an upgrade: stop answering (each watch's thread finishes the
    /// notification in hand and is joined). The fds stay open.
    pub fn suspend(&mut self) {
        self.watches.clear();
    }

    /// The exec failed: answer again.
    pub fn unsuspend(&mut self) {
        let gens: Vec<GenId> = self.notify.keys().copied().collect();
        for gen in gens {
            if self.watches.contains_key(&gen) {
                continue;
            }
            match self.notify.get(&gen).map(OwnedFd::try_clone) {
                Some(Ok(fd)) => self.start_watch(gen, None, fd),
                Some(Err(e)) => warn!(event = "adopt_error", gen, error = %e,
                    msg = "cannot answer the generation's binds again",
                    "cannot answer generation {gen}'s binds again: {e}"),
                None => {}
            }
        }
    }

    /// Add the filter to a child's spawn plan; the returned side receives its fd.
    pub fn prepare(&self, gen: GenId, plan: SpawnPlan) -> (SpawnPlan, Option<ParentSide>) {
        match adopt::channel() {
            Ok((parent, child)) => (plan.with_adopt(child), Some(parent)),
            Err(e) => {
                warn!(event = "adopt_error", gen, error = %e, msg = "cannot prepare bind adoption",
                    "cannot prepare bind adoption for generation {gen}: {e}");
                (plan, None)
            }
        }
    }

    /// The child has exec'd: receive its notification fd and start answering it.
    pub fn started(&mut self, gen: GenId, pid: Pid, parent: ParentSide, listeners: &[Listener]) {
        let installed = match parent.receive() {
            Ok(i) => i,
            Err(e) => {
                warn!(event = "adopt_unavailable", gen, pid, error = %e,
                    msg = "generation runs without bind adoption (the filter could not be installed)",
                    "generation {gen} runs without bind adoption (the seccomp filter could not be installed: {e}); LISTEN_FDS work as usual");
                return;
            }
        };
        // Listeners may have been re-created since the last spawn.
        self.listeners_changed(listeners);
        self.adopted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(gen, Vec::new());
        self.watch(gen, Some(pid), installed.notify);
    }

    /// Answer `notify` for `gen`, keeping a duplicate of it for an upgrade.
    fn watch(&mut self, gen: GenId, pid: Option<Pid>, notify: OwnedFd) {
        match notify.try_clone() {
            Ok(keep) => {
                self.notify.insert(gen, keep);
            }
            Err(e) => warn!(event = "adopt_error", gen, error = %e,
                msg = "cannot keep the generation's notification fd: after handoff upgrade its binds fail with ENOSYS",
                "cannot keep generation {gen}'s seccomp notification fd: {e}; after a handoff upgrade its bind(), listen() and shutdown() calls will fail with ENOSYS"),
        }
        self.start_watch(gen, pid, notify);
    }

    fn start_watch(&mut self, gen: GenId, pid: Option<Pid>, notify: OwnedFd) {
        let table = self.adopted.clone();
        let tell = move |n: Notice| log(gen, &n, &table);
        match Watch::start(
            format!("adopt-{gen}"),
            notify,
            self.held.clone(),
            self.nonblock.clone(),
            tell,
        ) {
            Ok(w) => {
                self.watches.insert(gen, w);
            }
            Err(e) => warn!(event = "adopt_error", gen, pid, error = %e,
                msg = "cannot answer the generation's binds; they fail with ENOSYS",
                "cannot start answering generation {gen}'s binds: {e}; its bind(), listen() and shutdown() calls will fail with ENOSYS"),
        }
    }

    /// handoff's listeners changed (closed at shutdown, re-created): give out these.
    pub fn listeners_changed(&self, listeners: &[Listener]) {
        self.held.replace(
            listeners
                .iter()
                .enumerate()
                .filter(|(_, l)| l.kind != Kind::Udp)
                .filter_map(|(i, l)| HeldSocket::new(i, l.as_fd(), l.all_interfaces).ok())
                .collect(),
        );
    }

    /// The generation is gone (its leftovers killed): stop answering, close its fd.
    pub fn retire(&mut self, gen: GenId) {
        self.watches.remove(&gen);
        self.notify.remove(&gen);
        self.adopted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&gen);
    }

    /// Add `adopted` to each generation of a rendered status.
    pub fn annotate(&self, status: &mut Value) {
        let table = self.adopted.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(gens) = status["generations"].as_array_mut() {
            for g in gens {
                let list = g["gen"]
                    .as_u64()
                    .and_then(|n| table.get(&n))
                    .cloned()
                    .unwrap_or_default();
                g["adopted"] = Value::Array(list);
            }
        }
    }
}

fn log(gen: GenId, n: &Notice, table: &Table) {
    match n {
        Notice::Adopted {
            pid,
            fd,
            index,
            addr,
            nonblock,
            nonblock_kept,
            lost_options,
        } => {
            info!(event = "adopted", gen, pid, fd, index, addr = %addr, nonblock,
                msg = "a generation bound a held address itself: gave it handoff's listener",
                "generation {gen} (pid {pid}) bound {addr} itself: gave its fd {fd} handoff's listener (fd {} in LISTEN_FDS)", 3 + index);
            table
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(gen)
                .or_default()
                .push(
                    json!({"pid": pid, "fd": fd, "addr": addr.to_string(), "listener": 3 + index}),
                );
            if *nonblock_kept {
                warn!(event = "adopt_nonblock_kept", gen, pid, fd, addr = %addr, nonblock,
                    msg = "O_NONBLOCK of the shared listener kept as the first adopter set it",
                    "generation {gen} made its socket for {addr} {}, but the listener is shared and stays {} (the first adopter's setting)",
                    if *nonblock { "blocking" } else { "non-blocking" },
                    if *nonblock { "non-blocking" } else { "blocking" });
            }
            if !lost_options.is_empty() {
                let options = lost_options.join(",");
                warn!(event = "adopt_options_lost", gen, pid, fd, addr = %addr, options = %options,
                    msg = "options set on the replaced socket before bind() are lost",
                    "generation {gen} set {options} on its own socket for {addr} before bind(); that socket was replaced by handoff's listener, which does not have them");
            }
        }
        Notice::AlreadyAdopted { pid, fd, addr } => {
            info!(event = "adopt_rebind", gen, pid, fd, addr = %addr,
                msg = "bind() again of handoff's listener: answered 0",
                "generation {gen} (pid {pid}) bound its fd {fd}, already handoff's listener, to {addr} again: answered 0");
        }
        Notice::OtherAddress { pid, addr, held } => {
            warn!(event = "adopt_other_address", gen, pid, addr = %addr, held = %held,
                msg = "bind() of a held port at another address: not adopted",
                "generation {gen} (pid {pid}) binds {addr}, but handoff holds this port at {held}: not adopted (only the exact address is; it will likely get EADDRINUSE). Use --listen {} to give it that address",
                listen_form(addr));
        }
        Notice::Listen { pid, fd, backlog } => {
            info!(event = "adopt_listen", gen, pid, fd, backlog,
                msg = "listen() on handoff's listener: answered 0, backlog unchanged",
                "generation {gen} (pid {pid}) called listen(fd {fd}, {backlog}) on handoff's listener: answered 0, the backlog stays handoff's (--backlog)");
        }
        Notice::Shutdown { pid, fd, how } => {
            warn!(event = "adopt_shutdown", gen, pid, fd, how,
                msg = "shutdown() of handoff's listener: answered 0, not done",
                "generation {gen} (pid {pid}) called shutdown() on handoff's listener (fd {fd}): not done (it would stop the listener for every generation), answered 0");
        }
        Notice::Error { pid, what } => {
            warn!(event = "adopt_error", gen, pid, error = %what,
                msg = "bind adoption failed; the call was left to the kernel",
                "generation {gen} (pid {pid}): {what}; left to the kernel");
        }
    }
}

/// How to write `addr` as a `--listen` argument.
fn listen_form(addr: &std::net::SocketAddr) -> String {
    match addr {
        std::net::SocketAddr::V6(a) if a.ip().is_unspecified() => format!(":{}", a.port()),
        a => a.to_string(),
    }
}
