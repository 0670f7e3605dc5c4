//! handoff: bind once, hand the sockets to any server, reload with zero failed requests.

mod cli;
mod control;
mod driver;
mod logging;
mod pidfile;
mod sdnotify;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use handoff_core::supervisor::{exit_code, Policy, RestartPolicy, Supervisor};
use handoff_sys::listeners::{self, Listener};
use handoff_sys::notify_socket::RuntimeDir;
use handoff_sys::spawn::{resolve_creds, resolve_program, Creds, SCRUBBED_ENV};

use crate::cli::{Cli, Restart, RunArgs, Sub, TargetArgs};
use crate::driver::{ChildSpec, Driver, Extras};

/// `handoff --version`: the crate version and the git commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("HANDOFF_GIT_COMMIT"),
    ")"
);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    let res = match cli.sub {
        Some(sub) => client(sub),
        None => {
            // Sockets from a systemd socket unit must be taken before anything else opens fds.
            let inherited = listeners::take_inherited();
            // Nothing handoff inherited (a CI runner's pipe, a shell's fd) may leak into
            // children: mark it all close-on-exec.
            handoff_sys::cloexec_inherited(&[]);
            logging::init(cli.run.log_format);
            run(cli.run, inherited)
        }
    };
    match res {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(msg) => {
            logging::stderr_line(&format!("handoff: error: {msg}"));
            ExitCode::from(exit_code::FAILURE as u8)
        }
    }
}

/// clap's errors, reduced to one line (help and version are printed as they are).
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    // clap's first paragraph is the error; it may wrap onto several lines (a list of
    // missing arguments): join them into one.
    let text = e.render().to_string();
    let first: Vec<&str> = text
        .lines()
        .map(str::trim)
        .skip_while(|l| l.is_empty())
        .take_while(|l| !l.is_empty() && !l.starts_with("Usage:"))
        .collect();
    let msg = first.join(" ");
    let msg = msg.trim_start_matches("error: ");
    logging::stderr_line(&format!("handoff: error: {msg} (see handoff --help)"));
    ExitCode::from(exit_code::USAGE as u8)
}

// ---- handoff reload | status | stop -----------------------------------------------------

