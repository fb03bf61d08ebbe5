//! One lookup in flight on the helper thread: the absolute names to try (the search
//! list), and for the current one its A and AAAA queries, sent in tries that go round
//! the nameservers.
//!
//! Each try has its own connected UDP socket: a fresh source port chosen by the kernel,
//! random query ids, and the kernel drops datagrams from any address but the server's;
//! an answer must also carry the id and echo the question, or it is ignored. A
//! truncated answer is asked again over TCP to the same server. An answer to an earlier
//! try still counts (the two most recent tries stay open). A server failure or an
//! unreachable server moves to the next nameserver at once. The lookup ends with the
//! addresses found, a failure, or at its deadline.

use super::settings::Settings;
use super::wire::{self, Family, Reply};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::Name;
use socket2::{Domain, Socket, Type};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

/// Tries whose sockets stay open (an answer to an older one is no longer awaited).
const OPEN_TRIES: usize = 2;
/// Datagrams read from one socket per readiness (the rest on the next turn).
const READS_PER_TURN: usize = 8;
/// The largest DNS message over UDP (EDNS payloads included).
const UDP_BUF: usize = 4096;

/// What a lookup came to.
pub(super) type Outcome = Result<Resolved, Failure>;

/// Addresses found (IPv4 first) and how long they may be kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Resolved {
    pub ips: Vec<IpAddr>,
    pub ttl: Duration,
}

/// Why a lookup failed, and the text the client sees after "cannot resolve NAME: ".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Failure {
    pub kind: FailureKind,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FailureKind {
    /// NXDOMAIN, or no address for the name.
    NotFound,
    /// No usable answer before the lookup's deadline.
    Timeout,
    /// Every nameserver asked failed (SERVFAIL, REFUSED) or could not be reached.
    ServerFailure,
}

fn failure(kind: FailureKind, text: impl Into<String>) -> Outcome {
    Err(Failure { kind, text: text.into() })
}

/// Where one family's answer stands for the current name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    /// Not asked (`options no-aaaa`).
    Off,
    Waiting,
    Found {
        ips: Vec<IpAddr>,
        ttl: u32,
    },
    /// NXDOMAIN, or the name has no address of this family.
    Absent,
}

/// Which socket of a lookup became ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SocketRef {
    Udp { attempt: usize },
    Tcp { attempt: usize, family: Family },
}

/// A TCP exchange for a truncated answer: connect, send the framed query, read the
/// framed answer.
struct Tcp {
    stream: TcpStream,
    id: u16,
    state: TcpState,
}

enum TcpState {
    Connecting { out: Vec<u8> },
    Sending { out: Vec<u8>, sent: usize },
    Receiving { buf: Vec<u8> },
}

/// One try: the queries sent to one server.
struct Attempt {
    server: SocketAddr,
    udp: Option<UdpSocket>,
    /// The id each family was asked with, while its answer is awaited.
    ids: [Option<u16>; 2],
    tcp: [Option<Tcp>; 2],
}

impl Attempt {
    fn awaits(&self, f: Family) -> bool {
        (self.udp.is_some() && self.ids[f.index()].is_some()) || self.tcp[f.index()].is_some()
    }
}

/// One name being resolved.
pub(super) struct InFlight {
    /// The name as the worker asked for it (its cache key).
    pub name: String,
    names: Vec<Name>,
    current: usize,
    status: [Status; 2],
    attempts: Vec<Attempt>,
    tries_made: usize,
    first_server: usize,
    next_try: Instant,
    deadline: Instant,
    nxdomain: bool,
    /// Why the last try failed: the client's text and the operator's detail.
    last_failure: Option<(String, String)>,
    pub outcome: Option<Outcome>,
}

