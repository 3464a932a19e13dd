//! Encryption at rest for any store: [`EncryptedStore`] wraps a store and seals the secrets of
//! every record it writes (crate feature `encryption`). See the crate documentation's section
//! "Encrypting stored credentials" for what is sealed, what stays visible, key providers and
//! rotation.
//!
//! # The envelope
//!
//! The secret-bearing fields of a record are serialized together (as JSON) and sealed with
//! XChaCha20-Poly1305 under the current key, with a fresh random 192-bit nonce per write. The
//! result is one string,
//!
//! ```text
//! mcpenc1.<key id>.<base64url without padding of: nonce (24 bytes) | ciphertext | tag (16 bytes)>
//! ```
//!
//! stored in the record's primary secret field (the access token, the client secret, the PKCE
//! verifier); the record's other secret fields are left empty and its `extra` map is emptied
//! (unknown fields may hold secrets, such as an `id_token`: they are sealed too). The
//! associated data is the JSON array
//! `["mcp-auth encrypted record v1", namespace, kind, [key parts], key id, {visible fields}]`:
//! an envelope opens only in the namespace, under the record kind and key (issuer; issuer and
//! resource; state), with the key id, and beside exactly the visible fields it was sealed with.
//! Anything else — a copy under another issuer, resource or namespace, an edited expiry or
//! scope, a flipped bit, a truncation, a wrong key — fails with [`StoreError::Corrupt`].

mod envelope;
mod key;

use std::fmt;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::StoreError;
use crate::ids::{IssuerId, Namespace, TokenKey};
use crate::model::{ClientRegistration, Extra, PendingAuthorization, RefreshState, TokenSet};
use crate::record::RecordKey;
use crate::store::{
    BindingStore, CredentialStore, Expect, PendingAuthorizationStore, RefreshLease,
    RegistrationStore, StoreCapabilities, StoreInfo, TokenStore, Version, Versioned,
};
use crate::time::Timestamp;

pub use envelope::{ENVELOPE_PREFIX, envelope_key_id};
pub use key::{
    EncryptionKey, EnvKey, FileKey, KEY_LEN, KeyError, KeyProvider, KeySet, MAX_KEY_ID_LEN,
};

use envelope::{OpenError, Shape};

/// How many times [`EncryptedStore::rekey`] re-reads a record that a concurrent writer changed
/// under it before reporting it as not done.
const REKEY_ATTEMPTS: usize = 16;

/// A store whose records' secrets are sealed with a key from a [`KeySet`], over any inner
/// store. It implements every store trait; the inner store sees only envelopes where the
/// secrets were.
///
/// **What is sealed** (together, in one envelope per record):
///
/// | record | sealed | stays visible (and is authenticated as associated data) |
/// |---|---|---|
/// | [`TokenSet`] | `access_token`, `refresh_token`, `dpop_key`, `extra` (token response fields such as `id_token`) | the key (issuer, resource), `token_type`, `expires_at`, `scopes`, `obtained_at`, `refresh_state` |
/// | [`ClientRegistration`] | `client_secret`, `registration_access_token`, `extra` | the key (issuer), `client_id`, `client_secret_expires_at`, `client_id_issued_at`, `token_endpoint_auth_method`, `redirect_uris`, `grant_types`, `kind`, `registration_client_uri`, `created_at` |
/// | [`PendingAuthorization`] | `pkce_verifier`, `extra` | the key (`state`), `issuer`, `resource`, `client_id`, `redirect_uri`, `scopes`, `created_at`, `expires_at` |
/// | [`ResourceBinding`](crate::ResourceBinding) | nothing: it holds public discovery metadata only | everything (not authenticated) |
///
/// Whether a token set has a refresh token or a DPoP key, and what its `extra` holds, is not
/// visible. Refresh leases, versions, listings and the change stamp are the inner store's,
/// forwarded unchanged: [`TokenStore::binding_and_token_versions`] and
/// [`TokenStore::change_stamp`] decrypt nothing, so the engine's cache of decoded records serves
/// a warm `access_token()` over an encrypted store at the cost of the plain one.
///
/// **Records without encryption** (written before it was turned on) are refused with
/// [`StoreError::Corrupt`] ("not encrypted") unless the store was opened with
/// [`EncryptedStore::accept_plaintext`]; then they are served as they are, and
/// [`EncryptedStore::rekey`] encrypts them. Writes are always sealed.
///
/// Pass the namespace the inner store was opened with: it is bound into every envelope, so a
/// record copied into another tenant's namespace does not open there.
#[derive(Clone)]
pub struct EncryptedStore<S> {
    inner: S,
    namespace: Namespace,
    keys: KeySet,
    accept_plaintext: bool,
}

