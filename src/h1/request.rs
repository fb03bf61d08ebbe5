//! Requests: `Method`, `RequestTarget`, `RequestHead`, `parse_request` with the
//! request-smuggling defences (framing, Host, version, target form), the upstream target,
//! loop detection, and serialising the head sent upstream.
//!
//! A parsed head borrows the buffer it was parsed from (method, target, fields, Host):
//! parsing and rewriting a head of up to `INLINE_FIELDS` fields allocates nothing.

use super::authority::Authority;
use super::error::{H1Error, H1ErrorKind};
use super::fields::Headers;
use super::head::{scan_head, with_header_slots, Scan, ScanError};
use super::headers::{
    classify, connection_options, estimate_len, merge_content_length, push_field, push_forwarded_fields, push_u64,
    push_unmerged, via_append, via_names, Append, BodyFraming, FieldKind, HeadLimits, TransferCodings,
};
use crate::forwarding::{Field, Hop};
use std::borrow::Cow;

/// The request method. Methods are case-sensitive: `get` is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Trace,
    Patch,
    Connect,
    Other,
}

impl Method {
    /// GET HEAD PUT DELETE OPTIONS TRACE (RFC 9110 §9.2.2).
    pub fn is_idempotent(&self) -> bool {
        matches!(self, Method::Get | Method::Head | Method::Put | Method::Delete | Method::Options | Method::Trace)
    }

    pub(crate) fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "TRACE" => Method::Trace,
            "PATCH" => Method::Patch,
            "CONNECT" => Method::Connect,
            _ => Method::Other,
        }
    }
}

/// The request-target, by form (RFC 9112 §3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestTarget<'a> {
    /// `/path?query`
    Origin { path: &'a str },
    /// `http://host:port/path?query`; `path` is the origin-form part (`/` when empty; owned
    /// only when the `/` has to be added in front of a query).
    Absolute { https: bool, authority: Authority<'a>, path: Cow<'a, str> },
    /// `host:port` (CONNECT only).
    Authority(Authority<'a>),
    /// `*` (OPTIONS only).
    Asterisk,
}

/// A parsed, validated request head, borrowing the bytes it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead<'a> {
    pub method: Method,
    pub method_raw: &'a str,
    pub target: RequestTarget<'a>,
    /// 0 or 1.
    pub minor_version: u8,
    pub headers: Headers<'a>,
    /// `None`, `Length` or `Chunked` (never `CloseDelimited`).
    pub framing: BodyFraming,
    /// The client asked for a persistent connection: HTTP/1.1 unless `Connection: close`;
    /// HTTP/1.0 only with `Connection: keep-alive`.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request.
    pub expect_continue: bool,
    /// The Host header, parsed.
    pub host: Option<Authority<'a>>,
}

const fn bad(detail: &'static str) -> H1Error {
    H1Error::bad_request(detail)
}

fn scan_error(e: ScanError) -> H1Error {
    match e {
        ScanError::TooLarge => H1Error::too_large("request head too large"),
        other => bad(other.detail()),
    }
}

/// Maps an httparse error; `head` is what httparse was given (from the request line on).
fn httparse_error(e: httparse::Error, head: &[u8]) -> H1Error {
    match e {
        httparse::Error::HeaderName => bad("invalid header field name"),
        httparse::Error::HeaderValue => bad("invalid character in header value"),
        // httparse's only NewLine error past our CRLF scan: junk after the version.
        httparse::Error::NewLine | httparse::Error::Status | httparse::Error::Token => bad("malformed request line"),
        httparse::Error::TooManyHeaders => H1Error::too_large("too many header fields"),
        httparse::Error::Version => version_error(head),
    }
}

/// httparse reports any garbage where it expects the version as a version error; only a
/// request line of exactly three parts whose last is `HTTP/...` really carries an
/// unsupported version (505). A space inside the target, a doubled space or a mangled
/// protocol name is a malformed request line (400).
fn version_error(head: &[u8]) -> H1Error {
    let line_end = head.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(head.len());
    let line = &head[..line_end];
    let mut parts = line.split(|&b| b == b' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let well_formed = parts.next().is_none()
        && method.is_some_and(|m| !m.is_empty())
        && target.is_some_and(|t| !t.is_empty())
        && version.is_some_and(|v| v.starts_with(b"HTTP/"));
    if well_formed {
        H1Error::new(H1ErrorKind::BadVersion, "unsupported HTTP version")
    } else {
        bad("malformed request line")
    }
}

/// Parses a request head at the start of `buf`.
///
/// `Ok(None)`: the head is not complete yet and `buf.len() < limits.max_bytes`.
/// `Ok(Some((head, n)))`: `n` bytes of `buf` are the head, leading empty lines and the
/// final CRLFCRLF included.
pub fn parse_request<'a>(buf: &'a [u8], limits: &HeadLimits) -> Result<Option<(RequestHead<'a>, usize)>, H1Error> {
    match scan_head(buf, limits.max_bytes).map_err(scan_error)? {
        Scan::Partial { start } => {
            // Not complete: still let httparse reject a bad start line or field early.
            let rest = buf.get(start..).unwrap_or_default();
            with_header_slots(limits.max_headers, rest, |slots| {
                let mut req = httparse::Request::new(&mut []);
                match req.parse_with_uninit_headers(rest, slots) {
                    Ok(_) => Ok(None),
                    Err(e) => Err(httparse_error(e, rest)),
                }
            })
        }
        Scan::Complete { start, end } => {
            let head = buf.get(start..end).ok_or(bad("malformed request head"))?;
            let parsed = with_header_slots(limits.max_headers, head, |slots| {
                let mut req = httparse::Request::new(&mut []);
                match req.parse_with_uninit_headers(head, slots) {
                    Ok(httparse::Status::Complete(n)) if n == head.len() => build(&req),
                    Ok(_) => Err(bad("malformed request head")),
                    Err(e) => Err(httparse_error(e, head)),
                }
            })?;
            Ok(Some((parsed, end)))
        }
    }
}

