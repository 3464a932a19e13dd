#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod connection;
mod retry;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use mcp_auth_core::raw::{self, RawRecords};
use mcp_auth_core::record::{self, RecordKey, RecordKind};
use mcp_auth_core::{
    Expect, IssuerId, Namespace, PendingAuthorization, PendingAuthorizationStore, RefreshLease,
    SecretString, StoreCapabilities, StoreError, StoreInfo, TokenKey, TokenSet, TokenStore,
    Version, Versioned,
};
use redis::{RedisError, RedisResult};

use crate::connection::Conn;

const BACKEND: &str = "redis";

/// Records read per pipeline by the `scan_*` methods.
const SCAN_PIPELINE: usize = 500;

// Every script that changes data takes a receipt key (`<prefix>:{<namespace>}:op:<op id>`, in
// the namespace's hash slot) and a receipt TTL: it first returns the result recorded there, if
// any, and otherwise records its result there. An operation retried after its reply was lost
// (same op id) therefore runs exactly once and learns what its first attempt did, and when every
// retry failed, reading the receipt tells whether the operation landed.

/// Conditional write of a record hash `{ver, data}` plus its index entry, in one atomic script.
/// KEYS: record, index, receipt. ARGV: mode (`any`|`absent`|`version`), expected version, new
/// version, data, index member, receipt TTL (ms). 1 written, 0 conflict.
const PUT: &str = r"
local done = redis.call('GET', KEYS[3])
if done then return tonumber(done) end
local function finish(result)
  redis.call('SET', KEYS[3], result, 'PX', ARGV[6])
  return result
end
local cur = redis.call('HGET', KEYS[1], 'ver')
if ARGV[1] == 'absent' and cur then return finish(0) end
if ARGV[1] == 'version' and cur ~= ARGV[2] then return finish(0) end
redis.call('HSET', KEYS[1], 'ver', ARGV[3], 'data', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[5])
return finish(1)
";

/// Conditional delete. KEYS: record, index, receipt. ARGV: mode, expected version, index member,
/// receipt TTL (ms). -1 conflict, 0 nothing there, 1 deleted.
const DELETE: &str = r"
local done = redis.call('GET', KEYS[3])
if done then return tonumber(done) end
local function finish(result)
  redis.call('SET', KEYS[3], result, 'PX', ARGV[4])
  return result
end
local cur = redis.call('HGET', KEYS[1], 'ver')
if ARGV[1] == 'version' and cur ~= ARGV[2] then return finish(-1) end
if ARGV[1] == 'absent' and cur then return finish(-1) end
if not cur then return finish(0) end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[3])
return finish(1)
";

