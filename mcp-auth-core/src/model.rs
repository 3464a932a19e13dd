//! The records a client keeps: a registration per authorization server, tokens per
//! (issuer, resource), the binding of an MCP server to its current authorization server, and the
//! state of an authorization flow in progress.
//!
//! Secrets are [`SecretString`]s: `Debug` prints `[REDACTED]`, memory is zeroized on drop, and the
//! only code that reads them is the record (de)serialiser and the engine that sends them. `extra`
//! maps keep fields this version does not know, so they survive a round trip through any store;
//! their `Debug` output lists only the field names, since an unknown field may hold a secret.

use std::fmt;

use secrecy::SecretString;
use serde_json::{Map, Value};

use crate::ids::{IssuerId, ResourceUri};
use crate::time::Timestamp;

/// Fields this version of the library does not interpret, kept verbatim.
pub type Extra = Map<String, Value>;

/// `Debug` helper that shows the keys of an `extra` map, never its values.
struct ExtraKeys<'a>(&'a Extra);

impl fmt::Debug for ExtraKeys<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// How the client obtained its identity at an authorization server (SEP-2352 treats each one
/// differently when an MCP server moves to another authorization server).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegistrationKind {
    /// Configured out of band for one authorization server. Never presented to another one; a
    /// move to another AS is an error the user must resolve.
    PreRegistered,
    /// Obtained by Dynamic Client Registration (RFC 7591) at this AS. Re-registered at a new AS.
    Dynamic,
    /// A Client ID Metadata Document URL: portable, so it is reused at a new AS without
    /// registration.
    MetadataDocument,
}

impl RegistrationKind {
    /// Stable name used in records and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PreRegistered => "pre_registered",
            Self::Dynamic => "dynamic",
            Self::MetadataDocument => "metadata_document",
        }
    }

    /// Parses [`RegistrationKind::as_str`] output.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pre_registered" => Some(Self::PreRegistered),
            "dynamic" => Some(Self::Dynamic),
            "metadata_document" => Some(Self::MetadataDocument),
            _ => None,
        }
    }
}

impl fmt::Display for RegistrationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The client's credentials at one authorization server, keyed by its issuer.
#[non_exhaustive]
#[derive(Clone)]
pub struct ClientRegistration {
    /// The authorization server these credentials belong to (and only to).
    pub issuer: IssuerId,
    /// The client identifier issued by (or, for CIMD, presented to) this AS.
    pub client_id: String,
    /// Client secret, for confidential clients.
    pub client_secret: Option<SecretString>,
    /// When the secret expires (RFC 7591 `client_secret_expires_at`); `None` means never.
    pub client_secret_expires_at: Option<Timestamp>,
    /// RFC 7591 `client_id_issued_at`.
    pub client_id_issued_at: Option<Timestamp>,
    /// Token endpoint authentication method as registered (`none`, `client_secret_basic`, ...).
    pub token_endpoint_auth_method: String,
    /// Registered redirect URIs, as returned by the AS.
    pub redirect_uris: Vec<String>,
    /// Registered grant types, as returned by the AS.
    pub grant_types: Vec<String>,
    /// How this identity was obtained.
    pub kind: RegistrationKind,
    /// RFC 7592 registration access token.
    pub registration_access_token: Option<SecretString>,
    /// RFC 7592 client configuration endpoint.
    pub registration_client_uri: Option<String>,
    /// When this record was created.
    pub created_at: Timestamp,
    /// Fields this version does not know (e.g. other RFC 7591 metadata the AS returned).
    pub extra: Extra,
}

impl ClientRegistration {
    /// A registration with no secret, auth method `none` and no redirect URIs.
    pub fn new(issuer: IssuerId, client_id: impl Into<String>, kind: RegistrationKind) -> Self {
        Self {
            issuer,
            client_id: client_id.into(),
            client_secret: None,
            client_secret_expires_at: None,
            client_id_issued_at: None,
            token_endpoint_auth_method: "none".to_owned(),
            redirect_uris: Vec::new(),
            grant_types: Vec::new(),
            kind,
            registration_access_token: None,
            registration_client_uri: None,
            created_at: Timestamp::now(),
            extra: Extra::new(),
        }
    }

