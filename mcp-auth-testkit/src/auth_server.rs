//! The mock OAuth 2.x authorization server.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::dpop::{self, DpopRejection, ReplayCache};
use crate::util::{
    Params, html_escape, is_form, is_json, is_loopback_host, json_response, lock,
    method_not_allowed, no_store, not_found, oauth_error, pkce_syntax_ok, random_token,
    redirect_matches, s256, unix_now, valid_redirect_uri, valid_resource,
};

pub(crate) mod jwt_bearer;

/// How long an authorization code stays redeemable.
const CODE_TTL: Duration = Duration::from_secs(60);
/// Upper bound on a client ID metadata document.
const CIMD_MAX_BYTES: usize = 64 * 1024;
/// Timeout for fetching a client ID metadata document.
const CIMD_TIMEOUT: Duration = Duration::from_secs(5);
/// The RFC 8628 grant type.
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// Issuer used by the [`Misbehavior::WrongIss`] misbehavior.
pub(crate) const EVIL_ISSUER: &str = "https://evil-issuer.example";

/// Configuration of an [`AuthServer`].
#[derive(Clone, Debug)]
pub struct AuthServerConfig {
    /// Path part of the issuer: `""` → issuer `http://127.0.0.1:PORT`; `"/tenant1"` →
    /// `http://127.0.0.1:PORT/tenant1`.
    pub issuer_path: String,
    /// Serve RFC 8414 metadata at `GET /.well-known/oauth-authorization-server{issuer_path}`
    /// (default `true`).
    pub serve_oauth_metadata: bool,
    /// Serve OpenID Connect discovery at `GET /.well-known/openid-configuration{issuer_path}`
    /// and `GET {issuer_path}/.well-known/openid-configuration` (default `false`).
    pub serve_oidc_metadata: bool,
    /// Advertise `registration_endpoint` and accept RFC 7591 registrations (default `true`).
    pub dynamic_registration: bool,
    /// Advertise `client_id_metadata_document_supported: true` and accept https (or http
    /// loopback) URL client IDs by fetching the document (default `false`).
    pub client_id_metadata_documents: bool,
    /// Advertise `code_challenge_methods_supported: ["S256"]` (default `true`). PKCE S256 is
    /// required by `/authorize` regardless.
    pub pkce_supported: bool,
    /// Advertise `authorization_response_iss_parameter_supported: true` and add `iss` to
    /// authorization responses (default `true`).
    pub iss_parameter_supported: bool,
    /// `scopes_supported` in metadata; when set, `/authorize` rejects other scopes.
    pub scopes_supported: Option<Vec<String>>,
    /// Issue refresh tokens (default `true`).
    pub issue_refresh_tokens: bool,
    /// Each refresh returns a new refresh token and invalidates the old one (default `true`).
    pub rotate_refresh_tokens: bool,
    /// Access token lifetime, reported as `expires_in` (default 3600 s).
    pub access_token_ttl: Duration,
    /// Client authentication method assigned by dynamic registration: `"client_secret_basic"`
    /// (default), `"client_secret_post"`, or `"none"` (public client, no secret).
    pub dcr_token_endpoint_auth_method: String,
    /// Advertise `revocation_endpoint` and serve RFC 7009 revocation (default `true`).
    pub revocation: bool,
    /// The OpenID provider rule for `offline_access` (OpenID Connect Core §11): a refresh token
    /// is issued only when the authorization request asked for `offline_access` **and** sent
    /// `prompt=consent`; metadata then also carries `id_token_signing_alg_values_supported`, as
    /// OpenID providers' does (default `false`).
    pub oidc_offline_access: bool,
    /// Advertise `device_authorization_endpoint` (and the device_code grant) and serve the
    /// RFC 8628 device authorization grant (default `false`). Approve or deny a user code with
    /// [`AuthServer::approve_device`] / [`AuthServer::deny_device`].
    pub device_authorization: bool,
    /// The `interval` a device authorization response advertises (default 5 s). A poll sooner
    /// than the interval after the previous one is answered `slow_down`, and the interval of
    /// that device code grows by 5 s (RFC 8628 §3.5).
    pub device_interval: Duration,
    /// Lifetime of a device code (`expires_in`, default 600 s).
    pub device_code_ttl: Duration,
    /// Match redirect URIs character for character, loopback port included, as some servers
    /// do (default `false`: any port of a registered loopback redirect URI, RFC 8252 §7.3).
    pub exact_redirect_uris: bool,
    /// DPoP (RFC 9449): advertise `dpop_signing_alg_values_supported: ["ES256"]`; a token
    /// request with a `DPoP` proof (validated strictly: [`DpopRejection`]) gets `token_type`
    /// `DPoP` tokens bound to the proof's key, access and refresh token alike, and a refresh
    /// of a DPoP-bound refresh token needs a proof by the same key (default `false`: `DPoP`
    /// headers are ignored and Bearer tokens issued).
    pub dpop: bool,
    /// With [`AuthServerConfig::dpop`]: a token request whose proof lacks this nonce is answered
    /// `400 use_dpop_nonce` with a `DPoP-Nonce` header (RFC 9449 §8). Change it at run time
    /// with [`AuthServer::set_dpop_nonce`].
    pub dpop_nonce: Option<String>,
}

impl Default for AuthServerConfig {
    fn default() -> Self {
        Self {
            issuer_path: String::new(),
            serve_oauth_metadata: true,
            serve_oidc_metadata: false,
            dynamic_registration: true,
            client_id_metadata_documents: false,
            pkce_supported: true,
            iss_parameter_supported: true,
            scopes_supported: None,
            issue_refresh_tokens: true,
            rotate_refresh_tokens: true,
            access_token_ttl: Duration::from_secs(3600),
            dcr_token_endpoint_auth_method: "client_secret_basic".to_string(),
            revocation: true,
            oidc_offline_access: false,
            device_authorization: false,
            device_interval: Duration::from_secs(5),
            device_code_ttl: Duration::from_secs(600),
            exact_redirect_uris: false,
            dpop: false,
            dpop_nonce: None,
        }
    }
}

/// A deliberate protocol violation the [`AuthServer`] commits, to test client defenses.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Misbehavior {
    /// Behave correctly.
    None,
    /// Metadata `issuer` is a different string (issuer + `"/evil"`).
    WrongIssuerInMetadata,
    /// Authorization response carries `iss` = some other issuer
    /// (`https://evil-issuer.example`).
    WrongIss,
    /// Authorization response omits `iss` although metadata advertises support.
    MissingIss,
    /// Authorization response `iss` = issuer + `"/"`.
    IssTrailingSlash,
    /// Metadata omits `code_challenge_methods_supported`.
    NoPkceSupport,
    /// Metadata response body is this many bytes of valid JSON (padded with a long string
    /// field).
    HugeMetadata(usize),
    /// Metadata response: headers sent at once, then the body trickles for this long.
    SlowMetadata(Duration),
    /// Metadata endpoint answers `302` to this URL.
    RedirectMetadata(String),
    /// Metadata `authorization_endpoint` replaced by this string.
    AuthorizationEndpoint(String),
    /// Metadata `token_endpoint` replaced by this string.
    TokenEndpoint(String),
    /// Metadata body is this raw text.
    RawMetadata(String),
    /// `/authorize` redirects with a `state` different from the client's.
    WrongState,
    /// The token endpoint answers every request with this status and body.
    TokenResponse(u16, String),
    /// A DPoP downgrade: token requests carrying a valid DPoP proof (and refreshes of DPoP-bound
    /// refresh tokens) are answered with unbound `token_type: Bearer` tokens, while metadata
    /// still advertises DPoP.
    DpopBearerDowngrade,
}

/// A fault of the token endpoint's infrastructure (a slow, overloaded or flaky authorization
/// server), set with [`AuthServer::set_token_fault`]. Unlike a [`Misbehavior`], the protocol
/// stays correct: these test what a client does when answers are late or lost.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenFault {
    /// Answer normally.
    None,
    /// Process the request (a refresh token is rotated), then wait this long before answering.
    /// A client that gives up earlier never sees the new refresh token.
    Delay(Duration),
    /// Hold the request without processing it, and never answer.
    Hang,
    /// Process the request, then drop the connection: the status line and headers of a `200`
    /// are sent, the body never is.
    DropAfterProcessing,
    /// Answer with `status` (e.g. 503) and an optional `Retry-After` (seconds), without
    /// processing the request.
    Unavailable {
        /// The HTTP status.
        status: u16,
        /// `Retry-After` in seconds.
        retry_after: Option<u64>,
    },
}

