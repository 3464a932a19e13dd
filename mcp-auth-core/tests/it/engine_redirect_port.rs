//! The loopback redirect port of a dynamic registration: reused exactly at every login (some
//! authorization servers match redirect URIs character for character), and replaced by a new
//! registration when another program holds it — unless that would cut off another MCP server's
//! login at the same authorization server.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{auth_server, mcp_server, memory, resource};
use mcp_auth_core::{
    AuthError, Authorizer, ClientConfig, CredentialStore, Expect, HttpPolicy, IssuerId,
    LoopbackAuthorizer, McpAuth, TokenKey,
};
use mcp_auth_testkit::{AuthServer, Endpoint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use url::Url;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One plain GET; returns the status and the `Location` header.
async fn get(url: &Url) -> (u16, Option<String>) {
    let host = url.host_str().unwrap();
    let port = url.port_or_known_default().unwrap();
    let mut stream = tokio::net::TcpStream::connect((host, port)).await.unwrap();
    let target = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let location = text.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("location")
            .then(|| value.trim().to_owned())
    });
    (status, location)
}

/// A user's browser: loads the authorization URL and follows its redirects (to the loopback
/// listener).
fn browser() -> Arc<dyn Authorizer> {
    Arc::new(LoopbackAuthorizer::new(
        |url| {
            let mut url = url.clone();
            tokio::spawn(async move {
                for _ in 0..5 {
                    match get(&url).await {
                        (300..=399, Some(next)) => url = url.join(&next).unwrap(),
                        _ => break,
                    }
                }
            });
        },
        Duration::from_secs(20),
    ))
}

fn engine_on(store: Arc<dyn CredentialStore>, port: u16) -> McpAuth {
    McpAuth::builder(store)
        .client(
            ClientConfig::default().with_redirect_uri(format!("http://127.0.0.1:{port}/callback")),
        )
        .http_policy(HttpPolicy::allowing_loopback())
        .authorizer(browser())
        .build()
        .unwrap()
}

async fn exact_as() -> AuthServer {
    auth_server(|c| {
        c.exact_redirect_uris = true;
        c.dcr_token_endpoint_auth_method = "none".to_owned();
    })
    .await
}

/// The redirect URIs of the registration stored for `as_`.
async fn registered_ports(store: &Arc<dyn CredentialStore>, as_: &AuthServer) -> Vec<u16> {
    let issuer = IssuerId::new(as_.issuer()).unwrap();
    let registration = store.get_registration(&issuer).await.unwrap().unwrap();
    registration
        .value
        .redirect_uris
        .iter()
        .map(|u| Url::parse(u).unwrap().port().unwrap())
        .collect()
}

async fn forget_tokens(
    store: &Arc<dyn CredentialStore>,
    as_: &AuthServer,
    mcp: &mcp_auth_testkit::McpServer,
) {
    let key = TokenKey::new(IssuerId::new(as_.issuer()).unwrap(), resource(mcp));
    assert!(store.delete_tokens(&key, Expect::Any).await.unwrap());
}

#[tokio::test]
async fn a_dynamic_registration_keeps_its_redirect_port_across_logins() {
    let as1 = exact_as().await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let store = memory();
    let (first, second) = (free_port(), free_port());
    engine_on(store.clone(), first)
        .authorize(&resource(&mcp))
        .await
        .unwrap();
    assert_eq!(registered_ports(&store, &as1).await, [first]);

    // The next login is configured with another port (a new process, a changed default): the
    // registered one is still free, so it is used exactly and no client is registered again.
    forget_tokens(&store, &as1, &mcp).await;
    engine_on(store.clone(), second)
        .authorize(&resource(&mcp))
        .await
        .unwrap();
    assert_eq!(as1.count(Endpoint::Register), 1);
    assert_eq!(registered_ports(&store, &as1).await, [first]);
    let ports: Vec<String> = as1
        .requests()
        .iter()
        .filter(|r| r.endpoint == Endpoint::Authorize)
        .filter_map(|r| r.query.get("redirect_uri").cloned())
        .collect();
    assert_eq!(ports.len(), 2);
    assert!(
        ports.iter().all(|u| u.contains(&format!(":{first}/"))),
        "{ports:?}"
    );
}

#[tokio::test]
async fn a_taken_registered_port_means_a_new_registration_on_the_configured_one() {
    let as1 = exact_as().await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let store = memory();
    let (first, second) = (free_port(), free_port());
    engine_on(store.clone(), first)
        .authorize(&resource(&mcp))
        .await
        .unwrap();

    forget_tokens(&store, &as1, &mcp).await;
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", first)).unwrap();
    engine_on(store.clone(), second)
        .authorize(&resource(&mcp))
        .await
        .unwrap();
    assert_eq!(as1.count(Endpoint::Register), 2);
    assert_eq!(registered_ports(&store, &as1).await, [second]);
}

#[tokio::test]
async fn no_new_registration_while_another_servers_tokens_may_belong_to_the_old_client() {
    let as1 = exact_as().await;
    let mcp1 = mcp_server(vec![as1.clone()], |_| {}).await;
    let mcp2 = mcp_server(vec![as1.clone()], |_| {}).await;
    let store = memory();
    let (first, second) = (free_port(), free_port());
    let auth = engine_on(store.clone(), first);
    auth.authorize(&resource(&mcp1)).await.unwrap();
    auth.authorize(&resource(&mcp2)).await.unwrap();
    assert_eq!(as1.count(Endpoint::Register), 1);

    forget_tokens(&store, &as1, &mcp1).await;
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", first)).unwrap();
    let err = engine_on(store.clone(), second)
        .authorize(&resource(&mcp1))
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::Authorizer(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{first}")), "{text}");
    assert_eq!(as1.count(Endpoint::Register), 1);
    assert_eq!(registered_ports(&store, &as1).await, [first]);
    // The other server's login is untouched.
    let key2 = TokenKey::new(IssuerId::new(as1.issuer()).unwrap(), resource(&mcp2));
    assert!(store.get_tokens(&key2).await.unwrap().is_some());
}
