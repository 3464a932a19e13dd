//! `cargo xtask bench`: what users run. `McpAuth::cached_access_token()` on a valid stored token,
//! end to end (engine, store, decoded-record cache), over `MemoryStore` and `SqliteStore`, beside
//! the cheapest baseline of each: an in-memory map lookup of one server's token (what rmcp's
//! in-memory credential store does: one key, no issuer) and one prepared `SELECT` of the token
//! row. Medians of 10 000 calls timed inside a tokio task; three runs. A benchmark, not a test:
//! it asserts nothing about time (it does check that no HTTP request was made).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mcp_auth_core::record::RecordKey;
use mcp_auth_core::{
    CredentialStore, HttpPolicy, IssuerId, McpAuth, MemoryStore, ResourceUri, SecretString,
    TokenKey,
};
use mcp_auth_store_sqlite::SqliteStore;
use mcp_auth_testkit::{AuthServer, AuthServerConfig, McpServer, McpServerConfig};
use rusqlite::params;

const WARMUP: usize = 1_000;
const SAMPLES: usize = 10_000;
const RUNS: usize = 3;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Median of `SAMPLES` timed calls of `op` (after `WARMUP`), inside a task on a worker thread.
fn in_task<F, Fut>(rt: &tokio::runtime::Runtime, op: F) -> Duration
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    rt.block_on(rt.spawn(async move {
        let mut samples = Vec::with_capacity(SAMPLES);
        for i in 0..WARMUP + SAMPLES {
            let t = Instant::now();
            op().await;
            if i >= WARMUP {
                samples.push(t.elapsed());
            }
        }
        median(samples)
    }))
    .unwrap()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
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
    let stores: Vec<(&str, Arc<dyn CredentialStore>)> = vec![
        ("memory", Arc::new(MemoryStore::new())),
        ("sqlite", Arc::new(sqlite.clone())),
    ];
    let mut engines = Vec::new();
    for (name, store) in &stores {
        let auth = Arc::new(
            McpAuth::builder(Arc::clone(store))
                .http_policy(HttpPolicy::allowing_loopback())
                .build()
                .unwrap(),
        );
        rt.block_on(auth.access_token(&resource)).unwrap();
        engines.push((*name, auth));
    }
    as1.clear_requests();

    // Baselines.
    let map: Arc<Mutex<HashMap<String, SecretString>>> = Arc::new(Mutex::new(HashMap::from([(
        mcp.url(),
        SecretString::from("a".repeat(40)),
    )])));
    let key = TokenKey::new(IssuerId::new(as1.issuer()).unwrap(), resource.clone());
    let storage_key = RecordKey::Tokens(key).storage_key();
    let ns = sqlite.namespace().as_str().to_owned();
    let raw = Arc::new(Mutex::new(rusqlite::Connection::open(&path).unwrap()));
    {
        let raw = raw.lock().unwrap();
        raw.pragma_update(None, "journal_mode", "WAL").unwrap();
        raw.busy_timeout(Duration::from_secs(5)).unwrap();
    }

    println!(
        "\naccess_token() on a valid stored token, medians of {SAMPLES} calls (µs), {RUNS} runs"
    );
    println!(
        "{:<8} {:>22} {:>26} {:>8}",
        "store", "access_token()", "baseline", "ratio"
    );
    for run in 1..=RUNS {
        for (name, auth) in &engines {
            let auth = Arc::clone(auth);
            let r = resource.clone();
            let ours = in_task(&rt, move || {
                let auth = Arc::clone(&auth);
                let r = r.clone();
                async move {
                    std::hint::black_box(auth.cached_access_token(&r).await.unwrap());
                }
            });
            let (label, base) = if *name == "memory" {
                let map = Arc::clone(&map);
                let url = mcp.url();
                let base = in_task(&rt, move || {
                    let hit = map.lock().unwrap().get(&url).cloned();
                    std::hint::black_box(hit);
                    async {}
                });
                ("map lookup (rmcp-style)", base)
            } else {
                let raw = Arc::clone(&raw);
                let (ns, sk) = (ns.clone(), storage_key.clone());
                let base = in_task(&rt, move || {
                    let raw = raw.lock().unwrap();
                    let mut stmt = raw
                        .prepare_cached(
                            "SELECT value FROM records WHERE namespace = ?1 AND key = ?2",
                        )
                        .unwrap();
                    let v: Vec<u8> = stmt.query_row(params![ns, sk], |r| r.get(0)).unwrap();
                    std::hint::black_box(v);
                    async {}
                });
                ("one prepared SELECT", base)
            };
            println!(
                "{:<8} {:>22.3} {:>19} {:>6.3} {:>7.2}x   (run {run})",
                name,
                micros(ours),
                label,
                micros(base),
                micros(ours) / micros(base)
            );
        }
    }
    let requests = as1.requests().len();
    println!("HTTP requests to the authorization server during the timed calls: {requests}");
    assert_eq!(requests, 0, "a warm access_token() made an HTTP request");
}
