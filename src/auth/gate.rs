//! A worker's gate: decides whether a request's `Proxy-Authorization` value admits it,
//! without ever running the slow hash on the ring.
//!
//! - **The cache.** A verified value is remembered for [`GOOD_TTL`], a refused one for
//!   [`BAD_TTL`], keyed by a keyed 128-bit hash of the header value (never the value
//!   itself), at most [`CACHE_ENTRIES`] per worker (the entry used least recently makes
//!   room). A request whose value is cached costs one hash of its header and no lock. On
//!   a miss the worker looks in the process-wide cache of verified values
//!   ([`Shared`]) before anything else, so a credential is hashed once per process,
//!   not once per worker.
//! - **The helper thread.** A value not in the cache is parsed, then checked against
//!   the user's argon2 hash (an unknown user against a decoy hash, so it takes as long) on
//!   the worker's own helper thread, started the first time it is needed. The asking
//!   connection is parked with no operation in flight, like a DNS miss: the thread answers
//!   over a channel and writes a byte to a pipe the ring polls, and the worker wakes every
//!   connection that waited for that value (they ask again and hit the cache). At most
//!   [`MAX_PENDING`] distinct values wait at once; past that the answer is "busy".
//! - **Failures** (wrong or malformed credentials) are counted per client address in the
//!   process-wide failure table ([`Shared`]); a locked address's credentials that no
//!   worker has verified are refused without a check.
//! - **Reload.** New credentials keep the cached verdicts whose user still has the very
//!   hash they were checked against; the others are dropped. An answer checked against a
//!   hash that changed meanwhile is not cached (its waiters ask again).

use super::basic;
use super::shared::{Key, Known, Shared};
use super::users::{self, Credentials, DECOY_HASH};
use super::{AuthConfig, Verdict};
use lru::LruCache;
use std::collections::HashMap;
use std::io::{PipeReader, PipeWriter, Read, Write};
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use uring::ConnId;

/// How long a verified credential is admitted without checking its hash again.
pub const GOOD_TTL: Duration = Duration::from_secs(120);
/// How long a refused credential is refused without checking it again.
pub const BAD_TTL: Duration = Duration::from_secs(30);
/// Verdicts cached per worker (allocated as they come: with authentication off, nothing).
pub const CACHE_ENTRIES: NonZeroUsize = NonZeroUsize::new(4096).unwrap();
/// Distinct credentials being checked at once per worker (about 50 ms each).
pub const MAX_PENDING: usize = 64;

struct Job {
    key: Key,
    user: Arc<str>,
    password: Vec<u8>,
    hash: Option<Arc<str>>,
}

struct Answer {
    key: Key,
    user: Arc<str>,
    hash: Option<Arc<str>>,
    good: bool,
}

/// Counters for metrics (copied to the worker's block on its tick).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AuthStats {
    /// Requests admitted on their credentials.
    pub admitted: u64,
    /// Requests without credentials (407).
    pub missing: u64,
    /// Requests with wrong or malformed credentials (407, counted against the address).
    pub invalid: u64,
    /// Requests refused because their address is locked (429).
    pub locked: u64,
    /// Requests refused because too many checks were waiting (503).
    pub busy: u64,
    /// Slow hashes run.
    pub verifications: u64,
}

/// The helper thread's ends.
struct Verifier {
    jobs: mpsc::Sender<Job>,
    answers: mpsc::Receiver<Answer>,
}

/// A worker's authentication state.
pub struct Gate {
    /// The users in force; None: authentication is off.
    users: Option<Arc<Credentials>>,
    max_failures: u32,
    lockout: Duration,
    cache: LruCache<Key, Known>,
    waiting: HashMap<Key, Vec<ConnId>>,
    verifier: Option<Verifier>,
    wake: PipeReader,
    /// Handed to the helper thread when it starts.
    wake_tx: Option<PipeWriter>,
    shared: Arc<Shared>,
    worker: usize,
    pub stats: AuthStats,
}

