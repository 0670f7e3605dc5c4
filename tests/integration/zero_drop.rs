//! The product's promise: under load, across reloads, no client sees a failed request.

use crate::util::*;

#[test]
fn ten_reloads_under_load_fail_no_request() {
    const RELOADS: u64 = 10;
    let h = with_fixture(&[], &["--ready-delay", "0.2"]);
    h.ready(1);
    // A keep-alive client and a new-connection-per-request client, bounded in time.
    let load = Load::start(h.addr(0), json_gen);
    for gen in 2..=RELOADS + 1 {
        h.reload();
        let done = h.wait("reload_finished", &[("gen", gen.into())]);
        assert_eq!(done["result"], "ok", "{done}");
    }
    // Let the last generation serve a little too, then stop the clients.
    wait_until("a response from the last generation", WAIT, || {
        load.answered(RELOADS + 1)
    });
    let t = load.finish();
    t.assert_no_failures("zero_drop", 101);
    assert!(
        t.gens.len() >= 5,
        "responses from several generations expected: {:?}",
        t.gens
    );
}
