//! A notify datagram that carries fds (`FDSTORE=1`, `BARRIER=1`, or junk) must never leave
//! them open in handoff, however many it carries. This binary holds this one test only: it
//! counts /proc/self/fd, which another test running in parallel would disturb.

use std::fs::File;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use handoff_sys::notify_socket::{NotifySocket, Received, RuntimeDir};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}

/// Send `FDSTORE=1` with `n` fds (each a fresh open of /dev/null, closed again here).
fn send_with_fds(to: &Path, n: usize) -> nix::Result<usize> {
    let s = UnixDatagram::unbound().expect("socket");
    let files: Vec<File> = (0..n)
        .map(|_| File::open("/dev/null").expect("open /dev/null"))
        .collect();
    let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
    sendmsg(
        s.as_raw_fd(),
        &[IoSlice::new(b"FDSTORE=1")],
        &[ControlMessage::ScmRights(&raw)],
        MsgFlags::empty(),
        Some(&UnixAddr::new(to).expect("addr")),
    )
}

fn recv(sock: &NotifySocket) -> Received {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match sock.recv().expect("recv") {
            Received::Empty => {
                assert!(Instant::now() < end, "no datagram arrived");
                std::thread::yield_now();
            }
            r => return r,
        }
    }
}

#[test]
fn fds_in_notify_datagrams_are_all_closed_up_to_the_kernel_maximum() {
    let dir = RuntimeDir::create().expect("runtime dir");
    let sock = NotifySocket::bind(&dir, 1).expect("bind");
    let before = open_fds();
    // 17: one more than the old receive buffer had room for. 253: SCM_MAX_FD.
    for n in [1, 17, 253, 17, 253] {
        assert_eq!(send_with_fds(sock.path(), n).expect("sendmsg"), 9);
        let r = recv(&sock);
        assert_eq!(
            open_fds(),
            before,
            "receiving a datagram with {n} fds left fds open in the receiver ({r:?})"
        );
        match r {
            Received::Datagram { pid, payload, .. } => {
                assert_eq!(pid, std::process::id());
                assert_eq!(payload, b"FDSTORE=1");
            }
            other => panic!("datagram with {n} fds: {other:?}"),
        }
    }
    // More than SCM_MAX_FD cannot be sent at all: the kernel refuses it (EINVAL).
    assert_eq!(
        send_with_fds(sock.path(), 254),
        Err(nix::errno::Errno::EINVAL)
    );
    assert_eq!(sock.recv().expect("recv"), Received::Empty);
    assert_eq!(open_fds(), before);

    // A spare socket (bound before its child exists) is emptied before use, fds closed too:
    // whatever a stranger queued there is thrown away, and nothing else.
    for n in [3, 0, 253] {
        assert_eq!(send_with_fds(sock.path(), n).expect("sendmsg"), 9);
    }
    // A unix datagram is in the receiver's queue once sendmsg has returned.
    assert_eq!(sock.discard_pending(), 3);
    assert_eq!(sock.recv().expect("recv"), Received::Empty);
    assert_eq!(open_fds(), before);
}
