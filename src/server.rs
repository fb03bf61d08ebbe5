//! Process start-up: turns a `Config` into running, pinned workers.

use crate::config::Config;
use std::fmt;

/// A start-up failure an operator can act on (port in use, bad CPU set, ...).
#[derive(Debug)]
pub struct StartError(pub String);

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// Runs the proxy until it is told to stop.
pub fn run(config: Config) -> Result<(), StartError> {
    let _ = config;
    Err(StartError("not built yet".into()))
}
