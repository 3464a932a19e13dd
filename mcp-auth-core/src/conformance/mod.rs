//! The store conformance suite: proof that a store keeps credentials isolated per authorization
//! server, per resource and per namespace, and honours compare-and-swap, leases and the record
//! format.
//!
//! Every check is a plain `pub async fn` in [`checks`] taking a [`StoreFactory`]; the
//! [`store_conformance_tests!`](crate::store_conformance_tests) macro stamps out one `#[test]` per
//! check. Each check opens its own fresh random namespace and deletes what it wrote, pass or fail.
//! Optional checks are gated on [`StoreCapabilities`](crate::StoreCapabilities); isolation checks
//! never are.
//!
//! ```
//! use mcp_auth_core::conformance::MemoryFactory;
//!
//! // In a test file of your crate: one #[test] per check.
//! mcp_auth_core::store_conformance_tests!(MemoryFactory::new());
//! ```

use std::fmt;
use std::future::Future;

use async_trait::async_trait;

use crate::error::StoreError;
use crate::ids::Namespace;
use crate::memory::MemoryStore;
use crate::record::RecordKey;
use crate::store::CredentialStore;

pub mod checks;

/// Opens stores for the suite.
#[async_trait]
pub trait StoreFactory: Send + Sync {
    /// The store under test.
    type Store: CredentialStore + 'static;

    /// Opens a store over `namespace`. Opening the same namespace again must give a store over
    /// the same data (for a durable store: a new connection, as after a restart).
    async fn open(&self, namespace: &Namespace) -> Result<Self::Store, StoreError>;

    /// Writes `bytes` verbatim as the record under `key` in `namespace`, bypassing encoding, so
    /// the suite can plant corrupt data. Return `Ok(false)` if the backend cannot do this; the
    /// corruption checks are then reported as skipped.
    async fn write_raw(
        &self,
        namespace: &Namespace,
        key: &RecordKey,
        bytes: &[u8],
    ) -> Result<bool, StoreError> {
        let _ = (namespace, key, bytes);
        Ok(false)
    }
}

/// The factory for [`MemoryStore`]: every namespace it opens shares one backing map, so
/// namespace isolation and "reopen" are tested for real.
#[derive(Clone, Debug, Default)]
pub struct MemoryFactory {
    root: MemoryStore,
}

impl MemoryFactory {
    /// A factory over a new, empty memory store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl StoreFactory for MemoryFactory {
    type Store = MemoryStore;

    async fn open(&self, namespace: &Namespace) -> Result<MemoryStore, StoreError> {
        Ok(self.root.with_namespace(namespace.clone()))
    }

    async fn write_raw(
        &self,
        namespace: &Namespace,
        key: &RecordKey,
        bytes: &[u8],
    ) -> Result<bool, StoreError> {
        self.root
            .with_namespace(namespace.clone())
            .write_raw(key, bytes);
        Ok(true)
    }
}

/// How a check ended, when it did not fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every assertion held.
    Passed,
    /// Not applicable to this store (the reason says which capability is missing).
    Skipped(String),
}

/// A check failed: what was expected and what the store did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    message: String,
}

impl Failure {
    /// A failure with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        let mut message = format!("unexpected store error: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(&format!(": {s}"));
            source = s.source();
        }
        Self { message }
    }
}

impl From<crate::ids::InvalidId> for Failure {
    fn from(e: crate::ids::InvalidId) -> Self {
        Self::new(format!("suite bug: {e}"))
    }
}

/// The result of one check.
pub type CheckResult = Result<Outcome, Failure>;

/// Every check's result, from [`run_all`].
#[derive(Debug, Default)]
pub struct Report {
    results: Vec<(&'static str, CheckResult)>,
}

impl Report {
    #[doc(hidden)]
    pub fn record(&mut self, name: &'static str, result: CheckResult) {
        self.results.push((name, result));
    }

    /// Each check's name and result, in suite order.
    pub fn results(&self) -> &[(&'static str, CheckResult)] {
        &self.results
    }

    /// Names of the checks that failed.
    pub fn failed(&self) -> Vec<&'static str> {
        self.results
            .iter()
            .filter(|(_, r)| r.is_err())
            .map(|(n, _)| *n)
            .collect()
    }

    /// Names of the checks that passed.
    pub fn passed(&self) -> Vec<&'static str> {
        self.results
            .iter()
            .filter(|(_, r)| matches!(r, Ok(Outcome::Passed)))
            .map(|(n, _)| *n)
            .collect()
    }

    /// The failure of check `name`, if it failed.
    pub fn failure(&self, name: &str) -> Option<&Failure> {
        self.results
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, r)| r.as_ref().err())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, result) in &self.results {
            match result {
                Ok(Outcome::Passed) => writeln!(f, "PASS {name}")?,
                Ok(Outcome::Skipped(why)) => writeln!(f, "SKIP {name}: {why}")?,
                Err(e) => writeln!(f, "FAIL {name}: {e}")?,
            }
        }
        Ok(())
    }
}

