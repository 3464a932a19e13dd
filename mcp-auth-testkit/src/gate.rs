//! An authenticating reverse proxy: puts OAuth (tokens of testkit [`AuthServer`]s) in front of
//! any MCP server URL.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth_server::AuthServer;
use crate::util::{json_response, lock, method_not_allowed, quote};

const PRM_PREFIX: &str = "/.well-known/oauth-protected-resource";

/// Hop-by-hop headers (RFC 9110 §7.6.1) and the ones the gate sets itself.
const SKIPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "authorization",
];

/// One request the [`Gate`] received.
#[derive(Clone, Debug)]
pub struct GateRequest {
    /// HTTP method.
    pub method: String,
    /// Path (without query).
    pub path: String,
    /// Issuer of the presented bearer token, when an AS of the gate knows it.
    pub token_issuer: Option<String>,
    /// A bearer token was presented.
    pub had_bearer: bool,
    /// Status the gate answered (or relayed).
    pub status: u16,
}

struct GateInner {
    base_url: String,
    path: String,
    upstream: String,
    http: reqwest::Client,
    state: Mutex<GateState>,
}

struct GateState {
    current: Vec<AuthServer>,
    all: Vec<AuthServer>,
    requests: Vec<GateRequest>,
}

/// An authenticating reverse proxy on `127.0.0.1` in front of an upstream MCP server URL
/// (cheap to clone; clones share state).
///
/// Requests to [`Gate::url`] need `Authorization: Bearer` with an unexpired, unrevoked access
/// token issued for [`Gate::url`] by one of the current authorization servers; otherwise the
/// gate answers `401` with `WWW-Authenticate: Bearer resource_metadata="…"`. Accepted requests
/// are forwarded to the upstream (the `Authorization` header removed), and the upstream's answer
/// is streamed back unchanged, SSE included. The gate serves its own RFC 9728 metadata.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<GateInner>,
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let issuers: Vec<String> = lock(&self.inner.state)
            .current
            .iter()
            .map(AuthServer::issuer)
            .collect();
        f.debug_struct("Gate")
            .field("url", &self.url())
            .field("upstream", &self.inner.upstream)
            .field("authorization_servers", &issuers)
            .finish_non_exhaustive()
    }
}

fn push_unique(all: &mut Vec<AuthServer>, servers: &[AuthServer]) {
    for s in servers {
        if !all.iter().any(|a| a.issuer() == s.issuer()) {
            all.push(s.clone());
        }
    }
}

impl Gate {
    /// Binds `127.0.0.1:0` and forwards to `upstream` (an MCP endpoint URL such as
    /// `http://127.0.0.1:3001/mcp`); the gate's own URL has the same path.
    ///
    /// # Errors
    ///
    /// [`std::io::ErrorKind::InvalidInput`] when `upstream` is not an absolute URL; the I/O error
    /// when no port on `127.0.0.1` can be bound or the bound address cannot be read;
    /// [`std::io::ErrorKind::Other`] when the HTTP client that forwards requests cannot be built.
    pub async fn start(
        upstream: &str,
        authorization_servers: Vec<AuthServer>,
    ) -> std::io::Result<Gate> {
        let parsed = url::Url::parse(upstream)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let path = parsed.path().to_owned();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(std::io::Error::other)?;
        let mut all = Vec::new();
        push_unique(&mut all, &authorization_servers);
        let inner = Arc::new(GateInner {
            base_url: format!("http://127.0.0.1:{port}"),
            path,
            upstream: upstream.to_owned(),
            http,
            state: Mutex::new(GateState {
                current: authorization_servers,
                all,
                requests: Vec::new(),
            }),
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&inner));
        tokio::spawn(async move {
            // No Nagle delay: streamed answers are written in small pieces.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let _ = axum::serve(listener, app).await;
        });
        Ok(Gate { inner })
    }

    /// The protected URL: `http://127.0.0.1:PORT{upstream path}`.
    pub fn url(&self) -> String {
        format!("{}{}", self.inner.base_url, self.inner.path)
    }

    /// The URL of the gate's protected resource metadata.
    pub fn prm_url(&self) -> String {
        self.inner.prm_url()
    }

