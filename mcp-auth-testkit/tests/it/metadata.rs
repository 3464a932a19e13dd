//! Authorization server metadata locations and metadata misbehaviors.
use crate::common;

use std::time::{Duration, Instant};

use crate::common::http;
use mcp_auth_testkit::{AuthServer, AuthServerConfig, Endpoint, Misbehavior};
use serde_json::Value;

async fn get(url: &str) -> (u16, Option<Value>) {
    let resp = http().get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.ok())
}

#[tokio::test]
async fn root_issuer_oauth_metadata() {
    let auth = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    let iss = auth.issuer();
    assert_eq!(iss, auth.base_url());
    let (status, doc) = get(&format!(
        "{}/.well-known/oauth-authorization-server",
        auth.base_url()
    ))
    .await;
    assert_eq!(status, 200);
    let doc = doc.unwrap();
    assert_eq!(doc["issuer"], iss);
    assert_eq!(doc["authorization_endpoint"], format!("{iss}/authorize"));
    assert_eq!(doc["token_endpoint"], format!("{iss}/token"));
    assert_eq!(doc["registration_endpoint"], format!("{iss}/register"));
    assert_eq!(doc["revocation_endpoint"], format!("{iss}/revoke"));
    assert_eq!(doc["response_types_supported"], serde_json::json!(["code"]));
    assert_eq!(
        doc["grant_types_supported"],
        serde_json::json!(["authorization_code", "refresh_token"])
    );
    assert_eq!(
        doc["token_endpoint_auth_methods_supported"],
        serde_json::json!(["client_secret_basic", "client_secret_post", "none"])
    );
    assert_eq!(
        doc["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(doc["authorization_response_iss_parameter_supported"], true);
    assert!(doc.get("scopes_supported").is_none());
    assert!(doc.get("client_id_metadata_document_supported").is_none());

    // OIDC discovery is not served by default; other paths are 404.
    let (status, _) = get(&format!(
        "{}/.well-known/openid-configuration",
        auth.base_url()
    ))
    .await;
    assert_eq!(status, 404);
    let (status, _) = get(&format!("{}/nothing", auth.base_url())).await;
    assert_eq!(status, 404);
    assert_eq!(auth.count(Endpoint::Metadata), 1);
    assert_eq!(auth.count(Endpoint::Other), 2);
}

#[tokio::test]
async fn path_issuer_metadata_locations() {
    let auth = AuthServer::start(AuthServerConfig {
        issuer_path: "/tenant1".into(),
        serve_oidc_metadata: true,
        dynamic_registration: false,
        revocation: false,
        client_id_metadata_documents: true,
        scopes_supported: Some(vec!["mcp:read".into()]),
        ..AuthServerConfig::default()
    })
    .await
    .unwrap();
    let base = auth.base_url();
    let iss = auth.issuer();
    assert_eq!(iss, format!("{base}/tenant1"));
    for url in [
        format!("{base}/.well-known/oauth-authorization-server/tenant1"),
        format!("{base}/.well-known/openid-configuration/tenant1"),
        format!("{base}/tenant1/.well-known/openid-configuration"),
    ] {
        let (status, doc) = get(&url).await;
        assert_eq!(status, 200, "{url}");
        let doc = doc.unwrap();
        assert_eq!(doc["issuer"], iss);
        assert_eq!(doc["authorization_endpoint"], format!("{iss}/authorize"));
        assert!(doc.get("registration_endpoint").is_none());
        assert!(doc.get("revocation_endpoint").is_none());
        assert_eq!(doc["scopes_supported"], serde_json::json!(["mcp:read"]));
        assert_eq!(doc["client_id_metadata_document_supported"], true);
    }
    // Wrong insertion points are not served.
    for url in [
        format!("{base}/tenant1/.well-known/oauth-authorization-server"),
        format!("{base}/.well-known/oauth-authorization-server"),
        format!("{base}/.well-known/openid-configuration"),
        format!("{iss}/register"),
    ] {
        assert_eq!(get(&url).await.0, 404, "{url}");
    }
    assert_eq!(auth.count(Endpoint::Metadata), 3);
    assert_eq!(auth.count(Endpoint::Other), 4);
    assert_eq!(auth.count(Endpoint::Register), 0);
}

#[tokio::test]
async fn oidc_only_root_issuer() {
    let auth = AuthServer::start(AuthServerConfig {
        serve_oauth_metadata: false,
        serve_oidc_metadata: true,
        pkce_supported: false,
        iss_parameter_supported: false,
        ..AuthServerConfig::default()
    })
    .await
    .unwrap();
    let base = auth.base_url();
    assert_eq!(
        get(&format!("{base}/.well-known/oauth-authorization-server"))
            .await
            .0,
        404
    );
    let (status, doc) = get(&format!("{base}/.well-known/openid-configuration")).await;
    assert_eq!(status, 200);
    let doc = doc.unwrap();
    assert_eq!(doc["issuer"], auth.issuer());
    assert!(doc.get("code_challenge_methods_supported").is_none());
    assert!(
        doc.get("authorization_response_iss_parameter_supported")
            .is_none()
    );
    // POST to metadata is refused.
    let resp = http()
        .post(format!("{base}/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
}

#[tokio::test]
async fn metadata_misbehaviors() {
    let auth = AuthServer::start(AuthServerConfig {
        serve_oidc_metadata: true,
        ..AuthServerConfig::default()
    })
    .await
    .unwrap();
    let urls = [
        format!("{}/.well-known/oauth-authorization-server", auth.base_url()),
        format!("{}/.well-known/openid-configuration", auth.base_url()),
    ];
    let iss = auth.issuer();

    for url in &urls {
        auth.set_misbehavior(Misbehavior::WrongIssuerInMetadata);
        assert_eq!(get(url).await.1.unwrap()["issuer"], format!("{iss}/evil"));

        auth.set_misbehavior(Misbehavior::NoPkceSupport);
        assert!(
            get(url)
                .await
                .1
                .unwrap()
                .get("code_challenge_methods_supported")
                .is_none()
        );

        auth.set_misbehavior(Misbehavior::AuthorizationEndpoint(
            "javascript:alert(1)".into(),
        ));
        assert_eq!(
            get(url).await.1.unwrap()["authorization_endpoint"],
            "javascript:alert(1)"
        );

        auth.set_misbehavior(Misbehavior::TokenEndpoint("file:///etc/passwd".into()));
        assert_eq!(
            get(url).await.1.unwrap()["token_endpoint"],
            "file:///etc/passwd"
        );

        auth.set_misbehavior(Misbehavior::RawMetadata("{\"issuer\": ".into()));
        let resp = http().get(url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "{\"issuer\": ");

        auth.set_misbehavior(Misbehavior::RedirectMetadata(
            "http://169.254.169.254/latest".into(),
        ));
        let resp = http().get(url).send().await.unwrap();
        assert_eq!(resp.status(), 302);
        assert_eq!(resp.headers()["location"], "http://169.254.169.254/latest");

        auth.set_misbehavior(Misbehavior::HugeMetadata(2_000_000));
        let resp = http().get(url).send().await.unwrap();
        let body = resp.bytes().await.unwrap();
        assert!(body.len() == 2_000_000, "{}", body.len());
        let doc: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["issuer"], iss);
    }
    auth.set_misbehavior(Misbehavior::None);
    assert_eq!(get(&urls[0]).await.1.unwrap()["issuer"], iss);
}

#[tokio::test]
async fn slow_metadata_trickles() {
    let auth = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    auth.set_misbehavior(Misbehavior::SlowMetadata(Duration::from_millis(600)));
    let url = format!("{}/.well-known/oauth-authorization-server", auth.base_url());
    let start = Instant::now();
    let resp = http().get(&url).send().await.unwrap();
    // Headers arrive at once.
    assert!(
        start.elapsed() < Duration::from_millis(400),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(resp.status(), 200);
    let doc: Value = resp.json().await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(550),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(doc["issuer"], auth.issuer());

    // A client with a short timeout gives up.
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let err = client.get(&url).send().await.unwrap().bytes().await;
    assert!(err.is_err());
}

#[tokio::test]
async fn debug_output_hides_secrets() {
    let auth = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    auth.preregister_client(
        "c1",
        Some("super-secret-value"),
        "client_secret_basic",
        vec![common::REDIRECT.into()],
    );
    let dbg = format!("{auth:?}");
    assert!(!dbg.contains("super-secret-value"), "{dbg}");
    assert!(dbg.contains(&auth.issuer()));
}
