//! Data-encryption keys, the set of keys a store opens records with, and where keys come from.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use chacha20poly1305::{Key, KeyInit, XChaCha20Poly1305};
use data_encoding::{BASE64, BASE64_NOPAD, BASE64URL, BASE64URL_NOPAD, HEXLOWER_PERMISSIVE};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::error::BoxError;

/// Length of a key, in bytes (256 bits).
pub const KEY_LEN: usize = 32;

/// Longest key id accepted.
pub const MAX_KEY_ID_LEN: usize = 64;

/// Why a key could not be loaded or used. Messages name where the key came from (an
/// environment variable, a file, a keyring entry) and its key id, never the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The environment variable holding the key is not set (or is not Unicode).
    #[error(
        "environment variable {var} is not set; it must hold a 32-byte key as 64 hex digits or base64"
    )]
    NotSet {
        /// The variable.
        var: String,
    },
    /// The key source holds something that is not a 32-byte key in an accepted encoding.
    #[error(
        "{origin} does not hold a 32-byte key ({reason}); expected 64 hex digits or base64 (standard or URL-safe, padding optional)"
    )]
    Malformed {
        /// Where the key was read from.
        origin: String,
        /// What is wrong (never the content).
        reason: &'static str,
    },
    /// The key file could not be read or written.
    #[error("cannot {action} key file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was attempted.
        action: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The key file is readable or writable by others than its owner (Unix): refused.
    #[error("refusing key file {}: its mode is {mode:04o}; allow its owner only (chmod 600)", path.display())]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file is not a regular file.
    #[error("refusing key file {}: not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// A key id outside `[A-Za-z0-9_-]{1,64}`.
    #[error("invalid key id {id:?}: use 1 to 64 characters of A-Z a-z 0-9 _ -")]
    InvalidId {
        /// The id.
        id: String,
    },
    /// Two different keys were given the same key id: records could not tell them apart.
    #[error("two different keys have the key id {id:?}")]
    DuplicateId {
        /// The id.
        id: String,
    },
    /// A provider's own failure (a keyring, a KMS).
    #[error("{provider} key provider failed: {source}")]
    Provider {
        /// Which provider.
        provider: &'static str,
        /// Its error (never key material).
        #[source]
        source: BoxError,
    },
}

/// One 256-bit data-encryption key with its key id.
///
/// The key id is written into every envelope sealed with the key, so records stay readable
/// after a rotation for as long as the old key is provided. [`EncryptionKey::from_bytes`] derives
/// the id from the key itself (the first 8 bytes of a SHA-256 over a label and the key, as 16 hex
/// digits): two different keys never share an id and no configuration is needed. The key bytes
/// live only inside the cipher, which wipes them when dropped; `Debug` shows the id only.
#[derive(Clone)]
pub struct EncryptionKey {
    id: Arc<str>,
    pub(super) cipher: XChaCha20Poly1305,
    /// A fingerprint of the key (not the key), to refuse two different keys under one id.
    fingerprint: [u8; 8],
}

impl EncryptionKey {
    /// A key whose id is derived from its bytes.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        let fingerprint = fingerprint(bytes);
        let id = data_encoding::HEXLOWER.encode(&fingerprint);
        Self::build(id.into(), bytes, fingerprint)
    }

    /// A key with an id you choose (`[A-Za-z0-9_-]{1,64}`), for providers that name their keys
    /// (a KMS key version, say). Giving two different keys the same id makes records sealed
    /// with one unreadable with the other ([`KeyError::DuplicateId`] when both are in one
    /// [`KeySet`]).
    ///
    /// # Errors
    ///
    /// [`KeyError::InvalidId`] when `id` is not 1 to 64 characters of `[A-Za-z0-9_-]`.
    pub fn with_id(id: impl Into<String>, bytes: &[u8; KEY_LEN]) -> Result<Self, KeyError> {
        let id = id.into();
        if !valid_key_id(&id) {
            return Err(KeyError::InvalidId { id });
        }
        Ok(Self::build(id.into(), bytes, fingerprint(bytes)))
    }

    /// A new random key (from the OS random source).
    ///
    /// # Errors
    ///
    /// [`KeyError::Provider`] when the operating system's random source fails.
    pub fn generate() -> Result<Self, KeyError> {
        let bytes = random_key()?;
        Ok(Self::from_bytes(&bytes))
    }

    /// Parses a key written as 64 hex digits or as base64 (standard or URL-safe alphabet,
    /// padding optional); surrounding whitespace is ignored. `origin` names the source in errors.
    ///
    /// # Errors
    ///
    /// [`KeyError::Malformed`] (naming `origin`) when `text` is neither 64 hex digits nor base64 of
    /// exactly 32 bytes.
    pub fn parse(text: &str, origin: &str) -> Result<Self, KeyError> {
        let bytes = decode_key_text(text.trim().as_bytes(), origin)?;
        Ok(Self::from_bytes(&bytes))
    }

    fn build(id: Arc<str>, bytes: &[u8; KEY_LEN], fingerprint: [u8; 8]) -> Self {
        let mut key = Key::from(*bytes);
        let cipher = XChaCha20Poly1305::new(&key);
        key.as_mut_slice().zeroize();
        Self {
            id,
            cipher,
            fingerprint,
        }
    }

    /// The key id written into envelopes.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn fingerprint(bytes: &[u8; KEY_LEN]) -> [u8; 8] {
    let mut hash = Sha256::new();
    hash.update(b"mcp-auth encryption key id v1\0");
    hash.update(bytes);
    let digest = hash.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// `[A-Za-z0-9_-]{1,64}`: no `.`, the envelope's separator.
