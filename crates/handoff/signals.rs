//! The signals handoff handles, as streams registered before any child exists (a SIGHUP
//! before its handler exists would kill handoff).

use tokio::signal::unix::{signal, Signal as Stream, SignalKind};

/// A signal handoff received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    Child,
    Hangup,
    Terminate,
    Interrupt,
    User1,
    User2,
}

pub struct Signals {
    chld: Stream,
    hup: Stream,
    term: Stream,
    int: Stream,
    usr1: Stream,
    usr2: Stream,
}

impl Signals {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            chld: signal(SignalKind::child())?,
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    /// The next signal (tokio's streams coalesce repeats of one signal, as the kernel does).
    pub async fn recv(&mut self) -> Received {
        tokio::select! {
            Some(()) = self.chld.recv() => Received::Child,
            Some(()) = self.hup.recv() => Received::Hangup,
            Some(()) = self.term.recv() => Received::Terminate,
            Some(()) = self.int.recv() => Received::Interrupt,
            Some(()) = self.usr1.recv() => Received::User1,
            Some(()) = self.usr2.recv() => Received::User2,
        }
    }
}
