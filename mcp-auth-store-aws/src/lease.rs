//! Refresh leases: one secret per token key, `<prefix>/<namespace part>/lease/<token key part>`,
//! whose current value is `{"holder":"<holder token>","expires_at_ms":<unix ms>}`.
//!
//! Taking, renewing and releasing are compare-and-swaps of `AWSCURRENT` like every record write.
//! Releasing moves `AWSCURRENT` back to one fixed "free" version (labelled `MCPAUTH_FREE` so
//! Secrets Manager never removes it) instead of writing a new one: Secrets Manager keeps every
//! version of the last 24 hours against a quota of about 100 per secret, so a lease costs one new
//! version per acquisition and per renewal, none per release. A holder remembers the version it
//! wrote last, so a renewal is two calls (put, move) and a release one (move), with no read.

use std::time::{Duration, SystemTime};

use mcp_auth_core::record::RecordKey;
use mcp_auth_core::{RefreshLease, StoreError, TokenKey};

use crate::error::FailureKind;
use crate::{AwsSecretsStore, Creation, Held, State, names, now_ms, to_ms};

/// The version id of the free lease value.
const FREE_VERSION: &str = "mcp-auth-lease-free-0000000000000000";
/// Keeps the free version labelled (unlabelled versions may be removed by Secrets Manager).
const FREE_LABEL: &str = "MCPAUTH_FREE";
/// The free lease value.
const FREE_VALUE: &[u8] = b"{\"holder\":\"\",\"expires_at_ms\":0}";

/// Remembered leases that expired longer ago than this are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);

fn lease_value(lease: &RefreshLease) -> Vec<u8> {
    serde_json::json!({
        "holder": lease.token(),
        "expires_at_ms": to_ms(lease.expires_at()),
    })
    .to_string()
    .into_bytes()
}

/// `(holder, expires_at_ms)` of a stored lease value. An unreadable value counts as free: a lease
/// that nobody can be shown to hold must not block refreshes forever.
fn holder(bytes: &[u8]) -> (String, u64) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return (String::new(), 0);
    };
    (
        value
            .get("holder")
            .and_then(|h| h.as_str())
            .unwrap_or_default()
            .to_owned(),
        value
            .get("expires_at_ms")
            .and_then(|e| e.as_u64())
            .unwrap_or(0),
    )
}

/// True when someone other than `me` holds a lease that has not expired.
fn held_by_another(bytes: &[u8], me: &str) -> bool {
    let (who, expires_at_ms) = holder(bytes);
    !who.is_empty() && who != me && expires_at_ms > now_ms()
}

impl AwsSecretsStore {
    fn lease_what(key: &TokenKey) -> String {
        format!("refresh lease for {key}")
    }

    /// Every lease operation makes the next read of the tokens it guards go to Secrets Manager:
    /// a waiter that could not take the lease sees the outcome its holder records at once, and
    /// a new holder decides on the current record.
    fn invalidate_tokens(&self, key: &TokenKey) {
        self.shared
            .cache
            .invalidate(&self.names.record(&RecordKey::Tokens(key.clone())));
    }

    fn lease_tags(&self, key: &TokenKey) -> Vec<(String, String)> {
        let mut tags = vec![
            (
                names::TAG_NAMESPACE.to_owned(),
                self.names.namespace_part().to_owned(),
            ),
            (names::TAG_KIND.to_owned(), names::LEASE_KIND.to_owned()),
            (names::TAG_ISSUER.to_owned(), names::issuer_tag(&key.issuer)),
        ];
        tags.extend(self.shared.extra_tags.iter().cloned());
        tags
    }

    fn remember(&self, lease: &RefreshLease, lease_name: String, version: String) {
        let mut held = self.lock_held();
        let now = SystemTime::now();
        held.retain(|_, h| h.expires_at + FORGET_AFTER > now);
        held.insert(
            lease.token().to_owned(),
            Held {
                lease_name,
                version,
                expires_at: lease.expires_at(),
            },
        );
    }

    fn remembered(&self, lease: &RefreshLease, lease_name: &str) -> Option<String> {
        self.lock_held()
            .get(lease.token())
            .filter(|h| h.lease_name == lease_name)
            .map(|h| h.version.clone())
    }

    fn forget(&self, lease: &RefreshLease) {
        self.lock_held().remove(lease.token());
    }

