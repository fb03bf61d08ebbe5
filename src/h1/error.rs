//! Codec errors and canned responses: `H1Error` (what went wrong and which status the
//! peer gets), the standard reason phrases, `error_response` and the fixed
//! `100 Continue` / `200 Connection Established` heads.

use std::fmt;

/// What kind of failure a codec error is; decides the status code given to the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H1ErrorKind {
    /// 400: the client sent a malformed or ambiguous message.
    BadRequest,
    /// 431: the head is larger than the configured limits.
    HeadTooLarge,
    /// 505: an HTTP version other than 1.0 or 1.1.
    BadVersion,
    /// 501: a feature (e.g. a transfer coding) the proxy does not implement.
    NotImplemented,
    /// 508: the request already went through this proxy.
    LoopDetected,
    /// 502: the upstream sent something that is not a valid HTTP/1.x response.
    BadResponse,
}

impl H1ErrorKind {
    /// The status code this kind maps to.
    pub const fn status(self) -> u16 {
        match self {
            H1ErrorKind::BadRequest => 400,
            H1ErrorKind::HeadTooLarge => 431,
            H1ErrorKind::BadVersion => 505,
            H1ErrorKind::NotImplemented => 501,
            H1ErrorKind::LoopDetected => 508,
            H1ErrorKind::BadResponse => 502,
        }
    }
}

/// One error type for the whole codec; says what status to give the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H1Error {
    pub kind: H1ErrorKind,
    pub detail: &'static str,
}

impl H1Error {
    pub const fn new(kind: H1ErrorKind, detail: &'static str) -> H1Error {
        H1Error { kind, detail }
    }

    pub const fn bad_request(detail: &'static str) -> H1Error {
        H1Error::new(H1ErrorKind::BadRequest, detail)
    }

    pub const fn bad_response(detail: &'static str) -> H1Error {
        H1Error::new(H1ErrorKind::BadResponse, detail)
    }

    pub const fn too_large(detail: &'static str) -> H1Error {
        H1Error::new(H1ErrorKind::HeadTooLarge, detail)
    }

    pub const fn loop_detected() -> H1Error {
        H1Error::new(H1ErrorKind::LoopDetected, "request loops through this proxy")
    }

    /// The status code to answer with.
    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// A short human-readable explanation (safe to send to the peer).
    pub fn detail(&self) -> &'static str {
        self.detail
    }
}

impl fmt::Display for H1Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.status();
        write!(f, "{} {}: {}", status, reason_phrase(status), self.detail)
    }
}

impl std::error::Error for H1Error {}

/// The standard reason phrase for the status codes the proxy generates itself
/// (and the common ones it may see); "Unknown" otherwise.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        508 => "Loop Detected",
        _ => "Unknown",
    }
}

/// A complete error response for the client, closing the connection:
/// status line, `Content-Type: text/plain; charset=utf-8`, `Content-Length`,
/// `Connection: close`, then `detail` and a newline as the body.
pub fn error_response(status: u16, detail: &str) -> Vec<u8> {
    error_response_with(status, b"", detail)
}

/// [`error_response`] with extra header fields (`fields`: whole lines, each ending in
/// CRLF), e.g. a 407's `Proxy-Authenticate`.
pub fn error_response_with(status: u16, fields: &[u8], detail: &str) -> Vec<u8> {
    let reason = reason_phrase(status);
    let body_len = detail.len() + 1;
    let mut out = Vec::with_capacity(128 + reason.len() + fields.len() + 2 * body_len);
    out.extend_from_slice(b"HTTP/1.1 ");
    super::headers::push_status(&mut out, status);
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ");
    super::headers::push_u64(&mut out, body_len as u64);
    out.extend_from_slice(b"\r\nConnection: close\r\n");
    out.extend_from_slice(fields);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(detail.as_bytes());
    out.push(b'\n');
    out
}

/// The answer to a successful CONNECT.
pub const CONNECT_ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

/// The interim response the proxy sends itself for `Expect: 100-continue`.
pub const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_statuses() {
        let cases = [
            (H1ErrorKind::BadRequest, 400),
            (H1ErrorKind::HeadTooLarge, 431),
            (H1ErrorKind::BadVersion, 505),
            (H1ErrorKind::NotImplemented, 501),
            (H1ErrorKind::LoopDetected, 508),
            (H1ErrorKind::BadResponse, 502),
        ];
        for (kind, status) in cases {
            let e = H1Error::new(kind, "x");
            assert_eq!(e.status(), status);
            assert_eq!(e.detail(), "x");
        }
    }

    #[test]
    fn display_names_status_reason_and_detail() {
        let e = H1Error::bad_request("both Content-Length and Transfer-Encoding");
        assert_eq!(e.to_string(), "400 Bad Request: both Content-Length and Transfer-Encoding");
        assert_eq!(H1Error::loop_detected().to_string(), "508 Loop Detected: request loops through this proxy");
    }

    #[test]
    fn error_response_is_complete_and_closes() {
        let r = error_response(400, "bare LF in head");
        let text = std::str::from_utf8(&r).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 16\r\nConnection: close\r\n\r\nbare LF in head\n"
        );
    }

    #[test]
    fn error_response_with_extra_fields() {
        let r = error_response_with(407, b"Proxy-Authenticate: Basic realm=\"s\"\r\n", "auth");
        assert_eq!(
            std::str::from_utf8(&r).unwrap(),
            "HTTP/1.1 407 Proxy Authentication Required\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 5\r\nConnection: close\r\nProxy-Authenticate: Basic realm=\"s\"\r\n\r\nauth\n"
        );
        assert!(error_response_with(429, b"", "x").starts_with(b"HTTP/1.1 429 Too Many Requests\r\n"));
    }

    #[test]
    fn error_response_reasons() {
        for (status, reason) in [
            (403, "Forbidden"),
            (404, "Not Found"),
            (405, "Method Not Allowed"),
            (407, "Proxy Authentication Required"),
            (408, "Request Timeout"),
            (411, "Length Required"),
            (413, "Content Too Large"),
            (414, "URI Too Long"),
            (417, "Expectation Failed"),
            (421, "Misdirected Request"),
            (431, "Request Header Fields Too Large"),
            (500, "Internal Server Error"),
            (501, "Not Implemented"),
            (502, "Bad Gateway"),
            (503, "Service Unavailable"),
            (504, "Gateway Timeout"),
            (505, "HTTP Version Not Supported"),
            (508, "Loop Detected"),
        ] {
            let r = error_response(status, "");
            let expected = format!("HTTP/1.1 {status} {reason}\r\n");
            assert!(r.starts_with(expected.as_bytes()), "{status}");
            assert!(r.ends_with(b"Content-Length: 1\r\nConnection: close\r\n\r\n\n"));
        }
    }

    #[test]
    fn canned_heads() {
        assert_eq!(CONNECT_ESTABLISHED, b"HTTP/1.1 200 Connection Established\r\n\r\n");
        assert_eq!(CONTINUE_100, b"HTTP/1.1 100 Continue\r\n\r\n");
    }
}
