//! Bind adoption: servers that know nothing of LISTEN_FDS bind the address handoff holds and
//! get its socket, in every generation, reloaded under load with no failed request.
//!
//! Each server is started through `sh -c` with the address handoff really holds (handoff
//! listens on 127.0.0.1:0 and says where in `SERVER_STARTER_PORT`, "127.0.0.1:PORT=3"), and
//! names `$HANDOFF_GENERATION` in its responses so that the generations can be told apart.
//! Readiness is `--ready-after` (these servers send no READY=1; automatic readiness is the
//! other half of issue 12). The servers:
//! - Go: examples/go-unmodified (`http.Server.ListenAndServe`, `Shutdown` on SIGTERM), built
//!   static once per test run;
//! - Node: `http.createServer().listen(port, host)`;
//! - Python: a stdlib `ThreadingHTTPServer` that drains on SIGTERM, and `python3 -m
//!   http.server` itself (which cannot drain: it dies with accepted connections on SIGTERM, so
//!   it is reloaded between requests, not under load);
//! - a Python script that binds everything else (UDP on the held port, port 0, another
//!   address), calls listen(5) and shutdown() on the adopted socket, with and without
//!   `--adopt off`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

use crate::util::*;

/// The address handoff holds, as `sh -c` sees it: `${SERVER_STARTER_PORT%%=*}`.
const ADDR: &str = "${SERVER_STARTER_PORT%%=*}";

/// "... generation N ..." in a response body.
fn generation(body: &str) -> Option<u64> {
    body.split("generation ")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// examples/go-unmodified, built once (static, offline) into the test target directory.
fn go_server() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go");
        let out = dir.join("go-unmodified");
        let status = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/go-unmodified"))
            .env("GOFLAGS", "-mod=mod")
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .env("CGO_ENABLED", "0")
            .env("GOCACHE", dir.join("cache"))
            .env("GOPATH", dir.join("path"))
            .stdin(Stdio::null())
            .status()
            .expect("this test needs `go` (Debian package golang-go; .ci/setup installs it)");
        assert!(status.success(), "go build examples/go-unmodified failed");
        out
    })
}

/// handoff on 127.0.0.1:0 running `sh -c SCRIPT NAME ARGS...`.
fn under_handoff(opts: &[&str], script: &str, args: &[&str]) -> Handoff {
    handoff()
        .args(["--listen", "127.0.0.1:0"])
        .args(opts.iter().copied())
        .args(["--", "sh", "-c", script])
        .args(args.iter().copied())
        .start()
}

/// Reload 3 times under load; every generation adopts, answers and drains with status 0.
fn reload_under_load(mut h: Handoff) {
    const RELOADS: u64 = 3;
    h.ready(1);
    let addr = h.addr(0);
    let load = Load::start(addr, generation);
    wait_until("a response from generation 1", WAIT, || load.answered(1));
    for gen in 2..=RELOADS + 1 {
        h.reload();
        let done = h.wait("reload_finished", &[("gen", gen.into())]);
        assert_eq!(done["result"], "ok", "{done}\n{}", h.raw_log());
        wait_until(&format!("a response from generation {gen}"), WAIT, || {
            load.answered(gen)
        });
        let drained = h.wait("drained", &[("gen", (gen - 1).into())]);
        assert_eq!(drained["exit_status"], "exit status 0", "{drained}");
    }
    let t = load.finish();
    t.assert_no_failures("adopt", 50);
    assert_eq!(
        t.gens,
        (1..=RELOADS + 1).collect(),
        "every generation answered"
    );
    for gen in 1..=RELOADS + 1 {
        let a = h.wait("adopted", &[("gen", gen.into())]);
        assert_eq!(a["addr"], addr.to_string(), "{a}");
        assert_eq!(a["index"], 0);
        // The process, even when a runtime thread made the call (Go).
        assert_eq!(a["pid"], h.gen_pid(gen), "{a}");
    }
    assert!(h.events("listener_restored").is_empty());
    h.signal(libc::SIGTERM);
    assert_eq!(h.wait_exit(WAIT), 0, "{}", h.raw_log());
}

