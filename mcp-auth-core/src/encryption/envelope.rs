//! The envelope: `mcpenc1.<key id>.<base64url(nonce | ciphertext | tag)>`, XChaCha20-Poly1305
//! with a fresh random 192-bit nonce per seal and associated data that binds it to its place.

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{Tag, XNonce};
use data_encoding::BASE64URL_NOPAD;
use serde::Serialize;
use zeroize::Zeroizing;

use super::key::{EncryptionKey, KeySet, valid_key_id};

/// The prefix of every envelope this version writes.
pub const ENVELOPE_PREFIX: &str = "mcpenc1.";

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Label at the start of the associated data: a different format or purpose never verifies.
const AD_LABEL: &str = "mcp-auth encrypted record v1";

/// What a stored secret field looks like.
pub(super) enum Shape<'a> {
    /// An envelope of this format, sealed with key `key_id`.
    Sealed { key_id: &'a str, body: &'a str },
    /// An envelope of a format this version does not know (a newer mcp-auth wrote it).
    Unknown,
    /// Not an envelope: a record written without encryption.
    Plain,
}

/// Classifies a stored value without decrypting it.
pub(super) fn shape(value: &str) -> Shape<'_> {
    if let Some(rest) = value.strip_prefix(ENVELOPE_PREFIX) {
        return match rest.split_once('.') {
            Some((key_id, body)) if valid_key_id(key_id) => Shape::Sealed { key_id, body },
            _ => Shape::Unknown,
        };
    }
    // `mcpenc<digits>.`: an envelope of another version.
    let is_other_version = value.strip_prefix("mcpenc").is_some_and(|rest| {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        digits > 0 && rest.as_bytes().get(digits) == Some(&b'.')
    });
    if is_other_version {
        Shape::Unknown
    } else {
        Shape::Plain
    }
}

/// The key id of an envelope, read without decrypting (`None`: not an envelope of this format).
/// For audits and tests: after a completed rekey, every sealed field names the current key.
pub fn envelope_key_id(value: &str) -> Option<&str> {
    match shape(value) {
        Shape::Sealed { key_id, .. } => Some(key_id),
        _ => None,
    }
}

/// The associated data: label, namespace, record kind, the record's key parts, the key id and
/// the record's visible fields, as one JSON array (an unambiguous encoding of all of them).
pub(super) fn associated_data<M: Serialize>(
    namespace: &str,
    kind: &str,
    key: &[&str],
    key_id: &str,
    visible: &M,
) -> Result<Vec<u8>, String> {
    serde_json::to_vec(&(AD_LABEL, namespace, kind, key, key_id, visible))
        .map_err(|e| format!("cannot encode the associated data: {e}"))
}

/// Seals `plaintext` with `key`: the envelope string.
pub(super) fn seal(key: &EncryptionKey, ad: &[u8], plaintext: &[u8]) -> Result<String, String> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| format!("the OS random source failed: {e}"))?;
    // nonce | plaintext → nonce | ciphertext | tag, encrypted in place.
    let mut buf = Zeroizing::new(Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN));
    buf.extend_from_slice(&nonce);
    buf.extend_from_slice(plaintext);
    let tag = key
        .cipher
        .encrypt_inout_detached(&XNonce::from(nonce), ad, (&mut buf[NONCE_LEN..]).into())
        .map_err(|_| "the record is too large to encrypt".to_owned())?;
    buf.extend_from_slice(&tag);
    let encoded_len = BASE64URL_NOPAD.encode_len(buf.len());
    let mut out = String::with_capacity(ENVELOPE_PREFIX.len() + key.id().len() + 1 + encoded_len);
    out.push_str(ENVELOPE_PREFIX);
    out.push_str(key.id());
    out.push('.');
    BASE64URL_NOPAD.encode_append(&buf, &mut out);
    Ok(out)
}

/// Why an envelope did not open. Never holds content.
pub(super) enum OpenError {
    UnknownKey(String),
    Malformed(&'static str),
    Inauthentic(String),
}

/// Opens the envelope body `body` sealed with `key_id`, with the associated data `ad` (built
/// for that key id): the plaintext, in a buffer wiped on drop.
pub(super) fn open(
    keys: &KeySet,
    key_id: &str,
    body: &str,
    ad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    let key = keys
        .get(key_id)
        .ok_or_else(|| OpenError::UnknownKey(key_id.to_owned()))?;
    let mut buf = Zeroizing::new(
        BASE64URL_NOPAD
            .decode(body.as_bytes())
            .map_err(|_| OpenError::Malformed("the envelope is not valid base64url"))?,
    );
    if buf.len() < NONCE_LEN + TAG_LEN {
        return Err(OpenError::Malformed("the envelope is truncated"));
    }
    let tag_at = buf.len() - TAG_LEN;
    let nonce = XNonce::try_from(&buf[..NONCE_LEN])
        .map_err(|_| OpenError::Malformed("the envelope is truncated"))?;
    let tag = Tag::try_from(&buf[tag_at..])
        .map_err(|_| OpenError::Malformed("the envelope is truncated"))?;
    key.cipher
        .decrypt_inout_detached(&nonce, ad, (&mut buf[NONCE_LEN..tag_at]).into(), &tag)
        .map_err(|_| OpenError::Inauthentic(key_id.to_owned()))?;
    let plaintext = Zeroizing::new(buf[NONCE_LEN..tag_at].to_vec());
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert!(matches!(
            shape("mcpenc1.k1.AAAA"),
            Shape::Sealed {
                key_id: "k1",
                body: "AAAA"
            }
        ));
        assert!(matches!(
            shape("mcpenc1.k.1.AAAA"),
            Shape::Sealed { key_id: "k", .. }
        ));
        assert!(matches!(shape("mcpenc1.bad id.AAAA"), Shape::Unknown));
        assert!(matches!(shape("mcpenc1.nodot"), Shape::Unknown));
        assert!(matches!(shape("mcpenc2.k.AAAA"), Shape::Unknown));
        assert!(matches!(shape("mcpenc12.k.AAAA"), Shape::Unknown));
        assert!(matches!(shape("eyJhbGciOi"), Shape::Plain));
        assert!(matches!(shape("mcpencX"), Shape::Plain));
        assert!(matches!(shape(""), Shape::Plain));
        assert_eq!(envelope_key_id("mcpenc1.abc.xyz"), Some("abc"));
        assert_eq!(envelope_key_id("plain"), None);
    }

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let key = EncryptionKey::from_bytes(&[9u8; 32]);
        let keys = KeySet::new(key.clone());
        let env = seal(&key, b"ad", b"hello").unwrap();
        let Shape::Sealed { key_id, body } = shape(&env) else {
            panic!("not sealed")
        };
        assert_eq!(&*open(&keys, key_id, body, b"ad").ok().unwrap(), b"hello");
        assert!(matches!(
            open(&keys, key_id, body, b"other"),
            Err(OpenError::Inauthentic(_))
        ));
        assert!(matches!(
            open(&keys, "nope", body, b"ad"),
            Err(OpenError::UnknownKey(_))
        ));
        assert!(matches!(
            open(&keys, key_id, &body[..10], b"ad"),
            Err(OpenError::Malformed(_))
        ));
        // Two seals of the same plaintext differ (fresh nonce).
        assert_ne!(env, seal(&key, b"ad", b"hello").unwrap());
    }
}
