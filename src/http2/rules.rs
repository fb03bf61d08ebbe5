//! What a client's frames may do to its streams, checked frame by frame as the bytes go
//! by, for the RFC 9113 rules the `h2` crate answers with another error code or not at
//! all. Each finding is a connection error (GOAWAY; §5.4.1 lets an endpoint treat any
//! stream error as one):
//!
//! - a frame longer than our SETTINGS_MAX_FRAME_SIZE: FRAME_SIZE_ERROR (§4.2);
//! - PUSH_PROMISE from a client: PROTOCOL_ERROR (§8.4);
//! - SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1: FLOW_CONTROL_ERROR (§6.5.2);
//! - DATA or HEADERS on a stream the client already ended (END_STREAM) or reset:
//!   STREAM_CLOSED (§5.1);
//! - a second HEADERS without END_STREAM (§8.1), a trailer block naming a pseudo-header
//!   field (§8.1), or a field block interrupted by another frame (§6.10): PROTOCOL_ERROR;
//! - a field block that does not decode: COMPRESSION_ERROR (§4.3; see [`field_block`]).
//!
//! Only the client's side of each stream is tracked (what it opened, ended or reset), in
//! bounded memory: streams it leaves open are forgotten oldest first past a cap (a stream
//! we reset is one the client never ends), and ended ones are remembered for the last
//! [`ENDED_MEMORY`] streams. Anything not remembered is left to `h2`.
//!
//! [`field_block`]: super::field_block

use super::field_block::{BlockError, BlockWalk};
use h2::Reason;
use std::collections::VecDeque;

/// Streams the client ended or reset, remembered to answer later frames on them.
pub const ENDED_MEMORY: usize = 128;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const MAX_WINDOW: u32 = (1 << 31) - 1;

/// How the payload of the frame being read is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Payload {
    /// Not looked at.
    Skip,
    /// A HEADERS or CONTINUATION payload: `offset` bytes seen of `len`; the field block
    /// is the part after `prefix` and before the padding (`pad`, known once the pad
    /// length byte is read when `padded`).
    Block { offset: usize, len: usize, prefix: usize, padded: bool, pad: usize, end_headers: bool },
    /// A SETTINGS payload: `have` bytes of the current 6-byte entry.
    Settings { entry: [u8; 6], have: usize },
}

/// The rules over one client connection's frames.
#[derive(Debug)]
pub struct StreamRules {
    max_frame_size: usize,
    /// Most streams remembered as open on the client's side.
    open_cap: usize,
    /// The highest stream id the client opened.
    highest: u32,
    /// Streams the client opened and has not ended or reset, lowest id first.
    open: Vec<u32>,
    /// Streams the client ended or reset, most recent last.
    ended: VecDeque<u32>,
    payload: Payload,
    /// The field block in progress and its stream (from a HEADERS frame to the frame
    /// with END_HEADERS).
    block: Option<(u32, BlockWalk)>,
}

impl StreamRules {
    /// Rules for a connection that advertised `max_frame_size` and allows
    /// `max_concurrent_streams`.
    pub fn new(max_frame_size: u32, max_concurrent_streams: u32) -> StreamRules {
        StreamRules {
            max_frame_size: max_frame_size as usize,
            open_cap: 2 * max_concurrent_streams as usize + 16,
            highest: 0,
            open: Vec::new(),
            ended: VecDeque::with_capacity(ENDED_MEMORY),
            payload: Payload::Skip,
            block: None,
        }
    }

    /// A frame header: kind, flags, stream id, payload length.
    pub fn frame(&mut self, kind: u8, flags: u8, stream: u32, len: usize) -> Option<Reason> {
        self.payload = Payload::Skip;
        if len > self.max_frame_size {
            return Some(Reason::FRAME_SIZE_ERROR);
        }
        if let Some((block_stream, _)) = self.block {
            // Nothing but the block's CONTINUATION frames until it ends (§6.10).
            if kind != CONTINUATION || stream != block_stream {
                return Some(Reason::PROTOCOL_ERROR);
            }
        }
        match kind {
            PUSH_PROMISE => return Some(Reason::PROTOCOL_ERROR),
            SETTINGS if flags & ACK == 0 => self.payload = Payload::Settings { entry: [0; 6], have: 0 },
            HEADERS => return self.headers(flags, stream, len),
            CONTINUATION if self.block.is_some() => self.payload = block_payload(flags, len, false, 0),
            DATA => {
                if let Some(i) = self.open.iter().position(|&id| id == stream) {
                    if flags & END_STREAM != 0 {
                        self.end(i);
                    }
                } else if self.ended.contains(&stream) {
                    return Some(Reason::STREAM_CLOSED);
                }
            }
            RST_STREAM => {
                if let Some(i) = self.open.iter().position(|&id| id == stream) {
                    self.end(i);
                }
            }
            _ => {}
        }
        None
    }

