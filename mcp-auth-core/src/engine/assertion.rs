//! Assertion grants: tokens for an MCP server without a browser, a registration or a refresh
//! token, from an assertion the client already holds.
//!
//! - **Identity assertion** (enterprise-managed authorization, SEP-990): the user's ID token
//!   from the enterprise identity provider (IdP) is exchanged there (RFC 8693 token exchange)
//!   for an Identity Assertion JWT Authorization Grant (ID-JAG) naming the MCP server's
//!   authorization server and the MCP server; the ID-JAG is then presented to that
//!   authorization server as an RFC 7523 JWT bearer grant, with the client's own credentials
//!   (`client_secret_basic`). Configure it with [`ClientConfig::with_identity_assertion`].
//! - **JWT bearer** (workload identity federation, SEP-1933): a workload's JWT (issued by its
//!   platform) is presented as an RFC 7523 JWT bearer grant. Configure it with
//!   [`ClientConfig::with_jwt_bearer`].
//!
//! Neither mode registers (no Dynamic Client Registration, no Client ID Metadata Document),
//! uses PKCE or the [`Authorizer`](super::Authorizer), or receives a refresh token: when the
//! access token expires, [`McpAuth::access_token`] (and [`McpAuth::handle_unauthorized`]) run
//! the grant again — both legs for an identity assertion, since the ID token usually outlives
//! the short ID-JAG.
//!
//! **No retry, no fallback.** Each run sends exactly one request per leg. A failure is returned
//! as a typed error ([`AuthError::OAuth`] from the authorization server,
//! [`AuthError::TokenExchange`] from the IdP, [`AuthError::InvalidResponse`] for an ID-JAG that
//! fails validation, [`AuthError::GrantNotSupported`] when the authorization server does not
//! list the JWT bearer grant); no other grant is tried. An assertion (or subject token) refused
//! with `invalid_grant` is remembered — by its SHA-256 digest — and never presented to the same
//! endpoint again: a later run fails at once with the same error, without a request, until a
//! fresh assertion comes from an [`AssertionProvider`].
//!
//! **SEP-2352.** The credentials of both modes belong to one authorization server — the
//! client's `client_id`/secret, or a workload JWT whose audience is that server — so they are
//! treated exactly like pre-registered credentials: a declared issuer is checked before
//! anything is sent, and the client is recorded as [`RegistrationKind::PreRegistered`] at the
//! server that issued the tokens, so a later move of the MCP server to another authorization
//! server is refused with [`AuthError::AuthorizationServerChanged`] naming both issuers. Neither
//! specification provides for following such a move (the ID-JAG's audience and the workload
//! JWT's audience are fixed to one authorization server, and the client credentials of the
//! second leg are issued by it).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use sha2::Digest as _;
use tracing::{Instrument, debug, info_span};
use url::Url;

use super::authorization::select_scopes;
use super::discovery::{Challenge, ResourceMetadata, ServerMetadata};
use super::http::redact;
use super::tokens::{is_b64token, parse_token_response};
use super::{AuthError, McpAuth, refresh};
use crate::error::BoxError;
use crate::ids::{IssuerId, ResourceUri};
use crate::model::{ClientRegistration, RegistrationKind};
use crate::store::Expect;
use crate::time::Timestamp;

#[cfg(doc)]
use super::ClientConfig;

/// The RFC 7523 JWT bearer authorization grant.
pub(crate) const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The RFC 8693 token exchange grant.
const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The token type of an Identity Assertion JWT Authorization Grant.
const ID_JAG_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id-jag";
/// The RFC 8693 token type of an OpenID Connect ID token (the default subject token type).
pub(crate) const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
/// The JOSE `typ` of an ID-JAG.
const ID_JAG_TYP: &str = "oauth-id-jag+jwt";
/// Longest assertion accepted from the IdP.
const MAX_ASSERTION_LEN: usize = 16 * 1024;

/// What an [`AssertionProvider`] is asked for: the grant request the assertion will be sent
/// with.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AssertionRequest {
    /// The authorization server the grant goes to (its metadata `issuer`), which is the
    /// audience an RFC 7523 assertion names.
    pub issuer: IssuerId,
    /// Its token endpoint.
    pub token_endpoint: Url,
    /// The MCP server the token is for (the `resource` of its protected resource metadata).
    pub resource: String,
}

