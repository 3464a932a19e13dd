//! Size limits on the real keyrings: a namespace holds more records than one kernel key can
//! list, and a record too large for one key is refused before anything changes. Run through
//! `scripts/with-keyrings.sh` (see the README).
use std::collections::BTreeSet;
use std::time::Instant;

use mcp_auth_core::record::RecordKey;
use mcp_auth_core::{
    Expect, ExposeSecret, IssuerId, Namespace, ResourceUri, SecretString, StoreError, TokenKey,
    TokenSet, TokenStore,
};
use mcp_auth_store_keyring::testing::{index_items, set_index_shard};
use mcp_auth_store_keyring::{KEYUTILS_MAX_PAYLOAD, KeyringBackend, KeyringOptions, KeyringStore};

const HOW: &str = "the keyring tests need a private session keyring, a D-Bus session and an \
unlocked gnome-keyring: run them through mcp-auth-store-keyring/scripts/with-keyrings.sh (see \
the crate README; MCP_AUTH_TEST_KEYRINGS is not set)";

/// Issuers the records are spread over (per-issuer deletion crosses index shards).
const ISSUERS: usize = 8;

fn issuer(i: usize) -> IssuerId {
    IssuerId::new(format!("https://login-{i}.example.com/tenant/common")).unwrap()
}

/// Record `n`: a realistic token key (issuer `n % ISSUERS`).
fn token_key(n: usize) -> TokenKey {
    let resource = ResourceUri::new(format!("https://mcp-{n}.tools.example.com/mcp")).unwrap();
    TokenKey::new(issuer(n % ISSUERS), resource)
}

fn tokens(n: usize) -> TokenSet {
    TokenSet::new(SecretString::from(format!("limits-access-{n}")))
}

async fn open(backend: KeyringBackend) -> KeyringStore {
    if std::env::var_os("MCP_AUTH_TEST_KEYRINGS").is_none() {
        panic!("{HOW}");
    }
    KeyringStore::open(
        backend,
        KeyringOptions {
            namespace: Namespace::random("keyring-limits"),
        },
    )
    .await
    .unwrap()
}

/// The size of the one-item index this crate kept before sharding: a JSON list of the
/// records' storage keys.
fn single_index_size(keys: &BTreeSet<TokenKey>) -> usize {
    let members: BTreeSet<String> = keys
        .iter()
        .map(|k| RecordKey::Tokens(k.clone()).storage_key())
        .collect();
    serde_json::to_vec(&members).unwrap().len()
}

async fn listed(store: &KeyringStore) -> BTreeSet<TokenKey> {
    let list = store.list_tokens().await.unwrap();
    let set: BTreeSet<TokenKey> = list.iter().cloned().collect();
    assert_eq!(set.len(), list.len(), "listed twice");
    set
}

async fn assert_readable(
    store: &KeyringStore,
    keys: &BTreeSet<TokenKey>,
    n_of: impl Fn(&TokenKey) -> usize,
) {
    for key in keys {
        let got = store.get_tokens(key).await.unwrap().expect("record lost");
        assert_eq!(
            got.value.access_token.expose_secret(),
            format!("limits-access-{}", n_of(key)),
        );
    }
}

fn remove_lock_files(store: &KeyringStore) {
    let lock = store.lock_file().unwrap();
    let _ = std::fs::remove_file(lock.with_extension("leases.lock"));
    let _ = std::fs::remove_file(lock);
}

