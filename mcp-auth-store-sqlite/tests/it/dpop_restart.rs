//! DPoP (RFC 9449) across a restart: the key that binds the tokens is stored with them in the
//! SQLite file, so a new process (new store, new engine) refreshes the DPoP-bound refresh token
//! with a proof by the same key, and the testkit's strict DPoP servers accept it.
use std::sync::Arc;

use mcp_auth_core::{
    AccessCredential, ClientConfig, DpopMode, Expect, ExposeSecret, HttpPolicy, IssuerId, McpAuth,
    ResourceUri, Timestamp, TokenKey, TokenStore,
};
use mcp_auth_store_sqlite::SqliteStore;
use mcp_auth_testkit::{AuthServer, AuthServerConfig, Endpoint, McpServer, McpServerConfig};

fn engine(store: SqliteStore) -> McpAuth {
    McpAuth::builder(Arc::new(store))
        .client(ClientConfig::default().with_dpop(DpopMode::IfSupported))
        .http_policy(HttpPolicy::allowing_loopback())
        .authorizer(Arc::new(
            mcp_auth_core::HeadlessAuthorizer::with_policy(
                mcp_auth_core::HttpPolicy::allowing_loopback(),
            )
            .unwrap(),
        ))
        .build()
        .unwrap()
}

/// A `tools/list` POST with the credential and a fresh proof; the status.
async fn call(mcp: &McpServer, credential: &AccessCredential) -> u16 {
    let url = reqwest::Url::parse(&mcp.url()).unwrap();
    let proof = credential.dpop_proof("POST", &url, None).unwrap().unwrap();
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(url)
        .header("authorization", credential.authorization().expose_secret())
        .header("dpop", proof)
        .header("content-type", "application/json")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpop_bound_refresh_works_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("dpop.db");
    let as1 = AuthServer::start(AuthServerConfig {
        dpop: true,
        dpop_nonce: Some("as-nonce".into()),
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
    let resource = ResourceUri::new(mcp.url()).unwrap();
    let key = TokenKey::new(IssuerId::new(as1.issuer()).unwrap(), resource.clone());

    // First process: log in, use the token.
    let (jkt, first_token) = {
        let store = SqliteStore::open(&db).await.unwrap();
        let auth = engine(store.clone());
        let credential = auth.access_credential(&resource).await.unwrap();
        assert!(credential.is_dpop());
        assert_eq!(call(&mcp, &credential).await, 200);
        let stored = store.get_tokens(&key).await.unwrap().unwrap().value;
        assert_eq!(stored.token_type, "DPoP");
        assert!(stored.dpop_key.is_some());
        let jkt = as1
            .token_jkt(stored.refresh_token.as_ref().unwrap().expose_secret())
            .expect("the refresh token is DPoP-bound");
        auth.flush().await.unwrap();
        (jkt, credential.token().expose_secret().to_owned())
    };

    // The access token expires, at the AS and in the file.
    as1.expire_access_tokens();
    {
        let store = SqliteStore::open(&db).await.unwrap();
        let current = store.get_tokens(&key).await.unwrap().unwrap();
        let mut expired = current.value.clone();
        expired.expires_at = Some(Timestamp::from_unix_seconds(1));
        store
            .put_tokens(&key, &expired, Expect::Version(current.version))
            .await
            .unwrap();
    }
    as1.clear_requests();

    // Second process: a new store and engine on the same file refresh with the stored key.
    let store = SqliteStore::open(&db).await.unwrap();
    let auth = engine(store.clone());
    let credential = auth.access_credential(&resource).await.unwrap();
    assert!(credential.is_dpop());
    assert_ne!(credential.token().expose_secret(), first_token);
    let requests = as1.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.endpoint == Endpoint::Token
                && r.grant_type.as_deref() == Some("refresh_token")),
        "only a refresh: {requests:?}"
    );
    // The AS's nonce was not known to the new process: one retry, then accepted.
    let accepted: Vec<_> = requests.iter().filter(|r| r.status == 200).collect();
    assert_eq!(accepted.len(), 1, "{requests:?}");
    assert_eq!(accepted[0].dpop_jkt.as_deref(), Some(jkt.as_str()));
    assert_eq!(as1.dpop_rejections(), 0);
    assert_eq!(as1.reuse_detections(), 0);
    assert_eq!(
        as1.introspect(credential.token().expose_secret())
            .unwrap()
            .jkt
            .as_deref(),
        Some(jkt.as_str())
    );
    assert_eq!(call(&mcp, &credential).await, 200);
    assert_eq!(mcp.dpop_rejections(), 0);
    let stored = store.get_tokens(&key).await.unwrap().unwrap().value;
    assert_eq!(stored.token_type, "DPoP");
    assert_eq!(
        as1.token_jkt(stored.refresh_token.as_ref().unwrap().expose_secret())
            .as_deref(),
        Some(jkt.as_str())
    );
}