pub(super) fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_KEY_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn random_key() -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    getrandom::fill(bytes.as_mut()).map_err(|e| KeyError::Provider {
        provider: "random",
        source: format!("the OS random source failed: {e}").into(),
    })?;
    Ok(bytes)
}

/// Decodes 64 hex digits or base64 of 32 bytes. Never echoes the input.
fn decode_key_text(text: &[u8], origin: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
    let malformed = |reason| KeyError::Malformed {
        origin: origin.to_owned(),
        reason,
    };
    if text.is_empty() {
        return Err(malformed("it is empty"));
    }
    let decoded: Zeroizing<Vec<u8>> = Zeroizing::new(match text.len() {
        64 => HEXLOWER_PERMISSIVE
            .decode(text)
            .map_err(|_| malformed("64 characters, but not hex digits"))?,
        43 | 44 => {
            let engines = [&BASE64, &BASE64_NOPAD, &BASE64URL, &BASE64URL_NOPAD];
            engines
                .iter()
                .find_map(|e| e.decode(text).ok())
                .ok_or_else(|| malformed("not valid base64"))?
        }
        _ => return Err(malformed("wrong length")),
    });
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    if decoded.len() != KEY_LEN {
        return Err(malformed("it decodes to a length other than 32 bytes"));
    }
    out.copy_from_slice(&decoded);
    Ok(out)
}

/// Encodes a key as 64 lowercase hex digits (the format [`FileKey::create`] writes).
fn encode_key_hex(bytes: &[u8; KEY_LEN]) -> Zeroizing<String> {
    Zeroizing::new(data_encoding::HEXLOWER.encode(bytes))
}

/// The keys a store opens records with: the **current** key, which seals every write, and any
/// number of **old** keys, which only open records sealed before a rotation. Cheap to clone.
///
/// Keep an old key in the set until [`EncryptedStore::rekey`](super::EncryptedStore::rekey)
/// has re-sealed every record under the current key ([`RekeyReport::is_complete`](super::RekeyReport::is_complete)).
#[derive(Clone)]
pub struct KeySet {
    inner: Arc<KeySetInner>,
}

struct KeySetInner {
    current: EncryptionKey,
    old: Vec<EncryptionKey>,
}

impl KeySet {
    /// A set with one key, the current one.
    pub fn new(current: EncryptionKey) -> Self {
        Self {
            inner: Arc::new(KeySetInner {
                current,
                old: Vec::new(),
            }),
        }
    }

    /// Adds an old key (records sealed with it still open; nothing new is sealed with it). A key
    /// already in the set is ignored; a different key under an id already used is refused.
    ///
    /// # Errors
    ///
    /// [`KeyError::DuplicateId`] when the set already holds a different key under `key`'s id.
    pub fn with_old(self, key: EncryptionKey) -> Result<Self, KeyError> {
        if let Some(known) = self.get(key.id()) {
            if known.fingerprint != key.fingerprint {
                return Err(KeyError::DuplicateId {
                    id: key.id().to_owned(),
                });
            }
            return Ok(self);
        }
        let mut old = self.inner.old.clone();
        old.push(key);
        Ok(Self {
            inner: Arc::new(KeySetInner {
                current: self.inner.current.clone(),
                old,
            }),
        })
    }

