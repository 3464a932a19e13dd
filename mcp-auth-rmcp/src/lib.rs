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
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::{
    SseError, StreamableHttpClient, StreamableHttpClientTransportConfig, StreamableHttpError,
    StreamableHttpPostResponse, StreamableHttpResponseLimits,
};
use sse_stream::Sse;
use tracing::warn;

type TransportError = StreamableHttpError<reqwest::Error>;

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
            .map_err(|e| refused(&e.to_string()))?
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
                .await;
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

    /// Lets the engine answer a challenge; `None` when it could not (the caller then returns
    /// the original error).
    async fn recover(&self, error: &TransportError) -> Option<AccessCredential> {
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
        match result {
            Ok(token) => match self.auth.credential(&self.resource, token).await {
                Ok(credential) => Some(credential),
                Err(e) => {
                    warn!(error = %e, resource = %self.resource, "authorization failed");
                    None
                }
            },
            Err(e) => {
                warn!(error = %e, resource = %self.resource, "authorization failed");
                None
            }
        }
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
    type Error = reqwest::Error;

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
                Some(credential) => {
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
    }
}
