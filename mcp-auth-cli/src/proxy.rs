//! `mcp-auth proxy URL`: a stdio MCP server that forwards every JSON-RPC message, unchanged, to a
//! remote streamable-HTTP MCP server, authenticating each request with [`McpAuth`].
//!
//! stdin/stdout carry newline-delimited JSON-RPC; everything else (logs, the authorization URL)
//! goes to stderr. Messages are relayed as JSON values (one line each); the proxy never rewrites
//! their content.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use clap::Args;
use mcp_auth_core::{
    AuthError, Authorizer, ClientConfig, CredentialStore, ExposeSecret, HeadlessAuthorizer,
    LoopbackAuthorizer, McpAuth, ResourceUri, SecretString,
};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

#[path = "proxy_sse.rs"]
mod sse;

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";
const LAST_EVENT_ID: &str = "last-event-id";
/// JSON-RPC error code the proxy uses for transport and authorization failures.
const PROXY_ERROR: i64 = -32000;
/// Stable default callback ports are taken from this range (below Linux's ephemeral range,
/// 32768–60999, so an outgoing connection rarely holds one).
const PORT_BASE: u16 = 21_000;
const PORT_SPAN: u16 = 8_000;
/// How often a dropped stream is resumed before the pending requests fail.
const MAX_RESUME_ATTEMPTS: u32 = 3;

/// Arguments of `mcp-auth proxy`.
#[derive(Args)]
pub(crate) struct ProxyArgs {
    /// The remote MCP server URL (streamable HTTP; with `--transport sse`, the SSE endpoint).
    pub(crate) url: String,
    /// An extra header on every request to the server, `Name: value` (repeatable; `${VAR}` is
    /// replaced by the environment variable VAR).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// The loopback port of the OAuth redirect (default: a stable port derived from the URL).
    #[arg(long)]
    callback_port: Option<u16>,
    /// Seconds to wait for an interactive authorization before failing pending requests.
    #[arg(long, default_value_t = 300)]
    auth_timeout: u64,
    /// Print the authorization URL instead of opening a browser.
    #[arg(long)]
    no_browser: bool,
    /// Follow the authorization redirect without a browser (auto-approving servers only).
    #[arg(long, hide = true)]
    headless: bool,
    /// The server's transport: `sse` is the legacy HTTP+SSE transport (MCP 2024-11-05).
    #[arg(long, value_enum, default_value_t)]
    transport: sse::Transport,
}

impl std::fmt::Debug for ProxyArgs {
    /// Header values may carry secrets: only their names are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self
            .headers
            .iter()
            .map(|h| h.split_once(':').map_or("<invalid>", |(n, _)| n.trim()))
            .collect();
        f.debug_struct("ProxyArgs")
            .field("url", &self.url)
            .field("header_names", &names)
            .field("callback_port", &self.callback_port)
            .field("auth_timeout", &self.auth_timeout)
            .field("no_browser", &self.no_browser)
            .field("headless", &self.headless)
            .field("transport", &self.transport)
            .finish()
    }
}

/// A stable loopback port for `url`: FNV-1a of the URL folded into
/// `PORT_BASE..PORT_BASE + PORT_SPAN`, so an authorization server that matches redirect URIs
/// exactly sees the same one at every login.
pub(crate) fn default_callback_port(url: &str) -> u16 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in url.as_bytes() {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    // The remainder is < PORT_SPAN, which fits in u16.
    PORT_BASE + u16::try_from(hash % u32::from(PORT_SPAN)).unwrap_or(0)
}

/// `${VAR}` → the value of VAR (empty when unset, with a warning).
fn expand_env(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                match std::env::var(name) {
                    Ok(v) => out.push_str(&v),
                    Err(_) => warn!(variable = name, "environment variable in --header is unset"),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn parse_headers(raw: &[String]) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for h in raw {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("--header {name:?} is not `Name: value`", name = h))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("--header: invalid header name {:?}", name.trim()))?;
        let mut value = HeaderValue::from_str(expand_env(value.trim()).as_str())
            .map_err(|_| format!("--header {name}: invalid header value"))?;
        value.set_sensitive(true);
        map.append(name, value);
    }
    Ok(map)
}

