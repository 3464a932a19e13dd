//! Getting a usable access token: the warm path over the decoded-record cache, the stored path
//! with its refresh, storing and binding new tokens, token endpoint requests and the parsing of
//! their responses.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use tracing::debug;

use super::discovery::{ResourceMetadata, ServerMetadata};
use super::http::redact;
use super::{
    AccessCredential, AuthError, DpopKey, HotEntry, McpAuth, asks_for_dpop_nonce, dpop,
    oauth_error, refresh,
};
use crate::error::StoreError;
use crate::ids::{ResourceUri, TokenKey};
use crate::model::{ClientRegistration, ResourceBinding, TokenSet};
use crate::store::Expect;
use crate::time::Timestamp;

#[cfg(doc)]
use super::Authorizer;

impl McpAuth {
    /// A valid access token for `resource`: cached, else refreshed, else obtained by a new
    /// authorization through the configured [`Authorizer`].
    ///
    /// # Errors
    ///
    /// As [`McpAuth::access_credential`].
    pub async fn access_token(&self, resource: &ResourceUri) -> Result<SecretString, AuthError> {
        self.access_credential(resource)
            .await
            .map(AccessCredential::into_token)
    }

    /// [`McpAuth::access_token`] with how to present it: `Bearer`, or `DPoP` with a proof per
    /// request ([`AccessCredential::dpop_proof`]) when the token is DPoP-bound.
    ///
    /// # Errors
    ///
    /// A refresh that fails gives [`AuthError::RefreshFailed`], [`AuthError::RotatedTokenNotSaved`]
    /// or [`AuthError::RefreshInProgress`] (see [`McpAuth::cached_access_credential`]); when no
    /// usable token is stored, whatever the new authorization fails with (see
    /// [`McpAuth::authorize`]).
    ///
    /// Besides those: [`AuthError::Discovery`], [`AuthError::UnsafeUrl`], [`AuthError::Timeout`],
    /// [`AuthError::Http`], [`AuthError::ResponseTooLarge`] and [`AuthError::InvalidResponse`] when
    /// metadata or an endpoint cannot be used; [`AuthError::Store`] when the store keeps failing
    /// beyond its retry budget.
    pub async fn access_credential(
        &self,
        resource: &ResourceUri,
    ) -> Result<AccessCredential, AuthError> {
        match self.cached_access_credential(resource).await {
            Err(e) if e.needs_login() => {
                // One authorization per server at a time; whoever waited uses its result.
                let lock = self.authorize_locks.get(resource);
                let _guard = lock.lock().await;
                match self.cached_access_credential(resource).await {
                    Err(e) if e.needs_login() => {
                        let token = self.authorize_unlocked(resource).await?;
                        self.credential(resource, token).await
                    }
                    other => other,
                }
            }
            other => other,
        }
    }

    /// How to present `token`, a token this engine returned for `resource` (from
    /// [`McpAuth::handle_unauthorized`], say): DPoP when the stored token set it belongs to is
    /// DPoP-bound, else Bearer.
    ///
    /// # Errors
    /// A store error, or an unusable stored DPoP key.
    pub async fn credential(
        &self,
        resource: &ResourceUri,
        token: SecretString,
    ) -> Result<AccessCredential, AuthError> {
        let Some(binding) = self
            .store_retry(|| self.store.get_binding(resource))
            .await?
        else {
            return Ok(AccessCredential::new(token, None));
        };
        let key = TokenKey::new(binding.value.issuer, resource.clone());
        let stored = self.store_retry(|| self.store.get_tokens(&key)).await?;
        match stored {
            Some(t) if t.value.access_token.expose_secret() == token.expose_secret() => {
                self.credential_of(&t.value)
            }
            _ => Ok(AccessCredential::new(token, None)),
        }
    }

    /// The credential of a token set.
    fn credential_of(&self, tokens: &TokenSet) -> Result<AccessCredential, AuthError> {
        Ok(AccessCredential::new(
            tokens.access_token.clone(),
            self.dpop_key_of(tokens)?,
        ))
    }