/// Writes records until the old single index item would have been `factor` times over the
/// kernel's key size limit: every record written stays readable and listed (also through a new
/// store object, as after a restart), then every one is deleted, by key and by issuer.
async fn past_the_old_index_limit(backend: KeyringBackend, factor: usize) {
    let store = open(backend).await;
    let number: std::collections::HashMap<TokenKey, usize> = Default::default();
    let mut number = number;
    let mut written = BTreeSet::new();
    let mut crossed = None;
    let started = Instant::now();
    let mut n = 0;
    while single_index_size(&written) <= factor * KEYUTILS_MAX_PAYLOAD {
        let key = token_key(n);
        let put = store.put_tokens(&key, &tokens(n), Expect::Absent).await;
        if let Err(e) = &put {
            eprintln!(
                "{backend:?}: write {n} failed ({} records written, single index {} bytes): {e}",
                written.len(),
                single_index_size(&written)
            );
            // Whatever failed, it failed before a change: every earlier record is intact.
            assert_eq!(
                listed(&store).await,
                written,
                "records lost after a refusal"
            );
            assert_readable(&store, &written, |k| number[k]).await;
            assert!(store.get_tokens(&key).await.unwrap().is_none());
        }
        put.unwrap();
        written.insert(key.clone());
        number.insert(key, n);
        if crossed.is_none() && single_index_size(&written) > KEYUTILS_MAX_PAYLOAD {
            crossed = Some(n);
            // At the limit: the record that takes the index past one key's size.
            assert_eq!(listed(&store).await, written);
            assert_readable(&store, &written, |k| number[k]).await;
        }
        n += 1;
    }
    eprintln!(
        "{backend:?}: {} records written in {:?} (old index limit crossed at record {crossed:?})",
        written.len(),
        started.elapsed()
    );
    assert_eq!(listed(&store).await, written);
    assert_readable(&store, &written, |k| number[k]).await;
    let reopened = open_same(backend, &store).await;
    assert_eq!(listed(&reopened).await, written);
    let items = index_items(&store).await.unwrap();
    if backend == KeyringBackend::Keyutils {
        assert!(items.len() > factor, "{} index items", items.len());
    }
    assert_items_fit(backend, &items);

    // A lost shard 0, then a damaged shard 1: listing rebuilds the whole index from the
    // keyring's own search, every shard again under the limit.
    set_index_shard(&store, 0, None).await.unwrap();
    assert_eq!(listed(&reopened).await, written, "after losing shard 0");
    if items.len() > 1 {
        set_index_shard(&store, 1, Some(b"{ damaged".to_vec()))
            .await
            .unwrap();
        assert_eq!(listed(&reopened).await, written, "after damaging shard 1");
    }
    let rebuilt = index_items(&store).await.unwrap();
    assert_eq!(
        rebuilt.len(),
        items.len(),
        "the rebuilt index has another shape"
    );
    assert_items_fit(backend, &rebuilt);

    // Delete every third record by key, then issuer 0's records in one call, then the rest.
    let by_key: Vec<TokenKey> = written.iter().step_by(3).cloned().collect();
    for key in &by_key {
        assert!(store.delete_tokens(key, Expect::Any).await.unwrap());
        written.remove(key);
    }
    assert_eq!(listed(&reopened).await, written);
    let of_issuer_0: BTreeSet<TokenKey> = written
        .iter()
        .filter(|k| k.issuer == issuer(0))
        .cloned()
        .collect();
    assert!(!of_issuer_0.is_empty());
    assert_eq!(
        store.delete_issuer_tokens(&issuer(0)).await.unwrap(),
        of_issuer_0.len()
    );
    written.retain(|k| !of_issuer_0.contains(k));
    assert_eq!(listed(&store).await, written);
    assert_readable(&store, &written, |k| number[k]).await;
    for i in 1..ISSUERS {
        store.delete_issuer_tokens(&issuer(i)).await.unwrap();
    }
    // The last deletion removed every index item and the lock file.
    assert!(
        index_items(&store).await.unwrap().is_empty(),
        "index items left behind"
    );
    assert!(
        !store.lock_file().unwrap().exists(),
        "lock file left behind"
    );
    assert!(listed(&reopened).await.is_empty());
    remove_lock_files(&store);
}

/// On the kernel keyring every index item is within one key's limit.
fn assert_items_fit(backend: KeyringBackend, items: &[Vec<u8>]) {
    if backend == KeyringBackend::Keyutils {
        for item in items {
            assert!(
                item.len() <= KEYUTILS_MAX_PAYLOAD,
                "index item of {} bytes",
                item.len()
            );
        }
    }
}

async fn open_same(backend: KeyringBackend, store: &KeyringStore) -> KeyringStore {
    KeyringStore::open(
        backend,
        KeyringOptions {
            namespace: store.namespace().clone(),
        },
    )
    .await
    .unwrap()
}

mod keyutils {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_past_the_old_index_limit() {
        super::past_the_old_index_limit(KeyringBackend::Keyutils, 3).await;
    }
}

mod secret_service {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_past_the_old_index_limit() {
        super::past_the_old_index_limit(KeyringBackend::SecretService, 1).await;
    }
}

/// A token set too large for one kernel key is refused before anything changes: as a new
/// record, and as the new value of an existing one (which keeps its value and version).
async fn a_record_too_large_for_one_key(backend: KeyringBackend) {
    let store = open(backend).await;
    for n in 0..3 {
        store
            .put_tokens(&token_key(n), &tokens(n), Expect::Absent)
            .await
            .unwrap();
    }
    let before = store.get_tokens(&token_key(0)).await.unwrap().unwrap();
    let index_before = index_items(&store).await.unwrap();
    let huge = TokenSet::new(SecretString::from("h".repeat(KEYUTILS_MAX_PAYLOAD + 1)));
    for (key, expect) in [
        (token_key(0), Expect::Version(before.version.clone())),
        (token_key(0), Expect::Any),
        (token_key(7), Expect::Absent),
    ] {
        let err = store.put_tokens(&key, &huge, expect).await.unwrap_err();
        let StoreError::TooLarge { size, limit, .. } = &err else {
            panic!("{err:?}");
        };
        assert!(*size > KEYUTILS_MAX_PAYLOAD && *limit == KEYUTILS_MAX_PAYLOAD);
        let message = err.to_string();
        assert!(message.contains("kernel keyring"), "{message}");
        assert!(!format!("{message} {err:?}").contains("hhhh"));
    }
    let after = store.get_tokens(&token_key(0)).await.unwrap().unwrap();
    assert_eq!(after.version, before.version);
    assert_eq!(
        after.value.access_token.expose_secret(),
        before.value.access_token.expose_secret()
    );
    assert!(store.get_tokens(&token_key(7)).await.unwrap().is_none());
    assert_eq!(index_items(&store).await.unwrap(), index_before);
    assert_eq!(listed(&store).await, (0..3).map(token_key).collect());
    for i in 0..ISSUERS {
        store.delete_issuer_tokens(&issuer(i)).await.unwrap();
    }
    remove_lock_files(&store);
}

