//! Identifiers: the authorization server's issuer, the MCP server's canonical URI, the tenant
//! namespace, and the key under which tokens are stored.
//!
//! Every identifier has a validated constructor, compares by exact string, and derives an
//! **injective** storage key: the lowercase base32hex encoding of its UTF-8 bytes. The alphabet is
//! `0-9a-v`, so the key is safe in every backend's key syntax (no `:` `*` `/` `{` `}` `%`, no
//! case folding issues on case-insensitive stores) and two different identifiers can never share
//! a key.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use url::{Host, Url};

/// Longest identifier accepted, in bytes. Keeps every derived key well inside the smallest backend
/// limit (AWS Secrets Manager names: 512 characters).
pub const MAX_ID_LEN: usize = 200;

/// An identifier failed validation. Says which identifier, what was wrong and what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct InvalidId {
    what: &'static str,
    value: String,
    reason: &'static str,
}

impl InvalidId {
    fn new(what: &'static str, value: &str, reason: &'static str) -> Self {
        // Keep the message bounded even for hostile input.
        let value: String = value.chars().take(MAX_ID_LEN).collect();
        Self {
            what,
            value,
            reason,
        }
    }

    /// Which kind of identifier was rejected (`"issuer"`, `"resource URI"`, `"namespace"`).
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// Why it was rejected.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

/// Lowercase base32hex (RFC 4648 §7 alphabet, lowercased), no padding.
fn key_encoding() -> &'static data_encoding::Encoding {
    static ENCODING: std::sync::OnceLock<data_encoding::Encoding> = std::sync::OnceLock::new();
    ENCODING.get_or_init(|| {
        let mut spec = data_encoding::Specification::new();
        spec.symbols.push_str("0123456789abcdefghijklmnopqrstuv");
        // The specification is constant and valid, so this never falls back; it avoids a panic
        // path all the same.
        spec.encoding()
            .unwrap_or_else(|_| data_encoding::BASE32HEX_NOPAD.clone())
    })
}

/// Encodes bytes as lowercase base32hex without padding: injective, `[0-9a-v]*`.
pub(crate) fn encode_key(raw: &str) -> String {
    key_encoding().encode(raw.as_bytes())
}

/// Inverse of [`encode_key`]; `None` when `encoded` is not a key this crate produced.
pub(crate) fn decode_key(encoded: &str) -> Option<String> {
    if encoded.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let bytes = key_encoding().decode(encoded.as_bytes()).ok()?;
    String::from_utf8(bytes).ok()
}

fn is_loopback(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        Host::Ipv4(ip) => ip.is_loopback(),
        Host::Ipv6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Checks shared by issuers and resource URIs; returns the parsed URL.
fn parse_http_url(what: &'static str, raw: &str) -> Result<Url, InvalidId> {
    if raw.is_empty() {
        return Err(InvalidId::new(what, raw, "must not be empty"));
    }
    if raw.len() > MAX_ID_LEN {
        return Err(InvalidId::new(what, raw, "longer than 200 bytes"));
    }
    if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(InvalidId::new(
            what,
            raw,
            "contains whitespace or control characters",
        ));
    }
    if raw.contains('#') {
        return Err(InvalidId::new(what, raw, "must not contain a fragment (#)"));
    }
    let url = Url::parse(raw).map_err(|_| {
        InvalidId::new(
            what,
            raw,
            "is not an absolute URL (expected https://host/...)",
        )
    })?;
    let host = url
        .host()
        .ok_or_else(|| InvalidId::new(what, raw, "has no host"))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&host) => {}
        "http" => {
            return Err(InvalidId::new(
                what,
                raw,
                "uses http on a non-loopback host; https is required",
            ));
        }
        _ => return Err(InvalidId::new(what, raw, "scheme must be https")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(InvalidId::new(
            what,
            raw,
            "must not contain user information",
        ));
    }
    Ok(url)
}

