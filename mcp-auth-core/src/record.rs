//! The one record format every backend stores.
//!
//! A record is compact JSON: `{"schema":1,"type":"<kind>","record":{...}}` with fields in a fixed
//! order and `extra` maps sorted by key, so encoding is deterministic and a record can be copied
//! between backends byte for byte. A record names its own key (issuer, resource, state) and
//! decoding checks it against the key it was read from, so a record moved to the wrong place is
//! reported as [`StoreError::Corrupt`] instead of being served for another authorization server.
//!
//! This module is the only place where secrets are exposed for storage.

use std::borrow::Cow;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::ids::{IssuerId, ResourceUri, TokenKey, decode_key, encode_key};
use crate::model::{
    ClientRegistration, Extra, PendingAuthorization, RefreshState, RegistrationKind,
    ResourceBinding, TokenSet,
};
use crate::store::{Version, Versioned};
use crate::time::Timestamp;

/// The record format version written by this library.
pub const SCHEMA_VERSION: u32 = 1;

/// Largest encoded record accepted, in bytes (below AWS Secrets Manager's 64 KiB secret limit).
pub const MAX_RECORD_BYTES: usize = 60 * 1024;

/// The four kinds of record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// [`ClientRegistration`], keyed by issuer.
    Registration,
    /// [`TokenSet`], keyed by issuer and resource.
    Tokens,
    /// [`ResourceBinding`], keyed by resource.
    Binding,
    /// [`PendingAuthorization`], keyed by state.
    Pending,
}

impl RecordKind {
    /// Name used in records and storage keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registration => "registration",
            Self::Tokens => "tokens",
            Self::Binding => "binding",
            Self::Pending => "pending",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "registration" => Some(Self::Registration),
            "tokens" => Some(Self::Tokens),
            "binding" => Some(Self::Binding),
            "pending" => Some(Self::Pending),
            _ => None,
        }
    }
}

/// Where a record lives inside a namespace.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum RecordKey {
    /// A registration.
    Registration(IssuerId),
    /// A token set.
    Tokens(TokenKey),
    /// A binding.
    Binding(ResourceUri),
    /// A pending authorization (by `state`).
    Pending(String),
}

impl RecordKey {
    /// The kind of record stored under this key.
    pub fn kind(&self) -> RecordKind {
        match self {
            Self::Registration(_) => RecordKind::Registration,
            Self::Tokens(_) => RecordKind::Tokens,
            Self::Binding(_) => RecordKind::Binding,
            Self::Pending(_) => RecordKind::Pending,
        }
    }

    /// Injective key within a namespace, `<kind>/<encoded id>`, using only `[0-9a-v./]` after the
    /// kind: safe as a Redis key, an AWS secret name, a keyring attribute or a SQLite text key.
    pub fn storage_key(&self) -> String {
        // Room for the usual key (two ~40-byte identifiers, base32 encoded): one allocation.
        let mut key = String::with_capacity(160);
        self.push_storage_key(&mut key);
        key
    }

    /// Appends [`RecordKey::storage_key`] to `out`: a backend that prefixes its keys builds each
    /// in one allocation (this runs on every store operation, the hot path included).
    ///
    /// ```
    /// use mcp_auth_core::{IssuerId, record::RecordKey};
    ///
    /// let key = RecordKey::Registration(IssuerId::new("https://as.example")?);
    /// let mut redis_key = String::from("mcp-auth:{ns}:r:");
    /// key.push_storage_key(&mut redis_key);
    /// assert_eq!(redis_key, format!("mcp-auth:{{ns}}:r:{}", key.storage_key()));
    /// # Ok::<(), mcp_auth_core::InvalidId>(())
    /// ```
    pub fn push_storage_key(&self, out: &mut String) {
        out.push_str(self.kind().as_str());
        out.push('/');
        match self {
            Self::Registration(issuer) => out.push_str(issuer.storage_key_str()),
            Self::Tokens(key) => key.push_storage_key(out),
            Self::Binding(resource) => out.push_str(resource.storage_key_str()),
            Self::Pending(state) => out.push_str(&encode_key(state)),
        }
    }