mod keyutils_records {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_too_large_for_one_key_changes_nothing() {
        super::a_record_too_large_for_one_key(KeyringBackend::Keyutils).await;
    }
}

/// Over the kernel's per-user key quota (`/proc/sys/kernel/keys/maxbytes`, 20 000 bytes by
/// default for a user other than root): the write that does not fit is refused with `TooLarge`
/// naming the setting, and every earlier record stays intact. Root's quota is far larger, so as
/// root the check runs in a worker process as the user `nobody` (`setpriv`), in a session
/// keyring of its own.
#[test]
fn keyutils_quota_refusal_keeps_earlier_records() {
    if std::env::var_os("MCP_AUTH_TEST_KEYRINGS").is_none() {
        panic!("{HOW}");
    }
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !root {
        quota_worker_body();
        return;
    }
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "keyctl",
            "session",
            "-",
        ])
        .arg(std::env::current_exe().unwrap())
        .args([
            "limits::quota_worker",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MCP_AUTH_KEYRING_QUOTA_WORKER", "1")
        .output()
        .expect("setpriv and keyctl are needed (apt-get install -y util-linux keyutils)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(out.status.success(), "worker failed: {stdout}\n{stderr}");
    assert!(
        stdout.contains("QUOTA-WORKER-OK"),
        "worker did not run: {stdout}\n{stderr}"
    );
}

/// The body of the quota check's worker process; a no-op when run directly.
#[test]
#[ignore = "worker process body, started by keyutils_quota_refusal_keeps_earlier_records"]
fn quota_worker() {
    if std::env::var_os("MCP_AUTH_KEYRING_QUOTA_WORKER").is_some() {
        quota_worker_body();
        println!("QUOTA-WORKER-OK");
    }
}

fn quota_worker_body() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = KeyringStore::open(
            KeyringBackend::Keyutils,
            KeyringOptions {
                namespace: Namespace::random("keyring-limits-quota"),
            },
        )
        .await
        .unwrap();
        let big = |n: usize| {
            TokenSet::new(SecretString::from(format!(
                "limits-access-{n}-{}",
                "q".repeat(1500)
            )))
        };
        let mut written = BTreeSet::new();
        let mut refused = None;
        // 20 000 bytes hold about ten of these; root's default 25 MB quota thousands.
        for n in 0..20_000 {
            match store
                .put_tokens(&token_key(n), &big(n), Expect::Absent)
                .await
            {
                Ok(_) => {
                    written.insert(token_key(n));
                }
                Err(e) => {
                    refused = Some((n, e));
                    break;
                }
            }
        }
        let (n, err) = refused.expect("the quota was never reached");
        eprintln!(
            "quota: {} records written; write {n} refused: {err}",
            written.len()
        );
        let StoreError::TooLarge { .. } = &err else {
            panic!("{err:?}");
        };
        let message = err.to_string();
        assert!(message.contains("/proc/sys/kernel/keys/"), "{message}");
        assert!(!message.contains("qqqq"));
        assert!(store.get_tokens(&token_key(n)).await.unwrap().is_none());
        assert_eq!(listed(&store).await, written);
        for key in &written {
            let got = store.get_tokens(key).await.unwrap().expect("record lost");
            assert!(
                got.value
                    .access_token
                    .expose_secret()
                    .starts_with("limits-access-")
            );
        }
        // An existing record cannot grow past the quota either, and keeps its value.
        let first = token_key(0);
        let before = store.get_tokens(&first).await.unwrap().unwrap();
        let grown = TokenSet::new(SecretString::from("g".repeat(20_000)));
        let err = store
            .put_tokens(&first, &grown, Expect::Any)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::TooLarge { .. }), "{err:?}");
        let after = store.get_tokens(&first).await.unwrap().unwrap();
        assert_eq!(after.version, before.version);
        for i in 0..ISSUERS {
            store.delete_issuer_tokens(&issuer(i)).await.unwrap();
        }
        assert!(listed(&store).await.is_empty());
        remove_lock_files(&store);
    });
}
