//! Assertion grants end to end over real HTTP on loopback: enterprise-managed authorization
//! (SEP-990: token exchange at the IdP for an ID-JAG, then the JWT bearer grant) and workload
//! identity federation (a workload JWT as an RFC 7523 grant). One request per leg, typed
//! errors, no retry, no registration, SEP-2352 moves refused, secrets never printed.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use mcp_auth_core::{
    AssertionSource, AuthError, ClientConfig, HttpPolicy, IdentityAssertionGrant, IssuerId,
    JwtBearerGrant, McpAuth, RegistrationKind, RegistrationStore, SecretString,
};
use mcp_auth_testkit::{
    AuthServer, Endpoint, IdentityProvider, IdpConfig, IdpMisbehavior, McpServer, TestJwtKey,
};
use serde_json::json;

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const CLIENT: &str = "mcp-client";
const CLIENT_SECRET: &str = "mcp-client-secret-0xC1";
const WORKLOAD_ISSUER: &str = "https://workload-issuer.example";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token_requests(server: &AuthServer) -> Vec<mcp_auth_testkit::AsRequest> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.endpoint == Endpoint::Token)
        .collect()
}

/// An AS that knows the client and trusts the IdP's ID-JAGs, with no registration endpoint.
async fn ema_auth_server(idp: &IdentityProvider, ttl: Duration) -> AuthServer {
    let server = auth_server(|c| {
        c.dynamic_registration = false;
        c.access_token_ttl = ttl;
    })
    .await;
    server.preregister_client(CLIENT, Some(CLIENT_SECRET), "client_secret_basic", vec![]);
    server.trust_id_jag_issuer(&idp.issuer(), &idp.grant_key());
    server
}

fn ema_grant(idp: &IdentityProvider, id_token: String) -> IdentityAssertionGrant {
    IdentityAssertionGrant::new(
        &idp.token_endpoint(),
        SecretString::from(id_token),
        CLIENT,
        SecretString::from(CLIENT_SECRET),
    )
    .unwrap()
    .with_idp_client("idp-client", None)
    .with_idp_issuer(idp.issuer())
}

fn issuer_of(server: &AuthServer) -> IssuerId {
    IssuerId::new(server.issuer()).unwrap()
}

fn ema_engine(idp: &IdentityProvider, server: &AuthServer) -> McpAuth {
    engine_with(
        memory(),
        ClientConfig::default().with_identity_assertion(
            ema_grant(idp, idp.id_token("alice@example.com")).with_issuer(issuer_of(server)),
        ),
    )
}

async fn workload_auth_server(key: &TestJwtKey, ttl: Duration) -> AuthServer {
    let server = auth_server(|c| {
        c.dynamic_registration = false;
        c.access_token_ttl = ttl;
    })
    .await;
    server.trust_workload_issuer(WORKLOAD_ISSUER, key);
    server
}

fn workload_jwt(key: &TestJwtKey, aud: &str, exp_in: i64) -> String {
    let now = now() as i64;
    key.sign(
        None,
        &json!({
            "iss": WORKLOAD_ISSUER,
            "sub": "workload-1",
            "aud": aud,
            "iat": now,
            "exp": now + exp_in,
            "jti": format!("jti-{}", rand_suffix()),
        }),
    )
}

fn rand_suffix() -> u64 {
    static N: AtomicUsize = AtomicUsize::new(0);
    now() * 1000 + N.fetch_add(1, Ordering::Relaxed) as u64
}

fn wif_engine(server: &AuthServer, assertion: impl Into<AssertionSource>) -> McpAuth {
    engine_with(
        memory(),
        ClientConfig::default().with_jwt_bearer(
            JwtBearerGrant::new(assertion)
                .with_client_id("workload-client")
                .with_issuer(issuer_of(server)),
        ),
    )
}

async fn mcp_for(server: &AuthServer) -> McpServer {
    mcp_server(vec![server.clone()], |_| {}).await
}

