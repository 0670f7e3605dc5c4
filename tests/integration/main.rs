//! End-to-end tests of the real `handoff` binary with real child processes, sockets and
//! signals. One test binary; modules by behaviour:
//!
//! - `child_view`: what the child sees (/proc fds, environ, signal state, process group).
//! - `reload`: reloads, rollback on a failing new child, drain and group kill.
//! - `lifecycle`: restart on crash, shutdown, exit codes, forwarding, leaks.
//! - `faults`: reload storms, 500 reloads (fd/RSS flat), hostile notify traffic.
//! - `zero_drop`: two loopback clients hammer the server during reloads; 0 failures.
//! - `control_socket`: strangers and floods on the control socket, squatters on its address.
//! - `cli_errors`: bad input gives one line, a non-zero status, and starts nothing.
//! - `logs`: a vanished log reader, control characters from children.
//! - `listeners`: listener forms (unix, udp, ipv6, names) and stale socket files.
//! - `operations`: control commands, pid file, systemd notify/socket units, privileges,
//!   probes, watch, PID 1, Server::Starter.
//! - `examples`: every example server in examples/ under handoff, reloaded under load.
//! - `upgrade`: `handoff upgrade` under load; bad binaries refused before the exec.
//! - `adopt`: servers that bind their own port (Go, Node, Python) get handoff's socket.

mod util;

mod adopt;
mod child_view;
mod cli_errors;
mod control_socket;
mod examples;
mod faults;
mod lifecycle;
mod listeners;
mod logs;
mod operations;
mod reload;
mod unmodified;
mod upgrade;
mod zero_drop;
