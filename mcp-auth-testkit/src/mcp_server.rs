//! The mock protected MCP server (OAuth resource server).

use std::fmt;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::auth_server::{AuthServer, TokenInfo};
use crate::dpop::{self, DpopRejection, ReplayCache};
use crate::util::{Params, json_response, lock, method_not_allowed, not_found, quote};

const PRM_PREFIX: &str = "/.well-known/oauth-protected-resource";

/// Where the protected resource metadata (RFC 9728) is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrmLocation {
    /// `/.well-known/oauth-protected-resource{mcp_path}` (path-suffixed, RFC 9728 §3.1).
    PathSuffixed,
    /// `/.well-known/oauth-protected-resource`
    Root,
    /// Any custom path, e.g. `"/meta/prm.json"` (only discoverable through the
    /// `WWW-Authenticate` header).
    Custom(String),
}

/// A deliberate protocol violation the [`McpServer`] commits.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum McpMisbehavior {
    /// Behave correctly.
    None,
    /// PRM `resource` is a different URL than the server's
    /// (`http://127.0.0.1:PORT/not-this-server`).
    PrmResourceMismatch,
    /// PRM `authorization_servers` = `[this string]`.
    PrmAuthorizationServer(String),
    /// Every 401 carries this raw `WWW-Authenticate` header value.
    RawWwwAuthenticate(String),
    /// PRM body is this raw text.
    RawPrm(String),
    /// PRM body padded (with a long string field) to this many bytes.
    HugePrm(usize),
    /// Every PRM location answers this HTTP status (e.g. 503) with an empty JSON body.
    PrmStatus(u16),
}

/// Configuration of an [`McpServer`].
#[derive(Clone, Debug)]
pub struct McpServerConfig {
    /// Authorization servers listed in the PRM; tokens are accepted only from these.
    pub authorization_servers: Vec<AuthServer>,
    /// Path of the MCP endpoint (default `"/mcp"`).
    pub path: String,
    /// `scopes_supported` in the PRM.
    pub scopes_supported: Option<Vec<String>>,
    /// Scopes every request needs; a valid token lacking one gets `403 insufficient_scope`
    /// naming the required scopes.
    pub required_scopes: Vec<String>,
    /// `scope=` in the 401 `WWW-Authenticate` challenge (`None` → omitted).
    pub challenge_scope: Option<String>,
    /// Include `resource_metadata="<PRM URL>"` in challenges (default `true`).
    pub resource_metadata_in_header: bool,
    /// Where the PRM is served (default [`PrmLocation::PathSuffixed`]).
    pub prm_location: PrmLocation,
    /// DPoP-bound tokens (RFC 9449) need `Authorization: DPoP` and a valid proof whatever
    /// this says; with a nonce, a proof lacking it is answered `401` with
    /// `WWW-Authenticate: DPoP error="use_dpop_nonce"` and a `DPoP-Nonce` header (RFC 9449
    /// §9). Change it at run time with [`McpServer::set_dpop_nonce`] (default `None`).
    pub dpop_nonce: Option<String>,
}

impl Default for McpServerConfig {
    fn default() -> Self {
        Self {
            authorization_servers: Vec::new(),
            path: "/mcp".to_string(),
            scopes_supported: None,
            required_scopes: Vec::new(),
            challenge_scope: None,
            resource_metadata_in_header: true,
            prm_location: PrmLocation::PathSuffixed,
            dpop_nonce: None,
        }
    }
}

/// One request the MCP server received.
#[derive(Clone, Debug)]
pub struct McpRequest {
    /// HTTP method.
    pub method: String,
    /// Request path (without query).
    pub path: String,
    /// Token from `Authorization: Bearer`.
    pub bearer: Option<String>,
    /// Token from `Authorization: DPoP`.
    pub dpop_token: Option<String>,
    /// A `DPoP` proof header was sent.
    pub dpop_proof: bool,
    /// The JWK thumbprint of the proof's key, when the proof was checked and accepted.
    pub dpop_jkt: Option<String>,
    /// Why the DPoP proof (or its absence, or the Bearer scheme for a DPoP-bound token) was
    /// refused.
    pub dpop_rejection: Option<DpopRejection>,
    /// `access_token=...` appeared in the query string.
    pub token_in_query: bool,
    /// Status code of the response.
    pub status: u16,
    /// Issuer of the presented token per introspection at any AS this server was ever
    /// configured with (`None` if unknown).
    pub token_issuer: Option<String>,
    /// The request was for protected resource metadata (any well-known or custom PRM path).
    pub is_prm: bool,
}

