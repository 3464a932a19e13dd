//! DPoP (RFC 9449): a strict proof validator shared by the mock authorization server (token
//! requests) and the mock MCP server (resource requests), per RFC 9449 §4.3.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use axum::http::HeaderMap;
use data_encoding::BASE64URL_NOPAD;
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use crate::util::{lock, unix_now};

/// How far (seconds) a proof's `iat` may be from the server's clock, either way.
pub(crate) const IAT_WINDOW_SECS: u64 = 60;
/// The only proof algorithm the mock servers accept.
pub(crate) const DPOP_ALG: &str = "ES256";
/// Seen `jti`s kept before old ones are dropped.
const REPLAY_CACHE_MAX: usize = 10_000;
/// JWK members that only a private (or symmetric) key has.
const PRIVATE_JWK_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Why a mock server refused a DPoP proof, or the lack of one (recorded in
/// [`McpRequest::dpop_rejection`](crate::McpRequest::dpop_rejection) and
/// [`AsRequest::dpop_rejection`](crate::AsRequest::dpop_rejection)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DpopRejection {
    /// A DPoP-bound token (access or refresh) was presented without a `DPoP` header.
    MissingProof,
    /// More than one `DPoP` header (RFC 9449 §4.3 check 1).
    MultipleProofs,
    /// A DPoP-bound access token was presented with `Authorization: Bearer` (RFC 9449 §7.1).
    BearerScheme,
    /// `Authorization: DPoP` with an access token that is not DPoP-bound.
    UnboundToken,
    /// Not a compact JWS with a JSON header and JSON claims.
    Malformed,
    /// The header's `typ` is not `dpop+jwt`.
    Typ,
    /// The header's `alg` is not `ES256` (`none`, symmetric and other algorithms are refused).
    Alg,
    /// The header's `jwk` is missing, not a P-256 public key, or carries private key members.
    Jwk,
    /// The signature does not verify with the header's `jwk`.
    Signature,
    /// `htm` is missing or not the request's method.
    Htm,
    /// `htu` is missing or not the request's URL (query and fragment ignored).
    Htu,
    /// `iat` is missing or too far from now.
    Iat,
    /// `jti` is missing or empty.
    Jti,
    /// The `jti` was seen before by this server (a replayed proof).
    Replay,
    /// `ath` is missing or not the hash of the presented access token.
    Ath,
    /// The proof lacks the server's current nonce: answered `use_dpop_nonce` with a
    /// `DPoP-Nonce` header. Not a sign of a broken client, unlike the other reasons.
    Nonce,
    /// The proof's key is not the key the token is bound to.
    KeyMismatch,
}

impl DpopRejection {
    /// Whether this was only the server asking for its nonce (`use_dpop_nonce`).
    pub fn is_nonce_request(&self) -> bool {
        *self == DpopRejection::Nonce
    }
}

impl fmt::Display for DpopRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DpopRejection::MissingProof => "DPoP-bound token presented without a DPoP proof",
            DpopRejection::MultipleProofs => "more than one DPoP header",
            DpopRejection::BearerScheme => "DPoP-bound token presented as a Bearer token",
            DpopRejection::UnboundToken => "token presented with the DPoP scheme is not DPoP-bound",
            DpopRejection::Malformed => "DPoP proof is not a well-formed JWT",
            DpopRejection::Typ => "DPoP proof typ is not dpop+jwt",
            DpopRejection::Alg => "DPoP proof alg is not ES256",
            DpopRejection::Jwk => "DPoP proof jwk is not a P-256 public key",
            DpopRejection::Signature => "DPoP proof signature does not verify",
            DpopRejection::Htm => "DPoP proof htm does not match the request method",
            DpopRejection::Htu => "DPoP proof htu does not match the request URL",
            DpopRejection::Iat => "DPoP proof iat is missing or outside the acceptable window",
            DpopRejection::Jti => "DPoP proof has no jti",
            DpopRejection::Replay => "DPoP proof jti was already used",
            DpopRejection::Ath => "DPoP proof ath does not match the access token",
            DpopRejection::Nonce => "DPoP proof lacks the server's nonce",
            DpopRejection::KeyMismatch => "DPoP proof key is not the key the token is bound to",
        };
        f.write_str(s)
    }
}

