//! DPoP (RFC 9449) end to end against the testkit's strict DPoP authorization server and
//! resource server: bound tokens, proofs per request, server nonces, stolen tokens and forged
//! proofs refused, no downgrade to Bearer.

use std::sync::Arc;

use crate::common::*;
use data_encoding::BASE64URL_NOPAD;
use mcp_auth_core::{
    AccessCredential, AuthError, Challenge, CredentialStore, DpopMode, Expect, ExposeSecret,
    IssuerId, McpAuth, Timestamp, TokenKey, TokenSet,
};
use mcp_auth_testkit::{AuthServer, DpopRejection, Endpoint, McpServer, Misbehavior, TestDpopKey};
use url::Url;

fn dpop_engine(store: Arc<dyn CredentialStore>, mode: DpopMode) -> McpAuth {
    engine_with(
        store,
        mcp_auth_core::ClientConfig::default().with_dpop(mode),
    )
}

fn key(as1: &AuthServer, mcp: &McpServer) -> TokenKey {
    TokenKey::new(IssuerId::new(as1.issuer()).unwrap(), resource(mcp))
}

async fn stored(store: &dyn CredentialStore, key: &TokenKey) -> TokenSet {
    store.get_tokens(key).await.unwrap().unwrap().value
}

/// Makes the stored access token look expired to the client.
async fn expire_locally(store: &dyn CredentialStore, key: &TokenKey) {
    let current = store.get_tokens(key).await.unwrap().unwrap();
    let mut t = current.value.clone();
    t.expires_at = Some(Timestamp::from_unix_seconds(1));
    store
        .put_tokens(key, &t, Expect::Version(current.version))
        .await
        .unwrap();
}

/// The stored DPoP private key, as a testkit signer (what a thief of the store would have).
fn stored_key(tokens: &TokenSet) -> TestDpopKey {
    let der = BASE64URL_NOPAD
        .decode(tokens.dpop_key.as_ref().unwrap().expose_secret().as_bytes())
        .unwrap();
    TestDpopKey::from_pkcs8(&der).unwrap()
}

struct Sent {
    status: u16,
    www_authenticate: Option<String>,
    dpop_nonce: Option<String>,
}

/// One `tools/list` POST with exactly these `Authorization` and `DPoP` headers.
async fn send(url: &str, authorization: &str, proof: Option<&str>) -> Sent {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut request = client
        .post(url)
        .header("authorization", authorization)
        .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}));
    if let Some(proof) = proof {
        request = request.header("dpop", proof);
    }
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    Sent {
        status: response.status().as_u16(),
        www_authenticate: header("www-authenticate"),
        dpop_nonce: header("dpop-nonce"),
    }
}

/// What a host does with a credential: `Authorization` from it, a fresh proof with the
/// server's latest nonce, and one retry on `use_dpop_nonce`. Returns the status and the
/// number of nonce retries.
async fn call_dpop(auth: &McpAuth, mcp: &McpServer, credential: &AccessCredential) -> (u16, u32) {
    let url = Url::parse(&mcp.url()).unwrap();
    let mut retries = 0;
    loop {
        let proof = credential
            .dpop_proof("POST", &url, auth.dpop_nonce(&url).as_deref())
            .unwrap();
        let sent = send(
            url.as_str(),
            credential.authorization().expose_secret(),
            proof.as_deref(),
        )
        .await;
        let asks_nonce = sent
            .www_authenticate
            .as_deref()
            .is_some_and(|h| Challenge::parse(h).is_dpop_nonce());
        if sent.status == 401 && asks_nonce && retries == 0 {
            auth.record_dpop_nonce(&url, sent.dpop_nonce.as_deref().unwrap());
            retries += 1;
            continue;
        }
        return (sent.status, retries);
    }
}

/// The MCP endpoint requests (not PRM fetches) the RS saw.
fn mcp_requests(mcp: &McpServer) -> Vec<mcp_auth_testkit::McpRequest> {
    mcp.requests().into_iter().filter(|r| !r.is_prm).collect()
}

