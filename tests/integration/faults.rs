//! Fault injection: reload storms, long reload series, hostile notify traffic. Each case
//! asserts what users care about: the old generation kept serving, no request failed that
//! could have succeeded, nothing left running, no fd or memory growth.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

/// Stops a background thread's loop when the test ends, also by a failed assertion.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS")
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("VmRSS")
}

#[test]
fn a_storm_of_100_sighups_in_100ms_gives_at_most_2_reloads_and_no_failed_request() {
    let h = with_fixture(&[], &["--ready-delay", "0.3"]);
    h.ready(1);
    let addr = h.addr(0);
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let ok = Arc::new(Mutex::new(0u64));
    let client = {
        let (stop, failed, ok) = (stop.clone(), failed.clone(), ok.clone());
        std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                match get(addr, "/") {
                    Outcome::Ok { status: 200, .. } => *ok.lock().expect("ok") += 1,
                    o => failed.lock().expect("failed").push(format!("{o:?}")),
                }
            }
        })
    };
    let t0 = Instant::now();
    for _ in 0..100 {
        h.reload();
        std::thread::sleep(Duration::from_millis(1)); // spread over ~100 ms: a storm, not one signal
    }
    assert!(t0.elapsed() < Duration::from_millis(1000));
    h.wait("reload_finished", &[("gen", 2.into())]);
    // A coalesced second reload may follow; wait for the status to settle on no reload in flight.
    wait_until("no reload in flight", WAIT, || {
        let (_, out, _) = h.cmd(&["status", "--json"]);
        let v: Value = serde_json::from_str(&out).unwrap_or_default();
        v["generations"]
            .as_array()
            .is_some_and(|g| g.iter().all(|g| g["state"] != "starting"))
    });
    stop.store(true, Ordering::Relaxed);
    client.join().expect("client");
    let (_, out, _) = h.cmd(&["status", "--json"]);
    let v: Value = serde_json::from_str(&out).expect("json");
    let reloads = v["reloads"].as_u64().expect("reloads");
    assert!(
        (1..=2).contains(&reloads),
        "{reloads} reloads for a storm of 100 SIGHUPs"
    );
    let failed = failed.lock().expect("failed");
    assert!(
        failed.is_empty(),
        "failed requests: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert!(*ok.lock().expect("ok") > 10);
}

#[test]
fn five_hundred_reloads_leave_fd_count_and_rss_flat() {
    // A child that is ready at once and dies on SIGTERM: the cost measured is handoff's own.
    let h = handoff()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--ready-after",
            "1ms",
            "--",
            "sleep",
            "1000",
        ])
        .start();
    h.ready(1);
    let warm = 20u64;
    for gen in 2..=warm {
        h.reload();
        h.wait("drained", &[("gen", (gen - 1).into())]);
    }
    let fds0 = fds(h.pid).len();
    let rss0 = rss_kib(h.pid);
    for gen in warm + 1..=warm + 500 {
        h.reload();
        h.wait("drained", &[("gen", (gen - 1).into())]);
    }
    let fds1 = fds(h.pid).len();
    let rss1 = rss_kib(h.pid);
    eprintln!("500 reloads: fds {fds0} -> {fds1}, VmRSS {rss0} KiB -> {rss1} KiB");
    assert_eq!(fds0, fds1, "fd count changed over 500 reloads");
    assert!(
        rss1 <= rss0 + 256,
        "RSS grew from {rss0} KiB to {rss1} KiB over 500 reloads"
    );
}

#[test]
fn ready_from_an_unrelated_process_is_ignored() {
    // Detection off: the child accepts, and would otherwise be made ready by the fallback
    // at its ready timeout (unmodified.rs); here only READY=1 may count.
    let h = with_fixture(
        &["--ready-timeout", "3s", "--detect-ready", "off"],
        &["--never-ready"],
    );
    let pid = h.gen_pid(1);
    // Until exec, /proc/PID/environ is still handoff's own (without NOTIFY_SOCKET).
    wait_until("the child to have exec'd", WAIT, || {
        environ(pid).contains_key("NOTIFY_SOCKET")
    });
    let sock = environ(pid)
        .get("NOTIFY_SOCKET")
        .cloned()
        .expect("NOTIFY_SOCKET");
    // The test process is no descendant of the child: its READY=1 must not count.
    let s = UnixDatagram::unbound().expect("socket");
    s.send_to(b"READY=1", &sock).expect("send");
    let r = h.wait("notify_rejected", &[("gen", 1.into())]);
    assert_eq!(r["sender"], std::process::id());
    assert!(
        h.events("ready").is_empty(),
        "a stranger's READY=1 made the child ready"
    );
    h.wait("failed", &[("gen", 1.into())]); // the real child never got ready: ready timeout
}

