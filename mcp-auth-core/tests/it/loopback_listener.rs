//! The authorizers against a hostile local network (issue 10): the loopback callback listener
//! accepts only its own login's callback and cannot be blocked by other connections; the
//! headless authorizer obeys the engine's SSRF policy and the login's `state`; IPv6 literals
//! embedding a forbidden IPv4 address are refused before any request.
//!
//! All traffic goes to 127.0.0.1; the IPv6 literals are refused before a connection is made.
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mcp_auth_core::{
    AuthError, AuthorizationRequest, Authorizer, HeadlessAuthorizer, HttpPolicy,
    LoopbackAuthorizer, McpAuth, MemoryStore, ResourceUri,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use url::Url;

/// The `state` of the login under test.
const STATE: &str = "this-logins-state-Qm9vdGggc3RhdGUgMDEyMzQ1";
/// The code the real authorization server sends back.
const VICTIM_CODE: &str = "victim-code-5f1c2e";

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn request_for(port: u16) -> AuthorizationRequest {
    // The authorization URL is only handed to `open`, which never fetches it here.
    let url = Url::parse(&format!(
        "https://as.example/authorize?response_type=code&state={STATE}"
    ))
    .unwrap();
    AuthorizationRequest::new(url, format!("http://127.0.0.1:{port}/callback"), STATE)
}

/// The real callback of this login.
fn real_callback() -> String {
    format!("/callback?code={VICTIM_CODE}&state={STATE}&iss=https%3A%2F%2Fas.example")
}

/// One HTTP answer read from a raw connection.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// Header lines, lowercased.
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            (n.trim() == name).then(|| v.trim())
        })
    }
}

/// Sends `request` on a new connection to the listener and reads the answer until the server
/// closes. `None`: no connection, or no HTTP answer.
async fn raw(port: u16, request: &[u8]) -> Option<Reply> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    stream.write_all(request).await.ok()?;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    if read.is_err() {
        return None;
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(Reply {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    })
}

async fn send(port: u16, method: &str, target: &str) -> Option<Reply> {
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    raw(port, request.as_bytes()).await
}

async fn get(port: u16, target: &str) -> Option<Reply> {
    send(port, "GET", target).await
}

/// Runs `LoopbackAuthorizer::authorize` on a free port; `open` starts `scenario` (the browser
/// and the attackers) once the listener is up. Returns the authorizer's result, how long it
/// took, and the scenario's task.
async fn run_login<F, Fut, T>(
    timeout: Duration,
    scenario: F,
) -> (Result<Url, AuthError>, Duration, u16, JoinHandle<T>)
where
    F: FnOnce(u16) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let port = free_port();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let start = Mutex::new(Some((scenario, tx)));
    let authorizer = LoopbackAuthorizer::new(
        move |_url| {
            if let Some((scenario, tx)) = start.lock().unwrap().take() {
                let _ = tx.send(tokio::spawn(scenario(port)));
            }
        },
        timeout,
    );
    let began = Instant::now();
    let result = authorizer.authorize(request_for(port)).await;
    let elapsed = began.elapsed();
    let task = rx.await.expect("open was not called");
    (result, elapsed, port, task)
}

fn code_of(url: &Url) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
}

/// Every page: static HTML that is never cached and never leaks the URL as a referrer.
fn assert_safe_page(reply: &Reply, what: &str) {
    assert!(
        reply
            .header("content-type")
            .is_some_and(|v| v.starts_with("text/html")),
        "{what}: {reply:?}"
    );
    assert_eq!(reply.header("cache-control"), Some("no-store"), "{what}");
    assert_eq!(
        reply.header("referrer-policy"),
        Some("no-referrer"),
        "{what}"
    );
}

fn assert_refused_as_not_this_login(reply: Option<Reply>, status: u16, what: &str) {
    let reply = reply.unwrap_or_else(|| panic!("{what}: no answer (the listener stopped?)"));
    assert_eq!(reply.status, status, "{what}: {reply:?}");
    assert!(
        reply.body.contains("not for this login"),
        "{what}: the page must say so: {}",
        reply.body
    );
    assert_safe_page(&reply, what);
}

