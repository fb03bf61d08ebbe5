//! RST_STREAM frames counted by error code, and the last stream id and code of a GOAWAY, as the
//! bytes of one direction of an HTTP/2 connection pass through its pipe (frame headers
//! and a few payload bytes only; nothing is buffered). Both legs, both directions: what
//! `h2` sends on its own (REFUSED_STREAM past the stream limit, PROTOCOL_ERROR for a
//! malformed stream...) is counted as surely as what we ask for, and what a peer sends
//! as surely as what `h2` tells us. The GOAWAY's last stream id tells which requests an
//! origin never processed (RFC 9113 §6.8), which `h2` does not say.

/// Buckets: the error codes of RFC 9113 §7 (0x0..=0xd), then one for every other code.
pub const CODES: usize = 15;

use super::frame_head::{FrameHead, HeadReader};

const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;
const PREFACE_LEN: usize = 24;

/// The counter over one direction.
#[derive(Debug, Clone, Default)]
pub struct FrameTally {
    preface_left: usize,
    head: HeadReader,
    payload_left: usize,
    /// The leading payload bytes wanted of the frame being read: its kind, the bytes so
    /// far, how many are in and how many are wanted (a RST_STREAM's code: 4; a GOAWAY's
    /// last stream id and code: 8).
    word: Option<(u8, [u8; 8], usize, usize)>,
    /// Resets seen since the last [`FrameTally::take`], by code.
    counts: [u32; CODES],
    /// The last stream id of the latest GOAWAY.
    goaway_last_stream: Option<u32>,
    /// The code of a GOAWAY not yet taken by [`FrameTally::take_goaway`].
    goaway_code: Option<u32>,
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
                self.payload(&bytes[..n]);
                self.payload_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let Some(h) = self.head.take(&mut bytes) else { break };
            self.payload_left = h.len;
            self.frame(&h);
        }
    }

    /// A frame header, for a caller that reads the frames itself (then [`Self::payload`]
    /// with the frame's payload bytes, instead of [`Self::scan`]).
    pub fn frame(&mut self, h: &FrameHead) {
        // A RST_STREAM of another size is a FRAME_SIZE_ERROR, not a reset.
        self.word = match h.kind {
            RST_STREAM if h.len == 4 => Some((h.kind, [0; 8], 0, 4)),
            GOAWAY if h.len >= 8 => Some((h.kind, [0; 8], 0, 8)),
            _ => None,
        };
    }

    /// Payload bytes of the frame [`Self::frame`] announced.
    pub fn payload(&mut self, bytes: &[u8]) {
        let Some((kind, word, have, want)) = &mut self.word else { return };
        let k = (*want - *have).min(bytes.len());
        word[*have..*have + k].copy_from_slice(&bytes[..k]);
        *have += k;
        if have < want {
            return;
        }
        let first = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        if *kind == RST_STREAM {
            self.counts[(first as usize).min(CODES - 1)] += 1;
        } else {
            self.goaway_last_stream = Some(first & 0x7fff_ffff);
            self.goaway_code = Some(u32::from_be_bytes([word[4], word[5], word[6], word[7]]));
        }
        self.word = None;
    }

    /// The last stream id of the latest GOAWAY seen, if any: streams above it were not
    /// processed.
    pub fn goaway_last_stream(&self) -> Option<u32> {
        self.goaway_last_stream
    }

    /// The error code of a GOAWAY seen since the last call.
    pub fn take_goaway(&mut self) -> Option<u32> {
        self.goaway_code.take()
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
        assert_eq!(t.take_goaway(), Some(0));
        assert_eq!(t.take_goaway(), None, "taken once");
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
