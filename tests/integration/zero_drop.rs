//! The product's promise: under load, across reloads, no client sees a failed request.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::*;

#[derive(Default, Debug)]
struct Tally {
    ok: u64,
    failed: Vec<String>,
    retried_keepalive: u64,
    gens: BTreeSet<u64>,
}

fn record(t: &Mutex<Tally>, o: Outcome) {
    let mut t = t.lock().expect("tally");
    match o {
        Outcome::Ok { status: 200, body } => {
            t.ok += 1;
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                if let Some(g) = v["gen"].as_u64() {
                    t.gens.insert(g);
                }
            }
        }
        other => t.failed.push(format!("{other:?}")),
    }
}

#[test]
fn ten_reloads_under_load_fail_no_request() {
    const RELOADS: u64 = 10;
    let h = with_fixture(&[], &["--ready-delay", "0.2"]);
    h.ready(1);
    let addr = h.addr(0);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    // Bounded: the clients stop when told, and in any case after 60 s.
    let hard_stop = Instant::now() + Duration::from_secs(60);
    let mut clients = Vec::new();
    {
        let (stop, tally) = (stop.clone(), tally.clone());
        clients.push(std::thread::spawn(move || {
            let mut c = KeepAlive::new(addr);
            while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
                let (o, retried) = c.get("/");
                if retried {
                    tally.lock().expect("tally").retried_keepalive += 1;
                }
                record(&tally, o);
            }
        }));
    }
    {
        let (stop, tally) = (stop.clone(), tally.clone());
        clients.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
                record(&tally, get(addr, "/"));
            }
        }));
    }
    for gen in 2..=RELOADS + 1 {
        h.reload();
        let done = h.wait("reload_finished", &[("gen", gen.into())]);
        assert_eq!(done["result"], "ok", "{done}");
    }
    // Let the last generation serve a little too, then stop the clients.
    let seen_last = {
        let tally = tally.clone();
        move || tally.lock().expect("tally").gens.contains(&(RELOADS + 1))
    };
    wait_until("a response from the last generation", WAIT, seen_last);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    let t = tally.lock().expect("tally");
    eprintln!(
        "zero_drop: {} ok, {} failed, {} keep-alive retries, generations {:?}",
        t.ok,
        t.failed.len(),
        t.retried_keepalive,
        t.gens
    );
    assert!(
        t.failed.is_empty(),
        "failed requests: {:?}",
        &t.failed[..t.failed.len().min(10)]
    );
    assert!(t.ok > 100, "too few requests to mean anything: {}", t.ok);
    assert!(
        t.gens.len() >= 5,
        "responses from several generations expected: {:?}",
        t.gens
    );
}