/// What a proof must say for the request at hand.
pub(crate) struct Expected<'a> {
    /// The request's method.
    pub(crate) method: &'a str,
    /// The URL the request was sent to (compared after normalization).
    pub(crate) htu: &'a str,
    /// The access token presented with the proof (resource requests): `ath` is then required.
    pub(crate) access_token: Option<&'a str>,
    /// The nonce the server currently requires, if any.
    pub(crate) nonce: Option<&'a str>,
    /// The thumbprint of the key the presented token is bound to, if any.
    pub(crate) jkt: Option<&'a str>,
}

/// The `jti`s of the proofs a server accepted, with their `iat` (for pruning).
#[derive(Default)]
pub(crate) struct ReplayCache(Mutex<HashMap<String, u64>>);

impl ReplayCache {
    /// Records `jti`; false if it was seen before.
    fn insert(&self, jti: &str, iat: u64) -> bool {
        let mut seen = lock(&self.0);
        if seen.contains_key(jti) {
            return false;
        }
        if seen.len() >= REPLAY_CACHE_MAX {
            // Proofs older than the window are refused on `iat` anyway.
            let horizon = unix_now().saturating_sub(2 * IAT_WINDOW_SECS);
            seen.retain(|_, t| *t >= horizon);
        }
        seen.insert(jti.to_owned(), iat);
        true
    }
}

/// The single `DPoP` header of a request: `Ok(None)` when absent.
pub(crate) fn proof_header(headers: &HeaderMap) -> Result<Option<&str>, DpopRejection> {
    let mut values = headers.get_all("dpop").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(DpopRejection::MultipleProofs);
    }
    value
        .to_str()
        .map(Some)
        .map_err(|_| DpopRejection::Malformed)
}

/// `htu` comparison form: parsed (scheme and host lowercased, default port dropped), without
/// query and fragment.
fn normalize_htu(url: &str) -> Option<String> {
    let mut u = url::Url::parse(url).ok()?;
    u.set_query(None);
    u.set_fragment(None);
    Some(u.to_string())
}

/// `ath`: base64url(SHA-256(access token)).
pub(crate) fn ath(access_token: &str) -> String {
    BASE64URL_NOPAD.encode(&Sha256::digest(access_token.as_bytes()))
}

fn json_segment(segment: &str) -> Result<Map<String, Value>, DpopRejection> {
    let bytes = BASE64URL_NOPAD
        .decode(segment.as_bytes())
        .map_err(|_| DpopRejection::Malformed)?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(DpopRejection::Malformed),
    }
}

