//! Readiness without `READY=1`: parsers for what /proc says about a task waiting to accept,
//! and the accept-queue watch. Pure functions of text and bytes; handoff-sys reads the files
//! and knows the syscall numbers.
//!
//! A task *waits to accept* on a listener when it is blocked in `accept`/`accept4` on an fd
//! that links to the listener's inode, or in `poll`/`ppoll`/`select`/`pselect6` with that fd
//! in its read set, or in `epoll_wait`/`epoll_pwait`/`epoll_pwait2` on an epoll fd whose
//! `/proc/PID/fdinfo` lists the listener's inode with `EPOLLIN`. An epoll entry with
//! `EPOLLET` cannot be trusted: Go's and tokio's runtimes register the listener
//! edge-triggered when it is created and always park a thread in `epoll_pwait`, whether or
//! not the program serves yet (see README, "Servers that cannot send READY=1").

/// `EPOLLIN` in an fdinfo `events:` mask.
pub const EPOLLIN: u32 = 0x1;
/// `EPOLLET` (bit 31): the entry is edge-triggered.
pub const EPOLLET: u32 = 1 << 31;

/// One line of `/proc/PID/task/TID/syscall`: the syscall a blocked task is in and its first
/// six arguments. `None` for a running task (`running`) or one not in a syscall (`-1 ...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Syscall {
    pub nr: i64,
    pub args: [u64; 6],
}

/// Parse `/proc/PID/task/TID/syscall` ("NR ARG0 .. ARG5 SP PC", arguments in hex).
pub fn parse_syscall(line: &str) -> Option<Syscall> {
    let mut it = line.split_ascii_whitespace();
    let nr: i64 = it.next()?.parse().ok()?;
    if nr < 0 {
        return None;
    }
    let mut args = [0u64; 6];
    for a in &mut args {
        let s = it.next()?;
        *a = u64::from_str_radix(s.strip_prefix("0x").unwrap_or(s), 16).ok()?;
    }
    Some(Syscall { nr, args })
}

/// One `tfd:` line of an epoll fd's `/proc/PID/fdinfo/FD`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpollEntry {
    /// The fd number when it was added (may be stale: match on `ino`).
    pub tfd: i32,
    pub events: u32,
    /// The inode of the watched file.
    pub ino: u64,
}

impl EpollEntry {
    pub fn readable(&self) -> bool {
        self.events & EPOLLIN != 0
    }

    pub fn edge_triggered(&self) -> bool {
        self.events & EPOLLET != 0
    }
}

/// The `tfd:` entries of an epoll fd's fdinfo:
/// `tfd:        5 events:       19 data:                5  pos:0 ino:1a2b sdev:8`
/// (`events` and `ino` in hex).
pub fn parse_epoll_fdinfo(text: &str) -> Vec<EpollEntry> {
    text.lines()
        .filter_map(|l| {
            let rest = l.trim_start().strip_prefix("tfd:")?;
            let mut events = None;
            let mut ino = None;
            let mut toks = rest.split_ascii_whitespace();
            let tfd: i32 = toks.next()?.parse().ok()?;
            while let Some(t) = toks.next() {
                let (key, inline) = match t.split_once(':') {
                    Some((k, v)) if !v.is_empty() => (k, Some(v)),
                    Some((k, _)) => (k, None),
                    None => continue,
                };
                let value = match inline {
                    Some(v) => Some(v),
                    None => toks.next(),
                };
                match key {
                    "events" => events = value.and_then(|v| u32::from_str_radix(v, 16).ok()),
                    "ino" => ino = value.and_then(|v| u64::from_str_radix(v, 16).ok()),
                    _ => {}
                }
            }
            Some(EpollEntry {
                tfd,
                events: events?,
                ino: ino?,
            })
        })
        .collect()
}

/// The inode of a `/proc/PID/fd/N` link target `socket:[12345]`.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Whether a `struct pollfd` array (8 bytes each: `int fd; short events; short revents`, in
/// native byte order) waits for `pollin` on `fd`.
pub fn pollfds_contain(bytes: &[u8], fd: i32, pollin: i16) -> bool {
    bytes.chunks_exact(8).any(|p| {
        let pfd = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
        let events = i16::from_ne_bytes([p[4], p[5]]);
        pfd == fd && events & pollin != 0
    })
}