/// Which endpoint of the [`AuthServer`] a request hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// Any metadata document location (RFC 8414 or OpenID Connect discovery).
    Metadata,
    /// The RFC 7591 registration endpoint.
    Register,
    /// The authorization endpoint.
    Authorize,
    /// The token endpoint.
    Token,
    /// The RFC 7009 revocation endpoint.
    Revoke,
    /// The RFC 8628 device authorization endpoint.
    DeviceAuthorization,
    /// Anything else (answered 404, except the JWKS of OIDC-enabled servers).
    Other,
}

/// One request the AS received.
#[derive(Clone, Debug)]
pub struct AsRequest {
    /// Endpoint hit.
    pub endpoint: Endpoint,
    /// HTTP method.
    pub method: String,
    /// Request path (without query).
    pub path: String,
    /// Query parameters (last value wins).
    pub query: BTreeMap<String, String>,
    /// `application/x-www-form-urlencoded` body fields (token/revoke).
    pub form: BTreeMap<String, String>,
    /// JSON body (register).
    pub json: Option<Value>,
    /// `client_id` presented by any means: HTTP Basic username, form `client_id`, or query
    /// `client_id`.
    pub client_id: Option<String>,
    /// `true` if a client secret was presented (Basic password or form `client_secret`).
    pub presented_secret: bool,
    /// Form `grant_type`, if any.
    pub grant_type: Option<String>,
    /// Status code of the response.
    pub status: u16,
    /// A `DPoP` header was sent (token endpoint of a [`AuthServerConfig::dpop`] server).
    pub dpop_proof: bool,
    /// The JWK thumbprint of the proof's key, when the proof was valid.
    pub dpop_jkt: Option<String>,
    /// Why the proof (or its absence, for a DPoP-bound refresh token) was refused.
    pub dpop_rejection: Option<DpopRejection>,
}

/// A client the AS knows (pre-registered, DCR-registered, or CIMD URL).
#[derive(Clone, Debug)]
pub struct RegisteredClient {
    /// Client identifier.
    pub client_id: String,
    /// Client secret, for confidential clients.
    pub client_secret: Option<String>,
    /// `client_secret_basic`, `client_secret_post` or `none`.
    pub token_endpoint_auth_method: String,
    /// Registered redirect URIs.
    pub redirect_uris: Vec<String>,
    /// Registered through RFC 7591 dynamic client registration.
    pub via_dcr: bool,
}

/// What the AS says about an access token (in-process introspection, used by
/// [`McpServer`](crate::McpServer)).
#[derive(Clone, Debug)]
pub struct TokenInfo {
    /// Issuer of the AS that issued the token.
    pub issuer: String,
    /// Client the token was issued to.
    pub client_id: String,
    /// RFC 8707 resource the token is bound to.
    pub resource: Option<String>,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// The token is past its lifetime (or was expired by
    /// [`AuthServer::expire_access_tokens`]).
    pub expired: bool,
    /// The token's grant was revoked.
    pub revoked: bool,
    /// For a DPoP-bound token: the JWK SHA-256 thumbprint (`cnf.jkt`) of its key.
    pub jkt: Option<String>,
}

struct CodeRec {
    /// `prompt` of the authorization request included `consent`.
    consent: bool,
    client_id: String,
    redirect_uri: String,
    challenge: String,
    resource: Option<String>,
    scopes: Vec<String>,
    expires: Instant,
    used: bool,
    grant: Option<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    Access,
    Refresh,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DeviceStatus {
    Pending,
    Approved,
    Denied,
}

struct DeviceRec {
    client_id: String,
    user_code: String,
    resource: Option<String>,
    scopes: Vec<String>,
    expires: Instant,
    /// The current minimum gap between polls (grows by 5 s on each `slow_down`).
    interval: Duration,
    polls: Vec<Instant>,
    status: DeviceStatus,
    used: bool,
}

/// What the AS saw of one device code's polling (see [`AuthServer::device_polls`]).
#[derive(Clone, Debug)]
pub struct DevicePolls {
    /// When each token request for the code arrived, in order.
    pub times: Vec<Instant>,
    /// Polls that came sooner than the interval in force (each was answered `slow_down`).
    pub too_early: usize,
    /// Every `slow_down` answer, early or forced.
    pub slow_downs: usize,
}

struct TokenRec {
    kind: TokenKind,
    grant: usize,
    client_id: String,
    resource: Option<String>,
    scopes: Vec<String>,
    /// `None`: never expires.
    expires_at: Option<Instant>,
    force_expired: bool,
    /// Refresh token rotated out.
    used: bool,
    /// DPoP binding: the thumbprint of the key the token is bound to.
    jkt: Option<String>,
}

struct AsState {
    misbehavior: Misbehavior,
    token_fault: TokenFault,
    /// Token requests the fault still applies to (`None`: all).
    token_fault_remaining: Option<usize>,
    /// Refresh requests that presented a rotated-away refresh token (each revoked its grant).
    reuse_detections: usize,
    clients: HashMap<String, RegisteredClient>,
    registrations: Vec<RegisteredClient>,
    codes: HashMap<String, CodeRec>,
    tokens: HashMap<String, TokenRec>,
    /// Grant revocation flags, indexed by grant id.
    grants: Vec<bool>,
    issued: Vec<String>,
    requests: Vec<AsRequest>,
    /// Device codes (RFC 8628), keyed by device_code.
    devices: HashMap<String, DeviceRec>,
    /// Per user_code: (too-early polls, slow_down answers).
    device_counts: HashMap<String, (usize, usize)>,
    /// Device-code polls still to be answered `slow_down` whatever their timing.
    forced_slow_downs: usize,
    /// Issuers whose assertions the JWT bearer grant accepts.
    assertion_issuers: Vec<jwt_bearer::TrustedIssuer>,
    /// The nonce DPoP proofs must carry.
    dpop_nonce: Option<String>,
    /// Token requests refused for their DPoP proof, or for lacking one (not `use_dpop_nonce`).
    dpop_rejections: usize,
}

struct AsInner {
    config: AuthServerConfig,
    base_url: String,
    issuer: String,
    issuer_path: String,
    http: reqwest::Client,
    state: Mutex<AsState>,
    /// `jti`s of the DPoP proofs accepted.
    dpop_seen: ReplayCache,
}

/// A mock OAuth authorization server on `127.0.0.1` (cheap to clone; clones share state).
///
/// The server task runs on the Tokio runtime that called [`AuthServer::start`] until that
/// runtime shuts down.
#[derive(Clone)]
pub struct AuthServer {
    inner: Arc<AsInner>,
}

impl fmt::Debug for AuthServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = lock(&self.inner.state);
        f.debug_struct("AuthServer")
            .field("issuer", &self.inner.issuer)
            .field("clients", &st.clients.len())
            .field("tokens", &st.tokens.len())
            .field("misbehavior", &st.misbehavior)
            .finish_non_exhaustive()
    }
}

fn normalize_issuer_path(p: &str) -> String {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        String::new()
    } else if t.starts_with('/') {
        t.to_string()
    } else {
        format!("/{t}")
    }
}