impl<S> EncryptedStore<S> {
    /// Wraps `inner`, a store opened over `namespace`, sealing writes with `keys`' current key.
    pub fn new(inner: S, namespace: Namespace, keys: KeySet) -> Self {
        Self {
            inner,
            namespace,
            keys,
            accept_plaintext: false,
        }
    }

    /// Also serve records that are not encrypted (written before encryption was turned on),
    /// as they are, instead of refusing them as `Corrupt`; [`rekey`](Self::rekey) then encrypts
    /// them. Turn it on for the migration only: while it is on, anyone who can write the inner
    /// store can plant a plaintext record that is served as genuine.
    pub fn accept_plaintext(mut self, yes: bool) -> Self {
        self.accept_plaintext = yes;
        self
    }

    /// The wrapped store (which sees envelopes, not secrets).
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Unwraps the store.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The namespace bound into envelopes.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// The keys.
    pub fn keys(&self) -> &KeySet {
        &self.keys
    }
}

impl<S: fmt::Debug> fmt::Debug for EncryptedStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptedStore")
            .field("inner", &self.inner)
            .field("namespace", &self.namespace)
            .field("keys", &self.keys)
            .field("accept_plaintext", &self.accept_plaintext)
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// What is sealed, and what is bound as associated data.

#[derive(Serialize)]
struct TokenSecretsOut<'a> {
    access_token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dpop_key: Option<&'a str>,
    extra: &'a Extra,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenSecretsIn {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    dpop_key: Option<String>,
    extra: Extra,
}

#[derive(Serialize)]
struct TokensVisible<'a> {
    token_type: &'a str,
    expires_at: Option<Timestamp>,
    scopes: &'a [String],
    obtained_at: Timestamp,
    refresh_state: Option<&'a RefreshState>,
}

impl<'a> TokensVisible<'a> {
    fn of(t: &'a TokenSet) -> Self {
        Self {
            token_type: &t.token_type,
            expires_at: t.expires_at,
            scopes: &t.scopes,
            obtained_at: t.obtained_at,
            refresh_state: t.refresh_state.as_ref(),
        }
    }
}

#[derive(Serialize)]
struct RegistrationSecretsOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    registration_access_token: Option<&'a str>,
    extra: &'a Extra,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistrationSecretsIn {
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default)]
    registration_access_token: Option<String>,
    extra: Extra,
}

#[derive(Serialize)]
struct RegistrationVisible<'a> {
    client_id: &'a str,
    client_secret_expires_at: Option<Timestamp>,
    client_id_issued_at: Option<Timestamp>,
    token_endpoint_auth_method: &'a str,
    redirect_uris: &'a [String],
    grant_types: &'a [String],
    kind: &'static str,
    registration_client_uri: Option<&'a str>,
    created_at: Timestamp,
}

impl<'a> RegistrationVisible<'a> {
    fn of(r: &'a ClientRegistration) -> Self {
        Self {
            client_id: &r.client_id,
            client_secret_expires_at: r.client_secret_expires_at,
            client_id_issued_at: r.client_id_issued_at,
            token_endpoint_auth_method: &r.token_endpoint_auth_method,
            redirect_uris: &r.redirect_uris,
            grant_types: &r.grant_types,
            kind: r.kind.as_str(),
            registration_client_uri: r.registration_client_uri.as_deref(),
            created_at: r.created_at,
        }
    }
}

#[derive(Serialize)]
struct PendingSecretsOut<'a> {
    pkce_verifier: &'a str,
    extra: &'a Extra,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PendingSecretsIn {
    pkce_verifier: String,
    extra: Extra,
}

