//! Stale notify directories: removed by the next RuntimeDir in the same base unless a
//! running handoff holds their lock. One test in this binary: it sets RUNTIME_DIRECTORY.

use std::os::fd::AsRawFd;

use handoff_sys::notify_socket::RuntimeDir;

#[test]
fn a_locked_directory_is_left_alone_an_unlocked_one_of_a_dead_pid_is_removed() {
    let base = std::env::temp_dir().join(format!("handoff-sys-stale.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir(&base).expect("mkdir base");
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(base.clone());
    // SAFETY: the only test in this binary: no other thread reads the environment.
    unsafe { std::env::set_var("RUNTIME_DIRECTORY", &base) };

    let stale = base.join("handoff.999999999.3");
    std::fs::create_dir(&stale).expect("mkdir");
    std::fs::write(stale.join("notify-1.sock"), "").expect("write");
    // Held as a running handoff holds its own: left alone, whatever its pid says.
    let held = std::fs::File::open(&stale).expect("open");
    // SAFETY: flock on a valid fd.
    let locked = unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(locked, 0);
    let d1 = RuntimeDir::create().expect("runtime dir");
    assert!(d1.stale_removed().is_empty(), "{:?}", d1.stale_removed());
    assert!(stale.join("notify-1.sock").exists());
    // Released (the handoff holding it died): removed by the next start.
    drop(held);
    let d2 = RuntimeDir::create().expect("runtime dir");
    assert_eq!(d2.stale_removed(), std::slice::from_ref(&stale));
    assert!(!stale.exists());
    assert!(d1.path().exists());
    drop((d1, d2));
    assert_eq!(
        std::fs::read_dir(&base).expect("read base").count(),
        0,
        "left in the base directory"
    );
}
