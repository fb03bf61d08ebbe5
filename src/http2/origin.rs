//! HTTP/2 towards an origin: a session per origin and worker (a slot of its own,
//! `conn::origin_session`; more as the origin's stream limit needs, `super::origins`),
//! carrying the requests of many exchanges, each through a link of the same kind as a
//! client stream's (`links`), with the directions swapped: the exchange writes its
//! HTTP/1.1 request into `to_session` and reads the origin's response, rendered as
//! HTTP/1.1, from `to_exchange`.
//!
//! The session parses each request head (already rewritten for the origin by the
//! exchange), sends it as HEADERS once `h2` says the origin's MAX_CONCURRENT_STREAMS has
//! room (`poll_ready`), streams the body with reserved capacity, and writes the response
//! head (content-length kept, else chunked), body and trailers back. Received DATA is
//! released only once its bytes are in the link (bounded), so a slow exchange slows the
//! origin's stream.
//!
//! The worker's registry of these sessions by origin is `super::origins::Origins`.

use super::links::{LinkId, Links};
use super::news::{ReadyStreams, StreamNews};
use super::origins::Token;
use super::pipe::Pipe;
use super::response::{Event, ResponseReader};
use crate::h1::{self, BodyFraming, HeadLimits};
use crate::upstream::pool::PoolKey;
use bytes::Bytes;
use h2::client::{self, ResponseFuture, SendRequest};
use h2::{Reason, RecvStream, SendStream};
use slab::Slab;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use uring::ConnId;

/// Most rounds of polling and pumping per `drive`.
const DRIVE_ROUNDS: usize = 16;

/// A session takes no new stream after this long (then closes once idle): connections
/// are renewed now and then (DNS changes, origin rebalancing).
pub const MAX_AGE: Duration = Duration::from_secs(600);

type Handshake =
    Pin<Box<dyn Future<Output = Result<(SendRequest<Bytes>, client::Connection<Pipe, Bytes>), h2::Error>>>>;

enum State {
    Handshaking(Handshake),
    Open { send: SendRequest<Bytes>, conn: Box<client::Connection<Pipe, Bytes>> },
    Finished,
}

/// Where one request is.
enum Request {
    /// Waiting for the whole HTTP/1.1 head in the link.
    Head,
    /// Head parsed; waiting for room in the origin's streams.
    Ready { req: http::Request<()>, end: bool, body: ResponseReader },
    /// Sent; the body (if any) streams through `send`.
    Sent { send: SendStream<Bytes>, body: ResponseReader, done: bool },
}

struct Stream {
    link: LinkId,
    request: Request,
    response: Option<ResponseFuture>,
    recv: Option<RecvStream>,
    /// The response body is chunked for the exchange.
    chunked: bool,
    head_request: bool,
    /// In `waiting` (its request was ready when it was last pumped).
    queued: bool,
    /// Sent, and counted in the session's `open_sent` until it leaves.
    open: bool,
    done: bool,
}

/// One origin session.
pub struct OriginSession {
    state: State,
    pipe: Pipe,
    waker: Waker,
    pub key: PoolKey,
    /// The streams open, each with its waker (`h2` and its exchange say when it has
    /// something to do), by key.
    streams: Slab<(StreamNews, Stream)>,
    /// The keys of the streams with news, and a buffer to take them into.
    ready: ReadyStreams,
    ready_now: Vec<usize>,
    /// Streams whose request waits for room in the origin's streams, oldest first.
    waiting: VecDeque<usize>,
    /// Streams sent and not finished: a request is sent only while these are fewer than
    /// the origin's limit. (`h2`'s `poll_ready` lets one more through into a queue of its
    /// own, where it could not be handed to another session.)
    open_sent: usize,
    inbox: Vec<LinkId>,
    started: Instant,
    pub ending: Option<String>,
    /// Its name in the worker's registry.
    pub token: Token,
    /// PINGs to a silent origin (`h2.origin_ping_interval`), set by the connection.
    pub keepalive: Option<super::keepalive::KeepAlive>,
    /// The streams it may open before the origin's SETTINGS say.
    initial_max_streams: usize,
}

