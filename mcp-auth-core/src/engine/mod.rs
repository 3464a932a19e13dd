//! The OAuth engine: one [`McpAuth`] per client, over a [`CredentialStore`].
//!
//! - [`McpAuth::access_token`]: a valid token for an MCP server — from the store, refreshed
//!   (once per deployment, through the store's lease) or, failing both, by authorizing.
//! - [`McpAuth::handle_unauthorized`]: after a `401`, re-discovers the server's authorization
//!   server (a migration is always noticed) and applies the SEP-2352 policy
//!   ([`crate::binding`]).
//! - [`McpAuth::handle_insufficient_scope`]: after a `403 insufficient_scope`, re-authorizes with
//!   the union of the old and the challenged scopes, a bounded number of times.
//! - [`McpAuth::logout`]: deletes a server's tokens and revokes them at its AS.

mod assertion;
mod authorizer;
mod device;
mod discovery;
mod dpop;
mod error;
mod http;
mod refresh;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use sha2::Digest as _;
use tracing::{Instrument, debug, info_span, warn};
use url::Url;

pub use assertion::{
    AssertionProvider, AssertionRequest, AssertionSource, IdentityAssertionGrant, JwtBearerGrant,
};
#[cfg(feature = "headless")]
pub use authorizer::HeadlessAuthorizer;
pub use authorizer::{
    AuthorizationRequest, Authorizer, LoopbackAuthorizer, Opener, PasteAuthorizer,
};
pub use device::DeviceCode;
pub use discovery::{Challenge, metadata_urls};
pub use dpop::{AccessCredential, DpopKey, DpopMode};
pub use error::AuthError;
pub use http::HttpPolicy;

use self::discovery::{ResourceMetadata, ServerMetadata};
use self::http::{Http, redact};
use crate::binding::{self, BindingAction};
use crate::error::StoreError;
use crate::ids::{IssuerId, ResourceUri, TokenKey};
use crate::model::{
    ClientRegistration, PendingAuthorization, RegistrationKind, ResourceBinding, TokenSet,
};
use crate::store::{CredentialStore, Expect};
use crate::time::Timestamp;

/// Client credentials configured out of band for one authorization server.
#[derive(Clone)]
pub struct PreRegisteredClient {
    /// The client_id.
    pub client_id: String,
    /// The secret, for confidential clients.
    pub client_secret: Option<SecretString>,
    /// `client_secret_basic`, `client_secret_post` or `none`.
    pub token_endpoint_auth_method: String,
    /// The issuer these credentials belong to. Declare it: a server that names another AS is
    /// then refused before anything is sent. Undeclared credentials bind to the first AS used.
    pub issuer: Option<IssuerId>,
}

impl fmt::Debug for PreRegisteredClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreRegisteredClient")
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field(
                "token_endpoint_auth_method",
                &self.token_endpoint_auth_method,
            )
            .field("issuer", &self.issuer)
            .finish()
    }
}

/// Who the client is and how it registers.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientConfig {
    /// `client_name` for Dynamic Client Registration.
    pub client_name: String,
    /// The redirect URI (loopback for native clients, RFC 8252).
    pub redirect_uri: String,
    /// `application_type` for Dynamic Client Registration (`native` or `web`).
    pub application_type: String,
    /// A Client ID Metadata Document URL: used as the `client_id` at every AS that supports
    /// CIMD.
    pub client_metadata_url: Option<String>,
    /// Pre-registered credentials (highest priority).
    pub pre_registered: Option<PreRegisteredClient>,
    /// Refresh this long before the access token expires (at most a quarter of the token's
    /// lifetime, so short-lived tokens are not refreshed right after they were obtained).
    pub refresh_margin: Duration,
    /// TTL of the cross-process refresh lease. Its holder renews it every quarter TTL while the
    /// refresh runs, so a holder that died is noticed within about one TTL.
    pub lease_ttl: Duration,
    /// Timeout of a refresh-token request, longer than the HTTP timeout: its answer carries the
    /// only copy of a rotated refresh token, and a request given up on may already have rotated
    /// it.
    pub refresh_timeout: Duration,
    /// How long [`McpAuth::flush`] waits for rotated tokens the store could not take at once
    /// (the save itself goes on for as long as the process lives).
    pub save_deadline: Duration,
    /// How long store operations on the token path are retried while the store is unavailable
    /// (a restart of a few seconds is ridden out).
    pub store_retry_budget: Duration,
    /// Authorizations attempted for the same insufficient scopes before giving up.
    pub max_step_up_attempts: u32,
    /// How long a started authorization stays redeemable.
    pub pending_ttl: Duration,
    /// Machine-to-machine credentials (SEP-1046): when set, tokens come from the
    /// `client_credentials` grant instead of an interactive authorization.
    pub client_credentials: Option<ClientCredentials>,
    /// Enterprise-managed authorization (SEP-990): tokens from the user's identity assertion,
    /// exchanged at the enterprise IdP for an ID-JAG that is presented as a JWT bearer grant.
    pub identity_assertion: Option<IdentityAssertionGrant>,
    /// Workload identity federation: tokens from the RFC 7523 JWT bearer grant with the
    /// workload's JWT.
    pub jwt_bearer: Option<JwtBearerGrant>,
    /// Talk to 2025-03-26 servers that publish no protected resource metadata: their origin is
    /// taken as the authorization server (default true).
    pub legacy_discovery: bool,
    /// Allow a client secret (pre-registered or client-credentials) whose issuer is not declared:
    /// it is then sent to the first authorization server the MCP server names, which may be
    /// the server's own choice of AS (default false: [`McpAuthBuilder::build`] refuses it).
    /// Only for environments where the MCP server is trusted, such as test harnesses.
    pub allow_undeclared_secret_issuer: bool,
    /// Sender-constrained tokens (DPoP, RFC 9449) for the authorization-code flow and its
    /// refreshes (default [`DpopMode::Off`]).
    pub dpop: DpopMode,
}

/// Credentials for the `client_credentials` grant (SEP-1046).
#[derive(Clone)]
pub struct ClientCredentials {
    /// The client_id.
    pub client_id: String,
    /// How the client authenticates.
    pub auth: ClientCredentialsAuth,
    /// The issuer these credentials belong to, if known (checked like pre-registered ones).
    pub issuer: Option<IssuerId>,
}

/// Client authentication for the `client_credentials` grant.
#[derive(Clone)]
#[non_exhaustive]
pub enum ClientCredentialsAuth {
    /// `client_secret_basic`.
    Secret(SecretString),
    /// `private_key_jwt` (RFC 7523): a signed assertion with `iss = sub = client_id` and
    /// `aud` = the issuer.
    PrivateKeyJwt {
        /// PKCS#8 PEM private key.
        private_key_pem: SecretString,
        /// JWS algorithm: `ES256`, `ES384`, `RS256`, `PS256`, `EdDSA`.
        algorithm: String,
        /// Optional `kid` header.
        key_id: Option<String>,
    },
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match &self.auth {
            ClientCredentialsAuth::Secret(_) => "client_secret_basic".to_owned(),
            ClientCredentialsAuth::PrivateKeyJwt { algorithm, .. } => {
                format!("private_key_jwt({algorithm})")
            }
        };
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.client_id)
            .field("auth", &auth)
            .field("issuer", &self.issuer)
            .finish()
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            client_name: "mcp-auth".to_owned(),
            redirect_uri: "http://127.0.0.1:33418/callback".to_owned(),
            application_type: "native".to_owned(),
            client_metadata_url: None,
            pre_registered: None,
            refresh_margin: Duration::from_secs(60),
            lease_ttl: Duration::from_secs(2),
            refresh_timeout: Duration::from_secs(60),
            save_deadline: Duration::from_secs(30),
            store_retry_budget: Duration::from_secs(5),
            max_step_up_attempts: 2,
            pending_ttl: Duration::from_secs(600),
            client_credentials: None,
            identity_assertion: None,
            jwt_bearer: None,
            legacy_discovery: true,
            allow_undeclared_secret_issuer: false,
            dpop: DpopMode::Off,
        }
    }
}

