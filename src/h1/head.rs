//! Finding a message head in a buffer before handing it to httparse: skips a few leading
//! empty lines, enforces strict CRLF line endings (no bare LF, no bare CR), refuses obs-fold,
//! applies the byte limit, and provides httparse's header slots without zeroing them.

use std::mem::MaybeUninit;

/// How many empty lines (CRLF) may precede a request or status line (RFC 9112 §2.2).
pub(crate) const MAX_LEADING_EMPTY_LINES: usize = 4;

/// A framing defect found while locating the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScanError {
    BareLf,
    BareCr,
    ObsFold,
    LeadingEmptyLines,
    TooLarge,
}

impl ScanError {
    pub(crate) fn detail(self) -> &'static str {
        match self {
            ScanError::BareLf => "bare LF in head",
            ScanError::BareCr => "CR not followed by LF in head",
            ScanError::ObsFold => "obsolete line folding in head",
            ScanError::LeadingEmptyLines => "too many empty lines before start line",
            ScanError::TooLarge => "head too large",
        }
    }
}

/// Where the head is in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan {
    /// The head (start line onwards) is `buf[start..end]`; `end` is just past the CRLFCRLF.
    Complete { start: usize, end: usize },
    /// Not complete yet; the start line begins at `start`.
    Partial { start: usize },
}

/// Locates the head in `buf`, looking at no more than `max_bytes` bytes.
pub(crate) fn scan_head(buf: &[u8], max_bytes: usize) -> Result<Scan, ScanError> {
    let window = &buf[..buf.len().min(max_bytes)];
    let partial = |start: usize| {
        if buf.len() >= max_bytes {
            Err(ScanError::TooLarge)
        } else {
            Ok(Scan::Partial { start })
        }
    };

    let mut start = 0;
    let mut empty_lines = 0;
    loop {
        match window.get(start) {
            Some(b'\r') => match window.get(start + 1) {
                Some(b'\n') => {
                    empty_lines += 1;
                    if empty_lines > MAX_LEADING_EMPTY_LINES {
                        return Err(ScanError::LeadingEmptyLines);
                    }
                    start += 2;
                }
                Some(_) => return Err(ScanError::BareCr),
                None => return partial(start),
            },
            Some(b'\n') => return Err(ScanError::BareLf),
            Some(_) => break,
            None => return partial(start),
        }
    }

    let mut i = start;
    while let Some(offset) = window.get(i..).and_then(find_cr_or_lf) {
        i += offset;
        if window[i] == b'\n' {
            return Err(ScanError::BareLf);
        }
        // window[i] is CR: it must end a line.
        match window.get(i + 1) {
            Some(b'\n') => {}
            Some(_) => return Err(ScanError::BareCr),
            None => break,
        }
        match window.get(i + 2) {
            Some(b'\r') => match window.get(i + 3) {
                Some(b'\n') => return Ok(Scan::Complete { start, end: i + 4 }),
                Some(_) => return Err(ScanError::BareCr),
                None => break,
            },
            Some(b'\n') => return Err(ScanError::BareLf),
            Some(b' ' | b'\t') => return Err(ScanError::ObsFold),
            _ => {}
        }
        i += 2;
    }
    partial(start)
}