#[derive(Serialize)]
struct PendingVisible<'a> {
    issuer: &'a str,
    resource: &'a str,
    client_id: &'a str,
    redirect_uri: &'a str,
    scopes: &'a [String],
    created_at: Timestamp,
    expires_at: Timestamp,
}

impl<'a> PendingVisible<'a> {
    fn of(p: &'a PendingAuthorization) -> Self {
        Self {
            issuer: p.issuer.as_str(),
            resource: p.resource.as_str(),
            client_id: &p.client_id,
            redirect_uri: &p.redirect_uri,
            scopes: &p.scopes,
            created_at: p.created_at,
            expires_at: p.expires_at,
        }
    }
}

fn corrupt(key: &RecordKey, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: key.to_string(),
        reason: reason.into(),
    }
}

fn secret_len(s: Option<&str>) -> usize {
    s.map_or(0, str::len)
}

/// Serializes `value` into a buffer wiped on drop, sized so it rarely reallocates (a
/// reallocation would leave a copy of the secrets in freed memory).
fn to_sealable<T: Serialize>(value: &T, hint: usize) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut buf = Zeroizing::new(Vec::with_capacity(hint * 2 + 256));
    serde_json::to_writer(&mut *buf, value)
        .map_err(|e| format!("cannot encode the sealed fields: {e}"))?;
    Ok(buf)
}

/// The record's part of the state of one sealed field, before opening it.
enum Classified<'a> {
    Sealed { key_id: &'a str, body: &'a str },
    Plain,
}