// ----- enterprise-managed authorization (SEP-990) -------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_assertion_end_to_end() {
    let idp = IdentityProvider::start(IdpConfig::default()).await.unwrap();
    let as1 = ema_auth_server(&idp, Duration::from_secs(3600)).await;
    let mcp = mcp_for(&as1).await;
    let store = memory();
    let auth = engine_with(
        store.clone(),
        ClientConfig::default().with_identity_assertion(
            ema_grant(&idp, idp.id_token("alice@example.com")).with_issuer(issuer_of(&as1)),
        ),
    );
    assert_eq!(call_with_recovery(&auth, &mcp).await.unwrap(), 200);

    // Leg 1: exactly the RFC 8693 parameters, audience = the AS issuer, resource = the server.
    let exchanges = idp.requests();
    assert_eq!(exchanges.len(), 1, "{exchanges:?}");
    let form = &exchanges[0].form;
    assert_eq!(exchanges[0].status, 200);
    assert_eq!(
        form.get("grant_type").map(String::as_str),
        Some("urn:ietf:params:oauth:grant-type:token-exchange")
    );
    assert_eq!(
        form.get("requested_token_type").map(String::as_str),
        Some("urn:ietf:params:oauth:token-type:id-jag")
    );
    assert_eq!(
        form.get("subject_token_type").map(String::as_str),
        Some("urn:ietf:params:oauth:token-type:id_token")
    );
    assert_eq!(form.get("audience"), Some(&as1.issuer()));
    assert_eq!(form.get("resource"), Some(&mcp.url()));
    assert_eq!(
        form.get("client_id").map(String::as_str),
        Some("idp-client")
    );
    assert!(!form.contains_key("scope"));

    // Leg 2: one JWT bearer request with client_secret_basic; nothing else at the AS.
    let requests = as1.requests();
    assert!(
        requests
            .iter()
            .all(|r| !matches!(r.endpoint, Endpoint::Authorize | Endpoint::Register)),
        "{requests:?}"
    );
    let tokens = token_requests(&as1);
    assert_eq!(tokens.len(), 1);
    let t = &tokens[0];
    assert_eq!(t.grant_type.as_deref(), Some(JWT_BEARER));
    assert_eq!(t.status, 200);
    assert_eq!(t.client_id.as_deref(), Some(CLIENT));
    assert!(t.presented_secret);
    assert!(!t.form.contains_key("client_secret"));
    assert!(
        !t.form.contains_key("client_id"),
        "Basic only: {:?}",
        t.form
    );
    assert_eq!(t.form.get("resource"), Some(&mcp.url()));
    assert!(t.form.contains_key("assertion"));

    // Recorded as pre-registered at the AS that issued the tokens.
    let registration = store
        .get_registration(&issuer_of(&as1))
        .await
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(registration.kind, RegistrationKind::PreRegistered);
    assert_eq!(registration.client_id, CLIENT);
    // The stored token is served without another request.
    auth.access_token(&resource(&mcp)).await.unwrap();
    assert_eq!(idp.requests().len(), 1);
    assert_eq!(token_requests(&as1).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_assertion_runs_both_legs_again_when_the_token_expires() {
    let idp = IdentityProvider::start(IdpConfig::default()).await.unwrap();
    let as1 = ema_auth_server(&idp, Duration::from_secs(2)).await;
    let mcp = mcp_for(&as1).await;
    let auth = ema_engine(&idp, &as1);
    let first = auth.access_token(&resource(&mcp)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2300)).await;
    // No refresh token: the expired token is replaced by a new grant, not a LoginRequired.
    let second = auth.access_token(&resource(&mcp)).await.unwrap();
    use mcp_auth_core::ExposeSecret;
    assert_ne!(first.expose_secret(), second.expose_secret());
    assert_eq!(idp.issued(), 2);
    assert_eq!(token_requests(&as1).len(), 2);
    assert_eq!(call(&mcp, &second).await.0, 200);
}