/// A1: a callback with another state (an attacker's, or a stale login's) is answered 400 and
/// ignored; the real callback that follows is the one returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_state_first_then_right_state_returns_the_right_one() {
    let (result, _, _, task) = run_login(Duration::from_secs(10), |port| async move {
        let wrong = get(port, "/callback?code=attacker-code&state=another-login").await;
        let missing = get(port, "/callback?code=attacker-code").await;
        let right = get(port, &real_callback()).await;
        (wrong, missing, right)
    })
    .await;
    let (wrong, missing, right) = task.await.unwrap();
    let callback = result.expect("the real callback must be returned");
    assert_eq!(code_of(&callback).as_deref(), Some(VICTIM_CODE));
    assert_refused_as_not_this_login(wrong, 400, "another state");
    assert_refused_as_not_this_login(missing, 400, "no state");
    let right = right.expect("the real callback got no answer");
    assert_eq!(right.status, 200, "{right:?}");
}

/// A1: duplicated `state` or `iss` (parameter pollution: which copy a parser takes varies) is
/// refused, and the listener keeps listening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_state_or_iss_is_refused_and_the_listener_keeps_listening() {
    let (result, _, _, task) = run_login(Duration::from_secs(10), |port| async move {
        let mut replies = Vec::new();
        for target in [
            format!("/callback?code=a&state={STATE}&state={STATE}"),
            format!("/callback?code=a&state={STATE}&state=another-login"),
            format!("/callback?code=a&state=another-login&state={STATE}"),
            format!(
                "/callback?code=a&state={STATE}&iss=https%3A%2F%2Fas.example&iss=https%3A%2F%2Fevil.example"
            ),
            format!("/callback?code=a&code=b&state={STATE}"),
        ] {
            replies.push((target.clone(), get(port, &target).await));
        }
        let right = get(port, &real_callback()).await;
        (replies, right)
    })
    .await;
    let (replies, right) = task.await.unwrap();
    let callback = result.expect("the real callback must be returned");
    assert_eq!(code_of(&callback).as_deref(), Some(VICTIM_CODE));
    for (target, reply) in replies {
        assert_refused_as_not_this_login(reply, 400, &target);
    }
    assert_eq!(right.unwrap().status, 200);
}

/// A1: other paths are 404 and do not end the login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_paths_are_404_and_the_listener_keeps_listening() {
    let (result, _, _, task) = run_login(Duration::from_secs(10), |port| async move {
        let mut replies = Vec::new();
        for target in [
            format!("/?code=a&state={STATE}"),
            format!("/callback/extra?code=a&state={STATE}"),
            format!("/callbackx?code=a&state={STATE}"),
            "/favicon.ico".to_owned(),
        ] {
            replies.push((target.clone(), get(port, &target).await));
        }
        let right = get(port, &real_callback()).await;
        (replies, right)
    })
    .await;
    let (replies, right) = task.await.unwrap();
    let callback = result.expect("the real callback must be returned");
    assert_eq!(code_of(&callback).as_deref(), Some(VICTIM_CODE));
    for (target, reply) in replies {
        assert_refused_as_not_this_login(reply, 404, &target);
    }
    assert_eq!(right.unwrap().status, 200);
}

/// A2: only a GET is the browser's redirect; any other method is refused (405) and ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_get_is_answered_with_the_success_page() {
    let (result, _, _, task) = run_login(Duration::from_secs(10), |port| async move {
        let post = send(port, "POST", &format!("/callback?code=a&state={STATE}")).await;
        let put = send(port, "PUT", &format!("/callback?code=a&state={STATE}")).await;
        let right = get(port, &real_callback()).await;
        (post, put, right)
    })
    .await;
    let (post, put, right) = task.await.unwrap();
    let callback = result.expect("the real callback must be returned");
    assert_eq!(code_of(&callback).as_deref(), Some(VICTIM_CODE));
    assert_refused_as_not_this_login(post, 405, "POST");
    assert_refused_as_not_this_login(put, 405, "PUT");
    assert_eq!(right.unwrap().status, 200);
}