/// The `issuer` of an authorization server, exactly as published in metadata that passed
/// RFC 8414 §3.3 validation.
///
/// Absolute `https` URL (`http` only on loopback), with no query, fragment or user information.
/// Compared by **exact string**: `https://as.example/` and `https://as.example` are two different
/// issuers, as are `https://as.example/Tenant` and `https://as.example/tenant` — the MCP
/// specification forbids normalising issuers before comparing them.
///
/// ```
/// use mcp_auth_core::IssuerId;
///
/// let a = IssuerId::new("https://auth.example.com/tenant")?;
/// let b = IssuerId::new("https://auth.example.com/tenant/")?;
/// assert_ne!(a, b);
/// assert_ne!(a.storage_key(), b.storage_key());
/// assert!(IssuerId::new("https://auth.example.com/?x=1").is_err());
/// # Ok::<(), mcp_auth_core::InvalidId>(())
/// ```
#[derive(Clone)]
pub struct IssuerId {
    // Shared: identifiers are cloned into keys, errors and records all the time.
    inner: std::sync::Arc<ParsedUrl>,
}

/// An identifier's exact string and its parsed form.
struct ParsedUrl {
    raw: String,
    url: Url,
    /// The storage key, computed once (stores derive keys on every operation).
    key: String,
}

impl ParsedUrl {
    fn new(raw: String, url: Url) -> Self {
        let key = encode_key(&raw);
        Self { raw, url, key }
    }

    /// With the storage key `raw` was decoded from. Decoding is canonical (a key with stray
    /// trailing bits, an impossible length or an uppercase symbol is rejected), so that key is
    /// exactly what [`encode_key`] would give: scans of many records skip encoding each again.
    fn decoded(raw: String, url: Url, key: &str) -> Self {
        Self {
            raw,
            url,
            key: key.to_owned(),
        }
    }
}

impl IssuerId {
    /// Validates `issuer`. The string is kept byte for byte; nothing is normalised.
    ///
    /// # Errors
    ///
    /// [`InvalidId`] when `issuer` is empty, longer than 200 bytes, contains whitespace or control
    /// characters, a query (`?`), a fragment (`#`) or user information, is not an absolute URL with
    /// a host, or uses a scheme other than `https` (`http` is accepted only on a loopback host).
    pub fn new(issuer: impl Into<String>) -> Result<Self, InvalidId> {
        let issuer = issuer.into();
        let url = Self::validate(&issuer)?;
        Ok(Self {
            inner: std::sync::Arc::new(ParsedUrl::new(issuer, url)),
        })
    }

    fn validate(issuer: &str) -> Result<Url, InvalidId> {
        if issuer.contains('?') {
            return Err(InvalidId::new(
                "issuer",
                issuer,
                "must not contain a query (?)",
            ));
        }
        parse_http_url("issuer", issuer)
    }

    /// The issuer exactly as published.
    pub fn as_str(&self) -> &str {
        &self.inner.raw
    }

    /// The parsed URL (for building well-known metadata URLs). Equality must use
    /// [`IssuerId::as_str`], never the parsed form.
    pub fn url(&self) -> &Url {
        &self.inner.url
    }

    /// Injective, backend-safe key (`[0-9a-v]+`) derived from the exact issuer string.
    pub fn storage_key(&self) -> String {
        self.inner.key.clone()
    }

    /// [`IssuerId::storage_key`] without a copy.
    pub(crate) fn storage_key_str(&self) -> &str {
        &self.inner.key
    }

    /// Inverse of [`IssuerId::storage_key`].
    ///
    /// # Errors
    ///
    /// [`InvalidId`] when `key` is not an issuer storage key, or decodes to a string that
    /// [`IssuerId::new`] rejects.
    pub fn from_storage_key(key: &str) -> Result<Self, InvalidId> {
        let raw = decode_key(key)
            .ok_or_else(|| InvalidId::new("issuer", key, "is not an issuer storage key"))?;
        let url = Self::validate(&raw)?;
        Ok(Self {
            inner: std::sync::Arc::new(ParsedUrl::decoded(raw, url, key)),
        })
    }
}

/// The canonical URI of an MCP server (RFC 8707 §2, MCP "Canonical Server URI").
///
/// Lowercase scheme and host, no default port, no fragment, no user information; a bare trailing
/// `/` after the host is removed (`https://mcp.example.com/` → `https://mcp.example.com`). A
/// trailing slash on a longer path is kept, because it can be significant for the resource.
///
/// ```
/// use mcp_auth_core::ResourceUri;
///
/// let r = ResourceUri::new("HTTPS://MCP.Example.com:443/")?;
/// assert_eq!(r.as_str(), "https://mcp.example.com");
/// let r = ResourceUri::new("https://mcp.example.com/server/mcp")?;
/// assert_eq!(r.as_str(), "https://mcp.example.com/server/mcp");
/// assert!(ResourceUri::new("https://mcp.example.com#fragment").is_err());
/// # Ok::<(), mcp_auth_core::InvalidId>(())
/// ```
#[derive(Clone)]
pub struct ResourceUri {
    inner: std::sync::Arc<ParsedUrl>,
}