/// Print what a subcommand reports; a closed stdout (`handoff status | head -0`) loses it
/// instead of panicking as `println!` would.
fn say(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

fn target(t: TargetArgs) -> Result<control::Target, String> {
    Ok(match (t.control, t.pid_file) {
        (_, Some(f)) => control::Target::Pid(control::read_pid_file(&f)?, f),
        (Some(p), None) => control::Target::Path(p),
        (None, None) => control::Target::Path(control::default_path()),
    })
}

fn client(sub: Sub) -> Result<i32, String> {
    use control::{call, Command, Request, VERSION as V};
    match sub {
        Sub::Reload {
            target: t,
            no_wait,
            timeout,
        } => {
            let req = Request {
                v: V,
                cmd: Command::Reload,
                wait: !no_wait,
            };
            let v = call(&target(t)?, &req, Some(timeout), false)?;
            let msg = v["message"].as_str().or(v["error"].as_str()).unwrap_or("");
            if v["ok"] == true {
                say(&format!("{msg}\n"));
                Ok(0)
            } else {
                logging::stderr_line(&format!("handoff: reload failed: {msg}"));
                Ok(1)
            }
        }
        Sub::Status { target: t, json } => {
            let req = Request {
                v: V,
                cmd: Command::Status,
                wait: false,
            };
            let v = call(&target(t)?, &req, Some(Duration::from_secs(10)), false)?;
            if v["ok"] != true {
                return Err(v["error"].as_str().unwrap_or("status failed").to_string());
            }
            if json {
                say(&format!("{}\n", v["status"]));
            } else {
                say(&driver::status_text(&v["status"]));
            }
            Ok(0)
        }
        Sub::Completions { shell } => {
            use clap::CommandFactory;
            // Into a buffer: clap_complete panics when its writer fails (`| head`).
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "handoff", &mut buf);
            say(&String::from_utf8_lossy(&buf));
            Ok(0)
        }
        Sub::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(|e| format!("cannot write the man page: {e}"))?;
            Ok(0)
        }
        Sub::Stop { target: t, timeout } => {
            let req = Request {
                v: V,
                cmd: Command::Stop,
                wait: true,
            };
            let tg = target(t)?;
            let v = call(&tg, &req, Some(timeout), true)?;
            if v["ok"] != true {
                return Err(v["error"].as_str().unwrap_or("stop failed").to_string());
            }
            // The connection closed when handoff's event loop ended; wait for the process.
            if let Some(pid) = v["pid"].as_u64() {
                let end = Instant::now() + timeout;
                // A zombie has exited: only its parent has not collected it yet.
                let running = |pid: u64| {
                    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                        !s.rsplit_once(')')
                            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
                    })
                };
                while running(pid) {
                    if Instant::now() > end {
                        return Err(format!(
                            "handoff (pid {pid}) is still running after {timeout:?}"
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            say("stopped\n");
            Ok(0)
        }
    }
}

// ---- running a server -------------------------------------------------------------------

fn run(cli: RunArgs, inherited: Vec<(std::os::fd::OwnedFd, String)>) -> Result<i32, String> {
    // Validate everything before anything starts: nothing half-started on bad input.
    let program = resolve_program(&cli.command[0])?;
    let somax = listeners::somaxconn();
    let backlog = cli
        .backlog
        .map_or(somax, |b| (b.min(i32::MAX as u32) as i32).min(somax));
    let mut base_env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !SCRUBBED_ENV.iter().any(|s| k == s))
        .collect();
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    let creds: Option<Creds> = match &cli.user {
        Some(u) => {
            let (c, name, home) = resolve_creds(u, cli.group.as_deref())?;
            if euid != 0 && c.uid != euid {
                return Err(format!(
                    "cannot run the child as {u}: handoff is not running as root"
                ));
            }
            // As systemd does for User=: the child's USER, LOGNAME and HOME are its own.
            base_env.retain(|(k, _)| k != "USER" && k != "LOGNAME" && k != "HOME");
            base_env.push(("USER".into(), name.clone().into()));
            base_env.push(("LOGNAME".into(), name.into()));
            base_env.push(("HOME".into(), home.into_os_string()));
            Some(c)
        }
        None if cli.group.is_some() => {
            return Err("--group needs --user (the user whose groups to use)".into())
        }
        None => None,
    };
    let socket_owner = match &cli.socket_owner {
        Some(o) => Some(parse_owner(o)?),
        None => None,
    };
    let pid_file = match &cli.pid_file {
        Some(p) => Some(pidfile::PidFile::check(p)?),
        None => None,
    };
    let policy = Policy {
        stop_signal: cli.stop_signal,
        drain_timeout: cli.drain_timeout,
        ready_timeout: cli.ready_timeout,
        ready_after: cli.ready_after,
        restart: match cli.restart {
            Restart::Always => RestartPolicy::Always,
            Restart::Never => RestartPolicy::Never,
        },
        probe_interval: cli.ready_probe.as_ref().map(|_| cli.ready_probe_interval),
        watch_debounce: cli.watch_debounce,
        ..Policy::default()
    };
    for w in &cli.watch {
        if !w.exists() {
            return Err(format!(
                "cannot watch {}: no such file or directory",
                w.display()
            ));
        }
    }
    let child = ChildSpec {
        program,
        argv: cli.command.clone(),
        base_env,
        creds: creds.clone(),
    };
    let sd = sdnotify::SdNotify::from_env();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the event loop: {e}"))?;
    rt.block_on(async move {
        // Signal handlers first: a SIGHUP before they exist would kill handoff.
        let signals = driver::Signals::new();
        handoff_sys::reaper::become_subreaper()
            .map_err(|e| format!("cannot become a child subreaper: {e}"))?;
        let listeners = setup_listeners(&cli, inherited, backlog, cli.socket_mode, socket_owner)?;
        // From here on, `listeners` removes its socket files if we return early.
        let guard = ListenerGuard(listeners);
        let control = setup_control(&cli)?;
        let dir = RuntimeDir::create()
            .map_err(|e| format!("cannot create a runtime directory for notify sockets: {e}"))?;
        if let Some(c) = &creds {
            dir.chown(c.uid, c.gid)
                .map_err(|e| format!("cannot hand the notify directory to the child's user: {e}"))?;
        }
        let pid_file = match pid_file {
            Some(p) => Some(p.write()?),
            None => None,
        };
        let watcher = driver::watch(&cli.watch)?;
        let listeners = guard.into_inner();
        for (i, l) in listeners.iter().enumerate() {
            tracing::info!(event = "listening", index = i, fd = 3 + i, name = %l.name, addr = %l.local,
                kind = l.kind, inherited = l.inherited,
                "listening on {} (fd {} in the child, name {}{})", l.local, 3 + i, l.name,
                if l.inherited { ", from the service manager" } else { "" });
        }
        let sup = Supervisor::new(policy, Instant::now());
        let extras = Extras {
            control,
            pid_file,
            sd,
            watcher,
            probe: cli.ready_probe.clone(),
        };
        Ok(Driver::new(sup, listeners, child, dir, extras).run(signals).await)
    })
}

/// Removes the socket files of listeners bound so far if start-up fails later.
struct ListenerGuard(Vec<Listener>);

impl ListenerGuard {
    fn into_inner(mut self) -> Vec<Listener> {
        std::mem::take(&mut self.0)
    }
}

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        for l in &self.0 {
            if let Some(f) = &l.unix_file {
                f.remove();
            }
        }
    }
}

