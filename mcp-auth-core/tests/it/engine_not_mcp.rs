//! A URL that is no MCP server asking for credentials (a web site, a server that needs no
//! authorization) gets a clear error, and nothing is registered anywhere: the 2025-03-26
//! fallback (the origin taken as the authorization server) needs a `404` for the protected
//! resource metadata *and* a `401` from the MCP endpoint.

use std::sync::{Arc, Mutex};

use crate::common::{engine, memory};
use mcp_auth_core::{AuthError, ResourceUri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A site on loopback answering every GET `404` and every POST with `post_status`; records each
/// request line.
async fn site(post_status: u16) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let line = head.lines().next().unwrap_or_default().to_owned();
                let status = if line.starts_with("POST ") {
                    post_status
                } else {
                    404
                };
                record.lock().unwrap().push(line);
                let body = "<html>hello</html>";
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    (format!("http://127.0.0.1:{port}/mcp"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_that_asks_for_no_credentials_gets_no_registration() {
    for status in [200, 404, 405, 406] {
        let (url, seen) = site(status).await;
        let auth = engine(memory());
        let err = auth
            .access_token(&ResourceUri::new(&url).unwrap())
            .await
            .unwrap_err();
        assert!(
            matches!(err, AuthError::NotProtected { status: s, .. } if s == status),
            "{status}: {err:?}"
        );
        assert!(err.to_string().contains("check the URL"), "{err}");
        let lines = seen.lock().unwrap().clone();
        // Metadata lookups and one probe of the MCP endpoint; no registration, no token request,
        // no authorization-server metadata.
        assert!(
            lines.iter().all(
                |l| l.starts_with("GET /.well-known/oauth-protected-resource")
                    || l.starts_with("POST /mcp ")
            ),
            "{status}: {lines:?}"
        );
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("POST ")).count(),
            1,
            "{lines:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_401_still_gets_the_2025_03_26_fallback() {
    // The fallback goes on to the origin as the authorization server (its metadata, then the
    // 2025-03-26 default endpoints), never stopping at "not protected".
    let (url, seen) = site(401).await;
    let err = engine(memory())
        .access_token(&ResourceUri::new(&url).unwrap())
        .await
        .unwrap_err();
    assert!(!matches!(err, AuthError::NotProtected { .. }), "{err:?}");
    let lines = seen.lock().unwrap().clone();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("GET /.well-known/oauth-authorization-server")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("POST /register")),
        "{lines:?}"
    );
}
