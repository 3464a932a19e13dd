//! How an authorization code is obtained: the [`Authorizer`] sends the user (or a test) to the
//! authorization URL and returns the URL the authorization server redirected back to.
//!
//! Both authorizers here accept only the response of their own login: a redirect whose single
//! `state` is the request's own (a response carrying another state may be an attacker's, sent
//! to the loopback port or planted in a redirect chain).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use url::Url;

use super::error::AuthError;
use super::http::redact;
#[cfg(feature = "headless")]
use super::http::{Http, HttpPolicy};
use crate::error::BoxError;

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

impl AuthorizationRequest {
    /// A request to complete: the authorization `url`, the `redirect_uri` it names and its
    /// `state` (for authorizers written and tested outside this crate).
    pub fn new(url: Url, redirect_uri: impl Into<String>, state: impl Into<String>) -> Self {
        Self {
            url,
            redirect_uri: redirect_uri.into(),
            state: state.into(),
        }
    }
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

    /// Whether this authorizer can receive a callback at `redirect_uri` now. The engine asks
    /// before it reuses the exact redirect URI a dynamic registration holds: when the answer is
    /// no (a loopback port another program took), it registers again with the configured one.
    /// Default: yes.
    fn can_serve(&self, redirect_uri: &Url) -> bool {
        let _ = redirect_uri;
        true
    }
}

/// Whether this process can listen on the loopback port of `redirect_uri` (bound and released
/// at once: another program may still take it before the login, which then fails clearly).
fn loopback_port_free(redirect_uri: &Url) -> bool {
    let host = redirect_uri.host_str().unwrap_or_default();
    let bind = if host == "[::1]" { "::1" } else { "127.0.0.1" };
    let port = redirect_uri.port_or_known_default().unwrap_or(80);
    std::net::TcpListener::bind((bind, port)).is_ok()
}

/// **For tests** (feature `headless`): fetches the authorization URL without a browser and
/// returns the redirect it answers with, as authorization servers that approve at once do (test
/// servers such as `mcp-auth-testkit`, the MCP conformance suite). Any real authorization server
/// answers with a consent or login page instead, and this authorizer then fails: people log in
/// through [`LoopbackAuthorizer`] (the engine's default) or [`PasteAuthorizer`].
/// Follows redirects inside the authorization server's origin up to 5 requests; stops at the
/// first one pointing at the redirect URI, which must carry exactly one `state`: the request's.
///
/// Every request goes through the engine's HTTP client and [`HttpPolicy`]: scheme check, SSRF
/// filtering of IP literals and of every DNS answer, timeout and size limit.
#[cfg(feature = "headless")]
#[derive(Clone)]
pub struct HeadlessAuthorizer {
    http: Http,
}

#[cfg(feature = "headless")]
impl HeadlessAuthorizer {
    /// A headless authorizer under the default [`HttpPolicy`]: `https` to public addresses
    /// only, 10 s timeout.
    ///
    /// # Errors
    ///
    /// None at present: the HTTP client is built on first use, so a policy that cannot be honoured
    /// shows up as an error of [`Authorizer::authorize`].
    pub fn new() -> Result<Self, AuthError> {
        Self::with_policy(HttpPolicy::default())
    }

    /// A headless authorizer under `policy` (give it the engine's: with
    /// [`HttpPolicy::allowing_loopback`] it reaches a local test server).
    ///
    /// # Errors
    ///
    /// None at present: the HTTP client is built on first use, so a policy that cannot be honoured
    /// shows up as an error of [`Authorizer::authorize`].
    pub fn with_policy(policy: HttpPolicy) -> Result<Self, AuthError> {
        Ok(Self {
            http: Http::new(policy)?,
        })
    }
}

#[cfg(feature = "headless")]
impl fmt::Debug for HeadlessAuthorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeadlessAuthorizer")
            .field("http", &self.http)
            .finish()
    }
}

