//! The store conformance suite against a real SQLite file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use async_trait::async_trait;
use mcp_auth_core::conformance::StoreFactory;
use mcp_auth_core::record::RecordKey;
use mcp_auth_core::{Namespace, StoreError};
use mcp_auth_store_sqlite::{SqliteOptions, SqliteStore, write_raw_record};

/// Every `open` is a new connection to the same file, like a restart.
struct SqliteFactory {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl SqliteFactory {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("credentials.db");
        Self { _dir: dir, path }
    }
}

#[async_trait]
impl StoreFactory for SqliteFactory {
    type Store = SqliteStore;

    async fn open(&self, namespace: &Namespace) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(
            &self.path,
            SqliteOptions {
                namespace: namespace.clone(),
                ..SqliteOptions::default()
            },
        )
        .await
    }

    async fn write_raw(
        &self,
        namespace: &Namespace,
        key: &RecordKey,
        bytes: &[u8],
    ) -> Result<bool, StoreError> {
        let store = self.open(namespace).await?;
        write_raw_record(&store, key, bytes).await?;
        Ok(true)
    }
}

mcp_auth_core::store_conformance_tests!(SqliteFactory::new());