/// Checks `proof` per RFC 9449 §4.3 against `expected`; on success records its `jti` in
/// `seen` (a second use is [`DpopRejection::Replay`]) and returns the RFC 7638 SHA-256
/// thumbprint of its key.
pub(crate) fn validate(
    proof: &str,
    expected: &Expected<'_>,
    seen: &ReplayCache,
) -> Result<String, DpopRejection> {
    // 2. A well-formed compact JWS.
    let parts: Vec<&str> = proof.split('.').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(DpopRejection::Malformed);
    }
    let header = json_segment(parts[0])?;
    let claims = json_segment(parts[1])?;
    // 4. typ.
    if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
        return Err(DpopRejection::Typ);
    }
    // 5. An asymmetric algorithm we support: ES256 only.
    if header.get("alg").and_then(Value::as_str) != Some(DPOP_ALG) {
        return Err(DpopRejection::Alg);
    }
    // 7. A public P-256 key, nothing private.
    let Some(Value::Object(jwk_json)) = header.get("jwk") else {
        return Err(DpopRejection::Jwk);
    };
    if PRIVATE_JWK_MEMBERS
        .iter()
        .any(|m| jwk_json.contains_key(*m))
        || jwk_json.get("kty").and_then(Value::as_str) != Some("EC")
        || jwk_json.get("crv").and_then(Value::as_str) != Some("P-256")
    {
        return Err(DpopRejection::Jwk);
    }
    let jwk: Jwk =
        serde_json::from_value(Value::Object(jwk_json.clone())).map_err(|_| DpopRejection::Jwk)?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| DpopRejection::Jwk)?;
    let jkt = jwk
        .thumbprint(ThumbprintHash::SHA256)
        .map_err(|_| DpopRejection::Jwk)?;
    // 6. The signature.
    let mut validation = Validation::new(Algorithm::ES256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    jsonwebtoken::decode::<Value>(proof, &key, &validation)
        .map_err(|_| DpopRejection::Signature)?;
    // 3. Required claims, 8. htm, 9. htu.
    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or(DpopRejection::Jti)?;
    if claims.get("htm").and_then(Value::as_str) != Some(expected.method) {
        return Err(DpopRejection::Htm);
    }
    let htu = claims
        .get("htu")
        .and_then(Value::as_str)
        .and_then(normalize_htu);
    if htu.is_none() || htu != normalize_htu(expected.htu) {
        return Err(DpopRejection::Htu);
    }
    // 11. iat within the window.
    let iat = claims
        .get("iat")
        .and_then(Value::as_u64)
        .ok_or(DpopRejection::Iat)?;
    if unix_now().abs_diff(iat) > IAT_WINDOW_SECS {
        return Err(DpopRejection::Iat);
    }
    // 12. ath for resource requests.
    if let Some(token) = expected.access_token
        && claims.get("ath").and_then(Value::as_str) != Some(ath(token).as_str())
    {
        return Err(DpopRejection::Ath);
    }
    // 13. The key the token is bound to.
    if let Some(bound) = expected.jkt
        && bound != jkt
    {
        return Err(DpopRejection::KeyMismatch);
    }
    // 10. The server's nonce.
    if let Some(nonce) = expected.nonce
        && claims.get("nonce").and_then(Value::as_str) != Some(nonce)
    {
        return Err(DpopRejection::Nonce);
    }
    // 11. jti never seen before.
    if !seen.insert(jti, iat) {
        return Err(DpopRejection::Replay);
    }
    Ok(jkt)
}

/// A P-256 key that signs DPoP proofs for tests: correct ones ([`TestDpopKey::proof`]) and
/// deliberately broken ones ([`TestDpopKey::sign`] with any header and claims), to check what
/// a server accepts. Cheap to clone; `Debug` shows only the thumbprint.
#[derive(Clone)]
pub struct TestDpopKey {
    pair: std::sync::Arc<aws_lc_rs::signature::EcdsaKeyPair>,
    jwk: Value,
    jkt: String,
}

impl fmt::Debug for TestDpopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TestDpopKey(ES256, jkt {})", self.jkt)
    }
}

impl TestDpopKey {
    /// A fresh key.
    ///
    /// # Panics
    /// When the operating system gives no randomness.
    #[allow(clippy::expect_used)]
    pub fn generate() -> Self {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let pair =
            EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("P-256 key generation");
        Self::from_pair(pair).expect("a generated P-256 key has a public point")
    }