    /// Loads the current key from `current` and old keys from `old`, in order.
    ///
    /// # Errors
    ///
    /// Whatever a provider's [`KeyProvider::load_key`] fails with ([`KeyError::NotSet`],
    /// [`KeyError::Malformed`], [`KeyError::Io`], [`KeyError::Provider`], ...), and
    /// [`KeyError::DuplicateId`] when two different keys share an id.
    pub async fn load(
        current: &dyn KeyProvider,
        old: &[&dyn KeyProvider],
    ) -> Result<Self, KeyError> {
        let mut set = Self::new(current.load_key().await?);
        for provider in old {
            set = set.with_old(provider.load_key().await?)?;
        }
        Ok(set)
    }

    /// The key that seals writes.
    pub fn current(&self) -> &EncryptionKey {
        &self.inner.current
    }

    /// The id of the current key.
    pub fn current_id(&self) -> &str {
        self.inner.current.id()
    }

    /// The ids of the old keys, in the order added.
    pub fn old_ids(&self) -> Vec<&str> {
        self.inner.old.iter().map(EncryptionKey::id).collect()
    }

    /// The key with this id, current or old.
    pub fn get(&self, id: &str) -> Option<&EncryptionKey> {
        if self.inner.current.id() == id {
            return Some(&self.inner.current);
        }
        self.inner.old.iter().find(|k| k.id() == id)
    }
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field("current", &self.current_id())
            .field("old", &self.old_ids())
            .finish()
    }
}

/// Where a key comes from. Called when a store is opened (and may block briefly or do I/O).
///
/// Providers here: [`EnvKey`] (an environment variable), [`FileKey`] (a file only its owner can
/// read), and [`EncryptionKey`] itself (a key you already hold). The OS keyring provider, which
/// generates its key on first use, is `KeyringKey` in the `mcp-auth-store-keyring` crate (feature
/// `encryption`), so the core does not depend on the platform keyring libraries.
#[async_trait]
pub trait KeyProvider: fmt::Debug + Send + Sync {
    /// The key, with its id.
    async fn load_key(&self) -> Result<EncryptionKey, KeyError>;
}

#[async_trait]
impl KeyProvider for EncryptionKey {
    async fn load_key(&self) -> Result<EncryptionKey, KeyError> {
        Ok(self.clone())
    }
}

/// A key from an environment variable holding 32 bytes as **64 hex digits**, or as **base64**
/// (standard or URL-safe alphabet, with or without `=` padding: 43 or 44 characters).
/// Surrounding whitespace is ignored. Generate one with `openssl rand -hex 32`.
#[derive(Clone, Debug)]
pub struct EnvKey {
    var: String,
}

impl EnvKey {
    /// The variable conventionally used: `MCP_AUTH_ENCRYPTION_KEY`.
    pub const DEFAULT_VAR: &'static str = "MCP_AUTH_ENCRYPTION_KEY";

    /// Reads the key from `var`.
    pub fn new(var: impl Into<String>) -> Self {
        Self { var: var.into() }
    }

    /// The variable's name.
    pub fn var(&self) -> &str {
        &self.var
    }
}

#[async_trait]
impl KeyProvider for EnvKey {
    async fn load_key(&self) -> Result<EncryptionKey, KeyError> {
        let value = Zeroizing::new(std::env::var(&self.var).map_err(|_| KeyError::NotSet {
            var: self.var.clone(),
        })?);
        EncryptionKey::parse(&value, &format!("environment variable {}", self.var))
    }
}

/// A key from a file holding 32 bytes as 64 hex digits, as base64 (as for [`EnvKey`]; a
/// trailing newline is fine), or as exactly 32 raw bytes.
///
/// On Unix the file must be a regular file that no one but its owner can read or write (mode
/// `0600`, `0400` or stricter): anything else is refused with [`KeyError::InsecurePermissions`]
/// before its content is read. [`FileKey::create`] writes a new random key that way.
#[derive(Clone, Debug)]
pub struct FileKey {
    path: PathBuf,
}