/// A2: an idle connection, a slowloris trickling its request line, 50 connections sending
/// garbage, and an oversized request do not delay the real callback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_slowloris_and_junk_connections_do_not_block_the_callback() {
    let (result, elapsed, _, task) = run_login(Duration::from_secs(8), |port| async move {
        let mut held = Vec::new();
        // Accepted first: the old listener read this one until the timeout.
        held.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Slowloris: one byte of a plausible request every 200 ms, never finished.
        let mut slow = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let slowloris = tokio::spawn(async move {
            for byte in format!("GET /callback?code=slow&state={STATE}&x=")
                .bytes()
                .cycle()
            {
                if slow.write_all(&[byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        for i in 0..50u8 {
            let mut junk = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let garbage: Vec<u8> = (0..64u8)
                .map(|b| b.wrapping_mul(31).wrapping_add(i) | 0x80)
                .collect();
            let _ = junk.write_all(&garbage).await;
            held.push(junk);
        }
        // An oversized request with the right state: refused, not a callback.
        let huge = format!(
            "GET /callback?code=oversized&state={STATE}&pad={} HTTP/1.1\r\nHost: x\r\n\r\n",
            "a".repeat(64 * 1024)
        );
        let oversized = raw(port, huge.as_bytes()).await;
        let sent = Instant::now();
        let right = get(port, &real_callback()).await;
        let answered_in = sent.elapsed();
        // Keep the attackers' connections open until the test ends.
        tokio::spawn(async move {
            let _held = held;
            tokio::time::sleep(Duration::from_secs(30)).await;
            slowloris.abort();
        });
        (oversized, right, answered_in)
    })
    .await;
    let (oversized, right, answered_in) = task.await.unwrap();
    let callback = result.expect("the real callback must be returned despite the attackers");
    assert_eq!(code_of(&callback).as_deref(), Some(VICTIM_CODE));
    assert!(
        elapsed < Duration::from_secs(5),
        "the login took {elapsed:?} with attackers connected"
    );
    let right = right.expect("the real callback got no answer");
    assert_eq!(right.status, 200);
    assert!(answered_in < Duration::from_secs(2), "{answered_in:?}");
    if let Some(reply) = oversized {
        assert!(
            (400..500).contains(&reply.status),
            "an oversized request must be refused: {reply:?}"
        );
    }
}

/// A2: more idle connections than the listener serves at once (it drops the oldest) do not
/// keep the real callback out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_does_not_block_the_callback() {
    let (result, elapsed, _, task) = run_login(Duration::from_secs(8), |port| async move {
        let mut held = Vec::new();
        for _ in 0..300 {
            held.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
        }
        let right = get(port, &real_callback()).await;
        tokio::spawn(async move {
            let _held = held;
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        right
    })
    .await;
    let right = task.await.unwrap();
    let callback = result.expect("the real callback must be returned despite the flood");
    assert_eq!(code_of(&callback).as_deref(), Some(VICTIM_CODE));
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(right.expect("no answer").status, 200);
}

/// A1: a callback with this login's state and an `error` is this login's answer: it is
/// returned (the engine reports the error), with a static page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_callback_with_the_right_state_is_returned() {
    let (result, _, _, task) = run_login(Duration::from_secs(10), |port| async move {
        get(
            port,
            &format!("/callback?error=access_denied&error_description=no%20thanks&state={STATE}"),
        )
        .await
    })
    .await;
    let reply = task.await.unwrap().expect("no answer");
    let callback = result.expect("the error callback must be returned");
    assert!(
        callback
            .query_pairs()
            .any(|(k, v)| k == "error" && v == "access_denied")
    );
    assert_eq!(reply.status, 200);
    assert_safe_page(&reply, "error callback");
    assert!(!reply.body.contains("access_denied") && !reply.body.contains("no thanks"));
}

/// A3: no page reflects a query value (no XSS, no code in the success page), and every page
/// is `no-store` and `no-referrer`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_reflect_no_query_value() {
    const MARK: &str = "xss-marker-93b1";
    let payload = format!("%3Cscript%3Ealert(%27{MARK}%27)%3C%2Fscript%3E");
    let (result, _, _, task) = run_login(Duration::from_secs(10), move |port| async move {
        let mut replies = Vec::new();
        for target in [
            format!("/callback?code={payload}&state=another-{MARK}&error_description={payload}"),
            format!("/callback?code={payload}&state={STATE}&state={STATE}"),
            format!("/{payload}?code={payload}&state={STATE}"),
            format!(
                "/callback?code={VICTIM_CODE}&state={STATE}&iss={payload}&error_description={payload}"
            ),
        ] {
            replies.push((target.clone(), get(port, &target).await));
        }
        replies
    })
    .await;
    let replies = task.await.unwrap();
    assert_eq!(code_of(&result.unwrap()).as_deref(), Some(VICTIM_CODE));
    for (target, reply) in replies {
        let reply = reply.unwrap_or_else(|| panic!("{target}: no answer"));
        assert_safe_page(&reply, &target);
        for secret in [MARK, VICTIM_CODE, STATE, "<script"] {
            assert!(
                !reply.body.contains(secret) && !reply.head.contains(&secret.to_ascii_lowercase()),
                "{target}: the page reflects {secret:?}: {reply:?}"
            );
        }
    }
}

/// A4: with no callback, `authorize` fails with a clear `Authorizer` error naming the redirect
/// URI and the time waited (never the state), closes open connections and releases the port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_is_a_clear_error_and_releases_the_port() {
    let (result, elapsed, port, task) = run_login(Duration::from_millis(700), |port| async move {
        TcpStream::connect(("127.0.0.1", port)).await.unwrap()
    })
    .await;
    let mut idle = task.await.unwrap();
    let Err(AuthError::Authorizer(message)) = result else {
        panic!("expected an Authorizer error, got {result:?}");
    };
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert!(
        message.contains(&format!("http://127.0.0.1:{port}/callback")),
        "the message should name where the callback was awaited: {message}"
    );
    assert!(message.contains("700ms"), "and for how long: {message}");
    assert!(!message.contains(STATE), "{message}");
    // The connection that was open is closed, and the port is free again.
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the idle connection is still open: {closed:?}"
    );
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port was not released");
}

/// An opener that cannot show the URL (no browser on this machine) ends the login at once
/// with an `Authorizer` error saying so — not after the timeout — without the URL's `state`,
/// and releases the port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opener_that_fails_ends_the_login_at_once() {
    let port = free_port();
    let authorizer = LoopbackAuthorizer::with_opener(|_url| Err("no browser here".into()))
        .timeout(Duration::from_secs(30));
    let began = Instant::now();
    let result = authorizer.authorize(request_for(port)).await;
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    let Err(AuthError::Authorizer(message)) = result else {
        panic!("expected an Authorizer error, got {result:?}");
    };
    assert!(message.contains("no browser here"), "{message}");
    assert!(!message.contains(STATE), "{message}");
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port was not released");
}

