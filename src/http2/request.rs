//! An HTTP/2 request as the HTTP/1.1 bytes its exchange parses (RFC 9113 §8.3, §8.5,
//! RFC 8441): pseudo-header fields become the request line and `Host`, connection-specific
//! fields stay out (`h2` already refuses them, §8.2.2), cookie crumbs are joined (§8.2.3),
//! and the body is framed by its `content-length`, or chunked when it has none (trailers
//! then travel in the chunked trailer section).
//!
//! The exchange parses and validates these bytes like any client's, so every HTTP/1.1
//! rule (access, authentication, forwarding headers, smuggling checks) applies to every
//! stream.

use http::request::Parts;
use http::{HeaderMap, Method};

/// How the request body travels to the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBody {
    /// None (END_STREAM came with the HEADERS).
    None,
    /// As it is: `content-length` says how long (the `h2` crate checks DATA against it).
    Length,
    /// In chunks, trailers in the trailer section.
    Chunked,
    /// Raw bytes both ways after the exchange's answer (CONNECT, extended CONNECT).
    Tunnel,
}

/// Why a request cannot be translated: it is malformed (RFC 9113 §8.1.1), and its stream
/// is reset with PROTOCOL_ERROR.
pub type Refusal = &'static str;

/// Fields that never cross from HTTP/2 into the HTTP/1.1 head: `host` (`:authority`
/// wins), the framing the translation decides, and connection-specific ones.
fn skipped(name: &str) -> bool {
    name == "content-length" || super::not_for_http2(name)
}

/// The HTTP/1.1 head for `parts`. `end_of_stream`: the HEADERS frame ended the stream.
/// `protocol`: the `:protocol` of an extended CONNECT (RFC 8441).
pub fn to_h1(
    parts: &Parts,
    end_of_stream: bool,
    protocol: Option<&str>,
    out: &mut Vec<u8>,
) -> Result<RequestBody, Refusal> {
    let host = parts.headers.get(http::header::HOST).map(|h| h.to_str().map_err(|_| "invalid host"));
    let authority = match (parts.uri.authority(), host) {
        // RFC 9113 §8.3.1: a Host naming another entity than :authority is malformed.
        (Some(a), Some(h)) if !a.as_str().eq_ignore_ascii_case(h?) => return Err("host differs from :authority"),
        (Some(a), _) => a.as_str(),
        // §8.5: a CONNECT names its target in :authority, nowhere else.
        (None, _) if parts.method == Method::CONNECT => return Err("CONNECT without :authority"),
        (None, Some(h)) => h?,
        (None, None) => return Err("request without :authority"),
    };
    if authority.is_empty() || authority.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err("invalid :authority");
    }
    // §8.2.1: a field value starts and ends with a visible character.
    let blank = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t'));
    if parts.headers.values().any(|v| blank(v.as_bytes().first()) || blank(v.as_bytes().last())) {
        return Err("field value with leading or trailing whitespace");
    }
    let body = if parts.method == Method::CONNECT {
        match protocol {
            None => {
                // RFC 9113 §8.5: only :method and :authority.
                push_line(out, &["CONNECT ", authority, " HTTP/1.1"]);
                push_line(out, &["host: ", authority]);
                out.extend_from_slice(b"\r\n");
                return Ok(RequestBody::Tunnel);
            }
            Some(p) => {
                // RFC 8441 §5: the origin behind us speaks HTTP/1.1: an Upgrade request.
                let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                push_line(out, &["GET ", path, " HTTP/1.1"]);
                push_line(out, &["host: ", authority]);
                push_line(out, &["connection: upgrade"]);
                push_line(out, &["upgrade: ", p]);
                if p.eq_ignore_ascii_case("websocket") && !parts.headers.contains_key("sec-websocket-key") {
                    push_line(out, &["sec-websocket-key: ", &websocket_key()]);
                }
                push_fields(out, &parts.headers);
                out.extend_from_slice(b"\r\n");
                return Ok(RequestBody::Tunnel);
            }
        }
    } else if end_of_stream {
        RequestBody::None
    } else if parts.headers.contains_key(http::header::CONTENT_LENGTH) {
        RequestBody::Length
    } else {
        RequestBody::Chunked
    };
    let path = match parts.uri.path_and_query() {
        Some(p) if parts.method == Method::OPTIONS && p.as_str() == "*" => "*",
        Some(p) if !p.as_str().is_empty() => p.as_str(),
        _ if parts.method == Method::OPTIONS => "*",
        _ => return Err("request without :path"),
    };
    push_line(out, &[parts.method.as_str(), " ", path, " HTTP/1.1"]);
    push_line(out, &["host: ", authority]);
    push_fields(out, &parts.headers);
    match body {
        RequestBody::Length => {
            let cl = parts.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).unwrap_or("0");
            push_line(out, &["content-length: ", cl]);
        }
        RequestBody::Chunked => push_line(out, &["transfer-encoding: chunked"]),
        RequestBody::None => {
            // A body the client announced but did not send is an empty one (`h2` has
            // checked DATA against content-length); say so explicitly to the origin.
            if parts.headers.get(http::header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0") {
                return Err("content-length without a body");
            }
            if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
                push_line(out, &["content-length: 0"]);
            }
        }
        RequestBody::Tunnel => {}
    }
    out.extend_from_slice(b"\r\n");
    Ok(body)
}