/// Supplies a fresh assertion for each grant request: a workload token from the platform
/// (a Kubernetes projected service account token, a cloud metadata server, a CI job's OIDC
/// token), or the user's current ID token from the single sign-on session.
///
/// Called once per grant run, only when a new access token is needed. Errors are reported as
/// [`AuthError::AssertionUnavailable`] with the error's message, so the message must not
/// contain the assertion.
#[async_trait]
pub trait AssertionProvider: Send + Sync + fmt::Debug {
    /// An assertion for `request`.
    async fn assertion(&self, request: &AssertionRequest) -> Result<SecretString, BoxError>;
}

type BoxedAssertionFn = dyn Fn(AssertionRequest) -> Pin<Box<dyn Future<Output = Result<SecretString, BoxError>> + Send>>
    + Send
    + Sync;

/// An [`AssertionProvider`] from an async closure ([`AssertionSource::from_fn`]).
struct FnProvider(Box<BoxedAssertionFn>);

impl fmt::Debug for FnProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnProvider")
    }
}

#[async_trait]
impl AssertionProvider for FnProvider {
    async fn assertion(&self, request: &AssertionRequest) -> Result<SecretString, BoxError> {
        (self.0)(request.clone()).await
    }
}

/// Where an assertion comes from: a fixed value, or an [`AssertionProvider`] asked each time.
///
/// A fixed value is presented as long as it is accepted; once an authorization server (or the
/// IdP) refuses it with `invalid_grant`, the engine does not present it again. Use a provider
/// when the assertion is short-lived (workload tokens usually live minutes).
#[derive(Clone)]
#[non_exhaustive]
pub enum AssertionSource {
    /// This assertion, every time.
    Static(SecretString),
    /// A fresh assertion for each grant request.
    Provider(Arc<dyn AssertionProvider>),
}

impl AssertionSource {
    /// A provider from an async closure.
    ///
    /// ```
    /// use mcp_auth_core::{AssertionSource, SecretString};
    ///
    /// let source = AssertionSource::from_fn(|request| async move {
    ///     // Fetch a workload token whose audience is `request.issuer`, e.g. from the platform.
    ///     let _audience = request.issuer;
    ///     Ok(SecretString::from("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ3In0.c2ln"))
    /// });
    /// # let _ = source;
    /// ```
    pub fn from_fn<F, Fut>(f: F) -> Self
    where
        F: Fn(AssertionRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<SecretString, BoxError>> + Send + 'static,
    {
        Self::Provider(Arc::new(FnProvider(Box::new(move |request| {
            Box::pin(f(request))
        }))))
    }

    async fn get(&self, request: &AssertionRequest) -> Result<SecretString, AuthError> {
        let value =
            match self {
                Self::Static(value) => value.clone(),
                Self::Provider(provider) => provider.assertion(request).await.map_err(|e| {
                    AuthError::AssertionUnavailable {
                        reason: refresh::printable(&e.to_string()),
                    }
                })?,
            };
        if value.expose_secret().trim().is_empty() {
            return Err(AuthError::AssertionUnavailable {
                reason: "the assertion is empty".to_owned(),
            });
        }
        Ok(value)
    }
}

impl From<SecretString> for AssertionSource {
    fn from(value: SecretString) -> Self {
        Self::Static(value)
    }
}

impl fmt::Debug for AssertionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Static(_) => f.write_str("Static([REDACTED])"),
            Self::Provider(p) => f.debug_tuple("Provider").field(p).finish(),
        }
    }
}

/// Credentials refused with `invalid_grant`, by SHA-256 of endpoint and credential, with the
/// error the endpoint gave: they are never presented there again.
#[derive(Default)]
struct Rejections(Mutex<HashMap<[u8; 32], Refusal>>);

/// The OAuth `error` and `error_description` a credential was refused with.
type Refusal = (String, Option<String>);

impl Rejections {
    fn digest(endpoint: &Url, credential: &SecretString) -> [u8; 32] {
        let mut h = sha2::Sha256::new();
        h.update(endpoint.as_str().as_bytes());
        h.update([0]);
        h.update(credential.expose_secret().as_bytes());
        h.finalize().into()
    }

    fn get(&self, endpoint: &Url, credential: &SecretString) -> Option<Refusal> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&Self::digest(endpoint, credential))
            .cloned()
    }

    fn remember(&self, endpoint: &Url, credential: &SecretString, error: &AuthError) {
        let (code, description) = match error {
            AuthError::OAuth {
                error, description, ..
            }
            | AuthError::TokenExchange {
                error, description, ..
            } if error == "invalid_grant" => (error.clone(), description.clone()),
            _ => return,
        };
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(Self::digest(endpoint, credential), (code, description));
    }
}

