//! Shared fixtures for the engine tests: testkit servers, an engine over a store, and an MCP
//! client call that behaves like a real host (bearer header, 401/403 handling).
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::sync::Arc;

use mcp_auth_core::{
    AuthError, Authorizer, ClientConfig, CredentialStore, ExposeSecret, HeadlessAuthorizer,
    HttpPolicy, McpAuth, MemoryStore, ResourceUri, SecretString,
};
use mcp_auth_testkit::{AuthServer, AuthServerConfig, McpServer, McpServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const REDIRECT: &str = "http://127.0.0.1:33418/callback";

pub async fn auth_server(configure: impl FnOnce(&mut AuthServerConfig)) -> AuthServer {
    let mut config = AuthServerConfig::default();
    configure(&mut config);
    AuthServer::start(config).await.unwrap()
}

pub async fn mcp_server(
    servers: Vec<AuthServer>,
    configure: impl FnOnce(&mut McpServerConfig),
) -> McpServer {
    let mut config = McpServerConfig {
        authorization_servers: servers,
        ..McpServerConfig::default()
    };
    configure(&mut config);
    McpServer::start(config).await.unwrap()
}

pub fn resource(mcp: &McpServer) -> ResourceUri {
    ResourceUri::new(mcp.url()).unwrap()
}

/// The testkit's authorization servers approve at once: a redirect-follower completes the
/// login without a browser.
pub fn headless() -> Arc<dyn Authorizer> {
    Arc::new(HeadlessAuthorizer::with_policy(HttpPolicy::allowing_loopback()).unwrap())
}

pub fn engine_with(store: Arc<dyn CredentialStore>, config: ClientConfig) -> McpAuth {
    McpAuth::builder(store)
        .client(config.with_redirect_uri(REDIRECT))
        .http_policy(HttpPolicy::allowing_loopback())
        .authorizer(headless())
        .build()
        .unwrap()
}

pub fn engine(store: Arc<dyn CredentialStore>) -> McpAuth {
    engine_with(store, ClientConfig::default())
}

pub fn memory() -> Arc<dyn CredentialStore> {
    Arc::new(MemoryStore::new())
}

/// One MCP request with the token in the `Authorization` header. Returns the status and the
/// `WWW-Authenticate` header.
pub async fn call(mcp: &McpServer, token: &SecretString) -> (u16, Option<String>) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = client
        .post(mcp.url())
        .bearer_auth(token.expose_secret())
        .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    let header = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (response.status().as_u16(), header)
}

/// What a host does: get a token, call, and on 401/403 let the engine recover, then retry.
pub async fn call_with_recovery(auth: &McpAuth, mcp: &McpServer) -> Result<u16, AuthError> {
    let resource = resource(mcp);
    let mut token = auth.access_token(&resource).await?;
    for _ in 0..4 {
        let (status, header) = call(mcp, &token).await;
        match status {
            401 => {
                token = auth
                    .handle_unauthorized(&resource, header.as_deref())
                    .await?
            }
            403 => {
                token = auth
                    .handle_insufficient_scope(&resource, header.as_deref().unwrap_or(""))
                    .await?
            }
            other => return Ok(other),
        }
    }
    Ok(0)
}

/// Serves one fixed JSON document at every path on a loopback port (a Client ID Metadata
/// Document host). Returns its URL with `path`.
pub async fn serve_document(
    path: &str,
    make_body: impl Fn(&str) -> String + Send + 'static,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}{path}", listener.local_addr().unwrap());
    let body = make_body(&url);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = socket.read(&mut buf).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    url
}

/// A CIMD document for `url` (client_id == its own URL).
pub fn cimd_document(url: &str) -> String {
    serde_json::json!({
        "client_id": url,
        "client_name": "mcp-auth tests",
        "redirect_uris": [REDIRECT],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    })
    .to_string()
}

