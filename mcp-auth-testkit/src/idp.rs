//! Signed JWTs for assertion grants, and a mock enterprise identity provider (IdP) that mints
//! Identity Assertion JWT Authorization Grants (ID-JAG, SEP-990) by RFC 8693 token exchange.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Map, Value, json};

use crate::util::{
    Params, b64url, is_form, json_response, lock, method_not_allowed, no_store, not_found,
    oauth_error, random_token, unix_now, valid_resource,
};

/// The RFC 8693 token exchange grant.
pub(crate) const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The RFC 7523 JWT bearer grant.
pub(crate) const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The token type of an ID-JAG.
pub(crate) const ID_JAG_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id-jag";
/// The RFC 8693 token type of an ID token.
pub(crate) const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
/// The JOSE `typ` of an ID-JAG.
pub(crate) const ID_JAG_TYP: &str = "oauth-id-jag+jwt";

/// A JWS's decoded header and claims.
pub type JwtParts = (Map<String, Value>, Map<String, Value>);

/// An ES256 (P-256) signing key made for one test: signs JWTs (ID tokens, ID-JAGs, workload
/// tokens) and verifies them. Cheap to clone; clones share the key. `Debug` shows only the
/// public key's fingerprint.
#[derive(Clone)]
pub struct TestJwtKey {
    pair: Arc<EcdsaKeyPair>,
}

impl fmt::Debug for TestJwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let public = self.pair.public_key().as_ref();
        let tail = b64url(&public[public.len().saturating_sub(6)..]);
        write!(f, "TestJwtKey(ES256, public …{tail})")
    }
}

impl TestJwtKey {
    /// A fresh key.
    ///
    /// # Panics
    /// When the operating system gives no randomness.
    #[allow(clippy::expect_used)]
    pub fn generate() -> Self {
        let pair =
            EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("P-256 key generation");
        Self {
            pair: Arc::new(pair),
        }
    }

    /// A compact JWS of `claims` with header `{"alg":"ES256"}` plus `typ` when given.
    ///
    /// # Panics
    /// When signing fails (it does not for a valid key).
    #[allow(clippy::expect_used)]
    pub fn sign(&self, typ: Option<&str>, claims: &Value) -> String {
        let mut header = json!({"alg": "ES256"});
        if let Some(t) = typ {
            header["typ"] = json!(t);
        }
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let signature = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("ES256 signature");
        format!("{input}.{}", b64url(signature.as_ref()))
    }

    /// Verifies the ES256 signature of a compact JWS and returns its header and claims (no
    /// claim is checked).
    ///
    /// # Errors
    ///
    /// A message saying what is wrong when `token` is not a compact JWS with a JSON header and
    /// claims, its `alg` is not `ES256`, its signature is not base64url, or the signature does not
    /// verify with this key.
    pub fn verify(&self, token: &str) -> Result<JwtParts, String> {
        let (header, claims) = decode_unverified(token)?;
        if header.get("alg").and_then(Value::as_str) != Some("ES256") {
            return Err("alg is not ES256".into());
        }
        let (input, signature) = token.rsplit_once('.').ok_or("not a compact JWS")?;
        let signature = data_encoding::BASE64URL_NOPAD
            .decode(signature.as_bytes())
            .map_err(|_| "signature is not base64url")?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.pair.public_key().as_ref())
            .verify(input.as_bytes(), &signature)
            .map_err(|_| "signature does not verify".to_string())?;
        Ok((header, claims))
    }
}

/// Header and claims of a compact JWS, without verifying anything.
pub(crate) fn decode_unverified(token: &str) -> Result<JwtParts, String> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 || parts[2].is_empty() {
        return Err("not a compact JWS".into());
    }
    let part = |s: &str| -> Result<Map<String, Value>, String> {
        let bytes = data_encoding::BASE64URL_NOPAD
            .decode(s.as_bytes())
            .map_err(|_| "a JWS part is not base64url".to_string())?;
        serde_json::from_slice(&bytes).map_err(|_| "a JWS part is not a JSON object".to_string())
    };
    Ok((part(parts[0])?, part(parts[1])?))
}

/// Whether a string-or-array claim (`aud`) contains one of `wanted`.
pub(crate) fn names_any(claim: Option<&Value>, wanted: &[&str]) -> bool {
    match claim {
        Some(Value::String(s)) => wanted.contains(&s.as_str()),
        Some(Value::Array(a)) => a
            .iter()
            .any(|v| v.as_str().is_some_and(|s| wanted.contains(&s))),
        _ => false,
    }
}