struct McpState {
    current: Vec<AuthServer>,
    all: Vec<AuthServer>,
    required_scopes: Vec<String>,
    misbehavior: McpMisbehavior,
    requests: Vec<McpRequest>,
    dpop_nonce: Option<String>,
}

struct McpInner {
    base_url: String,
    path: String,
    prm_path: String,
    scopes_supported: Option<Vec<String>>,
    challenge_scope: Option<String>,
    resource_metadata_in_header: bool,
    state: Mutex<McpState>,
    /// `jti`s of the DPoP proofs accepted.
    dpop_seen: ReplayCache,
}

/// A protected MCP server (resource server) on `127.0.0.1` (cheap to clone; clones share
/// state).
#[derive(Clone)]
pub struct McpServer {
    inner: Arc<McpInner>,
}

impl fmt::Debug for McpServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = lock(&self.inner.state);
        let issuers: Vec<String> = st.current.iter().map(AuthServer::issuer).collect();
        f.debug_struct("McpServer")
            .field("url", &self.url())
            .field("prm_url", &self.prm_url())
            .field("authorization_servers", &issuers)
            .field("required_scopes", &st.required_scopes)
            .field("misbehavior", &st.misbehavior)
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

impl McpServer {
    /// Binds `127.0.0.1:0` and starts serving on the current Tokio runtime.
    ///
    /// # Errors
    ///
    /// The I/O error when no port on `127.0.0.1` can be bound or the bound address cannot be read.
    pub async fn start(config: McpServerConfig) -> std::io::Result<McpServer> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let base_url = format!("http://127.0.0.1:{port}");
        let path = if config.path.starts_with('/') {
            config.path.clone()
        } else {
            format!("/{}", config.path)
        };
        let prm_path = match &config.prm_location {
            PrmLocation::PathSuffixed if path == "/" => PRM_PREFIX.to_string(),
            PrmLocation::PathSuffixed => format!("{PRM_PREFIX}{path}"),
            PrmLocation::Root => PRM_PREFIX.to_string(),
            PrmLocation::Custom(p) if p.starts_with('/') => p.clone(),
            PrmLocation::Custom(p) => format!("/{p}"),
        };
        let mut all = Vec::new();
        push_unique(&mut all, &config.authorization_servers);
        let inner = Arc::new(McpInner {
            base_url,
            path,
            prm_path,
            scopes_supported: config.scopes_supported,
            challenge_scope: config.challenge_scope,
            resource_metadata_in_header: config.resource_metadata_in_header,
            state: Mutex::new(McpState {
                current: config.authorization_servers,
                all,
                required_scopes: config.required_scopes,
                misbehavior: McpMisbehavior::None,
                requests: Vec::new(),
                dpop_nonce: config.dpop_nonce,
            }),
            dpop_seen: ReplayCache::default(),
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
        Ok(McpServer { inner })
    }

    /// The resource URL: `http://127.0.0.1:PORT{path}`.
    pub fn url(&self) -> String {
        self.inner.url()
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    /// The URL the PRM is served at.
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

    /// Replaces the scopes every request needs.
    pub fn set_required_scopes(&self, scopes: Vec<String>) {
        lock(&self.inner.state).required_scopes = scopes;
    }

    /// Replaces the current misbehavior ([`McpMisbehavior::None`] restores correct behavior).
    pub fn set_misbehavior(&self, m: McpMisbehavior) {
        lock(&self.inner.state).misbehavior = m;
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<McpRequest> {
        lock(&self.inner.state).requests.clone()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        lock(&self.inner.state).requests.clear();
    }

    /// Replaces the nonce DPoP proofs must carry (`None`: no nonce needed).
    pub fn set_dpop_nonce(&self, nonce: Option<String>) {
        lock(&self.inner.state).dpop_nonce = nonce;
    }

    /// Requests refused for their DPoP proof, for lacking one, or for presenting a DPoP-bound
    /// token as Bearer (`use_dpop_nonce` answers are not counted), in the request log.
    pub fn dpop_rejections(&self) -> usize {
        lock(&self.inner.state)
            .requests
            .iter()
            .filter(|r| {
                r.dpop_rejection
                    .as_ref()
                    .is_some_and(|d| !d.is_nonce_request())
            })
            .count()
    }
}

async fn handle(
    State(inner): State<Arc<McpInner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query = Params::parse(uri.query().unwrap_or("").as_bytes());
    let token_in_query = query.map.contains_key("access_token");
    let bearer = parse_bearer(&headers);
    let (bearer_token, dpop_token) = match &bearer {
        Bearer::Token(t) => (Some(t.clone()), None),
        Bearer::Dpop(t) => (None, Some(t.clone())),
        _ => (None, None),
    };
    let presented = bearer_token
        .as_deref()
        .or(dpop_token.as_deref())
        .or_else(|| query.get("access_token"));
    let info = presented.and_then(|t| inner.introspect(t));
    let is_prm =
        path == inner.prm_path || path == PRM_PREFIX || path.starts_with(&format!("{PRM_PREFIX}/"));

    let mut dpop = DpopOutcome {
        proof: headers.contains_key("dpop"),
        ..DpopOutcome::default()
    };
    let resp = if path == inner.prm_path {
        if method == Method::GET {
            inner.prm()
        } else {
            method_not_allowed("GET")
        }
    } else if path == inner.path {
        if matches!(method, Method::GET | Method::POST | Method::DELETE) {
            let call = Call {
                method: &method,
                headers: &headers,
                token_in_query,
                bearer: &bearer,
                info: info.as_ref(),
                body: &body,
            };
            inner.mcp(&call, &mut dpop)
        } else {
            method_not_allowed("GET, POST, DELETE")
        }
    } else {
        not_found()
    };

    let log = McpRequest {
        method: method.to_string(),
        path,
        bearer: bearer_token,
        dpop_token,
        dpop_proof: dpop.proof,
        dpop_jkt: dpop.jkt,
        dpop_rejection: dpop.rejection,
        token_in_query,
        status: resp.status().as_u16(),
        token_issuer: info.map(|i| i.issuer),
        is_prm,
    };
    lock(&inner.state).requests.push(log);
    resp
}

enum Bearer {
    Absent,
    Malformed,
    /// `Authorization: Bearer`.
    Token(String),
    /// `Authorization: DPoP` (RFC 9449 §7.1).
    Dpop(String),
}

/// One request to the MCP endpoint.
struct Call<'a> {
    method: &'a Method,
    headers: &'a HeaderMap,
    token_in_query: bool,
    bearer: &'a Bearer,
    info: Option<&'a TokenInfo>,
    body: &'a Bytes,
}

/// What the MCP endpoint made of a request's DPoP proof.
#[derive(Default)]
struct DpopOutcome {
    proof: bool,
    jkt: Option<String>,
    rejection: Option<DpopRejection>,
}

fn parse_bearer(headers: &HeaderMap) -> Bearer {
    let (scheme, token) = match crate::util::authorization(headers) {
        None => return Bearer::Absent,
        Some(Err(())) => return Bearer::Malformed,
        Some(Ok(parts)) => parts,
    };
    let dpop = scheme.eq_ignore_ascii_case("dpop");
    if !dpop && !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme: no bearer token presented.
        return Bearer::Absent;
    }
    let token = token.trim();
    // RFC 6750 §2.1 b64token.
    let b64token = !token.is_empty()
        && token.trim_end_matches('=').bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        });
    if b64token && dpop {
        Bearer::Dpop(token.to_string())
    } else if b64token {
        Bearer::Token(token.to_string())
    } else {
        Bearer::Malformed
    }
}

