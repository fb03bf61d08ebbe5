//! Responses: `ResponseHead`, `parse_response` (validation and body framing per
//! RFC 9112 §6.3, upstream connection reuse) and serialising the head sent to the client.
//! A parsed head borrows the buffer it was parsed from, as a request head does.

use super::error::{H1Error, H1ErrorKind};
use super::fields::Headers;
use super::head::{scan_head, with_header_slots, Scan, ScanError};
use super::headers::{
    classify, connection_options, estimate_len, list_elements, merge_content_length, push_forwarded_fields,
    push_status, push_u64, push_unmerged, via_append, BodyFraming, FieldKind, HeadLimits, TransferCodings,
};
use super::request::Method;

/// A parsed, validated response head, borrowing the bytes it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead<'a> {
    pub status: u16,
    pub reason: &'a str,
    pub minor_version: u8,
    pub headers: Headers<'a>,
    pub framing: BodyFraming,
    /// The upstream connection can be reused after this response: HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`; never when the
    /// body is close-delimited or the framing was suspect (Transfer-Encoding together
    /// with Content-Length, or on HTTP/1.0), nor after a tunnel or protocol switch.
    pub keep_alive: bool,
    /// The origin's Transfer-Encoding is not the client's business any more
    /// ([`ResponseHead::dechunk`]).
    codings_dropped: bool,
}

const fn bad(detail: &'static str) -> H1Error {
    H1Error::bad_response(detail)
}

fn scan_error(e: ScanError) -> H1Error {
    match e {
        ScanError::TooLarge => H1Error::too_large("response head too large"),
        other => bad(other.detail()),
    }
}

fn httparse_error(e: httparse::Error) -> H1Error {
    match e {
        httparse::Error::HeaderName => bad("invalid header field name in response"),
        httparse::Error::HeaderValue => bad("invalid character in response header value"),
        httparse::Error::NewLine => bad("invalid line ending in response"),
        httparse::Error::Status | httparse::Error::Token => bad("malformed status line"),
        httparse::Error::TooManyHeaders => H1Error::new(H1ErrorKind::HeadTooLarge, "too many response header fields"),
        httparse::Error::Version => bad("unsupported HTTP version in response"),
    }
}

/// Parses a response head at the start of `buf`; `request_method` is the method of the
/// request it answers (HEAD and CONNECT change the framing).
///
/// Framing (RFC 9112 §6.3): 1xx, 204, 304, any response to HEAD and a 2xx to CONNECT ->
/// `None`; Transfer-Encoding ending in chunked -> `Chunked` (a Content-Length beside it is
/// ignored and the connection not reused); other Transfer-Encoding -> `CloseDelimited`;
/// valid Content-Length -> `Length`; else `CloseDelimited`.
///
/// Errors are `BadResponse`, or `HeadTooLarge` when over the limits (the caller answers
/// the client with 502 for both).
pub fn parse_response<'a>(
    buf: &'a [u8],
    limits: &HeadLimits,
    request_method: Method,
) -> Result<Option<(ResponseHead<'a>, usize)>, H1Error> {
    match scan_head(buf, limits.max_bytes).map_err(scan_error)? {
        Scan::Partial { start } => {
            let rest = buf.get(start..).unwrap_or_default();
            with_header_slots(limits.max_headers, rest, |slots| {
                let mut resp = httparse::Response::new(&mut []);
                match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, rest, slots) {
                    Ok(_) => Ok(None),
                    Err(e) => Err(httparse_error(e)),
                }
            })
        }
        Scan::Complete { start, end } => {
            let head = buf.get(start..end).ok_or(bad("malformed response head"))?;
            let parsed = with_header_slots(limits.max_headers, head, |slots| {
                let mut resp = httparse::Response::new(&mut []);
                match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, head, slots) {
                    Ok(httparse::Status::Complete(n)) if n == head.len() => build(&resp, request_method),
                    Ok(_) => Err(bad("malformed response head")),
                    Err(e) => Err(httparse_error(e)),
                }
            })?;
            Ok(Some((parsed, end)))
        }
    }
}