/// Deletes every indexed member starting with ARGV[1]; ARGV[2] is the record key prefix, ARGV[3]
/// the receipt TTL (ms). KEYS: index, receipt. Returns how many were deleted. All keys share the
/// namespace's hash tag, so this stays in one slot on a cluster.
const DELETE_PREFIX: &str = r"
local done = redis.call('GET', KEYS[2])
if done then return tonumber(done) end
local n = 0
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if string.sub(m, 1, #ARGV[1]) == ARGV[1] then
    redis.call('DEL', ARGV[2] .. m)
    redis.call('SREM', KEYS[1], m)
    n = n + 1
  end
end
redis.call('SET', KEYS[2], n, 'PX', ARGV[3])
return n
";

/// Takes the lease KEYS[1] for holder ARGV[1] for ARGV[2] ms if it is free. 1 when this holder
/// has it (now, or already: a retry after a lost reply recognises its own holder token), 0 when
/// another holder has it.
const ACQUIRE_LEASE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return 1 end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// Extends a lease held by ARGV[1] to ARGV[2] ms, or takes back a free one; 0 when another holder
/// has it. Idempotent: a retry extends the same holder's lease again.
const RENEW_LEASE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Deletes KEYS[1] only if it still holds ARGV[1]. KEYS[2] is the receipt, ARGV[2] its TTL (ms).
/// 1 deleted, 0 not (any more) holding that value.
const COMPARE_AND_DELETE: &str = r"
local done = redis.call('GET', KEYS[2])
if done then return tonumber(done) end
local result = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then result = redis.call('DEL', KEYS[1]) end
redis.call('SET', KEYS[2], result, 'PX', ARGV[2])
return result
";

/// Records a pending authorization KEYS[1] = ARGV[1] expiring at unix time ARGV[2], unless the
/// state is in use. KEYS[2] is the receipt, ARGV[3] its TTL (ms). 1 inserted, 0 conflict.
const INSERT_PENDING: &str = r"
local done = redis.call('GET', KEYS[2])
if done then return tonumber(done) end
local result = 0
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EXAT', ARGV[2]) then result = 1 end
redis.call('SET', KEYS[2], result, 'PX', ARGV[3])
return result
";

/// The scripts, hashed once; `Script` calls them by SHA and loads one the server does not know
/// (yet, or any more after a restart) before calling it again.
mod scripts {
    use std::sync::LazyLock;

    use redis::Script;

    pub(crate) static PUT: LazyLock<Script> = LazyLock::new(|| Script::new(super::PUT));
    pub(crate) static DELETE: LazyLock<Script> = LazyLock::new(|| Script::new(super::DELETE));
    pub(crate) static DELETE_PREFIX: LazyLock<Script> =
        LazyLock::new(|| Script::new(super::DELETE_PREFIX));
    pub(crate) static ACQUIRE_LEASE: LazyLock<Script> =
        LazyLock::new(|| Script::new(super::ACQUIRE_LEASE));
    pub(crate) static RENEW_LEASE: LazyLock<Script> =
        LazyLock::new(|| Script::new(super::RENEW_LEASE));
    pub(crate) static COMPARE_AND_DELETE: LazyLock<Script> =
        LazyLock::new(|| Script::new(super::COMPARE_AND_DELETE));
    pub(crate) static INSERT_PENDING: LazyLock<Script> =
        LazyLock::new(|| Script::new(super::INSERT_PENDING));
}

/// Errors specific to this backend, carried as the source of a [`StoreError`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisStoreError {
    /// The key prefix contains characters that are not allowed.
    #[error("invalid key prefix {0:?}: use letters, digits, '-', '_' and '.'")]
    InvalidPrefix(String),
    /// The store URL (or the options) cannot be used; the message never quotes the URL, which
    /// may hold a password.
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(String),
    /// The URL asked for TLS without certificate checks (`#insecure`), which this store refuses.
    #[error(
        "the #insecure URL fragment (accept any server certificate) is refused: give the CA that signed the server's certificate with ?tls_ca=PATH or RedisOptions::tls"
    )]
    InsecureTlsRefused,
    /// A TLS file named by the URL or the options could not be read.
    #[error("cannot read the TLS {what} file {path}: {source}")]
    TlsFile {
        /// Which file (`CA certificate`, `client certificate`, `client key`).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed: the server's certificate is not signed by a trusted CA, does
    /// not name the host, or has expired (or the server refused the client certificate).
    #[error(
        "TLS handshake with Redis failed ({source}); check that the server's certificate is signed by the CA given with tls_ca (or a system root) and names the host you connect to"
    )]
    TlsRefused {
        /// The handshake failure.
        #[source]
        source: redis::RedisError,
    },
    /// Redis refused the credentials, or the ACL user lacks a permission the store needs.
    #[error(
        "Redis refused access ({source}); check the username and password, and that the ACL user has the rules listed in the mcp-auth-store-redis README (+@read +@write +evalsha +script|load ... on ~<prefix>:* keys)"
    )]
    AccessDenied {
        /// What Redis said (`WRONGPASS`, or `NOPERM` naming the command or key).
        #[source]
        source: redis::RedisError,
    },
    /// Redis stayed unreachable, or kept refusing commands (loading its dataset, failing over),
    /// for the whole retry budget. Nothing was changed by the failed operation.
    #[error(
        "Redis did not become available within the {budget:?} retry budget ({source}); check that the server is running and reachable, or raise RedisOptions::retry_budget to ride out longer outages"
    )]
    RetriesExhausted {
        /// [`RedisOptions::retry_budget`].
        budget: Duration,
        /// The last failure.
        #[source]
        source: redis::RedisError,
    },
    /// A write reached Redis but its reply was lost, and Redis stayed unreachable for the retry
    /// budget, so whether it was applied could not be read back.
    #[error(
        "the write to {key} may or may not have been applied: its reply was lost and Redis stayed unreachable for the {budget:?} retry budget ({source}); re-read {key} before deciding to write it again"
    )]
    OutcomeUnknown {
        /// Which record (or lease, or pending authorization).
        key: String,
        /// [`RedisOptions::retry_budget`].
        budget: Duration,
        /// The last failure.
        #[source]
        source: redis::RedisError,
    },
}

/// The default [`RedisOptions::retry_budget`]: long enough to ride out a Redis restart or a
/// failover of a few seconds.
pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(5);

/// The default [`RedisOptions::response_timeout`].
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a write waits for a replica's acknowledgement under [`ReplicaAcks::Auto`].
/// Replication on a healthy deployment takes well under a millisecond; a replica that has not
/// acknowledged within this is down or far behind.
pub const DEFAULT_REPLICA_ACK_TIMEOUT: Duration = Duration::from_millis(250);

/// After a write whose replicas did not acknowledge it (a master without a live replica, as
/// right after a failover), writes skip the wait for this long instead of each paying the
/// timeout.
const REPLICA_WAIT_PAUSE: Duration = Duration::from_secs(10);

/// Whether a write is acknowledged only once a replica has it (Redis `WAIT` after the write).
///
/// Redis replicates asynchronously: a master that dies right after acknowledging a write takes
/// the write with it when its replica is promoted. For a credential store that is a lost grant:
/// a rotated refresh token that vanishes makes the next refresh resend the old one, which the
/// authorization server treats as token theft. Waiting for a replica closes that window in
/// practice (a failover promotes the most up-to-date replica); it is not a consensus protocol.
///
/// A replica acknowledges nothing until its first full sync with its master is done (Redis
/// starts a diskless sync `repl-diskless-sync-delay` seconds after the replica attaches, 5 by
/// default). Writes made before that live on the master alone, and a failover in that window
/// promotes a replica without them: attach replicas before traffic arrives, and let the first
/// sync finish (`master_link_status:up` in `INFO replication` on the replica).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplicaAcks {
    /// Wait for one replica, up to [`DEFAULT_REPLICA_ACK_TIMEOUT`], when the deployment has
    /// replicas to wait for: every master of a cluster that serves slots has one, or a single
    /// server has a connected replica (checked once, when the store connects). Otherwise no
    /// wait.
    #[default]
    Auto,
    /// Never wait: writes are acknowledged by the master alone.
    Off,
    /// Wait for `replicas` replicas, up to `timeout`, after every write.
    Wait {
        /// How many replicas must have the write.
        replicas: u32,
        /// The longest a write waits for them; past it the write stands (the master has it) and
        /// the store reports it as done.
        timeout: Duration,
    },
}

