//! One client's HTTP/2 connection: the `h2` crate's server driven with no runtime, and
//! its streams, each linked to an exchange of its own.
//!
//! The facade is three calls: [`Session::feed`] (client plaintext in), [`Session::drive`]
//! (poll `h2`, accept streams, move bytes between streams and their links), and
//! [`Session::outbound`] (frames for the client). The connection's phase handler
//! (`conn::h2`) calls them on every event of its slot; `h2`'s wakers (one per session,
//! the slot's) put the slot on the worker's ready queue, and a spurious run finds nothing.
//!
//! `h2` facts this relies on (checked in its source): only `poll_accept` moves bytes, so
//! it is polled again after any stream was acted on; `send_data` buffers without bound,
//! so a stream reserves capacity and sends only what was granted; received DATA is
//! released (window reopened) only once its bytes are in the link, whose size is bounded.

use super::keepalive::KeepAlive;
use super::links::{LinkId, Links};
use super::news::StreamTable;
use super::pipe::Pipe;
use super::request::{self, RequestBody};
use super::response::{Event, ResponseReader};
use super::Settings;
use crate::h1::Method;
use bytes::Bytes;
use h2::server::{self, SendResponse};
use h2::{Reason, RecvStream, SendStream};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Most rounds of polling `h2` and pumping streams in one `drive`.
const DRIVE_ROUNDS: usize = 16;

enum State {
    Handshaking(server::Handshake<Pipe, Bytes>),
    Open(server::Connection<Pipe, Bytes>),
    /// `h2` is done with the connection (closed, or failed and its GOAWAY queued).
    Finished,
}

/// How the connection ended, when it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Both sides are done (GOAWAY exchanged, no stream left).
    Closed,
    /// A connection error; its GOAWAY (if ours) is in the outbound queue.
    Failed { reason: Reason, ours: bool, detail: String },
    /// We ended it ([`Session::abort`]: its GOAWAY was counted where it was decided).
    Aborted { reason: Reason },
}

/// A new stream the caller gives an exchange to.
#[derive(Debug)]
pub struct NewStream {
    pub link: LinkId,
}

/// One client stream.
struct Stream {
    link: LinkId,
    body: RequestBody,
    /// The request body still to be read (None once it ended or for bodiless requests).
    recv: Option<RecvStream>,
    respond: Option<SendResponse<Bytes>>,
    send: Option<SendStream<Bytes>>,
    reader: ResponseReader,
    /// Request DATA taken out of `h2` and not in the link yet (at most the window).
    spill: Vec<u8>,
    /// `h2` has no more request DATA (trailers may follow).
    data_ended: bool,
    response_done: bool,
    request_done: bool,
}

impl Stream {
    fn done(&self) -> bool {
        self.response_done && self.request_done
    }
}

/// The session.
pub struct Session {
    state: State,
    pipe: Pipe,
    waker: Waker,
    /// The streams open, each with its waker (`h2` and its exchange say when it has
    /// something to do), by key.
    streams: StreamTable<Stream>,
    /// A buffer to take the keys of the streams with news into.
    ready_now: Vec<usize>,
    ending: Option<Ending>,
    shutting_down: bool,
    /// PINGs to a silent client (`h2.client_ping_interval`), set by the connection.
    pub keepalive: Option<KeepAlive>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("streams", &self.streams.len()).field("ending", &self.ending).finish()
    }
}

impl Session {
    /// A session whose `h2` wakes `waker` (the slot's own).
    pub fn new(settings: &Settings, waker: Waker) -> Session {
        let pipe = Pipe::default();
        let handshake = settings.builder().handshake(pipe.clone());
        Session {
            state: State::Handshaking(handshake),
            pipe,
            waker,
            streams: StreamTable::default(),
            ready_now: Vec::new(),
            ending: None,
            shutting_down: false,
            keepalive: None,
        }
    }

    /// How many client bytes `feed` may take now.
    pub fn inbound_room(&self) -> usize {
        self.pipe.with(|q| q.inbound_room())
    }

    /// Client plaintext in (at most [`Session::inbound_room`] bytes, counted over the
    /// calls since the room was asked for: the watch before us may hold back a few).
    pub fn feed(&mut self, bytes: &[u8]) {
        self.pipe.with(|q| q.inbound.extend_from_slice(bytes));
    }

    /// The client closed its side.
    pub fn feed_end(&mut self) {
        self.pipe.with(|q| q.inbound_end = true);
    }

    /// True while `h2` has room for more client bytes.
    pub fn wants_input(&self) -> bool {
        !matches!(self.state, State::Finished) && self.pipe.with(|q| q.inbound_room() > 0)
    }

