//! The running kernel's version, for the io_uring features that depend on it (the file
//! table's prompt release, a multishot receive's byte limit) and the tests that check them.

/// True when the running kernel is Linux `major.minor` or later.
pub fn at_least(major: u32, minor: u32) -> bool {
    release_version(&rustix::system::uname().release().to_string_lossy()) >= (major, minor)
}

/// `major.minor` of a kernel release string (`6.18.44-fc-v1098`); 0 for a part that is missing.
fn release_version(release: &str) -> (u32, u32) {
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_read_as_major_and_minor() {
        assert_eq!(release_version("6.18.44-fc-v1098"), (6, 18));
        assert_eq!(release_version("5.4.0-150-generic"), (5, 4));
        assert_eq!(release_version("6.13"), (6, 13));
        assert_eq!(release_version(""), (0, 0));
        assert!(release_version("6.9.1") < (6, 13), "minor compared as a number");
    }
}
