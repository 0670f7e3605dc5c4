//! The child's environment contract, in one place: what a child never inherits from handoff,
//! and what each generation is given (systemd's socket activation plus Server::Starter's
//! variables). `LISTEN_PID` is not here: it is the child's own pid, written after fork by
//! handoff-sys's spawn into a slot it preallocates.

use std::ffi::{OsStr, OsString};

/// An environment: ordered `(name, value)` pairs.
pub type Env = Vec<(OsString, OsString)>;

/// Variables a child must never inherit from handoff's own environment: they describe
/// handoff's sockets and service manager, not the child's (see the protocol notes in README).
pub const SCRUBBED: &[&str] = &[
    "LISTEN_PID",
    "LISTEN_PIDFDID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "LISTEN_FDS_FIRST_FD",
    "NOTIFY_SOCKET",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
    "FDSTORE",
    "MEMORY_PRESSURE_WATCH",
    "MEMORY_PRESSURE_WRITE",
    "SERVER_STARTER_PORT",
    "SERVER_STARTER_GENERATION",
    "HANDOFF_GENERATION",
];

/// The user a child runs as (`--user`), for the variables systemd sets for `User=`.
pub struct ChildUser<'a> {
    pub name: &'a str,
    pub home: &'a OsStr,
}

/// handoff's environment minus [`SCRUBBED`]; with `--user`, the child's own `USER`,
/// `LOGNAME` and `HOME`, as systemd sets them for `User=`.
pub fn base(vars: impl IntoIterator<Item = (OsString, OsString)>, user: Option<ChildUser>) -> Env {
    let mut env: Env = vars
        .into_iter()
        .filter(|(k, _)| !SCRUBBED.iter().any(|s| k == s))
        .collect();
    if let Some(u) = user {
        env.retain(|(k, _)| k != "USER" && k != "LOGNAME" && k != "HOME");
        env.push(("USER".into(), u.name.into()));
        env.push(("LOGNAME".into(), u.name.into()));
        env.push(("HOME".into(), u.home.into()));
    }
    env
}

/// What the environment says of one listener.
pub struct ListenerEnv<'a> {
    /// Its `LISTEN_FDNAMES` entry.
    pub name: &'a str,
    /// Its `SERVER_STARTER_PORT` form (`127.0.0.1:8080`, `/tmp/app.sock`); `None` for UDP,
    /// which Server::Starter does not know.
    pub starter_addr: Option<&'a str>,
}

/// The environment of generation `gen`, whose listeners sit at fds 3.. in order.
pub fn generation(base: &Env, listeners: &[ListenerEnv], gen: u64, notify_socket: &OsStr) -> Env {
    let mut env = base.clone();
    if !listeners.is_empty() {
        let names: Vec<&str> = listeners.iter().map(|l| l.name).collect();
        env.push(("LISTEN_FDS".into(), listeners.len().to_string().into()));
        env.push(("LISTEN_FDNAMES".into(), names.join(":").into()));
        // listenfd's extension; costs nothing, and makes listenfd-based servers exact.
        env.push(("LISTEN_FDS_FIRST_FD".into(), "3".into()));
    }
    env.push(("NOTIFY_SOCKET".into(), notify_socket.into()));
    env.push(("HANDOFF_GENERATION".into(), gen.to_string().into()));
    // Server::Starter's variables, so apps written for start_server (Starman,
    // go-server-starter) run unchanged: "127.0.0.1:8080=3;/tmp/app.sock=4".
    let starter: Vec<String> = listeners
        .iter()
        .enumerate()
        .filter_map(|(i, l)| Some(format!("{}={}", l.starter_addr?, 3 + i)))
        .collect();
    if !starter.is_empty() {
        env.push(("SERVER_STARTER_PORT".into(), starter.join(";").into()));
        env.push(("SERVER_STARTER_GENERATION".into(), gen.to_string().into()));
    }
    env
}

/// The environment of a `--ready-probe` run for generation `gen` (main process `pid`).
pub fn probe(base: &Env, gen: u64, pid: u32) -> Env {
    let mut env = base.clone();
    env.push(("HANDOFF_CHILD_PID".into(), pid.to_string().into()));
    env.push(("HANDOFF_GENERATION".into(), gen.to_string().into()));
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(env: &'a Env, k: &str) -> Option<&'a OsStr> {
        env.iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_os_str())
    }

    #[test]
    fn handoffs_own_socket_variables_never_reach_the_child() {
        let vars = [
            ("LISTEN_FDS", "2"),
            ("NOTIFY_SOCKET", "/run/systemd/notify"),
            ("WATCHDOG_USEC", "1"),
            ("PATH", "/bin"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = base(vars, None);
        assert_eq!(env, vec![("PATH".into(), "/bin".into())]);
    }

    #[test]
    fn a_user_gets_its_own_user_logname_and_home() {
        let vars = [("USER", "root"), ("HOME", "/root"), ("LANG", "C")]
            .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = base(
            vars,
            Some(ChildUser {
                name: "app",
                home: OsStr::new("/srv/app"),
            }),
        );
        assert_eq!(get(&env, "USER"), Some(OsStr::new("app")));
        assert_eq!(get(&env, "LOGNAME"), Some(OsStr::new("app")));
        assert_eq!(get(&env, "HOME"), Some(OsStr::new("/srv/app")));
        assert_eq!(env.iter().filter(|(k, _)| k == "USER").count(), 1);
    }

    #[test]
    fn generation_environment_is_socket_activation_plus_server_starter() {
        let l = [
            ListenerEnv {
                name: "web",
                starter_addr: Some("127.0.0.1:8080"),
            },
            ListenerEnv {
                name: "dns",
                starter_addr: None,
            },
            ListenerEnv {
                name: "admin",
                starter_addr: Some("/tmp/a.sock"),
            },
        ];
        let env = generation(&Vec::new(), &l, 7, OsStr::new("/run/h/notify-7.sock"));
        let want: Vec<(&str, &str)> = vec![
            ("LISTEN_FDS", "3"),
            ("LISTEN_FDNAMES", "web:dns:admin"),
            ("LISTEN_FDS_FIRST_FD", "3"),
            ("NOTIFY_SOCKET", "/run/h/notify-7.sock"),
            ("HANDOFF_GENERATION", "7"),
            ("SERVER_STARTER_PORT", "127.0.0.1:8080=3;/tmp/a.sock=5"),
            ("SERVER_STARTER_GENERATION", "7"),
        ];
        let want: Env = want
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        assert_eq!(env, want);
    }

    #[test]
    fn no_listeners_means_no_listen_fds() {
        let env = generation(&Vec::new(), &[], 1, OsStr::new("/n"));
        assert_eq!(get(&env, "LISTEN_FDS"), None);
        assert_eq!(get(&env, "SERVER_STARTER_PORT"), None);
    }
}