/// Options for [`RedisStore::connect_with`].
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// The tenant.
    pub namespace: Namespace,
    /// Prefix of every key (default `mcp-auth`).
    pub key_prefix: String,
    /// How long one command waits for its reply, and one connection attempt for the server
    /// (default [`DEFAULT_RESPONSE_TIMEOUT`], 5 s). No command ever waits longer.
    pub response_timeout: Duration,
    /// How long connection-type failures (refused, reset, broken pipe, timeouts, `LOADING` while
    /// Redis loads its dataset after a restart, `TRYAGAIN`/`MASTERDOWN`/`CLUSTERDOWN`) are
    /// retried, with a backoff from 50 ms doubling to 500 ms, before an operation (or
    /// [`RedisStore::connect_with`]) fails with [`StoreError::Unavailable`]. Default
    /// [`DEFAULT_RETRY_BUDGET`], 5 s. Other failures are never retried. `Duration::ZERO` makes
    /// one attempt.
    pub retry_budget: Duration,
    /// ACL user name; overrides the URL's (`redis://user:password@host`).
    pub username: Option<String>,
    /// Password of the ACL user (or of the `default` user); overrides the URL's. Never printed.
    pub password: Option<SecretString>,
    /// TLS files for a `rediss://` URL; each overrides the URL's query parameter.
    pub tls: RedisTls,
    /// Whether writes wait for a replica (default [`ReplicaAcks::Auto`]).
    pub replica_acks: ReplicaAcks,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            namespace: Namespace::default(),
            key_prefix: "mcp-auth".to_owned(),
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            retry_budget: DEFAULT_RETRY_BUDGET,
            username: None,
            password: None,
            tls: RedisTls::default(),
            replica_acks: ReplicaAcks::default(),
        }
    }
}

/// TLS files for a `rediss://` store (also `?tls_ca=PATH&tls_cert=PATH&tls_key=PATH` in the URL).
/// Without a CA file the system's roots are trusted. There is no way to turn certificate checks
/// off.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisTls {
    /// PEM file of the CA (or CAs) that signed the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// PEM file of a client certificate chain, for servers that require one (mutual TLS).
    pub client_cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub client_key_file: Option<PathBuf>,
}

impl RedisTls {
    /// Trust the CA in `path` (PEM).
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Present the client certificate `cert` (PEM chain) with its private key `key` (PEM).
    pub fn with_client_certificate(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.client_cert_file = Some(cert.into());
        self.client_key_file = Some(key.into());
        self
    }
}

/// How long a write's receipt is kept beyond the retry budget: it must outlive every retry of the
/// write and the final read-back, each bounded by the response timeout.
const RECEIPT_MARGIN: Duration = Duration::from_secs(60);

/// How long the read-back after a spent retry budget may itself retry.
const CONFIRM_BUDGET: Duration = Duration::from_secs(1);

/// How to read back whether a write whose reply was lost was applied.
#[derive(Clone, Copy)]
enum Landed<'a> {
    /// The write's receipt key holds its result once it ran.
    Receipt(&'a str),
    /// A lease acquisition ran if the lease key holds this holder token.
    LeaseHeldBy { lease_key: &'a str, token: &'a str },
}

impl Landed<'_> {
    /// `Some(result)` if the write was applied, `None` if it was not.
    async fn read(self, mut conn: Conn) -> RedisResult<Option<i64>> {
        match self {
            Landed::Receipt(receipt_key) => {
                redis::cmd("GET")
                    .arg(receipt_key)
                    .query_async(&mut conn)
                    .await
            }
            Landed::LeaseHeldBy { lease_key, token } => {
                let holder: Option<String> = redis::cmd("GET")
                    .arg(lease_key)
                    .query_async(&mut conn)
                    .await?;
                Ok((holder.as_deref() == Some(token)).then_some(1))
            }
        }
    }
}

