//! The HTTP/1.1 response an exchange wrote, read back as HTTP/2 events: interim and final
//! heads (status and fields, connection-specific ones dropped, names lower-case), body
//! bytes with their HTTP/1.1 framing removed, trailers from a chunked body, and the end.
//!
//! The exchange already validated the origin's response (or made the response itself),
//! so what arrives here is well-formed HTTP/1.1; anything else is the exchange's bug and
//! ends the stream with an error rather than being guessed at.

use crate::h1::{self, BodyFraming, HeadLimits, Method};
use http::{HeaderMap, HeaderName, StatusCode};
use std::ops::Range;

/// What the next bytes of the response are.
#[derive(Debug)]
pub enum Event {
    /// Nothing complete yet: wait for more bytes (or the exchange's end).
    More,
    /// A 1xx (not 101): relayed as an informational HEADERS frame.
    Interim { status: StatusCode, fields: HeaderMap },
    /// The final head. `end`: no body follows.
    Head { status: StatusCode, fields: HeaderMap, end: bool },
    /// Body bytes: this range of the buffer given.
    Data(Range<usize>),
    /// The chunked body's trailer fields.
    Trailers(HeaderMap),
    /// The response is complete.
    End,
}

/// Where the reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Length {
        left: u64,
    },
    ChunkSize,
    ChunkData {
        left: u64,
    },
    ChunkEnd,
    Trailers,
    /// Close-delimited body, or a tunnel's bytes after a 2xx to CONNECT or a 101: until
    /// the exchange ends its side.
    UntilEnd,
    Done,
}

/// Reads one response.
#[derive(Debug)]
pub struct ResponseReader {
    state: State,
    method: Method,
}

/// The exchange wrote something that is not an HTTP/1.1 response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

const LIMITS: HeadLimits = HeadLimits { max_bytes: 256 * 1024, max_headers: 512 };

impl ResponseReader {
    /// A reader for the response to a `method` request.
    pub fn new(method: Method) -> ResponseReader {
        ResponseReader { state: State::Head, method }
    }

    /// A reader of a body alone, framed as `framing` (an HTTP/1.1 request body on its way
    /// to an HTTP/2 origin): `Data`, `Trailers` and `End` events only.
    pub fn for_body(framing: BodyFraming) -> ResponseReader {
        let state = match framing {
            BodyFraming::None | BodyFraming::Length(0) => State::Done,
            BodyFraming::Length(left) => State::Length { left },
            BodyFraming::Chunked => State::ChunkSize,
            BodyFraming::CloseDelimited => State::UntilEnd,
        };
        ResponseReader { state, method: Method::Post }
    }

    /// True before the final head was read.
    pub fn before_head(&self) -> bool {
        self.state == State::Head
    }

    /// True once the response is complete.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Gives back the last `n` body bytes a `Data` event reported: they were not sent
    /// (no flow-control window), and come again from the next call.
    pub fn unread(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let n = n as u64;
        self.state = match self.state {
            State::Length { left } => State::Length { left: left + n },
            State::ChunkData { left } => State::ChunkData { left: left + n },
            State::ChunkEnd => State::ChunkData { left: n },
            other => other,
        };
    }

    /// The exchange ended its side: a close-delimited body or a tunnel is complete;
    /// anything else was cut short.
    pub fn end_of_input(&mut self) -> Result<Event, Malformed> {
        match self.state {
            State::UntilEnd => {
                self.state = State::Done;
                Ok(Event::End)
            }
            State::Done => Ok(Event::End),
            _ => Err(Malformed("response cut short")),
        }
    }

