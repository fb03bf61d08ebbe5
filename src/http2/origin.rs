//! HTTP/2 towards an origin: a session per origin and worker (a slot of its own,
//! `conn::origin_session`; more as the origin's stream limit needs, `super::origins`),
//! carrying the requests of many exchanges, each through a link of the same kind as a
//! client stream's (`links`), with the directions swapped: the exchange writes its
//! HTTP/1.1 request into `to_session` and reads the origin's response, rendered as
//! HTTP/1.1, from `to_exchange`.
//!
//! The session opens a stream per link, sends requests only while the origin's
//! MAX_CONCURRENT_STREAMS has room (queued in order meanwhile, or handed back to a sibling
//! session with room), and ends them all when the connection ends; each stream's own
//! work (translating heads, moving bodies under flow control) is `super::origin_stream`.
//!
//! The worker's registry of these sessions by origin is `super::origins::Origins`.

use super::links::{LinkId, Links};
use super::news::StreamTable;
use super::origin_stream::{cancel, leave, pump_stream, Request, SessionSide, Stream};
use super::origins::Token;
use super::pipe::Pipe;
use crate::upstream::pool::PoolKey;
use bytes::Bytes;
use h2::client::{self, SendRequest};
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

/// One origin session.
pub struct OriginSession {
    state: State,
    pipe: Pipe,
    waker: Waker,
    pub key: PoolKey,
    /// The streams open, each with its waker (`h2` and its exchange say when it has
    /// something to do), by key.
    streams: StreamTable<Stream>,
    /// A buffer to take the keys of the streams with news into.
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
            streams: StreamTable::default(),
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
            let bodiless = matches!(self.streams.get(key), Some(s) if s.queued && matches!(s.request, Request::Ready { end: true, .. }));
            if gone < n && bodiless {
                let s = self.streams.remove(key);
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
        for s in self.streams.drain() {
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
                    self.streams.insert(&waker, links, link, Stream::new(link));
                    moved = true;
                }
                let mut keys = std::mem::take(&mut self.ready_now);
                self.streams.take_ready(&mut keys);
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

/// After a pump: a finished stream leaves, a ready request queues for room.
fn settle(
    streams: &mut StreamTable<Stream>,
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