#[test]
fn go_server_binding_its_own_port_is_reloaded_under_load() {
    let server = go_server().to_str().expect("utf-8 path").to_string();
    let h = under_handoff(
        &["--ready-after", "300ms"],
        &format!("exec \"$0\" \"{ADDR}\""),
        &[&server],
    );
    reload_under_load(h);
}

const NODE: &str = r#"
const http = require('node:http');
const [host, port] = process.argv[1].split(/:(?=\d+$)/);
const gen = process.env.HANDOFF_GENERATION;
let draining = false;
const server = http.createServer((req, res) => {
  const text = `Hello from Node, generation ${gen} (pid ${process.pid})\n`;
  res.setHeader('Content-Length', Buffer.byteLength(text));
  if (draining) res.setHeader('Connection', 'close');
  res.end(text);
});
server.listen(Number(port), host);
process.on('SIGTERM', () => {
  draining = true;
  server.close(() => process.exit(0));
  server.closeIdleConnections();
});
"#;

#[test]
fn node_server_binding_its_own_port_is_reloaded_under_load() {
    let h = under_handoff(
        &["--ready-after", "300ms"],
        &format!("exec node -e \"$0\" \"{ADDR}\""),
        &[NODE],
    );
    reload_under_load(h);
}

const PYTHON: &str = r#"
import http.server, os, signal, sys, threading
host, port = sys.argv[1].rsplit(":", 1)
gen = os.environ["HANDOFF_GENERATION"]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = f"Hello from Python, generation {gen} (pid {os.getpid()})\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer((host, int(port)), H)
srv.daemon_threads = False
signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=srv.shutdown).start())
srv.serve_forever()
srv.server_close()
"#;

#[test]
fn python_server_binding_its_own_port_is_reloaded_under_load() {
    let h = under_handoff(
        &["--ready-after", "300ms"],
        &format!("exec python3 -c \"$0\" \"{ADDR}\""),
        &[PYTHON],
    );
    reload_under_load(h);
}

#[test]
fn python_http_server_module_through_a_shell_is_adopted_in_every_generation() {
    // `python3 -m http.server PORT --bind HOST` binds and listen(5)s itself. Run through a
    // shell that does not exec it (the `; :`), so the binding process is a grandchild of
    // handoff: the filter is inherited. Each generation serves its own directory.
    let b = handoff();
    let root = b.dir().join("www");
    let script = format!(
        "a={ADDR}; d=\"$0/$HANDOFF_GENERATION\"; mkdir -p \"$d\" && \
         echo \"generation $HANDOFF_GENERATION\" > \"$d/index.html\" && \
         python3 -m http.server --bind \"${{a%:*}}\" --directory \"$d\" \"${{a##*:}}\" 2>/dev/null; :"
    );
    let h = b
        .args([
            "--listen",
            "127.0.0.1:0",
            "--backlog",
            "64",
            "--ready-after",
            "300ms",
        ])
        .args(["--", "sh", "-c", &script])
        .arg(&root)
        .start();
    let addr = h.addr(0);
    for gen in 1..=3u64 {
        if gen > 1 {
            h.reload();
            let done = h.wait("reload_finished", &[("gen", gen.into())]);
            assert_eq!(done["result"], "ok", "{done}");
        }
        let shell = h.ready(gen);
        let a = h.wait("adopted", &[("gen", gen.into())]);
        assert_ne!(a["pid"], shell, "the shell's child bound it: {a}");
        assert_eq!(a["addr"], addr.to_string());
        // Its listen(fd, 5) was answered without touching the shared backlog.
        let l = h.wait("adopt_listen", &[("gen", gen.into())]);
        assert_eq!(l["backlog"], 5, "{l}");
        assert_eq!(crate::listeners::tcp_backlog(addr), 64);
        match get(addr, "/") {
            Outcome::Ok { status: 200, body } => assert_eq!(generation(&body), Some(gen)),
            other => panic!("GET / in generation {gen}: {other:?}\n{}", h.raw_log()),
        }
    }
    // status shows what each generation adopted.
    let (code, out, _) = h.cmd(&["status", "--json"]);
    assert_eq!(code, 0);
    let status: Value = serde_json::from_str(&out).expect("json");
    let serving = status["generations"]
        .as_array()
        .expect("generations")
        .iter()
        .find(|g| g["gen"] == 3)
        .expect("generation 3")
        .clone();
    assert_eq!(serving["adopted"][0]["addr"], addr.to_string(), "{status}");
    let (_, text, _) = h.cmd(&["status"]);
    assert!(text.contains("adopted its bind: fd"), "{text}");
}

