//! Our own watch over what a client sends, on top of `h2`'s defences: frames are read as
//! the bytes go by (nothing is buffered), and a client that sends too many frames of a
//! kind that costs us work without giving any (PING, SETTINGS, empty DATA, resets of
//! streams, endless CONTINUATION) is told GOAWAY ENHANCE_YOUR_CALM and closed. The same
//! pass applies the stream rules of [`super::rules`] (RFC 9113 errors `h2` answers with
//! another code, or not at all).
//!
//! Rates are counted per second of the worker's clock; a well-behaved client stays far
//! below every limit (browsers send a handful of each per connection).

use super::frame_head::HeadReader;
use super::rules::StreamRules;
use super::tally::FrameTally;
use std::time::{Duration, Instant};

/// What a client flooded us with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flood {
    Ping,
    Settings,
    EmptyData,
    Reset,
    Continuation,
}

impl Flood {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Flood::Ping => "ping",
            Flood::Settings => "settings",
            Flood::EmptyData => "empty_data",
            Flood::Reset => "rst_stream",
            Flood::Continuation => "continuation",
        }
    }

    pub const ALL: [Flood; 5] = [Flood::Ping, Flood::Settings, Flood::EmptyData, Flood::Reset, Flood::Continuation];
}

/// What the watch found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Too many frames of a kind: GOAWAY ENHANCE_YOUR_CALM.
    Flood(Flood),
    /// A connection error (RFC 9113): the client's first frame is not SETTINGS (§3.4,
    /// PROTOCOL_ERROR), a frame of fixed size has another (§6.3, §6.4, §6.5, §6.7, §6.9:
    /// FRAME_SIZE_ERROR), or a stream rule of [`StreamRules`] is broken. Checked here
    /// because the `h2` crate answers them with another code, or not at all.
    Violation(h2::Reason),
}

/// Limits per second (and CONTINUATION frames per header block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodLimits {
    pub pings: u32,
    pub settings: u32,
    pub empty_data: u32,
    pub resets: u32,
    pub continuations: u32,
}

impl Default for FloodLimits {
    fn default() -> Self {
        FloodLimits { pings: 100, settings: 100, empty_data: 200, resets: 200, continuations: 32 }
    }
}

const PREFACE_LEN: usize = 24;
const GOAWAY: u8 = 0x7;

/// The watch over one connection's inbound bytes.
#[derive(Debug)]
pub struct FrameWatch {
    limits: FloodLimits,
    /// Preface bytes still to skip.
    preface_left: usize,
    head: HeadReader,
    /// Payload bytes of the current frame still to skip.
    payload_left: usize,
    /// CONTINUATION frames in the current header block.
    continuations: u32,
    /// No frame header read yet: the first must be SETTINGS (RFC 9113 §3.4).
    first: bool,
    window_start: Option<Instant>,
    counts: [u32; 4],
    rules: StreamRules,
    /// The client's resets and GOAWAYs, read in the same pass.
    tally: FrameTally,
    /// The frame being read is a GOAWAY (not passed on).
    in_goaway: bool,
}

impl FrameWatch {
    /// `rules`: the stream rules for the connection's settings.
    pub fn new(limits: FloodLimits, rules: StreamRules) -> FrameWatch {
        FrameWatch {
            rules,
            tally: FrameTally::default(),
            in_goaway: false,
            limits,
            preface_left: PREFACE_LEN,
            head: HeadReader::default(),
            payload_left: 0,
            continuations: 0,
            first: true,
            window_start: None,
            counts: [0; 4],
        }
    }