    /// Inverse of [`RecordKey::storage_key`]; `None` for anything this library did not produce.
    pub fn from_storage_key(key: &str) -> Option<Self> {
        let (kind, id) = key.split_once('/')?;
        Some(match RecordKind::parse(kind)? {
            RecordKind::Registration => Self::Registration(IssuerId::from_storage_key(id).ok()?),
            RecordKind::Tokens => Self::Tokens(TokenKey::from_storage_key(id).ok()?),
            RecordKind::Binding => Self::Binding(ResourceUri::from_storage_key(id).ok()?),
            RecordKind::Pending => Self::Pending(decode_key(id)?),
        })
    }
}

impl RecordKey {
    /// The issuer of a registration key.
    pub fn into_registration(self) -> Option<IssuerId> {
        match self {
            Self::Registration(issuer) => Some(issuer),
            _ => None,
        }
    }

    /// The token key of a tokens key.
    pub fn into_tokens(self) -> Option<TokenKey> {
        match self {
            Self::Tokens(key) => Some(key),
            _ => None,
        }
    }

    /// The resource of a binding key.
    pub fn into_binding(self) -> Option<ResourceUri> {
        match self {
            Self::Binding(resource) => Some(resource),
            _ => None,
        }
    }
}

/// Turns a backend's raw read (`None`, or the bytes with their version) into a typed, versioned
/// record with `decode` — the one line every backend's `get_*` needs.
///
/// # Errors
///
/// Whatever `decode` returns for the stored bytes (normally [`StoreError::Corrupt`] when they do
/// not decode); `None` is never an error.
pub fn versioned<T>(
    found: Option<(Vec<u8>, Version)>,
    decode: impl FnOnce(&[u8]) -> Result<T, StoreError>,
) -> Result<Option<Versioned<T>>, StoreError> {
    found
        .map(|(bytes, version)| {
            Ok(Versioned {
                value: decode(&bytes)?,
                version,
            })
        })
        .transpose()
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Registration(issuer) => write!(f, "registration(issuer={issuer})"),
            Self::Tokens(key) => write!(f, "tokens({key})"),
            Self::Binding(resource) => write!(f, "binding(resource={resource})"),
            // A state is a one-time CSRF value: never print it.
            Self::Pending(_) => f.write_str("pending-authorization"),
        }
    }
}

impl fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordKey({self})")
    }
}

// Strings that are only compared borrow from the record being decoded (serde borrows a plain
// `Cow<str>` when the JSON string has no escape; an `Option<Cow<str>>` always decodes owned, and
// moves into its `SecretString` without another copy). Encoding borrows every field it can,
// the token and registration secrets included: no unzeroized copy of them is made on the way to
// the encoded bytes (which the store writes and the caller drops).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a, T> {
    schema: u32,
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    record: T,
}