impl FileKey {
    /// Reads the key from `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a new random key to `path` (64 hex digits and a newline, mode `0600` on Unix) and
    /// returns it. Never overwrites: an existing file is an error ([`KeyError::Io`]).
    ///
    /// # Errors
    ///
    /// [`KeyError::Io`] when the file already exists or cannot be created, written or synced;
    /// [`KeyError::Provider`] when the operating system's random source fails.
    pub fn create(path: impl Into<PathBuf>) -> Result<EncryptionKey, KeyError> {
        use std::io::Write;
        let path = path.into();
        let bytes = random_key()?;
        let mut text = encode_key_hex(&bytes);
        text.push('\n');
        let io = |action, source| KeyError::Io {
            path: path.clone(),
            action,
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&path).map_err(|e| io("create", e))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| io("write", e))?;
        Ok(EncryptionKey::from_bytes(&bytes))
    }

    fn read(&self) -> Result<EncryptionKey, KeyError> {
        use std::io::Read;
        let io = |action, source| KeyError::Io {
            path: self.path.clone(),
            action,
            source,
        };
        let mut file = std::fs::File::open(&self.path).map_err(|e| io("open", e))?;
        // The checks are on the opened file, so a swap of the path in between changes nothing.
        let meta = file.metadata().map_err(|e| io("inspect", e))?;
        if !meta.is_file() {
            return Err(KeyError::NotAFile {
                path: self.path.clone(),
            });
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(KeyError::InsecurePermissions {
                    path: self.path.clone(),
                    mode,
                });
            }
        }
        // Bounded read: a key file is tiny; anything large is not a key file.
        let mut content = Zeroizing::new(Vec::with_capacity(128));
        (&mut file)
            .take(1024)
            .read_to_end(&mut content)
            .map_err(|e| io("read", e))?;
        let origin = format!("key file {}", self.path.display());
        if content.len() == KEY_LEN {
            // Raw bytes (no text encoding of 32 bytes is 32 characters long).
            let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
            bytes.copy_from_slice(&content);
            return Ok(EncryptionKey::from_bytes(&bytes));
        }
        let text = content.trim_ascii();
        let bytes = decode_key_text(text, &origin)?;
        Ok(EncryptionKey::from_bytes(&bytes))
    }
}

#[async_trait]
impl KeyProvider for FileKey {
    async fn load_key(&self) -> Result<EncryptionKey, KeyError> {
        self.read()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_text_encodings() {
        let bytes = [7u8; 32];
        let hex = data_encoding::HEXLOWER.encode(&bytes);
        let id = EncryptionKey::from_bytes(&bytes).id().to_owned();
        for text in [
            hex.clone(),
            hex.to_uppercase(),
            format!("  {hex}\n"),
            BASE64.encode(&bytes),
            BASE64_NOPAD.encode(&bytes),
            BASE64URL.encode(&bytes),
            BASE64URL_NOPAD.encode(&bytes),
        ] {
            assert_eq!(EncryptionKey::parse(&text, "test").unwrap().id(), id);
        }
        for bad in ["", "abc", &hex[..63], &"z".repeat(64), &"!".repeat(44)] {
            let err = EncryptionKey::parse(bad, "test").unwrap_err();
            assert!(matches!(err, KeyError::Malformed { .. }), "{err}");
        }
        // 33 bytes as base64 (44 characters) is refused too.
        assert!(EncryptionKey::parse(&BASE64_NOPAD.encode(&[1u8; 33]), "t").is_err());
    }

    #[test]
    fn ids_are_derived_and_validated() {
        let a = EncryptionKey::from_bytes(&[1u8; 32]);
        let b = EncryptionKey::from_bytes(&[2u8; 32]);
        assert_ne!(a.id(), b.id());
        assert_eq!(a.id().len(), 16);
        assert!(EncryptionKey::with_id("k-2024_01", &[1u8; 32]).is_ok());
        for bad in ["", "a.b", "a b", &"x".repeat(65), "é"] {
            assert!(matches!(
                EncryptionKey::with_id(bad, &[1u8; 32]),
                Err(KeyError::InvalidId { .. })
            ));
        }
        let set = KeySet::new(a.clone()).with_old(b.clone()).unwrap();
        assert!(set.clone().with_old(a.clone()).is_ok());
        let clash = EncryptionKey::with_id(a.id(), &[3u8; 32]).unwrap();
        assert!(matches!(
            set.with_old(clash),
            Err(KeyError::DuplicateId { .. })
        ));
    }

    #[test]
    fn debug_shows_ids_only() {
        let bytes = [0xabu8; 32];
        let key = EncryptionKey::from_bytes(&bytes);
        let set = KeySet::new(key.clone());
        let text = format!("{key:?} {set:?}");
        assert!(text.contains(key.id()));
        assert!(!text.contains("abab"), "{text}");
        assert!(!text.contains("171, 171"), "{text}");
    }
}
