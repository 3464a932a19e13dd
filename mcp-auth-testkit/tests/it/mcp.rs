//! The protected MCP server: challenges, PRM, scopes, migration, misbehaviors.
use crate::common;

use crate::common::{REDIRECT, http, mcp_call, public_tokens, www_authenticate};
use mcp_auth_testkit::{
    AuthServer, AuthServerConfig, McpMisbehavior, McpServer, McpServerConfig, PrmLocation,
};
use serde_json::{Value, json};

async fn setup(config: McpServerConfig) -> (AuthServer, McpServer) {
    let auth = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    auth.preregister_client("pub", None, "none", vec![REDIRECT.into()]);
    let mcp = McpServer::start(McpServerConfig {
        authorization_servers: vec![auth.clone()],
        ..config
    })
    .await
    .unwrap();
    (auth, mcp)
}

async fn token_for(auth: &AuthServer, mcp: &McpServer, scope: Option<&str>) -> String {
    let tok = public_tokens(auth, "pub", Some(&mcp.url()), scope).await;
    tok["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn challenge_prm_and_success() {
    let (auth, mcp) = setup(McpServerConfig {
        challenge_scope: Some("mcp:tools".into()),
        scopes_supported: Some(vec!["mcp:tools".into()]),
        ..McpServerConfig::default()
    })
    .await;
    assert!(mcp.url().ends_with("/mcp"));
    assert_eq!(
        mcp.prm_url(),
        mcp.url()
            .replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
    );

    let resp = mcp_call(&mcp, None).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        www_authenticate(&resp),
        format!(
            "Bearer resource_metadata=\"{}\", scope=\"mcp:tools\"",
            mcp.prm_url()
        )
    );
    let resp = mcp_call(&mcp, Some("bogus-token")).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        www_authenticate(&resp),
        format!(
            "Bearer error=\"invalid_token\", resource_metadata=\"{}\", scope=\"mcp:tools\"",
            mcp.prm_url()
        )
    );

    let prm: Value = http()
        .get(mcp.prm_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        prm,
        json!({
            "resource": mcp.url(),
            "authorization_servers": [auth.issuer()],
            "scopes_supported": ["mcp:tools"],
            "bearer_methods_supported": ["header"],
        })
    );
    // Other PRM locations are not served but are recognised as PRM requests.
    let root = format!("{}/.well-known/oauth-protected-resource", mcp.base_url());
    assert_eq!(http().get(&root).send().await.unwrap().status(), 404);

    let at = token_for(&auth, &mcp, Some("mcp:tools")).await;
    let resp = mcp_call(&mcp, Some(&at)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"jsonrpc": "2.0", "id": 7, "result": {}})
    );
    let resp = http().get(mcp.url()).bearer_auth(&at).send().await.unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"ok": true}));

    // Token in the query string is refused even with a valid header.
    let resp = http()
        .post(format!("{}?access_token={at}", mcp.url()))
        .bearer_auth(&at)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let log = mcp.requests();
    assert_eq!(log.len(), 7);
    assert!(!log[0].is_prm && log[0].bearer.is_none() && log[0].status == 401);
    assert_eq!(log[1].bearer.as_deref(), Some("bogus-token"));
    assert_eq!(log[1].token_issuer, None);
    assert!(log[2].is_prm && log[2].status == 200);
    assert!(log[3].is_prm && log[3].status == 404);
    assert_eq!(log[4].token_issuer.as_deref(), Some(auth.issuer().as_str()));
    assert_eq!(log[4].status, 200);
    assert_eq!(log[5].method, "GET");
    assert!(log[6].token_in_query && log[6].status == 401);
    mcp.clear_requests();
    assert!(mcp.requests().is_empty());

    let dbg = format!("{mcp:?}");
    assert!(!dbg.contains(&at), "{dbg}");
}