/// A credential store in Redis, shared by every replica of a gateway.
///
/// Records are hashes `{ver, data}` under `<prefix>:{<namespace key>}:r:<record key>`; every
/// conditional write is one Lua script, so compare-and-swap holds across replicas. The
/// namespace key is a cluster hash tag: one tenant's keys live in one slot. Refresh leases are
/// `SET PX` keys released by compare-and-delete; pending authorizations expire through Redis
/// TTLs. Connection-type failures are retried within [`RedisOptions::retry_budget`]; every
/// write leaves a short-lived receipt so that a retry after a lost reply is applied exactly once
/// and, when every retry failed, a read-back tells whether the write landed.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    namespace: Namespace,
    /// `<prefix>:{<namespace key>}:`
    base: String,
    retry_budget: Duration,
    /// Receipt TTL in milliseconds.
    receipt_ttl_ms: u64,
    /// `WAIT` after every write: (replicas, timeout in ms).
    replica_wait: Option<(u32, u64)>,
    /// Until when writes skip the wait, after one that replicas did not acknowledge. Shared by
    /// the stores of one connection ([`RedisStore::with_namespace`]).
    replica_wait_paused: Arc<Mutex<Option<Instant>>>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("namespace", &self.namespace)
            .field("keys", &self.base)
            .field("retry_budget", &self.retry_budget)
            .finish_non_exhaustive()
    }
}

/// Maps a failure that is not retried (or not any more) to the store error a caller can act on.
pub(crate) fn map_err(e: RedisError) -> StoreError {
    if retry::is_tls_failure(&e) {
        StoreError::backend(BACKEND, RedisStoreError::TlsRefused { source: e })
    } else if retry::is_transient(&e) {
        StoreError::unavailable(BACKEND, e)
    } else if matches!(
        e.kind(),
        redis::ErrorKind::AuthenticationFailed
            | redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm)
    ) || e.code() == Some("WRONGPASS")
    {
        StoreError::PermissionDenied {
            backend: BACKEND,
            source: Box::new(RedisStoreError::AccessDenied { source: e }),
        }
    } else if e.kind() == redis::ErrorKind::Io {
        // An I/O error that is not retried (in practice: a Unix socket this process may not
        // open).
        StoreError::PermissionDenied {
            backend: BACKEND,
            source: Box::new(e),
        }
    } else {
        StoreError::backend(BACKEND, e)
    }
}

/// The store error for a failure that ended the retries of a `budget`.
fn gave_up_error(budget: Duration, error: RedisError) -> StoreError {
    if retry::is_transient(&error) {
        StoreError::unavailable(
            BACKEND,
            RedisStoreError::RetriesExhausted {
                budget,
                source: error,
            },
        )
    } else {
        map_err(error)
    }
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
    data_encoding::HEXLOWER.encode(&bytes)
}

fn expect_args(expect: &Expect) -> (&'static str, String) {
    match expect {
        Expect::Any => ("any", String::new()),
        Expect::Absent => ("absent", String::new()),
        Expect::Version(v) => ("version", v.as_str().to_owned()),
    }
}

/// Pauses replica waits for [`REPLICA_WAIT_PAUSE`] when dropped armed: a wait that ended
/// unsatisfied, or that was abandoned before it ended.
struct PauseOnDrop<'a> {
    paused: &'a Mutex<Option<Instant>>,
    armed: bool,
}

impl Drop for PauseOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            *self.paused.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(Instant::now() + REPLICA_WAIT_PAUSE);
        }
    }
}

