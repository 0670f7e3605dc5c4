//! handoff: bind once, hand the sockets to any server, reload with zero failed requests.

mod cli;
mod driver;
mod logging;

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use handoff_core::supervisor::{exit_code, Policy, RestartPolicy, Supervisor};
use handoff_sys::listeners;
use handoff_sys::notify_socket::RuntimeDir;
use handoff_sys::spawn::{resolve_program, SCRUBBED_ENV};

use crate::cli::{Cli, Restart};
use crate::driver::{ChildSpec, Driver};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    // Nothing handoff inherited (a CI runner's pipe, a shell's fd) may leak into children.
    handoff_sys::cloexec_inherited(&[]);
    logging::init(cli.log_format);
    match run(cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(msg) => {
            eprintln!("handoff: error: {msg}");
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
    eprintln!("handoff: error: {msg} (see handoff --help)");
    ExitCode::from(exit_code::USAGE as u8)
}

fn run(cli: Cli) -> Result<i32, String> {
    // Everything is validated before anything starts: program, listeners, runtime directory.
    let program = resolve_program(&cli.command[0])?;
    let somax = listeners::somaxconn();
    let backlog = cli
        .backlog
        .map_or(somax, |b| (b.min(i32::MAX as u32) as i32).min(somax));
    let policy = Policy {
        stop_signal: cli.stop_signal,
        drain_timeout: cli.drain_timeout,
        ready_timeout: cli.ready_timeout,
        ready_after: cli.ready_after,
        restart: match cli.restart {
            Restart::Always => RestartPolicy::Always,
            Restart::Never => RestartPolicy::Never,
        },
        ..Policy::default()
    };
    let base_env = std::env::vars_os()
        .filter(|(k, _)| !SCRUBBED_ENV.iter().any(|s| k == s))
        .collect();
    let child = ChildSpec {
        program,
        argv: cli.command.clone(),
        base_env,
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the event loop: {e}"))?;
    rt.block_on(async move {
        // Signal handlers first: a SIGHUP before they exist would kill handoff.
        let driver_signals_ready = driver::Signals::new();
        handoff_sys::reaper::become_subreaper()
            .map_err(|e| format!("cannot become a child subreaper: {e}"))?;
        let listeners = listeners::bind_all(&cli.listen, backlog).map_err(|e| e.to_string())?;
        for (i, l) in listeners.iter().enumerate() {
            tracing::info!(event = "listening", index = i, fd = 3 + i, name = %l.name, addr = %l.local, kind = l.kind,
                "listening on {} (fd {} in the child, name {})", l.local, 3 + i, l.name);
        }
        let dir = RuntimeDir::create().map_err(|e| {
            for l in &listeners {
                if let Some(f) = &l.unix_file {
                    f.remove();
                }
            }
            format!("cannot create a runtime directory for notify sockets: {e}")
        })?;
        let sup = Supervisor::new(policy, Instant::now());
        Ok(Driver::new(sup, listeners, child, dir).run(driver_signals_ready).await)
    })
}