impl ResourceUri {
    /// Parses `uri` and brings it to canonical form.
    ///
    /// # Errors
    ///
    /// [`InvalidId`] when `uri` is empty, longer than 200 bytes (before or after canonicalisation),
    /// contains whitespace or control characters, a fragment (`#`) or user information, is not an
    /// absolute URL with a host, or uses a scheme other than `https` (`http` is accepted only on a
    /// loopback host).
    pub fn new(uri: impl AsRef<str>) -> Result<Self, InvalidId> {
        let (url, len) = Self::canonicalize(uri.as_ref())?;
        let canonical = Self::prefix(&url, len).to_owned();
        Ok(Self {
            inner: std::sync::Arc::new(ParsedUrl::new(canonical, url)),
        })
    }

    /// The parsed URL of `raw` and the length of its canonical form, a prefix of the URL's
    /// serialisation (see [`ResourceUri::prefix`]).
    fn canonicalize(raw: &str) -> Result<(Url, usize), InvalidId> {
        let url = parse_http_url("resource URI", raw)?;
        let mut len = url.as_str().len();
        if url.path() == "/" && url.query().is_none() && url.as_str().ends_with('/') {
            len -= 1;
        }
        if len > MAX_ID_LEN {
            return Err(InvalidId::new("resource URI", raw, "longer than 200 bytes"));
        }
        Ok((url, len))
    }

    /// The first `len` bytes of `url`'s serialisation. From [`ResourceUri::canonicalize`], `len`
    /// is the whole length or one less (dropping an ASCII `/`): a char boundary (and `get`
    /// cannot panic whatever it is).
    fn prefix(url: &Url, len: usize) -> &str {
        url.as_str().get(..len).unwrap_or_default()
    }

    /// The canonical URI.
    pub fn as_str(&self) -> &str {
        &self.inner.raw
    }

    /// The parsed URL (its serialisation may carry a trailing `/` that the canonical form drops).
    pub fn url(&self) -> &Url {
        &self.inner.url
    }

    /// Injective, backend-safe key (`[0-9a-v]+`).
    pub fn storage_key(&self) -> String {
        self.inner.key.clone()
    }

    /// [`ResourceUri::storage_key`] without a copy.
    pub(crate) fn storage_key_str(&self) -> &str {
        &self.inner.key
    }

    /// Inverse of [`ResourceUri::storage_key`].
    ///
    /// # Errors
    ///
    /// [`InvalidId`] when `key` is not a resource storage key, decodes to a URI that
    /// [`ResourceUri::new`] rejects, or decodes to a URI that is not in canonical form.
    pub fn from_storage_key(key: &str) -> Result<Self, InvalidId> {
        let raw = decode_key(key)
            .ok_or_else(|| InvalidId::new("resource URI", key, "is not a resource storage key"))?;
        let (url, len) = Self::canonicalize(&raw)?;
        if Self::prefix(&url, len) != raw {
            return Err(InvalidId::new(
                "resource URI",
                key,
                "stored resource URI is not canonical",
            ));
        }
        Ok(Self {
            inner: std::sync::Arc::new(ParsedUrl::decoded(raw, url, key)),
        })
    }
}

/// A tenant. Stores are constructed with a namespace, and two namespaces over one backend are
/// fully isolated (a gateway keeps each user's credentials in its own namespace).
///
/// Any non-empty string of at most 200 bytes without control characters; its storage key is
/// injective like every other key.
///
/// ```
/// use mcp_auth_core::Namespace;
///
/// let ns = Namespace::new("user:alice@example.com")?;
/// assert_eq!(ns.as_str(), "user:alice@example.com");
/// assert_eq!(Namespace::default().as_str(), "default");
/// # Ok::<(), mcp_auth_core::InvalidId>(())
/// ```
#[derive(Clone)]
pub struct Namespace {
    raw: String,
}

