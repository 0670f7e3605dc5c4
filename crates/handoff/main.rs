//! handoff: bind once, hand the sockets to any server, reload with zero failed requests.

mod adopt;
mod cli;
mod control;
mod driver;
mod errors;
mod intake;
mod logging;
mod man;
mod metrics;
mod pidfile;
mod sdnotify;
mod signals;
mod status;
mod upgrade;
mod watch;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use handoff_core::child_env::{self, ChildUser};
use handoff_core::supervisor::{exit_code, Policy, RestartPolicy, Supervisor};
use handoff_sys::listeners::{self, Listener};
use handoff_sys::notify_socket::RuntimeDir;
use handoff_sys::procfs;
use handoff_sys::spawn::{resolve_creds, resolve_program, Creds};

use crate::cli::{Adopt, Cli, Restart, RunArgs, Sub, TargetArgs};
use crate::driver::{ChildSpec, Driver, Services};
use crate::errors::Error;

/// `handoff --version`: the crate version and the git commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("HANDOFF_GIT_COMMIT"),
    ")"
);

fn main() -> ExitCode {
    // Before parsing: a usage error is a JSON line too with --log-format json.
    logging::Style::from_args(std::env::args_os()).set();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    errors::exit(match cli.sub {
        Some(sub) => client(sub),
        None => {
            // After `handoff upgrade`: the state the previous image passed (its fds are
            // named in it; the socket-activation variables were dropped for the exec).
            let resumed = upgrade::take_state();
            // Sockets from a systemd socket unit must be taken before anything else opens fds.
            let inherited = match resumed {
                Some(_) => Vec::new(),
                None => listeners::take_inherited(),
            };
            // Nothing handoff inherited (a CI runner's pipe, a shell's fd) may leak into
            // children: mark it all close-on-exec (also what an upgrade passed on).
            handoff_sys::cloexec_inherited(&[]);
            logging::init(cli.run.log_format, cli.run.log_level);
            match resumed {
                Some(Err(e)) => Err(Error::Start(format!(
                    "cannot take over after an upgrade: {e}"
                ))),
                Some(Ok(st)) => run(cli.run, inherited, Some(st)),
                None => run(cli.run, inherited, None),
            }
        }
    })
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
    let mut msg = first.join(" ").trim_start_matches("error: ").to_string();
    // clap's tips come in later paragraphs: keep "a similar argument exists" (not the tip
    // to pass an option as a value with `--`, which misleads here).
    use clap::error::{ContextKind, ContextValue};
    let arg = |k| match e.get(k) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => v.first().cloned(),
        _ => None,
    };
    if let Some(s) = arg(ContextKind::SuggestedArg) {
        msg.push_str(&format!("; a similar argument exists: '{s}'"));
    } else if let Some(s) = arg(ContextKind::SuggestedSubcommand) {
        msg.push_str(&format!("; a similar subcommand exists: '{s}'"));
    } else if let (ErrorKind::UnknownArgument, Some(bad)) = (e.kind(), arg(ContextKind::InvalidArg))
    {
        // A word where handoff expected an option: the server's command without `--`
        // (`handoff -l :8080 ./server`), or a misspelt subcommand.
        let run_usage = text.contains("-- <COMMAND>");
        if run_usage && !bad.starts_with('-') {
            msg.push_str(&without_dashes(&bad));
        }
    }
    errors::exit(Err(Error::Usage(msg)))
}

/// The hint for `bad`, a word given where handoff expected an option: a subcommand it is
/// close to, or else the command line with `--` before the server's command.
fn without_dashes(bad: &str) -> String {
    use clap::CommandFactory;
    let subs: Vec<String> = Cli::command()
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name().to_string())
        .collect();
    if let Some(s) = subs.iter().find(|s| edit_distance(s, bad) <= 2) {
        return format!("; a similar subcommand exists: '{s}'");
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let i = args.iter().position(|a| a == bad).unwrap_or(args.len());
    let (opts, cmd) = args.split_at(i);
    let mut line = vec!["handoff".to_string()];
    line.extend(opts.iter().cloned());
    line.push("--".into());
    line.extend(cmd.iter().cloned());
    format!("; put -- before the server's command: {}", line.join(" "))
}

