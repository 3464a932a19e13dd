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

#[cfg(feature = "encryption")]
pub use encryption::{EncryptedStore, EncryptionKey, EnvKey, FileKey, KeyProvider, KeySet};
#[cfg(feature = "engine")]
pub use engine::{
    AccessCredential, AuthError, AuthorizationRequest, Authorizer, Challenge, ClientConfig,
    ClientCredentials, ClientCredentialsAuth, DeviceCode, DpopKey, DpopMode, HeadlessAuthorizer,
    HttpPolicy, LogoutReport, LoopbackAuthorizer, McpAuth, McpAuthBuilder, PasteAuthorizer,
    PreRegisteredClient,
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
pub use store::{
    BindingStore, CredentialStore, Expect, PendingAuthorizationStore, RefreshLease,
    RegistrationStore, StoreCapabilities, StoreInfo, TokenStore, Version, Versioned,
};
pub use time::Timestamp;

/// `bytes` random bytes from the OS, as lowercase hex. Falls back to a time-and-counter mix if
/// the OS source fails (never panics); callers use it for lease holders and test namespaces,
/// never for secrets sent on the wire.
pub(crate) fn random_hex(bytes: usize) -> String {
    use std::fmt::Write;
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
    buf.iter()
        .fold(String::with_capacity(bytes * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