impl AuthServer {
    /// Binds `127.0.0.1:0` and starts serving on the current Tokio runtime.
    ///
    /// # Errors
    ///
    /// The I/O error when no port on `127.0.0.1` can be bound or the bound address cannot be read,
    /// or [`std::io::ErrorKind::Other`] when the HTTP client that fetches client metadata documents
    /// cannot be built.
    pub async fn start(config: AuthServerConfig) -> std::io::Result<AuthServer> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let base_url = format!("http://127.0.0.1:{port}");
        let issuer_path = normalize_issuer_path(&config.issuer_path);
        let issuer = format!("{base_url}{issuer_path}");
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(CIMD_TIMEOUT)
            .build()
            .map_err(std::io::Error::other)?;
        let dpop_nonce = config.dpop_nonce.clone();
        let inner = Arc::new(AsInner {
            config,
            base_url,
            issuer,
            issuer_path,
            http,
            state: Mutex::new(AsState {
                misbehavior: Misbehavior::None,
                token_fault: TokenFault::None,
                token_fault_remaining: None,
                reuse_detections: 0,
                clients: HashMap::new(),
                registrations: Vec::new(),
                codes: HashMap::new(),
                tokens: HashMap::new(),
                grants: Vec::new(),
                issued: Vec::new(),
                requests: Vec::new(),
                devices: HashMap::new(),
                device_counts: HashMap::new(),
                forced_slow_downs: 0,
                assertion_issuers: Vec::new(),
                dpop_nonce,
                dpop_rejections: 0,
            }),
            dpop_seen: ReplayCache::default(),
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&inner));
        tokio::spawn(async move {
            // No Nagle delay: streamed answers are written in small pieces.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let _ = axum::serve(listener, app).await;
        });
        Ok(AuthServer { inner })
    }

    /// The issuer identifier, `http://127.0.0.1:PORT{issuer_path}`.
    pub fn issuer(&self) -> String {
        self.inner.issuer.clone()
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    /// The RFC 8414 metadata URL (`/.well-known/oauth-authorization-server{issuer_path}`),
    /// whether or not it is served.
    pub fn metadata_url(&self) -> String {
        format!(
            "{}/.well-known/oauth-authorization-server{}",
            self.inner.base_url, self.inner.issuer_path
        )
    }

    /// The configuration the server was started with.
    pub fn config(&self) -> AuthServerConfig {
        self.inner.config.clone()
    }

    /// Registers a client out of band. `token_endpoint_auth_method` is
    /// `client_secret_basic`, `client_secret_post` or `none`.
    pub fn preregister_client(
        &self,
        client_id: &str,
        client_secret: Option<&str>,
        token_endpoint_auth_method: &str,
        redirect_uris: Vec<String>,
    ) {
        let c = RegisteredClient {
            client_id: client_id.to_string(),
            client_secret: client_secret.map(str::to_string),
            token_endpoint_auth_method: token_endpoint_auth_method.to_string(),
            redirect_uris,
            via_dcr: false,
        };
        lock(&self.inner.state)
            .clients
            .insert(client_id.to_string(), c);
    }

    /// Replaces the current misbehavior ([`Misbehavior::None`] restores correct behavior).
    pub fn set_misbehavior(&self, m: Misbehavior) {
        lock(&self.inner.state).misbehavior = m;
    }

    /// Applies `fault` to every following token request, until set back to
    /// [`TokenFault::None`].
    pub fn set_token_fault(&self, fault: TokenFault) {
        let mut st = lock(&self.inner.state);
        st.token_fault = fault;
        st.token_fault_remaining = None;
    }

    /// Applies `fault` to the next `times` token requests only.
    pub fn set_token_fault_times(&self, fault: TokenFault, times: usize) {
        let mut st = lock(&self.inner.state);
        st.token_fault = fault;
        st.token_fault_remaining = Some(times);
    }

    /// How many refresh requests presented a refresh token that had already been rotated away
    /// (refresh token reuse, RFC 9700 §4.14.2): each one revoked its whole grant.
    pub fn reuse_detections(&self) -> usize {
        lock(&self.inner.state).reuse_detections
    }

    /// How many `refresh_token` grant requests reached the token endpoint (including ones a
    /// [`TokenFault`] held, delayed or dropped).
    pub fn refresh_requests(&self) -> usize {
        lock(&self.inner.state)
            .requests
            .iter()
            .filter(|r| {
                r.endpoint == Endpoint::Token && r.grant_type.as_deref() == Some("refresh_token")
            })
            .count()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<AsRequest> {
        lock(&self.inner.state).requests.clone()
    }

    /// Number of requests received at `endpoint`.
    pub fn count(&self, endpoint: Endpoint) -> usize {
        lock(&self.inner.state)
            .requests
            .iter()
            .filter(|r| r.endpoint == endpoint)
            .count()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        lock(&self.inner.state).requests.clear();
    }

    /// Clients registered through dynamic client registration, in order.
    pub fn registrations(&self) -> Vec<RegisteredClient> {
        lock(&self.inner.state).registrations.clone()
    }

    /// Every client the AS knows (pre-registered, DCR, and cached CIMD clients).
    pub fn clients(&self) -> Vec<RegisteredClient> {
        let mut v: Vec<_> = lock(&self.inner.state).clients.values().cloned().collect();
        v.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        v
    }

    /// Looks up an access token this AS issued (`None` for unknown tokens and refresh
    /// tokens).
    pub fn introspect(&self, access_token: &str) -> Option<TokenInfo> {
        let st = lock(&self.inner.state);
        let t = st.tokens.get(access_token)?;
        if t.kind != TokenKind::Access {
            return None;
        }
        Some(TokenInfo {
            issuer: self.inner.issuer.clone(),
            client_id: t.client_id.clone(),
            resource: t.resource.clone(),
            scopes: t.scopes.clone(),
            expired: t.force_expired || t.expires_at.is_some_and(|e| Instant::now() >= e),
            revoked: st.grants.get(t.grant).copied().unwrap_or(true),
            jkt: t.jkt.clone(),
        })
    }

    /// The DPoP binding (JWK thumbprint) of an access or refresh token this AS issued.
    pub fn token_jkt(&self, token: &str) -> Option<String> {
        lock(&self.inner.state).tokens.get(token)?.jkt.clone()
    }

    /// How many token requests were refused for an invalid DPoP proof, or for a DPoP-bound
    /// refresh token sent without one or with another key's (`use_dpop_nonce` answers are not
    /// counted).
    pub fn dpop_rejections(&self) -> usize {
        lock(&self.inner.state).dpop_rejections
    }

    /// Replaces the nonce DPoP proofs must carry (`None`: no nonce needed).
    pub fn set_dpop_nonce(&self, nonce: Option<String>) {
        lock(&self.inner.state).dpop_nonce = nonce;
    }

    /// Makes every access token issued so far expired (forces clients to refresh).
    pub fn expire_access_tokens(&self) {
        let mut st = lock(&self.inner.state);
        for t in st.tokens.values_mut() {
            if t.kind == TokenKind::Access {
                t.force_expired = true;
            }
        }
    }

    /// Revokes every grant (all access and refresh tokens issued so far).
    pub fn revoke_all_tokens(&self) {
        let mut st = lock(&self.inner.state);
        for g in &mut st.grants {
            *g = true;
        }
    }

    /// Every access/refresh token string ever issued, in issue order.
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.inner.state).issued.clone()
    }

    fn set_device_status(&self, user_code: &str, status: DeviceStatus) -> bool {
        let mut st = lock(&self.inner.state);
        match st
            .devices
            .values_mut()
            .find(|d| d.user_code == user_code && d.status == DeviceStatus::Pending)
        {
            Some(d) => {
                d.status = status;
                true
            }
            None => false,
        }
    }

    /// The user approves the device authorization of `user_code` (RFC 8628 §3.3). False when no
    /// pending device authorization has that code.
    pub fn approve_device(&self, user_code: &str) -> bool {
        self.set_device_status(user_code, DeviceStatus::Approved)
    }

    /// The user denies the device authorization of `user_code`: polls get `access_denied`.
    pub fn deny_device(&self, user_code: &str) -> bool {
        self.set_device_status(user_code, DeviceStatus::Denied)
    }

    /// Answers the next `times` device-code polls `slow_down` whatever their timing (the
    /// interval of the code still grows by 5 s each time).
    pub fn force_device_slow_down(&self, times: usize) {
        lock(&self.inner.state).forced_slow_downs = times;
    }

    /// The user codes issued so far (pending or not), in no particular order.
    pub fn device_user_codes(&self) -> Vec<String> {
        lock(&self.inner.state)
            .devices
            .values()
            .map(|d| d.user_code.clone())
            .collect()
    }

    /// How the device code of `user_code` was polled (`None`: unknown user code).
    pub fn device_polls(&self, user_code: &str) -> Option<DevicePolls> {
        let st = lock(&self.inner.state);
        let d = st.devices.values().find(|d| d.user_code == user_code)?;
        let (too_early, slow_downs) = st.device_counts.get(user_code).copied().unwrap_or_default();
        Some(DevicePolls {
            times: d.polls.clone(),
            too_early,
            slow_downs,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Request handling
// ---------------------------------------------------------------------------------------

struct Req<'a> {
    method: &'a Method,
    headers: &'a HeaderMap,
    query: Params,
    form: Params,
    body: &'a Bytes,
    /// What the token endpoint made of the request's DPoP proof (for the request log).
    dpop: Mutex<DpopSeen>,
}

/// What the token endpoint made of a request's DPoP proof.
#[derive(Default)]
struct DpopSeen {
    proof: bool,
    jkt: Option<String>,
    rejection: Option<DpopRejection>,
}

/// Result of parsing an `Authorization: Basic` header.
enum Basic {
    Absent,
    Malformed,
    Present(String, String),
}

fn parse_basic(headers: &HeaderMap) -> Basic {
    let (scheme, rest) = match crate::util::authorization(headers) {
        None => return Basic::Absent,
        Some(Err(())) => return Basic::Malformed,
        Some(Ok(parts)) => parts,
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Basic::Malformed;
    }
    let Ok(decoded) = data_encoding::BASE64.decode(rest.trim().as_bytes()) else {
        return Basic::Malformed;
    };
    let Ok(decoded) = String::from_utf8(decoded) else {
        return Basic::Malformed;
    };
    let Some((id, secret)) = decoded.split_once(':') else {
        return Basic::Malformed;
    };
    // RFC 6749 §2.3.1: both parts are application/x-www-form-urlencoded.
    let dec = |s: &str| -> String {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Basic::Present(dec(id), dec(secret))
}

async fn handle(
    State(inner): State<Arc<AsInner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = Params::parse(uri.query().unwrap_or("").as_bytes());
    let form = if is_form(&headers) {
        Params::parse(&body)
    } else {
        Params::default()
    };
    let json = if is_json(&headers) {
        serde_json::from_slice::<Value>(&body).ok()
    } else {
        None
    };
    let basic = parse_basic(&headers);
    let (basic_id, basic_secret) = match &basic {
        Basic::Present(id, s) => (Some(id.clone()), !s.is_empty()),
        _ => (None, false),
    };
    let client_id = basic_id
        .or_else(|| form.get("client_id").map(str::to_string))
        .or_else(|| query.get("client_id").map(str::to_string));
    let path = uri.path().to_string();
    let endpoint = inner.classify(&path);
    let mut log = AsRequest {
        endpoint,
        method: method.to_string(),
        path,
        query: query.map.clone(),
        form: form.map.clone(),
        json,
        client_id,
        presented_secret: basic_secret || form.map.contains_key("client_secret"),
        grant_type: form.get("grant_type").map(str::to_string),
        status: 0,
        dpop_proof: false,
        dpop_jkt: None,
        dpop_rejection: None,
    };
    let req = Req {
        method: &method,
        headers: &headers,
        query,
        form,
        body: &body,
        dpop: Mutex::new(DpopSeen::default()),
    };
    if endpoint == Endpoint::Token {
        return token_with_fault(&inner, &req, log).await;
    }
    let resp = match endpoint {
        Endpoint::Metadata => inner.metadata(&req, &log.path),
        Endpoint::Register => inner.register(&req),
        Endpoint::Authorize => inner.authorize(&req).await,
        Endpoint::Token => inner.token(&req),
        Endpoint::Revoke => inner.revoke(&req),
        Endpoint::DeviceAuthorization => inner.device_authorization(&req),
        Endpoint::Other => inner.other(&req, &log.path),
    };
    log.status = resp.status().as_u16();
    lock(&inner.state).requests.push(log);
    resp
}

/// The token endpoint under the current [`TokenFault`]. The request is logged as soon as it is
/// processed (status 0 when it is never answered), so a client that gives up is still counted.
async fn token_with_fault(inner: &AsInner, req: &Req<'_>, mut log: AsRequest) -> Response {
    let fault = {
        let mut st = lock(&inner.state);
        let fault = st.token_fault.clone();
        match &mut st.token_fault_remaining {
            Some(0) => TokenFault::None,
            Some(n) => {
                *n -= 1;
                fault
            }
            None => fault,
        }
    };
    let processed = |log: &mut AsRequest, resp: &Response| {
        log.status = resp.status().as_u16();
        let seen = std::mem::take(&mut *lock(&req.dpop));
        log.dpop_proof = seen.proof;
        log.dpop_jkt = seen.jkt;
        log.dpop_rejection = seen.rejection;
        lock(&inner.state).requests.push(log.clone());
    };
    match fault {
        TokenFault::None => {
            let resp = inner.token(req);
            processed(&mut log, &resp);
            resp
        }
        TokenFault::Delay(d) => {
            let resp = inner.token(req);
            processed(&mut log, &resp);
            tokio::time::sleep(d).await;
            resp
        }
        TokenFault::Hang => {
            lock(&inner.state).requests.push(log);
            std::future::pending::<()>().await;
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        TokenFault::DropAfterProcessing => {
            let resp = inner.token(req);
            processed(&mut log, &resp);
            let broken = futures::stream::iter([Err::<Bytes, std::io::Error>(
                std::io::Error::other("connection dropped by TokenFault::DropAfterProcessing"),
            )]);
            let mut dropped = Response::new(axum::body::Body::from_stream(broken));
            *dropped.status_mut() = resp.status();
            dropped
        }
        TokenFault::Unavailable {
            status,
            retry_after,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let mut resp = (status, "{\"error\":\"temporarily_unavailable\"}").into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if let Some(secs) = retry_after
                && let Ok(v) = HeaderValue::from_str(&secs.to_string())
            {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            processed(&mut log, &resp);
            resp
        }
    }
}

impl AsInner {
    fn oauth_metadata_path(&self) -> String {
        format!(
            "/.well-known/oauth-authorization-server{}",
            self.issuer_path
        )
    }

    fn oidc_metadata_paths(&self) -> [String; 2] {
        [
            format!("/.well-known/openid-configuration{}", self.issuer_path),
            format!("{}/.well-known/openid-configuration", self.issuer_path),
        ]
    }

    fn is_oidc_path(&self, path: &str) -> bool {
        self.config.serve_oidc_metadata && self.oidc_metadata_paths().iter().any(|p| p == path)
    }

    fn classify(&self, path: &str) -> Endpoint {
        let ip = &self.issuer_path;
        let sub = |s: &str| format!("{ip}{s}");
        if (self.config.serve_oauth_metadata && path == self.oauth_metadata_path())
            || self.is_oidc_path(path)
        {
            Endpoint::Metadata
        } else if path == sub("/authorize") {
            Endpoint::Authorize
        } else if path == sub("/token") {
            Endpoint::Token
        } else if self.config.dynamic_registration && path == sub("/register") {
            Endpoint::Register
        } else if self.config.revocation && path == sub("/revoke") {
            Endpoint::Revoke
        } else if self.config.device_authorization && path == sub("/device_authorization") {
            Endpoint::DeviceAuthorization
        } else {
            Endpoint::Other
        }
    }

    fn other(&self, req: &Req<'_>, path: &str) -> Response {
        if self.config.serve_oidc_metadata
            && path == format!("{}/jwks", self.issuer_path)
            && *req.method == Method::GET
        {
            return json_response(StatusCode::OK, &json!({ "keys": [] }));
        }
        not_found()
    }

    fn misbehavior(&self) -> Misbehavior {
        lock(&self.state).misbehavior.clone()
    }

    // ----- metadata -----------------------------------------------------------------

    fn metadata_document(&self, oidc: bool, m: &Misbehavior) -> Map<String, Value> {
        let c = &self.config;
        let iss = &self.issuer;
        let mut d = Map::new();
        let issuer = if *m == Misbehavior::WrongIssuerInMetadata {
            format!("{iss}/evil")
        } else {
            iss.clone()
        };
        d.insert("issuer".into(), json!(issuer));
        let authz = match m {
            Misbehavior::AuthorizationEndpoint(s) => s.clone(),
            _ => format!("{iss}/authorize"),
        };
        d.insert("authorization_endpoint".into(), json!(authz));
        let token = match m {
            Misbehavior::TokenEndpoint(s) => s.clone(),
            _ => format!("{iss}/token"),
        };
        d.insert("token_endpoint".into(), json!(token));
        if c.dynamic_registration {
            d.insert(
                "registration_endpoint".into(),
                json!(format!("{iss}/register")),
            );
        }
        if c.revocation {
            d.insert("revocation_endpoint".into(), json!(format!("{iss}/revoke")));
            d.insert(
                "revocation_endpoint_auth_methods_supported".into(),
                json!(["client_secret_basic", "client_secret_post", "none"]),
            );
        }
        if c.oidc_offline_access {
            d.insert(
                "id_token_signing_alg_values_supported".into(),
                json!(["RS256"]),
            );
        }
        d.insert("response_types_supported".into(), json!(["code"]));
        d.insert("response_modes_supported".into(), json!(["query"]));
        if c.device_authorization {
            d.insert(
                "device_authorization_endpoint".into(),
                json!(format!("{iss}/device_authorization")),
            );
            d.insert(
                "grant_types_supported".into(),
                json!(["authorization_code", "refresh_token", DEVICE_GRANT]),
            );
        } else {
            d.insert(
                "grant_types_supported".into(),
                json!(["authorization_code", "refresh_token"]),
            );
        }
        if self.accepts_jwt_bearer()
            && let Some(Value::Array(grants)) = d.get_mut("grant_types_supported")
        {
            grants.push(json!(crate::idp::JWT_BEARER_GRANT));
        }
        d.insert(
            "token_endpoint_auth_methods_supported".into(),
            json!(["client_secret_basic", "client_secret_post", "none"]),
        );
        if c.pkce_supported && *m != Misbehavior::NoPkceSupport {
            d.insert("code_challenge_methods_supported".into(), json!(["S256"]));
        }
        if let Some(s) = &c.scopes_supported {
            d.insert("scopes_supported".into(), json!(s));
        }
        if c.dpop {
            d.insert(
                "dpop_signing_alg_values_supported".into(),
                json!([dpop::DPOP_ALG]),
            );
        }
        if c.iss_parameter_supported {
            d.insert(
                "authorization_response_iss_parameter_supported".into(),
                json!(true),
            );
        }
        if c.client_id_metadata_documents {
            d.insert("client_id_metadata_document_supported".into(), json!(true));
        }
        if oidc {
            d.insert("jwks_uri".into(), json!(format!("{iss}/jwks")));
            d.insert("subject_types_supported".into(), json!(["public"]));
            d.insert(
                "id_token_signing_alg_values_supported".into(),
                json!(["RS256"]),
            );
        }
        d
    }

    fn metadata(&self, req: &Req<'_>, path: &str) -> Response {
        if *req.method != Method::GET {
            return method_not_allowed("GET");
        }
        let m = self.misbehavior();
        let oidc = self.is_oidc_path(path) && path != self.oauth_metadata_path();
        let doc = self.metadata_document(oidc, &m);
        match m {
            Misbehavior::RedirectMetadata(url) => {
                let mut resp = StatusCode::FOUND.into_response();
                match HeaderValue::from_str(&url) {
                    Ok(v) => {
                        resp.headers_mut().insert(header::LOCATION, v);
                        resp
                    }
                    Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                }
            }
            Misbehavior::RawMetadata(text) => {
                let mut resp = (StatusCode::OK, text).into_response();
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                resp
            }
            Misbehavior::HugeMetadata(n) => {
                let mut doc = doc;
                doc.insert("x_padding".into(), json!(""));
                let base = serde_json::to_vec(&doc).map(|v| v.len()).unwrap_or(0);
                let pad = n.saturating_sub(base);
                doc.insert("x_padding".into(), json!("a".repeat(pad)));
                json_response(StatusCode::OK, &Value::Object(doc))
            }
            Misbehavior::SlowMetadata(d) => {
                let bytes = serde_json::to_vec(&doc).unwrap_or_default();
                slow_json(bytes, d)
            }
            _ => json_response(StatusCode::OK, &Value::Object(doc)),
        }
    }

    // ----- registration -------------------------------------------------------------

    fn register(&self, req: &Req<'_>) -> Response {
        if *req.method != Method::POST {
            return method_not_allowed("POST");
        }
        let bad_meta = |d: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_client_metadata", d);
        if !is_json(req.headers) {
            return bad_meta("Content-Type must be application/json");
        }
        let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(req.body) else {
            return bad_meta("body must be a JSON object");
        };
        let redirect_uris: Vec<String> = match body.get("redirect_uris") {
            Some(Value::Array(a)) if !a.is_empty() => {
                let mut out = Vec::new();
                for v in a {
                    match v.as_str() {
                        Some(s) if valid_redirect_uri(s) => out.push(s.to_string()),
                        _ => {
                            return oauth_error(
                                StatusCode::BAD_REQUEST,
                                "invalid_redirect_uri",
                                "each redirect URI must be an absolute https URI or an http loopback URI, without fragment",
                            );
                        }
                    }
                }
                out
            }
            _ => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_redirect_uri",
                    "redirect_uris must be a non-empty array",
                );
            }
        };
        let string_list_subset = |key: &str, allowed: &[&str]| -> Option<String> {
            match body.get(key) {
                None => None,
                Some(Value::Array(a)) => (!a
                    .iter()
                    .all(|v| v.as_str().is_some_and(|s| allowed.contains(&s))))
                .then(|| format!("unsupported value in {key}")),
                Some(_) => Some(format!("{key} must be an array of strings")),
            }
        };
        let grants: &[&str] = if self.config.device_authorization {
            &["authorization_code", "refresh_token", DEVICE_GRANT]
        } else {
            &["authorization_code", "refresh_token"]
        };
        if let Some(e) = string_list_subset("grant_types", grants)
            .or_else(|| string_list_subset("response_types", &["code"]))
        {
            return bad_meta(&e);
        }
        match body.get("token_endpoint_auth_method") {
            None => {}
            Some(Value::String(s))
                if ["client_secret_basic", "client_secret_post", "none"].contains(&s.as_str()) => {}
            Some(_) => return bad_meta("unsupported token_endpoint_auth_method"),
        }
        for key in [
            "client_name",
            "application_type",
            "scope",
            "client_uri",
            "logo_uri",
        ] {
            if body.get(key).is_some_and(|v| !v.is_string()) {
                return bad_meta(&format!("{key} must be a string"));
            }
        }
        if let Some(t) = body.get("application_type").and_then(Value::as_str)
            && t != "web"
            && t != "native"
        {
            return bad_meta("application_type must be web or native");
        }

        let method = self.config.dcr_token_endpoint_auth_method.clone();
        let client_id = random_token("dcr_");
        let secret = (method != "none").then(|| random_token("sec_"));
        let client = RegisteredClient {
            client_id: client_id.clone(),
            client_secret: secret.clone(),
            token_endpoint_auth_method: method.clone(),
            redirect_uris: redirect_uris.clone(),
            via_dcr: true,
        };
        {
            let mut st = lock(&self.state);
            st.clients.insert(client_id.clone(), client.clone());
            st.registrations.push(client);
        }
        let mut out = Map::new();
        out.insert("client_id".into(), json!(client_id));
        out.insert("client_id_issued_at".into(), json!(unix_now()));
        if let Some(s) = secret {
            out.insert("client_secret".into(), json!(s));
            out.insert("client_secret_expires_at".into(), json!(0));
        }
        out.insert("token_endpoint_auth_method".into(), json!(method));
        out.insert("redirect_uris".into(), json!(redirect_uris));
        let granted = match body.get("grant_types") {
            Some(g) => g.clone(),
            None => json!(["authorization_code", "refresh_token"]),
        };
        out.insert("grant_types".into(), granted);
        out.insert("response_types".into(), json!(["code"]));
        for key in [
            "client_name",
            "application_type",
            "scope",
            "client_uri",
            "logo_uri",
        ] {
            if let Some(v) = body.get(key) {
                out.insert(key.into(), v.clone());
            }
        }
        no_store(json_response(StatusCode::CREATED, &Value::Object(out)))
    }

    // ----- authorization endpoint ---------------------------------------------------

    async fn resolve_client(&self, client_id: &str) -> Result<RegisteredClient, String> {
        if let Some(c) = lock(&self.state).clients.get(client_id) {
            return Ok(c.clone());
        }
        if !self.config.client_id_metadata_documents {
            return Err("unknown client_id".into());
        }
        let Some(url) = cimd_url(client_id) else {
            return Err("unknown client_id (not a valid client ID metadata document URL)".into());
        };
        let client = self.fetch_cimd(client_id, url).await?;
        lock(&self.state)
            .clients
            .insert(client_id.to_string(), client.clone());
        Ok(client)
    }

    async fn fetch_cimd(&self, client_id: &str, url: url::Url) -> Result<RegisteredClient, String> {
        let mut resp = self
            .http
            .get(url)
            .header(header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("fetching client metadata document failed: {e}"))?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(format!(
                "client metadata document answered {}",
                resp.status()
            ));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("reading client metadata document failed: {e}"))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > CIMD_MAX_BYTES {
                return Err("client metadata document too large".into());
            }
        }
        let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(&body) else {
            return Err("client metadata document is not a JSON object".into());
        };
        if doc.get("client_id").and_then(Value::as_str) != Some(client_id) {
            return Err("client metadata document client_id does not equal its URL".into());
        }
        let Some(Value::Array(uris)) = doc.get("redirect_uris") else {
            return Err("client metadata document lacks redirect_uris".into());
        };
        let mut redirect_uris = Vec::new();
        for u in uris {
            match u.as_str() {
                Some(s) if valid_redirect_uri(s) => redirect_uris.push(s.to_string()),
                _ => return Err("client metadata document has an invalid redirect URI".into()),
            }
        }
        if redirect_uris.is_empty() {
            return Err("client metadata document has no redirect_uris".into());
        }
        match doc.get("token_endpoint_auth_method") {
            None => {}
            Some(Value::String(s)) if s == "none" => {}
            Some(_) => {
                return Err(
                    "client metadata document token_endpoint_auth_method must be none".into(),
                );
            }
        }
        if doc.contains_key("client_secret") || doc.contains_key("client_secret_expires_at") {
            return Err("client metadata document must not contain a client secret".into());
        }
        Ok(RegisteredClient {
            client_id: client_id.to_string(),
            client_secret: None,
            token_endpoint_auth_method: "none".into(),
            redirect_uris,
            via_dcr: false,
        })
    }

    async fn authorize(&self, req: &Req<'_>) -> Response {
        if *req.method != Method::GET {
            return method_not_allowed("GET");
        }
        let q = &req.query;
        for k in ["client_id", "redirect_uri"] {
            if q.duplicates.iter().any(|d| d == k) {
                return error_page(&format!("{k} repeated"));
            }
        }
        let Some(client_id) = q.get("client_id") else {
            return error_page("missing client_id");
        };
        let Some(redirect_uri) = q.get("redirect_uri") else {
            return error_page("missing redirect_uri");
        };
        let client = match self.resolve_client(client_id).await {
            Ok(c) => c,
            Err(e) => return error_page(&e),
        };
        if !client.redirect_uris.iter().any(|r| {
            if self.config.exact_redirect_uris {
                r == redirect_uri
            } else {
                redirect_matches(r, redirect_uri)
            }
        }) {
            return error_page("redirect_uri does not match a registered redirect URI");
        }
        let Ok(redirect) = url::Url::parse(redirect_uri) else {
            return error_page("invalid redirect_uri");
        };
        let m = self.misbehavior();
        let state = if m == Misbehavior::WrongState {
            Some(random_token("tampered_"))
        } else {
            q.get("state").map(str::to_string)
        };
        let iss = if self.config.iss_parameter_supported {
            match m {
                Misbehavior::WrongIss => Some(EVIL_ISSUER.to_string()),
                Misbehavior::MissingIss => None,
                Misbehavior::IssTrailingSlash => Some(format!("{}/", self.issuer)),
                _ => Some(self.issuer.clone()),
            }
        } else {
            None
        };
        let respond = |params: &[(&str, &str)]| -> Response {
            let mut u = redirect.clone();
            {
                let mut qp = u.query_pairs_mut();
                for (k, v) in params {
                    qp.append_pair(k, v);
                }
                if let Some(s) = &state {
                    qp.append_pair("state", s);
                }
                if let Some(i) = &iss {
                    qp.append_pair("iss", i);
                }
            }
            match HeaderValue::from_str(u.as_str()) {
                Ok(v) => {
                    let mut resp = StatusCode::FOUND.into_response();
                    resp.headers_mut().insert(header::LOCATION, v);
                    no_store(resp)
                }
                Err(_) => error_page("redirect URI cannot be used"),
            }
        };
        let fail =
            |error: &str, desc: &str| respond(&[("error", error), ("error_description", desc)]);

        if q.duplicates.iter().any(|d| d == "resource") {
            return fail("invalid_target", "only one resource is supported");
        }
        if let Some(d) = q.duplicates.first() {
            return fail("invalid_request", &format!("parameter {d} repeated"));
        }
        match q.get("response_type") {
            None => return fail("invalid_request", "missing response_type"),
            Some("code") => {}
            Some(_) => return fail("unsupported_response_type", "only code is supported"),
        }
        match q.get("code_challenge_method") {
            None => {
                return fail(
                    "invalid_request",
                    "PKCE required: missing code_challenge_method",
                );
            }
            Some("S256") => {}
            Some(_) => return fail("invalid_request", "code_challenge_method must be S256"),
        }
        let Some(challenge) = q.get("code_challenge") else {
            return fail("invalid_request", "PKCE required: missing code_challenge");
        };
        if !pkce_syntax_ok(challenge, 43, 43) {
            return fail("invalid_request", "malformed S256 code_challenge");
        }
        let scopes: Vec<String> = q
            .get("scope")
            .unwrap_or("")
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if let Some(supported) = &self.config.scopes_supported
            && let Some(bad) = scopes.iter().find(|s| !supported.contains(s))
        {
            return fail("invalid_scope", &format!("unsupported scope {bad}"));
        }
        let resource = q.get("resource").map(str::to_string);
        if let Some(r) = &resource
            && !valid_resource(r)
        {
            return fail(
                "invalid_target",
                "resource must be an absolute URI without fragment",
            );
        }
        let code = random_token("code_");
        lock(&self.state).codes.insert(
            code.clone(),
            CodeRec {
                consent: q
                    .get("prompt")
                    .is_some_and(|p| p.split(' ').any(|v| v == "consent")),
                client_id: client.client_id.clone(),
                redirect_uri: redirect_uri.to_string(),
                challenge: challenge.to_string(),
                resource,
                scopes,
                expires: Instant::now() + CODE_TTL,
                used: false,
                grant: None,
            },
        );
        respond(&[("code", &code)])
    }

    // ----- client authentication ----------------------------------------------------

    fn authenticate(&self, req: &Req<'_>) -> Result<RegisteredClient, Box<Response>> {
        let invalid_client = |d: &str| {
            let mut r = oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", d);
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"mcp-auth-testkit\""),
            );
            Box::new(r)
        };
        let basic = match parse_basic(req.headers) {
            Basic::Absent => None,
            Basic::Malformed => return Err(invalid_client("malformed Authorization header")),
            Basic::Present(id, secret) => Some((id, secret)),
        };
        let form_id = req.form.get("client_id");
        let form_secret = req.form.get("client_secret");
        if basic.is_some() && form_secret.is_some() {
            // RFC 6749 §2.3: at most one authentication method per request.
            return Err(invalid_client(
                "more than one client authentication method used",
            ));
        }
        let id = match (&basic, form_id) {
            (Some((b, _)), Some(f)) if b != f => {
                return Err(invalid_client(
                    "client_id in body differs from Basic username",
                ));
            }
            (Some((b, _)), _) => b.clone(),
            (None, Some(f)) => f.to_string(),
            (None, None) => return Err(invalid_client("no client authentication")),
        };
        let Some(client) = lock(&self.state).clients.get(&id).cloned() else {
            return Err(invalid_client("unknown client"));
        };
        let expected = client.client_secret.as_deref();
        let ok = match client.token_endpoint_auth_method.as_str() {
            "client_secret_basic" => {
                matches!((&basic, expected), (Some((_, s)), Some(e)) if s == e)
            }
            "client_secret_post" => {
                basic.is_none() && matches!((form_secret, expected), (Some(s), Some(e)) if s == e)
            }
            "none" => basic.is_none() && form_secret.is_none() && form_id.is_some(),
            _ => false,
        };
        if ok {
            Ok(client)
        } else {
            Err(invalid_client(&format!(
                "client authentication failed (registered method: {})",
                client.token_endpoint_auth_method
            )))
        }
    }

    // ----- token endpoint -----------------------------------------------------------

    fn token(&self, req: &Req<'_>) -> Response {
        if let Misbehavior::TokenResponse(status, body) = self.misbehavior() {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut resp = (status, body).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return no_store(resp);
        }
        if *req.method != Method::POST {
            return method_not_allowed("POST");
        }
        if !is_form(req.headers) {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Content-Type must be application/x-www-form-urlencoded",
            );
        }
        if !req.query.map.is_empty() {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "parameters must be sent in the request body",
            );
        }
        if let Some(d) = req.form.duplicates.first() {
            let error = if d == "resource" {
                "invalid_target"
            } else {
                "invalid_request"
            };
            return oauth_error(
                StatusCode::BAD_REQUEST,
                error,
                &format!("parameter {d} repeated"),
            );
        }
        if req.form.get("grant_type") == Some(crate::idp::JWT_BEARER_GRANT)
            && self.accepts_jwt_bearer()
        {
            // Client authentication depends on the assertion's issuer.
            return self.jwt_bearer_grant(req);
        }
        // RFC 9449 §5: the proof is checked before anything else is looked at.
        let jkt = match self.token_dpop(req) {
            Ok(jkt) => jkt,
            Err(refused) => return *refused,
        };
        let jkt = jkt.as_deref();
        let client = match self.authenticate(req) {
            Ok(c) => c,
            Err(r) => return *r,
        };
        match req.form.get("grant_type") {
            None => oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "missing grant_type",
            ),
            Some("authorization_code") => self.code_grant(req, &client, jkt),
            Some("refresh_token") => self.refresh_grant(req, &client, jkt),
            Some(DEVICE_GRANT) if self.config.device_authorization => {
                self.device_grant(req, &client, jkt)
            }
            Some(_) => oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only authorization_code and refresh_token are supported",
            ),
        }
    }

    /// The DPoP proof of a token request on a [`AuthServerConfig::dpop`] server: `Ok(None)`
    /// without one (or when DPoP is off), the thumbprint of its key when valid, else the
    /// `400 invalid_dpop_proof` / `use_dpop_nonce` answer.
    fn token_dpop(&self, req: &Req<'_>) -> Result<Option<String>, Box<Response>> {
        if !self.config.dpop {
            return Ok(None);
        }
        let proof = match dpop::proof_header(req.headers) {
            Ok(None) => return Ok(None),
            Ok(Some(p)) => Ok(p),
            Err(r) => Err(r),
        };
        let nonce = lock(&self.state).dpop_nonce.clone();
        let htu = format!("{}/token", self.issuer);
        let checked = proof.and_then(|p| {
            dpop::validate(
                p,
                &dpop::Expected {
                    method: "POST",
                    htu: &htu,
                    access_token: None,
                    nonce: nonce.as_deref(),
                    jkt: None,
                },
                &self.dpop_seen,
            )
        });
        {
            let mut seen = lock(&req.dpop);
            seen.proof = true;
            match &checked {
                Ok(jkt) => seen.jkt = Some(jkt.clone()),
                Err(r) => seen.rejection = Some(r.clone()),
            }
        }
        match checked {
            Ok(jkt) => Ok(Some(jkt)),
            Err(DpopRejection::Nonce) => {
                let mut resp = oauth_error(
                    StatusCode::BAD_REQUEST,
                    "use_dpop_nonce",
                    "Authorization server requires nonce in DPoP proof",
                );
                if let Some(v) = nonce.and_then(|n| HeaderValue::from_str(&n).ok()) {
                    resp.headers_mut().insert("dpop-nonce", v);
                }
                Err(Box::new(no_store(resp)))
            }
            Err(r) => {
                lock(&self.state).dpop_rejections += 1;
                Err(Box::new(oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_dpop_proof",
                    &r.to_string(),
                )))
            }
        }
    }

    /// Records a refused DPoP-bound refresh (no proof, or another key's).
    fn refuse_bound_refresh(&self, st: &mut AsState, req: &Req<'_>, r: DpopRejection) {
        st.dpop_rejections += 1;
        lock(&req.dpop).rejection = Some(r);
    }

    fn code_grant(&self, req: &Req<'_>, client: &RegisteredClient, jkt: Option<&str>) -> Response {
        let invalid_grant = |d: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", d);
        let Some(code) = req.form.get("code") else {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "missing code");
        };
        let mut st = lock(&self.state);
        let st = &mut *st;
        let Some(rec) = st.codes.get_mut(code) else {
            return invalid_grant("unknown authorization code");
        };
        if rec.used {
            // RFC 6749 §4.1.2: revoke tokens previously issued from this code.
            if let Some(g) = rec.grant
                && let Some(flag) = st.grants.get_mut(g)
            {
                *flag = true;
            }
            return invalid_grant("authorization code already used");
        }
        if Instant::now() >= rec.expires {
            return invalid_grant("authorization code expired");
        }
        if rec.client_id != client.client_id {
            return invalid_grant("authorization code was issued to another client");
        }
        if req.form.get("redirect_uri") != Some(rec.redirect_uri.as_str()) {
            return invalid_grant("redirect_uri does not match the authorization request");
        }
        let Some(verifier) = req.form.get("code_verifier") else {
            return invalid_grant("missing code_verifier");
        };
        if !pkce_syntax_ok(verifier, 43, 128) || s256(verifier) != rec.challenge {
            return invalid_grant("PKCE verification failed");
        }
        match (&rec.resource, req.form.get("resource")) {
            (Some(a), Some(b)) if a == b => {}
            (Some(_), _) => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_target",
                    "resource must equal the resource of the authorization request",
                );
            }
            (None, Some(b)) if !valid_resource(b) => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_target",
                    "resource must be an absolute URI without fragment",
                );
            }
            (None, _) => {}
        }
        let resource = rec
            .resource
            .clone()
            .or_else(|| req.form.get("resource").map(str::to_string));
        let scopes = rec.scopes.clone();
        rec.used = true;
        let grant = st.grants.len();
        st.grants.push(false);
        rec.grant = Some(grant);
        let refresh = self.config.issue_refresh_tokens
            && (!self.config.oidc_offline_access
                || (rec.consent && scopes.iter().any(|s| s == "offline_access")));
        self.issue_bound(st, grant, &client.client_id, resource, scopes, refresh, jkt)
    }

    // ----- device authorization grant (RFC 8628) ------------------------------------

    fn device_authorization(&self, req: &Req<'_>) -> Response {
        if let Some(refused) = refuse_unless_form_post(req) {
            return refused;
        }
        // RFC 8628 §3.1: the client authenticates as at the token endpoint.
        let client = match self.authenticate(req) {
            Ok(c) => c,
            Err(r) => return *r,
        };
        let resource = req.form.get("resource").map(str::to_string);
        if let Some(r) = &resource
            && !valid_resource(r)
        {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_target",
                "resource must be an absolute URI without fragment",
            );
        }
        let scopes: Vec<String> = req
            .form
            .get("scope")
            .unwrap_or("")
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if let Some(supported) = &self.config.scopes_supported
            && let Some(bad) = scopes.iter().find(|s| !supported.contains(s))
        {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                &format!("unsupported scope {bad}"),
            );
        }
        let device_code = random_token("dc_");
        // RFC 8628 §6.1: short, case-insensitive, no ambiguous characters.
        let user_code = {
            let raw: String = random_token("")
                .chars()
                .filter(char::is_ascii_alphabetic)
                .map(|c| c.to_ascii_uppercase())
                .filter(|c| !matches!(c, 'I' | 'O'))
                .take(8)
                .collect();
            format!("{}-{}", &raw[..4.min(raw.len())], &raw[4.min(raw.len())..])
        };
        let interval = self.config.device_interval;
        let ttl = self.config.device_code_ttl;
        lock(&self.state).devices.insert(
            device_code.clone(),
            DeviceRec {
                client_id: client.client_id,
                user_code: user_code.clone(),
                resource,
                scopes,
                expires: Instant::now() + ttl,
                interval,
                polls: Vec::new(),
                status: DeviceStatus::Pending,
                used: false,
            },
        );
        let verification_uri = format!("{}/device", self.issuer);
        no_store(json_response(
            StatusCode::OK,
            &json!({
                "device_code": device_code,
                "user_code": user_code,
                "verification_uri": verification_uri,
                "verification_uri_complete": format!("{verification_uri}?user_code={user_code}"),
                "expires_in": ttl.as_secs(),
                "interval": interval.as_secs(),
            }),
        ))
    }

    fn device_grant(
        &self,
        req: &Req<'_>,
        client: &RegisteredClient,
        jkt: Option<&str>,
    ) -> Response {
        let error = |e: &str, d: &str| oauth_error(StatusCode::BAD_REQUEST, e, d);
        let Some(code) = req.form.get("device_code") else {
            return error("invalid_request", "missing device_code");
        };
        let now = Instant::now();
        let mut st = lock(&self.state);
        let st = &mut *st;
        let Some(rec) = st.devices.get_mut(code) else {
            return error("invalid_grant", "unknown device code");
        };
        if rec.client_id != client.client_id {
            return error("invalid_grant", "device code was issued to another client");
        }
        if rec.used {
            return error("invalid_grant", "device code already used");
        }
        match (&rec.resource, req.form.get("resource")) {
            (Some(a), Some(b)) if a == b => {}
            (None, None) => {}
            _ => {
                return error(
                    "invalid_target",
                    "resource must equal the resource of the device authorization request",
                );
            }
        }
        let previous = rec.polls.last().copied();
        rec.polls.push(now);
        if now >= rec.expires {
            return error("expired_token", "the device code has expired");
        }
        let early = previous.is_some_and(|p| now.duration_since(p) < rec.interval);
        let forced = st.forced_slow_downs > 0;
        if early || forced {
            if forced {
                st.forced_slow_downs -= 1;
            }
            rec.interval += Duration::from_secs(5);
            let counts = st.device_counts.entry(rec.user_code.clone()).or_default();
            counts.0 += usize::from(early);
            counts.1 += 1;
            return error(
                "slow_down",
                "polling too fast; interval increased by 5 seconds",
            );
        }
        match rec.status {
            DeviceStatus::Pending => error(
                "authorization_pending",
                "the user has not yet completed the authorization",
            ),
            DeviceStatus::Denied => {
                rec.used = true;
                error("access_denied", "the user denied the authorization")
            }
            DeviceStatus::Approved => {
                rec.used = true;
                let resource = rec.resource.clone();
                let scopes = rec.scopes.clone();
                let grant = st.grants.len();
                st.grants.push(false);
                let refresh = self.config.issue_refresh_tokens;
                self.issue_bound(st, grant, &client.client_id, resource, scopes, refresh, jkt)
            }
        }
    }

    fn refresh_grant(
        &self,
        req: &Req<'_>,
        client: &RegisteredClient,
        jkt: Option<&str>,
    ) -> Response {
        let invalid_grant = |d: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", d);
        let Some(rt) = req.form.get("refresh_token") else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "missing refresh_token",
            );
        };
        let mut st = lock(&self.state);
        let st = &mut *st;
        let Some(rec) = st
            .tokens
            .get_mut(rt)
            .filter(|t| t.kind == TokenKind::Refresh)
        else {
            return invalid_grant("unknown refresh token");
        };
        if rec.client_id != client.client_id {
            return invalid_grant("refresh token was issued to another client");
        }
        // RFC 9449 §5.0: a DPoP-bound refresh token is useless without its key (checked before
        // reuse detection: a thief without the key cannot even revoke the grant).
        match (rec.jkt.clone(), jkt) {
            (Some(_), None) => {
                self.refuse_bound_refresh(st, req, DpopRejection::MissingProof);
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_dpop_proof",
                    "the refresh token is DPoP-bound: a DPoP proof is required",
                );
            }
            (Some(bound), Some(j)) if bound != j => {
                self.refuse_bound_refresh(st, req, DpopRejection::KeyMismatch);
                return invalid_grant("the DPoP proof's key is not the refresh token's key");
            }
            _ => {}
        }
        let Some(rec) = st.tokens.get_mut(rt) else {
            return invalid_grant("unknown refresh token");
        };
        let grant = rec.grant;
        if st.grants.get(grant).copied().unwrap_or(true) {
            return invalid_grant("refresh token revoked");
        }
        if rec.used {
            if let Some(flag) = st.grants.get_mut(grant) {
                *flag = true;
            }
            st.reuse_detections += 1;
            return invalid_grant("refresh token reuse detected; grant revoked");
        }
        match (&rec.resource, req.form.get("resource")) {
            (_, None) => {}
            (Some(a), Some(b)) if a == b => {}
            _ => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_target",
                    "resource must equal the originally granted resource",
                );
            }
        }
        let scopes = match req.form.get("scope") {
            None => rec.scopes.clone(),
            Some(s) => {
                let requested: Vec<String> = s
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                if let Some(bad) = requested.iter().find(|s| !rec.scopes.contains(s)) {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_scope",
                        &format!("scope {bad} exceeds the original grant"),
                    );
                }
                requested
            }
        };
        let resource = rec.resource.clone();
        let rotate = self.config.rotate_refresh_tokens;
        if rotate {
            rec.used = true;
        }
        self.issue_bound(st, grant, &client.client_id, resource, scopes, rotate, jkt)
    }

    fn issue(
        &self,
        st: &mut AsState,
        grant: usize,
        client_id: &str,
        resource: Option<String>,
        scopes: Vec<String>,
        with_refresh: bool,
    ) -> Response {
        self.issue_bound(st, grant, client_id, resource, scopes, with_refresh, None)
    }

    /// [`AsInner::issue`]; with `jkt`, DPoP-bound tokens (`token_type` `DPoP`) unless the
    /// [`Misbehavior::DpopBearerDowngrade`] is on.
    #[allow(clippy::too_many_arguments)]
    fn issue_bound(
        &self,
        st: &mut AsState,
        grant: usize,
        client_id: &str,
        resource: Option<String>,
        scopes: Vec<String>,
        with_refresh: bool,
        jkt: Option<&str>,
    ) -> Response {
        let jkt = jkt
            .filter(|_| st.misbehavior != Misbehavior::DpopBearerDowngrade)
            .map(str::to_owned);
        let ttl = self.config.access_token_ttl;
        let access = random_token("at_");
        st.tokens.insert(
            access.clone(),
            TokenRec {
                kind: TokenKind::Access,
                grant,
                client_id: client_id.to_string(),
                resource: resource.clone(),
                scopes: scopes.clone(),
                expires_at: Instant::now().checked_add(ttl),
                force_expired: false,
                used: false,
                jkt: jkt.clone(),
            },
        );
        st.issued.push(access.clone());
        let mut body = Map::new();
        body.insert("access_token".into(), json!(access));
        let token_type = if jkt.is_some() { "DPoP" } else { "Bearer" };
        body.insert("token_type".into(), json!(token_type));
        body.insert("expires_in".into(), json!(ttl.as_secs()));
        if with_refresh {
            let refresh = random_token("rt_");
            st.tokens.insert(
                refresh.clone(),
                TokenRec {
                    kind: TokenKind::Refresh,
                    grant,
                    client_id: client_id.to_string(),
                    resource,
                    scopes: scopes.clone(),
                    expires_at: None,
                    force_expired: false,
                    used: false,
                    jkt,
                },
            );
            st.issued.push(refresh.clone());
            body.insert("refresh_token".into(), json!(refresh));
        }
        if !scopes.is_empty() {
            body.insert("scope".into(), json!(scopes.join(" ")));
        }
        no_store(json_response(StatusCode::OK, &Value::Object(body)))
    }

    // ----- revocation ---------------------------------------------------------------

    fn revoke(&self, req: &Req<'_>) -> Response {
        if let Some(refused) = refuse_unless_form_post(req) {
            return refused;
        }
        let client = match self.authenticate(req) {
            Ok(c) => c,
            Err(r) => return *r,
        };
        let Some(token) = req.form.get("token") else {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "missing token");
        };
        let mut st = lock(&self.state);
        let st = &mut *st;
        if let Some(t) = st.tokens.get(token) {
            if t.client_id != client.client_id {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "token was issued to another client",
                );
            }
            if let Some(flag) = st.grants.get_mut(t.grant) {
                *flag = true;
            }
        }
        no_store(StatusCode::OK.into_response())
    }
}

