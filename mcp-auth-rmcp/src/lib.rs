#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use futures::stream::BoxStream;
use http::{HeaderName, HeaderValue};
use mcp_auth_core::{AccessCredential, AuthError, Challenge, ExposeSecret, McpAuth, ResourceUri};
use rmcp::model::ClientJsonRpcMessage;
use rmcp::service::ClientInitializeError;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::{
    SseError, StreamableHttpClient, StreamableHttpClientTransportConfig, StreamableHttpError,
    StreamableHttpPostResponse, StreamableHttpResponseLimits,
};
use rmcp::transport::worker::WorkerQuitReason;
use sse_stream::Sse;
use tracing::warn;

/// The rmcp crate this adapter is built on, so that your rmcp types (`ServiceExt`, `model`,
/// errors) are the very ones [`AuthorizedHttpClient`] implements its trait for.
pub use rmcp;

/// The error of an [`AuthorizedHttpClient`] request, as rmcp's transport carries it.
pub type TransportError = StreamableHttpError<ClientError>;

/// Why a request of an [`AuthorizedHttpClient`] failed on the client side; rmcp carries it as
/// `StreamableHttpError::Client`. Find the [`AuthError`] in any rmcp error with
/// [`auth_error`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// mcp-auth could not authorize the request after the server's `401` or
    /// `403 insufficient_scope`: the reason, to match on (`AuthorizationServerChanged`,
    /// `LoginRequired`, `Authorizer`, …). Nothing was retried.
    #[error("authorization failed: {0}")]
    Auth(#[source] AuthError),
    /// The HTTP request itself failed (connection, TLS, timeout).
    #[error(transparent)]
    Http(#[from] reqwest::Error),
}

impl ClientError {
    /// The reason mcp-auth could not authorize, if that is what failed.
    pub fn auth_error(&self) -> Option<&AuthError> {
        match self {
            Self::Auth(e) => Some(e),
            Self::Http(_) => None,
        }
    }
}

/// The [`AuthError`] inside an error rmcp returned for a transport built on
/// [`AuthorizedHttpClient`] — `ClientInitializeError` from `serve`, `ServiceError` from a
/// request, `WorkerQuitReason`, or the transport error itself — or `None` when authorization
/// was not why it failed. rmcp's errors do not all expose their cause through
/// [`std::error::Error::source`], so use this rather than walking the chain yourself.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use mcp_auth_core::{AuthError, McpAuth, ResourceUri};
/// # use mcp_auth_rmcp::rmcp::ServiceExt;
/// # use mcp_auth_rmcp::rmcp::model::{ClientCapabilities, ClientConfig, Implementation};
/// # async fn demo(auth: Arc<McpAuth>, server: ResourceUri) {
/// let info = ClientConfig::new(ClientCapabilities::default(), Implementation::new("my-host", "1.0"));
/// match info.serve(mcp_auth_rmcp::transport(auth, server)).await {
///     Ok(client) => { /* use it */ }
///     Err(e) => match mcp_auth_rmcp::auth_error(&e) {
///         Some(AuthError::AuthorizationServerChanged { from, to }) => {
///             eprintln!("the server moved from {from} to {to}: configure a client for {to}")
///         }
///         Some(other) => eprintln!("cannot authorize: {other}"),
///         None => eprintln!("cannot connect: {e}"),
///     },
/// }
/// # }
/// ```
pub fn auth_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a AuthError> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(auth) = error.downcast_ref::<AuthError>() {
            return Some(auth);
        }
        if let Some(client) = error.downcast_ref::<ClientError>() {
            return client.auth_error();
        }
        if let Some(transport) = error.downcast_ref::<TransportError>() {
            // `StreamableHttpError::Client` does not expose its content as a source.
            return match transport {
                StreamableHttpError::Client(client) => client.auth_error(),
                _ => None,
            };
        }
        // These two hold the transport error in a field that is not their `source()`.
        current = if let Some(init) = error.downcast_ref::<ClientInitializeError>() {
            match init {
                ClientInitializeError::TransportError { error, .. } => Some(error),
                ClientInitializeError::LegacyFallbackFailed { fallback, .. } => {
                    Some(fallback.as_ref())
                }
                _ => error.source(),
            }
        } else if let Some(WorkerQuitReason::Fatal { error, .. }) =
            error.downcast_ref::<WorkerQuitReason<TransportError>>()
        {
            Some(error)
        } else {
            error.source()
        };
    }
    None
}

