//! The engine's error type.

use crate::error::{BoxError, StoreError};
use crate::ids::IssuerId;

/// What went wrong while authorizing. Variants are meanings a caller can act on; messages never
/// contain a token, secret, code or verifier.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The MCP server moved to another authorization server, and the client's credentials are
    /// pre-registered with the old one (SEP-2352). Nothing was sent to the new server. Register
    /// the client with `to` and configure those credentials (with `issuer = to`).
    #[error(
        "the MCP server now uses authorization server {to}, but this client's pre-registered credentials belong to {from}; register the client with {to} and configure its credentials"
    )]
    AuthorizationServerChanged {
        /// The AS the credentials belong to.
        from: IssuerId,
        /// The AS the MCP server names now.
        to: IssuerId,
    },
    /// An issuer did not match exactly: metadata `issuer` (RFC 8414 §3.3) or the `iss` of an
    /// authorization response (RFC 9207). The data was discarded.
    #[error("issuer mismatch in {context}: expected {expected:?}, got {found:?}")]
    IssuerMismatch {
        /// Where (`"authorization server metadata"`, `"authorization response"`).
        context: &'static str,
        /// The issuer expected.
        expected: String,
        /// What was received (`None`: missing).
        found: Option<String>,
    },
    /// Protected resource metadata is for another resource (RFC 9728 §3.3).
    #[error("protected resource metadata names resource {found:?}, not {expected}")]
    ResourceMismatch {
        /// The MCP server URL used.
        expected: String,
        /// The PRM `resource`.
        found: String,
    },
    /// The authorization server does not advertise PKCE `S256`; the MCP spec forbids
    /// proceeding.
    #[error(
        "authorization server {issuer} does not advertise PKCE S256 support; refusing to authorize"
    )]
    PkceNotSupported {
        /// The AS.
        issuer: IssuerId,
    },
    /// The authorization response's `state` matched no flow in progress (or it expired or was
    /// used already).
    #[error("authorization response state does not match a pending authorization; start again")]
    StateMismatch,
    /// The AS refused or failed the authorization (`error` in the redirect).
    #[error("authorization failed: {error}{}", .description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    AuthorizationDenied {
        /// OAuth `error` code.
        error: String,
        /// `error_description`, if any.
        description: Option<String>,
    },
    /// The AS answered an endpoint with an OAuth error.
    #[error("{endpoint} endpoint of {issuer} returned {error}{}", .description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    OAuth {
        /// The AS.
        issuer: IssuerId,
        /// `token`, `registration`, `revocation`.
        endpoint: &'static str,
        /// OAuth `error` code (or the HTTP status if there was none).
        error: String,
        /// `error_description`, if any.
        description: Option<String>,
    },
    /// The refresh token was rejected (`invalid_grant`). The token record was deleted if it was
    /// still the one rejected; a new authorization is needed.
    #[error("the refresh token for {resource} was rejected by {issuer}; log in again")]
    RefreshRejected {
        /// The AS.
        issuer: IssuerId,
        /// The MCP server.
        resource: String,
    },
    /// The authorization server failed a refresh without rotating the refresh token: it
    /// answered an error other than `invalid_grant`, or it could not be reached. The refresh
    /// token is kept; no process sends it again before `retry_after` has passed.
    #[error(
        "refreshing the token for {resource} at {issuer} failed: {reason}; the refresh token is kept and is tried again in {}s", .retry_after.as_secs()
    )]
    RefreshFailed {
        /// The AS.
        issuer: IssuerId,
        /// The MCP server.
        resource: String,
        /// What the AS answered, or why it could not be reached.
        reason: String,
        /// How long until the next attempt (from the failure).
        retry_after: std::time::Duration,
    },
    /// A refresh request reached (or may have reached) the authorization server, but its answer
    /// was lost: a timeout, a dropped connection, or a process that died while waiting. The AS
    /// may have rotated the refresh token, so it is never sent again (an AS that sees a
    /// rotated-away token revokes the whole grant); a new authorization is needed once the
    /// access token expires.
    #[error(
        "the refresh request for {resource} to {issuer} was sent but its answer was lost ({reason}); {issuer} may have rotated the refresh token, so it is not sent again (that would revoke the grant); log in again"
    )]
    RefreshOutcomeUnknown {
        /// The AS.
        issuer: IssuerId,
        /// The MCP server.
        resource: String,
        /// What happened (no secret).
        reason: String,
    },
    /// The authorization server rotated the refresh token, and the store could not record the
    /// new token set before the save deadline. This process keeps the new tokens in memory and
    /// goes on saving them; other processes cannot use the old refresh token.
    #[error(
        "{issuer} rotated the refresh token for {resource}, but the store could not record the new tokens ({source}); this process keeps them and goes on trying to save them. Fix the store; if this process exits first, log in again"
    )]
    RotatedTokenNotSaved {
        /// The AS.
        issuer: IssuerId,
        /// The MCP server.
        resource: String,
        /// The store's last error.
        #[source]
        source: StoreError,
    },
    /// Another process holds the refresh lease and has not recorded an outcome for longer than a
    /// refresh may take.
    #[error(
        "another process has been refreshing the token for {resource} at {issuer} for {}s without an outcome; try again later", .waited.as_secs()
    )]
    RefreshInProgress {
        /// The AS.
        issuer: IssuerId,
        /// The MCP server.
        resource: String,
        /// How long this call waited.
        waited: std::time::Duration,
    },
    /// The token response's `token_type` is not `Bearer` (RFC 6749 §7.1: a client must not use
    /// a token whose type it does not understand): not `Bearer`, nor `DPoP` in answer to a
    /// request that carried a DPoP proof.
    #[error(
        "{issuer} issued a token of type {token_type:?}; this client uses Bearer tokens, and DPoP \
         tokens when it asked for them"
    )]
    UnsupportedTokenType {
        /// The AS.
        issuer: IssuerId,
        /// The `token_type` it sent (printable characters only).
        token_type: String,
    },
    /// DPoP was required ([`crate::DpopMode::Required`]) or already bound to the tokens, and the
    /// authorization server does not support it (no ES256 in
    /// `dpop_signing_alg_values_supported`) or answered with a Bearer token (a downgrade).
    #[error(
        "{issuer} does not provide DPoP-bound tokens ({reason}); a Bearer token is not accepted \
         in their place"
    )]
    DpopNotAvailable {
        /// The AS.
        issuer: IssuerId,
        /// What it did.
        reason: &'static str,
    },
    /// The URL publishes no protected resource metadata and did not answer an MCP request
    /// without credentials with `401`: it is not an MCP server that needs authorization (a
    /// wrong URL, or a server that needs none). Nothing was registered anywhere.
    #[error(
        "{resource} is not an MCP server that requires authorization: it publishes no protected \
         resource metadata and answered an unauthenticated MCP request with HTTP {status} \
         (check the URL; nothing was registered)"
    )]
    NotProtected {
        /// The URL.
        resource: String,
        /// Its answer to the unauthenticated request.
        status: u16,
    },
    /// No usable tokens, and this call does not start an interactive authorization.
    #[error("no valid credentials for {resource}; log in first")]
    LoginRequired {
        /// The MCP server.
        resource: String,
    },
    /// The server keeps asking for scopes that the client already requested.
    #[error(
        "the MCP server requires scopes {scopes:?} that authorization did not grant (gave up after {attempts} attempts)"
    )]
    InsufficientScope {
        /// The scopes required.
        scopes: Vec<String>,
        /// Authorization attempts made.
        attempts: u32,
    },
    /// The AS supports none of the registration ways this client can use (no pre-registered
    /// credentials, no CIMD support, no registration endpoint).
    #[error(
        "cannot register with {issuer}: no pre-registered credentials, no Client ID Metadata Document support and no registration endpoint"
    )]
    RegistrationNotPossible {
        /// The AS.
        issuer: IssuerId,
    },
    /// The authorization server's `grant_types_supported` does not list the grant the client is
    /// configured for (the JWT bearer grant of an identity assertion or workload identity).
    /// Nothing was sent to its token endpoint, and no other grant is tried.
    #[error("authorization server {issuer} does not support the {grant_type} grant")]
    GrantNotSupported {
        /// The AS.
        issuer: IssuerId,
        /// The grant type.
        grant_type: String,
    },
    /// The enterprise identity provider refused the token exchange (RFC 8693) for an ID-JAG
    /// (SEP-990), e.g. `invalid_grant` for an expired or foreign ID token. A subject token
    /// refused with `invalid_grant` is not presented again.
    #[error("token exchange at {token_endpoint} returned {error}{}", .description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    TokenExchange {
        /// The identity provider's token endpoint (without query).
        token_endpoint: String,
        /// OAuth `error` code (or the HTTP status if there was none).
        error: String,
        /// `error_description`, if any.
        description: Option<String>,
    },
    /// The configured assertion provider could not supply an assertion (or supplied an empty
    /// one).
    #[error("no assertion available: {reason}")]
    AssertionUnavailable {
        /// The provider's error message.
        reason: String,
    },
    /// The authorization server advertises no `device_authorization_endpoint` (RFC 8628), so
    /// the device flow cannot be used there; log in through a browser instead.
    #[error(
        "authorization server {issuer} does not support the device authorization grant (no device_authorization_endpoint in its metadata); log in through a browser instead"
    )]
    DeviceFlowNotSupported {
        /// The AS.
        issuer: IssuerId,
    },
    /// The user denied the device authorization (RFC 8628 `access_denied`).
    #[error("the device authorization at {issuer} was denied")]
    DeviceAccessDenied {
        /// The AS.
        issuer: IssuerId,
    },
    /// The device code expired before the user completed the authorization (RFC 8628
    /// `expired_token`, or its `expires_in` passed); start again.
    #[error(
        "the device code from {issuer} expired before the authorization was completed; start again"
    )]
    DeviceCodeExpired {
        /// The AS.
        issuer: IssuerId,
    },
    /// Discovery found no usable metadata.
    #[error("discovery failed for {url}: {reason}")]
    Discovery {
        /// What was being discovered.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// A URL was refused before any request: not http(s), a private or link-local address,
    /// loopback when not allowed, or a cross-origin redirect.
    #[error("refused to contact {url}: {reason}")]
    UnsafeUrl {
        /// The URL (without query).
        url: String,
        /// Why.
        reason: String,
    },
    /// A response was larger than the configured limit.
    #[error("response from {url} exceeds {limit} bytes")]
    ResponseTooLarge {
        /// The URL.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// A request took longer than the configured timeout.
    #[error("request to {url} timed out")]
    Timeout {
        /// The URL.
        url: String,
    },
    /// A response could not be understood (malformed JSON, missing fields, bad header).
    #[error("invalid response from {url}: {reason}")]
    InvalidResponse {
        /// The URL.
        url: String,
        /// What was wrong (never the body).
        reason: String,
    },
    /// A network failure.
    #[error("request to {url} failed: {source}")]
    Http {
        /// The URL.
        url: String,
        /// The transport error.
        #[source]
        source: BoxError,
    },
    /// The authorizer (browser or headless) could not obtain a callback.
    #[error("authorization could not be completed: {0}")]
    Authorizer(String),
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The credential store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AuthError {
    /// True when the user must (re)authorize interactively to continue.
    pub fn needs_login(&self) -> bool {
        matches!(
            self,
            Self::LoginRequired { .. }
                | Self::RefreshRejected { .. }
                | Self::RefreshOutcomeUnknown { .. }
        )
    }
}