    /// True when a client secret was issued and its expiry has passed (re-register then).
    pub fn secret_expired(&self) -> bool {
        self.client_secret.is_some()
            && self
                .client_secret_expires_at
                .is_some_and(Timestamp::is_past)
    }
}

impl fmt::Debug for ClientRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientRegistration")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("client_secret_expires_at", &self.client_secret_expires_at)
            .field("client_id_issued_at", &self.client_id_issued_at)
            .field(
                "token_endpoint_auth_method",
                &self.token_endpoint_auth_method,
            )
            .field("redirect_uris", &self.redirect_uris)
            .field("grant_types", &self.grant_types)
            .field("kind", &self.kind)
            .field("registration_access_token", &self.registration_access_token)
            .field("registration_client_uri", &self.registration_client_uri)
            .field("created_at", &self.created_at)
            .field("extra", &ExtraKeys(&self.extra))
            .finish()
    }
}

/// Tokens issued by one authorization server for one MCP server.
#[non_exhaustive]
#[derive(Clone)]
pub struct TokenSet {
    /// The access token sent as `Authorization: Bearer` (or `DPoP`, with a proof).
    pub access_token: SecretString,
    /// `token_type` from the token response: `Bearer`, or `DPoP` for sender-constrained tokens.
    pub token_type: String,
    /// When the access token expires, if the AS said (`expires_in`).
    pub expires_at: Option<Timestamp>,
    /// The refresh token; only ever sent to the token endpoint of the issuer that issued it.
    pub refresh_token: Option<SecretString>,
    /// Scopes granted.
    pub scopes: Vec<String>,
    /// When the tokens were obtained.
    pub obtained_at: Timestamp,
    /// Where the last refresh of these tokens stands, shared through the store by every process
    /// that uses it, so none resends a refresh token whose fate is not known. `None`: no refresh
    /// is running or has failed.
    pub refresh_state: Option<RefreshState>,
    /// The private key these tokens are bound to, when the authorization server issued them as
    /// DPoP tokens (RFC 9449, `token_type` `DPoP`): PKCS#8 DER of a P-256 key, base64url. A
    /// DPoP-bound access or refresh token is useless without it, so it is stored in the same
    /// record and written in the same compare-and-swap. `None` for Bearer tokens.
    pub dpop_key: Option<SecretString>,
    /// Fields of the token response this version does not know.
    pub extra: Extra,
}

/// The state of a refresh-token grant for one token set, recorded in the store by the process
/// that sends it. A refresh token is sent only from a token set without a state (or whose
/// [`RefreshState::Failed`] retry time has passed): an authorization server that rotates refresh
/// tokens revokes the whole grant when it sees a rotated-away token again.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum RefreshState {
    /// A refresh request is being sent by the holder of the refresh lease (`holder` is the
    /// lease's random token, not a secret). Other processes wait for its outcome.
    InFlight {
        /// When the request was started.
        started_at: Timestamp,
        /// The refresh lease token of the sender.
        holder: String,
    },
    /// The authorization server answered with an error (or could not be reached): it did not
    /// rotate the refresh token, which stays valid. Not retried before `retry_after`.
    Failed {
        /// When the refresh failed.
        at: Timestamp,
        /// The earliest time to try again.
        retry_after: Timestamp,
        /// What the authorization server answered (an OAuth error code or an HTTP status),
        /// printable ASCII only.
        error: String,
    },
    /// The request was sent but its answer was lost (a timeout, a dropped connection, a holder
    /// that died): the authorization server may have rotated the refresh token. The token is
    /// never sent again; the access token is used until it expires, then a login is needed.
    Unknown {
        /// When the outcome was found to be unknown.
        at: Timestamp,
        /// Why, for messages (no secret).
        reason: String,
    },
}

impl TokenSet {
    /// A `Bearer` token set obtained now, with no expiry, refresh token or scopes.
    pub fn new(access_token: SecretString) -> Self {
        Self {
            access_token,
            token_type: "Bearer".to_owned(),
            expires_at: None,
            refresh_token: None,
            scopes: Vec::new(),
            obtained_at: Timestamp::now(),
            refresh_state: None,
            dpop_key: None,
            extra: Extra::new(),
        }
    }

