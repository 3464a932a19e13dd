//! `mcp-auth proxy --transport sse`: the legacy HTTP+SSE transport (MCP 2024-11-05).
//!
//! The proxy opens `GET URL` (an event stream) and waits for the server's `endpoint` event,
//! whose data is the URI to POST client messages to. That URI must be on the origin of URL: a
//! hostile server must not make the proxy send its bearer token elsewhere. Every client message
//! is POSTed there (the server answers 202 Accepted) and every `message` event of the stream is
//! relayed to stdout. Authorization is the streamable-HTTP path's ([`Proxy::send`]): a 401
//! re-discovers, refreshes or logs in, a 403 `insufficient_scope` steps up, on the GET and on
//! every POST alike; the stream opens at the first message, so a login holds the messages.
//!
//! Legacy SSE cannot resume a dropped stream: the requests still pending get JSON-RPC errors.
//! The next message opens a new stream, which is a new server session: the proxy replays the
//! client's `initialize` and `notifications/initialized` there (swallowing the answer) before
//! forwarding it. That happens once; when the stream drops again, or cannot be reopened, the
//! proxy exits with an error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use reqwest::Url;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde_json::{Value, json};
use tokio::sync::{OwnedMutexGuard, oneshot, watch};
use tracing::{debug, warn};

use super::{Failed, Proxy, SseEvent, SseParser, header_str, request_ids, response_ids};

/// How long the server may take to send its `endpoint` event.
const ENDPOINT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the new server session may take to answer the replayed `initialize`.
const REINITIALIZE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a dropped stream is reopened (each time a new server session).
const MAX_RECONNECTS: u32 = 1;
/// The error of a request whose answer was lost with the stream.
const DROPPED: &str = "the SSE stream of the MCP server dropped before the answer (legacy SSE \
                       cannot resume it); retry the request";

/// The transport of the remote MCP server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Transport {
    /// Streamable HTTP (MCP 2025-03-26 and later).
    #[default]
    StreamableHttp,
    /// The legacy HTTP+SSE transport (MCP 2024-11-05): URL is the server's SSE endpoint.
    Sse,
}

/// A request posted on the open stream and not answered yet.
struct Waiting {
    id: Value,
    /// The proxy's own request (the replayed `initialize`): its answer is not relayed.
    internal: bool,
    done: oneshot::Sender<Value>,
}

#[derive(Default)]
struct Stream {
    /// Counts the streams opened.
    generation: u64,
    /// Where to POST, while the stream `generation` is open.
    endpoint: Option<Url>,
    /// The requests posted on the open stream and not answered yet, by `id.to_string()`.
    pending: HashMap<String, Waiting>,
    /// How many streams dropped so far.
    drops: u32,
    /// The client's `initialize` request, replayed on a new stream.
    initialize: Option<Value>,
    /// The client sent `notifications/initialized`.
    initialized: bool,
}

/// The state of the legacy SSE transport.
pub(super) struct Sse {
    /// Held while the stream opens: later messages wait for it (as during a login).
    opening: tokio::sync::Mutex<()>,
    stream: Mutex<Stream>,
    /// Set when the transport gives up: the proxy exits with this message.
    fatal: watch::Sender<Option<String>>,
}

impl Sse {
    pub(super) fn new() -> Sse {
        Sse {
            opening: tokio::sync::Mutex::new(()),
            stream: Mutex::new(Stream::default()),
            fatal: watch::Sender::new(None),
        }
    }

    fn stream(&self) -> MutexGuard<'_, Stream> {
        self.stream.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fail(&self, message: &str) {
        warn!("{message}");
        self.fatal.send_if_modified(|fatal| {
            let first = fatal.is_none();
            if first {
                *fatal = Some(message.to_owned());
            }
            first
        });
    }

    /// The ids among `ids` still waiting for an answer on stream `generation` (now forgotten).
    fn forget(&self, generation: u64, ids: &[Value]) -> Vec<Value> {
        let mut s = self.stream();
        if s.generation != generation {
            return Vec::new();
        }
        ids.iter()
            .filter_map(|id| s.pending.remove(&id.to_string()).map(|w| w.id))
            .collect()
    }
}

