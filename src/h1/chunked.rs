//! `ChunkedDecoder`: a streaming validator for a chunked body that the proxy forwards
//! verbatim. It finds where the body ends (last-chunk, trailer section, final CRLF) and
//! rejects anything ambiguous (bare LF, bad sizes, CTLs in extensions, oversized lines or
//! trailers) so that no two parsers can disagree on the message boundary.

use super::error::H1Error;
use super::headers::is_tchar;

/// Longest chunk-size line accepted (size and extensions, without the CRLF).
pub const MAX_CHUNK_SIZE_LINE: usize = 4096;
/// Most hex digits accepted in a chunk-size (16 fill a u64, so no overflow is possible).
const MAX_SIZE_DIGITS: u8 = 16;

const fn bad(detail: &'static str) -> H1Error {
    H1Error::bad_request(detail)
}

const ERR_SIZE: H1Error = bad("invalid chunk size");
const ERR_SIZE_EMPTY: H1Error = bad("empty chunk size");
const ERR_SIZE_DIGITS: H1Error = bad("chunk size has more than 16 hex digits");
const ERR_SIZE_LINE: H1Error = bad("chunk size line too long");
const ERR_SIZE_BARE_LF: H1Error = bad("bare LF in chunk size line");
const ERR_SIZE_BARE_CR: H1Error = bad("CR not followed by LF in chunk size line");
const ERR_EXT_CTL: H1Error = bad("control character in chunk extension");
const ERR_DATA_BARE_LF: H1Error = bad("bare LF after chunk data");
const ERR_DATA_CRLF: H1Error = bad("missing CRLF after chunk data");
const ERR_TRAILER_NAME: H1Error = bad("invalid trailer field name");
const ERR_TRAILER_FOLD: H1Error = bad("obsolete line folding in trailer");
const ERR_TRAILER_VALUE: H1Error = bad("invalid character in trailer value");
const ERR_TRAILER_BARE_LF: H1Error = bad("bare LF in trailer section");
const ERR_TRAILER_BARE_CR: H1Error = bad("CR not followed by LF in trailer section");
const ERR_TRAILER_SIZE: H1Error = bad("trailer section too large");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex digits of a chunk-size; `line` counts the bytes of the line so far.
    Size {
        size: u64,
        digits: u8,
        line: usize,
    },
    /// After the digits: whitespace, then `;` and chunk extensions up to the CR.
    Ext {
        size: u64,
        line: usize,
        in_ext: bool,
    },
    /// The size line's CR was seen; its LF is next.
    SizeLf {
        size: u64,
    },
    /// Inside chunk data.
    Data {
        remaining: u64,
    },
    /// Chunk data ended; its CR is next.
    DataCr,
    /// Chunk data and CR ended; its LF is next.
    DataLf,
    /// At the start of a trailer field line, or of the final CRLF.
    TrailerStart,
    TrailerName,
    TrailerValue,
    /// A trailer field line's CR was seen; its LF is next.
    TrailerLf,
    /// The final CR was seen; the LF that ends the body is next.
    FinalLf,
    Done,
    Failed {
        error: H1Error,
    },
}

/// Streaming validator for a chunked body that is forwarded verbatim.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    trailer_bytes: usize,
    max_trailer_bytes: usize,
}

/// What one `feed` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkProgress {
    /// How many input bytes belong to the body.
    pub consumed: usize,
    /// The body ended within them (exactly at `consumed`).
    pub done: bool,
}

impl ChunkedDecoder {
    /// A decoder at the start of a body; trailer fields may take up to
    /// `max_trailer_bytes` bytes (field lines with their CRLFs, not the final CRLF).
    pub fn new(max_trailer_bytes: usize) -> Self {
        ChunkedDecoder { state: State::Size { size: 0, digits: 0, line: 0 }, trailer_bytes: 0, max_trailer_bytes }
    }

    /// The whole body has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Scans `input` (the bytes following everything fed so far). Returns how many of
    /// them belong to the body and whether the body ended within them; when `done`,
    /// `consumed` stops right after the final CRLF, otherwise it is `input.len()`.
    /// After an error the decoder keeps returning that error.
    pub fn feed(&mut self, input: &[u8]) -> Result<ChunkProgress, H1Error> {
        self.feed_inner(input, None)
    }