impl McpInner {
    fn url(&self) -> String {
        format!("{}{}", self.base_url, self.path)
    }

    fn prm_url(&self) -> String {
        format!("{}{}", self.base_url, self.prm_path)
    }

    fn introspect(&self, token: &str) -> Option<TokenInfo> {
        let all = lock(&self.state).all.clone();
        all.iter().find_map(|a| a.introspect(token))
    }

    fn prm(&self) -> Response {
        let (current, misbehavior) = {
            let st = lock(&self.state);
            (st.current.clone(), st.misbehavior.clone())
        };
        let resource = if misbehavior == McpMisbehavior::PrmResourceMismatch {
            format!("{}/not-this-server", self.base_url)
        } else {
            self.url()
        };
        let servers: Vec<String> = match &misbehavior {
            McpMisbehavior::PrmAuthorizationServer(s) => vec![s.clone()],
            _ => current.iter().map(AuthServer::issuer).collect(),
        };
        let mut doc = serde_json::Map::new();
        doc.insert("resource".into(), json!(resource));
        doc.insert("authorization_servers".into(), json!(servers));
        if let Some(s) = &self.scopes_supported {
            doc.insert("scopes_supported".into(), json!(s));
        }
        doc.insert("bearer_methods_supported".into(), json!(["header"]));
        match misbehavior {
            McpMisbehavior::PrmStatus(status) => {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                json_response(status, &json!({}))
            }
            McpMisbehavior::RawPrm(text) => {
                let mut resp = (StatusCode::OK, text).into_response();
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                resp
            }
            McpMisbehavior::HugePrm(n) => {
                doc.insert("x_padding".into(), json!(""));
                let base = serde_json::to_vec(&doc).map(|v| v.len()).unwrap_or(0);
                let pad = n.saturating_sub(base);
                doc.insert("x_padding".into(), json!("a".repeat(pad)));
                json_response(StatusCode::OK, &Value::Object(doc))
            }
            _ => json_response(StatusCode::OK, &Value::Object(doc)),
        }
    }

