//! `mcp-auth demo`: two authorization servers and protected MCP servers on loopback, a fresh
//! SQLite file, and SEP-2352 narrated step by step.

use std::sync::Arc;

use mcp_auth_core::{
    ClientConfig, CredentialStore, ExposeSecret, HttpPolicy, IssuerId, McpAuth, Namespace,
    PreRegisteredClient, RegistrationStore, ResourceUri, SecretString,
};
use mcp_auth_testkit::{AuthServer, AuthServerConfig, Endpoint, McpServer, McpServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn step(n: u32, text: &str) {
    println!("\n== {n}. {text}");
}

/// One MCP request as a host makes it, recovering through the engine on 401.
async fn call(auth: &McpAuth, mcp: &McpServer) -> Result<u16, String> {
    let resource = ResourceUri::new(mcp.url()).map_err(|e| e.to_string())?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let mut token = auth
        .access_token(&resource)
        .await
        .map_err(|e| e.to_string())?;
    for _ in 0..3 {
        let response = http
            .post(mcp.url())
            .bearer_auth(token.expose_secret())
            .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        if status != 401 {
            return Ok(status);
        }
        let header = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        println!("   MCP server answered 401; re-discovering its authorization server …");
        token = auth
            .handle_unauthorized(&resource, header.as_deref())
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(401)
}

/// Serves a Client ID Metadata Document (client_id = its own URL) on loopback.
async fn serve_cimd(redirect: &'static str) -> Result<String, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let url = format!("http://{addr}/client-metadata.json");
    let body = serde_json::json!({
        "client_id": url, "client_name": "mcp-auth demo", "redirect_uris": [redirect],
        "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    })
    .to_string();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok(url)
}

fn engine(store: Arc<dyn CredentialStore>, config: ClientConfig) -> Result<McpAuth, String> {
    // The testkit's authorization servers approve at once: no browser, the engine follows the
    // redirect itself.
    let headless = mcp_auth_core::HeadlessAuthorizer::with_policy(HttpPolicy::allowing_loopback())
        .map_err(|e| e.to_string())?;
    McpAuth::builder(store)
        .client(config)
        .http_policy(HttpPolicy::allowing_loopback())
        .authorizer(Arc::new(headless))
        .build()
        .map_err(|e| e.to_string())
}

pub(crate) async fn run() -> Result<(), String> {
    const REDIRECT: &str = "http://127.0.0.1:33418/callback";
    let io = |e: std::io::Error| e.to_string();
    let as1 = AuthServer::start(AuthServerConfig {
        client_id_metadata_documents: true,
        ..Default::default()
    })
    .await
    .map_err(io)?;
    let as2 = AuthServer::start(AuthServerConfig {
        client_id_metadata_documents: true,
        ..Default::default()
    })
    .await
    .map_err(io)?;
    let mcp = McpServer::start(McpServerConfig {
        authorization_servers: vec![as1.clone()],
        ..Default::default()
    })
    .await
    .map_err(io)?;
    let dir = tempfile::tempdir().map_err(io)?;
    let db = dir.path().join("credentials.db");
    println!("Authorization server AS1: {}", as1.issuer());
    println!("Authorization server AS2: {}", as2.issuer());
    println!("MCP server:               {} (protected by AS1)", mcp.url());
    println!("Credential store:         sqlite:{}", db.display());

    let open = |ns: &str| {
        let db = db.clone();
        let ns = ns.to_owned();
        async move {
            crate::store::open(
                Some(&format!("sqlite:{}", db.display())),
                &Namespace::new(ns).map_err(|e| e.to_string())?,
            )
            .await
        }
    };

    step(1, "A client with Dynamic Client Registration logs in");
    let dcr_store = open("dcr-client").await?;
    let dcr = engine(
        Arc::clone(&dcr_store),
        ClientConfig::default().with_redirect_uri(REDIRECT),
    )?;
    println!("   MCP request → {}", call(&dcr, &mcp).await?);
    println!(
        "   registered at AS1 as {}",
        as1.registrations()
            .first()
            .map(|c| c.client_id.clone())
            .unwrap_or_default()
    );

    step(
        2,
        "`mcp-auth token` answers from the store: no network request at all",
    );
    as1.clear_requests();
    let token = dcr
        .cached_access_token(&ResourceUri::new(mcp.url()).map_err(|e| e.to_string())?)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "   token of {} characters, AS1 requests made: {}",
        token.expose_secret().len(),
        as1.requests().len()
    );

    step(
        3,
        "The MCP server moves to AS2 (its protected resource metadata now names AS2)",
    );
    mcp.set_authorization_servers(vec![as2.clone()]);
    println!("   MCP request → {}", call(&dcr, &mcp).await?);
    println!(
        "   AS1's tokens for this server were dropped; registered at AS2 as {} (AS2 never saw AS1's client_id)",
        as2.registrations()
            .first()
            .map(|c| c.client_id.clone())
            .unwrap_or_default()
    );

    step(
        4,
        "It moves back to AS1: AS1's registration is still there, no new registration",
    );
    mcp.set_authorization_servers(vec![as1.clone()]);
    println!("   MCP request → {}", call(&dcr, &mcp).await?);
    println!(
        "   registrations: AS1 {}, AS2 {}",
        as1.registrations().len(),
        as2.registrations().len()
    );

    step(
        5,
        "A client with pre-registered AS1 credentials meets a server that moved to AS2",
    );
    mcp.set_authorization_servers(vec![as2.clone()]);
    as2.clear_requests();
    let pre_store = open("pre-registered-client").await?;
    let pre = engine(
        pre_store,
        ClientConfig::default()
            .with_redirect_uri(REDIRECT)
            .with_pre_registered(PreRegisteredClient {
                client_id: "demo-pre-registered".to_owned(),
                client_secret: Some(SecretString::from("demo-secret")),
                token_endpoint_auth_method: "client_secret_basic".to_owned(),
                issuer: Some(IssuerId::new(as1.issuer()).map_err(|e| e.to_string())?),
            }),
    )?;
    match call(&pre, &mcp).await {
        Err(e) => println!("   refused, as SEP-2352 asks: {e}"),
        Ok(status) => {
            return Err(format!(
                "the pre-registered client was not refused (status {status})"
            ));
        }
    }
    println!("   requests that reached AS2: {}", as2.requests().len());

    step(
        6,
        "A client with a Client ID Metadata Document keeps its client_id across servers",
    );
    mcp.set_authorization_servers(vec![as1.clone()]);
    let cimd_url = serve_cimd(REDIRECT).await?;
    let cimd_store = open("cimd-client").await?;
    let cimd = engine(
        Arc::clone(&cimd_store),
        ClientConfig::default()
            .with_redirect_uri(REDIRECT)
            .with_client_metadata_url(cimd_url.clone()),
    )?;
    let before = as1.registrations().len() + as2.registrations().len();
    println!("   MCP request (AS1) → {}", call(&cimd, &mcp).await?);
    mcp.set_authorization_servers(vec![as2.clone()]);
    println!(
        "   MCP request (after the move to AS2) → {}",
        call(&cimd, &mcp).await?
    );
    let at_as2 = as2
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.endpoint == Endpoint::Authorize)
        .and_then(|r| r.client_id)
        .unwrap_or_default();
    println!("   client_id presented to AS2: {at_as2}");
    println!(
        "   new registrations: {}",
        as1.registrations().len() + as2.registrations().len() - before
    );
    let kept = cimd_store
        .get_registration(&IssuerId::new(as2.issuer()).map_err(|e| e.to_string())?)
        .await
        .map_err(|e| e.to_string())?;
    if kept.map(|r| r.value.client_id) != Some(cimd_url) {
        return Err("the CIMD client did not keep its client_id".to_owned());
    }

    step(7, "`mcp-auth status` for the DCR client");
    crate::status(dcr_store.as_ref(), None, None, false)
        .await
        .map_err(|f| f.message)?;
    println!("\nDone: credentials stayed with the authorization server that issued them.");
    Ok(())
}
