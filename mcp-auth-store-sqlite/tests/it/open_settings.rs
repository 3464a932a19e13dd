//! What every open leaves in place: WAL mode (restored when someone switched the file back to a
//! rollback journal), and `run_inline` on a current-thread runtime.
use mcp_auth_core::{IssuerId, ResourceUri, SecretString, TokenKey, TokenSet, TokenStore};
use mcp_auth_store_sqlite::{SqliteOptions, SqliteStore};

fn journal_mode(path: &std::path::Path) -> String {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_open_leaves_the_database_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    drop(SqliteStore::open(&path).await.unwrap());
    assert_eq!(journal_mode(&path), "wal");

    // Someone (a backup tool, a hand edit) switches the file to a rollback journal.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
    drop(conn);

    drop(SqliteStore::open(&path).await.unwrap());
    assert_eq!(journal_mode(&path), "wal");
}

#[tokio::test(flavor = "current_thread")]
async fn run_inline_serves_a_current_thread_runtime_without_a_blocking_thread() {
    let threads = || std::fs::read_dir("/proc/self/task").unwrap().count();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let before = threads();
    let store = SqliteStore::open_with(
        &path,
        SqliteOptions {
            run_inline: true,
            ..SqliteOptions::default()
        },
    )
    .await
    .unwrap();
    let key = TokenKey::new(
        IssuerId::new("https://as.example").unwrap(),
        ResourceUri::new("https://mcp.example/mcp").unwrap(),
    );
    store
        .put_tokens(
            &key,
            &TokenSet::new(SecretString::from("t")),
            mcp_auth_core::Expect::Absent,
        )
        .await
        .unwrap();
    assert!(store.get_tokens(&key).await.unwrap().is_some());
    // Every call ran on this thread: the runtime's blocking pool never started a thread (it
    // would keep it, idle, for ten seconds).
    assert_eq!(threads(), before);
}
