//! The files the resolver reads, and notices changes to: the hosts file (`/etc/hosts`),
//! asked before DNS, and the stub resolver file (`/etc/resolv.conf`, read by
//! `settings`). The helper thread looks at both at most once a second and reads a file
//! again only when its modification time, size or inode changed, so the worker's ring
//! thread never touches the filesystem after it started.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// How often a watched file is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What tells one version of a file from another: (mtime, size, inode); `None` for a
/// missing or unreadable file.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

/// A file read again when it changes.
#[derive(Debug)]
pub(super) struct Watched {
    path: PathBuf,
    /// The version last read; `None` before the first read.
    seen: Option<Stamp>,
    next_check: Instant,
}

impl Watched {
    pub(super) fn new(path: PathBuf) -> Watched {
        Watched { path, seen: None, next_check: Instant::now() }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The file's text now (empty when it is missing or unreadable).
    pub(super) fn read(&mut self, now: Instant) -> String {
        self.next_check = now + CHECK_EVERY;
        let before = stamp(&self.path);
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        // A write between the stamp and the read is seen at the next check (the stamp
        // taken first can only be older than the text).
        self.seen = Some(before);
        text
    }

    /// The file's new text when it changed since the last read; at most one look a second.
    pub(super) fn changed(&mut self, now: Instant) -> Option<String> {
        if now < self.next_check {
            return None;
        }
        self.next_check = now + CHECK_EVERY;
        if self.seen == Some(stamp(&self.path)) {
            return None;
        }
        Some(self.read(now))
    }

    /// When `changed` next looks.
    pub(super) fn next_check(&self) -> Instant {
        self.next_check
    }
}

/// The hosts file's names (lowercase) and their addresses, IPv4 first, in file order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HostsTable {
    names: HashMap<String, Vec<IpAddr>>,
}

impl HostsTable {
    /// Reads hosts-file text: `ADDRESS NAME [ALIAS...]` per line, `#` comments; lines
    /// whose address does not parse (a zone index `fe80::1%eth0` included) are skipped.
    /// A name on several lines has the addresses of all of them.
    pub(super) fn parse(text: &str) -> HostsTable {
        let mut names: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) else { continue };
            for name in words {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                let ips = names.entry(name).or_default();
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
        for ips in names.values_mut() {
            ips.sort_by_key(|ip| ip.is_ipv6());
        }
        HostsTable { names }
    }

    /// The addresses of `name` (lowercase, no trailing dot).
    pub(super) fn get(&self, name: &str) -> Option<&Vec<IpAddr>> {
        self.names.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lines_aliases_comments_and_bad_lines() {
        let table = HostsTable::parse(
            "# comment\n127.0.0.1\tlocalhost\n::1 localhost ip6-localhost # trailing\n\
             10.0.0.5 Files.Test alias.test.\n10.0.0.6 files.test\nfe80::1%eth0 scoped.test\nnot-an-ip bad.test\n\
             2001:db8::5 files.test\n",
        );
        let ips = |v: &[&str]| v.iter().map(|s| s.parse().unwrap()).collect::<Vec<IpAddr>>();
        assert_eq!(table.get("localhost"), Some(&ips(&["127.0.0.1", "::1"])));
        assert_eq!(table.get("ip6-localhost"), Some(&ips(&["::1"])));
        assert_eq!(table.get("files.test"), Some(&ips(&["10.0.0.5", "10.0.0.6", "2001:db8::5"])));
        assert_eq!(table.get("alias.test"), Some(&ips(&["10.0.0.5"])));
        assert_eq!(table.get("scoped.test"), None);
        assert_eq!(table.get("bad.test"), None);
        assert_eq!(table.get("comment"), None);
    }

    #[test]
    fn a_watched_file_is_read_again_only_when_it_changed() {
        let dir = std::env::temp_dir().join(format!("sluice-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hosts");
        std::fs::write(&path, "10.0.0.1 a.test\n").unwrap();
        let mut w = Watched::new(path.clone());
        let t0 = Instant::now();
        assert_eq!(w.read(t0), "10.0.0.1 a.test\n");
        assert_eq!(w.changed(t0 + CHECK_EVERY), None, "unchanged");
        std::fs::write(&path, "10.0.0.2 a.test b.test\n").unwrap();
        assert_eq!(w.changed(t0 + CHECK_EVERY + Duration::from_millis(10)), None, "looked at once a second only");
        assert_eq!(w.changed(t0 + 2 * CHECK_EVERY).as_deref(), Some("10.0.0.2 a.test b.test\n"));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(w.changed(t0 + 3 * CHECK_EVERY).as_deref(), Some(""), "a removed file reads as empty");
        assert_eq!(w.changed(t0 + 4 * CHECK_EVERY), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