    /// Like [`ChunkedDecoder::feed`], and also appends to `data` where the chunk-data
    /// bytes are (ranges into `input`, in order): what a proxy needs to strip the framing
    /// for an HTTP/1.0 client.
    pub fn feed_with_data(
        &mut self,
        input: &[u8],
        data: &mut Vec<std::ops::Range<usize>>,
    ) -> Result<ChunkProgress, H1Error> {
        self.feed_inner(input, Some(data))
    }

    fn feed_inner(
        &mut self,
        input: &[u8],
        data: Option<&mut Vec<std::ops::Range<usize>>>,
    ) -> Result<ChunkProgress, H1Error> {
        match self.run(input, data) {
            Ok(progress) => Ok(progress),
            Err(error) => {
                self.state = State::Failed { error };
                Err(error)
            }
        }
    }

    fn run(
        &mut self,
        input: &[u8],
        mut data: Option<&mut Vec<std::ops::Range<usize>>>,
    ) -> Result<ChunkProgress, H1Error> {
        let mut i = 0;
        while i < input.len() {
            // Chunk data: skip it in one step.
            if let State::Data { remaining } = self.state {
                let available = input.len() - i;
                let take = usize::try_from(remaining).map_or(available, |r| r.min(available));
                if let Some(d) = data.as_deref_mut() {
                    d.push(i..i + take);
                }
                i += take;
                let remaining = remaining - take as u64;
                self.state = if remaining == 0 { State::DataCr } else { State::Data { remaining } };
                continue;
            }
            let b = input[i];
            i += 1;
            self.state = match self.state {
                State::Size { size, digits, line } => {
                    let line = if b == b'\r' { line } else { bump_line(line)? };
                    match b {
                        b'\r' if digits > 0 => State::SizeLf { size },
                        b'\n' => return Err(ERR_SIZE_BARE_LF),
                        b'\r' | b';' | b' ' | b'\t' if digits == 0 => return Err(ERR_SIZE_EMPTY),
                        b';' | b' ' | b'\t' => State::Ext { size, line, in_ext: b == b';' },
                        _ => {
                            let value = hex_value(b).ok_or(ERR_SIZE)?;
                            if digits >= MAX_SIZE_DIGITS {
                                return Err(ERR_SIZE_DIGITS);
                            }
                            State::Size { size: (size << 4) | u64::from(value), digits: digits + 1, line }
                        }
                    }
                }
                State::Ext { size, line, in_ext } => match b {
                    b'\r' => State::SizeLf { size },
                    b'\n' => return Err(ERR_SIZE_BARE_LF),
                    _ => {
                        let line = bump_line(line)?;
                        if in_ext {
                            if is_ctl(b) {
                                return Err(ERR_EXT_CTL);
                            }
                            State::Ext { size, line, in_ext }
                        } else {
                            match b {
                                b' ' | b'\t' => State::Ext { size, line, in_ext },
                                b';' => State::Ext { size, line, in_ext: true },
                                _ => return Err(ERR_SIZE),
                            }
                        }
                    }
                },
                State::SizeLf { size } => match b {
                    b'\n' if size == 0 => State::TrailerStart,
                    b'\n' => State::Data { remaining: size },
                    _ => return Err(ERR_SIZE_BARE_CR),
                },
                State::Data { .. } => return Err(bad("internal: data state")),
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    b'\n' => return Err(ERR_DATA_BARE_LF),
                    _ => return Err(ERR_DATA_CRLF),
                },
                State::DataLf => match b {
                    b'\n' => State::Size { size: 0, digits: 0, line: 0 },
                    _ => return Err(ERR_DATA_CRLF),
                },
                State::TrailerStart => match b {
                    b'\r' => State::FinalLf,
                    b'\n' => return Err(ERR_TRAILER_BARE_LF),
                    b' ' | b'\t' => return Err(ERR_TRAILER_FOLD),
                    _ if is_tchar(b) => {
                        self.count_trailer()?;
                        State::TrailerName
                    }
                    _ => return Err(ERR_TRAILER_NAME),
                },
                State::TrailerName => {
                    self.count_trailer()?;
                    match b {
                        b':' => State::TrailerValue,
                        _ if is_tchar(b) => State::TrailerName,
                        _ => return Err(ERR_TRAILER_NAME),
                    }
                }
                State::TrailerValue => {
                    self.count_trailer()?;
                    match b {
                        b'\r' => State::TrailerLf,
                        b'\n' => return Err(ERR_TRAILER_BARE_LF),
                        _ if is_ctl(b) => return Err(ERR_TRAILER_VALUE),
                        _ => State::TrailerValue,
                    }
                }
                State::TrailerLf => {
                    self.count_trailer()?;
                    match b {
                        b'\n' => State::TrailerStart,
                        _ => return Err(ERR_TRAILER_BARE_CR),
                    }
                }
                State::FinalLf => match b {
                    b'\n' => {
                        self.state = State::Done;
                        return Ok(ChunkProgress { consumed: i, done: true });
                    }
                    _ => return Err(ERR_TRAILER_BARE_CR),
                },
                State::Done => {
                    // Nothing after the final CRLF belongs to this body.
                    return Ok(ChunkProgress { consumed: i - 1, done: true });
                }
                State::Failed { error } => return Err(error),
            };
        }
        match self.state {
            State::Done => Ok(ChunkProgress { consumed: 0, done: true }),
            State::Failed { error } => Err(error),
            _ => Ok(ChunkProgress { consumed: input.len(), done: false }),
        }
    }

    fn count_trailer(&mut self) -> Result<(), H1Error> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > self.max_trailer_bytes {
            Err(ERR_TRAILER_SIZE)
        } else {
            Ok(())
        }
    }
}

