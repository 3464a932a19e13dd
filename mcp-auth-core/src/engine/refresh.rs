//! Refreshing tokens without ever losing a grant.
//!
//! Authorization servers rotate refresh tokens and treat a rotated-away token presented again as
//! theft: they revoke the whole grant and the user must log in again. So a refresh token is sent
//! by one process at a time, and only when nobody can still be holding its successor:
//!
//! 1. The sender holds the store's refresh lease, renewed on a heartbeat (a dead sender is
//!    noticed within one short lease TTL), and first records [`RefreshState::InFlight`] in the
//!    token record by compare-and-swap. A failure before this point sent nothing.
//! 2. It sends the request with a long timeout of its own (`refresh_timeout`, far above the HTTP
//!    timeout: the answer carries the only copy of the new refresh token).
//! 3. The outcome goes into the record for every process to read: new tokens (saved by CAS,
//!    retried until the store takes them; the caller gets them at once and they stay in this
//!    process's memory until saved), [`RefreshState::Failed`] with a retry time when the AS
//!    answered an error or was never reached, or [`RefreshState::Unknown`] when the request may
//!    have been processed but its answer was lost. An unknown refresh token is never resent.
//! 4. Waiters read the record. A marker left by a sender that no longer holds the lease gets half
//!    a lease TTL more to be resolved (its sender may only have been cut off from the store),
//!    then becomes `Unknown`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info_span, warn};

use super::discovery::ResourceMetadata;
use super::http::Delivery;
use super::tokens::{client_auth, parse_token_response_dpop};
use super::{AuthError, McpAuth, asks_for_dpop_nonce, oauth_error};
use crate::error::StoreError;
use crate::ids::TokenKey;
use crate::model::{RefreshState, ResourceBinding, TokenSet};
use crate::store::{CredentialStore, Expect, RefreshLease, Version, Versioned};
use crate::time::Timestamp;

/// Longest pause between two looks at a refresh another process is running.
const MAX_POLL: Duration = Duration::from_millis(250);
/// Wait before retrying a token endpoint that could not be reached at all.
const NOT_REACHED_RETRY: Duration = Duration::from_secs(5);
/// Wait before retrying a token endpoint that answered an error without `Retry-After`.
const ERROR_RETRY: Duration = Duration::from_secs(10);
/// Largest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Fresh tokens this process obtained and the store has not recorded yet, by token key.
#[derive(Default)]
pub(super) struct Unsaved(Mutex<HashMap<TokenKey, UnsavedEntry>>);

struct UnsavedEntry {
    tokens: TokenSet,
    since: Instant,
    last_error: Option<String>,
}