/// For a test store wrapping another in a field `inner`: `StoreInfo` (under `$name`) and the
/// registration, binding and pending-authorization traits, forwarded unchanged. The test writes
/// only the `TokenStore` it is about.
#[allow(unused_macros)]
macro_rules! forward_untouched_stores {
    ($ty:ty, $name:literal) => {
        impl mcp_auth_core::StoreInfo for $ty {
            fn backend_name(&self) -> &'static str {
                $name
            }
            fn capabilities(&self) -> mcp_auth_core::StoreCapabilities {
                mcp_auth_core::StoreInfo::capabilities(&self.inner)
            }
        }

        #[async_trait::async_trait]
        impl mcp_auth_core::RegistrationStore for $ty {
            async fn get_registration(
                &self,
                i: &mcp_auth_core::IssuerId,
            ) -> Result<
                Option<mcp_auth_core::Versioned<mcp_auth_core::ClientRegistration>>,
                mcp_auth_core::StoreError,
            > {
                mcp_auth_core::RegistrationStore::get_registration(&self.inner, i).await
            }
            async fn put_registration(
                &self,
                r: &mcp_auth_core::ClientRegistration,
                e: mcp_auth_core::Expect,
            ) -> Result<mcp_auth_core::Version, mcp_auth_core::StoreError> {
                mcp_auth_core::RegistrationStore::put_registration(&self.inner, r, e).await
            }
            async fn delete_registration(
                &self,
                i: &mcp_auth_core::IssuerId,
                e: mcp_auth_core::Expect,
            ) -> Result<bool, mcp_auth_core::StoreError> {
                mcp_auth_core::RegistrationStore::delete_registration(&self.inner, i, e).await
            }
            async fn list_registrations(
                &self,
            ) -> Result<Vec<mcp_auth_core::IssuerId>, mcp_auth_core::StoreError> {
                mcp_auth_core::RegistrationStore::list_registrations(&self.inner).await
            }
        }

        #[async_trait::async_trait]
        impl mcp_auth_core::BindingStore for $ty {
            async fn get_binding(
                &self,
                r: &mcp_auth_core::ResourceUri,
            ) -> Result<
                Option<mcp_auth_core::Versioned<mcp_auth_core::ResourceBinding>>,
                mcp_auth_core::StoreError,
            > {
                mcp_auth_core::BindingStore::get_binding(&self.inner, r).await
            }
            async fn put_binding(
                &self,
                b: &mcp_auth_core::ResourceBinding,
                e: mcp_auth_core::Expect,
            ) -> Result<mcp_auth_core::Version, mcp_auth_core::StoreError> {
                mcp_auth_core::BindingStore::put_binding(&self.inner, b, e).await
            }
            async fn delete_binding(
                &self,
                r: &mcp_auth_core::ResourceUri,
                e: mcp_auth_core::Expect,
            ) -> Result<bool, mcp_auth_core::StoreError> {
                mcp_auth_core::BindingStore::delete_binding(&self.inner, r, e).await
            }
            async fn list_bindings(
                &self,
            ) -> Result<Vec<mcp_auth_core::ResourceUri>, mcp_auth_core::StoreError> {
                mcp_auth_core::BindingStore::list_bindings(&self.inner).await
            }
        }

        #[async_trait::async_trait]
        impl mcp_auth_core::PendingAuthorizationStore for $ty {
            async fn insert_pending(
                &self,
                p: &mcp_auth_core::PendingAuthorization,
            ) -> Result<(), mcp_auth_core::StoreError> {
                mcp_auth_core::PendingAuthorizationStore::insert_pending(&self.inner, p).await
            }
            async fn take_pending(
                &self,
                s: &str,
            ) -> Result<Option<mcp_auth_core::PendingAuthorization>, mcp_auth_core::StoreError>
            {
                mcp_auth_core::PendingAuthorizationStore::take_pending(&self.inner, s).await
            }
        }
    };
}
