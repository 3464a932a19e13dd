//! DPoP (RFC 9449): sender-constrained tokens. A P-256 key pair (ES256) is made when an
//! authorization server that supports DPoP issues tokens; every token, refresh and resource
//! request then carries a fresh proof signed with it, so a stolen access or refresh token alone
//! is useless.
//!
//! The private key is stored **with the tokens it binds** ([`TokenSet::dpop_key`], keyed by
//! issuer and resource like the tokens): the token set and its key are written in one
//! compare-and-swap, so neither ever exists without the other, a restarted process (or another
//! one) keeps refreshing, and no key is ever shared between two authorization servers.
//!
//! [`TokenSet::dpop_key`]: crate::TokenSet::dpop_key

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use data_encoding::BASE64URL_NOPAD;
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sha2::Digest as _;
use url::Url;

use super::McpAuth;
use super::discovery::ServerMetadata;
use super::error::AuthError;
use crate::ids::{IssuerId, ResourceUri, TokenKey};
use crate::time::Timestamp;

#[cfg(doc)]
use super::Challenge;

/// When the engine uses DPoP (RFC 9449).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum DpopMode {
    /// Bearer tokens only; DPoP is never offered (the default: every transport in use must
    /// send a proof with each request for DPoP-bound tokens, which `mcp-auth-rmcp` and
    /// `mcp-auth proxy` do, but a token pasted into another tool's header cannot).
    #[default]
    Off,
    /// Ask for DPoP-bound tokens when the authorization server advertises ES256 in
    /// `dpop_signing_alg_values_supported`; Bearer otherwise.
    IfSupported,
    /// Refuse an authorization server that does not support DPoP with ES256.
    Required,
}

/// The algorithm of every proof.
pub(crate) const DPOP_ALG: &str = "ES256";

/// A DPoP key pair, ready to sign proofs.
pub struct DpopKey {
    /// PKCS#8 DER, base64url: what the store keeps.
    stored: SecretString,
    encoding: EncodingKey,
    jwk: Jwk,
    /// RFC 7638 SHA-256 thumbprint of the public key (`cnf.jkt` of bound tokens).
    jkt: String,
}

impl fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopKey")
            .field("jkt", &self.jkt)
            .finish_non_exhaustive()
    }
}

impl DpopKey {
    /// A new P-256 key pair.
    pub(crate) fn generate() -> Result<Self, AuthError> {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| AuthError::Config("cannot generate a DPoP key pair".to_owned()))?;
        let der = pair
            .to_pkcs8v1()
            .map_err(|_| AuthError::Config("cannot encode the DPoP key pair".to_owned()))?;
        Self::from_der(der.as_ref())
    }

    /// The key a token set stored ([`DpopKey::stored`]). The error never shows the key.
    pub(crate) fn from_stored(stored: &SecretString) -> Result<Self, AuthError> {
        let der = BASE64URL_NOPAD
            .decode(stored.expose_secret().as_bytes())
            .map_err(|_| AuthError::Config("the stored DPoP key is not base64url".to_owned()))?;
        Self::from_der(&der)
    }

    fn from_der(der: &[u8]) -> Result<Self, AuthError> {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let unusable = || AuthError::Config("the DPoP key is not a P-256 PKCS#8 key".to_owned());
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der).map_err(|_| unusable())?;
        let encoding = EncodingKey::from_ec_der(der);
        let mut jwk =
            Jwk::from_encoding_key(&encoding, Algorithm::ES256).map_err(|_| unusable())?;
        // The public key only: no `alg` either, just what RFC 7638 hashes plus what a JWK needs.
        jwk.common.key_algorithm = None;
        let jkt = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|_| unusable())?;
        Ok(Self {
            stored: SecretString::from(BASE64URL_NOPAD.encode(der)),
            encoding,
            jwk,
            jkt,
        })
    }

    /// What a token set stores: the private key, PKCS#8 DER in base64url.
    pub(crate) fn stored(&self) -> SecretString {
        self.stored.clone()
    }

    /// The JWK SHA-256 thumbprint (RFC 7638) of the public key.
    pub fn thumbprint(&self) -> &str {
        &self.jkt
    }

    /// A proof for a `method` request to `url` (RFC 9449 §4.2): `htu` without query and
    /// fragment, a fresh `jti`, `iat` now, `ath` when an access token is presented, the server's
    /// `nonce` when it asked for one.
    ///
    /// # Errors
    /// [`AuthError::Config`] if signing fails (it does not for a key this type accepted).
    pub fn proof(
        &self,
        method: &str,
        url: &Url,
        access_token: Option<&SecretString>,
        nonce: Option<&str>,
    ) -> Result<String, AuthError> {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("dpop+jwt".to_owned());
        header.jwk = Some(self.jwk.clone());
        let mut claims = json!({
            "jti": super::random_urlsafe(16),
            "htm": method.to_ascii_uppercase(),
            "htu": htu(url),
            "iat": Timestamp::now().unix_seconds(),
        });
        if let Some(token) = access_token {
            claims["ath"] = json!(
                BASE64URL_NOPAD.encode(&sha2::Sha256::digest(token.expose_secret().as_bytes()))
            );
        }
        if let Some(nonce) = nonce {
            claims["nonce"] = json!(nonce);
        }
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|_| AuthError::Config("cannot sign a DPoP proof".to_owned()))
    }
}

