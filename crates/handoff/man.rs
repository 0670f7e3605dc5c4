//! Man pages from the clap definition: handoff(1) with the sections clap cannot know (EXIT
//! STATUS, SIGNALS, ENVIRONMENT, FILES, SEE ALSO), and one page per subcommand
//! (handoff-reload(1), ...), which handoff(1) lists.

use clap::CommandFactory;
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;

use crate::cli::Cli;

/// (term, its description) lists of a section.
type Items = &'static [(&'static str, &'static str)];

const EXIT_STATUS: Items = &[
    ("0", "Stopped on request; every child exited within the drain timeout."),
    ("1", "Could not start: a listener could not be bound, the command was not found or could not be executed."),
    ("2", "Invalid command line."),
    ("3", "Stopped on request, but something had to be killed with SIGKILL (the drain timeout passed, a second SIGINT, or handoff stop --force)."),
    ("the child's status", "With --restart never: the child's exit code, or 128+N when it was killed by signal N."),
];

const SIGNALS: Items = &[
    ("SIGHUP", "Reload: start a new generation; stop the old one once the new one is ready. SIGHUPs during a reload are coalesced into one more reload after it. Never forwarded to the child."),
    ("SIGTERM, SIGINT", "Shut down: the stop signal to every child, wait up to the drain timeout, SIGKILL what remains, remove the unix socket files handoff created, exit. A repeated SIGTERM changes nothing."),
    ("a second SIGINT", "Kill every child's process group at once and exit with status 3 (as handoff stop --force)."),
    ("SIGUSR1, SIGUSR2", "Forwarded to the serving child."),
];

const ENVIRONMENT: Items = &[
    ("HANDOFF_CONTROL", "The control socket, as --control."),
    ("RUNTIME_DIRECTORY, XDG_RUNTIME_DIR", "Where the default control socket and the notify sockets' directory are created."),
    ("LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES", "Sockets passed by a systemd socket unit: each is used for the --listen of the same name, or all of them when no --listen is given. Never passed on as they are: each child gets its own."),
    ("NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID", "The service manager's: handoff reports READY=1, RELOADING=1, STOPPING=1 and STATUS= there and pings the watchdog. Children never see them."),
    ("JOURNAL_STREAM", "When it names stderr, log lines start with their syslog priority (<3> to <7>) and have no timestamp."),
    ("RUST_LOG", "Log filter in tracing-subscriber's EnvFilter syntax (debug, handoff=debug) when --log-level is not given."),
    ("the child's", "LISTEN_FDS, LISTEN_PID (its own pid), LISTEN_FDNAMES, LISTEN_FDS_FIRST_FD=3, NOTIFY_SOCKET (its own), HANDOFF_GENERATION, SERVER_STARTER_PORT and SERVER_STARTER_GENERATION; the rest of handoff's environment."),
];

const FILES: Items = &[
    ("$RUNTIME_DIRECTORY/handoff.sock, $XDG_RUNTIME_DIR/handoff.sock, /run/handoff.sock (root), /tmp/handoff-UID.sock", "The default control socket: the first whose variable is set, else /run for root, else /tmp (mode 0600; the same user or root only). Every handoff also listens on the abstract address @handoff-control-PID."),
    ("$RUNTIME_DIRECTORY/handoff.PID.N, $XDG_RUNTIME_DIR/handoff.PID.N, /tmp/handoff.PID.N", "The directory of the children's notify sockets, handoff's own (mode 0700, 0711 with --user)."),
    ("--pid-file PATH", "handoff's pid, written atomically, removed at exit."),
    ("/usr/share/doc/handoff/examples/app.service, app.socket", "Example systemd units."),
];

/// Pages of subcommands that have an exit status of their own.
const SUB_EXIT_STATUS: &[(&str, Items)] = &[
    ("reload", &[("0", "The new generation serves and the old one was told to stop (or, with --no-wait, the reload was requested)."), ("1", "The reload failed (the old generation keeps serving), nothing is running there, or it is not a handoff you may trust."), ("2", "Invalid command line.")]),
    ("status", &[("0", "Status printed."), ("1", "Nothing is running there, or it is not a handoff you may trust."), ("2", "Invalid command line.")]),
    ("upgrade", &[("0", "The new image serves the control socket with the same pid and the same generations."), ("1", "The upgrade did not happen (the binary is missing, not executable, failed its check or crashed at start: the old image keeps running), nothing is running there, or it is not a handoff you may trust."), ("2", "Invalid command line.")]),
    ("stop", &[("0", "handoff has exited; every child drained in time."), ("1", "Nothing is running there, it is not a handoff you may trust, or it is still running after --timeout."), ("2", "Invalid command line."), ("3", "handoff has exited, but something had to be killed (the drain timeout passed, or --force).")]),
];