impl std::fmt::Debug for OriginSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginSession").field("key", &self.key).field("streams", &self.streams.len()).finish()
    }
}

impl OriginSession {
    /// A session to `key` whose first stream is `first`, sending at most `max_streams` at
    /// once until the origin's SETTINGS say; `h2` wakes `waker`.
    pub fn new(
        key: PoolKey,
        token: Token,
        first: LinkId,
        window: u32,
        max_streams: usize,
        waker: Waker,
        now: Instant,
    ) -> OriginSession {
        let pipe = Pipe::default();
        pipe.with(|q| q.tally_out = super::tally::FrameTally::after_preface());
        let io = pipe.clone();
        let mut b = client::Builder::new();
        b.initial_window_size(window)
            .initial_connection_window_size(window.saturating_mul(2).min((1 << 31) - 1))
            .max_header_list_size(256 << 10)
            .max_send_buffer_size(64 * 1024)
            // Until the origin's SETTINGS say otherwise, as many streams as its other
            // sessions take, else as many as RFC 9113 §6.5.2 asks any server to allow (h2
            // assumes no limit, and a burst gets refused).
            .initial_max_send_streams(max_streams)
            .enable_push(false);
        let handshake: Handshake = Box::pin(async move { b.handshake::<Pipe, Bytes>(io).await });
        OriginSession {
            state: State::Handshaking(handshake),
            pipe,
            waker,
            key,
            streams: Slab::new(),
            ready: ReadyStreams::default(),
            ready_now: Vec::new(),
            waiting: VecDeque::new(),
            open_sent: 0,
            inbox: vec![first],
            started: now,
            ending: None,
            token,
            keepalive: None,
            initial_max_streams: max_streams,
        }
    }

    /// The slot's own waker, once it has a slot.
    pub fn set_waker(&mut self, waker: Waker) {
        if !self.waker.will_wake(&waker) {
            self.waker = waker;
        }
    }

    /// Links given to the session and not opened as streams yet.
    pub fn waiting_links(&self) -> &[LinkId] {
        &self.inbox
    }

    /// A new exchange's link to open a stream for.
    pub fn add(&mut self, link: LinkId) {
        self.inbox.push(link);
    }

    pub fn pipe(&self) -> &Pipe {
        &self.pipe
    }

    /// Streams open (or waiting to open) now.
    pub fn streams(&self) -> usize {
        self.streams.len() + self.inbox.len()
    }

    /// The origin's limit on concurrent streams as last announced.
    pub fn max_streams(&self) -> usize {
        match &self.state {
            State::Open { conn, .. } => conn.max_concurrent_send_streams(),
            _ => self.initial_max_streams,
        }
    }

    /// Requests waiting for the origin's room.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Hands back up to `n` bodiless requests still waiting for the origin's room (oldest
    /// first): their exchanges send them again on a session that has room now (a session
    /// added after they queued here, while this one's streams stay busy). How many went.
    pub fn hand_back_waiting(&mut self, n: usize, links: &mut Links, wake: &dyn Fn(ConnId)) -> usize {
        let mut gone = 0;
        let mut kept = VecDeque::with_capacity(self.waiting.len());
        while let Some(key) = self.waiting.pop_front() {
            let bodiless = matches!(self.streams.get(key), Some((_, s)) if s.queued && matches!(s.request, Request::Ready { end: true, .. }));
            if gone < n && bodiless {
                let (_, s) = self.streams.remove(key);
                if let Some(l) = links.get(s.link) {
                    l.moved = true;
                }
                cancel(links, s.link, wake, true);
                gone += 1;
            } else {
                kept.push_back(key);
            }
        }
        self.waiting = kept;
        gone
    }

    /// True while new streams may be added.
    pub fn accepting(&self, now: Instant) -> bool {
        self.ending.is_none() && now.duration_since(self.started) < MAX_AGE
    }

