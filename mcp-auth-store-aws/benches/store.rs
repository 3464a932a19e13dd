//! `cargo xtask bench` (or `MCP_AUTH_TEST_AWS_ENDPOINT=http://127.0.0.1:PORT cargo bench -p
//! mcp-auth-store-aws`): for each store operation, the median latency against a moto server and
//! the Secrets Manager API calls it makes, with the read cache on and off. The call counts are
//! what AWS bills ($0.05 per 10,000 calls); moto's latency is not AWS's (expect tens of
//! milliseconds per call there). A benchmark, not a test: it asserts nothing about time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use mcp_auth_core::{
    ClientConfig, Expect, HttpPolicy, IssuerId, McpAuth, Namespace, ResourceUri, SecretString,
    Timestamp, TokenKey, TokenSet, TokenStore,
};
use mcp_auth_store_aws::{AwsCalls, AwsOptions, AwsSecretsStore};
use mcp_auth_testkit::{AuthServer, AuthServerConfig, McpServer, McpServerConfig};

const SAMPLES: usize = 200;
const PRICE_PER_10K_CALLS: f64 = 0.05;

fn endpoint() -> String {
    let endpoint = std::env::var("MCP_AUTH_TEST_AWS_ENDPOINT").unwrap_or_else(|_| {
        panic!("MCP_AUTH_TEST_AWS_ENDPOINT is not set: run `cargo xtask bench`, which starts moto")
    });
    let host = endpoint
        .strip_prefix("http://")
        .and_then(|r| r.split([':', '/']).next())
        .unwrap_or_default();
    assert!(
        matches!(host, "127.0.0.1" | "localhost"),
        "the benchmark only talks to a loopback moto server, not {endpoint}"
    );
    endpoint
}

fn store(namespace: &Namespace, cache_ttl: Duration) -> AwsSecretsStore {
    let config = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint())
        .credentials_provider(Credentials::new("testing", "testing", None, None, "bench"))
        .build();
    AwsSecretsStore::from_client(
        &aws_sdk_secretsmanager::Client::from_conf(config),
        AwsOptions {
            namespace: namespace.clone(),
            name_prefix: "mcp-auth-bench".to_owned(),
            cache_ttl,
            ..AwsOptions::default()
        },
    )
    .unwrap()
}

struct Row {
    op: &'static str,
    cache: &'static str,
    median: Duration,
    calls: AwsCalls,
    samples: usize,
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// Runs `op` `n` times; median latency and calls per run (totals divided by `n`).
async fn measure<F, Fut>(
    store: &AwsSecretsStore,
    op: &'static str,
    cache: &'static str,
    n: usize,
    mut f: F,
) -> Row
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let before = store.calls();
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f(i).await;
        times.push(t.elapsed());
    }
    Row {
        op,
        cache,
        median: median(times),
        calls: store.calls().since(&before),
        samples: n,
    }
}