    /// Looks at the next inbound bytes, passing on to `keep` those `h2` is to read: all
    /// but the client's GOAWAY frames (see [`FrameWatch::goaway_received`]) and the bytes
    /// of a frame header not complete yet (passed on once it is). The first flood or
    /// violation found, if any (the bytes after it are not passed on).
    pub fn filter(&mut self, mut bytes: &[u8], now: Instant, keep: &mut dyn FnMut(&[u8])) -> Option<Verdict> {
        match self.window_start {
            Some(t) if now.duration_since(t) < Duration::from_secs(1) => {}
            _ => {
                self.window_start = Some(now);
                self.counts = [0; 4];
            }
        }
        let skip = self.preface_left.min(bytes.len());
        let at = PREFACE_LEN - self.preface_left;
        if bytes[..skip] != super::PREFACE[at..at + skip] {
            // RFC 9113 §3.4: an invalid preface is a PROTOCOL_ERROR.
            return Some(Verdict::Violation(h2::Reason::PROTOCOL_ERROR));
        }
        self.preface_left -= skip;
        if skip > 0 {
            keep(&bytes[..skip]);
        }
        bytes = &bytes[skip..];
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                let payload = &bytes[..n];
                let mut found = None;
                self.tally.payload(payload);
                if !self.in_goaway {
                    found = self.rules.payload(payload);
                    keep(payload);
                }
                self.payload_left -= n;
                bytes = &bytes[n..];
                if self.payload_left == 0 {
                    found = found.or_else(|| self.frame_end());
                }
                if let Some(reason) = found {
                    return Some(Verdict::Violation(reason));
                }
                continue;
            }
            let Some(h) = self.head.take(&mut bytes) else { break };
            let len = h.len;
            self.payload_left = len;
            if std::mem::take(&mut self.first) && (h.kind != 0x4 || h.flags & 0x1 != 0) {
                return Some(Verdict::Violation(h2::Reason::PROTOCOL_ERROR));
            }
            if let Some(reason) = bad_size(h.kind, h.flags, len) {
                return Some(Verdict::Violation(reason));
            }
            if let Some(reason) = self.rules.frame(h.kind, h.flags, h.stream, len) {
                return Some(Verdict::Violation(reason));
            }
            self.tally.frame(&h);
            if h.kind == GOAWAY {
                if h.stream != 0 {
                    return Some(Verdict::Violation(h2::Reason::PROTOCOL_ERROR));
                }
                self.in_goaway = true;
            } else {
                keep(&h.raw);
            }
            if let Some(f) = self.count(h.kind, h.flags, len) {
                return Some(Verdict::Flood(f));
            }
            if len == 0 {
                if let Some(reason) = self.frame_end() {
                    return Some(Verdict::Violation(reason));
                }
            }
        }
        None
    }

    /// [`FrameWatch::filter`], dropping what it keeps (for tests of the verdicts).
    #[cfg(test)]
    pub fn scan(&mut self, bytes: &[u8], now: Instant) -> Option<Verdict> {
        self.filter(bytes, now, &mut |_| {})
    }

    /// The error code of a GOAWAY the client sent since the last call. The frame is not
    /// passed on: a client's GOAWAY only tells a server not to push (we never do) and
    /// why the client is leaving, and `h2` would close at once on it, where RFC 9113
    /// §6.8 lets the connection finish what is in flight and answer a PING meanwhile.
    /// The client closing its side ends the connection as usual.
    pub fn goaway_received(&mut self) -> Option<h2::Reason> {
        self.tally.take_goaway().map(h2::Reason::from)
    }

    /// The client's RST_STREAM frames since the last call, by code (`tally::CODES`).
    pub fn resets_received(&mut self) -> [u32; super::tally::CODES] {
        self.tally.take()
    }

    fn frame_end(&mut self) -> Option<h2::Reason> {
        if std::mem::take(&mut self.in_goaway) {
            return None;
        }
        self.rules.frame_end()
    }

    fn count(&mut self, kind: u8, flags: u8, len: usize) -> Option<Flood> {
        const ACK: u8 = 0x1;
        const END_STREAM: u8 = 0x1;
        const END_HEADERS: u8 = 0x4;
        let (slot, limit, flood) = match kind {
            0x0 if len == 0 && flags & END_STREAM == 0 => (0, self.limits.empty_data, Flood::EmptyData),
            0x3 => (1, self.limits.resets, Flood::Reset),
            0x4 if flags & ACK == 0 => (2, self.limits.settings, Flood::Settings),
            0x6 if flags & ACK == 0 => (3, self.limits.pings, Flood::Ping),
            0x1 => {
                self.continuations = 0;
                return None;
            }
            0x9 => {
                self.continuations += 1;
                if flags & END_HEADERS != 0 {
                    self.continuations = 0;
                } else if self.continuations > self.limits.continuations {
                    return Some(Flood::Continuation);
                }
                return None;
            }
            _ => return None,
        };
        self.counts[slot] += 1;
        (self.counts[slot] > limit).then_some(flood)
    }
}