/// What to present to an MCP server: the access token and, for a DPoP-bound token, the key
/// that signs a fresh proof for every request ([`AccessCredential::dpop_proof`]).
#[derive(Clone)]
pub struct AccessCredential {
    token: SecretString,
    dpop: Option<Arc<DpopKey>>,
}

impl fmt::Debug for AccessCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessCredential")
            .field("scheme", &self.scheme())
            .finish_non_exhaustive()
    }
}

impl AccessCredential {
    pub(crate) fn new(token: SecretString, dpop: Option<Arc<DpopKey>>) -> Self {
        Self { token, dpop }
    }

    /// The access token.
    pub fn token(&self) -> &SecretString {
        &self.token
    }

    /// The access token, consumed.
    pub fn into_token(self) -> SecretString {
        self.token
    }

    /// `"DPoP"` for a DPoP-bound token, else `"Bearer"`: the `Authorization` scheme.
    pub fn scheme(&self) -> &'static str {
        if self.dpop.is_some() {
            "DPoP"
        } else {
            "Bearer"
        }
    }

    /// Whether every request needs a DPoP proof.
    pub fn is_dpop(&self) -> bool {
        self.dpop.is_some()
    }

    /// The `Authorization` header value: `Bearer <token>` or `DPoP <token>`.
    pub fn authorization(&self) -> SecretString {
        SecretString::from(format!("{} {}", self.scheme(), self.token.expose_secret()))
    }

    /// The `DPoP` header value for a `method` request to `url` (`ath` bound to this token), or
    /// `None` for a Bearer token. `nonce`: the resource server's latest `DPoP-Nonce`
    /// ([`crate::McpAuth::dpop_nonce`]).
    ///
    /// # Errors
    /// [`AuthError::Config`] if the proof cannot be signed.
    pub fn dpop_proof(
        &self,
        method: &str,
        url: &Url,
        nonce: Option<&str>,
    ) -> Result<Option<String>, AuthError> {
        self.dpop
            .as_ref()
            .map(|key| key.proof(method, url, Some(&self.token), nonce))
            .transpose()
    }
}