    /// The DPoP key a token set is bound to, parsed once per process.
    pub(super) fn dpop_key_of(&self, tokens: &TokenSet) -> Result<Option<Arc<DpopKey>>, AuthError> {
        tokens
            .dpop_key
            .as_ref()
            .map(|stored| self.dpop_keys.get(stored))
            .transpose()
    }

    /// A valid access token from the store, refreshed if needed; never starts an
    /// authorization ([`AuthError::LoginRequired`] instead). Makes no request at all while the
    /// stored token is valid, and then reads no record value: one store round trip checks that
    /// the binding and tokens this engine decoded before are still the current versions.
    ///
    /// # Errors
    ///
    /// As [`McpAuth::cached_access_credential`].
    pub async fn cached_access_token(
        &self,
        resource: &ResourceUri,
    ) -> Result<SecretString, AuthError> {
        self.cached_access_credential(resource)
            .await
            .map(AccessCredential::into_token)
    }

    /// [`McpAuth::cached_access_token`] with how to present it.
    ///
    /// # Errors
    ///
    /// [`AuthError::LoginRequired`] when no tokens are stored for `resource`, and
    /// [`AuthError::RefreshRejected`] or [`AuthError::RefreshOutcomeUnknown`] when a refresh token
    /// was rejected or may have been rotated away ([`AuthError::needs_login`] is true for all
    /// three). [`AuthError::RefreshFailed`] when the authorization server failed the refresh
    /// without rotating the token; [`AuthError::RefreshInProgress`] when another process holds the
    /// refresh lease for too long; [`AuthError::RotatedTokenNotSaved`] when a rotated token could
    /// not be recorded; [`AuthError::Store`] when the store keeps failing beyond its retry budget,
    /// and the network errors of [`McpAuth::access_credential`] during a refresh.
    pub async fn cached_access_credential(
        &self,
        resource: &ResourceUri,
    ) -> Result<AccessCredential, AuthError> {
        if let Some(credential) = self.hot_access_credential(resource).await? {
            return Ok(credential);
        }
        let stamp = self.store.change_stamp();
        let binding = self
            .store_retry(|| self.store.get_binding(resource))
            .await?
            .ok_or_else(|| AuthError::LoginRequired {
                resource: resource.to_string(),
            })?;
        let key = TokenKey::new(binding.value.issuer.clone(), resource.clone());
        match self.store_retry(|| self.store.get_tokens(&key)).await? {
            Some(t) if !self.is_stale(&t.value) => {
                let credential = self.credential_of(&t.value)?;
                if t.value.refresh_state.is_none() {
                    let entry = HotEntry {
                        key,
                        binding_version: binding.version,
                        token_version: t.version,
                        tokens: t.value,
                        stamp,
                    };
                    self.hot
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(resource.clone(), Arc::new(entry));
                }
                Ok(credential)
            }
            // A refresh keeps the DPoP key (a DPoP-bound refresh must come back DPoP-bound).
            Some(t) => {
                let token = self.refresh(&binding.value, &key).await?;
                Ok(AccessCredential::new(token, self.dpop_key_of(&t.value)?))
            }
            None => Err(AuthError::LoginRequired {
                resource: resource.to_string(),
            }),
        }
    }

