#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod binding;
#[cfg(feature = "encryption")]
pub mod encryption;
#[cfg(feature = "engine")]
pub mod engine;
mod error;
mod ids;
mod memory;
mod model;
pub mod raw;
pub mod record;
mod store;
mod time;

#[cfg(feature = "conformance")]
pub mod conformance;

/// The `#[async_trait]` attribute the store traits are declared with: a store written outside
/// this crate implements them with `#[mcp_auth_core::async_trait]`, without depending on the
/// `async-trait` crate itself.
pub use async_trait::async_trait;
#[cfg(feature = "encryption")]
pub use encryption::{EncryptedStore, EncryptionKey, EnvKey, FileKey, KeyProvider, KeySet};
/// Not `rmcp::transport::auth::AuthError` (rmcp's own OAuth module, which mcp-auth does not
/// use): this is why mcp-auth could not authorize. Through `mcp-auth-rmcp`, find it in an rmcp
/// error with `mcp_auth_rmcp::auth_error`.
#[cfg(feature = "engine")]
pub use engine::AuthError;
#[cfg(feature = "headless")]
pub use engine::HeadlessAuthorizer;
#[cfg(feature = "engine")]
pub use engine::{
    AccessCredential, AuthorizationRequest, Authorizer, Challenge, ClientConfig, ClientCredentials,
    ClientCredentialsAuth, DeviceCode, DpopKey, DpopMode, HttpPolicy, LogoutReport,
    LoopbackAuthorizer, McpAuth, McpAuthBuilder, Opener, PasteAuthorizer, PreRegisteredClient,
};
#[cfg(feature = "engine")]
pub use engine::{
    AssertionProvider, AssertionRequest, AssertionSource, IdentityAssertionGrant, JwtBearerGrant,
};
pub use error::{BoxError, StoreError};
pub use ids::{InvalidId, IssuerId, MAX_ID_LEN, Namespace, ResourceUri, TokenKey};
pub use memory::MemoryStore;
pub use model::{
    ClientRegistration, Extra, PendingAuthorization, RefreshState, RegistrationKind,
    ResourceBinding, TokenSet,
};
pub use secrecy::{ExposeSecret, SecretString};
/// JSON values held in `extra` maps and metadata.
pub use serde_json::Value as JsonValue;
/// Not `rmcp::transport::auth::CredentialStore` (rmcp's single-server token slot): this is
/// mcp-auth's store of registrations, tokens and bindings, keyed by authorization server.
pub use store::CredentialStore;
pub use store::{
    BindingStore, Expect, PendingAuthorizationStore, RefreshLease, RegistrationStore,
    StoreCapabilities, StoreInfo, TokenStore, Version, Versioned,
};
pub use time::Timestamp;
/// The URL type of [`AuthorizationRequest`], the [`Authorizer`] result and the
/// [`LoopbackAuthorizer`] opener (the `url` crate's).
#[cfg(feature = "engine")]
pub use url::Url;

/// `bytes` random bytes from the OS, as lowercase hex. Falls back to a time-and-counter mix if
/// the OS source fails (never panics); callers use it for lease holders and test namespaces,
/// never for secrets sent on the wire.
pub(crate) fn random_hex(bytes: usize) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    let mut buf = vec![0u8; bytes];
    if getrandom::fill(&mut buf).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let seed = nanos
            ^ u128::from(COUNTER.fetch_add(1, Ordering::Relaxed)) << 64
            ^ u128::from(std::process::id());
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8;
        }
    }
    data_encoding::HEXLOWER.encode(&buf)
}