    /// The queues `h2` reads from and writes to.
    pub fn pipe(&self) -> &Pipe {
        &self.pipe
    }

    pub fn has_outbound(&self) -> bool {
        self.pipe.with(|q| !q.outbound.is_empty())
    }

    /// How the connection ended, once it did.
    pub fn ending(&self) -> Option<&Ending> {
        self.ending.as_ref()
    }

    /// Streams open now.
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// Starts a graceful shutdown (drain): GOAWAY with the highest stream id, a PING,
    /// then GOAWAY with the last stream processed; open streams finish.
    pub fn shut_down(&mut self) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        if let State::Open(c) = &mut self.state {
            c.graceful_shutdown();
        }
    }

    /// Ends the connection now with GOAWAY `reason` (a flood, a protocol violation seen
    /// by our own checks).
    pub fn abort(&mut self, reason: Reason) {
        if let State::Open(c) = &mut self.state {
            c.abrupt_shutdown(reason);
        } else {
            // Before the handshake finished: a GOAWAY of our own, then done.
            self.pipe.with(|q| q.outbound.extend_from_slice(&goaway_frame(0, reason)));
            self.state = State::Finished;
        }
        self.ending = Some(Ending::Aborted { reason });
    }

    fn finish(&mut self, ending: Ending) {
        self.state = State::Finished;
        self.ending.get_or_insert(ending);
    }

    /// The connection is closing: every stream's exchange is told to stop.
    pub fn abandon(&mut self, links: &mut Links, wake: &dyn Fn(uring::ConnId)) {
        for s in self.streams.drain() {
            release(links, s.link, wake, true);
        }
    }

    /// Polls `h2`, accepts new streams (appended to `new`), and moves bytes between the
    /// streams and their links. Links whose stream is over are released (`links`); their
    /// exchanges are woken through `wake`.
    pub fn drive(
        &mut self,
        links: &mut Links,
        me: uring::ConnId,
        wake: &dyn Fn(uring::ConnId),
        new: &mut Vec<NewStream>,
    ) {
        let waker = self.waker.clone();
        let mut cx = Context::from_waker(&waker);
        if let Some(k) = self.keepalive.as_mut() {
            k.poll(&mut cx);
        }
        for _ in 0..DRIVE_ROUNDS {
            let mut moved = self.poll_connection(&mut cx, links, me, new);
            let mut keys = std::mem::take(&mut self.ready_now);
            self.streams.take_ready(&mut keys);
            for &key in &keys {
                let Some((news, s)) = self.streams.get_mut(key) else { continue };
                if !news.take() {
                    continue;
                }
                if pump(s, &mut Context::from_waker(news.waker()), links, wake) {
                    news.mark();
                    moved = true;
                }
                if s.done() {
                    release(links, s.link, wake, false);
                    self.streams.remove(key);
                }
            }
            keys.clear();
            self.ready_now = keys;
            if !moved {
                break;
            }
        }
        if self.ending.is_some() {
            // The connection is over: every stream's exchange stops.
            self.abandon(links, wake);
        }
    }

    /// Polls the handshake or the connection; true when something happened.
    fn poll_connection(
        &mut self,
        cx: &mut Context<'_>,
        links: &mut Links,
        me: uring::ConnId,
        new: &mut Vec<NewStream>,
    ) -> bool {
        let mut moved = false;
        if let State::Handshaking(hs) = &mut self.state {
            match Pin::new(hs).poll(cx) {
                Poll::Ready(Ok(mut c)) => {
                    if let Some(k) = self.keepalive.as_mut() {
                        k.attach(c.ping_pong());
                    }
                    self.state = State::Open(c);
                    moved = true;
                    if self.shutting_down {
                        self.shutting_down = false;
                        self.shut_down();
                    }
                }
                Poll::Ready(Err(e)) => {
                    self.finish(ending_of(&e));
                    return true;
                }
                Poll::Pending => return false,
            }
        }
        let State::Open(c) = &mut self.state else { return moved };
        loop {
            match c.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    moved = true;
                    if let Some(s) = accept(req, respond, links, me, new) {
                        self.streams.insert(&self.waker, links, s.link, s);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    if e.is_io() || e.is_go_away() || e.reason().is_none() || !e.is_reset() {
                        self.finish(ending_of(&e));
                        return true;
                    }
                    // A stream-level error surfaced on accept: h2 has reset that stream.
                    moved = true;
                }
                Poll::Ready(None) => {
                    self.finish(Ending::Closed);
                    return true;
                }
                Poll::Pending => break,
            }
        }
        moved
    }
}

