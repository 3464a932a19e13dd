//! Wire-visible MCP authorization requirements (SPEC.md R-numbers), each observed in the
//! testkit's request logs.

use crate::common::*;
use mcp_auth_core::{AuthError, ClientConfig, ExposeSecret};
use mcp_auth_testkit::{Endpoint, PrmLocation};

/// R1: a 401 with `resource_metadata` → PRM fetched from exactly that URL, with no probe first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r01_prm_from_the_challenge_url() {
    let as1 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as1.clone()], |c| {
        c.prm_location = PrmLocation::Custom("/meta/prm.json".into())
    })
    .await;
    let auth = engine(memory());
    let (status, header) = call(&mcp, &"not-a-token".to_owned().into()).await;
    assert_eq!(status, 401);
    mcp.clear_requests();
    let token = auth
        .handle_unauthorized(&resource(&mcp), header.as_deref())
        .await
        .unwrap();
    let prm: Vec<_> = mcp
        .requests()
        .into_iter()
        .filter(|r| r.is_prm || r.path.contains("prm"))
        .collect();
    assert_eq!(prm.len(), 1, "{prm:?}");
    assert_eq!(prm[0].path, "/meta/prm.json");
    assert_eq!(call(&mcp, &token).await.0, 200);
}

/// R2: no `resource_metadata` → path-suffixed well-known first, then the root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r02_well_known_probe_order() {
    let as1 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as1.clone()], |c| {
        c.prm_location = PrmLocation::Root;
        c.resource_metadata_in_header = false;
    })
    .await;
    let auth = engine(memory());
    auth.access_token(&resource(&mcp)).await.unwrap();
    let paths: Vec<String> = mcp
        .requests()
        .into_iter()
        .filter(|r| r.is_prm)
        .map(|r| r.path)
        .collect();
    assert_eq!(
        paths,
        vec![
            "/.well-known/oauth-protected-resource/mcp".to_owned(),
            "/.well-known/oauth-protected-resource".to_owned()
        ]
    );
}

/// R5: AS metadata probe order for an issuer with a path (RFC 8414, OIDC insert, OIDC append).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r05_metadata_probe_order() {
    let as1 = auth_server(|c| {
        c.issuer_path = "/tenant1".into();
        c.serve_oauth_metadata = false;
        c.serve_oidc_metadata = true;
    })
    .await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    engine(memory())
        .access_token(&resource(&mcp))
        .await
        .unwrap();
    let paths: Vec<String> = as1
        .requests()
        .into_iter()
        .take_while(|r| r.endpoint != Endpoint::Register && r.endpoint != Endpoint::Authorize)
        .map(|r| r.path)
        .collect();
    assert_eq!(
        paths,
        vec![
            "/.well-known/oauth-authorization-server/tenant1".to_owned(),
            "/.well-known/openid-configuration/tenant1".to_owned(),
        ],
        "the OIDC path-insertion document answers second, so probing stops there"
    );
}

/// R8, R14, R22, R23: PKCE S256 (the AS verifies the verifier), `resource` on /authorize and
/// /token, `application_type` and loopback redirect URIs in the registration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r08_r14_r22_r23_authorization_request_shape() {
    let as1 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    engine(memory())
        .access_token(&resource(&mcp))
        .await
        .unwrap();
    let reqs = as1.requests();
    let register = reqs
        .iter()
        .find(|r| r.endpoint == Endpoint::Register)
        .unwrap();
    let body = register.json.as_ref().unwrap();
    assert_eq!(body["application_type"], "native");
    for uri in body["redirect_uris"].as_array().unwrap() {
        assert!(
            uri.as_str().unwrap().starts_with("http://127.0.0.1"),
            "{uri}"
        );
    }
    let authorize = reqs
        .iter()
        .find(|r| r.endpoint == Endpoint::Authorize)
        .unwrap();
    assert_eq!(
        authorize
            .query
            .get("code_challenge_method")
            .map(String::as_str),
        Some("S256")
    );
    assert_eq!(
        authorize.query.get("code_challenge").map(String::len),
        Some(43)
    );
    assert_eq!(authorize.query.get("resource"), Some(&mcp.url()));
    assert!(authorize.query.get("state").is_some_and(|s| s.len() >= 32));
    let token = reqs.iter().find(|r| r.endpoint == Endpoint::Token).unwrap();
    assert_eq!(
        token.status, 200,
        "the AS rejected the PKCE verifier or the exchange"
    );
    assert_eq!(token.form.get("resource"), Some(&mcp.url()));
    assert!(token.form.contains_key("code_verifier"));
}