/// rmcp's reqwest client error, as this client's.
fn from_reqwest(error: StreamableHttpError<reqwest::Error>) -> TransportError {
    use StreamableHttpError as E;
    match error {
        E::Client(e) => E::Client(ClientError::Http(e)),
        E::Sse(e) => E::Sse(e),
        E::Io(e) => E::Io(e),
        E::HttpStatus(e) => E::HttpStatus(e),
        E::UnexpectedEndOfStream => E::UnexpectedEndOfStream,
        E::UnexpectedServerResponse(m) => E::UnexpectedServerResponse(m),
        E::ResponseBodyTooLarge { max_size } => E::ResponseBodyTooLarge { max_size },
        E::UnexpectedContentType(c) => E::UnexpectedContentType(c),
        E::ServerDoesNotSupportSse => E::ServerDoesNotSupportSse,
        E::ServerDoesNotSupportDeleteSession => E::ServerDoesNotSupportDeleteSession,
        E::TokioJoinError(e) => E::TokioJoinError(e),
        E::Deserialize(e) => E::Deserialize(e),
        E::TransportChannelClosed => E::TransportChannelClosed,
        E::MissingSessionIdInResponse => E::MissingSessionIdInResponse,
        E::AuthRequired(e) => E::AuthRequired(e),
        E::InsufficientScope(e) => E::InsufficientScope(e),
        E::ReservedHeaderConflict(h) => E::ReservedHeaderConflict(h),
        E::SessionExpired => E::SessionExpired,
        E::SessionRecoveryTimeout => E::SessionRecoveryTimeout,
        E::ReinitializationFailed(e) => E::ReinitializationFailed(e),
        E::ControlRequestTimeout => E::ControlRequestTimeout,
        // Variants of rmcp features this client does not use (its own OAuth module) or of a
        // later rmcp: kept as their message.
        other => E::UnexpectedServerResponse(other.to_string().into()),
    }
}

/// An rmcp [`StreamableHttpClient`] whose every request carries the token mcp-auth keeps for the
/// MCP server, and which recovers from `401` (re-discovery, refresh or re-authorization,
/// SEP-2352 on a changed authorization server) and `403 insufficient_scope` (step-up) by asking
/// the engine and retrying the request once. rmcp's own auth module is not used.
///
/// Tokens travel only in the `Authorization` header (R30): `Bearer`, or `DPoP` with a fresh
/// proof (RFC 9449) on every request when the authorization server issued DPoP-bound tokens
/// (see [`mcp_auth_core::ClientConfig::with_dpop`]). A resource server's `use_dpop_nonce`
/// challenge is answered by retrying once with its `DPoP-Nonce`, never by authorizing again.
#[derive(Clone)]
pub struct AuthorizedHttpClient {
    http: reqwest::Client,
    auth: Arc<McpAuth>,
    resource: ResourceUri,
}

impl fmt::Debug for AuthorizedHttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizedHttpClient")
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

impl AuthorizedHttpClient {
    /// A client for the MCP server `resource`, authenticating through `auth`.
    pub fn new(auth: Arc<McpAuth>, resource: ResourceUri) -> Self {
        Self::with_http_client(reqwest::Client::new(), auth, resource)
    }

    /// The same with your own reqwest client (proxies, TLS roots, timeouts).
    pub fn with_http_client(
        http: reqwest::Client,
        auth: Arc<McpAuth>,
        resource: ResourceUri,
    ) -> Self {
        Self {
            http,
            auth,
            resource,
        }
    }

    /// The MCP server.
    pub fn resource(&self) -> &ResourceUri {
        &self.resource
    }