impl<S> EncryptedStore<S> {
    fn classify<'v>(
        &self,
        rk: &RecordKey,
        value: Option<&'v str>,
    ) -> Result<Classified<'v>, StoreError> {
        match value.map(envelope::shape) {
            Some(Shape::Sealed { key_id, body }) => Ok(Classified::Sealed { key_id, body }),
            Some(Shape::Unknown) => Err(corrupt(
                rk,
                "sealed in an envelope format this version does not know (written by a newer mcp-auth?)",
            )),
            Some(Shape::Plain) | None if self.accept_plaintext => Ok(Classified::Plain),
            Some(Shape::Plain) | None => Err(corrupt(
                rk,
                "is not encrypted (written before encryption was turned on, or without the key); \
                 open the store with accept_plaintext to read it and rekey to encrypt it",
            )),
        }
    }

    fn open_error(&self, rk: &RecordKey, e: OpenError) -> StoreError {
        match e {
            OpenError::UnknownKey(id) => corrupt(
                rk,
                format!(
                    "sealed with key id {id}, which is not among the keys provided (current {}, old {:?}); provide that key as an old key",
                    self.keys.current_id(),
                    self.keys.old_ids()
                ),
            ),
            OpenError::Malformed(reason) => corrupt(rk, reason),
            OpenError::Inauthentic(id) => corrupt(
                rk,
                format!(
                    "does not open with key {id}: a different key under that id, or the record was altered, truncated, or copied from another namespace, issuer, resource or record"
                ),
            ),
        }
    }

    fn ad<M: Serialize>(
        &self,
        rk: &RecordKey,
        key_parts: &[&str],
        key_id: &str,
        visible: &M,
    ) -> Result<Vec<u8>, StoreError> {
        envelope::associated_data(
            self.namespace.as_str(),
            rk.kind().as_str(),
            key_parts,
            key_id,
            visible,
        )
        .map_err(|reason| corrupt(rk, reason))
    }

    fn seal_for<M: Serialize, P: Serialize>(
        &self,
        rk: &RecordKey,
        key_parts: &[&str],
        visible: &M,
        secrets: &P,
        hint: usize,
    ) -> Result<SecretString, StoreError> {
        let current = self.keys.current();
        let ad = self.ad(rk, key_parts, current.id(), visible)?;
        let plaintext = to_sealable(secrets, hint).map_err(|reason| corrupt(rk, reason))?;
        let sealed =
            envelope::seal(current, &ad, &plaintext).map_err(|reason| corrupt(rk, reason))?;
        Ok(SecretString::from(sealed))
    }

    fn open_for<M: Serialize, P: for<'de> Deserialize<'de>>(
        &self,
        rk: &RecordKey,
        key_parts: &[&str],
        key_id: &str,
        body: &str,
        visible: &M,
    ) -> Result<P, StoreError> {
        let ad = self.ad(rk, key_parts, key_id, visible)?;
        let plaintext =
            envelope::open(&self.keys, key_id, body, &ad).map_err(|e| self.open_error(rk, e))?;
        serde_json::from_slice(&plaintext)
            .map_err(|_| corrupt(rk, "the decrypted content is not a valid sealed record"))
    }

    fn seal_tokens(&self, key: &TokenKey, t: &TokenSet) -> Result<TokenSet, StoreError> {
        let rk = RecordKey::Tokens(key.clone());
        let secrets = TokenSecretsOut {
            access_token: t.access_token.expose_secret(),
            refresh_token: t.refresh_token.as_ref().map(ExposeSecret::expose_secret),
            dpop_key: t.dpop_key.as_ref().map(ExposeSecret::expose_secret),
            extra: &t.extra,
        };
        let hint = secrets.access_token.len()
            + secret_len(secrets.refresh_token)
            + secret_len(secrets.dpop_key);
        let sealed = self.seal_for(
            &rk,
            &[key.issuer.as_str(), key.resource.as_str()],
            &TokensVisible::of(t),
            &secrets,
            hint,
        )?;
        Ok(TokenSet {
            access_token: sealed,
            token_type: t.token_type.clone(),
            expires_at: t.expires_at,
            refresh_token: None,
            scopes: t.scopes.clone(),
            obtained_at: t.obtained_at,
            refresh_state: t.refresh_state.clone(),
            dpop_key: None,
            extra: Extra::new(),
        })
    }

    fn open_tokens(&self, key: &TokenKey, t: TokenSet) -> Result<TokenSet, StoreError> {
        let rk = RecordKey::Tokens(key.clone());
        let secrets: TokenSecretsIn =
            match self.classify(&rk, Some(t.access_token.expose_secret()))? {
                Classified::Plain => return Ok(t),
                Classified::Sealed { key_id, body } => {
                    if t.refresh_token.is_some() || t.dpop_key.is_some() || !t.extra.is_empty() {
                        return Err(corrupt(
                            &rk,
                            "an encrypted record also carries unencrypted secret fields",
                        ));
                    }
                    self.open_for(
                        &rk,
                        &[key.issuer.as_str(), key.resource.as_str()],
                        key_id,
                        body,
                        &TokensVisible::of(&t),
                    )?
                }
            };
        Ok(TokenSet {
            access_token: SecretString::from(secrets.access_token),
            refresh_token: secrets.refresh_token.map(SecretString::from),
            dpop_key: secrets.dpop_key.map(SecretString::from),
            extra: secrets.extra,
            ..t
        })
    }

    fn seal_registration(&self, r: &ClientRegistration) -> Result<ClientRegistration, StoreError> {
        let rk = RecordKey::Registration(r.issuer.clone());
        let secrets = RegistrationSecretsOut {
            client_secret: r.client_secret.as_ref().map(ExposeSecret::expose_secret),
            registration_access_token: r
                .registration_access_token
                .as_ref()
                .map(ExposeSecret::expose_secret),
            extra: &r.extra,
        };
        let hint =
            secret_len(secrets.client_secret) + secret_len(secrets.registration_access_token);
        let sealed = self.seal_for(
            &rk,
            &[r.issuer.as_str()],
            &RegistrationVisible::of(r),
            &secrets,
            hint,
        )?;
        Ok(ClientRegistration {
            issuer: r.issuer.clone(),
            client_id: r.client_id.clone(),
            client_secret: Some(sealed),
            client_secret_expires_at: r.client_secret_expires_at,
            client_id_issued_at: r.client_id_issued_at,
            token_endpoint_auth_method: r.token_endpoint_auth_method.clone(),
            redirect_uris: r.redirect_uris.clone(),
            grant_types: r.grant_types.clone(),
            kind: r.kind,
            registration_access_token: None,
            registration_client_uri: r.registration_client_uri.clone(),
            created_at: r.created_at,
            extra: Extra::new(),
        })
    }

    fn open_registration(&self, r: ClientRegistration) -> Result<ClientRegistration, StoreError> {
        let rk = RecordKey::Registration(r.issuer.clone());
        let shown = r.client_secret.as_ref().map(ExposeSecret::expose_secret);
        let secrets: RegistrationSecretsIn = match self.classify(&rk, shown)? {
            Classified::Plain => return Ok(r),
            Classified::Sealed { key_id, body } => {
                if r.registration_access_token.is_some() || !r.extra.is_empty() {
                    return Err(corrupt(
                        &rk,
                        "an encrypted record also carries unencrypted secret fields",
                    ));
                }
                self.open_for(
                    &rk,
                    &[r.issuer.as_str()],
                    key_id,
                    body,
                    &RegistrationVisible::of(&r),
                )?
            }
        };
        Ok(ClientRegistration {
            client_secret: secrets.client_secret.map(SecretString::from),
            registration_access_token: secrets.registration_access_token.map(SecretString::from),
            extra: secrets.extra,
            ..r
        })
    }

    fn seal_pending(&self, p: &PendingAuthorization) -> Result<PendingAuthorization, StoreError> {
        let rk = RecordKey::Pending(p.state.clone());
        let secrets = PendingSecretsOut {
            pkce_verifier: p.pkce_verifier.expose_secret(),
            extra: &p.extra,
        };
        let hint = secrets.pkce_verifier.len();
        let sealed = self.seal_for(&rk, &[&p.state], &PendingVisible::of(p), &secrets, hint)?;
        Ok(PendingAuthorization {
            state: p.state.clone(),
            pkce_verifier: sealed,
            issuer: p.issuer.clone(),
            resource: p.resource.clone(),
            client_id: p.client_id.clone(),
            redirect_uri: p.redirect_uri.clone(),
            scopes: p.scopes.clone(),
            created_at: p.created_at,
            expires_at: p.expires_at,
            extra: Extra::new(),
        })
    }

    fn open_pending(&self, p: PendingAuthorization) -> Result<PendingAuthorization, StoreError> {
        let rk = RecordKey::Pending(p.state.clone());
        let secrets: PendingSecretsIn =
            match self.classify(&rk, Some(p.pkce_verifier.expose_secret()))? {
                Classified::Plain => return Ok(p),
                Classified::Sealed { key_id, body } => {
                    if !p.extra.is_empty() {
                        return Err(corrupt(
                            &rk,
                            "an encrypted record also carries unencrypted secret fields",
                        ));
                    }
                    self.open_for(&rk, &[&p.state], key_id, body, &PendingVisible::of(&p))?
                }
            };
        Ok(PendingAuthorization {
            pkce_verifier: SecretString::from(secrets.pkce_verifier),
            extra: secrets.extra,
            ..p
        })
    }

    /// Whether `value` is an envelope under the current key (nothing to rekey).
    fn under_current_key(&self, value: Option<&str>) -> bool {
        value.and_then(envelope_key_id) == Some(self.keys.current_id())
    }
}

