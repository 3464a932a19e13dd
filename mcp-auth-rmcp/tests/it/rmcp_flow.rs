//! rmcp's streamable-HTTP client authenticated by mcp-auth against the testkit: the first
//! request (`initialize`) is challenged, the engine authorizes, rmcp never sees the 401; a move
//! to another authorization server and a scope step-up are handled the same way.
use std::collections::HashSet;
use std::sync::Arc;

use mcp_auth_core::{HeadlessAuthorizer, HttpPolicy, McpAuth, MemoryStore, ResourceUri};
use mcp_auth_testkit::{AuthServer, AuthServerConfig, Endpoint, McpServer, McpServerConfig};
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_client_authenticates_migrates_and_steps_up() {
    let as1 = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    let as2 = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    let mcp = McpServer::start(McpServerConfig {
        authorization_servers: vec![as1.clone()],
        ..McpServerConfig::default()
    })
    .await
    .unwrap();
    let auth = Arc::new(
        McpAuth::builder(Arc::new(MemoryStore::new()))
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
        Implementation::new("rmcp-test", "1.0"),
    )
    .serve(transport)
    .await
    .expect("initialize through a 401 challenge");
    let tools = client.list_tools(None).await.unwrap();
    assert_eq!(tools.tools[0].name, "echo");
    assert_eq!(as1.registrations().len(), 1);

    // The server moves to AS2: the next request is challenged, the client re-registers there.
    mcp.set_authorization_servers(vec![as2.clone()]);
    client
        .call_tool(CallToolRequestParams::new("echo").with_arguments(serde_json::Map::new()))
        .await
        .unwrap();
    assert_eq!(as2.registrations().len(), 1);
    let as1_client = as1.registrations()[0].client_id.clone();
    assert!(
        as2.requests()
            .iter()
            .all(|r| r.client_id.as_deref() != Some(as1_client.as_str()))
    );

    // A scope the token lacks: 403 insufficient_scope → step-up → retried.
    mcp.set_required_scopes(vec!["tools:write".into()]);
    client.list_tools(None).await.unwrap();
    let last = as2
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.endpoint == Endpoint::Authorize)
        .unwrap();
    assert!(last.query["scope"].split(' ').any(|s| s == "tools:write"));

    // Every token rmcp sent went in the header, and only to the server its AS issued it for.
    let as1_tokens: HashSet<String> = as1.issued_tokens().into_iter().collect();
    let requests = mcp.requests();
    let switch = requests
        .iter()
        .position(|r| r.token_issuer.as_deref() == Some(as2.issuer().as_str()))
        .unwrap();
    for r in &requests[switch..] {
        assert!(!r.token_in_query);
        if let Some(b) = &r.bearer {
            assert!(
                !as1_tokens.contains(b),
                "an AS1 token was sent after the move"
            );
        }
    }
    client.cancel().await.unwrap();
}