/// Levenshtein distance, for "a similar subcommand exists".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

// ---- handoff reload | status | stop -----------------------------------------------------

fn target(t: TargetArgs) -> Result<control::Target, Error> {
    Ok(match (t.control, t.pid_file) {
        (_, Some(f)) => {
            control::Target::Pid(control::read_pid_file(&f).map_err(Error::Control)?, f)
        }
        (Some(p), None) => control::Target::Path(p),
        (None, None) => control::Target::Path(control::default_path()),
    })
}

fn client(sub: Sub) -> Result<i32, Error> {
    use control::{call, Command, Request, VERSION as V};
    let restart = matches!(sub, Sub::Restart { .. });
    use std::io::Write;
    let request = |cmd, wait| Request {
        v: V,
        cmd,
        wait,
        force: false,
        binary: None,
    };
    // Printing the answer is the point of a subcommand, but a closed stdout must not panic.
    let say = |line: &str| {
        let _ = writeln!(std::io::stdout(), "{line}");
    };
    match sub {
        Sub::Reload {
            target: t,
            no_wait,
            timeout,
        }
        | Sub::Restart {
            target: t,
            no_wait,
            timeout,
        } => {
            let cmd = if restart {
                Command::Restart
            } else {
                Command::Reload
            };
            let req = request(cmd, !no_wait);
            let (v, _) = call(&target(t)?, &req, Some(timeout), false).map_err(Error::Control)?;
            let msg = v["message"].as_str().or(v["error"].as_str()).unwrap_or("");
            if v["ok"] == true {
                say(msg);
                Ok(0)
            } else {
                logging::error_line(&format!("handoff: reload failed: {msg}"));
                Ok(exit_code::FAILURE)
            }
        }
        Sub::Status {
            target: t,
            json,
            watch: true,
        } => {
            let tg = target(t)?;
            let mut last = String::new();
            loop {
                let req = request(Command::Status, false);
                let v = match call(&tg, &req, Some(Duration::from_secs(10)), false) {
                    Ok((v, _)) => v,
                    // handoff has gone: the end of what there was to follow.
                    Err(_) if !last.is_empty() => return Ok(0),
                    Err(e) => return Err(Error::Control(e)),
                };
                let line = if json {
                    let mut st = v["status"].clone();
                    status::strip_clock(&mut st);
                    st.to_string()
                } else {
                    status::summary(&v["status"])
                };
                if line != last {
                    if json {
                        say(&v["status"].to_string());
                    } else {
                        say(&line);
                    }
                    last = line;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Sub::Status {
            target: t, json, ..
        } => {
            let req = request(Command::Status, false);
            let (v, _) = call(&target(t)?, &req, Some(Duration::from_secs(10)), false)
                .map_err(Error::Control)?;
            if v["ok"] != true {
                let why = v["error"].as_str().unwrap_or("status failed");
                return Err(Error::Control(why.to_string()));
            }
            if json {
                say(&v["status"].to_string());
            } else {
                let text = status::text(&v["status"]);
                say(text.trim_end());
            }
            // A probe as it stands, as `systemctl status` is: 0 only when a generation serves.
            Ok(if v["status"]["serving"].is_null() {
                exit_code::NOT_SERVING
            } else {
                0
            })
        }
        Sub::Upgrade {
            target: t,
            binary,
            timeout,
        } => {
            let binary = match binary {
                Some(b) => Some(
                    std::path::absolute(&b)
                        .map_err(|e| Error::Usage(format!("--binary {}: {e}", b.display())))?,
                ),
                None => None,
            };
            let tg = target(t)?;
            upgrade_client(&tg, binary, timeout)
        }
        Sub::CheckUpgrade { state_version } => upgrade::check(state_version),
        Sub::Completions { shell } => {
            use clap::CommandFactory;
            // Into a buffer: clap_complete panics when its writer fails (`| head`).
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "handoff", &mut buf);
            say(&String::from_utf8_lossy(&buf));
            Ok(0)
        }
        Sub::Man { page, dir } => {
            if let Some(dir) = dir {
                std::fs::create_dir_all(&dir).map_err(Error::Output)?;
                for (name, text) in man::all() {
                    std::fs::write(dir.join(&name), text).map_err(Error::Output)?;
                    say(&dir.join(name).display().to_string());
                }
                return Ok(0);
            }
            let text = man::page(page.as_deref()).ok_or_else(|| {
                Error::Usage(format!(
                    "no man page for {:?}; pages: {}",
                    page.unwrap_or_default(),
                    man::subcommands().join(", ")
                ))
            })?;
            std::io::stdout()
                .write_all(text.as_bytes())
                .map_err(Error::Output)?;
            Ok(0)
        }
        Sub::Stop {
            target: t,
            force,
            timeout,
        } => {
            let req = Request {
                force,
                ..request(Command::Stop, true)
            };
            let tg = target(t)?;
            let (v, last) = call(&tg, &req, Some(timeout), true).map_err(Error::Control)?;
            if v["ok"] != true {
                let why = v["error"].as_str().unwrap_or("stop failed");
                return Err(Error::Control(why.to_string()));
            }
            // The connection closed when handoff was about to exit; wait for the process.
            if let Some(pid) = v["pid"].as_u64().and_then(|p| u32::try_from(p).ok()) {
                let end = Instant::now() + timeout;
                while procfs::is_running(pid) {
                    if Instant::now() > end {
                        return Err(Error::Control(format!(
                            "handoff (pid {pid}) is still running after {timeout:?}"
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            // handoff's own exit code, when it told us (protocol 1 servers since 0.2).
            match last.as_ref().and_then(|l| l["code"].as_i64()) {
                Some(c) if c == i64::from(exit_code::FORCED) => {
                    say("stopped, but some processes had to be killed (drain timeout, or stop --force)");
                    Ok(exit_code::FORCED)
                }
                _ => {
                    say("stopped");
                    Ok(0)
                }
            }
        }
    }
}

/// `handoff upgrade`: ask, then make sure the new image serves with the same pid and the
/// same generations (its answer says so; a status asked afterwards must agree).
fn upgrade_client(
    tg: &control::Target,
    binary: Option<std::path::PathBuf>,
    timeout: Duration,
) -> Result<i32, Error> {
    use control::{call, Command, Request, VERSION as V};
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    let status = |tg: &control::Target| -> Result<serde_json::Value, String> {
        let req = Request {
            v: V,
            cmd: Command::Status,
            wait: false,
            force: false,
            binary: None,
        };
        let (v, _) = call(tg, &req, Some(Duration::from_secs(10)), false)?;
        if v["ok"] != true {
            return Err(v["error"].as_str().unwrap_or("status failed").to_string());
        }
        Ok(v["status"].clone())
    };
    let fail = |why: String| {
        logging::error_line(&format!("handoff: upgrade failed: {why}"));
        Ok(exit_code::FAILURE)
    };
    let before = status(tg).map_err(Error::Control)?;
    let req = Request {
        v: V,
        cmd: Command::Upgrade,
        wait: true,
        force: false,
        binary,
    };
    let answer = call(tg, &req, Some(timeout), false);
    if let Ok((v, _)) = &answer {
        if v["ok"] != true {
            let why = v["error"].as_str().unwrap_or("no reason given");
            if why.contains("unknown variant `upgrade`") {
                return fail(format!(
                    "the running handoff ({}) cannot upgrade itself; restart it instead",
                    before["version"].as_str().unwrap_or("?")
                ));
            }
            return fail(why.to_string());
        }
    }
    // The new image answered (or the connection went with the old one): check what serves.
    let same = |after: &serde_json::Value| -> Result<(), String> {
        if after["pid"] != before["pid"] {
            return Err(format!(
                "pid {} answers instead of {}",
                after["pid"], before["pid"]
            ));
        }
        if after["upgrades"].as_u64() != before["upgrades"].as_u64().map(|n| n + 1) {
            return Err("the running handoff was not upgraded".into());
        }
        let newest = before["generations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g["gen"].as_u64())
            .max()
            .unwrap_or(0);
        for g in after["generations"].as_array().into_iter().flatten() {
            let was = before["generations"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|b| b["gen"] == g["gen"]);
            match was {
                Some(b) if b["pid"] != g["pid"] && !b["pid"].is_null() => {
                    return Err(format!(
                        "generation {} has pid {} instead of {}",
                        g["gen"], g["pid"], b["pid"]
                    ))
                }
                None if g["gen"].as_u64().unwrap_or(0) <= newest => {
                    return Err(format!("generation {} appeared from nowhere", g["gen"]))
                }
                _ => {}
            }
        }
        Ok(())
    };
    let mut last_err = match &answer {
        Err(e) => e.clone(),
        Ok(_) => String::new(),
    };
    loop {
        match status(tg) {
            Ok(after) => {
                return match same(&after) {
                    Ok(()) => {
                        let gens: Vec<String> = after["generations"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|g| format!("{} (pid {})", g["gen"], g["pid"]))
                            .collect();
                        println!(
                            "upgraded handoff (pid {}) from {} to {} in {:.0} ms; generations {} carried over",
                            after["pid"],
                            before["version"].as_str().unwrap_or("?"),
                            after["version"].as_str().unwrap_or("?"),
                            t0.elapsed().as_secs_f64() * 1e3,
                            if gens.is_empty() { "none".to_string() } else { gens.join(", ") }
                        );
                        Ok(0)
                    }
                    Err(why) if answer.is_err() => fail(format!("{last_err}; {why}")),
                    Err(why) => fail(why),
                };
            }
            Err(e) => last_err = e,
        }
        if Instant::now() > deadline {
            return fail(format!("no answer within {timeout:?}: {last_err}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- running a server -------------------------------------------------------------------

fn run(
    cli: RunArgs,
    inherited: Vec<(std::os::fd::OwnedFd, String)>,
    resumed: Option<upgrade::State>,
) -> Result<i32, Error> {
    // Validate everything before anything starts: nothing half-started on bad input.
    if let Some((i, j)) = handoff_core::listen::find_duplicate(&cli.listen) {
        return Err(Error::Usage(format!(
            "--listen {} is given twice (as --listen number {} and {}); give each address once",
            cli.listen[j].addr,
            i + 1,
            j + 1
        )));
    }
    // After an upgrade: the program as resolved at the first start.
    let program = match &resumed {
        Some(st) => st.program.clone(),
        None => resolve_program(&cli.command[0]).map_err(Error::Resolve)?,
    };
    let somax = listeners::somaxconn();
    let backlog = cli
        .backlog
        .map_or(somax, |b| (b.min(i32::MAX as u32) as i32).min(somax));
    let euid = handoff_sys::euid();
    let (creds, base_env): (Option<Creds>, _) = match &cli.user {
        Some(u) => {
            let (c, name, home) = resolve_creds(u, cli.group.as_deref()).map_err(Error::Resolve)?;
            if euid != 0 && c.uid != euid {
                return Err(Error::Start(format!(
                    "cannot run the child as {u}: handoff is not running as root"
                )));
            }
            let user = ChildUser {
                name: &name,
                home: home.as_os_str(),
            };
            (Some(c), child_env::base(std::env::vars_os(), Some(user)))
        }
        None if cli.group.is_some() => {
            return Err(Error::Start(
                "--group needs --user (the user whose groups to use)".into(),
            ))
        }
        None => (None, child_env::base(std::env::vars_os(), None)),
    };
    let socket_owner = match &cli.socket_owner {
        Some(o) => Some(parse_owner(o).map_err(Error::Start)?),
        None => None,
    };
    let pid_file = match &cli.pid_file {
        Some(p) if resumed.is_none() => Some(pidfile::PidFile::check(p).map_err(Error::Start)?),
        _ => None,
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
        reload_signal: cli.reload_signal,
        wrapper_check_after: Some(Duration::from_secs(1)),
        detect_interval: (cli.detect_ready != crate::cli::DetectReady::Off)
            .then_some(Duration::from_millis(20)),
        detect_grace: cli.detect_grace,
        detect_prove: cli.detect_ready == crate::cli::DetectReady::Auto,
        ..Policy::default()
    };
    if let Some(m) = cli.metrics {
        if let Some(l) = shares_port(m, &cli.listen) {
            return Err(Error::Usage(format!(
                "--metrics {m} would share a port with --listen {l}; give the metrics a port of their own"
            )));
        }
    }
    for w in cli.watch.iter().filter(|_| resumed.is_none()) {
        if !w.exists() {
            return Err(Error::Start(format!(
                "cannot watch {}: no such file or directory",
                w.display()
            )));
        }
    }
    let child = ChildSpec {
        program,
        argv: cli.command.clone(),
        base_env,
        creds: creds.clone(),
        listen_pid: !cli.no_listen_pid,
        stop_signal: cli.stop_signal,
    };
    let manager = sdnotify::SdNotify::from_env();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Start(format!("cannot start the event loop: {e}")))?;
    rt.block_on(async move {
        // Signal handlers first: a SIGHUP before they exist would kill handoff.
        let signals = signals::Signals::new()
            .map_err(|e| Error::Start(format!("cannot install signal handlers: {e}")))?;
        handoff_sys::reaper::become_subreaper()
            .map_err(|e| Error::Start(format!("cannot become a child subreaper: {e}")))?;
        if let Some(st) = resumed {
            // The handlers exist: what arrived during the exec (held pending) comes now.
            handoff_sys::upgrade::unblock_signals();
            handoff_sys::upgrade::set_comm("handoff");
            return Ok(resume(st, &cli, policy, child, manager)
                .map_err(|e| Error::Start(format!("cannot take over after an upgrade: {e}")))?
                .run(signals)
                .await);
        }
        // Before binding: a generation a killed handoff left in its cgroup still holds the port.
        let cgroups = if cli.cgroups {
            Some(handoff_sys::cgroup::Generations::setup())
        } else {
            None
        };
        let listeners = setup_listeners(&cli, inherited, backlog, cli.socket_mode, socket_owner)
            .map_err(Error::Start)?;
        // From here on, `listeners` removes its socket files if we return early.
        let guard = ListenerGuard(listeners);
        let control = setup_control(&cli).map_err(Error::Start)?;
        // Stays handoff's: mode 0711 if the children run as another user (see RuntimeDir).
        let dir = RuntimeDir::create_for(creds.as_ref().map(|c| c.uid)).map_err(|e| {
            Error::Start(format!(
                "cannot create a runtime directory for notify sockets: {e}"
            ))
        })?;
        let pid_file = match pid_file {
            Some(p) => Some(p.write().map_err(Error::Start)?),
            None => None,
        };
        let watcher = watch::start(&cli.watch).map_err(Error::Start)?;
        let metrics = match cli.metrics {
            Some(addr) => {
                let l = std::net::TcpListener::bind(addr).map_err(|e| {
                    Error::Start(format!("cannot serve metrics on {addr}: {e}"))
                })?;
                let local = l.local_addr().map_or(addr, |a| a);
                tracing::info!(event = "metrics", addr = %local, msg = "serving metrics at /metrics", "metrics at http://{local}/metrics");
                Some((metrics::Metrics::default(), l))
            }
            None => None,
        };
        let mut listeners = guard.into_inner();
        store_listeners(&mut listeners, manager.as_ref(), cli.fd_store);
        let adopt = setup_adopt(cli.adopt, &listeners);
        for (i, l) in listeners.iter().enumerate() {
            let adoptable = adopt.is_some() && l.kind == listeners::Kind::Tcp;
            tracing::info!(event = "listening", index = i, fd = 3 + i, name = %l.name, addr = %l.local,
                kind = l.kind.as_str(), inherited = l.inherited, adopt = adoptable, msg = "listening",
                "listening on {} (fd {} in the child, name {}{}{})", l.local, 3 + i, l.name,
                if l.inherited { ", from the service manager" } else { "" },
                if adoptable { ", also given to a child that binds it itself" } else { "" });
        }
        // Said once start-up has succeeded: a failed start keeps to its one error line.
        for p in dir.stale_removed() {
            tracing::info!(event = "stale_removed", path = %p.display(), msg = "removed what a handoff no longer running left",
                "removed {}, left by a handoff that is no longer running", p.display());
        }
        let cgroups = match cgroups {
            None => None,
            Some(Ok(g)) => {
                for c in g.cleaned() {
                    tracing::warn!(event = "stale_cgroup", cgroup = %c.cgroup, killed = c.killed.len(), msg = "killed what a previous handoff left in its cgroup",
                        "killed {} process(es) a previous handoff left in cgroup {}", c.killed.len(), c.cgroup);
                }
                Some(g)
            }
            Some(Err(why)) => {
                tracing::warn!(event = "no_cgroups", reason = %why, msg = "no cgroups: a generation is tracked by its process group", "{why}; a generation is tracked by its process group");
                None
            }
        };
        let sup = Supervisor::new(policy, Instant::now());
        let services = Services {
            control,
            pid_file,
            manager,
            watcher,
            probe: cli.ready_probe.clone(),
            metrics,
            cgroups,
            adopt,
        };
        Ok(Driver::new(sup, listeners, child, dir, services)
            .run(signals)
            .await)
    })
}

/// The driver of an image started by `handoff upgrade`: everything the previous image
/// handed over, taken back by fd or reopened by path; nothing is bound, created or cleaned.
fn resume(
    st: upgrade::State,
    cli: &RunArgs,
    policy: Policy,
    child: ChildSpec,
    manager: Option<sdnotify::SdNotify>,
) -> Result<Driver, String> {
    use handoff_sys::notify_socket::NotifySocket;
    use handoff_sys::upgrade::take_fd;
    use std::collections::HashMap;
    // The instant of the export in this image's clock (the exec took some time).
    let took = handoff_sys::upgrade::monotonic_ns().saturating_sub(st.exported_at_ns);
    let now = Instant::now();
    let then = now.checked_sub(Duration::from_nanos(took)).unwrap_or(now);
    let at = |rel: i64| {
        let d = Duration::from_nanos(rel.unsigned_abs());
        if rel >= 0 {
            then + d
        } else {
            then.checked_sub(d).unwrap_or(then)
        }
    };
    let listeners = st
        .listeners
        .into_iter()
        .map(|l| {
            let what = format!("listener {}", l.local);
            Listener::adopt(l).map_err(|e| format!("{what}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let dir = RuntimeDir::adopt(st.runtime_dir.0, st.runtime_dir.1)
        .map_err(|e| format!("runtime directory: {e}"))?;
    let mut control = driver::ControlSockets::default();
    for fd in st.control {
        let fd = take_fd(fd, "control socket").map_err(|e| e.to_string())?;
        control
            .listeners
            .push(std::os::unix::net::UnixListener::from(fd));
    }
    control.file = st
        .control_file
        .map(|(path, ino)| control::SocketFile::adopt(path, ino));
    let pid_file = st.pid_file.map(pidfile::Written::adopt);
    let metrics = match st.metrics {
        Some((fd, c)) => {
            let fd = take_fd(fd, "metrics listener").map_err(|e| e.to_string())?;
            Some((
                metrics::Metrics::default(),
                std::net::TcpListener::from(fd),
                c,
            ))
        }
        None => None,
    };
    let notify = st
        .notify
        .into_iter()
        .map(|n| {
            NotifySocket::adopt(n.path, n.fd)
                .map(|s| (n.gen, s, n.leader))
                .map_err(|e| format!("notify socket of generation {}: {e}", n.gen))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let requests = st
        .requests
        .into_iter()
        .filter_map(|(r, fd)| take_fd(fd, "control connection").ok().map(|fd| (r, fd)))
        .collect();
    let (cgroups, cgroup_of, retiring) = match st.cgroups {
        Some(c) => {
            let g = handoff_sys::cgroup::Generations::reopen(c.generations)?;
            let mut live = HashMap::new();
            for (gen, name) in c.live {
                match g.reopen_gen(&name) {
                    Ok(cg) => {
                        live.insert(gen, cg);
                    }
                    Err(e) => {
                        tracing::warn!(event = "cgroup_error", gen, error = %e, msg = "cannot open the generation's cgroup again; tracked by its process group",
                        "cannot open the cgroup of generation {gen} again: {e}; it is tracked by its process group")
                    }
                }
            }
            let retiring = c
                .retiring
                .iter()
                .filter_map(|n| g.reopen_gen(n).ok())
                .collect();
            (Some(g), live, retiring)
        }
        None => (None, HashMap::new(), Vec::new()),
    };
    // A watched path that vanished since the first start costs the watch, not the service.
    let watcher = watch::start(&cli.watch).unwrap_or_else(|e| {
        tracing::warn!(event = "watch_error", error = %e, msg = "cannot watch after the upgrade", "{e}");
        None
    });
    // Bind adoption: each generation's notification fd, answered again from here.
    let adopt = st
        .adopt
        .map(|a| adopt::Adoption::import(a, &listeners))
        .transpose()?;
    let sup = Supervisor::import(policy, st.supervisor, then);
    let counters = metrics.as_ref().map(|m| m.2.clone());
    let services = Services {
        control,
        pid_file,
        manager,
        watcher,
        probe: cli.ready_probe.clone(),
        metrics: metrics.map(|(m, l, _)| (m, l)),
        cgroups,
        adopt,
    };
    let resumed = driver::Resumed {
        from: st.written_by,
        started: at(st.started),
        probes: st.probes.into_iter().collect(),
        requests,
        next_request: st.next_request,
        notify,
        cgroup_of,
        retiring,
        metrics: counters,
        queues: st.queues,
    };
    let program = child.program.clone();
    Ok(Driver::new(sup, listeners, child, dir, services).resume(resumed, st.binary, program))
}

/// `--fd-store`: put the listeners handoff bound (with a name: the store gives them back
/// by name, as `LISTEN_FDNAMES`) in the service manager's file-descriptor store. What it
/// received (a socket unit's, or the store's after a restart) is the manager's already.
fn store_listeners(
    listeners: &mut [Listener],
    manager: Option<&sdnotify::SdNotify>,
    when: cli::FdStore,
) {
    let Some(m) = manager else { return };
    let room = match when {
        cli::FdStore::Never => return,
        cli::FdStore::Auto => match m.fd_store {
            Some(n) => n,
            None => return,
        },
        cli::FdStore::Always => m.fd_store.unwrap_or(usize::MAX),
    };
    let mut stored = Vec::new();
    for l in listeners.iter_mut().filter(|l| !l.inherited) {
        if l.name == "unknown" || l.name.is_empty() {
            tracing::warn!(event = "fd_store_unnamed", addr = %l.local, msg = "listener not put in the fd store: it has no name (--listen NAME=ADDR)",
                "listener {} has no name (--listen NAME=ADDR): not put in the fd store, so a restart of handoff closes it", l.local);
            continue;
        }
        if stored.len() >= room {
            tracing::warn!(event = "fd_store_full", addr = %l.local, msg = "listener not put in the fd store: FileDescriptorStoreMax is too small",
                "listener {} not put in the fd store: it holds {room} (FileDescriptorStoreMax=)", l.local);
            continue;
        }
        match m.store_fd(&l.name, std::os::fd::AsFd::as_fd(l)) {
            Ok(()) => {
                l.stored = true;
                stored.push(l.name.clone());
            }
            Err(e) => {
                tracing::warn!(event = "fd_store_error", name = %l.name, error = %e, msg = "cannot put the listener in the service manager's fd store",
                    "cannot put listener {} in the service manager's fd store: {e}", l.name);
            }
        }
    }
    if !stored.is_empty() {
        tracing::info!(event = "fd_stored", names = %stored.join(","), msg = "listeners put in the service manager's fd store",
            "listeners {} put in the service manager's fd store: they outlive a restart of handoff", stored.join(", "));
    }
}

/// Bind adoption, if asked for, useful (a TCP listener) and possible; says why not, once.
fn setup_adopt(mode: Adopt, listeners: &[Listener]) -> Option<adopt::Adoption> {
    if mode == Adopt::Off {
        return None;
    }
    let a = adopt::Adoption::new(listeners)?;
    match handoff_sys::adopt::probe() {
        Ok(s) => {
            if s.needs_nnp {
                tracing::info!(event = "adopt_no_new_privs",
                    msg = "children run with no_new_privs: setuid programs they start gain no privileges",
                    "bind adoption: handoff lacks CAP_SYS_ADMIN, so children run with no_new_privs: setuid programs they start (sudo, su, ping) do not gain privileges; --adopt off if they must");
            }
            Some(a)
        }
        Err(why) => {
            tracing::warn!(event = "adopt_unavailable", error = %why,
                msg = "bind adoption is unavailable; LISTEN_FDS servers work as usual",
                "bind adoption is unavailable: {why}; servers that take LISTEN_FDS work as usual, a server that binds a --listen address itself will get EADDRINUSE");
            None
        }
    }
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
                    let access = listeners::UnixAccess { mode, owner };
                    let l =
                        listeners::bind_with(spec, backlog, &access).map_err(|e| e.to_string())?;
                    out.0.push(l);
                }
            }
        }
        for (_, name) in inherited.into_iter().flatten() {
            tracing::warn!(event = "unused_socket", name = %name,
                msg = "socket from the service manager matches no --listen name; closing it",
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
                Err(e) => tracing::warn!(event = "control_unavailable", error = %e,
                    msg = "running without a control socket file (the pid file, signals and the abstract address still work)",
                    "{e}; running without a control socket file (the pid file, signals and the abstract address still work)"),
            }
        }
    }
    match control::bind_abstract() {
        Ok(l) => c.listeners.push(l),
        Err(e) => tracing::warn!(event = "control_abstract_unavailable", error = %e,
            msg = "cannot listen on the abstract control address",
            "cannot listen on the abstract control address: {e}"),
    }
    Ok(c)
}

/// The `--listen` address a metrics address would collide with: the same port, on the same
/// address or where either is a wildcard.
fn shares_port(
    m: std::net::SocketAddr,
    listen: &[handoff_core::listen::ListenSpec],
) -> Option<String> {
    use handoff_core::listen::{Host, ListenAddr};
    if m.port() == 0 {
        return None;
    }
    listen.iter().find_map(|spec| {
        let ListenAddr::Tcp(a) = &spec.addr else {
            return None;
        };
        let same_host = match &a.host {
            Host::AllInterfaces => true,
            Host::Ip(ip) => ip.is_unspecified() || m.ip().is_unspecified() || *ip == m.ip(),
            Host::Name(_) => true, // resolved later: assume the worst
        };
        (a.port == m.port() && same_host).then(|| spec.addr.to_string())
    })
}

/// `--socket-owner USER:GROUP`, `USER` or `:GROUP`.
fn parse_owner(s: &str) -> Result<(Option<u32>, Option<u32>), String> {
    let (u, g) = s.split_once(':').unwrap_or((s, ""));
    let uid = if u.is_empty() {
        None
    } else {
        Some(resolve_creds(u, None).map_err(|e| e.to_string())?.0.uid)
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