impl Namespace {
    /// Validates a namespace name.
    ///
    /// # Errors
    ///
    /// [`InvalidId`] when `name` is empty, longer than 200 bytes, or contains control characters.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidId> {
        let name = name.into();
        if name.is_empty() {
            return Err(InvalidId::new("namespace", &name, "must not be empty"));
        }
        if name.len() > MAX_ID_LEN {
            return Err(InvalidId::new("namespace", &name, "longer than 200 bytes"));
        }
        if name.chars().any(char::is_control) {
            return Err(InvalidId::new(
                "namespace",
                &name,
                "contains control characters",
            ));
        }
        Ok(Self { raw: name })
    }

    /// A fresh namespace with a random name (`test-<32 hex digits>`), for isolated test runs.
    pub fn random(prefix: &str) -> Self {
        let prefix: String = prefix
            .chars()
            .filter(|c| !c.is_control())
            .take(64)
            .collect();
        Self {
            raw: format!("{prefix}-{}", crate::random_hex(16)),
        }
    }

    /// The namespace name.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Injective, backend-safe key (`[0-9a-v]+`).
    pub fn storage_key(&self) -> String {
        encode_key(&self.raw)
    }

    /// Inverse of [`Namespace::storage_key`].
    ///
    /// # Errors
    ///
    /// [`InvalidId`] when `key` is not a namespace storage key, or decodes to a name that
    /// [`Namespace::new`] rejects.
    pub fn from_storage_key(key: &str) -> Result<Self, InvalidId> {
        let raw = decode_key(key)
            .ok_or_else(|| InvalidId::new("namespace", key, "is not a namespace storage key"))?;
        Self::new(raw)
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Self {
            raw: "default".to_owned(),
        }
    }
}

/// Tokens are keyed by the issuer that issued them **and** the resource they were issued for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TokenKey {
    /// The authorization server that issued the tokens.
    pub issuer: IssuerId,
    /// The MCP server the tokens are for (the `resource` parameter).
    pub resource: ResourceUri,
}

impl TokenKey {
    /// Builds a key.
    pub fn new(issuer: IssuerId, resource: ResourceUri) -> Self {
        Self { issuer, resource }
    }

    /// Injective, backend-safe key: `<issuer key>.<resource key>`.
    pub fn storage_key(&self) -> String {
        let mut key = String::new();
        self.push_storage_key(&mut key);
        key
    }

    /// Appends [`TokenKey::storage_key`] to `out`.
    pub(crate) fn push_storage_key(&self, out: &mut String) {
        let (issuer, resource) = (
            self.issuer.storage_key_str(),
            self.resource.storage_key_str(),
        );
        out.reserve(issuer.len() + 1 + resource.len());
        out.push_str(issuer);
        out.push('.');
        out.push_str(resource);
    }

    /// Inverse of [`TokenKey::storage_key`].
    ///
    /// # Errors
    ///
    /// [`InvalidId`] when `key` is not two storage keys joined by `.`, or either half is not a
    /// valid issuer or resource storage key (see [`IssuerId::from_storage_key`] and
    /// [`ResourceUri::from_storage_key`]).
    pub fn from_storage_key(key: &str) -> Result<Self, InvalidId> {
        let (issuer, resource) = key
            .split_once('.')
            .ok_or_else(|| InvalidId::new("token key", key, "is not a token storage key"))?;
        Ok(Self {
            issuer: IssuerId::from_storage_key(issuer)?,
            resource: ResourceUri::from_storage_key(resource)?,
        })
    }
}

impl fmt::Display for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "issuer={} resource={}", self.issuer, self.resource)
    }
}

// Equality, ordering and hashing use the exact string only (never the parsed URL).
macro_rules! string_id_impls {
    ($ty:ident, $what:literal) => {
        impl PartialEq for $ty {
            fn eq(&self, other: &Self) -> bool {
                self.as_str() == other.as_str()
            }
        }

        impl Eq for $ty {}

        impl std::hash::Hash for $ty {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.as_str().hash(state);
            }
        }

        impl PartialOrd for $ty {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl Ord for $ty {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                self.as_str().cmp(other.as_str())
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($ty), "({:?})"), self.as_str())
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }

        impl std::str::FromStr for $ty {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(deserializer)?;
                let parsed = Self::new(raw.as_str()).map_err(serde::de::Error::custom)?;
                if parsed.as_str() != raw {
                    return Err(serde::de::Error::custom(concat!(
                        "stored ",
                        $what,
                        " is not in canonical form"
                    )));
                }
                Ok(parsed)
            }
        }
    };
}