#[cfg(feature = "headless")]
#[async_trait]
impl Authorizer for HeadlessAuthorizer {
    async fn authorize(&self, request: AuthorizationRequest) -> Result<Url, AuthError> {
        let redirect = Url::parse(&request.redirect_uri)
            .map_err(|_| AuthError::Config("redirect_uri is not an absolute URL".to_owned()))?;
        if request.state.is_empty() {
            return Err(AuthError::Config(
                "the authorization request has no state".to_owned(),
            ));
        }
        let mut current = request.url.clone();
        for _ in 0..5 {
            let fetched = self.http.get_page(&current).await?;
            let status = fetched.status;
            let location = fetched
                .headers
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| current.join(l).ok());
            let Some(next) = location.filter(|_| (300..400).contains(&status)) else {
                return Err(AuthError::Authorizer(format!(
                    "the authorization endpoint answered {status} instead of redirecting"
                )));
            };
            if is_redirect_uri(&next, &redirect) {
                return match check_callback(next.query(), &request.state) {
                    Ok(_) => Ok(next),
                    Err(Refusal::State) => Err(AuthError::StateMismatch),
                    Err(Refusal::Repeated) => Err(AuthError::Authorizer(
                        "the authorization response repeats state, iss, code or error; refused"
                            .to_owned(),
                    )),
                };
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

/// Whether `url` is the redirect URI (scheme, host, port and path equal; the query is the
/// response). A prefix is not enough: `/callbackevil` and port `80801` are not `/callback` and
/// port `8080`.
fn is_redirect_uri(url: &Url, redirect: &Url) -> bool {
    url.scheme() == redirect.scheme()
        && url.host_str() == redirect.host_str()
        && url.port_or_known_default() == redirect.port_or_known_default()
        && url.path() == redirect.path()
        && url.username() == redirect.username()
        && url.password() == redirect.password()
}

/// Why a response to the redirect URI is not this login's.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// No `state`, several, or another login's.
    State,
    /// `iss`, `code` or `error` repeated: which copy a parser takes varies, so none is trusted.
    Repeated,
}

/// What a response to the redirect URI carries, once it is known to be this login's.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// An authorization code (or nothing: the engine reports that).
    Code,
    /// An `error`: the authorization server refused.
    Error,
}

/// Accepts a redirect query only if it carries exactly one `state`, equal to `state`, and at
/// most one `iss`, `code` and `error`.
fn check_callback(query: Option<&str>, state: &str) -> Result<Outcome, Refusal> {
    let (mut states, mut matched) = (0usize, false);
    let (mut iss, mut code, mut error) = (0usize, 0usize, 0usize);
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*key {
            "state" => {
                states += 1;
                matched = same_secret(value.as_bytes(), state.as_bytes());
            }
            "iss" => iss += 1,
            "code" => code += 1,
            "error" => error += 1,
            _ => {}
        }
    }
    if states != 1 || !matched || state.is_empty() {
        return Err(Refusal::State);
    }
    if iss > 1 || code > 1 || error > 1 {
        return Err(Refusal::Repeated);
    }
    Ok(if error == 1 {
        Outcome::Error
    } else {
        Outcome::Code
    })
}

/// Compares without stopping at the first difference (the state is a secret).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How long one connection to the callback listener may take to send its request head, and
/// to be served in all.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head the listener reads (hyper answers 431 beyond); bodies are never
/// read.
const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Connections served at once; a new one beyond this closes the oldest.
const MAX_CONNECTIONS: usize = 128;
/// How long the connection that brought the callback has to receive its page before the
/// listener shuts down.
const PAGE_GRACE: Duration = Duration::from_secs(2);

/// Hands the authorization URL to whoever completes the login: opens a browser, shows the URL,
/// or (in a test) plays the browser's part. An error ends the login at once with
/// [`AuthError::Authorizer`] carrying its message (which must not contain the URL: it holds
/// the login's `state`).
pub type Opener = dyn Fn(&Url) -> Result<(), BoxError> + Send + Sync;

