//! `cargo xtask bench` (or `cargo bench -p mcp-auth-store-sqlite`): get and put medians of
//! `SqliteStore` beside a raw rusqlite prepared statement doing the same read/write on the same
//! file, and their ratio. A benchmark, not a test: it asserts nothing about time.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use mcp_auth_core::record::{RecordKey, encode_tokens};
use mcp_auth_core::{Expect, IssuerId, ResourceUri, SecretString, TokenKey, TokenSet, TokenStore};
use mcp_auth_store_sqlite::SqliteStore;
use rusqlite::params;

const WARMUP: usize = 200;
const SAMPLES: usize = 3000;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    let key = TokenKey::new(
        IssuerId::new("https://auth.example.com").unwrap(),
        ResourceUri::new("https://mcp.example.com/mcp").unwrap(),
    );
    let mut tokens = TokenSet::new(SecretString::from("a".repeat(800)));
    tokens.refresh_token = Some(SecretString::from("r".repeat(400)));
    tokens.scopes = vec!["mcp:read".into(), "mcp:write".into()];

    let store = rt.block_on(SqliteStore::open(&path)).unwrap();
    rt.block_on(store.put_tokens(&key, &tokens, Expect::Any))
        .unwrap();

    // The raw baseline: same file, same pragmas, same row, prepared statements.
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.pragma_update(None, "journal_mode", "WAL").unwrap();
    raw.pragma_update(None, "synchronous", "FULL").unwrap();
    raw.busy_timeout(Duration::from_secs(5)).unwrap();
    let ns = store.namespace().as_str().to_owned();
    let storage_key = RecordKey::Tokens(key.clone()).storage_key();
    let bytes = encode_tokens(&key, &tokens).unwrap();

    let time = |f: &mut dyn FnMut()| {
        for _ in 0..WARMUP {
            f();
        }
        (0..SAMPLES)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect::<Vec<_>>()
    };

    // The store is timed where applications call it: inside a task on a runtime worker thread.
    let in_task = |op: &'static str| {
        let store = store.clone();
        let key = key.clone();
        let tokens = tokens.clone();
        rt.block_on(rt.spawn(async move {
            let mut samples = Vec::with_capacity(SAMPLES);
            for i in 0..WARMUP + SAMPLES {
                let t = Instant::now();
                match op {
                    "get" => {
                        store.get_tokens(&key).await.unwrap().unwrap();
                    }
                    _ => {
                        store.put_tokens(&key, &tokens, Expect::Any).await.unwrap();
                    }
                }
                if i >= WARMUP {
                    samples.push(t.elapsed());
                }
            }
            median(samples)
        }))
        .unwrap()
    };

    let store_get = in_task("get");
    let mut get_stmt = raw
        .prepare("SELECT value, version FROM records WHERE namespace = ?1 AND key = ?2")
        .unwrap();
    let raw_get = median(time(&mut || {
        let (value, _version): (Vec<u8>, i64) = get_stmt
            .query_row(params![ns, storage_key], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert!(!value.is_empty());
    }));
    drop(get_stmt);

    let store_put = median(time(&mut || {
        rt.block_on(store.put_tokens(&key, &tokens, Expect::Any))
            .unwrap();
    }));
    let mut put_stmt = raw
        .prepare(
            "INSERT INTO records (namespace, key, kind, issuer, value, version, expires_at)
             VALUES (?1, ?2, 'tokens', ?3, ?4, ?5, NULL)
             ON CONFLICT (namespace, key) DO UPDATE SET
               value = excluded.value, version = excluded.version",
        )
        .unwrap();
    // A new version on every write, as the store does: rewriting identical bytes would let
    // SQLite skip the page write (and the fsync), which is not the same write.
    let mut version = 0_i64;
    let raw_put = median(time(&mut || {
        version += 1;
        put_stmt
            .execute(params![
                ns,
                storage_key,
                key.issuer.as_str(),
                bytes,
                version
            ])
            .unwrap();
    }));

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "sqlite store vs raw rusqlite prepared statement ({SAMPLES} samples, medians, same file)"
    );
    println!("  op   store (us)   raw (us)   ratio");
    for (op, s, r) in [("get", store_get, raw_get), ("put", store_put, raw_put)] {
        println!(
            "  {op:<4} {:>10.1} {:>10.1} {:>7.2}x",
            us(s),
            us(r),
            us(s) / us(r)
        );
    }
}
