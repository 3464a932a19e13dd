//! The read cache: what `GetSecretValue` returned for a record, with its version, for a short
//! TTL.
//!
//! Writes never trust it: every put and delete is a compare-and-swap against the version AWS
//! holds, so a stale entry can at worst make a write fail with `Conflict` (which drops the entry),
//! never overwrite a newer record. Every write through the store drops the entry of its record
//! before and after it runs; a read that raced with a write does not put its answer back (the
//! epoch check below). Entries hold secrets: they are zeroized when dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use mcp_auth_core::Version;
use secrecy::{ExposeSecret, SecretSlice};

/// Most entries kept; past it, expired entries are dropped, then everything.
const MAX_ENTRIES: usize = 10_000;

struct Entry {
    bytes: SecretSlice<u8>,
    version: Version,
    at: Instant,
}

pub(crate) struct Cache {
    ttl: Duration,
    entries: Mutex<HashMap<String, Entry>>,
    /// Bumped by every invalidation; a read only fills the cache if no invalidation happened
    /// since it started.
    epoch: AtomicU64,
}

impl Cache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // Nothing panics while holding the lock; a poisoned map is still consistent.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    /// The fresh entry for `name`.
    pub(crate) fn get(&self, name: &str) -> Option<(Vec<u8>, Version)> {
        if !self.enabled() {
            return None;
        }
        let entries = self.lock();
        let entry = entries.get(name)?;
        (entry.at.elapsed() < self.ttl)
            .then(|| (entry.bytes.expose_secret().to_vec(), entry.version.clone()))
    }

    /// The epoch to pass to [`Cache::fill`] for a read starting now.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Records what a read that started at `epoch` found, unless an invalidation happened since.
    pub(crate) fn fill(&self, name: &str, bytes: &[u8], version: &Version, epoch: u64) {
        if !self.enabled() {
            return;
        }
        let mut entries = self.lock();
        if self.epoch.load(Ordering::SeqCst) != epoch {
            return;
        }
        if entries.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            entries.retain(|_, e| e.at.elapsed() < ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            name.to_owned(),
            Entry {
                bytes: SecretSlice::from(bytes.to_vec()),
                version: version.clone(),
                at: Instant::now(),
            },
        );
    }

    /// Drops the entry for `name`, and stops reads in flight from filling the cache.
    pub(crate) fn invalidate(&self, name: &str) {
        let mut entries = self.lock();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        entries.remove(name);
    }

    /// Drops every entry.
    pub(crate) fn clear(&self) {
        let mut entries = self.lock();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        entries.clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_entries_are_served_until_ttl_or_invalidation() {
        let cache = Cache::new(Duration::from_millis(200));
        let epoch = cache.epoch();
        cache.fill("a", b"one", &Version::new("v1"), epoch);
        assert_eq!(cache.get("a"), Some((b"one".to_vec(), Version::new("v1"))));
        cache.invalidate("a");
        assert_eq!(cache.get("a"), None);
        // A read that started before the invalidation does not fill.
        cache.fill("a", b"old", &Version::new("v0"), epoch);
        assert_eq!(cache.get("a"), None);
        let epoch = cache.epoch();
        cache.fill("a", b"two", &Version::new("v2"), epoch);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(cache.get("a"), None);
    }

    #[test]
    fn zero_ttl_disables() {
        let cache = Cache::new(Duration::ZERO);
        cache.fill("a", b"one", &Version::new("v1"), cache.epoch());
        assert_eq!(cache.get("a"), None);
        assert_eq!(cache.len(), 0);
    }
}