#[derive(Deserialize)]
struct Header {
    schema: u32,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistrationV1<'a> {
    #[serde(borrow)]
    issuer: Cow<'a, str>,
    client_id: String,
    #[serde(borrow)]
    client_secret: Option<Cow<'a, str>>,
    client_secret_expires_at: Option<Timestamp>,
    client_id_issued_at: Option<Timestamp>,
    token_endpoint_auth_method: String,
    redirect_uris: Vec<String>,
    grant_types: Vec<String>,
    kind: String,
    #[serde(borrow)]
    registration_access_token: Option<Cow<'a, str>>,
    registration_client_uri: Option<String>,
    created_at: Timestamp,
    extra: Extra,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensV1<'a> {
    // Only compared with the key the record was read from, which is already valid.
    #[serde(borrow)]
    issuer: Cow<'a, str>,
    #[serde(borrow)]
    resource: Cow<'a, str>,
    #[serde(borrow)]
    access_token: Cow<'a, str>,
    token_type: String,
    expires_at: Option<Timestamp>,
    #[serde(borrow)]
    refresh_token: Option<Cow<'a, str>>,
    scopes: Vec<String>,
    obtained_at: Timestamp,
    // Absent in records written before refresh states existed, and whenever there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_state: Option<RefreshState>,
    // Only for DPoP-bound tokens.
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    dpop_key: Option<Cow<'a, str>>,
    extra: Extra,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BindingV1 {
    resource: ResourceUri,
    issuer: IssuerId,
    resource_metadata: Extra,
    authorization_server_metadata: Extra,
    bound_at: Timestamp,
    extra: Extra,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PendingV1 {
    state: String,
    pkce_verifier: String,
    issuer: IssuerId,
    resource: ResourceUri,
    client_id: String,
    redirect_uri: String,
    scopes: Vec<String>,
    created_at: Timestamp,
    expires_at: Timestamp,
    extra: Extra,
}

fn expose(secret: &Option<SecretString>) -> Option<Cow<'_, str>> {
    secret.as_ref().map(|s| Cow::Borrowed(s.expose_secret()))
}

/// A decoded secret, owned (borrowed strings are copied once, into the secret).
fn secret(value: Cow<'_, str>) -> SecretString {
    SecretString::from(value.into_owned())
}

fn encode<T: Serialize>(key: &RecordKey, record: T) -> Result<Vec<u8>, StoreError> {
    let envelope = Envelope {
        schema: SCHEMA_VERSION,
        kind: Cow::Borrowed(key.kind().as_str()),
        record,
    };
    let bytes = serde_json::to_vec(&envelope).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        reason: format!("cannot encode record: {e}"),
    })?;
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(StoreError::TooLarge {
            key: key.to_string(),
            size: bytes.len(),
            limit: MAX_RECORD_BYTES,
        });
    }
    Ok(bytes)
}

fn corrupt(key: &RecordKey, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: key.to_string(),
        reason: reason.into(),
    }
}

fn decode<'de, T: Deserialize<'de>>(key: &RecordKey, bytes: &'de [u8]) -> Result<T, StoreError> {
    // Happy path: one parse. Only a failure pays for a second look to explain it.
    match serde_json::from_slice::<Envelope<'_, T>>(bytes) {
        Ok(envelope)
            if envelope.schema == SCHEMA_VERSION && envelope.kind == key.kind().as_str() =>
        {
            Ok(envelope.record)
        }
        Ok(envelope) => Err(explain_header(key, envelope.schema, &envelope.kind)),
        Err(e) => match serde_json::from_slice::<Header>(bytes) {
            Ok(header) if header.schema != SCHEMA_VERSION || header.kind != key.kind().as_str() => {
                Err(explain_header(key, header.schema, &header.kind))
            }
            Ok(_) => Err(corrupt(
                key,
                format!(
                    "invalid {} record ({})",
                    key.kind().as_str(),
                    e.classify_name()
                ),
            )),
            // serde_json's category names a problem, never the content.
            Err(e) => Err(corrupt(
                key,
                format!("not an mcp-auth record ({})", e.classify_name()),
            )),
        },
    }
}

fn explain_header(key: &RecordKey, schema: u32, kind: &str) -> StoreError {
    if schema > SCHEMA_VERSION {
        corrupt(
            key,
            format!(
                "written in record schema {schema} by a newer mcp-auth (this one reads up to {SCHEMA_VERSION}); upgrade"
            ),
        )
    } else if schema != SCHEMA_VERSION {
        corrupt(key, format!("unknown record schema {schema}"))
    } else {
        corrupt(
            key,
            format!("holds a {kind:?} record, expected {}", key.kind().as_str()),
        )
    }
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        use serde_json::error::Category;
        match self.classify() {
            Category::Io => "I/O error",
            Category::Syntax => "malformed JSON",
            Category::Data => "missing, unknown or mistyped field",
            Category::Eof => "truncated JSON",
        }
    }
}