impl fmt::Debug for Rejections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.lock().unwrap_or_else(PoisonError::into_inner).len();
        write!(f, "{n} rejected")
    }
}

fn already_rejected(description: Option<String>) -> Option<String> {
    let note = "this credential was already refused and is not presented again";
    Some(match description {
        Some(d) => format!("{d}; {note}"),
        None => note.to_owned(),
    })
}

/// Enterprise-managed authorization (SEP-990): the user's identity assertion (an ID token from
/// the enterprise IdP) is exchanged at the IdP for an ID-JAG (RFC 8693), which is presented to
/// the MCP server's authorization server as a JWT bearer grant (RFC 7523) with this client's
/// credentials (`client_secret_basic`).
///
/// The token exchange sends `grant_type=urn:ietf:params:oauth:grant-type:token-exchange`,
/// `requested_token_type=urn:ietf:params:oauth:token-type:id-jag`, the subject token and its
/// type, `audience` = the authorization server's issuer, `resource` = the MCP server, `scope`
/// when scopes were selected, and the IdP `client_id` (in the body for a public IdP client, by
/// HTTP Basic with [`IdentityAssertionGrant::with_idp_client`]'s secret). The answer must be an
/// ID-JAG (`issued_token_type` id-jag, `token_type` `N_A`, a compact JWT of `typ`
/// `oauth-id-jag+jwt` whose `aud` is the issuer, `client_id` this client, `resource` — if
/// present — the MCP server, and whose `exp` is in the future; `iss` too when
/// [`IdentityAssertionGrant::with_idp_issuer`] is set). Its signature is for the authorization
/// server to verify, not the client.
///
/// ```
/// use mcp_auth_core::{ClientConfig, IdentityAssertionGrant, IssuerId, SecretString};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let id_token_from_sso = String::from("eyJ...");
/// let grant = IdentityAssertionGrant::new(
///     "https://idp.example.com/oauth2/token",
///     SecretString::from(id_token_from_sso),
///     "mcp-client-at-the-as",
///     SecretString::from("the-client-secret"),
/// )?
/// .with_idp_client("mcp-client-at-the-idp", None)
/// .with_issuer(IssuerId::new("https://auth.mcp.example.com")?);
/// let config = ClientConfig::default().with_identity_assertion(grant);
/// # let _ = config;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct IdentityAssertionGrant {
    /// The enterprise IdP's token endpoint (RFC 8693 token exchange).
    pub idp_token_endpoint: Url,
    /// This client's `client_id` at the IdP.
    pub idp_client_id: Option<String>,
    /// This client's secret at the IdP (`client_secret_basic`), for a confidential IdP client.
    pub idp_client_secret: Option<SecretString>,
    /// The IdP's issuer: when set, the ID-JAG's `iss` must equal it.
    pub idp_issuer: Option<String>,
    /// The identity assertion: the user's ID token (or another token of
    /// [`IdentityAssertionGrant::subject_token_type`]).
    pub subject_token: AssertionSource,
    /// Its RFC 8693 token type (default `urn:ietf:params:oauth:token-type:id_token`).
    pub subject_token_type: String,
    /// This client's `client_id` at the MCP server's authorization server.
    pub client_id: String,
    /// This client's secret there (`client_secret_basic`).
    pub client_secret: SecretString,
    /// The authorization server these credentials belong to. Declare it: a server that names
    /// another one is then refused before anything is sent.
    pub issuer: Option<IssuerId>,
    rejected: Arc<Rejections>,
}

impl IdentityAssertionGrant {
    /// The grant with the IdP's token endpoint, the identity assertion (an ID token) and this
    /// client's credentials at the MCP server's authorization server. Fails when
    /// `idp_token_endpoint` is not an absolute URL.
    ///
    /// # Errors
    ///
    /// [`AuthError::Config`] when `idp_token_endpoint` is not an absolute URL.
    pub fn new(
        idp_token_endpoint: &str,
        subject_token: impl Into<AssertionSource>,
        client_id: impl Into<String>,
        client_secret: SecretString,
    ) -> Result<Self, AuthError> {
        let idp_token_endpoint = Url::parse(idp_token_endpoint).map_err(|_| {
            AuthError::Config("the IdP token endpoint is not an absolute URL".to_owned())
        })?;
        Ok(Self {
            idp_token_endpoint,
            idp_client_id: None,
            idp_client_secret: None,
            idp_issuer: None,
            subject_token: subject_token.into(),
            subject_token_type: ID_TOKEN_TYPE.to_owned(),
            client_id: client_id.into(),
            client_secret,
            issuer: None,
            rejected: Arc::default(),
        })
    }