/// Configuration of an [`IdentityProvider`].
#[derive(Clone, Debug)]
pub struct IdpConfig {
    /// The client the IdP's ID tokens are issued to (their `aud`); token exchanges must come
    /// from it (default `"idp-client"`).
    pub client_id: String,
    /// Its secret: when set, token exchanges must authenticate with `client_secret_basic`;
    /// otherwise the client is public and sends `client_id` in the body (default `None`).
    pub client_secret: Option<String>,
    /// The client at the MCP server's authorization server the ID-JAGs are issued for (their
    /// `client_id` claim; default `"mcp-client"`).
    pub as_client_id: String,
    /// Lifetime of an ID-JAG (default 300 s).
    pub id_jag_ttl: Duration,
}

impl Default for IdpConfig {
    fn default() -> Self {
        Self {
            client_id: "idp-client".into(),
            client_secret: None,
            as_client_id: "mcp-client".into(),
            id_jag_ttl: Duration::from_secs(300),
        }
    }
}

/// A deliberate violation of the [`IdentityProvider`], to test client-side ID-JAG checks.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdpMisbehavior {
    /// Behave correctly.
    None,
    /// The ID-JAG's `aud` is another authorization server.
    WrongAudience,
    /// The ID-JAG's `client_id` is another client.
    WrongClientId,
    /// The ID-JAG's `resource` is another MCP server.
    WrongResource,
    /// The ID-JAG has already expired.
    Expired,
    /// The ID-JAG's `typ` is plain `JWT`.
    WrongTyp,
    /// `issued_token_type` is the access token type.
    WrongIssuedTokenType,
    /// `token_type` is `Bearer` (an ID-JAG is not an access token: `N_A`).
    BearerTokenType,
}

/// One token exchange the IdP received.
#[derive(Clone, Debug)]
pub struct IdpRequest {
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Body fields (the `subject_token` is replaced by its length).
    pub form: BTreeMap<String, String>,
    /// The HTTP Basic client id, if any.
    pub basic_client_id: Option<String>,
    /// Status of the answer.
    pub status: u16,
}

struct IdpState {
    misbehavior: IdpMisbehavior,
    requests: Vec<IdpRequest>,
    issued: usize,
}

struct IdpInner {
    config: IdpConfig,
    issuer: String,
    /// Signs ID tokens.
    id_token_key: TestJwtKey,
    /// Signs ID-JAGs (the authorization server trusts it).
    grant_key: TestJwtKey,
    state: Mutex<IdpState>,
}

/// A mock enterprise identity provider on `127.0.0.1`: issues ID tokens
/// ([`IdentityProvider::id_token`]) and exchanges them at `POST /token` (RFC 8693) for ID-JAGs
/// signed with [`IdentityProvider::grant_key`], strictly: `grant_type`,
/// `requested_token_type=…:id-jag`, `subject_token_type=…:id_token`, a subject token it issued
/// (signature, `iss`, `aud` = its client, `exp`), `audience` (an absolute URL) and `resource`
/// (an RFC 8707 resource), and the client authentication of [`IdpConfig`]. The ID-JAG carries
/// `iss`, `sub`, `aud` = `audience`, `resource`, `client_id` = [`IdpConfig::as_client_id`],
/// `scope` when asked, `iat`, `exp` and `jti`.
///
/// Make an [`AuthServer`](crate::AuthServer) accept its ID-JAGs with
/// [`AuthServer::trust_id_jag_issuer`](crate::AuthServer::trust_id_jag_issuer).
#[derive(Clone)]
pub struct IdentityProvider {
    inner: Arc<IdpInner>,
}

impl fmt::Debug for IdentityProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityProvider")
            .field("issuer", &self.inner.issuer)
            .field("client_id", &self.inner.config.client_id)
            .finish_non_exhaustive()
    }
}

