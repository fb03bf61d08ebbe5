//! Test-only: the regression guard for the codec's hot path. Parsing a request head,
//! checking it for a loop, picking its target and rewriting it for the origin, then the
//! same for the response head, allocates nothing for the heads of a keep-alive exchange
//! (a 1 KiB GET, absolute-form or with Host, and a browser's head of 15 fields with a
//! cookie against a static-asset or gzip-chunked answer); a head with more fields than
//! fit inline costs one allocation, not one per field. Counted per thread by the
//! `allocation-counter` dev-dependency (its global allocator wraps the system one), so
//! tests running beside this one do not disturb the count.

use super::{parse_request, parse_response, HeadLimits, INLINE_FIELDS};
use crate::forwarding::{ForwardMode, Forwarding, Hop};
use allocation_counter::measure;

/// The worker's limits by default (`limits.max_headers`, `limits.max_header_bytes`).
const LIMITS: HeadLimits = HeadLimits { max_bytes: 16 * 1024, max_headers: 100 };

/// What wrk sends for `ka1k`.
const GET_1K: &[u8] = b"GET /1k HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";
const GET_1K_ABSOLUTE: &[u8] = b"GET http://127.0.0.1:8080/1k HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";

/// A desktop Chrome's head for a page (bench/tools/browse.lua's `document`).
const BROWSE: &[u8] = b"GET /b/index.html HTTP/1.1\r\nHost: shop.example.com\r\nConnection: keep-alive\r\n\
sec-ch-ua: \"Google Chrome\";v=\"131\", \"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\"\r\n\
sec-ch-ua-mobile: ?0\r\nUpgrade-Insecure-Requests: 1\r\n\
User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n\
sec-ch-ua-platform: \"Windows\"\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8\r\n\
Sec-Fetch-Site: same-origin\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-User: ?1\r\nSec-Fetch-Dest: document\r\n\
Referer: https://shop.example.com/\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Cookie: sid=qK7vR2xN9bLm4TzW8pYc1HdF6sJ0aEgU; _ga=GA1.1.1843920571.1732612047; consent=necessary%2Cstatistics\r\n\r\n";

/// A chunked upload naming a field in Connection, with forwarding fields of its own.
const POST_CHUNKED: &[u8] =
    b"POST /api/cart HTTP/1.1\r\nHost: shop.example.com:8443\r\nConnection: keep-alive, X-Trace\r\n\
X-Trace: 1\r\nTransfer-Encoding: chunked\r\nVia: 1.1 cache\r\nX-Forwarded-For: 192.0.2.1\r\n\
Forwarded: for=192.0.2.1\r\nContent-Type: application/json\r\n\r\n";

/// nginx's answer to `/1k`.
const OK_1K: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 01 Dec 2026 01:12:27 GMT\r\n\
Content-Type: application/octet-stream\r\nContent-Length: 1024\r\nLast-Modified: Tue, 01 Dec 2026 01:12:23 GMT\r\n\
Connection: keep-alive\r\nETag: \"6b0e1ef7-400\"\r\nAccept-Ranges: bytes\r\n\r\n";

/// A static asset through gzip: chunked, a dozen fields.
const OK_CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 01 Dec 2026 01:13:27 GMT\r\n\
Content-Type: text/html\r\nLast-Modified: Tue, 01 Dec 2026 01:12:23 GMT\r\nTransfer-Encoding: chunked\r\n\
Connection: keep-alive\r\nETag: W/\"6b0e1ef7-6c00\"\r\nCache-Control: public, max-age=31536000, immutable\r\n\
Vary: Accept-Encoding\r\nX-Content-Type-Options: nosniff\r\nAccess-Control-Allow-Origin: *\r\n\
Content-Encoding: gzip\r\n\r\n";

/// The worker's defaults: Forwarded and X-Forwarded-For appended for a known client.
fn hop() -> Hop<'static> {
    Hop {
        via: "sluice",
        rules: Forwarding { forwarded: ForwardMode::Append, x_forwarded_for: ForwardMode::Append },
        client: Some(std::net::Ipv4Addr::new(192, 0, 2, 7).into()),
        https: false,
    }
}

/// One exchange through the codec, as `conn::http1` drives it, writing into `scratch`
/// (the worker's, which keeps its capacity). Returns how many allocations it made.
fn exchange(request: &[u8], response: &[u8], client_minor: u8, scratch: &mut Vec<u8>) -> u64 {
    let hop = hop();
    let info = measure(|| {
        let (head, _) = parse_request(request, &LIMITS).ok().flatten().expect("request head parses");
        assert!(!head.loops_through(hop.via));
        let (host, port, _) = head.upstream_target().expect("a target");
        assert!(!host.is_empty() && port > 0);
        scratch.clear();
        head.write_upstream(scratch, &hop);
        let (mut resp, _) =
            parse_response(response, &LIMITS, head.method).ok().flatten().expect("response head parses");
        if client_minor == 0 {
            resp.dechunk();
        }
        scratch.clear();
        resp.write_client(scratch, hop.via, !head.keep_alive, client_minor);
    });
    info.count_total
}

fn scratch() -> Vec<u8> {
    Vec::with_capacity(LIMITS.max_bytes)
}

#[test]
fn a_keep_alive_exchange_allocates_nothing() {
    let mut scratch = scratch();
    for (request, response) in
        [(GET_1K, OK_1K), (GET_1K_ABSOLUTE, OK_1K), (BROWSE, OK_1K), (BROWSE, OK_CHUNKED), (POST_CHUNKED, OK_CHUNKED)]
    {
        let name = String::from_utf8_lossy(&request[..request.iter().position(|&b| b == b'\r').unwrap_or(0)]);
        assert_eq!(exchange(request, response, 1, &mut scratch), 0, "{name}");
    }
    // An HTTP/1.0 client: the chunked framing is stripped.
    let get_10 = b"GET /b/app.js HTTP/1.0\r\nHost: shop.example.com\r\nConnection: keep-alive\r\n\r\n";
    assert_eq!(exchange(get_10, OK_CHUNKED, 0, &mut scratch), 0);
}

#[test]
fn more_fields_than_fit_inline_cost_one_allocation_per_head() {
    let mut request = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    let mut response = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n".to_vec();
    for i in 0..3 * INLINE_FIELDS {
        request.extend_from_slice(format!("X-Field-{i}: {i}\r\n").as_bytes());
        response.extend_from_slice(format!("Set-Cookie: c{i}={i}\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    response.extend_from_slice(b"\r\n");
    assert_eq!(exchange(&request, &response, 1, &mut scratch()), 2);
}