    /// This client's identity at the IdP: its `client_id` and, for a confidential client, its
    /// secret (sent with HTTP Basic; without one the `client_id` goes in the body).
    pub fn with_idp_client(
        mut self,
        client_id: impl Into<String>,
        client_secret: Option<SecretString>,
    ) -> Self {
        self.idp_client_id = Some(client_id.into());
        self.idp_client_secret = client_secret;
        self
    }

    /// Declares the authorization server the client credentials belong to.
    pub fn with_issuer(mut self, issuer: IssuerId) -> Self {
        self.issuer = Some(issuer);
        self
    }

    /// Requires the ID-JAG's `iss` to be this IdP issuer.
    pub fn with_idp_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.idp_issuer = Some(issuer.into());
        self
    }

    /// The subject token's RFC 8693 type, e.g. `urn:ietf:params:oauth:token-type:saml2`.
    pub fn with_subject_token_type(mut self, token_type: impl Into<String>) -> Self {
        self.subject_token_type = token_type.into();
        self
    }
}

impl fmt::Debug for IdentityAssertionGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityAssertionGrant")
            .field("idp_token_endpoint", &redact(&self.idp_token_endpoint))
            .field("idp_client_id", &self.idp_client_id)
            .field("idp_client_secret", &self.idp_client_secret)
            .field("idp_issuer", &self.idp_issuer)
            .field("subject_token", &self.subject_token)
            .field("subject_token_type", &self.subject_token_type)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("issuer", &self.issuer)
            .field("rejected", &self.rejected)
            .finish()
    }
}

/// Workload identity federation (SEP-1933): a JWT the workload's platform issued is presented
/// to the MCP server's authorization server as an RFC 7523 JWT bearer grant
/// (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`, `assertion`, `resource`, `scope`
/// when scopes were selected, and `client_id` when set). No client authentication, no
/// registration. The engine does not read or check the assertion: its audience and lifetime
/// are for the authorization server to judge.
///
/// ```
/// use mcp_auth_core::{AssertionSource, ClientConfig, IssuerId, JwtBearerGrant, SecretString};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // A fixed token…
/// # let workload_jwt = String::from("eyJ...");
/// let fixed = JwtBearerGrant::new(SecretString::from(workload_jwt))
///     .with_client_id("my-workload")
///     .with_issuer(IssuerId::new("https://auth.mcp.example.com")?);
/// // …or a fresh one for each grant request (workload tokens are short-lived).
/// let fresh = JwtBearerGrant::new(AssertionSource::from_fn(|_request| async move {
///     let token = std::fs::read_to_string("/var/run/secrets/tokens/mcp")?;
///     Ok(SecretString::from(token.trim().to_owned()))
/// }))
/// .with_issuer(IssuerId::new("https://auth.mcp.example.com")?);
/// let config = ClientConfig::default().with_jwt_bearer(fixed);
/// # let _ = (config, fresh);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct JwtBearerGrant {
    /// The workload's JWT.
    pub assertion: AssertionSource,
    /// A `client_id` to send with the grant (public-client style), if the authorization server
    /// wants one.
    pub client_id: Option<String>,
    /// The authorization server the assertion is meant for. Declare it: a server that names
    /// another one is then refused before the assertion is sent anywhere.
    pub issuer: Option<IssuerId>,
    rejected: Arc<Rejections>,
}

impl JwtBearerGrant {
    /// The grant presenting `assertion`.
    pub fn new(assertion: impl Into<AssertionSource>) -> Self {
        Self {
            assertion: assertion.into(),
            client_id: None,
            issuer: None,
            rejected: Arc::default(),
        }
    }

    /// Sends this `client_id` with the grant.
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// Declares the authorization server the assertion is meant for.
    pub fn with_issuer(mut self, issuer: IssuerId) -> Self {
        self.issuer = Some(issuer);
        self
    }
}

impl fmt::Debug for JwtBearerGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtBearerGrant")
            .field("assertion", &self.assertion)
            .field("client_id", &self.client_id)
            .field("issuer", &self.issuer)
            .field("rejected", &self.rejected)
            .finish()
    }
}

