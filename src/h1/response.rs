//! Responses: `ResponseHead`, `parse_response` (validation and body framing per
//! RFC 9112 §6.3, upstream connection reuse) and serialising the head sent to the client.

use super::error::{H1Error, H1ErrorKind};
use super::head::{scan_head, with_header_slots, Scan, ScanError};
use super::headers::{
    classify, estimate_len, list_elements, merge_content_length, push_forwarded_fields,
    push_status, push_u64, push_via, BodyFraming, FieldKind, HeadLimits, Header, TransferCodings,
};
use super::request::Method;

/// A parsed, validated response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: String,
    pub minor_version: u8,
    pub headers: Vec<Header>,
    pub framing: BodyFraming,
    /// The upstream connection can be reused after this response: HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`; never when the
    /// body is close-delimited or the framing was suspect (Transfer-Encoding together
    /// with Content-Length, or on HTTP/1.0), nor after a tunnel or protocol switch.
    pub keep_alive: bool,
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
        httparse::Error::TooManyHeaders => {
            H1Error::new(H1ErrorKind::HeadTooLarge, "too many response header fields")
        }
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
pub fn parse_response(
    buf: &[u8],
    limits: &HeadLimits,
    request_method: Method,
) -> Result<Option<(ResponseHead, usize)>, H1Error> {
    match scan_head(buf, limits.max_bytes).map_err(scan_error)? {
        Scan::Partial { start } => {
            let rest = buf.get(start..).unwrap_or_default();
            with_header_slots(limits.max_headers, |slots| {
                let mut resp = httparse::Response::new(&mut []);
                match httparse::ParserConfig::default()
                    .parse_response_with_uninit_headers(&mut resp, rest, slots)
                {
                    Ok(_) => Ok(None),
                    Err(e) => Err(httparse_error(e)),
                }
            })
        }
        Scan::Complete { start, end } => {
            let head = buf.get(start..end).ok_or(bad("malformed response head"))?;
            let parsed = with_header_slots(limits.max_headers, |slots| {
                let mut resp = httparse::Response::new(&mut []);
                match httparse::ParserConfig::default()
                    .parse_response_with_uninit_headers(&mut resp, head, slots)
                {
                    Ok(httparse::Status::Complete(n)) if n == head.len() => {
                        build(&resp, request_method)
                    }
                    Ok(_) => Err(bad("malformed response head")),
                    Err(e) => Err(httparse_error(e)),
                }
            })?;
            Ok(Some((parsed, end)))
        }
    }
}

fn build(
    resp: &httparse::Response<'_, '_>,
    request_method: Method,
) -> Result<ResponseHead, H1Error> {
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
    let mut headers = Vec::with_capacity(resp.headers.len());

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
                for token in list_elements(h.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        conn_close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        conn_keep_alive = true;
                    }
                }
            }
            _ => {}
        }
        headers.push(Header::new(h.name, h.value));
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
        reason: resp.reason.unwrap_or("").to_owned(),
        minor_version,
        headers,
        framing,
        keep_alive,
    })
}

impl ResponseHead {
    /// 1xx other than 101: an interim response followed by the final one.
    pub fn is_informational(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
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
    pub fn write_client(
        &self,
        out: &mut Vec<u8>,
        via_token: &str,
        close: bool,
        client_minor_version: u8,
    ) {
        out.reserve(estimate_len(&self.headers) + self.reason.len() + via_token.len());
        out.extend_from_slice(b"HTTP/1.1 ");
        push_status(out, self.status);
        out.push(b' ');
        out.extend_from_slice(self.reason.as_bytes());
        out.extend_from_slice(b"\r\n");

        let via_done = push_forwarded_fields(out, &self.headers, via_token, |kind| {
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
        if !via_done {
            push_via(out, via_token);
        }
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
        for h in &self.headers {
            if classify(&h.name) == FieldKind::TransferEncoding {
                codings.add_field(&h.value);
            }
        }
        codings
    }

    /// The origin's Content-Length when it is valid and not overridden by
    /// Transfer-Encoding.
    fn origin_content_length(&self) -> Option<u64> {
        let mut value = None;
        for h in &self.headers {
            match classify(&h.name) {
                FieldKind::TransferEncoding => return None,
                FieldKind::ContentLength => value = merge_content_length(value, &h.value).ok()?,
                _ => {}
            }
        }
        value
    }

    /// The origin's Transfer-Encoding fields folded into one.
    fn push_transfer_encoding(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"Transfer-Encoding: ");
        let mut first = true;
        for h in &self.headers {
            if classify(&h.name) == FieldKind::TransferEncoding {
                for coding in list_elements(&h.value).filter(|c| !c.is_empty()) {
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