/// Every field but the skipped ones, the cookie crumbs joined into one line.
fn push_fields(out: &mut Vec<u8>, headers: &HeaderMap) {
    let mut cookies = headers.get_all(http::header::COOKIE).iter().peekable();
    if cookies.peek().is_some() {
        out.extend_from_slice(b"cookie: ");
        for (i, c) in cookies.enumerate() {
            if i > 0 {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(c.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in headers {
        let name = name.as_str();
        if skipped(name) || name == "cookie" {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

fn push_line(out: &mut Vec<u8>, parts: &[&str]) {
    for p in parts {
        out.extend_from_slice(p.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// One chunk of a chunked request body.
pub fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    use std::io::Write;
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked request body, with its trailer fields.
pub fn push_last_chunk(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    if let Some(t) = trailers {
        for (name, value) in t {
            if skipped(name.as_str()) {
                continue;
            }
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// A `Sec-WebSocket-Key` for the HTTP/1.1 leg of an RFC 8441 WebSocket (the HTTP/2 client
/// sends none): 16 fresh bytes, base64.
fn websocket_key() -> String {
    use base64ct::Encoding;
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    let mut bytes = [0u8; 16];
    for (i, half) in bytes.chunks_mut(8).enumerate() {
        let mut h = state.build_hasher();
        h.write_usize(i);
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    base64ct::Base64::encode_string(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: http::Request<()>) -> Parts {
        req.into_parts().0
    }

    fn text(p: &Parts, eos: bool) -> (String, RequestBody) {
        let mut out = Vec::new();
        let body = to_h1(p, eos, None, &mut out).unwrap();
        (String::from_utf8(out).unwrap(), body)
    }

    #[test]
    fn a_get_becomes_a_request_line_and_host_with_cookies_joined() {
        let p = parts(
            http::Request::get("https://example.test/a?b=1")
                .header("cookie", "a=1")
                .header("accept", "*/*")
                .header("cookie", "b=2")
                .body(())
                .unwrap(),
        );
        let (t, body) = text(&p, true);
        assert_eq!(t, "GET /a?b=1 HTTP/1.1\r\nhost: example.test\r\ncookie: a=1; b=2\r\naccept: */*\r\n\r\n");
        assert_eq!(body, RequestBody::None);
    }

    #[test]
    fn a_body_without_length_is_chunked_and_one_with_length_keeps_it() {
        let p = parts(http::Request::post("http://o.test/up").body(()).unwrap());
        let (t, body) = text(&p, false);
        assert!(t.ends_with("transfer-encoding: chunked\r\n\r\n"), "{t}");
        assert_eq!(body, RequestBody::Chunked);
        let p = parts(http::Request::post("http://o.test/up").header("content-length", "5").body(()).unwrap());
        let (t, body) = text(&p, false);
        assert!(t.ends_with("content-length: 5\r\n\r\n") && !t.contains("chunked"), "{t}");
        assert_eq!(body, RequestBody::Length);
    }

    #[test]
    fn connect_carries_only_its_authority() {
        let p = parts(http::Request::connect("echo.test:443").header("x-a", "1").body(()).unwrap());
        let (t, body) = text(&p, false);
        assert_eq!(t, "CONNECT echo.test:443 HTTP/1.1\r\nhost: echo.test:443\r\n\r\n");
        assert_eq!(body, RequestBody::Tunnel);
    }

    #[test]
    fn extended_connect_becomes_a_websocket_upgrade_with_a_key() {
        let p = parts(
            http::Request::connect("https://ws.test/chat").header("sec-websocket-version", "13").body(()).unwrap(),
        );
        let mut out = Vec::new();
        assert_eq!(to_h1(&p, false, Some("websocket"), &mut out), Ok(RequestBody::Tunnel));
        let t = String::from_utf8(out).unwrap();
        assert!(t.starts_with("GET /chat HTTP/1.1\r\nhost: ws.test\r\nconnection: upgrade\r\nupgrade: websocket\r\n"));
        assert!(t.contains("sec-websocket-key: ") && t.contains("sec-websocket-version: 13\r\n"), "{t}");
    }

    #[test]
    fn chunks_and_trailers_are_framed_for_http1() {
        let mut out = Vec::new();
        push_chunk(&mut out, b"hello");
        push_chunk(&mut out, b"");
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        push_last_chunk(&mut out, Some(&t));
        assert_eq!(out, b"5\r\nhello\r\n0\r\ngrpc-status: 0\r\n\r\n");
    }

    #[test]
    fn a_request_without_authority_or_host_is_refused() {
        let p = parts(http::Request::get("/x").body(()).unwrap());
        assert!(to_h1(&p, true, None, &mut Vec::new()).is_err());
    }

    #[test]
    fn malformed_requests_are_refused() {
        let refused = |req: http::Request<()>| to_h1(&parts(req), true, None, &mut Vec::new()).err();
        let other_host = http::Request::get("http://a.test/").header("host", "b.test").body(()).unwrap();
        assert_eq!(refused(other_host), Some("host differs from :authority"));
        let same_host = http::Request::get("http://a.test/").header("host", "A.test").body(()).unwrap();
        assert_eq!(refused(same_host), None);
        let connect = http::Request::connect("/").header("host", "a.test:443").body(()).unwrap();
        assert_eq!(refused(connect), Some("CONNECT without :authority"));
        for value in [" x", "x\t", "\tx "] {
            let req = http::Request::get("http://a.test/").header("x-v", value).body(()).unwrap();
            assert_eq!(refused(req), Some("field value with leading or trailing whitespace"), "{value:?}");
        }
    }
}