/// Runs every check, one after another, and reports each result.
pub async fn run_all<F: StoreFactory>(factory: &F) -> Report {
    let mut report = Report::default();
    crate::__conformance_checks!(run [factory, report]);
    report
}

/// Names of every check, in suite order.
pub fn check_names() -> Vec<&'static str> {
    crate::__conformance_checks!(names [])
}

/// Runs `future` on a fresh multi-threaded tokio runtime (used by the generated tests).
#[doc(hidden)]
pub fn block_on<T>(future: impl Future<Output = T>) -> T {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(future),
        Err(e) => fail_test("runtime", &format!("cannot start a tokio runtime: {e}")),
    }
}

/// Turns a check result into a test outcome (used by the generated tests).
#[doc(hidden)]
pub fn conclude(name: &str, result: CheckResult) {
    match result {
        Ok(Outcome::Passed) => {}
        Ok(Outcome::Skipped(why)) => eprintln!("conformance check {name} skipped: {why}"),
        Err(failure) => fail_test(name, failure.message()),
    }
}

#[allow(clippy::panic)]
fn fail_test(name: &str, message: &str) -> ! {
    // Failing a #[test] is what this function is for.
    panic!("conformance check {name} failed: {message}")
}

/// Stamps out one `#[test]` per conformance check for the store factory expression `$factory`
/// (evaluated once per test).
///
/// ```
/// // In `tests/conformance.rs` of a store crate (here with the in-memory factory):
/// mcp_auth_core::store_conformance_tests!(mcp_auth_core::conformance::MemoryFactory::new());
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! store_conformance_tests {
    ($factory:expr) => {
        $crate::__conformance_checks!(tests[$factory]);
    };
}

/// The list of checks, written once; expanded into tests, a sequential run, or names.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_checks {
    ($mode:ident [$($args:tt)*]) => {
        $crate::__conformance_emit! {$mode [$($args)*]
            registration_round_trips_every_field,
            tokens_round_trip_every_field,
            binding_round_trips_every_field,
            pending_round_trips_every_field,
            absent_optional_fields_round_trip,
            unknown_extra_fields_survive,
            registrations_isolated_per_issuer,
            tokens_isolated_per_issuer,
            tokens_isolated_per_resource,
            bindings_isolated_per_resource,
            namespaces_isolate_registrations,
            namespaces_isolate_tokens_bindings_and_pending,
            namespaces_isolate_leases,
            lookalike_namespaces_are_distinct,
            lookalike_issuer_trailing_slash,
            lookalike_issuer_path_case,
            lookalike_issuer_explicit_default_port,
            lookalike_issuer_percent_encoding,
            lookalike_issuer_unicode,
            lookalike_issuer_key_syntax_characters,
            lookalike_resources_are_distinct,
            delete_issuer_tokens_leaves_other_issuers,
            delete_registration_leaves_other_issuers,
            get_missing_is_none,
            put_absent_conflicts_when_present,
            put_version_conflicts_when_stale,
            put_version_conflicts_when_deleted,
            put_any_overwrites,
            binding_and_token_versions_match_reads,
            change_stamp_moves_on_every_write,
            versions_change_on_every_write,
            delete_with_stale_version_conflicts_and_keeps_record,
            delete_is_idempotent,
            concurrent_cas_has_one_winner,
            concurrent_writers_on_different_keys,
            lease_is_exclusive,
            lease_release_allows_reacquire,
            expired_lease_is_taken_over,
            stale_holder_cannot_release_taken_over_lease,
            renewed_lease_stays_exclusive,
            taken_over_lease_cannot_be_renewed,
            leases_are_per_token_key,
            pending_is_taken_once,
            pending_state_collision_conflicts,
            pending_expires,
            list_returns_exactly_what_was_stored,
            scans_return_exactly_what_gets_return,
            put_any_batches_write_like_puts,
            corrupt_record_is_reported_and_kept,
            misplaced_record_is_reported_corrupt,
            no_secret_in_debug,
            records_persist_across_reopen,
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_emit {
    (tests [$factory:expr] $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let factory = $factory;
                $crate::conformance::block_on(async {
                    $crate::conformance::conclude(
                        stringify!($name),
                        $crate::conformance::checks::$name(&factory).await,
                    )
                });
            }
        )*
    };
    (run [$factory:expr, $report:ident] $($name:ident),* $(,)?) => {
        $(
            $report.record(stringify!($name), $crate::conformance::checks::$name($factory).await);
        )*
    };
    (names [] $($name:ident),* $(,)?) => {
        vec![$(stringify!($name)),*]
    };
}