    /// Creates the lease secret with the free version as its first value, so every later
    /// change, including the first acquisition, is a compare-and-swap and a release always has
    /// the free version to move back to. Idempotent: concurrent creators all succeed.
    async fn create_free(
        &self,
        key: &TokenKey,
        name: &str,
        what: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(), StoreError> {
        let tags = self.lease_tags(key);
        let how = Creation {
            key: None,
            extra_tags: &tags,
            token: Some(FREE_VERSION),
        };
        match self.create(name, what, FREE_VALUE, how, deadline).await {
            // Created, or someone else created it and may already hold it: the compare-and-swap
            // from the free version decides.
            Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn acquire_lease(
        &self,
        key: &TokenKey,
        ttl: Duration,
    ) -> Result<Option<RefreshLease>, StoreError> {
        let name = self.names.lease(key);
        let what = Self::lease_what(key);
        self.invalidate_tokens(key);
        let lease = RefreshLease::new(key.clone(), ttl);
        let bytes = lease_value(&lease);
        let deadline = self.deadline();
        // Read first: a write while another holder has the lease would only add a version.
        let written = match self.read_state(&name, &what, deadline).await? {
            State::Absent { .. } => {
                self.create_free(key, &name, &what, deadline).await?;
                self.cas(&name, &what, &bytes, FREE_VERSION, deadline).await
            }
            State::Value { bytes: current, .. } if held_by_another(&current, lease.token()) => {
                return Ok(None);
            }
            State::Value { version, .. } => {
                self.cas(&name, &what, &bytes, &version, deadline).await
            }
            State::Tombstone { .. } => return Ok(None),
        };
        match written {
            Ok(version) => {
                self.remember(&lease, name, version);
                Ok(Some(lease))
            }
            // Another caller took it first.
            Err(StoreError::Conflict { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn renew_lease(
        &self,
        lease: &RefreshLease,
        ttl: Duration,
    ) -> Result<Option<RefreshLease>, StoreError> {
        let key = lease.key();
        let name = self.names.lease(key);
        let what = Self::lease_what(key);
        self.invalidate_tokens(key);
        let renewed = lease.renewed(ttl);
        let bytes = lease_value(&renewed);
        let deadline = self.deadline();
        // The usual case: this instance wrote the current version itself.
        if let Some(version) = self.remembered(lease, &name) {
            match self.cas(&name, &what, &bytes, &version, deadline).await {
                Ok(version) => {
                    self.remember(&renewed, name, version);
                    return Ok(Some(renewed));
                }
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let written = match self.read_state(&name, &what, deadline).await? {
            State::Absent { .. } => {
                self.create_free(key, &name, &what, deadline).await?;
                self.cas(&name, &what, &bytes, FREE_VERSION, deadline).await
            }
            State::Value { bytes: current, .. } if held_by_another(&current, lease.token()) => {
                self.forget(lease);
                return Ok(None);
            }
            // Ours (live or lapsed), or free: take it (back).
            State::Value { version, .. } => {
                self.cas(&name, &what, &bytes, &version, deadline).await
            }
            State::Tombstone { .. } => return Ok(None),
        };
        match written {
            Ok(version) => {
                self.remember(&renewed, name, version);
                Ok(Some(renewed))
            }
            Err(StoreError::Conflict { .. }) => {
                self.forget(lease);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn release_lease(&self, lease: &RefreshLease) -> Result<bool, StoreError> {
        let key = lease.key();
        let name = self.names.lease(key);
        let what = Self::lease_what(key);
        self.invalidate_tokens(key);
        let deadline = self.deadline();
        let remembered = self.remembered(lease, &name);
        if let Some(version) = &remembered
            && self
                .shared
                .aws
                .move_current(&name, version, FREE_VERSION, deadline)
                .await
                .is_ok()
        {
            self.forget(lease);
            return Ok(true);
        }
        // Not remembered here, renewed elsewhere, taken over, the free version not created yet,
        // or the move landed with its answer lost: look.
        let result = match self.read_state(&name, &what, deadline).await? {
            // Our move landed (or whoever took over from us freed it since: free either way).
            State::Value { version, .. } if remembered.is_some() && version == FREE_VERSION => {
                Ok(true)
            }
            State::Value {
                bytes: current,
                version,
            } if holder(&current).0 == lease.token() => {
                // Idempotent: once the free version exists this changes nothing.
                self.shared
                    .aws
                    .put_version(&name, FREE_VERSION, FREE_VALUE, FREE_LABEL, deadline)
                    .await
                    .map_err(|f| f.into_store_error(&what))?;
                match self
                    .shared
                    .aws
                    .move_current(&name, &version, FREE_VERSION, deadline)
                    .await
                {
                    Ok(()) => Ok(true),
                    Err(refused) => match self.landed(&name, FREE_VERSION, deadline).await {
                        // Free now (ours, or freed by whoever took over from us meanwhile).
                        Ok(true) => Ok(true),
                        Ok(false) if refused.kind == FailureKind::Transient => {
                            Err(refused.into_store_error(&what))
                        }
                        Ok(false) => Ok(false),
                        Err(read) => Err(read.into_store_error(&what)),
                    },
                }
            }
            _ => Ok(false),
        };
        self.forget(lease);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_values() {
        assert_eq!(holder(FREE_VALUE), (String::new(), 0));
        assert_eq!(holder(b"garbage"), (String::new(), 0));
        let far = now_ms() + 60_000;
        let held = format!("{{\"holder\":\"abc\",\"expires_at_ms\":{far}}}");
        assert!(held_by_another(held.as_bytes(), "xyz"));
        assert!(!held_by_another(held.as_bytes(), "abc"));
        let lapsed = "{\"holder\":\"abc\",\"expires_at_ms\":1}";
        assert!(!held_by_another(lapsed.as_bytes(), "xyz"));
        assert!(!held_by_another(FREE_VALUE, "xyz"));
        assert!((32..=64).contains(&FREE_VERSION.len()));
    }
}