/// A new request: translated for its exchange, or answered here when it cannot be.
fn accept(
    req: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    links: &mut Links,
    me: uring::ConnId,
    new: &mut Vec<NewStream>,
) -> Option<Stream> {
    let (parts, recv) = req.into_parts();
    let protocol = parts.extensions.get::<h2::ext::Protocol>().map(|p| p.as_str().to_string());
    let end_of_stream = recv.is_end_stream();
    // The head is written straight into the link's buffer (a freed link's, when one is
    // spare).
    let link = links.open(me);
    let mut head = links.get(link).map(|l| std::mem::take(&mut l.to_exchange)).unwrap_or_default();
    head.reserve(512);
    let body = match request::to_h1(&parts, end_of_stream, protocol.as_deref(), &mut head) {
        Ok(b) => b,
        Err(why) => {
            // Malformed (RFC 9113 §8.1.1): a stream error, no response.
            tracing::debug!(conn = %me, stream = ?respond.stream_id(), why, "malformed HTTP/2 request: RST_STREAM PROTOCOL_ERROR");
            respond.send_reset(Reason::PROTOCOL_ERROR);
            links.free(link);
            return None;
        }
    };
    let l = links.get(link)?;
    l.to_exchange = head;
    l.to_exchange_end = matches!(body, RequestBody::None);
    new.push(NewStream { link });
    let method = Method::from_token(parts.method.as_str());
    let method = if protocol.is_some() { Method::Get } else { method };
    Some(Stream {
        link,
        body,
        recv: (!end_of_stream).then_some(recv),
        respond: Some(respond),
        send: None,
        reader: ResponseReader::new(method),
        spill: Vec::new(),
        data_ended: false,
        response_done: false,
        request_done: end_of_stream,
    })
}

/// Lets go of a stream's link: freed when its exchange is gone too, else the exchange
/// frees it when it closes. `cancel`: the exchange must stop (the connection is going
/// away); a stream that simply finished lets its exchange finish too (and pool its
/// origin connection).
fn release(links: &mut Links, link: LinkId, wake: &dyn Fn(uring::ConnId), cancel: bool) {
    let Some(l) = links.get(link) else { return };
    if l.exchange_gone {
        links.free(link);
        return;
    }
    l.let_go();
    l.cancelled |= cancel;
    if let Some(x) = l.exchange {
        wake(x);
    }
}