string_id_impls!(IssuerId, "issuer");
string_id_impls!(ResourceUri, "resource URI");
string_id_impls!(Namespace, "namespace");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_is_exact_and_keys_are_injective() {
        let variants = [
            "https://as.example",
            "https://as.example/",
            "https://as.example/Tenant",
            "https://as.example/tenant",
            "https://as.example:443/tenant",
            "https://as.example/t%41",
            "https://as.example/tA",
            "https://as.example/caf\u{e9}",
            "https://as.example/cafe\u{301}",
            "https://as.example/a:b*c{d}",
            "http://127.0.0.1:8080/x",
            "http://localhost/x",
        ];
        let mut keys = std::collections::HashSet::new();
        for v in variants {
            let id = IssuerId::new(v).unwrap();
            assert_eq!(id.as_str(), v);
            let key = id.storage_key();
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'v').contains(&b))
            );
            assert_eq!(IssuerId::from_storage_key(&key).unwrap(), id);
            assert!(keys.insert(key), "duplicate key for {v}");
        }
    }

    #[test]
    fn issuer_rejects_bad_input() {
        for bad in [
            "",
            "as.example",
            "ftp://as.example",
            "http://as.example",
            "https://as.example?x",
            "https://as.example/#f",
            "https://user:pw@as.example",
            "https://as.example/ a",
            "javascript:alert(1)",
            "file:///etc/passwd",
        ] {
            assert!(IssuerId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(IssuerId::new(format!("https://as.example/{}", "a".repeat(300))).is_err());
    }

    #[test]
    fn resource_canonical_form() {
        let cases = [
            ("https://MCP.example.com/", "https://mcp.example.com"),
            ("https://mcp.example.com:443", "https://mcp.example.com"),
            (
                "https://mcp.example.com:8443/",
                "https://mcp.example.com:8443",
            ),
            ("https://mcp.example.com/mcp", "https://mcp.example.com/mcp"),
            (
                "https://mcp.example.com/mcp/",
                "https://mcp.example.com/mcp/",
            ),
            ("http://localhost:3000/mcp", "http://localhost:3000/mcp"),
        ];
        for (input, want) in cases {
            assert_eq!(ResourceUri::new(input).unwrap().as_str(), want);
        }
        assert!(ResourceUri::new("mcp.example.com").is_err());
        assert!(ResourceUri::new("https://mcp.example.com#fragment").is_err());
    }

    #[test]
    fn token_key_roundtrips() {
        let key = TokenKey::new(
            IssuerId::new("https://as.example/a.b").unwrap(),
            ResourceUri::new("https://mcp.example/x.y").unwrap(),
        );
        assert_eq!(TokenKey::from_storage_key(&key.storage_key()).unwrap(), key);
        assert!(TokenKey::from_storage_key("nodot").is_err());
        assert!(IssuerId::from_storage_key("ABC").is_err());
    }

    #[test]
    fn a_storage_key_decodes_only_from_its_one_encoding() {
        // Identifiers decoded from a key keep that key as their storage key: any other spelling
        // of the same bytes (stray trailing bits) must be refused, or two keys would name one id.
        let issuer = IssuerId::new("https://as.example").unwrap();
        let resource = ResourceUri::new("https://mcp.example").unwrap();
        for key in [issuer.storage_key(), resource.storage_key()] {
            // 18 and 19 bytes (not multiples of 5): the last symbol ends in zero padding bits,
            // and the next symbol of the alphabet sets the lowest of them.
            let last = key.chars().last().unwrap();
            let alphabet = "0123456789abcdefghijklmnopqrstuv";
            let bumped = alphabet
                .chars()
                .nth(alphabet.find(last).unwrap() + 1)
                .unwrap();
            let stray = format!("{}{bumped}", &key[..key.len() - 1]);
            assert!(IssuerId::from_storage_key(&stray).is_err(), "{stray}");
            assert!(ResourceUri::from_storage_key(&stray).is_err(), "{stray}");
        }
        let decoded = IssuerId::from_storage_key(&issuer.storage_key()).unwrap();
        assert_eq!(decoded.storage_key(), issuer.storage_key());
        let decoded = ResourceUri::from_storage_key(&resource.storage_key()).unwrap();
        assert_eq!(decoded.storage_key(), resource.storage_key());
        assert_eq!(decoded.as_str(), "https://mcp.example");
    }
}
