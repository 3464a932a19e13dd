//! How an authorization code is obtained: the [`Authorizer`] sends the user (or a test) to the
//! authorization URL and returns the URL the authorization server redirected back to.

use std::fmt;

use async_trait::async_trait;
use url::Url;

use super::error::AuthError;
use super::http::redact;

/// One authorization request to complete.
#[derive(Clone)]
#[non_exhaustive]
pub struct AuthorizationRequest {
    /// The full authorization URL (with `state`, PKCE challenge, `resource`, `scope`).
    pub url: Url,
    /// The redirect URI the authorization server will send the user back to.
    pub redirect_uri: String,
    /// The `state` of this request: a callback carrying any other state is not this login's
    /// answer (it may be an attacker's) and must be refused.
    pub state: String,
}

impl fmt::Debug for AuthorizationRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationRequest")
            .field("url", &redact(&self.url))
            .field("redirect_uri", &self.redirect_uri)
            .finish_non_exhaustive()
    }
}

/// Obtains the authorization response for a request: a browser and a loopback listener for
/// people, a headless redirect-follower for tests.
#[async_trait]
pub trait Authorizer: Send + Sync + fmt::Debug {
    /// Returns the callback URL (the redirect URI with `code`, `state`, `iss` or `error`).
    async fn authorize(&self, request: AuthorizationRequest) -> Result<Url, AuthError>;
}

/// Fetches the authorization URL without a browser and returns the redirect it answers with, as
/// authorization servers that approve at once do (test servers, the MCP conformance suite).
/// Follows redirects inside the authorization server up to 5 times; stops at the first one
/// pointing at the redirect URI.
#[derive(Clone)]
pub struct HeadlessAuthorizer {
    client: reqwest::Client,
}

impl HeadlessAuthorizer {
    /// A headless authorizer with a 10 s timeout.
    pub fn new() -> Result<Self, AuthError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| AuthError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { client })
    }
}

impl fmt::Debug for HeadlessAuthorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeadlessAuthorizer").finish_non_exhaustive()
    }
}

#[async_trait]
impl Authorizer for HeadlessAuthorizer {
    async fn authorize(&self, request: AuthorizationRequest) -> Result<Url, AuthError> {
        let mut current = request.url.clone();
        for _ in 0..5 {
            let response = self.client.get(current.clone()).send().await.map_err(|e| {
                AuthError::Authorizer(format!("authorization request failed: {}", e.without_url()))
            })?;
            let status = response.status();
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| current.join(l).ok());
            let Some(next) = location.filter(|_| status.is_redirection()) else {
                return Err(AuthError::Authorizer(format!(
                    "the authorization endpoint answered {status} instead of redirecting"
                )));
            };
            if next.as_str().starts_with(&request.redirect_uri) {
                return Ok(next);
            }
            if next.origin() != request.url.origin() {
                return Err(AuthError::Authorizer(format!(
                    "the authorization endpoint redirected to {} instead of the redirect URI",
                    redact(&next)
                )));
            }
            current = next;
        }
        Err(AuthError::Authorizer("too many redirects".to_owned()))
    }
}

/// The browser flow for people (RFC 8252): listens on the loopback redirect URI, hands the
/// authorization URL to `open` (which shows it or opens a browser — never through a shell), and
/// returns the first request that arrives at the redirect path.
pub struct LoopbackAuthorizer {
    open: Box<dyn Fn(&Url) + Send + Sync>,
    timeout: std::time::Duration,
}

impl LoopbackAuthorizer {
    /// `open` receives the authorization URL (print it, or open a browser with a crate such as
    /// `webbrowser`). The user has `timeout` to finish.
    pub fn new(open: impl Fn(&Url) + Send + Sync + 'static, timeout: std::time::Duration) -> Self {
        Self {
            open: Box::new(open),
            timeout,
        }
    }
}

impl fmt::Debug for LoopbackAuthorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopbackAuthorizer")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Authorizer for LoopbackAuthorizer {
    async fn authorize(&self, request: AuthorizationRequest) -> Result<Url, AuthError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let redirect = Url::parse(&request.redirect_uri)
            .map_err(|_| AuthError::Config("redirect_uri is not a URL".to_owned()))?;
        let host = redirect.host_str().unwrap_or_default();
        if redirect.scheme() != "http"
            || !(host == "127.0.0.1" || host == "[::1]" || host == "localhost")
        {
            return Err(AuthError::Config(
                "the loopback authorizer needs an http://127.0.0.1:PORT/... redirect URI"
                    .to_owned(),
            ));
        }
        let port = redirect.port_or_known_default().unwrap_or(80);
        let bind = if host == "[::1]" {
            "[::1]"
        } else {
            "127.0.0.1"
        };
        let listener = tokio::net::TcpListener::bind((bind.trim_matches(['[', ']']), port))
            .await
            .map_err(|e| AuthError::Authorizer(format!("cannot listen on {bind}:{port}: {e}")))?;
        (self.open)(&request.url);
        let wait = async {
            loop {
                let (mut socket, _) = listener
                    .accept()
                    .await
                    .map_err(|e| AuthError::Authorizer(format!("callback listener failed: {e}")))?;
                let mut buf = vec![0u8; 16 * 1024];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]);
                let target = head
                    .lines()
                    .next()
                    .and_then(|line| line.split_whitespace().nth(1))
                    .unwrap_or("/")
                    .to_owned();
                let Ok(callback) = redirect.join(&target) else {
                    continue;
                };
                if callback.path() != redirect.path() {
                    let _ = socket
                        .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    continue;
                }
                let page = "<!doctype html><title>mcp-auth</title><p>Authorization received. You can close this window.</p>";
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                return Ok(callback);
            }
        };
        match tokio::time::timeout(self.timeout, wait).await {
            Ok(result) => result,
            Err(_) => Err(AuthError::Authorizer(
                "no authorization response arrived in time".to_owned(),
            )),
        }
    }
}