/// Encodes a registration (stored under `RecordKey::Registration(registration.issuer)`).
///
/// # Errors
///
/// [`StoreError::TooLarge`] when the encoded record is larger than [`MAX_RECORD_BYTES`];
/// [`StoreError::Corrupt`] if the record cannot be serialised to JSON.
pub fn encode_registration(registration: &ClientRegistration) -> Result<Vec<u8>, StoreError> {
    let key = RecordKey::Registration(registration.issuer.clone());
    encode(
        &key,
        RegistrationV1 {
            issuer: Cow::Borrowed(registration.issuer.as_str()),
            client_id: registration.client_id.clone(),
            client_secret: expose(&registration.client_secret),
            client_secret_expires_at: registration.client_secret_expires_at,
            client_id_issued_at: registration.client_id_issued_at,
            token_endpoint_auth_method: registration.token_endpoint_auth_method.clone(),
            redirect_uris: registration.redirect_uris.clone(),
            grant_types: registration.grant_types.clone(),
            kind: registration.kind.as_str().to_owned(),
            registration_access_token: expose(&registration.registration_access_token),
            registration_client_uri: registration.registration_client_uri.clone(),
            created_at: registration.created_at,
            extra: registration.extra.clone(),
        },
    )
}

/// Decodes a registration read from under `issuer`'s key.
///
/// # Errors
///
/// [`StoreError::Corrupt`] when `bytes` is not JSON in the record format, was written in another
/// record schema (a newer mcp-auth, say) or holds another kind of record, belongs to another issuer
/// than `issuer`, or names an unknown registration kind.
pub fn decode_registration(
    issuer: &IssuerId,
    bytes: &[u8],
) -> Result<ClientRegistration, StoreError> {
    let key = RecordKey::Registration(issuer.clone());
    let r: RegistrationV1<'_> = decode(&key, bytes)?;
    if r.issuer != issuer.as_str() {
        return Err(corrupt(&key, "record belongs to another issuer"));
    }
    let kind = RegistrationKind::parse(&r.kind)
        .ok_or_else(|| corrupt(&key, format!("unknown registration kind {:?}", r.kind)))?;
    Ok(ClientRegistration {
        issuer: issuer.clone(),
        client_id: r.client_id,
        client_secret: r.client_secret.map(secret),
        client_secret_expires_at: r.client_secret_expires_at,
        client_id_issued_at: r.client_id_issued_at,
        token_endpoint_auth_method: r.token_endpoint_auth_method,
        redirect_uris: r.redirect_uris,
        grant_types: r.grant_types,
        kind,
        registration_access_token: r.registration_access_token.map(secret),
        registration_client_uri: r.registration_client_uri,
        created_at: r.created_at,
        extra: r.extra,
    })
}

/// Encodes a token set stored under `key`.
///
/// # Errors
///
/// [`StoreError::TooLarge`] when the encoded record is larger than [`MAX_RECORD_BYTES`];
/// [`StoreError::Corrupt`] if the record cannot be serialised to JSON.
pub fn encode_tokens(key: &TokenKey, tokens: &TokenSet) -> Result<Vec<u8>, StoreError> {
    encode(
        &RecordKey::Tokens(key.clone()),
        TokensV1 {
            issuer: Cow::Borrowed(key.issuer.as_str()),
            resource: Cow::Borrowed(key.resource.as_str()),
            access_token: Cow::Borrowed(tokens.access_token.expose_secret()),
            token_type: tokens.token_type.clone(),
            expires_at: tokens.expires_at,
            refresh_token: expose(&tokens.refresh_token),
            scopes: tokens.scopes.clone(),
            obtained_at: tokens.obtained_at,
            refresh_state: tokens.refresh_state.clone(),
            dpop_key: expose(&tokens.dpop_key),
            extra: tokens.extra.clone(),
        },
    )
}

