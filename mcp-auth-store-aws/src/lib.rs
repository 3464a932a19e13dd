#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod cache;
mod client;
mod error;
mod lease;
mod names;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use mcp_auth_core::raw::{self, RawRecords};
use mcp_auth_core::record::{self, RecordKey, RecordKind};
use mcp_auth_core::{
    Expect, IssuerId, Namespace, PendingAuthorization, PendingAuthorizationStore, RefreshLease,
    StoreCapabilities, StoreError, StoreInfo, TokenKey, TokenSet, TokenStore, Version, Versioned,
};
use tokio::time::Instant;

#[cfg(feature = "aws-config")]
#[cfg_attr(docsrs, doc(cfg(feature = "aws-config")))]
pub use aws_config;
pub use aws_sdk_secretsmanager;

use cache::Cache;
pub use client::AwsCalls;
use client::{Aws, Current, NewSecret, STAGED};
pub use error::AwsStoreError;
use error::{
    ApiFailure, BACKEND, FailureKind, budget_exceeded, invalid_option, name_busy, outcome_unknown,
};
use names::Names;
pub use names::{MAX_NAME_LEN, MAX_PREFIX_LEN, is_valid_secret_name};

/// The default [`AwsOptions::cache_ttl`].
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(5);

/// The default [`AwsOptions::request_budget`].
pub const DEFAULT_REQUEST_BUDGET: Duration = Duration::from_secs(5);

/// The refresh lease TTL recommended for engines over this store
/// (`mcp_auth_core::ClientConfig::lease_ttl`): see "Refresh leases"
/// in the crate documentation.
pub const RECOMMENDED_LEASE_TTL: Duration = Duration::from_secs(15);

/// Largest secret value Secrets Manager accepts, in bytes.
pub const MAX_SECRET_BYTES: usize = 65_536;

/// A tombstone older than its deleter's deadline plus this is abandoned: writers may replace it.
const TOMBSTONE_GRACE: Duration = Duration::from_secs(10);

/// How often (at most) `insert_pending` sweeps expired pending authorizations.
const PENDING_SWEEP_EVERY: Duration = Duration::from_secs(600);

/// The value a versioned delete moves `AWSCURRENT` to before deleting the secret, so the delete
/// is a compare-and-swap; readers see it as no record.
const TOMBSTONE_PREFIX: &str = "{\"mcp-auth-tombstone\":";

/// Options for [`AwsSecretsStore`].
#[derive(Clone, Debug)]
pub struct AwsOptions {
    /// The tenant.
    pub namespace: Namespace,
    /// First segment(s) of every secret name (default `mcp-auth`): 1–100 characters of
    /// `[A-Za-z0-9_+=.@-]`, `/` between segments. Scope IAM policies with it
    /// (`arn:aws:secretsmanager:*:*:secret:mcp-auth/*`). One deployment's prefix must not be
    /// another's prefix followed by `/`.
    pub name_prefix: String,
    /// KMS key (id, ARN or alias) that encrypts new secrets; `None`: the account's
    /// `aws/secretsmanager` key.
    pub kms_key_id: Option<String>,
    /// Extra tags on every secret this store creates (cost allocation, ownership). Keys starting
    /// with `aws:` or `mcp-auth:` are refused; at most 40.
    pub tags: Vec<(String, String)>,
    /// How long a record read from Secrets Manager is served from memory (default
    /// [`DEFAULT_CACHE_TTL`], 5 s; `Duration::ZERO` turns the cache off). Writes through this
    /// store drop the entries they touch; writes by other processes are seen after at most this
    /// long (see "Read cache").
    pub cache_ttl: Duration,
    /// How long one store operation may take, SDK retries and waits included, before it fails
    /// with [`StoreError::Unavailable`] (default [`DEFAULT_REQUEST_BUDGET`], 5 s); for listings,
    /// each page of 100 secrets.
    pub request_budget: Duration,
}

impl Default for AwsOptions {
    fn default() -> Self {
        Self {
            namespace: Namespace::default(),
            name_prefix: "mcp-auth".to_owned(),
            kms_key_id: None,
            tags: Vec::new(),
            cache_ttl: DEFAULT_CACHE_TTL,
            request_budget: DEFAULT_REQUEST_BUDGET,
        }
    }
}

/// A refresh lease this store instance holds: which secret, at which version it wrote it last.
struct Held {
    lease_name: String,
    version: String,
    expires_at: SystemTime,
}

struct Shared {
    aws: Aws,
    prefix: String,
    kms_key_id: Option<String>,
    extra_tags: Vec<(String, String)>,
    cache: Cache,
    cache_ttl: Duration,
    budget: Duration,
    /// Holder token → the lease it holds.
    held: Mutex<HashMap<String, Held>>,
    /// Namespace part → when `insert_pending` last swept it.
    last_sweep: Mutex<HashMap<String, Instant>>,
}

