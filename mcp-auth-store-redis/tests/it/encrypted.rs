//! Encryption at rest over Redis (`mcp_auth_core::encryption`, `MCP_AUTH_TEST_REDIS_URL`): the
//! conformance suite through `EncryptedStore`, and raw reads of every key of the store (SCAN,
//! then GET / HGETALL / SMEMBERS / ZRANGE / LRANGE by type, as `redis-cli` would) after a login,
//! a refresh with rotation and a key rotation find no token, client secret or DPoP key.
use std::sync::Arc;

use data_encoding::{BASE64, BASE64URL_NOPAD};
use mcp_auth_core::encryption::{
    EncryptedFactory, EncryptedStore, EncryptionKey, KeySet, envelope_key_id,
};
use mcp_auth_core::{
    ClientConfig, CredentialStore, DpopMode, Expect, ExposeSecret, IssuerId, McpAuth, Namespace,
    RegistrationStore, ResourceUri, TokenKey, TokenStore,
};
use mcp_auth_store_redis::{RedisOptions, RedisStore};

use crate::support::{self, RedisFactory, redis_url};
use mcp_auth_testkit::{AuthServer, AuthServerConfig, McpServer, McpServerConfig};

fn k1() -> EncryptionKey {
    EncryptionKey::from_bytes(&[0x11; 32])
}

fn k2() -> EncryptionKey {
    EncryptionKey::from_bytes(&[0x22; 32])
}

mod conformance {
    use super::*;

    mcp_auth_core::store_conformance_tests!(EncryptedFactory::new(
        RedisFactory::new(redis_url()),
        KeySet::new(k2()).with_old(k1()).unwrap()
    ));
}

/// A store under its own key prefix, so a raw SCAN sees only its keys.
async fn open(prefix: &str, keys: KeySet) -> Arc<EncryptedStore<RedisStore>> {
    let namespace = Namespace::new("encrypted").unwrap();
    let inner = RedisStore::connect_with(
        &redis_url(),
        RedisOptions {
            namespace: namespace.clone(),
            key_prefix: prefix.to_owned(),
            ..RedisOptions::default()
        },
    )
    .await
    .unwrap();
    Arc::new(EncryptedStore::new(inner, namespace, keys))
}

/// Every value under `prefix`, read raw.
async fn raw_values(prefix: &str) -> Vec<(String, Vec<u8>)> {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    assert!(!keys.is_empty(), "no key under {prefix}");
    let mut out = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let parts: Vec<Vec<u8>> = match kind.as_str() {
            "string" => vec![
                redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap(),
            ],
            "hash" => redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap(),
            "set" => redis::cmd("SMEMBERS")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap(),
            "zset" => redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .unwrap(),
            "list" => redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .unwrap(),
            "none" => Vec::new(),
            other => panic!("unexpected Redis type {other} at {key}"),
        };
        out.push((key.clone(), key.into_bytes()));
        for part in parts {
            out.push((String::new(), part));
        }
    }
    out
}