    /// The stored credential, if there is a usable one. Never starts an authorization: the
    /// first request goes out without a token and the server's `401` says where to authorize.
    async fn current_credential(&self) -> Option<AccessCredential> {
        match self.auth.cached_access_credential(&self.resource).await {
            Ok(credential) => Some(credential),
            Err(e) => {
                if !e.needs_login() {
                    warn!(error = %e, "no usable stored token");
                }
                None
            }
        }
    }

    /// What rmcp sends for `credential` on a `method` request to `uri`: a Bearer token as its
    /// auth token; a DPoP-bound one as `Authorization: DPoP …` plus a fresh `DPoP` proof (with
    /// the server's latest nonce) among the custom headers.
    fn present(
        &self,
        credential: Option<&AccessCredential>,
        method: &str,
        uri: &str,
        mut headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(Option<String>, HashMap<HeaderName, HeaderValue>), TransportError> {
        let Some(credential) = credential else {
            return Ok((None, headers));
        };
        if !credential.is_dpop() {
            return Ok((Some(credential.token().expose_secret().to_owned()), headers));
        }
        let refused = |what: &str| {
            StreamableHttpError::UnexpectedServerResponse(
                format!("cannot send a DPoP request: {what}").into(),
            )
        };
        let url = reqwest::Url::parse(uri).map_err(|_| refused("the server URL is invalid"))?;
        let proof = credential
            .dpop_proof(method, &url, self.auth.dpop_nonce(&url).as_deref())
            .map_err(|e| StreamableHttpError::Client(ClientError::Auth(e)))?
            .ok_or_else(|| refused("no DPoP key"))?;
        let mut authorization = HeaderValue::from_str(credential.authorization().expose_secret())
            .map_err(|_| refused("the token is not a valid header value"))?;
        authorization.set_sensitive(true);
        let proof = HeaderValue::from_str(&proof)
            .map_err(|_| refused("the proof is not a header value"))?;
        headers.insert(http::header::AUTHORIZATION, authorization);
        headers.insert(HeaderName::from_static("dpop"), proof);
        Ok((None, headers))
    }

    /// After a `401 use_dpop_nonce` (rmcp keeps only the challenge, not the response headers):
    /// asks the server once more, with a fresh proof, only to read its `DPoP-Nonce`. The server
    /// refuses such a request before acting on it (RFC 9449 §9).
    async fn fetch_dpop_nonce(
        &self,
        credential: &AccessCredential,
        uri: &str,
        message: &ClientJsonRpcMessage,
        session_id: Option<&str>,
        custom_headers: &HashMap<HeaderName, HeaderValue>,
    ) -> bool {
        let Ok((_, headers)) = self.present(Some(credential), "POST", uri, custom_headers.clone())
        else {
            return false;
        };
        let mut request = self
            .http
            .post(uri)
            .header(http::header::ACCEPT, "application/json, text/event-stream")
            .json(message);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if let Some(session_id) = session_id {
            request = request.header("mcp-session-id", session_id);
        }
        let Ok(response) = request.send().await else {
            return false;
        };
        let nonce = response
            .headers()
            .get("dpop-nonce")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match (nonce, reqwest::Url::parse(uri)) {
            (Some(nonce), Ok(url)) => {
                self.auth.record_dpop_nonce(&url, &nonce);
                true
            }
            _ => false,
        }
    }

    /// POSTs with `credential`, answering one `use_dpop_nonce` challenge.
    #[allow(clippy::too_many_arguments)]
    async fn post_with(
        &self,
        credential: Option<&AccessCredential>,
        uri: &Arc<str>,
        message: &ClientJsonRpcMessage,
        session_id: &Option<Arc<str>>,
        custom_headers: &HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> Result<StreamableHttpPostResponse, TransportError> {
        let mut nonce_retried = false;
        loop {
            let (token, headers) = self.present(credential, "POST", uri, custom_headers.clone())?;
            let result = self
                .http
                .post_message_with_response_limits(
                    Arc::clone(uri),
                    message.clone(),
                    session_id.clone(),
                    token,
                    headers,
                    limits,
                )
                .await
                .map_err(from_reqwest);
            if let (Err(StreamableHttpError::AuthRequired(challenge)), Some(credential)) =
                (&result, credential)
                && credential.is_dpop()
                && !nonce_retried
                && Challenge::parse(&challenge.www_authenticate_header).is_dpop_nonce()
            {
                nonce_retried = true;
                if self
                    .fetch_dpop_nonce(
                        credential,
                        uri,
                        message,
                        session_id.as_deref(),
                        custom_headers,
                    )
                    .await
                {
                    continue;
                }
            }
            return result;
        }
    }

    /// Lets the engine answer a challenge: the credential to retry with, or why there is none;
    /// `None` when `error` is no challenge.
    async fn recover(&self, error: &TransportError) -> Option<Result<AccessCredential, AuthError>> {
        let result: Result<_, AuthError> = match error {
            StreamableHttpError::AuthRequired(challenge) => {
                self.auth
                    .handle_unauthorized(&self.resource, Some(&challenge.www_authenticate_header))
                    .await
            }
            StreamableHttpError::InsufficientScope(challenge) => {
                self.auth
                    .handle_insufficient_scope(&self.resource, &challenge.www_authenticate_header)
                    .await
            }
            _ => return None,
        };
        Some(match result {
            Ok(token) => self.auth.credential(&self.resource, token).await,
            Err(e) => Err(e),
        })
    }

    /// An rmcp transport for the server.
    pub fn into_transport(self) -> StreamableHttpClientTransport<Self> {
        let uri = self.resource.to_string();
        StreamableHttpClientTransport::with_client(
            self,
            StreamableHttpClientTransportConfig::with_uri(uri),
        )
    }
}

/// A streamable-HTTP transport to `resource` authenticated by `auth`, ready for
/// `rmcp::ServiceExt::serve`.
pub fn transport(
    auth: Arc<McpAuth>,
    resource: ResourceUri,
) -> StreamableHttpClientTransport<AuthorizedHttpClient> {
    AuthorizedHttpClient::new(auth, resource).into_transport()
}

impl StreamableHttpClient for AuthorizedHttpClient {
    type Error = ClientError;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, TransportError> {
        self.post_message_with_response_limits(
            uri,
            message,
            session_id,
            auth_header,
            custom_headers,
            StreamableHttpResponseLimits::default(),
        )
        .await
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> Result<StreamableHttpPostResponse, TransportError> {
        // The transport config's static auth header is ignored: the engine owns the token.
        let credential = self.current_credential().await;
        let first = self
            .post_with(
                credential.as_ref(),
                &uri,
                &message,
                &session_id,
                &custom_headers,
                limits,
            )
            .await;
        match first {
            Err(error) => match self.recover(&error).await {
                Some(Err(auth)) => Err(StreamableHttpError::Client(ClientError::Auth(auth))),
                Some(Ok(credential)) => {
                    self.post_with(
                        Some(&credential),
                        &uri,
                        &message,
                        &session_id,
                        &custom_headers,
                        limits,
                    )
                    .await
                }
                None => Err(error),
            },
            ok => ok,
        }
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), TransportError> {
        let credential = self.current_credential().await;
        let (token, headers) = self.present(credential.as_ref(), "DELETE", &uri, custom_headers)?;
        self.http
            .delete_session(uri, session_id, token, headers)
            .await
            .map_err(from_reqwest)
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, TransportError> {
        let credential = self.current_credential().await;
        let (token, headers) = self.present(credential.as_ref(), "GET", &uri, custom_headers)?;
        self.http
            .get_stream(uri, session_id, last_event_id, token, headers)
            .await
            .map_err(from_reqwest)
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, TransportError> {
        let credential = self.current_credential().await;
        let (token, headers) = self.present(credential.as_ref(), "GET", &uri, custom_headers)?;
        self.http
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                token,
                headers,
                max_sse_event_size,
            )
            .await
            .map_err(from_reqwest)
    }
}
