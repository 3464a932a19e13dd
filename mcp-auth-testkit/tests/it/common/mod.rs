//! Helpers shared by the integration tests: a tiny, correct OAuth client.
#![allow(dead_code, unreachable_pub, missing_docs)]
use std::collections::BTreeMap;

use mcp_auth_testkit::{AuthServer, McpServer};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const REDIRECT: &str = "http://127.0.0.1:4711/callback";

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub fn b64url(b: &[u8]) -> String {
    data_encoding::BASE64URL_NOPAD.encode(b)
}

pub fn basic(id: &str, secret: &str) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let raw = format!("{}:{}", enc(id), enc(secret));
    format!("Basic {}", data_encoding::BASE64.encode(raw.as_bytes()))
}

/// A PKCE verifier and its S256 challenge.
pub fn pkce() -> (String, String) {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).unwrap();
    let verifier = b64url(&b);
    let challenge = b64url(&Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

pub fn query_of(location: &str) -> BTreeMap<String, String> {
    url::Url::parse(location)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// GET /authorize with the given parameters; returns the response.
pub async fn authorize_raw(auth: &AuthServer, params: &[(&str, &str)]) -> reqwest::Response {
    http()
        .get(format!("{}/authorize", auth.issuer()))
        .query(params)
        .send()
        .await
        .unwrap()
}

/// A correct authorization request; returns (redirect query, verifier).
pub async fn authorize(
    auth: &AuthServer,
    client_id: &str,
    resource: Option<&str>,
    scope: Option<&str>,
) -> (BTreeMap<String, String>, String) {
    let (verifier, challenge) = pkce();
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", REDIRECT),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("state", "st4te"),
    ];
    if let Some(r) = resource {
        params.push(("resource", r));
    }
    if let Some(s) = scope {
        params.push(("scope", s));
    }
    let resp = authorize_raw(auth, &params).await;
    assert_eq!(resp.status(), 302, "{:?}", resp.text().await);
    let loc = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(loc.starts_with("http://127.0.0.1:4711/callback?"), "{loc}");
    (query_of(&loc), verifier)
}

/// How the test client authenticates at the token endpoint.
#[derive(Clone, Copy)]
pub enum Auth<'a> {
    Basic(&'a str, &'a str),
    Post(&'a str, &'a str),
    None(&'a str),
}

pub async fn token_request(auth: &AuthServer, a: Auth<'_>, form: &[(&str, &str)]) -> (u16, Value) {
    let mut form: Vec<(&str, &str)> = form.to_vec();
    let mut req = http().post(format!("{}/token", auth.issuer()));
    match a {
        Auth::Basic(id, s) => req = req.header("authorization", basic(id, s)),
        Auth::Post(id, s) => {
            form.push(("client_id", id));
            form.push(("client_secret", s));
        }
        Auth::None(id) => form.push(("client_id", id)),
    }
    let resp = req.form(&form).send().await.unwrap();
    let status = resp.status().as_u16();
    if status == 200 {
        assert_eq!(resp.headers()["cache-control"], "no-store");
    }
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Redeems a code.
pub async fn exchange(
    auth: &AuthServer,
    a: Auth<'_>,
    code: &str,
    verifier: &str,
    resource: Option<&str>,
) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier),
    ];
    if let Some(r) = resource {
        form.push(("resource", r));
    }
    token_request(auth, a, &form).await
}

pub async fn refresh(
    auth: &AuthServer,
    a: Auth<'_>,
    rt: &str,
    resource: Option<&str>,
) -> (u16, Value) {
    let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", rt)];
    if let Some(r) = resource {
        form.push(("resource", r));
    }
    token_request(auth, a, &form).await
}

/// Full flow for a public pre-registered client; returns the token response.
pub async fn public_tokens(
    auth: &AuthServer,
    client_id: &str,
    resource: Option<&str>,
    scope: Option<&str>,
) -> Value {
    let (q, verifier) = authorize(auth, client_id, resource, scope).await;
    let (status, body) =
        exchange(auth, Auth::None(client_id), &q["code"], &verifier, resource).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// POSTs a JSON-RPC ping to the MCP server.
pub async fn mcp_call(mcp: &McpServer, token: Option<&str>) -> reqwest::Response {
    let mut req = http()
        .post(mcp.url())
        .json(&json!({"jsonrpc": "2.0", "id": 7, "method": "ping"}));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

pub fn www_authenticate(resp: &reqwest::Response) -> String {
    resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string()
}
