//! The credentials file: one `user:hash` line per user, where the hash is an argon2 PHC
//! string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`, salted, written by
//! `sluice passwd`). Blank lines and lines starting with `#` are ignored.
//!
//! A file is taken whole or not at all: a bad line (no `:`, a bad user name, a hash that
//! is not an argon2 PHC string or asks for more than [`MAX_MEMORY_KIB`] of memory per
//! check) or a user listed twice refuses it, with one line naming the line.

use argon2::password_hash::phc::PasswordHash;
use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// Most memory one verification may ask for (256 MiB): a hash asking for more is a typo or
/// a way to exhaust the box, and is refused when the file is read.
pub const MAX_MEMORY_KIB: u32 = 256 * 1024;
/// Most passes one verification may ask for.
const MAX_PASSES: u32 = 64;
/// Most lanes one verification may ask for.
const MAX_LANES: u32 = 16;
/// Longest user name accepted.
pub const MAX_USER_LEN: usize = 128;

/// What an unknown user's password is checked against, so that an unknown name costs the
/// same time as a wrong password (no user enumeration by timing). Argon2id with the
/// default parameters (the ones `sluice passwd` writes); nobody knows its password.
pub(crate) const DECOY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2x1aWNlLWRlY295LXNhbHQ$3KU9HzmujTCsc4i/EDf2CbNsbdMOJkXH1iAVHb2DZ1k";

/// The users of a credentials file and their password hashes.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    users: HashMap<Arc<str>, Arc<str>>,
}

impl fmt::Debug for Credentials {
    // Never prints a hash.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("users", &self.users.len()).finish()
    }
}

impl Credentials {
    /// Reads and checks a credentials file. The error is one line naming the file.
    pub fn load(path: &Path) -> Result<Credentials, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Credentials::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses the text of a credentials file.
    pub fn parse(text: &str) -> Result<Credentials, String> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let Some((user, hash)) = entry(line).map_err(|e| format!("line {}: {e}", i + 1))? else { continue };
            if users.insert(Arc::from(user), Arc::from(hash)).is_some() {
                return Err(format!("line {}: user {user:?} is listed twice", i + 1));
            }
        }
        Ok(Credentials { users })
    }

    /// The stored hash of `user`, if the file lists it.
    pub fn hash_of(&self, user: &str) -> Option<&Arc<str>> {
        self.users.get(user)
    }

    /// The user's name as the file holds it (shared, for the access log).
    pub fn name_of(&self, user: &str) -> Option<Arc<str>> {
        self.users.get_key_value(user).map(|(k, _)| k.clone())
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// One line: `Ok(None)` for a blank or comment line.
fn entry(line: &str) -> Result<Option<(&str, &str)>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let Some((user, hash)) = line.split_once(':') else {
        return Err("expected user:hash".into());
    };
    check_user_name(user)?;
    check_hash(hash)?;
    Ok(Some((user, hash)))
}

/// A user name: 1 to [`MAX_USER_LEN`] bytes, no `:` (Basic authentication splits on
/// it), no white space or control character (it goes to the access log).
pub fn check_user_name(user: &str) -> Result<(), String> {
    if user.is_empty() || user.len() > MAX_USER_LEN {
        return Err(format!("a user name has 1 to {MAX_USER_LEN} bytes"));
    }
    if let Some(c) = user.chars().find(|c| *c == ':' || c.is_whitespace() || c.is_control()) {
        return Err(format!("{c:?} is not allowed in a user name"));
    }
    Ok(())
}

/// A hash: an argon2 PHC string with a salt, within the cost bounds.
fn check_hash(hash: &str) -> Result<(), String> {
    let phc =
        PasswordHash::new(hash).map_err(|e| format!("not a PHC hash string ({e}); write it with sluice passwd"))?;
    Algorithm::try_from(phc.algorithm.as_str())
        .map_err(|_| format!("{} is not an argon2 hash; write it with sluice passwd", phc.algorithm))?;
    let params = Params::try_from(&phc).map_err(|e| format!("bad argon2 parameters: {e}"))?;
    if phc.salt.is_none() || phc.hash.is_none() {
        return Err("the hash has no salt or no output".into());
    }
    if params.m_cost() > MAX_MEMORY_KIB || params.t_cost() > MAX_PASSES || params.p_cost() > MAX_LANES {
        return Err(format!(
            "argon2 cost too high (at most m={MAX_MEMORY_KIB}, t={MAX_PASSES}, p={MAX_LANES}): checking it would stall the proxy"
        ));
    }
    Ok(())
}