impl InFlight {
    /// Starts resolving `name` (checked by `wire::check_host`): the first try is sent now.
    pub(super) fn start(name: String, settings: &Settings, first_server: usize, now: Instant) -> InFlight {
        let names = settings.names(&name);
        let mut lookup = InFlight {
            name,
            names,
            current: 0,
            status: [Status::Waiting, Status::Waiting],
            attempts: Vec::new(),
            tries_made: 0,
            first_server,
            next_try: now,
            deadline: now + settings.timeout,
            nxdomain: false,
            last_failure: None,
            outcome: None,
        };
        if lookup.names.is_empty() {
            lookup.outcome = Some(failure(FailureKind::NotFound, "not a host name"));
            return lookup;
        }
        lookup.begin_name(settings, now);
        lookup
    }

    /// Asks for the current name afresh.
    fn begin_name(&mut self, settings: &Settings, now: Instant) {
        self.status = [Status::Waiting, if settings.aaaa { Status::Waiting } else { Status::Off }];
        self.attempts.clear();
        self.tries_made = 0;
        self.send_try(settings, now);
    }

    /// When this lookup next has something to do without any I/O.
    pub(super) fn due(&self) -> Instant {
        self.next_try.min(self.deadline)
    }

    /// The time passed: a try without an answer is followed by the next, and the
    /// deadline ends the lookup.
    pub(super) fn on_time(&mut self, settings: &Settings, now: Instant) {
        if self.outcome.is_some() {
            return;
        }
        if now >= self.deadline {
            let outcome =
                self.found().unwrap_or_else(|| failure(FailureKind::Timeout, "no answer from the nameservers in time"));
            self.finish(outcome);
            return;
        }
        if now < self.next_try {
            return;
        }
        if let Some(found) = self.found() {
            // One family answered and the other is slow: go with what was found.
            self.finish(found);
        } else if self.tries_made < settings.tries {
            self.send_try(settings, now);
            // A try that could not even be sent may have been the last.
            self.progress(settings, now);
        } else {
            self.next_try = self.deadline;
        }
    }

    /// Sends the next try to the next nameserver.
    fn send_try(&mut self, settings: &Settings, now: Instant) {
        // Any failure here moves on to the next server at once, a bounded number of times.
        self.next_try = now + settings.retry_after;
        if self.tries_made >= settings.tries || settings.servers.is_empty() {
            self.next_try = self.deadline;
            return;
        }
        let server = settings.servers[(self.first_server + self.tries_made) % settings.servers.len()];
        self.tries_made += 1;
        let name = &self.names[self.current];
        match send_udp(server, name, &self.status, settings.edns) {
            Ok(attempt) => {
                if self.attempts.len() == OPEN_TRIES {
                    self.attempts.remove(0);
                }
                self.attempts.push(attempt);
            }
            Err(e) => {
                self.failed_try(server, "no nameserver could be reached", &e.to_string());
                self.next_try = now;
            }
        }
    }

    fn failed_try(&mut self, server: SocketAddr, text: &str, detail: &str) {
        tracing::debug!(name = %self.name, %server, detail, "resolver: try failed");
        self.last_failure = Some((text.to_string(), format!("{server}: {detail}")));
    }

    /// The sockets to poll, with what to poll them for.
    pub(super) fn sockets<'a>(&'a self, mut add: impl FnMut(BorrowedFd<'a>, bool, SocketRef)) {
        for (i, a) in self.attempts.iter().enumerate() {
            if let Some(udp) = &a.udp {
                add(udp.as_fd(), false, SocketRef::Udp { attempt: i });
            }
            for f in Family::BOTH {
                if let Some(tcp) = &a.tcp[f.index()] {
                    let write = !matches!(tcp.state, TcpState::Receiving { .. });
                    add(tcp.stream.as_fd(), write, SocketRef::Tcp { attempt: i, family: f });
                }
            }
        }
    }

    /// A socket of this lookup is ready.
    pub(super) fn on_ready(&mut self, socket: SocketRef, settings: &Settings, now: Instant) {
        if self.outcome.is_some() {
            return;
        }
        match socket {
            SocketRef::Udp { attempt } => self.read_udp(attempt, settings, now),
            SocketRef::Tcp { attempt, family } => self.step_tcp(attempt, family, settings, now),
        }
        self.progress(settings, now);
    }