/// The decoded parts of a compact JWS that matter here (no signature check).
fn decode_jwt(token: &str) -> Option<(Map<String, Value>, Map<String, Value>)> {
    let mut parts = token.split('.');
    let (header, claims, signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || signature.is_empty() {
        return None;
    }
    let decode = |part: &str| -> Option<Map<String, Value>> {
        let bytes = data_encoding::BASE64URL_NOPAD
            .decode(part.as_bytes())
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    };
    Some((decode(header)?, decode(claims)?))
}

/// A claim that is a string, or an array of strings (`aud`), contains `want`.
fn claim_names(value: Option<&Value>, want: &str) -> bool {
    match value {
        Some(Value::String(s)) => s == want,
        Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(want)),
        _ => false,
    }
}

/// [`McpAuthBuilder::build`](super::McpAuthBuilder::build)'s checks of the assertion modes: one
/// grant mode at most, a declared issuer for the credentials (unless
/// `allow_undeclared_secret_issuer`), and an IdP token endpoint the HTTP policy allows.
pub(super) fn check_config(
    config: &super::ClientConfig,
    http: &super::Http,
) -> Result<(), AuthError> {
    let modes = [
        config.client_credentials.is_some(),
        config.identity_assertion.is_some(),
        config.jwt_bearer.is_some(),
    ];
    if modes.iter().filter(|m| **m).count() > 1 {
        return Err(AuthError::Config(
            "configure at most one of client credentials, identity assertion and JWT bearer"
                .to_owned(),
        ));
    }
    if let Some(grant) = &config.identity_assertion {
        if grant.client_id.is_empty() {
            return Err(AuthError::Config(
                "the identity assertion grant needs the client_id at the authorization server"
                    .to_owned(),
            ));
        }
        if grant.issuer.is_none() && !config.allow_undeclared_secret_issuer {
            return Err(AuthError::Config(
                "identity assertion credentials need the issuer they belong to (use \
                 IdentityAssertionGrant::with_issuer)"
                    .to_owned(),
            ));
        }
        http.check_url(&grant.idp_token_endpoint)
            .map_err(|e| AuthError::Config(format!("IdP token endpoint: {e}")))?;
    }
    if let Some(grant) = &config.jwt_bearer
        && grant.issuer.is_none()
        && !config.allow_undeclared_secret_issuer
    {
        return Err(AuthError::Config(
            "a JWT bearer assertion needs the issuer it is meant for (use \
             JwtBearerGrant::with_issuer)"
                .to_owned(),
        ));
    }
    Ok(())
}

impl McpAuth {
    /// The issuer declared by the configured assertion grant, if any (checked with the
    /// pre-registered one before anything is sent to a discovered authorization server).
    pub(super) fn declared_assertion_issuer(&self) -> Option<&IssuerId> {
        if let Some(grant) = &self.config.identity_assertion {
            return grant.issuer.as_ref();
        }
        self.config
            .jwt_bearer
            .as_ref()
            .and_then(|g| g.issuer.as_ref())
    }

    /// The SEP-2352 checks shared by both modes, then the registration record: pre-registered
    /// at this issuer, so a later move to another authorization server is refused.
    async fn assertion_registration(
        &self,
        meta: &ServerMetadata,
        declared: Option<&IssuerId>,
        client_id: &str,
    ) -> Result<ClientRegistration, AuthError> {
        if let Some(declared) = declared
            && declared != &meta.issuer
        {
            return Err(AuthError::AuthorizationServerChanged {
                from: declared.clone(),
                to: meta.issuer.clone(),
            });
        }
        // No fallback to another grant: an AS that says it does not take JWT bearer grants is
        // not sent one (an AS that says nothing is tried).
        if meta.raw.contains_key("grant_types_supported") && !meta.supports_grant(JWT_BEARER_GRANT)
        {
            return Err(AuthError::GrantNotSupported {
                issuer: meta.issuer.clone(),
                grant_type: JWT_BEARER_GRANT.to_owned(),
            });
        }
        // Undeclared credentials bind to the first authorization server they were used with.
        let lock = self.registration_locks.get(&meta.issuer);
        let _guard = lock.lock().await;
        for other in self.store.list_registrations().await.unwrap_or_default() {
            if other != meta.issuer
                && let Some(r) = self.store.get_registration(&other).await?
                && r.value.kind == RegistrationKind::PreRegistered
                && r.value.client_id == client_id
                && r.value.grant_types.iter().any(|g| g == JWT_BEARER_GRANT)
            {
                return Err(AuthError::AuthorizationServerChanged {
                    from: other,
                    to: meta.issuer.clone(),
                });
            }
        }
        let mut registration = ClientRegistration::new(
            meta.issuer.clone(),
            client_id,
            RegistrationKind::PreRegistered,
        );
        registration.grant_types = vec![JWT_BEARER_GRANT.to_owned()];
        Ok(registration)
    }