/// A salted argon2id hash of `password` with the default parameters (19 MiB, 2 passes,
/// 1 lane: OWASP's recommendation), as a PHC string.
pub fn hash_password(password: &[u8]) -> Result<String, String> {
    Argon2::default().hash_password(password).map(|h| h.to_string()).map_err(|e| format!("cannot hash: {e}"))
}

/// Whether `password` matches `hash` (a PHC string). Slow on purpose: run it off the ring.
pub fn verify(password: &[u8], hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(phc) => Argon2::default().verify_password(password, &phc).is_ok(),
        Err(_) => false,
    }
}

/// `text` (a credentials file, already checked) with `user`'s line set to `hash`: the
/// line replaced where it was, or appended. Every other line stays as it was.
pub fn with_user(text: &str, user: &str, hash: &str) -> String {
    let mut out = String::with_capacity(text.len() + hash.len() + user.len() + 2);
    let mut replaced = false;
    for line in text.lines() {
        match entry(line) {
            // A checked file lists a user once; a second line of theirs would be dropped.
            Ok(Some((u, _))) if u == user => {
                if !replaced {
                    out.push_str(&format!("{user}:{hash}\n"));
                    replaced = true;
                }
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    if !replaced {
        out.push_str(&format!("{user}:{hash}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real hash, made once per test run (hashing is slow).
    fn hash(pw: &str) -> String {
        hash_password(pw.as_bytes()).unwrap()
    }

    #[test]
    fn a_hash_verifies_only_its_password_and_is_salted() {
        let h = hash("s3cret");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify(b"s3cret", &h));
        assert!(!verify(b"s3cret ", &h));
        assert!(!verify(b"", &h));
        assert_ne!(h, hash("s3cret"), "each hash has its own salt");
        assert!(!verify(b"", DECOY_HASH) && !verify(b"s3cret", DECOY_HASH));
        assert!(check_hash(DECOY_HASH).is_ok());
        assert!(!verify(b"s3cret", "not a hash"));
    }

    #[test]
    fn a_file_parses_with_comments_and_blank_lines() {
        let h = hash("pw");
        let c = Credentials::parse(&format!("# users\n\nalice:{h}\n  bob:{h}  \r\n")).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c.hash_of("alice").map(|h| &**h), Some(h.as_str()));
        assert!(c.hash_of("carol").is_none());
        assert_eq!(format!("{c:?}"), "Credentials { users: 2 }", "Debug never shows a hash");
        assert!(Credentials::parse("").unwrap().is_empty());
    }

    #[test]
    fn a_bad_file_is_refused_with_its_line() {
        let h = hash("pw");
        let cases = [
            (format!("alice:{h}\nbob\n"), "line 2: expected user:hash"),
            (format!("alice:{h}\nalice:{h}\n"), "line 2: user \"alice\" is listed twice"),
            ("alice:plaintext\n".to_string(), "line 1: not a PHC hash string"),
            (format!(":{h}\n"), "line 1: a user name has 1 to"),
            (format!("al ice:{h}\n"), "line 1: ' ' is not allowed"),
            ("alice:$2b$12$abcdefghijklmnopqrstuuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0\n".into(), "line 1: not a PHC"),
            (
                "alice:$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\n".into(),
                "line 1: pbkdf2-sha256 is not an argon2 hash",
            ),
            (
                "alice:$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHQ$3KU9HzmujTCsc4i/EDf2CbNsbdMOJkXH1iAVHb2DZ1k\n"
                    .into(),
                "line 1: argon2 cost too high",
            ),
            ("alice:$argon2id$v=19$m=19456,t=2,p=1\n".into(), "line 1: the hash has no salt"),
        ];
        for (text, want) in cases {
            let err = Credentials::parse(&text).unwrap_err();
            assert!(err.starts_with(want), "{text:?}: {err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn load_names_the_file() {
        let err = Credentials::load(Path::new("/nonexistent/users")).unwrap_err();
        assert!(err.starts_with("/nonexistent/users: cannot read: "), "{err}");
    }

    #[test]
    fn with_user_replaces_in_place_or_appends() {
        let (a, b, c) = (hash("a"), hash("b"), hash("c"));
        let text = format!("# team\nalice:{a}\n\nbob:{b}\n");
        let changed = with_user(&text, "alice", &c);
        assert_eq!(changed, format!("# team\nalice:{c}\n\nbob:{b}\n"));
        let added = with_user(&text, "carol", &c);
        assert_eq!(added, format!("{text}carol:{c}\n"));
        assert_eq!(with_user("", "dave", &c), format!("dave:{c}\n"));
        let no_newline = with_user(&format!("alice:{a}"), "bob", &b);
        assert_eq!(no_newline, format!("alice:{a}\nbob:{b}\n"));
        assert!(Credentials::parse(&added).is_ok());
    }
}