/// Decodes a token set read from under `key`.
///
/// # Errors
///
/// [`StoreError::Corrupt`] when `bytes` is not JSON in the record format, was written in another
/// record schema (a newer mcp-auth, say) or holds another kind of record, or belongs to another
/// issuer or resource than `key`.
pub fn decode_tokens(key: &TokenKey, bytes: &[u8]) -> Result<TokenSet, StoreError> {
    let record_key = RecordKey::Tokens(key.clone());
    let t: TokensV1<'_> = decode(&record_key, bytes)?;
    if t.issuer != key.issuer.as_str() || t.resource != key.resource.as_str() {
        return Err(corrupt(
            &record_key,
            "record belongs to another issuer or resource",
        ));
    }
    Ok(TokenSet {
        access_token: secret(t.access_token),
        token_type: t.token_type,
        expires_at: t.expires_at,
        refresh_token: t.refresh_token.map(secret),
        scopes: t.scopes,
        obtained_at: t.obtained_at,
        refresh_state: t.refresh_state,
        dpop_key: t.dpop_key.map(secret),
        extra: t.extra,
    })
}

/// Encodes a binding (stored under `RecordKey::Binding(binding.resource)`).
///
/// # Errors
///
/// [`StoreError::TooLarge`] when the encoded record is larger than [`MAX_RECORD_BYTES`];
/// [`StoreError::Corrupt`] if the record cannot be serialised to JSON.
pub fn encode_binding(binding: &ResourceBinding) -> Result<Vec<u8>, StoreError> {
    encode(
        &RecordKey::Binding(binding.resource.clone()),
        BindingV1 {
            resource: binding.resource.clone(),
            issuer: binding.issuer.clone(),
            resource_metadata: binding.resource_metadata.clone(),
            authorization_server_metadata: binding.authorization_server_metadata.clone(),
            bound_at: binding.bound_at,
            extra: binding.extra.clone(),
        },
    )
}

/// Decodes a binding read from under `resource`'s key.
///
/// # Errors
///
/// [`StoreError::Corrupt`] when `bytes` is not JSON in the record format, was written in another
/// record schema (a newer mcp-auth, say) or holds another kind of record, or belongs to another
/// resource than `resource`.
pub fn decode_binding(resource: &ResourceUri, bytes: &[u8]) -> Result<ResourceBinding, StoreError> {
    let key = RecordKey::Binding(resource.clone());
    let b: BindingV1 = decode(&key, bytes)?;
    if &b.resource != resource {
        return Err(corrupt(&key, "record belongs to another resource"));
    }
    Ok(ResourceBinding {
        resource: b.resource,
        issuer: b.issuer,
        resource_metadata: b.resource_metadata,
        authorization_server_metadata: b.authorization_server_metadata,
        bound_at: b.bound_at,
        extra: b.extra,
    })
}

/// Encodes a pending authorization (stored under `RecordKey::Pending(pending.state)`).
///
/// # Errors
///
/// [`StoreError::TooLarge`] when the encoded record is larger than [`MAX_RECORD_BYTES`];
/// [`StoreError::Corrupt`] if the record cannot be serialised to JSON.
pub fn encode_pending(pending: &PendingAuthorization) -> Result<Vec<u8>, StoreError> {
    encode(
        &RecordKey::Pending(pending.state.clone()),
        PendingV1 {
            state: pending.state.clone(),
            pkce_verifier: pending.pkce_verifier.expose_secret().to_owned(),
            issuer: pending.issuer.clone(),
            resource: pending.resource.clone(),
            client_id: pending.client_id.clone(),
            redirect_uri: pending.redirect_uri.clone(),
            scopes: pending.scopes.clone(),
            created_at: pending.created_at,
            expires_at: pending.expires_at,
            extra: pending.extra.clone(),
        },
    )
}