fn build<'a>(resp: &httparse::Response<'_, 'a>, request_method: Method) -> Result<ResponseHead<'a>, H1Error> {
    let (Some(minor_version), Some(status)) = (resp.version, resp.code) else {
        return Err(bad("malformed status line"));
    };
    if minor_version > 1 {
        return Err(bad("unsupported HTTP version in response"));
    }
    if !(100..=599).contains(&status) {
        return Err(bad("invalid status code"));
    }

    let mut content_length: Result<Option<u64>, &'static str> = Ok(None);
    let mut has_te = false;
    let mut codings = TransferCodings::default();
    let mut conn_close = false;
    let mut conn_keep_alive = false;

    for h in resp.headers.iter() {
        match classify(h.name) {
            FieldKind::ContentLength => {
                if let Ok(current) = content_length {
                    content_length = merge_content_length(current, h.value);
                }
            }
            FieldKind::TransferEncoding => {
                has_te = true;
                codings.add_field(h.value);
            }
            FieldKind::Connection => {
                let (close, keep_alive) = connection_options(h.value);
                conn_close |= close;
                conn_keep_alive |= keep_alive;
            }
            _ => {}
        }
    }

    let mut keep_alive = !conn_close && (minor_version == 1 || conn_keep_alive);
    let no_body = (100..200).contains(&status)
        || status == 204
        || status == 304
        || request_method == Method::Head
        || (request_method == Method::Connect && (200..300).contains(&status));

    let framing = if no_body {
        // Content-Length is forwarded as metadata here (HEAD, 304): it must be valid
        // unless Transfer-Encoding makes it irrelevant.
        if !has_te {
            content_length.map_err(bad)?;
        }
        BodyFraming::None
    } else if has_te {
        if codings.malformed {
            return Err(bad("malformed Transfer-Encoding in response"));
        }
        if codings.count == 0 {
            return Err(bad("empty Transfer-Encoding in response"));
        }
        if codings.chunked > 1 {
            return Err(bad("chunked applied more than once in response"));
        }
        // RFC 9112 §6.1 and §6.3: Content-Length beside Transfer-Encoding, or
        // Transfer-Encoding in HTTP/1.0, means the framing cannot be trusted for reuse.
        if !matches!(content_length, Ok(None)) || minor_version == 0 {
            keep_alive = false;
        }
        if codings.final_chunked {
            BodyFraming::Chunked
        } else {
            BodyFraming::CloseDelimited
        }
    } else {
        match content_length.map_err(bad)? {
            Some(n) => BodyFraming::Length(n),
            None => BodyFraming::CloseDelimited,
        }
    };

    if framing == BodyFraming::CloseDelimited
        || status == 101
        || (request_method == Method::Connect && (200..300).contains(&status))
    {
        keep_alive = false;
    }

    Ok(ResponseHead {
        status,
        reason: resp.reason.unwrap_or(""),
        minor_version,
        headers: Headers::from_parsed(resp.headers),
        framing,
        keep_alive,
        codings_dropped: false,
    })
}