fn setup_listeners(
    cli: &RunArgs,
    inherited: Vec<(std::os::fd::OwnedFd, String)>,
    backlog: i32,
    mode: Option<u32>,
    owner: Option<(Option<u32>, Option<u32>)>,
) -> Result<Vec<Listener>, String> {
    let mut inherited: Vec<Option<(std::os::fd::OwnedFd, String)>> =
        inherited.into_iter().map(Some).collect();
    let mut out = ListenerGuard(Vec::new());
    let from_manager =
        |slot: &mut Option<(std::os::fd::OwnedFd, String)>| -> Result<Listener, String> {
            let (fd, name) = slot.take().ok_or("socket already used")?;
            Listener::from_inherited(fd, name.clone()).map_err(|e| {
                format!("cannot use the socket {name} passed by the service manager: {e}")
            })
        };
    if cli.listen.is_empty() {
        // Started by a socket unit with no --listen: pass on everything, in order.
        for slot in inherited.iter_mut() {
            out.0.push(from_manager(slot)?);
        }
    } else {
        for spec in &cli.listen {
            // A --listen whose name matches a socket from the service manager uses that socket.
            let matched = spec.name.as_ref().and_then(|n| {
                inherited
                    .iter()
                    .position(|s| s.as_ref().is_some_and(|(_, sn)| sn == n))
            });
            match matched {
                Some(i) => out.0.push(from_manager(&mut inherited[i])?),
                None => {
                    let l = listeners::bind(spec, backlog).map_err(|e| e.to_string())?;
                    out.0.push(l);
                    listeners::set_unix_access(out.0.last().expect("pushed"), mode, owner)?;
                }
            }
        }
        for (_, name) in inherited.into_iter().flatten() {
            tracing::warn!(event = "unused_socket", name = %name,
                "socket {name} from the service manager matches no --listen name; closing it");
        }
    }
    Ok(out.into_inner())
}

fn setup_control(cli: &RunArgs) -> Result<driver::ControlSockets, String> {
    let mut c = driver::ControlSockets::default();
    match cli.control.as_deref() {
        Some(p) if p.as_os_str() == "none" => {}
        Some(p) => {
            let (l, f) = control::bind_path(p)?;
            c.listeners.push(l);
            c.file = Some(f);
        }
        None => {
            let p = control::default_path();
            match control::bind_path(&p) {
                Ok((l, f)) => {
                    c.listeners.push(l);
                    c.file = Some(f);
                }
                Err(e) => tracing::warn!(event = "control_unavailable",
                    "{e}; running without a control socket file (the pid file, signals and the abstract address still work)"),
            }
        }
    }
    match control::bind_abstract() {
        Ok(l) => c.listeners.push(l),
        Err(e) => tracing::warn!("cannot listen on the abstract control address: {e}"),
    }
    Ok(c)
}

/// `--socket-owner USER:GROUP`, `USER` or `:GROUP`.
fn parse_owner(s: &str) -> Result<(Option<u32>, Option<u32>), String> {
    let (u, g) = s.split_once(':').unwrap_or((s, ""));
    let uid = if u.is_empty() {
        None
    } else {
        Some(resolve_creds(u, None)?.0.uid)
    };
    let gid = if g.is_empty() {
        None
    } else {
        match g.parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => Some(
                nix::unistd::Group::from_name(g)
                    .map_err(|e| format!("cannot look up group {g}: {e}"))?
                    .ok_or_else(|| format!("unknown group {g}"))?
                    .gid
                    .as_raw(),
            ),
        }
    };
    if uid.is_none() && gid.is_none() {
        return Err(format!(
            "invalid --socket-owner \"{s}\": expected USER, USER:GROUP or :GROUP"
        ));
    }
    Ok((uid, gid))
}