/// R15: the client's own key for a server is its canonical URI (lowercase scheme and host, no
/// bare trailing slash); the `resource` parameter is the server's published PRM `resource`,
/// byte for byte (RFC 9728 §3.3 and the conformance check `resource-parameter-matches-prm`), so
/// the server decides which form it expects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r15_canonical_resource() {
    let as1 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as1.clone()], |c| c.path = "/".into()).await;
    let r = mcp_auth_core::ResourceUri::new(mcp.url().replace("http://", "HTTP://")).unwrap();
    assert!(!r.as_str().ends_with('/'));
    assert!(r.as_str().starts_with("http://127.0.0.1:"));
    engine(memory()).access_token(&r).await.unwrap();
    let authorize = as1
        .requests()
        .into_iter()
        .find(|r| r.endpoint == Endpoint::Authorize)
        .unwrap();
    let prm = mcp
        .requests()
        .into_iter()
        .find(|r| r.is_prm && r.status == 200)
        .unwrap();
    let published = mcp.url();
    assert_eq!(
        authorize.query["resource"], published,
        "PRM fetched at {}",
        prm.path
    );
}

/// R16: without a challenge scope, every PRM `scopes_supported` is requested; R17: a
/// challenged scope is requested even if the PRM does not list it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r16_r17_scope_selection() {
    let as1 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as1.clone()], |c| {
        c.scopes_supported = Some(vec!["a".into(), "b".into()])
    })
    .await;
    engine(memory())
        .access_token(&resource(&mcp))
        .await
        .unwrap();
    let authorize = as1
        .requests()
        .into_iter()
        .find(|r| r.endpoint == Endpoint::Authorize)
        .unwrap();
    assert_eq!(
        authorize.query.get("scope").map(String::as_str),
        Some("a b")
    );

    let as2 = auth_server(|_| {}).await;
    let mcp2 = mcp_server(vec![as2.clone()], |c| {
        c.scopes_supported = Some(vec!["a".into()]);
        c.challenge_scope = Some("x".into());
    })
    .await;
    let auth = engine(memory());
    let (_, header) = call(&mcp2, &"bogus".to_owned().into()).await;
    auth.handle_unauthorized(&resource(&mcp2), header.as_deref())
        .await
        .unwrap();
    let authorize = as2
        .requests()
        .into_iter()
        .find(|r| r.endpoint == Endpoint::Authorize)
        .unwrap();
    let scopes: Vec<&str> = authorize.query["scope"].split(' ').collect();
    assert!(scopes.contains(&"x"), "{scopes:?}");
}

/// R18: 403 insufficient_scope → re-authorization with old ∪ new scopes; an endless 403 stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r18_step_up_and_its_limit() {
    let as1 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as1.clone()], |c| {
        c.scopes_supported = Some(vec!["read".into()])
    })
    .await;
    let auth = engine(memory());
    assert_eq!(call_with_recovery(&auth, &mcp).await.unwrap(), 200);
    mcp.set_required_scopes(vec!["read".into(), "write".into()]);
    assert_eq!(call_with_recovery(&auth, &mcp).await.unwrap(), 200);
    let last = as1
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.endpoint == Endpoint::Authorize)
        .unwrap();
    let scopes: Vec<&str> = last.query["scope"].split(' ').collect();
    assert!(
        scopes.contains(&"read") && scopes.contains(&"write"),
        "{scopes:?}"
    );

    // A server that keeps demanding the same scopes after they were granted: the engine gives
    // up after `max_step_up_attempts` authorizations instead of looping.
    let before = as1.count(Endpoint::Authorize);
    let header = r#"Bearer error="insufficient_scope", scope="read admin""#;
    let r = resource(&mcp);
    auth.handle_insufficient_scope(&r, header).await.unwrap();
    auth.handle_insufficient_scope(&r, header).await.unwrap();
    let err = auth.handle_insufficient_scope(&r, header).await;
    assert!(
        matches!(err, Err(AuthError::InsufficientScope { .. })),
        "{err:?}"
    );
    assert_eq!(as1.count(Endpoint::Authorize) - before, 2);
}

/// R20: pre-registered > CIMD > DCR: an AS offering CIMD and DCR gets no /register and sees the
/// document URL as client_id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r20_registration_priority() {
    let as1 = auth_server(|c| {
        c.client_id_metadata_documents = true;
        c.dynamic_registration = true;
    })
    .await;
    let cimd = serve_document("/client.json", cimd_document).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let auth = engine_with(
        memory(),
        ClientConfig::default().with_client_metadata_url(cimd.clone()),
    );
    auth.access_token(&resource(&mcp)).await.unwrap();
    assert_eq!(as1.count(Endpoint::Register), 0);
    let token = as1
        .requests()
        .into_iter()
        .find(|r| r.endpoint == Endpoint::Token)
        .unwrap();
    assert_eq!(token.client_id.as_deref(), Some(cimd.as_str()));
}