fn per_op(calls: &AwsCalls, n: usize) -> String {
    let n = n as f64;
    let parts = [
        ("Get", calls.get_secret_value),
        ("Create", calls.create_secret),
        ("Put", calls.put_secret_value),
        ("Stage", calls.update_secret_version_stage),
        ("Delete", calls.delete_secret),
        ("List", calls.list_secrets),
    ];
    let detail: Vec<String> = parts
        .iter()
        .filter(|(_, c)| *c > 0)
        .map(|(name, c)| format!("{name} {:.2}", *c as f64 / n))
        .collect();
    format!("{:>5.2}  {}", calls.total() as f64 / n, detail.join(", "))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let ns = Namespace::random("bench");
    let key = TokenKey::new(
        IssuerId::new("https://auth.example.com").unwrap(),
        ResourceUri::new("https://mcp.example.com/mcp").unwrap(),
    );
    let mut tokens = TokenSet::new(SecretString::from("a".repeat(800)));
    tokens.refresh_token = Some(SecretString::from("r".repeat(400)));
    tokens.scopes = vec!["mcp:read".into(), "mcp:write".into()];
    let on = store(&ns, Duration::from_secs(3600));
    let off = store(&ns, Duration::ZERO);
    let mut rows = Vec::new();

    let mut version = off.put_tokens(&key, &tokens, Expect::Any).await.unwrap();
    rows.push(
        measure(&off, "get_tokens", "off", SAMPLES, |_| async {
            off.get_tokens(&key).await.unwrap().unwrap();
        })
        .await,
    );
    on.get_tokens(&key).await.unwrap();
    rows.push(
        measure(&on, "get_tokens (warm)", "on", SAMPLES, |_| async {
            on.get_tokens(&key).await.unwrap().unwrap();
        })
        .await,
    );
    {
        let before = off.calls();
        let mut times = Vec::new();
        for _ in 0..SAMPLES / 2 {
            let t = Instant::now();
            version = off
                .put_tokens(&key, &tokens, Expect::Version(version.clone()))
                .await
                .unwrap();
            times.push(t.elapsed());
        }
        rows.push(Row {
            op: "put_tokens (CAS, Version)",
            cache: "-",
            median: median(times),
            calls: off.calls().since(&before),
            samples: SAMPLES / 2,
        });
    }
    rows.push(
        measure(&off, "put_tokens (Any)", "-", SAMPLES / 2, |_| async {
            off.put_tokens(&key, &tokens, Expect::Any).await.unwrap();
        })
        .await,
    );
    let fresh = |i: usize| {
        TokenKey::new(
            key.issuer.clone(),
            ResourceUri::new(format!("https://mcp-{i}.example.com/mcp")).unwrap(),
        )
    };
    rows.push(
        measure(&off, "put_tokens (Absent: create)", "-", SAMPLES / 4, |i| {
            let k = fresh(i);
            let (off, tokens) = (&off, &tokens);
            async move {
                off.put_tokens(&k, tokens, Expect::Absent).await.unwrap();
            }
        })
        .await,
    );
    rows.push(
        measure(&off, "delete_tokens (Any)", "-", SAMPLES / 4, |i| {
            let k = fresh(i);
            let off = &off;
            async move {
                assert!(off.delete_tokens(&k, Expect::Any).await.unwrap());
            }
        })
        .await,
    );

    // Leases: first acquisition of a key (creates its lease secret), then the steady state.
    rows.push(
        measure(
            &off,
            "lease: first acquire of a key",
            "-",
            SAMPLES / 4,
            |i| {
                let k = fresh(1000 + i);
                let off = &off;
                async move {
                    let lease = off
                        .try_acquire_refresh_lease(&k, Duration::from_secs(30))
                        .await
                        .unwrap()
                        .unwrap();
                    off.release_refresh_lease(&lease).await.unwrap();
                }
            },
        )
        .await,
    );
    let mut acquire = Vec::new();
    let mut renew = Vec::new();
    let mut release = Vec::new();
    let (mut ca, mut cr, mut cl) = (
        AwsCalls::default(),
        AwsCalls::default(),
        AwsCalls::default(),
    );
    for _ in 0..SAMPLES / 2 {
        let b = off.calls();
        let t = Instant::now();
        let lease = off
            .try_acquire_refresh_lease(&key, Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        acquire.push(t.elapsed());
        let a = off.calls();
        let t = Instant::now();
        let lease = off
            .renew_refresh_lease(&lease, Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        renew.push(t.elapsed());
        let r = off.calls();
        let t = Instant::now();
        assert!(off.release_refresh_lease(&lease).await.unwrap());
        release.push(t.elapsed());
        let l = off.calls();
        let add = |sum: &mut AwsCalls, d: AwsCalls| {
            sum.get_secret_value += d.get_secret_value;
            sum.create_secret += d.create_secret;
            sum.put_secret_value += d.put_secret_value;
            sum.update_secret_version_stage += d.update_secret_version_stage;
            sum.delete_secret += d.delete_secret;
            sum.list_secrets += d.list_secrets;
        };
        add(&mut ca, a.since(&b));
        add(&mut cr, r.since(&a));
        add(&mut cl, l.since(&r));
    }
    for (op, times, calls) in [
        ("lease: acquire (free)", acquire, ca),
        ("lease: renew", renew, cr),
        ("lease: release", release, cl),
    ] {
        rows.push(Row {
            op,
            cache: "-",
            median: median(times),
            calls,
            samples: SAMPLES / 2,
        });
    }
    let held = on
        .try_acquire_refresh_lease(&key, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    rows.push(
        measure(
            &off,
            "lease: acquire (held elsewhere)",
            "-",
            SAMPLES / 2,
            |_| async {
                assert!(
                    off.try_acquire_refresh_lease(&key, Duration::from_secs(30))
                        .await
                        .unwrap()
                        .is_none()
                );
            },
        )
        .await,
    );
    on.release_refresh_lease(&held).await.unwrap();

    // The engine's hot path and a full refresh, against the testkit's local servers.
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
    let engine = |s: &AwsSecretsStore| {
        McpAuth::builder(Arc::new(s.clone()))
            .http_policy(HttpPolicy::allowing_loopback())
            .authorizer(Arc::new(
                mcp_auth_core::HeadlessAuthorizer::with_policy(
                    mcp_auth_core::HttpPolicy::allowing_loopback(),
                )
                .unwrap(),
            ))
            .build()
            .unwrap()
    };
    let auth_on = engine(&on);
    let auth_off = engine(&off);
    let login = {
        let b = on.calls();
        auth_on.access_token(&resource).await.unwrap();
        on.calls().since(&b)
    };
    auth_on.cached_access_token(&resource).await.unwrap();
    rows.push(
        measure(&on, "access_token() warm", "on", SAMPLES, |_| async {
            auth_on.cached_access_token(&resource).await.unwrap();
        })
        .await,
    );
    rows.push(
        measure(&off, "access_token() warm", "off", SAMPLES, |_| async {
            auth_off.cached_access_token(&resource).await.unwrap();
        })
        .await,
    );
    let token_key = TokenKey::new(IssuerId::new(as1.issuer()).unwrap(), resource.clone());
    let refresh_auth = McpAuth::builder(Arc::new(off.clone()))
        .http_policy(HttpPolicy::allowing_loopback())
        .client(ClientConfig::default())
        .authorizer(Arc::new(
            mcp_auth_core::HeadlessAuthorizer::with_policy(
                mcp_auth_core::HttpPolicy::allowing_loopback(),
            )
            .unwrap(),
        ))
        .build()
        .unwrap();
    let mut times = Vec::new();
    let before = off.calls();
    let refreshes = 20;
    let mut expiring = AwsCalls::default();
    for _ in 0..refreshes {
        let b = off.calls();
        let current = off.get_tokens(&token_key).await.unwrap().unwrap();
        let mut expired = current.value.clone();
        expired.expires_at = Some(Timestamp::from_unix_seconds(1));
        off.put_tokens(&token_key, &expired, Expect::Version(current.version))
            .await
            .unwrap();
        let e = off.calls().since(&b);
        expiring.get_secret_value += e.get_secret_value;
        expiring.put_secret_value += e.put_secret_value;
        expiring.update_secret_version_stage += e.update_secret_version_stage;
        let t = Instant::now();
        refresh_auth.cached_access_token(&resource).await.unwrap();
        times.push(t.elapsed());
    }
    let mut refresh_calls = off.calls().since(&before);
    refresh_calls.get_secret_value -= expiring.get_secret_value;
    refresh_calls.put_secret_value -= expiring.put_secret_value;
    refresh_calls.update_secret_version_stage -= expiring.update_secret_version_stage;
    rows.push(Row {
        op: "access_token() with a refresh",
        cache: "off",
        median: median(times),
        calls: refresh_calls,
        samples: refreshes,
    });

    println!(
        "aws secrets manager store against moto 5.2.5 on loopback (medians; calls per operation)"
    );
    println!(
        "  {:<34} {:<5} {:>10} {:>7}  AWS calls/op",
        "operation", "cache", "median", "samples"
    );
    for row in &rows {
        println!(
            "  {:<34} {:<5} {:>8.2}ms {:>7}  {}",
            row.op,
            row.cache,
            row.median.as_secs_f64() * 1e3,
            row.samples,
            per_op(&row.calls, row.samples)
        );
    }
    println!("  first access_token() (discovery, registration, authorization, tokens): {login}");
    let warm_off = rows
        .iter()
        .find(|r| r.op == "access_token() warm" && r.cache == "off")
        .map_or(0.0, |r| r.calls.total() as f64 / r.samples as f64);
    let warm_on = rows
        .iter()
        .find(|r| r.op == "access_token() warm" && r.cache == "on")
        .map_or(0.0, |r| r.calls.total() as f64 / r.samples as f64);
    println!(
        "\ncost of 10,000 warm access_token() calls at ${PRICE_PER_10K_CALLS} per 10,000 API calls:"
    );
    println!(
        "  cache off: {:.0} calls = ${:.4}",
        warm_off * 10_000.0,
        warm_off * PRICE_PER_10K_CALLS
    );
    println!(
        "  cache on, while fresh: {:.0} calls = ${:.4}; each cache refill costs {warm_off:.0} calls, at most one per record per TTL (5 s by default) per process",
        warm_on * 10_000.0,
        warm_on * PRICE_PER_10K_CALLS
    );
    for rate in [1.0_f64, 10.0, 100.0] {
        // 10k calls at `rate`/s span 10k/rate seconds; the default 5 s TTL refills every 5 s.
        let refills = (10_000.0 / rate / 5.0).ceil().min(10_000.0);
        let calls = refills * warm_off;
        println!(
            "  cache on (5 s TTL), one process calling {rate:>5.0}/s: {calls:>6.0} calls = ${:.4}",
            calls / 10_000.0 * PRICE_PER_10K_CALLS
        );
    }
    // Clean up.
    for i in 0..SAMPLES {
        let _ = off.delete_tokens(&fresh(i), Expect::Any).await;
        let _ = off.delete_tokens(&fresh(1000 + i), Expect::Any).await;
    }
    let _ = auth_off.logout(&resource).await;
    let _ = off.delete_tokens(&key, Expect::Any).await;
}