/// The engine's default authorizer is the browser flow on the loopback listener, never the
/// test-only headless redirect-follower.
#[test]
fn the_default_authorizer_is_the_loopback_browser_flow() {
    let auth = McpAuth::builder(Arc::new(MemoryStore::new()))
        .build()
        .unwrap();
    let debug = format!("{auth:?}");
    assert!(debug.contains("LoopbackAuthorizer"), "{debug}");
    assert!(debug.contains("300s"), "five minutes to log in: {debug}");
    assert!(!debug.contains("HeadlessAuthorizer"), "{debug}");
}

/// A minimal authorization endpoint on 127.0.0.1: answers every request with a `302` to
/// `location(request target)`, and counts the connections it receives.
struct MockAs {
    port: u16,
    connections: Arc<AtomicUsize>,
}

async fn mock_as(location: impl Fn(&str) -> String + Send + Sync + 'static) -> MockAs {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    let location = Arc::new(location);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let location = location.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let target = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let response = format!(
                    "HTTP/1.1 302 Found\r\nLocation: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    location(&target)
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    MockAs { port, connections }
}

/// Never contacted: the headless authorizer returns the redirect to it without following it.
const HEADLESS_REDIRECT: &str = "http://127.0.0.1:9/callback";

async fn headless_login(
    authorizer: &HeadlessAuthorizer,
    redirect_query: &str,
) -> Result<Url, AuthError> {
    let query = redirect_query.to_owned();
    // One same-origin hop (a login page approving at once), then the redirect back.
    let server = mock_as(move |target| {
        if target.starts_with("/authorize") {
            "/approve".to_owned()
        } else {
            format!("{HEADLESS_REDIRECT}?{query}")
        }
    })
    .await;
    let url = Url::parse(&format!(
        "http://127.0.0.1:{}/authorize?state={STATE}",
        server.port
    ))
    .unwrap();
    authorizer
        .authorize(AuthorizationRequest::new(url, HEADLESS_REDIRECT, STATE))
        .await
}