/// The 32-byte private scalar inside a PKCS#8 P-256 key (`ECPrivateKey`: `INTEGER 1`, then
/// `OCTET STRING` of 32 bytes).
fn private_scalar(der: &[u8]) -> Vec<u8> {
    let at = der
        .windows(5)
        .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
        .expect("a PKCS#8 EC private key");
    der[at + 5..at + 37].to_vec()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

async fn secrets_of(store: &EncryptedStore<RedisStore>, key: &TokenKey) -> Vec<Vec<u8>> {
    let t = store.get_tokens(key).await.unwrap().unwrap().value;
    let reg = store
        .get_registration(&key.issuer)
        .await
        .unwrap()
        .unwrap()
        .value;
    let mut out = vec![t.access_token.expose_secret().as_bytes().to_vec()];
    out.extend(
        t.refresh_token
            .map(|s| s.expose_secret().as_bytes().to_vec()),
    );
    let dpop = t.dpop_key.expect("DPoP-bound tokens");
    let der = BASE64URL_NOPAD
        .decode(dpop.expose_secret().as_bytes())
        .unwrap();
    out.push(dpop.expose_secret().as_bytes().to_vec());
    out.push(BASE64.encode(&der).into_bytes());
    out.push(private_scalar(&der));
    out.push(der);
    out.extend(
        reg.client_secret
            .map(|s| s.expose_secret().as_bytes().to_vec()),
    );
    out.extend(
        reg.registration_access_token
            .map(|s| s.expose_secret().as_bytes().to_vec()),
    );
    assert!(
        out.len() >= 6,
        "expected a refresh token and a client secret"
    );
    out
}

async fn assert_no_secret_in_redis(prefix: &str, secrets: &[Vec<u8>], when: &str) {
    let values = raw_values(prefix).await;
    let mut sealed = 0;
    for (key, bytes) in &values {
        for secret in secrets {
            assert!(
                !contains(bytes, secret),
                "{when}: a secret ({} bytes) is in plaintext in Redis {key}",
                secret.len()
            );
        }
        sealed += usize::from(contains(bytes, b"mcpenc1."));
    }
    assert!(
        sealed >= 2,
        "{when}: expected sealed token and registration values"
    );
}

fn engine(store: Arc<dyn CredentialStore>) -> McpAuth {
    support::headless(store)
        .client(ClientConfig::default().with_dpop(DpopMode::IfSupported))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_refresh_and_rotation_leave_no_secret_in_redis() {
    let prefix = format!("mcp-auth-enc-{}", Namespace::random("t").as_str());
    let as1 = AuthServer::start(AuthServerConfig {
        dpop: true,
        rotate_refresh_tokens: true,
        ..AuthServerConfig::default()
    })
    .await
    .unwrap();
    let mcp = McpServer::start(McpServerConfig {
        authorization_servers: vec![as1.clone()],
        ..McpServerConfig::default()
    })
    .await
    .unwrap();
    let resource = ResourceUri::new(mcp.url()).unwrap();
    let key = TokenKey::new(IssuerId::new(as1.issuer()).unwrap(), resource.clone());
    let mut secrets = Vec::new();

    let store = open(&prefix, KeySet::new(k1())).await;
    let auth = engine(store.clone());
    let first = auth.access_credential(&resource).await.unwrap();
    assert!(first.is_dpop());
    auth.flush().await.unwrap();
    secrets.extend(secrets_of(&store, &key).await);
    assert_no_secret_in_redis(&prefix, &secrets, "after login").await;

    support::expire_stored_tokens(&*store, &key).await;
    let refreshed = auth.access_credential(&resource).await.unwrap();
    assert_ne!(
        refreshed.token().expose_secret(),
        first.token().expose_secret()
    );
    auth.flush().await.unwrap();
    secrets.extend(secrets_of(&store, &key).await);
    assert_no_secret_in_redis(&prefix, &secrets, "after refresh").await;

    let rotated = open(&prefix, KeySet::new(k2()).with_old(k1()).unwrap()).await;
    let report = rotated.rekey().await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(
        (report.tokens.resealed, report.registrations.resealed),
        (1, 1)
    );
    let auth = engine(rotated.clone());
    let after = auth.access_credential(&resource).await.unwrap();
    assert_eq!(
        after.token().expose_secret(),
        refreshed.token().expose_secret()
    );
    secrets.extend(secrets_of(&rotated, &key).await);
    let sealed = rotated
        .inner()
        .get_tokens(&key)
        .await
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(
        envelope_key_id(sealed.access_token.expose_secret()),
        Some(k2().id())
    );
    assert_no_secret_in_redis(&prefix, &secrets, "after key rotation").await;

    // Control: the same scan does find secrets written without encryption.
    let plain = rotated
        .inner()
        .with_namespace(Namespace::new("control").unwrap());
    let t = rotated.get_tokens(&key).await.unwrap().unwrap().value;
    plain.put_tokens(&key, &t, Expect::Any).await.unwrap();
    let values = raw_values(&prefix).await;
    for secret in [&t.access_token, t.dpop_key.as_ref().unwrap()] {
        assert!(
            values
                .iter()
                .any(|(_, bytes)| contains(bytes, secret.expose_secret().as_bytes())),
            "control: a plaintext write is invisible to the scan"
        );
    }
    plain.delete_tokens(&key, Expect::Any).await.unwrap();

    // Clean up this test's keys.
    rotated
        .inner()
        .delete_issuer_tokens(&key.issuer)
        .await
        .unwrap();
    rotated
        .inner()
        .delete_registration(&key.issuer, Expect::Any)
        .await
        .unwrap();
}