/// The transport's path: an expired token is refused by the MCP server, and the 401 recovery
/// runs the grant again (there is no refresh token to try).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_after_expiry_runs_the_grant_again() {
    let idp = IdentityProvider::start(IdpConfig::default()).await.unwrap();
    let as1 = ema_auth_server(&idp, Duration::from_secs(2)).await;
    let mcp = mcp_for(&as1).await;
    let auth = ema_engine(&idp, &as1);
    let first = auth.access_token(&resource(&mcp)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let err = auth.cached_access_token(&resource(&mcp)).await.unwrap_err();
    assert!(err.needs_login(), "{err:?}");
    let (status, challenge) = call(&mcp, &first).await;
    assert_eq!(status, 401);
    let second = auth
        .handle_unauthorized(&resource(&mcp), challenge.as_deref())
        .await
        .unwrap();
    assert_eq!(call(&mcp, &second).await.0, 200);
    assert_eq!(idp.issued(), 2);
    assert_eq!(token_requests(&as1).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_id_jag_is_checked_before_it_is_presented() {
    for misbehavior in [
        IdpMisbehavior::WrongAudience,
        IdpMisbehavior::WrongClientId,
        IdpMisbehavior::WrongResource,
        IdpMisbehavior::Expired,
        IdpMisbehavior::WrongTyp,
        IdpMisbehavior::WrongIssuedTokenType,
        IdpMisbehavior::BearerTokenType,
    ] {
        let idp = IdentityProvider::start(IdpConfig::default()).await.unwrap();
        idp.set_misbehavior(misbehavior.clone());
        let as1 = ema_auth_server(&idp, Duration::from_secs(3600)).await;
        let mcp = mcp_for(&as1).await;
        let auth = ema_engine(&idp, &as1);
        let err = auth.access_token(&resource(&mcp)).await.unwrap_err();
        assert!(
            matches!(&err, AuthError::InvalidResponse { url, .. } if url == &idp.token_endpoint()),
            "{misbehavior:?}: {err:?}"
        );
        assert_eq!(idp.requests().len(), 1, "{misbehavior:?}");
        assert!(
            token_requests(&as1).is_empty(),
            "{misbehavior:?}: a bad ID-JAG reached the AS"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_id_token_is_a_typed_error_and_is_not_sent_again() {
    let idp = IdentityProvider::start(IdpConfig::default()).await.unwrap();
    let as1 = ema_auth_server(&idp, Duration::from_secs(3600)).await;
    let mcp = mcp_for(&as1).await;
    let auth = engine_with(
        memory(),
        ClientConfig::default().with_identity_assertion(
            ema_grant(&idp, idp.expired_id_token("alice@example.com")).with_issuer(issuer_of(&as1)),
        ),
    );
    for _ in 0..2 {
        let err = call_with_recovery(&auth, &mcp).await.unwrap_err();
        match err {
            AuthError::TokenExchange {
                token_endpoint,
                error,
                ..
            } => {
                assert_eq!(token_endpoint, idp.token_endpoint());
                assert_eq!(error, "invalid_grant");
            }
            other => panic!("expected TokenExchange, got {other:?}"),
        }
    }
    assert_eq!(
        idp.requests().len(),
        1,
        "the refused ID token was sent again"
    );
    assert!(token_requests(&as1).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_assertion_with_a_confidential_idp_client_uses_basic() {
    let idp = IdentityProvider::start(IdpConfig {
        client_secret: Some("idp-secret-0x1D".into()),
        ..IdpConfig::default()
    })
    .await
    .unwrap();
    let as1 = ema_auth_server(&idp, Duration::from_secs(3600)).await;
    let mcp = mcp_for(&as1).await;
    let grant = ema_grant(&idp, idp.id_token("alice@example.com"))
        .with_idp_client("idp-client", Some(SecretString::from("idp-secret-0x1D")))
        .with_issuer(issuer_of(&as1));
    let auth = engine_with(
        memory(),
        ClientConfig::default().with_identity_assertion(grant),
    );
    assert_eq!(call_with_recovery(&auth, &mcp).await.unwrap(), 200);
    let exchange = &idp.requests()[0];
    assert_eq!(exchange.basic_client_id.as_deref(), Some("idp-client"));
    assert!(!exchange.form.contains_key("client_id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_secret_at_the_as_is_one_typed_error() {
    let idp = IdentityProvider::start(IdpConfig::default()).await.unwrap();
    let as1 = ema_auth_server(&idp, Duration::from_secs(3600)).await;
    let mcp = mcp_for(&as1).await;
    let grant = IdentityAssertionGrant::new(
        &idp.token_endpoint(),
        SecretString::from(idp.id_token("alice@example.com")),
        CLIENT,
        SecretString::from("wrong-secret"),
    )
    .unwrap()
    .with_idp_client("idp-client", None)
    .with_issuer(issuer_of(&as1));
    let auth = engine_with(
        memory(),
        ClientConfig::default().with_identity_assertion(grant),
    );
    let err = auth.access_token(&resource(&mcp)).await.unwrap_err();
    assert!(
        matches!(&err, AuthError::OAuth { error, endpoint: "token", .. } if error == "invalid_client"),
        "{err:?}"
    );
    assert_eq!(token_requests(&as1).len(), 1);
}

/// SEP-2352: declared and undeclared, a move to another AS is refused naming both issuers,
/// and the new AS receives nothing at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_assertion_refuses_an_authorization_server_move() {
    for declared in [true, false] {
        let idp = IdentityProvider::start(IdpConfig::default()).await.unwrap();
        let as1 = ema_auth_server(&idp, Duration::from_secs(3600)).await;
        let as2 = ema_auth_server(&idp, Duration::from_secs(3600)).await;
        let mcp = mcp_for(&as1).await;
        let mut grant = ema_grant(&idp, idp.id_token("alice@example.com"));
        let mut config = ClientConfig::default();
        if declared {
            grant = grant.with_issuer(issuer_of(&as1));
        } else {
            config = config.allowing_undeclared_secret_issuer();
        }
        let auth = engine_with(memory(), config.with_identity_assertion(grant));
        assert_eq!(call_with_recovery(&auth, &mcp).await.unwrap(), 200);

        mcp.set_authorization_servers(vec![as2.clone()]);
        let err = call_with_recovery(&auth, &mcp).await.unwrap_err();
        match err {
            AuthError::AuthorizationServerChanged { from, to } => {
                assert_eq!(from.as_str(), as1.issuer(), "declared={declared}");
                assert_eq!(to.as_str(), as2.issuer(), "declared={declared}");
            }
            other => {
                panic!("declared={declared}: expected AuthorizationServerChanged, got {other:?}")
            }
        }
        assert_eq!(
            as2.requests().len(),
            0,
            "declared={declared}: AS2 was contacted"
        );
        assert_eq!(
            idp.requests().len(),
            1,
            "declared={declared}: a new ID-JAG was asked for"
        );
    }
}

// ----- workload identity federation (JWT bearer) --------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_bearer_end_to_end() {
    let key = TestJwtKey::generate();
    let as1 = workload_auth_server(&key, Duration::from_secs(3600)).await;
    let mcp = mcp_for(&as1).await;
    let store = memory();
    let auth = engine_with(
        store.clone(),
        ClientConfig::default().with_jwt_bearer(
            JwtBearerGrant::new(SecretString::from(workload_jwt(&key, &as1.issuer(), 300)))
                .with_client_id("workload-client")
                .with_issuer(issuer_of(&as1)),
        ),
    );
    assert_eq!(call_with_recovery(&auth, &mcp).await.unwrap(), 200);
    let requests = as1.requests();
    assert!(
        requests
            .iter()
            .all(|r| !matches!(r.endpoint, Endpoint::Authorize | Endpoint::Register)),
        "{requests:?}"
    );
    let tokens = token_requests(&as1);
    assert_eq!(tokens.len(), 1);
    let t = &tokens[0];
    assert_eq!(t.grant_type.as_deref(), Some(JWT_BEARER));
    assert_eq!(t.status, 200);
    assert!(!t.presented_secret);
    assert_eq!(
        t.form.get("client_id").map(String::as_str),
        Some("workload-client")
    );
    assert_eq!(t.form.get("resource"), Some(&mcp.url()));
    assert!(!t.form.contains_key("scope"));
    let registration = store
        .get_registration(&issuer_of(&as1))
        .await
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(registration.kind, RegistrationKind::PreRegistered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_bearer_without_a_client_id_sends_none() {
    let key = TestJwtKey::generate();
    let as1 = workload_auth_server(&key, Duration::from_secs(3600)).await;
    let mcp = mcp_for(&as1).await;
    let auth = engine_with(
        memory(),
        ClientConfig::default().with_jwt_bearer(
            JwtBearerGrant::new(SecretString::from(workload_jwt(&key, &as1.issuer(), 300)))
                .with_issuer(issuer_of(&as1)),
        ),
    );
    assert_eq!(call_with_recovery(&auth, &mcp).await.unwrap(), 200);
    let tokens = token_requests(&as1);
    assert_eq!(tokens.len(), 1);
    assert!(
        !tokens[0].form.contains_key("client_id"),
        "{:?}",
        tokens[0].form
    );
}

/// A wrong audience or an expired assertion: `invalid_grant` as a typed error after exactly one
/// token request; the refused assertion is never presented again, whatever the caller does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_assertion_is_one_request_and_no_retry() {
    let key = TestJwtKey::generate();
    for (what, aud, exp_in) in [
        ("wrong audience", Some("https://wrong.example"), 300),
        ("expired", None, -60),
    ] {
        let as1 = workload_auth_server(&key, Duration::from_secs(3600)).await;
        let mcp = mcp_for(&as1).await;
        let jwt = workload_jwt(&key, aud.unwrap_or(&as1.issuer()), exp_in);
        let auth = wif_engine(&as1, SecretString::from(jwt));
        let err = auth.access_token(&resource(&mcp)).await.unwrap_err();
        match &err {
            AuthError::OAuth {
                issuer,
                endpoint: "token",
                error,
                ..
            } => {
                assert_eq!(issuer.as_str(), as1.issuer(), "{what}");
                assert_eq!(error, "invalid_grant", "{what}");
            }
            other => panic!("{what}: expected OAuth invalid_grant, got {other:?}"),
        }
        assert_eq!(token_requests(&as1).len(), 1, "{what}");
        // Neither another access_token() nor a 401 recovery presents it again, and no other
        // grant is tried.
        assert!(auth.access_token(&resource(&mcp)).await.is_err());
        assert!(call_with_recovery(&auth, &mcp).await.is_err());
        let tokens = token_requests(&as1);
        assert_eq!(tokens.len(), 1, "{what}: retried: {tokens:?}");
        assert!(
            as1.requests()
                .iter()
                .all(|r| !matches!(r.endpoint, Endpoint::Authorize | Endpoint::Register)),
            "{what}: fell back to another grant"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_supplies_a_fresh_assertion_for_each_grant() {
    let key = TestJwtKey::generate();
    let as1 = workload_auth_server(&key, Duration::from_secs(2)).await;
    let mcp = mcp_for(&as1).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let audiences = Arc::new(Mutex::new(Vec::new()));
    let source = {
        let key = key.clone();
        let calls = Arc::clone(&calls);
        let audiences = Arc::clone(&audiences);
        AssertionSource::from_fn(move |request| {
            let key = key.clone();
            let calls = Arc::clone(&calls);
            let audiences = Arc::clone(&audiences);
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                audiences
                    .lock()
                    .unwrap()
                    .push((request.issuer.to_string(), request.resource.clone()));
                Ok(SecretString::from(workload_jwt(
                    &key,
                    request.issuer.as_str(),
                    300,
                )))
            }
        })
    };
    let auth = wif_engine(&as1, source);
    let first = auth.access_token(&resource(&mcp)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let second = auth.access_token(&resource(&mcp)).await.unwrap();
    use mcp_auth_core::ExposeSecret;
    assert_ne!(first.expose_secret(), second.expose_secret());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let tokens = token_requests(&as1);
    assert_eq!(tokens.len(), 2);
    assert_ne!(
        tokens[0].form.get("assertion"),
        tokens[1].form.get("assertion")
    );
    assert_eq!(
        audiences.lock().unwrap()[0],
        (as1.issuer(), mcp.url()),
        "the provider is told the audience and the resource"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_failure_is_typed_and_sends_nothing() {
    let key = TestJwtKey::generate();
    let as1 = workload_auth_server(&key, Duration::from_secs(3600)).await;
    let mcp = mcp_for(&as1).await;
    let auth = wif_engine(
        &as1,
        AssertionSource::from_fn(|_| async { Err("the platform token file is missing".into()) }),
    );
    let err = auth.access_token(&resource(&mcp)).await.unwrap_err();
    assert!(
        matches!(&err, AuthError::AssertionUnavailable { reason } if reason.contains("missing")),
        "{err:?}"
    );
    assert!(token_requests(&as1).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_bearer_refuses_an_authorization_server_move() {
    let key = TestJwtKey::generate();
    for declared in [true, false] {
        let as1 = workload_auth_server(&key, Duration::from_secs(3600)).await;
        let as2 = workload_auth_server(&key, Duration::from_secs(3600)).await;
        let mcp = mcp_for(&as1).await;
        let mut grant =
            JwtBearerGrant::new(SecretString::from(workload_jwt(&key, &as1.issuer(), 300)));
        let mut config = ClientConfig::default();
        if declared {
            grant = grant.with_issuer(issuer_of(&as1));
        } else {
            config = config.allowing_undeclared_secret_issuer();
        }
        let auth = engine_with(memory(), config.with_jwt_bearer(grant));
        assert_eq!(call_with_recovery(&auth, &mcp).await.unwrap(), 200);
        mcp.set_authorization_servers(vec![as2.clone()]);
        let err = call_with_recovery(&auth, &mcp).await.unwrap_err();
        match err {
            AuthError::AuthorizationServerChanged { from, to } => {
                assert_eq!(from.as_str(), as1.issuer(), "declared={declared}");
                assert_eq!(to.as_str(), as2.issuer(), "declared={declared}");
            }
            other => {
                panic!("declared={declared}: expected AuthorizationServerChanged, got {other:?}")
            }
        }
        assert_eq!(
            as2.requests().len(),
            0,
            "declared={declared}: AS2 was contacted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_server_without_the_grant_gets_no_request() {
    let key = TestJwtKey::generate();
    // Lists authorization_code and refresh_token only.
    let as1 = auth_server(|c| c.dynamic_registration = false).await;
    let mcp = mcp_for(&as1).await;
    let auth = wif_engine(
        &as1,
        SecretString::from(workload_jwt(&key, &as1.issuer(), 300)),
    );
    let err = auth.access_token(&resource(&mcp)).await.unwrap_err();
    assert!(
        matches!(&err, AuthError::GrantNotSupported { grant_type, .. } if grant_type == JWT_BEARER),
        "{err:?}"
    );
    assert!(token_requests(&as1).is_empty());
    assert!(
        as1.requests()
            .iter()
            .all(|r| r.endpoint == Endpoint::Metadata)
    );
}

#[test]
fn build_checks_the_assertion_modes() {
    let build = |config: ClientConfig| {
        McpAuth::builder(memory())
            .client(config)
            .http_policy(HttpPolicy::allowing_loopback())
            .build()
    };
    let grant = || {
        IdentityAssertionGrant::new(
            "http://127.0.0.1:9/token",
            SecretString::from("id-token"),
            CLIENT,
            SecretString::from(CLIENT_SECRET),
        )
        .unwrap()
    };
    let issuer = IssuerId::new("https://as.example").unwrap();
    // Undeclared credentials need the explicit opt-in.
    assert!(matches!(
        build(ClientConfig::default().with_identity_assertion(grant())),
        Err(AuthError::Config(_))
    ));
    assert!(matches!(
        build(
            ClientConfig::default().with_jwt_bearer(JwtBearerGrant::new(SecretString::from("a")))
        ),
        Err(AuthError::Config(_))
    ));
    assert!(
        build(
            ClientConfig::default()
                .allowing_undeclared_secret_issuer()
                .with_jwt_bearer(JwtBearerGrant::new(SecretString::from("a")))
        )
        .is_ok()
    );
    assert!(
        build(ClientConfig::default().with_identity_assertion(grant().with_issuer(issuer.clone())))
            .is_ok()
    );
    // One grant mode at a time.
    assert!(matches!(
        build(
            ClientConfig::default()
                .with_identity_assertion(grant().with_issuer(issuer.clone()))
                .with_jwt_bearer(
                    JwtBearerGrant::new(SecretString::from("a")).with_issuer(issuer.clone())
                )
        ),
        Err(AuthError::Config(_))
    ));
    // The IdP endpoint must pass the HTTP policy (plain http to loopback only when allowed).
    let strict = McpAuth::builder(memory())
        .client(ClientConfig::default().with_identity_assertion(grant().with_issuer(issuer)))
        .build();
    assert!(matches!(strict, Err(AuthError::Config(_))), "{strict:?}");
    assert!(
        IdentityAssertionGrant::new(
            "not a url",
            SecretString::from("t"),
            CLIENT,
            SecretString::from("s")
        )
        .is_err()
    );
}

// ----- secrets ---------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Subject token, ID-JAG, workload assertion, client secret and access tokens never appear in
/// `Debug` output, error messages or a TRACE log of both flows (failures included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_not_printed_or_traced() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let idp = IdentityProvider::start(IdpConfig::default()).await.unwrap();
    let as1 = ema_auth_server(&idp, Duration::from_secs(3600)).await;
    let mcp = mcp_for(&as1).await;
    let id_token = idp.id_token("alice@example.com");
    let grant = ema_grant(&idp, id_token.clone()).with_issuer(issuer_of(&as1));
    let auth = engine_with(
        memory(),
        ClientConfig::default().with_identity_assertion(grant.clone()),
    );
    assert_eq!(call_with_recovery(&auth, &mcp).await.unwrap(), 200);
    let refused = engine_with(
        memory(),
        ClientConfig::default().with_identity_assertion(
            ema_grant(&idp, idp.expired_id_token("bob@example.com")).with_issuer(issuer_of(&as1)),
        ),
    );
    let refused_error = refused.access_token(&resource(&mcp)).await.unwrap_err();

    let key = TestJwtKey::generate();
    let as2 = workload_auth_server(&key, Duration::from_secs(3600)).await;
    let mcp2 = mcp_for(&as2).await;
    let workload = workload_jwt(&key, &as2.issuer(), 300);
    let wif = JwtBearerGrant::new(SecretString::from(workload.clone()))
        .with_client_id("workload-client")
        .with_issuer(issuer_of(&as2));
    let wif_auth = engine_with(
        memory(),
        ClientConfig::default().with_jwt_bearer(wif.clone()),
    );
    assert_eq!(call_with_recovery(&wif_auth, &mcp2).await.unwrap(), 200);
    let bad_workload = workload_jwt(&key, "https://wrong.example", 300);
    let wif_refused = wif_engine(&as2, SecretString::from(bad_workload.clone()));
    let wif_error = wif_refused
        .access_token(&resource(&mcp2))
        .await
        .unwrap_err();

    let mut secrets = vec![id_token, CLIENT_SECRET.to_owned(), workload, bad_workload];
    secrets.extend(as1.issued_tokens());
    secrets.extend(as2.issued_tokens());
    for r in as1.requests() {
        secrets.extend(r.form.get("assertion").cloned());
    }
    let printed = [
        format!("{grant:?}"),
        format!("{wif:?}"),
        format!(
            "{:?}",
            ClientConfig::default().with_identity_assertion(grant.clone())
        ),
        format!("{:?}", ClientConfig::default().with_jwt_bearer(wif.clone())),
        format!("{auth:?}"),
        format!("{wif_auth:?}"),
        format!("{refused_error} {refused_error:?}"),
        format!("{wif_error} {wif_error:?}"),
    ];
    let trace = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        trace.contains("identity assertion grant succeeded"),
        "nothing was traced:\n{trace}"
    );
    assert!(secrets.len() >= 6, "{}", secrets.len());
    for secret in &secrets {
        for text in printed.iter().chain(std::iter::once(&trace)) {
            assert!(
                !text.contains(secret.as_str()),
                "a secret leaked into: {text}"
            );
        }
    }
    // Not vacuous: the configured client is visible.
    assert!(printed[0].contains(CLIENT));
}
