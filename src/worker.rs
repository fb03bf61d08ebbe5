//! One worker: a pinned thread that owns a ring, its listeners, its connections, its
//! slab pool, resolver, upstream pool and deadlines. Nothing here is shared with other
//! workers except the read-only config and each worker's own counters block.
//!
//! The loop: submit and wait → for each completion, find its connection (or worker-level
//! op) and run the state machine → close what asked to close → repeat.

use crate::accesslog::AccessLog;
use crate::config::Config;
use crate::conn::view::Addr;
use crate::conn::{self, Connection, Ctx, Endpoint, NextStep, Role};
use crate::control::{Control, Snapshot};
use crate::stats::{self, WorkerStats};
use crate::timers::Timers;
use crate::upstream::dns::Resolver;
use crate::upstream::pool::UpstreamPool;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uring::{ConnId, Conns, Event, ReadyQueue, Slot, Uring, WorkerToken};

#[cfg(test)]
mod harness;
mod listen;
mod stall;

use listen::{Listener, Rearm, Spare};

const KIND_DNS: u8 = 1;
const KIND_TICK: u8 = 2;
const KIND_CANCEL: u8 = 3;
const KIND_AUTH: u8 = 4;
const TICK: Duration = Duration::from_millis(100);
const RING_ENTRIES: u32 = 4096;

/// What a worker thread starts with.
pub struct WorkerSetup {
    pub index: usize,
    pub cpu: Option<usize>,
    pub cfg: Arc<Config>,
    pub stats: Arc<[WorkerStats]>,
    pub listeners: Vec<(TcpListener, Role)>,
    pub via: String,
    pub control: Arc<Control>,
    pub ca: Arc<crate::tls::ca::CaMaterial>,
    pub upstream_tls: Arc<rustls::ClientConfig>,
    /// Clients this worker's share of the descriptor limit holds.
    pub fd_clients: u64,
}

/// The worker's state apart from its connections (so both can be borrowed at once).
struct Env {
    /// The ring and the slabs registered with it.
    uring: Uring,
    cfg: Arc<Config>,
    dns: Resolver,
    /// Proxy authentication: cached verdicts and the helper thread for the slow hash.
    auth: crate::auth::Gate,
    upstreams: UpstreamPool,
    timers: Timers,
    stats: Arc<[WorkerStats]>,
    index: usize,
    scratch: Vec<u8>,
    via: String,
    listen_addrs: Vec<SocketAddr>,
    minter: crate::tls::mint::Minter,
    upstream_tls: Arc<rustls::ClientConfig>,
    upstream_tls_h1: Arc<rustls::ClientConfig>,
    /// HTTP/2 sessions to origins, by origin.
    origins: crate::http2::origins::Origins,
    access: Option<AccessLog>,
    draining: bool,
    /// Slots to run again after the current batch (`Ctx::wake`, the resolver, the pool).
    wakes: ReadyQueue,
    /// The links between HTTP/2 sessions and their streams' exchanges.
    links: crate::http2::links::Links,
    /// Exchanges of new HTTP/2 streams, put in slots after the handler that made them.
    spawned: Vec<Connection>,
    /// The ids being run from `wakes` (its allocation reused between batches).
    woken: Vec<ConnId>,
    control: Arc<Control>,
    /// This machine's own addresses, read again now and then (`local_targets`).
    local: crate::upstream::local::LocalAddrs,
    /// Clients this worker's share of the descriptor limit holds.
    fd_clients: u64,
    /// The most client connections this worker takes (`set_client_cap`).
    client_cap: u64,
}