#[test]
fn a_notify_flood_during_a_reload_and_a_stop_starves_nothing_and_grows_nothing() {
    // The flood runs the whole time: while generation 2 starts and takes over, while a status
    // request is answered, and while handoff drains and exits on SIGTERM. Every one of those
    // goes through another input of the event loop (SIGCHLD, signals, control socket, timers),
    // which a flood must not starve.
    let mut h = with_fixture(&[], &["--ready-delay", "0.3"]);
    let p1 = h.ready(1);
    let sock1 = environ(p1)
        .get("NOTIFY_SOCKET")
        .cloned()
        .expect("NOTIFY_SOCKET");
    let socks = [
        sock1.clone(),
        sock1.replace("notify-1.sock", "notify-2.sock"),
    ];
    let rss0 = rss_kib(h.pid);
    // Without the /proc files handoff opens for a moment to attribute each datagram.
    let held = |pid| -> Vec<(i32, String)> {
        fds(pid)
            .into_iter()
            .filter(|(_, f)| !f.starts_with("/proc/"))
            .collect()
    };
    let fds0 = held(h.pid);
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_panic = StopOnDrop(stop.clone());
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let flooders: Vec<_> = (0..3)
        .map(|_| {
            let socks = socks.clone();
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::spawn(move || {
                let s = UnixDatagram::unbound().expect("socket");
                s.set_nonblocking(true).expect("nonblocking");
                let big = vec![b'X'; 60_000]; // larger than the 4096-byte limit: dropped whole
                let end = Instant::now() + Duration::from_secs(60);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    let msg: &[u8] = if n % 1000 == 1 {
                        &big
                    } else {
                        b"READY=1\nSTATUS=flood"
                    };
                    // Whichever generations exist: gen 1's socket goes away once it has drained.
                    for sock in &socks {
                        if s.send_to(msg, sock).is_ok() {
                            n += 1;
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    wait_until("the flood is under way", WAIT, || {
        sent.load(Ordering::Relaxed) > 2000
    });
    let t = Instant::now();
    h.reload();
    assert_eq!(
        h.wait("reload_finished", &[("gen", 2.into())])["result"],
        "ok"
    );
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "reload took {:?} during a flood",
        t.elapsed()
    );
    h.wait("drained", &[("gen", 1.into())]); // one generation again, as when fds0 was read
    let fds1 = held(h.pid);
    assert_eq!(fds1.len(), fds0.len(), "{fds0:?} then {fds1:?}");
    let (code, out, err) = h.cmd(&["status", "--json"]);
    assert_eq!(code, 0, "status during a flood: {out} {err}");
    let rss1 = rss_kib(h.pid);
    assert!(
        rss1 <= rss0 + 1024,
        "RSS grew from {rss0} KiB to {rss1} KiB under a notify flood"
    );
    // The flood is still going when the stop begins.
    let before_stop = sent.load(Ordering::Relaxed);
    wait_until("the flood to go on", WAIT, || {
        sent.load(Ordering::Relaxed) > before_stop + 100
    });
    h.signal(libc::SIGTERM);
    let t = Instant::now();
    assert_eq!(h.wait_exit(Duration::from_secs(20)), 0);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "stop took {:?} during a flood",
        t.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.join().expect("flooder");
    }
    let total = sent.load(Ordering::Relaxed);
    // Strangers were logged sparsely, not once per datagram.
    let logged = h.events("notify_rejected").len();
    assert!(
        logged < 40,
        "{logged} log lines for {total} rejected datagrams"
    );
}

#[test]
fn fds_sent_with_notify_datagrams_never_accumulate_in_handoff() {
    let h = fixture_with_args_file(&[]);
    h.ready(1);
    let fds0 = fds(h.pid).len();
    // Generation 2 sends FDSTORE=1 with 17 fds (one more than handoff once had room for, which
    // leaked the 16 that arrived), 70 times, before READY=1 (it exits 4 if it cannot).
    std::fs::write(h.args_file(), "--fdstore-flood 70 --fdstore-fds 17").expect("write");
    for gen in [2u64, 3] {
        h.reload();
        // READY=1 follows the 70 datagrams on the same socket: handoff has received them all.
        assert_eq!(
            h.wait("reload_finished", &[("gen", gen.into())])["result"],
            "ok",
            "log:\n{}",
            h.raw_log()
        );
        h.wait("drained", &[("gen", (gen - 1).into())]); // one generation, as for fds0
        let n = fds(h.pid).len();
        assert_eq!(
            n, fds0,
            "handoff had {fds0} fds before, {n} after generation {gen} sent 70 x 17 fds"
        );
    }
}