impl Unsaved {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenKey, UnsavedEntry>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The unsaved access token for `key`, when `usable` accepts it.
    fn usable(&self, key: &TokenKey, usable: &dyn Fn(&TokenSet) -> bool) -> Option<SecretString> {
        self.lock()
            .get(key)
            .filter(|e| usable(&e.tokens))
            .map(|e| e.tokens.access_token.clone())
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// Renews a refresh lease every quarter TTL until dropped.
struct Heartbeat(tokio::task::JoinHandle<()>);

impl Heartbeat {
    fn start(store: Arc<dyn CredentialStore>, lease: RefreshLease, ttl: Duration) -> Self {
        Self(tokio::spawn(async move {
            let mut lease = lease;
            loop {
                tokio::time::sleep(ttl / 4).await;
                match store.renew_refresh_lease(&lease, ttl).await {
                    Ok(Some(renewed)) => lease = renewed,
                    Ok(None) => {
                        warn!(key = %lease.key(), "refresh lease taken over by another holder");
                        return;
                    }
                    Err(e) => debug!(error = %e, "could not renew the refresh lease; retrying"),
                }
            }
        }))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What one refresh request came to.
enum Answer {
    /// New tokens.
    Tokens(TokenSet),
    /// `invalid_grant`: the refresh token is dead.
    Rejected,
    /// The AS answered an error, or was never reached: the refresh token is unchanged.
    Failed {
        reason: String,
        retry_after: Duration,
    },
    /// The request may have been processed; its answer was lost.
    Unknown { reason: String },
    /// A DPoP-bound refresh answered with a Bearer token (a downgrade): the refresh token may
    /// be rotated away as for [`Answer::Unknown`], but the caller gets this error, which does
    /// not send it to a new authorization.
    Downgraded(AuthError),
}

/// What to do with a token set without holding the lease.
enum Decision {
    /// Use its access token (still valid, and a refresh is not possible now).
    Serve,
    /// Give up with this error.
    Fail(AuthError),
    /// Refresh it, or look after the refresh that is recorded as running.
    Refresh,
}

/// The end of one turn under the lease.
enum Turn {
    /// Return this; release the lease (or not, when a save in the background holds it).
    Done(Result<SecretString, AuthError>, bool),
    /// The record changed; decide again.
    Again,
}

/// Only printable ASCII of AS-supplied text, at most 200 characters.
pub(super) fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(200)
        .collect()
}

fn still_valid(tokens: &TokenSet) -> bool {
    tokens.expires_at.is_none_or(|at| !at.is_past())
}

fn same_refresh_token(a: &TokenSet, b: &TokenSet) -> bool {
    match (&a.refresh_token, &b.refresh_token) {
        (Some(x), Some(y)) => x.expose_secret() == y.expose_secret(),
        (None, None) => true,
        _ => false,
    }
}

fn seconds_until(at: Timestamp) -> Duration {
    Duration::from_secs(
        u64::try_from(at.unix_seconds() - Timestamp::now().unix_seconds()).unwrap_or(0),
    )
}

fn retry_after_header(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let secs: u64 = value.trim().parse().ok()?;
    Some(Duration::from_secs(secs).clamp(Duration::from_secs(1), MAX_RETRY_AFTER))
}

impl McpAuth {
    /// The part of the access token's life kept in reserve: the configured margin, but never
    /// more than a quarter of the token's lifetime, so a token that was just obtained is never
    /// refreshed again because of the margin (a 30 s token is refreshed 7 s before it expires).
    pub(super) fn is_stale(&self, tokens: &TokenSet) -> bool {
        let margin = match tokens.expires_at {
            Some(at) => {
                let lifetime = at.unix_seconds() - tokens.obtained_at.unix_seconds();
                let quarter = Duration::from_secs(u64::try_from(lifetime).unwrap_or(0) / 4);
                self.config.refresh_margin.min(quarter)
            }
            None => self.config.refresh_margin,
        };
        tokens.expires_within(margin)
    }

    /// Runs a store operation, retrying [`StoreError::Unavailable`] for up to
    /// `store_retry_budget` so a store restart of a few seconds is ridden out.
    pub(super) async fn store_retry<T, F, Fut>(&self, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let deadline = Instant::now() + self.config.store_retry_budget;
        let mut pause = Duration::from_millis(50);
        loop {
            match op().await {
                Err(e) if e.is_retryable() && Instant::now() + pause < deadline => {
                    debug!(error = %e, "store unavailable; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                other => return other,
            }
        }
    }

    async fn read_tokens(&self, key: &TokenKey) -> Result<Option<Versioned<TokenSet>>, AuthError> {
        Ok(self.store_retry(|| self.store.get_tokens(key)).await?)
    }

    /// Waits until every token set this process obtained is recorded in the store, or until its
    /// save deadline (`save_deadline` after the refresh) has passed. Call it before the process
    /// exits: a rotated refresh token that only this process knows is lost with it.
    ///
    /// # Errors
    ///
    /// [`AuthError::RotatedTokenNotSaved`] for the first token set still unsaved when its save
    /// deadline passes, carrying the store's last error as [`StoreError::Unavailable`]; the tokens
    /// stay in this process's memory.
    pub async fn flush(&self) -> Result<(), AuthError> {
        loop {
            let overdue = {
                let map = self.unsaved.lock();
                if map.is_empty() {
                    return Ok(());
                }
                map.iter()
                    .find(|(_, e)| e.since.elapsed() >= self.config.save_deadline)
                    .map(|(k, e)| (k.clone(), e.last_error.clone()))
            };
            if let Some((key, last_error)) = overdue {
                return Err(AuthError::RotatedTokenNotSaved {
                    issuer: key.issuer.clone(),
                    resource: key.resource.to_string(),
                    source: StoreError::Unavailable {
                        backend: self.store.backend_name(),
                        source: last_error
                            .unwrap_or_else(|| "the save did not complete".to_owned())
                            .into(),
                    },
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// True when a token set obtained by this process is still waiting to be saved.
    pub fn has_unsaved_tokens(&self) -> bool {
        !self.unsaved.is_empty()
    }

    /// What to do with `tokens` without the lease.
    fn decide(&self, key: &TokenKey, tokens: &TokenSet) -> Decision {
        let serve_or = |e: AuthError| {
            if still_valid(tokens) {
                Decision::Serve
            } else {
                Decision::Fail(e)
            }
        };
        if tokens.refresh_token.is_none() {
            // Without a refresh token the access token is good until it actually expires.
            return serve_or(AuthError::LoginRequired {
                resource: key.resource.to_string(),
            });
        }
        match &tokens.refresh_state {
            Some(RefreshState::Failed {
                retry_after, error, ..
            }) if !retry_after.is_past() => serve_or(AuthError::RefreshFailed {
                issuer: key.issuer.clone(),
                resource: key.resource.to_string(),
                reason: error.clone(),
                retry_after: seconds_until(*retry_after),
            }),
            Some(RefreshState::Unknown { reason, .. }) => {
                serve_or(AuthError::RefreshOutcomeUnknown {
                    issuer: key.issuer.clone(),
                    resource: key.resource.to_string(),
                    reason: reason.clone(),
                })
            }
            _ => Decision::Refresh,
        }
    }

    /// Refreshes the tokens of `key` unless `usable` accepts what is stored (or this process
    /// holds unsaved tokens it accepts). Single-flight across processes through the lease and
    /// the recorded [`RefreshState`]; the caller holds the in-process lock for `key`.
    pub(super) async fn refresh_locked(
        &self,
        binding: &ResourceBinding,
        key: &TokenKey,
        usable: &(dyn Fn(&TokenSet) -> bool + Send + Sync),
    ) -> Result<SecretString, AuthError> {
        let login = || AuthError::LoginRequired {
            resource: key.resource.to_string(),
        };
        let started = Instant::now();
        let patience = self.config.refresh_timeout + self.config.save_deadline;
        let mut pause = Duration::from_millis(20);
        loop {
            if let Some(token) = self.unsaved.usable(key, usable) {
                return Ok(token);
            }
            let current = self.read_tokens(key).await?.ok_or_else(login)?;
            if usable(&current.value) {
                return Ok(current.value.access_token);
            }
            match self.decide(key, &current.value) {
                Decision::Serve => return Ok(current.value.access_token),
                Decision::Fail(e) => return Err(e),
                Decision::Refresh => {}
            }
            let ttl = self.config.lease_ttl;
            let lease = self
                .store_retry(|| self.store.try_acquire_refresh_lease(key, ttl))
                .await?;
            let Some(lease) = lease else {
                // Another process is refreshing: wait for the outcome it records.
                if started.elapsed() > patience {
                    return Err(AuthError::RefreshInProgress {
                        issuer: key.issuer.clone(),
                        resource: key.resource.to_string(),
                        waited: started.elapsed(),
                    });
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_POLL);
                continue;
            };
            let heartbeat = Heartbeat::start(Arc::clone(&self.store), lease.clone(), ttl);
            match self
                .turn_under_lease(binding, key, usable, &lease, heartbeat)
                .await
            {
                Turn::Done(result, release) => {
                    if release {
                        self.release(&lease).await;
                    }
                    return result;
                }
                Turn::Again => {
                    self.release(&lease).await;
                    pause = Duration::from_millis(20);
                }
            }
        }
    }

    async fn release(&self, lease: &RefreshLease) {
        if let Err(e) = self
            .store_retry(|| self.store.release_refresh_lease(lease))
            .await
        {
            warn!(error = %e, "could not release the refresh lease; it expires on its own");
        }
    }

    /// One look at the record under the lease: refresh, resolve an abandoned in-flight marker,
    /// or find that someone else already did.
    async fn turn_under_lease(
        &self,
        binding: &ResourceBinding,
        key: &TokenKey,
        usable: &(dyn Fn(&TokenSet) -> bool + Send + Sync),
        lease: &RefreshLease,
        heartbeat: Heartbeat,
    ) -> Turn {
        let current = match self.read_tokens(key).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                return Turn::Done(
                    Err(AuthError::LoginRequired {
                        resource: key.resource.to_string(),
                    }),
                    true,
                );
            }
            Err(e) => return Turn::Done(Err(e), true),
        };
        if usable(&current.value) {
            return Turn::Done(Ok(current.value.access_token), true);
        }
        if let Some(RefreshState::InFlight { .. }) = &current.value.refresh_state {
            return self.resolve_abandoned(key, current).await;
        }
        match self.decide(key, &current.value) {
            Decision::Serve => return Turn::Done(Ok(current.value.access_token), true),
            Decision::Fail(e) => return Turn::Done(Err(e), true),
            Decision::Refresh => {}
        }

        // 1. Record that a request is about to be sent; nothing has left yet if this fails.
        let mut marked = current.value.clone();
        marked.refresh_state = Some(RefreshState::InFlight {
            started_at: Timestamp::now(),
            holder: lease.token().to_owned(),
        });
        let marked_version = match self
            .put_checked(key, &marked, current.version.clone())
            .await
        {
            Ok(Some(v)) => v,
            Ok(None) => return Turn::Again,
            Err(e) => return Turn::Done(Err(e.into()), true),
        };

        // 2. Send it.
        let span = info_span!("refresh_token", issuer = %binding.issuer, resource = %key.resource);
        let answer = self
            .send_refresh(binding, key, &current.value)
            .instrument(span)
            .await;

        // 3. Record the outcome.
        let (state, error) = match answer {
            Answer::Tokens(tokens) => {
                return self
                    .save_rotated(
                        key,
                        tokens,
                        &current.value,
                        marked_version,
                        lease,
                        heartbeat,
                    )
                    .await;
            }
            Answer::Rejected => {
                // Delete only the record that was rejected; a newer one stays.
                match self
                    .store_retry(|| {
                        self.store
                            .delete_tokens(key, Expect::Version(marked_version.clone()))
                    })
                    .await
                {
                    Ok(_) | Err(StoreError::Conflict { .. }) => {}
                    Err(e) => return Turn::Done(Err(e.into()), true),
                }
                return Turn::Done(
                    Err(AuthError::RefreshRejected {
                        issuer: key.issuer.clone(),
                        resource: key.resource.to_string(),
                    }),
                    true,
                );
            }
            Answer::Failed {
                reason,
                retry_after,
            } => {
                let now = Timestamp::now();
                (
                    RefreshState::Failed {
                        at: now,
                        retry_after: now.saturating_add(retry_after),
                        error: reason.clone(),
                    },
                    AuthError::RefreshFailed {
                        issuer: key.issuer.clone(),
                        resource: key.resource.to_string(),
                        reason,
                        retry_after,
                    },
                )
            }
            Answer::Unknown { reason } => (
                RefreshState::Unknown {
                    at: Timestamp::now(),
                    reason: reason.clone(),
                },
                AuthError::RefreshOutcomeUnknown {
                    issuer: key.issuer.clone(),
                    resource: key.resource.to_string(),
                    reason,
                },
            ),
            Answer::Downgraded(error) => (
                RefreshState::Unknown {
                    at: Timestamp::now(),
                    reason: printable(&error.to_string()),
                },
                error,
            ),
        };
        warn!(issuer = %key.issuer, resource = %key.resource, error = %error, "refresh did not complete");
        let mut outcome = current.value.clone();
        outcome.refresh_state = Some(state);
        if let Err(e) = self.put_checked(key, &outcome, marked_version).await {
            // The in-flight marker stays; it turns into "unknown" for whoever looks next, which
            // is safe (the refresh token is not resent).
            warn!(error = %e, "could not record the refresh outcome");
        }
        drop(heartbeat);
        if still_valid(&current.value) {
            Turn::Done(Ok(current.value.access_token), true)
        } else {
            Turn::Done(Err(error), true)
        }
    }

    /// An in-flight marker whose sender no longer holds the lease: it died, or lost the store
    /// for a while (a sender that is alive retries its save every 250 ms at most, so it lands
    /// soon after the store is back). Give it half a lease TTL more to record its outcome, then
    /// mark the outcome unknown.
    async fn resolve_abandoned(&self, key: &TokenKey, current: Versioned<TokenSet>) -> Turn {
        let deadline = Instant::now() + self.config.lease_ttl / 2;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            match self.read_tokens(key).await {
                Ok(Some(again)) if again.version == current.version => {}
                Ok(_) => return Turn::Again,
                Err(e) => return Turn::Done(Err(e), true),
            }
        }
        let mut unknown = current.value.clone();
        unknown.refresh_state = Some(RefreshState::Unknown {
            at: Timestamp::now(),
            reason: "the process that sent it stopped before recording the answer".to_owned(),
        });
        warn!(issuer = %key.issuer, resource = %key.resource, "a refresh was abandoned by its sender; its outcome is unknown");
        match self.put_checked(key, &unknown, current.version).await {
            Ok(_) => Turn::Again,
            Err(e) => Turn::Done(Err(e.into()), true),
        }
    }

    /// A compare-and-swap put, retried through short store outages. A retry of a write whose
    /// reply was lost meets its own write as a conflict: that counts as written.
    /// `Ok(None)`: someone else changed the record.
    async fn put_checked(
        &self,
        key: &TokenKey,
        tokens: &TokenSet,
        expect: Version,
    ) -> Result<Option<Version>, StoreError> {
        match self
            .store_retry(|| {
                self.store
                    .put_tokens(key, tokens, Expect::Version(expect.clone()))
            })
            .await
        {
            Ok(v) => Ok(Some(v)),
            Err(StoreError::Conflict { .. }) => {
                let now = self.store_retry(|| self.store.get_tokens(key)).await?;
                Ok(now
                    .filter(|n| {
                        n.value.refresh_state == tokens.refresh_state
                            && n.value.access_token.expose_secret()
                                == tokens.access_token.expose_secret()
                    })
                    .map(|n| n.version))
            }
            Err(e) => Err(e),
        }
    }

    /// Sends one refresh-token grant (R14: with `resource`) with the refresh timeout.
    async fn send_refresh(
        &self,
        binding: &ResourceBinding,
        key: &TokenKey,
        current: &TokenSet,
    ) -> Answer {
        let failed = |reason: String| Answer::Failed {
            reason,
            retry_after: NOT_REACHED_RETRY,
        };
        let meta = match self.stored_metadata(binding) {
            Ok(m) => m,
            Err(e) => return failed(e.to_string()),
        };
        let registration = match self
            .store_retry(|| self.store.get_registration(&binding.issuer))
            .await
        {
            Ok(Some(r)) => r.value,
            Ok(None) => return failed("no registration is stored for this issuer".to_owned()),
            Err(e) => return failed(e.to_string()),
        };
        let Some(refresh_token) = &current.refresh_token else {
            return Answer::Rejected;
        };
        let resource_param =
            ResourceMetadata::from_stored(&binding.resource_metadata, &key.resource)
                .map(|p| p.resource_raw)
                .unwrap_or_else(|| key.resource.to_string());
        let mut form = vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", refresh_token.expose_secret().to_owned()),
            ("resource", resource_param),
        ];
        let basic = client_auth(&registration, &mut form);
        let form_refs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let basic_refs = basic.as_ref().map(|(a, b)| (a.as_str(), b.as_str()));
        // A DPoP-bound refresh token is sent only with a proof from its key.
        let dpop = match self.dpop_key_of(current) {
            Ok(key) => key,
            Err(e) => return failed(e.to_string()),
        };
        let mut retried = false;
        let fetched = loop {
            let headers = match self.dpop_headers(dpop.as_deref(), &meta.token_endpoint) {
                Ok(h) => h,
                Err(e) => return failed(e.to_string()),
            };
            let fetched = match self
                .http
                .post_form_classified(
                    &meta.token_endpoint,
                    &form_refs,
                    basic_refs,
                    &headers,
                    self.config.refresh_timeout,
                )
                .await
            {
                Ok(f) => f,
                Err((e, Delivery::NotSent)) => return failed(printable(&e.to_string())),
                Err((e, Delivery::Unknown)) => {
                    return Answer::Unknown {
                        reason: printable(&e.to_string()),
                    };
                }
            };
            if dpop.is_some() {
                self.remember_dpop_nonce(&meta.token_endpoint, &fetched.headers);
                // Refused before the refresh token was looked at: send it again with the nonce.
                if !retried && asks_for_dpop_nonce(&fetched) {
                    retried = true;
                    continue;
                }
            }
            break fetched;
        };
        if fetched.status == 200 {
            // The AS accepted the refresh token: an answer we cannot use still rotated it.
            return match fetched.json_object().and_then(|body| {
                parse_token_response_dpop(
                    &meta,
                    &body,
                    Some(current),
                    &[],
                    dpop.as_deref(),
                    dpop.is_some(),
                )
            }) {
                Ok(tokens) => Answer::Tokens(tokens),
                Err(e @ AuthError::DpopNotAvailable { .. }) => Answer::Downgraded(e),
                Err(e) => Answer::Unknown {
                    reason: printable(&e.to_string()),
                },
            };
        }
        let error = oauth_error(&meta.issuer, "token", fetched.status, &fetched.body);
        if let AuthError::OAuth { error: code, .. } = &error
            && code == "invalid_grant"
        {
            return Answer::Rejected;
        }
        Answer::Failed {
            reason: printable(&error.to_string()),
            retry_after: retry_after_header(&fetched.headers).unwrap_or(ERROR_RETRY),
        }
    }

    /// Saves rotated tokens over the in-flight marker. The caller gets them whatever the store
    /// does; a save that fails goes on in the background, holding the lease, until it lands.
    async fn save_rotated(
        &self,
        key: &TokenKey,
        tokens: TokenSet,
        sent: &TokenSet,
        marked_version: Version,
        lease: &RefreshLease,
        heartbeat: Heartbeat,
    ) -> Turn {
        let access = tokens.access_token.clone();
        match save_once(
            self.store.as_ref(),
            key,
            &tokens,
            sent,
            marked_version.clone(),
        )
        .await
        {
            SaveStep::Saved | SaveStep::Superseded => {
                drop(heartbeat);
                return Turn::Done(Ok(access), true);
            }
            SaveStep::Retry(_, e) => {
                warn!(issuer = %key.issuer, resource = %key.resource, error = %e,
                    "the store did not take the rotated tokens; saving them in the background");
                self.unsaved.lock().insert(
                    key.clone(),
                    UnsavedEntry {
                        tokens: tokens.clone(),
                        since: Instant::now(),
                        last_error: Some(e.to_string()),
                    },
                );
            }
        }
        let store = Arc::clone(&self.store);
        let unsaved = Arc::clone(&self.unsaved);
        let key = key.clone();
        let sent = sent.clone();
        let lease = lease.clone();
        tokio::spawn(async move {
            let _heartbeat = heartbeat;
            let mut expect = marked_version;
            let mut pause = Duration::from_millis(100);
            loop {
                tokio::time::sleep(pause).await;
                match save_once(store.as_ref(), &key, &tokens, &sent, expect.clone()).await {
                    SaveStep::Saved | SaveStep::Superseded => break,
                    SaveStep::Retry(next, e) => {
                        expect = next;
                        if let Some(entry) = unsaved.lock().get_mut(&key) {
                            entry.last_error = Some(e.to_string());
                        }
                        pause = (pause * 2).min(Duration::from_millis(250));
                    }
                }
            }
            unsaved.lock().remove(&key);
            debug!(issuer = %key.issuer, resource = %key.resource, "rotated tokens saved");
            if let Err(e) = store.release_refresh_lease(&lease).await {
                debug!(error = %e, "could not release the refresh lease; it expires on its own");
            }
        });
        Turn::Done(Ok(access), false)
    }
}

enum SaveStep {
    Saved,
    /// Someone stored other tokens (a new login, a logout): theirs stand.
    Superseded,
    /// Try again, expecting this version.
    Retry(Version, StoreError),
}

/// One attempt to put rotated `tokens` over the record at `expect` (which still holds `sent`'s
/// refresh token, with some refresh state).
async fn save_once(
    store: &dyn CredentialStore,
    key: &TokenKey,
    tokens: &TokenSet,
    sent: &TokenSet,
    expect: Version,
) -> SaveStep {
    match store
        .put_tokens(key, tokens, Expect::Version(expect.clone()))
        .await
    {
        Ok(_) => SaveStep::Saved,
        Err(StoreError::Conflict { .. }) => match store.get_tokens(key).await {
            // Our own earlier attempt landed (its reply was lost).
            Ok(Some(now))
                if same_refresh_token(&now.value, tokens) && now.value.refresh_state.is_none() =>
            {
                SaveStep::Saved
            }
            // Only the state changed (another process marked our refresh unknown while we could
            // not reach the store): the tokens we hold are newer.
            Ok(Some(now)) if same_refresh_token(&now.value, sent) => SaveStep::Retry(
                now.version,
                StoreError::Conflict {
                    key: key.to_string(),
                },
            ),
            Ok(Some(_)) | Ok(None) => SaveStep::Superseded,
            Err(e) => SaveStep::Retry(expect, e),
        },
        Err(e) => {
            if !e.is_retryable() {
                error!(error = %e, "the store refused the rotated tokens; retrying");
            }
            SaveStep::Retry(expect, e)
        }
    }
}

impl McpAuth {
    /// Refreshes unless someone else already did. Single-flight inside the process (a mutex per
    /// token key) and across processes (the store's lease and the recorded refresh state).
    pub(super) async fn refresh(
        &self,
        binding: &ResourceBinding,
        key: &TokenKey,
    ) -> Result<SecretString, AuthError> {
        let lock = self.refresh_locks.get(key);
        let _guard = lock.lock().await;
        self.refresh_locked(binding, key, &|t| !self.is_stale(t))
            .await
    }

    /// Refreshes because the server refused the access token `rejected`, unless the stored
    /// token has changed since.
    pub(super) async fn force_refresh(
        &self,
        binding: &ResourceBinding,
        key: &TokenKey,
        rejected: &SecretString,
    ) -> Result<SecretString, AuthError> {
        let lock = self.refresh_locks.get(key);
        let _guard = lock.lock().await;
        let rejected = rejected.expose_secret();
        self.refresh_locked(binding, key, &|t| {
            t.access_token.expose_secret() != rejected && !self.is_stale(t)
        })
        .await
    }
}