/// A5: the headless authorizer returns a redirect only if it carries exactly one `state`, this
/// login's (and no repeated `iss`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_returns_only_a_redirect_carrying_this_logins_state() {
    let authorizer = HeadlessAuthorizer::with_policy(HttpPolicy::allowing_loopback()).unwrap();
    for accepted in [
        format!("code=c&state={STATE}&iss=https%3A%2F%2Fas.example"),
        format!("error=access_denied&state={STATE}"),
    ] {
        let callback = headless_login(&authorizer, &accepted).await;
        let callback = callback.unwrap_or_else(|e| panic!("{accepted}: {e:?}"));
        assert_eq!(callback.query(), Some(accepted.as_str()));
    }
    for refused in [
        "code=c&state=another-login".to_owned(),
        "code=c".to_owned(),
        format!("code=c&state={STATE}&state={STATE}"),
        format!("code=c&state=another-login&state={STATE}"),
        format!("code=c&state={STATE}&state=another-login"),
    ] {
        let result = headless_login(&authorizer, &refused).await;
        assert!(
            matches!(result, Err(AuthError::StateMismatch)),
            "{refused}: {result:?}"
        );
    }
    let repeated =
        format!("code=c&state={STATE}&iss=https%3A%2F%2Fas.example&iss=https%3A%2F%2Fevil.example");
    let result = headless_login(&authorizer, &repeated).await;
    assert!(
        matches!(result, Err(AuthError::Authorizer(_))),
        "{repeated}: {result:?}"
    );
}

/// A5: the redirect URI is matched exactly, not as a prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_matches_the_redirect_uri_exactly() {
    let authorizer = HeadlessAuthorizer::with_policy(HttpPolicy::allowing_loopback()).unwrap();
    let server = mock_as(|_| format!("{HEADLESS_REDIRECT}evil?code=c&state={STATE}")).await;
    let url = Url::parse(&format!("http://127.0.0.1:{}/authorize", server.port)).unwrap();
    let result = authorizer
        .authorize(AuthorizationRequest::new(url, HEADLESS_REDIRECT, STATE))
        .await;
    assert!(
        matches!(result, Err(AuthError::Authorizer(_))),
        "a redirect to {HEADLESS_REDIRECT}evil was taken for the redirect URI: {result:?}"
    );
}