/// A credential store in AWS Secrets Manager: one secret per record, shared by every process and
/// replica that uses the same prefix, namespace and AWS account/region.
///
/// See the crate documentation for the layout, compare-and-swap, leases, the read cache, errors,
/// costs and the IAM policy. Clones share the client, the cache and the call counters.
#[derive(Clone)]
pub struct AwsSecretsStore {
    shared: Arc<Shared>,
    namespace: Namespace,
    names: Names,
}

impl fmt::Debug for AwsSecretsStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsSecretsStore")
            .field("namespace", &self.namespace)
            .field("secrets", &self.names.base())
            .field("kms_key_id", &self.shared.kms_key_id)
            .field("cache_ttl", &self.shared.cache_ttl)
            .field("request_budget", &self.shared.budget)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    to_ms(SystemTime::now())
}

fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A fresh version id (`ClientRequestToken`): 32 random hex digits.
pub(crate) fn new_token() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        let seed = u128::from(now_ms())
            ^ (u128::from(COUNTER.fetch_add(1, Ordering::Relaxed)) << 64)
            ^ (u128::from(std::process::id()) << 40);
        bytes = seed.to_le_bytes();
    }
    data_encoding::HEXLOWER.encode(&bytes)
}

/// A tombstone value: a versioned delete is done once `AWSCURRENT` is on it; its deleter deletes
/// the secret before `until_ms`, after which (plus a grace) writers may replace it.
fn tombstone(until_ms: u64) -> Vec<u8> {
    format!("{TOMBSTONE_PREFIX}1,\"until_ms\":{until_ms}}}").into_bytes()
}

/// `Some(until_ms)` when `bytes` is a tombstone.
fn tombstone_until(bytes: &[u8]) -> Option<u64> {
    if !bytes.starts_with(TOMBSTONE_PREFIX.as_bytes()) {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    Some(value.get("until_ms")?.as_u64().unwrap_or(0))
}

fn tombstone_abandoned(until_ms: u64) -> bool {
    now_ms() > until_ms.saturating_add(to_ms_duration(TOMBSTONE_GRACE))
}

fn to_ms_duration(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Where `AWSCURRENT` is after a move whose answer was lost.
enum Position {
    /// On the version the move wrote (or it was, and one write followed).
    Ours,
    /// Still on the version the move expected: the move did not happen.
    Expected,
    /// On another version: someone else won, or this move landed and writes followed.
    Elsewhere,
}

/// How [`AwsSecretsStore::create`] creates a secret besides its value.
#[derive(Clone, Copy, Default)]
struct Creation<'a> {
    /// The record it holds (tags and description come from it); `None` for a lease.
    key: Option<&'a RecordKey>,
    /// More tags.
    extra_tags: &'a [(String, String)],
    /// The first version's id; `None`: a fresh one. Creating the same version twice is
    /// idempotent.
    token: Option<&'a str>,
}

/// What a record's secret holds, for the store's decisions.
enum State {
    /// Nothing (or a secret still being deleted, with `busy`).
    Absent { busy: bool },
    /// A versioned delete in progress (or abandoned, past `until_ms` plus the grace).
    Tombstone { version: String, until_ms: u64 },
    /// A value.
    Value { bytes: Vec<u8>, version: String },
}

impl From<Current> for State {
    fn from(current: Current) -> Self {
        match current {
            Current::Absent => State::Absent { busy: false },
            Current::Deleting => State::Absent { busy: true },
            Current::Value { bytes, version } => match tombstone_until(&bytes) {
                Some(until_ms) => State::Tombstone { version, until_ms },
                None => State::Value { bytes, version },
            },
        }
    }
}

/// Pauses between looks at a name that is being deleted: 50 ms doubling to 800 ms, never past
/// the deadline.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(Duration::from_millis(50))
    }

    /// Sleeps; `false` when the deadline is (about to be) reached instead.
    async fn pause(&mut self, deadline: Instant) -> bool {
        let now = Instant::now();
        if now + self.0 >= deadline {
            return false;
        }
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_millis(800));
        true
    }
}