impl IdentityProvider {
    /// Binds `127.0.0.1:0` and starts serving on the current Tokio runtime.
    ///
    /// # Errors
    ///
    /// The I/O error when no port on `127.0.0.1` can be bound or the bound address cannot be read.
    pub async fn start(config: IdpConfig) -> std::io::Result<IdentityProvider> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let issuer = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
        let inner = Arc::new(IdpInner {
            config,
            issuer,
            id_token_key: TestJwtKey::generate(),
            grant_key: TestJwtKey::generate(),
            state: Mutex::new(IdpState {
                misbehavior: IdpMisbehavior::None,
                requests: Vec::new(),
                issued: 0,
            }),
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&inner));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(IdentityProvider { inner })
    }

    /// `http://127.0.0.1:PORT`
    pub fn issuer(&self) -> String {
        self.inner.issuer.clone()
    }

    /// The token endpoint, `{issuer}/token`.
    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.inner.issuer)
    }

    /// The key ID-JAGs are signed with (for the authorization server to trust).
    pub fn grant_key(&self) -> TestJwtKey {
        self.inner.grant_key.clone()
    }

    /// An ID token for `sub`, issued to [`IdpConfig::client_id`], valid for an hour.
    pub fn id_token(&self, sub: &str) -> String {
        self.id_token_with_lifetime(sub, 3600)
    }

    /// An ID token for `sub` that expired a minute ago.
    pub fn expired_id_token(&self, sub: &str) -> String {
        self.id_token_with_lifetime(sub, -60)
    }

    fn id_token_with_lifetime(&self, sub: &str, seconds: i64) -> String {
        let now = unix_now() as i64;
        self.inner.id_token_key.sign(
            Some("JWT"),
            &json!({
                "iss": self.inner.issuer,
                "sub": sub,
                "aud": self.inner.config.client_id,
                "iat": now,
                "exp": now + seconds,
            }),
        )
    }

    /// Replaces the current misbehavior.
    pub fn set_misbehavior(&self, m: IdpMisbehavior) {
        lock(&self.inner.state).misbehavior = m;
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<IdpRequest> {
        lock(&self.inner.state).requests.clone()
    }

    /// How many ID-JAGs were issued.
    pub fn issued(&self) -> usize {
        lock(&self.inner.state).issued
    }
}

async fn handle(
    State(inner): State<Arc<IdpInner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = if is_form(&headers) {
        Params::parse(&body)
    } else {
        Params::default()
    };
    let basic = crate::auth_server::jwt_bearer::basic_credentials(&headers);
    let path = uri.path().to_string();
    let resp = match (path.as_str(), &method) {
        ("/.well-known/openid-configuration", &Method::GET) => json_response(
            StatusCode::OK,
            &json!({
                "issuer": inner.issuer,
                "token_endpoint": format!("{}/token", inner.issuer),
                "grant_types_supported": [TOKEN_EXCHANGE_GRANT],
                "token_endpoint_auth_methods_supported":
                    if inner.config.client_secret.is_some() { "client_secret_basic" } else { "none" },
            }),
        ),
        ("/token", &Method::POST) => inner.exchange(&headers, &form, basic.clone()),
        ("/token", _) => method_not_allowed("POST"),
        _ => not_found(),
    };
    let mut logged = form.map.clone();
    if let Some(t) = logged.get_mut("subject_token") {
        *t = format!("<{} bytes>", t.len());
    }
    lock(&inner.state).requests.push(IdpRequest {
        method: method.to_string(),
        path,
        form: logged,
        basic_client_id: basic.map(|(id, _)| id),
        status: resp.status().as_u16(),
    });
    resp
}