impl ResponseHead<'_> {
    /// 1xx other than 101: an interim response followed by the final one.
    pub fn is_informational(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// For an HTTP/1.0 client, which cannot read chunked framing: the body goes on
    /// without it and ends when the connection closes (RFC 9112 §6.1), and the origin's
    /// Transfer-Encoding is left out of the head.
    pub fn dechunk(&mut self) {
        self.framing = BodyFraming::CloseDelimited;
        self.codings_dropped = true;
    }

    /// Appends the head for the client: `HTTP/1.1 <status> <reason>`, the end-to-end
    /// fields (hop-by-hop and Connection-named dropped), the framing fields (see below),
    /// our Via hop, `Connection: close` when `close`, `Connection: keep-alive` when
    /// keeping an HTTP/1.0 client, and the blank line.
    ///
    /// Framing fields: `Length(n)` -> `Content-Length: n`; `Chunked` ->
    /// `Transfer-Encoding: chunked` (the origin's codings verbatim if it used more than
    /// chunked); `None` -> the origin's Content-Length if it sent one (HEAD, 304), except on
    /// 1xx and 204 which must not carry one; `CloseDelimited` -> nothing, or the origin's
    /// Transfer-Encoding when that is what made the body close-delimited.
    /// Interim (1xx) responses get no Connection field.
    pub fn write_client(&self, out: &mut Vec<u8>, via_token: &str, close: bool, client_minor_version: u8) {
        out.reserve(estimate_len(&self.headers) + self.reason.len() + via_token.len());
        out.extend_from_slice(b"HTTP/1.1 ");
        push_status(out, self.status);
        out.push(b' ');
        out.extend_from_slice(self.reason.as_bytes());
        out.extend_from_slice(b"\r\n");

        let via = [via_append(via_token)];
        let unmerged = push_forwarded_fields(out, &self.headers, &via, |kind| {
            matches!(
                kind,
                FieldKind::ContentLength
                    | FieldKind::TransferEncoding
                    | FieldKind::Connection
                    | FieldKind::HopByHop
                    | FieldKind::Ambiguous
            )
        });

        match self.framing {
            BodyFraming::Length(n) => push_content_length(out, n),
            BodyFraming::Chunked => {
                let codings = self.codings();
                if codings.is_plain_chunked() || !codings.final_chunked {
                    out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
                } else {
                    self.push_transfer_encoding(out);
                }
            }
            BodyFraming::None => {
                if !(100..200).contains(&self.status) && self.status != 204 {
                    if let Some(n) = self.origin_content_length() {
                        push_content_length(out, n);
                    }
                }
            }
            BodyFraming::CloseDelimited => {
                if self.codings().count > 0 {
                    self.push_transfer_encoding(out);
                }
            }
        }
        push_unmerged(out, &via, unmerged);
        if self.status >= 200 {
            if close {
                out.extend_from_slice(b"Connection: close\r\n");
            } else if client_minor_version == 0 {
                out.extend_from_slice(b"Connection: keep-alive\r\n");
            }
        }
        out.extend_from_slice(b"\r\n");
    }

    fn codings(&self) -> TransferCodings {
        let mut codings = TransferCodings::default();
        if self.codings_dropped {
            return codings;
        }
        for h in self.headers.iter() {
            if classify(h.name) == FieldKind::TransferEncoding {
                codings.add_field(h.value);
            }
        }
        codings
    }

    /// The origin's Content-Length when it is valid and not overridden by
    /// Transfer-Encoding.
    fn origin_content_length(&self) -> Option<u64> {
        let mut value = None;
        for h in self.headers.iter() {
            match classify(h.name) {
                FieldKind::TransferEncoding => return None,
                FieldKind::ContentLength => value = merge_content_length(value, h.value).ok()?,
                _ => {}
            }
        }
        value
    }

    /// The origin's Transfer-Encoding fields folded into one.
    fn push_transfer_encoding(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"Transfer-Encoding: ");
        let mut first = true;
        for h in self.headers.iter() {
            if classify(h.name) == FieldKind::TransferEncoding {
                for coding in list_elements(h.value).filter(|c| !c.is_empty()) {
                    if !first {
                        out.extend_from_slice(b", ");
                    }
                    out.extend_from_slice(coding);
                    first = false;
                }
            }
        }
        out.extend_from_slice(b"\r\n");
    }
}

