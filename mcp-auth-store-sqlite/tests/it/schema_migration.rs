//! A database written by schema version 1 (records in a `WITHOUT ROWID` table) opens with every
//! record, version and index intact in the version 2 layout (a rowid table).
use mcp_auth_core::record::{RecordKey, encode_tokens};
use mcp_auth_core::{
    Expect, IssuerId, Namespace, ResourceUri, SecretString, TokenKey, TokenSet, TokenStore,
};
use mcp_auth_store_sqlite::SqliteStore;

const V1: &str = "CREATE TABLE records (
        namespace  TEXT    NOT NULL,
        key        TEXT    NOT NULL,
        kind       TEXT    NOT NULL,
        issuer     TEXT,
        value      BLOB    NOT NULL,
        version    INTEGER NOT NULL,
        expires_at INTEGER,
        PRIMARY KEY (namespace, key)
     ) WITHOUT ROWID;
     CREATE INDEX records_by_issuer ON records (namespace, kind, issuer);
     CREATE TABLE leases (
        namespace     TEXT    NOT NULL,
        key           TEXT    NOT NULL,
        holder        TEXT    NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        PRIMARY KEY (namespace, key)
     ) WITHOUT ROWID;
     PRAGMA user_version = 1;";

fn key(i: usize) -> TokenKey {
    TokenKey::new(
        IssuerId::new("https://as.example.com").unwrap(),
        ResourceUri::new(format!("https://mcp{i}.example.com/mcp")).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_database_is_migrated_with_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    let namespace = Namespace::default().as_str().to_owned();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(V1).unwrap();
        for i in 0..50 {
            let k = key(i);
            let tokens = TokenSet::new(SecretString::from(format!("access-{i}")));
            conn.execute(
                "INSERT INTO records (namespace, key, kind, issuer, value, version)
                 VALUES (?1, ?2, 'tokens', ?3, ?4, ?5)",
                rusqlite::params![
                    namespace,
                    RecordKey::Tokens(k.clone()).storage_key(),
                    k.issuer.as_str(),
                    encode_tokens(&k, &tokens).unwrap(),
                    1000 + i64::try_from(i).unwrap(),
                ],
            )
            .unwrap();
        }
    }
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.list_tokens().await.unwrap().len(), 50);
    for i in 0..50 {
        let got = store.get_tokens(&key(i)).await.unwrap().unwrap();
        assert_eq!(
            mcp_auth_core::ExposeSecret::expose_secret(&got.value.access_token),
            format!("access-{i}")
        );
        assert_eq!(got.version.as_str(), format!("{:x}", 1000 + i));
    }
    // Compare-and-swap still works on migrated rows, and issuer deletion uses the index.
    let v = store.get_tokens(&key(0)).await.unwrap().unwrap().version;
    store
        .put_tokens(
            &key(0),
            &TokenSet::new(SecretString::from("new".to_owned())),
            Expect::Version(v),
        )
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 2);
    let sql: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'records'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!sql.contains("WITHOUT ROWID"), "{sql}");
    let indexes: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'records'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(indexes, 2, "the unique key index and records_by_issuer");
    drop(conn);
    assert_eq!(
        store
            .delete_issuer_tokens(&IssuerId::new("https://as.example.com").unwrap())
            .await
            .unwrap(),
        50
    );
}
