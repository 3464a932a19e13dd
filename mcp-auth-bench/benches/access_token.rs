//! `cargo xtask bench`: what users run. `McpAuth::cached_access_token()` on a valid stored token,
//! end to end (engine, store, decoded-record cache), beside the cheapest baseline of each store:
//!
//! * memory: an in-memory map lookup of one server's token (one key, no issuer), and rmcp 3.11's
//!   own `AuthorizationManager::get_access_token()` over its `InMemoryCredentialStore` (a token
//!   response stored as rmcp stores one, received now, `expires_in` 3600);
//! * SQLite: one prepared `SELECT` of the token row on the same file;
//! * Redis (when `MCP_AUTH_TEST_REDIS_URL` is set): one `HGET` round trip of the token record's
//!   value, with the `redis` crate's connection manager as the store uses.
//!
//! Medians of 10 000 calls timed inside a tokio task, in 10 slices of 1 000 alternating with the
//! baselines' slices (load from elsewhere weighs on both sides of a ratio alike); three runs;
//! ratios ours / baseline (and memory / rmcp), and what ours adds to the baseline in µs.
//!
//! The runtime has **one** worker thread. With two, a Redis round trip took either ~10 µs or
//! ~50–75 µs depending on which worker the scheduler had put the connection's driver task on,
//! and that placement stuck to a connection for a whole run: the store's connection and the
//! baseline's could sit in different modes, and the Redis ratio swung from 0.2× to 1.2× between
//! runs of the same code. With one worker both connections wait the same way (the worker sleeps
//! until the reply arrives, which on a small VM costs tens of µs of wake-up, the same on both
//! sides), so the ratio is stable; the added µs are the figure that does not depend on that
//! wake-up. The SQLite and memory rows measure the same with one worker as with two.
//!
//! Then a refresh storm per store: 1000 concurrent tasks calling
//! `access_token()` on an expired token (on a two-worker runtime of its own, so they race from
//! two threads), which must cost exactly one token request at the authorization server. Then encryption at rest: the same engine over each store plain and
//! wrapped in `mcp_auth_core::encryption::EncryptedStore` (XChaCha20-Poly1305), interleaved:
//! cached `access_token()` (goal: ≤ 1.1× the plain store), an uncached `get_tokens()` (one
//! decryption) and a `put_tokens()` of a DPoP-sized token set (one encryption).
//! Writes `target/bench/access_token.json`. A benchmark, not a test: it
//! asserts nothing about time (it does check that the warm calls made no HTTP request, and the
//! storm's single refresh).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mcp_auth_bench::{
    RUNS, SAMPLES, SLICES, Slice, Table, WARMUP, in_task, interleaved, median_f64, median_of,
    micros, ratio, samples_of,
};
use mcp_auth_core::encryption::{EncryptedStore, EncryptionKey, KeySet};
use mcp_auth_core::record::RecordKey;
use mcp_auth_core::{
    CredentialStore, Expect, ExposeSecret, HttpPolicy, IssuerId, McpAuth, MemoryStore, Namespace,
    ResourceUri, SecretString, Timestamp, TokenKey, TokenSet,
};
use mcp_auth_store_redis::RedisStore;
use mcp_auth_store_sqlite::SqliteStore;
use mcp_auth_testkit::{AuthServer, AuthServerConfig, Endpoint, McpServer, McpServerConfig};
use rmcp::transport::auth::{
    AuthorizationManager, CredentialStore as _, InMemoryCredentialStore, OAuthTokenResponse,
    StoredCredentials,
};
use rusqlite::params;
use serde_json::json;

/// Timed calls per slice (see `interleaved`), and untimed calls before them.
const SLICE: usize = SAMPLES / SLICES;
const SLICE_WARMUP: usize = WARMUP / SLICES;
/// Concurrent `access_token()` calls of the refresh storm.
const STORM_TASKS: usize = 1_000;

/// One store under test: its engine, and what the baselines need.
struct Backend {
    name: &'static str,
    store: Arc<dyn CredentialStore>,
    auth: Arc<McpAuth>,
}

