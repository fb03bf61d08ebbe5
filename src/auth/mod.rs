//! Proxy authentication, independent of the client's protocol: `Proxy-Authorization:
//! Basic` checked against a credentials file of salted argon2id hashes.
//!
//! The rule lives here; a protocol only asks and renders. A request hands its header
//! value, its client's address and the time to the worker's [`Gate`], which answers with
//! a [`Verdict`]: admitted (as a user), challenge (407), locked (429), busy (503), or
//! pending (the slow hash runs on a helper thread; the connection is woken when it is
//! done). HTTP/1 renders it in `conn::auth`; an HTTP/2 stream will render the same
//! verdicts as `:status` responses.
//!
//! - [`users`]: the credentials file (parse, check, hash, verify, update).
//! - [`basic`]: the `Basic` scheme (the header value, the challenge).
//! - [`gate`]: a worker's cache of verdicts and its helper thread.
//! - [`failures`]: failed attempts per client address.
//! - [`shared`]: what the workers' gates share (the failures, verified credentials).
//! - [`passwd`]: `sluice passwd FILE USER`.
//!
//! Which requests must authenticate is the protocol's call (`conn::auth`): explicit-proxy
//! requests do; transparently redirected clients (which cannot answer a 407) and requests
//! inside a CONNECT tunnel that was already admitted do not.

pub mod basic;
pub mod failures;
pub mod gate;
pub mod passwd;
pub mod shared;
pub mod users;

pub use failures::Failures;
pub use gate::{AuthStats, Gate};
pub use shared::Shared;
pub use users::Credentials;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The `[auth]` section of the config.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    /// The credentials file; None (the default): no authentication.
    pub file: Option<PathBuf>,
    /// The realm the challenge names.
    pub realm: String,
    /// Failed attempts from one address within `lockout` that lock it.
    pub max_failures: u32,
    /// The failure window, and how long a locked address stays locked.
    pub lockout: Duration,
    /// The users read from `file` (when the config is loaded, and again on reload).
    pub credentials: Option<Arc<Credentials>>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            file: None,
            realm: "sluice".to_string(),
            max_failures: 5,
            lockout: Duration::from_secs(60),
            credentials: None,
        }
    }
}

impl AuthConfig {
    /// Checks the settings; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
            return Err(("auth.file", "must not be empty".into()));
        }
        if !basic::realm_is_valid(&self.realm) {
            return Err(("auth.realm", "expected 1 to 128 printable ASCII characters, without \" or \\".into()));
        }
        if !(1..=1000).contains(&self.max_failures) {
            return Err(("auth.max_failures", format!("must be between 1 and 1000, got {}", self.max_failures)));
        }
        if self.lockout < Duration::from_secs(1) || self.lockout > Duration::from_secs(86_400) {
            return Err((
                "auth.lockout",
                format!("must be between 1 and 86400 seconds, got {}", self.lockout.as_secs_f64()),
            ));
        }
        Ok(())
    }

    /// Reads the credentials file, if there is one. The error is one line naming it.
    pub fn load_credentials(&mut self) -> Result<(), String> {
        self.credentials = match &self.file {
            Some(path) => Some(Arc::new(Credentials::load(path)?)),
            None => None,
        };
        Ok(())
    }
}

/// What the gate says about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on, as `user` (None: authentication is off).
    Admitted { user: Option<Arc<str>> },
    /// No credentials, or wrong or malformed ones: 407 with the challenge.
    Challenge,
    /// Too many failed attempts from this address: 429 until `retry_after` has passed.
    Locked { retry_after: Duration },
    /// Too many checks waiting: 503, try again in a moment.
    Busy,
    /// Being checked; the connection is woken when the answer is in, and asks again.
    Pending,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_off_and_valid() {
        let c = AuthConfig::default();
        assert!(c.file.is_none() && c.credentials.is_none());
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn bad_settings_name_their_key() {
        let bad = |f: fn(&mut AuthConfig)| {
            let mut c = AuthConfig::default();
            f(&mut c);
            c.validate().unwrap_err().0
        };
        assert_eq!(bad(|c| c.file = Some(PathBuf::new())), "auth.file");
        assert_eq!(bad(|c| c.realm = "a\"b".into()), "auth.realm");
        assert_eq!(bad(|c| c.max_failures = 0), "auth.max_failures");
        assert_eq!(bad(|c| c.lockout = Duration::from_millis(10)), "auth.lockout");
    }
}
