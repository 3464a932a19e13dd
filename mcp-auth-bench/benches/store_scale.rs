//! `cargo xtask bench`: does a store slow down as it fills? `get_tokens` and `put_tokens` medians
//! (a random one of the stored token sets each call) with 1 000 and with 100 000 token sets in
//! the store: SQLite, Redis when `MCP_AUTH_TEST_REDIS_URL` is set, and a Redis Cluster when
//! `MCP_AUTH_TEST_REDIS_CLUSTER_URL` is set (plus how 10 000 namespaces, each written and read
//! through the cluster, spread over its masters). The ratio 100k / 1k of get
//! is the figure to watch (goal: at most 1.2×). Beside each store's get, the raw client reading
//! the same random record (one prepared `SELECT value, version`; one `HMGET ver data`), measured
//! in alternating slices with it: whether a slowdown is the store's or the database's.
//!
//! The stores are filled fast and in their own layout, records encoded by
//! `mcp_auth_core::record::encode_tokens`: SQLite in one rusqlite transaction into the `records`
//! table (then checkpointed, so reads do not go through a 100 MB WAL), Redis with pipelined
//! `HSET {ver, data}` + `SADD` to the namespace index, as the store writes. Gets: medians of
//! 10 000 calls; puts (a durable write each, `synchronous=FULL` on SQLite): medians of 1 000
//! calls; three runs. Writes `target/bench/store_scale.json`. A benchmark, not a test: it asserts
//! nothing about time (it checks every get finds its record).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mcp_auth_bench::{
    RUNS, Rng, SAMPLES, SLICES, Slice, Table, WARMUP, in_task, interleaved, median_f64, median_of,
    micros, ratio, samples_of,
};
use mcp_auth_core::record::{RecordKey, encode_tokens};
use mcp_auth_core::{
    CredentialStore, Expect, IssuerId, Namespace, ResourceUri, SecretString, TokenKey, TokenSet,
    TokenStore,
};
use mcp_auth_store_redis::RedisStore;
use mcp_auth_store_sqlite::SqliteStore;
use rusqlite::params;
use serde_json::json;

const SIZES: [usize; 2] = [1_000, 100_000];
const PUT_WARMUP: usize = 100;
const PUT_SAMPLES: usize = 1_000;
/// Namespaces of the many-tenants spread over a Redis Cluster's masters.
const SPREAD_NAMESPACES: usize = 10_000;

/// Records per Redis pipeline while filling.
const PIPELINE: usize = 1_000;
/// Timed gets per slice, and untimed ones before them.
const SLICE: usize = SAMPLES / SLICES;
const SLICE_WARMUP: usize = WARMUP / SLICES;
/// Distinct issuers the records spread over.
const ISSUERS: usize = 100;

fn key(i: usize) -> TokenKey {
    TokenKey::new(
        IssuerId::new(format!("https://auth{}.example.com", i % ISSUERS)).unwrap(),
        ResourceUri::new(format!("https://mcp{i}.example.com/mcp")).unwrap(),
    )
}

/// A realistic token set: an 800-byte access token (a JWT's size), a refresh token, scopes.
fn tokens(i: usize) -> TokenSet {
    let mut t = TokenSet::new(SecretString::from(format!("{i:08}{}", "a".repeat(792))));
    t.refresh_token = Some(SecretString::from(format!("{i:08}{}", "r".repeat(392))));
    t.scopes = vec!["mcp:read".into(), "mcp:write".into()];
    t
}

/// A store filled with `n` token sets.
struct Filled {
    backend: &'static str,
    n: usize,
    store: Arc<dyn CredentialStore>,
    keys: Arc<Vec<TokenKey>>,
    /// The raw client, and where it finds each record (same order as `keys`).
    raw: Raw,
    raw_keys: Arc<Vec<String>>,
    /// Redis: the server holding the namespace and its key prefix, to delete it afterwards.
    redis_prefix: Option<(String, String)>,
}

/// The raw client of a backend.
#[derive(Clone)]
enum Raw {
    /// A rusqlite connection to the same file (`namespace`, `key` columns).
    Sqlite {
        conn: Arc<Mutex<rusqlite::Connection>>,
        namespace: String,
    },
    /// A connection to the same server (full record keys).
    Redis(redis::aio::MultiplexedConnection),
}