impl ClientConfig {
    /// Uses DPoP (RFC 9449) as `mode` says. With DPoP-bound tokens every request to the MCP
    /// server needs `Authorization: DPoP <token>` and a fresh proof
    /// ([`McpAuth::access_credential`], [`AccessCredential::dpop_proof`]); `mcp-auth-rmcp` and
    /// `mcp-auth proxy` send them.
    ///
    /// ```
    /// use mcp_auth_core::{ClientConfig, DpopMode};
    /// let config = ClientConfig::default().with_dpop(DpopMode::IfSupported);
    /// assert_eq!(config.dpop, DpopMode::IfSupported);
    /// ```
    pub fn with_dpop(mut self, mode: DpopMode) -> Self {
        self.dpop = mode;
        self
    }

    /// Sets the redirect URI.
    pub fn with_redirect_uri(mut self, uri: impl Into<String>) -> Self {
        self.redirect_uri = uri.into();
        self
    }

    /// Sets a Client ID Metadata Document URL.
    pub fn with_client_metadata_url(mut self, url: impl Into<String>) -> Self {
        self.client_metadata_url = Some(url.into());
        self
    }

    /// Sets pre-registered credentials.
    pub fn with_pre_registered(mut self, client: PreRegisteredClient) -> Self {
        self.pre_registered = Some(client);
        self
    }

    /// Uses the `client_credentials` grant with these credentials.
    pub fn with_client_credentials(mut self, credentials: ClientCredentials) -> Self {
        self.client_credentials = Some(credentials);
        self
    }

    /// Uses enterprise-managed authorization (SEP-990): the user's identity assertion (an ID
    /// token from the enterprise IdP) is exchanged at the IdP for an ID-JAG (RFC 8693), which
    /// is presented to the MCP server's authorization server as a JWT bearer grant (RFC 7523)
    /// with this client's `client_secret_basic` credentials. No browser, registration, PKCE or
    /// refresh token: an expired access token is replaced by running both legs again. The
    /// client is recorded as pre-registered at the authorization server that issued the tokens
    /// (SEP-2352: a move to another one is refused). Without a declared issuer
    /// ([`IdentityAssertionGrant::with_issuer`]) [`McpAuthBuilder::build`] refuses the
    /// configuration unless [`ClientConfig::allowing_undeclared_secret_issuer`] is set.
    ///
    /// ```
    /// use mcp_auth_core::{ClientConfig, IdentityAssertionGrant, IssuerId, SecretString};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = ClientConfig::default().with_identity_assertion(
    ///     IdentityAssertionGrant::new(
    ///         "https://idp.example.com/oauth2/token",
    ///         SecretString::from("<the user's ID token>"),
    ///         "mcp-client",
    ///         SecretString::from("<its secret at the authorization server>"),
    ///     )?
    ///     .with_idp_client("mcp-client-at-the-idp", None)
    ///     .with_issuer(IssuerId::new("https://auth.mcp.example.com")?),
    /// );
    /// assert!(config.identity_assertion.is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_identity_assertion(mut self, grant: IdentityAssertionGrant) -> Self {
        self.identity_assertion = Some(grant);
        self
    }

    /// Uses workload identity federation: the workload's JWT is presented to the MCP server's
    /// authorization server as an RFC 7523 JWT bearer grant, with no client authentication and
    /// no registration. One request per token: a refused assertion is an error (no retry, no
    /// other grant), and is not presented again; an expired access token is replaced by
    /// presenting the assertion again (or a fresh one from an [`AssertionProvider`]). The
    /// assertion is recorded as pre-registered at the authorization server that accepted it
    /// (SEP-2352: a move to another one is refused). Without a declared issuer ([`JwtBearerGrant::with_issuer`])
    /// [`McpAuthBuilder::build`] refuses the configuration unless
    /// [`ClientConfig::allowing_undeclared_secret_issuer`] is set.
    ///
    /// ```
    /// use mcp_auth_core::{ClientConfig, IssuerId, JwtBearerGrant, SecretString};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = ClientConfig::default().with_jwt_bearer(
    ///     JwtBearerGrant::new(SecretString::from("<the workload's JWT>"))
    ///         .with_client_id("my-workload")
    ///         .with_issuer(IssuerId::new("https://auth.mcp.example.com")?),
    /// );
    /// assert!(config.jwt_bearer.is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_jwt_bearer(mut self, grant: JwtBearerGrant) -> Self {
        self.jwt_bearer = Some(grant);
        self
    }

    /// Sets the timeout of refresh-token requests (see [`ClientConfig::refresh_timeout`]).
    pub fn with_refresh_timeout(mut self, timeout: Duration) -> Self {
        self.refresh_timeout = timeout;
        self
    }

    /// Sets the refresh lease TTL (see [`ClientConfig::lease_ttl`]).
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Sets how long store outages are ridden out on the token path (see
    /// [`ClientConfig::store_retry_budget`]).
    pub fn with_store_retry_budget(mut self, budget: Duration) -> Self {
        self.store_retry_budget = budget;
        self
    }

    /// Sets how long [`McpAuth::flush`] waits for unsaved rotated tokens.
    pub fn with_save_deadline(mut self, deadline: Duration) -> Self {
        self.save_deadline = deadline;
        self
    }

    /// Allows client secrets without a declared issuer (see
    /// [`ClientConfig::allow_undeclared_secret_issuer`]).
    pub fn allowing_undeclared_secret_issuer(mut self) -> Self {
        self.allow_undeclared_secret_issuer = true;
        self
    }

    /// Sets the client name used for registration.
    pub fn with_client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = name.into();
        self
    }
}

/// What [`McpAuth::logout`] achieved at the authorization server (the local tokens are deleted
/// in every case).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct LogoutReport {
    /// The authorization server the MCP server was bound to.
    pub issuer: Option<IssuerId>,
    /// Tokens the server confirmed revoked (`"refresh_token"`, `"access_token"`).
    pub revoked: Vec<&'static str>,
    /// Tokens the server did not revoke, with its answer or the failure (RFC 7009 allows a
    /// server to refuse, e.g. `unsupported_token_type` for self-contained access tokens).
    pub not_revoked: Vec<(&'static str, String)>,
    /// Why nothing was sent to the server, when nothing was.
    pub not_attempted: Option<String>,
}

/// The MCP client authorization engine.
///
/// Cheap to share (`Arc<McpAuth>`); every method takes `&self`. Credentials live only in the
/// store, keyed by issuer, so several engines (processes) over one store cooperate.
pub struct McpAuth {
    store: Arc<dyn CredentialStore>,
    http: Http,
    config: ClientConfig,
    authorizer: Arc<dyn Authorizer>,
    refresh_locks: KeyedLocks<TokenKey>,
    authorize_locks: KeyedLocks<ResourceUri>,
    registration_locks: KeyedLocks<IssuerId>,
    step_ups: Mutex<HashMap<ResourceUri, (BTreeSet<String>, u32)>>,
    unsaved: Arc<refresh::Unsaved>,
    /// The decoded binding's issuer and token set of each server, with the record versions
    /// they were read at: a warm `access_token()` only asks the store whether both versions
    /// are still current (one round trip, no value read, nothing decoded).
    hot: Mutex<HashMap<ResourceUri, Arc<HotEntry>>>,
    /// Cleared when the store answers `Unsupported` to the version probe.
    versions_supported: std::sync::atomic::AtomicBool,
    /// The latest `DPoP-Nonce` of each authorization and resource server.
    dpop_nonces: dpop::Nonces,
    /// Parsed DPoP keys of the stored token sets.
    dpop_keys: dpop::KeyCache,
}

/// What a warm `access_token()` needs, and the versions that prove it current.
struct HotEntry {
    key: TokenKey,
    binding_version: crate::store::Version,
    token_version: crate::store::Version,
    tokens: TokenSet,
    /// The store's change stamp read before the records were (`TokenStore::change_stamp`).
    stamp: Option<u64>,
}

/// One async mutex per key: single-flight for refreshes, authorizations and registrations
/// inside the process (the store's lease and CAS cover other processes).
struct KeyedLocks<K>(Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>);

impl<K: std::hash::Hash + Eq + Clone> KeyedLocks<K> {
    fn new() -> Self {
        Self(Mutex::default())
    }

    fn get(&self, key: &K) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(locks.entry(key.clone()).or_default())
    }
}

impl fmt::Debug for McpAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McpAuth")
            .field("store", &self.store)
            .field("http", &self.http)
            .field("config", &self.config)
            .field("authorizer", &self.authorizer)
            .finish_non_exhaustive()
    }
}