/// Moves one stream's bytes both ways; true when anything moved.
fn pump(s: &mut Stream, cx: &mut Context<'_>, links: &mut Links, wake: &dyn Fn(uring::ConnId)) -> bool {
    let Some(l) = links.get(s.link) else {
        s.request_done = true;
        s.response_done = true;
        return true;
    };
    let mut moved = false;
    // The exchange has something new to read (`woke`), or its response bytes were taken
    // out of the link (`drained`: it is woken only when its write waited for that room).
    let mut woke = false;
    let mut drained = false;
    // Request body: DATA is copied out of `h2` as soon as it arrives (a received frame
    // held in `h2` pins a part of its read buffer several times its size), into `spill`,
    // and from there into the link as it has room. The window reopens only when bytes
    // reach the link, so `spill` never holds more than the stream's window.
    while let Some(recv) = s.recv.as_mut() {
        let room = l.room_for_exchange();
        if !s.spill.is_empty() && room > 0 {
            let n = room.min(s.spill.len());
            match s.body {
                RequestBody::Chunked => request::push_chunk(&mut l.to_exchange, &s.spill[..n]),
                _ => l.to_exchange.extend_from_slice(&s.spill[..n]),
            }
            s.spill.drain(..n);
            let _ = recv.flow_control().release_capacity(n);
            moved = true;
            woke = true;
            continue;
        }
        if !s.data_ended {
            match recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    s.spill.extend_from_slice(&data);
                    moved = true;
                    continue;
                }
                Poll::Ready(None) => s.data_ended = true,
                Poll::Ready(Some(Err(_))) => {
                    // Reset by the client, or a stream error (content-length mismatch):
                    // the exchange stops, nothing more is forwarded.
                    l.cancelled = true;
                    s.recv = None;
                    s.request_done = true;
                    s.response_done = true;
                    woke = true;
                    moved = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        if !s.spill.is_empty() {
            break;
        }
        // All of the body is in the link: its end (trailers for a chunked one).
        if s.body == RequestBody::Chunked {
            match recv.poll_trailers(cx) {
                Poll::Ready(Ok(t)) => request::push_last_chunk(&mut l.to_exchange, t.as_ref()),
                Poll::Ready(Err(_)) => l.cancelled = true,
                Poll::Pending => break,
            }
        }
        l.to_exchange_end = true;
        s.recv = None;
        s.request_done = true;
        moved = true;
        woke = true;
    }
    if s.recv.is_some() && !s.spill.is_empty() {
        // Body bytes wait for room in the link: the exchange wakes the session once it
        // took some.
        l.session_waits_for_room = true;
    }
    // The client may reset a stream whose request is complete.
    if !s.response_done {
        let reset = match (s.send.as_mut(), s.respond.as_mut()) {
            (Some(send), _) => send.poll_reset(cx).is_ready(),
            (None, Some(r)) => r.poll_reset(cx).is_ready(),
            _ => false,
        };
        if reset {
            l.cancelled = true;
            s.response_done = true;
            s.request_done = true;
            s.recv = None;
            l.wake_exchange(true, false, wake);
            return true;
        }
    }
    // Response: the exchange's HTTP/1.1 bytes, as HTTP/2 frames.
    while !s.response_done {
        let (event, used) = match s.reader.next(&l.to_session) {
            Ok((Event::More, 0)) if l.to_session.is_empty() && (l.exchange_gone || l.to_session_end) => {
                match s.reader.end_of_input() {
                    Ok(ev) => (ev, 0),
                    Err(_) => {
                        fail_response(s);
                        break;
                    }
                }
            }
            Ok(r) => r,
            Err(_) => {
                // Nothing more of this response reaches the client: the exchange stops
                // too, instead of reading the rest of the origin's body for nobody.
                fail_response(s);
                l.cancelled = true;
                woke = true;
                break;
            }
        };
        match event {
            Event::More if used == 0 => break,
            Event::More => {}
            Event::Interim { status, fields } => {
                if let Some(r) = s.respond.as_mut() {
                    let mut resp = http::Response::new(());
                    *resp.status_mut() = status;
                    *resp.headers_mut() = fields;
                    let _ = r.send_informational(resp);
                }
            }
            Event::Head { status, fields, end } => {
                let Some(mut r) = s.respond.take() else { break };
                let mut resp = http::Response::new(());
                *resp.status_mut() = status;
                *resp.headers_mut() = fields;
                match r.send_response(resp, end) {
                    Ok(send) => s.send = Some(send),
                    Err(_) => s.response_done = true,
                }
                if end {
                    s.response_done = true;
                }
            }
            Event::Data(range) => {
                let Some(send) = s.send.as_mut() else {
                    s.response_done = true;
                    break;
                };
                // The bytes not sent (no window yet) are read again next time.
                let Ok(granted) = super::send_from_link(send, cx, &mut s.reader, &mut l.to_session, range) else {
                    s.response_done = true;
                    l.cancelled = true;
                    break;
                };
                if granted == 0 {
                    break;
                }
                drained = true;
                moved = true;
                continue;
            }
            Event::Trailers(fields) => {
                if let Some(send) = s.send.as_mut() {
                    let _ = send.send_trailers(fields);
                }
                s.response_done = true;
            }
            Event::End => {
                if let Some(send) = s.send.as_mut() {
                    let _ = send.send_data(Bytes::new(), true);
                }
                s.response_done = true;
            }
        }
        l.to_session.drain(..used);
        drained |= used > 0;
        moved = true;
    }
    // Answered, and nobody reads the rest of the request any more.
    if s.response_done && l.exchange_gone && !s.request_done {
        s.recv = None;
        s.request_done = true;
        moved = true;
    }
    l.wake_exchange(woke, drained, wake);
    moved
}

/// The exchange ended without a complete response: a 502 when nothing was sent yet, else
/// the stream is reset (the client must not take a cut body for a whole one).
fn fail_response(s: &mut Stream) {
    if let Some(mut r) = s.respond.take() {
        if let Ok(resp) = http::Response::builder().status(502).body(()) {
            let _ = r.send_response(resp, true);
        }
    } else if let Some(send) = s.send.as_mut() {
        send.send_reset(Reason::INTERNAL_ERROR);
    }
    s.response_done = true;
}

fn ending_of(e: &h2::Error) -> Ending {
    Ending::Failed { reason: e.reason().unwrap_or(Reason::INTERNAL_ERROR), ours: !e.is_remote(), detail: e.to_string() }
}

/// A GOAWAY frame (RFC 9113 §6.8) with no debug data.
pub fn goaway_frame(last_stream: u32, reason: Reason) -> [u8; 17] {
    let mut f = [0u8; 17];
    f[2] = 8; // length
    f[3] = 0x7; // type GOAWAY
    f[9..13].copy_from_slice(&(last_stream & 0x7fff_ffff).to_be_bytes());
    f[13..17].copy_from_slice(&u32::from(reason).to_be_bytes());
    f
}
