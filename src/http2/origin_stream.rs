//! One request on an HTTP/2 origin session (`super::origin`): where it is ([`Request`]),
//! and the pump that moves it between its link and `h2`: the HTTP/1.1 head the exchange
//! wrote, translated into HEADERS once the origin has room; the body, with capacity
//! reserved before each DATA; the response's interim and final heads rendered back as
//! HTTP/1.1, then its body (chunked when it has no length) and trailers, each DATA
//! released to the origin only once its bytes are in the link.

use super::links::{LinkId, Links};
use super::news::StreamNews;
use super::response::{Event, ResponseReader};
use crate::h1::{self, BodyFraming, HeadLimits};
use crate::upstream::pool::PoolKey;
use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{Reason, RecvStream, SendStream};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use uring::ConnId;

/// Where one request is.
pub(super) enum Request {
    /// Waiting for the whole HTTP/1.1 head in the link.
    Head,
    /// Head parsed; waiting for room in the origin's streams.
    Ready { req: http::Request<()>, end: bool, body: ResponseReader },
    /// Sent; the body (if any) streams through `send`.
    Sent { send: SendStream<Bytes>, body: ResponseReader, done: bool },
}

/// One request and its response.
pub(super) struct Stream {
    pub link: LinkId,
    pub request: Request,
    response: Option<ResponseFuture>,
    recv: Option<RecvStream>,
    /// The response body is chunked for the exchange.
    chunked: bool,
    head_request: bool,
    /// In the session's `waiting` (its request was ready when it was last pumped).
    pub queued: bool,
    /// Sent, and counted in the session's `open_sent` until it leaves.
    pub open: bool,
    pub done: bool,
}

impl Stream {
    /// A stream for the request the exchange is writing into `link`.
    pub fn new(link: LinkId) -> Stream {
        Stream {
            link,
            request: Request::Head,
            response: None,
            recv: None,
            chunked: false,
            head_request: false,
            queued: false,
            open: false,
            done: false,
        }
    }
}

/// The exchange is done with the link or the session is: tell the other side.
pub(super) fn leave(links: &mut Links, link: LinkId, wake: &dyn Fn(ConnId)) {
    let Some(l) = links.get(link) else { return };
    if l.exchange_gone {
        links.free(link);
        return;
    }
    l.let_go();
    l.to_exchange_end = true;
    if let Some(x) = l.exchange {
        wake(x);
    }
}

/// The stream is over without a response: its exchange sees its origin fail, and may send
/// the request again anywhere when `unprocessed` (see `Link::unprocessed`).
pub(super) fn cancel(links: &mut Links, link: LinkId, wake: &dyn Fn(ConnId), unprocessed: bool) {
    if let Some(l) = links.get(link) {
        l.cancelled = true;
        l.unprocessed = unprocessed;
    }
    leave(links, link, wake);
}

const LIMITS: HeadLimits = HeadLimits { max_bytes: 256 * 1024, max_headers: 512 };

/// Room for a rendered head's status line, framing field and final CRLF.
const HEAD_FRAMING: usize = 96;

/// Bodies up to this size get their room in the link with the head (see `render_head`).
const RESERVED_BODY: usize = 16 * 1024;

/// The HTTP/2 request for an HTTP/1.1 head the exchange wrote for the origin.
fn translate(
    head: &h1::RequestHead<'_>,
    shared: &super::SharedHead,
    key: &PoolKey,
) -> Result<http::Request<()>, &'static str> {
    let path = match &head.target {
        h1::RequestTarget::Origin { path } => *path,
        h1::RequestTarget::Absolute { path, .. } => path.as_ref(),
        h1::RequestTarget::Asterisk => "*",
        h1::RequestTarget::Authority(_) => return Err("CONNECT does not go to an HTTP/2 origin"),
    };
    // A cleartext origin (h2c, `h2.cleartext_origins`) is an `http` one.
    let (scheme, default_port) = if key.tls { ("https", 443) } else { ("http", 80) };
    // Written into one buffer of the right size (formatting grew a String in steps).
    let mut authority = Vec::with_capacity(key.host.len() + 8);
    match &head.host {
        Some(a) => a.write_to(&mut authority),
        None => {
            authority.extend_from_slice(key.host.as_bytes());
            if key.port != default_port {
                authority.push(b':');
                authority.extend_from_slice(itoa::Buffer::new().format(key.port).as_bytes());
            }
        }
    }
    let uri = http::Uri::builder().scheme(scheme).authority(authority).path_and_query(path).build();
    let mut req = http::Request::builder()
        .method(http::Method::from_bytes(head.method_raw.as_bytes()).map_err(|_| "bad method")?)
        .uri(uri.map_err(|_| "bad request target")?)
        .body(())
        .map_err(|_| "bad request")?;
    let headers = req.headers_mut();
    headers.reserve(head.headers.len() + 1);
    // We relay trailers (chunked to HTTP/1.1 clients, HEADERS to HTTP/2 ones), so the
    // origin may send them; gRPC servers refuse a request without it. The client's own TE
    // is hop-by-hop and was dropped by the exchange.
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    for h in head.headers.iter() {
        if super::not_for_http2(h.name) {
            continue;
        }
        let (Ok(name), Some(value)) = (http::HeaderName::from_bytes(h.name.as_bytes()), shared.value(h.value)) else {
            continue;
        };
        headers.append(name, value);
    }
    Ok(req)
}