fn section(roff: &mut Roff, title: &str, items: Items) {
    roff.control("SH", [title]);
    for (term, text) in items {
        roff.control("TP", []);
        roff.text([bold(*term)]);
        roff.text([roman(*text)]);
    }
}

fn see_also(roff: &mut Roff, pages: &[String]) {
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(pages.join(", "))]);
}

fn source() -> String {
    format!("handoff {}", env!("CARGO_PKG_VERSION"))
}

/// The built command: subcommands get their display names (handoff-reload).
fn command() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// The subcommands that have a page, in order.
pub fn subcommands() -> Vec<String> {
    command()
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name().to_string())
        .collect()
}

/// Insert `extra` into clap_mangen's page before its after-help section (renamed EXAMPLES)
/// or, without one, before VERSION.
fn with_sections(page: Vec<u8>, extra: &Roff) -> String {
    let page = String::from_utf8_lossy(&page).replace(".SH EXTRA\n", ".SH EXAMPLES\n");
    // Without the preamble Roff writes first (the page has it already).
    let extra = extra.to_roff();
    let at = page
        .find(".SH EXAMPLES\n")
        .or_else(|| page.find(".SH VERSION\n"))
        .unwrap_or(page.len());
    format!("{}{extra}{}", &page[..at], &page[at..])
}

/// handoff(1), or handoff-`sub`(1); `None` for an unknown subcommand.
pub fn page(sub: Option<&str>) -> Option<String> {
    let cmd = command();
    let subs = subcommands();
    let mut extra = Roff::new();
    let mut buf = Vec::new();
    match sub {
        None => {
            Man::new(cmd).source(source()).render(&mut buf).ok()?;
            section(&mut extra, "EXIT STATUS", EXIT_STATUS);
            section(&mut extra, "SIGNALS", SIGNALS);
            section(&mut extra, "ENVIRONMENT", ENVIRONMENT);
            section(&mut extra, "FILES", FILES);
            let mut also: Vec<String> = subs.iter().map(|s| format!("handoff-{s}(1)")).collect();
            also.extend(
                ["systemd.socket(5)", "sd_notify(3)", "sd_listen_fds(3)"].map(String::from),
            );
            see_also(&mut extra, &also);
        }
        Some(name) => {
            let sc = cmd
                .get_subcommands()
                .find(|s| s.get_name() == name && !s.is_hide_set())?
                .clone();
            Man::new(sc).source(source()).render(&mut buf).ok()?;
            if let Some((_, items)) = SUB_EXIT_STATUS.iter().find(|(n, _)| *n == name) {
                section(&mut extra, "EXIT STATUS", items);
            }
            see_also(&mut extra, &["handoff(1)".to_string()]);
        }
    }
    Some(with_sections(buf, &extra))
}

/// Every page as (file name, roff): handoff.1, handoff-reload.1, ...
pub fn all() -> Vec<(String, String)> {
    let mut out = vec![("handoff.1".to_string(), page(None).unwrap_or_default())];
    for s in subcommands() {
        let p = page(Some(&s)).unwrap_or_default();
        out.push((format!("handoff-{s}.1"), p));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_the_main_page_names_exists() {
        let pages = all();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        for want in [
            "handoff.1",
            "handoff-reload.1",
            "handoff-status.1",
            "handoff-stop.1",
        ] {
            assert!(names.contains(&want), "{names:?}");
        }
        let main = &pages[0].1;
        for s in subcommands() {
            let r = format!("handoff\\-{s}(1)");
            assert!(main.contains(&r), "{r} not in handoff(1)");
            assert!(names.contains(&format!("handoff-{s}.1").as_str()));
        }
        for (name, p) in &pages {
            assert!(p.starts_with(".ie") || p.contains(".TH "), "{name}");
            assert!(
                p.contains("handoff(1)") || name == "handoff.1",
                "{name}: SEE ALSO"
            );
        }
    }

    #[test]
    fn the_main_page_has_the_sections_clap_cannot_know() {
        let main = page(None).expect("page");
        let heads: Vec<&str> = main.lines().filter(|l| l.starts_with(".SH")).collect();
        for s in [
            ".SH NAME",
            ".SH SYNOPSIS",
            ".SH OPTIONS",
            ".SH SUBCOMMANDS",
            ".SH \"EXIT STATUS\"",
            ".SH SIGNALS",
            ".SH ENVIRONMENT",
            ".SH FILES",
            ".SH \"SEE ALSO\"",
            ".SH EXAMPLES",
        ] {
            assert!(heads.contains(&s), "{s} not in {heads:?}");
        }
        let stop = page(Some("stop")).expect("stop page");
        assert!(stop.contains(".SH \"EXIT STATUS\""), "{stop}");
        assert!(page(Some("man")).is_none(), "hidden");
        assert!(page(Some("nope")).is_none());
    }
}
