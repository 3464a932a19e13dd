//! No public type prints a secret through `Debug` or `Display`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mcp_auth_core::record::RecordKey;
use mcp_auth_core::{
    ClientRegistration, Expect, IssuerId, MemoryStore, PendingAuthorization,
    PendingAuthorizationStore, RefreshLease, RegistrationKind, RegistrationStore, ResourceBinding,
    ResourceUri, SecretString, StoreError, TokenKey, TokenSet, TokenStore, Versioned,
};

const SECRETS: &[&str] = &[
    "client-secret-0xDEADBEEF",
    "registration-token-0xFEED",
    "access-token-0xC0FFEE",
    "refresh-token-0xBADF00D",
    "pkce-verifier-0xABAD1DEA",
    "state-0x5EED",
    "extra-id-token-0x1D",
];

fn assert_clean(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} leaks {secret}: {text}");
    }
}

#[tokio::test]
async fn no_public_type_prints_a_secret() {
    let issuer = IssuerId::new("https://as.example").unwrap();
    let resource = ResourceUri::new("https://mcp.example/mcp").unwrap();
    let key = TokenKey::new(issuer.clone(), resource.clone());

    let mut registration =
        ClientRegistration::new(issuer.clone(), "client", RegistrationKind::Dynamic);
    registration.client_secret = Some(SecretString::from(SECRETS[0]));
    registration.registration_access_token = Some(SecretString::from(SECRETS[1]));
    registration
        .extra
        .insert("id_token".into(), SECRETS[6].into());

    let mut tokens = TokenSet::new(SecretString::from(SECRETS[2]));
    tokens.refresh_token = Some(SecretString::from(SECRETS[3]));
    tokens.extra.insert("id_token".into(), SECRETS[6].into());

    let mut pending = PendingAuthorization::new(
        SECRETS[5],
        SecretString::from(SECRETS[4]),
        issuer.clone(),
        resource.clone(),
        "client",
        "http://127.0.0.1/cb",
        Duration::from_secs(60),
    );
    pending.extra.insert("nonce".into(), SECRETS[6].into());

    let mut binding = ResourceBinding::new(resource.clone(), issuer.clone());
    binding
        .authorization_server_metadata
        .insert("x".into(), SECRETS[6].into());

    let store = MemoryStore::new();
    store
        .put_registration(&registration, Expect::Any)
        .await
        .unwrap();
    store.put_tokens(&key, &tokens, Expect::Any).await.unwrap();
    store.insert_pending(&pending).await.unwrap();
    let read: Option<Versioned<TokenSet>> = store.get_tokens(&key).await.unwrap();
    let conflict = store
        .put_tokens(&key, &tokens, Expect::Absent)
        .await
        .unwrap_err();
    let lease = RefreshLease::new(key.clone(), Duration::from_secs(1));

    let errors = [
        conflict,
        StoreError::Corrupt {
            key: RecordKey::Pending(SECRETS[5].into()).to_string(),
            reason: "x".into(),
        },
    ];

    let rendered = [
        ("ClientRegistration", format!("{registration:?}")),
        ("TokenSet", format!("{tokens:?}")),
        ("Versioned<TokenSet>", format!("{read:?}")),
        ("PendingAuthorization", format!("{pending:?}")),
        ("ResourceBinding", format!("{binding:?}")),
        ("MemoryStore", format!("{store:?}")),
        ("RefreshLease", format!("{lease:?}")),
        (
            "RecordKey::Pending",
            format!(
                "{:?} {}",
                RecordKey::Pending(SECRETS[5].into()),
                RecordKey::Pending(SECRETS[5].into())
            ),
        ),
        (
            "StoreError",
            format!("{errors:?} {} {}", errors[0], errors[1]),
        ),
    ];
    for (what, text) in &rendered {
        assert_clean(what, text);
    }
    // The redaction is not vacuous: the same values are really there.
    assert!(format!("{:?}", registration.extra.keys().collect::<Vec<_>>()).contains("id_token"));
}

#[test]
fn invalid_id_errors_do_not_echo_unbounded_input() {
    let long = format!("https://as.example/{}", "x".repeat(10_000));
    let err = IssuerId::new(long).unwrap_err();
    assert!(err.to_string().len() < 400, "{}", err.to_string().len());
}