const BINDER: &str = r#"
import json, os, socket, sys
host, port = sys.argv[1].rsplit(":", 1)
port = int(port)
out = {}
def step(name, f):
    try:
        out[name] = f()
    except OSError as e:
        out[name] = "errno %d" % e.errno
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
step("bind", lambda: s.bind((host, port)) or "ok")
step("listen", lambda: s.listen(5) or "ok")
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
step("udp_same_port", lambda: u.bind((host, port)) or "ok")
z = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
step("port_zero", lambda: z.bind((host, 0)) or z.getsockname()[1] != port)
o = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
step("other_port", lambda: o.bind((host, 0)) or o.listen(1) or "ok")
w = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
step("wildcard_same_port", lambda: w.bind(("0.0.0.0", port)) or "ok")
step("shutdown", lambda: s.shutdown(socket.SHUT_RDWR) or "ok")
json.dump(out, open(os.environ["RESULT"], "w"))
os.rename(os.environ["RESULT"], os.environ["RESULT"] + ".done")
import signal
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
signal.sigwait({signal.SIGTERM})
"#;

fn binder(adopt: &str) -> (Handoff, Value) {
    let b = handoff();
    let result = b.dir().join("result");
    let h = b
        .env("RESULT", result.to_str().expect("utf-8"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--adopt",
            adopt,
            "--ready-after",
            "100ms",
        ])
        .args([
            "--",
            "sh",
            "-c",
            &format!("exec python3 -c \"$0\" \"{ADDR}\""),
        ])
        .arg(BINDER)
        .start();
    let done = result.with_extension("done");
    wait_until("the binder's results", WAIT, || done.exists());
    let v = serde_json::from_str(&std::fs::read_to_string(&done).expect("read")).expect("json");
    (h, v)
}

#[test]
fn only_the_held_tcp_address_is_adopted_and_shutdown_is_swallowed() {
    let (h, r) = binder("on");
    let addr = h.addr(0);
    let inuse = format!("errno {}", libc::EADDRINUSE);
    assert_eq!(r["bind"], "ok", "{r}");
    assert_eq!(r["listen"], "ok", "{r}");
    // Everything else is the kernel's, as without handoff.
    assert_eq!(r["udp_same_port"], "ok", "{r}");
    assert_eq!(r["port_zero"], true, "{r}");
    assert_eq!(r["other_port"], "ok", "{r}");
    assert_eq!(r["wildcard_same_port"], inuse.as_str(), "{r}");
    let miss = h.wait("adopt_other_address", &[("gen", 1.into())]);
    assert_eq!(miss["held"], addr.to_string());
    assert!(miss["message"]
        .as_str()
        .expect("message")
        .contains("--listen 0.0.0.0:"));
    // The SO_REUSEPORT set on the replaced socket is reported lost.
    let lost = h.wait("adopt_options_lost", &[("gen", 1.into())]);
    assert_eq!(lost["options"], "SO_REUSEPORT", "{lost}");
    // shutdown(SHUT_RDWR) was answered 0 and not done: the listener still accepts (the
    // connection queues in the kernel; nobody accepts it, which is fine here).
    assert_eq!(r["shutdown"], "ok", "{r}");
    h.wait("adopt_shutdown", &[("gen", 1.into())]);
    std::net::TcpStream::connect(addr).expect("the held listener still listens");
    // One bind, one adoption.
    assert_eq!(h.events("adopted").len(), 1);
}

