//! RST_STREAM frames counted by error code as the bytes of one direction of an HTTP/2
//! connection pass through its pipe (frame headers and the 4-byte code only; nothing
//! is buffered). Both legs, both directions: what `h2` sends on its own (REFUSED_STREAM
//! past the stream limit, PROTOCOL_ERROR for a malformed stream...) is counted as surely
//! as what we ask for, and what a peer sends as surely as what `h2` tells us.

/// Buckets: the error codes of RFC 9113 §7 (0x0..=0xd), then one for every other code.
pub const CODES: usize = 15;

const FRAME_HEADER: usize = 9;
const RST_STREAM: u8 = 0x3;
const PREFACE_LEN: usize = 24;

/// The counter over one direction.
#[derive(Debug, Clone, Default)]
pub struct ResetTally {
    preface_left: usize,
    header: [u8; FRAME_HEADER],
    header_len: usize,
    payload_left: usize,
    /// The code of the RST_STREAM being read: its bytes so far.
    code: Option<([u8; 4], usize)>,
    /// Resets seen since the last [`ResetTally::take`], by code.
    counts: [u32; CODES],
}

impl ResetTally {
    /// For bytes that start with the client preface (a client's frames).
    pub fn after_preface() -> ResetTally {
        ResetTally { preface_left: PREFACE_LEN, ..ResetTally::default() }
    }

    /// The next bytes of the direction.
    pub fn scan(&mut self, mut bytes: &[u8]) {
        let skip = self.preface_left.min(bytes.len());
        self.preface_left -= skip;
        bytes = &bytes[skip..];
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                if let Some((code, have)) = &mut self.code {
                    let k = (4 - *have).min(n);
                    code[*have..*have + k].copy_from_slice(&bytes[..k]);
                    *have += k;
                    if *have == 4 {
                        let c = u32::from_be_bytes(*code) as usize;
                        self.counts[c.min(CODES - 1)] += 1;
                        self.code = None;
                    }
                }
                self.payload_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (FRAME_HEADER - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len < FRAME_HEADER {
                break;
            }
            self.header_len = 0;
            let h = self.header;
            self.payload_left = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            // A RST_STREAM of another size is a FRAME_SIZE_ERROR, not a reset.
            self.code = (h[3] == RST_STREAM && self.payload_left == 4).then_some(([0; 4], 0));
        }
    }

    /// The resets counted since the last call, by code.
    pub fn take(&mut self) -> [u32; CODES] {
        std::mem::take(&mut self.counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, 0, 0, 0, 0, 1];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn resets_are_counted_by_code_whatever_the_chunking() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(0x4, &[]));
        bytes.extend(frame(0x0, &[0x3; 40])); // DATA full of 3s: not a reset
        bytes.extend(frame(RST_STREAM, &[0, 0, 0, 8])); // CANCEL
        bytes.extend(frame(RST_STREAM, &[0, 0, 0, 7])); // REFUSED_STREAM
        bytes.extend(frame(RST_STREAM, &[0, 0, 0, 8]));
        bytes.extend(frame(RST_STREAM, &[0, 0, 1, 0])); // unknown code 256
        for chunk in [1, 3, 7, bytes.len()] {
            let mut t = ResetTally::after_preface();
            for c in bytes.chunks(chunk) {
                t.scan(c);
            }
            let counts = t.take();
            assert_eq!((counts[8], counts[7], counts[CODES - 1]), (2, 1, 1), "chunks of {chunk}");
            assert_eq!(counts.iter().sum::<u32>(), 4);
            assert_eq!(t.take(), [0; CODES], "taken once");
        }
    }
}
