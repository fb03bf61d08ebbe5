//! RST_STREAM frames counted by error code, and the last stream id of a GOAWAY, as the
//! bytes of one direction of an HTTP/2 connection pass through its pipe (frame headers
//! and a few payload bytes only; nothing is buffered). Both legs, both directions: what
//! `h2` sends on its own (REFUSED_STREAM past the stream limit, PROTOCOL_ERROR for a
//! malformed stream...) is counted as surely as what we ask for, and what a peer sends
//! as surely as what `h2` tells us. The GOAWAY's last stream id tells which requests an
//! origin never processed (RFC 9113 §6.8), which `h2` does not say.

/// Buckets: the error codes of RFC 9113 §7 (0x0..=0xd), then one for every other code.
pub const CODES: usize = 15;

use super::frame_head::HeadReader;

const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;
const PREFACE_LEN: usize = 24;

/// The counter over one direction.
#[derive(Debug, Clone, Default)]
pub struct FrameTally {
    preface_left: usize,
    head: HeadReader,
    payload_left: usize,
    /// The first 4 payload bytes of the RST_STREAM (its code) or GOAWAY (its last
    /// stream id) being read, and how many are in.
    word: Option<(u8, [u8; 4], usize)>,
    /// Resets seen since the last [`FrameTally::take`], by code.
    counts: [u32; CODES],
    /// The last stream id of the latest GOAWAY.
    goaway_last_stream: Option<u32>,
}

impl FrameTally {
    /// For bytes that start with the client preface (a client's frames).
    pub fn after_preface() -> FrameTally {
        FrameTally { preface_left: PREFACE_LEN, ..FrameTally::default() }
    }

    /// The next bytes of the direction.
    pub fn scan(&mut self, mut bytes: &[u8]) {
        let skip = self.preface_left.min(bytes.len());
        self.preface_left -= skip;
        bytes = &bytes[skip..];
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                if let Some((kind, word, have)) = &mut self.word {
                    let k = (4 - *have).min(n);
                    word[*have..*have + k].copy_from_slice(&bytes[..k]);
                    *have += k;
                    if *have == 4 {
                        let value = u32::from_be_bytes(*word);
                        if *kind == RST_STREAM {
                            self.counts[(value as usize).min(CODES - 1)] += 1;
                        } else {
                            self.goaway_last_stream = Some(value & 0x7fff_ffff);
                        }
                        self.word = None;
                    }
                }
                self.payload_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let Some(h) = self.head.take(&mut bytes) else { break };
            self.payload_left = h.len;
            // A RST_STREAM of another size is a FRAME_SIZE_ERROR, not a reset.
            let wanted = (h.kind == RST_STREAM && h.len == 4) || (h.kind == GOAWAY && h.len >= 8);
            self.word = wanted.then_some((h.kind, [0; 4], 0));
        }
    }

    /// The last stream id of the latest GOAWAY seen, if any: streams above it were not
    /// processed.
    pub fn goaway_last_stream(&self) -> Option<u32> {
        self.goaway_last_stream
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
    fn a_goaway_tells_its_last_stream() {
        let mut t = FrameTally::default();
        let goaway = frame(GOAWAY, &[0x80, 0, 0, 5, 0, 0, 0, 0, b'x']);
        for b in goaway.chunks(2) {
            t.scan(b);
        }
        assert_eq!(t.goaway_last_stream(), Some(5), "the reserved bit is not part of the id");
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
            let mut t = FrameTally::after_preface();
            for c in bytes.chunks(chunk) {
                t.scan(c);
            }
            let counts = t.take();
            assert_eq!((counts[8], counts[7], counts[CODES - 1]), (2, 1, 1), "chunks of {chunk}");
            assert_eq!(counts.iter().sum::<u32>(), 4);
            assert_eq!(t.take(), [0; CODES], "taken once");
            assert_eq!(t.goaway_last_stream(), None);
        }
    }
}
