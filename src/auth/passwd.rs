//! `sluice passwd FILE USER`: adds a user to a credentials file, or changes their
//! password.
//!
//! The password is asked twice on the terminal with echo off, or read as one line of
//! standard input with `--password-stdin` (for scripts). The file is read and checked
//! first: a broken file is refused, never overwritten. The new text goes whole to a
//! temporary file in the same directory (mode 0600, with the owner and group of the file
//! it replaces), is flushed to disk and renamed over the old one, so a reload never reads
//! half a file. Every other line (comments included) is kept as it was.

use super::users::{self, Credentials};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Longest password read.
pub const MAX_PASSWORD_LEN: usize = 512;

/// Where the password comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Asked twice on the controlling terminal, without echo.
    Terminal,
    /// One line of standard input.
    Stdin,
}

/// What `update` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Changed,
}

/// The whole command: reads the password, updates the file, says what it did.
pub fn run(file: &Path, user: &str, source: Source) -> Result<String, String> {
    users::check_user_name(user).map_err(|e| format!("user {user:?}: {e}"))?;
    // Check the file before asking for a password that could not be stored.
    let text = read_existing(file)?;
    let password = match source {
        Source::Stdin => read_line(&mut std::io::stdin().lock())?,
        Source::Terminal => ask_on_terminal(user)?,
    };
    let change = update_text(file, text.as_deref(), user, &password)?;
    Ok(match change {
        Change::Added => format!("added user {user} to {}", file.display()),
        Change::Changed => format!("changed the password of {user} in {}", file.display()),
    })
}

/// Sets `user`'s password in `file` (created if missing).
pub fn update(file: &Path, user: &str, password: &[u8]) -> Result<Change, String> {
    users::check_user_name(user).map_err(|e| format!("user {user:?}: {e}"))?;
    let text = read_existing(file)?;
    update_text(file, text.as_deref(), user, password)
}

fn update_text(file: &Path, text: Option<&str>, user: &str, password: &[u8]) -> Result<Change, String> {
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    let text = text.unwrap_or_default();
    let known = Credentials::parse(text).map_err(|e| format!("{}: {e}", file.display()))?.hash_of(user).is_some();
    let hash = users::hash_password(password)?;
    write_atomically(file, users::with_user(text, user, &hash).as_bytes())?;
    Ok(if known { Change::Changed } else { Change::Added })
}

/// The file's text, checked (None: it does not exist yet).
fn read_existing(file: &Path) -> Result<Option<String>, String> {
    match std::fs::read_to_string(file) {
        Ok(text) => {
            Credentials::parse(&text).map_err(|e| format!("{}: {e}; not changed", file.display()))?;
            Ok(Some(text))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: cannot read: {e}", file.display())),
    }
}

/// One line (without its line end) of at most [`MAX_PASSWORD_LEN`] bytes.
fn read_line(input: &mut impl BufRead) -> Result<Vec<u8>, String> {
    let mut line = Vec::new();
    input
        .take(MAX_PASSWORD_LEN as u64 + 2)
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("cannot read the password: {e}"))?;
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    if line.len() > MAX_PASSWORD_LEN {
        return Err(format!("the password is longer than {MAX_PASSWORD_LEN} bytes"));
    }
    Ok(line)
}

/// Asks twice on /dev/tty with echo off.
fn ask_on_terminal(user: &str) -> Result<Vec<u8>, String> {
    let tty = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|_| "no terminal to ask for the password; use --password-stdin".to_string())?;
    let first = prompt(&tty, &format!("Password for {user}: "))?;
    let second = prompt(&tty, "Retype it: ")?;
    if first != second {
        return Err("the passwords differ; nothing changed".into());
    }
    Ok(first)
}

/// Puts the terminal back as it was, whatever happens.
struct EchoOff<'a> {
    tty: &'a File,
    saved: rustix::termios::Termios,
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(self.tty, rustix::termios::OptionalActions::Now, &self.saved);
    }
}

fn prompt(tty: &File, text: &str) -> Result<Vec<u8>, String> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    let fail = |e: std::io::Error| format!("terminal: {e}");
    let saved = tcgetattr(tty).map_err(|e| fail(e.into()))?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    let mut out = tty;
    out.write_all(text.as_bytes()).map_err(fail)?;
    tcsetattr(tty, OptionalActions::Now, &quiet).map_err(|e| fail(e.into()))?;
    let _restore = EchoOff { tty, saved };
    read_line(&mut std::io::BufReader::new(tty))
}

/// Writes `contents` to `path` all at once: a temporary file beside it (mode 0600, owner
/// and group of the file it replaces), synced, renamed over it, the directory synced.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| format!("{}: not a file name", path.display()))?;
    let tmp = dir.join(format!(".{}.sluice-{}", name.to_string_lossy(), std::process::id()));
    let fail = |what: &str, e: std::io::Error| format!("{}: {what}: {e}", path.display());
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| fail("cannot write", e))?;
        if let Ok(old) = std::fs::metadata(path) {
            std::os::unix::fs::fchown(&f, Some(old.uid()), Some(old.gid()))
                .map_err(|e| fail("cannot keep the owner of the file it replaces", e))?;
        }
        f.write_all(contents).map_err(|e| fail("cannot write", e))?;
        f.sync_all().map_err(|e| fail("cannot sync", e))?;
        std::fs::rename(&tmp, path).map_err(|e| fail("cannot replace", e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    // The rename itself must reach the disk too.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let d = std::env::temp_dir().join(format!("sluice-passwd-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn creates_then_changes_a_user_mode_0600() {
        let d = Dir::new("create");
        let file = d.0.join("users");
        assert_eq!(update(&file, "alice", b"one"), Ok(Change::Added));
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&file, format!("# the team\n{}", std::fs::read_to_string(&file).unwrap())).unwrap();
        assert_eq!(update(&file, "bob", b"two"), Ok(Change::Added));
        assert_eq!(update(&file, "alice", b"three"), Ok(Change::Changed));
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("# the team\nalice:$argon2id$"), "{text}");
        let users = Credentials::parse(&text).unwrap();
        assert_eq!(users.len(), 2);
        assert!(users::verify(b"three", users.hash_of("alice").unwrap()));
        assert!(users::verify(b"two", users.hash_of("bob").unwrap()));
        let left: Vec<_> = std::fs::read_dir(&d.0).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("users")], "no temporary file left behind");
    }

    #[test]
    fn a_broken_file_is_never_overwritten() {
        let d = Dir::new("broken");
        let file = d.0.join("users");
        std::fs::write(&file, "alice plaintext\n").unwrap();
        let err = update(&file, "bob", b"pw").unwrap_err();
        assert!(err.contains("line 1: expected user:hash; not changed"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "alice plaintext\n");
        assert!(update(&file, "bad:name", b"pw").unwrap_err().starts_with("user \"bad:name\": "));
        assert_eq!(update(&d.0.join("new"), "bob", b""), Err("the password is empty".into()));
    }

    #[test]
    fn reads_one_line_without_its_end() {
        let line = |s: &[u8]| read_line(&mut std::io::Cursor::new(s.to_vec()));
        assert_eq!(line(b"s3cret\n"), Ok(b"s3cret".to_vec()));
        assert_eq!(line(b"s3cret\r\nmore\n"), Ok(b"s3cret".to_vec()));
        assert_eq!(line(b"no newline"), Ok(b"no newline".to_vec()));
        assert_eq!(line(b" spaces kept \n"), Ok(b" spaces kept ".to_vec()));
        assert!(line(&[b'x'; MAX_PASSWORD_LEN + 5]).is_err());
    }
}