    /// SEP-990: token exchange at the IdP for an ID-JAG, then the JWT bearer grant at the
    /// authorization server with `client_secret_basic`.
    pub(super) async fn identity_assertion_grant(
        &self,
        resource: &ResourceUri,
        prm: &ResourceMetadata,
        meta: &ServerMetadata,
        grant: &IdentityAssertionGrant,
        challenge: Option<&Challenge>,
        explicit_scopes: Option<Vec<String>>,
    ) -> Result<SecretString, AuthError> {
        let mut registration = self
            .assertion_registration(meta, grant.issuer.as_ref(), &grant.client_id)
            .await?;
        registration.client_secret = Some(grant.client_secret.clone());
        registration.token_endpoint_auth_method = "client_secret_basic".to_owned();
        let scopes = grant_scopes(prm, meta, challenge, explicit_scopes);
        let request = AssertionRequest {
            issuer: meta.issuer.clone(),
            token_endpoint: meta.token_endpoint.clone(),
            resource: prm.resource_raw.clone(),
        };
        let subject_token = grant.subject_token.get(&request).await?;
        let id_jag = self
            .exchange_for_id_jag(prm, meta, grant, &subject_token, &scopes)
            .instrument(info_span!("token_exchange", idp = %redact(&grant.idp_token_endpoint), issuer = %meta.issuer))
            .await?;

        self.store
            .put_registration(&registration, Expect::Any)
            .await?;
        let mut form: Vec<(&'static str, String)> = vec![
            ("grant_type", JWT_BEARER_GRANT.to_owned()),
            ("assertion", id_jag.expose_secret().to_owned()),
            ("resource", prm.resource_raw.clone()),
        ];
        if !scopes.is_empty() {
            form.push(("scope", scopes.join(" ")));
        }
        let body = self
            .token_request(meta, &registration, &mut form)
            .instrument(info_span!("jwt_bearer", issuer = %meta.issuer))
            .await?;
        let tokens = parse_token_response(meta, &body, None, &scopes)?;
        self.bind(resource, prm, meta, &tokens).await?;
        debug!(issuer = %meta.issuer, "identity assertion grant succeeded");
        Ok(tokens.access_token)
    }

