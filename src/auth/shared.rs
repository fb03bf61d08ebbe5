//! What the workers' gates share (one per process, in `Control`): the failure table, the
//! keys of the credential hash, and a second-level cache of verified credentials.
//!
//! A worker looks here only when its own cache misses, which is the slow path anyway (a
//! password check would follow): a credential verified by one worker is then admitted by
//! the others without hashing it again, and without a lockout getting in the way (a
//! client's connections land on any worker). A request whose credentials are in its
//! worker's own cache takes no lock.

use super::failures::Failures;
use lru::LruCache;
use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Verified credentials remembered for every worker (allocated as they come).
pub const SHARED_ENTRIES: NonZeroUsize = NonZeroUsize::new(16_384).unwrap();

/// A keyed 128-bit hash of a `Proxy-Authorization` value (the value itself is never kept).
pub(super) type Key = u128;

/// A verdict on a credential.
#[derive(Debug, Clone)]
pub(super) struct Known {
    pub user: Arc<str>,
    /// The hash it was checked against (None: the user was unknown).
    pub hash: Option<Arc<str>>,
    pub good: bool,
    pub until: Instant,
}

/// The process-wide part of proxy authentication.
pub struct Shared {
    /// Failed attempts per client address.
    pub failures: Failures,
    keys: (RandomState, RandomState),
    verified: Mutex<LruCache<Key, Known>>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            failures: Failures::default(),
            keys: (RandomState::new(), RandomState::new()),
            verified: Mutex::new(LruCache::sparse(SHARED_ENTRIES)),
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("failures", &self.failures).finish_non_exhaustive()
    }
}

impl Shared {
    pub(super) fn key(&self, value: &[u8]) -> Key {
        (u128::from(self.keys.0.hash_one(value)) << 64) | u128::from(self.keys.1.hash_one(value))
    }

    fn verified_table(&self) -> std::sync::MutexGuard<'_, LruCache<Key, Known>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A credential some worker verified, still within its lifetime.
    pub(super) fn verified(&self, key: Key, now: Instant) -> Option<Known> {
        self.verified_table().get(&key).filter(|k| k.good && k.until > now).cloned()
    }

    /// Remembers a verified credential for the other workers.
    pub(super) fn remember(&self, key: Key, known: &Known) {
        if known.good {
            self.verified_table().put(key, known.clone());
        }
    }
}