/// The browser flow for people (RFC 8252), and the engine's default authorizer: listens on the
/// loopback redirect URI, hands the authorization URL to an opener (the system browser unless
/// another is given — never through a shell), and returns the callback of this login: a `GET`
/// of the redirect path whose only `state` is the request's.
///
/// Anything else — another path (404), another method (405), another or a repeated `state`, a
/// repeated `iss`, `code` or `error` (400) — gets a static page saying it is not for this
/// login, and the listener keeps waiting. Connections are served concurrently by hyper, each
/// with a 10 s limit to send its request and a 16 KiB bound on its request head, so idle,
/// slow or garbage connections cannot hold the real callback back. Pages reflect nothing from
/// the request and are sent `Cache-Control: no-store`, `Referrer-Policy: no-referrer`. The
/// listener and every connection are closed when `authorize` returns.
///
/// ```
/// use std::time::Duration;
/// use mcp_auth_core::LoopbackAuthorizer;
///
/// // The system browser, 5 minutes to finish (what `McpAuth::builder` uses by default).
/// let browser = LoopbackAuthorizer::system_browser();
/// // Show the URL instead, and allow 2 minutes.
/// let shown = LoopbackAuthorizer::with_opener(|url| {
///     eprintln!("Open this address to log in: {url}");
///     Ok(())
/// })
/// .timeout(Duration::from_secs(120));
/// # let _ = (browser, shown);
/// ```
pub struct LoopbackAuthorizer {
    open: Box<Opener>,
    timeout: Duration,
}

impl LoopbackAuthorizer {
    /// How long the user has to finish the login unless [`LoopbackAuthorizer::timeout`] says
    /// otherwise: 5 minutes.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

    /// Opens the authorization URL in the system's default browser (the `webbrowser` crate:
    /// `xdg-open` and its peers, `open` on macOS, the shell API on Windows — never a shell
    /// command line). Where no browser can be started the login fails at once, saying so.
    pub fn system_browser() -> Self {
        Self::with_opener(|url| {
            webbrowser::open(url.as_str())
                .map_err(|e| -> BoxError { format!("cannot start a web browser ({e})").into() })
        })
    }

    /// `open` receives the authorization URL and completes the login's first half: opens a
    /// browser, shows the URL, or (in a test) fetches it and follows the redirect to the
    /// loopback callback, as a browser would. An error ends the login at once. The user has
    /// [`LoopbackAuthorizer::DEFAULT_TIMEOUT`] to finish.
    pub fn with_opener(
        open: impl Fn(&Url) -> Result<(), BoxError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            open: Box::new(open),
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }

    /// `open` receives the authorization URL (print it, or open a browser with a crate such as
    /// `webbrowser`) and cannot fail. The user has `timeout` to finish.
    pub fn new(open: impl Fn(&Url) + Send + Sync + 'static, timeout: Duration) -> Self {
        Self::with_opener(move |url| {
            open(url);
            Ok(())
        })
        .timeout(timeout)
    }

    /// How long the user has to finish the login.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl Default for LoopbackAuthorizer {
    /// [`LoopbackAuthorizer::system_browser`].
    fn default() -> Self {
        Self::system_browser()
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
    fn can_serve(&self, redirect_uri: &Url) -> bool {
        loopback_port_free(redirect_uri)
    }

    async fn authorize(&self, request: AuthorizationRequest) -> Result<Url, AuthError> {
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
        if request.state.is_empty() {
            return Err(AuthError::Config(
                "the authorization request has no state".to_owned(),
            ));
        }
        let port = redirect.port_or_known_default().unwrap_or(80);
        let bind = if host == "[::1]" { "::1" } else { "127.0.0.1" };
        let listener = TcpListener::bind((bind, port)).await.map_err(|e| {
            AuthError::Authorizer(format!("cannot listen on {bind} port {port}: {e}"))
        })?;
        let expected = Arc::new(Expected {
            redirect: redirect.clone(),
            state: request.state.clone(),
        });
        (self.open)(&request.url).map_err(|e| {
            AuthError::Authorizer(format!(
                "the authorization URL could not be opened: {e}; give the engine an authorizer \
                 that can show it (McpAuthBuilder::authorizer with LoopbackAuthorizer::with_opener \
                 or a PasteAuthorizer)"
            ))
        })?;
        // Dropped when this returns (or is cancelled): the listener closes, connections abort.
        let mut server = CallbackServer::new(listener, expected);
        match tokio::time::timeout(self.timeout, server.wait()).await {
            Ok((connection, callback)) => {
                server.finish(connection).await;
                Ok(callback)
            }
            Err(_) => Err(AuthError::Authorizer(format!(
                "no authorization response for this login arrived at {} within {:?}; \
                 the login was not finished in the browser (start it again)",
                redact(&redirect),
                self.timeout
            ))),
        }
    }
}

/// The longest line a [`PasteAuthorizer`] reads.
const MAX_PASTED_LINE: u64 = 16 * 1024;

/// The browser flow for machines whose loopback the browser may not reach (a login over SSH):
/// a [`LoopbackAuthorizer`] that also reads lines from `input` (standard input, typically),
/// where the user may paste the full URL the browser was redirected to. Whichever arrives first
/// completes the login: the listener's callback or a pasted URL.
///
/// A pasted URL must be the redirect URI (scheme, host, port and path) with exactly one
/// `state`, this login's, and at most one `iss`, `code` and `error` — the checks the listener
/// applies; anything else is refused and ends the login. The engine then checks it like any
/// callback (`state`, `iss`, path). Blank lines are skipped; at end of input only the listener
/// is waited for.
pub struct PasteAuthorizer {
    loopback: LoopbackAuthorizer,
    input: tokio::sync::Mutex<Box<dyn tokio::io::AsyncBufRead + Send + Unpin>>,
}

impl PasteAuthorizer {
    /// Wraps `loopback`, reading pasted URLs from `input`.
    pub fn new(
        loopback: LoopbackAuthorizer,
        input: impl tokio::io::AsyncBufRead + Send + Unpin + 'static,
    ) -> Self {
        Self {
            loopback,
            input: tokio::sync::Mutex::new(Box::new(input)),
        }
    }