impl AwsSecretsStore {
    /// A store over a ready client, which keeps its own configuration (region, credentials,
    /// endpoint, retry and timeout settings); this store adds an interceptor that counts HTTP
    /// attempts. Makes no AWS call.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] ([`AwsStoreError::InvalidOption`]) when `options` cannot be used: a
    /// name prefix outside 1-[`MAX_PREFIX_LEN`] characters of `[A-Za-z0-9_+=.@-]` with `/` only
    /// between non-empty segments, more than 40 tags, a tag key that is empty, longer than 128
    /// characters or starts with `aws:` or `mcp-auth:`, a tag value longer than 256 characters, or
    /// a zero `request_budget`. No AWS call is made.
    pub fn from_client(
        client: &aws_sdk_secretsmanager::Client,
        options: AwsOptions,
    ) -> Result<Self, StoreError> {
        if !names::valid_prefix(&options.name_prefix) {
            return Err(invalid_option(format!(
                "name prefix {:?}: use 1-{MAX_PREFIX_LEN} characters of [A-Za-z0-9_+=.@-], '/' between non-empty segments",
                options.name_prefix
            )));
        }
        if options.tags.len() > 40 {
            return Err(invalid_option(format!(
                "{} tags: at most 40 (Secrets Manager allows 50, this store sets up to 4)",
                options.tags.len()
            )));
        }
        for (key, value) in &options.tags {
            let lower = key.to_ascii_lowercase();
            if key.is_empty()
                || key.len() > 128
                || value.len() > 256
                || lower.starts_with("aws:")
                || lower.starts_with("mcp-auth:")
            {
                return Err(invalid_option(format!(
                    "tag {key:?}: keys are 1-128 characters and may not start with aws: or mcp-auth:, values at most 256"
                )));
            }
        }
        if options.request_budget.is_zero() {
            return Err(invalid_option(
                "request_budget is zero: every operation would fail at once",
            ));
        }
        let names = Names::new(&options.name_prefix, &options.namespace);
        Ok(Self {
            shared: Arc::new(Shared {
                aws: Aws::new(client),
                prefix: options.name_prefix,
                kms_key_id: options.kms_key_id,
                extra_tags: options.tags,
                cache: Cache::new(options.cache_ttl),
                cache_ttl: options.cache_ttl,
                budget: options.request_budget,
                held: Mutex::new(HashMap::new()),
                last_sweep: Mutex::new(HashMap::new()),
            }),
            namespace: options.namespace,
            names,
        })
    }

    /// A store with the standard AWS configuration: region, credentials and endpoint from the
    /// environment (`AWS_REGION`, `AWS_PROFILE`, `AWS_ENDPOINT_URL`, web identity, container and
    /// instance credentials, ...), like every AWS SDK. Makes no AWS call; a missing region or
    /// credentials surface on the first operation.
    ///
    /// # Errors
    ///
    /// As [`AwsSecretsStore::from_client`]: only invalid `options` are refused here; a missing
    /// region or credentials surface on the first operation.
    #[cfg(feature = "aws-config")]
    #[cfg_attr(docsrs, doc(cfg(feature = "aws-config")))]
    pub async fn connect(options: AwsOptions) -> Result<Self, StoreError> {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        Self::from_sdk_config(&config, options)
    }

    /// A store over an already loaded AWS configuration.
    ///
    /// # Errors
    ///
    /// As [`AwsSecretsStore::from_client`].
    #[cfg(feature = "aws-config")]
    #[cfg_attr(docsrs, doc(cfg(feature = "aws-config")))]
    pub fn from_sdk_config(
        config: &aws_config::SdkConfig,
        options: AwsOptions,
    ) -> Result<Self, StoreError> {
        Self::from_client(&aws_sdk_secretsmanager::Client::new(config), options)
    }