impl Gate {
    /// A gate for `config`; its helper thread starts when a credential is first checked.
    pub fn new(config: &AuthConfig, shared: Arc<Shared>, worker: usize) -> std::io::Result<Gate> {
        let (wake, wake_tx) = std::io::pipe()?;
        let mut gate = Gate {
            users: None,
            max_failures: config.max_failures,
            lockout: config.lockout,
            cache: LruCache::sparse(CACHE_ENTRIES),
            waiting: HashMap::new(),
            verifier: None,
            wake,
            wake_tx: Some(wake_tx),
            shared,
            worker,
            stats: AuthStats::default(),
        };
        gate.configure(config);
        Ok(gate)
    }

    /// Puts a (re)loaded configuration in force.
    pub fn configure(&mut self, config: &AuthConfig) {
        self.max_failures = config.max_failures;
        self.lockout = config.lockout;
        let new = config.credentials.clone();
        match &new {
            None => self.cache.clear(),
            Some(users) => self.cache.retain(|_, k| still_valid(users, &k.user, k.hash.as_ref())),
        }
        self.users = new;
    }

    /// Whether requests must carry credentials.
    pub fn enabled(&self) -> bool {
        self.users.is_some()
    }

    /// The fd the ring polls; readable when answers are waiting.
    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// The verdict on a request from `client` whose `Proxy-Authorization` value is `value`
    /// (None: absent). `Pending` parks `who` until the answer is in; it is then woken
    /// (`on_wake`) and asks again.
    pub fn check(&mut self, value: Option<&[u8]>, client: IpAddr, now: Instant, who: ConnId) -> Verdict {
        let Some(users) = self.users.clone() else {
            return Verdict::Admitted { user: None };
        };
        let Some(value) = value else {
            self.stats.missing += 1;
            return Verdict::Challenge;
        };
        let key = self.shared.key(value);
        let known = match self.cache.get(&key) {
            Some(k) if k.until > now && k.good => {
                self.stats.admitted += 1;
                return Verdict::Admitted { user: Some(k.user.clone()) };
            }
            Some(k) => k.until > now,
            None => false,
        };
        if !known {
            // Another worker may have verified it (checked against the users in force here).
            if let Some(k) = self.shared.verified(key, now).filter(|k| still_valid(&users, &k.user, k.hash.as_ref())) {
                self.stats.admitted += 1;
                let user = k.user.clone();
                self.cache.put(key, k);
                return Verdict::Admitted { user: Some(user) };
            }
        }
        if let Some(retry_after) = self.shared.failures.locked_for(client, now) {
            self.stats.locked += 1;
            return Verdict::Locked { retry_after };
        }
        if known {
            return self.failed(client, now);
        }
        let Ok(given) = basic::parse(value) else {
            return self.failed(client, now);
        };
        if let Some(waiters) = self.waiting.get_mut(&key) {
            waiters.push(who);
            return Verdict::Pending;
        }
        if self.waiting.len() >= MAX_PENDING {
            self.stats.busy += 1;
            return Verdict::Busy;
        }
        let job = Job {
            key,
            user: users.name_of(&given.user).unwrap_or_else(|| Arc::from(given.user.as_str())),
            hash: users.hash_of(&given.user).cloned(),
            password: given.password,
        };
        if !self.send(job) {
            self.stats.busy += 1;
            return Verdict::Busy;
        }
        self.stats.verifications += 1;
        self.waiting.insert(key, vec![who]);
        Verdict::Pending
    }

    /// A failed attempt from `client`: counted, and answered with the challenge.
    fn failed(&mut self, client: IpAddr, now: Instant) -> Verdict {
        self.stats.invalid += 1;
        if self.shared.failures.record(client, now, self.max_failures, self.lockout) {
            tracing::warn!(
                %client,
                failures = self.max_failures,
                lockout_secs = self.lockout.as_secs_f64(),
                "proxy authentication: address locked after failed attempts"
            );
        }
        Verdict::Challenge
    }

