//! The examples in examples/, each run under handoff and reloaded under a short load.