/// Resolves when the SSE transport gave up (never with streamable HTTP), with the reason.
pub(super) async fn fatal(proxy: &Proxy) -> String {
    let Some(sse) = &proxy.sse else {
        return std::future::pending().await;
    };
    let mut rx = sse.fatal.subscribe();
    let reason = rx.wait_for(Option::is_some).await.map(|r| r.clone());
    match reason {
        Ok(Some(reason)) => reason,
        _ => std::future::pending().await,
    }
}

fn failed(f: Failed) -> String {
    match f {
        Failed::Auth(m) | Failed::Transport(m) => m,
    }
}

/// Forwards one message from the client; for requests, waits until they are answered (or
/// failed), like the streamable-HTTP path.
pub(super) async fn forward(proxy: Arc<Proxy>, message: Value, order: Option<OwnedMutexGuard<()>>) {
    let Some(sse) = &proxy.sse else { return };
    let ids = request_ids(&message);
    let (endpoint, generation) = match ready(&proxy, sse).await {
        Ok(open) => open,
        Err(m) => {
            drop(order);
            warn!("{m}");
            proxy.emit_errors(&ids, &m);
            return;
        }
    };
    // Registered before the POST: the answer may come on the stream before the POST returns.
    let mut answers = Vec::new();
    {
        let mut s = sse.stream();
        if s.generation != generation || s.endpoint.is_none() {
            drop(s);
            drop(order);
            proxy.emit_errors(&ids, DROPPED);
            return;
        }
        match message.get("method").and_then(Value::as_str) {
            Some("initialize") => s.initialize = Some(message.clone()),
            Some("notifications/initialized") => s.initialized = true,
            _ => {}
        }
        for id in &ids {
            let (done, answered) = oneshot::channel();
            let waiting = Waiting {
                id: id.clone(),
                internal: false,
                done,
            };
            s.pending.insert(id.to_string(), waiting);
            answers.push(answered);
        }
    }
    let posted = post(&proxy, &endpoint, message.to_string()).await;
    drop(order);
    if let Err(m) = posted {
        warn!("{m}");
        proxy.emit_errors(&sse.forget(generation, &ids), &m);
        return;
    }
    for answered in answers {
        // An error means the stream dropped, which answered the request with an error.
        let _ = answered.await;
    }
}

/// POSTs one message to the endpoint (its answer comes on the stream).
async fn post(proxy: &Proxy, endpoint: &Url, body: String) -> Result<(), String> {
    let response = proxy
        .send(|token| {
            proxy
                .request_to(reqwest::Method::POST, endpoint.clone(), token)
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone())
        })
        .await
        .map_err(failed)?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!(
            "the MCP server answered HTTP {status} to a message"
        ))
    }
}

/// Why the stream did not open.
enum OpenError {
    /// The next message may try again.
    Retry(String),
    /// The proxy cannot go on.
    Fatal(String),
}

/// The endpoint of the open stream and its generation; opens the stream if needed.
async fn ready(proxy: &Arc<Proxy>, sse: &Sse) -> Result<(Url, u64), String> {
    let _opening = sse.opening.lock().await;
    if let Some(m) = sse.fatal.borrow().clone() {
        return Err(m);
    }
    let reconnect = {
        let s = sse.stream();
        if let Some(endpoint) = &s.endpoint {
            return Ok((endpoint.clone(), s.generation));
        }
        s.drops > 0
    };
    match open(proxy, sse, reconnect).await {
        Ok(open) => Ok(open),
        Err(OpenError::Retry(m)) if !reconnect => Err(m),
        Err(OpenError::Retry(m) | OpenError::Fatal(m)) => {
            let m = if reconnect {
                format!("cannot reopen the dropped SSE stream of {}: {m}", proxy.url)
            } else {
                m
            };
            sse.fail(&m);
            Err(m)
        }
    }
}

/// `base.join(data)`, refused on another origin than `base`'s.
fn resolve_endpoint(base: &Url, data: &str) -> Result<Url, String> {
    let mut endpoint = base
        .join(data.trim())
        .map_err(|e| format!("the server's SSE endpoint event {data:?} is not a URI: {e}"))?;
    endpoint.set_fragment(None);
    if endpoint.origin() != base.origin() {
        return Err(format!(
            "refusing the SSE endpoint on another origin ({}) than the server URL ({}): the \
             proxy sends its bearer token only to the server's origin",
            endpoint.origin().ascii_serialization(),
            base.origin().ascii_serialization()
        ));
    }
    Ok(endpoint)
}