    /// Leg 1 of SEP-990: the RFC 8693 token exchange at the IdP, and the checks of the ID-JAG
    /// it answers.
    async fn exchange_for_id_jag(
        &self,
        prm: &ResourceMetadata,
        meta: &ServerMetadata,
        grant: &IdentityAssertionGrant,
        subject_token: &SecretString,
        scopes: &[String],
    ) -> Result<SecretString, AuthError> {
        let endpoint = &grant.idp_token_endpoint;
        if let Some((error, description)) = grant.rejected.get(endpoint, subject_token) {
            return Err(AuthError::TokenExchange {
                token_endpoint: redact(endpoint),
                error,
                description: already_rejected(description),
            });
        }
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", TOKEN_EXCHANGE_GRANT),
            ("requested_token_type", ID_JAG_TOKEN_TYPE),
            ("subject_token", subject_token.expose_secret()),
            ("subject_token_type", &grant.subject_token_type),
            // The raw strings: the ID-JAG's `aud` and `resource` must equal them exactly.
            ("audience", meta.issuer.as_str()),
            ("resource", &prm.resource_raw),
        ];
        let scope = scopes.join(" ");
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        let idp_secret = grant
            .idp_client_secret
            .as_ref()
            .map(|s| s.expose_secret().to_owned());
        let basic = match (&grant.idp_client_id, &idp_secret) {
            (Some(id), Some(secret)) => Some((id.as_str(), secret.as_str())),
            (Some(id), None) => {
                form.push(("client_id", id));
                None
            }
            (None, _) => None,
        };
        let fetched = self.http.post_form(endpoint, &form, basic).await?;
        if fetched.status != 200 {
            let parsed: Option<Map<String, Value>> = serde_json::from_slice(&fetched.body).ok();
            let field = |k: &str| {
                parsed
                    .as_ref()
                    .and_then(|m| m.get(k))
                    .and_then(Value::as_str)
                    .map(refresh::printable)
            };
            let error = AuthError::TokenExchange {
                token_endpoint: redact(endpoint),
                error: field("error").unwrap_or_else(|| format!("HTTP {}", fetched.status)),
                description: field("error_description"),
            };
            grant.rejected.remember(endpoint, subject_token, &error);
            return Err(error);
        }
        let body = fetched.json_object()?;
        validate_id_jag(&body, endpoint, meta, prm, grant)
    }

    /// RFC 7523 with the workload's JWT: one request, no client authentication.
    pub(super) async fn jwt_bearer_grant(
        &self,
        resource: &ResourceUri,
        prm: &ResourceMetadata,
        meta: &ServerMetadata,
        grant: &JwtBearerGrant,
        challenge: Option<&Challenge>,
        explicit_scopes: Option<Vec<String>>,
    ) -> Result<SecretString, AuthError> {
        // Without a client_id the record has an empty one, and none is sent.
        let client_id = grant.client_id.clone().unwrap_or_default();
        let registration = self
            .assertion_registration(meta, grant.issuer.as_ref(), &client_id)
            .await?;
        let scopes = grant_scopes(prm, meta, challenge, explicit_scopes);
        let request = AssertionRequest {
            issuer: meta.issuer.clone(),
            token_endpoint: meta.token_endpoint.clone(),
            resource: prm.resource_raw.clone(),
        };
        let assertion = grant.assertion.get(&request).await?;
        if let Some((error, description)) = grant.rejected.get(&meta.token_endpoint, &assertion) {
            return Err(AuthError::OAuth {
                issuer: meta.issuer.clone(),
                endpoint: "token",
                error,
                description: already_rejected(description),
            });
        }
        self.store
            .put_registration(&registration, Expect::Any)
            .await?;
        let mut form: Vec<(&'static str, String)> = vec![
            ("grant_type", JWT_BEARER_GRANT.to_owned()),
            ("assertion", assertion.expose_secret().to_owned()),
            ("resource", prm.resource_raw.clone()),
        ];
        if !scopes.is_empty() {
            form.push(("scope", scopes.join(" ")));
        }
        let body = match self
            .token_request(meta, &registration, &mut form)
            .instrument(info_span!("jwt_bearer", issuer = %meta.issuer))
            .await
        {
            Ok(body) => body,
            Err(e) => {
                grant
                    .rejected
                    .remember(&meta.token_endpoint, &assertion, &e);
                return Err(e);
            }
        };
        let tokens = parse_token_response(meta, &body, None, &scopes)?;
        self.bind(resource, prm, meta, &tokens).await?;
        debug!(issuer = %meta.issuer, "JWT bearer grant succeeded");
        Ok(tokens.access_token)
    }
}

/// The scopes to ask for: as for an authorization (R16), without `offline_access` (these grants
/// issue no refresh token).
fn grant_scopes(
    prm: &ResourceMetadata,
    meta: &ServerMetadata,
    challenge: Option<&Challenge>,
    explicit: Option<Vec<String>>,
) -> Vec<String> {
    select_scopes(prm, meta, challenge, explicit)
        .into_iter()
        .filter(|s| s != "offline_access")
        .collect()
}

