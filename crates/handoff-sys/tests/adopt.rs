//! Bind adoption at the OS level: the BPF program, evaluated instruction by instruction, and
//! a real child (Python) that binds, listens on and shuts down the port handoff holds.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use handoff_sys::adopt::{self, HeldSocket, NonBlockPolicy, Notice, Watch};
use handoff_sys::spawn::{resolve_program, spawn, SpawnPlan};

// ---- the filter, run by a small classic-BPF interpreter ------------------------------------

#[cfg(target_arch = "x86_64")]
const ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const ARCH: u32 = 0xC000_00B7;
const I386: u32 = 0x4000_0003;

/// `struct seccomp_data` as bytes: nr, arch, ip, args.
fn data(nr: i64, arch: u32, args: [u64; 6]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend((nr as i32).to_ne_bytes());
    d.extend(arch.to_ne_bytes());
    d.extend(0u64.to_ne_bytes());
    for a in args {
        d.extend(a.to_ne_bytes());
    }
    d
}

/// Runs `prog` on `data` (only what seccomp programs here use: LD W ABS, JEQ/JGE K, RET K).
fn run(prog: &[libc::sock_filter], data: &[u8]) -> u32 {
    let mut acc = 0u32;
    let mut pc = 0usize;
    loop {
        let i = prog[pc];
        let code = u32::from(i.code);
        match code {
            c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                let k = i.k as usize;
                acc = u32::from_ne_bytes(data[k..k + 4].try_into().expect("4 bytes"));
                pc += 1;
            }
            c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => {
                pc += 1 + usize::from(if acc == i.k { i.jt } else { i.jf });
            }
            c if c == libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K => {
                pc += 1 + usize::from(if acc >= i.k { i.jt } else { i.jf });
            }
            c if c == libc::BPF_RET | libc::BPF_K => return i.k,
            other => panic!("unexpected instruction {other:#x}"),
        }
    }
}

#[test]
fn the_filter_notifies_only_bind_listen_and_destructive_shutdown() {
    let p = adopt::program();
    let (allow, notify) = (libc::SECCOMP_RET_ALLOW, libc::SECCOMP_RET_USER_NOTIF);
    let call = |nr: i64, arg1: u64| run(&p, &data(nr, ARCH, [3, arg1, 0, 0, 0, 0]));
    assert_eq!(call(libc::SYS_bind, 0x1000), notify);
    assert_eq!(call(libc::SYS_listen, 128), notify);
    assert_eq!(call(libc::SYS_shutdown, libc::SHUT_RD as u64), notify);
    assert_eq!(call(libc::SYS_shutdown, libc::SHUT_RDWR as u64), notify);
    // Node shuts down the write side of every connection: not worth a round trip.
    assert_eq!(call(libc::SYS_shutdown, libc::SHUT_WR as u64), allow);
    for nr in [
        libc::SYS_getppid,
        libc::SYS_accept4,
        libc::SYS_read,
        libc::SYS_connect,
        libc::SYS_socket,
        libc::SYS_setsockopt,
    ] {
        assert_eq!(call(nr, 0), allow, "syscall {nr}");
    }
    // Another architecture's numbers mean other calls: allowed unexamined (i386's bind
    // would otherwise be 361, its socketcall 102).
    for nr in [libc::SYS_bind, 102, 361] {
        assert_eq!(run(&p, &data(nr, I386, [0; 6])), allow);
    }
    #[cfg(target_arch = "x86_64")]
    {
        // x32: the same numbers with bit 30 set.
        let x32_bind = 0x4000_0000 | libc::SYS_bind;
        assert_eq!(run(&p, &data(x32_bind, ARCH, [0; 6])), allow);
    }
}

// ---- a real child --------------------------------------------------------------------------

struct Reap(u32);

impl Drop for Reap {
    fn drop(&mut self) {
        // SAFETY: killing and reaping our own child (a no-op if already reaped).
        unsafe {
            libc::kill(self.0 as i32, libc::SIGKILL);
            libc::waitpid(self.0 as i32, std::ptr::null_mut(), 0);
        }
    }
}

