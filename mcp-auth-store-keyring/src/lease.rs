//! The refresh-lease table of one namespace and the three lease operations on it. On Unix the
//! table is kept in a file beside the namespace's lock file and only read and changed under the
//! namespace's lease lock (see `lock.rs`), so a lease is exclusive across processes.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mcp_auth_core::{RefreshLease, TokenKey};
use serde::{Deserialize, Serialize};

/// Leases expired this long ago are dropped when the table is rewritten (their holder died
/// without releasing them); younger expired ones stay, so that their holder can still renew or
/// release them like in every other store.
const PRUNE_AFTER_MS: u64 = 60 * 60 * 1000;

/// One refresh lease: its holder's random token (no secret: it only names the holder) and when
/// it expires, in milliseconds since the Unix epoch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct LeaseEntry {
    holder: String,
    expires_ms: u64,
}

/// The refresh leases of one namespace, by token key storage key.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct LeaseTable(BTreeMap<String, LeaseEntry>);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(millis).unwrap_or(0)
}

fn from_epoch_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .unwrap_or(UNIX_EPOCH)
}

impl LeaseTable {
    /// Whether no lease is recorded (the file can be removed).
    #[cfg_attr(
        not(unix),
        allow(dead_code, reason = "there is no lease file off Unix")
    )]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn put(&mut self, key: &TokenKey, holder: &str, ttl: Duration, now: u64) -> RefreshLease {
        let expires_ms = now.saturating_add(millis(ttl));
        self.0.insert(
            key.storage_key(),
            LeaseEntry {
                holder: holder.to_owned(),
                expires_ms,
            },
        );
        self.0
            .retain(|_, e| e.expires_ms.saturating_add(PRUNE_AFTER_MS) > now);
        RefreshLease::from_parts(key.clone(), holder.to_owned(), from_epoch_ms(expires_ms))
    }

    /// `TokenStore::try_acquire_refresh_lease`: a free or expired lease is taken by a new
    /// holder; `None` while another holder's lease is live. The table changed iff `Some`.
    pub(crate) fn acquire(
        &mut self,
        key: &TokenKey,
        ttl: Duration,
        now: SystemTime,
    ) -> Option<RefreshLease> {
        let now = epoch_ms(now);
        if self
            .0
            .get(&key.storage_key())
            .is_some_and(|e| e.expires_ms > now)
        {
            return None;
        }
        let fresh = RefreshLease::new(key.clone(), ttl);
        Some(self.put(key, fresh.token(), ttl, now))
    }

    /// `TokenStore::renew_refresh_lease`: extends the holder's own lease, or takes it back when
    /// it is free (expired or released); `None` while another holder's lease is live. The table
    /// changed iff `Some`.
    pub(crate) fn renew(
        &mut self,
        lease: &RefreshLease,
        ttl: Duration,
        now: SystemTime,
    ) -> Option<RefreshLease> {
        let now = epoch_ms(now);
        if self
            .0
            .get(&lease.key().storage_key())
            .is_some_and(|e| e.holder != lease.token() && e.expires_ms > now)
        {
            return None;
        }
        Some(self.put(lease.key(), lease.token(), ttl, now))
    }

    /// `TokenStore::release_refresh_lease`: removes the lease if `lease`'s holder has it. The
    /// table changed iff `true`.
    pub(crate) fn release(&mut self, lease: &RefreshLease) -> bool {
        let slot = lease.key().storage_key();
        if self.0.get(&slot).is_some_and(|e| e.holder == lease.token()) {
            self.0.remove(&slot);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use mcp_auth_core::{IssuerId, ResourceUri};

    use super::*;

    fn key(i: u32) -> TokenKey {
        TokenKey::new(
            IssuerId::new("https://as.example").unwrap(),
            ResourceUri::new(format!("https://mcp.example/{i}")).unwrap(),
        )
    }

    #[test]
    fn acquire_renew_release() {
        let mut table = LeaseTable::default();
        let t0 = SystemTime::now();
        let ttl = Duration::from_secs(10);
        let a = table.acquire(&key(0), ttl, t0).unwrap();
        assert!(
            table.acquire(&key(0), ttl, t0).is_none(),
            "live lease taken"
        );
        assert!(
            table.acquire(&key(1), ttl, t0).is_some(),
            "keys are independent"
        );
        let renewed = table.renew(&a, ttl, t0 + Duration::from_secs(5)).unwrap();
        assert_eq!(renewed.token(), a.token());
        assert!(renewed.expires_at() > a.expires_at());
        // After expiry another holder takes it; the old holder can neither renew nor release.
        let later = t0 + Duration::from_secs(60);
        let b = table.acquire(&key(0), ttl, later).unwrap();
        assert_ne!(b.token(), a.token());
        assert!(table.renew(&a, ttl, later).is_none());
        assert!(!table.release(&a));
        assert!(table.release(&b));
        assert!(!table.release(&b));
        // Free again: the old holder takes it back by renewing.
        assert_eq!(table.renew(&a, ttl, later).unwrap().token(), a.token());
        assert!(table.acquire(&key(0), ttl, later).is_none());
    }

    #[test]
    fn an_expired_lease_stays_renewable_until_pruned() {
        let mut table = LeaseTable::default();
        let t0 = SystemTime::now();
        let a = table.acquire(&key(0), Duration::from_secs(1), t0).unwrap();
        let later = t0 + Duration::from_secs(2);
        assert!(table.release(&a), "its own expired lease is released");
        let a = table
            .acquire(&key(0), Duration::from_secs(1), later)
            .unwrap();
        // Another key's write long after prunes it.
        let much_later = later + Duration::from_millis(PRUNE_AFTER_MS + 10_000);
        table.acquire(&key(1), Duration::from_secs(1), much_later);
        assert!(!table.release(&a), "a long-dead lease was kept");
    }

    #[test]
    fn the_table_round_trips_as_json_without_secrets() {
        let mut table = LeaseTable::default();
        table.acquire(&key(0), Duration::from_secs(1), SystemTime::now());
        let json = serde_json::to_string(&table).unwrap();
        assert!(
            json.contains("\"holder\"") && json.contains("\"expires_ms\""),
            "{json}"
        );
        let back: LeaseTable = serde_json::from_str(&json).unwrap();
        assert_eq!(back.0, table.0);
    }
}