    /// The next event from `buf` (the unread response bytes) and how many of them it
    /// consumed.
    pub fn next(&mut self, buf: &[u8]) -> Result<(Event, usize), Malformed> {
        match self.state {
            State::Head => self.head(buf),
            State::Length { left } => {
                if left == 0 {
                    self.state = State::Done;
                    return Ok((Event::End, 0));
                }
                let n = (buf.len() as u64).min(left) as usize;
                if n == 0 {
                    return Ok((Event::More, 0));
                }
                self.state = State::Length { left: left - n as u64 };
                Ok((Event::Data(0..n), n))
            }
            State::UntilEnd => {
                if buf.is_empty() {
                    return Ok((Event::More, 0));
                }
                Ok((Event::Data(0..buf.len()), buf.len()))
            }
            State::ChunkSize => {
                let Some(line) = find_crlf(buf) else { return more_unless_long(buf) };
                let digits = buf[..line].split(|&b| b == b';').next().unwrap_or_default();
                let text = std::str::from_utf8(digits).map_err(|_| Malformed("bad chunk size"))?.trim();
                let size = u64::from_str_radix(text, 16).map_err(|_| Malformed("bad chunk size"))?;
                self.state = if size == 0 { State::Trailers } else { State::ChunkData { left: size } };
                Ok((Event::More, line + 2))
            }
            State::ChunkData { left } => {
                let n = (buf.len() as u64).min(left) as usize;
                if n == 0 {
                    return Ok((Event::More, 0));
                }
                self.state =
                    if n as u64 == left { State::ChunkEnd } else { State::ChunkData { left: left - n as u64 } };
                Ok((Event::Data(0..n), n))
            }
            State::ChunkEnd => {
                if buf.len() < 2 {
                    return Ok((Event::More, 0));
                }
                if &buf[..2] != b"\r\n" {
                    return Err(Malformed("chunk not followed by CRLF"));
                }
                self.state = State::ChunkSize;
                Ok((Event::More, 2))
            }
            State::Trailers => self.trailers(buf),
            State::Done => Ok((Event::End, 0)),
        }
    }