impl Env {
    fn ctx(&mut self, now: Instant) -> Ctx<'_> {
        let (ring, pool) = self.uring.parts();
        Ctx {
            ring,
            pool,
            cfg: &self.cfg,
            dns: &mut self.dns,
            auth: &mut self.auth,
            upstreams: &mut self.upstreams,
            timers: &mut self.timers,
            stats: &self.stats[self.index],
            all_stats: &self.stats,
            now,
            scratch: &mut self.scratch,
            via: &self.via,
            listeners: &self.listen_addrs,
            ready: !self.draining,
            minter: &mut self.minter,
            upstream_tls: &self.upstream_tls,
            upstream_tls_h1: &self.upstream_tls_h1,
            origins: &mut self.origins,
            access: self.access.as_mut(),
            links: &mut self.links,
            spawn: &mut self.spawned,
            wakes: &self.wakes,
            local: &self.local,
            control: &self.control,
            worker: self.index,
        }
    }

    fn flush_log(&mut self) {
        if let Some(a) = self.access.as_mut() {
            a.flush();
        }
    }

    /// Works out the client cap after a (re)load and publishes it
    /// (`sluice_connections_limit`): accepts read `client_cap`, nothing more.
    fn set_client_cap(&mut self) {
        self.client_cap = self.cfg.limits.client_cap(self.fd_clients);
        self.stats[self.index].connection_limit.store(self.client_cap, Ordering::Relaxed);
    }

    /// A helper thread (resolver, password checks) answered: the connections it answered
    /// run again, and its wake pipe is polled anew.
    fn resume_waiters(&mut self, ids: Vec<ConnId>, wake_fd: std::os::fd::RawFd, kind: u8) {
        for id in ids {
            self.wakes.wake(id);
        }
        self.uring.ring_mut().poll_worker_fd(wake_fd, WorkerToken { kind, index: 0 });
    }

    /// Client connections of this worker open now (admin ones excluded).
    fn proxy_connections(&self) -> u64 {
        self.stats[self.index].connections_active.load(Ordering::Relaxed)
    }

    /// A slot was really freed (its last operation completed): its value is dropped here,
    /// which closes its descriptors, and the slot gauge moves.
    fn freed(&mut self, endpoint: Endpoint) {
        if endpoint.is_client() {
            stats::drop_one(&self.stats[self.index].connection_slots);
        }
        drop(endpoint);
    }

    /// Closes the slot `id` (its owner has called `begin_close`); frees it now when no
    /// operation of it is in flight, else when the last one completes.
    fn close(&mut self, conns: &mut Conns<Endpoint>, id: ConnId) {
        if let Some(conn) = conns.close(id) {
            self.freed(conn);
        }
    }
}

