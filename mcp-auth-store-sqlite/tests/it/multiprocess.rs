//! SQLite across processes: the refresh lease is exclusive between processes, CAS never loses an
//! acknowledged write while writers are SIGKILLed, file modes, locks and damaged files.
//!
//! Worker processes are this test binary re-executed with `MCP_AUTH_SQLITE_WORKER` set, running
//! the ignored `worker` test.
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mcp_auth_core::{
    Expect, IssuerId, ResourceUri, SecretString, StoreError, TokenKey, TokenSet, TokenStore,
};
use mcp_auth_store_sqlite::{SqliteOptions, SqliteStore};

const KEYS: usize = 4;

fn token_key(i: usize) -> TokenKey {
    TokenKey::new(
        IssuerId::new("https://as.example").unwrap(),
        ResourceUri::new(format!("https://mcp.example/{i}")).unwrap(),
    )
}

fn tokens_with_counter(n: u64) -> TokenSet {
    let mut t = TokenSet::new(SecretString::from(format!("access-{n}")));
    t.extra.insert("n".into(), n.into());
    t
}

fn counter(t: &TokenSet) -> u64 {
    t.extra
        .get("n")
        .and_then(mcp_auth_core::JsonValue::as_u64)
        .unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn spawn_worker(mode: &str, db: &Path, extra_env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "multiprocess::worker",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("MCP_AUTH_SQLITE_WORKER", mode)
    .env("MCP_AUTH_SQLITE_DB", db)
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// Collects the lines a worker prints, tagged with the worker's index.
fn collect_lines(child: &mut Child, sink: Arc<Mutex<Vec<String>>>) -> std::thread::JoinHandle<()> {
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // libtest prints its own lines around the worker's; keep only the worker's.
            if let Some((_, payload)) = line.split_once("WORKER ") {
                sink.lock().unwrap().push(payload.to_owned());
            }
        }
    })
}