    /// Migration at run time: the PRM lists these ASes from now on, and tokens are accepted
    /// only if issued by one of them.
    pub fn set_authorization_servers(&self, servers: Vec<AuthServer>) {
        let mut st = lock(&self.inner.state);
        push_unique(&mut st.all, &servers);
        st.current = servers;
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<GateRequest> {
        lock(&self.inner.state).requests.clone()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        lock(&self.inner.state).requests.clear();
    }
}

impl GateInner {
    fn url(&self) -> String {
        format!("{}{}", self.base_url, self.path)
    }

    fn prm_path(&self) -> String {
        if self.path == "/" {
            PRM_PREFIX.to_owned()
        } else {
            format!("{PRM_PREFIX}{}", self.path)
        }
    }

    fn prm_url(&self) -> String {
        format!("{}{}", self.base_url, self.prm_path())
    }

    fn unauthorized(&self, error: Option<&str>) -> Response {
        let mut parts = Vec::new();
        if let Some(e) = error {
            parts.push(format!("error={}", quote(e)));
        }
        parts.push(format!("resource_metadata={}", quote(&self.prm_url())));
        let mut resp = json_response(
            StatusCode::UNAUTHORIZED,
            &json!({ "error": error.unwrap_or("unauthorized") }),
        );
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", parts.join(", "))) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        resp
    }

    fn log(&self, request: GateRequest) {
        lock(&self.state).requests.push(request);
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

async fn handle(
    State(inner): State<Arc<GateInner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let token = bearer(&headers);
    let (current, all) = {
        let st = lock(&inner.state);
        (st.current.clone(), st.all.clone())
    };
    let info = token
        .as_deref()
        .and_then(|t| all.iter().find_map(|a| a.introspect(t)));
    let mut entry = GateRequest {
        method: method.to_string(),
        path: path.clone(),
        token_issuer: info.as_ref().map(|i| i.issuer.clone()),
        had_bearer: token.is_some(),
        status: 0,
    };
    let resp = if path == inner.prm_path() {
        if method == Method::GET {
            let servers: Vec<String> = current.iter().map(AuthServer::issuer).collect();
            json_response(
                StatusCode::OK,
                &json!({
                    "resource": inner.url(),
                    "authorization_servers": servers,
                    "bearer_methods_supported": ["header"],
                }),
            )
        } else {
            method_not_allowed("GET")
        }
    } else if path.starts_with(PRM_PREFIX) {
        StatusCode::NOT_FOUND.into_response()
    } else {
        let issuers: Vec<String> = current.iter().map(AuthServer::issuer).collect();
        let url = inner.url();
        let valid = info.as_ref().is_some_and(|i| {
            !i.expired
                && !i.revoked
                && issuers.contains(&i.issuer)
                && i.resource.as_deref().is_none_or(|r| r == url)
        });
        if token.is_none() {
            inner.unauthorized(None)
        } else if !valid {
            inner.unauthorized(Some("invalid_token"))
        } else {
            forward(&inner, method, &uri, &headers, body).await
        }
    };
    entry.status = resp.status().as_u16();
    inner.log(entry);
    resp
}

async fn forward(
    inner: &GateInner,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let mut target = match url::Url::parse(&inner.upstream) {
        Ok(u) => u,
        Err(_) => return StatusCode::BAD_GATEWAY.into_response(),
    };
    target.set_path(uri.path());
    target.set_query(uri.query());
    let Ok(method) = reqwest::Method::from_bytes(method.as_str().as_bytes()) else {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    };
    let mut request = inner.http.request(method, target).body(body);
    for (name, value) in headers {
        if !SKIPPED.contains(&name.as_str()) {
            request = request.header(name.as_str(), value.as_bytes());
        }
    }
    let upstream = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            return json_response(
                StatusCode::BAD_GATEWAY,
                &json!({ "error": "bad_gateway", "detail": e.without_url().to_string() }),
            );
        }
    };
    let status =
        StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out = HeaderMap::new();
    for (name, value) in upstream.headers() {
        if SKIPPED.contains(&name.as_str()) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            out.append(n, v);
        }
    }
    let stream = futures::stream::unfold(Some(upstream), |state| async move {
        let mut response = state?;
        match response.chunk().await {
            Ok(Some(chunk)) => Some((Ok::<Bytes, std::io::Error>(chunk), Some(response))),
            Ok(None) => None,
            Err(e) => Some((Err(std::io::Error::other(e.without_url())), None)),
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    *resp.headers_mut() = out;
    resp
}
