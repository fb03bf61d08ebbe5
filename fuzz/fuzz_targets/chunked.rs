//! Chunked bodies: `ChunkedDecoder` on arbitrary bytes. The first input byte picks the
//! trailer limit and the split pattern; the rest is the body. Beyond "no panic":
//! - fed in one piece, byte by byte, or in pieces of pseudo-random sizes, the decoder
//!   gives the same answer: the same error, or the same end and the same chunk data;
//! - it never consumes more than it was given, and stops right after the final CRLF;
//! - a finished body fed again alone ends at the same place, and nothing after the end
//!   is taken;
//! - the chunk data re-encoded as one chunk decodes to the same data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::h1::{ChunkedDecoder, H1Error, H1ErrorKind};

/// What a whole feed sequence found: the end (if any) and the chunk data seen.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    consumed: usize,
    done: bool,
    data: Vec<u8>,
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, body)) = input.split_first() else {
        return;
    };
    let max_trailer = usize::from(mode & 0x0f) * 8;
    let one = decode(body, max_trailer, |_| body.len());
    let bytewise = decode(body, max_trailer, |_| 1);
    let mut state = u32::from(mode) | 0x100;
    let pieces = decode(body, max_trailer, |_| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        1 + (state % 37) as usize
    });
    assert_eq!(one, bytewise, "one piece and byte by byte disagree");
    assert_eq!(one, pieces, "one piece and random pieces disagree");
    let Ok(outcome) = one else {
        return;
    };
    assert!(outcome.consumed <= body.len());
    if !outcome.done {
        assert_eq!(outcome.consumed, body.len());
        return;
    }
    assert!(body[..outcome.consumed].ends_with(b"\r\n"), "ended before a CRLF");
    let again = decode(&body[..outcome.consumed], max_trailer, |_| usize::MAX).expect("a finished body again");
    assert_eq!(again, outcome, "the body alone ends elsewhere");

    let mut framed = format!("{:x}\r\n", outcome.data.len()).into_bytes();
    if !outcome.data.is_empty() {
        framed.extend_from_slice(&outcome.data);
        framed.extend_from_slice(b"\r\n0\r\n");
    }
    framed.extend_from_slice(b"\r\n");
    let re = decode(&framed, 0, |_| usize::MAX).expect("re-encoded body");
    assert_eq!(re, Outcome { consumed: framed.len(), done: true, data: outcome.data });
});

/// Feeds `body` in pieces of `next_len(i)` bytes (at least one), collecting the data.
fn decode(body: &[u8], max_trailer: usize, mut next_len: impl FnMut(usize) -> usize) -> Result<Outcome, H1Error> {
    let mut decoder = ChunkedDecoder::new(max_trailer);
    let mut out = Outcome { consumed: 0, done: false, data: Vec::new() };
    let mut at = 0;
    let mut ranges = Vec::new();
    loop {
        let len = next_len(at).max(1).min(body.len() - at);
        let piece = &body[at..at + len];
        ranges.clear();
        let progress = match decoder.feed_with_data(piece, &mut ranges) {
            Ok(p) => p,
            Err(e) => {
                assert_eq!(e.kind, H1ErrorKind::BadRequest);
                assert_eq!(decoder.feed(b"0\r\n\r\n"), Err(e), "errors are not sticky");
                return Err(e);
            }
        };
        assert!(progress.consumed <= piece.len());
        let mut last_end = 0;
        for r in &ranges {
            assert!(r.start >= last_end && r.end <= progress.consumed, "data range {r:?} out of place");
            last_end = r.end;
            out.data.extend_from_slice(&piece[r.clone()]);
        }
        out.consumed += progress.consumed;
        at += len;
        if progress.done {
            assert!(decoder.is_done());
            out.done = true;
            // Nothing after the end belongs to the body.
            assert_eq!(decoder.feed(b"5\r\nhello\r\n").map(|p| (p.consumed, p.done)), Ok((0, true)));
            return Ok(out);
        }
        assert_eq!(progress.consumed, piece.len(), "stopped early without finishing");
        if at == body.len() {
            return Ok(out);
        }
    }
}
