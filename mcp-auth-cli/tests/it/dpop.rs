//! `mcp-auth token` never hands out a DPoP-bound token: without a proof signed by the key in the
//! store it is useless to the program that asked, so it says what to use instead.
use std::sync::Arc;

use mcp_auth_core::{ClientConfig, DpopMode, HttpPolicy, McpAuth, ResourceUri};
use mcp_auth_store_sqlite::SqliteStore;
use mcp_auth_testkit::{AuthServer, AuthServerConfig, McpServer, McpServerConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_refuses_a_dpop_bound_token_with_a_clear_message() {
    let as1 = AuthServer::start(AuthServerConfig {
        dpop: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let mcp = McpServer::start(McpServerConfig {
        authorization_servers: vec![as1.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    // A library user logged in with DPoP over the same store.
    let store = SqliteStore::open(&db).await.unwrap();
    let auth = McpAuth::builder(Arc::new(store))
        .client(ClientConfig::default().with_dpop(DpopMode::IfSupported))
        .http_policy(HttpPolicy::allowing_loopback())
        .authorizer(Arc::new(
            mcp_auth_core::HeadlessAuthorizer::with_policy(HttpPolicy::allowing_loopback())
                .unwrap(),
        ))
        .build()
        .unwrap();
    let credential = auth
        .access_credential(&ResourceUri::new(mcp.url()).unwrap())
        .await
        .unwrap();
    assert!(credential.is_dpop());
    drop(auth);

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-auth"))
        .arg("--store")
        .arg(format!("sqlite:{}", db.display()))
        .args(["--allow-http", "token", &mcp.url()])
        .env_remove("MCP_AUTH_STORE")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing on stdout");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DPoP-bound"), "{err}");
    assert!(
        !err.contains(mcp_auth_core::ExposeSecret::expose_secret(
            credential.token()
        )),
        "the token is not printed"
    );
}
