//! The six Secrets Manager calls this store makes, each counted, bounded by the operation's
//! deadline and reduced to an [`ApiFailure`] on error.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_secretsmanager::config::retry::RetryConfig;
use aws_sdk_secretsmanager::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_secretsmanager::error::BoxError;
use aws_sdk_secretsmanager::primitives::Blob;
use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType, Tag};
use tokio::time::Instant;

use crate::error::{Api, ApiFailure};

/// The label `GetSecretValue` reads and compare-and-swap moves.
pub(crate) const CURRENT: &str = "AWSCURRENT";
/// The private label a new version is put under before `AWSCURRENT` is moved to it: without a
/// label, `PutSecretValue` would move `AWSCURRENT` unconditionally.
pub(crate) const STAGED: &str = "MCPAUTH_STAGED";

/// How many calls of each API this store made, and how many HTTP attempts they took (the SDK
/// retries throttling, 5xx and timeouts). Secrets Manager bills per API call.
///
/// Snapshots from [`AwsSecretsStore::calls`](crate::AwsSecretsStore::calls); subtract two with
/// [`AwsCalls::since`] to count what happened in between.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AwsCalls {
    /// `GetSecretValue` calls.
    pub get_secret_value: u64,
    /// `CreateSecret` calls.
    pub create_secret: u64,
    /// `PutSecretValue` calls.
    pub put_secret_value: u64,
    /// `UpdateSecretVersionStage` calls.
    pub update_secret_version_stage: u64,
    /// `DeleteSecret` calls.
    pub delete_secret: u64,
    /// `ListSecrets` calls (one per page).
    pub list_secrets: u64,
    /// HTTP attempts of all of them, retries included.
    pub http_attempts: u64,
}

impl AwsCalls {
    /// API calls of every kind.
    pub fn total(&self) -> u64 {
        self.get_secret_value
            + self.create_secret
            + self.put_secret_value
            + self.update_secret_version_stage
            + self.delete_secret
            + self.list_secrets
    }

    /// Calls made since the `earlier` snapshot.
    pub fn since(&self, earlier: &AwsCalls) -> AwsCalls {
        AwsCalls {
            get_secret_value: self
                .get_secret_value
                .saturating_sub(earlier.get_secret_value),
            create_secret: self.create_secret.saturating_sub(earlier.create_secret),
            put_secret_value: self
                .put_secret_value
                .saturating_sub(earlier.put_secret_value),
            update_secret_version_stage: self
                .update_secret_version_stage
                .saturating_sub(earlier.update_secret_version_stage),
            delete_secret: self.delete_secret.saturating_sub(earlier.delete_secret),
            list_secrets: self.list_secrets.saturating_sub(earlier.list_secrets),
            http_attempts: self.http_attempts.saturating_sub(earlier.http_attempts),
        }
    }
}

impl fmt::Display for AwsCalls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = [
            ("GetSecretValue", self.get_secret_value),
            ("CreateSecret", self.create_secret),
            ("PutSecretValue", self.put_secret_value),
            ("UpdateSecretVersionStage", self.update_secret_version_stage),
            ("DeleteSecret", self.delete_secret),
            ("ListSecrets", self.list_secrets),
        ];
        write!(f, "{} calls", self.total())?;
        let mut first = true;
        for (name, n) in parts {
            if n > 0 {
                f.write_str(if first { " (" } else { ", " })?;
                write!(f, "{name} {n}")?;
                first = false;
            }
        }
        if !first {
            f.write_str(")")?;
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    by_api: [AtomicU64; 6],
    attempts: AtomicU64,
}

