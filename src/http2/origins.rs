//! The worker's registry of its HTTP/2 origin sessions, by origin (`Origins`): which
//! session an exchange's request goes to, and when a new connection to the origin is worth
//! its handshake.
//!
//! An exchange to an https origin (or a cleartext one in `h2.cleartext_origins`) asks
//! the registry first. A session with a free stream takes the request. When every session
//! to the origin is at the origin's `MAX_CONCURRENT_STREAMS`, one exchange at a time dials
//! one more connection (the session that connection becomes adds the origin's room), and
//! the others queue on the least busy session meanwhile (`h2`'s `poll_ready` holds their
//! streams until the origin has room), so a busy origin gets as many sessions as its load
//! needs, one handshake each, instead of a handshake per request that found the sessions
//! full (each thrown away once it was done, because a stream had ended by then).
//!
//! The first exchange whose TLS handshake picked `h2` (or whose connect to a listed
//! cleartext origin is done) makes the session and hands it its socket (the pool lets one
//! exchange at a time dial an origin whose protocol is being learnt, the others wait for
//! its answer: `upstream::pool::OriginProtocol`); a connection that completes while a
//! session has room, and that nobody asked for (a retry's), is closed.

use super::links::LinkId;
use crate::upstream::pool::PoolKey;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use uring::ConnId;

/// While one more connection is being dialled, a full session queues up to this many
/// times the origin's stream limit before another exchange dials too.
const QUEUE_FACTOR: usize = 4;

/// Streams a session is assumed to take until the origin's SETTINGS say (RFC 9113
/// §6.5.2 asks any server to allow at least 100).
pub const ASSUMED_MAX_STREAMS: usize = 100;

/// The worker's HTTP/2 origin sessions, by origin.
#[derive(Debug, Default)]
pub struct Origins {
    by_key: HashMap<PoolKey, Origin>,
    next_token: u64,
}

/// Names a session in the registry from the moment it is decided, before its slot exists.
pub type Token = u64;

/// A session's state as the registry needs it (`Origins::update`).
#[derive(Debug, Clone, Copy)]
pub struct SessionView {
    pub streams: usize,
    pub max: usize,
    pub accepting: bool,
    pub waiting: usize,
}

/// One origin's sessions.
#[derive(Debug, Default)]
struct Origin {
    sessions: Vec<Entry>,
    /// Since when an exchange has been dialling one more connection because every session
    /// was full (cleared when a connection to the origin becomes a session).
    dialling_since: Option<Instant>,
}

/// What the registry knows of one session (updated by the session on each run).
#[derive(Debug, Clone)]
struct Entry {
    token: Token,
    /// Its slot, once the worker inserted it.
    id: Option<ConnId>,
    /// Streams open or waiting for the origin's room, and links not taken yet.
    streams: usize,
    max: usize,
    accepting: bool,
    /// Requests queued in the session for the origin's room.
    waiting: usize,
    /// Links handed over and not taken by the session yet.
    inbox: Vec<LinkId>,
}

impl Entry {
    fn has_room(&self) -> bool {
        self.accepting && self.streams < self.max
    }
}

impl Origins {
    fn entry(&mut self, key: &PoolKey, token: Token) -> Option<&mut Entry> {
        self.by_key.get_mut(key)?.sessions.iter_mut().find(|e| e.token == token)
    }

    /// The session a new request to `key` goes to (its stream count is taken): its token,
    /// and its slot when it has one already. `None` when the exchange is to dial: no
    /// session to the origin, or all full and no other exchange dialling one more
    /// (within `patience`: a dial that failed says nothing).
    pub fn find(&mut self, key: &PoolKey, now: Instant, patience: Duration) -> Option<(Token, Option<ConnId>)> {
        let origin = self.by_key.get_mut(key)?;
        let e = match origin.sessions.iter_mut().position(|e| e.has_room()) {
            Some(i) => &mut origin.sessions[i],
            None => {
                let dialling = origin.dialling_since.is_some_and(|t| now.duration_since(t) < patience);
                let queue = origin
                    .sessions
                    .iter_mut()
                    .filter(|e| e.accepting && e.streams < e.max.max(1) * QUEUE_FACTOR)
                    .min_by_key(|e| e.streams);
                match queue {
                    Some(e) if dialling => e,
                    _ => {
                        origin.dialling_since = Some(now);
                        return None;
                    }
                }
            }
        };
        e.streams += 1;
        Some((e.token, e.id))
    }