    /// The key of a PKCS#8 DER P-256 private key (what `mcp-auth-core` stores in
    /// `TokenSet::dpop_key`, base64url-decoded).
    ///
    /// # Errors
    /// When `der` is not a P-256 PKCS#8 key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|_| "not a P-256 PKCS#8 key".to_string())?;
        Self::from_pair(pair)
    }

    fn from_pair(pair: aws_lc_rs::signature::EcdsaKeyPair) -> Result<Self, String> {
        use aws_lc_rs::signature::KeyPair as _;
        let point = pair.public_key().as_ref();
        if point.len() != 65 || point[0] != 4 {
            return Err("not an uncompressed P-256 point".into());
        }
        let x = BASE64URL_NOPAD.encode(&point[1..33]);
        let y = BASE64URL_NOPAD.encode(&point[33..65]);
        // RFC 7638: the required members in lexicographic order, no whitespace.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let jkt = BASE64URL_NOPAD.encode(&Sha256::digest(canonical.as_bytes()));
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "x": x, "y": y});
        Ok(Self {
            pair: std::sync::Arc::new(pair),
            jwk,
            jkt,
        })
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Value {
        self.jwk.clone()
    }

    /// The RFC 7638 SHA-256 thumbprint of the public key (`jkt`).
    pub fn thumbprint(&self) -> String {
        self.jkt.clone()
    }

    /// The header of a correct proof: `typ` `dpop+jwt`, `alg` `ES256`, this key's `jwk`.
    pub fn header(&self) -> Value {
        serde_json::json!({"typ": "dpop+jwt", "alg": DPOP_ALG, "jwk": self.jwk})
    }

    /// The claims of a correct proof for a `method` request to `url`: a fresh `jti`, `iat`
    /// now, `ath` for `access_token`, `nonce` when given.
    pub fn claims(
        method: &str,
        url: &str,
        access_token: Option<&str>,
        nonce: Option<&str>,
    ) -> Value {
        let mut claims = serde_json::json!({
            "jti": crate::util::random_token("jti_"),
            "htm": method,
            "htu": url,
            "iat": unix_now(),
        });
        if let Some(token) = access_token {
            claims["ath"] = Value::String(ath(token));
        }
        if let Some(nonce) = nonce {
            claims["nonce"] = Value::String(nonce.to_owned());
        }
        claims
    }

    /// A correct proof (RFC 9449 §4.2).
    pub fn proof(
        &self,
        method: &str,
        url: &str,
        access_token: Option<&str>,
        nonce: Option<&str>,
    ) -> String {
        self.sign(
            &self.header(),
            &Self::claims(method, url, access_token, nonce),
        )
    }

    /// A compact JWS of `header` and `claims` signed (ES256) with this key, whatever they say.
    ///
    /// # Panics
    /// When signing fails (it does not for a valid key).
    #[allow(clippy::expect_used)]
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            BASE64URL_NOPAD.encode(header.to_string().as_bytes()),
            BASE64URL_NOPAD.encode(claims.to_string().as_bytes())
        );
        let signature = self
            .pair
            .sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes())
            .expect("ES256 signature");
        format!("{input}.{}", BASE64URL_NOPAD.encode(signature.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    const URL: &str = "http://127.0.0.1:8080/mcp";

    fn check(proof: &str, seen: &ReplayCache) -> Result<String, DpopRejection> {
        validate(
            proof,
            &Expected {
                method: "POST",
                htu: URL,
                access_token: Some("tok"),
                nonce: None,
                jkt: None,
            },
            seen,
        )
    }

    #[test]
    fn a_correct_proof_is_accepted_once_and_gives_the_thumbprint() {
        let key = TestDpopKey::generate();
        let seen = ReplayCache::default();
        let proof = key.proof("POST", URL, Some("tok"), None);
        assert_eq!(check(&proof, &seen), Ok(key.thumbprint()));
        assert_eq!(check(&proof, &seen), Err(DpopRejection::Replay));
        // jsonwebtoken computes the same thumbprint.
        let jwk: Jwk = serde_json::from_value(key.jwk()).unwrap();
        assert_eq!(
            jwk.thumbprint(ThumbprintHash::SHA256).unwrap(),
            key.thumbprint()
        );
    }

    #[test]
    fn htu_is_compared_normalized() {
        let key = TestDpopKey::generate();
        let seen = ReplayCache::default();
        for htu in [
            "HTTP://127.0.0.1:8080/mcp",
            "http://127.0.0.1:8080/mcp?x=1#f",
        ] {
            assert!(check(&key.proof("POST", htu, Some("tok"), None), &seen).is_ok());
        }
        let https = validate(
            &key.proof("GET", "https://MCP.example:443/mcp", None, None),
            &Expected {
                method: "GET",
                htu: "https://mcp.example/mcp",
                access_token: None,
                nonce: None,
                jkt: None,
            },
            &seen,
        );
        assert!(https.is_ok(), "{https:?}");
        for htu in [
            "http://127.0.0.1:8081/mcp",
            "http://127.0.0.1:8080/mcp/",
            "https://127.0.0.1:8080/mcp",
            "not a url",
        ] {
            assert_eq!(
                check(&key.proof("POST", htu, Some("tok"), None), &seen),
                Err(DpopRejection::Htu),
                "{htu}"
            );
        }
    }

    #[test]
    fn every_broken_part_is_refused() {
        let key = TestDpopKey::generate();
        let seen = ReplayCache::default();
        let claims = || TestDpopKey::claims("POST", URL, Some("tok"), None);
        let header = key.header();
        let with = |mut v: Value, k: &str, x: Value| {
            if x.is_null() {
                v.as_object_mut().unwrap().remove(k);
            } else {
                v[k] = x;
            }
            v
        };
        let cases: Vec<(String, DpopRejection)> = vec![
            ("a.b".into(), DpopRejection::Malformed),
            ("e30.e30.".into(), DpopRejection::Malformed),
            (
                key.sign(&with(header.clone(), "typ", json!("JWT")), &claims()),
                DpopRejection::Typ,
            ),
            (
                key.sign(&with(header.clone(), "alg", json!("HS256")), &claims()),
                DpopRejection::Alg,
            ),
            (
                key.sign(&with(header.clone(), "alg", json!("none")), &claims()),
                DpopRejection::Alg,
            ),
            (
                key.sign(&with(header.clone(), "jwk", Value::Null), &claims()),
                DpopRejection::Jwk,
            ),
            (
                key.sign(
                    &with(header.clone(), "jwk", with(key.jwk(), "d", json!("AAAA"))),
                    &claims(),
                ),
                DpopRejection::Jwk,
            ),
            (
                // Signed by another key than the header's.
                TestDpopKey::generate().sign(&header, &claims()),
                DpopRejection::Signature,
            ),
            (
                key.sign(&header, &with(claims(), "htm", json!("GET"))),
                DpopRejection::Htm,
            ),
            (
                key.sign(&header, &with(claims(), "htm", json!("post"))),
                DpopRejection::Htm,
            ),
            (
                key.sign(&header, &with(claims(), "htu", Value::Null)),
                DpopRejection::Htu,
            ),
            (
                key.sign(&header, &with(claims(), "iat", json!(unix_now() - 3600))),
                DpopRejection::Iat,
            ),
            (
                key.sign(&header, &with(claims(), "iat", json!(unix_now() + 3600))),
                DpopRejection::Iat,
            ),
            (
                key.sign(&header, &with(claims(), "jti", Value::Null)),
                DpopRejection::Jti,
            ),
            (
                key.sign(&header, &with(claims(), "ath", Value::Null)),
                DpopRejection::Ath,
            ),
            (
                key.sign(&header, &with(claims(), "ath", json!(ath("other")))),
                DpopRejection::Ath,
            ),
        ];
        for (proof, want) in cases {
            assert_eq!(check(&proof, &seen), Err(want.clone()), "{want:?}");
        }
    }

    #[test]
    fn nonce_and_bound_key() {
        let key = TestDpopKey::generate();
        let seen = ReplayCache::default();
        let expected = |nonce, jkt| Expected {
            method: "POST",
            htu: URL,
            access_token: None,
            nonce,
            jkt,
        };
        let plain = key.proof("POST", URL, None, None);
        assert_eq!(
            validate(&plain, &expected(Some("n1"), None), &seen),
            Err(DpopRejection::Nonce)
        );
        let stale = key.proof("POST", URL, None, Some("n0"));
        assert_eq!(
            validate(&stale, &expected(Some("n1"), None), &seen),
            Err(DpopRejection::Nonce)
        );
        let other = TestDpopKey::generate().thumbprint();
        let fresh = key.proof("POST", URL, None, Some("n1"));
        assert_eq!(
            validate(&fresh, &expected(Some("n1"), Some(&other)), &seen),
            Err(DpopRejection::KeyMismatch)
        );
        // A refused proof's jti was not consumed.
        let jkt = key.thumbprint();
        assert_eq!(
            validate(&fresh, &expected(Some("n1"), Some(&jkt)), &seen),
            Ok(jkt)
        );
    }
}