fn bump_line(line: usize) -> Result<usize, H1Error> {
    if line >= MAX_CHUNK_SIZE_LINE {
        Err(ERR_SIZE_LINE)
    } else {
        Ok(line + 1)
    }
}

/// CTL other than HTAB (RFC 5234: %x00-1F / %x7F).
fn is_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_ranges_cover_exactly_the_payload_in_any_split() {
        let body = b"5;x=1\r\nhello\r\n3\r\n wo\r\n0\r\nT: v\r\n\r\nNEXT";
        for split in 0..body.len() {
            let mut d = ChunkedDecoder::new(1024);
            let mut out = Vec::new();
            for part in [&body[..split], &body[split..]] {
                let mut ranges = Vec::new();
                let p = d.feed_with_data(part, &mut ranges).unwrap();
                for r in ranges {
                    out.extend_from_slice(&part[r]);
                }
                if p.done {
                    break;
                }
            }
            assert_eq!(out, b"hello wo", "split at {split}");
        }
    }

    const TRAILERS: usize = 1024;

    /// Feeds `input` in one piece.
    fn whole(input: &[u8]) -> Result<ChunkProgress, H1Error> {
        ChunkedDecoder::new(TRAILERS).feed(input)
    }

    /// Feeds `input` one byte at a time; returns the total consumed and whether done.
    fn bytewise(input: &[u8]) -> Result<ChunkProgress, H1Error> {
        let mut d = ChunkedDecoder::new(TRAILERS);
        let mut consumed = 0;
        for (i, b) in input.iter().enumerate() {
            let p = d.feed(std::slice::from_ref(b))?;
            consumed += p.consumed;
            if p.done {
                assert_eq!(p.consumed, 1, "done on a byte that is not the last LF");
                assert_eq!(consumed, i + 1);
                return Ok(ChunkProgress { consumed, done: true });
            }
            assert_eq!(p.consumed, 1);
        }
        Ok(ChunkProgress { consumed, done: false })
    }

    /// Feeds `input` split at every possible point into two pieces.
    fn all_splits(input: &[u8]) -> Vec<Result<ChunkProgress, H1Error>> {
        (0..=input.len())
            .map(|at| {
                let mut d = ChunkedDecoder::new(TRAILERS);
                let first = d.feed(&input[..at])?;
                if first.done {
                    return Ok(first);
                }
                let second = d.feed(&input[at..])?;
                Ok(ChunkProgress { consumed: first.consumed + second.consumed, done: second.done })
            })
            .collect()
    }

    /// A complete body: every way of feeding it ends exactly at its end.
    fn complete(body: &[u8]) {
        let done = Ok(ChunkProgress { consumed: body.len(), done: true });
        assert_eq!(whole(body), done, "{:?}", String::from_utf8_lossy(body));
        assert_eq!(bytewise(body), done, "{:?}", String::from_utf8_lossy(body));
        for r in all_splits(body) {
            assert_eq!(r, done);
        }
        // followed by the next message: consumed stops at the body's end
        let mut more = body.to_vec();
        more.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(whole(&more), done);
        assert_eq!(bytewise(&more), done);
    }

    /// An invalid body: rejected with `detail` whole, byte by byte and split anywhere.
    fn rejected(body: &[u8], detail: &str) {
        let e = whole(body).unwrap_err();
        assert_eq!(e.detail, detail, "{:?}", String::from_utf8_lossy(body));
        assert_eq!(e.kind, crate::h1::H1ErrorKind::BadRequest);
        assert_eq!(bytewise(body).unwrap_err().detail, detail);
        for r in all_splits(body) {
            assert_eq!(r.unwrap_err().detail, detail);
        }
    }

    /// A valid but unfinished body.
    fn unfinished(body: &[u8]) {
        let not_done = Ok(ChunkProgress { consumed: body.len(), done: false });
        assert_eq!(whole(body), not_done);
        assert_eq!(bytewise(body), not_done);
    }

    #[test]
    fn simple_bodies() {
        complete(b"0\r\n\r\n");
        complete(b"5\r\nhello\r\n0\r\n\r\n");
        complete(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
        complete(b"a\r\n0123456789\r\nA\r\n0123456789\r\n0\r\n\r\n");
        complete(b"00000005\r\nhello\r\n000\r\n\r\n");
        // chunk data may contain anything, CRLFs included
        complete(b"4\r\n\r\n\r\n\r\n0\r\n\r\n");
        complete(b"3\r\n\n\r\x00\r\n0\r\n\r\n");
    }

    #[test]
    fn extensions() {
        complete(b"5;name=value\r\nhello\r\n0\r\n\r\n");
        complete(b"5;a;b=\"q \\\" s\"\r\nhello\r\n0;last\r\n\r\n");
        complete(b"5 ;a\r\nhello\r\n0\t;x\r\n\r\n");
        complete(b"5 \r\nhello\r\n0\r\n\r\n");
        complete(b"5;\tx=\xff\r\nhello\r\n0\r\n\r\n");
        rejected(b"5;a\x00\r\nhello\r\n0\r\n\r\n", "control character in chunk extension");
        rejected(b"5;a\x7f\r\nhello\r\n0\r\n\r\n", "control character in chunk extension");
        rejected(b"5;a\x1b\r\nhello\r\n0\r\n\r\n", "control character in chunk extension");
        rejected(b"5;a\rb\r\nhello\r\n0\r\n\r\n", "CR not followed by LF in chunk size line");
        rejected(b"5;a\nhello\r\n0\r\n\r\n", "bare LF in chunk size line");
    }

    #[test]
    fn trailers() {
        complete(b"0\r\nX-Sum: 1\r\n\r\n");
        complete(b"5\r\nhello\r\n0\r\nA: 1\r\nB:\r\nC: x\ty \xff\r\n\r\n");
        rejected(b"0\r\nX Y: 1\r\n\r\n", "invalid trailer field name");
        rejected(b"0\r\nX : 1\r\n\r\n", "invalid trailer field name");
        rejected(b"0\r\n: 1\r\n\r\n", "invalid trailer field name");
        rejected(b"0\r\nX(: 1\r\n\r\n", "invalid trailer field name");
        rejected(b"0\r\nNoColon\r\n\r\n", "invalid trailer field name");
        rejected(b"0\r\n\x00: 1\r\n\r\n", "invalid trailer field name");
        rejected(b"0\r\nA: 1\r\n continued\r\n\r\n", "obsolete line folding in trailer");
        rejected(b"0\r\nA: 1\r\n\tcontinued\r\n\r\n", "obsolete line folding in trailer");
        rejected(b"0\r\nA: 1\x00\r\n\r\n", "invalid character in trailer value");
        rejected(b"0\r\nA: 1\x7f\r\n\r\n", "invalid character in trailer value");
        rejected(b"0\r\nA: 1\n\r\n", "bare LF in trailer section");
        rejected(b"0\r\nA: 1\r\n\n", "bare LF in trailer section");
        rejected(b"0\r\n\n", "bare LF in trailer section");
        rejected(b"0\r\nA: 1\rX\r\n\r\n", "CR not followed by LF in trailer section");
        rejected(b"0\r\n\rX", "CR not followed by LF in trailer section");
        rejected(b"0\r\nA: 1\r\n\rX", "CR not followed by LF in trailer section");
    }

    #[test]
    fn trailer_size_limit() {
        let body = b"0\r\nAbc: 12345\r\n\r\n"; // trailer field line is 12 bytes
        for (max, ok) in [(12, true), (11, false), (0, false)] {
            let mut d = ChunkedDecoder::new(max);
            let r = d.feed(body);
            if ok {
                assert_eq!(r, Ok(ChunkProgress { consumed: body.len(), done: true }));
            } else {
                assert_eq!(r.unwrap_err().detail, "trailer section too large");
            }
        }
        // no trailers at all needs no budget
        assert!(ChunkedDecoder::new(0).feed(b"0\r\n\r\n").unwrap().done);
        // the budget spans all fields, fed byte by byte
        let mut d = ChunkedDecoder::new(10);
        let mut result = Ok(ChunkProgress { consumed: 0, done: false });
        for b in b"0\r\nA: 1\r\nB: 2\r\n\r\n" {
            result = d.feed(std::slice::from_ref(b));
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result.unwrap_err().detail, "trailer section too large");
    }

    #[test]
    fn chunk_size_rejections() {
        rejected(b"\r\n", "empty chunk size");
        rejected(b";a\r\n", "empty chunk size");
        rejected(b" 5\r\nhello\r\n0\r\n\r\n", "empty chunk size");
        rejected(b"\thello", "empty chunk size");
        rejected(b"g\r\n", "invalid chunk size");
        rejected(b"-5\r\n", "invalid chunk size");
        rejected(b"+5\r\n", "invalid chunk size");
        rejected(b"0x5\r\n", "invalid chunk size");
        rejected(b"5x\r\n", "invalid chunk size");
        rejected(b"5 5\r\nhello\r\n", "invalid chunk size");
        rejected(b"5 x\r\n", "invalid chunk size");
        rejected(b"5\x00\r\n", "invalid chunk size");
        rejected(b"\n", "bare LF in chunk size line");
        rejected(b"5\nhello\r\n0\r\n\r\n", "bare LF in chunk size line");
        rejected(b"5 \nhello", "bare LF in chunk size line");
        rejected(b"5\rhello", "CR not followed by LF in chunk size line");
        rejected(b"0\r\r\n", "CR not followed by LF in chunk size line");
        rejected(b"00000000000000001\r\nx\r\n0\r\n\r\n", "chunk size has more than 16 hex digits");
        rejected(b"10000000000000000\r\n", "chunk size has more than 16 hex digits");
    }

    #[test]
    fn largest_chunk_size() {
        // 16 digits fit a u64 exactly
        let mut d = ChunkedDecoder::new(0);
        let p = d.feed(b"ffffffffffffffff\r\n").unwrap();
        assert!(!p.done);
        let p = d.feed(&[0u8; 4096]).unwrap();
        assert_eq!(p, ChunkProgress { consumed: 4096, done: false });
        assert_eq!(d.state, State::Data { remaining: u64::MAX - 4096 });
        let mut d = ChunkedDecoder::new(0);
        d.feed(b"FFFFFFFFFFFFFFFF;x\r\n").unwrap();
        assert_eq!(d.state, State::Data { remaining: u64::MAX });
    }

    #[test]
    fn size_line_limit() {
        let mut ok = b"5;".to_vec();
        ok.resize(MAX_CHUNK_SIZE_LINE, b'x');
        ok.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        complete(&ok);
        let mut long = b"5;".to_vec();
        long.resize(MAX_CHUNK_SIZE_LINE + 1, b'x');
        long.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        rejected(&long, "chunk size line too long");
        // whitespace padding counts too, and the limit holds across chunks
        let mut padded = b"5\r\nhello\r\n0".to_vec();
        padded.resize(padded.len() + MAX_CHUNK_SIZE_LINE, b' ');
        padded.extend_from_slice(b"\r\n\r\n");
        rejected(&padded, "chunk size line too long");
    }

    #[test]
    fn missing_crlf_after_data() {
        rejected(b"5\r\nhelloX\r\n0\r\n\r\n", "missing CRLF after chunk data");
        rejected(b"5\r\nhello\rX0\r\n\r\n", "missing CRLF after chunk data");
        rejected(b"5\r\nhello\r\r\n", "missing CRLF after chunk data");
        rejected(b"5\r\nhello\n0\r\n\r\n", "bare LF after chunk data");
        // a too-long chunk: the size said 3, the sender wrote 5
        rejected(b"3\r\nhello\r\n0\r\n\r\n", "missing CRLF after chunk data");
    }

    #[test]
    fn unfinished_bodies() {
        unfinished(b"");
        unfinished(b"5");
        unfinished(b"5\r");
        unfinished(b"5\r\n");
        unfinished(b"5\r\nhel");
        unfinished(b"5\r\nhello");
        unfinished(b"5\r\nhello\r");
        unfinished(b"5\r\nhello\r\n");
        unfinished(b"5\r\nhello\r\n0");
        unfinished(b"5\r\nhello\r\n0\r\n");
        unfinished(b"5\r\nhello\r\n0\r\nX: 1");
        unfinished(b"5\r\nhello\r\n0\r\nX: 1\r\n");
        unfinished(b"5\r\nhello\r\n0\r\nX: 1\r\n\r");
    }

    #[test]
    fn consumed_stops_at_the_end() {
        let mut d = ChunkedDecoder::new(TRAILERS);
        assert_eq!(d.feed(b"3\r\nabc\r\n"), Ok(ChunkProgress { consumed: 8, done: false }));
        assert_eq!(d.feed(b"0\r\n\r\nGET / HTTP/1.1\r\n"), Ok(ChunkProgress { consumed: 5, done: true }));
        assert!(d.is_done());
        // once done, nothing more belongs to the body
        assert_eq!(d.feed(b"more"), Ok(ChunkProgress { consumed: 0, done: true }));
        assert_eq!(d.feed(b""), Ok(ChunkProgress { consumed: 0, done: true }));
    }

    #[test]
    fn large_chunks_are_skipped_in_bulk() {
        let mut body = b"100000\r\n".to_vec();
        body.resize(body.len() + 0x100000, b'z');
        body.extend_from_slice(b"\r\n0\r\n\r\n");
        let mut d = ChunkedDecoder::new(0);
        let mut consumed = 0;
        for piece in body.chunks(1000) {
            let p = d.feed(piece).unwrap();
            consumed += p.consumed;
            if p.done {
                break;
            }
            assert_eq!(p.consumed, piece.len());
        }
        assert_eq!(consumed, body.len());
        assert!(d.is_done());
    }

    #[test]
    fn errors_are_sticky() {
        let mut d = ChunkedDecoder::new(0);
        let e = d.feed(b"z").unwrap_err();
        assert_eq!(d.feed(b"0\r\n\r\n"), Err(e));
        assert_eq!(d.feed(b""), Err(e));
        assert!(!d.is_done());
    }

    const SEEDS: &[&[u8]] = &[b"5;e=1\r\nhello\r\n1A\r\n0123456789abcdefghijklmnop\r\n0\r\nT: v\r\n\r\n"];
    const ALPHABET: &[u8] = b"\r\n ;:=\t\x00\x7f0123456789abcdefABCDEFgxX\xff";

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(super::super::mutate::CASES))]

        /// Small edits of a valid body: never a panic, never more consumed than given, and
        /// feeding it byte by byte agrees with feeding it in one piece.
        #[test]
        fn mutated_bodies_never_panic(buf in super::super::mutate::mutated(SEEDS, ALPHABET)) {
            let one = ChunkedDecoder::new(16).feed(&buf);
            let mut d = ChunkedDecoder::new(16);
            let mut consumed = 0;
            let mut split = Ok(ChunkProgress { consumed: 0, done: false });
            for b in &buf {
                match d.feed(std::slice::from_ref(b)) {
                    Ok(p) => {
                        consumed += p.consumed;
                        split = Ok(ChunkProgress { consumed, done: p.done });
                        if p.done {
                            break;
                        }
                    }
                    Err(e) => {
                        split = Err(e);
                        break;
                    }
                }
            }
            proptest::prop_assert_eq!(one, split, "{:?}", String::from_utf8_lossy(&buf));
            if let Ok(p) = one {
                proptest::prop_assert!(p.consumed <= buf.len());
            }
        }
    }
}