/// Opens the stream: GET, then its `endpoint` event; starts relaying it.
async fn open(proxy: &Arc<Proxy>, sse: &Sse, reconnect: bool) -> Result<(Url, u64), OpenError> {
    let response = proxy
        .send(|token| {
            proxy
                .request(reqwest::Method::GET, token)
                .header(ACCEPT, "text/event-stream")
        })
        .await
        .map_err(|f| OpenError::Retry(failed(f)))?;
    let status = response.status();
    let is_stream = header_str(response.headers(), "content-type")
        .is_some_and(|c| c.starts_with("text/event-stream"));
    if !status.is_success() || !is_stream {
        return Err(OpenError::Retry(format!(
            "the MCP server answered GET {} with HTTP {status}{}; with --transport sse the URL \
             must be the server's legacy SSE endpoint",
            proxy.url,
            if is_stream {
                ""
            } else {
                " and no event stream"
            }
        )));
    }
    let mut response = response;
    let mut parser = SseParser::default();
    let waited = tokio::time::timeout(ENDPOINT_TIMEOUT, async {
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => {
                    return Err(OpenError::Retry(
                        "the SSE stream ended before its endpoint event".to_owned(),
                    ));
                }
                Err(e) => {
                    return Err(OpenError::Retry(format!(
                        "the SSE stream dropped before its endpoint event: {}",
                        e.without_url()
                    )));
                }
            };
            let mut endpoint = None;
            for event in parser.push(&chunk) {
                if endpoint.is_none() && event.event.as_deref() == Some("endpoint") {
                    endpoint = Some(resolve_endpoint(&proxy.url, &event.data));
                } else {
                    // Nothing was posted yet: nothing is pending.
                    relay(proxy, sse, &event);
                }
            }
            if let Some(endpoint) = endpoint {
                return endpoint.map_err(OpenError::Fatal);
            }
        }
    })
    .await;
    let endpoint = waited.map_err(|_| {
        OpenError::Retry(format!(
            "the MCP server sent no endpoint event within {} s",
            ENDPOINT_TIMEOUT.as_secs()
        ))
    })??;
    debug!(%endpoint, "SSE stream open");
    let generation = {
        let mut s = sse.stream();
        s.generation += 1;
        s.endpoint = Some(endpoint.clone());
        s.generation
    };
    let me = Arc::clone(proxy);
    let reader = tokio::spawn(async move { read(me, response, parser, generation).await });
    // Closed (aborted) when the proxy stops.
    proxy.session().get_stream = Some(reader.abort_handle());
    if reconnect {
        warn!(
            "the dropped SSE stream of {} was reopened: the new endpoint is a new server session \
             (server-side state such as subscriptions starts over)",
            proxy.url
        );
        reinitialize(proxy, sse, &endpoint, generation)
            .await
            .map_err(OpenError::Fatal)?;
    }
    Ok((endpoint, generation))
}

/// Replays the client's handshake on a new server session.
async fn reinitialize(
    proxy: &Proxy,
    sse: &Sse,
    endpoint: &Url,
    generation: u64,
) -> Result<(), String> {
    let init = {
        let s = sse.stream();
        s.initialize.clone().filter(|_| s.initialized)
    };
    let Some(mut init) = init else {
        return Ok(());
    };
    let id = json!(format!("mcp-auth-proxy-reinitialize-{generation}"));
    if let Some(o) = init.as_object_mut() {
        o.insert("id".to_owned(), id.clone());
    }
    let (done, answered) = oneshot::channel();
    sse.stream().pending.insert(
        id.to_string(),
        Waiting {
            id,
            internal: true,
            done,
        },
    );
    post(proxy, endpoint, init.to_string()).await?;
    let answer = tokio::time::timeout(REINITIALIZE_TIMEOUT, answered)
        .await
        .map_err(|_| "the new server session did not answer initialize".to_owned())?
        .map_err(|_| "the new SSE stream dropped during initialize".to_owned())?;
    if answer.get("result").is_none() {
        return Err(format!(
            "the new server session refused initialize: {}",
            answer.get("error").unwrap_or(&Value::Null)
        ));
    }
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    post(proxy, endpoint, initialized.to_string()).await?;
    debug!("the new server session is initialized");
    Ok(())
}