/// Builds an [`McpAuth`].
#[derive(Debug)]
pub struct McpAuthBuilder {
    store: Arc<dyn CredentialStore>,
    config: ClientConfig,
    policy: HttpPolicy,
    authorizer: Option<Arc<dyn Authorizer>>,
}

impl McpAuthBuilder {
    /// Who the client is.
    pub fn client(mut self, config: ClientConfig) -> Self {
        self.config = config;
        self
    }

    /// Timeouts, size limits and the address policy.
    pub fn http_policy(mut self, policy: HttpPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// How authorization codes are obtained. Default:
    /// [`LoopbackAuthorizer::system_browser`] — the system browser and a listener on the
    /// configured loopback redirect URI, 5 minutes to finish. Give another one to show the URL
    /// yourself ([`LoopbackAuthorizer::with_opener`]), to accept a pasted redirect
    /// ([`PasteAuthorizer`]) or, in tests against a server that approves at once, the
    /// `HeadlessAuthorizer` of feature `headless`.
    pub fn authorizer(mut self, authorizer: Arc<dyn Authorizer>) -> Self {
        self.authorizer = Some(authorizer);
        self
    }

    /// Builds the engine.
    ///
    /// # Errors
    ///
    /// [`AuthError::Config`] when the configuration is inconsistent: `redirect_uri` or
    /// `client_metadata_url` is not an absolute URL (or the latter has no path, has a fragment or
    /// is refused by the [`HttpPolicy`]); a pre-registered client secret or client credentials name
    /// no issuer (unless undeclared secret issuers are allowed); more than one of client
    /// credentials, identity assertion and JWT bearer is configured; or an identity assertion grant
    /// lacks its `client_id`, its issuer or a usable IdP token endpoint.
    pub fn build(self) -> Result<McpAuth, AuthError> {
        Url::parse(&self.config.redirect_uri)
            .map_err(|_| AuthError::Config("redirect_uri is not an absolute URL".to_owned()))?;
        // A secret must know where it may be sent: without a declared issuer it would go to
        // whichever authorization server a (possibly hostile) MCP server names first.
        if !self.config.allow_undeclared_secret_issuer {
            if let Some(pre) = &self.config.pre_registered
                && pre.client_secret.is_some()
                && pre.issuer.is_none()
            {
                return Err(AuthError::Config(
                    "a pre-registered client secret needs the issuer it belongs to (set \
                     PreRegisteredClient::issuer)"
                        .to_owned(),
                ));
            }
            if let Some(cc) = &self.config.client_credentials
                && cc.issuer.is_none()
            {
                return Err(AuthError::Config(
                    "client credentials need the issuer they belong to (set \
                     ClientCredentials::issuer)"
                        .to_owned(),
                ));
            }
        }
        let http = Http::new(self.policy.clone())?;
        assertion::check_config(&self.config, &http)?;
        if let Some(raw) = &self.config.client_metadata_url {
            // R21: a Client ID Metadata Document URL is https with a path (http only to loopback
            // when the policy allows it, for tests).
            let url = Url::parse(raw).map_err(|_| {
                AuthError::Config("client_metadata_url is not an absolute URL".to_owned())
            })?;
            http.check_url(&url)
                .map_err(|e| AuthError::Config(format!("client_metadata_url: {e}")))?;
            if url.path() == "/" || url.fragment().is_some() {
                return Err(AuthError::Config(
                    "client_metadata_url must have a path and no fragment".to_owned(),
                ));
            }
        }
        let authorizer = match self.authorizer {
            Some(a) => a,
            None => Arc::new(LoopbackAuthorizer::system_browser()),
        };
        Ok(McpAuth {
            store: self.store,
            http,
            config: self.config,
            authorizer,
            refresh_locks: KeyedLocks::new(),
            authorize_locks: KeyedLocks::new(),
            registration_locks: KeyedLocks::new(),
            step_ups: Mutex::default(),
            unsaved: Arc::default(),
            hot: Mutex::default(),
            versions_supported: std::sync::atomic::AtomicBool::new(true),
            dpop_nonces: dpop::Nonces::default(),
            dpop_keys: dpop::KeyCache::default(),
        })
    }
}

fn random_urlsafe(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if getrandom::fill(&mut buf).is_err() {
        // Never hand out a guessable PKCE verifier or state: return nothing, and the caller
        // fails closed.
        buf.clear();
    }
    data_encoding::BASE64URL_NOPAD.encode(&buf)
}

fn pkce_challenge(verifier: &str) -> String {
    data_encoding::BASE64URL_NOPAD.encode(&sha2::Sha256::digest(verifier.as_bytes()))
}

/// An authorization server's `400 use_dpop_nonce` with a `DPoP-Nonce` (RFC 9449 §8): it
/// refused before acting on the request, which may be sent again with the nonce.
fn asks_for_dpop_nonce(fetched: &http::Fetched) -> bool {
    fetched.status == 400
        && fetched.headers.contains_key("dpop-nonce")
        && serde_json::from_slice::<Map<String, Value>>(&fetched.body)
            .ok()
            .and_then(|m| m.get("error").and_then(Value::as_str).map(str::to_owned))
            .as_deref()
            == Some("use_dpop_nonce")
}

fn oauth_error(issuer: &IssuerId, endpoint: &'static str, status: u16, body: &[u8]) -> AuthError {
    let parsed: Option<Map<String, Value>> = serde_json::from_slice(body).ok();
    // AS-controlled text reaches terminals and logs: printable ASCII only.
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .map(refresh::printable)
    };
    AuthError::OAuth {
        issuer: issuer.clone(),
        endpoint,
        error: field("error").unwrap_or_else(|| format!("HTTP {status}")),
        description: field("error_description"),
    }
}