    /// The first non-blank line of the input, or never (end of input, read error).
    async fn pasted_line(&self) -> String {
        use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
        let mut input = self.input.lock().await;
        loop {
            let mut line = String::new();
            match (&mut *input)
                .take(MAX_PASTED_LINE)
                .read_line(&mut line)
                .await
            {
                Ok(0) | Err(_) => return std::future::pending().await,
                Ok(_) => {
                    let line = line.trim();
                    if !line.is_empty() {
                        return line.to_owned();
                    }
                }
            }
        }
    }
}

/// Checks a pasted authorization response as the listener checks a callback.
fn check_pasted(line: &str, redirect: &Url, state: &str) -> Result<Url, AuthError> {
    let url = Url::parse(line).map_err(|_| {
        AuthError::Authorizer(
            "the pasted line is not a URL; paste the whole address the browser was sent to"
                .to_owned(),
        )
    })?;
    if !is_redirect_uri(&url, redirect) {
        return Err(AuthError::Authorizer(format!(
            "the pasted URL is not this login's redirect URI {}",
            redact(redirect)
        )));
    }
    match check_callback(url.query(), state) {
        Ok(_) => Ok(url),
        Err(Refusal::State) => Err(AuthError::StateMismatch),
        Err(Refusal::Repeated) => Err(AuthError::Authorizer(
            "the pasted URL repeats state, iss, code or error; refused".to_owned(),
        )),
    }
}

impl fmt::Debug for PasteAuthorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasteAuthorizer")
            .field("loopback", &self.loopback)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Authorizer for PasteAuthorizer {
    fn can_serve(&self, redirect_uri: &Url) -> bool {
        self.loopback.can_serve(redirect_uri)
    }

    async fn authorize(&self, request: AuthorizationRequest) -> Result<Url, AuthError> {
        let redirect = Url::parse(&request.redirect_uri)
            .map_err(|_| AuthError::Config("redirect_uri is not a URL".to_owned()))?;
        let state = request.state.clone();
        tokio::select! {
            callback = self.loopback.authorize(request) => callback,
            line = self.pasted_line() => check_pasted(&line, &redirect, &state),
        }
    }
}

/// What the listener accepts.
struct Expected {
    redirect: Url,
    state: String,
}

/// The callback listener: accepts connections and serves each in its own task.
struct CallbackServer {
    listener: TcpListener,
    expected: Arc<Expected>,
    callbacks: mpsc::Receiver<(u64, Url)>,
    sender: mpsc::Sender<(u64, Url)>,
    /// Connections being served, oldest first.
    connections: BTreeMap<u64, JoinHandle<()>>,
    next_id: u64,
}

enum Event {
    Callback(u64, Url),
    Accepted(std::io::Result<TcpStream>),
}

impl CallbackServer {
    fn new(listener: TcpListener, expected: Arc<Expected>) -> Self {
        let (sender, callbacks) = mpsc::channel(1);
        Self {
            listener,
            expected,
            callbacks,
            sender,
            connections: BTreeMap::new(),
            next_id: 0,
        }
    }

