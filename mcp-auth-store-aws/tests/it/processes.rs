//! Across processes, over moto: the refresh lease is exclusive (four processes taking it in
//! turns never overlap), and eight processes calling `access_token()` on one expired token make
//! exactly one token request (the engine's single-flight through this store's lease, with the
//! engine's default 2 s lease).
use crate::common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mcp_auth_core::{
    Expect, ExposeSecret, HttpPolicy, IssuerId, McpAuth, Namespace, ResourceUri, Timestamp,
    TokenKey, TokenStore,
};
use mcp_auth_store_aws::AwsSecretsStore;
use mcp_auth_testkit::{AuthServer, AuthServerConfig, Endpoint, McpServer, McpServerConfig};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn engine(store: AwsSecretsStore) -> McpAuth {
    McpAuth::builder(Arc::new(store))
        .http_policy(HttpPolicy::allowing_loopback())
        .authorizer(Arc::new(
            mcp_auth_core::HeadlessAuthorizer::with_policy(
                mcp_auth_core::HttpPolicy::allowing_loopback(),
            )
            .unwrap(),
        ))
        .build()
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Starts `n` copies of this test binary running the ignored test `worker` with `env`, and
/// returns each one's line printed after `RESULT `.
async fn run_workers(worker: &str, n: usize, env: &[(&str, String)]) -> Vec<String> {
    let mut children = Vec::new();
    for i in 0..n {
        let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
        command
            .args([
                worker,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("WORKER_INDEX", i.to_string())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        children.push(command.spawn().unwrap());
    }
    let mut results = Vec::new();
    for child in children {
        let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
            .await
            .expect("a worker hung")
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "worker failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        results.push(
            stdout
                .lines()
                .find_map(|l| l.strip_prefix("RESULT "))
                .expect("worker printed no result")
                .to_owned(),
        );
    }
    results
}

/// Worker: takes the lease `LEASE_ROUNDS` times (waiting while another process has it), holds
/// it 25 ms each time, and prints the `start-end` ms intervals it held it in.
#[test]
#[ignore = "worker process body, started by the lease test"]
fn lease_worker() {
    let Ok(ns) = std::env::var("LEASE_NAMESPACE") else {
        return;
    };
    let rounds: usize = std::env::var("LEASE_ROUNDS").unwrap().parse().unwrap();
    let start: u64 = std::env::var("LEASE_START_MS").unwrap().parse().unwrap();
    runtime().block_on(async move {
        let store = common::store(&Namespace::new(ns).unwrap());
        let key = TokenKey::new(
            IssuerId::new("https://as.processes.example").unwrap(),
            ResourceUri::new("https://mcp.processes.example/mcp").unwrap(),
        );
        while now_ms() < start {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut held = Vec::new();
        for _ in 0..rounds {
            let lease = loop {
                match store
                    .try_acquire_refresh_lease(&key, Duration::from_secs(30))
                    .await
                    .unwrap()
                {
                    Some(lease) => break lease,
                    None => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            };
            let from = now_ms();
            tokio::time::sleep(Duration::from_millis(25)).await;
            let to = now_ms();
            assert!(store.release_refresh_lease(&lease).await.unwrap());
            held.push(format!("{from}-{to}"));
        }
        println!("\nRESULT {}", held.join(","));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_is_exclusive_across_four_processes() {
    let endpoint = common::endpoint();
    let ns = Namespace::random("aws-lease-processes");
    let results = run_workers(
        "processes::lease_worker",
        4,
        &[
            ("MCP_AUTH_TEST_AWS_ENDPOINT", endpoint),
            ("LEASE_NAMESPACE", ns.as_str().to_owned()),
            ("LEASE_ROUNDS", "6".to_owned()),
            ("LEASE_START_MS", (now_ms() + 1500).to_string()),
        ],
    )
    .await;
    let mut intervals: Vec<(u64, u64)> = results
        .iter()
        .flat_map(|line| line.split(','))
        .map(|iv| {
            let (a, b) = iv.split_once('-').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    assert_eq!(intervals.len(), 24);
    intervals.sort_unstable();
    for pair in intervals.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "two processes held the lease at once: {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
}

/// Worker: 25 concurrent `cached_access_token()` calls once the start time arrives.
#[test]
#[ignore = "worker process body, started by the refresh storm test"]
fn storm_worker() {
    let Ok(ns) = std::env::var("STORM_NAMESPACE") else {
        return;
    };
    let resource = ResourceUri::new(std::env::var("STORM_RESOURCE").unwrap()).unwrap();
    let start: u64 = std::env::var("STORM_START_MS").unwrap().parse().unwrap();
    runtime().block_on(async move {
        let auth = Arc::new(engine(common::store(&Namespace::new(ns).unwrap())));
        while now_ms() < start {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut tasks = Vec::new();
        for _ in 0..25 {
            let (auth, resource) = (Arc::clone(&auth), resource.clone());
            tasks.push(tokio::spawn(async move {
                auth.cached_access_token(&resource).await
            }));
        }
        let mut tokens = std::collections::HashSet::new();
        for t in tasks {
            tokens.insert(t.await.unwrap().unwrap().expose_secret().to_owned());
        }
        auth.flush().await.unwrap();
        println!(
            "\nRESULT {}",
            tokens.into_iter().collect::<Vec<_>>().join(",")
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_processes_refresh_one_expired_token_once() {
    let endpoint = common::endpoint();
    let ns = Namespace::random("aws-storm");
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
    let store = common::store(&ns);
    engine(store.clone()).access_token(&resource).await.unwrap();
    let key = TokenKey::new(IssuerId::new(as1.issuer()).unwrap(), resource.clone());
    let current = store.get_tokens(&key).await.unwrap().unwrap();
    let mut expired = current.value.clone();
    expired.expires_at = Some(Timestamp::from_unix_seconds(1));
    store
        .put_tokens(&key, &expired, Expect::Version(current.version))
        .await
        .unwrap();
    as1.clear_requests();

    let results = run_workers(
        "processes::storm_worker",
        8,
        &[
            ("MCP_AUTH_TEST_AWS_ENDPOINT", endpoint),
            ("STORM_NAMESPACE", ns.as_str().to_owned()),
            ("STORM_RESOURCE", resource.as_str().to_owned()),
            ("STORM_START_MS", (now_ms() + 2500).to_string()),
        ],
    )
    .await;
    let seen: std::collections::HashSet<&str> =
        results.iter().flat_map(|line| line.split(',')).collect();
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
    let stored = store.get_tokens(&key).await.unwrap().unwrap().value;
    assert!(seen.contains(stored.access_token.expose_secret()));
    assert!(stored.refresh_state.is_none(), "{:?}", stored.refresh_state);
    store.delete_tokens(&key, Expect::Any).await.unwrap();
}
