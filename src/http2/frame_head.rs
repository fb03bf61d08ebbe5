//! The 9-byte HTTP/2 frame header (RFC 9113 §4.1), assembled as bytes arrive in chunks of
//! any size: the one piece of framing our own byte watchers (`floods`, `tally`) share.

/// Bytes in a frame header.
pub const LEN: usize = 9;

/// A whole frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    /// The header as it came (to pass it on).
    pub raw: [u8; LEN],
    /// Payload length.
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    /// Stream id (the reserved bit cleared).
    pub stream: u32,
}

/// A frame header being read.
#[derive(Debug, Clone, Default)]
pub struct HeadReader {
    buf: [u8; LEN],
    have: usize,
}

impl HeadReader {
    /// Takes header bytes from the front of `bytes` (advancing it): the header once whole.
    pub fn take(&mut self, bytes: &mut &[u8]) -> Option<FrameHead> {
        let n = (LEN - self.have).min(bytes.len());
        self.buf[self.have..self.have + n].copy_from_slice(&bytes[..n]);
        self.have += n;
        *bytes = &bytes[n..];
        if self.have < LEN {
            return None;
        }
        self.have = 0;
        let h = self.buf;
        Some(FrameHead {
            raw: h,
            len: (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]),
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_split_anywhere_comes_out_whole_once() {
        let raw = [0, 1, 2, 0x1, 0x5, 0x80, 0, 0, 7];
        let whole = FrameHead { raw, len: 258, kind: 1, flags: 5, stream: 7 };
        for cut in 0..LEN {
            let mut r = HeadReader::default();
            let (mut first, mut rest) = (&raw[..cut], &raw[cut..]);
            assert_eq!(r.take(&mut first), None, "{cut} bytes are not a header");
            assert_eq!(r.take(&mut rest), Some(whole), "the rest after {cut}");
            assert!(first.is_empty() && rest.is_empty());
        }
    }
}