/// Whether bit `fd` is set in the `fd_set` word that holds it (`word` is the native-endian
/// `unsigned long` at index `fd / bits_per_word`).
pub fn fd_set_word_has(word: &[u8], fd: i32) -> bool {
    let bits = word.len() * 8;
    if fd < 0 || bits == 0 {
        return false;
    }
    let bit = fd as usize % bits;
    let mut v = 0u128;
    for (i, b) in word.iter().enumerate() {
        // Native byte order: on little-endian byte i holds bits 8i..8i+7.
        let shift = if cfg!(target_endian = "little") {
            8 * i
        } else {
            8 * (word.len() - 1 - i)
        };
        v |= u128::from(*b) << shift;
    }
    v & (1u128 << bit) != 0
}

/// One socket line of `/proc/net/tcp` or `/proc/net/tcp6`: addresses as printed (hex),
/// ports decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpLine {
    pub local_addr: String,
    pub local_port: u16,
    pub remote_addr: String,
    pub remote_port: u16,
    /// `0A` is LISTEN, `01` ESTABLISHED.
    pub state: u8,
    /// For a listener: its accept queue length.
    pub rx_queue: u32,
    /// 0 for a connection no process has accepted yet.
    pub inode: u64,
}

/// Parse one line of `/proc/net/tcp{,6}` (`None` for the header or anything malformed).
pub fn parse_tcp_line(line: &str) -> Option<TcpLine> {
    let f: Vec<&str> = line.split_ascii_whitespace().collect();
    if f.len() < 10 || !f[0].ends_with(':') {
        return None;
    }
    let addr = |s: &str| -> Option<(String, u16)> {
        let (a, p) = s.split_once(':')?;
        Some((a.to_string(), u16::from_str_radix(p, 16).ok()?))
    };
    let (local_addr, local_port) = addr(f[1])?;
    let (remote_addr, remote_port) = addr(f[2])?;
    let state = u8::from_str_radix(f[3], 16).ok()?;
    let rx_queue = u32::from_str_radix(f[4].split_once(':')?.1, 16).ok()?;
    let inode = f[9].parse().ok()?;
    Some(TcpLine {
        local_addr,
        local_port,
        remote_addr,
        remote_port,
        state,
        rx_queue,
        inode,
    })
}

/// An IP address as `/proc/net/tcp{,6}` prints it: each 32-bit word of the network-order
/// address, read in native byte order and printed as 8 upper-case hex digits.
pub fn proc_net_addr(ip: std::net::IpAddr) -> String {
    let bytes: Vec<u8> = match ip {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    bytes
        .chunks_exact(4)
        .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
        .collect()
}

/// What a scan saw of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerWait {
    /// No task of the generation waits to accept on it.
    None,
    /// A task is blocked in accept, poll, select or level-triggered epoll with it.
    Waiting,
    /// Only an edge-triggered epoll entry waits on it: not to be trusted.
    EdgeTriggered,
    /// A connection handoff made to it was accepted by this generation.
    Proven,
}

/// What a scan saw of a generation, over all its stream listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepting {
    /// Some listener has nobody waiting to accept on it.
    No,
    /// Every listener is waited on (accept, poll, select, level-triggered epoll).
    Yes,
    /// Every listener is waited on, some only through edge-triggered epoll entries.
    EdgeTriggered,
    /// Every listener is waited on or proven, and at least one was proven by a connection
    /// handoff made and this generation accepted.
    Proven,
}

/// Sum up a scan: each stream listener's wait and the fd the child holds it at. Returns the
/// verdict and the first fd some task waits on (for the messages), if any.
pub fn aggregate(per_listener: &[(ListenerWait, Option<u32>)]) -> (Accepting, Option<u32>) {
    let fd = per_listener
        .iter()
        .filter(|(w, _)| *w != ListenerWait::None)
        .find_map(|(_, fd)| *fd);
    let has = |x: ListenerWait| per_listener.iter().any(|(w, _)| *w == x);
    let verdict = if per_listener.is_empty() || has(ListenerWait::None) {
        Accepting::No
    } else if has(ListenerWait::EdgeTriggered) {
        Accepting::EdgeTriggered
    } else if has(ListenerWait::Proven) {
        Accepting::Proven
    } else {
        Accepting::Yes
    };
    (verdict, fd)
}