fn build<'a>(req: &httparse::Request<'_, 'a>) -> Result<RequestHead<'a>, H1Error> {
    let (Some(method_raw), Some(path), Some(minor_version)) = (req.method, req.path, req.version) else {
        return Err(bad("malformed request line"));
    };
    if minor_version > 1 {
        return Err(H1Error::new(H1ErrorKind::BadVersion, "unsupported HTTP version"));
    }
    let method = Method::from_token(method_raw);
    let target = parse_target(method, path)?;

    let mut host_count = 0usize;
    let mut host_value: Option<&[u8]> = None;
    let mut content_length: Option<u64> = None;
    let mut has_te = false;
    let mut codings = TransferCodings::default();
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut expect_continue = false;

    for h in req.headers.iter() {
        match classify(h.name) {
            FieldKind::Host => {
                host_count += 1;
                host_value = Some(h.value);
            }
            FieldKind::ContentLength => {
                content_length = merge_content_length(content_length, h.value).map_err(bad)?;
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
            FieldKind::Expect => {
                if h.value.eq_ignore_ascii_case(b"100-continue") {
                    expect_continue = true;
                }
            }
            FieldKind::Ambiguous => {
                return Err(bad("underscore in Content-Length or Transfer-Encoding name"));
            }
            FieldKind::Via
            | FieldKind::Forwarded
            | FieldKind::XForwardedFor
            | FieldKind::HopByHop
            | FieldKind::Other => {}
        }
    }

    let framing = if has_te {
        if content_length.is_some() {
            return Err(bad("both Content-Length and Transfer-Encoding"));
        }
        if minor_version == 0 {
            return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if codings.malformed {
            return Err(bad("malformed Transfer-Encoding"));
        }
        if codings.count == 0 {
            return Err(bad("empty Transfer-Encoding"));
        }
        if codings.chunked > 1 {
            return Err(bad("chunked applied more than once"));
        }
        if !codings.is_plain_chunked() {
            return Err(H1Error::new(H1ErrorKind::NotImplemented, "unsupported transfer coding (only chunked)"));
        }
        BodyFraming::Chunked
    } else if let Some(n) = content_length {
        BodyFraming::Length(n)
    } else {
        BodyFraming::None
    };

    if host_count > 1 {
        return Err(bad("multiple Host headers"));
    }
    let host = match host_value {
        Some(v) => Some(Authority::parse(v).map_err(|_| bad("invalid Host header"))?),
        None if minor_version == 1 => return Err(bad("missing Host header")),
        None => None,
    };

    let keep_alive = !conn_close && (minor_version == 1 || conn_keep_alive);
    Ok(RequestHead {
        method,
        method_raw,
        target,
        minor_version,
        headers: Headers::from_parsed(req.headers),
        framing,
        keep_alive,
        expect_continue: expect_continue && minor_version == 1,
        host,
    })
}

fn parse_target(method: Method, raw: &str) -> Result<RequestTarget<'_>, H1Error> {
    if method == Method::Connect {
        if raw.starts_with('/') || raw == "*" || raw.contains("://") {
            return Err(bad("CONNECT requires an authority-form target"));
        }
        let authority = Authority::parse(raw.as_bytes())?;
        if authority.port.is_none() {
            return Err(bad("CONNECT target without port"));
        }
        return Ok(RequestTarget::Authority(authority));
    }
    // A fragment is the user agent's business and never goes on (RFC 9110 §4.2.4).
    let raw = raw.split_once('#').map_or(raw, |(before, _)| before);
    if raw.starts_with('/') {
        return Ok(RequestTarget::Origin { path: raw });
    }
    if raw == "*" {
        return if method == Method::Options {
            Ok(RequestTarget::Asterisk)
        } else {
            Err(bad("asterisk-form target only allowed with OPTIONS"))
        };
    }
    if let Some(i) = raw.find("://") {
        let scheme = &raw[..i];
        let https = if scheme.eq_ignore_ascii_case("http") {
            false
        } else if scheme.eq_ignore_ascii_case("https") {
            true
        } else {
            return Err(bad("unsupported URI scheme"));
        };
        let rest = &raw[i + 3..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        let authority = Authority::parse(authority.as_bytes())?;
        let path = if path.is_empty() {
            Cow::Borrowed("/")
        } else if path.starts_with('/') {
            Cow::Borrowed(path)
        } else {
            let mut p = String::with_capacity(path.len() + 1);
            p.push('/');
            p.push_str(path);
            Cow::Owned(p)
        };
        return Ok(RequestTarget::Absolute { https, authority, path });
    }
    if Authority::parse(raw.as_bytes()).is_ok() {
        return Err(bad("authority-form target only allowed with CONNECT"));
    }
    Err(bad("invalid request target"))
}

impl RequestHead<'_> {
    /// Where to connect: the CONNECT authority (port required); the absolute-form
    /// authority (default port 80, or 443 for https); else the Host header (default port
    /// 80); else 400 "no Host". Returns `(host, port, is_connect)`.
    pub fn upstream_target(&self) -> Result<(&str, u16, bool), H1Error> {
        match &self.target {
            RequestTarget::Authority(a) => match a.port {
                Some(port) => Ok((&a.host, port, true)),
                None => Err(bad("CONNECT target without port")),
            },
            RequestTarget::Absolute { https, authority, .. } => {
                Ok((&authority.host, authority.port_or(if *https { 443 } else { 80 }), false))
            }
            RequestTarget::Origin { .. } | RequestTarget::Asterisk => match &self.host {
                Some(h) => Ok((&h.host, h.port_or(80), false)),
                None => Err(bad("no Host")),
            },
        }
    }

    /// True when a Via header already names `via_token` (our own pseudonym): a
    /// forwarding loop (answer with `H1Error::loop_detected()`).
    pub fn loops_through(&self, via_token: &str) -> bool {
        self.headers
            .iter()
            .filter(|h| classify(h.name) == FieldKind::Via)
            .any(|h| via_names(h.value, via_token.as_bytes()))
    }

    /// Appends the head to send upstream: `METHOD origin-form HTTP/1.1`, Host first
    /// (the target authority for absolute-form and CONNECT, else the client's value), the
    /// end-to-end fields (hop-by-hop, Connection-named, Expect, Content-Length and
    /// Transfer-Encoding dropped; the client's forwarding fields as `hop` rules), our Via
    /// hop and forwarding elements, the framing field, and the blank line.
    pub fn write_upstream(&self, out: &mut Vec<u8>, hop: &Hop<'_>) {
        out.reserve(estimate_len(&self.headers) + self.method_raw.len() + hop.via.len() + 96);
        out.extend_from_slice(self.method_raw.as_bytes());
        out.push(b' ');
        match &self.target {
            RequestTarget::Origin { path } => out.extend_from_slice(path.as_bytes()),
            RequestTarget::Absolute { path, .. } => out.extend_from_slice(path.as_bytes()),
            RequestTarget::Authority(a) => a.write_to(out),
            RequestTarget::Asterisk => out.push(b'*'),
        }
        out.extend_from_slice(b" HTTP/1.1\r\n");

        match &self.target {
            RequestTarget::Absolute { authority, .. } | RequestTarget::Authority(authority) => {
                out.extend_from_slice(b"Host: ");
                authority.write_to(out);
                out.extend_from_slice(b"\r\n");
            }
            RequestTarget::Origin { .. } | RequestTarget::Asterisk => {
                if let Some(h) = self.headers.iter().find(|h| classify(h.name) == FieldKind::Host) {
                    push_field(out, b"Host", h.value);
                }
            }
        }

        let forwarded = hop.element(Field::Forwarded);
        let xff = hop.element(Field::XForwardedFor);
        let mut appends = [via_append(hop.via); 3];
        let mut n = 1;
        if let Some(e) = &forwarded {
            appends[n] = Append { kind: FieldKind::Forwarded, name: b"Forwarded", parts: [e.as_bytes(), b""] };
            n += 1;
        }
        if let Some(e) = &xff {
            appends[n] =
                Append { kind: FieldKind::XForwardedFor, name: b"X-Forwarded-For", parts: [e.as_bytes(), b""] };
            n += 1;
        }
        let unmerged = push_forwarded_fields(out, &self.headers, &appends[..n], |kind| match kind {
            FieldKind::Via | FieldKind::Other => false,
            FieldKind::Forwarded => !hop.keeps_client_field(Field::Forwarded),
            FieldKind::XForwardedFor => !hop.keeps_client_field(Field::XForwardedFor),
            _ => true,
        });

        match self.framing {
            BodyFraming::Length(n) => {
                out.extend_from_slice(b"Content-Length: ");
                push_u64(out, n);
                out.extend_from_slice(b"\r\n");
            }
            BodyFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
            BodyFraming::None | BodyFraming::CloseDelimited => {}
        }
        push_unmerged(out, &appends[..n], unmerged);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::Header;

    fn field<'a>(name: &'a str, value: &'a [u8]) -> Header<'a> {
        Header { name, value }
    }

    const LIMITS: HeadLimits = HeadLimits { max_bytes: 8192, max_headers: 64 };

    fn parse(raw: &[u8]) -> Result<Option<(RequestHead<'_>, usize)>, H1Error> {
        parse_request(raw, &LIMITS)
    }

    fn req(raw: &str) -> RequestHead<'_> {
        match parse(raw.as_bytes()) {
            Ok(Some((head, n))) => {
                assert_eq!(n, raw.len(), "consumed for {raw:?}");
                head
            }
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    fn err(raw: &[u8]) -> H1Error {
        match parse(raw) {
            Err(e) => e,
            other => panic!("{:?} gave {other:?}", String::from_utf8_lossy(raw)),
        }
    }

    fn bad_request(raw: &str, detail: &str) {
        let e = err(raw.as_bytes());
        assert_eq!(e.kind, H1ErrorKind::BadRequest, "{raw:?}: {e}");
        assert_eq!(e.detail, detail, "{raw:?}");
    }

    fn upstream(head: &RequestHead) -> String {
        let mut out = Vec::new();
        head.write_upstream(&mut out, &Hop::via_only("sluice"));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn simple_get() {
        let raw = "GET /a/b?c=d HTTP/1.1\r\nHost: Example.com\r\nUser-Agent: t\r\n\r\n";
        let h = req(raw);
        assert_eq!(h.method, Method::Get);
        assert_eq!(h.method_raw, "GET");
        assert_eq!(h.target, RequestTarget::Origin { path: "/a/b?c=d" });
        assert_eq!(h.minor_version, 1);
        assert_eq!(*h.headers, [field("Host", b"Example.com"), field("User-Agent", b"t")]);
        assert_eq!(h.framing, BodyFraming::None);
        assert!(h.keep_alive);
        assert!(!h.expect_continue);
        assert_eq!(h.host, Some(Authority { host: "example.com".into(), port: None }));
    }

    #[test]
    fn header_names_keep_case_and_values_are_trimmed() {
        let h = req("GET / HTTP/1.1\r\nhOsT: a\r\nX-Thing:   spaced out \t\r\nX-Empty:\r\n\r\n");
        assert_eq!(h.headers[0].name, "hOsT");
        assert_eq!(h.headers[1], field("X-Thing", b"spaced out"));
        assert_eq!(h.headers[2], field("X-Empty", b""));
        // obs-text is allowed in values
        let h = req("GET / HTTP/1.1\r\nHost: a\r\nX: caf\u{e9}\r\n\r\n");
        assert_eq!(h.headers[1].value, "caf\u{e9}".as_bytes());
    }

    #[test]
    fn incomplete_heads_wait() {
        let raw = b"POST /upload HTTP/1.1\r\nHost: a:81\r\nContent-Length: 3\r\n\r\n";
        for n in 0..raw.len() {
            assert_eq!(parse(&raw[..n]), Ok(None), "prefix of {n} bytes");
        }
        assert!(matches!(parse(raw), Ok(Some((_, n))) if n == raw.len()));
    }

    #[test]
    fn consumed_stops_at_head_end() {
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n";
        let (h, n) = parse(raw).unwrap().unwrap();
        assert_eq!(n, raw.len() - 3 - 16);
        assert_eq!(h.framing, BodyFraming::Length(3));
        // pipelined second request
        let raw = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n";
        let (h, n) = parse(raw).unwrap().unwrap();
        assert_eq!(n, raw.len() / 2);
        assert_eq!(h.target, RequestTarget::Origin { path: "/1" });
        let (h, _) = parse(&raw[n..]).unwrap().unwrap();
        assert_eq!(h.target, RequestTarget::Origin { path: "/2" });
    }

    #[test]
    fn leading_empty_lines_are_skipped_and_counted() {
        let raw = "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let h = req(raw);
        assert_eq!(h.method, Method::Get);
        bad_request("\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", "too many empty lines before start line");
        bad_request("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", "bare LF in head");
        assert_eq!(parse(b"\r\n"), Ok(None));
        assert_eq!(parse(b"\r\n\r\n"), Ok(None));
    }

    #[test]
    fn bare_lf_is_rejected() {
        let d = "bare LF in head";
        bad_request("GET / HTTP/1.1\nHost: a\r\n\r\n", d);
        bad_request("GET / HTTP/1.1\r\nHost: a\n\r\n", d);
        bad_request("GET / HTTP/1.1\r\nHost: a\r\n\n", d);
        bad_request("GET / HTTP/1.1\nHost: a\n\n", d);
        bad_request("GET / HTTP/1.1\r\nHost: a\r\nX: 1\nContent-Length: 5\r\n\r\n", d);
        // detected before the head is complete
        bad_request("GET / HTTP/1.1\r\nHost: a\n", d);
    }

    #[test]
    fn bare_cr_is_rejected() {
        let d = "CR not followed by LF in head";
        bad_request("GET / HTTP/1.1\rHost: a\r\n\r\n", d);
        bad_request("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", d);
        bad_request("GET / HTTP/1.1\r\nX: a\rb\r\nHost: a\r\n\r\n", d);
        bad_request("GET / HTTP/1.1\r\nHost: a\r\n\rX", d);
        bad_request("GET /\r HTTP/1.1\r\nHost: a\r\n\r\n", d);
    }

    #[test]
    fn obs_fold_is_rejected() {
        let d = "obsolete line folding in head";
        bad_request("GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n", d);
        bad_request("GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\t2\r\n\r\n", d);
        bad_request("GET / HTTP/1.1\r\n Host: a\r\n\r\n", d);
        bad_request("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n , chunked\r\n\r\n", d);
    }

    #[test]
    fn invalid_field_names_and_values() {
        let name = "invalid header field name";
        bad_request("GET / HTTP/1.1\r\nHost : a\r\n\r\n", name);
        bad_request("GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n", name);
        bad_request("GET / HTTP/1.1\r\nHost: a\r\nX\t: 5\r\n\r\n", name);
        bad_request("GET / HTTP/1.1\r\nHost: a\r\nX Y: 5\r\n\r\n", name);
        bad_request("GET / HTTP/1.1\r\nHost: a\r\nX(Y): 5\r\n\r\n", name);
        bad_request("GET / HTTP/1.1\r\nHost: a\r\n: 5\r\n\r\n", name);
        bad_request("GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", name);
        bad_request("GET / HTTP/1.1\r\nHost: a\r\nX\x00: 5\r\n\r\n", name);
        let value = "invalid character in header value";
        bad_request("GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", value);
        bad_request("GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", value);
        bad_request("GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n", value);
        bad_request("GET / HTTP/1.1\r\nHost: a\r\nX: \x0b\r\n\r\n", value);
    }

    #[test]
    fn underscore_framing_names_are_rejected() {
        let d = "underscore in Content-Length or Transfer-Encoding name";
        bad_request("POST / HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\n\r\n", d);
        bad_request("POST / HTTP/1.1\r\nHost: a\r\ntransfer_encoding: chunked\r\n\r\n", d);
    }

    #[test]
    fn malformed_request_lines() {
        let d = "malformed request line";
        bad_request("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", d);
        bad_request("GET /  HTTP/1.1\r\nHost: a\r\n\r\n", d);
        bad_request("GET / HTTP/1.1 x\r\nHost: a\r\n\r\n", d);
        bad_request("GET /a b HTTP/1", d);
        bad_request(" GET / HTTP/1.1\r\nHost: a\r\n\r\n", d);
        bad_request("G(T / HTTP/1.1\r\nHost: a\r\n\r\n", d);
        bad_request("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", d);
        bad_request("GET /\r\n\r\n", d);
        bad_request("GET\r\n\r\n", d);
        bad_request("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", d);
        let e = err(b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(e.status(), 400);
        let e = err(b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n");
        assert_eq!(e.status(), 400);
        // early rejection of an incomplete head
        bad_request("GET  /", d);
    }

    #[test]
    fn versions() {
        for raw in [
            "GET / HTTP/1.2\r\nHost: a\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            "GET / HTTP/0.9\r\nHost: a\r\n\r\n",
            "GET / HTTP/3\r\nHost: a\r\n\r\n",
        ] {
            let e = err(raw.as_bytes());
            assert_eq!(e.kind, H1ErrorKind::BadVersion, "{raw:?}");
            assert_eq!(e.status(), 505);
        }
        // incomplete but already wrong
        assert_eq!(err(b"GET / HTTP/2").status(), 505);
        // not an HTTP-version at all: a malformed request line
        for raw in [
            "GET / http/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTPS/1.1\r\nHost: a\r\n\r\n",
            "GET / XTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.10\r\nHost: a\r\n\r\n",
            "GET /a b",
        ] {
            bad_request(raw, "malformed request line");
        }
        let h = req("GET / HTTP/1.0\r\n\r\n");
        assert_eq!(h.minor_version, 0);
        assert_eq!(h.host, None);
        assert!(!h.keep_alive);
    }

    #[test]
    fn methods() {
        for (token, method, idempotent) in [
            ("GET", Method::Get, true),
            ("HEAD", Method::Head, true),
            ("POST", Method::Post, false),
            ("PUT", Method::Put, true),
            ("DELETE", Method::Delete, true),
            ("OPTIONS", Method::Options, true),
            ("TRACE", Method::Trace, true),
            ("PATCH", Method::Patch, false),
            ("PROPFIND", Method::Other, false),
            ("get", Method::Other, false),
        ] {
            let raw = format!("{token} / HTTP/1.1\r\nHost: a\r\n\r\n");
            let h = req(&raw);
            assert_eq!(h.method, method, "{token}");
            assert_eq!(h.method_raw, token);
            assert_eq!(h.method.is_idempotent(), idempotent, "{token}");
        }
        assert!(!Method::Connect.is_idempotent());
    }

    #[test]
    fn content_length_framing() {
        let h = req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 42\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::Length(42));
        let h = req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::Length(0));
        let h = req("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::Length(3));
        let h = req("POST / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::None);
        let h = req("POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 7\r\nCONTENT-LENGTH: 7\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::Length(7));
        let h = req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 7, 7\r\nContent-Length: 7\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::Length(7));
        let h = req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::Length(7));
        let h = req("POST / HTTP/1.0\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::Length(5));
        let h = req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::Length(u64::MAX));
    }

    #[test]
    fn content_length_rejections() {
        let conflict = "conflicting Content-Length values";
        bad_request("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n", conflict);
        bad_request("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 5\r\n\r\n", conflict);
        bad_request("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\nContent-Length: 5\r\n\r\n", conflict);
        let invalid = "invalid Content-Length";
        bad_request("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", invalid);
        bad_request("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n", invalid);
        bad_request("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5a\r\n\r\n", invalid);
        bad_request("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", invalid);
        bad_request("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\n", invalid);
        bad_request("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1.0\r\n\r\n", invalid);
        bad_request(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n",
            "Content-Length overflow",
        );
        bad_request(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
            "Content-Length overflow",
        );
        let empty = "empty Content-Length";
        bad_request("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", empty);
        bad_request("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,\r\n\r\n", empty);
        bad_request("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: ,5\r\n\r\n", empty);
    }

    #[test]
    fn chunked_framing() {
        let h = req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::Chunked);
        let h = req("POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: ChUnKeD\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::Chunked);
        let h = req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , chunked ,\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::Chunked);
    }

    #[test]
    fn transfer_encoding_rejections() {
        bad_request(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "both Content-Length and Transfer-Encoding",
        );
        bad_request(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
            "both Content-Length and Transfer-Encoding",
        );
        bad_request(
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "Transfer-Encoding in an HTTP/1.0 request",
        );
        bad_request(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            "chunked applied more than once",
        );
        bad_request(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "chunked applied more than once",
        );
        let malformed = "malformed Transfer-Encoding";
        bad_request("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chu nked\r\n\r\n", malformed);
        bad_request("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", malformed);
        bad_request("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;a=b\r\n\r\n", malformed);
        bad_request("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\u{e9}\r\n\r\n", malformed);
        bad_request("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", "empty Transfer-Encoding");
        bad_request("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,\r\n\r\n", "empty Transfer-Encoding");
        for te in ["gzip", "identity", "gzip, chunked", "chunked, gzip", "x-custom;q=1"] {
            let raw = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\n\r\n");
            let e = err(raw.as_bytes());
            assert_eq!(e.kind, H1ErrorKind::NotImplemented, "{te}");
            assert_eq!(e.status(), 501);
        }
        let e = err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(e.status(), 501);
    }

    #[test]
    fn host_rules() {
        bad_request("GET / HTTP/1.1\r\n\r\n", "missing Host header");
        bad_request("GET / HTTP/1.1\r\nX: y\r\n\r\n", "missing Host header");
        bad_request("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", "multiple Host headers");
        bad_request("GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n", "multiple Host headers");
        bad_request("GET / HTTP/1.1\r\nHost:\r\n\r\n", "invalid Host header");
        bad_request("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "invalid Host header");
        bad_request("GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", "invalid Host header");
        bad_request("GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n", "invalid Host header");
        bad_request("GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", "invalid Host header");
        let h = req("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n");
        assert_eq!(h.host, Some(Authority { host: "::1".into(), port: Some(8080) }));
        let h = req("GET / HTTP/1.0\r\nHost: b:81\r\n\r\n");
        assert_eq!(h.host.as_ref().map(|a| a.port), Some(Some(81)));
        // absolute-form still needs a Host on 1.1
        bad_request("GET http://a/ HTTP/1.1\r\n\r\n", "missing Host header");
        let h = req("GET http://a/ HTTP/1.0\r\n\r\n");
        assert_eq!(h.host, None);
    }

    #[test]
    fn connect_targets() {
        let h = req("CONNECT Example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
        assert_eq!(h.method, Method::Connect);
        assert_eq!(h.target, RequestTarget::Authority(Authority { host: "example.com".into(), port: Some(443) }));
        assert_eq!(h.upstream_target(), Ok(("example.com", 443, true)));
        let h = req("CONNECT [::1]:22 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(h.upstream_target(), Ok(("::1", 22, true)));
        bad_request("CONNECT example.com HTTP/1.1\r\nHost: a\r\n\r\n", "CONNECT target without port");
        let d = "CONNECT requires an authority-form target";
        bad_request("CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n", d);
        bad_request("CONNECT * HTTP/1.1\r\nHost: a\r\n\r\n", d);
        bad_request("CONNECT http://a:80/ HTTP/1.1\r\nHost: a\r\n\r\n", d);
        bad_request("CONNECT u@a:80 HTTP/1.1\r\nHost: a\r\n\r\n", "userinfo in authority");
        bad_request("CONNECT a:0 HTTP/1.1\r\nHost: a\r\n\r\n", "invalid port");
        bad_request("GET a:80 HTTP/1.1\r\nHost: a\r\n\r\n", "authority-form target only allowed with CONNECT");
        bad_request(
            "POST example.com:443 HTTP/1.1\r\nHost: a\r\n\r\n",
            "authority-form target only allowed with CONNECT",
        );
    }

    #[test]
    fn asterisk_targets() {
        let h = req("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(h.target, RequestTarget::Asterisk);
        assert_eq!(h.upstream_target(), Ok(("a", 80, false)));
        bad_request("GET * HTTP/1.1\r\nHost: a\r\n\r\n", "asterisk-form target only allowed with OPTIONS");
        bad_request("GET a*b HTTP/1.1\r\nHost: a\r\n\r\n", "invalid request target");
        bad_request("GET ?x HTTP/1.1\r\nHost: a\r\n\r\n", "invalid request target");
    }

    #[test]
    fn absolute_targets() {
        let h = req("GET http://Example.com:8080/a?b HTTP/1.1\r\nHost: ignored\r\n\r\n");
        assert_eq!(
            h.target,
            RequestTarget::Absolute {
                https: false,
                authority: Authority { host: "example.com".into(), port: Some(8080) },
                path: "/a?b".into()
            }
        );
        assert_eq!(h.upstream_target(), Ok(("example.com", 8080, false)));
        let h = req("GET HTTPS://h HTTP/1.1\r\nHost: h\r\n\r\n");
        assert!(matches!(
            &h.target,
            RequestTarget::Absolute { https: true, path, .. } if path == "/"
        ));
        assert_eq!(h.upstream_target(), Ok(("h", 443, false)));
        let h = req("GET http://h HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(h.upstream_target(), Ok(("h", 80, false)));
        let h = req("GET http://h?x=1 HTTP/1.1\r\nHost: h\r\n\r\n");
        assert!(matches!(&h.target, RequestTarget::Absolute { path, .. } if path == "/?x=1"));
        let h = req("OPTIONS http://[::1]:9/ HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(h.upstream_target(), Ok(("::1", 9, false)));
        bad_request("GET ftp://h/ HTTP/1.1\r\nHost: h\r\n\r\n", "unsupported URI scheme");
        bad_request("GET ://h/ HTTP/1.1\r\nHost: h\r\n\r\n", "unsupported URI scheme");
        bad_request("GET httpx://h/ HTTP/1.1\r\nHost: h\r\n\r\n", "unsupported URI scheme");
        bad_request("GET http://u:p@h/ HTTP/1.1\r\nHost: h\r\n\r\n", "userinfo in authority");
        bad_request("GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n", "empty host");
        bad_request("GET http://h:x/ HTTP/1.1\r\nHost: h\r\n\r\n", "invalid port");
        bad_request("GET http:/h/ HTTP/1.1\r\nHost: h\r\n\r\n", "invalid request target");
    }

    #[test]
    fn keep_alive_rules() {
        assert!(req("GET / HTTP/1.1\r\nHost: a\r\n\r\n").keep_alive);
        assert!(!req("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!req("GET / HTTP/1.1\r\nHost: a\r\nConnection: CLOSE\r\n\r\n").keep_alive);
        assert!(!req("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n").keep_alive);
        assert!(!req("GET / HTTP/1.1\r\nHost: a\r\nConnection: x\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(req("GET / HTTP/1.1\r\nHost: a\r\nConnection: closed\r\n\r\n").keep_alive);
        assert!(!req("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(req("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(req("GET / HTTP/1.0\r\nConnection: foo, keep-alive\r\n\r\n").keep_alive);
        assert!(!req("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n").keep_alive);
        assert!(!req("GET / HTTP/1.0\r\nProxy-Connection: keep-alive\r\n\r\n").keep_alive);
    }

    #[test]
    fn expect_continue() {
        assert!(req("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n").expect_continue);
        assert!(req("POST / HTTP/1.1\r\nHost: a\r\nexpect: 100-Continue\r\n\r\n").expect_continue);
        assert!(!req("POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n").expect_continue);
        assert!(!req("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect_continue);
        assert!(!req("POST / HTTP/1.1\r\nHost: a\r\n\r\n").expect_continue);
    }

    #[test]
    fn size_limits() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX: 0123456789\r\n\r\n";
        let exact = HeadLimits { max_bytes: raw.len(), max_headers: 8 };
        assert!(matches!(parse_request(raw, &exact), Ok(Some((_, n))) if n == raw.len()));
        let small = HeadLimits { max_bytes: raw.len() - 1, max_headers: 8 };
        let e = parse_request(raw, &small).unwrap_err();
        assert_eq!(e.kind, H1ErrorKind::HeadTooLarge);
        assert_eq!(e.status(), 431);
        // incomplete and already at the limit
        let e = parse_request(&raw[..20], &HeadLimits { max_bytes: 20, max_headers: 8 }).unwrap_err();
        assert_eq!(e.kind, H1ErrorKind::HeadTooLarge);
        assert_eq!(parse_request(&raw[..20], &HeadLimits { max_bytes: 21, max_headers: 8 }), Ok(None));
        // leading empty lines count against the limit
        let mut with_lines = b"\r\n".to_vec();
        with_lines.extend_from_slice(raw);
        assert_eq!(parse_request(&with_lines, &exact).unwrap_err().kind, H1ErrorKind::HeadTooLarge);
        // a huge garbage-free line with no end
        let long = vec![b'a'; 9000];
        assert_eq!(parse(&long).unwrap_err().kind, H1ErrorKind::HeadTooLarge);
    }

    #[test]
    fn header_count_limits() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
        let three = HeadLimits { max_bytes: 1024, max_headers: 3 };
        assert!(parse_request(raw, &three).unwrap().is_some());
        let two = HeadLimits { max_bytes: 1024, max_headers: 2 };
        let e = parse_request(raw, &two).unwrap_err();
        assert_eq!(e.kind, H1ErrorKind::HeadTooLarge);
        assert_eq!(e.detail, "too many header fields");
        // detected before the head is complete
        assert_eq!(parse_request(&raw[..raw.len() - 2], &two).unwrap_err().kind, H1ErrorKind::HeadTooLarge);
        // more slots than fit on the stack
        let mut big = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..199 {
            big.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
        }
        big.extend_from_slice(b"\r\n");
        let many = HeadLimits { max_bytes: 1 << 16, max_headers: 200 };
        let (h, _) = parse_request(&big, &many).unwrap().unwrap();
        assert_eq!(h.headers.len(), 200);
        assert_eq!(h.headers[200 - 1], field("X-198", b"198"));
        let fewer = HeadLimits { max_bytes: 1 << 16, max_headers: 199 };
        assert_eq!(parse_request(&big, &fewer).unwrap_err().kind, H1ErrorKind::HeadTooLarge);
        let none = HeadLimits { max_bytes: 1024, max_headers: 0 };
        assert!(parse_request(b"GET / HTTP/1.0\r\n\r\n", &none).unwrap().is_some());
    }

    #[test]
    fn empty_buffer_waits() {
        assert_eq!(parse(b""), Ok(None));
        assert_eq!(parse(b"G"), Ok(None));
    }

    #[test]
    fn upstream_target_needs_host() {
        let h = req("GET / HTTP/1.0\r\n\r\n");
        let e = h.upstream_target().unwrap_err();
        assert_eq!(e.status(), 400);
        assert_eq!(e.detail, "no Host");
        let h = req("GET / HTTP/1.1\r\nHost: b:8081\r\n\r\n");
        assert_eq!(h.upstream_target(), Ok(("b", 8081, false)));
        let h = req("GET / HTTP/1.1\r\nHost: B\r\n\r\n");
        assert_eq!(h.upstream_target(), Ok(("b", 80, false)));
    }

    #[test]
    fn loop_detection() {
        let h = req("GET / HTTP/1.1\r\nHost: a\r\nVia: 1.0 fred, 1.1 sluice\r\n\r\n");
        assert!(h.loops_through("sluice"));
        assert!(h.loops_through("SLUICE"));
        assert!(!h.loops_through("other"));
        let h = req("GET / HTTP/1.1\r\nHost: a\r\nvia: 1.1 x\r\nVIA: HTTP/1.1 sluice (Sluice)\r\n\r\n");
        assert!(h.loops_through("sluice"));
        let h = req("GET / HTTP/1.1\r\nHost: a\r\nX-Via: 1.1 sluice\r\n\r\n");
        assert!(!h.loops_through("sluice"));
        let h = req("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(!h.loops_through("sluice"));
        assert_eq!(H1Error::loop_detected().status(), 508);
    }

    #[test]
    fn write_upstream_origin_form() {
        let h = req("GET /p?q HTTP/1.1\r\nUser-Agent: t\r\nHost: Example.com:81\r\nAccept: */*\r\n\r\n");
        assert_eq!(
            upstream(&h),
            "GET /p?q HTTP/1.1\r\nHost: Example.com:81\r\nUser-Agent: t\r\nAccept: */*\r\n\
             Via: 1.1 sluice\r\n\r\n"
        );
    }

    #[test]
    fn write_upstream_drops_hop_by_hop() {
        let h = req("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Hop, Host, Content-Length\r\n\
             Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X\r\n\
             Upgrade: websocket\r\nProxy-Authorization: Basic x\r\nProxy-Authenticate: y\r\n\
             x-hop: 1\r\nX-Keep: 2\r\nExpect: 100-continue\r\n\r\n");
        assert_eq!(upstream(&h), "GET / HTTP/1.1\r\nHost: a\r\nX-Keep: 2\r\nVia: 1.1 sluice\r\n\r\n");
    }

    #[test]
    fn write_upstream_rewrites_framing() {
        let h = req("POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\ncontent-length: 5\r\nX: y\r\n\r\n");
        assert_eq!(upstream(&h), "POST /u HTTP/1.1\r\nHost: a\r\nX: y\r\nContent-Length: 5\r\nVia: 1.1 sluice\r\n\r\n");
        let h = req("POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(upstream(&h), "POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nVia: 1.1 sluice\r\n\r\n");
        let h = req("POST /u HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(upstream(&h), "POST /u HTTP/1.1\r\nHost: a\r\nVia: 1.1 sluice\r\n\r\n");
        let h =
            req("POST /u HTTP/1.1\r\nTransfer-Encoding: Chunked\r\nHost: a\r\nConnection: transfer-encoding\r\n\r\n");
        assert_eq!(
            upstream(&h),
            "POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nVia: 1.1 sluice\r\n\r\n"
        );
    }

    #[test]
    fn write_upstream_absolute_form_replaces_host() {
        let h = req("GET http://Origin.example:8080/x?y HTTP/1.1\r\nHost: wrong\r\nA: b\r\n\r\n");
        assert_eq!(upstream(&h), "GET /x?y HTTP/1.1\r\nHost: origin.example:8080\r\nA: b\r\nVia: 1.1 sluice\r\n\r\n");
        let h = req("GET http://[::1]/ HTTP/1.0\r\n\r\n");
        assert_eq!(upstream(&h), "GET / HTTP/1.1\r\nHost: [::1]\r\nVia: 1.1 sluice\r\n\r\n");
    }

    #[test]
    fn write_upstream_other_forms() {
        let h = req("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(upstream(&h), "OPTIONS * HTTP/1.1\r\nHost: a\r\nVia: 1.1 sluice\r\n\r\n");
        let h = req("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n");
        assert_eq!(upstream(&h), "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nVia: 1.1 sluice\r\n\r\n");
        // HTTP/1.0 client, sent upstream as HTTP/1.1 with persistence by default
        let h = req("GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(upstream(&h), "GET / HTTP/1.1\r\nHost: a\r\nVia: 1.1 sluice\r\n\r\n");
    }

    #[test]
    fn write_upstream_merges_via() {
        let h = req("GET / HTTP/1.1\r\nHost: a\r\nVia: 1.0 fred\r\nX: y\r\n\r\n");
        assert_eq!(upstream(&h), "GET / HTTP/1.1\r\nHost: a\r\nVia: 1.0 fred, 1.1 sluice\r\nX: y\r\n\r\n");
        let h = req("GET / HTTP/1.1\r\nHost: a\r\nVia: 1.0 a\r\nvia: 1.0 b\r\n\r\n");
        assert_eq!(upstream(&h), "GET / HTTP/1.1\r\nHost: a\r\nVia: 1.0 a\r\nvia: 1.0 b, 1.1 sluice\r\n\r\n");
        let h = req("GET / HTTP/1.1\r\nHost: a\r\nVia:\r\n\r\n");
        assert_eq!(upstream(&h), "GET / HTTP/1.1\r\nHost: a\r\nVia: 1.1 sluice\r\n\r\n");
        // a Via dropped through Connection does not swallow ours
        let h = req("GET / HTTP/1.1\r\nHost: a\r\nVia: 1.0 a\r\nConnection: via\r\n\r\n");
        assert_eq!(upstream(&h), "GET / HTTP/1.1\r\nHost: a\r\nVia: 1.1 sluice\r\n\r\n");
    }

    #[test]
    fn write_upstream_appends() {
        let h = req("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        let mut out = b"prefix".to_vec();
        h.write_upstream(&mut out, &Hop::via_only("p"));
        assert_eq!(out, b"prefixGET / HTTP/1.1\r\nHost: a\r\nVia: 1.1 p\r\n\r\n");
    }

    #[test]
    fn written_head_parses_back() {
        let h = req("PUT http://a:1/x HTTP/1.1\r\nHost: a:1\r\nTransfer-Encoding: chunked\r\nX: 1\r\n\r\n");
        let mut out = Vec::new();
        h.write_upstream(&mut out, &Hop::via_only("sluice"));
        let (back, n) = parse(&out).unwrap().unwrap();
        assert_eq!(n, out.len());
        assert_eq!(back.framing, BodyFraming::Chunked);
        assert_eq!(back.target, RequestTarget::Origin { path: "/x" });
        assert!(back.loops_through("sluice"));
    }

    #[test]
    fn write_upstream_connection_tokens_across_fields() {
        let h = req("POST / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-A: 1\r\n\
             connection: x-a , , X-B\r\nX-B: 2\r\nX-C: 3\r\nContent-Length: 1\r\n\
             Connection: content-length, host\r\n\r\n");
        assert!(!h.keep_alive);
        assert_eq!(
            upstream(&h),
            "POST / HTTP/1.1\r\nHost: a\r\nX-C: 3\r\nContent-Length: 1\r\nVia: 1.1 sluice\r\n\r\n"
        );
    }

    #[test]
    fn an_unclosed_comment_in_via_does_not_hide_the_loop() {
        // Found by fuzz/request_head (fuzz/README.md): our hop, appended to a last Via
        // whose comment never closes, was read back as part of that comment.
        let crash: &[u8] = b"&EH / HTTP/1.1\r\nHost: [::1]\r\nVia: \xa21./::1]\r\n\
              Via: 1\xdf\x8c\x93\x82\xd6\x96\x9cF(\r\nViaia: \xa21\r\n\r\n";
        let (h, _) = parse_request(crash, &LIMITS).unwrap().unwrap();
        assert!(!h.loops_through("sluice"));
        let mut out = Vec::new();
        h.write_upstream(&mut out, &Hop::via_only("sluice"));
        let (back, n) = parse_request(&out, &LIMITS).unwrap().unwrap();
        assert_eq!(n, out.len());
        assert!(back.loops_through("sluice"), "{:?}", String::from_utf8_lossy(&out));
    }

    const SEEDS: &[&[u8]] = &[
        b"POST http://a:8/x?y HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nVia: 1.0 b\r\n\r\n",
        b"GET / HTTP/1.0\r\nConnection: keep-alive, x\r\nContent-Length: 3, 3\r\nx: y\r\n\r\n",
        b"\r\nCONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\nExpect: 100-continue\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
    ];
    const ALPHABET: &[u8] = b"\r\n :,;/?*@[]\t\x00\x7fHTPhtp01.9aZ-_\"\xff";

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(super::super::mutate::CASES))]

        /// Small edits of valid heads: never a panic, a parsed head never claims more
        /// bytes than it was given (or than the limit), and what it sends upstream parses
        /// back whole.
        #[test]
        fn mutated_heads_never_panic(buf in super::super::mutate::mutated(SEEDS, ALPHABET)) {
            let small = HeadLimits { max_bytes: 96, max_headers: 3 };
            for limits in [&LIMITS, &small] {
                if let Ok(Some((head, n))) = parse_request(&buf, limits) {
                    proptest::prop_assert!(n <= buf.len() && n <= limits.max_bytes);
                    let mut out = Vec::new();
                    head.write_upstream(&mut out, &Hop::via_only("sluice"));
                    let _ = head.loops_through("sluice");
                    if head.upstream_target().is_ok() {
                        // what we send upstream is always a valid head again
                        let back = parse_request(&out, &LIMITS);
                        proptest::prop_assert!(
                            matches!(back, Ok(Some((_, n))) if n == out.len()),
                            "{:?} -> {back:?}",
                            String::from_utf8_lossy(&out)
                        );
                    }
                }
            }
        }
    }
}