    /// Serves until this login's callback arrives; returns it and the connection it came on.
    async fn wait(&mut self) -> (u64, Url) {
        loop {
            let event = tokio::select! {
                Some((id, callback)) = self.callbacks.recv() => Event::Callback(id, callback),
                accepted = self.listener.accept() => Event::Accepted(accepted.map(|(s, _)| s)),
            };
            match event {
                Event::Callback(id, callback) => return (id, callback),
                Event::Accepted(Ok(stream)) => self.serve(stream),
                // Out of file descriptors or a connection reset before accept: keep serving
                // (connections time out and free their descriptors).
                Event::Accepted(Err(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Lets the connection that brought the callback receive its page (within
    /// [`PAGE_GRACE`]); the others are closed when the server is dropped.
    async fn finish(&mut self, connection: u64) {
        if let Some(mut task) = self.connections.remove(&connection)
            && tokio::time::timeout(PAGE_GRACE, &mut task).await.is_err()
        {
            task.abort();
        }
    }

    fn serve(&mut self, stream: TcpStream) {
        self.connections.retain(|_, task| !task.is_finished());
        while self.connections.len() >= MAX_CONNECTIONS {
            if let Some((_, oldest)) = self.connections.pop_first() {
                oldest.abort();
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let task = tokio::spawn(serve_connection(
            stream,
            id,
            self.expected.clone(),
            self.sender.clone(),
        ));
        self.connections.insert(id, task);
    }
}

impl Drop for CallbackServer {
    fn drop(&mut self) {
        for task in self.connections.values() {
            task.abort();
        }
    }
}

/// One connection: one request (no keep-alive), its head within [`MAX_REQUEST_BYTES`] and
/// [`CONNECTION_TIMEOUT`].
async fn serve_connection(
    stream: TcpStream,
    id: u64,
    expected: Arc<Expected>,
    callbacks: mpsc::Sender<(u64, Url)>,
) {
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let (response, callback) = answer(&expected, &request);
        if let Some(callback) = callback {
            // Only the first callback counts; the listener stops after it.
            let _ = callbacks.try_send((id, callback));
        }
        std::future::ready(Ok::<_, Infallible>(response))
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(CONNECTION_TIMEOUT)
        .keep_alive(false)
        .max_buf_size(MAX_REQUEST_BYTES)
        .serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
}

const RECEIVED_PAGE: &str = "<!doctype html><meta charset=utf-8><title>mcp-auth</title>\
<p>Authorization received. You can close this window and return to the application.</p>";
const DENIED_PAGE: &str = "<!doctype html><meta charset=utf-8><title>mcp-auth</title>\
<p>The authorization server did not grant access. You can close this window; the application \
tells why.</p>";
const NOT_THIS_LOGIN_PAGE: &str = "<!doctype html><meta charset=utf-8><title>mcp-auth</title>\
<p>This response is not for this login, so it was ignored. If you are logging in, finish in \
the window the application opened.</p>";
const NOT_FOUND_PAGE: &str = "<!doctype html><meta charset=utf-8><title>mcp-auth</title>\
<p>Not found. This address only receives the response of the login in progress; this request \
is not for this login.</p>";
const METHOD_PAGE: &str = "<!doctype html><meta charset=utf-8><title>mcp-auth</title>\
<p>Only the browser's redirect (GET) is accepted here; this request is not for this login.</p>";

/// The page for a request, and the callback if it is this login's.
fn answer(expected: &Expected, request: &Request<Incoming>) -> (Response<String>, Option<Url>) {
    let uri = request.uri();
    if uri.path() != expected.redirect.path() {
        return (page(StatusCode::NOT_FOUND, NOT_FOUND_PAGE), None);
    }
    if request.method() != Method::GET {
        let mut response = page(StatusCode::METHOD_NOT_ALLOWED, METHOD_PAGE);
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return (response, None);
    }
    match check_callback(uri.query(), &expected.state) {
        Err(_) => (page(StatusCode::BAD_REQUEST, NOT_THIS_LOGIN_PAGE), None),
        Ok(outcome) => {
            let mut callback = expected.redirect.clone();
            callback.set_query(uri.query());
            let body = match outcome {
                Outcome::Code => RECEIVED_PAGE,
                Outcome::Error => DENIED_PAGE,
            };
            (page(StatusCode::OK, body), Some(callback))
        }
    }
}

/// A static page that is not cached, not framed, runs nothing and sends no referrer.
fn page(status: StatusCode, body: &'static str) -> Response<String> {
    let mut response = Response::new(body.to_owned());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::PRAGMA, "no-cache"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'",
        ),
        (header::CONNECTION, "close"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const STATE: &str = "s3cr3t-state";

    #[test]
    fn a_callback_needs_exactly_one_matching_state() {
        let check = |q: &str| check_callback(Some(q), STATE);
        assert_eq!(check("code=a&state=s3cr3t-state"), Ok(Outcome::Code));
        assert_eq!(
            check("error=access_denied&state=s3cr3t-state"),
            Ok(Outcome::Error)
        );
        assert_eq!(check("state=s3cr3t-stat%65&code=a"), Ok(Outcome::Code));
        for refused in [
            "code=a",
            "code=a&state=",
            "code=a&state=other",
            "code=a&state=s3cr3t-state-",
            "code=a&state=s3cr3t-state&state=s3cr3t-state",
            "code=a&state=other&state=s3cr3t-state",
            "code=a&state=s3cr3t-state&state=other",
        ] {
            assert_eq!(check(refused), Err(Refusal::State), "{refused}");
        }
        for repeated in [
            "code=a&state=s3cr3t-state&iss=x&iss=y",
            "code=a&code=b&state=s3cr3t-state",
            "error=a&error=b&state=s3cr3t-state",
        ] {
            assert_eq!(check(repeated), Err(Refusal::Repeated), "{repeated}");
        }
        assert_eq!(check_callback(None, STATE), Err(Refusal::State));
        assert_eq!(check_callback(Some("state="), ""), Err(Refusal::State));
    }

    #[test]
    fn pasted_urls_are_checked_like_callbacks() {
        let redirect =
            Url::parse("http://127.0.0.1:8080/callback").unwrap_or_else(|_| unreachable!());
        let ok = "http://127.0.0.1:8080/callback?code=c&state=s1&iss=x";
        assert!(check_pasted(ok, &redirect, "s1").is_ok());
        for bad in [
            "http://127.0.0.1:8080/callback?code=c&state=s2",
            "http://127.0.0.1:8080/callback?code=c&state=s1&state=s1",
            "http://127.0.0.1:8080/callback?code=c",
            "http://127.0.0.1:8080/other?code=c&state=s1",
            "http://127.0.0.1:8081/callback?code=c&state=s1",
            "http://127.0.0.1:8080/callback?code=c&code=d&state=s1",
            "not a url",
        ] {
            assert!(check_pasted(bad, &redirect, "s1").is_err(), "{bad}");
        }
    }

    #[test]
    fn the_redirect_uri_is_matched_exactly() {
        let redirect = Url::parse("http://127.0.0.1:8080/callback").unwrap();
        let is = |u: &str| is_redirect_uri(&Url::parse(u).unwrap(), &redirect);
        assert!(is("http://127.0.0.1:8080/callback?code=a&state=b"));
        assert!(!is("http://127.0.0.1:8080/callbackevil?code=a"));
        assert!(!is("http://127.0.0.1:8080/callback/x?code=a"));
        assert!(!is("http://127.0.0.1:8081/callback?code=a"));
        assert!(!is("https://127.0.0.1:8080/callback?code=a"));
        assert!(!is("http://127.0.0.2:8080/callback?code=a"));
        assert!(!is("http://user@127.0.0.1:8080/callback?code=a"));
    }
}