/// A frame whose length its type fixes, with another length.
fn bad_size(kind: u8, flags: u8, len: usize) -> Option<h2::Reason> {
    const ACK: u8 = 0x1;
    let bad = match kind {
        0x2 => len != 5,                     // PRIORITY
        0x3 => len != 4,                     // RST_STREAM
        0x4 if flags & ACK != 0 => len != 0, // SETTINGS ACK
        0x4 => !len.is_multiple_of(6),       // SETTINGS
        0x6 => len != 8,                     // PING
        GOAWAY => len < 8,                   // GOAWAY (and its debug data)
        0x8 => len != 4,                     // WINDOW_UPDATE
        _ => false,
    };
    bad.then_some(h2::Reason::FRAME_SIZE_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::http2::PREFACE;

    #[test]
    fn a_mangled_preface_is_a_protocol_error() {
        let mut w = watch();
        let now = Instant::now();
        assert_eq!(w.scan(&PREFACE[..16], now), None);
        assert_eq!(w.scan(b"\r\nXX", now), Some(Verdict::Violation(h2::Reason::PROTOCOL_ERROR)));
    }

    fn watch() -> FrameWatch {
        FrameWatch::new(FloodLimits::default(), StreamRules::new(16_384, 100))
    }

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        frame_on(1, kind, flags, payload)
    }

    fn frame_on(stream: u8, kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags, 0, 0, 0, stream];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn a_ping_flood_is_found_even_when_frames_arrive_byte_by_byte() {
        let mut w = watch();
        let now = Instant::now();
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(0x4, 0, &[]));
        for _ in 0..101 {
            bytes.extend(frame(0x6, 0, &[0; 8]));
        }
        let mut found = None;
        for b in bytes.chunks(1) {
            found = found.or(w.scan(b, now));
        }
        assert_eq!(found, Some(Verdict::Flood(Flood::Ping)));
    }

    #[test]
    fn acks_and_ordinary_traffic_are_not_floods_and_the_count_restarts_each_second() {
        let mut w = watch();
        let t0 = Instant::now();
        let mut bytes = frame(0x4, 0, &[]); // the client's SETTINGS comes first
        for _ in 0..150 {
            bytes.extend(frame(0x6, 0x1, &[0; 8])); // PING ACK
            bytes.extend(frame(0x0, 0, &[1; 100])); // DATA with bytes
        }
        for _ in 0..90 {
            bytes.extend(frame(0x4, 0, &[])); // SETTINGS
        }
        assert_eq!(w.scan(PREFACE, t0), None);
        assert_eq!(w.scan(&bytes, t0), None);
        assert_eq!(w.scan(&bytes, t0 + Duration::from_millis(1500)), None, "a new second, a new count");
        assert_eq!(w.scan(&bytes, t0 + Duration::from_millis(1600)), Some(Verdict::Flood(Flood::Settings)));
    }

    #[test]
    fn a_first_frame_other_than_settings_is_a_protocol_error() {
        let mut w = watch();
        let now = Instant::now();
        assert_eq!(w.scan(PREFACE, now), None);
        assert_eq!(w.scan(&frame(0x6, 0, &[0; 8]), now), Some(Verdict::Violation(h2::Reason::PROTOCOL_ERROR)));
        let mut ok = watch();
        assert_eq!(ok.scan(PREFACE, now), None);
        assert_eq!(ok.scan(&frame(0x4, 0, &[]), now), None);
        assert_eq!(ok.scan(&frame(0x6, 0, &[0; 8]), now), None, "PING after SETTINGS is fine");
    }

    #[test]
    fn frames_of_fixed_size_with_another_size_are_frame_size_errors() {
        let now = Instant::now();
        let size_error = Some(Verdict::Violation(h2::Reason::FRAME_SIZE_ERROR));
        for (kind, flags, payload) in
            [(0x6u8, 0u8, &[0u8; 6][..]), (0x8, 0, &[0; 3]), (0x3, 0, &[0; 5]), (0x2, 0, &[0; 4]), (0x4, 1, &[0; 6])]
        {
            let mut w = watch();
            assert_eq!(w.scan(PREFACE, now), None);
            assert_eq!(w.scan(&frame(0x4, 0, &[]), now), None);
            assert_eq!(w.scan(&frame(kind, flags, payload), now), size_error, "frame type {kind:#x}");
        }
        let mut w = watch();
        assert_eq!(w.scan(PREFACE, now), None);
        assert_eq!(w.scan(&frame(0x4, 0, &[0; 7]), now), size_error, "SETTINGS of 7 bytes");
    }

    #[test]
    fn everything_but_the_clients_goaway_is_passed_on_in_order() {
        let mut w = watch();
        let now = Instant::now();
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame_on(0, 0x4, 0, &[]));
        let goaway = frame_on(0, GOAWAY, 0, &[0, 0, 0, 0, 0, 0, 0, 0x2a]);
        let ping = frame_on(0, 0x6, 0, &[7; 8]);
        let mut wanted = bytes.clone();
        wanted.extend(&ping);
        bytes.extend(&goaway);
        bytes.extend(&ping);
        let mut kept = Vec::new();
        for chunk in bytes.chunks(5) {
            assert_eq!(w.filter(chunk, now, &mut |k| kept.extend_from_slice(k)), None);
        }
        assert_eq!(kept, wanted, "the GOAWAY is dropped, split headers are passed on whole");
        assert_eq!(w.goaway_received(), Some(h2::Reason::from(0x2a)));
        assert_eq!(w.goaway_received(), None, "reported once");
        let mut w = watch();
        assert_eq!(w.scan(&bytes[..33], now), None);
        assert_eq!(w.scan(&frame_on(1, GOAWAY, 0, &[0; 8]), now), Some(Verdict::Violation(h2::Reason::PROTOCOL_ERROR)));
    }

    #[test]
    fn an_endless_header_block_is_a_continuation_flood() {
        let mut w = watch();
        let now = Instant::now();
        assert_eq!(w.scan(PREFACE, now), None);
        assert_eq!(w.scan(&frame(0x4, 0, &[]), now), None);
        // Each fragment one indexed field line (:method GET, :path /, :scheme http).
        let mut bytes = frame_on(1, 0x1, 0, b"\x82");
        for _ in 0..10 {
            bytes.extend(frame_on(1, 0x9, 0, b"\x84"));
        }
        bytes.extend(frame_on(1, 0x9, 0x4, b"\x86"));
        assert_eq!(w.scan(&bytes, now), None, "a block that ends is fine");
        let mut flood = frame_on(3, 0x1, 0, b"\x82");
        for _ in 0..40 {
            flood.extend(frame_on(3, 0x9, 0, b""));
        }
        assert_eq!(w.scan(&flood, now), Some(Verdict::Flood(Flood::Continuation)));
    }
}