#[test]
fn with_adopt_off_the_server_gets_eaddrinuse_as_before() {
    let (h, r) = binder("off");
    let inuse = format!("errno {}", libc::EADDRINUSE);
    assert_eq!(r["bind"], inuse.as_str(), "{r}");
    assert_eq!(r["udp_same_port"], "ok", "{r}");
    assert_eq!(h.events("listening")[0]["adopt"], false);
    assert!(h.events("adopted").is_empty());
}

#[test]
fn a_listen_fds_server_keeps_its_socket_and_its_shutdown_is_swallowed() {
    // The fixture takes LISTEN_FDS and, with --shutdown-listener, shuts the shared socket down
    // on its way out (odoo#107539). Under adoption that shutdown() is answered without being
    // done: nothing to repair, no connection refused.
    let h = fixture_with_first_args(&[], "--shutdown-listener");
    h.ready(1);
    let addr = h.addr(0);
    h.reload();
    h.wait("drained", &[("gen", 1.into())]);
    h.wait("adopt_shutdown", &[("gen", 1.into())]);
    assert_eq!(get_json(addr, "/")["gen"], 2);
    assert!(h.events("listener_restored").is_empty(), "{}", h.raw_log());
    assert!(h.events("adopted").is_empty(), "it bound nothing itself");
}

/// The effective uid a setuid-root copy of `id` gets in a child of `b`'s handoff; and the log.
fn setuid_helper_euid(b: Builder, user: &[&str]) -> (String, Handoff) {
    use std::os::unix::fs::PermissionsExt;
    let dir = b.dir().to_path_buf();
    // nobody must create the control socket there and write the result.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let helper = dir.join("suid-id");
    std::fs::copy("/usr/bin/id", &helper).expect("copy id");
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o4755)).expect("setuid");
    let out = dir.join("euid");
    let h = b
        .args(["--listen", "127.0.0.1:0"])
        .args(user.iter().copied())
        .args([
            "--",
            "sh",
            "-c",
            "\"$0\" -u > \"$1.tmp\" && mv \"$1.tmp\" \"$1\"; exec sleep 1000",
        ])
        .arg(&helper)
        .arg(&out)
        .start();
    wait_until("the helper's euid", WAIT, || out.exists());
    let euid = std::fs::read_to_string(&out)
        .expect("read")
        .trim()
        .to_string();
    (euid, h)
}

#[test]
#[ignore = "needs root (a setuid-root helper; handoff as nobody via setpriv); CI's root stage runs it with --ignored"]
fn setuid_helpers_keep_working_unless_handoff_lacks_cap_sys_admin() {
    assert!(is_root(), "needs root: run with --ignored as root");
    // Root handoff (CAP_SYS_ADMIN), child run as nobody: the filter goes in before the
    // privilege drop, no NO_NEW_PRIVS, the setuid helper gets euid 0.
    let (euid, h) = setuid_helper_euid(handoff(), &["--user", "nobody"]);
    assert_eq!(euid, "0", "{}", h.raw_log());
    assert!(h.events("adopt_no_new_privs").is_empty());
    drop(h);
    // handoff itself as nobody: a filter needs NO_NEW_PRIVS, said once at start; the setuid
    // bit no longer raises privileges.
    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    let (euid, h) = setuid_helper_euid(handoff_under(&nobody), &[]);
    assert_eq!(euid, "65534", "{}", h.raw_log());
    h.wait("adopt_no_new_privs", &[]);
    drop(h);
    // The same with --adopt off: setuid works, as before adoption existed.
    let (euid, h) = setuid_helper_euid(handoff_under(&nobody), &["--adopt", "off"]);
    assert_eq!(euid, "0", "{}", h.raw_log());
}