/// A5: the headless authorizer uses the engine's HTTP client and policy: under the default
/// policy a loopback authorization endpoint (IP literal, `localhost`, IPv4-mapped) is refused
/// before any connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_default_policy_refuses_loopback_before_connecting() {
    let server = mock_as(|_| format!("{HEADLESS_REDIRECT}?code=c&state={STATE}")).await;
    let authorizer = HeadlessAuthorizer::new().unwrap();
    for url in [
        format!("http://127.0.0.1:{}/authorize", server.port),
        format!("https://127.0.0.1:{}/authorize", server.port),
        format!("http://localhost:{}/authorize", server.port),
        format!("https://localhost:{}/authorize", server.port),
        format!("https://[::ffff:127.0.0.1]:{}/authorize", server.port),
    ] {
        let request =
            AuthorizationRequest::new(Url::parse(&url).unwrap(), HEADLESS_REDIRECT, STATE);
        let result = authorizer.authorize(request).await;
        assert!(
            matches!(result, Err(AuthError::UnsafeUrl { .. })),
            "{url}: {result:?}"
        );
    }
    assert_eq!(
        server.connections.load(Ordering::SeqCst),
        0,
        "a refused authorization endpoint was contacted"
    );
    // The same server is reached when the policy allows loopback.
    let allowed = HeadlessAuthorizer::with_policy(HttpPolicy::allowing_loopback()).unwrap();
    let url = Url::parse(&format!("http://127.0.0.1:{}/authorize", server.port)).unwrap();
    allowed
        .authorize(AuthorizationRequest::new(url, HEADLESS_REDIRECT, STATE))
        .await
        .unwrap();
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
}

/// B: protected resource metadata at an IPv6 literal embedding a forbidden IPv4 address
/// (IPv4-compatible, IPv4-translated, 6to4, Teredo, NAT64) is refused before any request.
/// Pure: the refusal happens before a connection is attempted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_literals_embedding_forbidden_ipv4_are_refused_before_any_request() {
    let default_policy = McpAuth::builder(Arc::new(MemoryStore::new()))
        .build()
        .unwrap();
    let mut private = HttpPolicy::default();
    private.allow_private = true;
    let private_allowed = McpAuth::builder(Arc::new(MemoryStore::new()))
        .http_policy(private)
        .build()
        .unwrap();
    let embedding_loopback = [
        "::127.0.0.1",
        "::ffff:0:127.0.0.1",
        "2002:7f00:1::1",
        "2001:0:7f00:1::f7f7:f7f7",
        "2001:0:808:808::80ff:fffe",
        "64:ff9b::127.0.0.1",
        "64:ff9b:1::127.0.0.1",
    ];
    let embedding_private = [
        "::169.254.169.254",
        "::ffff:0:169.254.169.254",
        "::ffff:0:10.0.0.1",
        "2002:a9fe:a9fe::1",
        "2002:c0a8:101::1",
        "2001:0:a9fe:a9fe::f7f7:f7f7",
        "2001:0:808:808::5601:5601",
        "64:ff9b::169.254.169.254",
        "64:ff9b:1::a9fe:a9fe",
        "::ffff:169.254.169.254",
        "fd00:ec2::254",
        "fec0::1",
    ];
    for literal in embedding_loopback.iter().chain(&embedding_private) {
        let (resource, result) = check(&default_policy, literal).await;
        assert!(
            matches!(result, Err(AuthError::UnsafeUrl { .. })),
            "{resource} with the default policy: {result:?}"
        );
    }
    for literal in embedding_loopback {
        let (resource, result) = check(&private_allowed, literal).await;
        assert!(
            matches!(result, Err(AuthError::UnsafeUrl { .. })),
            "{resource} with private addresses allowed (loopback is not): {result:?}"
        );
    }
}

async fn check(
    auth: &McpAuth,
    literal: &str,
) -> (ResourceUri, Result<mcp_auth_core::SecretString, AuthError>) {
    let resource = ResourceUri::new(format!("https://[{literal}]/mcp")).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), auth.access_token(&resource))
        .await
        .expect("a refused address must fail at once, not time out");
    (resource, result)
}