    fn challenge_401(&self, error: Option<&str>) -> String {
        let mut parts = Vec::new();
        if let Some(e) = error {
            parts.push(format!("error={}", quote(e)));
        }
        if self.resource_metadata_in_header {
            parts.push(format!("resource_metadata={}", quote(&self.prm_url())));
        }
        if let Some(s) = &self.challenge_scope {
            parts.push(format!("scope={}", quote(s)));
        }
        if parts.is_empty() {
            "Bearer".to_string()
        } else {
            format!("Bearer {}", parts.join(", "))
        }
    }

    fn unauthorized(&self, error: Option<&str>, misbehavior: &McpMisbehavior) -> Response {
        let value = match misbehavior {
            McpMisbehavior::RawWwwAuthenticate(raw) => raw.clone(),
            _ => self.challenge_401(error),
        };
        let body = json!({ "error": error.unwrap_or("unauthorized") });
        let mut resp = json_response(StatusCode::UNAUTHORIZED, &body);
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        resp
    }

    /// A `401` with a `DPoP` challenge (RFC 9449 §7.1), and a `DPoP-Nonce` when given.
    fn dpop_unauthorized(
        &self,
        error: &str,
        description: &str,
        nonce: Option<&str>,
        misbehavior: &McpMisbehavior,
    ) -> Response {
        let mut parts = vec![
            format!("error={}", quote(error)),
            format!("error_description={}", quote(description)),
            format!("algs={}", quote(dpop::DPOP_ALG)),
        ];
        if self.resource_metadata_in_header {
            parts.push(format!("resource_metadata={}", quote(&self.prm_url())));
        }
        let value = match misbehavior {
            McpMisbehavior::RawWwwAuthenticate(raw) => raw.clone(),
            _ => format!("DPoP {}", parts.join(", ")),
        };
        let mut resp = json_response(StatusCode::UNAUTHORIZED, &json!({ "error": error }));
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        if let Some(v) = nonce.and_then(|n| HeaderValue::from_str(n).ok()) {
            resp.headers_mut().insert("dpop-nonce", v);
        }
        resp
    }

    /// RFC 9449 §7: a DPoP-bound token needs the `DPoP` scheme and a valid proof by its key;
    /// the `DPoP` scheme needs a DPoP-bound token. `None`: nothing to refuse.
    fn check_dpop(
        &self,
        call: &Call<'_>,
        info: &TokenInfo,
        nonce: Option<&str>,
        outcome: &mut DpopOutcome,
        misbehavior: &McpMisbehavior,
    ) -> Option<Response> {
        let (token, bound) = match (call.bearer, &info.jkt) {
            (Bearer::Token(_), None) => return None,
            (Bearer::Token(_), Some(_)) => {
                outcome.rejection = Some(DpopRejection::BearerScheme);
                return Some(self.dpop_unauthorized(
                    "invalid_token",
                    "the access token is DPoP-bound: use the DPoP scheme with a proof",
                    None,
                    misbehavior,
                ));
            }
            (Bearer::Dpop(_), None) => {
                outcome.rejection = Some(DpopRejection::UnboundToken);
                return Some(self.dpop_unauthorized(
                    "invalid_token",
                    "the access token is not DPoP-bound",
                    None,
                    misbehavior,
                ));
            }
            (Bearer::Dpop(t), Some(jkt)) => (t.as_str(), jkt.as_str()),
            _ => return None,
        };
        let url = self.url();
        let checked = match dpop::proof_header(call.headers) {
            Ok(None) => Err(DpopRejection::MissingProof),
            Ok(Some(proof)) => dpop::validate(
                proof,
                &dpop::Expected {
                    method: call.method.as_str(),
                    htu: &url,
                    access_token: Some(token),
                    nonce,
                    jkt: Some(bound),
                },
                &self.dpop_seen,
            ),
            Err(r) => Err(r),
        };
        match checked {
            Ok(jkt) => {
                outcome.jkt = Some(jkt);
                None
            }
            Err(DpopRejection::Nonce) => {
                outcome.rejection = Some(DpopRejection::Nonce);
                Some(self.dpop_unauthorized(
                    "use_dpop_nonce",
                    "Resource server requires nonce in DPoP proof",
                    nonce,
                    misbehavior,
                ))
            }
            Err(r) => {
                let description = r.to_string();
                outcome.rejection = Some(r);
                Some(self.dpop_unauthorized("invalid_dpop_proof", &description, None, misbehavior))
            }
        }
    }