/// The Redis Cluster slot of a hash tag: CRC16 (XMODEM) modulo 16384.
fn hash_slot(tag: &str) -> u16 {
    let mut crc: u16 = 0;
    for byte in tag.bytes() {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// True when every master in `CLUSTER NODES` output that serves slots (and is not failed) has
/// a replica that is not failed.
fn cluster_masters_have_replicas(nodes: &str) -> bool {
    let mut masters = Vec::new();
    let mut replicated = std::collections::HashSet::new();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(id), Some(flags), Some(master)) = (fields.first(), fields.get(2), fields.get(3))
        else {
            continue;
        };
        if flags.contains("fail") || flags.contains("noaddr") {
            continue;
        }
        if flags.contains("master") && fields.len() > 8 {
            masters.push(*id);
        } else if flags.contains("slave") || flags.contains("replica") {
            replicated.insert(*master);
        }
    }
    !masters.is_empty() && masters.iter().all(|m| replicated.contains(m))
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RedisStore {
    /// Connects to `url` with the default namespace and options: `redis://host:port/db`,
    /// `rediss://` for TLS (`?tls_ca=PATH&tls_cert=PATH&tls_key=PATH`), `redis+cluster://h1:p1,
    /// h2:p2/` (or `rediss+cluster://`) for a Redis Cluster; see the crate documentation.
    ///
    /// # Errors
    ///
    /// As [`RedisStore::connect_with`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, RedisOptions::default()).await
    }

    /// Connects with options. A server (or cluster) that is down or still loading its dataset is
    /// waited for within [`RedisOptions::retry_budget`]; past it, [`StoreError::Unavailable`].
    /// Wrong credentials are [`StoreError::PermissionDenied`] and a refused TLS certificate a
    /// [`StoreError::Backend`] error, both at once.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] at once when the key prefix holds other characters than ASCII
    /// letters, digits, `-`, `_` and `.` ([`RedisStoreError::InvalidPrefix`]), when the URL cannot
    /// be used ([`RedisStoreError::InvalidUrl`], or [`RedisStoreError::InsecureTlsRefused`] for
    /// `#insecure`), when a TLS file cannot be read ([`RedisStoreError::TlsFile`]) or the server's
    /// certificate is refused ([`RedisStoreError::TlsRefused`]); [`StoreError::PermissionDenied`]
    /// at once for wrong credentials; [`StoreError::Unavailable`] when the server (or cluster)
    /// cannot be reached, or is still loading, within [`RedisOptions::retry_budget`].
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
        let conn = connection::opener(url, &options)?
            .open(&options)
            .await
            .map_err(|gave_up| gave_up_error(options.retry_budget, gave_up.error))?;
        let base = format!(
            "{}:{{{}}}:",
            options.key_prefix,
            options.namespace.storage_key()
        );
        let receipt_ttl = options
            .retry_budget
            .saturating_add(options.response_timeout.saturating_mul(3))
            .saturating_add(RECEIPT_MARGIN);
        let mut store = Self {
            conn,
            namespace: options.namespace,
            base,
            retry_budget: options.retry_budget,
            receipt_ttl_ms: duration_ms(receipt_ttl).max(1),
            replica_wait: None,
            replica_wait_paused: Arc::default(),
        };
        // The first command opens the connection (the manager is lazy), retried like any other.
        store
            .idempotent(|mut c| async move { redis::cmd("PING").query_async::<()>(&mut c).await })
            .await?;
        store.replica_wait = match options.replica_acks {
            ReplicaAcks::Off => None,
            ReplicaAcks::Wait { replicas, timeout } => {
                (replicas > 0).then(|| (replicas, duration_ms(timeout).max(1)))
            }
            ReplicaAcks::Auto => store
                .every_master_has_a_replica()
                .await
                .then(|| (1, duration_ms(DEFAULT_REPLICA_ACK_TIMEOUT))),
        };
        Ok(store)
    }

    /// True when every master serving data has a replica to wait for ([`ReplicaAcks::Auto`]):
    /// from `CLUSTER NODES` on a cluster, `INFO replication` on a single server. Best effort: an
    /// ACL user without those commands (or any other failure here) gets no wait.
    async fn every_master_has_a_replica(&self) -> bool {
        let mut conn = self.conn.clone();
        match self.conn {
            Conn::Cluster(_) => redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async::<String>(&mut conn)
                .await
                .is_ok_and(|nodes| cluster_masters_have_replicas(&nodes)),
            Conn::Single(_) => redis::cmd("INFO")
                .arg("replication")
                .query_async::<String>(&mut conn)
                .await
                .is_ok_and(|info| {
                    info.lines().any(|line| {
                        line.trim()
                            .strip_prefix("connected_slaves:")
                            .and_then(|n| n.parse::<u32>().ok())
                            .is_some_and(|n| n > 0)
                    })
                }),
        }
    }

    /// After a write: waits (once, no retry) until the configured replicas have it, asking the
    /// master of the namespace's slot. The write stands whatever the answer: the master has it,
    /// and reporting it as failed would make the caller treat a done write as undone. A wait
    /// that the replicas do not satisfy (none alive, as after a failover) pauses waiting for
    /// [`REPLICA_WAIT_PAUSE`].
    async fn await_replicas(&self) {
        use redis::FromRedisValue;
        use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
        let Some((replicas, timeout_ms)) = self.replica_wait else {
            return;
        };
        let paused = |until: Option<Instant>| until.is_some_and(|t| Instant::now() < t);
        if paused(
            *self
                .replica_wait_paused
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        ) {
            return;
        }
        // A wait abandoned by its caller (a timeout around the write, a dropped future) counts
        // as unsatisfied too: otherwise a caller whose own deadline is shorter than the wait
        // would abandon every write at the same point and never learn to skip it.
        let mut unsatisfied = PauseOnDrop {
            paused: &self.replica_wait_paused,
            armed: true,
        };
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(timeout_ms);
        let acked: RedisResult<i64> = match &self.conn {
            Conn::Cluster(cluster) => {
                let route = Route::new(hash_slot(self.hash_tag()), SlotAddr::Master);
                cluster
                    .clone()
                    .route_command(
                        wait,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await
                    .and_then(|value| i64::from_redis_value(value).map_err(RedisError::from))
            }
            Conn::Single(_) => wait.query_async(&mut self.conn.clone()).await,
        };
        unsatisfied.armed = !matches!(acked, Ok(n) if n >= i64::from(replicas));
    }

    /// The hash tag of every key of this namespace (what decides its cluster slot).
    fn hash_tag(&self) -> &str {
        self.base
            .split_once('{')
            .and_then(|(_, rest)| rest.split_once('}'))
            .map_or("", |(tag, _)| tag)
    }

    /// The same server, seen through another (isolated) namespace.
    pub fn with_namespace(&self, namespace: Namespace) -> Self {
        let prefix = self.base.split(':').next().unwrap_or("mcp-auth").to_owned();
        Self {
            conn: self.conn.clone(),
            base: format!("{prefix}:{{{}}}:", namespace.storage_key()),
            namespace,
            retry_budget: self.retry_budget,
            receipt_ttl_ms: self.receipt_ttl_ms,
            replica_wait: self.replica_wait,
            replica_wait_paused: Arc::clone(&self.replica_wait_paused),
        }
    }

    /// This store's namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// How long connection-type failures are retried ([`RedisOptions::retry_budget`]).
    pub fn retry_budget(&self) -> Duration {
        self.retry_budget
    }

    fn record_key(&self, key: &RecordKey) -> String {
        // One allocation (two for a key past 128 bytes): this runs twice on every
        // `access_token()`.
        let mut out = String::with_capacity(self.base.len() + 128);
        out.push_str(&self.base);
        out.push_str("r:");
        key.push_storage_key(&mut out);
        out
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

    /// A fresh operation id and the key of its receipt.
    fn new_receipt(&self) -> (String, String) {
        let id = new_version();
        let key = self.receipt_key(&id);
        (id, key)
    }

    fn receipt_key(&self, op_id: &str) -> String {
        format!("{}op:{op_id}", self.base)
    }

    /// The store error for a failure that ended the retries.
    fn gave_up(&self, error: RedisError) -> StoreError {
        gave_up_error(self.retry_budget, error)
    }

    /// Runs an operation that may be repeated (a read, or a write that is a no-op the second
    /// time), retrying connection-type failures within the retry budget.
    async fn idempotent<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        retry::within(&self.conn, self.retry_budget, op)
            .await
            .map_err(|gave_up| self.gave_up(gave_up.error))
    }

    /// Runs a write that leaves a receipt (see the scripts), retrying connection-type failures
    /// within the retry budget. Retries reuse the operation id, so the write is applied at most
    /// once and a retry returns what the first attempt did. If the retries failed after an
    /// attempt that may have been applied (its reply lost), the outcome is read back (`landed`)
    /// before anything is reported.
    async fn exactly_once<F, Fut>(
        &self,
        what: &(dyn fmt::Display + Sync),
        op: F,
        landed: Landed<'_>,
    ) -> Result<i64, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = RedisResult<i64>>,
    {
        let gave_up = match retry::within(&self.conn, self.retry_budget, op).await {
            Ok(result) => {
                self.await_replicas().await;
                return Ok(result);
            }
            Err(gave_up) => gave_up,
        };
        if !gave_up.maybe_applied {
            return Err(self.gave_up(gave_up.error));
        }
        let read_back = retry::within(&self.conn, self.retry_budget.min(CONFIRM_BUDGET), |c| {
            landed.read(c)
        })
        .await;
        match read_back {
            Ok(Some(result)) => {
                self.await_replicas().await;
                Ok(result)
            }
            Ok(None) => Err(self.gave_up(gave_up.error)),
            Err(_) if retry::is_transient(&gave_up.error) => Err(StoreError::unavailable(
                BACKEND,
                RedisStoreError::OutcomeUnknown {
                    key: what.to_string(),
                    budget: self.retry_budget,
                    source: gave_up.error,
                },
            )),
            Err(_) => Err(map_err(gave_up.error)),
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
        // The new version doubles as the operation id: versions are random, never reused.
        let version = new_version();
        let receipt_key = self.receipt_key(&version);
        let record_key = self.record_key(key);
        let index_key = self.index_key();
        let member = key.storage_key();
        let ttl = self.receipt_ttl_ms;
        let written = self
            .exactly_once(
                key,
                |mut c| {
                    let mut invocation = scripts::PUT.key(&record_key);
                    invocation
                        .key(&index_key)
                        .key(&receipt_key)
                        .arg(mode)
                        .arg(&expected)
                        .arg(&version)
                        .arg(&bytes)
                        .arg(&member)
                        .arg(ttl);
                    async move { invocation.invoke_async::<i64>(&mut c).await }
                },
                Landed::Receipt(&receipt_key),
            )
            .await?;
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
        let (_, receipt_key) = self.new_receipt();
        let member = key.storage_key();
        let ttl = self.receipt_ttl_ms;
        let n = self
            .exactly_once(
                key,
                |mut c| {
                    let mut invocation = scripts::DELETE.key(&record_key);
                    invocation
                        .key(&index_key)
                        .key(&receipt_key)
                        .arg(mode)
                        .arg(&expected)
                        .arg(&member)
                        .arg(ttl);
                    async move { invocation.invoke_async::<i64>(&mut c).await }
                },
                Landed::Receipt(&receipt_key),
            )
            .await?;
        match n {
            -1 => Err(StoreError::Conflict {
                key: key.to_string(),
            }),
            0 => Ok(false),
            _ => Ok(true),
        }
    }

    /// The index, then one pipeline of `HMGET`s per [`SCAN_PIPELINE`] listed keys (a key deleted
    /// in between is left out). Every key shares the namespace's hash slot, so a pipeline serves
    /// a cluster too.
    async fn scan_raw(
        &self,
        kind: RecordKind,
    ) -> Result<Vec<(RecordKey, Vec<u8>, Version)>, StoreError> {
        let keys = self.list_raw(kind).await?;
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(SCAN_PIPELINE) {
            let redis_keys: Vec<String> = chunk.iter().map(|k| self.record_key(k)).collect();
            let fields: Vec<(Option<String>, Option<Vec<u8>>)> = self
                .idempotent(|mut c| {
                    let mut pipe = redis::pipe();
                    for k in &redis_keys {
                        pipe.cmd("HMGET").arg(k).arg("ver").arg("data");
                    }
                    async move { pipe.query_async(&mut c).await }
                })
                .await?;
            for (key, pair) in chunk.iter().zip(fields) {
                match pair {
                    (Some(v), Some(d)) => found.push((key.clone(), d, Version::new(v))),
                    (None, None) => {}
                    _ => {
                        return Err(StoreError::Corrupt {
                            key: key.to_string(),
                            reason: "record hash lacks its version or data field".to_owned(),
                        });
                    }
                }
            }
        }
        Ok(found)
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

    async fn scan_records(
        &self,
        kind: RecordKind,
    ) -> Result<Vec<(RecordKey, Vec<u8>, Version)>, StoreError> {
        self.scan_raw(kind).await
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
        let (_, receipt_key) = self.new_receipt();
        let ttl = self.receipt_ttl_ms;
        let what = format!("tokens of issuer {issuer}");
        let n = self
            .exactly_once(
                &what,
                |mut c| {
                    let mut invocation = scripts::DELETE_PREFIX.key(&index_key);
                    invocation
                        .key(&receipt_key)
                        .arg(&member_prefix)
                        .arg(&record_prefix)
                        .arg(ttl);
                    async move { invocation.invoke_async::<i64>(&mut c).await }
                },
                Landed::Receipt(&receipt_key),
            )
            .await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    async fn list_tokens(&self) -> Result<Vec<TokenKey>, StoreError> {
        raw::list_tokens(self).await
    }

    /// The index, then pipelined `HMGET`s (500 keys per round trip).
    async fn scan_tokens(&self) -> Result<Vec<(TokenKey, Versioned<TokenSet>)>, StoreError> {
        raw::scan_tokens(self).await
    }

    async fn binding_and_token_versions(
        &self,
        key: &TokenKey,
    ) -> Result<(Option<Version>, Option<Version>), StoreError> {
        let binding = self.record_key(&RecordKey::Binding(key.resource.clone()));
        let tokens = self.record_key(&RecordKey::Tokens(key.clone()));
        // One round trip: both keys share the namespace's hash slot, so one pipeline serves a
        // cluster too.
        let (b, t): (Option<String>, Option<String>) = self
            .idempotent(|mut c| {
                let mut pipe = redis::pipe();
                pipe.cmd("HGET")
                    .arg(&binding)
                    .arg("ver")
                    .cmd("HGET")
                    .arg(&tokens)
                    .arg("ver");
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        Ok((b.map(Version::new), t.map(Version::new)))
    }

    async fn try_acquire_refresh_lease(
        &self,
        key: &TokenKey,
        ttl: Duration,
    ) -> Result<Option<RefreshLease>, StoreError> {
        let lease = RefreshLease::new(key.clone(), ttl);
        let lease_key = self.lease_key(key);
        let ms = duration_ms(ttl).max(1);
        let what = format!("refresh lease for {key}");
        // The holder token is random per lease: a retry (or the read-back) that finds it holding
        // the lease knows the first attempt took it.
        let acquired = self
            .exactly_once(
                &what,
                |mut c| {
                    let mut invocation = scripts::ACQUIRE_LEASE.key(&lease_key);
                    invocation.arg(lease.token()).arg(ms);
                    async move { invocation.invoke_async::<i64>(&mut c).await }
                },
                Landed::LeaseHeldBy {
                    lease_key: &lease_key,
                    token: lease.token(),
                },
            )
            .await?;
        Ok((acquired == 1).then_some(lease))
    }

    async fn renew_refresh_lease(
        &self,
        lease: &RefreshLease,
        ttl: Duration,
    ) -> Result<Option<RefreshLease>, StoreError> {
        let lease_key = self.lease_key(lease.key());
        let ms = duration_ms(ttl).max(1);
        // Idempotent: a retry after a lost reply finds our own token and extends it again. When
        // the budget is spent the caller still holds the lease it had, until its old expiry.
        let n: i64 = self
            .idempotent(|mut c| {
                let mut invocation = scripts::RENEW_LEASE.key(&lease_key);
                invocation.arg(lease.token()).arg(ms);
                async move { invocation.invoke_async::<i64>(&mut c).await }
            })
            .await?;
        self.await_replicas().await;
        Ok((n > 0).then(|| lease.renewed(ttl)))
    }

    async fn release_refresh_lease(&self, lease: &RefreshLease) -> Result<bool, StoreError> {
        let lease_key = self.lease_key(lease.key());
        let (_, receipt_key) = self.new_receipt();
        let ttl = self.receipt_ttl_ms;
        let what = format!("refresh lease for {}", lease.key());
        let n = self
            .exactly_once(
                &what,
                |mut c| {
                    let mut invocation = scripts::COMPARE_AND_DELETE.key(&lease_key);
                    invocation.key(&receipt_key).arg(lease.token()).arg(ttl);
                    async move { invocation.invoke_async::<i64>(&mut c).await }
                },
                Landed::Receipt(&receipt_key),
            )
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
        let (_, receipt_key) = self.new_receipt();
        let at = pending.expires_at.unix_seconds().max(1);
        let ttl = self.receipt_ttl_ms;
        let inserted = self
            .exactly_once(
                &key,
                |mut c| {
                    let mut invocation = scripts::INSERT_PENDING.key(&pending_key);
                    invocation.key(&receipt_key).arg(&bytes).arg(at).arg(ttl);
                    async move { invocation.invoke_async::<i64>(&mut c).await }
                },
                Landed::Receipt(&receipt_key),
            )
            .await?;
        if inserted != 1 {
            return Err(StoreError::Conflict {
                key: key.to_string(),
            });
        }
        Ok(())
    }

    async fn take_pending(&self, state: &str) -> Result<Option<PendingAuthorization>, StoreError> {
        let key = RecordKey::Pending(state.to_owned());
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
        // Exactly once: a redemption whose reply was lost is still ours when retried.
        let (_, receipt_key) = self.new_receipt();
        let ttl = self.receipt_ttl_ms;
        let deleted = self
            .exactly_once(
                &key,
                |mut c| {
                    let mut invocation = scripts::COMPARE_AND_DELETE.key(&pending_key);
                    invocation.key(&receipt_key).arg(&bytes).arg(ttl);
                    async move { invocation.invoke_async::<i64>(&mut c).await }
                },
                Landed::Receipt(&receipt_key),
            )
            .await?;
        // Another replica may have redeemed it first: then it is theirs.
        Ok((deleted > 0 && !pending.expires_at.is_past()).then_some(pending))
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn hash_slots_match_redis() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(super::hash_slot("123456789"), 12739);
        assert_eq!(super::hash_slot("foo"), 12182);
        assert_eq!(super::hash_slot(""), 0);
        assert_eq!(
            offline_store("tenant-a").hash_tag(),
            Namespace::new("tenant-a").unwrap().storage_key()
        );
    }

    #[test]
    fn replicas_are_waited_for_only_when_every_serving_master_has_one() {
        let node = |id: &str, flags: &str, master: &str, slots: &str| {
            format!("{id} 127.0.0.1:7000@17000 {flags} {master} 0 0 1 connected {slots}")
        };
        let three_with_replicas = [
            node("a", "master", "-", "0-5460"),
            node("b", "myself,master", "-", "5461-10922"),
            node("c", "master", "-", "10923-16383"),
            node("d", "slave", "a", ""),
            node("e", "slave", "b", ""),
            node("f", "slave", "c", ""),
        ]
        .join("\n");
        assert!(super::cluster_masters_have_replicas(&three_with_replicas));
        let one_without = three_with_replicas.replace(&node("f", "slave", "c", ""), "");
        assert!(!super::cluster_masters_have_replicas(&one_without));
        let failed_replica = three_with_replicas.replace(
            &node("f", "slave", "c", ""),
            &node("f", "slave,fail", "c", ""),
        );
        assert!(!super::cluster_masters_have_replicas(&failed_replica));
        assert!(!super::cluster_masters_have_replicas(""));
    }

    use redis::cluster_routing::Slot;

    use super::*;

    /// A store that never connects (the manager is lazy), for its key layout.
    fn offline_store(namespace: &str) -> RedisStore {
        let client = redis::Client::open("redis://127.0.0.1:1/").unwrap();
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(
            client,
            redis::aio::ConnectionManagerConfig::new(),
        )
        .unwrap();
        RedisStore {
            conn: Conn::Single(conn),
            namespace: Namespace::new(namespace).unwrap(),
            base: format!(
                "mcp-auth:{{{}}}:",
                Namespace::new(namespace).unwrap().storage_key()
            ),
            retry_budget: DEFAULT_RETRY_BUDGET,
            receipt_ttl_ms: 1,
            replica_wait: None,
            replica_wait_paused: Arc::default(),
        }
    }

    /// On a cluster a script (and a pipeline) may only touch keys of one hash slot, and listing
    /// reads one index: every key a namespace's operations touch hashes to the namespace's slot,
    /// whatever the record, the issuer or the namespace name.
    #[tokio::test]
    async fn every_script_and_pipeline_keeps_its_keys_in_one_slot() {
        let mut slots = std::collections::HashSet::new();
        for namespace in [
            "default",
            "user:alice",
            "t{x}",
            "}{",
            "tenant/ü/{42}",
            "a".repeat(200).as_str(),
        ] {
            let store = offline_store(namespace);
            let token = TokenKey::new(
                IssuerId::new("https://as{1}.example/x}").unwrap(),
                mcp_auth_core::ResourceUri::new("https://mcp.example/{y}").unwrap(),
            );
            let records = [
                RecordKey::Tokens(token.clone()),
                RecordKey::Binding(token.resource.clone()),
                RecordKey::Registration(token.issuer.clone()),
            ];
            let mut keys = vec![
                store.index_key(),
                store.lease_key(&token),
                store.pending_key("st{a}te"),
            ];
            keys.push(store.new_receipt().1);
            for record in &records {
                keys.push(store.record_key(record));
                // DELETE_PREFIX builds record keys from its ARGV: `<base>r:` + index member.
                keys.push(format!("{}r:{}", store.base, record.storage_key()));
            }
            let slot = Slot::for_key(&keys[0]);
            for key in &keys {
                assert_eq!(
                    Slot::for_key(key),
                    slot,
                    "{namespace:?}: {key} is in another slot"
                );
            }
            slots.insert(format!("{slot:?}"));
        }
        assert!(
            slots.len() > 1,
            "every namespace landed in one slot: the hash tag is wrong"
        );
    }
}
