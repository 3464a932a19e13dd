//! The RFC 8628 device authorization grant of the mock AS, driven by hand.

use std::time::Duration;

use crate::common::http;
use mcp_auth_testkit::{AuthServer, AuthServerConfig, Endpoint};
use serde_json::Value;

const GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

async fn post(url: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let resp = http().post(url).form(form).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn device_grant_is_strict() {
    let auth = AuthServer::start(AuthServerConfig {
        device_authorization: true,
        device_interval: Duration::from_secs(1),
        ..AuthServerConfig::default()
    })
    .await
    .unwrap();
    let iss = auth.issuer();
    auth.preregister_client("pub", None, "none", vec![]);
    let resp = http()
        .get(auth.metadata_url())
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        resp["device_authorization_endpoint"],
        format!("{iss}/device_authorization")
    );
    let resource = "https://mcp.example/mcp";
    let (status, dev) = post(
        &format!("{iss}/device_authorization"),
        &[("client_id", "pub"), ("resource", resource)],
    )
    .await;
    assert_eq!(status, 200, "{dev}");
    assert_eq!(auth.count(Endpoint::DeviceAuthorization), 1);
    assert_eq!(dev["interval"], 1);
    let code = dev["device_code"].as_str().unwrap();
    let user = dev["user_code"].as_str().unwrap();
    let token = format!("{iss}/token");
    let poll = [
        ("grant_type", GRANT),
        ("client_id", "pub"),
        ("device_code", code),
        ("resource", resource),
    ];
    let (_, r) = post(&token, &poll).await;
    assert_eq!(r["error"], "authorization_pending");
    // At once again: too early.
    let (_, r) = post(&token, &poll).await;
    assert_eq!(r["error"], "slow_down");
    let polls = auth.device_polls(user).unwrap();
    assert_eq!((polls.too_early, polls.slow_downs), (1, 1));
    // Another resource, another client: refused.
    let (_, r) = post(
        &token,
        &[
            ("grant_type", GRANT),
            ("client_id", "pub"),
            ("device_code", code),
            ("resource", "https://other.example/"),
        ],
    )
    .await;
    assert_eq!(r["error"], "invalid_target");
    assert!(auth.approve_device(user));
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (status, r) = post(&token, &poll).await;
    assert_eq!(status, 200, "{r}");
    assert!(r["refresh_token"].is_string());
    let info = auth
        .introspect(r["access_token"].as_str().unwrap())
        .unwrap();
    assert_eq!(info.resource.as_deref(), Some(resource));
    // Single use.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (_, r) = post(&token, &poll).await;
    assert_eq!(r["error"], "invalid_grant");
}
