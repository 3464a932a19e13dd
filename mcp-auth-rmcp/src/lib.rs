#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use futures::stream::BoxStream;
use http::{HeaderName, HeaderValue};
use mcp_auth_core::{AuthError, ExposeSecret, McpAuth, ResourceUri};
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
/// Tokens travel only in the `Authorization: Bearer` header (R30).
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

    /// The stored token, if there is a usable one. Never starts an authorization: the first
    /// request goes out without a token and the server's `401` says where to authorize.
    async fn current_token(&self) -> Option<String> {
        match self.auth.cached_access_token(&self.resource).await {
            Ok(token) => Some(token.expose_secret().to_owned()),
            Err(e) => {
                if !e.needs_login() {
                    warn!(error = %e, "no usable stored token");
                }
                None
            }
        }
    }

    /// Lets the engine answer a challenge; `None` when it could not (the caller then returns
    /// the original error).
    async fn recover(&self, error: &TransportError) -> Option<String> {
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
            Ok(token) => Some(token.expose_secret().to_owned()),
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
        let first = self
            .http
            .post_message_with_response_limits(
                Arc::clone(&uri),
                message.clone(),
                session_id.clone(),
                self.current_token().await,
                custom_headers.clone(),
                limits,
            )
            .await;
        match first {
            Err(error) => match self.recover(&error).await {
                Some(token) => {
                    self.http
                        .post_message_with_response_limits(
                            uri,
                            message,
                            session_id,
                            Some(token),
                            custom_headers,
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
        self.http
            .delete_session(uri, session_id, self.current_token().await, custom_headers)
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
        self.http
            .get_stream(
                uri,
                session_id,
                last_event_id,
                self.current_token().await,
                custom_headers,
            )
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
        self.http
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                self.current_token().await,
                custom_headers,
                max_sse_event_size,
            )
            .await
    }
}