/// A client ID metadata document URL we are willing to fetch: https, or http on loopback
/// (for tests); with a path, no fragment, no credentials, no dot segments.
fn cimd_url(client_id: &str) -> Option<url::Url> {
    let u = url::Url::parse(client_id).ok()?;
    let scheme_ok = match u.scheme() {
        "https" => true,
        "http" => is_loopback_host(&u),
        _ => false,
    };
    let raw_path = client_id
        .split_once("://")
        .map(|(_, rest)| rest)
        .and_then(|rest| rest.find('/').map(|i| &rest[i..]))
        .unwrap_or("");
    let dot_segment = raw_path
        .split(['/', '?'])
        .any(|seg| seg == "." || seg == "..");
    (scheme_ok
        && u.fragment().is_none()
        && u.username().is_empty()
        && u.password().is_none()
        && u.path() != "/"
        && !dot_segment)
        .then_some(u)
}

/// A 400 error page shown to the user agent instead of redirecting (invalid client or
/// redirect URI, RFC 6749 §4.1.2.1).
/// What a form-POST endpoint (device authorization, revocation) answers a request that is not
/// a POST, not `application/x-www-form-urlencoded`, or repeats a parameter; `None` when it is
/// well formed.
fn refuse_unless_form_post(req: &Req<'_>) -> Option<Response> {
    if *req.method != Method::POST {
        return Some(method_not_allowed("POST"));
    }
    if !is_form(req.headers) {
        return Some(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Content-Type must be application/x-www-form-urlencoded",
        ));
    }
    if let Some(d) = req.form.duplicates.first() {
        return Some(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("parameter {d} repeated"),
        ));
    }
    None
}

fn error_page(description: &str) -> Response {
    let html = format!(
        "<!doctype html><title>Authorization error</title><h1>invalid_request</h1><p>{}</p>",
        html_escape(description)
    );
    let mut resp = (StatusCode::BAD_REQUEST, html).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    no_store(resp)
}

/// A JSON body trickled over `duration` after the headers were sent.
fn slow_json(bytes: Vec<u8>, duration: Duration) -> Response {
    let steps = usize::try_from(duration.as_millis() / 100)
        .unwrap_or(usize::MAX)
        .clamp(1, bytes.len().max(1));
    let chunk = bytes.len().div_ceil(steps).max(1);
    let chunks: Vec<Bytes> = bytes.chunks(chunk).map(Bytes::copy_from_slice).collect();
    let interval = duration / u32::try_from(chunks.len().max(1)).unwrap_or(u32::MAX);
    let stream = futures::stream::unfold(chunks.into_iter(), move |mut it| async move {
        let next = it.next()?;
        tokio::time::sleep(interval).await;
        Some((Ok::<_, Infallible>(next), it))
    });
    let mut resp = Body::from_stream(stream).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