fn push_content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"Content-Length: ");
    push_u64(out, n);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::Header;

    fn field<'a>(name: &'a str, value: &'a [u8]) -> Header<'a> {
        Header { name, value }
    }

    const LIMITS: HeadLimits = HeadLimits { max_bytes: 8192, max_headers: 64 };

    fn parse_for(raw: &[u8], method: Method) -> Result<Option<(ResponseHead<'_>, usize)>, H1Error> {
        parse_response(raw, &LIMITS, method)
    }

    fn resp_for(raw: &str, method: Method) -> ResponseHead<'_> {
        match parse_for(raw.as_bytes(), method) {
            Ok(Some((head, n))) => {
                assert_eq!(n, raw.len(), "consumed for {raw:?}");
                head
            }
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    fn resp(raw: &str) -> ResponseHead<'_> {
        resp_for(raw, Method::Get)
    }

    fn bad_response(raw: &str, detail: &str) {
        match parse_for(raw.as_bytes(), Method::Get) {
            Err(e) => {
                assert_eq!(e.kind, H1ErrorKind::BadResponse, "{raw:?}: {e}");
                assert_eq!(e.status(), 502);
                assert_eq!(e.detail, detail, "{raw:?}");
            }
            other => panic!("{raw:?} gave {other:?}"),
        }
    }

    fn client(head: &ResponseHead, close: bool, minor: u8) -> String {
        let mut out = Vec::new();
        head.write_client(&mut out, "sluice", close, minor);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn simple_response() {
        let h = resp("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\n");
        assert_eq!(h.status, 200);
        assert_eq!(h.reason, "OK");
        assert_eq!(h.minor_version, 1);
        assert_eq!(*h.headers, [field("Content-Length", b"5"), field("Content-Type", b"text/plain")]);
        assert_eq!(h.framing, BodyFraming::Length(5));
        assert!(h.keep_alive);
        assert!(!h.is_informational());
    }

    #[test]
    fn reasons() {
        assert_eq!(resp("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").reason, "Not Found");
        assert_eq!(resp("HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n").reason, "");
        assert_eq!(resp("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n").reason, "");
        // obs-text in the reason is dropped by httparse
        let h = resp("HTTP/1.1 200 \u{e9}\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(h.reason, "");
    }

    #[test]
    fn incomplete_and_pipelined() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
        for n in 0..raw.len() - 2 {
            assert_eq!(parse_for(&raw[..n], Method::Get), Ok(None), "prefix {n}");
        }
        let (_, n) = parse_for(raw, Method::Get).unwrap().unwrap();
        assert_eq!(n, raw.len() - 2);
        let (_, n) = parse_for(b"\r\nHTTP/1.1 204 No Content\r\n\r\n", Method::Get).unwrap().unwrap();
        assert_eq!(n, 29);
    }

    #[test]
    fn no_body_statuses() {
        for status in [100, 102, 103, 204, 304] {
            let raw = format!("HTTP/1.1 {status} X\r\n\r\n");
            assert_eq!(resp(&raw).framing, BodyFraming::None, "{status}");
            let raw = format!("HTTP/1.1 {status} X\r\nTransfer-Encoding: chunked\r\n\r\n");
            assert_eq!(resp(&raw).framing, BodyFraming::None, "{status}");
        }
        let h = resp("HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::None);
        assert!(h.keep_alive);
        let h = resp_for("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", Method::Head);
        assert_eq!(h.framing, BodyFraming::None);
        assert!(h.keep_alive);
        let h = resp_for("HTTP/1.1 200 OK\r\n\r\n", Method::Head);
        assert_eq!(h.framing, BodyFraming::None);
        assert!(h.keep_alive);
        let h = resp_for("HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n", Method::Head);
        assert_eq!(h.framing, BodyFraming::None);
        // an invalid Content-Length is still refused when it would be forwarded
        let e = parse_for(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", Method::Head).unwrap_err();
        assert_eq!(e.kind, H1ErrorKind::BadResponse);
    }

    #[test]
    fn connect_responses() {
        let h = resp_for("HTTP/1.1 200 Connection Established\r\n\r\n", Method::Connect);
        assert_eq!(h.framing, BodyFraming::None);
        assert!(!h.keep_alive);
        let h = resp_for("HTTP/1.1 407 Proxy Auth\r\nContent-Length: 3\r\n\r\n", Method::Connect);
        assert_eq!(h.framing, BodyFraming::Length(3));
        assert!(h.keep_alive);
    }

    #[test]
    fn informational() {
        for (status, informational) in [(100, true), (101, false), (103, true), (199, true), (200, false)] {
            let raw = format!("HTTP/1.1 {status} X\r\n\r\n");
            let h = resp(&raw);
            assert_eq!(h.is_informational(), informational, "{status}");
        }
        let h = resp("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::None);
        assert!(!h.keep_alive);
    }

    #[test]
    fn chunked_framing() {
        let h = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::Chunked);
        assert!(h.keep_alive);
        let h = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::Chunked);
        let h = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::Chunked);
        // Content-Length beside it is ignored, and the connection is not reused
        let h = resp("HTTP/1.1 200 OK\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::Chunked);
        assert!(!h.keep_alive);
        let h = resp("HTTP/1.1 200 OK\r\nContent-Length: bogus\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::Chunked);
        assert!(!h.keep_alive);
        // HTTP/1.0 with Transfer-Encoding: faulty framing, no reuse
        let h = resp("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::Chunked);
        assert!(!h.keep_alive);
    }

    #[test]
    fn close_delimited_framing() {
        let h = resp("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::CloseDelimited);
        assert!(!h.keep_alive);
        let h = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::CloseDelimited);
        assert!(!h.keep_alive);
        let h = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::CloseDelimited);
        let h = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::CloseDelimited);
        assert!(!h.keep_alive);
        let h = resp("HTTP/1.0 200 OK\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::CloseDelimited);
        assert!(!h.keep_alive);
    }

    #[test]
    fn content_length_framing() {
        let h = resp("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::Length(0));
        let h = resp("HTTP/1.1 200 OK\r\nContent-Length: 7\r\ncontent-length: 7, 7\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::Length(7));
        bad_response(
            "HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 8\r\n\r\n",
            "conflicting Content-Length values",
        );
        bad_response("HTTP/1.1 200 OK\r\nContent-Length: 7, 8\r\n\r\n", "conflicting Content-Length values");
        bad_response("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "invalid Content-Length");
        bad_response("HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n", "invalid Content-Length");
        bad_response("HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n", "empty Content-Length");
        bad_response("HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n", "Content-Length overflow");
    }

    #[test]
    fn transfer_encoding_rejections() {
        bad_response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            "chunked applied more than once in response",
        );
        bad_response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: ch unked\r\n\r\n",
            "malformed Transfer-Encoding in response",
        );
        bad_response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked;x=y\r\n\r\n",
            "malformed Transfer-Encoding in response",
        );
        bad_response("HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\n\r\n", "empty Transfer-Encoding in response");
    }

    #[test]
    fn keep_alive_rules() {
        assert!(resp("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(!resp("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(!resp("HTTP/1.1 200 OK\r\nConnection: Keep-Alive, Close\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(!resp("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(resp("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(!resp("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n").keep_alive);
    }

    #[test]
    fn malformed_responses() {
        bad_response("HTTP/1.1 2000 OK\r\n\r\n", "malformed status line");
        bad_response("HTTP/1.1 20 OK\r\n\r\n", "malformed status line");
        bad_response("HTTP/1.1 abc OK\r\n\r\n", "malformed status line");
        bad_response("HTTP/1.1 200 O\x00K\r\n\r\n", "malformed status line");
        bad_response("HTTP/1.1 099 Low\r\n\r\n", "invalid status code");
        bad_response("HTTP/1.1 600 High\r\n\r\n", "invalid status code");
        bad_response("HTTP/2.0 200 OK\r\n\r\n", "unsupported HTTP version in response");
        bad_response("HTTP/1.2 200 OK\r\n\r\n", "unsupported HTTP version in response");
        bad_response("ICY 200 OK\r\n\r\n", "unsupported HTTP version in response");
        bad_response("HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", "bare LF in head");
        bad_response("HTTP/1.1 200 OK\r\nContent-Length: 0\n\n", "bare LF in head");
        bad_response("HTTP/1.1 200 OK\rX: y\r\n\r\n", "CR not followed by LF in head");
        bad_response("HTTP/1.1 200 OK\r\nX: 1\r\n 2\r\n\r\n", "obsolete line folding in head");
        bad_response("HTTP/1.1 200 OK\r\nX : 1\r\n\r\n", "invalid header field name in response");
        bad_response("HTTP/1.1 200 OK\r\nX: \x01\r\n\r\n", "invalid character in response header value");
        // rejected before the head is complete
        bad_response("HTTP/1.1 2x", "malformed status line");
        bad_response("HTTQ", "unsupported HTTP version in response");
    }

    #[test]
    fn limits() {
        let raw = b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n";
        let e = parse_response(raw, &HeadLimits { max_bytes: raw.len() - 1, max_headers: 8 }, Method::Get).unwrap_err();
        assert_eq!(e.kind, H1ErrorKind::HeadTooLarge);
        let e = parse_response(&raw[..10], &HeadLimits { max_bytes: 10, max_headers: 8 }, Method::Get).unwrap_err();
        assert_eq!(e.kind, H1ErrorKind::HeadTooLarge);
        let e = parse_response(raw, &HeadLimits { max_bytes: 1024, max_headers: 1 }, Method::Get).unwrap_err();
        assert_eq!(e.kind, H1ErrorKind::HeadTooLarge);
        assert!(parse_response(raw, &HeadLimits { max_bytes: raw.len(), max_headers: 2 }, Method::Get,)
            .unwrap()
            .is_some());
    }

    #[test]
    fn write_client_length() {
        let h = resp("HTTP/1.1 200 OK\r\nServer: o\r\nContent-Length: 5, 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX: y\r\n\r\n");
        assert_eq!(
            client(&h, false, 1),
            "HTTP/1.1 200 OK\r\nServer: o\r\nX: y\r\nContent-Length: 5\r\nVia: 1.1 sluice\r\n\r\n"
        );
        assert_eq!(
            client(&h, true, 1),
            "HTTP/1.1 200 OK\r\nServer: o\r\nX: y\r\nContent-Length: 5\r\nVia: 1.1 sluice\r\n\
             Connection: close\r\n\r\n"
        );
        assert_eq!(
            client(&h, false, 0),
            "HTTP/1.1 200 OK\r\nServer: o\r\nX: y\r\nContent-Length: 5\r\nVia: 1.1 sluice\r\n\
             Connection: keep-alive\r\n\r\n"
        );
        assert_eq!(
            client(&h, true, 0),
            "HTTP/1.1 200 OK\r\nServer: o\r\nX: y\r\nContent-Length: 5\r\nVia: 1.1 sluice\r\n\
             Connection: close\r\n\r\n"
        );
    }

    #[test]
    fn write_client_drops_hop_by_hop() {
        let h = resp(
            "HTTP/1.0 200 OK\r\nConnection: X-Secret, keep-alive\r\nx-secret: 1\r\n\
             Keep-Alive: max=5\r\nProxy-Connection: x\r\nTE: t\r\nTrailer: Sum\r\nUpgrade: h2c\r\n\
             Proxy-Authenticate: Basic\r\nProxy-Authorization: y\r\nContent_Length: 9\r\n\
             Content-Length: 2\r\nA: b\r\n\r\n",
        );
        assert_eq!(client(&h, false, 1), "HTTP/1.1 200 OK\r\nA: b\r\nContent-Length: 2\r\nVia: 1.1 sluice\r\n\r\n");
    }

    #[test]
    fn write_client_chunked() {
        let h = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\nContent-Length: 3\r\nA: b\r\n\r\n");
        assert_eq!(
            client(&h, true, 1),
            "HTTP/1.1 200 OK\r\nA: b\r\nTransfer-Encoding: chunked\r\nVia: 1.1 sluice\r\n\
             Connection: close\r\n\r\n"
        );
        // other codings are the origin's business: kept verbatim
        let h = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(
            client(&h, false, 1),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nVia: 1.1 sluice\r\n\r\n"
        );
    }

    #[test]
    fn write_client_close_delimited() {
        let h = resp("HTTP/1.1 200 OK\r\nA: b\r\n\r\n");
        assert_eq!(client(&h, true, 1), "HTTP/1.1 200 OK\r\nA: b\r\nVia: 1.1 sluice\r\nConnection: close\r\n\r\n");
        let h = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 4\r\n\r\n");
        assert_eq!(
            client(&h, true, 1),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nVia: 1.1 sluice\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn write_client_no_body() {
        let h = resp_for("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nETag: x\r\n\r\n", Method::Head);
        assert_eq!(
            client(&h, false, 1),
            "HTTP/1.1 200 OK\r\nETag: x\r\nContent-Length: 1234\r\nVia: 1.1 sluice\r\n\r\n"
        );
        let h = resp("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n");
        assert_eq!(client(&h, false, 1), "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nVia: 1.1 sluice\r\n\r\n");
        let h = resp("HTTP/1.1 304 Not Modified\r\n\r\n");
        assert_eq!(client(&h, false, 1), "HTTP/1.1 304 Not Modified\r\nVia: 1.1 sluice\r\n\r\n");
        let h = resp("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(client(&h, false, 1), "HTTP/1.1 204 No Content\r\nVia: 1.1 sluice\r\n\r\n");
        let h = resp_for("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 10\r\n\r\n", Method::Head);
        assert_eq!(client(&h, false, 1), "HTTP/1.1 200 OK\r\nVia: 1.1 sluice\r\n\r\n");
    }

    #[test]
    fn write_client_interim() {
        let h = resp("HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n");
        assert!(h.is_informational());
        assert_eq!(
            client(&h, true, 0),
            "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\nVia: 1.1 sluice\r\n\r\n"
        );
        let h = resp("HTTP/1.1 100 Continue\r\n\r\n");
        assert_eq!(client(&h, false, 1), "HTTP/1.1 100 Continue\r\nVia: 1.1 sluice\r\n\r\n");
    }

    #[test]
    fn write_client_via_and_version() {
        let h = resp("HTTP/1.0 200 OK\r\nVia: 1.0 origin-cache\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(
            client(&h, false, 1),
            "HTTP/1.1 200 OK\r\nVia: 1.0 origin-cache, 1.1 sluice\r\nContent-Length: 0\r\n\r\n"
        );
        let h = resp("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(client(&h, false, 1), "HTTP/1.1 200 \r\nContent-Length: 0\r\nVia: 1.1 sluice\r\n\r\n");
    }

    #[test]
    fn written_head_parses_back() {
        let h = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX: 1\r\n\r\n");
        let mut out = Vec::new();
        h.write_client(&mut out, "sluice", false, 1);
        let (back, n) = parse_for(&out, Method::Get).unwrap().unwrap();
        assert_eq!(n, out.len());
        assert_eq!(back.framing, BodyFraming::Chunked);
        assert_eq!(back.headers.len(), 3);
    }

    const SEEDS: &[&[u8]] =
        &[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\nVia: 1.0 x\r\n\r\n"];
    const ALPHABET: &[u8] = b"\r\n :,;\t\x00\x7fHTPhtp01.9aZ-_\xff";

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(super::super::mutate::CASES))]

        /// Small edits of a valid head: never a panic, a parsed head never claims more
        /// bytes than it was given, and what goes to the client parses again.
        #[test]
        fn mutated_heads_never_panic(buf in super::super::mutate::mutated(SEEDS, ALPHABET)) {
            for method in [Method::Get, Method::Head, Method::Connect] {
                if let Ok(Some((head, n))) = parse_for(&buf, method) {
                    proptest::prop_assert!(n <= buf.len());
                    let mut out = Vec::new();
                    head.write_client(&mut out, "sluice", false, 0);
                    // what we send is always a valid head again
                    proptest::prop_assert!(parse_for(&out, Method::Get).is_ok(), "{:?}", String::from_utf8_lossy(&out));
                }
            }
        }
    }
}