/// R25: client authentication as registered — Basic or post — only ever with this AS's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r25_client_authentication_methods() {
    for method in ["client_secret_basic", "client_secret_post", "none"] {
        let as1 = auth_server(|c| c.dcr_token_endpoint_auth_method = method.into()).await;
        let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
        let token = engine(memory())
            .access_token(&resource(&mcp))
            .await
            .unwrap();
        assert_eq!(call(&mcp, &token).await.0, 200, "{method}");
        let exchange = as1
            .requests()
            .into_iter()
            .find(|r| r.endpoint == Endpoint::Token)
            .unwrap();
        assert_eq!(exchange.status, 200, "{method}");
        assert_eq!(exchange.presented_secret, method != "none", "{method}");
    }
}

/// R30: tokens only ever travel in the Authorization header (never the query).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r30_bearer_header_only() {
    let as1 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    assert_eq!(
        call_with_recovery(&engine(memory()), &mcp).await.unwrap(),
        200
    );
    assert!(mcp.requests().iter().all(|r| !r.token_in_query));
}

/// Logout deletes the tokens and revokes them at the AS (RFC 7009).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_and_forgets() {
    let as1 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let auth = engine(memory());
    let token = auth.access_token(&resource(&mcp)).await.unwrap();
    auth.logout(&resource(&mcp)).await.unwrap();
    assert!(as1.count(Endpoint::Revoke) >= 1);
    assert_eq!(
        call(&mcp, &token).await.0,
        401,
        "the revoked token still works"
    );
    let err = auth.cached_access_token(&resource(&mcp)).await.unwrap_err();
    assert!(matches!(err, AuthError::LoginRequired { .. }));
}

/// The browser flow for people: a loopback listener receives the redirect (here a "browser"
/// that follows the authorization server's redirect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_authorizer_receives_the_callback() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let redirect = format!("http://127.0.0.1:{port}/callback");
    let as1 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let browser = mcp_auth_core::LoopbackAuthorizer::new(
        |url| {
            let url = url.clone();
            tokio::spawn(async move {
                // A browser: follows the AS's redirect to the loopback listener.
                let client = reqwest::Client::builder().no_proxy().build().unwrap();
                let _ = client.get(url).send().await;
            });
        },
        std::time::Duration::from_secs(10),
    );
    let auth = mcp_auth_core::McpAuth::builder(memory())
        .client(ClientConfig::default().with_redirect_uri(redirect))
        .http_policy(mcp_auth_core::HttpPolicy::allowing_loopback())
        .authorizer(std::sync::Arc::new(browser))
        .build()
        .unwrap();
    let token = auth.access_token(&resource(&mcp)).await.unwrap();
    assert_eq!(call(&mcp, &token).await.0, 200);
}

/// R18 under concurrency: several requests refused with the same `insufficient_scope` at once
/// step up once; the others use the token that step-up obtained (no extra authorization, no
/// attempt counted against the limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r18_concurrent_step_ups_authorize_once() {
    let as1 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as1.clone()], |c| {
        c.scopes_supported = Some(vec!["read".into()])
    })
    .await;
    let auth = std::sync::Arc::new(engine(memory()));
    assert_eq!(call_with_recovery(&auth, &mcp).await.unwrap(), 200);
    let before = as1.count(Endpoint::Authorize);
    // The step-up's token request takes 500 ms, so every caller has read the refused token
    // before the first step-up completes, even on a busy machine.
    as1.set_token_fault(mcp_auth_testkit::TokenFault::Delay(
        std::time::Duration::from_millis(500),
    ));
    let header = r#"Bearer error="insufficient_scope", scope="read write""#;
    let r = resource(&mcp);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let auth = std::sync::Arc::clone(&auth);
            let r = r.clone();
            tokio::spawn(async move { auth.handle_insufficient_scope(&r, header).await })
        })
        .collect();
    let mut tokens = std::collections::HashSet::new();
    for t in tasks {
        tokens.insert(t.await.unwrap().unwrap().expose_secret().to_owned());
    }
    assert_eq!(
        tokens.len(),
        1,
        "concurrent step-ups returned different tokens"
    );
    assert_eq!(as1.count(Endpoint::Authorize) - before, 1);
}