/// The `htu` of a request to `url`: the URL without query and fragment (RFC 9449 §4.2).
pub(crate) fn htu(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// The `cnf.jkt` of an access token that is a JWT (RFC 9449 §6.1), read without verifying it
/// (the client cannot, and only compares it with its own key); `None` for opaque tokens.
pub(crate) fn token_jkt(access_token: &str) -> Option<String> {
    let mut parts = access_token.split('.');
    let (_, payload, _, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else {
        return None;
    };
    let claims: serde_json::Value = serde_json::from_slice(
        &BASE64URL_NOPAD
            .decode(payload.trim_end_matches('=').as_bytes())
            .ok()?,
    )
    .ok()?;
    claims.get("cnf")?.get("jkt")?.as_str().map(str::to_owned)
}

/// Whether a nonce value is usable: RFC 9449 §8.1 `NQCHAR`s, bounded.
pub(crate) fn valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce.len() <= 1024
        && nonce
            .bytes()
            .all(|b| b == b'!' || (b'#'..=b'[').contains(&b) || (b']'..=b'~').contains(&b))
}

/// The latest `DPoP-Nonce` of each server (by origin): authorization servers and resource
/// servers each give their own (RFC 9449 §8, §9).
#[derive(Default)]
pub(crate) struct Nonces(Mutex<HashMap<String, String>>);

/// Origins remembered before the map is cleared.
const NONCES_MAX: usize = 1024;

impl Nonces {
    pub(crate) fn get(&self, url: &Url) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&url.origin().ascii_serialization())
            .cloned()
    }

    /// Remembers `nonce` for `url`'s origin; an invalid value is ignored.
    pub(crate) fn record(&self, url: &Url, nonce: &str) {
        if !valid_nonce(nonce) {
            return;
        }
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= NONCES_MAX {
            map.clear();
        }
        map.insert(url.origin().ascii_serialization(), nonce.to_owned());
    }
}

/// Parsed keys by their stored form, so a proof does not parse the key again.
#[derive(Default)]
pub(crate) struct KeyCache(Mutex<HashMap<String, Arc<DpopKey>>>);

impl KeyCache {
    pub(crate) fn get(&self, stored: &SecretString) -> Result<Arc<DpopKey>, AuthError> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(key) = map.get(stored.expose_secret()) {
            return Ok(Arc::clone(key));
        }
        let key = Arc::new(DpopKey::from_stored(stored)?);
        if map.len() >= NONCES_MAX {
            map.clear();
        }
        map.insert(stored.expose_secret().to_owned(), Arc::clone(&key));
        Ok(key)
    }
}

impl McpAuth {
    /// The latest `DPoP-Nonce` the server at `url`'s origin sent (RFC 9449 §9), for the next
    /// proof to it.
    pub fn dpop_nonce(&self, url: &Url) -> Option<String> {
        self.dpop_nonces.get(url)
    }

    /// Records a resource server's `DPoP-Nonce` header value (from any response, and from a
    /// `401` whose challenge [`Challenge::is_dpop_nonce`]). Values that are not RFC 9449
    /// nonces are ignored.
    pub fn record_dpop_nonce(&self, url: &Url, nonce: &str) {
        self.dpop_nonces.record(url, nonce);
    }

    /// The `DPoP` header of a POST to the token endpoint `url` (with the server's latest nonce).
    pub(super) fn dpop_headers(
        &self,
        dpop: Option<&DpopKey>,
        url: &Url,
    ) -> Result<Vec<(&'static str, String)>, AuthError> {
        match dpop {
            Some(key) => Ok(vec![(
                "DPoP",
                key.proof("POST", url, None, self.dpop_nonces.get(url).as_deref())?,
            )]),
            None => Ok(Vec::new()),
        }
    }

    /// Keeps the `DPoP-Nonce` a server sent (RFC 9449 §8.2: use it in the next proof).
    pub(super) fn remember_dpop_nonce(&self, url: &Url, headers: &reqwest::header::HeaderMap) {
        if let Some(nonce) = headers.get("dpop-nonce").and_then(|v| v.to_str().ok()) {
            self.dpop_nonces.record(url, nonce);
        }
    }

    /// A new key for an authorization at `meta`'s server, as [`ClientConfig::dpop`] says, or
    /// as `required` says: once a server's tokens for a resource were DPoP-bound, a new
    /// authorization there must be too (a server that stops binding them is refused, never
    /// silently downgraded to Bearer; `logout` lets the user accept Bearer tokens again).
    pub(super) fn new_dpop_key(
        &self,
        meta: &ServerMetadata,
        required: bool,
    ) -> Result<Option<DpopKey>, AuthError> {
        match (self.config.dpop, meta.supports_dpop_es256(), required) {
            (DpopMode::Required, false, _) | (_, false, true) => Err(AuthError::DpopNotAvailable {
                issuer: meta.issuer.clone(),
                reason: "its metadata lists no ES256 in dpop_signing_alg_values_supported",
            }),
            (DpopMode::Off, _, false) | (DpopMode::IfSupported, false, false) => Ok(None),
            (_, true, _) => DpopKey::generate().map(Some),
        }
    }