fn wait_exit(pid: u32, timeout: Duration) -> i32 {
    let end = Instant::now() + timeout;
    loop {
        let mut st = 0;
        // SAFETY: our own child.
        if unsafe { libc::waitpid(pid as i32, &mut st, libc::WNOHANG) } == pid as i32 {
            return st;
        }
        assert!(Instant::now() < end, "child {pid} did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
}

const CHILD: &str = r#"
import json, select, socket, sys
port, out = int(sys.argv[1]), sys.argv[2]
res = {}
def step(name, f):
    try:
        res[name] = f()
    except OSError as e:
        res[name] = "errno %d" % e.errno
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.setblocking(False)
fd = s.fileno()
step("bind", lambda: s.bind(("127.0.0.1", port)) or "ok")
step("name", lambda: list(s.getsockname()))
step("listen", lambda: s.listen(5) or "ok")
step("rebind", lambda: s.bind(("127.0.0.1", port)) or "ok")
s2 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
step("second", lambda: s2.bind(("127.0.0.1", port)) or "ok")
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
step("udp", lambda: u.bind(("127.0.0.1", port)) or "ok")
z = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
step("zero", lambda: z.bind(("127.0.0.1", 0)) or z.getsockname()[1])
x = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
step("other_addr", lambda: x.bind(("0.0.0.0", port)) or "ok")
step("shutdown", lambda: s.shutdown(socket.SHUT_RDWR) or "ok")
def acc():
    r, _, _ = select.select([s], [], [], 10)
    c, _ = s.accept()
    c.sendall(b"hi")
    c.close()
    return "ok"
step("accept", acc)
res["fd"] = fd
json.dump(res, open(out, "w"))
"#;

#[test]
fn a_child_binding_the_held_port_gets_the_held_socket() {
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = held.local_addr().expect("addr").port();
    // A connection queued before the child even exists: it is in the held socket's queue.
    let mut early = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let dir = std::env::temp_dir().join(format!("handoff-adopt-test.{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let out = dir.join("result.json");
    let python = resolve_program("python3".as_ref()).expect("python3");
    let argv = [
        "python3".into(),
        "-c".into(),
        CHILD.into(),
        port.to_string().into(),
        out.clone().into_os_string(),
    ];
    let env: Vec<_> = std::env::vars_os().collect();
    let (parent, child) = adopt::channel().expect("channel");
    let plan = SpawnPlan::prepare(&python, &argv, &env, &[], None)
        .expect("plan")
        .with_adopt(child);
    let pid = spawn(plan).expect("spawn");
    let _reap = Reap(pid);
    let installed = parent.receive().expect("seccomp fd");
    let (tx, rx) = mpsc::channel();
    let hs = adopt::HeldSet::default();
    hs.replace(vec![HeldSocket::new(0, held.as_fd(), false).expect("held")]);
    let _watch = Watch::start(
        "adopt-test".into(),
        installed.notify,
        hs,
        NonBlockPolicy::default(),
        move |n| {
            let _ = tx.send(n);
        },
    )
    .expect("watch");
    let st = wait_exit(pid, Duration::from_secs(20));
    assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, "{st:#x}");
    let res: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("result")).expect("json");
    let _ = std::fs::remove_dir_all(&dir);
    let eaddrinuse = format!("errno {}", libc::EADDRINUSE);
    assert_eq!(res["bind"], "ok", "{res}");
    assert_eq!(res["name"], serde_json::json!(["127.0.0.1", port]), "{res}");
    assert_eq!(res["listen"], "ok", "{res}");
    assert_eq!(res["rebind"], "ok", "a repeated bind is idempotent: {res}");
    assert_eq!(
        res["second"], "ok",
        "a second socket shares the listener: {res}"
    );
    assert_eq!(
        res["udp"], "ok",
        "UDP on the same port is the child's own: {res}"
    );
    assert_ne!(res["zero"], port, "port 0 is untouched: {res}");
    assert!(res["zero"].as_u64().is_some(), "{res}");
    assert_eq!(res["other_addr"], eaddrinuse.as_str(), "{res}");
    assert_eq!(res["shutdown"], "ok", "{res}");
    assert_eq!(
        res["accept"], "ok",
        "the early connection was served: {res}"
    );
    let mut buf = [0u8; 2];
    std::io::Read::read_exact(&mut early, &mut buf).expect("reply");
    assert_eq!(&buf, b"hi");

    // The listener survived the child's shutdown(), kept handoff's backlog (not 5: checked
    // through the notice, listen() was never run), and is now non-blocking (the first
    // adopter's choice).
    assert!(handoff_sys::listeners::is_listening(held.as_fd()).expect("SO_ACCEPTCONN"));
    // SAFETY: fcntl on our fd.
    let fl = unsafe { libc::fcntl(held.as_raw_fd(), libc::F_GETFL) };
    assert!(fl & libc::O_NONBLOCK != 0);
    let notices: Vec<Notice> = rx.try_iter().collect();
    let fd = res["fd"].as_i64().expect("fd") as i32;
    let want: SocketAddr = ([127, 0, 0, 1], port).into();
    assert!(
        notices.iter().any(|n| matches!(n, Notice::Adopted { fd: f, addr, nonblock: true, nonblock_kept: false, lost_options, .. }
            if *f == fd && *addr == want && lost_options.contains(&"SO_REUSEPORT") && lost_options.contains(&"TCP_NODELAY"))),
        "{notices:?}"
    );
    for pred in [
        |n: &Notice| matches!(n, Notice::Listen { backlog: 5, .. }),
        |n: &Notice| matches!(n, Notice::AlreadyAdopted { .. }),
        |n: &Notice| matches!(n, Notice::OtherAddress { .. }),
        |n: &Notice| {
            matches!(
                n,
                Notice::Shutdown {
                    how: libc::SHUT_RDWR,
                    ..
                }
            )
        },
    ] {
        assert!(notices.iter().any(pred), "{notices:?}");
    }
    assert_eq!(
        notices
            .iter()
            .filter(|n| matches!(n, Notice::Adopted { .. }))
            .count(),
        2,
        "the socket and the second one: {notices:?}"
    );
}

#[test]
fn probe_finds_support_on_this_kernel() {
    // Linux ≥ 5.9 on every machine this runs on; as root no NO_NEW_PRIVS is needed.
    let s = adopt::probe().expect("adoption supported");
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        assert!(!s.needs_nnp);
    }
}
