//! Every way a handoff invocation can fail, and the one mapping from failure to the exit
//! status README documents ("Exit status").

use std::fmt;
use std::process::ExitCode;

use handoff_core::supervisor::exit_code;

/// Why handoff (or one of its subcommands) stops with an error.
#[derive(Debug)]
pub enum Error {
    /// Invalid command line: clap's one-line message.
    Usage(String),
    /// Bad configuration or a failed start-up step (a listener that cannot be bound, a
    /// command that cannot be run, ...). Nothing was started.
    Start(String),
    /// The command or the user to run it as cannot be used. Nothing was started.
    Resolve(handoff_sys::spawn::ResolveError),
    /// A subcommand could not reach the running handoff, or it refused the request.
    Control(String),
    /// Writing our own output failed (`handoff man`, `completions`).
    Output(std::io::Error),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Usage(_) => exit_code::USAGE,
            Self::Start(_) | Self::Resolve(_) | Self::Control(_) | Self::Output(_) => {
                exit_code::FAILURE
            }
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(m) => write!(f, "{m} (see handoff --help)"),
            Self::Start(m) | Self::Control(m) => f.write_str(m),
            Self::Resolve(e) => e.fmt(f),
            Self::Output(e) => write!(f, "cannot write the output: {e}"),
        }
    }
}

/// The process exit status for `res`: the code returned on success (a stopped server's
/// status), else the error's, after printing it as one line on stderr (a JSON log line with
/// `--log-format json`).
pub fn exit(res: Result<i32, Error>) -> ExitCode {
    let code = match res {
        Ok(code) => code,
        Err(e) => {
            crate::logging::fatal(&e.to_string(), e.exit_code());
            e.exit_code()
        }
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}