    /// Sends a job to the helper thread, starting it the first time.
    fn send(&mut self, job: Job) -> bool {
        if self.verifier.is_none() {
            let Some(wake) = self.wake_tx.take() else { return false };
            let (jobs, job_rx) = mpsc::channel::<Job>();
            let (answer_tx, answers) = mpsc::channel::<Answer>();
            let spawned = std::thread::Builder::new()
                .name(format!("sluice-auth-{}", self.worker))
                .spawn(move || verify_loop(job_rx, answer_tx, wake));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "proxy authentication: cannot start the helper thread");
                return false;
            }
            self.verifier = Some(Verifier { jobs, answers });
        }
        self.verifier.as_ref().is_some_and(|v| v.jobs.send(job).is_ok())
    }

    /// Called when the wake fd polled readable: caches the answers and returns the
    /// connections to resume.
    pub fn on_wake(&mut self, now: Instant) -> Vec<ConnId> {
        let mut sink = [0u8; 256];
        let _ = self.wake.read(&mut sink);
        let mut resume = Vec::new();
        let Some(v) = self.verifier.as_ref() else { return resume };
        while let Ok(a) = v.answers.try_recv() {
            if let Some(w) = self.waiting.remove(&a.key) {
                resume.extend(w);
            }
            // Checked against the hash in force (a reload may have changed it meanwhile).
            if self.users.as_ref().is_some_and(|u| still_valid(u, &a.user, a.hash.as_ref())) {
                let until = now + if a.good { GOOD_TTL } else { BAD_TTL };
                let known = Known { user: a.user, hash: a.hash, good: a.good, until };
                self.shared.remember(a.key, &known);
                self.cache.put(a.key, known);
            }
        }
        resume
    }
}

/// A verdict about `user` checked against `hash` still holds under `users`: the user
/// has that very hash (or is still unknown, for a verdict on an unknown user).
fn still_valid(users: &Credentials, user: &str, hash: Option<&Arc<str>>) -> bool {
    users.hash_of(user).map(|h| &**h) == hash.map(|h| &**h)
}

