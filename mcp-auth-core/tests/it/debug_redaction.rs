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

/// The assertion grants' configuration: subject token, IdP and AS client secrets, workload
/// assertion.
#[cfg(feature = "engine")]
#[test]
fn assertion_grants_print_no_secret() {
    use mcp_auth_core::{
        AssertionSource, AuthError, ClientConfig, IdentityAssertionGrant, JwtBearerGrant,
    };

    let issuer = IssuerId::new("https://as.example").unwrap();
    let ema = IdentityAssertionGrant::new(
        "https://idp.example/token?tenant=x",
        SecretString::from(SECRETS[6]),
        "client",
        SecretString::from(SECRETS[0]),
    )
    .unwrap()
    .with_idp_client("idp-client", Some(SecretString::from(SECRETS[1])))
    .with_issuer(issuer.clone());
    let wif = JwtBearerGrant::new(SecretString::from(SECRETS[2])).with_issuer(issuer.clone());
    let provided = JwtBearerGrant::new(AssertionSource::from_fn(|_| async {
        Ok(SecretString::from(SECRETS[2]))
    }));
    let config = ClientConfig::default()
        .with_identity_assertion(ema.clone())
        .with_jwt_bearer(wif.clone());
    let errors = [
        AuthError::TokenExchange {
            token_endpoint: "https://idp.example/token".into(),
            error: "invalid_grant".into(),
            description: None,
        },
        AuthError::GrantNotSupported {
            issuer,
            grant_type: "urn:ietf:params:oauth:grant-type:jwt-bearer".into(),
        },
        AuthError::AssertionUnavailable { reason: "x".into() },
    ];
    let rendered = [
        ("IdentityAssertionGrant", format!("{ema:?}")),
        ("JwtBearerGrant", format!("{wif:?} {provided:?}")),
        ("AssertionSource", format!("{:?}", wif.assertion)),
        ("ClientConfig", format!("{config:?}")),
        (
            "AuthError",
            format!("{errors:?} {} {}", errors[0], errors[1]),
        ),
    ];
    for (what, text) in &rendered {
        assert_clean(what, text);
    }
    // Not vacuous, and the IdP endpoint's query is not printed either.
    assert!(rendered[0].1.contains("idp-client"), "{}", rendered[0].1);
    assert!(!rendered[0].1.contains("tenant"), "{}", rendered[0].1);
}

/// DPoP: the private key stored with DPoP-bound tokens is never printed, neither by the
/// token set that holds it nor by the credential that signs with it.
#[cfg(feature = "engine")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpop_private_keys_are_not_printed() {
    use std::sync::Arc;

    use mcp_auth_core::{ClientConfig, DpopMode, ExposeSecret, HttpPolicy, McpAuth, TokenStore};
    use mcp_auth_testkit::{AuthServer, AuthServerConfig, McpServer, McpServerConfig};

    let as1 = AuthServer::start(AuthServerConfig {
        dpop: true,
        ..AuthServerConfig::default()
    })
    .await
    .unwrap();
    let mcp = McpServer::start(McpServerConfig {
        authorization_servers: vec![as1.clone()],
        ..McpServerConfig::default()
    })
    .await
    .unwrap();
    let store = Arc::new(MemoryStore::new());
    let auth = McpAuth::builder(store.clone())
        .client(ClientConfig::default().with_dpop(DpopMode::IfSupported))
        .http_policy(HttpPolicy::allowing_loopback())
        .authorizer(Arc::new(
            mcp_auth_core::HeadlessAuthorizer::with_policy(HttpPolicy::allowing_loopback())
                .unwrap(),
        ))
        .build()
        .unwrap();
    let resource = ResourceUri::new(mcp.url()).unwrap();
    let credential = auth.access_credential(&resource).await.unwrap();
    assert!(credential.is_dpop());
    let key = TokenKey::new(IssuerId::new(as1.issuer()).unwrap(), resource);
    let tokens = store.get_tokens(&key).await.unwrap().unwrap();
    let private = tokens.value.dpop_key.clone().unwrap();
    let private = private.expose_secret();
    // Any 16 characters of the stored PKCS#8 key beyond its fixed P-256 prefix.
    let pieces: Vec<&str> = (48..private.len().saturating_sub(16))
        .step_by(8)
        .map(|i| &private[i..i + 16])
        .collect();
    assert!(!pieces.is_empty());
    let token = credential.token().expose_secret().to_owned();
    let rendered = [
        ("TokenSet", format!("{:?}", tokens.value)),
        ("Versioned<TokenSet>", format!("{tokens:?}")),
        ("AccessCredential", format!("{credential:?}")),
        (
            "AccessCredential::authorization",
            format!("{:?}", credential.authorization()),
        ),
        ("MemoryStore", format!("{store:?}")),
    ];
    for (what, text) in &rendered {
        assert!(
            !text.contains(private),
            "{what} prints the DPoP key: {text}"
        );
        for piece in &pieces {
            assert!(!text.contains(piece), "{what} prints part of the DPoP key");
        }
        assert!(!text.contains(&token), "{what} prints the access token");
    }
    // Not vacuous: the credential says what it is.
    assert!(rendered[2].1.contains("DPoP"), "{}", rendered[2].1);
}
