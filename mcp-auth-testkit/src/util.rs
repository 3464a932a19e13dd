//! Small helpers shared by the mock servers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// Locks a mutex, ignoring poisoning (a panicking test thread must not wedge the mock).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `BASE64URL-ENCODE` without padding (RFC 7636 Appendix A).
pub(crate) fn b64url(bytes: &[u8]) -> String {
    data_encoding::BASE64URL_NOPAD.encode(bytes)
}

/// `BASE64URL(SHA256(input))`, the S256 PKCE transformation.
pub(crate) fn s256(input: &str) -> String {
    b64url(&Sha256::digest(input.as_bytes()))
}

/// A fresh unguessable token with a readable prefix.
pub(crate) fn random_token(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut buf = [0u8; 32];
    if getrandom::fill(&mut buf).is_err() {
        // Extremely unlikely; derive something unique instead of panicking.
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut h = Sha256::new();
        h.update(n.to_le_bytes());
        h.update(now.to_le_bytes());
        h.update(std::process::id().to_le_bytes());
        buf.copy_from_slice(&h.finalize());
    }
    format!("{prefix}{}", b64url(&buf))
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Parsed `application/x-www-form-urlencoded` pairs.
#[derive(Debug, Default)]
pub(crate) struct Params {
    /// Last value of each name.
    pub(crate) map: BTreeMap<String, String>,
    /// Names that appeared more than once.
    pub(crate) duplicates: Vec<String>,
}

impl Params {
    pub(crate) fn parse(input: &[u8]) -> Self {
        let mut p = Self::default();
        for (k, v) in url::form_urlencoded::parse(input) {
            let k = k.into_owned();
            if p.map.insert(k.clone(), v.into_owned()).is_some() && !p.duplicates.contains(&k) {
                p.duplicates.push(k);
            }
        }
        p
    }

    pub(crate) fn get(&self, k: &str) -> Option<&str> {
        self.map.get(k).map(String::as_str)
    }
}

/// The media type of the request body, lower-cased, without parameters.
pub(crate) fn content_type(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

/// Whether the body is declared as `application/x-www-form-urlencoded`.
pub(crate) fn is_form(headers: &HeaderMap) -> bool {
    content_type(headers).as_deref() == Some("application/x-www-form-urlencoded")
}

/// Whether the body is declared as JSON.
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    content_type(headers).is_some_and(|c| c == "application/json" || c.ends_with("+json"))
}

/// A JSON response.
pub(crate) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = (status, bytes).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Adds `Cache-Control: no-store` and `Pragma: no-cache`.
pub(crate) fn no_store(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

/// An OAuth error response (RFC 6749 §5.2 shape).
pub(crate) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    no_store(json_response(
        status,
        &serde_json::json!({ "error": error, "error_description": description }),
    ))
}

/// `405 Method Not Allowed` with an `Allow` header.
pub(crate) fn method_not_allowed(allow: &'static str) -> Response {
    let mut resp = oauth_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request",
        "method not allowed",
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// A plain 404.
pub(crate) fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &serde_json::json!({ "error": "not_found" }),
    )
}

/// Escapes text for inclusion in HTML.
pub(crate) fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a value for an HTTP quoted-string.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Whether `host` names the loopback interface (127.0.0.1, localhost or \[::1\]).
pub(crate) fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// A redirect URI acceptable for registration: https, or http on loopback; absolute, no fragment.
pub(crate) fn valid_redirect_uri(s: &str) -> bool {
    let Ok(u) = url::Url::parse(s) else {
        return false;
    };
    if u.fragment().is_some() || u.host().is_none() {
        return false;
    }
    match u.scheme() {
        "https" => true,
        "http" => is_loopback_host(&u),
        _ => false,
    }
}

/// Exact string match, except that http loopback redirect URIs match with any port
/// (RFC 8252 §7.3).
pub(crate) fn redirect_matches(registered: &str, requested: &str) -> bool {
    if registered == requested {
        return true;
    }
    let (Ok(a), Ok(b)) = (url::Url::parse(registered), url::Url::parse(requested)) else {
        return false;
    };
    a.scheme() == "http"
        && b.scheme() == "http"
        && is_loopback_host(&a)
        && a.host() == b.host()
        && a.username() == b.username()
        && a.password() == b.password()
        && a.path() == b.path()
        && a.query() == b.query()
        && a.fragment().is_none()
        && b.fragment().is_none()
}

/// An absolute URI without a fragment (RFC 8707 §2 resource indicator).
pub(crate) fn valid_resource(s: &str) -> bool {
    url::Url::parse(s).is_ok_and(|u| u.fragment().is_none() && u.has_host())
}

/// RFC 7636 §4.1 syntax for `code_verifier` / S256 `code_challenge` characters.
pub(crate) fn pkce_syntax_ok(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// The single `Authorization` header split into scheme and credentials. `None`: no header;
/// `Some(Err(()))`: several headers, non-ASCII, or no space after the scheme.
pub(crate) fn authorization(headers: &HeaderMap) -> Option<Result<(&str, &str), ()>> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return Some(Err(()));
    }
    Some(
        value
            .to_str()
            .map_err(|_| ())
            .and_then(|v| v.split_once(' ').ok_or(())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_appendix_b() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn loopback_port_agnostic() {
        assert!(redirect_matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.1:5555/cb"
        ));
        assert!(redirect_matches(
            "http://127.0.0.1:1/cb",
            "http://127.0.0.1:5555/cb"
        ));
        assert!(!redirect_matches(
            "http://127.0.0.1:1/cb",
            "http://127.0.0.1:5555/cb2"
        ));
        assert!(!redirect_matches(
            "https://a.example:1/cb",
            "https://a.example:2/cb"
        ));
        assert!(!redirect_matches(
            "http://localhost/cb",
            "http://127.0.0.1/cb"
        ));
    }

    #[test]
    fn redirect_validity() {
        assert!(valid_redirect_uri("https://app.example/cb"));
        assert!(valid_redirect_uri("http://127.0.0.1:3000/cb"));
        assert!(valid_redirect_uri("http://[::1]/cb"));
        assert!(valid_redirect_uri("http://localhost/cb"));
        assert!(!valid_redirect_uri("http://app.example/cb"));
        assert!(!valid_redirect_uri("https://app.example/cb#frag"));
        assert!(!valid_redirect_uri("javascript:alert(1)"));
        assert!(!valid_redirect_uri("/relative"));
    }

    #[test]
    fn params_duplicates() {
        let p = Params::parse(b"a=1&b=2&a=3");
        assert_eq!(p.get("a"), Some("3"));
        assert_eq!(p.duplicates, vec!["a".to_string()]);
    }
}