impl McpAuth {
    /// Starts building an engine over `store`.
    pub fn builder(store: Arc<dyn CredentialStore>) -> McpAuthBuilder {
        McpAuthBuilder {
            store,
            config: ClientConfig::default(),
            policy: HttpPolicy::default(),
            authorizer: None,
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn CredentialStore> {
        &self.store
    }

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
    fn dpop_key_of(&self, tokens: &TokenSet) -> Result<Option<Arc<DpopKey>>, AuthError> {
        tokens
            .dpop_key
            .as_ref()
            .map(|stored| self.dpop_keys.get(stored))
            .transpose()
    }

    /// The latest `DPoP-Nonce` the server at `url`'s origin sent (RFC 9449 §9), for the next
    /// proof to it.
    pub fn dpop_nonce(&self, url: &Url) -> Option<String> {
        self.dpop_nonces.get(url)
    }

    /// Records a resource server's `DPoP-Nonce` header value (from any response, and from a
    /// `401` whose challenge [`Challenge::is_dpop_nonce`]). Values that are not RFC 9449
    /// nonces are ignored.
    pub fn record_dpop_nonce(&self, url: &Url, nonce: &str) {
        self.dpop_nonces.record(url, nonce);
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

    /// Authorizes for `resource` now: discovery, SEP-2352 binding decision, registration,
    /// authorization code with PKCE, token exchange.
    ///
    /// # Errors
    ///
    /// As [`McpAuth::authorize_with_scopes`].
    pub async fn authorize(&self, resource: &ResourceUri) -> Result<SecretString, AuthError> {
        self.authorize_with_scopes(resource, None).await
    }

    /// [`McpAuth::authorize`] requesting exactly `scopes` (`None`: the server's challenge or
    /// metadata decides, R16).
    ///
    /// # Errors
    ///
    /// [`AuthError::NotProtected`] when `resource` publishes no protected resource metadata and
    /// does not ask for authorization; [`AuthError::AuthorizationServerChanged`] when it moved to
    /// another authorization server than the pre-registered credentials belong to;
    /// [`AuthError::IssuerMismatch`], [`AuthError::ResourceMismatch`] or
    /// [`AuthError::PkceNotSupported`] when the metadata fails validation;
    /// [`AuthError::RegistrationNotPossible`] when the client cannot register there;
    /// [`AuthError::Authorizer`] when no callback arrives, [`AuthError::StateMismatch`] or
    /// [`AuthError::AuthorizationDenied`] when the redirect is refused or does not match;
    /// [`AuthError::OAuth`], [`AuthError::UnsupportedTokenType`] or [`AuthError::DpopNotAvailable`]
    /// when the token exchange fails.
    ///
    /// Besides those: [`AuthError::Discovery`], [`AuthError::UnsafeUrl`], [`AuthError::Timeout`],
    /// [`AuthError::Http`], [`AuthError::ResponseTooLarge`] and [`AuthError::InvalidResponse`] when
    /// metadata or an endpoint cannot be used; [`AuthError::Store`] when the store keeps failing
    /// beyond its retry budget.
    pub async fn authorize_with_scopes(
        &self,
        resource: &ResourceUri,
        scopes: Option<Vec<String>>,
    ) -> Result<SecretString, AuthError> {
        let lock = self.authorize_locks.get(resource);
        let _guard = lock.lock().await;
        let prm = self.resource_metadata(resource, None).await?;
        self.authorize_with(resource, &prm, None, scopes).await
    }

    async fn authorize_unlocked(&self, resource: &ResourceUri) -> Result<SecretString, AuthError> {
        let prm = self.resource_metadata(resource, None).await?;
        self.authorize_with(resource, &prm, None, None).await
    }

    /// PRM from the challenge URL or the well-known locations; for a 2025-03-26 server that has
    /// none at all (and no challenge URL), the synthesised legacy document.
    async fn resource_metadata(
        &self,
        resource: &ResourceUri,
        challenge_url: Option<&str>,
    ) -> Result<ResourceMetadata, AuthError> {
        // Only "none published" (every location 404) falls back; a server error never makes the
        // origin the authorization server.
        match discovery::find_resource_metadata(&self.http, resource, challenge_url).await? {
            discovery::Found::Metadata(prm) => Ok(prm),
            discovery::Found::NotFound(_)
                if challenge_url.is_none() && self.config.legacy_discovery =>
            {
                // The origin becomes the authorization server only for a server that does ask
                // for credentials: a site that is no MCP server (or needs no authorization)
                // must never receive a client registration.
                let status = self.http.probe_mcp(resource.url()).await?;
                if status != 401 {
                    return Err(AuthError::NotProtected {
                        resource: resource.to_string(),
                        status,
                    });
                }
                debug!(resource = %resource, "no protected resource metadata; using the 2025-03-26 fallback");
                Ok(ResourceMetadata::legacy(resource))
            }
            discovery::Found::NotFound(reason) => Err(AuthError::Discovery {
                url: resource.to_string(),
                reason: format!("no protected resource metadata ({reason})"),
            }),
        }
    }

    /// The binding of `resource` and the tokens under its bound issuer. Callers compare access
    /// tokens, not record versions: recording a refresh state changes the version only.
    async fn token_snapshot(
        &self,
        resource: &ResourceUri,
    ) -> Result<Option<(ResourceBinding, TokenSet)>, AuthError> {
        let Some(binding) = self
            .store_retry(|| self.store.get_binding(resource))
            .await?
        else {
            return Ok(None);
        };
        let key = TokenKey::new(binding.value.issuer.clone(), resource.clone());
        Ok(self
            .store_retry(|| self.store.get_tokens(&key))
            .await?
            .map(|t| (binding.value, t.value)))
    }

    /// Call after the MCP server answered `401`. Re-discovers the protected resource metadata
    /// (from the challenge's `resource_metadata`, R1), so a move to another authorization server
    /// is always noticed, then refreshes or re-authorizes. Returns the token to retry with.
    ///
    /// # Errors
    ///
    /// When the challenge only asks for a DPoP nonce, what [`McpAuth::cached_access_token`] fails
    /// with (no new authorization is started). Otherwise what re-discovery fails with
    /// ([`AuthError::ResourceMismatch`], [`AuthError::AuthorizationServerChanged`],
    /// [`AuthError::Discovery`] and the network errors), what a refresh fails with other than a
    /// need to log in ([`AuthError::RefreshFailed`], [`AuthError::RefreshInProgress`],
    /// [`AuthError::RotatedTokenNotSaved`]), or what the new authorization fails with (see
    /// [`McpAuth::authorize`]).
    pub async fn handle_unauthorized(
        &self,
        resource: &ResourceUri,
        www_authenticate: Option<&str>,
    ) -> Result<SecretString, AuthError> {
        let challenge = www_authenticate.map(Challenge::parse).unwrap_or_default();
        if challenge.is_dpop_nonce() {
            // Not a refusal of the token: the server wants a proof with its nonce. The caller
            // records its `DPoP-Nonce` and retries with the same token; authorizing again would
            // only meet the same challenge.
            return self.cached_access_token(resource).await;
        }
        let seen = self.token_snapshot(resource).await?;
        let prm = self
            .resource_metadata(resource, challenge.resource_metadata.as_deref())
            .await?;
        let issuer = self.issuer_from(&prm)?;
        let lock = self.authorize_locks.get(resource);
        let _guard = lock.lock().await;
        // A concurrent caller may have recovered already (new tokens from this very AS).
        let now = self.token_snapshot(resource).await?;
        if let Some((bound, current)) = &now
            && bound.issuer == issuer
            && seen.as_ref().is_none_or(|(_, t)| {
                t.access_token.expose_secret() != current.access_token.expose_secret()
            })
            && let Ok(token) = self.cached_access_token(resource).await
        {
            return Ok(token);
        }
        if let Some((binding, current)) = now
            && binding.issuer == issuer
            && current.refresh_token.is_some()
        {
            // Same AS: the token itself was refused. A refresh may fix it; the token read here
            // makes concurrent callers refresh once.
            let key = TokenKey::new(issuer, resource.clone());
            match self
                .force_refresh(&binding, &key, &current.access_token)
                .await
            {
                Ok(token) => return Ok(token),
                Err(e) if e.needs_login() => {}
                Err(e) => return Err(e),
            }
        }
        self.authorize_with(resource, &prm, Some(&challenge), None)
            .await
    }

    /// Call after the MCP server answered `403` with `error="insufficient_scope"`. Authorizes
    /// again with the previously granted scopes plus the challenged ones (R18); gives up with
    /// [`AuthError::InsufficientScope`] when the same scopes are demanded again after
    /// `max_step_up_attempts` authorizations.
    ///
    /// # Errors
    ///
    /// [`AuthError::InsufficientScope`] when the same scopes are demanded again after
    /// `max_step_up_attempts` authorizations; otherwise whatever the new authorization fails with
    /// (see [`McpAuth::authorize`]).
    pub async fn handle_insufficient_scope(
        &self,
        resource: &ResourceUri,
        www_authenticate: &str,
    ) -> Result<SecretString, AuthError> {
        let challenge = Challenge::parse(www_authenticate);
        let required: BTreeSet<String> = challenge.scopes().into_iter().collect();
        // Concurrent 403s for the same scopes step up once: whoever waited for the lock uses
        // the token the first one obtained, and no attempt is counted for it.
        let seen = self.token_snapshot(resource).await?;
        let lock = self.authorize_locks.get(resource);
        let _guard = lock.lock().await;
        if let Some((_, current)) = self.token_snapshot(resource).await?
            && seen.as_ref().is_some_and(|(_, t)| {
                t.access_token.expose_secret() != current.access_token.expose_secret()
            })
            && required.iter().all(|s| current.scopes.contains(s))
            && !self.is_stale(&current)
        {
            return Ok(current.access_token);
        }
        let attempts = {
            let mut step_ups = self.step_ups.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = step_ups
                .entry(resource.clone())
                .or_insert((BTreeSet::new(), 0));
            if entry.0 != required {
                *entry = (required.clone(), 0);
            }
            entry.1 += 1;
            entry.1
        };
        if attempts > self.config.max_step_up_attempts {
            return Err(AuthError::InsufficientScope {
                scopes: required.into_iter().collect(),
                attempts: attempts - 1,
            });
        }
        let mut scopes: BTreeSet<String> = required;
        if let Ok(binding) = self.binding(resource).await {
            let key = TokenKey::new(binding.issuer, resource.clone());
            if let Some(current) = self.store.get_tokens(&key).await? {
                scopes.extend(current.value.scopes);
            }
        }
        let prm = discovery::discover_resource_metadata(
            &self.http,
            resource,
            challenge.resource_metadata.as_deref(),
        )
        .await?;
        // Already under the per-server authorization lock.
        self.authorize_with(
            resource,
            &prm,
            Some(&challenge),
            Some(scopes.into_iter().collect()),
        )
        .await
    }

    /// Deletes the tokens and binding of `resource` and revokes its tokens at the AS when it has
    /// a revocation endpoint (RFC 7009). The local deletion stands whatever the AS answers; the
    /// report says what the AS revoked, what it refused and why. The registration is kept.
    ///
    /// # Errors
    ///
    /// [`AuthError::Store`] when the stored binding, tokens or registration cannot be read, or the
    /// tokens and binding cannot be deleted. A revocation the authorization server refuses or
    /// cannot be reached for is not an error: it is listed in the [`LogoutReport`].
    pub async fn logout(&self, resource: &ResourceUri) -> Result<LogoutReport, AuthError> {
        let mut report = LogoutReport::default();
        let Some(binding) = self.store.get_binding(resource).await? else {
            report.not_attempted = Some("not logged in".to_owned());
            return Ok(report);
        };
        let binding = binding.value;
        report.issuer = Some(binding.issuer.clone());
        let key = TokenKey::new(binding.issuer.clone(), resource.clone());
        let tokens = self.store.get_tokens(&key).await?;
        let meta = self.stored_metadata(&binding).ok();
        let registration = self.store.get_registration(&binding.issuer).await?;
        match (
            &tokens,
            meta.as_ref().and_then(|m| m.revocation_endpoint.as_ref()),
            &registration,
        ) {
            (None, _, _) => report.not_attempted = Some("no tokens were stored".to_owned()),
            (Some(_), None, _) => {
                report.not_attempted = Some(format!(
                    "{} has no revocation endpoint; the tokens stay valid there until they expire",
                    binding.issuer
                ));
            }
            (Some(_), Some(_), None) => {
                report.not_attempted =
                    Some("no registration is stored to authenticate the revocation".to_owned());
            }
            (Some(tokens), Some(endpoint), Some(registration)) => {
                let to_revoke = [
                    ("refresh_token", tokens.value.refresh_token.clone()),
                    ("access_token", Some(tokens.value.access_token.clone())),
                ];
                for (hint, token) in to_revoke {
                    let Some(token) = token else { continue };
                    let mut form = vec![
                        ("token", token.expose_secret().to_owned()),
                        ("token_type_hint", hint.to_owned()),
                    ];
                    let basic = client_auth(&registration.value, &mut form);
                    let form_refs: Vec<(&str, &str)> =
                        form.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    let basic_refs = basic.as_ref().map(|(a, b)| (a.as_str(), b.as_str()));
                    match self.http.post_form(endpoint, &form_refs, basic_refs).await {
                        Ok(f) if f.status == 200 => report.revoked.push(hint),
                        Ok(f) => {
                            let why = oauth_error(&binding.issuer, "revocation", f.status, &f.body);
                            report.not_revoked.push((hint, why.to_string()));
                        }
                        Err(e) => report.not_revoked.push((hint, e.to_string())),
                    }
                }
            }
        }
        self.store.delete_tokens(&key, Expect::Any).await?;
        self.store.delete_binding(resource, Expect::Any).await?;
        Ok(report)
    }

    // -----------------------------------------------------------------------------------------

    async fn binding(&self, resource: &ResourceUri) -> Result<ResourceBinding, AuthError> {
        self.store_retry(|| self.store.get_binding(resource))
            .await?
            .map(|b| b.value)
            .ok_or_else(|| AuthError::LoginRequired {
                resource: resource.to_string(),
            })
    }

    fn stored_metadata(&self, binding: &ResourceBinding) -> Result<ServerMetadata, AuthError> {
        let source = binding.issuer.url().clone();
        ServerMetadata::from_json(
            &self.http,
            &source,
            &binding.issuer,
            binding.authorization_server_metadata.clone(),
        )
    }

    fn issuer_from(&self, prm: &ResourceMetadata) -> Result<IssuerId, AuthError> {
        // R3: the AS comes only from the PRM. The first listed is used.
        let raw = &prm.authorization_servers[0];
        let issuer = IssuerId::new(raw.as_str()).map_err(|e| AuthError::Discovery {
            url: prm.resource.to_string(),
            reason: format!("authorization server {e}"),
        })?;
        // R35: refuse private/link-local issuers before any request goes there.
        self.http.check_url(issuer.url())?;
        Ok(issuer)
    }

    /// Refreshes unless someone else already did. Single-flight inside the process (a mutex per
    /// token key) and across processes (the store's lease and the recorded refresh state).
    async fn refresh(
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
    async fn force_refresh(
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

    /// POSTs to the token endpoint with the registration's client authentication; returns the
    /// JSON body of a 200 response or the OAuth error.
    async fn token_request(
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
    async fn token_request_dpop(
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

    /// The `DPoP` header of a POST to the token endpoint `url` (with the server's latest nonce).
    fn dpop_headers(
        &self,
        dpop: Option<&DpopKey>,
        url: &Url,
    ) -> Result<Vec<(&'static str, String)>, AuthError> {
        match dpop {
            Some(key) => Ok(vec![(
                "DPoP",
                key.proof("POST", url, None, self.dpop_nonces.get(url).as_deref())?,
            )]),
            None => Ok(Vec::new()),
        }
    }

    /// Keeps the `DPoP-Nonce` a server sent (RFC 9449 §8.2: use it in the next proof).
    fn remember_dpop_nonce(&self, url: &Url, headers: &reqwest::header::HeaderMap) {
        if let Some(nonce) = headers.get("dpop-nonce").and_then(|v| v.to_str().ok()) {
            self.dpop_nonces.record(url, nonce);
        }
    }

    /// A new key for an authorization at `meta`'s server, as [`ClientConfig::dpop`] says, or
    /// as `required` says: once a server's tokens for a resource were DPoP-bound, a new
    /// authorization there must be too (a server that stops binding them is refused, never
    /// silently downgraded to Bearer; `logout` lets the user accept Bearer tokens again).
    fn new_dpop_key(
        &self,
        meta: &ServerMetadata,
        required: bool,
    ) -> Result<Option<DpopKey>, AuthError> {
        match (self.config.dpop, meta.supports_dpop_es256(), required) {
            (DpopMode::Required, false, _) | (_, false, true) => Err(AuthError::DpopNotAvailable {
                issuer: meta.issuer.clone(),
                reason: "its metadata lists no ES256 in dpop_signing_alg_values_supported",
            }),
            (DpopMode::Off, _, false) | (DpopMode::IfSupported, false, false) => Ok(None),
            (_, true, _) => DpopKey::generate().map(Some),
        }
    }

    /// Whether an authorization at `issuer` for `resource` must yield DPoP-bound tokens.
    async fn dpop_required(&self, issuer: &IssuerId, resource: &ResourceUri) -> bool {
        match self.config.dpop {
            DpopMode::Required => true,
            DpopMode::Off => false,
            DpopMode::IfSupported => self
                .store
                .get_tokens(&TokenKey::new(issuer.clone(), resource.clone()))
                .await
                .ok()
                .flatten()
                .is_some_and(|t| t.value.dpop_key.is_some()),
        }
    }

    /// The full authorization for `resource` at the AS named by `prm`, after the SEP-2352
    /// decision.
    async fn authorize_with(
        &self,
        resource: &ResourceUri,
        prm: &ResourceMetadata,
        challenge: Option<&Challenge>,
        explicit_scopes: Option<Vec<String>>,
    ) -> Result<SecretString, AuthError> {
        let issuer = self.issuer_from(prm)?;
        let span = info_span!("authorize", resource = %resource, issuer = %issuer);
        async {
            self.apply_binding_policy(resource, &issuer).await?;
            let meta = match discovery::discover_server_metadata(&self.http, &issuer).await {
                Err(AuthError::Discovery { .. }) if prm.legacy => {
                    ServerMetadata::legacy_defaults(&self.http, &issuer)?
                }
                other => other?,
            };
            if let Some(credentials) = &self.config.client_credentials {
                return self
                    .client_credentials_grant(
                        resource,
                        prm,
                        &meta,
                        credentials,
                        challenge,
                        explicit_scopes,
                    )
                    .await;
            }
            if let Some(grant) = &self.config.identity_assertion {
                return self
                    .identity_assertion_grant(
                        resource,
                        prm,
                        &meta,
                        grant,
                        challenge,
                        explicit_scopes,
                    )
                    .await;
            }
            if let Some(grant) = &self.config.jwt_bearer {
                return self
                    .jwt_bearer_grant(resource, prm, &meta, grant, challenge, explicit_scopes)
                    .await;
            }
            if !meta.supports_s256() {
                return Err(AuthError::PkceNotSupported {
                    issuer: issuer.clone(),
                });
            }
            let registration = self.ensure_registration(&meta).await?;
            let (registration, redirect_uri) = self
                .servable_redirect(resource, &meta, registration)
                .await?;
            let scopes = select_scopes(prm, &meta, challenge, explicit_scopes);

            let verifier = random_urlsafe(32);
            let state = random_urlsafe(24);
            if verifier.len() < 43 || state.len() < 32 {
                return Err(AuthError::Config(
                    "the operating system gave no randomness for PKCE and state".to_owned(),
                ));
            }
            let mut pending = PendingAuthorization::new(
                state.clone(),
                SecretString::from(verifier.clone()),
                issuer.clone(),
                resource.clone(),
                registration.client_id.clone(),
                redirect_uri.clone(),
                self.config.pending_ttl,
            );
            pending.scopes = scopes.clone();
            self.store.insert_pending(&pending).await?;

            let mut url = meta.authorization_endpoint.clone();
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("response_type", "code")
                    .append_pair("client_id", &registration.client_id)
                    .append_pair("redirect_uri", &redirect_uri)
                    .append_pair("code_challenge", &pkce_challenge(&verifier))
                    .append_pair("code_challenge_method", "S256")
                    .append_pair("state", &state)
                    .append_pair("resource", &prm.resource_raw);
                if !scopes.is_empty() {
                    q.append_pair("scope", &scopes.join(" "));
                }
                // SEP-2207 lets a client ask for `offline_access` when the AS lists it; an
                // OpenID provider grants it only with `prompt=consent` (OIDC Core §11), else the
                // user gets no refresh token and must log in again when the access token ends.
                if scopes.iter().any(|s| s == "offline_access")
                    && meta.is_openid_provider()
                    && meta.accepts_prompt_consent()
                {
                    q.append_pair("prompt", "consent");
                }
            }
            debug!(endpoint = %redact(&meta.authorization_endpoint), "starting authorization");
            let callback = match self
                .authorizer
                .authorize(AuthorizationRequest {
                    url,
                    redirect_uri: redirect_uri.clone(),
                    state: state.clone(),
                })
                .await
            {
                Ok(callback) => callback,
                Err(e) => {
                    // A login that failed or timed out leaves nothing redeemable behind.
                    if let Err(cleanup) = self.store.take_pending(&state).await {
                        warn!(error = %cleanup, "could not delete the abandoned authorization");
                    }
                    return Err(e);
                }
            };
            let result = self
                .complete(resource, prm, &meta, &registration, &state, &callback)
                .await;
            if result.is_err() {
                // `complete` takes the record when the state matches; make sure it is gone.
                let _ = self.store.take_pending(&state).await;
            }
            result
        }
        .instrument(span)
        .await
    }

    /// SEP-2352: compares the discovered issuer with the bound one and acts on the difference.
    async fn apply_binding_policy(
        &self,
        resource: &ResourceUri,
        issuer: &IssuerId,
    ) -> Result<(), AuthError> {
        // Declared pre-registered credentials never reach another AS.
        if let Some(pre) = &self.config.pre_registered
            && let Some(declared) = &pre.issuer
            && declared != issuer
        {
            return Err(AuthError::AuthorizationServerChanged {
                from: declared.clone(),
                to: issuer.clone(),
            });
        }
        // So do the declared credentials of an assertion grant (not even metadata is fetched).
        if let Some(declared) = self.declared_assertion_issuer()
            && declared != issuer
        {
            return Err(AuthError::AuthorizationServerChanged {
                from: declared.clone(),
                to: issuer.clone(),
            });
        }
        let bound = match self.store.get_binding(resource).await? {
            Some(b) => {
                let kind = self
                    .store
                    .get_registration(&b.value.issuer)
                    .await?
                    .map(|r| r.value.kind)
                    .unwrap_or(RegistrationKind::Dynamic);
                Some((b.value.issuer, kind))
            }
            None => None,
        };
        match binding::decide(bound.as_ref().map(|(i, k)| (i, *k)), issuer) {
            BindingAction::Bind | BindingAction::Unchanged => Ok(()),
            BindingAction::Refuse { from, to } => {
                Err(AuthError::AuthorizationServerChanged { from, to })
            }
            BindingAction::SwitchAndRegister { from }
            | BindingAction::SwitchKeepClientId { from } => {
                // The old server's tokens are dropped only once the new server has issued
                // tokens ([`McpAuth::bind`]): a move that fails half-way (metadata that does
                // not validate, a refused login) costs nothing.
                debug!(from = %from, to = %issuer, "authorization server changed");
                Ok(())
            }
        }
    }

    /// The registration to use at this AS: the stored one, else pre-registered > CIMD > DCR
    /// (R20).
    async fn ensure_registration(
        &self,
        meta: &ServerMetadata,
    ) -> Result<ClientRegistration, AuthError> {
        let issuer = &meta.issuer;
        let lock = self.registration_locks.get(issuer);
        let _guard = lock.lock().await;
        let existing = self.store.get_registration(issuer).await?;
        if let Some(existing) = &existing
            && !existing.value.secret_expired()
        {
            return Ok(existing.value.clone());
        }
        let registration = if let Some(pre) = &self.config.pre_registered {
            // Undeclared pre-registered credentials bind to the first AS they are used with.
            for other in self.store.list_registrations().await.unwrap_or_default() {
                if &other != issuer
                    && let Some(r) = self.store.get_registration(&other).await?
                    && r.value.kind == RegistrationKind::PreRegistered
                    && r.value.client_id == pre.client_id
                {
                    return Err(AuthError::AuthorizationServerChanged {
                        from: other,
                        to: issuer.clone(),
                    });
                }
            }
            let mut r = ClientRegistration::new(
                issuer.clone(),
                pre.client_id.clone(),
                RegistrationKind::PreRegistered,
            );
            r.client_secret = pre.client_secret.clone();
            r.token_endpoint_auth_method = pre.token_endpoint_auth_method.clone();
            r.redirect_uris = vec![self.config.redirect_uri.clone()];
            r
        } else if let (Some(url), true) = (&self.config.client_metadata_url, meta.cimd_supported) {
            let mut r = ClientRegistration::new(
                issuer.clone(),
                url.clone(),
                RegistrationKind::MetadataDocument,
            );
            r.redirect_uris = vec![self.config.redirect_uri.clone()];
            r
        } else if let Some(endpoint) = &meta.registration_endpoint {
            self.register(meta, endpoint).await?
        } else {
            return Err(AuthError::RegistrationNotPossible {
                issuer: issuer.clone(),
            });
        };
        // Another process may have registered meanwhile: keep the first registration saved.
        let expect = match existing {
            Some(old) => Expect::Version(old.version),
            None => Expect::Absent,
        };
        match self.store.put_registration(&registration, expect).await {
            Ok(_) => Ok(registration),
            Err(StoreError::Conflict { .. }) => match self.store.get_registration(issuer).await? {
                Some(theirs) => Ok(theirs.value),
                None => Err(AuthError::Store(StoreError::Conflict {
                    key: format!("registration(issuer={issuer})"),
                })),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Dynamic Client Registration (RFC 7591), using the values the AS returns.
    async fn register(
        &self,
        meta: &ServerMetadata,
        endpoint: &Url,
    ) -> Result<ClientRegistration, AuthError> {
        let span = info_span!("register", issuer = %meta.issuer);
        async {
            // A native client is public (PKCE protects the code): ask for `none` when the AS
            // allows it, else the first secret-based method it lists (RFC 7591's default when
            // it lists none).
            let requested_method = match meta.auth_methods() {
                Some(methods) => ["none", "client_secret_basic", "client_secret_post"]
                    .into_iter()
                    .find(|m| methods.iter().any(|s| s == m))
                    .unwrap_or("client_secret_basic"),
                None => "client_secret_basic",
            };
            // The device grant (RFC 8628) too when the AS offers it, so `authorize_device` can
            // use the same registration.
            let mut grant_types = vec!["authorization_code", "refresh_token"];
            if meta.device_authorization_endpoint.is_some()
                && meta.supports_grant(device::DEVICE_CODE_GRANT)
            {
                grant_types.push(device::DEVICE_CODE_GRANT);
            }
            let body = json!({
                "client_name": self.config.client_name,
                "redirect_uris": [self.issuer_redirect_uri(&meta.issuer)],
                "grant_types": grant_types,
                "response_types": ["code"],
                "token_endpoint_auth_method": requested_method,
                "application_type": self.config.application_type,
            });
            let fetched = self.http.post_json(endpoint, &body).await?;
            if !(200..300).contains(&fetched.status) {
                return Err(oauth_error(
                    &meta.issuer,
                    "registration",
                    fetched.status,
                    &fetched.body,
                ));
            }
            let mut map = fetched.json_object()?;
            let invalid = |reason: &str| AuthError::InvalidResponse {
                url: redact(endpoint),
                reason: reason.to_owned(),
            };
            let client_id = map
                .remove("client_id")
                .and_then(|v| v.as_str().map(str::to_owned))
                .filter(|s| !s.is_empty())
                .ok_or_else(|| invalid("registration response has no client_id"))?;
            let mut r =
                ClientRegistration::new(meta.issuer.clone(), client_id, RegistrationKind::Dynamic);
            let take_str = |map: &mut Map<String, Value>, k: &str| {
                map.remove(k).and_then(|v| v.as_str().map(str::to_owned))
            };
            let take_time = |map: &mut Map<String, Value>, k: &str| {
                map.remove(k)
                    .and_then(|v| v.as_i64())
                    .filter(|t| *t > 0)
                    .map(Timestamp::from_unix_seconds)
            };
            r.client_secret = take_str(&mut map, "client_secret").map(SecretString::from);
            r.client_secret_expires_at = take_time(&mut map, "client_secret_expires_at");
            r.client_id_issued_at = take_time(&mut map, "client_id_issued_at");
            // The AS's answer wins; when it says nothing, what was asked for (RFC 7591 §3.2.1),
            // except that a secret-based method without a secret means a public client.
            r.token_endpoint_auth_method = take_str(&mut map, "token_endpoint_auth_method")
                .unwrap_or_else(|| {
                    if requested_method != "none" && r.client_secret.is_none() {
                        "none".to_owned()
                    } else {
                        requested_method.to_owned()
                    }
                });
            let list = |map: &mut Map<String, Value>, k: &str| -> Vec<String> {
                map.remove(k)
                    .and_then(|v| v.as_array().cloned())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            };
            r.redirect_uris = list(&mut map, "redirect_uris");
            r.grant_types = list(&mut map, "grant_types");
            r.registration_access_token =
                take_str(&mut map, "registration_access_token").map(SecretString::from);
            r.registration_client_uri = take_str(&mut map, "registration_client_uri");
            r.extra = map;
            Ok(r)
        }
        .instrument(span)
        .await
    }

    /// Validates the authorization response (state R13, `iss` R9–R12) and exchanges the code.
    /// The response must answer this very flow: its `state` is the one this flow sent, and the
    /// pending record names the authorization server, client and redirect URI in use now.
    async fn complete(
        &self,
        resource: &ResourceUri,
        prm: &ResourceMetadata,
        meta: &ServerMetadata,
        registration: &ClientRegistration,
        expected_state: &str,
        callback: &Url,
    ) -> Result<SecretString, AuthError> {
        let mut params: HashMap<String, String> = HashMap::new();
        for (k, v) in callback.query_pairs() {
            if matches!(k.as_ref(), "state" | "iss" | "code" | "error")
                && params.contains_key(k.as_ref())
            {
                return Err(AuthError::InvalidResponse {
                    url: redact(callback),
                    reason: format!("authorization response repeats the {k} parameter"),
                });
            }
            params.insert(k.into_owned(), v.into_owned());
        }
        let state = params.get("state").ok_or(AuthError::StateMismatch)?;
        if state != expected_state {
            // Another flow's state (perhaps an attacker's): leave its record alone.
            return Err(AuthError::StateMismatch);
        }
        let pending = self
            .store
            .take_pending(state)
            .await?
            .ok_or(AuthError::StateMismatch)?;
        let expected_path = Url::parse(&pending.redirect_uri)
            .map(|u| u.path().to_owned())
            .unwrap_or_default();
        if &pending.resource != resource
            || pending.issuer != meta.issuer
            || pending.client_id != registration.client_id
            || callback.path() != expected_path
        {
            return Err(AuthError::StateMismatch);
        }
        // R9/R10/R11: compare `iss` with the issuer recorded for this very flow, exactly.
        match params.get("iss") {
            Some(iss) if iss != pending.issuer.as_str() => {
                // R12: error fields of a response from the wrong issuer are not trusted.
                return Err(AuthError::IssuerMismatch {
                    context: "authorization response",
                    expected: pending.issuer.to_string(),
                    found: Some(refresh::printable(iss)),
                });
            }
            None if meta.iss_parameter_supported => {
                return Err(AuthError::IssuerMismatch {
                    context: "authorization response",
                    expected: pending.issuer.to_string(),
                    found: None,
                });
            }
            _ => {}
        }
        if let Some(error) = params.get("error") {
            return Err(AuthError::AuthorizationDenied {
                error: refresh::printable(error).chars().take(100).collect(),
                description: params
                    .get("error_description")
                    .map(|d| refresh::printable(d)),
            });
        }
        let code = params
            .get("code")
            .ok_or_else(|| AuthError::InvalidResponse {
                url: redact(callback),
                reason: "authorization response has neither code nor error".to_owned(),
            })?;
        let mut form = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.clone()),
            ("redirect_uri", pending.redirect_uri.clone()),
            (
                "code_verifier",
                pending.pkce_verifier.expose_secret().to_owned(),
            ),
            ("resource", prm.resource_raw.clone()),
        ];
        let span = info_span!("token_exchange", issuer = %meta.issuer);
        let dpop_required = self.dpop_required(&meta.issuer, resource).await;
        let dpop = self.new_dpop_key(meta, dpop_required)?;
        let body = self
            .token_request_dpop(meta, registration, &mut form, dpop.as_ref())
            .instrument(span)
            .await?;
        let tokens = parse_token_response_dpop(
            meta,
            &body,
            None,
            &pending.scopes,
            dpop.as_ref(),
            dpop_required,
        )?;
        self.bind(resource, prm, meta, &tokens).await?;
        Ok(tokens.access_token)
    }

    /// Stores new tokens from `meta`'s server and binds `resource` to it. Only now, with the
    /// new server's tokens in hand, are the previous server's tokens for `resource` dropped
    /// (SEP-2352: never used again).
    async fn bind(
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

    /// The redirect URI for a flow with `registration`: for dynamic registrations made by this
    /// library, a path of its own per authorization server (`<redirect_uri>/<issuer key>`), so a
    /// response that comes back without `iss` still names the server it belongs to (RFC 9700
    /// §4.4.2) — exactly as registered, port included, since some servers match redirect URIs
    /// exactly; otherwise (pre-registered, Client ID Metadata Document, older registrations)
    /// the configured redirect URI, which is what the server has on record.
    fn redirect_uri_for(&self, registration: &ClientRegistration) -> String {
        let own = self.issuer_redirect_uri(&registration.issuer);
        let Ok(own_url) = Url::parse(&own) else {
            return self.config.redirect_uri.clone();
        };
        let registered = registration.redirect_uris.iter().find(|u| {
            Url::parse(u).is_ok_and(|a| {
                a.scheme() == own_url.scheme()
                    && a.path() == own_url.path()
                    && a.host() == own_url.host()
            })
        });
        match registered {
            Some(exact) if registration.kind == RegistrationKind::Dynamic => exact.clone(),
            _ => self.config.redirect_uri.clone(),
        }
    }

    /// The registration and redirect URI of an authorization-code flow, making sure the
    /// authorizer can receive the callback there. A dynamic registration whose loopback port
    /// another program now holds is replaced by a new one on the configured redirect URI —
    /// unless another MCP server's tokens at this authorization server may have been issued to
    /// the registered client (re-registering would cut their refresh off): then the error names
    /// the port to free.
    async fn servable_redirect(
        &self,
        resource: &ResourceUri,
        meta: &ServerMetadata,
        registration: ClientRegistration,
    ) -> Result<(ClientRegistration, String), AuthError> {
        let redirect_uri = self.redirect_uri_for(&registration);
        let servable = Url::parse(&redirect_uri).is_ok_and(|u| self.authorizer.can_serve(&u));
        let fresh = self.issuer_redirect_uri(&meta.issuer);
        if servable || registration.kind != RegistrationKind::Dynamic || redirect_uri == fresh {
            return Ok((registration, redirect_uri));
        }
        let Some(endpoint) = &meta.registration_endpoint else {
            return Ok((registration, redirect_uri));
        };
        let issuer = &meta.issuer;
        let others = self
            .store
            .list_tokens()
            .await?
            .into_iter()
            .any(|k| &k.issuer == issuer && &k.resource != resource);
        if others {
            return Err(AuthError::Authorizer(format!(
                "the redirect URI registered at {issuer} ({}) cannot be served: another program \
                 holds its port; close it and log in again (registering a new client would end \
                 the other MCP servers' logins at this authorization server)",
                redirect_uri
            )));
        }
        let lock = self.registration_locks.get(issuer);
        let _guard = lock.lock().await;
        let current = self.store.get_registration(issuer).await?;
        // Another process may already have registered again.
        if let Some(current) = &current
            && current.value.client_id != registration.client_id
        {
            let redirect_uri = self.redirect_uri_for(&current.value);
            return Ok((current.value.clone(), redirect_uri));
        }
        debug!(issuer = %issuer, "registered redirect port is taken; registering again");
        let replacement = self.register(meta, endpoint).await?;
        let expect = match current {
            Some(old) => Expect::Version(old.version),
            None => Expect::Absent,
        };
        self.store.put_registration(&replacement, expect).await?;
        let redirect_uri = self.redirect_uri_for(&replacement);
        Ok((replacement, redirect_uri))
    }

    fn issuer_redirect_uri(&self, issuer: &IssuerId) -> String {
        let base = &self.config.redirect_uri;
        match Url::parse(base) {
            Ok(mut url) => {
                let path = format!(
                    "{}/{}",
                    url.path().trim_end_matches('/'),
                    issuer.storage_key()
                );
                url.set_path(&path);
                url.to_string()
            }
            Err(_) => base.clone(),
        }
    }
}

impl McpAuth {
    /// SEP-1046: the `client_credentials` grant, with `client_secret_basic` or `private_key_jwt`
    /// client authentication. The credentials are recorded as this issuer's pre-registered
    /// registration, so a move to another AS is refused like any pre-registered client's.
    async fn client_credentials_grant(
        &self,
        resource: &ResourceUri,
        prm: &ResourceMetadata,
        meta: &ServerMetadata,
        credentials: &ClientCredentials,
        challenge: Option<&Challenge>,
        explicit_scopes: Option<Vec<String>>,
    ) -> Result<SecretString, AuthError> {
        if let Some(declared) = &credentials.issuer
            && declared != &meta.issuer
        {
            return Err(AuthError::AuthorizationServerChanged {
                from: declared.clone(),
                to: meta.issuer.clone(),
            });
        }
        let mut registration = ClientRegistration::new(
            meta.issuer.clone(),
            credentials.client_id.clone(),
            RegistrationKind::PreRegistered,
        );
        let mut form: Vec<(&'static str, String)> = vec![
            ("grant_type", "client_credentials".to_owned()),
            ("resource", prm.resource_raw.clone()),
        ];
        let scopes = select_scopes(prm, meta, challenge, explicit_scopes)
            .into_iter()
            .filter(|s| s != "offline_access")
            .collect::<Vec<_>>();
        if !scopes.is_empty() {
            form.push(("scope", scopes.join(" ")));
        }
        match &credentials.auth {
            ClientCredentialsAuth::Secret(secret) => {
                registration.client_secret = Some(secret.clone());
                registration.token_endpoint_auth_method = "client_secret_basic".to_owned();
            }
            ClientCredentialsAuth::PrivateKeyJwt {
                private_key_pem,
                algorithm,
                key_id,
            } => {
                registration.token_endpoint_auth_method = "private_key_jwt".to_owned();
                let assertion = client_assertion(
                    &credentials.client_id,
                    meta.issuer.as_str(),
                    private_key_pem,
                    algorithm,
                    key_id.as_deref(),
                )?;
                form.push(("client_id", credentials.client_id.clone()));
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
                ));
                form.push(("client_assertion", assertion));
            }
        }
        self.store
            .put_registration(&registration, Expect::Any)
            .await?;
        let span = info_span!("client_credentials", issuer = %meta.issuer);
        let body = self
            .token_request(meta, &registration, &mut form)
            .instrument(span)
            .await?;
        let tokens = parse_token_response(meta, &body, None, &scopes)?;
        self.bind(resource, prm, meta, &tokens).await?;
        Ok(tokens.access_token)
    }
}

/// An RFC 7523 client assertion: `iss = sub = client_id`, `aud` = the issuer, 60 s lifetime,
/// random `jti`.
fn client_assertion(
    client_id: &str,
    audience: &str,
    private_key_pem: &SecretString,
    algorithm: &str,
    key_id: Option<&str>,
) -> Result<String, AuthError> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let pem = private_key_pem.expose_secret().as_bytes();
    let (alg, key) = match algorithm {
        "ES256" => (Algorithm::ES256, EncodingKey::from_ec_pem(pem)),
        "ES384" => (Algorithm::ES384, EncodingKey::from_ec_pem(pem)),
        "RS256" => (Algorithm::RS256, EncodingKey::from_rsa_pem(pem)),
        "PS256" => (Algorithm::PS256, EncodingKey::from_rsa_pem(pem)),
        "EdDSA" => (Algorithm::EdDSA, EncodingKey::from_ed_pem(pem)),
        other => {
            return Err(AuthError::Config(format!(
                "unsupported client assertion algorithm {other:?} (use ES256, ES384, RS256, PS256 or EdDSA)"
            )));
        }
    };
    // The key error names the format problem, never the key.
    let key = key.map_err(|e| {
        AuthError::Config(format!(
            "private key is not a usable PEM for {algorithm}: {e}"
        ))
    })?;
    let mut header = Header::new(alg);
    header.kid = key_id.map(str::to_owned);
    let now = Timestamp::now().unix_seconds();
    let claims = json!({
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": now,
        "exp": now + 60,
        "jti": random_urlsafe(16),
    });
    jsonwebtoken::encode(&header, &claims, &key)
        .map_err(|e| AuthError::Config(format!("cannot sign the client assertion: {e}")))
}

/// Adds the registration's client authentication (R25: only ever this AS's own credentials).
/// Returns HTTP Basic credentials when the method is `client_secret_basic`.
fn client_auth(
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

/// R16/R17/R19: explicit scopes, else the challenge's, else every PRM `scopes_supported`, else
/// none; challenged scopes are always included; `offline_access` only when the AS lists it.
fn select_scopes(
    prm: &ResourceMetadata,
    meta: &ServerMetadata,
    challenge: Option<&Challenge>,
    explicit: Option<Vec<String>>,
) -> Vec<String> {
    let challenged = challenge.map(Challenge::scopes).unwrap_or_default();
    let mut scopes: Vec<String> = match explicit {
        Some(s) => s,
        None if !challenged.is_empty() => challenged.clone(),
        None => prm.scopes_supported.clone().unwrap_or_default(),
    };
    for s in challenged {
        if !scopes.contains(&s) {
            scopes.push(s);
        }
    }
    if !scopes.is_empty()
        && !scopes.iter().any(|s| s == "offline_access")
        && meta
            .scopes_supported
            .as_ref()
            .is_some_and(|s| s.iter().any(|s| s == "offline_access"))
    {
        scopes.push("offline_access".to_owned());
    }
    scopes
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
fn is_b64token(s: &str) -> bool {
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
fn expires_in(value: Option<&Value>) -> Option<Duration> {
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
fn parse_token_response(
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
fn parse_token_response_dpop(
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
