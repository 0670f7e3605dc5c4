//! The examples in examples/, each run under handoff and reloaded under a short load.
//!
//! Each test builds its example if it needs building, runs it under handoff on 127.0.0.1:0,
//! and reloads it 3 times while two loopback clients (one keep-alive, one new connection per
//! request) send requests, and while a one-second request is in flight on the generation
//! being replaced. It asserts that no request failed, that every generation answered, that
//! the in-flight request was answered by the old generation, and that every old generation
//! exited 0 on SIGTERM. A missing toolchain fails the test (it does not skip):
//! `.ci/packages-examples` lists what CI installs.
//!
//! `HANDOFF_EXAMPLES_RELOADS=N` reloads N times instead of 3 (to hunt for rare races).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::Value;

use crate::util::*;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn reloads() -> u64 {
    std::env::var("HANDOFF_EXAMPLES_RELOADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3)
}

/// Panics with a clear message unless `program` can be run (`args` is a harmless probe such
/// as `--version`); returns what it printed.
#[track_caller]
fn require(program: &str, args: &[&str], package: &str) -> String {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(out) => panic!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "this example test needs `{program}` ({e}); install the Debian package \
             `{package}` (CI installs every package listed in .ci/packages-examples)"
        ),
    }
}

/// Runs a build command to completion; panics with its output if it fails.
#[track_caller]
fn build(what: &str, cmd: &mut Command) {
    let started = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("examples: {what} took {:.1?}", started.elapsed());
}

/// The generation number in a response body ("... generation 3 (pid ...)").
fn generation(body: &str) -> Option<u64> {
    body.split("generation ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The shared scenario: `h` runs an example whose responses contain `hello` and
/// "generation N"; reload it under load, with a slow request in flight each time.
fn reload_under_load(mut h: Handoff, hello: &str) {
    let reloads = reloads();
    h.ready(1);
    let addr = h.addr(0);
    match get(addr, "/") {
        Outcome::Ok { status: 200, body } if body.contains(hello) => {
            assert_eq!(generation(&body), Some(1), "{body:?}")
        }
        other => panic!(
            "GET / on the example: {other:?}; handoff log:\n{}",
            h.raw_log()
        ),
    }
    let load = Load::start(addr, generation);
    wait_until("a response under load", WAIT, || load.answered(1));
    for gen in 2..=reloads + 1 {
        let old = gen - 1;
        // A request that takes 1 s, on a new connection, sent just before the reload: it must
        // succeed whichever generation accepts it. (Which one it lands on cannot be observed
        // from outside for these servers; that an accepted request finishes in the draining
        // generation is asserted with the fixture's in-flight count in reload.rs.)
        let mut conn = TcpStream::connect(addr).expect("connect");
        conn.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .expect("send /slow");
        let slow = std::thread::spawn(move || {
            let mut buf = Vec::new();
            match conn.read_to_end(&mut buf) {
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf);
                    match text.split_once("\r\n\r\n") {
                        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Outcome::Ok {
                            status: 200,
                            body: body.to_string(),
                        },
                        _ => Outcome::Other(format!("bad response {text:?}")),
                    }
                }
                Err(e) => Outcome::Other(e.to_string()),
            }
        });
        h.reload();
        let done = h.wait("reload_finished", &[("gen", gen.into())]);
        assert_eq!(done["result"], "ok", "{done}\n{}", h.raw_log());
        wait_until(&format!("a response from generation {gen}"), WAIT, || {
            load.answered(gen)
        });
        match slow.join().expect("slow request") {
            Outcome::Ok { status: 200, body } if body.contains("Slow") => {
                let g = generation(&body);
                assert!(
                    g == Some(old) || g == Some(gen),
                    "unexpected generation: {body:?}"
                );
            }
            other => panic!("GET /slow across reload {gen}: {other:?}"),
        }
        let drained = h.wait("drained", &[("gen", old.into())]);
        assert_eq!(
            drained["exit_status"], "exit status 0",
            "generation {old} should exit 0 after draining: {drained}"
        );
    }
    let t = load.finish();
    t.assert_no_failures(&format!("examples ({hello})"), 20);
    let every: BTreeSet<u64> = (1..=reloads + 1).collect();
    assert_eq!(t.gens, every, "every generation should have answered");
    // And a clean stop: the last generation drains too, nothing is killed.
    h.signal(libc::SIGTERM);
    assert_eq!(h.wait_exit(WAIT), 0, "handoff log:\n{}", h.raw_log());
    let last: Value = h.wait("drained", &[("gen", (reloads + 1).into())]);
    assert_eq!(last["exit_status"], "exit status 0", "{last}");
}

#[test]
fn go_net_http() {
    require("go", &["version"], "golang-go");
    let b = handoff();
    let server = b.dir().join("go-server");
    // Standard library only: nothing to download (GOPROXY=off makes sure), no C compiler
    // (CGO_ENABLED=0). The build cache stays in target/tmp, so later runs are quick.
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go");
    build(
        "go build (examples/go)",
        Command::new("go")
            .args(["build", "-o"])
            .arg(&server)
            .arg(".")
            .current_dir(repo().join("examples/go"))
            .env("GOFLAGS", "-mod=mod")
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .env("CGO_ENABLED", "0")
            .env("GOCACHE", cache.join("cache"))
            .env("GOPATH", cache.join("path")),
    );
    let h = b
        .args(["--listen", "127.0.0.1:0", "--"])
        .arg(server)
        .start();
    reload_under_load(h, "Hello from Go");
}

#[test]
fn node_http() {
    let version = require("node", &["--version"], "nodejs");
    // server.closeIdleConnections() is Node >= 18.2.
    let major: u32 = version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 18,
        "examples/node needs Node.js >= 18.2, found {version}"
    );
    // It reports READY=1 through systemd-notify (see the comment in server.js).
    require("systemd-notify", &["--version"], "systemd");
    let h = handoff()
        .args(["--listen", "127.0.0.1:0", "--", "node"])
        .arg(repo().join("examples/node/server.js"))
        .start();
    reload_under_load(h, "Hello from Node.js");
}

#[test]
fn rust_axum() {
    // `cargo test` has released the build lock by the time tests run, so this build shares
    // the target directory (and every dependency already compiled) with it; after
    // `cargo test --workspace`, which builds the examples too, it has nothing to do.
    // At low priority: a cold build competes for the CPU with the tests running meanwhile.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let started = Instant::now();
    let out = Command::new("nice")
        .args(["-n", "10"])
        .arg(&cargo)
        .args([
            "build",
            "--example",
            "axum-server",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(repo())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo}: {e}"));
    assert!(
        out.status.success(),
        "cargo build --example axum-server failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "axum-server")
        .and_then(|v| v["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported no axum-server executable");
    eprintln!(
        "examples: cargo build --example axum-server took {:.1?}",
        started.elapsed()
    );
    let h = handoff()
        .args(["--listen", "127.0.0.1:0", "--"])
        .arg(server)
        .start();
    reload_under_load(h, "Hello from Rust (axum)");
}

#[test]
fn shell_inetd_style() {
    // systemd-socket-activate accepts on the inherited socket and runs a shell handler per
    // connection (see examples/shell/server.sh).
    require("systemd-socket-activate", &["--version"], "systemd");
    let h = handoff()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--ready-after",
            "500ms",
            "--",
            "sh",
        ])
        .arg(repo().join("examples/shell/server.sh"))
        .start();
    reload_under_load(h, "Hello from sh");
}