/// DPoP AS + RS, logged in with `DpopMode::IfSupported`.
async fn logged_in(
    as_nonce: Option<&str>,
    rs_nonce: Option<&str>,
) -> (AuthServer, McpServer, Arc<dyn CredentialStore>, McpAuth) {
    let as1 = auth_server(|c| {
        c.dpop = true;
        c.dpop_nonce = as_nonce.map(str::to_owned);
    })
    .await;
    let mcp = mcp_server(vec![as1.clone()], |c| {
        c.dpop_nonce = rs_nonce.map(str::to_owned);
    })
    .await;
    let store = memory();
    let auth = dpop_engine(store.clone(), DpopMode::IfSupported);
    auth.access_credential(&resource(&mcp)).await.unwrap();
    (as1, mcp, store, auth)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_supported_gets_bound_tokens_and_every_proof_is_valid() {
    let (as1, mcp, store, auth) = logged_in(None, None).await;
    let k = key(&as1, &mcp);
    let tokens = stored(store.as_ref(), &k).await;
    assert_eq!(tokens.token_type, "DPoP");
    let jkt = stored_key(&tokens).thumbprint();
    // The AS bound the access token to the key the engine stored.
    let info = as1.introspect(tokens.access_token.expose_secret()).unwrap();
    assert_eq!(info.jkt.as_deref(), Some(jkt.as_str()));
    let token_requests: Vec<_> = as1
        .requests()
        .into_iter()
        .filter(|r| r.endpoint == Endpoint::Token)
        .collect();
    assert_eq!(token_requests.len(), 1);
    assert_eq!(token_requests[0].dpop_jkt.as_deref(), Some(jkt.as_str()));

    let credential = auth.access_credential(&resource(&mcp)).await.unwrap();
    assert!(credential.is_dpop());
    assert_eq!(credential.scheme(), "DPoP");
    assert!(
        credential
            .authorization()
            .expose_secret()
            .starts_with("DPoP ")
    );
    for _ in 0..5 {
        assert_eq!(call_dpop(&auth, &mcp, &credential).await, (200, 0));
    }

    // A refresh carries a proof by the stored key; the new tokens stay bound to it.
    expire_locally(store.as_ref(), &k).await;
    as1.clear_requests();
    let refreshed = auth.access_credential(&resource(&mcp)).await.unwrap();
    assert_ne!(
        refreshed.token().expose_secret(),
        credential.token().expose_secret()
    );
    let refresh = as1.requests();
    assert_eq!(refresh.len(), 1);
    assert_eq!(refresh[0].grant_type.as_deref(), Some("refresh_token"));
    assert_eq!(refresh[0].dpop_jkt.as_deref(), Some(jkt.as_str()));
    assert_eq!(
        as1.introspect(refreshed.token().expose_secret())
            .unwrap()
            .jkt
            .as_deref(),
        Some(jkt.as_str())
    );
    assert_eq!(call_dpop(&auth, &mcp, &refreshed).await, (200, 0));

    // Every proof the engine made was accepted: fresh jti, right htm/htu/ath, right key.
    let requests = mcp_requests(&mcp);
    assert_eq!(requests.len(), 6);
    for r in &requests {
        assert_eq!(r.status, 200);
        assert!(r.bearer.is_none() && r.dpop_token.is_some() && r.dpop_proof);
        assert_eq!(r.dpop_jkt.as_deref(), Some(jkt.as_str()));
        assert_eq!(r.dpop_rejection, None);
    }
    assert_eq!(mcp.dpop_rejections(), 0);
    assert_eq!(as1.dpop_rejections(), 0);
    assert_eq!(as1.reuse_detections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_and_resource_server_nonces_cost_one_retry_each() {
    let (as1, mcp, store, auth) = logged_in(Some("as-nonce-1"), Some("rs-nonce-1")).await;
    // The code exchange: refused once for the nonce, then accepted.
    let token_requests: Vec<_> = as1
        .requests()
        .into_iter()
        .filter(|r| r.endpoint == Endpoint::Token)
        .collect();
    assert_eq!(token_requests.len(), 2, "{token_requests:?}");
    assert_eq!(token_requests[0].status, 400);
    assert_eq!(token_requests[0].dpop_rejection, Some(DpopRejection::Nonce));
    assert_eq!(token_requests[1].status, 200);
    assert!(token_requests[1].dpop_jkt.is_some());

    let credential = auth.access_credential(&resource(&mcp)).await.unwrap();
    assert_eq!(call_dpop(&auth, &mcp, &credential).await, (200, 1));
    // The nonce is remembered.
    assert_eq!(call_dpop(&auth, &mcp, &credential).await, (200, 0));
    // A new nonce: one retry again.
    mcp.set_dpop_nonce(Some("rs-nonce-2".into()));
    assert_eq!(call_dpop(&auth, &mcp, &credential).await, (200, 1));
    let rejections: Vec<_> = mcp_requests(&mcp)
        .into_iter()
        .map(|r| r.dpop_rejection)
        .collect();
    assert_eq!(
        rejections,
        [
            Some(DpopRejection::Nonce),
            None,
            None,
            Some(DpopRejection::Nonce),
            None
        ]
    );

    // The refresh meets a new AS nonce: one retry, the refresh token is sent twice but the
    // first request was refused before it was looked at (no reuse detection).
    as1.set_dpop_nonce(Some("as-nonce-2".into()));
    expire_locally(store.as_ref(), &key(&as1, &mcp)).await;
    as1.clear_requests();
    let refreshed = auth.access_credential(&resource(&mcp)).await.unwrap();
    let statuses: Vec<_> = as1
        .requests()
        .iter()
        .map(|r| (r.status, r.dpop_rejection.clone()))
        .collect();
    assert_eq!(
        statuses,
        [(400, Some(DpopRejection::Nonce)), (200, None)],
        "{:?}",
        as1.requests()
    );
    assert_eq!(call_dpop(&auth, &mcp, &refreshed).await, (200, 0));
    assert_eq!(as1.reuse_detections(), 0);
    assert_eq!(as1.dpop_rejections(), 0);
    assert_eq!(mcp.dpop_rejections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stolen_tokens_and_forged_proofs_are_refused() {
    let (as1, mcp, store, auth) = logged_in(None, None).await;
    let tokens = stored(store.as_ref(), &key(&as1, &mcp)).await;
    let credential = auth.access_credential(&resource(&mcp)).await.unwrap();
    let token = credential.token().expose_secret().to_owned();
    let url = Url::parse(&mcp.url()).unwrap();
    let dpop_auth = format!("DPoP {token}");
    let real_key = stored_key(&tokens);
    mcp.clear_requests();

    let last_rejection = |mcp: &McpServer| mcp.requests().last().unwrap().dpop_rejection.clone();

    // A replayed proof: accepted once, refused the second time.
    let proof = credential.dpop_proof("POST", &url, None).unwrap().unwrap();
    assert_eq!(
        send(url.as_str(), &dpop_auth, Some(&proof)).await.status,
        200
    );
    let replay = send(url.as_str(), &dpop_auth, Some(&proof)).await;
    assert_eq!(replay.status, 401);
    assert!(
        replay
            .www_authenticate
            .unwrap()
            .contains("error=\"invalid_dpop_proof\"")
    );
    assert_eq!(last_rejection(&mcp), Some(DpopRejection::Replay));

    // A proof for another URL.
    let elsewhere = Url::parse(&format!("{}/other", mcp.base_url())).unwrap();
    let proof = credential
        .dpop_proof("POST", &elsewhere, None)
        .unwrap()
        .unwrap();
    assert_eq!(
        send(url.as_str(), &dpop_auth, Some(&proof)).await.status,
        401
    );
    assert_eq!(last_rejection(&mcp), Some(DpopRejection::Htu));

    // A proof for another method.
    let proof = credential.dpop_proof("GET", &url, None).unwrap().unwrap();
    assert_eq!(
        send(url.as_str(), &dpop_auth, Some(&proof)).await.status,
        401
    );
    assert_eq!(last_rejection(&mcp), Some(DpopRejection::Htm));

    // A proof by the right key without `ath` (not bound to the token).
    let unbound = real_key.proof("POST", url.as_str(), None, None);
    assert_eq!(
        send(url.as_str(), &dpop_auth, Some(&unbound)).await.status,
        401
    );
    assert_eq!(last_rejection(&mcp), Some(DpopRejection::Ath));

    // A proof bound to another token.
    let other_ath = real_key.proof("POST", url.as_str(), Some("another-token"), None);
    assert_eq!(
        send(url.as_str(), &dpop_auth, Some(&other_ath))
            .await
            .status,
        401
    );
    assert_eq!(last_rejection(&mcp), Some(DpopRejection::Ath));

    // A thief's own key: a perfect proof, for the wrong key.
    let thief = TestDpopKey::generate();
    let forged = thief.proof("POST", url.as_str(), Some(&token), None);
    assert_eq!(
        send(url.as_str(), &dpop_auth, Some(&forged)).await.status,
        401
    );
    assert_eq!(last_rejection(&mcp), Some(DpopRejection::KeyMismatch));

    // The stolen access token alone: as Bearer, and as DPoP without a proof.
    let bearer = send(url.as_str(), &format!("Bearer {token}"), None).await;
    assert_eq!(bearer.status, 401);
    let challenge = bearer.www_authenticate.unwrap();
    assert!(challenge.starts_with("DPoP "), "{challenge}");
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert_eq!(last_rejection(&mcp), Some(DpopRejection::BearerScheme));
    // (Bearer plus the victim's valid proof does not help either.)
    let proof = credential.dpop_proof("POST", &url, None).unwrap().unwrap();
    assert_eq!(
        send(url.as_str(), &format!("Bearer {token}"), Some(&proof))
            .await
            .status,
        401
    );
    assert_eq!(send(url.as_str(), &dpop_auth, None).await.status, 401);
    assert_eq!(last_rejection(&mcp), Some(DpopRejection::MissingProof));
    assert_eq!(mcp.dpop_rejections(), 9);

    // The stolen refresh token alone is useless at the AS, and cannot even revoke the grant.
    let registration = store
        .get_registration(&IssuerId::new(as1.issuer()).unwrap())
        .await
        .unwrap()
        .unwrap()
        .value;
    let token_endpoint = format!("{}/token", as1.issuer());
    let steal = |proof: Option<String>| {
        let registration = registration.clone();
        let refresh = tokens.refresh_token.clone().unwrap();
        let token_endpoint = token_endpoint.clone();
        let resource = mcp.url();
        async move {
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            let mut request = client
                .post(&token_endpoint)
                .basic_auth(
                    &registration.client_id,
                    registration
                        .client_secret
                        .as_ref()
                        .map(|s| s.expose_secret().to_owned()),
                )
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh.expose_secret()),
                    ("resource", resource.as_str()),
                ]);
            if let Some(p) = proof {
                request = request.header("dpop", p);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap();
            (status, body["error"].as_str().unwrap_or("").to_owned())
        }
    };
    assert_eq!(steal(None).await, (400, "invalid_dpop_proof".into()));
    let thief_proof = thief.proof("POST", &token_endpoint, None, None);
    assert_eq!(
        steal(Some(thief_proof)).await,
        (400, "invalid_grant".into())
    );
    assert_eq!(as1.dpop_rejections(), 2);
    assert_eq!(as1.reuse_detections(), 0);

    // The victim is unaffected: its proofs work, and its refresh token too.
    assert_eq!(call_dpop(&auth, &mcp, &credential).await, (200, 0));
    expire_locally(store.as_ref(), &key(&as1, &mcp)).await;
    let refreshed = auth.access_credential(&resource(&mcp)).await.unwrap();
    assert_eq!(call_dpop(&auth, &mcp, &refreshed).await, (200, 0));
    assert_eq!(as1.reuse_detections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_answer_to_a_bound_refresh_is_refused() {
    let (as1, mcp, store, auth) = logged_in(None, None).await;
    let k = key(&as1, &mcp);
    let before = stored(store.as_ref(), &k).await;
    as1.set_misbehavior(Misbehavior::DpopBearerDowngrade);
    expire_locally(store.as_ref(), &k).await;
    as1.clear_requests();
    let r = auth.access_token(&resource(&mcp)).await;
    assert!(
        matches!(r, Err(AuthError::DpopNotAvailable { .. })),
        "{r:?}"
    );
    // The refresh was sent with a proof; nothing was accepted in its place.
    let requests = as1.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(requests[0].dpop_jkt.is_some());
    let after = stored(store.as_ref(), &k).await;
    assert_eq!(after.token_type, "DPoP");
    assert_eq!(
        after
            .dpop_key
            .as_ref()
            .map(|k| k.expose_secret().to_owned()),
        before
            .dpop_key
            .as_ref()
            .map(|k| k.expose_secret().to_owned())
    );
    assert_eq!(
        after.access_token.expose_secret(),
        before.access_token.expose_secret()
    );
    // The next call would authorize again: that authorization must be DPoP-bound too, so the
    // server's Bearer answer is refused there as well and nothing unbound is stored.
    let again = auth.access_token(&resource(&mcp)).await;
    assert!(
        matches!(again, Err(AuthError::DpopNotAvailable { .. })),
        "{again:?}"
    );
    let still = stored(store.as_ref(), &k).await;
    assert_eq!(still.token_type, "DPoP");
    assert!(still.dpop_key.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_refuses_bearer_servers_and_bearer_answers() {
    // No DPoP in the metadata: refused before any token request.
    let as1 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let auth = dpop_engine(memory(), DpopMode::Required);
    let r = auth.access_token(&resource(&mcp)).await;
    assert!(
        matches!(r, Err(AuthError::DpopNotAvailable { .. })),
        "{r:?}"
    );
    assert_eq!(as1.count(Endpoint::Token), 0);

    // DPoP advertised, but a Bearer token in answer to the proof.
    let as2 = auth_server(|c| c.dpop = true).await;
    as2.set_misbehavior(Misbehavior::DpopBearerDowngrade);
    let mcp2 = mcp_server(vec![as2.clone()], |_| {}).await;
    let store = memory();
    let auth = dpop_engine(store.clone(), DpopMode::Required);
    let r = auth.access_token(&resource(&mcp2)).await;
    assert!(
        matches!(r, Err(AuthError::DpopNotAvailable { .. })),
        "{r:?}"
    );
    assert!(store.get_tokens(&key(&as2, &mcp2)).await.unwrap().is_none());

    // `IfSupported` takes the Bearer answer (the server's choice, RFC 9449 §5), unbound.
    let store = memory();
    let auth = dpop_engine(store.clone(), DpopMode::IfSupported);
    let credential = auth.access_credential(&resource(&mcp2)).await.unwrap();
    assert!(!credential.is_dpop());
    let tokens = stored(store.as_ref(), &key(&as2, &mcp2)).await;
    assert_eq!(tokens.token_type, "Bearer");
    assert!(tokens.dpop_key.is_none());
    assert_eq!(call(&mcp2, credential.token()).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_keeps_bearer_tokens_at_a_dpop_server() {
    let as1 = auth_server(|c| c.dpop = true).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let store = memory();
    let auth = engine(store.clone());
    let credential = auth.access_credential(&resource(&mcp)).await.unwrap();
    assert!(!credential.is_dpop());
    assert_eq!(
        credential
            .dpop_proof("POST", &Url::parse(&mcp.url()).unwrap(), None)
            .unwrap(),
        None
    );
    assert!(
        as1.requests()
            .iter()
            .all(|r| !r.dpop_proof && r.dpop_jkt.is_none())
    );
    let tokens = stored(store.as_ref(), &key(&as1, &mcp)).await;
    assert_eq!(tokens.token_type, "Bearer");
    assert!(
        as1.introspect(tokens.access_token.expose_secret())
            .unwrap()
            .jkt
            .is_none()
    );
    assert_eq!(call(&mcp, credential.token()).await.0, 200);
    // A Bearer token sent with the DPoP scheme is refused.
    let url = mcp.url();
    let sent = send(
        &url,
        &format!("DPoP {}", credential.token().expose_secret()),
        None,
    )
    .await;
    assert_eq!(sent.status, 401);
    assert_eq!(
        mcp.requests().last().unwrap().dpop_rejection,
        Some(DpopRejection::UnboundToken)
    );
}