/// One measurement of one run.
struct Row {
    run: usize,
    store: &'static str,
    baseline: &'static str,
    ours: Duration,
    base: Duration,
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        // One worker: see the module documentation.
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let redis_url = mcp_auth_bench::redis_url();
    let (as1, mcp) = rt.block_on(async {
        let as1 = AuthServer::start(AuthServerConfig::default())
            .await
            .unwrap();
        let mcp = McpServer::start(McpServerConfig {
            authorization_servers: vec![as1.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
        (as1, mcp)
    });
    let resource = ResourceUri::new(mcp.url()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    let sqlite = rt.block_on(SqliteStore::open(&path)).unwrap();
    // A namespace of our own: the server may be shared with other runs.
    let redis = redis_url.as_ref().map(|url| {
        rt.block_on(RedisStore::connect(url))
            .unwrap()
            .with_namespace(Namespace::random("bench"))
    });
    let mut stores: Vec<(&'static str, Arc<dyn CredentialStore>)> = vec![
        ("memory", Arc::new(MemoryStore::new())),
        ("sqlite", Arc::new(sqlite.clone())),
    ];
    if let Some(redis) = &redis {
        stores.push(("redis", Arc::new(redis.clone())));
    }
    let mut backends = Vec::new();
    for (name, store) in stores {
        let auth = Arc::new(
            McpAuth::builder(Arc::clone(&store))
                .http_policy(HttpPolicy::allowing_loopback())
                .authorizer(Arc::new(
                    mcp_auth_core::HeadlessAuthorizer::with_policy(
                        mcp_auth_core::HttpPolicy::allowing_loopback(),
                    )
                    .unwrap(),
                ))
                .build()
                .unwrap(),
        );
        // The one login (the testkit authorizes without a browser).
        rt.block_on(auth.access_token(&resource)).unwrap();
        backends.push(Backend { name, store, auth });
    }
    as1.clear_requests();

    // Baselines.
    let token_of = |b: &Backend| {
        rt.block_on(b.auth.cached_access_token(&resource))
            .unwrap()
            .expose_secret()
            .to_owned()
    };
    let map: Arc<Mutex<HashMap<String, SecretString>>> = Arc::new(Mutex::new(HashMap::from([(
        mcp.url(),
        SecretString::from(token_of(&backends[0])),
    )])));
    let rmcp = Arc::new(rt.block_on(rmcp_manager(&token_of(&backends[0]))));
    let key = TokenKey::new(IssuerId::new(as1.issuer()).unwrap(), resource.clone());
    let storage_key = RecordKey::Tokens(key.clone()).storage_key();
    let ns = sqlite.namespace().as_str().to_owned();
    let raw = Arc::new(Mutex::new(rusqlite::Connection::open(&path).unwrap()));
    {
        let raw = raw.lock().unwrap();
        raw.pragma_update(None, "journal_mode", "WAL").unwrap();
        raw.busy_timeout(Duration::from_secs(5)).unwrap();
    }
    // The store's layout: hash `{ver, data}` under `mcp-auth:{<namespace key>}:r:<record key>`.
    let redis_raw = redis.as_ref().map(|store| {
        let client = redis::Client::open(redis_url.as_deref().unwrap()).unwrap();
        let conn = rt
            .block_on(redis::aio::ConnectionManager::new(client))
            .unwrap();
        let record = format!(
            "mcp-auth:{{{}}}:r:{storage_key}",
            store.namespace().storage_key()
        );
        (conn, record)
    });
    if let Some((conn, record)) = &redis_raw {
        // The baseline reads what the store wrote: the record is where we think it is.
        let mut c = conn.clone();
        let data: Option<Vec<u8>> = rt
            .block_on(
                redis::cmd("HGET")
                    .arg(record)
                    .arg("data")
                    .query_async(&mut c),
            )
            .unwrap();
        assert!(data.is_some_and(|d| !d.is_empty()), "no record at {record}");
    }

    // Each store's engine and its baselines are measured alternately (interleaved slices), so
    // load from elsewhere on the machine weighs on both sides of a ratio alike.
    let mut rows = Vec::new();
    for run in 1..=RUNS {
        for b in &backends {
            let (auth, r) = (Arc::clone(&b.auth), resource.clone());
            let mut ours = move || -> Slice {
                let (auth, r) = (Arc::clone(&auth), r.clone());
                Box::pin(async move {
                    samples_of!(
                        SLICE_WARMUP,
                        SLICE,
                        auth.cached_access_token(&r).await.unwrap()
                    )
                })
            };
            let mut push = |baseline, ours, base| {
                rows.push(Row {
                    run,
                    store: b.name,
                    baseline,
                    ours,
                    base,
                });
            };
            match b.name {
                "memory" => {
                    let (map, url) = (Arc::clone(&map), mcp.url());
                    let mut lookup = move || -> Slice {
                        let (map, url) = (Arc::clone(&map), url.clone());
                        Box::pin(async move {
                            samples_of!(SLICE_WARMUP, SLICE, map.lock().unwrap().get(&url).cloned())
                        })
                    };
                    let rmcp = Arc::clone(&rmcp);
                    let mut rmcp = move || -> Slice {
                        let rmcp = Arc::clone(&rmcp);
                        Box::pin(async move {
                            samples_of!(SLICE_WARMUP, SLICE, rmcp.get_access_token().await.unwrap())
                        })
                    };
                    let m = interleaved(&rt, &mut [&mut ours, &mut lookup, &mut rmcp]);
                    push("map lookup", m[0], m[1]);
                    push("rmcp get_access_token()", m[0], m[2]);
                }
                "sqlite" => {
                    let raw = Arc::clone(&raw);
                    let (ns, sk) = (ns.clone(), storage_key.clone());
                    let mut select = move || -> Slice {
                        let raw = Arc::clone(&raw);
                        let (ns, sk) = (ns.clone(), sk.clone());
                        Box::pin(async move {
                            samples_of!(SLICE_WARMUP, SLICE, {
                                let raw = raw.lock().unwrap();
                                let mut stmt = raw
                                    .prepare_cached(
                                        "SELECT value FROM records WHERE namespace = ?1 AND key = ?2",
                                    )
                                    .unwrap();
                                stmt.query_row(params![ns, sk], |r| r.get::<_, Vec<u8>>(0))
                                    .unwrap()
                            })
                        })
                    };
                    let m = interleaved(&rt, &mut [&mut ours, &mut select]);
                    push("one prepared SELECT", m[0], m[1]);
                }
                _ => {
                    let (conn, record) = redis_raw.clone().unwrap();
                    let mut hget = move || -> Slice {
                        let (mut c, record) = (conn.clone(), record.clone());
                        Box::pin(async move {
                            samples_of!(SLICE_WARMUP, SLICE, {
                                let v: Vec<u8> = redis::cmd("HGET")
                                    .arg(&record)
                                    .arg("data")
                                    .query_async(&mut c)
                                    .await
                                    .unwrap();
                                v
                            })
                        })
                    };
                    let m = interleaved(&rt, &mut [&mut ours, &mut hget]);
                    push("one HGET round trip", m[0], m[1]);
                }
            }
        }
    }
    let requests = as1.requests().len();
    // What an empty body measures: the floor under the sub-microsecond rows.
    let floor = in_task(&rt, async { median_of!(()) });

    let mut table = Table::new(
        format!(
            "access_token() on a valid stored token: cached_access_token(), medians of {SAMPLES} \
             calls (µs), {RUNS} runs"
        ),
        &[
            "store",
            "run",
            "ours µs",
            "baseline",
            "baseline µs",
            "ours/baseline",
            "added µs",
        ],
    );
    for r in &rows {
        table.row(&[
            r.store.to_owned(),
            r.run.to_string(),
            format!("{:.3}", micros(r.ours)),
            r.baseline.to_owned(),
            format!("{:.3}", micros(r.base)),
            format!("{:.2}x", ratio(micros(r.ours), micros(r.base))),
            format!("{:+.3}", micros(r.ours) - micros(r.base)),
        ]);
    }
    table.print();

    // Medians of the runs.
    let mut pairs: Vec<(&'static str, &'static str)> = Vec::new();
    for r in &rows {
        if !pairs.contains(&(r.store, r.baseline)) {
            pairs.push((r.store, r.baseline));
        }
    }
    let mut summary = Table::new(
        format!("medians of the {RUNS} runs"),
        &[
            "store",
            "ours µs",
            "baseline",
            "baseline µs",
            "ours/baseline",
            "added µs",
        ],
    );
    let mut results = Vec::new();
    for (store, baseline) in pairs {
        let of = |f: fn(&Row) -> Duration| {
            let v: Vec<f64> = rows
                .iter()
                .filter(|r| r.store == store && r.baseline == baseline)
                .map(|r| micros(f(r)))
                .collect();
            median_f64(&v)
        };
        let (ours, base) = (of(|r| r.ours), of(|r| r.base));
        // The median of the runs' differences (not the difference of the medians).
        let added = median_f64(
            &rows
                .iter()
                .filter(|r| r.store == store && r.baseline == baseline)
                .map(|r| micros(r.ours) - micros(r.base))
                .collect::<Vec<_>>(),
        );
        summary.row(&[
            store.to_owned(),
            format!("{ours:.3}"),
            baseline.to_owned(),
            format!("{base:.3}"),
            format!("{:.2}x", ratio(ours, base)),
            format!("{added:+.3}"),
        ]);
        results.push(json!({
            "store": store,
            "baseline": baseline,
            "ours_us": ours,
            "baseline_us": base,
            "ratio": ratio(ours, base),
            "added_us": added,
            "runs": rows.iter().filter(|r| r.store == store && r.baseline == baseline)
                .map(|r| json!({"ours_us": micros(r.ours), "baseline_us": micros(r.base)}))
                .collect::<Vec<_>>(),
        }));
    }
    summary.print();
    let memory_vs_rmcp = results
        .iter()
        .find(|r| r["baseline"] == "rmcp get_access_token()")
        .map(|r| r["ratio"].as_f64().unwrap());
    if let Some(x) = memory_vs_rmcp {
        println!("memory / rmcp get_access_token(): {x:.2}x");
    }
    println!(
        "timer floor (median of an empty body): {:.3} µs",
        micros(floor)
    );
    println!("HTTP requests to the authorization server during the timed calls: {requests}");
    assert_eq!(requests, 0, "a warm access_token() made an HTTP request");

    // The refresh storm, on a runtime of its own with two workers: the tasks race each other
    // from two threads, not one (the timed calls above want one worker; a storm wants races).
    let storm_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut storm_table = Table::new(
        format!("refresh storm: {STORM_TASKS} concurrent access_token() on an expired token"),
        &["store", "token requests", "AS requests", "wall ms"],
    );
    let mut storms = Vec::new();
    for b in &backends {
        let old = token_of(b);
        expire(&rt, &*b.store, &key);
        as1.clear_requests();
        let auth = Arc::clone(&b.auth);
        let r = resource.clone();
        let (took, tokens) = in_task(&storm_rt, async move {
            let mut set = tokio::task::JoinSet::new();
            let t = Instant::now();
            for _ in 0..STORM_TASKS {
                let (auth, r) = (Arc::clone(&auth), r.clone());
                set.spawn(async move { auth.access_token(&r).await });
            }
            let mut tokens = Vec::with_capacity(STORM_TASKS);
            while let Some(done) = set.join_next().await {
                tokens.push(done.unwrap().unwrap().expose_secret().to_owned());
            }
            (t.elapsed(), tokens)
        });
        let token_requests = as1.count(Endpoint::Token);
        let all_requests = as1.requests().len();
        storm_table.row(&[
            b.name.to_owned(),
            token_requests.to_string(),
            all_requests.to_string(),
            format!("{:.1}", took.as_secs_f64() * 1e3),
        ]);
        assert_eq!(
            token_requests, 1,
            "{}: the storm made {token_requests} token requests",
            b.name
        );
        assert_eq!(tokens.len(), STORM_TASKS);
        assert!(
            tokens.iter().all(|t| *t == tokens[0] && *t != old),
            "{}: the storm did not hand every task the one refreshed token",
            b.name
        );
        storms.push(json!({
            "store": b.name,
            "tasks": STORM_TASKS,
            "token_requests": token_requests,
            "as_requests": all_requests,
            "wall_ms": took.as_secs_f64() * 1e3,
        }));
    }
    storm_table.print();

    let encryption = encryption_rows(
        &rt,
        &resource,
        &sqlite,
        redis.as_ref().zip(redis_url.as_deref()),
    );

    if let Some(redis) = &redis {
        let pattern = format!("mcp-auth:{{{}}}:*", redis.namespace().storage_key());
        rt.block_on(mcp_auth_bench::delete_redis_keys(
            redis_url.as_deref().unwrap(),
            &pattern,
        ))
        .unwrap();
    }
    mcp_auth_bench::report_json(
        "access_token",
        &json!({
            "benchmark": "access_token",
            "samples": SAMPLES,
            "runs": RUNS,
            "redis": redis_url.is_some(),
            "results": results,
            "memory_vs_rmcp": memory_vs_rmcp,
            "timer_floor_us": micros(floor),
            "as_requests_during_timed_calls": requests,
            "refresh_storm": storms,
            "encryption": encryption,
        }),
    );
}

/// rmcp's authorization manager holding a valid token in its in-memory credential store, as rmcp
/// keeps one after a login: the token response, received now, `expires_in` 3600. Building it
/// makes no network call (the URL is never contacted).
async fn rmcp_manager(token: &str) -> AuthorizationManager {
    let response: OAuthTokenResponse = serde_json::from_value(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": 3600,
        "refresh_token": "r".repeat(40),
        "scope": "mcp",
    }))
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let credentials =
        StoredCredentials::new("bench-client".to_owned(), Some(response), vec![], Some(now));
    let store = InMemoryCredentialStore::new();
    store.save(credentials).await.unwrap();
    let mut manager = AuthorizationManager::new("http://127.0.0.1:1/mcp")
        .await
        .unwrap();
    manager.set_credential_store(store);
    assert_eq!(manager.get_access_token().await.unwrap(), token);
    manager
}

/// Rewrites the stored token set as expired ten seconds ago (obtained an hour before that).
fn expire(rt: &tokio::runtime::Runtime, store: &dyn CredentialStore, key: &TokenKey) {
    rt.block_on(async {
        let mut tokens = store.get_tokens(key).await.unwrap().unwrap().value;
        let now = Timestamp::now().unix_seconds();
        tokens.expires_at = Some(Timestamp::from_unix_seconds(now - 10));
        tokens.obtained_at = Timestamp::from_unix_seconds(now - 3_610);
        store.put_tokens(key, &tokens, Expect::Any).await.unwrap();
    });
}

/// `put_tokens()` calls timed per slice on a durable store (each is a synced write), and on
/// the memory store.
const DURABLE_PUT_SLICE: usize = 50;
const MEMORY_PUT_SLICE: usize = SLICE;

/// A DPoP-bound token set of realistic sizes: a 1 KB JWT access token, a refresh token, the
/// P-256 PKCS#8 key (base64url) and an `id_token`.
fn realistic_tokens() -> TokenSet {
    let mut t = TokenSet::new(SecretString::from(format!("eyJ{}", "a".repeat(1_000))));
    t.token_type = "DPoP".to_owned();
    t.refresh_token = Some(SecretString::from("r".repeat(64)));
    t.dpop_key = Some(SecretString::from("k".repeat(184)));
    t.scopes = vec!["mcp:read".to_owned(), "mcp:write".to_owned()];
    t.expires_at = Some(Timestamp::from_unix_seconds(
        Timestamp::now().unix_seconds() + 3_600,
    ));
    t.extra
        .insert("id_token".to_owned(), "i".repeat(600).into());
    t
}

/// Encryption at rest: for each store kind, an engine over the plain store and one over an
/// `EncryptedStore` of the same kind (another namespace of the same memory map, SQLite file or
/// Redis server), each logged in once; their cached `access_token()`, an uncached `get_tokens()`
/// and a `put_tokens()` measured alternately. Prints a table; returns the JSON rows.
fn encryption_rows(
    rt: &tokio::runtime::Runtime,
    resource: &ResourceUri,
    sqlite: &SqliteStore,
    redis: Option<(&RedisStore, &str)>,
) -> serde_json::Value {
    let keys = KeySet::new(EncryptionKey::generate().unwrap());
    let memory = MemoryStore::new();
    let wrap = |inner: Arc<dyn CredentialStore>, ns: Namespace| -> Arc<dyn CredentialStore> {
        Arc::new(EncryptedStore::new(inner, ns, keys.clone()))
    };
    type Pair = (
        &'static str,
        Arc<dyn CredentialStore>,
        Arc<dyn CredentialStore>,
        usize,
    );
    let mut pairs: Vec<Pair> = Vec::new();
    {
        let (p, e) = (
            Namespace::random("bench-plain"),
            Namespace::random("bench-enc"),
        );
        pairs.push((
            "memory",
            Arc::new(memory.with_namespace(p)),
            wrap(Arc::new(memory.with_namespace(e.clone())), e),
            MEMORY_PUT_SLICE,
        ));
    }
    {
        let (p, e) = (
            Namespace::random("bench-plain"),
            Namespace::random("bench-enc"),
        );
        pairs.push((
            "sqlite",
            Arc::new(sqlite.with_namespace(p)),
            wrap(Arc::new(sqlite.with_namespace(e.clone())), e),
            DURABLE_PUT_SLICE,
        ));
    }
    let mut redis_namespaces = Vec::new();
    if let Some((redis, _)) = redis {
        let (p, e) = (
            Namespace::random("bench-plain"),
            Namespace::random("bench-enc"),
        );
        redis_namespaces.extend([p.clone(), e.clone()]);
        pairs.push((
            "redis",
            Arc::new(redis.with_namespace(p)),
            wrap(Arc::new(redis.with_namespace(e.clone())), e),
            DURABLE_PUT_SLICE,
        ));
    }
    let put_key = TokenKey::new(
        IssuerId::new("https://as.bench.example").unwrap(),
        ResourceUri::new("https://mcp.bench.example/put").unwrap(),
    );
    let tokens = Arc::new(realistic_tokens());

    struct EncRow {
        run: usize,
        store: &'static str,
        op: &'static str,
        plain: Duration,
        encrypted: Duration,
    }
    let mut rows = Vec::new();
    let mut engines = Vec::new();
    for (name, plain, enc, put_slice) in &pairs {
        let engine = |store: &Arc<dyn CredentialStore>| {
            let auth = Arc::new(
                McpAuth::builder(Arc::clone(store))
                    .http_policy(HttpPolicy::allowing_loopback())
                    .authorizer(Arc::new(
                        mcp_auth_core::HeadlessAuthorizer::with_policy(
                            mcp_auth_core::HttpPolicy::allowing_loopback(),
                        )
                        .unwrap(),
                    ))
                    .build()
                    .unwrap(),
            );
            rt.block_on(auth.access_token(resource)).unwrap();
            auth
        };
        engines.push((
            *name,
            engine(plain),
            engine(enc),
            Arc::clone(plain),
            Arc::clone(enc),
            *put_slice,
        ));
    }
    for run in 1..=RUNS {
        for (name, auth_plain, auth_enc, plain, enc, put_slice) in &engines {
            let cached = |auth: &Arc<McpAuth>| {
                let (auth, r) = (Arc::clone(auth), resource.clone());
                move || -> Slice {
                    let (auth, r) = (Arc::clone(&auth), r.clone());
                    Box::pin(async move {
                        samples_of!(
                            SLICE_WARMUP,
                            SLICE,
                            auth.cached_access_token(&r).await.unwrap()
                        )
                    })
                }
            };
            let (mut a, mut b) = (cached(auth_plain), cached(auth_enc));
            let m = interleaved(rt, &mut [&mut a, &mut b]);
            rows.push(EncRow {
                run,
                store: name,
                op: "cached access_token()",
                plain: m[0],
                encrypted: m[1],
            });

            let put = |store: &Arc<dyn CredentialStore>| {
                let (store, key, tokens, n) = (
                    Arc::clone(store),
                    put_key.clone(),
                    Arc::clone(&tokens),
                    *put_slice,
                );
                move || -> Slice {
                    let (store, key, tokens) =
                        (Arc::clone(&store), key.clone(), Arc::clone(&tokens));
                    Box::pin(async move {
                        samples_of!(
                            n / 10,
                            n,
                            store.put_tokens(&key, &tokens, Expect::Any).await.unwrap()
                        )
                    })
                }
            };
            let (mut a, mut b) = (put(plain), put(enc));
            let m = interleaved(rt, &mut [&mut a, &mut b]);
            rows.push(EncRow {
                run,
                store: name,
                op: "put_tokens()",
                plain: m[0],
                encrypted: m[1],
            });

            let get = |store: &Arc<dyn CredentialStore>| {
                let (store, key) = (Arc::clone(store), put_key.clone());
                move || -> Slice {
                    let (store, key) = (Arc::clone(&store), key.clone());
                    Box::pin(async move {
                        samples_of!(SLICE_WARMUP, SLICE, store.get_tokens(&key).await.unwrap())
                    })
                }
            };
            let (mut a, mut b) = (get(plain), get(enc));
            let m = interleaved(rt, &mut [&mut a, &mut b]);
            rows.push(EncRow {
                run,
                store: name,
                op: "get_tokens() (uncached)",
                plain: m[0],
                encrypted: m[1],
            });
        }
    }
    // The encrypted engine served the right token, and the plain store never saw a seal.
    for (name, _, auth_enc, _, enc, _) in &engines {
        let t = rt
            .block_on(enc.get_tokens(&put_key))
            .unwrap()
            .unwrap()
            .value;
        assert_eq!(
            t.access_token.expose_secret(),
            tokens.access_token.expose_secret(),
            "{name}"
        );
        let token = rt.block_on(auth_enc.cached_access_token(resource)).unwrap();
        assert!(!token.expose_secret().starts_with("mcpenc"), "{name}");
    }

    let mut summary = Table::new(
        format!("encryption at rest: EncryptedStore / plain store, medians of {RUNS} runs (µs)"),
        &[
            "store",
            "operation",
            "plain µs",
            "encrypted µs",
            "encrypted/plain",
        ],
    );
    let mut ops: Vec<(&'static str, &'static str)> = Vec::new();
    for r in &rows {
        if !ops.contains(&(r.store, r.op)) {
            ops.push((r.store, r.op));
        }
    }
    let mut results = Vec::new();
    for (store, op) in ops {
        let of = |f: fn(&EncRow) -> Duration| {
            let v: Vec<f64> = rows
                .iter()
                .filter(|r| r.store == store && r.op == op)
                .map(|r| micros(f(r)))
                .collect();
            median_f64(&v)
        };
        let (plain, encrypted) = (of(|r| r.plain), of(|r| r.encrypted));
        summary.row(&[
            store.to_owned(),
            op.to_owned(),
            format!("{plain:.3}"),
            format!("{encrypted:.3}"),
            format!("{:.2}x", ratio(encrypted, plain)),
        ]);
        results.push(json!({
            "store": store,
            "operation": op,
            "plain_us": plain,
            "encrypted_us": encrypted,
            "ratio": ratio(encrypted, plain),
            "runs": rows.iter().filter(|r| r.store == store && r.op == op)
                .map(|r| json!({"run": r.run, "plain_us": micros(r.plain), "encrypted_us": micros(r.encrypted)}))
                .collect::<Vec<_>>(),
        }));
    }
    summary.print();
    if let Some((_, url)) = redis {
        for ns in &redis_namespaces {
            let pattern = format!("mcp-auth:{{{}}}:*", ns.storage_key());
            rt.block_on(mcp_auth_bench::delete_redis_keys(url, &pattern))
                .unwrap();
        }
    }
    json!(results)
}