    /// The next bytes of the current frame's payload.
    pub fn payload(&mut self, bytes: &[u8]) -> Option<Reason> {
        match &mut self.payload {
            Payload::Skip => None,
            Payload::Settings { entry, have } => {
                for &b in bytes {
                    entry[*have] = b;
                    *have += 1;
                    if *have == entry.len() {
                        *have = 0;
                        let id = u16::from_be_bytes([entry[0], entry[1]]);
                        let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
                        if id == SETTINGS_INITIAL_WINDOW_SIZE && value > MAX_WINDOW {
                            return Some(Reason::FLOW_CONTROL_ERROR);
                        }
                    }
                }
                None
            }
            Payload::Block { offset, len, prefix, padded, pad, .. } => {
                let start = *offset;
                *offset += bytes.len();
                if *padded && start == 0 {
                    *pad = usize::from(bytes[0]);
                }
                // The part of these bytes inside [prefix, len - pad).
                let block_end = len.saturating_sub(*pad);
                let from = (*prefix).max(start) - start;
                let to = block_end.min(*offset).saturating_sub(start);
                let (_, walk) = self.block.as_mut()?;
                if from < to {
                    if let Err(e) = walk.feed(&bytes[from..to]) {
                        return Some(block_error(e));
                    }
                }
                None
            }
        }
    }

    /// The current frame's payload is over.
    pub fn frame_end(&mut self) -> Option<Reason> {
        let Payload::Block { end_headers: true, .. } = self.payload else { return None };
        self.payload = Payload::Skip;
        self.block.take()?.1.finish().err().map(block_error)
    }

    fn headers(&mut self, flags: u8, stream: u32, len: usize) -> Option<Reason> {
        let trailer = if stream > self.highest && stream % 2 == 1 {
            self.highest = stream;
            if flags & END_STREAM != 0 {
                self.remember_ended(stream);
            } else {
                if self.open.len() >= self.open_cap {
                    self.open.remove(0);
                }
                self.open.push(stream);
            }
            false
        } else if let Some(i) = self.open.iter().position(|&id| id == stream) {
            // A second field block on an open stream: trailers, which end it (§8.1).
            if flags & END_STREAM == 0 {
                return Some(Reason::PROTOCOL_ERROR);
            }
            self.end(i);
            true
        } else if self.ended.contains(&stream) {
            return Some(Reason::STREAM_CLOSED);
        } else {
            // A lower id never opened, an even id, stream 0: `h2` answers.
            return None;
        };
        self.block = Some((stream, BlockWalk::new(trailer)));
        let priority = if flags & PRIORITY != 0 { 5 } else { 0 };
        self.payload = block_payload(flags, len, flags & PADDED != 0, priority);
        if len == 0 {
            return self.frame_end();
        }
        None
    }

    fn end(&mut self, open_index: usize) {
        let id = self.open.remove(open_index);
        self.remember_ended(id);
    }

    fn remember_ended(&mut self, stream: u32) {
        if self.ended.len() == ENDED_MEMORY {
            self.ended.pop_front();
        }
        self.ended.push_back(stream);
    }
}

fn block_payload(flags: u8, len: usize, padded: bool, priority: usize) -> Payload {
    let prefix = usize::from(padded) + priority;
    Payload::Block { offset: 0, len, prefix, padded, pad: 0, end_headers: flags & END_HEADERS != 0 }
}