/// The body of every worker process; a no-op when run directly.
#[test]
#[ignore = "worker process body, started by the other tests"]
fn worker() {
    let Ok(mode) = std::env::var("MCP_AUTH_SQLITE_WORKER") else {
        return;
    };
    let db = std::env::var("MCP_AUTH_SQLITE_DB").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = SqliteStore::open_with(
            &db,
            SqliteOptions {
                busy_timeout: Duration::from_secs(10),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let mut out = std::io::stdout().lock();
        match mode.as_str() {
            "lease" => {
                let start: u64 = std::env::var("START_AT_MS").unwrap().parse().unwrap();
                while now_ms() < start {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let got = store
                    .try_acquire_refresh_lease(&token_key(0), Duration::from_secs(60))
                    .await
                    .unwrap();
                writeln!(out, "WORKER {}", if got.is_some() { "GOT" } else { "NONE" }).unwrap();
            }
            "hold" => {
                let got = store
                    .try_acquire_refresh_lease(&token_key(0), Duration::from_millis(1500))
                    .await
                    .unwrap();
                writeln!(out, "WORKER {}", if got.is_some() { "GOT" } else { "NONE" }).unwrap();
                out.flush().unwrap();
                std::thread::sleep(Duration::from_secs(30));
            }
            "cas" => {
                let seed = std::process::id() as usize;
                // Never outlive a failed parent by long.
                let deadline = Instant::now() + Duration::from_secs(30);
                for round in 0.. {
                    if Instant::now() > deadline {
                        break;
                    }
                    let i = (seed + round) % KEYS;
                    let key = token_key(i);
                    let current = match store.get_tokens(&key).await {
                        Ok(Some(v)) => v,
                        Ok(None) => panic!("seeded key missing"),
                        Err(e) if e.is_retryable() => continue,
                        Err(e) => panic!("read failed: {e}"),
                    };
                    let next = counter(&current.value) + 1;
                    match store
                        .put_tokens(
                            &key,
                            &tokens_with_counter(next),
                            Expect::Version(current.version),
                        )
                        .await
                    {
                        Ok(_) => {
                            writeln!(out, "WORKER ACK {i} {next}").unwrap();
                            out.flush().unwrap();
                        }
                        Err(StoreError::Conflict { .. }) => {}
                        Err(e) if e.is_retryable() => {}
                        Err(e) => panic!("write failed: {e}"),
                    }
                }
            }
            other => panic!("unknown worker mode {other}"),
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_lease_is_exclusive_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lease.db");
    SqliteStore::open(&db).await.unwrap();
    let start = now_ms() + 1500;
    let lines = Arc::new(Mutex::new(Vec::new()));
    let mut children = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..8 {
        let mut child = spawn_worker("lease", &db, &[("START_AT_MS", start.to_string())]);
        readers.push(collect_lines(&mut child, Arc::clone(&lines)));
        children.push(child);
    }
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    for r in readers {
        r.join().unwrap();
    }
    let lines = lines.lock().unwrap();
    assert_eq!(lines.len(), 8, "{lines:?}");
    assert_eq!(lines.iter().filter(|l| *l == "GOT").count(), 1, "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_of_a_killed_process_is_taken_over_after_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("takeover.db");
    let store = SqliteStore::open(&db).await.unwrap();
    let mut holder = spawn_worker("hold", &db, &[]);
    let line = BufReader::new(holder.stdout.take().unwrap())
        .lines()
        .map(Result::unwrap)
        .find(|l| l.contains("WORKER "))
        .unwrap();
    assert!(line.ends_with("WORKER GOT"), "{line}");
    holder.kill().unwrap(); // SIGKILL: no release
    holder.wait().unwrap();
    let acquired_at = Instant::now();
    assert!(
        store
            .try_acquire_refresh_lease(&token_key(0), Duration::from_secs(30))
            .await
            .unwrap()
            .is_none(),
        "the dead holder's lease was granted before it expired"
    );
    let mut taken = None;
    while acquired_at.elapsed() < Duration::from_secs(10) {
        if let Some(lease) = store
            .try_acquire_refresh_lease(&token_key(0), Duration::from_secs(30))
            .await
            .unwrap()
        {
            taken = Some(lease);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(taken.is_some(), "the expired lease was never taken over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_survives_sigkilled_writers_without_losing_acknowledged_updates() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fault.db");
    let store = SqliteStore::open(&db).await.unwrap();
    for i in 0..KEYS {
        store
            .put_tokens(&token_key(i), &tokens_with_counter(0), Expect::Absent)
            .await
            .unwrap();
    }
    let lines = Arc::new(Mutex::new(Vec::new()));
    let mut children: Vec<Child> = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..8 {
        let mut child = spawn_worker("cas", &db, &[]);
        readers.push(collect_lines(&mut child, Arc::clone(&lines)));
        children.push(child);
    }
    let started = Instant::now();
    let mut kills = 0;
    while started.elapsed() < Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let victim = kills % children.len();
        children[victim].kill().unwrap();
        children[victim].wait().unwrap();
        let mut fresh = spawn_worker("cas", &db, &[]);
        readers.push(collect_lines(&mut fresh, Arc::clone(&lines)));
        children[victim] = fresh;
        kills += 1;
    }
    for child in &mut children {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    for r in readers {
        r.join().unwrap();
    }

    let integrity: String = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");

    let lines = std::mem::take(&mut *lines.lock().unwrap());
    let mut acked: HashMap<usize, Vec<u64>> = HashMap::new();
    for line in lines.iter() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let ["ACK", i, n] = parts[..] {
            acked
                .entry(i.parse().unwrap())
                .or_default()
                .push(n.parse().unwrap());
        }
    }
    let total: usize = acked.values().map(Vec::len).sum();
    assert!(
        total > 50,
        "too few acknowledged updates to mean anything: {total}"
    );
    let reopened = SqliteStore::open(&db).await.unwrap();
    for (i, values) in &acked {
        let mut sorted = values.clone();
        sorted.sort_unstable();
        let before = sorted.len();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            before,
            "key {i}: two writers were acknowledged for the same version (lost update)"
        );
        let stored = counter(
            &reopened
                .get_tokens(&token_key(*i))
                .await
                .unwrap()
                .unwrap()
                .value,
        );
        let max = *sorted.last().unwrap();
        assert!(
            stored >= max,
            "key {i}: acknowledged update {max} is missing (stored {stored})"
        );
    }
    println!("{kills} writers killed, {total} acknowledged updates, integrity ok");
}

#[cfg(unix)]
#[tokio::test]
async fn database_file_is_0600_and_new_directory_0700() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nested/mcp-auth/credentials.db");
    let store = SqliteStore::open(&db).await.unwrap();
    store
        .put_tokens(&token_key(0), &tokens_with_counter(1), Expect::Any)
        .await
        .unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&db), 0o600, "database file mode");
    assert_eq!(mode(db.parent().unwrap()), 0o700, "directory mode");
    let wal = db.with_extension("db-wal");
    if wal.exists() {
        assert_eq!(mode(&wal) & 0o077, 0, "WAL file readable by others");
    }
}

#[tokio::test]
async fn write_lock_held_past_busy_timeout_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("busy.db");
    let store = SqliteStore::open_with(
        &db,
        SqliteOptions {
            busy_timeout: Duration::from_millis(200),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let blocker = rusqlite::Connection::open(&db).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = store
        .put_tokens(&token_key(0), &tokens_with_counter(1), Expect::Any)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Unavailable { .. }) && err.is_retryable(),
        "{err:?}"
    );
    blocker.execute_batch("ROLLBACK").unwrap();
    store
        .put_tokens(&token_key(0), &tokens_with_counter(1), Expect::Any)
        .await
        .unwrap();
}

#[tokio::test]
async fn damaged_file_and_newer_schema_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x42; 8192]).unwrap();
    let err = SqliteStore::open(&garbage).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert_eq!(
        std::fs::read(&garbage).unwrap(),
        vec![0x42; 8192],
        "damaged file was modified"
    );

    let newer = dir.path().join("newer.db");
    SqliteStore::open(&newer).await.unwrap();
    rusqlite::Connection::open(&newer)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = SqliteStore::open(&newer).await.unwrap_err();
    assert!(
        err.to_string().contains("newer")
            || std::error::Error::source(&err).is_some_and(|s| s.to_string().contains("upgrade")),
        "{err}"
    );
}

#[tokio::test]
async fn default_path_is_in_the_platform_data_dir() {
    let path = SqliteStore::default_path().unwrap();
    assert!(
        path.ends_with("mcp-auth/credentials.db"),
        "{}",
        path.display()
    );
}
