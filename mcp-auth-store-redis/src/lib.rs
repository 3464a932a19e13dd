#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::fmt;
use std::future::Future;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use mcp_auth_core::raw::{self, RawRecords};
use mcp_auth_core::record::{self, RecordKey, RecordKind};
use mcp_auth_core::{
    Expect, IssuerId, Namespace, PendingAuthorization, PendingAuthorizationStore, RefreshLease,
    StoreCapabilities, StoreError, StoreInfo, TokenKey, TokenSet, TokenStore, Version, Versioned,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, RedisResult};

const BACKEND: &str = "redis";

/// Conditional write of a record hash `{ver, data}` plus its index entry, in one atomic script.
/// ARGV: mode (`any`|`absent`|`version`), expected version, new version, data, index member.
const PUT: &str = r"
local cur = redis.call('HGET', KEYS[1], 'ver')
if ARGV[1] == 'absent' and cur then return 0 end
if ARGV[1] == 'version' and cur ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'ver', ARGV[3], 'data', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[5])
return 1
";

/// Conditional delete: -1 conflict, 0 nothing there, 1 deleted.
const DELETE: &str = r"
local cur = redis.call('HGET', KEYS[1], 'ver')
if ARGV[1] == 'version' and cur ~= ARGV[2] then return -1 end
if ARGV[1] == 'absent' and cur then return -1 end
if not cur then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[3])
return 1
";

/// Deletes every indexed member starting with ARGV[1]; ARGV[2] is the record key prefix.
/// All keys share the namespace's hash tag, so this stays in one slot on a cluster.
const DELETE_PREFIX: &str = r"
local n = 0
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if string.sub(m, 1, #ARGV[1]) == ARGV[1] then
    redis.call('DEL', ARGV[2] .. m)
    redis.call('SREM', KEYS[1], m)
    n = n + 1
  end
end
return n
";

/// Deletes KEYS[1] only if it still holds ARGV[1].
/// Extends a lease held by ARGV[1] to ARGV[2] ms, or takes back a free one; 0 when another holder
/// has it.
const RENEW_LEASE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

const COMPARE_AND_DELETE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// The scripts, loaded once; `Script` caches the SHA and falls back to `EVAL` when the server
/// does not know it yet.
mod scripts {
    use std::sync::LazyLock;

    use redis::Script;

    pub(crate) static PUT: LazyLock<Script> = LazyLock::new(|| Script::new(super::PUT));
    pub(crate) static DELETE: LazyLock<Script> = LazyLock::new(|| Script::new(super::DELETE));
    pub(crate) static DELETE_PREFIX: LazyLock<Script> =
        LazyLock::new(|| Script::new(super::DELETE_PREFIX));
    pub(crate) static RENEW_LEASE: LazyLock<Script> =
        LazyLock::new(|| Script::new(super::RENEW_LEASE));
    pub(crate) static COMPARE_AND_DELETE: LazyLock<Script> =
        LazyLock::new(|| Script::new(super::COMPARE_AND_DELETE));
}

/// Errors specific to this backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisStoreError {
    /// The key prefix contains characters that are not allowed.
    #[error("invalid key prefix {0:?}: use letters, digits, '-', '_' and '.'")]
    InvalidPrefix(String),
}

/// Options for [`RedisStore::connect_with`].
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// The tenant.
    pub namespace: Namespace,
    /// Prefix of every key (default `mcp-auth`).
    pub key_prefix: String,
    /// Per-command response timeout (default 5 s).
    pub response_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            namespace: Namespace::default(),
            key_prefix: "mcp-auth".to_owned(),
            response_timeout: Duration::from_secs(5),
        }
    }
}

/// A credential store in Redis, shared by every replica of a gateway.
///
/// Records are hashes `{ver, data}` under `<prefix>:{<namespace key>}:r:<record key>`; every
/// conditional write is one Lua script, so compare-and-swap holds across replicas. The
/// namespace key is a cluster hash tag: one tenant's keys live in one slot. Refresh leases are
/// `SET NX PX` keys released by compare-and-delete; pending authorizations expire through Redis
/// TTLs. Idempotent commands are retried once after a dropped connection.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    namespace: Namespace,
    /// `<prefix>:{<namespace key>}:`
    base: String,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("namespace", &self.namespace)
            .field("keys", &self.base)
            .finish_non_exhaustive()
    }
}

fn map_err(e: RedisError) -> StoreError {
    if e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() || e.is_io_error() {
        StoreError::unavailable(BACKEND, e)
    } else if e.kind() == redis::ErrorKind::AuthenticationFailed {
        StoreError::PermissionDenied {
            backend: BACKEND,
            source: Box::new(e),
        }
    } else {
        StoreError::backend(BACKEND, e)
    }
}

