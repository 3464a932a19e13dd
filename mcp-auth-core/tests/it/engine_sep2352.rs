//! SEP-2352 end to end over real HTTP on loopback: credentials stay with the authorization
//! server that issued them when an MCP server moves to another one.

use std::collections::HashSet;
use std::sync::Arc;

use crate::common::*;
use mcp_auth_core::{
    AuthError, ClientConfig, IssuerId, PreRegisteredClient, RegistrationKind, RegistrationStore,
    SecretString,
};
use mcp_auth_testkit::Endpoint;

/// (a) Pre-registered credentials, PRM switches AS1 → AS2: `AuthorizationServerChanged`, and AS2
/// never receives AS1's client_id — in fact nothing at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_registered_client_refuses_a_new_authorization_server() {
    let as1 = auth_server(|c| c.dynamic_registration = false).await;
    let as2 = auth_server(|c| c.dynamic_registration = false).await;
    as1.preregister_client(
        "pre-registered-1",
        Some("pre-secret-1"),
        "client_secret_basic",
        vec![REDIRECT.into()],
    );
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let auth = engine_with(
        memory(),
        // Undeclared on purpose: this tests the binding to the first AS used.
        ClientConfig::default()
            .allowing_undeclared_secret_issuer()
            .with_pre_registered(PreRegisteredClient {
                client_id: "pre-registered-1".into(),
                client_secret: Some(SecretString::from("pre-secret-1")),
                token_endpoint_auth_method: "client_secret_basic".into(),
                issuer: None,
            }),
    );
    assert_eq!(call_with_recovery(&auth, &mcp).await.unwrap(), 200);

    mcp.set_authorization_servers(vec![as2.clone()]);
    let err = call_with_recovery(&auth, &mcp).await.unwrap_err();
    match err {
        AuthError::AuthorizationServerChanged { from, to } => {
            assert_eq!(from.as_str(), as1.issuer());
            assert_eq!(to.as_str(), as2.issuer());
        }
        other => panic!("expected AuthorizationServerChanged, got {other:?}"),
    }
    assert!(
        as2.requests()
            .iter()
            .all(|r| r.client_id.as_deref() != Some("pre-registered-1")),
        "AS2 saw AS1's client_id"
    );
    assert_eq!(as2.requests().len(), 0, "nothing at all should reach AS2");
}

/// Declared issuer: the mismatch is refused before the first request to the other AS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_pre_registered_issuer_is_checked_up_front() {
    let as1 = auth_server(|_| {}).await;
    let as2 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as2.clone()], |_| {}).await;
    let auth = engine_with(
        memory(),
        ClientConfig::default().with_pre_registered(PreRegisteredClient {
            client_id: "pre-1".into(),
            client_secret: None,
            token_endpoint_auth_method: "none".into(),
            issuer: Some(IssuerId::new(as1.issuer()).unwrap()),
        }),
    );
    let err = auth.access_token(&resource(&mcp)).await.unwrap_err();
    assert!(
        matches!(err, AuthError::AuthorizationServerChanged { .. }),
        "{err:?}"
    );
    assert_eq!(as2.requests().len(), 0);
    assert_eq!(as1.requests().len(), 0);
}

/// (b) DCR, PRM switches: exactly two registrations in total; AS2 never sees AS1's client_id or
/// any token AS1 issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_client_re_registers_at_the_new_server() {
    let as1 = auth_server(|_| {}).await;
    let as2 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let store = memory();
    let auth = engine(store.clone());
    assert_eq!(call_with_recovery(&auth, &mcp).await.unwrap(), 200);
    let as1_client = as1.registrations()[0].client_id.clone();

    mcp.set_authorization_servers(vec![as2.clone()]);
    assert_eq!(call_with_recovery(&auth, &mcp).await.unwrap(), 200);

    assert_eq!(as1.registrations().len() + as2.registrations().len(), 2);
    assert_eq!(as2.registrations().len(), 1);
    let as1_tokens: HashSet<String> = as1.issued_tokens().into_iter().collect();
    for r in as2.requests() {
        assert_ne!(
            r.client_id.as_deref(),
            Some(as1_client.as_str()),
            "AS2 saw AS1's client_id"
        );
        for v in r.form.values().chain(r.query.values()) {
            assert!(
                !as1_tokens.contains(v),
                "AS2 received a token issued by AS1"
            );
        }
    }
    // AS1's registration is intact (for a return), its tokens for this server are gone.
    let as1_id = IssuerId::new(as1.issuer()).unwrap();
    let kept = store.get_registration(&as1_id).await.unwrap().unwrap();
    assert_eq!(kept.value.client_id, as1_client);
    assert_eq!(kept.value.kind, RegistrationKind::Dynamic);
}

