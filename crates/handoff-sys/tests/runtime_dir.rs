//! The notify directory and sockets: owned by handoff's user, modes exact whatever the
//! umask. One test in this binary: it changes the process umask.

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use handoff_sys::notify_socket::{NotifySocket, RuntimeDir};

#[test]
fn runtime_dir_and_notify_socket_modes_do_not_depend_on_the_umask() {
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    for umask in [0o022, 0o077, 0o777] {
        // SAFETY: umask cannot fail; this binary's only test.
        let old = unsafe { libc::umask(umask) };
        for (child_uid, want) in [(None, 0o700), (Some(euid), 0o700), (Some(euid + 1), 0o711)] {
            let dir = RuntimeDir::create_for(child_uid).expect("runtime dir");
            let m = std::fs::symlink_metadata(dir.path()).expect("stat dir");
            assert!(m.is_dir());
            assert_eq!(m.uid(), euid);
            assert_eq!(
                m.mode() & 0o7777,
                want,
                "umask {umask:o}, child uid {child_uid:?}"
            );
            let sock = NotifySocket::bind(&dir, 1).expect("bind");
            let s = std::fs::symlink_metadata(sock.path()).expect("stat socket");
            assert!(s.file_type().is_socket());
            assert_eq!(s.uid(), euid);
            assert_eq!(s.mode() & 0o7777, 0o666, "umask {umask:o}");
        }
        // with_umask put the process umask back.
        // SAFETY: as above.
        assert_eq!(unsafe { libc::umask(old) }, umask);
    }
    assert_eq!(
        RuntimeDir::create().expect("dir").path().parent(),
        RuntimeDir::create_for(None).expect("dir").path().parent()
    );
}
