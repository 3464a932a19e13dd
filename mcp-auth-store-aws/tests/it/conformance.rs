//! The store conformance suite against a moto server (`MCP_AUTH_TEST_AWS_ENDPOINT`, started by
//! `cargo xtask test-all`). Every `open` builds a new client and store (a new cache), like
//! another replica.
use crate::common;

use async_trait::async_trait;
use mcp_auth_core::conformance::StoreFactory;
use mcp_auth_core::record::RecordKey;
use mcp_auth_core::{Namespace, StoreError};
use mcp_auth_store_aws::{AwsSecretsStore, write_raw_record};

struct AwsFactory;

#[async_trait]
impl StoreFactory for AwsFactory {
    type Store = AwsSecretsStore;

    async fn open(&self, namespace: &Namespace) -> Result<AwsSecretsStore, StoreError> {
        Ok(common::store(namespace))
    }

    async fn write_raw(
        &self,
        namespace: &Namespace,
        key: &RecordKey,
        bytes: &[u8],
    ) -> Result<bool, StoreError> {
        write_raw_record(&self.open(namespace).await?, key, bytes).await?;
        Ok(true)
    }
}

mcp_auth_core::store_conformance_tests!(AwsFactory);

/// The same suite through encryption at rest (`EncryptedStore`), mid-rotation: key 2 current,
/// key 1 still accepted for reading.
mod encrypted {
    use mcp_auth_core::encryption::{EncryptedFactory, EncryptionKey, KeySet};

    use super::AwsFactory;

    fn keys() -> KeySet {
        KeySet::new(EncryptionKey::from_bytes(&[0x22; 32]))
            .with_old(EncryptionKey::from_bytes(&[0x11; 32]))
            .unwrap()
    }

    mcp_auth_core::store_conformance_tests!(EncryptedFactory::new(AwsFactory, keys()));
}