    /// A fresh connection to `key` picked `h2`: true when it is to become a session (no
    /// session has room, or one more was asked for), false when it is surplus.
    pub fn wants_session(&mut self, key: &PoolKey) -> bool {
        let Some(origin) = self.by_key.get_mut(key) else { return true };
        origin.dialling_since.take().is_some() || !origin.sessions.iter().any(Entry::has_room)
    }

    /// Free streams in the origin's other sessions that take new ones (where requests
    /// waiting in session `token` could go now).
    pub fn room_elsewhere(&self, key: &PoolKey, token: Token) -> usize {
        let Some(origin) = self.by_key.get(key) else { return 0 };
        origin
            .sessions
            .iter()
            .filter(|e| e.token != token && e.accepting)
            .map(|e| e.max.saturating_sub(e.streams))
            .sum()
    }

    /// Hands `link` to the session (after `find`); it takes it on its next run.
    pub fn give(&mut self, key: &PoolKey, token: Token, link: LinkId) {
        if let Some(e) = self.entry(key, token) {
            e.inbox.push(link);
        }
    }

    /// Links handed to the session since its last run.
    pub fn take_inbox(&mut self, key: &PoolKey, token: Token) -> Vec<LinkId> {
        self.entry(key, token).map(|e| std::mem::take(&mut e.inbox)).unwrap_or_default()
    }

    /// A session just decided (its slot comes after the current handler): exchanges
    /// dialling the same origin from now on join it instead of making their own. Until its
    /// SETTINGS come, it is assumed to take as many streams as the origin's other sessions
    /// (streams above the origin's real limit would be refused): its token and that limit,
    /// which the session's `h2` client is to start with too.
    pub fn reserve(&mut self, key: PoolKey) -> (Token, usize) {
        self.next_token += 1;
        let token = self.next_token;
        let origin = self.by_key.entry(key).or_default();
        let max = origin.sessions.iter().filter(|e| e.accepting).map(|e| e.max).max().unwrap_or(ASSUMED_MAX_STREAMS);
        origin.sessions.push(Entry {
            token,
            id: None,
            streams: 1,
            max,
            accepting: true,
            waiting: 0,
            inbox: Vec::new(),
        });
        (token, max)
    }

    /// The session's slot exists: the links handed to it meanwhile (their session id is
    /// to be filled in).
    pub fn activate(&mut self, key: &PoolKey, token: Token, id: ConnId) -> Vec<LinkId> {
        match self.entry(key, token) {
            Some(e) => {
                e.id = Some(id);
                e.inbox.clone()
            }
            None => Vec::new(),
        }
    }

    /// The session's own view, after each of its runs: its streams (queued ones
    /// included), the origin's limit, whether it takes new streams, and how many of its
    /// requests wait for the origin's room.
    pub fn update(&mut self, key: &PoolKey, token: Token, view: SessionView) {
        if let Some(e) = self.entry(key, token) {
            e.streams = view.streams + e.inbox.len();
            e.max = view.max;
            e.accepting = view.accepting;
            e.waiting = view.waiting;
        }
    }