fn block_error(e: BlockError) -> Reason {
    match e {
        BlockError::Malformed => Reason::COMPRESSION_ERROR,
        BlockError::PseudoInTrailer => Reason::PROTOCOL_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds one whole frame; the first finding.
    fn frame(r: &mut StreamRules, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Option<Reason> {
        r.frame(kind, flags, stream, payload.len())
            .or_else(|| if payload.is_empty() { None } else { r.payload(payload) })
            .or_else(|| r.frame_end())
    }

    const GET: &[u8] = b"\x82\x86\x84\x41\x0bexample.com";

    fn rules() -> StreamRules {
        StreamRules::new(16_384, 100)
    }

    #[test]
    fn ordinary_requests_with_bodies_and_trailers_pass() {
        let mut r = rules();
        assert_eq!(frame(&mut r, HEADERS, END_HEADERS, 1, GET), None);
        assert_eq!(frame(&mut r, DATA, 0, 1, b"body"), None);
        assert_eq!(frame(&mut r, HEADERS, END_HEADERS | END_STREAM, 1, b"\x40\x06x-test\x02ok"), None);
        assert_eq!(frame(&mut r, HEADERS, END_HEADERS | END_STREAM, 3, GET), None);
        assert_eq!(frame(&mut r, HEADERS, 0, 5, &GET[..3]), None, "a block split over CONTINUATION");
        assert_eq!(frame(&mut r, CONTINUATION, END_HEADERS, 5, &GET[3..]), None);
        assert_eq!(frame(&mut r, DATA, END_STREAM, 5, b"x"), None);
        assert_eq!(frame(&mut r, RST_STREAM, 0, 5, &[0, 0, 0, 8]), None, "a reset after the end is allowed");
    }

    #[test]
    fn frames_after_the_clients_end_or_reset_are_stream_closed() {
        let mut r = rules();
        assert_eq!(frame(&mut r, HEADERS, END_HEADERS | END_STREAM, 1, GET), None);
        assert_eq!(frame(&mut r, DATA, END_STREAM, 1, b"test"), Some(Reason::STREAM_CLOSED));
        let mut r = rules();
        assert_eq!(frame(&mut r, HEADERS, END_HEADERS | END_STREAM, 1, GET), None);
        assert_eq!(frame(&mut r, HEADERS, END_HEADERS | END_STREAM, 1, GET), Some(Reason::STREAM_CLOSED));
        let mut r = rules();
        assert_eq!(frame(&mut r, HEADERS, END_HEADERS, 1, GET), None);
        assert_eq!(frame(&mut r, RST_STREAM, 0, 1, &[0, 0, 0, 8]), None);
        assert_eq!(frame(&mut r, DATA, 0, 1, b"late"), Some(Reason::STREAM_CLOSED));
        // A lower id the client never opened is h2's to answer (PROTOCOL_ERROR there).
        let mut r = rules();
        assert_eq!(frame(&mut r, HEADERS, END_HEADERS | END_STREAM, 5, GET), None);
        assert_eq!(frame(&mut r, HEADERS, END_HEADERS | END_STREAM, 3, GET), None);
    }

    #[test]
    fn malformed_trailers_and_blocks_are_found() {
        let mut r = rules();
        assert_eq!(frame(&mut r, HEADERS, END_HEADERS, 1, GET), None);
        assert_eq!(frame(&mut r, HEADERS, END_HEADERS, 1, b"\x40\x06x-test\x02ok"), Some(Reason::PROTOCOL_ERROR));
        let mut r = rules();
        assert_eq!(frame(&mut r, HEADERS, END_HEADERS, 1, GET), None);
        assert_eq!(frame(&mut r, HEADERS, END_HEADERS | END_STREAM, 1, b"\x83"), Some(Reason::PROTOCOL_ERROR));
        let mut r = rules();
        assert_eq!(frame(&mut r, HEADERS, END_HEADERS | END_STREAM, 1, b"\x40"), Some(Reason::COMPRESSION_ERROR));
        // Padding and priority fields are not part of the block.
        let mut padded = vec![3u8, 0, 0, 0, 0, 16];
        padded.extend_from_slice(GET);
        padded.extend([0, 0, 0]);
        let mut r = rules();
        assert_eq!(frame(&mut r, HEADERS, END_HEADERS | END_STREAM | PADDED | PRIORITY, 1, &padded), None);
        let mut r = rules();
        let mut fed = r.frame(HEADERS, END_HEADERS | END_STREAM | PADDED | PRIORITY, 1, padded.len());
        for b in padded.chunks(1) {
            fed = fed.or_else(|| r.payload(b));
        }
        assert_eq!(fed.or_else(|| r.frame_end()), None, "byte by byte");
    }

    #[test]
    fn a_field_block_interrupted_by_another_frame_is_a_protocol_error() {
        let mut r = rules();
        assert_eq!(frame(&mut r, HEADERS, END_STREAM, 1, &GET[..3]), None);
        assert_eq!(frame(&mut r, DATA, END_STREAM, 1, b"test"), Some(Reason::PROTOCOL_ERROR));
        let mut r = rules();
        assert_eq!(frame(&mut r, HEADERS, END_STREAM, 1, &GET[..3]), None);
        assert_eq!(frame(&mut r, CONTINUATION, END_HEADERS, 3, &GET[3..]), Some(Reason::PROTOCOL_ERROR));
    }

    #[test]
    fn oversized_frames_push_promise_and_bad_windows_are_connection_errors() {
        let mut r = rules();
        assert_eq!(r.frame(DATA, 0, 1, 16_385), Some(Reason::FRAME_SIZE_ERROR));
        assert_eq!(
            frame(&mut rules(), PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2, 0x88]),
            Some(Reason::PROTOCOL_ERROR)
        );
        let too_big = [0, 4, 0x80, 0, 0, 0];
        assert_eq!(frame(&mut rules(), SETTINGS, 0, 0, &too_big), Some(Reason::FLOW_CONTROL_ERROR));
        let fine = [0, 4, 0x7f, 0xff, 0xff, 0xff];
        assert_eq!(frame(&mut rules(), SETTINGS, 0, 0, &fine), None);
    }

    #[test]
    fn streams_left_open_are_forgotten_past_the_cap() {
        let mut r = StreamRules::new(16_384, 2);
        for id in (1..200).step_by(2) {
            assert_eq!(frame(&mut r, HEADERS, END_HEADERS, id, GET), None);
        }
        assert!(r.open.len() <= 2 * 2 + 16);
        // A forgotten stream's DATA is left to h2, not called closed.
        assert_eq!(frame(&mut r, DATA, 0, 1, b"x"), None);
    }
}
