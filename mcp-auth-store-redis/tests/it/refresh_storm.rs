//! The engine's refresh single-flight across processes: four processes sharing one Redis server,
//! 250 concurrent `access_token()` calls each on an expired token → exactly one token request
//! reaches the authorization server (the store's lease elects one refresher).
use crate::{support, workers};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mcp_auth_core::{ExposeSecret, IssuerId, McpAuth, ResourceUri, TokenKey};
use mcp_auth_store_redis::{RedisOptions, RedisStore};
use mcp_auth_testkit::{AuthServer, AuthServerConfig, Endpoint, McpServer, McpServerConfig};

fn engine(store: RedisStore) -> McpAuth {
    support::headless(Arc::new(store)).build().unwrap()
}

async fn open(url: &str, namespace: &str) -> RedisStore {
    let options = RedisOptions {
        namespace: mcp_auth_core::Namespace::new(namespace).unwrap(),
        ..RedisOptions::default()
    };
    RedisStore::connect_with(url, options).await.unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Worker process body: 250 concurrent `access_token()` calls once the start time arrives.
#[test]
#[ignore = "worker process body, started by refresh_storm_across_four_processes_over_redis"]
fn storm_worker() {
    let Ok(ns) = std::env::var("STORM_NAMESPACE") else {
        return;
    };
    let url = std::env::var("MCP_AUTH_TEST_REDIS_URL").unwrap();
    let resource = ResourceUri::new(std::env::var("STORM_RESOURCE").unwrap()).unwrap();
    let start: u64 = std::env::var("STORM_START_MS").unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let auth = Arc::new(engine(open(&url, &ns).await));
        while now_ms() < start {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut tasks = Vec::new();
        for _ in 0..250 {
            let auth = Arc::clone(&auth);
            let resource = resource.clone();
            tasks.push(tokio::spawn(async move {
                auth.cached_access_token(&resource).await
            }));
        }
        let mut tokens = std::collections::HashSet::new();
        for t in tasks {
            tokens.insert(t.await.unwrap().unwrap().expose_secret().to_owned());
        }
        println!(
            "\nWORKER {}",
            tokens.into_iter().collect::<Vec<_>>().join(",")
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_storm_across_four_processes_over_redis() {
    let url = std::env::var("MCP_AUTH_TEST_REDIS_URL").expect(
        "MCP_AUTH_TEST_REDIS_URL is not set: run `cargo xtask test-all`, which starts redis-server",
    );
    let ns = mcp_auth_core::Namespace::random("redis-storm")
        .as_str()
        .to_owned();
    let as1 = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    let mcp = McpServer::start(McpServerConfig {
        authorization_servers: vec![as1.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    let resource = ResourceUri::new(mcp.url()).unwrap();
    let store = open(&url, &ns).await;
    engine(store.clone()).access_token(&resource).await.unwrap();
    let key = TokenKey::new(IssuerId::new(as1.issuer()).unwrap(), resource.clone());
    support::expire_stored_tokens(&store, &key).await;
    as1.clear_requests();

    let start = now_ms() + 2000;
    let start = start.to_string();
    let children: Vec<_> = (0..4)
        .map(|_| {
            workers::spawn(
                "refresh_storm::storm_worker",
                &[
                    ("STORM_NAMESPACE", ns.as_str()),
                    ("STORM_RESOURCE", resource.as_str()),
                    ("STORM_START_MS", start.as_str()),
                ],
            )
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    for child in children {
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "worker failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("WORKER "))
            .expect("worker printed no result");
        seen.extend(line.split(',').map(str::to_owned));
    }
    assert_eq!(
        as1.count(Endpoint::Token),
        1,
        "token requests: {}",
        as1.count(Endpoint::Token)
    );
    assert_eq!(
        as1.requests().len(),
        1,
        "only the token endpoint may be contacted"
    );
    assert_eq!(
        seen.len(),
        1,
        "processes ended with different access tokens"
    );
}