impl Counters {
    fn record(&self, api: Api) {
        self.by_api[api.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> AwsCalls {
        let n = |api: Api| self.by_api[api.index()].load(Ordering::Relaxed);
        AwsCalls {
            get_secret_value: n(Api::GetSecretValue),
            create_secret: n(Api::CreateSecret),
            put_secret_value: n(Api::PutSecretValue),
            update_secret_version_stage: n(Api::UpdateSecretVersionStage),
            delete_secret: n(Api::DeleteSecret),
            list_secrets: n(Api::ListSecrets),
            http_attempts: self.attempts.load(Ordering::Relaxed),
        }
    }
}

/// Counts HTTP attempts (retries included) of every call through the client.
#[derive(Debug)]
struct AttemptCounter(Arc<Counters>);

impl Intercept for AttemptCounter {
    fn name(&self) -> &'static str {
        "mcp-auth-store-aws-attempt-counter"
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.attempts.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// What `AWSCURRENT` of a secret holds.
pub(crate) enum Current {
    /// No such secret (or it has no current value).
    Absent,
    /// The secret is marked for deletion: its name is not free yet.
    Deleting,
    /// A value, as stored, with its version id.
    Value { bytes: Vec<u8>, version: String },
}

/// A secret to create.
pub(crate) struct NewSecret<'a> {
    pub(crate) name: &'a str,
    /// Its first version's id.
    pub(crate) token: &'a str,
    pub(crate) bytes: &'a [u8],
    pub(crate) description: Option<&'a str>,
    pub(crate) tags: &'a [(String, String)],
    pub(crate) kms_key_id: Option<&'a str>,
}

/// A secret listed by `ListSecrets`.
pub(crate) struct Listed {
    pub(crate) name: String,
    pub(crate) description: Option<String>,
    pub(crate) tags: Vec<(String, String)>,
}

/// The value to store: records are UTF-8 JSON (`SecretString`, readable in the console); other
/// bytes (only ever planted by tests) go in `SecretBinary`.
fn set_value(bytes: &[u8]) -> (Option<String>, Option<Blob>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (None, Some(Blob::new(bytes.to_vec()))),
    }
}

/// The counted, deadline-bounded Secrets Manager client.
#[derive(Clone)]
pub(crate) struct Aws {
    client: Client,
    counters: Arc<Counters>,
    /// The client's configured attempts per call, which the store's own retries of
    /// `UpdateSecretVersionStage` honour too.
    max_attempts: u32,
}

impl Aws {
    /// Wraps `client`, adding the attempt counter to its configuration (everything else,
    /// including its retry and timeout configuration, is kept).
    pub(crate) fn new(client: &Client) -> Self {
        let counters = Arc::new(Counters::default());
        let config = client
            .config()
            .to_builder()
            .interceptor(AttemptCounter(Arc::clone(&counters)))
            .build();
        let max_attempts = client
            .config()
            .retry_config()
            .map_or(3, |r| r.max_attempts())
            .max(1);
        Self {
            client: Client::from_conf(config),
            counters,
            max_attempts,
        }
    }

    pub(crate) fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    pub(crate) fn calls(&self) -> AwsCalls {
        self.counters.snapshot()
    }

    async fn bounded<T, E>(
        &self,
        api: Api,
        deadline: Instant,
        call: impl Future<Output = Result<T, E>>,
        reduce: impl FnOnce(&E) -> ApiFailure,
    ) -> Result<T, ApiFailure> {
        self.counters.record(api);
        match tokio::time::timeout_at(deadline, call).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(reduce(&e)),
            Err(_) => Err(ApiFailure::transient(
                api,
                "no answer within the request budget",
            )),
        }
    }

    /// `GetSecretValue(VersionStage=AWSCURRENT)`. Always with the stage: moto answers a read
    /// without it from a stale version after a stage move.
    pub(crate) async fn get_current(
        &self,
        name: &str,
        deadline: Instant,
    ) -> Result<Current, ApiFailure> {
        let call = self
            .client
            .get_secret_value()
            .secret_id(name)
            .version_stage(CURRENT)
            .send();
        let api = Api::GetSecretValue;
        match self
            .bounded(api, deadline, call, |e| ApiFailure::from_sdk(api, e))
            .await
        {
            Ok(out) => {
                let bytes = match (out.secret_string(), out.secret_binary()) {
                    (Some(s), _) => s.as_bytes().to_vec(),
                    (None, Some(b)) => b.as_ref().to_vec(),
                    (None, None) => return Ok(Current::Absent),
                };
                match out.version_id() {
                    Some(version) => Ok(Current::Value {
                        bytes,
                        version: version.to_owned(),
                    }),
                    None => Err(ApiFailure::transient(
                        api,
                        "the answer carried no version id",
                    )),
                }
            }
            Err(f) if f.kind == crate::error::FailureKind::NotFound => Ok(Current::Absent),
            Err(f) if f.kind == crate::error::FailureKind::InvalidRequest => Ok(Current::Deleting),
            Err(f) => Err(f),
        }
    }

    /// The staging labels of version `token` (`GetSecretValue(VersionId)`); `None` when there
    /// is no such version.
    pub(crate) async fn version_stages(
        &self,
        name: &str,
        token: &str,
        deadline: Instant,
    ) -> Result<Option<Vec<String>>, ApiFailure> {
        let call = self
            .client
            .get_secret_value()
            .secret_id(name)
            .version_id(token)
            .send();
        let api = Api::GetSecretValue;
        match self
            .bounded(api, deadline, call, |e| ApiFailure::from_sdk(api, e))
            .await
        {
            Ok(out) => Ok(Some(out.version_stages().to_vec())),
            Err(f) if f.kind == crate::error::FailureKind::NotFound => Ok(None),
            Err(f) => Err(f),
        }
    }