fn verify_loop(jobs: mpsc::Receiver<Job>, answers: mpsc::Sender<Answer>, mut wake: PipeWriter) {
    while let Ok(mut job) = jobs.recv() {
        // An unknown user is checked against the decoy, so it takes as long as a known one.
        let matches = users::verify(&job.password, job.hash.as_deref().unwrap_or(DECOY_HASH));
        job.password.fill(0);
        let answer = Answer { key: job.key, good: matches && job.hash.is_some(), user: job.user, hash: job.hash };
        if answers.send(answer).is_err() || wake.write_all(&[1]).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64ct::{Base64, Encoding};
    use uring::Conns;

    fn ids(n: usize) -> (Conns<()>, Vec<ConnId>) {
        let mut c = Conns::new();
        let v = (0..n).map(|_| c.insert(())).collect();
        (c, v)
    }

    fn basic(user: &str, pw: &str) -> Vec<u8> {
        format!("Basic {}", Base64::encode_string(format!("{user}:{pw}").as_bytes())).into_bytes()
    }

    fn config(users: &[(&str, &str)]) -> AuthConfig {
        let text: String =
            users.iter().map(|(u, pw)| format!("{u}:{}\n", users::hash_password(pw.as_bytes()).unwrap())).collect();
        AuthConfig {
            file: Some("users".into()),
            credentials: Some(Arc::new(Credentials::parse(&text).unwrap())),
            max_failures: 3,
            lockout: Duration::from_secs(60),
            ..AuthConfig::default()
        }
    }

    fn gate(config: &AuthConfig) -> Gate {
        Gate::new(config, Arc::new(Shared::default()), 0).unwrap()
    }

    /// Waits for the helper thread's answers; returns the woken ids.
    fn answers(g: &mut Gate) -> Vec<ConnId> {
        for _ in 0..500 {
            let got = g.on_wake(Instant::now());
            if !got.is_empty() {
                return got;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no answer from the helper thread");
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    #[test]
    fn off_admits_everyone_without_a_thread() {
        let mut g = gate(&AuthConfig::default());
        let (_c, id) = ids(1);
        assert!(!g.enabled());
        assert_eq!(g.check(None, CLIENT, Instant::now(), id[0]), Verdict::Admitted { user: None });
        assert!(g.verifier.is_none(), "no helper thread while authentication is off");
    }

    #[test]
    fn a_good_credential_is_checked_once_off_the_ring_then_cached() {
        let mut g = gate(&config(&[("alice", "pw1")]));
        let (_c, id) = ids(2);
        let t0 = Instant::now();
        let v = basic("alice", "pw1");
        assert_eq!(g.check(None, CLIENT, t0, id[0]), Verdict::Challenge, "no credentials: the challenge");
        assert_eq!(g.check(Some(&v), CLIENT, t0, id[0]), Verdict::Pending);
        assert_eq!(g.check(Some(&v), CLIENT, t0, id[1]), Verdict::Pending, "the second asker joins the first check");
        assert_eq!(answers(&mut g), id, "both waiters are woken");
        let t1 = Instant::now();
        assert_eq!(g.check(Some(&v), CLIENT, t1, id[0]), Verdict::Admitted { user: Some("alice".into()) });
        assert_eq!(g.check(Some(&v), CLIENT, t1, id[1]), Verdict::Admitted { user: Some("alice".into()) });
        assert_eq!(g.stats.verifications, 1, "one slow hash for three requests");
        assert_eq!(g.stats.admitted, 2);
        // Past its lifetime the credential is checked again.
        assert_eq!(g.check(Some(&v), CLIENT, t1 + GOOD_TTL, id[0]), Verdict::Pending);
    }

    #[test]
    fn wrong_unknown_and_malformed_credentials_fail_and_lock_the_address() {
        let mut g = gate(&config(&[("alice", "pw1")]));
        let (_c, id) = ids(1);
        let good = basic("alice", "pw1");
        // Verified before the lock: stays admitted while the address is locked.
        assert_eq!(g.check(Some(&good), CLIENT, Instant::now(), id[0]), Verdict::Pending);
        answers(&mut g);
        let now = Instant::now();
        for bad in [basic("alice", "wrong"), basic("mallory", "pw1")] {
            assert_eq!(g.check(Some(&bad), CLIENT, now, id[0]), Verdict::Pending);
            answers(&mut g);
            assert_eq!(g.check(Some(&bad), CLIENT, now, id[0]), Verdict::Challenge, "refused after the check");
        }
        assert_eq!(g.stats.verifications, 3, "an unknown user costs a check too (the decoy)");
        assert_eq!(g.shared.failures.locked_for(CLIENT, now), None, "two failures of three");
        assert_eq!(g.check(Some(b"Basic !!"), CLIENT, now, id[0]), Verdict::Challenge, "malformed: no check");
        assert_eq!(g.stats.verifications, 3);
        assert_eq!(g.stats.invalid, 3);
        assert_eq!(g.shared.failures.locked_for(CLIENT, now), Some(Duration::from_secs(60)), "the third failure locks");
        let other = basic("alice", "guess");
        assert_eq!(g.check(Some(&other), CLIENT, now, id[0]), Verdict::Locked { retry_after: Duration::from_secs(60) });
        assert_eq!(g.stats.verifications, 3, "a locked address's guesses are never hashed");
        assert_eq!(g.check(Some(&good), CLIENT, now, id[0]), Verdict::Admitted { user: Some("alice".into()) });
        let elsewhere: IpAddr = "192.0.2.8".parse().unwrap();
        assert_eq!(g.check(Some(&other), elsewhere, now, id[0]), Verdict::Pending, "another address is not locked");
    }

    #[test]
    fn a_credential_one_worker_verified_is_admitted_by_the_others_even_when_locked() {
        let cfg = config(&[("alice", "pw1")]);
        let shared = Arc::new(Shared::default());
        let mut a = Gate::new(&cfg, shared.clone(), 0).unwrap();
        let mut b = Gate::new(&cfg, shared.clone(), 1).unwrap();
        let (_c, id) = ids(1);
        let v = basic("alice", "pw1");
        assert_eq!(a.check(Some(&v), CLIENT, Instant::now(), id[0]), Verdict::Pending);
        answers(&mut a);
        let now = Instant::now();
        for _ in 0..3 {
            shared.failures.record(CLIENT, now, 3, Duration::from_secs(60));
        }
        assert!(shared.failures.locked_for(CLIENT, now).is_some());
        assert_eq!(b.check(Some(&v), CLIENT, now, id[0]), Verdict::Admitted { user: Some("alice".into()) });
        assert_eq!(b.stats.verifications, 0, "hashed once per process, not per worker");
        assert!(b.verifier.is_none());
        // A refusal is not shared: the other worker checks for itself.
        let wrong = basic("alice", "nope");
        assert_eq!(a.check(Some(&wrong), "192.0.2.99".parse().unwrap(), now, id[0]), Verdict::Pending);
        answers(&mut a);
        assert!(shared.verified(shared.key(&wrong), Instant::now()).is_none());
    }

    #[test]
    fn too_many_pending_checks_answer_busy() {
        let mut g = gate(&config(&[("alice", "pw1")]));
        let (_c, id) = ids(1);
        let now = Instant::now();
        // Checks that are still waiting count no failure, so no lock gets in the way.
        for i in 0..MAX_PENDING {
            let v = basic("alice", &format!("guess{i}"));
            assert_eq!(g.check(Some(&v), CLIENT, now, id[0]), Verdict::Pending, "{i}");
        }
        assert_eq!(g.check(Some(&basic("alice", "one-more")), CLIENT, now, id[0]), Verdict::Busy);
        assert_eq!(g.stats.busy, 1);
    }

    #[test]
    fn a_reload_keeps_only_verdicts_on_unchanged_hashes() {
        let cfg = config(&[("alice", "pw1"), ("bob", "pw2")]);
        let mut g = gate(&cfg);
        let (_c, id) = ids(1);
        let (alice, bob, carol) = (basic("alice", "pw1"), basic("bob", "pw2"), basic("carol", "pw3"));
        for v in [&alice, &bob, &carol] {
            assert_eq!(g.check(Some(v), CLIENT, Instant::now(), id[0]), Verdict::Pending);
            answers(&mut g);
        }
        // bob's password changes, carol is added; alice's line stays as it was.
        let users = cfg.credentials.as_deref().unwrap();
        let text = format!(
            "alice:{}\nbob:{}\ncarol:{}\n",
            users.hash_of("alice").unwrap(),
            users::hash_password(b"new").unwrap(),
            users::hash_password(b"pw3").unwrap()
        );
        g.configure(&AuthConfig { credentials: Some(Arc::new(Credentials::parse(&text).unwrap())), ..cfg });
        let now = Instant::now();
        assert_eq!(g.check(Some(&alice), CLIENT, now, id[0]), Verdict::Admitted { user: Some("alice".into()) });
        assert_eq!(g.check(Some(&bob), CLIENT, now, id[0]), Verdict::Pending, "bob's old password is checked again");
        answers(&mut g);
        assert_eq!(g.check(Some(&bob), CLIENT, now, id[0]), Verdict::Challenge);
        assert_eq!(g.check(Some(&carol), CLIENT, now, id[0]), Verdict::Pending, "carol's refusal was dropped");
        answers(&mut g);
        assert_eq!(g.check(Some(&carol), CLIENT, now, id[0]), Verdict::Admitted { user: Some("carol".into()) });
        g.configure(&AuthConfig::default());
        assert_eq!(g.check(None, CLIENT, now, id[0]), Verdict::Admitted { user: None }, "switched off");
    }
}
