//! The moto server every test talks to, and clients for it: explicit loopback endpoint, region
//! and static credentials, so no test can reach AWS or the instance metadata address.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub(crate) mod proxy;

use std::time::Duration;

use aws_sdk_secretsmanager::config::retry::RetryConfig;
use aws_sdk_secretsmanager::config::timeout::TimeoutConfig;
use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use mcp_auth_core::Namespace;
use mcp_auth_store_aws::{AwsOptions, AwsSecretsStore};

pub(crate) const REGION: &str = "us-east-1";

/// `MCP_AUTH_TEST_AWS_ENDPOINT` (set by `cargo xtask test-all`, which starts moto), checked to be
/// a loopback `http://` URL.
pub(crate) fn endpoint() -> String {
    let endpoint = std::env::var("MCP_AUTH_TEST_AWS_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "MCP_AUTH_TEST_AWS_ENDPOINT is not set: run `cargo xtask test-all`, which starts a moto server, or start one (moto[server]==5.2.5: `moto_server -H 127.0.0.1 -p PORT`) and set MCP_AUTH_TEST_AWS_ENDPOINT=http://127.0.0.1:PORT"
        )
    });
    assert_loopback(&endpoint);
    endpoint
}

/// Refuses anything but a loopback endpoint: tests never talk to AWS.
pub(crate) fn assert_loopback(endpoint: &str) {
    let rest = endpoint
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("test endpoint {endpoint:?} is not http://loopback"));
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    assert!(
        matches!(host, "127.0.0.1" | "localhost" | "[::1]"),
        "test endpoint {endpoint:?} is not on loopback: tests never talk to AWS"
    );
}

/// A client for `endpoint` with static credentials, a fixed region, short retries and timeouts.
pub(crate) fn client_for(endpoint: &str, max_attempts: u32) -> aws_sdk_secretsmanager::Client {
    assert_loopback(endpoint);
    let config = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(max_attempts)
                .with_initial_backoff(Duration::from_millis(20))
                .with_max_backoff(Duration::from_millis(200)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_attempt_timeout(Duration::from_secs(5))
                .build(),
        )
        .build();
    aws_sdk_secretsmanager::Client::from_conf(config)
}

pub(crate) fn client() -> aws_sdk_secretsmanager::Client {
    client_for(&endpoint(), 3)
}

pub(crate) fn options(namespace: &Namespace) -> AwsOptions {
    AwsOptions {
        namespace: namespace.clone(),
        name_prefix: "mcp-auth-test".to_owned(),
        ..AwsOptions::default()
    }
}

pub(crate) fn store(namespace: &Namespace) -> AwsSecretsStore {
    AwsSecretsStore::from_client(&client(), options(namespace)).unwrap()
}