/// The checks of an RFC 8693 response carrying an ID-JAG (SEP-990). The signature is the
/// authorization server's to verify.
fn validate_id_jag(
    body: &Map<String, Value>,
    endpoint: &Url,
    meta: &ServerMetadata,
    prm: &ResourceMetadata,
    grant: &IdentityAssertionGrant,
) -> Result<SecretString, AuthError> {
    let invalid = |reason: String| AuthError::InvalidResponse {
        url: redact(endpoint),
        reason,
    };
    let issued_type = body.get("issued_token_type").and_then(Value::as_str);
    if !issued_type.is_some_and(|t| t.eq_ignore_ascii_case(ID_JAG_TOKEN_TYPE)) {
        return Err(invalid(format!(
            "token exchange answered issued_token_type {:?}, not {ID_JAG_TOKEN_TYPE}",
            issued_type.map(refresh::printable)
        )));
    }
    let token_type = body.get("token_type").and_then(Value::as_str);
    if !token_type.is_some_and(|t| t.eq_ignore_ascii_case("N_A")) {
        return Err(invalid(format!(
            "token exchange answered token_type {:?}, not N_A (an ID-JAG is not an access token)",
            token_type.map(refresh::printable)
        )));
    }
    let jag = body
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("token exchange response has no access_token".to_owned()))?;
    if jag.len() > MAX_ASSERTION_LEN || !is_b64token(jag) {
        return Err(invalid(
            "the ID-JAG has characters outside b64token or is longer than 16 KiB".to_owned(),
        ));
    }
    let (header, claims) =
        decode_jwt(jag).ok_or_else(|| invalid("the ID-JAG is not a compact JWT".to_owned()))?;
    let typ = header.get("typ").and_then(Value::as_str);
    if !typ.is_some_and(|t| t.eq_ignore_ascii_case(ID_JAG_TYP)) {
        return Err(invalid(format!(
            "the ID-JAG's typ is {:?}, not {ID_JAG_TYP}",
            typ.map(refresh::printable)
        )));
    }
    if header
        .get("alg")
        .and_then(Value::as_str)
        .is_none_or(|a| a.eq_ignore_ascii_case("none"))
    {
        return Err(invalid("the ID-JAG is not signed".to_owned()));
    }
    if !claim_names(claims.get("aud"), meta.issuer.as_str()) {
        return Err(invalid(format!(
            "the ID-JAG's aud does not name the authorization server {}",
            meta.issuer
        )));
    }
    if claims.get("client_id").and_then(Value::as_str) != Some(grant.client_id.as_str()) {
        return Err(invalid(format!(
            "the ID-JAG's client_id is not this client's ({})",
            refresh::printable(&grant.client_id)
        )));
    }
    if let Some(r) = claims.get("resource")
        && !claim_names(Some(r), &prm.resource_raw)
    {
        return Err(invalid(format!(
            "the ID-JAG's resource does not name the MCP server {}",
            prm.resource_raw
        )));
    }
    match claims.get("exp").and_then(Value::as_f64) {
        Some(exp) if exp > Timestamp::now().unix_seconds() as f64 => {}
        Some(_) => return Err(invalid("the ID-JAG has expired".to_owned())),
        None => return Err(invalid("the ID-JAG has no exp".to_owned())),
    }
    if let Some(idp) = &grant.idp_issuer
        && claims.get("iss").and_then(Value::as_str) != Some(idp.as_str())
    {
        return Err(invalid(format!(
            "the ID-JAG's iss is not the identity provider {}",
            refresh::printable(idp)
        )));
    }
    Ok(SecretString::from(jag.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(header: Value, claims: Value) -> String {
        let enc = |v: &Value| data_encoding::BASE64URL_NOPAD.encode(v.to_string().as_bytes());
        format!("{}.{}.c2ln", enc(&header), enc(&claims))
    }

    #[test]
    fn decodes_compact_jwts_only() {
        let t = jwt(
            serde_json::json!({"alg": "ES256", "typ": ID_JAG_TYP}),
            serde_json::json!({"aud": ["a", "b"]}),
        );
        let (h, c) = decode_jwt(&t).unwrap();
        assert_eq!(h["typ"], ID_JAG_TYP);
        assert!(claim_names(c.get("aud"), "b"));
        assert!(!claim_names(c.get("aud"), "c"));
        assert!(decode_jwt("a.b").is_none());
        assert!(decode_jwt(&format!("{t}.x")).is_none());
        let unsigned = t.rsplit_once('.').unwrap().0.to_owned() + ".";
        assert!(decode_jwt(&unsigned).is_none());
    }

    #[test]
    fn rejections_remember_only_invalid_grant() {
        let r = Rejections::default();
        let url = Url::parse("https://as.example/token").unwrap();
        let s = SecretString::from("assertion");
        let issuer = IssuerId::new("https://as.example").unwrap();
        let other = AuthError::OAuth {
            issuer: issuer.clone(),
            endpoint: "token",
            error: "server_error".into(),
            description: None,
        };
        r.remember(&url, &s, &other);
        assert!(r.get(&url, &s).is_none());
        let bad = AuthError::OAuth {
            issuer,
            endpoint: "token",
            error: "invalid_grant".into(),
            description: Some("expired".into()),
        };
        r.remember(&url, &s, &bad);
        assert_eq!(
            r.get(&url, &s),
            Some(("invalid_grant".into(), Some("expired".into())))
        );
        let elsewhere = Url::parse("https://other.example/token").unwrap();
        assert!(r.get(&elsewhere, &s).is_none());
        assert!(!format!("{r:?}").contains("assertion"));
    }
}