    /// Ends the session: every stream's exchange sees its origin fail.
    pub fn abandon(&mut self, links: &mut Links, wake: &dyn Fn(ConnId)) {
        // Requests never sent, or sent above the origin's GOAWAY, were not processed.
        let goaway_last = self.pipe.with(|q| q.tally_in.goaway_last_stream());
        for link in self.inbox.drain(..) {
            cancel(links, link, wake, true);
        }
        self.waiting.clear();
        self.open_sent = 0;
        for (_, s) in self.streams.drain() {
            let unprocessed = match &s.request {
                Request::Head | Request::Ready { .. } => true,
                Request::Sent { send, .. } => goaway_last.is_some_and(|last| u32::from(send.stream_id()) > last),
            };
            cancel(links, s.link, wake, unprocessed);
        }
    }

    /// Polls `h2`, opens streams for new links, moves bytes both ways.
    pub fn drive(&mut self, links: &mut Links, wake: &dyn Fn(ConnId)) {
        let waker = self.waker.clone();
        let mut cx = Context::from_waker(&waker);
        if let Some(k) = self.keepalive.as_mut() {
            k.poll(&mut cx);
        }
        for _ in 0..DRIVE_ROUNDS {
            let mut moved = self.poll_connection(&mut cx);
            // Streams above the origin's GOAWAY were never processed (RFC 9113 §6.8).
            let goaway_last = self.pipe.with(|q| q.tally_in.goaway_last_stream());
            if let State::Open { send, conn } = &mut self.state {
                let mut side =
                    SessionSide { key: &self.key, send, goaway_last, max: conn.max_concurrent_send_streams() };
                for link in self.inbox.drain(..) {
                    let entry = self.streams.vacant_entry();
                    let news = StreamNews::new(&waker, &self.ready, entry.key());
                    if let Some(l) = links.get(link) {
                        l.stream_waker = Some(news.waker().clone());
                    }
                    let stream = Stream {
                        link,
                        request: Request::Head,
                        response: None,
                        recv: None,
                        chunked: false,
                        head_request: false,
                        queued: false,
                        open: false,
                        done: false,
                    };
                    entry.insert((news, stream));
                    moved = true;
                }
                let mut keys = std::mem::take(&mut self.ready_now);
                self.ready.take(&mut keys);
                for &key in &keys {
                    let Some((news, s)) = self.streams.get_mut(key) else { continue };
                    if news.take() {
                        moved |= pump_stream(news, s, &mut side, links, wake, &mut self.open_sent);
                        settle(&mut self.streams, &mut self.waiting, key, links, wake, &mut self.open_sent);
                    }
                }
                keys.clear();
                self.ready_now = keys;
                // `poll_ready` keeps one waker: the streams waiting for the origin's room
                // are tried in order each run, up to the first that still has to wait.
                while let Some(&key) = self.waiting.front() {
                    let Some((news, s)) = self.streams.get_mut(key).filter(|(_, s)| s.queued) else {
                        self.waiting.pop_front();
                        continue;
                    };
                    moved |= pump_stream(news, s, &mut side, links, wake, &mut self.open_sent);
                    if matches!(s.request, Request::Ready { .. }) && !s.done {
                        break;
                    }
                    s.queued = false;
                    self.waiting.pop_front();
                    settle(&mut self.streams, &mut self.waiting, key, links, wake, &mut self.open_sent);
                }
            }
            if !moved {
                break;
            }
        }
        if self.ending.is_some() {
            self.abandon(links, wake);
        }
    }