/// Decodes a pending authorization read from under `state`'s key.
///
/// # Errors
///
/// [`StoreError::Corrupt`] when `bytes` is not JSON in the record format, was written in another
/// record schema (a newer mcp-auth, say) or holds another kind of record, or belongs to another
/// state than `state`.
pub fn decode_pending(state: &str, bytes: &[u8]) -> Result<PendingAuthorization, StoreError> {
    let key = RecordKey::Pending(state.to_owned());
    let p: PendingV1 = decode(&key, bytes)?;
    if p.state != state {
        return Err(corrupt(&key, "record belongs to another state"));
    }
    Ok(PendingAuthorization {
        state: p.state,
        pkce_verifier: SecretString::from(p.pkce_verifier),
        issuer: p.issuer,
        resource: p.resource,
        client_id: p.client_id,
        redirect_uri: p.redirect_uri,
        scopes: p.scopes,
        created_at: p.created_at,
        expires_at: p.expires_at,
        extra: p.extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> IssuerId {
        IssuerId::new("https://as.example/t").unwrap()
    }

    #[test]
    fn registration_encoding_is_deterministic_and_roundtrips() {
        let mut reg = ClientRegistration::new(issuer(), "c1", RegistrationKind::Dynamic);
        reg.client_secret = Some(SecretString::from("s3cret"));
        reg.extra.insert("zeta".into(), 1.into());
        reg.extra.insert("alpha".into(), "x".into());
        let a = encode_registration(&reg).unwrap();
        let b = encode_registration(&decode_registration(&issuer(), &a).unwrap()).unwrap();
        assert_eq!(a, b);
        let text = String::from_utf8(a).unwrap();
        assert!(text.starts_with(r#"{"schema":1,"type":"registration","record":{"issuer":"#));
        assert!(text.find("alpha") < text.find("zeta"));
    }

    #[test]
    fn decoding_rejects_misplaced_future_and_garbage_records() {
        let reg = ClientRegistration::new(issuer(), "c1", RegistrationKind::Dynamic);
        let bytes = encode_registration(&reg).unwrap();
        let other = IssuerId::new("https://as.example/t/").unwrap();
        assert!(matches!(
            decode_registration(&other, &bytes),
            Err(StoreError::Corrupt { .. })
        ));
        let future = String::from_utf8(bytes.clone())
            .unwrap()
            .replace(r#""schema":1"#, r#""schema":2"#);
        let err = decode_registration(&issuer(), future.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("newer mcp-auth"), "{err}");
        for garbage in [
            &b""[..],
            b"\xff\xfe",
            b"{}",
            b"[1,2]",
            b"{\"schema\":1,\"type\":\"tokens\",\"record\":{}}",
        ] {
            assert!(matches!(
                decode_registration(&issuer(), garbage),
                Err(StoreError::Corrupt { .. })
            ));
        }
    }

    #[test]
    fn corrupt_error_never_echoes_content() {
        let err = decode_registration(
            &issuer(),
            b"{\"schema\":1,\"type\":\"registration\",\"record\":{\"client_secret\":\"hunter2\"}}",
        )
        .unwrap_err();
        assert!(!format!("{err} {err:?}").contains("hunter2"));
    }

    #[test]
    fn record_keys_roundtrip() {
        let keys = [
            RecordKey::Registration(issuer()),
            RecordKey::Tokens(TokenKey::new(
                issuer(),
                ResourceUri::new("https://mcp.example/a").unwrap(),
            )),
            RecordKey::Binding(ResourceUri::new("https://mcp.example/a").unwrap()),
            RecordKey::Pending("st/at:e".into()),
        ];
        for key in keys {
            let s = key.storage_key();
            assert_eq!(RecordKey::from_storage_key(&s), Some(key));
        }
        assert_eq!(RecordKey::from_storage_key("registration/XYZ"), None);
        assert_eq!(RecordKey::from_storage_key("other/abc"), None);
    }

    #[test]
    fn oversized_records_are_refused() {
        let mut reg = ClientRegistration::new(issuer(), "c1", RegistrationKind::Dynamic);
        reg.extra
            .insert("big".into(), "x".repeat(MAX_RECORD_BYTES).into());
        assert!(matches!(
            encode_registration(&reg),
            Err(StoreError::TooLarge { .. })
        ));
    }
}