    /// `CreateSecret` with its first value as version `secret.token`.
    pub(crate) async fn create(
        &self,
        secret: &NewSecret<'_>,
        deadline: Instant,
    ) -> Result<(), ApiFailure> {
        let (string, binary) = set_value(secret.bytes);
        let tags: Vec<Tag> = secret
            .tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        let call = self
            .client
            .create_secret()
            .name(secret.name)
            .client_request_token(secret.token)
            .set_secret_string(string)
            .set_secret_binary(binary)
            .set_description(secret.description.map(str::to_owned))
            .set_kms_key_id(secret.kms_key_id.map(str::to_owned))
            .set_tags((!tags.is_empty()).then_some(tags))
            .send();
        let api = Api::CreateSecret;
        self.bounded(api, deadline, call, |e| ApiFailure::from_sdk(api, e))
            .await
            .map(drop)
    }

    /// `PutSecretValue` of version `token` under `label` (never `AWSCURRENT`). Idempotent: a
    /// retry with the same token and value is ignored by Secrets Manager.
    pub(crate) async fn put_version(
        &self,
        name: &str,
        token: &str,
        bytes: &[u8],
        label: &str,
        deadline: Instant,
    ) -> Result<(), ApiFailure> {
        let (string, binary) = set_value(bytes);
        let call = self
            .client
            .put_secret_value()
            .secret_id(name)
            .client_request_token(token)
            .set_secret_string(string)
            .set_secret_binary(binary)
            .version_stages(label)
            .send();
        let api = Api::PutSecretValue;
        self.bounded(api, deadline, call, |e| ApiFailure::from_sdk(api, e))
            .await
            .map(drop)
    }

    /// `UpdateSecretVersionStage(AWSCURRENT, RemoveFromVersionId = from, MoveToVersionId = to)`:
    /// refused when `AWSCURRENT` is no longer on `from`. One attempt, never retried by the SDK:
    /// a retry after a lost answer would meet its own move as a refusal, indistinguishable from
    /// another writer's; the store retries only once it has read that the move did not happen.
    pub(crate) async fn move_current(
        &self,
        name: &str,
        from: &str,
        to: &str,
        deadline: Instant,
    ) -> Result<(), ApiFailure> {
        let call = self
            .client
            .update_secret_version_stage()
            .secret_id(name)
            .version_stage(CURRENT)
            .remove_from_version_id(from)
            .move_to_version_id(to)
            .customize()
            .config_override(
                aws_sdk_secretsmanager::config::Builder::new()
                    .retry_config(RetryConfig::disabled()),
            )
            .send();
        let api = Api::UpdateSecretVersionStage;
        self.bounded(api, deadline, call, |e| ApiFailure::from_sdk(api, e))
            .await
            .map(drop)
    }

    /// `DeleteSecret(ForceDeleteWithoutRecovery)`.
    pub(crate) async fn delete(&self, name: &str, deadline: Instant) -> Result<(), ApiFailure> {
        let call = self
            .client
            .delete_secret()
            .secret_id(name)
            .force_delete_without_recovery(true)
            .send();
        let api = Api::DeleteSecret;
        self.bounded(api, deadline, call, |e| ApiFailure::from_sdk(api, e))
            .await
            .map(drop)
    }

    /// Every secret whose name starts with `name_prefix` and that has a tag value starting with
    /// `tag_value`, all pages. Both filters are prefix matches (the name one case-insensitive):
    /// callers check what they get.
    pub(crate) async fn list(
        &self,
        name_prefix: &str,
        tag_value: &str,
        budget_per_page: std::time::Duration,
    ) -> Result<Vec<Listed>, ApiFailure> {
        let filters = vec![
            Filter::builder()
                .key(FilterNameStringType::Name)
                .values(name_prefix)
                .build(),
            Filter::builder()
                .key(FilterNameStringType::TagValue)
                .values(tag_value)
                .build(),
        ];
        let mut found = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let call = self
                .client
                .list_secrets()
                .set_filters(Some(filters.clone()))
                .max_results(100)
                .set_next_token(next.take())
                .send();
            let api = Api::ListSecrets;
            let deadline = Instant::now() + budget_per_page;
            let page = self
                .bounded(api, deadline, call, |e| ApiFailure::from_sdk(api, e))
                .await?;
            for entry in page.secret_list() {
                let Some(name) = entry.name() else { continue };
                found.push(Listed {
                    name: name.to_owned(),
                    description: entry.description().map(str::to_owned),
                    tags: entry
                        .tags()
                        .iter()
                        .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
                        .collect(),
                });
            }
            match page.next_token() {
                Some(token) if !token.is_empty() => next = Some(token.to_owned()),
                _ => return Ok(found),
            }
        }
    }
}