/// A new SQLite file (created by the store: its schema) filled in one transaction.
fn fill_sqlite(rt: &tokio::runtime::Runtime, dir: &Path, n: usize) -> Filled {
    let path = dir.join(format!("scale-{n}.db"));
    let store = rt.block_on(SqliteStore::open(&path)).unwrap();
    let ns = store.namespace().as_str().to_owned();
    let mut conn = rusqlite::Connection::open(&path).unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO records (namespace, key, kind, issuer, value, version)
                 VALUES (?1, ?2, 'tokens', ?3, ?4, ?5)",
            )
            .unwrap();
        for i in 0..n {
            let k = key(i);
            let bytes = encode_tokens(&k, &tokens(i)).unwrap();
            insert
                .execute(params![
                    ns,
                    RecordKey::Tokens(k.clone()).storage_key(),
                    k.issuer.as_str(),
                    bytes,
                    i as i64 + 1
                ])
                .unwrap();
        }
    }
    tx.commit().unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    Filled {
        backend: "sqlite",
        n,
        store: Arc::new(store),
        keys: Arc::new((0..n).map(key).collect()),
        raw: Raw::Sqlite {
            conn: Arc::new(Mutex::new(conn)),
            namespace: ns,
        },
        raw_keys: Arc::new(
            (0..n)
                .map(|i| RecordKey::Tokens(key(i)).storage_key())
                .collect(),
        ),
        redis_prefix: None,
    }
}

/// A new namespace of the Redis server filled with pipelined writes in the store's format: hash
/// `{ver, data}` under `mcp-auth:{<namespace key>}:r:<record key>`, the record key in the
/// namespace's index set.
fn fill_redis(rt: &tokio::runtime::Runtime, url: &str, n: usize) -> Filled {
    let store = rt
        .block_on(RedisStore::connect(url))
        .unwrap()
        .with_namespace(Namespace::random(&format!("bench-scale-{n}")));
    fill_redis_at(rt, store, url, n, "redis")
}

/// As [`fill_redis`] on a Redis Cluster (`redis+cluster://` URL): the store goes through the
/// cluster connection; the fill and the raw client talk to the master owning the namespace's
/// slot, as a cluster-aware raw client would.
fn fill_redis_cluster(rt: &tokio::runtime::Runtime, cluster_url: &str, n: usize) -> Filled {
    let store = rt
        .block_on(RedisStore::connect(cluster_url))
        .unwrap()
        .with_namespace(Namespace::random(&format!("bench-scale-cluster-{n}")));
    let index = format!("mcp-auth:{{{}}}:index", store.namespace().storage_key());
    let masters = rt.block_on(cluster_masters(cluster_url));
    let slot = rt.block_on(keyslots(cluster_url, std::slice::from_ref(&index)))[0];
    let master = masters
        .iter()
        .find(|(range, _)| range.contains(&slot))
        .map(|(_, addr)| format!("redis://{addr}/"))
        .expect("no master serves the namespace's slot");
    fill_redis_at(rt, store, &master, n, "redis-cluster")
}

/// The first seed node of a `redis+cluster://h1:p1,h2:p2/` URL, as a `redis://` URL.
fn first_seed(cluster_url: &str) -> String {
    let hosts = cluster_url.trim_start_matches("redis+cluster://");
    let first = hosts.split(',').next().unwrap().trim_end_matches('/');
    format!("redis://{first}/")
}

/// `CLUSTER SLOTS`: each slot range with its master's `host:port`.
async fn cluster_masters(cluster_url: &str) -> Vec<(std::ops::RangeInclusive<u16>, String)> {
    let client = redis::Client::open(first_seed(cluster_url)).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let slots: Vec<(u16, u16, (String, u16))> = {
        let raw: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await
            .unwrap();
        raw.into_iter()
            .map(|entry| {
                let start: u16 = redis::from_redis_value(entry[0].clone()).unwrap();
                let end: u16 = redis::from_redis_value(entry[1].clone()).unwrap();
                let node: Vec<redis::Value> = redis::from_redis_value(entry[2].clone()).unwrap();
                let host: String = redis::from_redis_value(node[0].clone()).unwrap();
                let port: u16 = redis::from_redis_value(node[1].clone()).unwrap();
                (start, end, (host, port))
            })
            .collect()
    };
    slots
        .into_iter()
        .map(|(a, b, (host, port))| (a..=b, format!("{host}:{port}")))
        .collect()
}