/// Runs the proxy until stdin closes or SIGTERM/SIGINT arrives.
pub(crate) async fn run(
    args: &ProxyArgs,
    store: Arc<dyn CredentialStore>,
    network: crate::NetworkOptions,
) -> Result<(), String> {
    let url = reqwest::Url::parse(&args.url).map_err(|e| format!("invalid URL: {e}"))?;
    let policy = network.policy();
    // The same rules as every request of the engine: https, or plain http to this machine
    // (--allow-http) or a private network (--allow-private-network); never a public address.
    policy.check_url(&url).map_err(|e| e.to_string())?;
    let resource = ResourceUri::new(&args.url).map_err(|e| e.to_string())?;
    let port = crate::callback_port(args.callback_port, &args.url)?;
    let timeout = Duration::from_secs(args.auth_timeout);
    let authorizer: Arc<dyn Authorizer> = if args.headless {
        Arc::new(HeadlessAuthorizer::with_policy(policy.clone()).map_err(|e| e.to_string())?)
    } else {
        let no_browser = args.no_browser;
        Arc::new(LoopbackAuthorizer::new(
            move |url| {
                eprintln!("mcp-auth proxy: open this URL to authorize:\n  {url}");
                if !no_browser && webbrowser::open(url.as_str()).is_err() {
                    eprintln!("(could not open a browser; open the URL yourself)");
                }
            },
            timeout,
        ))
    };
    let auth = McpAuth::builder(store)
        .client(
            ClientConfig::default().with_redirect_uri(format!("http://127.0.0.1:{port}/callback")),
        )
        .http_policy(policy)
        .authorizer(authorizer)
        .build()
        .map_err(|e| e.to_string())?;
    let mut http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(30));
    if !network.use_system_proxy || url.scheme() == "http" {
        http = http.no_proxy();
    }
    let http = http
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = out_rx.recv().await {
            if stdout.write_all(line.as_bytes()).await.is_err()
                || stdout.write_all(b"\n").await.is_err()
                || stdout.flush().await.is_err()
            {
                break;
            }
        }
    });
    let proxy = Arc::new(Proxy {
        url,
        resource,
        extra_headers: parse_headers(&args.headers)?,
        http,
        auth,
        auth_timeout: timeout,
        order: Arc::new(tokio::sync::Mutex::new(())),
        step_up: tokio::sync::Mutex::new(()),
        session: Mutex::new(Session::default()),
        out: out_tx,
        sse: (args.transport == sse::Transport::Sse).then(sse::Sse::new),
    });
    info!(url = %proxy.url, callback_port = port, "proxy started");
    let mut tasks = tokio::task::JoinSet::new();
    // stdin is read on a plain thread: a tokio blocking read would keep the runtime from
    // shutting down after SIGTERM while stdin stays open.
    let (line_tx, mut lines) = mpsc::channel::<std::io::Result<String>>(64);
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::stdin().lock().lines() {
            let failed = line.is_err();
            if line_tx.blocking_send(line).is_err() || failed {
                break;
            }
        }
    });
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut fatal = None;
    loop {
        tokio::select! {
            line = lines.recv() => match line.transpose() {
                Ok(Some(line)) => {
                    let line = line.trim();
                    if line.is_empty() {
                        continue;
                    }
                    match serde_json::from_str::<Value>(line) {
                        Ok(message) => {
                            // Order: a message is sent only after every earlier notification
                            // or response was accepted (so `notifications/initialized` reaches
                            // the server before the next request); requests do not wait for
                            // each other.
                            let permit = Arc::clone(&proxy.order).lock_owned().await;
                            let hold = request_ids(&message).is_empty().then_some(permit);
                            let proxy = Arc::clone(&proxy);
                            tasks.spawn(async move { proxy.forward(message, hold).await });
                        }
                        Err(e) => proxy.emit(&json!({
                            "jsonrpc": "2.0",
                            "id": null,
                            "error": {"code": -32700, "message": format!("parse error: {e}")},
                        })),
                    }
                }
                Ok(None) => { debug!("stdin closed"); break; }
                Err(e) => { warn!(error = %e, "cannot read stdin"); break; }
            },
            () = &mut shutdown => { debug!("signal received"); break; }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            reason = sse::fatal(&proxy) => { fatal = Some(reason); break; }
        }
    }
    // Let requests already sent finish briefly, then end the session.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    if let Some(get) = proxy.session().get_stream.take() {
        get.abort();
    }
    proxy.close_session().await;
    let flushed = proxy.auth.flush().await;
    drop(proxy);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    flushed.map_err(|e| e.to_string())?;
    fatal.map_or(Ok(()), Err)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[derive(Default)]