fn retryable(e: &RedisError) -> bool {
    e.is_connection_dropped() || e.is_io_error() || e.is_timeout()
}

fn new_version() -> String {
    let mut bytes = [0u8; 12];
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes.copy_from_slice(&nanos.to_le_bytes()[..12]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn expect_args(expect: &Expect) -> (&'static str, String) {
    match expect {
        Expect::Any => ("any", String::new()),
        Expect::Absent => ("absent", String::new()),
        Expect::Version(v) => ("version", v.as_str().to_owned()),
    }
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port/db`, `rediss://` for TLS when the `redis` crate's
    /// TLS support is enabled), default namespace.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, RedisOptions::default()).await
    }

    /// Connects with options.
    pub async fn connect_with(url: &str, options: RedisOptions) -> Result<Self, StoreError> {
        if options.key_prefix.is_empty()
            || !options
                .key_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(StoreError::backend(
                BACKEND,
                RedisStoreError::InvalidPrefix(options.key_prefix),
            ));
        }
        let client = redis::Client::open(url).map_err(map_err)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(options.response_timeout))
            .set_connection_timeout(Some(options.response_timeout))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(map_err)?;
        let base = format!(
            "{}:{{{}}}:",
            options.key_prefix,
            options.namespace.storage_key()
        );
        Ok(Self {
            conn,
            namespace: options.namespace,
            base,
        })
    }

    /// The same server, seen through another (isolated) namespace.
    pub fn with_namespace(&self, namespace: Namespace) -> Self {
        let prefix = self.base.split(':').next().unwrap_or("mcp-auth").to_owned();
        Self {
            conn: self.conn.clone(),
            base: format!("{prefix}:{{{}}}:", namespace.storage_key()),
            namespace,
        }
    }

    /// This store's namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    fn record_key(&self, key: &RecordKey) -> String {
        format!("{}r:{}", self.base, key.storage_key())
    }

    fn index_key(&self) -> String {
        format!("{}index", self.base)
    }

    fn lease_key(&self, key: &TokenKey) -> String {
        format!("{}lease:{}", self.base, key.storage_key())
    }

    fn pending_key(&self, state: &str) -> String {
        format!(
            "{}p:{}",
            self.base,
            RecordKey::Pending(state.to_owned()).storage_key()
        )
    }

    /// Runs an idempotent operation, once more if the connection had dropped (the
    /// `ConnectionManager` reconnects, but the first command after a drop fails).
    async fn idempotent<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        match op(self.conn.clone()).await {
            Err(e) if retryable(&e) => op(self.conn.clone()).await.map_err(map_err),
            other => other.map_err(map_err),
        }
    }

    async fn get_raw(&self, key: &RecordKey) -> Result<Option<(Vec<u8>, Version)>, StoreError> {
        let redis_key = self.record_key(key);
        let (ver, data): (Option<String>, Option<Vec<u8>>) = self
            .idempotent(|mut c| {
                let k = redis_key.clone();
                async move {
                    redis::cmd("HMGET")
                        .arg(k)
                        .arg("ver")
                        .arg("data")
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        match (ver, data) {
            (Some(v), Some(d)) => Ok(Some((d, Version::new(v)))),
            (None, None) => Ok(None),
            _ => Err(StoreError::Corrupt {
                key: key.to_string(),
                reason: "record hash lacks its version or data field".to_owned(),
            }),
        }
    }

    async fn put_raw(
        &self,
        key: &RecordKey,
        bytes: Vec<u8>,
        expect: Expect,
    ) -> Result<Version, StoreError> {
        let (mode, expected) = expect_args(&expect);
        let version = new_version();
        let record_key = self.record_key(key);
        let member = key.storage_key();
        let attempt = |mut c: ConnectionManager| {
            let mut invocation = scripts::PUT.key(&record_key);
            invocation
                .key(self.index_key())
                .arg(mode)
                .arg(&expected)
                .arg(&version)
                .arg(&bytes)
                .arg(&member);
            async move { invocation.invoke_async::<i64>(&mut c).await }
        };
        let written = match attempt(self.conn.clone()).await {
            Ok(n) => n,
            Err(e) if retryable(&e) => match attempt(self.conn.clone()).await.map_err(map_err)? {
                // The first attempt may have been applied before the connection dropped: the
                // random version tells whether the record is ours.
                0 => match self.get_raw(key).await? {
                    Some((_, v)) if v.as_str() == version => 1,
                    _ => 0,
                },
                n => n,
            },
            Err(e) => return Err(map_err(e)),
        };
        if written == 1 {
            Ok(Version::new(version))
        } else {
            Err(StoreError::Conflict {
                key: key.to_string(),
            })
        }
    }

    async fn delete_raw(&self, key: &RecordKey, expect: Expect) -> Result<bool, StoreError> {
        let (mode, expected) = expect_args(&expect);
        let record_key = self.record_key(key);
        let index_key = self.index_key();
        let member = key.storage_key();
        let n: i64 = self
            .idempotent(|mut c| {
                let mut invocation = scripts::DELETE.key(&record_key);
                invocation
                    .key(&index_key)
                    .arg(mode)
                    .arg(&expected)
                    .arg(&member);
                async move { invocation.invoke_async::<i64>(&mut c).await }
            })
            .await?;
        match n {
            -1 => Err(StoreError::Conflict {
                key: key.to_string(),
            }),
            0 => Ok(false),
            _ => Ok(true),
        }
    }

    async fn list_raw(&self, kind: RecordKind) -> Result<Vec<RecordKey>, StoreError> {
        let index_key = self.index_key();
        let members: Vec<String> = self
            .idempotent(|mut c| {
                let k = index_key.clone();
                async move { redis::cmd("SMEMBERS").arg(k).query_async(&mut c).await }
            })
            .await?;
        let mut keys = Vec::new();
        for member in members {
            let key = RecordKey::from_storage_key(&member).ok_or_else(|| StoreError::Corrupt {
                key: member.clone(),
                reason: "unrecognised storage key in the index".to_owned(),
            })?;
            if key.kind() == kind {
                keys.push(key);
            }
        }
        Ok(keys)
    }
}

/// Writes raw bytes as a record, bypassing encoding. For conformance tests that plant corrupt
/// data; not part of the supported API.
#[doc(hidden)]
pub async fn write_raw_record(
    store: &RedisStore,
    key: &RecordKey,
    bytes: &[u8],
) -> Result<(), StoreError> {
    if let RecordKey::Pending(state) = key {
        let k = store.pending_key(state);
        return store
            .idempotent(|mut c| {
                let k = k.clone();
                async move {
                    redis::cmd("SET")
                        .arg(k)
                        .arg(bytes)
                        .arg("EX")
                        .arg(600)
                        .query_async::<()>(&mut c)
                        .await
                }
            })
            .await;
    }
    store
        .put_raw(key, bytes.to_vec(), Expect::Any)
        .await
        .map(|_| ())
}

#[async_trait]
impl RawRecords for RedisStore {
    async fn get_record(&self, key: &RecordKey) -> Result<Option<(Vec<u8>, Version)>, StoreError> {
        self.get_raw(key).await
    }

    async fn put_record(
        &self,
        key: &RecordKey,
        bytes: Vec<u8>,
        expect: Expect,
    ) -> Result<Version, StoreError> {
        self.put_raw(key, bytes, expect).await
    }

    async fn delete_record(&self, key: &RecordKey, expect: Expect) -> Result<bool, StoreError> {
        self.delete_raw(key, expect).await
    }

    async fn list_records(&self, kind: RecordKind) -> Result<Vec<RecordKey>, StoreError> {
        self.list_raw(kind).await
    }
}

mcp_auth_core::impl_record_stores!(RedisStore);

impl StoreInfo for RedisStore {
    fn backend_name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> StoreCapabilities {
        StoreCapabilities::ALL
    }
}

#[async_trait]
impl TokenStore for RedisStore {
    async fn get_tokens(&self, key: &TokenKey) -> Result<Option<Versioned<TokenSet>>, StoreError> {
        raw::get_tokens(self, key).await
    }

    async fn put_tokens(
        &self,
        key: &TokenKey,
        tokens: &TokenSet,
        expect: Expect,
    ) -> Result<Version, StoreError> {
        raw::put_tokens(self, key, tokens, expect).await
    }

    async fn delete_tokens(&self, key: &TokenKey, expect: Expect) -> Result<bool, StoreError> {
        raw::delete_tokens(self, key, expect).await
    }

    async fn delete_issuer_tokens(&self, issuer: &IssuerId) -> Result<usize, StoreError> {
        // Token storage keys are `tokens/<issuer key>.<resource key>`; the '.' ends the issuer
        // part, so one issuer's prefix never matches another issuer's keys.
        let member_prefix = format!("{}/{}.", RecordKind::Tokens.as_str(), issuer.storage_key());
        let record_prefix = format!("{}r:", self.base);
        let index_key = self.index_key();
        let n: i64 = self
            .idempotent(|mut c| {
                let mut invocation = scripts::DELETE_PREFIX.key(&index_key);
                invocation.arg(&member_prefix).arg(&record_prefix);
                async move { invocation.invoke_async::<i64>(&mut c).await }
            })
            .await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    async fn list_tokens(&self) -> Result<Vec<TokenKey>, StoreError> {
        raw::list_tokens(self).await
    }

    async fn try_acquire_refresh_lease(
        &self,
        key: &TokenKey,
        ttl: Duration,
    ) -> Result<Option<RefreshLease>, StoreError> {
        let lease = RefreshLease::new(key.clone(), ttl);
        let lease_key = self.lease_key(key);
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        // SET NX is not idempotent across a lost reply; a retry that finds our own token
        // counts as acquired.
        let attempt = |mut c: ConnectionManager| {
            let k = lease_key.clone();
            let token = lease.token().to_owned();
            async move {
                redis::cmd("SET")
                    .arg(k)
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .query_async::<Option<String>>(&mut c)
                    .await
            }
        };
        let acquired = match attempt(self.conn.clone()).await {
            Ok(reply) => reply.is_some(),
            Err(e) if retryable(&e) => {
                let reply = attempt(self.conn.clone()).await.map_err(map_err)?;
                if reply.is_some() {
                    true
                } else {
                    let holder: Option<String> = self
                        .idempotent(|mut c| {
                            let k = lease_key.clone();
                            async move { redis::cmd("GET").arg(k).query_async(&mut c).await }
                        })
                        .await?;
                    holder.as_deref() == Some(lease.token())
                }
            }
            Err(e) => return Err(map_err(e)),
        };
        Ok(acquired.then_some(lease))
    }

    async fn renew_refresh_lease(
        &self,
        lease: &RefreshLease,
        ttl: Duration,
    ) -> Result<Option<RefreshLease>, StoreError> {
        let lease_key = self.lease_key(lease.key());
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        // Idempotent: a retry after a lost reply finds our own token and extends it again.
        let n: i64 = self
            .idempotent(|mut c| {
                let mut invocation = scripts::RENEW_LEASE.key(&lease_key);
                invocation.arg(lease.token()).arg(ms);
                async move { invocation.invoke_async::<i64>(&mut c).await }
            })
            .await?;
        Ok((n > 0).then(|| lease.renewed(ttl)))
    }

    async fn release_refresh_lease(&self, lease: &RefreshLease) -> Result<bool, StoreError> {
        let lease_key = self.lease_key(lease.key());
        let n: i64 = self
            .idempotent(|mut c| {
                let mut invocation = scripts::COMPARE_AND_DELETE.key(&lease_key);
                invocation.arg(lease.token());
                async move { invocation.invoke_async::<i64>(&mut c).await }
            })
            .await?;
        Ok(n > 0)
    }
}

#[async_trait]
impl PendingAuthorizationStore for RedisStore {
    async fn insert_pending(&self, pending: &PendingAuthorization) -> Result<(), StoreError> {
        let key = RecordKey::Pending(pending.state.clone());
        let bytes = record::encode_pending(pending)?;
        let pending_key = self.pending_key(&pending.state);
        let at = pending.expires_at.unix_seconds().max(1);
        let reply: Option<String> = redis::cmd("SET")
            .arg(&pending_key)
            .arg(&bytes)
            .arg("NX")
            .arg("EXAT")
            .arg(at)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(map_err)?;
        if reply.is_none() {
            return Err(StoreError::Conflict {
                key: key.to_string(),
            });
        }
        Ok(())
    }

    async fn take_pending(&self, state: &str) -> Result<Option<PendingAuthorization>, StoreError> {
        let pending_key = self.pending_key(state);
        let found: Option<Vec<u8>> = self
            .idempotent(|mut c| {
                let k = pending_key.clone();
                async move { redis::cmd("GET").arg(k).query_async(&mut c).await }
            })
            .await?;
        let Some(bytes) = found else {
            return Ok(None);
        };
        // Decode before deleting: a corrupt record is reported and left in place.
        let pending = record::decode_pending(state, &bytes)?;
        let deleted: i64 = self
            .idempotent(|mut c| {
                let mut invocation = scripts::COMPARE_AND_DELETE.key(&pending_key);
                invocation.arg(&bytes);
                async move { invocation.invoke_async::<i64>(&mut c).await }
            })
            .await?;
        // Another replica may have redeemed it first: then it is theirs.
        Ok((deleted > 0 && !pending.expires_at.is_past()).then_some(pending))
    }
}