/// (c) CIMD, PRM switches: no registration anywhere, AS2 sees the CIMD URL as client_id, and
/// AS1's tokens never reach the MCP server again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_document_client_keeps_its_client_id() {
    let as1 = auth_server(|c| c.client_id_metadata_documents = true).await;
    let as2 = auth_server(|c| c.client_id_metadata_documents = true).await;
    let cimd = serve_document("/client.json", cimd_document).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let auth = engine_with(
        memory(),
        ClientConfig::default().with_client_metadata_url(cimd.clone()),
    );
    assert_eq!(call_with_recovery(&auth, &mcp).await.unwrap(), 200);
    let switch_at = mcp.requests().len();

    mcp.set_authorization_servers(vec![as2.clone()]);
    assert_eq!(call_with_recovery(&auth, &mcp).await.unwrap(), 200);

    assert_eq!(
        as1.count(Endpoint::Register) + as2.count(Endpoint::Register),
        0,
        "CIMD client registered"
    );
    let as2_authorize = as2
        .requests()
        .into_iter()
        .find(|r| r.endpoint == Endpoint::Authorize)
        .unwrap();
    assert_eq!(as2_authorize.client_id.as_deref(), Some(cimd.as_str()));
    let as1_tokens: HashSet<String> = as1.issued_tokens().into_iter().collect();
    let after: Vec<_> = mcp.requests().into_iter().skip(switch_at + 1).collect();
    assert!(!after.is_empty());
    for r in after {
        if let Some(bearer) = &r.bearer {
            assert!(
                !as1_tokens.contains(bearer),
                "an AS1 token was sent after the move to AS2"
            );
        }
    }
}

/// A → B → A: returning to AS1 reuses its intact registration (no third registration).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_to_the_first_server_reuses_its_registration() {
    let as1 = auth_server(|_| {}).await;
    let as2 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let auth = engine(memory());
    assert_eq!(call_with_recovery(&auth, &mcp).await.unwrap(), 200);
    mcp.set_authorization_servers(vec![as2.clone()]);
    assert_eq!(call_with_recovery(&auth, &mcp).await.unwrap(), 200);
    mcp.set_authorization_servers(vec![as1.clone()]);
    assert_eq!(call_with_recovery(&auth, &mcp).await.unwrap(), 200);
    assert_eq!(
        as1.registrations().len(),
        1,
        "AS1 was registered with twice"
    );
    assert_eq!(as2.registrations().len(), 1);
    // The AS1 client used on return is the original one.
    let first = as1.registrations()[0].client_id.clone();
    let last_token_request = as1
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.endpoint == Endpoint::Token)
        .unwrap();
    assert_eq!(
        last_token_request.client_id.as_deref(),
        Some(first.as_str())
    );
}

/// Two MCP servers on two ASes used concurrently keep separate state; a token never reaches a
/// server its AS did not issue it for (R24, R31, R9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_two_authorization_servers_stay_separate() {
    let as1 = auth_server(|_| {}).await;
    let as2 = auth_server(|_| {}).await;
    let mcp1 = mcp_server(vec![as1.clone()], |_| {}).await;
    let mcp2 = mcp_server(vec![as2.clone()], |_| {}).await;
    let auth = Arc::new(engine(memory()));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let auth = Arc::clone(&auth);
        let (mcp1, mcp2) = (mcp1.clone(), mcp2.clone());
        tasks.push(tokio::spawn(async move {
            let mcp = if i % 2 == 0 { mcp1 } else { mcp2 };
            call_with_recovery(&auth, &mcp).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 200);
    }
    assert_eq!(as1.registrations().len(), 1);
    assert_eq!(as2.registrations().len(), 1);
    for (mcp, own) in [(&mcp1, as1.issuer()), (&mcp2, as2.issuer())] {
        for r in mcp.requests() {
            if r.bearer.is_some() {
                assert_eq!(
                    r.token_issuer.as_deref(),
                    Some(own.as_str()),
                    "a token from another AS reached {}",
                    mcp.url()
                );
            }
            assert!(!r.token_in_query);
        }
    }
}

/// A new engine over the same store makes zero discovery requests before its first MCP request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_start_makes_no_discovery_requests() {
    let as1 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let store = memory();
    assert_eq!(
        call_with_recovery(&engine(store.clone()), &mcp)
            .await
            .unwrap(),
        200
    );
    as1.clear_requests();
    mcp.clear_requests();

    let restarted = engine(store.clone());
    let token = restarted.access_token(&resource(&mcp)).await.unwrap();
    assert_eq!(
        as1.requests().len(),
        0,
        "the AS was contacted on a warm start"
    );
    assert!(mcp.requests().is_empty(), "PRM was fetched on a warm start");
    assert_eq!(call(&mcp, &token).await.0, 200);
}