    fn read_udp(&mut self, i: usize, settings: &Settings, now: Instant) {
        let mut buf = [0u8; UDP_BUF];
        for _ in 0..READS_PER_TURN {
            let Some(attempt) = self.attempts.get(i) else { return };
            let Some(udp) = &attempt.udp else { return };
            let n = match udp.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP unreachable (nothing listens there), or a network error.
                    let server = attempt.server;
                    self.attempts[i].udp = None;
                    self.failed_try(server, "no nameserver could be reached", &e.to_string());
                    self.send_try(settings, now);
                    return;
                }
            };
            // Anything but the answer to a question of this try is ignored.
            let Some(msg) = wire::decode(&buf[..n]) else { continue };
            let name = &self.names[self.current];
            let answer = Family::BOTH.into_iter().find_map(|f| {
                let id = attempt.ids[f.index()]?;
                wire::reply_to(&msg, id, name, f).map(|reply| (f, reply))
            });
            if let Some((f, reply)) = answer {
                self.attempts[i].ids[f.index()] = None;
                // The tries may have moved (a new one, the oldest closed): the rest of
                // this socket's datagrams are read on the next turn.
                self.apply(i, f, reply, settings, now);
                return;
            }
        }
    }

    fn step_tcp(&mut self, i: usize, f: Family, settings: &Settings, now: Instant) {
        let Some(attempt) = self.attempts.get_mut(i) else { return };
        let server = attempt.server;
        let Some(tcp) = attempt.tcp[f.index()].as_mut() else { return };
        match tcp.advance() {
            Ok(None) => {}
            Ok(Some(message)) => {
                let id = tcp.id;
                attempt.tcp[f.index()] = None;
                let reply = wire::decode(&message).and_then(|m| wire::reply_to(&m, id, &self.names[self.current], f));
                match reply {
                    Some(Reply::Truncated) | None => {
                        self.failed_try(server, "the nameserver's answer was unusable", "bad answer over TCP");
                        self.send_try(settings, now);
                    }
                    Some(reply) => self.apply(i, f, reply, settings, now),
                }
            }
            Err(e) => {
                attempt.tcp[f.index()] = None;
                self.failed_try(server, "no nameserver could be reached", &format!("over TCP: {e}"));
                self.send_try(settings, now);
            }
        }
    }

    /// Takes one answer for family `f` from try `i`.
    fn apply(&mut self, i: usize, f: Family, reply: Reply, settings: &Settings, now: Instant) {
        match reply {
            Reply::Records { ips, ttl } => {
                if self.status[f.index()] == Status::Waiting {
                    self.status[f.index()] = if ips.is_empty() { Status::Absent } else { Status::Found { ips, ttl } };
                }
            }
            Reply::NoSuchName => {
                self.nxdomain = true;
                for s in &mut self.status {
                    if *s == Status::Waiting {
                        *s = Status::Absent;
                    }
                }
            }
            Reply::Truncated => {
                let server = self.attempts[i].server;
                if self.attempts[i].tcp[f.index()].is_some() {
                    return;
                }
                let id = wire::random_id();
                let query = wire::query(id, &self.names[self.current], f, false);
                match Tcp::connect(server, id, &query) {
                    Ok(tcp) => self.attempts[i].tcp[f.index()] = Some(tcp),
                    Err(e) => {
                        self.failed_try(server, "no nameserver could be reached", &format!("over TCP: {e}"));
                        self.send_try(settings, now);
                    }
                }
            }
            Reply::ServerFailure(code) => {
                let server = self.attempts[i].server;
                self.failed_try(server, &failure_text(code), &code.to_string());
                self.send_try(settings, now);
            }
        }
    }

    /// Ends the lookup, or moves to the next name, once every family has its answer;
    /// fails at once when nothing is awaited any more and no try is left.
    fn progress(&mut self, settings: &Settings, now: Instant) {
        if self.outcome.is_some() {
            return;
        }
        let waiting: Vec<Family> =
            Family::BOTH.into_iter().filter(|f| self.status[f.index()] == Status::Waiting).collect();
        if waiting.is_empty() {
            if let Some(found) = self.found() {
                self.finish(found);
            } else if self.current + 1 < self.names.len() {
                self.current += 1;
                self.begin_name(settings, now);
            } else if self.nxdomain {
                self.finish(failure(FailureKind::NotFound, "no such host"));
            } else {
                self.finish(failure(FailureKind::NotFound, "the name has no address"));
            }
            return;
        }
        let awaited = waiting.iter().any(|f| self.attempts.iter().any(|a| a.awaits(*f)));
        if !awaited && self.tries_made >= settings.tries {
            let outcome = self.found().unwrap_or_else(|| {
                let (text, detail) = self
                    .last_failure
                    .clone()
                    .unwrap_or_else(|| ("no nameserver answered".into(), "no try was sent".into()));
                tracing::debug!(name = %self.name, %detail, "resolver: every try failed");
                failure(FailureKind::ServerFailure, text)
            });
            self.finish(outcome);
        }
    }

    /// The addresses found so far, if any (IPv4 first).
    fn found(&self) -> Option<Outcome> {
        let mut ips = Vec::new();
        let mut ttl = u32::MAX;
        for s in &self.status {
            if let Status::Found { ips: found, ttl: t } = s {
                ips.extend_from_slice(found);
                ttl = ttl.min(*t);
            }
        }
        (!ips.is_empty()).then(|| Ok(Resolved { ips, ttl: Duration::from_secs(ttl.into()) }))
    }

    fn finish(&mut self, outcome: Outcome) {
        self.attempts.clear();
        self.outcome = Some(outcome);
    }
}