    /// True when the access token expires within `margin` from now.
    pub fn expires_within(&self, margin: std::time::Duration) -> bool {
        self.expires_at
            .is_some_and(|at| at <= Timestamp::now().saturating_add(margin))
    }
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("access_token", &self.access_token)
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("refresh_token", &self.refresh_token)
            .field("scopes", &self.scopes)
            .field("obtained_at", &self.obtained_at)
            .field("refresh_state", &self.refresh_state)
            .field("dpop_key", &self.dpop_key)
            .field("extra", &ExtraKeys(&self.extra))
            .finish()
    }
}

/// Which authorization server an MCP server is currently bound to, with the metadata discovered
/// for it, so a warm start needs no discovery request. Recorded only after a token was obtained.
#[non_exhaustive]
#[derive(Clone, PartialEq)]
pub struct ResourceBinding {
    /// The MCP server.
    pub resource: ResourceUri,
    /// Its authorization server.
    pub issuer: IssuerId,
    /// The protected resource metadata (RFC 9728) as validated.
    pub resource_metadata: Extra,
    /// The authorization server metadata (RFC 8414) as validated.
    pub authorization_server_metadata: Extra,
    /// When the binding was recorded.
    pub bound_at: Timestamp,
    /// Fields this version does not know.
    pub extra: Extra,
}

impl ResourceBinding {
    /// A binding recorded now, with empty metadata.
    pub fn new(resource: ResourceUri, issuer: IssuerId) -> Self {
        Self {
            resource,
            issuer,
            resource_metadata: Extra::new(),
            authorization_server_metadata: Extra::new(),
            bound_at: Timestamp::now(),
            extra: Extra::new(),
        }
    }
}

impl fmt::Debug for ResourceBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResourceBinding")
            .field("resource", &self.resource)
            .field("issuer", &self.issuer)
            .field("resource_metadata", &ExtraKeys(&self.resource_metadata))
            .field(
                "authorization_server_metadata",
                &ExtraKeys(&self.authorization_server_metadata),
            )
            .field("bound_at", &self.bound_at)
            .field("extra", &ExtraKeys(&self.extra))
            .finish()
    }
}

/// An authorization request in flight, stored under its `state` until the callback arrives
/// (possibly at another replica). The expected issuer is kept beside the PKCE verifier so the
/// callback's `iss` is checked against the AS this very request went to (RFC 9207).
#[non_exhaustive]
#[derive(Clone)]
pub struct PendingAuthorization {
    /// The `state` parameter; the key of this record.
    pub state: String,
    /// PKCE code verifier.
    pub pkce_verifier: SecretString,
    /// The issuer of the AS the request was sent to.
    pub issuer: IssuerId,
    /// The MCP server the authorization is for.
    pub resource: ResourceUri,
    /// The client_id used in the request.
    pub client_id: String,
    /// The redirect URI used in the request.
    pub redirect_uri: String,
    /// Scopes requested.
    pub scopes: Vec<String>,
    /// When the flow started.
    pub created_at: Timestamp,
    /// After this instant the record is gone: `take` returns nothing.
    pub expires_at: Timestamp,
    /// Fields this version does not know.
    pub extra: Extra,
}

impl PendingAuthorization {
    /// A pending authorization created now that expires after `ttl`.
    pub fn new(
        state: impl Into<String>,
        pkce_verifier: SecretString,
        issuer: IssuerId,
        resource: ResourceUri,
        client_id: impl Into<String>,
        redirect_uri: impl Into<String>,
        ttl: std::time::Duration,
    ) -> Self {
        let now = Timestamp::now();
        Self {
            state: state.into(),
            pkce_verifier,
            issuer,
            resource,
            client_id: client_id.into(),
            redirect_uri: redirect_uri.into(),
            scopes: Vec::new(),
            created_at: now,
            expires_at: now.saturating_add(ttl),
            extra: Extra::new(),
        }
    }
}

impl fmt::Debug for PendingAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingAuthorization")
            .field("state", &"[REDACTED]")
            .field("pkce_verifier", &self.pkce_verifier)
            .field("issuer", &self.issuer)
            .field("resource", &self.resource)
            .field("client_id", &self.client_id)
            .field("redirect_uri", &self.redirect_uri)
            .field("scopes", &self.scopes)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("extra", &ExtraKeys(&self.extra))
            .finish()
    }
}
