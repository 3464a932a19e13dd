//! What a new user writes, through the published API only (`mcp_auth_core`, `mcp_auth_rmcp`
//! and the rmcp it re-exports, the testkit as the remote servers): a browser login through
//! `LoopbackAuthorizer` whose opener plays the browser's part, an rmcp client over the adapter,
//! and, once the MCP server moves to another authorization server, `AuthorizationServerChanged`
//! matched out of rmcp's errors — on a live session and on a new connection's `initialize`.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mcp_auth_core::{
    AuthError, BoxError, ClientConfig as AuthConfig, HttpPolicy, IssuerId, LoopbackAuthorizer,
    McpAuth, MemoryStore, PreRegisteredClient, ResourceUri, Url,
};
use mcp_auth_rmcp::rmcp::ServiceExt;
use mcp_auth_rmcp::rmcp::model::{ClientCapabilities, ClientConfig as McpClient, Implementation};
use mcp_auth_testkit::{AuthServer, AuthServerConfig, McpServer, McpServerConfig};

/// A loopback redirect URI on a port free right now.
fn free_redirect_uri() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}/callback")
}

/// The browser: fetches the authorization URL (the testkit approves at once) and follows its
/// redirect to the loopback callback, where the authorizer's listener is waiting. Counts the
/// logins and records whether the callback page said the login was received.
fn test_browser(
    opened: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
) -> impl Fn(&Url) -> Result<(), BoxError> + Send + Sync + 'static {
    move |url| {
        opened.fetch_add(1, Ordering::SeqCst);
        let (url, received) = (url.clone(), Arc::clone(&received));
        tokio::spawn(async move {
            let page = reqwest::get(url).await.unwrap();
            if page.status() == 200
                && page
                    .text()
                    .await
                    .unwrap()
                    .contains("Authorization received")
            {
                received.fetch_add(1, Ordering::SeqCst);
            }
        });
        Ok(())
    }
}

fn mcp_client() -> McpClient {
    McpClient::new(
        ClientCapabilities::default(),
        Implementation::new("new-user", "1.0"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_user_logs_in_through_the_loopback_and_matches_a_moved_authorization_server() {
    // The remote side: the client is pre-registered at AS1 (no dynamic registration anywhere).
    let redirect = free_redirect_uri();
    let no_dcr = || AuthServerConfig {
        dynamic_registration: false,
        ..AuthServerConfig::default()
    };
    let as1 = AuthServer::start(no_dcr()).await.unwrap();
    let as2 = AuthServer::start(no_dcr()).await.unwrap();
    as1.preregister_client("new-user-app", None, "none", vec![redirect.clone()]);
    let mcp = McpServer::start(McpServerConfig {
        authorization_servers: vec![as1.clone()],
        ..McpServerConfig::default()
    })
    .await
    .unwrap();

    // The user's program.
    let (opened, received) = (Arc::default(), Arc::default());
    let browser =
        LoopbackAuthorizer::with_opener(test_browser(Arc::clone(&opened), Arc::clone(&received)));
    let auth = Arc::new(
        McpAuth::builder(Arc::new(MemoryStore::new()))
            .client(
                AuthConfig::default()
                    .with_redirect_uri(&redirect)
                    .with_pre_registered(PreRegisteredClient {
                        client_id: "new-user-app".into(),
                        client_secret: None,
                        token_endpoint_auth_method: "none".into(),
                        issuer: Some(IssuerId::new(as1.issuer()).unwrap()),
                    }),
            )
            .http_policy(HttpPolicy::allowing_loopback())
            .authorizer(Arc::new(browser))
            .build()
            .unwrap(),
    );
    let server = ResourceUri::new(mcp.url()).unwrap();
    let client = mcp_client()
        .serve(mcp_auth_rmcp::transport(Arc::clone(&auth), server.clone()))
        .await
        .expect("the first login goes through the loopback listener");
    let tools = client.list_tools(None).await.unwrap();
    assert_eq!(tools.tools[0].name, "echo");
    assert_eq!(opened.load(Ordering::SeqCst), 1, "one login, one browser");
    assert_eq!(received.load(Ordering::SeqCst), 1, "the callback page");

    // The server moves to AS2, where these credentials are not registered.
    mcp.set_authorization_servers(vec![as2.clone()]);
    let moved = |e: Option<&AuthError>| match e {
        Some(AuthError::AuthorizationServerChanged { from, to }) => {
            assert_eq!(from.as_str(), as1.issuer());
            assert_eq!(to.as_str(), as2.issuer());
        }
        other => panic!("expected AuthorizationServerChanged, got {other:?}"),
    };

    // On the live session: the request's error says why.
    let error = client.list_tools(None).await.unwrap_err();
    moved(mcp_auth_rmcp::auth_error(&error));

    // On a new connection: `initialize` fails with the reason, not only "Auth required".
    let error = mcp_client()
        .serve(mcp_auth_rmcp::transport(Arc::clone(&auth), server))
        .await
        .unwrap_err();
    moved(mcp_auth_rmcp::auth_error(&error));
    assert!(
        error.to_string().contains(as2.issuer().as_str()),
        "the message names the new server: {error}"
    );

    assert_eq!(opened.load(Ordering::SeqCst), 1, "no browser for a refusal");
    assert!(as2.requests().is_empty(), "nothing was sent to AS2");
    let _ = client.cancel().await;
}
