//! The device authorization grant (RFC 8628) end to end against the testkit AS on loopback.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use mcp_auth_core::{
    AuthError, DeviceCode, ExposeSecret, McpAuth, ResourceUri, SecretString, TokenKey, TokenStore,
};
use mcp_auth_testkit::{AuthServer, AuthServerConfig, Endpoint};

const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

fn device(c: &mut AuthServerConfig) {
    c.device_authorization = true;
    c.device_interval = Duration::from_secs(1);
}

/// Runs a device login; `act(server, user_code, polls_seen)` plays the user and is called
/// every few milliseconds until it returns true.
async fn device_login(
    auth: &McpAuth,
    resource: &ResourceUri,
    server: &AuthServer,
    mut act: impl FnMut(&AuthServer, &str, usize) -> bool + Send + 'static,
) -> (Result<SecretString, AuthError>, DeviceCode) {
    let (tx, rx) = tokio::sync::oneshot::channel::<String>();
    let user = {
        let server = server.clone();
        tokio::spawn(async move {
            let Ok(code) = rx.await else { return };
            loop {
                let polls = server.device_polls(&code).map_or(0, |p| p.times.len());
                if act(&server, &code, polls) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let shown: Arc<Mutex<Option<DeviceCode>>> = Arc::default();
    let tx = Mutex::new(Some(tx));
    let result = {
        let shown = Arc::clone(&shown);
        auth.authorize_device(resource, None, move |code| {
            *shown.lock().unwrap() = Some(code.clone());
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(code.user_code.clone());
            }
        })
        .await
    };
    user.abort();
    let shown = shown
        .lock()
        .unwrap()
        .clone()
        .expect("the user was shown a code");
    (result, shown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_login_succeeds_after_the_user_approves() {
    let server = auth_server(device).await;
    let mcp = mcp_server(vec![server.clone()], |_| {}).await;
    let auth = engine(memory());
    let res = resource(&mcp);
    let (result, shown) = device_login(&auth, &res, &server, |s, code, polls| {
        polls >= 2 && s.approve_device(code)
    })
    .await;
    let token = result.unwrap();
    assert!(shown.verification_uri.starts_with(&server.issuer()));
    assert!(
        shown
            .verification_uri_complete
            .as_deref()
            .is_some_and(|u| u.contains(&shown.user_code))
    );
    assert_eq!(shown.interval, Duration::from_secs(1));
    let polls = server.device_polls(&shown.user_code).unwrap();
    assert_eq!(polls.times.len(), 3, "two pending polls, then the tokens");
    assert_eq!(polls.too_early, 0);
    assert_eq!(call(&mcp, &token).await.0, 200);

    // The registration asked for the device grant; the device request carried the resource.
    let requests = server.requests();
    let reg = requests
        .iter()
        .find(|r| r.endpoint == Endpoint::Register)
        .unwrap();
    let grants = reg.json.as_ref().unwrap()["grant_types"]
        .as_array()
        .unwrap();
    assert!(grants.iter().any(|g| g == DEVICE_GRANT), "{grants:?}");
    assert!(grants.iter().any(|g| g == "authorization_code"));
    let dev = requests
        .iter()
        .find(|r| r.endpoint == Endpoint::DeviceAuthorization)
        .unwrap();
    assert_eq!(
        dev.form.get("resource").map(String::as_str),
        Some(mcp.url().as_str())
    );
    assert!(dev.client_id.is_some());
    let polls: Vec<_> = requests
        .iter()
        .filter(|r| r.grant_type.as_deref() == Some(DEVICE_GRANT))
        .collect();
    assert!(
        polls
            .iter()
            .all(|r| r.form.get("resource") == dev.form.get("resource"))
    );

    // Stored like any login: a refresh token, and the next call needs no request.
    let issuer = mcp_auth_core::IssuerId::new(server.issuer()).unwrap();
    let stored = auth
        .store()
        .get_tokens(&TokenKey::new(issuer, res.clone()))
        .await
        .unwrap()
        .unwrap();
    assert!(stored.value.refresh_token.is_some());
    let before = server.requests().len();
    let again = auth.access_token(&res).await.unwrap();
    assert_eq!(again.expose_secret(), token.expose_secret());
    assert_eq!(server.requests().len(), before);
}

/// The code flow still works at a device-capable AS (its registration asks for both grants).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_flow_still_works_at_a_device_capable_server() {
    let server = auth_server(device).await;
    let mcp = mcp_server(vec![server.clone()], |_| {}).await;
    let auth = engine(memory());
    assert_eq!(call_with_recovery(&auth, &mcp).await.unwrap(), 200);
    assert_eq!(server.count(Endpoint::DeviceAuthorization), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_login_honours_slow_down() {
    let server = auth_server(device).await;
    let mcp = mcp_server(vec![server.clone()], |_| {}).await;
    let auth = engine(memory());
    let mut forced = false;
    let (result, shown) = device_login(&auth, &resource(&mcp), &server, move |s, code, polls| {
        if polls >= 1 && !forced {
            // The second poll is answered slow_down.
            s.force_device_slow_down(1);
            forced = true;
        }
        polls >= 2 && s.approve_device(code)
    })
    .await;
    result.unwrap();
    let polls = server.device_polls(&shown.user_code).unwrap();
    assert_eq!(polls.times.len(), 3, "pending, slow_down, tokens");
    assert_eq!(polls.slow_downs, 1);
    assert_eq!(
        polls.too_early, 0,
        "no poll came sooner than the interval in force"
    );
    let first = polls.times[1] - polls.times[0];
    let second = polls.times[2] - polls.times[1];
    assert!(first >= Duration::from_secs(1), "{first:?}");
    assert!(
        second >= Duration::from_secs(6),
        "the interval grew by 5 s after slow_down: {second:?}"
    );
    assert!(second > first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_login_denied_is_a_typed_error() {
    let server = auth_server(device).await;
    let mcp = mcp_server(vec![server.clone()], |_| {}).await;
    let auth = engine(memory());
    let res = resource(&mcp);
    let (result, _) = device_login(&auth, &res, &server, |s, code, polls| {
        polls >= 1 && s.deny_device(code)
    })
    .await;
    let err = result.unwrap_err();
    assert!(
        matches!(err, AuthError::DeviceAccessDenied { .. }),
        "{err:?}"
    );
    assert!(matches!(
        auth.cached_access_token(&res).await,
        Err(AuthError::LoginRequired { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_login_expires() {
    let server = auth_server(|c| {
        device(c);
        c.device_code_ttl = Duration::from_secs(2);
    })
    .await;
    let mcp = mcp_server(vec![server.clone()], |_| {}).await;
    let auth = engine(memory());
    let (result, shown) = device_login(&auth, &resource(&mcp), &server, |_, _, _| false).await;
    let err = result.unwrap_err();
    assert!(
        matches!(err, AuthError::DeviceCodeExpired { .. }),
        "{err:?}"
    );
    assert_eq!(shown.expires_in, Duration::from_secs(2));
    assert!(!err.to_string().contains("dc_"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_login_without_device_endpoint_is_a_typed_error() {
    let server = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![server.clone()], |_| {}).await;
    let auth = engine(memory());
    let err = auth
        .authorize_device(&resource(&mcp), None, |_| panic!("nothing to show"))
        .await
        .unwrap_err();
    match err {
        AuthError::DeviceFlowNotSupported { issuer } => {
            assert_eq!(issuer.as_str(), server.issuer())
        }
        other => panic!("expected DeviceFlowNotSupported, got {other:?}"),
    }
    assert_eq!(server.count(Endpoint::Token), 0);
    assert_eq!(
        server.count(Endpoint::Register),
        0,
        "no registration for nothing"
    );
}

/// SEP-2352: after the MCP server moves from AS1 to AS2, a device login at AS2 registers anew
/// and AS2 never sees AS1's client_id, secret or tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_login_at_a_new_server_never_sees_the_old_credentials() {
    let as1 = auth_server(device).await;
    let as2 = auth_server(device).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let auth = engine(memory());
    let res = resource(&mcp);
    let approve = |s: &AuthServer, code: &str, _: usize| s.approve_device(code);
    let (first, _) = device_login(&auth, &res, &as1, approve).await;
    let first = first.unwrap();
    assert!(as1.introspect(first.expose_secret()).is_some());

    mcp.set_authorization_servers(vec![as2.clone()]);
    let (second, _) = device_login(&auth, &res, &as2, approve).await;
    let second = second.unwrap();
    assert!(as2.introspect(second.expose_secret()).is_some());
    assert_eq!(call(&mcp, &second).await.0, 200);

    let as1_client = as1.registrations()[0].clone();
    let mut as1_secrets = as1.issued_tokens();
    as1_secrets.push(as1_client.client_id.clone());
    as1_secrets.extend(as1_client.client_secret.clone());
    for r in as2.requests() {
        let seen = format!("{:?} {:?} {:?} {:?}", r.query, r.form, r.json, r.client_id);
        for s in &as1_secrets {
            assert!(!seen.contains(s.as_str()), "AS2 saw an AS1 credential");
        }
    }
    assert_eq!(as2.registrations().len(), 1);
    // The old server's tokens are gone.
    let issuer1 = mcp_auth_core::IssuerId::new(as1.issuer()).unwrap();
    assert!(
        auth.store()
            .get_tokens(&TokenKey::new(issuer1, res))
            .await
            .unwrap()
            .is_none()
    );
}