    /// The warm path: the token this engine decoded before, if the store says both records are
    /// unchanged and the token is not due for a refresh. `None`: take the full path.
    async fn hot_access_credential(
        &self,
        resource: &ResourceUri,
    ) -> Result<Option<AccessCredential>, AuthError> {
        use std::sync::atomic::Ordering;
        if !self.versions_supported.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let Some(entry) = self
            .hot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(resource)
            .cloned()
        else {
            return Ok(None);
        };
        if self.is_stale(&entry.tokens) {
            return Ok(None);
        }
        // Nothing in the store changed since the entry was read: no round trip at all.
        let stamp = self.store.change_stamp();
        if stamp.is_some() && stamp == entry.stamp {
            return self.credential_of(&entry.tokens).map(Some);
        }
        match self.store.binding_and_token_versions(&entry.key).await {
            Ok((Some(b), Some(t))) if b == entry.binding_version && t == entry.token_version => {
                if stamp.is_some() {
                    // Other records changed, not these: remember the stamp they were current at.
                    let fresh = HotEntry {
                        key: entry.key.clone(),
                        binding_version: entry.binding_version.clone(),
                        token_version: entry.token_version.clone(),
                        tokens: entry.tokens.clone(),
                        stamp,
                    };
                    self.hot
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(resource.clone(), Arc::new(fresh));
                }
                self.credential_of(&entry.tokens).map(Some)
            }
            Ok(_) => Ok(None),
            Err(StoreError::Unsupported { .. }) => {
                self.versions_supported.store(false, Ordering::Relaxed);
                Ok(None)
            }
            // The full path retries within the store budget and reports what persists.
            Err(e) if e.is_retryable() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores new tokens from `meta`'s server and binds `resource` to it. Only now, with the
    /// new server's tokens in hand, are the previous server's tokens for `resource` dropped
    /// (SEP-2352: never used again).
    pub(super) async fn bind(
        &self,
        resource: &ResourceUri,
        prm: &ResourceMetadata,
        meta: &ServerMetadata,
        tokens: &TokenSet,
    ) -> Result<(), AuthError> {
        let previous = self
            .store
            .get_binding(resource)
            .await?
            .map(|b| b.value.issuer);
        let key = TokenKey::new(meta.issuer.clone(), resource.clone());
        self.store.put_tokens(&key, tokens, Expect::Any).await?;
        let mut binding = ResourceBinding::new(resource.clone(), meta.issuer.clone());
        binding.resource_metadata = prm.raw.clone();
        binding.authorization_server_metadata = meta.raw.clone();
        self.store.put_binding(&binding, Expect::Any).await?;
        if let Some(old) = previous
            && old != meta.issuer
        {
            debug!(from = %old, to = %meta.issuer, "authorization server changed; dropping the old server's tokens");
            self.store
                .delete_tokens(&TokenKey::new(old, resource.clone()), Expect::Any)
                .await?;
        }
        Ok(())
    }

    /// POSTs to the token endpoint with the registration's client authentication; returns the
    /// JSON body of a 200 response or the OAuth error.
    pub(super) async fn token_request(
        &self,
        meta: &ServerMetadata,
        registration: &ClientRegistration,
        form: &mut Vec<(&'static str, String)>,
    ) -> Result<Map<String, Value>, AuthError> {
        self.token_request_dpop(meta, registration, form, None)
            .await
    }

    /// [`McpAuth::token_request`] with a DPoP proof when `dpop` is set; a `use_dpop_nonce` answer
    /// (the server refused before doing anything) is retried once with its nonce.
    pub(super) async fn token_request_dpop(
        &self,
        meta: &ServerMetadata,
        registration: &ClientRegistration,
        form: &mut Vec<(&'static str, String)>,
        dpop: Option<&DpopKey>,
    ) -> Result<Map<String, Value>, AuthError> {
        let basic = client_auth(registration, form);
        let form_refs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let basic_refs = basic.as_ref().map(|(a, b)| (a.as_str(), b.as_str()));
        let mut retried = false;
        loop {
            let headers = self.dpop_headers(dpop, &meta.token_endpoint)?;
            let fetched = self
                .http
                .post_form_with_headers(&meta.token_endpoint, &form_refs, basic_refs, &headers)
                .await?;
            if dpop.is_some() {
                self.remember_dpop_nonce(&meta.token_endpoint, &fetched.headers);
            }
            if fetched.status == 200 {
                return fetched.json_object();
            }
            if dpop.is_some() && !retried && asks_for_dpop_nonce(&fetched) {
                retried = true;
                continue;
            }
            return Err(oauth_error(
                &meta.issuer,
                "token",
                fetched.status,
                &fetched.body,
            ));
        }
    }
}

/// Adds the registration's client authentication (R25: only ever this AS's own credentials).
/// Returns HTTP Basic credentials when the method is `client_secret_basic`.
pub(super) fn client_auth(
    registration: &ClientRegistration,
    form: &mut Vec<(&'static str, String)>,
) -> Option<(String, String)> {
    let secret = registration
        .client_secret
        .as_ref()
        .map(|s| s.expose_secret().to_owned());
    match (registration.token_endpoint_auth_method.as_str(), secret) {
        ("client_secret_basic", Some(secret)) => Some((registration.client_id.clone(), secret)),
        ("client_secret_post", Some(secret)) => {
            form.push(("client_id", registration.client_id.clone()));
            form.push(("client_secret", secret));
            None
        }
        // A JWT bearer grant without a client_id (workload identity) sends none.
        _ if registration.client_id.is_empty() => None,
        _ => {
            form.push(("client_id", registration.client_id.clone()));
            None
        }
    }
}

/// Lifetime assumed for an access token whose `expires_in` is present but not a usable number
/// of seconds (negative, not a number, absurdly large): short, so a bad value never means
/// "never expires".
pub const INVALID_EXPIRES_IN_LIFETIME: Duration = Duration::from_secs(300);

/// Longest token value accepted (RFC 6750 sets no limit; real tokens are far shorter).
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// RFC 6750 §2.1 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
/// Anything else (spaces, CR/LF, control characters) could inject headers where the token is
/// pasted.
pub(super) fn is_b64token(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && s.len() <= MAX_TOKEN_LEN
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

/// `expires_in` as seconds (RFC 6749 §5.1): a non-negative integer; a non-negative number or a
/// string of digits is accepted too (some servers send them). `None` when absent; the short
/// [`INVALID_EXPIRES_IN_LIFETIME`] when present but unusable.
pub(super) fn expires_in(value: Option<&Value>) -> Option<Duration> {
    const TEN_YEARS: u64 = 10 * 365 * 24 * 3600;
    let value = value?;
    let secs = match value {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        }),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse::<u64>().ok()
        }
        Value::Null => return None,
        _ => None,
    };
    Some(match secs {
        Some(secs) if secs <= TEN_YEARS => Duration::from_secs(secs),
        _ => INVALID_EXPIRES_IN_LIFETIME,
    })
}

/// Builds the stored token set from a token response. An omitted refresh token keeps the
/// previous one (never overwritten with nothing); an omitted scope means the requested ones.
/// Token values must be RFC 6750 `b64token`s; `token_type` must be `Bearer` (RFC 6749 §7.1:
/// a client must not use a token whose type it does not understand).
pub(super) fn parse_token_response(
    meta: &ServerMetadata,
    body: &Map<String, Value>,
    previous: Option<&TokenSet>,
    requested_scopes: &[String],
) -> Result<TokenSet, AuthError> {
    parse_token_response_dpop(meta, body, previous, requested_scopes, None, false)
}

/// [`parse_token_response`] for a request that carried a proof signed by `dpop`: `token_type`
/// `DPoP` is accepted then, and the key stored with the tokens; a `Bearer` answer is refused
/// when `dpop_required` (DPoP was required, or the previous tokens were DPoP-bound).
pub(super) fn parse_token_response_dpop(
    meta: &ServerMetadata,
    body: &Map<String, Value>,
    previous: Option<&TokenSet>,
    requested_scopes: &[String],
    dpop: Option<&DpopKey>,
    dpop_required: bool,
) -> Result<TokenSet, AuthError> {
    let invalid = |reason: &str| AuthError::InvalidResponse {
        url: redact(&meta.token_endpoint),
        reason: reason.to_owned(),
    };
    let access = body
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("token response has no access_token"))?;
    if !is_b64token(access) {
        return Err(invalid(
            "access_token is not an RFC 6750 token (characters outside b64token, or longer than 16 KiB)",
        ));
    }
    let token_type = body
        .get("token_type")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("token response has no token_type"))?;
    let bound = match dpop {
        Some(key) if token_type.eq_ignore_ascii_case("dpop") => Some(key),
        _ if token_type.eq_ignore_ascii_case("bearer") => None,
        _ => {
            return Err(AuthError::UnsupportedTokenType {
                issuer: meta.issuer.clone(),
                token_type: refresh::printable(token_type).chars().take(40).collect(),
            });
        }
    };
    if bound.is_none() && dpop_required {
        return Err(AuthError::DpopNotAvailable {
            issuer: meta.issuer.clone(),
            reason: "it answered a request with a DPoP proof with a Bearer token",
        });
    }
    if let Some(key) = bound
        && let Some(jkt) = dpop::token_jkt(access)
        && jkt != key.thumbprint()
    {
        // A JWT access token names the key it is bound to (RFC 9449 §6.1): not ours means a
        // token we could never use, or one meant for someone else.
        return Err(invalid(
            "the DPoP-bound access token's cnf.jkt is not the thumbprint of the key that signed the proof",
        ));
    }
    let mut tokens = TokenSet::new(SecretString::from(access.to_owned()));
    tokens.token_type = if bound.is_some() { "DPoP" } else { "Bearer" }.to_owned();
    tokens.dpop_key = bound.map(DpopKey::stored);
    tokens.expires_at =
        expires_in(body.get("expires_in")).map(|d| Timestamp::now().saturating_add(d));
    tokens.refresh_token = match body.get("refresh_token").and_then(Value::as_str) {
        Some(r) if !r.is_empty() => {
            if !is_b64token(r) {
                return Err(invalid(
                    "refresh_token has characters outside b64token or is longer than 16 KiB",
                ));
            }
            Some(SecretString::from(r.to_owned()))
        }
        _ => previous.and_then(|p| p.refresh_token.clone()),
    };
    tokens.scopes = match body.get("scope").and_then(Value::as_str) {
        Some(s) => s.split_whitespace().map(refresh::printable).collect(),
        None => previous
            .map(|p| p.scopes.clone())
            .unwrap_or_else(|| requested_scopes.to_vec()),
    };
    for (k, v) in body {
        if !matches!(
            k.as_str(),
            "access_token" | "token_type" | "expires_in" | "refresh_token" | "scope"
        ) {
            tokens.extra.insert(k.clone(), v.clone());
        }
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn b64token_syntax() {
        for ok in ["abc", "a-b.c_d~e+f/g", "abc==", "eyJhbGciOi.eyJzdWIi.sig"] {
            assert!(is_b64token(ok), "{ok}");
        }
        for bad in [
            "",
            "==",
            "a b",
            "a\r\nX-Injected: 1",
            "a\tb",
            "a\u{7f}",
            "é",
            "a=b",
        ] {
            assert!(!is_b64token(bad), "{bad:?}");
        }
        assert!(!is_b64token(&"a".repeat(MAX_TOKEN_LEN + 1)));
    }

    #[test]
    fn expires_in_forms() {
        let d = |v: Value| expires_in(Some(&v));
        assert_eq!(d(json!(3600)), Some(Duration::from_secs(3600)));
        assert_eq!(d(json!(0)), Some(Duration::ZERO));
        assert_eq!(d(json!(3600.9)), Some(Duration::from_secs(3600)));
        assert_eq!(d(json!("3600")), Some(Duration::from_secs(3600)));
        for bad in [
            json!(-1),
            json!(-0.5),
            json!("soon"),
            json!("-5"),
            json!(true),
            json!([1]),
            json!(1e30),
        ] {
            assert_eq!(d(bad.clone()), Some(INVALID_EXPIRES_IN_LIFETIME), "{bad}");
        }
        assert_eq!(expires_in(None), None);
        assert_eq!(d(Value::Null), None);
    }
}