#[tokio::test]
async fn bare_challenge_and_prm_locations() {
    let (_auth, mcp) = setup(McpServerConfig {
        resource_metadata_in_header: false,
        prm_location: PrmLocation::Root,
        path: "/api/mcp".into(),
        ..McpServerConfig::default()
    })
    .await;
    let resp = mcp_call(&mcp, None).await;
    assert_eq!(www_authenticate(&resp), "Bearer");
    assert_eq!(
        mcp.prm_url(),
        format!("{}/.well-known/oauth-protected-resource", mcp.base_url())
    );
    assert_eq!(
        http().get(mcp.prm_url()).send().await.unwrap().status(),
        200
    );
    let suffixed = format!(
        "{}/.well-known/oauth-protected-resource/api/mcp",
        mcp.base_url()
    );
    assert_eq!(http().get(&suffixed).send().await.unwrap().status(), 404);

    let (_auth, mcp) = setup(McpServerConfig {
        prm_location: PrmLocation::Custom("/meta/prm.json".into()),
        ..McpServerConfig::default()
    })
    .await;
    assert_eq!(mcp.prm_url(), format!("{}/meta/prm.json", mcp.base_url()));
    let resp = mcp_call(&mcp, None).await;
    assert_eq!(
        www_authenticate(&resp),
        format!("Bearer resource_metadata=\"{}\"", mcp.prm_url())
    );
    let prm: Value = http()
        .get(mcp.prm_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(prm["resource"], mcp.url());
    for p in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let resp = http()
            .get(format!("{}{p}", mcp.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
    }
    let log = mcp.requests();
    assert!(log[1..].iter().all(|r| r.is_prm));
}

#[tokio::test]
async fn insufficient_scope_and_audience() {
    let (auth, mcp) = setup(McpServerConfig {
        required_scopes: vec!["read".into(), "write".into()],
        ..McpServerConfig::default()
    })
    .await;
    let at = token_for(&auth, &mcp, Some("read")).await;
    let resp = mcp_call(&mcp, Some(&at)).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(
        www_authenticate(&resp),
        format!(
            "Bearer error=\"insufficient_scope\", scope=\"read write\", resource_metadata=\"{}\"",
            mcp.prm_url()
        )
    );
    mcp.set_required_scopes(vec!["read".into()]);
    assert_eq!(mcp_call(&mcp, Some(&at)).await.status(), 200);

    // A token only in the query string is refused, but its issuer is still recorded.
    let resp = http()
        .post(format!("{}?access_token={at}", mcp.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let last = mcp.requests().pop().unwrap();
    assert!(last.token_in_query && last.bearer.is_none());
    assert_eq!(last.token_issuer.as_deref(), Some(auth.issuer().as_str()));

    // Token for another resource, or without resource: 401 invalid_token.
    let other = public_tokens(&auth, "pub", Some("http://127.0.0.1:1/mcp"), Some("read")).await;
    let resp = mcp_call(&mcp, other["access_token"].as_str()).await;
    assert_eq!(resp.status(), 401);
    assert!(www_authenticate(&resp).contains("error=\"invalid_token\""));
    let none = public_tokens(&auth, "pub", None, Some("read")).await;
    assert_eq!(
        mcp_call(&mcp, none["access_token"].as_str()).await.status(),
        401
    );

    // Expired tokens are refused.
    auth.expire_access_tokens();
    assert_eq!(mcp_call(&mcp, Some(&at)).await.status(), 401);
}

#[tokio::test]
async fn refresh_reuse_revokes_grant_at_the_resource_server() {
    let (auth, mcp) = setup(McpServerConfig::default()).await;
    let tok = public_tokens(&auth, "pub", Some(&mcp.url()), None).await;
    let rt1 = tok["refresh_token"].as_str().unwrap();
    let (status, tok2) = common::refresh(&auth, common::Auth::None("pub"), rt1, None).await;
    assert_eq!(status, 200);
    let at2 = tok2["access_token"].as_str().unwrap();
    assert_eq!(mcp_call(&mcp, Some(at2)).await.status(), 200);
    let (status, _) = common::refresh(&auth, common::Auth::None("pub"), rt1, None).await;
    assert_eq!(status, 400);
    assert!(auth.introspect(at2).unwrap().revoked);
    let resp = mcp_call(&mcp, Some(at2)).await;
    assert_eq!(resp.status(), 401);
    assert!(www_authenticate(&resp).contains("invalid_token"));
}

#[tokio::test]
async fn migration_between_authorization_servers() {
    let (old, mcp) = setup(McpServerConfig::default()).await;
    let old_at = token_for(&old, &mcp, None).await;
    assert_eq!(mcp_call(&mcp, Some(&old_at)).await.status(), 200);

    let new = AuthServer::start(AuthServerConfig {
        issuer_path: "/v2".into(),
        ..AuthServerConfig::default()
    })
    .await
    .unwrap();
    new.preregister_client("pub", None, "none", vec![REDIRECT.into()]);
    mcp.set_authorization_servers(vec![new.clone()]);
    let prm: Value = http()
        .get(mcp.prm_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(prm["authorization_servers"], json!([new.issuer()]));

    mcp.clear_requests();
    let resp = mcp_call(&mcp, Some(&old_at)).await;
    assert_eq!(resp.status(), 401);
    assert!(www_authenticate(&resp).contains("invalid_token"));
    // The log still knows who issued the stale token.
    assert_eq!(
        mcp.requests()[0].token_issuer.as_deref(),
        Some(old.issuer().as_str())
    );

    let new_at = token_for(&new, &mcp, None).await;
    assert_eq!(mcp_call(&mcp, Some(&new_at)).await.status(), 200);
    assert_eq!(
        mcp.requests()[1].token_issuer.as_deref(),
        Some(new.issuer().as_str())
    );
}

#[tokio::test]
async fn mcp_misbehaviors() {
    let (_auth, mcp) = setup(McpServerConfig::default()).await;
    let prm = || async { http().get(mcp.prm_url()).send().await.unwrap() };

    mcp.set_misbehavior(McpMisbehavior::PrmResourceMismatch);
    let doc: Value = prm().await.json().await.unwrap();
    assert_ne!(doc["resource"], mcp.url());

    mcp.set_misbehavior(McpMisbehavior::PrmAuthorizationServer(
        "http://169.254.169.254/".into(),
    ));
    let doc: Value = prm().await.json().await.unwrap();
    assert_eq!(
        doc["authorization_servers"],
        json!(["http://169.254.169.254/"])
    );

    mcp.set_misbehavior(McpMisbehavior::RawPrm("<html>".into()));
    assert_eq!(prm().await.text().await.unwrap(), "<html>");

    mcp.set_misbehavior(McpMisbehavior::HugePrm(1_000_000));
    let body = prm().await.bytes().await.unwrap();
    assert!(body.len() == 1_000_000, "{}", body.len());
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["resource"],
        mcp.url()
    );

    mcp.set_misbehavior(McpMisbehavior::RawWwwAuthenticate(
        "Bearer resource_metadata=\"http://169.254.169.254/\"".into(),
    ));
    let resp = mcp_call(&mcp, None).await;
    assert_eq!(
        www_authenticate(&resp),
        "Bearer resource_metadata=\"http://169.254.169.254/\""
    );

    mcp.set_misbehavior(McpMisbehavior::None);
    let doc: Value = prm().await.json().await.unwrap();
    assert_eq!(doc["resource"], mcp.url());
}