/// The HTTP/1.1 head of an origin's response, for the exchange.
fn render_head(resp: &http::response::Parts, head_request: bool, end: bool, out: &mut Vec<u8>) -> bool {
    let status = resp.status;
    // One allocation for the head and, when the origin announced a small body, for the
    // body that follows it into the link: grown field by field, the link's vector was
    // reallocated about three times per response.
    let fields: usize = resp.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    let body = resp
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .filter(|&n| n <= RESERVED_BODY && !head_request)
        .unwrap_or(0);
    out.reserve(HEAD_FRAMING + fields + body);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &resp.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let bodiless = head_request || status.is_informational() || status == 204 || status == 304;
    let has_length = resp.headers.contains_key(http::header::CONTENT_LENGTH);
    let chunked = !bodiless && !has_length && !end;
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    } else if !bodiless && !has_length {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
    chunked
}

/// What a stream's pump needs of its session.
pub(super) struct SessionSide<'a> {
    pub key: &'a PoolKey,
    pub send: &'a mut SendRequest<Bytes>,
    /// Streams above the origin's GOAWAY were never processed (RFC 9113 §6.8).
    pub goaway_last: Option<u32>,
    /// The origin's limit on concurrent streams: a ready request is sent only while the
    /// session has fewer open.
    pub max: usize,
}

/// Pumps a stream with its own waker; true (and the stream listed for the next
/// round) when anything moved. A request sent now counts in `open_sent`.
pub(super) fn pump_stream(
    news: &StreamNews,
    s: &mut Stream,
    side: &mut SessionSide<'_>,
    links: &mut Links,
    wake: &dyn Fn(ConnId),
    open_sent: &mut usize,
) -> bool {
    let may_open = *open_sent < side.max;
    let moved = pump(s, side, may_open, &mut Context::from_waker(news.waker()), links, wake);
    if !s.open && matches!(s.request, Request::Sent { .. }) {
        s.open = true;
        *open_sent += 1;
    }
    if moved {
        news.mark();
    }
    moved
}

