//! Deleted and replaced secrets leave no bytes in the database file or its `-wal` (issue 10:
//! `PRAGMA secure_delete`, checkpoints after writes of secrets), and a database file readable
//! by others is tightened to 0600 when opened.
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use mcp_auth_core::{Expect, IssuerId, ResourceUri, SecretString, TokenKey, TokenSet, TokenStore};
use mcp_auth_store_sqlite::SqliteStore;

fn key() -> TokenKey {
    TokenKey::new(
        IssuerId::new("https://as.example").unwrap(),
        ResourceUri::new("https://mcp.example/mcp").unwrap(),
    )
}

fn tokens(tag: &str) -> TokenSet {
    let mut t = TokenSet::new(SecretString::from(format!("ACCESS-{tag}-0123456789abcdef")));
    t.refresh_token = Some(SecretString::from(format!(
        "REFRESH-{tag}-0123456789abcdef"
    )));
    t
}

/// Every file of the database (main, `-wal`, `-shm`) that contains `needle`.
fn files_containing(db: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", db.display());
        if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        {
            found.push(path);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_and_logout_leave_no_token_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let store = SqliteStore::open(&db).await.unwrap();
    let v1 = store
        .put_tokens(&key(), &tokens("OLD"), Expect::Absent)
        .await
        .unwrap();
    // Rotation: the old refresh token is replaced.
    store
        .put_tokens(&key(), &tokens("NEW"), Expect::Version(v1))
        .await
        .unwrap();
    // A few more writes, as a running client makes.
    for i in 0..3 {
        let current = store.get_tokens(&key()).await.unwrap().unwrap();
        let mut t = tokens("NEW");
        t.scopes = vec![format!("s{i}")];
        store
            .put_tokens(&key(), &t, Expect::Version(current.version))
            .await
            .unwrap();
    }
    for secret in ["ACCESS-OLD", "REFRESH-OLD"] {
        assert_eq!(
            files_containing(&db, secret),
            Vec::<String>::new(),
            "a rotated-away {secret} is still on disk"
        );
    }
    // Logout.
    assert!(store.delete_tokens(&key(), Expect::Any).await.unwrap());
    for secret in ["ACCESS-NEW", "REFRESH-NEW"] {
        assert_eq!(
            files_containing(&db, secret),
            Vec::<String>::new(),
            "a logged-out {secret} is still on disk"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_readable_by_others_is_tightened_to_0600() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let store = SqliteStore::open(&db).await.unwrap();
    store
        .put_tokens(&key(), &tokens("A"), Expect::Absent)
        .await
        .unwrap();
    drop(store);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = SqliteStore::open(&db).await.unwrap();
    assert!(store.get_tokens(&key()).await.unwrap().is_some());
    let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode {mode:o}");
}