struct Session {
    id: Option<String>,
    protocol_version: Option<String>,
    get_stream_started: bool,
    get_stream: Option<tokio::task::AbortHandle>,
}

struct Proxy {
    url: reqwest::Url,
    resource: ResourceUri,
    extra_headers: HeaderMap,
    http: reqwest::Client,
    auth: McpAuth,
    auth_timeout: Duration,
    /// Held while a notification or response is being sent (see the read loop).
    order: Arc<tokio::sync::Mutex<()>>,
    /// Serialises step-ups (403 insufficient_scope).
    step_up: tokio::sync::Mutex<()>,
    session: Mutex<Session>,
    out: mpsc::UnboundedSender<String>,
    /// The legacy HTTP+SSE transport (`--transport sse`).
    sse: Option<sse::Sse>,
}

/// The ids of the requests in a message (a request, or a batch holding requests).
fn request_ids(message: &Value) -> Vec<Value> {
    let one = |m: &Value| -> Option<Value> {
        let o = m.as_object()?;
        if o.contains_key("method") {
            o.get("id").filter(|id| !id.is_null()).cloned()
        } else {
            None
        }
    };
    match message {
        Value::Array(items) => items.iter().filter_map(one).collect(),
        m => one(m).into_iter().collect(),
    }
}

/// The ids of the responses in a message relayed from the server.
fn response_ids(message: &Value) -> Vec<Value> {
    let one = |m: &Value| -> Option<Value> {
        let o = m.as_object()?;
        if o.contains_key("result") || o.contains_key("error") {
            o.get("id").cloned()
        } else {
            None
        }
    };
    match message {
        Value::Array(items) => items.iter().filter_map(one).collect(),
        m => one(m).into_iter().collect(),
    }
}

fn is_initialize(message: &Value) -> Option<Value> {
    let o = message.as_object()?;
    (o.get("method")?.as_str()? == "initialize")
        .then(|| o.get("id").cloned().unwrap_or(Value::Null))
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A server-sent event: its `id`, type and `data`.
struct SseEvent {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

/// An incremental `text/event-stream` parser (WHATWG HTML §9.2.6).
#[derive(Default)]
struct SseParser {
    buffer: Vec<u8>,
    data: Vec<String>,
    id: Option<String>,
    event: Option<String>,
}

impl SseParser {
    fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(pos) = self.buffer.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.buffer.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if line.is_empty() {
                let event = self.event.take();
                if !self.data.is_empty() {
                    events.push(SseEvent {
                        id: self.id.clone(),
                        event,
                        data: self.data.join("\n"),
                    });
                    self.data.clear();
                } else if self.id.is_some() {
                    // An event carrying only an id (a priming event) still moves the cursor.
                    events.push(SseEvent {
                        id: self.id.clone(),
                        event,
                        data: String::new(),
                    });
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f.to_owned(), v.strip_prefix(' ').unwrap_or(v).to_owned()),
                None => (line.clone(), String::new()),
            };
            match field.as_str() {
                "data" => self.data.push(value),
                "event" => self.event = Some(value),
                "id" if !value.contains('\0') => self.id = Some(value),
                _ => {}
            }
        }
        events
    }
}

/// Why a POST produced no usable answer.
enum Failed {
    /// An authorization problem (the message says what to do).
    Auth(String),
    /// A transport problem.
    Transport(String),
}

impl Proxy {
    fn emit(&self, message: &Value) {
        let _ = self.out.send(message.to_string());
    }

    fn emit_errors(&self, ids: &[Value], message: &str) {
        for id in ids {
            self.emit(&json!({
                "jsonrpc": "2.0",
                "id": id,
                "error": {"code": PROXY_ERROR, "message": message},
            }));
        }
    }

    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A bearer token: the stored one, or a new authorization (held at most `auth_timeout`).
    async fn token(&self) -> Result<SecretString, Failed> {
        match self.auth.cached_access_token(&self.resource).await {
            Ok(t) => Ok(t),
            Err(e) if e.needs_login() => {
                info!(resource = %self.resource, "authorization needed");
                self.timed(self.auth.access_token(&self.resource)).await
            }
            Err(e) => Err(self.auth_failure(&e)),
        }
    }