/// Moves one stream's bytes; true when anything moved.
fn pump(
    s: &mut Stream,
    side: &mut SessionSide<'_>,
    may_open: bool,
    cx: &mut Context<'_>,
    links: &mut Links,
    wake: &dyn Fn(ConnId),
) -> bool {
    let (key, sender, goaway_last) = (side.key, &mut *side.send, side.goaway_last);
    let Some(l) = links.get(s.link) else {
        s.done = true;
        return true;
    };
    if l.cancelled || l.exchange_gone {
        // The exchange gave up (its client left, a deadline): the stream is reset.
        if let Request::Sent { send, .. } = &mut s.request {
            send.send_reset(Reason::CANCEL);
        }
        s.done = true;
        return true;
    }
    let mut moved = false;
    // The exchange has something new to read (`woke`), or took bytes out of `to_session`
    // (`drained`: it is woken only when its write waited for that room).
    let mut woke = false;
    let mut drained = false;
    let mut fail = false;
    // The failure left the request unprocessed by the origin (see `Link::unprocessed`).
    let mut unprocessed = false;
    // The request head, once whole.
    if let Request::Head = s.request {
        match h1::parse_request(&l.to_session, &LIMITS) {
            Ok(Some((head, n))) => {
                s.head_request = head.method == h1::Method::Head;
                let framing = head.framing;
                match translate(&head, &super::SharedHead::new(&l.to_session[..n]), key) {
                    Ok(req) => {
                        let end = matches!(framing, BodyFraming::None | BodyFraming::Length(0));
                        s.request = Request::Ready { req, end, body: ResponseReader::for_body(framing) };
                    }
                    Err(_) => fail = true,
                }
                l.to_session.drain(..n);
                moved = true;
                drained = true;
            }
            Ok(None) => {}
            Err(_) => fail = true,
        }
    }
    // Sent once the origin has room for another stream.
    if matches!(s.request, Request::Ready { .. }) && may_open {
        match sender.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                if let Request::Ready { req, end, body } = std::mem::replace(&mut s.request, Request::Head) {
                    match sender.send_request(req, end) {
                        Ok((response, send)) => {
                            s.response = Some(response);
                            s.request = Request::Sent { send, body, done: end };
                            moved = true;
                        }
                        Err(_) => (fail, unprocessed) = (true, true),
                    }
                }
            }
            // The session is going away before this request went out.
            Poll::Ready(Err(_)) => (fail, unprocessed) = (true, true),
            Poll::Pending => {}
        }
    }
    // The request body, with capacity reserved before each DATA.
    if let Request::Sent { send, body, done } = &mut s.request {
        while !*done && !fail {
            let (event, used) = match body.next(&l.to_session) {
                Ok(r) => r,
                Err(_) => {
                    fail = true;
                    break;
                }
            };
            match event {
                Event::More if used == 0 => break,
                Event::Data(range) => {
                    let Ok(granted) = super::send_from_link(send, cx, body, &mut l.to_session, range) else {
                        fail = true;
                        break;
                    };
                    if granted == 0 {
                        break;
                    }
                    moved = true;
                    drained = true;
                    continue;
                }
                Event::Trailers(t) => {
                    let _ = send.send_trailers(t);
                    *done = true;
                }
                Event::End => {
                    let _ = send.send_data(Bytes::new(), true);
                    *done = true;
                }
                Event::More | Event::Interim { .. } | Event::Head { .. } => {}
            }
            l.to_session.drain(..used);
            moved = true;
            drained = true;
        }
    }
    // Interim heads (103 Early Hints...), in order, before the final one.
    while let Some(future) = s.response.as_mut() {
        match future.poll_informational(cx) {
            Poll::Ready(Some(Ok(interim))) => {
                render_head(&interim.into_parts().0, false, true, &mut l.to_exchange);
                moved = true;
                woke = true;
            }
            Poll::Ready(Some(Err(_))) => {
                fail = true;
                break;
            }
            Poll::Ready(None) | Poll::Pending => break,
        }
    }
    // The response head.
    if let Some(future) = s.response.as_mut().filter(|_| !fail) {
        match Pin::new(&mut *future).poll(cx) {
            Poll::Ready(Ok(resp)) => {
                let (parts, recv) = resp.into_parts();
                let end = recv.is_end_stream();
                s.chunked = render_head(&parts, s.head_request, end, &mut l.to_exchange);
                s.response = None;
                if end || s.head_request {
                    s.done = true;
                } else {
                    s.recv = Some(recv);
                }
                moved = true;
                woke = true;
            }
            Poll::Ready(Err(e)) => {
                fail = true;
                // The stream id takes `h2`'s lock: asked only on this path, not every poll.
                let above_goaway = goaway_last.is_some_and(|last| u32::from(future.stream_id()) > last);
                unprocessed = e.reason() == Some(Reason::REFUSED_STREAM) || above_goaway;
            }
            Poll::Pending => {}
        }
    }
    // The response body, while the link has room; the window reopens only then.
    while let Some(recv) = s.recv.as_mut() {
        if fail {
            break;
        }
        if l.room_for_exchange() == 0 {
            // The exchange wakes the session once it took some.
            l.session_waits_for_room = true;
            break;
        }
        match recv.poll_data(cx) {
            Poll::Ready(Some(Ok(data))) => {
                if s.chunked {
                    super::request::push_chunk(&mut l.to_exchange, &data);
                } else {
                    l.to_exchange.extend_from_slice(&data);
                }
                let _ = recv.flow_control().release_capacity(data.len());
                moved = true;
                woke = true;
            }
            Poll::Ready(None) => {
                if s.chunked {
                    match recv.poll_trailers(cx) {
                        Poll::Ready(Ok(t)) => super::request::push_last_chunk(&mut l.to_exchange, t.as_ref()),
                        Poll::Ready(Err(_)) => {
                            fail = true;
                            break;
                        }
                        Poll::Pending => break,
                    }
                }
                s.recv = None;
                s.done = true;
                moved = true;
                woke = true;
            }
            Poll::Ready(Some(Err(_))) => fail = true,
            Poll::Pending => break,
        }
    }
    if fail {
        // The exchange sees its origin fail (and retries when it may).
        if let Request::Sent { send, .. } = &mut s.request {
            send.send_reset(Reason::CANCEL);
        }
        l.cancelled = true;
        l.unprocessed = unprocessed;
        s.done = true;
        moved = true;
        woke = true;
    }
    l.wake_exchange(woke, drained, wake);
    moved
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PoolKey {
        PoolKey { host: "origin.test".into(), port: 443, tls: true }
    }

    #[test]
    fn a_cleartext_origin_gets_the_http_scheme() {
        let (head, _) =
            h1::parse_request(b"GET /a?b HTTP/1.1\r\nHost: h2c.test:8080\r\n\r\n", &LIMITS).unwrap().unwrap();
        let h2c = PoolKey { host: "h2c.test".into(), port: 8080, tls: false };
        let shared = crate::http2::SharedHead::new(b"");
        assert_eq!(translate(&head, &shared, &h2c).unwrap().uri().to_string(), "http://h2c.test:8080/a?b");
        assert_eq!(translate(&head, &shared, &key()).unwrap().uri().scheme_str(), Some("https"));
    }
}