    /// The same account and prefix, seen through another (isolated) namespace. Shares the client,
    /// the cache and the call counters.
    pub fn with_namespace(&self, namespace: Namespace) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            names: Names::new(&self.shared.prefix, &namespace),
            namespace,
        }
    }

    /// This store's namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// `<prefix>/<namespace part>/`: the start of every secret name in this namespace, for IAM
    /// policies that confine a role to one tenant (`arn:aws:secretsmanager:*:*:secret:<this>*`).
    pub fn secret_name_prefix(&self) -> &str {
        self.names.base()
    }

    /// The name of the secret that holds `key` in this namespace (a pending authorization's name
    /// is a hash of its `state`).
    pub fn secret_name(&self, key: &RecordKey) -> String {
        self.names.record(key)
    }

    /// The name of the secret that holds the refresh lease of `key` in this namespace.
    pub fn lease_secret_name(&self, key: &TokenKey) -> String {
        self.names.lease(key)
    }

    /// The Secrets Manager calls made so far through this store and its clones.
    pub fn calls(&self) -> AwsCalls {
        self.shared.aws.calls()
    }

    /// Drops every cached read (the next read of each record goes to Secrets Manager).
    pub fn clear_cache(&self) {
        self.shared.cache.clear();
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.shared.budget
    }

    fn lock_held(&self) -> MutexGuard<'_, HashMap<String, Held>> {
        // Nothing panics while holding the lock.
        self.shared
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// True when this store instance holds a live refresh lease on `key`: its reads of those
    /// tokens bypass the cache.
    fn holds_lease(&self, key: &TokenKey) -> bool {
        let lease_name = self.names.lease(key);
        let now = SystemTime::now();
        self.lock_held()
            .values()
            .any(|h| h.lease_name == lease_name && h.expires_at > now)
    }

    fn tags_for(&self, key: &RecordKey) -> Vec<(String, String)> {
        let mut tags = vec![
            (
                names::TAG_NAMESPACE.to_owned(),
                self.names.namespace_part().to_owned(),
            ),
            (names::TAG_KIND.to_owned(), key.kind().as_str().to_owned()),
        ];
        match key {
            RecordKey::Tokens(k) => {
                tags.push((names::TAG_ISSUER.to_owned(), names::issuer_tag(&k.issuer)));
            }
            RecordKey::Pending(_) => {}
            RecordKey::Registration(issuer) => {
                tags.push((names::TAG_ISSUER.to_owned(), names::issuer_tag(issuer)));
            }
            RecordKey::Binding(_) => {}
        }
        tags.extend(self.shared.extra_tags.iter().cloned());
        tags
    }

    // ----------------------------------------------------------------------------------------
    // The write machinery, shared by records, pending authorizations and leases.

    async fn read_state(
        &self,
        name: &str,
        what: &str,
        deadline: Instant,
    ) -> Result<State, StoreError> {
        self.shared
            .aws
            .get_current(name, deadline)
            .await
            .map(State::from)
            .map_err(|f| f.into_store_error(what))
    }

    /// After a failed write of version `token`: is `token` current now? Reads are retried
    /// through transient failures until the deadline (plus a second of grace): the answer decides
    /// between "done" and "conflict", and a write whose answer an SDK retry hid must not be
    /// reported as a conflict.
    async fn landed(&self, name: &str, token: &str, deadline: Instant) -> Result<bool, ApiFailure> {
        let deadline = deadline.max(Instant::now() + Duration::from_secs(1));
        let mut backoff = Backoff::new();
        loop {
            match self.shared.aws.get_current(name, deadline).await {
                Ok(Current::Value { version, .. }) => return Ok(version == token),
                Ok(_) => return Ok(false),
                Err(f) if f.kind == FailureKind::Transient && backoff.pause(deadline).await => {}
                Err(f) => return Err(f),
            }
        }
    }

    /// Compare-and-swap: puts `bytes` as a new version under the private staging label, then
    /// moves `AWSCURRENT` to it from `expected`. `Conflict` when `AWSCURRENT` is no longer on
    /// `expected` (or the secret is gone). Returns the new version.
    async fn cas(
        &self,
        name: &str,
        what: &str,
        bytes: &[u8],
        expected: &str,
        deadline: Instant,
    ) -> Result<String, StoreError> {
        self.cas_with_token(name, what, bytes, expected, &new_token(), deadline)
            .await
    }

    async fn cas_with_token(
        &self,
        name: &str,
        what: &str,
        bytes: &[u8],
        expected: &str,
        token: &str,
        deadline: Instant,
    ) -> Result<String, StoreError> {
        let conflict = || StoreError::Conflict {
            key: what.to_owned(),
        };
        match self
            .shared
            .aws
            .put_version(name, token, bytes, STAGED, deadline)
            .await
        {
            Ok(()) => {}
            // No such secret (any more), or it is being deleted: the expected version is not
            // current. Nothing anyone reads has changed.
            Err(f) if matches!(f.kind, FailureKind::NotFound | FailureKind::InvalidRequest) => {
                return Err(conflict());
            }
            // The version may have been created with its answer lost. Never move AWSCURRENT to a
            // version that may not exist: look first.
            Err(f) if f.kind == FailureKind::Transient => {
                if !matches!(
                    self.shared.aws.version_stages(name, token, deadline).await,
                    Ok(Some(_))
                ) {
                    // Not applied: AWSCURRENT did not move.
                    return Err(f.into_store_error(what));
                }
            }
            Err(f) => return Err(f.into_store_error(what)),
        }
        let mut attempt = 1;
        let mut in_doubt = false;
        let mut backoff = Backoff::new();
        loop {
            let failure = match self
                .shared
                .aws
                .move_current(name, expected, token, deadline)
                .await
            {
                Ok(()) => return Ok(token.to_owned()),
                Err(f) => f,
            };
            let transient = failure.kind == FailureKind::Transient;
            if !transient && !in_doubt {
                // One attempt, nothing of ours in flight: a refusal is another writer's win.
                return match failure.kind {
                    FailureKind::InvalidParameter
                    | FailureKind::NotFound
                    | FailureKind::InvalidRequest => Err(conflict()),
                    _ => Err(failure.into_store_error(what)),
                };
            }
            in_doubt = true;
            // The move may have landed with its answer lost: where is AWSCURRENT now?
            match self.current_position(name, token, expected, deadline).await {
                Ok(Position::Ours) => return Ok(token.to_owned()),
                // Certainly not moved: try again, as the SDK would have.
                Ok(Position::Expected)
                    if transient
                        && attempt < self.shared.aws.max_attempts()
                        && backoff.pause(deadline).await =>
                {
                    attempt += 1;
                }
                Ok(Position::Expected) => return Err(failure.into_store_error(what)),
                Ok(Position::Elsewhere) => {
                    return Err(outcome_unknown(
                        what,
                        format!(
                            "moving AWSCURRENT failed ({failure}) and another write followed; whether this one landed before it cannot be told"
                        ),
                    ));
                }
                Err(read) => {
                    return Err(outcome_unknown(
                        what,
                        format!(
                            "moving AWSCURRENT failed ({failure}) and reading it back failed ({read})"
                        ),
                    ));
                }
            }
        }
    }

    /// After a move of `AWSCURRENT` from `expected` to `token` whose answer was lost: did it land?
    async fn current_position(
        &self,
        name: &str,
        token: &str,
        expected: &str,
        deadline: Instant,
    ) -> Result<Position, ApiFailure> {
        let deadline = deadline.max(Instant::now() + Duration::from_secs(1));
        let mut backoff = Backoff::new();
        loop {
            let read = match self.shared.aws.get_current(name, deadline).await {
                Ok(Current::Value { version, .. }) if version == token => {
                    return Ok(Position::Ours);
                }
                Ok(Current::Value { version, .. }) if version == expected => {
                    return Ok(Position::Expected);
                }
                Ok(_) => self.shared.aws.version_stages(name, token, deadline).await,
                Err(f) => Err(f),
            };
            match read {
                // Moved to ours, then exactly one write after it.
                Ok(Some(stages)) if stages.iter().any(|s| s == "AWSPREVIOUS") => {
                    return Ok(Position::Ours);
                }
                Ok(_) => return Ok(Position::Elsewhere),
                Err(f) if f.kind == FailureKind::Transient && backoff.pause(deadline).await => {}
                Err(f) => return Err(f),
            }
        }
    }

    /// Creates the secret with `bytes` as its first version (`Expect::Absent`). A tombstone left
    /// by a versioned delete is waited out (or replaced once abandoned); a name still being
    /// deleted is waited for. `Conflict` when a record exists.
    async fn create(
        &self,
        name: &str,
        what: &str,
        bytes: &[u8],
        how: Creation<'_>,
        deadline: Instant,
    ) -> Result<String, StoreError> {
        let token = how.token.map_or_else(new_token, str::to_owned);
        let mut tags = how.key.map(|k| self.tags_for(k)).unwrap_or_default();
        tags.extend(how.extra_tags.iter().cloned());
        let description = how.key.and_then(names::description);
        let mut backoff = Backoff::new();
        loop {
            let failure = match self
                .shared
                .aws
                .create(
                    &NewSecret {
                        name,
                        token: &token,
                        bytes,
                        description: description.as_deref(),
                        tags: &tags,
                        kms_key_id: self.shared.kms_key_id.as_deref(),
                    },
                    deadline,
                )
                .await
            {
                Ok(()) => return Ok(token),
                Err(f) => f,
            };
            match failure.kind {
                FailureKind::Exists => {}
                // The name is held by a secret being deleted.
                FailureKind::InvalidRequest => {
                    if backoff.pause(deadline).await {
                        continue;
                    }
                    return Err(failure.into_store_error(what));
                }
                FailureKind::Transient => {
                    return match self.landed(name, &token, deadline).await {
                        Ok(true) => Ok(token),
                        Ok(false) => Err(failure.into_store_error(what)),
                        Err(read) => Err(outcome_unknown(
                            what,
                            format!(
                                "CreateSecret failed ({failure}) and reading it back failed ({read})"
                            ),
                        )),
                    };
                }
                _ => return Err(failure.into_store_error(what)),
            }
            match self.read_state(name, what, deadline).await? {
                State::Value { version, .. } if version == token => return Ok(token),
                State::Value { .. } => {
                    return Err(StoreError::Conflict {
                        key: what.to_owned(),
                    });
                }
                // Deleted in between: create again (after a pause: never spin on AWS).
                State::Absent { busy: false } => {
                    if !backoff.pause(deadline).await {
                        return Err(budget_exceeded("create", self.shared.budget));
                    }
                }
                State::Absent { busy: true } => {
                    if !backoff.pause(deadline).await {
                        return Err(name_busy(what, "the secret is marked for deletion"));
                    }
                }
                State::Tombstone { version, until_ms } if tombstone_abandoned(until_ms) => {
                    // Its deleter is past its deadline and will not delete any more: replace
                    // the tombstone by compare-and-swap.
                    match self
                        .cas_with_token(name, what, bytes, &version, &new_token(), deadline)
                        .await
                    {
                        Ok(v) => return Ok(v),
                        Err(StoreError::Conflict { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                State::Tombstone { .. } => {
                    if !backoff.pause(deadline).await {
                        return Err(name_busy(
                            what,
                            "another writer's deletion of this record is in progress",
                        ));
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(budget_exceeded("create", self.shared.budget));
            }
        }
    }

    /// `Expect::Any`: create, or compare-and-swap over whatever is current.
    async fn overwrite(
        &self,
        name: &str,
        what: &str,
        bytes: &[u8],
        key: Option<&RecordKey>,
        deadline: Instant,
    ) -> Result<String, StoreError> {
        let mut backoff = Backoff::new();
        loop {
            let retry = match self.read_state(name, what, deadline).await? {
                State::Absent { .. } => {
                    let how = Creation {
                        key,
                        ..Creation::default()
                    };
                    self.create(name, what, bytes, how, deadline).await
                }
                State::Value { version, .. } => {
                    self.cas(name, what, bytes, &version, deadline).await
                }
                State::Tombstone { version, until_ms } if tombstone_abandoned(until_ms) => {
                    self.cas(name, what, bytes, &version, deadline).await
                }
                State::Tombstone { .. } => {
                    if !backoff.pause(deadline).await {
                        return Err(budget_exceeded("put", self.shared.budget));
                    }
                    continue;
                }
            };
            match retry {
                Err(StoreError::Conflict { .. }) if Instant::now() < deadline => {
                    // Someone wrote in between: overwrite what they wrote.
                    backoff.pause(deadline).await;
                }
                Err(StoreError::Conflict { .. }) => {
                    return Err(budget_exceeded("put", self.shared.budget));
                }
                other => return other,
            }
        }
    }

    /// Deletes the secret outright; `Ok(false)` when it was not there.
    async fn force_delete(
        &self,
        name: &str,
        what: &str,
        deadline: Instant,
    ) -> Result<bool, StoreError> {
        match self.shared.aws.delete(name, deadline).await {
            Ok(()) => Ok(true),
            Err(f) if matches!(f.kind, FailureKind::NotFound | FailureKind::InvalidRequest) => {
                Ok(false)
            }
            // The deletion may have landed with its answer lost: gone now?
            Err(f) if f.kind == FailureKind::Transient => {
                if self.is_gone(name, deadline).await {
                    Ok(true)
                } else {
                    Err(f.into_store_error(what))
                }
            }
            Err(f) => Err(f.into_store_error(what)),
        }
    }

    /// True when the secret is gone (or being deleted).
    async fn is_gone(&self, name: &str, deadline: Instant) -> bool {
        let deadline = deadline.max(Instant::now() + Duration::from_secs(1));
        matches!(
            self.shared.aws.get_current(name, deadline).await,
            Ok(Current::Absent | Current::Deleting)
        )
    }

    /// Deletes the record at `version` only: moves `AWSCURRENT` to a tombstone by
    /// compare-and-swap, then deletes the secret. `Conflict` when `version` is not current.
    async fn delete_version(
        &self,
        name: &str,
        what: &str,
        version: &str,
        deadline: Instant,
    ) -> Result<(), StoreError> {
        let until = to_ms(SystemTime::now()) + to_ms_duration(self.shared.budget);
        self.cas(name, what, &tombstone(until), version, deadline)
            .await?;
        // The record is gone for every reader now. If deleting the secret fails, the tombstone
        // is replaced by the next writer once abandoned.
        let _ = self.force_delete(name, what, deadline).await;
        Ok(())
    }

    // ----------------------------------------------------------------------------------------
    // Records

    async fn get_raw(&self, key: &RecordKey) -> Result<Option<(Vec<u8>, Version)>, StoreError> {
        let name = self.names.record(key);
        let what = key.to_string();
        let cacheable = match key {
            RecordKey::Tokens(k) => !self.holds_lease(k),
            RecordKey::Pending(_) => false,
            _ => true,
        };
        if cacheable && let Some(hit) = self.shared.cache.get(&name) {
            return Ok(Some(hit));
        }
        let epoch = self.shared.cache.epoch();
        match self.read_state(&name, &what, self.deadline()).await? {
            State::Value { bytes, version } => {
                let version = Version::new(version);
                if cacheable {
                    self.shared.cache.fill(&name, &bytes, &version, epoch);
                }
                Ok(Some((bytes, version)))
            }
            State::Absent { .. } | State::Tombstone { .. } => Ok(None),
        }
    }

    async fn put_raw(
        &self,
        key: &RecordKey,
        bytes: Vec<u8>,
        expect: Expect,
    ) -> Result<Version, StoreError> {
        let what = key.to_string();
        if bytes.len() > MAX_SECRET_BYTES {
            return Err(StoreError::TooLarge {
                key: what,
                size: bytes.len(),
                limit: MAX_SECRET_BYTES,
            });
        }
        let name = self.names.record(key);
        let deadline = self.deadline();
        self.shared.cache.invalidate(&name);
        let result = match &expect {
            Expect::Absent => {
                let how = Creation {
                    key: Some(key),
                    ..Creation::default()
                };
                self.create(&name, &what, &bytes, how, deadline).await
            }
            Expect::Version(v) => self.cas(&name, &what, &bytes, v.as_str(), deadline).await,
            Expect::Any => {
                self.overwrite(&name, &what, &bytes, Some(key), deadline)
                    .await
            }
        };
        self.shared.cache.invalidate(&name);
        result.map(Version::new)
    }

    async fn delete_raw(&self, key: &RecordKey, expect: Expect) -> Result<bool, StoreError> {
        let name = self.names.record(key);
        let what = key.to_string();
        let deadline = self.deadline();
        self.shared.cache.invalidate(&name);
        let result = match &expect {
            Expect::Version(v) => self
                .delete_version(&name, &what, v.as_str(), deadline)
                .await
                .map(|()| true),
            Expect::Absent => match self.read_state(&name, &what, deadline).await? {
                State::Value { .. } => Err(StoreError::Conflict { key: what.clone() }),
                _ => Ok(false),
            },
            Expect::Any => match self.read_state(&name, &what, deadline).await? {
                State::Value { .. } => self.force_delete(&name, &what, deadline).await,
                State::Tombstone { until_ms, .. } => {
                    if tombstone_abandoned(until_ms) {
                        self.force_delete(&name, &what, deadline).await?;
                    }
                    Ok(false)
                }
                State::Absent { .. } => Ok(false),
            },
        };
        self.shared.cache.invalidate(&name);
        let deleted = result?;
        // A logged-out or invalidated token set takes its lease secret along (it would cost a
        // secret's monthly price for nothing). Best effort: a lease secret left behind is
        // harmless.
        if deleted
            && expect == Expect::Any
            && let RecordKey::Tokens(token_key) = key
        {
            let lease_name = self.names.lease(token_key);
            let _ = self.force_delete(&lease_name, &what, self.deadline()).await;
        }
        Ok(deleted)
    }

    async fn list_raw(&self, kind: RecordKind) -> Result<Vec<RecordKey>, StoreError> {
        self.list_keys(kind, self.names.namespace_part()).await
    }

    /// Every key of `kind` whose secret has a tag value starting with `tag_value` (the namespace
    /// part for all of them).
    async fn list_keys(
        &self,
        kind: RecordKind,
        tag_value: &str,
    ) -> Result<Vec<RecordKey>, StoreError> {
        let prefix = self.names.kind_prefix(kind);
        let listed = self
            .shared
            .aws
            .list(&prefix, tag_value, self.shared.budget)
            .await
            .map_err(|f| f.into_store_error(&format!("the {} list", kind.as_str())))?;
        let mut keys = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for secret in listed {
            // The name filter is a case-insensitive prefix match: keep exact matches only.
            if !secret.name.starts_with(&prefix) {
                continue;
            }
            let key = self
                .names
                .parse_listed(kind, &secret.name, secret.description.as_deref())
                .ok_or_else(|| StoreError::Corrupt {
                    key: secret.name.clone(),
                    reason: "a secret under this store's prefix that it did not write (unrecognised name or description); delete or rename it".to_owned(),
                })?;
            if seen.insert(key.clone()) {
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
    store: &AwsSecretsStore,
    key: &RecordKey,
    bytes: &[u8],
) -> Result<(), StoreError> {
    store
        .put_raw(key, bytes.to_vec(), Expect::Any)
        .await
        .map(drop)
}

#[async_trait]
impl RawRecords for AwsSecretsStore {
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

mcp_auth_core::impl_record_stores!(AwsSecretsStore);

impl StoreInfo for AwsSecretsStore {
    fn backend_name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> StoreCapabilities {
        StoreCapabilities::ALL
    }
}

#[async_trait]
impl TokenStore for AwsSecretsStore {
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
        // Server side: this namespace's token secrets tagged with (a prefix of) the issuer's
        // part; here: exactly this issuer.
        let keys = self
            .list_keys(RecordKind::Tokens, &names::issuer_tag(issuer))
            .await?;
        let mut deleted = 0;
        for key in keys {
            if let RecordKey::Tokens(token_key) = &key
                && &token_key.issuer == issuer
                && self.delete_raw(&key, Expect::Any).await?
            {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    async fn list_tokens(&self) -> Result<Vec<TokenKey>, StoreError> {
        raw::list_tokens(self).await
    }

    async fn try_acquire_refresh_lease(
        &self,
        key: &TokenKey,
        ttl: Duration,
    ) -> Result<Option<RefreshLease>, StoreError> {
        self.acquire_lease(key, ttl).await
    }

    async fn renew_refresh_lease(
        &self,
        lease: &RefreshLease,
        ttl: Duration,
    ) -> Result<Option<RefreshLease>, StoreError> {
        self.renew_lease(lease, ttl).await
    }

    async fn release_refresh_lease(&self, lease: &RefreshLease) -> Result<bool, StoreError> {
        self.release_lease(lease).await
    }
}

impl AwsSecretsStore {
    /// Deletes pending authorizations of this namespace that expired more than a minute ago
    /// (abandoned logins), at most every ten minutes per namespace. Best effort: a failure only
    /// leaves them for the next sweep.
    async fn sweep_pending(&self) {
        {
            let mut sweeps = self
                .shared
                .last_sweep
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let part = self.names.namespace_part().to_owned();
            if sweeps
                .get(&part)
                .is_some_and(|at| at.elapsed() < PENDING_SWEEP_EVERY)
            {
                return;
            }
            sweeps.insert(part, Instant::now());
        }
        let prefix = self.names.kind_prefix(RecordKind::Pending);
        let deadline = self.deadline();
        let Ok(listed) = self
            .shared
            .aws
            .list(&prefix, self.names.namespace_part(), self.shared.budget)
            .await
        else {
            return;
        };
        let now_secs = now_ms() / 1000;
        for secret in listed {
            let expired = secret.name.starts_with(&prefix)
                && secret.tags.iter().any(|(k, v)| {
                    k == names::TAG_EXPIRES
                        && v.parse::<u64>()
                            .is_ok_and(|at| at.saturating_add(60) < now_secs)
                });
            if expired
                && self
                    .force_delete(&secret.name, "an expired pending authorization", deadline)
                    .await
                    .is_err()
            {
                return;
            }
        }
    }
}

#[async_trait]
impl PendingAuthorizationStore for AwsSecretsStore {
    async fn insert_pending(&self, pending: &PendingAuthorization) -> Result<(), StoreError> {
        let key = RecordKey::Pending(pending.state.clone());
        let what = key.to_string();
        let bytes = record::encode_pending(pending)?;
        if bytes.len() > MAX_SECRET_BYTES {
            return Err(StoreError::TooLarge {
                key: what,
                size: bytes.len(),
                limit: MAX_SECRET_BYTES,
            });
        }
        self.sweep_pending().await;
        let name = self.names.record(&key);
        let deadline = self.deadline();
        let expires = [(
            names::TAG_EXPIRES.to_owned(),
            pending.expires_at.unix_seconds().max(0).to_string(),
        )];
        let mut backoff = Backoff::new();
        loop {
            match self
                .create(
                    &name,
                    &what,
                    &bytes,
                    Creation {
                        key: Some(&key),
                        extra_tags: &expires,
                        token: None,
                    },
                    deadline,
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
            // The state is in use, unless by a flow that has expired: that one may be replaced.
            match self.read_state(&name, &what, deadline).await? {
                State::Value {
                    bytes: existing,
                    version,
                } => match record::decode_pending(&pending.state, &existing) {
                    Ok(old) if old.expires_at.is_past() => {
                        match self.delete_version(&name, &what, &version, deadline).await {
                            Ok(()) | Err(StoreError::Conflict { .. }) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    _ => return Err(StoreError::Conflict { key: what }),
                },
                State::Absent { .. } | State::Tombstone { .. } => {}
            }
            if !backoff.pause(deadline).await {
                return Err(budget_exceeded("insert_pending", self.shared.budget));
            }
        }
    }

    async fn take_pending(&self, state: &str) -> Result<Option<PendingAuthorization>, StoreError> {
        let key = RecordKey::Pending(state.to_owned());
        let what = key.to_string();
        let name = self.names.record(&key);
        let deadline = self.deadline();
        let State::Value { bytes, version } = self.read_state(&name, &what, deadline).await? else {
            return Ok(None);
        };
        // Decode before deleting: a corrupt record is reported and left in place.
        let pending = record::decode_pending(state, &bytes)?;
        // Redeemed by whoever moves AWSCURRENT off this version first.
        match self.delete_version(&name, &what, &version, deadline).await {
            Ok(()) => Ok((!pending.expires_at.is_past()).then_some(pending)),
            Err(StoreError::Conflict { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