/// `CLUSTER KEYSLOT` of every key, pipelined.
async fn keyslots(cluster_url: &str, keys: &[String]) -> Vec<u16> {
    let client = redis::Client::open(first_seed(cluster_url)).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd("CLUSTER").arg("KEYSLOT").arg(key);
    }
    pipe.query_async(&mut conn).await.unwrap()
}

/// Many tenants: one token set in each of `n` namespaces written through the cluster store, and
/// how many namespaces each master holds. Returns (per master: address, namespaces).
fn cluster_spread(
    rt: &tokio::runtime::Runtime,
    cluster_url: &str,
    n: usize,
) -> Vec<(String, usize)> {
    let run = Namespace::random("bench-spread");
    let store = rt.block_on(RedisStore::connect(cluster_url)).unwrap();
    let namespaces: Vec<Namespace> = (0..n)
        .map(|i| Namespace::new(format!("{}-{i}", run.as_str())).unwrap())
        .collect();
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for part in namespaces.chunks(n.div_ceil(8)) {
            let (store, part) = (store.clone(), part.to_vec());
            tasks.push(tokio::spawn(async move {
                for ns in part {
                    store
                        .with_namespace(ns)
                        .put_tokens(&key(0), &tokens(0), Expect::Any)
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let wrote = started.elapsed();
    let masters = rt.block_on(cluster_masters(cluster_url));
    let indexes: Vec<String> = namespaces
        .iter()
        .map(|ns| format!("mcp-auth:{{{}}}:index", ns.storage_key()))
        .collect();
    let mut per_master: std::collections::BTreeMap<String, usize> =
        masters.iter().map(|(_, a)| (a.clone(), 0)).collect();
    for slot in rt.block_on(keyslots(cluster_url, &indexes)) {
        let (_, addr) = masters.iter().find(|(r, _)| r.contains(&slot)).unwrap();
        *per_master.get_mut(addr).unwrap() += 1;
    }
    // Every namespace reads back through the cluster, then is deleted.
    rt.block_on(async {
        for ns in &namespaces {
            let tenant = store.with_namespace(ns.clone());
            assert!(tenant.get_tokens(&key(0)).await.unwrap().is_some());
            let _ = tenant.delete_issuer_tokens(&key(0).issuer).await.unwrap();
        }
    });
    // The writes' receipts (`…:op:…`) expire on their own within a minute or two.
    println!(
        "wrote one token set in each of {n} namespaces through the cluster in {:.1} s",
        wrote.as_secs_f64()
    );
    per_master.into_iter().collect()
}

/// Fills `store`'s namespace on the server at `url` (the server that holds it).
fn fill_redis_at(
    rt: &tokio::runtime::Runtime,
    store: RedisStore,
    url: &str,
    n: usize,
    backend: &'static str,
) -> Filled {
    let base = format!("mcp-auth:{{{}}}:", store.namespace().storage_key());
    let conn = rt.block_on(async {
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        for chunk in (0..n).collect::<Vec<_>>().chunks(PIPELINE) {
            let mut pipe = redis::pipe();
            for &i in chunk {
                let k = key(i);
                let member = RecordKey::Tokens(k.clone()).storage_key();
                let bytes = encode_tokens(&k, &tokens(i)).unwrap();
                pipe.cmd("HSET")
                    .arg(format!("{base}r:{member}"))
                    .arg("ver")
                    .arg(format!("{:024x}", i + 1))
                    .arg("data")
                    .arg(bytes)
                    .ignore();
                pipe.cmd("SADD")
                    .arg(format!("{base}index"))
                    .arg(member)
                    .ignore();
            }
            pipe.query_async::<()>(&mut conn).await.unwrap();
        }
        conn
    });
    Filled {
        backend,
        n,
        store: Arc::new(store),
        keys: Arc::new((0..n).map(key).collect()),
        raw: Raw::Redis(conn),
        raw_keys: Arc::new(
            (0..n)
                .map(|i| format!("{base}r:{}", RecordKey::Tokens(key(i)).storage_key()))
                .collect(),
        ),
        redis_prefix: Some((url.to_owned(), base)),
    }
}

/// One run's medians: the store's get and the raw client's (interleaved), and the store's put.
struct Measured {
    get: Duration,
    raw_get: Duration,
    put: Duration,
}

fn measure(rt: &tokio::runtime::Runtime, f: &Filled, seed: u64) -> Measured {
    let n = f.n;
    let (store, keys) = (Arc::clone(&f.store), Arc::clone(&f.keys));
    let mut slice = 0;
    let mut get = move || -> Slice {
        slice += 1;
        let (store, keys) = (Arc::clone(&store), Arc::clone(&keys));
        let mut rng = Rng::new(seed ^ slice);
        Box::pin(async move {
            samples_of!(
                SLICE_WARMUP,
                SLICE,
                store
                    .get_tokens(&keys[rng.below(n)])
                    .await
                    .unwrap()
                    .expect("a stored record is missing")
            )
        })
    };
    let (raw, raw_keys) = (f.raw.clone(), Arc::clone(&f.raw_keys));
    let mut slice = 0;
    let mut raw_get = move || -> Slice {
        slice += 1;
        let (raw, raw_keys) = (raw.clone(), Arc::clone(&raw_keys));
        let mut rng = Rng::new(seed ^ slice);
        Box::pin(async move {
            match raw {
                Raw::Sqlite { conn, namespace } => samples_of!(SLICE_WARMUP, SLICE, {
                    let conn = conn.lock().unwrap();
                    let mut stmt = conn
                        .prepare_cached(
                            "SELECT value, version FROM records WHERE namespace = ?1 AND key = ?2",
                        )
                        .unwrap();
                    stmt.query_row(params![namespace, raw_keys[rng.below(n)]], |r| {
                        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
                    })
                    .unwrap()
                }),
                Raw::Redis(mut conn) => samples_of!(SLICE_WARMUP, SLICE, {
                    let (ver, data): (Option<String>, Option<Vec<u8>>) = redis::cmd("HMGET")
                        .arg(&raw_keys[rng.below(n)])
                        .arg("ver")
                        .arg("data")
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    assert!(
                        ver.is_some() && data.is_some(),
                        "a stored record is missing"
                    );
                    data
                }),
            }
        })
    };
    let m = interleaved(rt, &mut [&mut get, &mut raw_get]);
    let (store, keys) = (Arc::clone(&f.store), Arc::clone(&f.keys));
    let put = in_task(rt, async move {
        let mut rng = Rng::new(seed ^ 0x5eed);
        let t = tokens(n + 1);
        median_of!(
            PUT_WARMUP,
            PUT_SAMPLES,
            store
                .put_tokens(&keys[rng.below(n)], &t, Expect::Any)
                .await
                .unwrap()
        )
    });
    Measured {
        get: m[0],
        raw_get: m[1],
        put,
    }
}

fn main() {
    // One worker, as in `access_token`: with two, a Redis round trip was ~10 µs or ~50–75 µs
    // depending on which worker held the connection's driver task, which made the 100k / 1k
    // ratio a coin toss between runs.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let redis_url = mcp_auth_bench::redis_url();
    let dir = tempfile::tempdir().unwrap();
    let mut filled = Vec::new();
    for n in SIZES {
        let t = Instant::now();
        filled.push(fill_sqlite(&rt, dir.path(), n));
        println!(
            "filled sqlite with {n} token sets in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    if let Some(url) = &redis_url {
        for n in SIZES {
            let t = Instant::now();
            filled.push(fill_redis(&rt, url, n));
            println!(
                "filled redis with {n} token sets in {:.1} s",
                t.elapsed().as_secs_f64()
            );
        }
    }
    // A Redis Cluster (3 masters, 1 replica each; `cargo xtask bench` starts one).
    let cluster_url = std::env::var("MCP_AUTH_TEST_REDIS_CLUSTER_URL")
        .ok()
        .filter(|u| !u.trim().is_empty());
    let mut spread = Vec::new();
    match &cluster_url {
        Some(url) => {
            for n in SIZES {
                let t = Instant::now();
                filled.push(fill_redis_cluster(&rt, url, n));
                println!(
                    "filled the redis cluster with {n} token sets in {:.1} s",
                    t.elapsed().as_secs_f64()
                );
            }
            spread = cluster_spread(&rt, url, SPREAD_NAMESPACES);
            let mut table = Table::new(
                format!("{SPREAD_NAMESPACES} namespaces over the cluster's masters"),
                &["master", "namespaces", "share"],
            );
            for (addr, count) in &spread {
                table.row(&[
                    addr.clone(),
                    count.to_string(),
                    format!("{:.1} %", 100.0 * *count as f64 / SPREAD_NAMESPACES as f64),
                ]);
            }
            table.print();
        }
        None => println!(
            "note: MCP_AUTH_TEST_REDIS_CLUSTER_URL is not set: the Redis Cluster rows are skipped \
             (`cargo xtask bench` starts a cluster and sets it)"
        ),
    }

    // gets[i][run], raw_gets[i][run], puts[i][run] in µs.
    let mut gets = vec![Vec::new(); filled.len()];
    let mut raw_gets = vec![Vec::new(); filled.len()];
    let mut puts = vec![Vec::new(); filled.len()];
    for run in 0..RUNS {
        for (i, f) in filled.iter().enumerate() {
            let m = measure(&rt, f, 0x1234_5678 + run as u64 * 7919 + i as u64 * 104_729);
            gets[i].push(micros(m.get));
            raw_gets[i].push(micros(m.raw_get));
            puts[i].push(micros(m.put));
        }
    }

    let runs = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let mut table = Table::new(
        format!(
            "store get and put by size: medians of {SAMPLES} gets and {PUT_SAMPLES} puts (µs), \
             median of {RUNS} runs (each run)"
        ),
        &[
            "store",
            "records",
            "get µs",
            "get runs",
            "raw get µs",
            "get/raw",
            "put µs",
            "put runs",
        ],
    );
    let mut results = Vec::new();
    for (i, f) in filled.iter().enumerate() {
        table.row(&[
            f.backend.to_owned(),
            f.n.to_string(),
            format!("{:.2}", median_f64(&gets[i])),
            runs(&gets[i]),
            format!("{:.2}", median_f64(&raw_gets[i])),
            format!(
                "{:.2}x",
                ratio(median_f64(&gets[i]), median_f64(&raw_gets[i]))
            ),
            format!("{:.1}", median_f64(&puts[i])),
            runs(&puts[i]),
        ]);
        results.push(json!({
            "store": f.backend,
            "records": f.n,
            "get_us": median_f64(&gets[i]),
            "raw_get_us": median_f64(&raw_gets[i]),
            "put_us": median_f64(&puts[i]),
            "get_runs_us": gets[i],
            "raw_get_runs_us": raw_gets[i],
            "put_runs_us": puts[i],
        }));
    }
    table.print();
    let mut ratios = Table::new(
        format!(
            "{}k / {}k records (goal for get: ≤ 1.2x)",
            SIZES[1] / 1000,
            SIZES[0] / 1000
        ),
        &[
            "store",
            "get ratio",
            "goal met",
            "raw get ratio",
            "put ratio",
        ],
    );
    let mut scale = Vec::new();
    for (i, stores) in filled.chunks(2).enumerate() {
        let (g, r, p) = (&gets[2 * i..], &raw_gets[2 * i..], &puts[2 * i..]);
        let get_ratio = ratio(median_f64(&g[1]), median_f64(&g[0]));
        let raw_ratio = ratio(median_f64(&r[1]), median_f64(&r[0]));
        let put_ratio = ratio(median_f64(&p[1]), median_f64(&p[0]));
        ratios.row(&[
            stores[0].backend.to_owned(),
            format!("{get_ratio:.2}x"),
            if get_ratio <= 1.2 { "yes" } else { "no" }.to_owned(),
            format!("{raw_ratio:.2}x"),
            format!("{put_ratio:.2}x"),
        ]);
        scale.push(json!({
            "store": stores[0].backend,
            "get_ratio": get_ratio,
            "get_goal_met": get_ratio <= 1.2,
            "raw_get_ratio": raw_ratio,
            "put_ratio": put_ratio,
        }));
    }
    ratios.print();

    for (url, prefix) in filled.iter().filter_map(|f| f.redis_prefix.as_ref()) {
        rt.block_on(mcp_auth_bench::delete_redis_keys(
            url,
            &format!("{prefix}*"),
        ))
        .unwrap();
    }
    mcp_auth_bench::report_json(
        "store_scale",
        &json!({
            "benchmark": "store_scale",
            "sizes": SIZES,
            "get_samples": SAMPLES,
            "put_samples": PUT_SAMPLES,
            "runs": RUNS,
            "redis": redis_url.is_some(),
            "redis_cluster": cluster_url.is_some(),
            "cluster_spread": spread
                .iter()
                .map(|(master, namespaces)| json!({"master": master, "namespaces": namespaces}))
                .collect::<Vec<_>>(),
            "results": results,
            "ratio_largest_to_smallest": scale,
        }),
    );
}