/// Relays the stream `generation` until it ends.
async fn read(
    proxy: Arc<Proxy>,
    mut response: reqwest::Response,
    mut parser: SseParser,
    generation: u64,
) {
    let Some(sse) = &proxy.sse else { return };
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                for event in parser.push(&chunk) {
                    relay(&proxy, sse, &event);
                }
            }
            Ok(None) => {
                debug!("the SSE stream ended");
                break;
            }
            Err(e) => {
                debug!(error = %e.without_url(), "the SSE stream dropped");
                break;
            }
        }
    }
    dropped(&proxy, sse, generation);
}

/// Relays a `message` event (unchanged) and notes the requests it answers.
fn relay(proxy: &Proxy, sse: &Sse, event: &SseEvent) {
    match event.event.as_deref().unwrap_or("message") {
        "message" => {}
        "endpoint" => {
            warn!("the server sent another endpoint event; ignored");
            return;
        }
        other => {
            debug!(event = other, "SSE event ignored");
            return;
        }
    }
    if event.data.trim().is_empty() {
        return;
    }
    let message = match serde_json::from_str::<Value>(&event.data) {
        Ok(v) => v,
        Err(e) => {
            warn!(error = %e, "an SSE message is not JSON; dropped");
            return;
        }
    };
    let answered: Vec<Waiting> = {
        let mut s = sse.stream();
        response_ids(&message)
            .iter()
            .filter_map(|id| s.pending.remove(&id.to_string()))
            .collect()
    };
    let mut relayed = true;
    let mut done = Vec::new();
    for waiting in answered {
        if waiting.internal {
            relayed = false;
            let _ = waiting.done.send(message.clone());
        } else {
            done.push(waiting.done);
        }
    }
    if relayed {
        proxy.emit(&message);
    }
    for done in done {
        let _ = done.send(Value::Null);
    }
}

/// The stream `generation` ended: its pending requests fail; the next message reopens it, or
/// the proxy gives up.
fn dropped(proxy: &Proxy, sse: &Sse, generation: u64) {
    let (waiting, drops) = {
        let mut s = sse.stream();
        if s.generation != generation || s.endpoint.is_none() {
            return;
        }
        s.endpoint = None;
        s.drops += 1;
        (std::mem::take(&mut s.pending), s.drops)
    };
    let ids: Vec<Value> = waiting
        .values()
        .filter(|w| !w.internal)
        .map(|w| w.id.clone())
        .collect();
    proxy.emit_errors(&ids, DROPPED);
    drop(waiting);
    if drops > MAX_RECONNECTS {
        sse.fail(&format!(
            "the SSE stream of {} dropped again (legacy SSE sessions cannot be resumed); restart \
             the MCP client",
            proxy.url
        ));
    } else {
        warn!(
            "the SSE stream of {} dropped; the next message opens a new one",
            proxy.url
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_resolves_on_the_same_origin_only() {
        let base = Url::parse("http://127.0.0.1:3001/sse").unwrap();
        assert_eq!(
            resolve_endpoint(&base, "/message?sessionId=a b")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:3001/message?sessionId=a%20b"
        );
        assert_eq!(
            resolve_endpoint(&base, "http://127.0.0.1:3001/m#x")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:3001/m"
        );
        for hostile in [
            "http://127.0.0.1:3002/message",
            "https://127.0.0.1:3001/message",
            "//evil.example/message",
            "http://localhost:3001/message",
            "data:text/plain,x",
        ] {
            let e = resolve_endpoint(&base, hostile).unwrap_err();
            assert!(e.contains("another origin"), "{hostile}: {e}");
        }
    }

    #[test]
    fn parser_keeps_event_types() {
        let mut p = SseParser::default();
        let events = p.push(b"event: endpoint\ndata: /m?s=1\n\ndata: {}\n\n");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].event.as_deref(), Some("endpoint"));
        assert_eq!(events[0].data, "/m?s=1");
        assert_eq!(events[1].event, None);
    }
}