fn failure_text(code: ResponseCode) -> String {
    let short = match code {
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::NotImp => "NOTIMP",
        _ => return format!("nameserver failure (rcode {})", u16::from(code)),
    };
    format!("nameserver failure ({short})")
}

/// A new try: a connected UDP socket to `server` and one query per waiting family.
fn send_udp(server: SocketAddr, name: &Name, status: &[Status; 2], edns: bool) -> std::io::Result<Attempt> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let udp = UdpSocket::bind(local)?;
    udp.connect(server)?;
    udp.set_nonblocking(true)?;
    let mut ids = [None, None];
    for f in Family::BOTH {
        if status[f.index()] != Status::Waiting {
            continue;
        }
        let mut id = wire::random_id();
        while Some(id) == ids[0] {
            id = wire::random_id();
        }
        udp.send(&wire::query(id, name, f, edns))?;
        ids[f.index()] = Some(id);
    }
    Ok(Attempt { server, udp: Some(udp), ids, tcp: [None, None] })
}

impl Tcp {
    fn connect(server: SocketAddr, id: u16, query: &[u8]) -> std::io::Result<Tcp> {
        let sock = Socket::new(Domain::for_address(server), Type::STREAM.nonblocking().cloexec(), None)?;
        match sock.connect(&server.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let len = u16::try_from(query.len()).map_err(|_| std::io::Error::other("query too long"))?;
        let mut out = len.to_be_bytes().to_vec();
        out.extend_from_slice(query);
        Ok(Tcp { stream: TcpStream::from(sock), id, state: TcpState::Connecting { out } })
    }

    /// Moves the exchange on; the answer's bytes once they are all in.
    fn advance(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            match &mut self.state {
                TcpState::Connecting { out } => {
                    if let Some(e) = self.stream.take_error()? {
                        return Err(e);
                    }
                    self.state = TcpState::Sending { out: std::mem::take(out), sent: 0 };
                }
                TcpState::Sending { out, sent } => {
                    match self.stream.write(&out[*sent..]) {
                        Ok(n) => *sent += n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                    if *sent == out.len() {
                        self.state = TcpState::Receiving { buf: Vec::with_capacity(512) };
                    }
                }
                TcpState::Receiving { buf } => {
                    let mut chunk = [0u8; UDP_BUF];
                    match self.stream.read(&mut chunk) {
                        Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                    if buf.len() >= 2 {
                        let need = 2 + usize::from(u16::from_be_bytes([buf[0], buf[1]]));
                        if buf.len() >= need {
                            return Ok(Some(buf[2..need].to_vec()));
                        }
                    }
                }
            }
        }
    }
}