/// Watches one listener's accept queue: connections that wait while no generation accepts
/// them are *stuck* (the server binds a port of its own, ignores the fds, or hangs). Fed one
/// sample per check (every second): the queue length and whether some task of a live
/// generation waits to accept on the listener. Serialized: `handoff upgrade` carries it (a
/// stuck queue stays stuck, and is not reported again, across the exec).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueWatch {
    last: Option<u32>,
    /// Checks in a row where the queue was not empty, did not shrink, and nobody waited.
    growing: u32,
    stuck: bool,
}

/// A change in a [`QueueWatch`] worth a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueChange {
    /// Connections have waited in the queue for [`QueueWatch::CHECKS`] checks in a row and
    /// nobody accepts them.
    Stuck { queued: u32 },
    /// The queue moves again (or emptied).
    Unstuck { queued: u32 },
}

impl QueueWatch {
    /// Checks in a row that make a queue stuck. Five (one a second): a busy server that is
    /// not waiting to accept at a given instant, with a queue that grew since the previous
    /// sample, was taken for a stuck one 3 times in 50 reloads under load with two checks
    /// (the benchmark); a queue nobody accepts from stays stuck, so waiting longer costs only
    /// the delay of the diagnostic.
    pub const CHECKS: u32 = 5;

    /// Record one sample; returns a change to report.
    pub fn sample(&mut self, queued: u32, someone_waits: bool) -> Option<QueueChange> {
        let not_shrinking = self.last.is_some_and(|l| queued >= l);
        self.last = Some(queued);
        if queued > 0 && !someone_waits && not_shrinking {
            self.growing += 1;
        } else if queued == 0 || someone_waits || !not_shrinking {
            self.growing = 0;
        }
        let stuck = self.growing >= Self::CHECKS;
        match (self.stuck, stuck) {
            (false, true) => {
                self.stuck = true;
                Some(QueueChange::Stuck { queued })
            }
            (true, false) => {
                self.stuck = false;
                Some(QueueChange::Unstuck { queued })
            }
            _ => None,
        }
    }

    /// Whether the queue is stuck now.
    pub fn stuck(&self) -> bool {
        self.stuck
    }

    /// The last length sampled.
    pub fn queued(&self) -> Option<u32> {
        self.last
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn syscall_lines() {
        // A task blocked in accept4(3, ...), as the kernel prints it.
        let s = parse_syscall("288 0x3 0x7ffd6b1c 0x7ffd6b18 0x80800 0x0 0x0 0x7ffd6ad8 0x7f1e")
            .unwrap();
        assert_eq!(s.nr, 288);
        assert_eq!(s.args, [3, 0x7ffd6b1c, 0x7ffd6b18, 0x80800, 0, 0]);
        assert_eq!(parse_syscall("running"), None);
        assert_eq!(parse_syscall("-1 0x7ffd6ad8 0x7f1e"), None);
        assert_eq!(parse_syscall("7 0x1 0x2"), None, "cut short");
        assert_eq!(parse_syscall(""), None);
    }

    #[test]
    fn epoll_fdinfo() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\n\
            tfd:        5 events:       19 data:                5  pos:0 ino:1a2b sdev:8\n\
            tfd:        7 events: 8000201d data:     7f0000000007  pos:0 ino:3039 sdev:8\n";
        let e = parse_epoll_fdinfo(text);
        assert_eq!(
            e,
            vec![
                EpollEntry {
                    tfd: 5,
                    events: 0x19,
                    ino: 0x1a2b
                },
                EpollEntry {
                    tfd: 7,
                    events: 0x8000_201d,
                    ino: 0x3039
                },
            ]
        );
        assert!(e[0].readable() && !e[0].edge_triggered());
        assert!(e[1].readable() && e[1].edge_triggered());
        assert_eq!(parse_epoll_fdinfo("pos:\t0\nflags:\t02\n"), vec![]);
        assert_eq!(parse_epoll_fdinfo("tfd: x events: 1 ino: 2\n"), vec![]);
    }

