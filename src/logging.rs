//! Operator diagnostics: leveled lines on stderr (`tracing`), which systemd's journal
//! takes.
//!
//! The level: `--log-level` on `sluice run`, else the config file's `log_level`, else
//! `RUST_LOG`, else `info`. Sluice's own settings win over the generic variable, so a
//! `RUST_LOG` exported for something else cannot change what a configured gateway logs;
//! it still works when neither is given. A SIGHUP reload applies a changed `log_level`.
//!
//! Each worker thread runs inside a `worker{id=N}` span, so every line it logs names its
//! worker; connection events carry `conn=INDEX.GEN` (the slot's `ConnId`). The lifecycle
//! (accept and refusals, phase changes, upstream pool hits and connects, close) is at
//! `debug`. Under systemd (`JOURNAL_STREAM` set) lines carry no timestamp of their own:
//! the journal stamps them.
//!
//! Cost when a level is off: the call site compares its level with the global maximum
//! (one relaxed atomic load) and skips the event. Its field expressions are only
//! evaluated inside the enabled branch, and `%value` fields are formatted by the
//! subscriber only when a line is written (see the `disabled_events_format_nothing` test).

use crate::config::{self, Config};
use std::sync::OnceLock;
use tracing_subscriber::{fmt, prelude::*, reload, EnvFilter, Registry};

/// The filter in force, swapped by a reload.
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// The directives in force for `cfg`: its `log_level` (a flag has already been written
/// over the file's), else `RUST_LOG`, else `info`.
pub fn directives(cfg: &Config) -> Result<String, String> {
    if let Some(level) = &cfg.log_level {
        return Ok(level.clone());
    }
    match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => config::parse_log_level(&v).map_err(|e| format!("RUST_LOG {v:?}: {e}")),
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok("info".to_string()),
        Err(std::env::VarError::NotUnicode(_)) => Err("RUST_LOG: not valid UTF-8".to_string()),
    }
}

fn filter(cfg: &Config) -> Result<EnvFilter, String> {
    let d = directives(cfg)?;
    EnvFilter::builder().parse(&d).map_err(|e| format!("log level {d:?}: {e}"))
}

/// Installs the stderr subscriber at `cfg`'s level (once per process; a second call only
/// sets the level). The error is one line for the operator (a bad `RUST_LOG`).
pub fn init(cfg: &Config) -> Result<(), String> {
    let filter = filter(cfg)?;
    if let Some(handle) = FILTER.get() {
        return handle.reload(filter).map_err(|e| format!("log level: {e}"));
    }
    let (filter, handle) = reload::Layer::new(filter);
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let stamped = (!journal).then(|| fmt::layer().with_writer(std::io::stderr));
    let bare = journal.then(|| fmt::layer().with_writer(std::io::stderr).without_time());
    tracing_subscriber::registry()
        .with(filter)
        .with(stamped)
        .with(bare)
        .try_init()
        .map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    let _ = FILTER.set(handle);
    Ok(())
}

/// Puts a reloaded config's level in force (SIGHUP). No-op before [`init`].
pub fn reload(cfg: &Config) -> Result<(), String> {
    match FILTER.get() {
        Some(handle) => handle.reload(filter(cfg)?).map_err(|e| format!("log level: {e}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts how often it is formatted.
    struct Counted<'a>(&'a AtomicUsize);

    impl std::fmt::Display for Counted<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            self.0.fetch_add(1, Ordering::SeqCst);
            f.write_str("x")
        }
    }

    /// The claim the hot path relies on: a `debug!` under an `info` subscriber neither
    /// formats its `%` fields nor evaluates its field expressions (written the way the
    /// conn layer writes them: values built inside the macro, no `format!` outside it).
    #[test]
    fn disabled_events_format_nothing() {
        let formatted = AtomicUsize::new(0);
        let evaluated = AtomicUsize::new(0);
        let eval = || {
            evaluated.fetch_add(1, Ordering::SeqCst);
            7u64
        };
        let subscriber =
            tracing_subscriber::registry().with(EnvFilter::new("info")).with(fmt::layer().with_writer(std::io::sink));
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(conn = %Counted(&formatted), bytes = eval(), "phase");
            assert_eq!((formatted.load(Ordering::SeqCst), evaluated.load(Ordering::SeqCst)), (0, 0));
            tracing::info!(conn = %Counted(&formatted), bytes = eval(), "phase");
            assert_eq!((formatted.load(Ordering::SeqCst), evaluated.load(Ordering::SeqCst)), (1, 1));
        });
    }

    #[test]
    fn the_config_level_wins_over_rust_log() {
        // RUST_LOG itself is read from the environment: the end-to-end tests
        // (tests/diagnostics.rs) set it on the child; here only the config side.
        let cfg = Config { log_level: Some("debug".into()), ..Config::default() };
        assert_eq!(directives(&cfg).unwrap(), "debug");
    }
}