    /// The slots of the origin's other sessions with requests waiting for room (to wake
    /// when session `token` has room: they hand those requests back).
    pub fn siblings_waiting(&self, key: &PoolKey, token: Token) -> impl Iterator<Item = ConnId> + '_ {
        let sessions = self.by_key.get(key).map(|o| o.sessions.as_slice()).unwrap_or_default();
        sessions.iter().filter(move |e| e.token != token && e.waiting > 0).filter_map(|e| e.id)
    }

    /// The session closed; links handed to it and not taken yet come back.
    pub fn remove(&mut self, key: &PoolKey, token: Token) -> Vec<LinkId> {
        let Some(origin) = self.by_key.get_mut(key) else { return Vec::new() };
        let mut orphans = Vec::new();
        origin.sessions.retain_mut(|e| {
            if e.token == token {
                orphans.append(&mut e.inbox);
            }
            e.token != token
        });
        if origin.sessions.is_empty() {
            self.by_key.remove(key);
        }
        orphans
    }

    /// Sessions open now.
    pub fn sessions(&self) -> usize {
        self.by_key.values().map(|o| o.sessions.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http2::links::Links;

    fn key() -> PoolKey {
        PoolKey { host: "origin.test".into(), port: 443, tls: true }
    }

    const PATIENCE: Duration = Duration::from_secs(10);

    fn view(streams: usize, max: usize, accepting: bool) -> SessionView {
        SessionView { streams, max, accepting, waiting: 0 }
    }

    #[test]
    fn a_reserved_session_takes_streams_before_its_slot_exists_and_hands_them_over() {
        let now = Instant::now();
        let mut links = Links::default();
        let mut conns: uring::Conns<()> = uring::Conns::new();
        let mut o = Origins::default();
        assert!(o.find(&key(), now, PATIENCE).is_none());
        let (token, _) = o.reserve(key());
        // A burst: the next exchanges join the reserved session.
        let (t, id) = o.find(&key(), now, PATIENCE).expect("room in the reserved session");
        assert_eq!((t, id), (token, None));
        let link = links.open_unowned();
        o.give(&key(), token, link);
        let slot = conns.insert(());
        assert_eq!(o.activate(&key(), token, slot), vec![link]);
        assert_eq!(o.find(&key(), now, PATIENCE), Some((token, Some(slot))));
        assert_eq!(o.take_inbox(&key(), token), vec![link]);
        assert!(o.remove(&key(), token).is_empty());
        assert_eq!(o.sessions(), 0);
    }

    #[test]
    fn full_sessions_send_one_exchange_to_dial_and_queue_the_others() {
        let now = Instant::now();
        let mut o = Origins::default();
        let (first, _) = o.reserve(key());
        o.update(&key(), first, view(2, 2, true));
        // Full: the first exchange to find it so dials one more connection ...
        assert!(o.find(&key(), now, PATIENCE).is_none());
        // ... and the next ones queue meanwhile, up to the queue's bound.
        for _ in 0..(2 * QUEUE_FACTOR - 2) {
            assert_eq!(o.find(&key(), now, PATIENCE).map(|f| f.0), Some(first));
        }
        assert!(o.find(&key(), now, PATIENCE).is_none(), "past the queue's bound, dial");
        // The connection that was asked for becomes a session ...
        assert!(o.wants_session(&key()));
        let (second, max) = o.reserve(key());
        assert_eq!(max, 2, "the origin's limit as its first session learnt it");
        o.update(&key(), second, view(1, 2, true));
        // ... assumed to take what the first takes until its SETTINGS come, and takes the
        // next stream: the one with room.
        assert_eq!(o.find(&key(), now, PATIENCE).map(|f| f.0), Some(second));
        assert_eq!(o.find(&key(), now, PATIENCE), None, "the second is full at the first's limit");
        // A connection nobody asked for while a session has room is surplus.
        o.update(&key(), second, view(1, 2, true));
        assert!(o.wants_session(&key()), "asked for by the last dial");
        assert!(!o.wants_session(&key()));
    }

    #[test]
    fn room_elsewhere_counts_the_other_accepting_sessions() {
        let mut o = Origins::default();
        let (first, _) = o.reserve(key());
        let (second, _) = o.reserve(key());
        let (third, _) = o.reserve(key());
        o.update(&key(), first, view(9, 2, true));
        o.update(&key(), second, view(1, 4, true));
        o.update(&key(), third, view(0, 8, false));
        assert_eq!(o.room_elsewhere(&key(), first), 3, "the second's room; the third takes none");
        assert_eq!(o.room_elsewhere(&key(), second), 0);
    }

    #[test]
    fn a_dial_that_never_became_a_session_lets_another_exchange_dial_after_patience() {
        let now = Instant::now();
        let mut o = Origins::default();
        let (first, _) = o.reserve(key());
        o.update(&key(), first, view(1, 1, true));
        assert!(o.find(&key(), now, PATIENCE).is_none());
        assert!(o.find(&key(), now, PATIENCE).is_some(), "queued while the dial is young");
        assert!(o.find(&key(), now + PATIENCE, PATIENCE).is_none(), "the dial is presumed failed");
    }

    #[test]
    fn a_session_that_stopped_accepting_takes_no_queue() {
        let now = Instant::now();
        let mut o = Origins::default();
        let (first, _) = o.reserve(key());
        o.update(&key(), first, view(0, 10, false));
        assert!(o.find(&key(), now, PATIENCE).is_none());
        assert!(o.find(&key(), now, PATIENCE).is_none(), "nothing to queue on: dial");
    }
}