    fn head(&mut self, buf: &[u8]) -> Result<(Event, usize), Malformed> {
        let (head, n) = match h1::parse_response(buf, &LIMITS, self.method) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok((Event::More, 0)),
            Err(_) => return Err(Malformed("unreadable response head")),
        };
        let shared = super::SharedHead::new(&buf[..n]);
        let fields = to_fields(&shared, head.headers.iter().map(|h| (h.name, h.value)));
        if head.is_informational() {
            let status = StatusCode::from_u16(head.status).map_err(|_| Malformed("bad status"))?;
            return Ok((Event::Interim { status, fields }, n));
        }
        let tunnel = head.status == 101 || (self.method == Method::Connect && (200..300).contains(&head.status));
        // A 101 to a WebSocket upgrade is the 200 of an RFC 8441 extended CONNECT.
        let status = if head.status == 101 { 200 } else { head.status };
        let status = StatusCode::from_u16(status).map_err(|_| Malformed("bad status"))?;
        self.state = if tunnel {
            State::UntilEnd
        } else {
            match head.framing {
                BodyFraming::None => State::Done,
                BodyFraming::Length(0) => State::Done,
                BodyFraming::Length(left) => State::Length { left },
                BodyFraming::Chunked => State::ChunkSize,
                BodyFraming::CloseDelimited => State::UntilEnd,
            }
        };
        let end = self.state == State::Done;
        Ok((Event::Head { status, fields, end }, n))
    }

    fn trailers(&mut self, buf: &[u8]) -> Result<(Event, usize), Malformed> {
        if buf.starts_with(b"\r\n") {
            self.state = State::Done;
            return Ok((Event::End, 2));
        }
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { return more_unless_long(buf) };
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let fields = match httparse::parse_headers(&buf[..end + 4], &mut slots) {
            Ok(httparse::Status::Complete((_, parsed))) => {
                to_fields(&super::SharedHead::new(&buf[..end + 4]), parsed.iter().map(|h| (h.name, h.value)))
            }
            _ => return Err(Malformed("unreadable trailer section")),
        };
        // The body ends with the trailers: `End` comes on the next call.
        self.state = State::Done;
        Ok((Event::Trailers(fields), end + 4))
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// A line still incomplete: wait, unless it is already longer than any valid one.
fn more_unless_long(buf: &[u8]) -> Result<(Event, usize), Malformed> {
    if buf.len() > LIMITS.max_bytes {
        return Err(Malformed("chunk line or trailers too long"));
    }
    Ok((Event::More, 0))
}

/// HTTP/2 fields from HTTP/1.1 ones: names lower-cased, connection-specific ones and
/// anything HTTP/2 cannot carry left out (`Host` included: a response has none that
/// matters, a request's becomes `:authority`).
fn to_fields<'a>(shared: &super::SharedHead, fields: impl ExactSizeIterator<Item = (&'a str, &'a [u8])>) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(fields.len());
    for (name, value) in fields {
        // Connection-specific fields (RFC 9113 §8.2.2), and the WebSocket handshake's
        // accept key, which RFC 8441 leaves out. (`HeaderName` lower-cases the name.)
        if super::not_for_http2(name) || name.eq_ignore_ascii_case("sec-websocket-accept") {
            continue;
        }
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else { continue };
        if let Some(value) = shared.value(value) {
            map.append(name, value);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the reader over `bytes` fed in pieces of `step`; returns the events' story.
    fn story(method: Method, bytes: &[u8], step: usize) -> Vec<String> {
        let mut r = ResponseReader::new(method);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut fed = 0;
        let mut body = Vec::new();
        loop {
            let (ev, n) = r.next(&buf).unwrap();
            match ev {
                Event::More if n == 0 => {
                    if fed == bytes.len() {
                        if let Ok(Event::End) = r.end_of_input() {
                            out.push(format!("body {}", String::from_utf8_lossy(&body)));
                            out.push("end".into());
                        }
                        return out;
                    }
                    let k = step.min(bytes.len() - fed);
                    buf.extend_from_slice(&bytes[fed..fed + k]);
                    fed += k;
                    continue;
                }
                Event::More => {}
                Event::Interim { status, .. } => out.push(format!("interim {}", status.as_u16())),
                Event::Head { status, fields, end } => {
                    let mut names: Vec<_> = fields.keys().map(|k| k.as_str().to_string()).collect();
                    names.sort();
                    out.push(format!("head {} {} end={end}", status.as_u16(), names.join(",")));
                }
                Event::Data(range) => body.extend_from_slice(&buf[range]),
                Event::Trailers(t) => out.push(format!("trailers {}", t.len())),
                Event::End => {
                    out.push(format!("body {}", String::from_utf8_lossy(&body)));
                    out.push("end".into());
                    return out;
                }
            }
            buf.drain(..n);
        }
    }

    #[test]
    fn a_length_body_arrives_in_any_pieces_without_its_framing_fields_changing() {
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nX-A: 1\r\n\r\nhello";
        for step in [1, 3, 100] {
            assert_eq!(
                story(Method::Get, resp, step),
                ["head 200 content-length,x-a end=false", "body hello", "end"],
                "step {step}"
            );
        }
    }

    #[test]
    fn chunked_bodies_lose_their_framing_and_keep_their_trailers() {
        let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n1\r\n!\r\n0\r\ngrpc-status: 0\r\nX-T: 2\r\n\r\n";
        for step in [1, 7, 1000] {
            assert_eq!(
                story(Method::Post, resp, step),
                ["head 200  end=false", "trailers 2", "body hello!", "end"],
                "step {step}"
            );
        }
        let plain = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        assert_eq!(story(Method::Get, plain, 4), ["head 200  end=false", "body ok", "end"]);
    }

    #[test]
    fn interim_heads_come_before_the_final_one_and_bodiless_responses_end_at_once() {
        let resp = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(story(Method::Get, resp, 1000), ["interim 103", "head 204  end=true", "body ", "end"]);
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
        assert_eq!(story(Method::Head, head, 1000), ["head 200 content-length end=true", "body ", "end"]);
    }

    #[test]
    fn connect_and_upgrades_become_tunnels_that_end_with_the_exchange() {
        let resp = b"HTTP/1.1 200 Connection Established\r\n\r\nraw bytes";
        assert_eq!(story(Method::Connect, resp, 5), ["head 200  end=false", "body raw bytes", "end"]);
        let ws = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\nframe";
        assert_eq!(story(Method::Get, ws, 1000), ["head 200  end=false", "body frame", "end"]);
    }

    #[test]
    fn a_cut_short_body_is_an_error_not_an_end() {
        let mut r = ResponseReader::new(Method::Get);
        let (ev, _) = r.next(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n").unwrap();
        assert!(matches!(ev, Event::Head { end: false, .. }));
        assert!(r.end_of_input().is_err());
    }
}