    async fn timed(
        &self,
        f: impl Future<Output = Result<SecretString, AuthError>>,
    ) -> Result<SecretString, Failed> {
        match tokio::time::timeout(self.auth_timeout, f).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => Err(self.auth_failure(&e)),
            Err(_) => Err(Failed::Auth(format!(
                "authorization for {} did not complete within {}s; run `mcp-auth login {}` and retry",
                self.resource,
                self.auth_timeout.as_secs(),
                self.resource
            ))),
        }
    }

    fn auth_failure(&self, e: &AuthError) -> Failed {
        let hint = if e.needs_login() {
            format!("; run `mcp-auth login {}`", self.resource)
        } else {
            String::new()
        };
        Failed::Auth(format!("mcp-auth: {e}{hint}"))
    }

    fn request(&self, method: reqwest::Method, token: &SecretString) -> reqwest::RequestBuilder {
        self.request_to(method, self.url.clone(), token)
    }

    fn request_to(
        &self,
        method: reqwest::Method,
        url: reqwest::Url,
        token: &SecretString,
    ) -> reqwest::RequestBuilder {
        let mut headers = self.extra_headers.clone();
        let (session, version) = {
            let s = self.session();
            (s.id.clone(), s.protocol_version.clone())
        };
        if let Some(id) = session.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(SESSION_HEADER, id);
        }
        if let Some(v) = version.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(VERSION_HEADER, v);
        }
        if let Ok(mut bearer) = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
        {
            bearer.set_sensitive(true);
            headers.insert(AUTHORIZATION, bearer);
        }
        self.http.request(method, url).headers(headers)
    }

    /// Sends with a token; on 401 re-discovers and retries once, on 403 insufficient_scope
    /// steps up and retries once.
    async fn send(
        &self,
        build: impl Fn(&SecretString) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Failed> {
        let mut token = self.token().await?;
        let mut retried = false;
        loop {
            let response = build(&token).send().await.map_err(|e| {
                Failed::Transport(format!("cannot reach {}: {}", self.url, e.without_url()))
            })?;
            let status = response.status();
            let challenge = header_str(response.headers(), "www-authenticate");
            if retried {
                return Ok(response);
            }
            if status == reqwest::StatusCode::UNAUTHORIZED {
                info!("server answered 401; re-authorizing");
                token = self
                    .timed(
                        self.auth
                            .handle_unauthorized(&self.resource, challenge.as_deref()),
                    )
                    .await?;
            } else if status == reqwest::StatusCode::FORBIDDEN
                && let Some(c) = challenge.filter(|c| c.contains("insufficient_scope"))
            {
                // One step-up at a time: requests refused together with the same token retry
                // with the token the first step-up obtained (the engine counts every call as
                // an attempt).
                let _guard = self.step_up.lock().await;
                match self.auth.cached_access_token(&self.resource).await {
                    Ok(current) if current.expose_secret() != token.expose_secret() => {
                        debug!("another request stepped up already");
                        token = current;
                    }
                    _ => {
                        info!("server answered 403 insufficient_scope; stepping up");
                        token = self
                            .timed(self.auth.handle_insufficient_scope(&self.resource, &c))
                            .await?;
                    }
                }
            } else {
                return Ok(response);
            }
            retried = true;
        }
    }

    /// Forwards one message from the client and relays what comes back.
    async fn forward(
        self: Arc<Self>,
        message: Value,
        order: Option<tokio::sync::OwnedMutexGuard<()>>,
    ) {
        if self.sse.is_some() {
            return sse::forward(self, message, order).await;
        }
        let ids = request_ids(&message);
        let init = is_initialize(&message);
        let body = message.to_string();
        let result = self
            .send(|token| {
                self.request(reqwest::Method::POST, token)
                    .header(ACCEPT, "application/json, text/event-stream")
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone())
            })
            .await;
        drop(order);
        let response = match result {
            Ok(r) => r,
            Err(Failed::Auth(m) | Failed::Transport(m)) => {
                warn!("{m}");
                self.emit_errors(&ids, &m);
                return;
            }
        };
        let status = response.status();
        if init.is_some()
            && let Some(id) = header_str(response.headers(), SESSION_HEADER)
        {
            self.session().id = Some(id);
        }
        if !status.is_success() {
            let session_lost =
                status == reqwest::StatusCode::NOT_FOUND && self.session().id.is_some();
            let text = response.text().await.unwrap_or_default();
            // A JSON-RPC error body is relayed as is; anything else becomes an error per id.
            if let Ok(v) = serde_json::from_str::<Value>(&text)
                && !response_ids(&v).is_empty()
            {
                self.emit(&v);
                return;
            }
            let m = if session_lost {
                format!("the MCP session expired ({status}); reconnect the client")
            } else {
                format!("the MCP server answered HTTP {status}")
            };
            self.emit_errors(&ids, &m);
            return;
        }
        if ids.is_empty() {
            return; // notifications and responses: 202 Accepted
        }
        let content_type = header_str(response.headers(), "content-type").unwrap_or_default();
        let mut pending: HashSet<String> = ids.iter().map(Value::to_string).collect();
        if content_type.starts_with("text/event-stream") {
            self.relay_stream(response, &mut pending, init.as_ref())
                .await;
        } else {
            match response.bytes().await {
                Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                    Ok(v) => {
                        self.observe(&v, init.as_ref(), &mut pending);
                        self.emit(&v);
                    }
                    Err(e) => warn!(error = %e, "the server's JSON answer is not JSON"),
                },
                Err(e) => warn!(error = %e.without_url(), "cannot read the server's answer"),
            }
        }
        if !pending.is_empty() {
            let left: Vec<Value> = ids
                .into_iter()
                .filter(|id| pending.contains(&id.to_string()))
                .collect();
            self.emit_errors(
                &left,
                "the MCP server closed the connection without answering this request",
            );
        }
    }

    /// Notes answered requests and the negotiated protocol version; starts the GET stream once
    /// the session is initialized.
    fn observe(self: &Arc<Self>, v: &Value, init: Option<&Value>, pending: &mut HashSet<String>) {
        for id in response_ids(v) {
            pending.remove(&id.to_string());
            if init == Some(&id)
                && let Some(version) = v.pointer("/result/protocolVersion").and_then(Value::as_str)
            {
                let start = {
                    let mut s = self.session();
                    s.protocol_version = Some(version.to_owned());
                    let start = !s.get_stream_started;
                    s.get_stream_started = true;
                    start
                };
                if start {
                    let me = Arc::clone(self);
                    let handle = tokio::spawn(async move { me.get_stream().await });
                    self.session().get_stream = Some(handle.abort_handle());
                }
            }
        }
    }

    /// Relays an SSE response; resumes with `Last-Event-ID` if it drops before every request
    /// is answered.
    async fn relay_stream(
        self: &Arc<Self>,
        mut response: reqwest::Response,
        pending: &mut HashSet<String>,
        init: Option<&Value>,
    ) {
        let mut last_id: Option<String> = None;
        let mut attempts = 0;
        loop {
            let mut parser = SseParser::default();
            loop {
                match response.chunk().await {
                    Ok(Some(chunk)) => {
                        for event in parser.push(&chunk) {
                            if event.id.is_some() {
                                last_id.clone_from(&event.id);
                            }
                            self.relay_event(&event, pending, init);
                        }
                        if pending.is_empty() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        debug!(error = %e.without_url(), "SSE stream dropped");
                        break;
                    }
                }
            }
            if pending.is_empty() {
                return;
            }
            let Some(event_id) = last_id.clone() else {
                return;
            };
            attempts += 1;
            if attempts > MAX_RESUME_ATTEMPTS {
                return;
            }
            info!(last_event_id = %event_id, "resuming the dropped stream");
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempts))).await;
            match self.resume(&event_id).await {
                Some(r) => response = r,
                None => return,
            }
        }
    }

    fn relay_event(
        self: &Arc<Self>,
        event: &SseEvent,
        pending: &mut HashSet<String>,
        init: Option<&Value>,
    ) {
        if event.data.trim().is_empty() {
            return;
        }
        match serde_json::from_str::<Value>(&event.data) {
            Ok(v) => {
                self.observe(&v, init, pending);
                self.emit(&v);
            }
            Err(e) => warn!(error = %e, "an SSE event is not JSON; dropped"),
        }
    }

    async fn resume(&self, event_id: &str) -> Option<reqwest::Response> {
        let result = self
            .send(|token| {
                self.request(reqwest::Method::GET, token)
                    .header(ACCEPT, "text/event-stream")
                    .header(LAST_EVENT_ID, event_id)
            })
            .await;
        match result {
            Ok(r) if r.status().is_success() => Some(r),
            Ok(r) => {
                debug!(status = %r.status(), "the server did not resume the stream");
                None
            }
            Err(Failed::Auth(m) | Failed::Transport(m)) => {
                warn!("{m}");
                None
            }
        }
    }

    /// The standalone GET stream: server-initiated requests and notifications. Reconnects
    /// (with `Last-Event-ID`) while the server keeps offering it.
    async fn get_stream(self: Arc<Self>) {
        let mut last_id: Option<String> = None;
        let mut failures = 0u32;
        loop {
            let result = self
                .send(|token| {
                    let b = self
                        .request(reqwest::Method::GET, token)
                        .header(ACCEPT, "text/event-stream");
                    match &last_id {
                        Some(id) => b.header(LAST_EVENT_ID, id.as_str()),
                        None => b,
                    }
                })
                .await;
            let mut response = match result {
                Ok(r)
                    if r.status().is_success()
                        && header_str(r.headers(), "content-type")
                            .is_some_and(|c| c.starts_with("text/event-stream")) =>
                {
                    r
                }
                Ok(r) => {
                    debug!(status = %r.status(), "no standalone GET stream");
                    return;
                }
                Err(Failed::Auth(m) | Failed::Transport(m)) => {
                    debug!("GET stream: {m}");
                    failures += 1;
                    if failures > MAX_RESUME_ATTEMPTS {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            failures = 0;
            let mut parser = SseParser::default();
            let mut none = HashSet::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                for event in parser.push(&chunk) {
                    if event.id.is_some() {
                        last_id.clone_from(&event.id);
                    }
                    self.relay_event(&event, &mut none, None);
                }
            }
            debug!("GET stream ended; reconnecting");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// DELETE of the session (best effort, never starts an authorization).
    async fn close_session(&self) {
        if self.session().id.is_none() {
            return;
        }
        let Ok(token) = self.auth.cached_access_token(&self.resource).await else {
            return;
        };
        let result = tokio::time::timeout(
            Duration::from_secs(3),
            self.request(reqwest::Method::DELETE, &token).send(),
        )
        .await;
        match result {
            Ok(Ok(r)) => debug!(status = %r.status(), "session deleted"),
            Ok(Err(e)) => debug!(error = %e.without_url(), "cannot delete the session"),
            Err(_) => debug!("deleting the session timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_is_stable_and_in_range() {
        let a = default_callback_port("https://mcp.example.com/mcp");
        assert_eq!(a, default_callback_port("https://mcp.example.com/mcp"));
        assert!((PORT_BASE..PORT_BASE + PORT_SPAN).contains(&a));
    }

    #[test]
    fn sse_parser_splits_events_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.push(b"id: 1\ndata: {\"a\"").is_empty());
        let events = p.push(b":1}\n\nid: 2\r\ndata: x\r\n\r\n");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].data, "{\"a\":1}");
        assert_eq!(events[0].id.as_deref(), Some("1"));
        assert_eq!(events[1].id.as_deref(), Some("2"));
    }

    #[test]
    fn debug_hides_header_values() {
        let args = ProxyArgs {
            url: "https://mcp.example.com/mcp".into(),
            headers: vec!["Authorization: Bearer very-secret".into()],
            callback_port: None,
            auth_timeout: 300,
            no_browser: false,
            headless: false,
            transport: sse::Transport::StreamableHttp,
        };
        let shown = format!("{args:?}");
        assert!(
            shown.contains("Authorization") && !shown.contains("very-secret"),
            "{shown}"
        );
    }

    #[test]
    fn env_expansion() {
        assert_eq!(
            expand_env("Bearer ${MCP_AUTH_SURELY_UNSET_VAR}x"),
            "Bearer x"
        );
        assert_eq!(expand_env("plain ${open"), "plain ${open");
    }
}