    #[test]
    fn socket_links() {
        assert_eq!(socket_inode("socket:[12345]"), Some(12345));
        assert_eq!(socket_inode("pipe:[12345]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    fn pollfd(fd: i32, events: i16) -> Vec<u8> {
        let mut v = fd.to_ne_bytes().to_vec();
        v.extend(events.to_ne_bytes());
        v.extend(0i16.to_ne_bytes());
        v
    }

    #[test]
    fn pollfd_arrays() {
        let mut arr = pollfd(5, 1);
        arr.extend(pollfd(3, 1));
        assert!(pollfds_contain(&arr, 3, 1));
        assert!(!pollfds_contain(&arr, 4, 1));
        assert!(!pollfds_contain(&pollfd(3, 4), 3, 1), "POLLOUT only");
        assert!(!pollfds_contain(&arr[..12], 3, 1), "partial entry");
    }

    #[test]
    fn fd_set_words() {
        let word = (1u64 << 3 | 1u64 << 63).to_ne_bytes();
        assert!(fd_set_word_has(&word, 3));
        assert!(fd_set_word_has(&word, 67), "fd 67 is bit 3 of word 1");
        assert!(fd_set_word_has(&word, 63));
        assert!(!fd_set_word_has(&word, 4));
        assert!(!fd_set_word_has(&word, -1));
    }

    #[test]
    fn tcp_lines() {
        let l = "   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 20 4 30 10 -1";
        let t = parse_tcp_line(l).unwrap();
        assert_eq!(
            t,
            TcpLine {
                local_addr: "0100007F".into(),
                local_port: 8080,
                remote_addr: "0100007F".into(),
                remote_port: 50000,
                state: 1,
                rx_queue: 0,
                inode: 0,
            }
        );
        let listen = "   0: 00000000:1F90 00000000:0000 0A 00000000:00000003 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0";
        let t = parse_tcp_line(listen).unwrap();
        assert_eq!((t.state, t.rx_queue, t.inode), (0x0A, 3, 4242));
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";
        assert_eq!(parse_tcp_line(header), None);
    }

    #[test]
    fn proc_net_addresses() {
        let lo = proc_net_addr("127.0.0.1".parse().unwrap());
        let six = proc_net_addr("::1".parse().unwrap());
        if cfg!(target_endian = "little") {
            assert_eq!(lo, "0100007F");
            assert_eq!(six, "00000000000000000000000001000000");
        }
        assert_eq!(lo.len(), 8);
        assert_eq!(six.len(), 32);
    }

    #[test]
    fn every_listener_must_be_waited_on() {
        use ListenerWait as W;
        assert_eq!(aggregate(&[]), (Accepting::No, None));
        assert_eq!(
            aggregate(&[(W::None, None), (W::Waiting, Some(4))]),
            (Accepting::No, Some(4))
        );
        assert_eq!(
            aggregate(&[(W::Waiting, Some(3)), (W::Waiting, Some(4))]),
            (Accepting::Yes, Some(3))
        );
        assert_eq!(
            aggregate(&[(W::Waiting, Some(3)), (W::EdgeTriggered, Some(4))]),
            (Accepting::EdgeTriggered, Some(3))
        );
        assert_eq!(
            aggregate(&[(W::Proven, Some(7)), (W::Waiting, Some(4))]),
            (Accepting::Proven, Some(7))
        );
    }

    #[test]
    fn a_queue_nobody_drains_is_stuck_after_five_checks() {
        let mut w = QueueWatch::default();
        assert_eq!(w.sample(0, false), None);
        assert_eq!(w.sample(2, false), None);
        for _ in 2..QueueWatch::CHECKS {
            assert_eq!(w.sample(3, false), None);
        }
        assert_eq!(w.sample(3, false), Some(QueueChange::Stuck { queued: 3 }));
        assert!(w.stuck());
        assert_eq!(w.sample(3, false), None, "reported once");
        // A generation starts accepting: the queue drains.
        assert_eq!(w.sample(0, true), Some(QueueChange::Unstuck { queued: 0 }));
        assert!(!w.stuck());
    }

    #[test]
    fn a_busy_queue_that_someone_drains_is_not_stuck() {
        let mut w = QueueWatch::default();
        for q in [5, 7, 9, 11] {
            assert_eq!(w.sample(q, true), None, "someone waits to accept");
        }
        // Nobody seen waiting (a server busy in its handlers), but the queue shrinks.
        for q in [8, 4, 2, 1] {
            assert_eq!(w.sample(q, false), None);
        }
        assert!(!w.stuck());
    }
}
