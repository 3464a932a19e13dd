//! Who the client is: [`ClientConfig`] and the credentials it may carry.

use std::fmt;
use std::time::Duration;

use secrecy::SecretString;

use super::{DpopMode, IdentityAssertionGrant, JwtBearerGrant};
use crate::ids::IssuerId;

#[cfg(doc)]
use super::{AccessCredential, AssertionProvider, McpAuth, McpAuthBuilder};

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
