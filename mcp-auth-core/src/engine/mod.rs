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
//!
//! # Where each flow lives
//!
//! [`McpAuth`] is one type; its `impl` blocks are spread over this module's files, one per flow:
//!
//! - `mod.rs`: the [`McpAuth`] struct and the helpers every flow shares (`oauth_error`, …).
//! - `config.rs`: [`ClientConfig`], [`PreRegisteredClient`], [`ClientCredentials`].
//! - `builder.rs`: [`McpAuthBuilder`] and its configuration checks.
//! - `tokens.rs`: [`McpAuth::access_token`], [`McpAuth::access_credential`] and the `cached_*`
//!   paths over the decoded-record cache; storing and binding new tokens; token endpoint
//!   requests and the parsing of their responses.
//! - `refresh.rs`: refreshing without ever losing a grant (lease, in-flight marker, rotation).
//! - `discovery.rs`: protected resource and authorization server metadata, `WWW-Authenticate`
//!   challenges.
//! - `authorization.rs`: the authorization-code flow with PKCE,
//!   [`McpAuth::handle_unauthorized`], step-up ([`McpAuth::handle_insufficient_scope`]), scope
//!   selection.
//! - `registration.rs`: which client to be at an authorization server — pre-registered, Client
//!   ID Metadata Document or dynamic registration — and the redirect URI it uses.
//! - `client_credentials.rs`: the `client_credentials` grant (SEP-1046) and RFC 7523 client
//!   assertions.
//! - `assertion.rs`: identity assertion and JWT bearer grants.
//! - `device.rs`: the device authorization grant.
//! - `dpop.rs`: DPoP keys, proofs and nonces.
//! - `logout.rs`: [`McpAuth::logout`] and its [`LogoutReport`].
//! - `authorizer.rs`: how the user completes an authorization ([`Authorizer`]).
//! - `http.rs`, `error.rs`: the HTTP client and its policy, [`AuthError`].
//!
//! The SEP-2352 binding policy itself is decided in one place, [`crate::binding`];
//! `authorization.rs` only applies its decisions.

mod assertion;
mod authorization;
mod authorizer;
mod builder;
mod client_credentials;
mod config;
mod device;
mod discovery;
mod dpop;
mod error;
mod http;
mod logout;
mod refresh;
mod registration;
mod tokens;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Map, Value};

pub use assertion::{
    AssertionProvider, AssertionRequest, AssertionSource, IdentityAssertionGrant, JwtBearerGrant,
};
#[cfg(feature = "headless")]
pub use authorizer::HeadlessAuthorizer;
pub use authorizer::{
    AuthorizationRequest, Authorizer, LoopbackAuthorizer, Opener, PasteAuthorizer,
};
pub use builder::McpAuthBuilder;
pub use config::{ClientConfig, ClientCredentials, ClientCredentialsAuth, PreRegisteredClient};
pub use device::DeviceCode;
pub use discovery::{Challenge, metadata_urls};
pub use dpop::{AccessCredential, DpopKey, DpopMode};
pub use error::AuthError;
pub use http::HttpPolicy;
pub use logout::LogoutReport;
pub use tokens::INVALID_EXPIRES_IN_LIFETIME;

use self::http::Http;
use crate::ids::{IssuerId, ResourceUri, TokenKey};
use crate::model::TokenSet;
use crate::store::CredentialStore;

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

fn random_urlsafe(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if getrandom::fill(&mut buf).is_err() {
        // Never hand out a guessable PKCE verifier or state: return nothing, and the caller
        // fails closed.
        buf.clear();
    }
    data_encoding::BASE64URL_NOPAD.encode(&buf)
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
    /// The store.
    pub fn store(&self) -> &Arc<dyn CredentialStore> {
        &self.store
    }
}