impl IdpInner {
    fn exchange(
        &self,
        headers: &HeaderMap,
        form: &Params,
        basic: Option<(String, String)>,
    ) -> Response {
        let bad = |error: &str, d: &str| oauth_error(StatusCode::BAD_REQUEST, error, d);
        if !is_form(headers) {
            return bad(
                "invalid_request",
                "Content-Type must be application/x-www-form-urlencoded",
            );
        }
        if let Some(d) = form.duplicates.first() {
            return bad("invalid_request", &format!("parameter {d} repeated"));
        }
        // Client authentication as configured.
        let c = &self.config;
        let client_ok = match (&c.client_secret, &basic) {
            (Some(secret), Some((id, s))) => {
                id == &c.client_id && s == secret && form.get("client_secret").is_none()
            }
            (Some(_), None) => false,
            (None, Some(_)) => false,
            (None, None) => form.get("client_id") == Some(c.client_id.as_str()),
        };
        if !client_ok {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            );
        }
        if form.get("grant_type") != Some(TOKEN_EXCHANGE_GRANT) {
            return bad("unsupported_grant_type", "only token exchange is supported");
        }
        if form.get("requested_token_type") != Some(ID_JAG_TOKEN_TYPE) {
            return bad("invalid_request", "requested_token_type must be id-jag");
        }
        if form.get("subject_token_type") != Some(ID_TOKEN_TYPE) {
            return bad("invalid_request", "subject_token_type must be id_token");
        }
        let Some(subject) = form.get("subject_token").filter(|s| !s.is_empty()) else {
            return bad("invalid_request", "missing subject_token");
        };
        let audience = match form.get("audience") {
            Some(a) if url::Url::parse(a).is_ok() => a.to_string(),
            _ => return bad("invalid_request", "audience must be an absolute URL"),
        };
        let resource = match form.get("resource") {
            Some(r) if valid_resource(r) => r.to_string(),
            _ => return bad("invalid_target", "resource must be an absolute URI"),
        };
        let claims = match self.id_token_key.verify(subject) {
            Ok((_, claims)) => claims,
            Err(e) => return bad("invalid_grant", &format!("subject token: {e}")),
        };
        let now = unix_now();
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return bad("invalid_grant", "subject token was issued by another IdP");
        }
        if !names_any(claims.get("aud"), &[c.client_id.as_str()]) {
            return bad(
                "invalid_grant",
                "subject token was issued to another client",
            );
        }
        if claims
            .get("exp")
            .and_then(Value::as_u64)
            .is_none_or(|exp| exp <= now)
        {
            return bad("invalid_grant", "subject token expired");
        }
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();

        let m = lock(&self.state).misbehavior.clone();
        let ttl = self.config.id_jag_ttl.as_secs();
        let mut jag = Map::new();
        jag.insert("iss".into(), json!(self.issuer));
        jag.insert("sub".into(), json!(sub));
        jag.insert(
            "aud".into(),
            json!(if m == IdpMisbehavior::WrongAudience {
                "https://other-as.example".to_string()
            } else {
                audience
            }),
        );
        jag.insert(
            "resource".into(),
            json!(if m == IdpMisbehavior::WrongResource {
                "https://other-mcp.example/mcp".to_string()
            } else {
                resource
            }),
        );
        jag.insert(
            "client_id".into(),
            json!(if m == IdpMisbehavior::WrongClientId {
                "someone-else".to_string()
            } else {
                c.as_client_id.clone()
            }),
        );
        if let Some(scope) = form.get("scope") {
            jag.insert("scope".into(), json!(scope));
        }
        jag.insert("iat".into(), json!(now));
        let exp = if m == IdpMisbehavior::Expired {
            now.saturating_sub(60)
        } else {
            now + ttl
        };
        jag.insert("exp".into(), json!(exp));
        jag.insert("jti".into(), json!(random_token("jag_")));
        let typ = if m == IdpMisbehavior::WrongTyp {
            "JWT"
        } else {
            ID_JAG_TYP
        };
        let token = self.grant_key.sign(Some(typ), &Value::Object(jag));
        lock(&self.state).issued += 1;
        let issued_token_type = if m == IdpMisbehavior::WrongIssuedTokenType {
            "urn:ietf:params:oauth:token-type:access_token"
        } else {
            ID_JAG_TOKEN_TYPE
        };
        let token_type = if m == IdpMisbehavior::BearerTokenType {
            "Bearer"
        } else {
            "N_A"
        };
        no_store(json_response(
            StatusCode::OK,
            &json!({
                "access_token": token,
                "issued_token_type": issued_token_type,
                "token_type": token_type,
                "expires_in": ttl,
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies() {
        let key = TestJwtKey::generate();
        let other = TestJwtKey::generate();
        let t = key.sign(Some(ID_JAG_TYP), &json!({"sub": "x"}));
        let (h, c) = key.verify(&t).unwrap();
        assert_eq!(h["typ"], ID_JAG_TYP);
        assert_eq!(c["sub"], "x");
        assert!(other.verify(&t).is_err());
        let (head, _) = t.rsplit_once('.').unwrap();
        let forged = format!("{head}.{}", b64url(&[0u8; 64]));
        assert!(key.verify(&forged).is_err());
        assert!(!format!("{key:?}").contains(&t));
    }
}
