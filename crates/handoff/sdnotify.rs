//! handoff as a systemd service: READY=1 once the first child is ready, RELOADING=1 with
//! MONOTONIC_USEC around reloads, STOPPING=1 at shutdown, STATUS= with the serving
//! generation, and WATCHDOG=1 pings.
//!
//! Messages are built from the sd-notify crate's `NotifyState`; they are sent through our own
//! socket because that crate connects `NOTIFY_SOCKET` as a plain path and so cannot reach an
//! abstract (`@name`) socket, which some service managers and containers use.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use sd_notify::NotifyState;

use crate::status::ManagerDatagram;

pub struct SdNotify {
    sock: UnixDatagram,
    addr: SocketAddr,
    /// `NOTIFY_SOCKET` as given (a path, or `@name`), for the datagrams that carry fds.
    raw: Vec<u8>,
    /// `FDSTORE=N`: systemd (254 and later) says the service has a file-descriptor store of
    /// N entries.
    pub fd_store: Option<usize>,
    /// Ping interval: half of WATCHDOG_USEC, when the watchdog is meant for us.
    pub watchdog: Option<Duration>,
}

impl SdNotify {
    /// From handoff's own environment (captured before children get a scrubbed copy).
    pub fn from_env() -> Option<Self> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let addr = match bytes.first() {
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]).ok()?,
            Some(b'/') => SocketAddr::from_pathname(&path).ok()?,
            _ => {
                tracing::warn!(
                    "NOTIFY_SOCKET={path:?} is neither a path nor @abstract; not notifying"
                );
                return None;
            }
        };
        let sock = UnixDatagram::unbound().ok()?;
        let _ = sock.set_nonblocking(true);
        let watchdog_for_us = std::env::var("WATCHDOG_PID")
            .map(|p| p.parse::<u32>().ok() == Some(std::process::id()))
            .unwrap_or(true);
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && watchdog_for_us)
            .map(|u| Duration::from_micros(u / 2));
        let fd_store = std::env::var("FDSTORE")
            .ok()
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n > 0);
        Some(Self {
            sock,
            addr,
            raw: bytes.to_vec(),
            fd_store,
            watchdog,
        })
    }

    /// Send one datagram for `d`.
    pub fn send(&self, d: &ManagerDatagram) {
        match d {
            ManagerDatagram::Ready(s) => {
                self.send_states(&[NotifyState::Ready, NotifyState::Status(s)])
            }
            ManagerDatagram::Status(s) => self.send_states(&[NotifyState::Status(s)]),
            // Type=notify-reload needs RELOADING=1 and MONOTONIC_USEC in the same datagram.
            ManagerDatagram::Reloading(s) => match NotifyState::monotonic_usec_now() {
                Ok(now) => self.send_states(&[NotifyState::Reloading, now, NotifyState::Status(s)]),
                Err(_) => self.send_states(&[NotifyState::Reloading, NotifyState::Status(s)]),
            },
            ManagerDatagram::Stopping(s) => {
                self.send_states(&[NotifyState::Stopping, NotifyState::Status(s)])
            }
        }
    }

    /// Put `fd` in the service manager's file-descriptor store under `name`
    /// (`FDSTORE=1`, `FDNAME=`, and `FDPOLL=0`: a listening socket never "hangs up", and
    /// must not be dropped from the store if it reports an error once).
    pub fn store_fd(&self, name: &str, fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
        let msg = format!("FDSTORE=1\nFDNAME={name}\nFDPOLL=0\n");
        handoff_sys::notify_socket::send_with_fds(&self.raw, msg.as_bytes(), &[fd])
    }

    /// Drop what the store holds under `name` (before storing a re-created socket).
    pub fn remove_fd(&self, name: &str) -> std::io::Result<()> {
        let msg = format!("FDSTOREREMOVE=1\nFDNAME={name}\n");
        handoff_sys::notify_socket::send_with_fds(&self.raw, msg.as_bytes(), &[])
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.send_states(&[NotifyState::Watchdog]);
    }

    /// Send one datagram with these assignments (one `sendmsg`, as systemd requires).
    fn send_states(&self, states: &[NotifyState<'_>]) {
        let mut msg = String::new();
        for s in states {
            msg.push_str(&s.to_string());
            msg.push('\n');
        }
        if let Err(e) = self.sock.send_to_addr(msg.as_bytes(), &self.addr) {
            tracing::debug!(event = "sd_notify_error", error = %e, msg = "cannot notify the service manager", "sd_notify failed: {e}");
        }
    }
}