fn open_versioned<T>(
    found: Option<Versioned<T>>,
    open: impl FnOnce(T) -> Result<T, StoreError>,
) -> Result<Option<Versioned<T>>, StoreError> {
    found
        .map(|v| {
            Ok(Versioned {
                value: open(v.value)?,
                version: v.version,
            })
        })
        .transpose()
}

// ---------------------------------------------------------------------------------------------
// The store traits.

#[deny(clippy::missing_trait_methods)]
impl<S: StoreInfo> StoreInfo for EncryptedStore<S> {
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }

    fn capabilities(&self) -> StoreCapabilities {
        self.inner.capabilities()
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<S: RegistrationStore> RegistrationStore for EncryptedStore<S> {
    async fn get_registration(
        &self,
        issuer: &IssuerId,
    ) -> Result<Option<Versioned<ClientRegistration>>, StoreError> {
        let found = self.inner.get_registration(issuer).await?;
        open_versioned(found, |r| self.open_registration(r))
    }

    async fn put_registration(
        &self,
        registration: &ClientRegistration,
        expect: Expect,
    ) -> Result<Version, StoreError> {
        let sealed = self.seal_registration(registration)?;
        self.inner.put_registration(&sealed, expect).await
    }

    async fn delete_registration(
        &self,
        issuer: &IssuerId,
        expect: Expect,
    ) -> Result<bool, StoreError> {
        self.inner.delete_registration(issuer, expect).await
    }

    async fn list_registrations(&self) -> Result<Vec<IssuerId>, StoreError> {
        self.inner.list_registrations().await
    }

    async fn scan_registrations(&self) -> Result<Vec<Versioned<ClientRegistration>>, StoreError> {
        let rows = self.inner.scan_registrations().await?;
        crate::raw::par_map(rows, &|v: Versioned<ClientRegistration>| {
            Ok(Some(Versioned {
                value: self.open_registration(v.value)?,
                version: v.version,
            }))
        })
    }

    async fn put_registrations_any(
        &self,
        registrations: &[ClientRegistration],
    ) -> Result<Vec<Version>, StoreError> {
        let sealed = registrations
            .iter()
            .map(|r| self.seal_registration(r))
            .collect::<Result<Vec<_>, _>>()?;
        self.inner.put_registrations_any(&sealed).await
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<S: TokenStore> TokenStore for EncryptedStore<S> {
    async fn get_tokens(&self, key: &TokenKey) -> Result<Option<Versioned<TokenSet>>, StoreError> {
        let found = self.inner.get_tokens(key).await?;
        open_versioned(found, |t| self.open_tokens(key, t))
    }

    async fn put_tokens(
        &self,
        key: &TokenKey,
        tokens: &TokenSet,
        expect: Expect,
    ) -> Result<Version, StoreError> {
        let sealed = self.seal_tokens(key, tokens)?;
        self.inner.put_tokens(key, &sealed, expect).await
    }

    async fn delete_tokens(&self, key: &TokenKey, expect: Expect) -> Result<bool, StoreError> {
        self.inner.delete_tokens(key, expect).await
    }

    async fn delete_issuer_tokens(&self, issuer: &IssuerId) -> Result<usize, StoreError> {
        self.inner.delete_issuer_tokens(issuer).await
    }

    async fn list_tokens(&self) -> Result<Vec<TokenKey>, StoreError> {
        self.inner.list_tokens().await
    }

    async fn scan_tokens(&self) -> Result<Vec<(TokenKey, Versioned<TokenSet>)>, StoreError> {
        let rows = self.inner.scan_tokens().await?;
        crate::raw::par_map(rows, &|(key, v): (TokenKey, Versioned<TokenSet>)| {
            let value = self.open_tokens(&key, v.value)?;
            Ok(Some((
                key,
                Versioned {
                    value,
                    version: v.version,
                },
            )))
        })
    }

    async fn put_tokens_any(
        &self,
        tokens: &[(TokenKey, TokenSet)],
    ) -> Result<Vec<Version>, StoreError> {
        let sealed = tokens
            .iter()
            .map(|(key, t)| Ok((key.clone(), self.seal_tokens(key, t)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.inner.put_tokens_any(&sealed).await
    }

    async fn binding_and_token_versions(
        &self,
        key: &TokenKey,
    ) -> Result<(Option<Version>, Option<Version>), StoreError> {
        // Versions only: nothing to decrypt. This is the engine's warm path.
        self.inner.binding_and_token_versions(key).await
    }

    fn change_stamp(&self) -> Option<u64> {
        self.inner.change_stamp()
    }

    async fn try_acquire_refresh_lease(
        &self,
        key: &TokenKey,
        ttl: std::time::Duration,
    ) -> Result<Option<RefreshLease>, StoreError> {
        self.inner.try_acquire_refresh_lease(key, ttl).await
    }

    async fn renew_refresh_lease(
        &self,
        lease: &RefreshLease,
        ttl: std::time::Duration,
    ) -> Result<Option<RefreshLease>, StoreError> {
        self.inner.renew_refresh_lease(lease, ttl).await
    }

    async fn release_refresh_lease(&self, lease: &RefreshLease) -> Result<bool, StoreError> {
        self.inner.release_refresh_lease(lease).await
    }
}

// Bindings hold no secret: forwarded unchanged.
crate::forward_binding_store!([S: BindingStore] EncryptedStore<S>, inner);

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<S: PendingAuthorizationStore> PendingAuthorizationStore for EncryptedStore<S> {
    async fn insert_pending(&self, pending: &PendingAuthorization) -> Result<(), StoreError> {
        let sealed = self.seal_pending(pending)?;
        self.inner.insert_pending(&sealed).await
    }

    async fn take_pending(&self, state: &str) -> Result<Option<PendingAuthorization>, StoreError> {
        self.inner
            .take_pending(state)
            .await?
            .map(|p| self.open_pending(p))
            .transpose()
    }
}

// ---------------------------------------------------------------------------------------------
// Rotation.

/// What [`EncryptedStore::rekey`] did with one kind of record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RekeyCounts {
    /// Re-sealed under the current key (from an old key, or from plaintext).
    pub resealed: usize,
    /// Already sealed under the current key: left alone.
    pub already_current: usize,
    /// Listed, then deleted by someone else before it was read.
    pub vanished: usize,
}

/// The outcome of [`EncryptedStore::rekey`].
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct RekeyReport {
    /// Client registrations.
    pub registrations: RekeyCounts,
    /// Token sets.
    pub tokens: RekeyCounts,
    /// Records left as they were: ones that do not open ([`StoreError::Corrupt`]: a key not
    /// provided, a plaintext record without [`EncryptedStore::accept_plaintext`], damage), or that
    /// kept changing under the rekey ([`StoreError::Conflict`]). Never contains a secret.
    pub failed: Vec<StoreError>,
}

impl RekeyReport {
    /// True when every listed record is now sealed under the current key (or is gone): the old
    /// keys can be retired. Pending authorizations are not rekeyed (they cannot be listed; they
    /// expire within their TTL): keep the old key that long, or let the logins in flight fail.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }
}

enum Rekeyed {
    Resealed,
    AlreadyCurrent,
    Vanished,
}

impl RekeyCounts {
    fn add(&mut self, outcome: &Rekeyed) {
        match outcome {
            Rekeyed::Resealed => self.resealed += 1,
            Rekeyed::AlreadyCurrent => self.already_current += 1,
            Rekeyed::Vanished => self.vanished += 1,
        }
    }
}

impl<S: CredentialStore> EncryptedStore<S> {
    /// Re-seals every registration and token set of the namespace under the current key:
    /// records under an old key (and plaintext records, when
    /// [`accept_plaintext`](Self::accept_plaintext) is on) are read, opened, sealed again and
    /// written back with a compare-and-swap on the version read, so a concurrent writer is never
    /// overwritten (its write is sealed with the current key anyway; the record is re-read and
    /// found current). Records already under the current key are not rewritten.
    ///
    /// Restartable: every record is, at every moment, either as it was or re-sealed, so a crash
    /// midway leaves every record readable **as long as the old keys are still provided**; run
    /// it again to finish. Keep the old keys until a run reports
    /// [`is_complete`](RekeyReport::is_complete). Needs a store that can list its records
    /// ([`StoreError::Unsupported`] otherwise). Store errors other than `Corrupt` and `Conflict`
    /// stop the run.
    ///
    /// A refresh running in another process at the same time is safe: the engine saves rotated
    /// tokens with a compare-and-swap too, and on a conflict re-reads the record and retries
    /// when it still holds the refresh token it sent.
    ///
    /// # Errors
    ///
    /// As [`rekey_with`](Self::rekey_with).
    pub async fn rekey(&self) -> Result<RekeyReport, StoreError> {
        self.rekey_with(&|_| {}).await
    }

    /// [`rekey`](Self::rekey), calling `progress` with the counts so far after each record.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unsupported`] when the store cannot list its records. Any other store error
    /// than [`StoreError::Corrupt`] and [`StoreError::Conflict`] (those are collected in the
    /// report's `failed` list instead) stops the run and is returned: [`StoreError::Unavailable`]
    /// when the backend cannot be reached, for example. Records rekeyed before the error stay
    /// rekeyed.
    pub async fn rekey_with(
        &self,
        progress: &(dyn Fn(&RekeyReport) + Sync),
    ) -> Result<RekeyReport, StoreError> {
        if !self.inner.capabilities().list {
            return Err(StoreError::Unsupported {
                backend: self.inner.backend_name(),
                operation: "rekey (the store cannot list its records)",
            });
        }
        let mut report = RekeyReport::default();
        for issuer in self.inner.list_registrations().await? {
            match self.rekey_registration(&issuer).await {
                Ok(outcome) => report.registrations.add(&outcome),
                Err(e @ (StoreError::Corrupt { .. } | StoreError::Conflict { .. })) => {
                    report.failed.push(e);
                }
                Err(e) => return Err(e),
            }
            progress(&report);
        }
        for key in self.inner.list_tokens().await? {
            match self.rekey_tokens(&key).await {
                Ok(outcome) => report.tokens.add(&outcome),
                Err(e @ (StoreError::Corrupt { .. } | StoreError::Conflict { .. })) => {
                    report.failed.push(e);
                }
                Err(e) => return Err(e),
            }
            progress(&report);
        }
        Ok(report)
    }

    async fn rekey_registration(&self, issuer: &IssuerId) -> Result<Rekeyed, StoreError> {
        for _ in 0..REKEY_ATTEMPTS {
            let Some(found) = self.inner.get_registration(issuer).await? else {
                return Ok(Rekeyed::Vanished);
            };
            let shown = found
                .value
                .client_secret
                .as_ref()
                .map(ExposeSecret::expose_secret);
            if self.under_current_key(shown) {
                return Ok(Rekeyed::AlreadyCurrent);
            }
            let sealed = self.seal_registration(&self.open_registration(found.value)?)?;
            match self
                .inner
                .put_registration(&sealed, Expect::Version(found.version))
                .await
            {
                Ok(_) => return Ok(Rekeyed::Resealed),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict {
            key: RecordKey::Registration(issuer.clone()).to_string(),
        })
    }

    async fn rekey_tokens(&self, key: &TokenKey) -> Result<Rekeyed, StoreError> {
        for _ in 0..REKEY_ATTEMPTS {
            let Some(found) = self.inner.get_tokens(key).await? else {
                return Ok(Rekeyed::Vanished);
            };
            if self.under_current_key(Some(found.value.access_token.expose_secret())) {
                return Ok(Rekeyed::AlreadyCurrent);
            }
            let sealed = self.seal_tokens(key, &self.open_tokens(key, found.value)?)?;
            match self
                .inner
                .put_tokens(key, &sealed, Expect::Version(found.version))
                .await
            {
                Ok(_) => return Ok(Rekeyed::Resealed),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict {
            key: RecordKey::Tokens(key.clone()).to_string(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The conformance suite through the wrapper.

/// A conformance-suite factory that wraps every store another factory opens in an
/// [`EncryptedStore`] (over the namespace it was opened with), so the whole suite runs through
/// encryption; raw writes go to the inner store, as a thief's or a bug's would.
///
/// ```
/// use mcp_auth_core::conformance::MemoryFactory;
/// use mcp_auth_core::encryption::{EncryptedFactory, EncryptionKey, KeySet};
///
/// let keys = KeySet::new(EncryptionKey::generate().unwrap());
/// mcp_auth_core::store_conformance_tests!(EncryptedFactory::new(MemoryFactory::new(), keys.clone()));
/// # fn main() {}
/// ```
#[cfg(feature = "conformance")]
#[derive(Debug)]
pub struct EncryptedFactory<F> {
    inner: F,
    keys: KeySet,
}

#[cfg(feature = "conformance")]
impl<F> EncryptedFactory<F> {
    /// Wraps `inner`'s stores, sealing with `keys`.
    pub fn new(inner: F, keys: KeySet) -> Self {
        Self { inner, keys }
    }

    /// The wrapped factory.
    pub fn inner(&self) -> &F {
        &self.inner
    }
}

#[cfg(feature = "conformance")]
#[async_trait]
impl<F: crate::conformance::StoreFactory> crate::conformance::StoreFactory for EncryptedFactory<F> {
    type Store = EncryptedStore<F::Store>;

    async fn open(&self, namespace: &Namespace) -> Result<Self::Store, StoreError> {
        let inner = self.inner.open(namespace).await?;
        Ok(EncryptedStore::new(
            inner,
            namespace.clone(),
            self.keys.clone(),
        ))
    }

    async fn write_raw(
        &self,
        namespace: &Namespace,
        key: &RecordKey,
        bytes: &[u8],
    ) -> Result<bool, StoreError> {
        self.inner.write_raw(namespace, key, bytes).await
    }
}