    fn mcp(&self, call: &Call<'_>, dpop: &mut DpopOutcome) -> Response {
        let Call {
            token_in_query,
            bearer,
            info,
            body,
            ..
        } = *call;
        let (current_issuers, required, misbehavior, nonce) = {
            let st = lock(&self.state);
            let issuers: Vec<String> = st.current.iter().map(AuthServer::issuer).collect();
            (
                issuers,
                st.required_scopes.clone(),
                st.misbehavior.clone(),
                st.dpop_nonce.clone(),
            )
        };
        if token_in_query {
            // RFC 6750 §2.3 URI query parameter method is not supported.
            return self.unauthorized(Some("invalid_request"), &misbehavior);
        }
        match bearer {
            Bearer::Absent => return self.unauthorized(None, &misbehavior),
            Bearer::Malformed => return self.unauthorized(Some("invalid_request"), &misbehavior),
            Bearer::Token(_) | Bearer::Dpop(_) => {}
        }
        let url = self.url();
        let valid = info.is_some_and(|i| {
            !i.expired
                && !i.revoked
                && current_issuers.contains(&i.issuer)
                && i.resource.as_deref() == Some(url.as_str())
        });
        let Some(info) = info.filter(|_| valid) else {
            if matches!(bearer, Bearer::Dpop(_)) {
                return self.dpop_unauthorized(
                    "invalid_token",
                    "the access token is not valid",
                    None,
                    &misbehavior,
                );
            }
            return self.unauthorized(Some("invalid_token"), &misbehavior);
        };
        if let Some(refused) = self.check_dpop(call, info, nonce.as_deref(), dpop, &misbehavior) {
            return refused;
        }
        if required.iter().any(|s| !info.scopes.contains(s)) {
            let mut parts = vec![
                "error=\"insufficient_scope\"".to_string(),
                format!("scope={}", quote(&required.join(" "))),
            ];
            if self.resource_metadata_in_header {
                parts.push(format!("resource_metadata={}", quote(&self.prm_url())));
            }
            let mut resp = json_response(
                StatusCode::FORBIDDEN,
                &json!({ "error": "insufficient_scope" }),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", parts.join(", "))) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            return resp;
        }
        let reply = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m))
                if m.get("jsonrpc").and_then(Value::as_str) == Some("2.0")
                    && m.contains_key("method")
                    && !m.contains_key("id") =>
            {
                // A JSON-RPC notification: accepted, no body (MCP streamable HTTP).
                return StatusCode::ACCEPTED.into_response();
            }
            Ok(Value::Object(m))
                if m.get("jsonrpc").and_then(Value::as_str) == Some("2.0")
                    && m.contains_key("id")
                    && m.contains_key("method") =>
            {
                let id = m.get("id").cloned().unwrap_or(Value::Null);
                let method = m.get("method").and_then(Value::as_str).unwrap_or_default();
                json!({ "jsonrpc": "2.0", "id": id, "result": mcp_result(method, m.get("params")) })
            }
            _ => json!({ "ok": true }),
        };
        json_response(StatusCode::OK, &reply)
    }
}

/// Minimal MCP results so real MCP clients can talk to the server: `initialize` (echoing the
/// client's protocol version), `tools/list` with one `echo` tool, `tools/call` answering `ok`;
/// any other method gets an empty result.
fn mcp_result(method: &str, params: Option<&Value>) -> Value {
    match method {
        "initialize" => {
            let version = params
                .and_then(|p| p.get("protocolVersion"))
                .and_then(Value::as_str)
                .unwrap_or("2025-11-25");
            json!({
                "protocolVersion": version,
                "capabilities": { "tools": {} },
                "serverInfo": { "name": "mcp-auth-testkit", "version": env!("CARGO_PKG_VERSION") },
            })
        }
        "tools/list" => json!({
            "tools": [{
                "name": "echo",
                "description": "Answers ok",
                "inputSchema": { "type": "object" },
            }]
        }),
        "tools/call" => json!({ "content": [{ "type": "text", "text": "ok" }], "isError": false }),
        _ => json!({}),
    }
}
