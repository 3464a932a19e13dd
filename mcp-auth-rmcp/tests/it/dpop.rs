//! rmcp's streamable-HTTP client with DPoP-bound tokens (RFC 9449) against the testkit's strict
//! DPoP authorization server and resource server, both demanding nonces: every request carries
//! `Authorization: DPoP` and a valid fresh proof; the resource server's `use_dpop_nonce` is
//! answered without a new authorization.
use std::collections::HashSet;
use std::sync::Arc;

use mcp_auth_core::{
    ClientConfig as AuthConfig, DpopMode, HeadlessAuthorizer, HttpPolicy, McpAuth, MemoryStore,
    ResourceUri,
};
use mcp_auth_testkit::{
    AuthServer, AuthServerConfig, DpopRejection, Endpoint, McpServer, McpServerConfig,
};
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_client_sends_valid_dpop_proofs() {
    let as1 = AuthServer::start(AuthServerConfig {
        dpop: true,
        dpop_nonce: Some("as-nonce".into()),
        ..AuthServerConfig::default()
    })
    .await
    .unwrap();
    let mcp = McpServer::start(McpServerConfig {
        authorization_servers: vec![as1.clone()],
        dpop_nonce: Some("rs-nonce-1".into()),
        ..McpServerConfig::default()
    })
    .await
    .unwrap();
    let auth = Arc::new(
        McpAuth::builder(Arc::new(MemoryStore::new()))
            .client(AuthConfig::default().with_dpop(DpopMode::IfSupported))
            .http_policy(HttpPolicy::allowing_loopback())
            .authorizer(Arc::new(
                HeadlessAuthorizer::with_policy(HttpPolicy::allowing_loopback()).unwrap(),
            ))
            .build()
            .unwrap(),
    );
    let transport =
        mcp_auth_rmcp::transport(Arc::clone(&auth), ResourceUri::new(mcp.url()).unwrap());
    let client = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("rmcp-dpop-test", "1.0"),
    )
    .serve(transport)
    .await
    .expect("initialize through a 401 challenge and a nonce challenge");
    let tools = client.list_tools(None).await.unwrap();
    assert_eq!(tools.tools[0].name, "echo");
    // The resource server changes its nonce: answered with one more proof, no new login.
    mcp.set_dpop_nonce(Some("rs-nonce-2".into()));
    client
        .call_tool(CallToolRequestParams::new("echo").with_arguments(serde_json::Map::new()))
        .await
        .unwrap();
    client.list_tools(None).await.unwrap();
    client.cancel().await.unwrap();

    assert_eq!(as1.registrations().len(), 1);
    assert_eq!(as1.count(Endpoint::Authorize), 1, "one authorization only");
    assert_eq!(as1.dpop_rejections(), 0);

    let requests: Vec<_> = mcp.requests().into_iter().filter(|r| !r.is_prm).collect();
    // No invalid proof, no Bearer presentation: only nonce requests were refused.
    assert_eq!(mcp.dpop_rejections(), 0, "{requests:#?}");
    let nonce_requests = requests
        .iter()
        .filter(|r| r.dpop_rejection == Some(DpopRejection::Nonce))
        .count();
    assert!(nonce_requests >= 2, "{requests:#?}");
    let mut keys = HashSet::new();
    let mut accepted = 0;
    for r in &requests {
        assert!(r.bearer.is_none(), "a token went out as Bearer: {r:?}");
        assert!(!r.token_in_query);
        if let Some(token) = &r.dpop_token {
            assert!(r.dpop_proof, "a DPoP token without a proof: {r:?}");
            let info = as1.introspect(token).unwrap();
            assert!(info.jkt.is_some());
        }
        if r.status < 300 {
            if let Some(jkt) = &r.dpop_jkt {
                keys.insert(jkt.clone());
            }
            accepted += 1;
        }
    }
    assert!(accepted >= 4, "{requests:#?}");
    assert_eq!(keys.len(), 1, "one key for every proof");
    // Every successful request that carried a token was a checked DPoP request.
    assert!(
        requests
            .iter()
            .filter(|r| r.status < 300 && r.dpop_token.is_some())
            .all(|r| r.dpop_jkt.is_some())
    );
}
