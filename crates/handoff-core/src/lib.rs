//! handoff-core: the pure logic of handoff. No I/O, no clock reads, no OS calls.
//!
//! Theory of operation: handoff holds the listening sockets and runs one *generation* of the
//! user's server at a time, plus generations that are draining. A reload starts generation
//! n+1 on the same sockets; only when it reports READY=1 is generation n told to stop. If
//! n+1 fails (exits, or misses its ready deadline) it is killed and n keeps serving. The
//! [`supervisor::Supervisor`] makes every one of these decisions from events; the binary
//! performs them.
pub mod accepting;
pub mod adopt;
pub mod child_env;
pub mod listen;
pub mod notify;
pub mod signal;
pub mod supervisor;