    fn poll_connection(&mut self, cx: &mut Context<'_>) -> bool {
        match &mut self.state {
            State::Handshaking(hs) => match hs.as_mut().poll(cx) {
                Poll::Ready(Ok((send, mut conn))) => {
                    if let Some(k) = self.keepalive.as_mut() {
                        k.attach(conn.ping_pong());
                    }
                    self.state = State::Open { send, conn: Box::new(conn) };
                    true
                }
                Poll::Ready(Err(e)) => {
                    self.ending = Some(e.to_string());
                    self.state = State::Finished;
                    true
                }
                Poll::Pending => false,
            },
            State::Open { conn, .. } => match Pin::new(&mut **conn).poll(cx) {
                Poll::Ready(Ok(())) => {
                    self.ending = Some("the origin closed the connection".into());
                    self.state = State::Finished;
                    true
                }
                Poll::Ready(Err(e)) => {
                    self.ending = Some(e.to_string());
                    self.state = State::Finished;
                    true
                }
                Poll::Pending => false,
            },
            State::Finished => false,
        }
    }

    /// True once `h2` is done with the connection (closed, failed, or never opened).
    pub fn finished(&self) -> bool {
        matches!(self.state, State::Finished)
    }
}

/// The exchange is done with the link or the session is: tell the other side.
fn leave(links: &mut Links, link: LinkId, wake: &dyn Fn(ConnId)) {
    let Some(l) = links.get(link) else { return };
    if l.exchange_gone {
        links.free(link);
        return;
    }
    l.session = None;
    l.stream_waker = None;
    l.to_exchange_end = true;
    if let Some(x) = l.exchange {
        wake(x);
    }
}

/// The stream is over without a response: its exchange sees its origin fail, and may send
/// the request again anywhere when `unprocessed` (see `Link::unprocessed`).
fn cancel(links: &mut Links, link: LinkId, wake: &dyn Fn(ConnId), unprocessed: bool) {
    if let Some(l) = links.get(link) {
        l.cancelled = true;
        l.unprocessed = unprocessed;
    }
    leave(links, link, wake);
}

const LIMITS: HeadLimits = HeadLimits { max_bytes: 256 * 1024, max_headers: 512 };

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
    let authority = match &head.host {
        Some(a) => a.to_string(),
        None if key.port == default_port => key.host.to_string(),
        None => format!("{}:{}", key.host, key.port),
    };
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

/// After a pump: a finished stream leaves, a ready request queues for room.
fn settle(
    streams: &mut Slab<(StreamNews, Stream)>,
    waiting: &mut VecDeque<usize>,
    key: usize,
    links: &mut Links,
    wake: &dyn Fn(ConnId),
    open_sent: &mut usize,
) {
    let Some((_, s)) = streams.get_mut(key) else { return };
    if s.done {
        if s.open {
            *open_sent = open_sent.saturating_sub(1);
        }
        leave(links, s.link, wake);
        streams.remove(key);
    } else if !s.queued && matches!(s.request, Request::Ready { .. }) {
        s.queued = true;
        waiting.push_back(key);
    }
}

/// What a stream's pump needs of its session.
struct SessionSide<'a> {
    key: &'a PoolKey,
    send: &'a mut SendRequest<Bytes>,
    /// Streams above the origin's GOAWAY were never processed (RFC 9113 §6.8).
    goaway_last: Option<u32>,
    /// The origin's limit on concurrent streams: a ready request is sent only while the
    /// session has fewer open.
    max: usize,
}

/// Pumps a stream with its own waker; true (and the stream listed for the next
/// round) when anything moved. A request sent now counts in `open_sent`.
fn pump_stream(
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
    let exchange = l.exchange;
    if l.cancelled || l.exchange_gone {
        // The exchange gave up (its client left, a deadline): the stream is reset.
        if let Request::Sent { send, .. } = &mut s.request {
            send.send_reset(Reason::CANCEL);
        }
        s.done = true;
        return true;
    }
    let mut moved = false;
    let mut woke = false;
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
                woke = true;
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
                    let want = range.len();
                    let Ok(granted) = super::send_granted(send, cx, &l.to_session[range]) else {
                        fail = true;
                        break;
                    };
                    body.unread(want - granted);
                    if granted == 0 {
                        break;
                    }
                    l.to_session.drain(..granted);
                    moved = true;
                    woke = true;
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
            woke = true;
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
        if l.room_for_exchange() == 0 || fail {
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
    if woke {
        if let Some(x) = exchange {
            wake(x);
        }
    }
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
