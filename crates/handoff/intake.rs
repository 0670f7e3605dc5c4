//! Notify intake: every generation's `NOTIFY_SOCKET`, read in bounded batches, each datagram
//! attributed to its sender at the moment it is received, then parsed.
//!
//! Attribution at receive time matters: a sender that uses `BARRIER=1` (systemd-notify,
//! sd_notify_barrier) waits until handoff closes the fd passed in its *next* datagram, so it
//! is guaranteed alive, and attributable, right after its datagram is read. Descendants of the
//! generation's main process are accepted too: many servers notify from a helper process.

use std::collections::HashMap;
use std::task::{Context, Poll};

use handoff_core::notify::{parse_notify, NotifyMessage};
use handoff_core::supervisor::{GenId, Pid};
use handoff_sys::notify_socket::{NotifySocket, Received};
use handoff_sys::procfs;
use tokio::io::unix::AsyncFd;
use tracing::{debug, warn};

use crate::logging::child_text;

/// Most datagrams read from one socket per wake-up: a flood from one child is served a batch
/// at a time, and the event loop's other inputs get their turn in between.
pub const BATCH: usize = 64;

/// One datagram, attributed when it was received.
pub struct Datagram {
    gen: GenId,
    sender: u32,
    /// The sender is the generation's main process or one of its descendants.
    belongs: bool,
    payload: Vec<u8>,
}

struct Entry {
    sock: AsyncFd<NotifySocket>,
    /// The generation's main process, known since it was spawned.
    leader: Pid,
}

#[derive(Default)]
pub struct Intake {
    socks: HashMap<GenId, Entry>,
    /// Datagrams from strangers ignored so far (logged sparsely: a flood must not turn into a
    /// log flood).
    rejected: u64,
}

impl Intake {
    /// Start reading `gen`'s socket; its main process is `leader`.
    pub fn add(&mut self, gen: GenId, sock: NotifySocket, leader: Pid) -> std::io::Result<()> {
        let sock = handoff_sys::notify_socket::register(sock)?;
        self.socks.insert(gen, Entry { sock, leader });
        Ok(())
    }

    /// Close `gen`'s socket (its file is removed with it).
    pub fn remove(&mut self, gen: GenId) {
        self.socks.remove(&gen);
    }

    pub fn clear(&mut self) {
        self.socks.clear();
    }

    /// Every socket, for `handoff upgrade`: generation, fd, path, main process.
    pub fn export(&self) -> Vec<crate::upgrade::NotifyState> {
        let mut v: Vec<_> = self
            .socks
            .iter()
            .map(|(&gen, e)| crate::upgrade::NotifyState {
                gen,
                fd: std::os::fd::AsRawFd::as_raw_fd(e.sock.get_ref()),
                path: e.sock.get_ref().path().to_path_buf(),
                leader: e.leader,
            })
            .collect();
        v.sort_by_key(|n| n.gen);
        v
    }

    /// Wait until some socket is readable; return at most [`BATCH`] datagrams per socket, so
    /// that a flooding child delays neither the other generations' sockets nor the other
    /// inputs of the event loop.
    pub fn poll_batch(&self, cx: &mut Context<'_>) -> Poll<Vec<Datagram>> {
        let mut out = Vec::new();
        let mut more = false;
        for (&gen, e) in &self.socks {
            // Poll until the socket is drained (it then has a waker registered when we return
            // Pending) or its batch is full.
            let mut n = 0;
            while n < BATCH {
                let Poll::Ready(Ok(mut guard)) = e.sock.poll_read_ready(cx) else {
                    break;
                };
                match guard.get_inner().recv() {
                    Ok(Received::Empty) | Err(_) => guard.clear_ready(),
                    Ok(r) => {
                        n += 1;
                        out.extend(attribute(gen, e.leader, r));
                    }
                }
            }
            more |= n == BATCH;
        }
        if more {
            // Data may be left: come back after the other inputs had their turn.
            cx.waker().wake_by_ref();
        }
        if out.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(out)
        }
    }

    /// Read what is queued right now, bounded: before handling a child's exit, its last
    /// datagrams (READY=1, then a crash) must be seen first.
    pub fn drain_now(&self) -> Vec<Datagram> {
        let mut out = Vec::new();
        for (&gen, e) in &self.socks {
            for _ in 0..BATCH * 4 {
                match e.sock.get_ref().recv() {
                    Ok(Received::Empty) | Err(_) => break,
                    Ok(r) => out.extend(attribute(gen, e.leader, r)),
                }
            }
        }
        out
    }

    /// Check and parse a datagram: the message for the state machine, or `None` (logged).
    pub fn accept(&mut self, d: Datagram) -> Option<(GenId, NotifyMessage)> {
        let Datagram {
            gen,
            sender,
            belongs,
            payload,
        } = d;
        if !belongs {
            self.rejected += 1;
            let n = self.rejected;
            if n <= 10 || n.is_power_of_two() {
                warn!(
                    event = "notify_rejected",
                    gen,
                    sender,
                    count = n,
                    msg = "ignored a notify message from a process outside the generation",
                    "ignored notify message from pid {sender}: not part of generation {gen}"
                );
            }
            return None;
        }
        match parse_notify(&payload) {
            Ok(msg) => {
                for i in &msg.ignored {
                    let line = child_text(&i.line);
                    let why = i.why.as_str();
                    debug!(event = "notify_ignored", gen, sender, line = %line, reason = why,
                        msg = "ignored a notify line",
                        "ignored notify line {line:?} from pid {sender} of generation {gen}: {why}");
                }
                Some((gen, msg))
            }
            Err(e) => {
                debug!(event = "notify_invalid", gen, sender, error = %e,
                    msg = "ignored a notify datagram",
                    "ignored notify datagram from pid {sender} of generation {gen}: {e}");
                None
            }
        }
    }
}

fn attribute(gen: GenId, leader: Pid, r: Received) -> Option<Datagram> {
    match r {
        Received::Datagram { pid, payload, .. } => Some(Datagram {
            gen,
            sender: pid,
            belongs: procfs::belongs_to(pid, leader),
            payload,
        }),
        Received::Invalid(why) => {
            debug!(event = "notify_invalid", gen, error = %why, msg = "ignored a notify datagram",
                "ignored notify datagram for generation {gen}: {why}");
            None
        }
        Received::Empty => None,
    }
}