/// Index of the first CR or LF, eight bytes at a time (SWAR: a byte equal to the target
/// becomes zero after the XOR; the lowest flagged byte is always exact).
fn find_cr_or_lf(s: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const CR: u64 = LO * b'\r' as u64;
    const LF: u64 = LO * b'\n' as u64;
    let mut chunks = s.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(<[u8; 8]>::try_from(chunk).unwrap_or([0; 8]));
        let (a, b) = (word ^ CR, word ^ LF);
        let found = ((a.wrapping_sub(LO) & !a) | (b.wrapping_sub(LO) & !b)) & HI;
        if found != 0 {
            return Some(base + (found.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks.remainder().iter().position(|&b| b == b'\r' || b == b'\n').map(|p| base + p)
}

/// Calls `f` with enough uninitialised httparse header slots to parse `head` under a
/// limit of `max` fields: `max`, or, for a limit beyond the stack's slots, one per line of
/// `head` (a field takes at least one) up to `max` (so a head with more fields still
/// fails as too many). On the stack when few
/// enough (no zeroing cost), else in a fresh Vec's spare capacity: a limit in the hundreds
/// no longer costs a 16 KiB allocation per head of a dozen fields.
pub(crate) fn with_header_slots<'b, R>(
    max: usize,
    head: &[u8],
    f: impl FnOnce(&mut [MaybeUninit<httparse::Header<'b>>]) -> R,
) -> R {
    const STACK_SLOTS: usize = 128;
    // Lines are counted only when the limit is beyond the stack's slots.
    let max = if max <= STACK_SLOTS { max } else { max.min(head.iter().filter(|&&b| b == b'\n').count() + 1) };
    if max <= STACK_SLOTS {
        let mut stack = [MaybeUninit::<httparse::Header<'b>>::uninit(); STACK_SLOTS];
        f(&mut stack[..max])
    } else {
        let mut heap: Vec<httparse::Header<'b>> = Vec::with_capacity(max);
        let spare = heap.spare_capacity_mut();
        let n = spare.len().min(max);
        f(&mut spare[..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1024;

    #[test]
    fn complete_head() {
        let buf = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY";
        assert_eq!(scan_head(buf, MAX), Ok(Scan::Complete { start: 0, end: 27 }));
        let buf = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(scan_head(buf, MAX), Ok(Scan::Complete { start: 0, end: 18 }));
    }

    #[test]
    fn partial_heads() {
        let full = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for n in 0..full.len() {
            assert!(matches!(scan_head(&full[..n], MAX), Ok(Scan::Partial { .. })), "prefix {n}");
        }
    }

    #[test]
    fn leading_empty_lines() {
        let buf = b"\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(scan_head(buf, MAX), Ok(Scan::Complete { start: 4, end: 22 }));
        assert_eq!(scan_head(b"\r\n\r", MAX), Ok(Scan::Partial { start: 2 }));
        let mut buf = b"\r\n".repeat(MAX_LEADING_EMPTY_LINES);
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert!(matches!(scan_head(&buf, MAX), Ok(Scan::Complete { .. })));
        let mut buf = b"\r\n".repeat(MAX_LEADING_EMPTY_LINES + 1);
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(scan_head(&buf, MAX), Err(ScanError::LeadingEmptyLines));
        assert_eq!(scan_head(b"\nGET", MAX), Err(ScanError::BareLf));
        assert_eq!(scan_head(b"\r\n\nGET", MAX), Err(ScanError::BareLf));
        assert_eq!(scan_head(b"\rGET", MAX), Err(ScanError::BareCr));
    }

    #[test]
    fn line_ending_defects() {
        assert_eq!(scan_head(b"GET / HTTP/1.1\nHost: a\r\n\r\n", MAX), Err(ScanError::BareLf));
        assert_eq!(scan_head(b"GET / HTTP/1.1\r\nHost: a\n\r\n", MAX), Err(ScanError::BareLf));
        assert_eq!(scan_head(b"GET / HTTP/1.1\r\nHost: a\r\n\n", MAX), Err(ScanError::BareLf));
        assert_eq!(scan_head(b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", MAX), Err(ScanError::BareCr));
        assert_eq!(scan_head(b"GET / HTTP/1.1\r\nHost: a\r\n\rX", MAX), Err(ScanError::BareCr));
        // incomplete input is never judged on a trailing CR
        assert_eq!(scan_head(b"GET / HTTP/1.1\r", MAX), Ok(Scan::Partial { start: 0 }));
        // bare LF found even before the head is complete
        assert_eq!(scan_head(b"GET / HTTP/1.1\n", MAX), Err(ScanError::BareLf));
    }

    #[test]
    fn obs_fold() {
        assert_eq!(scan_head(b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", MAX), Err(ScanError::ObsFold));
        assert_eq!(scan_head(b"GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n", MAX), Err(ScanError::ObsFold));
        assert_eq!(scan_head(b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", MAX), Err(ScanError::ObsFold));
    }

    #[test]
    fn size_limit() {
        let buf = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(matches!(scan_head(buf, 27), Ok(Scan::Complete { end: 27, .. })));
        assert_eq!(scan_head(buf, 26), Err(ScanError::TooLarge));
        assert_eq!(scan_head(&buf[..10], 10), Err(ScanError::TooLarge));
        assert_eq!(scan_head(&buf[..10], 11), Ok(Scan::Partial { start: 0 }));
        assert_eq!(scan_head(b"", 0), Err(ScanError::TooLarge));
        // a head whose end straddles the limit
        assert_eq!(scan_head(buf, 25), Err(ScanError::TooLarge));
        assert_eq!(scan_head(buf, 24), Err(ScanError::TooLarge));
    }

    #[test]
    fn find_line_bytes() {
        assert_eq!(find_cr_or_lf(b""), None);
        assert_eq!(find_cr_or_lf(b"abcdefghijklmnopq"), None);
        for len in 1..40 {
            for at in 0..len {
                for target in [b'\r', b'\n'] {
                    // surrounding bytes near the targets (and 0x80+) must not confuse it
                    let mut v: Vec<u8> = (0..len).map(|i| [b'\x0c', b'\x0e', 0x8d, b'a', 0x0b][i % 5]).collect();
                    v[at] = target;
                    assert_eq!(find_cr_or_lf(&v), Some(at), "len {len} at {at}");
                    if at + 1 < len {
                        v[at + 1] = b'\n';
                        assert_eq!(find_cr_or_lf(&v), Some(at));
                    }
                }
            }
        }
    }

    #[test]
    fn slots() {
        let lines = |n: usize| "a: b\r\n".repeat(n);
        assert_eq!(with_header_slots(0, lines(3).as_bytes(), |s| s.len()), 0);
        assert_eq!(with_header_slots(100, lines(3).as_bytes(), |s| s.len()), 100);
        assert_eq!(with_header_slots(100, lines(200).as_bytes(), |s| s.len()), 100);
        assert_eq!(with_header_slots(128, lines(200).as_bytes(), |s| s.len()), 128);
        assert_eq!(with_header_slots(500, lines(600).as_bytes(), |s| s.len()), 500);
        // A few lines under a large limit: a few slots.
        assert_eq!(with_header_slots(512, lines(12).as_bytes(), |s| s.len()), 13);
    }
}