/// Runs `f` on a slot's connection (a client's or an origin session's); returns its id
/// when it asked to close (after `begin_close`).
fn drive(
    slot: &mut Slot<Endpoint>,
    env: &mut Env,
    now: Instant,
    f: impl FnOnce(&mut Connection, &mut uring::conns::Io, &mut Ctx<'_>) -> NextStep,
) -> Option<ConnId> {
    let (endpoint, io) = slot.split();
    let conn = endpoint.connection_mut();
    let mut ctx = env.ctx(now);
    let mut step = f(conn, io, &mut ctx);
    // A write into a link (an HTTP/2 stream's exchange) is done as soon as the link has
    // room, which it usually still has: the exchange goes on in this run (its response
    // written, it logs and closes) instead of waking itself for another.
    let mut runs = 0;
    while step == NextStep::Wait && conn.link_progress(&mut ctx) {
        if runs == LINK_WRITES_PER_RUN {
            // The next run goes on from here (a full link instead waits for the session,
            // which wakes this slot once it took bytes out).
            ctx.wake(io.id());
            break;
        }
        runs += 1;
        step = conn::advance(conn, io, &mut ctx);
    }
    if step == NextStep::Close {
        conn.begin_close(io, &mut ctx);
        return Some(io.id());
    }
    None
}

/// Tells the other workers this one is done, once: when its drain is over, or when it
/// stops for any other reason (an error must not leave the others waiting).
pub(crate) struct Finished {
    control: Arc<Control>,
    done: bool,
}

impl Finished {
    fn mark(&mut self) {
        if !self.done {
            self.done = true;
            self.control.worker_finished();
        }
    }
}

impl Drop for Finished {
    fn drop(&mut self) {
        self.mark();
    }
}

/// A worker: its connections, everything they share, its listeners and its drain state.
pub(crate) struct Worker {
    conns: Conns<Endpoint>,
    env: Env,
    listeners: Vec<Listener>,
    control: Arc<Control>,
    finished: Finished,
    config_gen: u64,
    last_sweep: Instant,
    drain_deadline: Option<Instant>,
    deadline_passed: bool,
    /// The last connections ask this worker answered (`/debug/connections`).
    view_answered: u64,
    /// A descriptor kept for the admin listener when the table is full.
    spare: Spare,
    /// Connections that hold buffers and do not move, while reads wait for the budget.
    stalls: stall::StallWatch,
}

/// The worker thread's body.
pub fn run(setup: WorkerSetup) -> std::io::Result<()> {
    // Every diagnostics line of this thread names its worker. At error level so that any
    // level but `off` keeps it.
    let _worker = tracing::error_span!("worker", id = setup.index).entered();
    // Marks this worker finished however it leaves, set-up errors included.
    let finished = Finished { control: setup.control.clone(), done: false };
    if let Some(cpu) = setup.cpu {
        crate::sys::pin_current_thread(cpu)
            .map_err(|e| std::io::Error::new(e.kind(), format!("pinning worker {} to CPU {cpu}: {e}", setup.index)))?;
    }
    let uring = Uring::new(RING_ENTRIES, setup.cfg.slabs_per_worker)
        .map_err(|e| std::io::Error::new(e.kind(), format!("worker {}: cannot set up io_uring: {e}", setup.index)))?;
    if !uring.ring().fixed_buffers() && setup.index == 0 {
        eprintln!(
            "sluice: warning: could not register {} slabs with io_uring (RLIMIT_MEMLOCK?); using plain reads and writes",
            setup.cfg.slabs_per_worker
        );
    }
    let mut worker = Worker::new(setup, uring, finished)?;
    while worker.turn()? {}
    worker.env.flush_log();
    Ok(())
}

impl Worker {
    /// A worker on `uring` (a kernel ring, or an in-memory one in tests): arms its
    /// listeners, the resolver's wake-up and the tick.
    pub(crate) fn new(setup: WorkerSetup, mut uring: Uring, finished: Finished) -> std::io::Result<Worker> {
        let cfg = setup.cfg.clone();
        let control = setup.control.clone();
        let conns: Conns<Endpoint> = Conns::bound_to(uring.ring_mut());
        let mut env = Env {
            uring,
            dns: Resolver::new(&cfg, setup.index)?,
            auth: crate::auth::Gate::new(&cfg.auth, control.auth_shared(), setup.index)?,
            upstreams: UpstreamPool::new(cfg.pool.clone()),
            timers: Timers::default(),
            stats: setup.stats.clone(),
            index: setup.index,
            scratch: Vec::with_capacity(8192),
            via: setup.via.clone(),
            listen_addrs: cfg.listen.clone(),
            minter: crate::tls::mint::Minter::new(&setup.ca, cfg.cert_cache_size)
                .map_err(|e| std::io::Error::other(format!("worker {}: {e}", setup.index)))?,
            upstream_tls: setup.upstream_tls.clone(),
            upstream_tls_h1: crate::tls::upstream::http1_only(&setup.upstream_tls),
            origins: Default::default(),
            access: control.access_log().map(|sink| AccessLog::new(cfg.access_log_format, sink)),
            draining: false,
            wakes: ReadyQueue::new(),
            links: Default::default(),
            spawned: Vec::new(),
            woken: Vec::new(),
            local: crate::upstream::local::LocalAddrs::new(Instant::now()),
            control: control.clone(),
            fd_clients: setup.fd_clients,
            client_cap: 0,
            cfg,
        };
        env.set_client_cap();
        env.minter.offer_h2(env.cfg.h2.enabled);
        let cfg = env.cfg.clone();
        set_buffer_budget(&mut env, &cfg);
        // A table slot per client leg and origin leg at the client cap, the idle pool and
        // a margin (capped in `uring`): a later reload's larger cap, or a table the kernel
        // refuses, leaves the extra legs on plain fds.
        let slots = env.client_cap.saturating_mul(2).saturating_add(cfg.pool.max_idle_total as u64 + 64);
        env.uring.ring_mut().register_files(slots.min(u32::MAX as u64) as u32);
        let listeners: Vec<Listener> =
            setup.listeners.into_iter().map(|(sock, role)| Listener::new(sock, role)).collect();
        for (i, l) in listeners.iter().enumerate() {
            if let Some(sock) = &l.sock {
                env.uring.ring_mut().accept_multi(sock.as_raw_fd(), i as u32);
            }
        }
        env.uring.ring_mut().poll_worker_fd(env.dns.wake_fd(), WorkerToken { kind: KIND_DNS, index: 0 });
        env.uring.ring_mut().poll_worker_fd(env.auth.wake_fd(), WorkerToken { kind: KIND_AUTH, index: 0 });
        env.uring.ring_mut().tick(TICK, WorkerToken { kind: KIND_TICK, index: 0 });
        Ok(Worker {
            conns,
            env,
            listeners,
            finished,
            config_gen: control.generation(),
            control,
            last_sweep: Instant::now(),
            drain_deadline: None,
            deadline_passed: false,
            view_answered: 0,
            spare: Spare::new(),
            stalls: stall::StallWatch::default(),
        })
    }

    /// One turn of the loop: submit and wait (not when slots are woken and waiting), run
    /// every completion's state machine, then the woken slots. False once the worker is
    /// done (drained, and every other worker too).
    pub(crate) fn turn(&mut self) -> std::io::Result<bool> {
        let want = if self.env.wakes.is_empty() && self.env.spawned.is_empty() { 1 } else { 0 };
        self.env.uring.ring_mut().submit_and_wait(want)?;
        let now = Instant::now();
        let cqes = self.env.uring.ring_mut().completions();
        for c in &cqes {
            self.on_completion(c, now);
        }
        self.env.uring.ring_mut().recycle(cqes);
        let env = &mut self.env;
        env.uring.pool_mut().wake_waiters(&env.wakes);
        wake_queued(&mut self.conns, &mut self.env);
        run_woken(&mut self.conns, &mut self.env, now);
        // Runs may have given turns too (a dial that learnt its origin's protocol, a
        // connection parked): those waiters run on the next turn without waiting for I/O.
        wake_queued(&mut self.conns, &mut self.env);
        Ok(!self.drain_progress(now))
    }

    fn on_completion(&mut self, c: &uring::Completion, now: Instant) {
        let (conns, env) = (&mut self.conns, &mut self.env);
        let (ring, pool) = env.uring.parts();
        let to_close = match conns.complete(c, ring, pool) {
            Event::Conn { slot, tag, result, more, slab, provided } => {
                drive(slot, env, now, |c, io, ctx| conn::on_completion(c, io, ctx, tag, result, more, slab, provided))
            }
            Event::Accepted { listener, fd, result, more } => self.on_accept(listener, fd, result, more, now),
            Event::Worker { token, more, .. } => {
                match token.kind {
                    KIND_DNS => {
                        let (ids, fd) = (env.dns.on_wake(now), env.dns.wake_fd());
                        env.resume_waiters(ids, fd, KIND_DNS);
                    }
                    KIND_AUTH => {
                        let (ids, fd) = (env.auth.on_wake(now), env.auth.wake_fd());
                        env.resume_waiters(ids, fd, KIND_AUTH);
                    }
                    KIND_TICK => self.on_tick(now, more),
                    _ => {}
                }
                None
            }
            Event::Freed { value, .. } => {
                env.freed(value);
                None
            }
            Event::Draining => None,
        };
        if let Some(id) = to_close {
            self.env.close(&mut self.conns, id);
        }
    }

    fn on_accept(
        &mut self,
        listener: u32,
        fd: Option<std::os::fd::OwnedFd>,
        result: i32,
        more: bool,
        now: Instant,
    ) -> Option<ConnId> {
        let mut close = None;
        let l = self.listeners.get_mut(listener as usize)?;
        let role = l.role;
        let mut rearm = Rearm::Now;
        if let Some(fd) = fd {
            l.accepted();
            // While draining, new proxy clients are turned away (dropping closes).
            if !(self.env.draining && role == Role::Proxy) {
                close = accept(&mut self.conns, &mut self.env, now, role, TcpStream::from(fd));
            }
        } else if result < 0 && !l.closing {
            let errno = -result;
            stats::bump(&self.env.stats[self.env.index].accept_errors, 1);
            let (then, warn) = l.failed(errno, now);
            rearm = then;
            if role == Role::Admin && rearm == Rearm::Later && self.spare.release() {
                // The spare descriptor is free now: the admin connection can be accepted.
                l.paused_until = None;
                rearm = Rearm::Now;
            }
            if warn {
                tracing::warn!(
                    error = %std::io::Error::from_raw_os_error(errno),
                    listener = ?role,
                    paused = rearm == Rearm::Later,
                    "accept failed"
                );
            }
        }
        if !more {
            let l = &mut self.listeners[listener as usize];
            if l.closing {
                // The cancelled accept is done: nothing refers to the fd now.
                l.sock = None;
            } else if let (Rearm::Now, Some(sock)) = (rearm, &l.sock) {
                self.env.uring.ring_mut().accept_multi(sock.as_raw_fd(), listener);
            }
        }
        close
    }

    /// Arms the accepts whose pause is over, and takes the spare descriptor back.
    fn resume_listeners(&mut self, now: Instant) {
        self.spare.refill();
        for (i, l) in self.listeners.iter_mut().enumerate() {
            if l.resume_due(now) {
                if let Some(sock) = &l.sock {
                    self.env.uring.ring_mut().accept_multi(sock.as_raw_fd(), i as u32);
                }
            }
        }
    }

    /// The 100 ms tick: deadlines, the pool sweep, reloads, the drain, log flushing and
    /// the ring's gauges.
    fn on_tick(&mut self, now: Instant, more: bool) {
        self.resume_listeners(now);
        let env = &mut self.env;
        fire_deadlines(&mut self.conns, env, now);
        if now.duration_since(self.last_sweep) >= Duration::from_secs(1) {
            env.upstreams.sweep(now);
            env.local.refresh(now);
            env.uring.pool_mut().trim_spares();
            self.stalls.sweep(&mut self.conns, env, now);
            self.last_sweep = now;
        }
        if self.control.generation() != self.config_gen {
            self.config_gen = self.control.generation();
            apply_config(env, &self.control);
        }
        if self.control.draining() && !env.draining {
            env.draining = true;
            self.drain_deadline = Some(now + env.cfg.timeouts.drain);
            for (i, l) in self.listeners.iter_mut().enumerate() {
                if l.role == Role::Proxy && l.paused_until.take().is_some() {
                    // Paused: no accept in flight to cancel.
                    l.sock = None;
                } else if let (Role::Proxy, Some(sock)) = (l.role, &l.sock) {
                    l.closing = true;
                    env.uring
                        .ring_mut()
                        .cancel_worker_fd(sock.as_raw_fd(), WorkerToken { kind: KIND_CANCEL, index: i as u32 });
                }
            }
        }
        if env.draining {
            close_idle(&mut self.conns, env, now);
        }
        env.flush_log();
        publish_ring_stats(env);
        answer_views(&mut self.conns, env, &self.control, &mut self.view_answered, now);
        if !more {
            env.uring.ring_mut().tick(TICK, WorkerToken { kind: KIND_TICK, index: 0 });
        }
    }

    /// After a drain started: closes what is left at the deadline, and says when this
    /// worker may stop (its clients are gone and every other worker is done too).
    fn drain_progress(&mut self, now: Instant) -> bool {
        let Some(deadline) = self.drain_deadline else { return false };
        let listeners_closed = self.listeners.iter().all(|l| l.role != Role::Proxy || l.sock.is_none());
        if !self.deadline_passed && now >= deadline {
            close_all(&mut self.conns, &mut self.env, now);
            self.deadline_passed = true;
        }
        if self.env.proxy_connections() == 0 && (listeners_closed || self.deadline_passed) {
            // Done here; the admin listener serves on (the 100 ms tick comes back here)
            // until every worker is done, then all leave together.
            self.finished.mark();
            return self.control.all_workers_finished();
        }
        false
    }
}

/// Most rounds of woken slots run after one batch: a wake that wakes another is run in
/// the same turn, but a cycle of wakes cannot hold the worker (what is left waits for the
/// next turn, which then does not block).
const WAKE_ROUNDS: usize = 8;

/// Most writes into links one run of a slot completes at once (see `drive`).
const LINK_WRITES_PER_RUN: usize = 8;

/// Runs the slots woken during this batch (by the resolver, the pool, or each other).
fn run_woken(conns: &mut Conns<Endpoint>, env: &mut Env, now: Instant) {
    for _ in 0..WAKE_ROUNDS {
        insert_spawned(conns, env);
        let mut ids = std::mem::take(&mut env.woken);
        env.wakes.drain_into(&mut ids);
        if ids.is_empty() {
            env.woken = ids;
            return;
        }
        resume(conns, env, now, &ids);
        ids.clear();
        env.woken = ids;
    }
    // Exchanges made in the last round run on the next turn (their wakes are queued).
    insert_spawned(conns, env);
}

/// Puts the exchanges of new HTTP/2 streams in slots of their own and wakes them (their
/// first run starts on the request their session wrote into their link).
fn insert_spawned(conns: &mut Conns<Endpoint>, env: &mut Env) {
    let stats = &env.stats[env.index];
    for conn in env.spawned.drain(..) {
        let link = conn.link();
        let origin = conn.origin_session_start();
        let id = conns.insert(Endpoint::of(conn));
        if let Some(l) = link.and_then(|l| env.links.get(l)) {
            l.exchange = Some(id);
            stats::bump(&stats.h2_streams_active, 1);
        }
        if let Some((key, token, mut first)) = origin {
            // A new origin session: the links of the exchanges that joined it before it
            // had a slot (its first, and any of the same burst) learn its slot.
            first.extend(env.origins.activate(&key, token, id));
            for l in &first {
                if let Some(l) = env.links.get(*l) {
                    l.session = Some(id);
                }
            }
            stats::bump(&stats.h2_origin_sessions_active, 1);
            stats::bump(&stats.h2_origin_sessions, 1);
        }
        env.wakes.wake(id);
    }
}

/// Runs the state machines of `ids` (they waited for something outside their own I/O:
/// a name, a connection to their origin); ids of slots freed or closing meanwhile are
/// skipped (`get_mut` never hands out a closing slot).
fn resume(conns: &mut Conns<Endpoint>, env: &mut Env, now: Instant, ids: &[ConnId]) {
    for &id in ids {
        if let Some(slot) = conns.get_mut(id) {
            if let Some(c) = drive(slot, env, now, conn::advance) {
                env.close(conns, c);
            }
        }
    }
}

/// Gives queued requests their turn once their origin has an idle connection or room
/// for a new one (after every batch: a connection came back, or one closed): they are
/// woken, and run with the other woken slots.
fn wake_queued(conns: &mut Conns<Endpoint>, env: &mut Env) {
    if env.upstreams.waiting() == 0 {
        return;
    }
    let mut ids = std::mem::take(&mut env.woken);
    env.upstreams.wake_queued(&mut ids, |id| conns.get_mut(id).is_some_and(|s| s.value.take_queue_turn()));
    for id in ids.drain(..) {
        env.wakes.wake(id);
    }
    env.woken = ids;
}

/// Puts a reloaded config in force for everything that is not fixed at start-up.
fn apply_config(env: &mut Env, control: &Control) {
    let new = control.current();
    set_buffer_budget(env, &new);
    env.upstreams.set_config(new.pool.clone());
    env.dns.set_config(&new);
    env.auth.configure(&new.auth);
    env.access = control.access_log().map(|sink| AccessLog::new(new.access_log_format, sink));
    env.minter.offer_h2(new.h2.enabled);
    env.cfg = new;
    env.set_client_cap();
}

/// Slabs per MiB of `limits.buffer_mib_per_worker`.
const SLABS_PER_MIB: usize = (1 << 20) / uring::SLAB_SIZE;

fn set_buffer_budget(env: &mut Env, cfg: &Config) {
    let slabs = cfg.limits.buffer_mib_per_worker.saturating_mul(SLABS_PER_MIB);
    env.uring.pool_mut().set_budget(slabs);
    env.stats[env.index].buffer_budget_slabs.store(slabs as u64, Ordering::Relaxed);
}

/// Most lines one worker puts in a connections view (one 64 KiB answer holds about a
/// thousand; the view says how many it left out).
const VIEW_LINES: usize = 2000;

/// `/debug/connections`, on the tick: answers a new ask with this worker's client
/// connections, then wakes this worker's admin connections whose view is ready.
fn answer_views(conns: &mut Conns<Endpoint>, env: &mut Env, control: &Control, answered: &mut u64, now: Instant) {
    let asked = control.connections_asked();
    if asked != *answered {
        *answered = asked;
        let mut snap = Snapshot { ask: asked, ..Snapshot::default() };
        for id in conns.ids() {
            let Some(slot) = conns.get_mut(id) else { continue };
            if slot.value.is_client() {
                snap.total += 1;
                if snap.lines.len() < VIEW_LINES {
                    snap.lines.push(slot.value.describe(id, now));
                }
            }
        }
        control.answer_connections(env.index, snap);
    }
    let mut ready = Vec::new();
    control.views_to_wake(env.index, now, |id| conns.get_mut(id).is_some(), &mut ready);
    for id in ready {
        env.wakes.wake(id);
    }
}

/// Closes connections that sit between requests (drain).
fn close_idle(conns: &mut Conns<Endpoint>, env: &mut Env, now: Instant) {
    for id in conns.ids() {
        let Some(slot) = conns.get_mut(id) else { continue };
        if slot.value.speaks_h2() {
            // An HTTP/2 session drains itself (GOAWAY, then its open streams finish).
            env.wakes.wake(id);
            continue;
        }
        if !slot.value.is_idle() {
            continue;
        }
        if let Some(c) = drive(slot, env, now, |c, _, _| {
            c.closing(conn::CloseReason::Drain);
            NextStep::Close
        }) {
            env.close(conns, c);
        }
    }
}

/// Closes every proxy connection (the drain deadline passed).
fn close_all(conns: &mut Conns<Endpoint>, env: &mut Env, now: Instant) {
    for id in conns.ids() {
        let Some(slot) = conns.get_mut(id) else { continue };
        if let Some(c) = drive(slot, env, now, |c, _, _| {
            c.closing(conn::CloseReason::Drain);
            NextStep::Close
        }) {
            env.close(conns, c);
        }
    }
}

fn accept(conns: &mut Conns<Endpoint>, env: &mut Env, now: Instant, role: Role, stream: TcpStream) -> Option<ConnId> {
    let stats = &env.stats[env.index];
    // Client slots not yet freed (closing ones still hold descriptors); admin connections
    // do not count against the client limit.
    let slots = stats.connection_slots.load(Ordering::Relaxed);
    if role == Role::Proxy && env.uring.pool().at_budget() {
        stats::bump(&stats.connections_rejected, 1);
        tracing::debug!(peer = %Addr(stream.peer_addr().ok()), "refused: limits.buffer_mib_per_worker is spent");
        return None;
    }
    if role == Role::Proxy && slots >= env.client_cap {
        stats::bump(&stats.connections_rejected, 1);
        tracing::debug!(peer = %Addr(stream.peer_addr().ok()), "refused: limits.max_connections_per_worker");
        return None; // dropping the fd closes it
    }
    let peer = stream.peer_addr().ok();
    if role == Role::Proxy {
        if let Some(peer) = peer {
            if !crate::acl::any_contains(&env.cfg.allow_clients, peer.ip()) {
                stats::bump(&stats.connections_rejected, 1);
                tracing::debug!(%peer, "refused: not in allow_clients");
                return None;
            }
        }
    }
    let _ = stream.set_nodelay(true);
    if role == Role::Proxy {
        stats::bump(&stats.connections_accepted, 1);
        stats::bump(&stats.connections_active, 1);
    }
    let id = conns.insert(Endpoint::Client(Connection::new(stream, peer, role, now)));
    tracing::debug!(conn = %id, peer = %Addr(peer), ?role, "accept");
    if role == Role::Proxy {
        stats::bump(&stats.connection_slots, 1);
    }
    let slot = conns.get_mut(id)?;
    drive(slot, env, now, |c, io, ctx| c.start(io, ctx))
}

fn fire_deadlines(conns: &mut Conns<Endpoint>, env: &mut Env, now: Instant) {
    for (key, id) in env.timers.due(now) {
        let Some(slot) = conns.get_mut(id) else {
            continue;
        };
        if slot.value.timer() != Some(key) {
            continue;
        }
        if let Some(c) = drive(slot, env, now, conn::on_deadline) {
            env.close(conns, c);
        }
    }
}

fn publish_ring_stats(env: &Env) {
    let s = env.uring.ring().stats();
    let w = &env.stats[env.index];
    w.ring_submitted.store(s.submitted, Ordering::Relaxed);
    w.ring_completed.store(s.completed, Ordering::Relaxed);
    w.ring_backlog.store(s.backlog_now as u64, Ordering::Relaxed);
    w.ring_enter_calls.store(s.enter_calls, Ordering::Relaxed);
    w.ring_fixed_files.store(s.fixed_files as u64, Ordering::Relaxed);
    w.ring_file_update_errors.store(s.file_update_errors, Ordering::Relaxed);
    w.pool_evictions.store(env.upstreams.stats.evictions, Ordering::Relaxed);
    w.pool_purged.store(env.upstreams.stats.purged, Ordering::Relaxed);
    w.upstream_queued.store(env.upstreams.stats.queued, Ordering::Relaxed);
    w.upstream_waiting.store(env.upstreams.waiting() as u64, Ordering::Relaxed);
    w.pool_idle.store(env.upstreams.len() as u64, Ordering::Relaxed);
    let registered_in_use = env.uring.pool().registered() - env.uring.pool().free_registered();
    w.slabs_registered_in_use.store(registered_in_use as u64, Ordering::Relaxed);
    w.slabs_heap_in_use.store((env.uring.pool().outstanding() - registered_in_use) as u64, Ordering::Relaxed);
    w.slab_heap_lends.store(env.uring.pool().heap_lends(), Ordering::Relaxed);
    let (waiting, waits) = env.uring.pool().waiters();
    w.buffer_waiting.store(waiting as u64, Ordering::Relaxed);
    w.buffer_waits.store(waits, Ordering::Relaxed);
    w.publish_auth(&env.auth.stats);
    env.dns.publish(w);
    // The sink (and its drop count) is shared by all workers: one of them reports it.
    if let (0, Some(a)) = (env.index, &env.access) {
        w.access_log_dropped.store(a.dropped_lines(), Ordering::Relaxed);
    }
    w.certs_minted.store(env.minter.stats.minted, Ordering::Relaxed);
    w.cert_cache_hits.store(env.minter.stats.cache_hits, Ordering::Relaxed);
    w.cert_mint_nanos.store(env.minter.stats.mint_nanos, Ordering::Relaxed);
}