    /// Whether an authorization at `issuer` for `resource` must yield DPoP-bound tokens.
    pub(super) async fn dpop_required(&self, issuer: &IssuerId, resource: &ResourceUri) -> bool {
        match self.config.dpop {
            DpopMode::Required => true,
            DpopMode::Off => false,
            DpopMode::IfSupported => self
                .store
                .get_tokens(&TokenKey::new(issuer.clone(), resource.clone()))
                .await
                .ok()
                .flatten()
                .is_some_and(|t| t.value.dpop_key.is_some()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn proofs_verify_with_their_embedded_key_and_carry_the_claims() {
        let key = DpopKey::generate().unwrap();
        let url = Url::parse("https://mcp.example.com/mcp?x=1#frag").unwrap();
        let token = SecretString::from("tok".to_owned());
        let proof = key.proof("post", &url, Some(&token), Some("n-1")).unwrap();
        let header = jsonwebtoken::decode_header(&proof).unwrap();
        assert_eq!(header.typ.as_deref(), Some("dpop+jwt"));
        let jwk = header.jwk.unwrap();
        assert_eq!(
            jwk.thumbprint(ThumbprintHash::SHA256).unwrap(),
            key.thumbprint()
        );
        let mut validation = Validation::new(Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &proof,
            &DecodingKey::from_jwk(&jwk).unwrap(),
            &validation,
        )
        .unwrap();
        let c = data.claims;
        assert_eq!(c["htm"], "POST");
        assert_eq!(c["htu"], "https://mcp.example.com/mcp");
        assert_eq!(c["nonce"], "n-1");
        assert_eq!(
            c["ath"],
            BASE64URL_NOPAD.encode(&sha2::Sha256::digest(b"tok"))
        );
        assert!(c["jti"].as_str().unwrap().len() >= 16);
        // A second proof has another jti.
        let again = key.proof("POST", &url, None, None).unwrap();
        assert_ne!(again, proof);
        // The key survives the store.
        let reloaded = DpopKey::from_stored(&key.stored()).unwrap();
        assert_eq!(reloaded.thumbprint(), key.thumbprint());
        assert!(!format!("{key:?}").contains(key.stored().expose_secret()));
    }

    #[test]
    fn damaged_stored_keys_are_errors_that_do_not_show_the_key() {
        for bad in ["", "!!", "AAAA", "bm90IGEga2V5"] {
            let e = DpopKey::from_stored(&SecretString::from(bad.to_owned())).unwrap_err();
            assert!(!bad.is_empty() && !e.to_string().contains(bad) || bad.is_empty());
        }
    }

    #[test]
    fn the_bound_key_of_a_jwt_access_token_is_read() {
        let jwt = |claims: serde_json::Value| {
            format!(
                "eyJhbGciOiJFUzI1NiJ9.{}.sig",
                BASE64URL_NOPAD.encode(claims.to_string().as_bytes())
            )
        };
        assert_eq!(
            token_jkt(&jwt(json!({"cnf": {"jkt": "abc"}}))).as_deref(),
            Some("abc")
        );
        assert_eq!(token_jkt(&jwt(json!({"sub": "x"}))), None);
        assert_eq!(token_jkt("opaque-token"), None);
        assert_eq!(token_jkt("a.b.c.d"), None);
        assert_eq!(token_jkt("a.!!.c"), None);
    }

    #[test]
    fn nonce_syntax() {
        assert!(valid_nonce("eyJ7S_zG.eyJH0-Z.HX4w-7v"));
        for bad in ["", "a b", "a\"b", "a\\b", "a\r\nb", "é"] {
            assert!(!valid_nonce(bad), "{bad:?}");
        }
    }
}
