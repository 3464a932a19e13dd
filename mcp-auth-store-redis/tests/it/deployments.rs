//! The full store conformance suite against the Redis deployments managed services use: a Redis
//! Cluster, a TLS-only server (with and without a client certificate) and an ACL user with the
//! README's narrow rule set; and the refusals: a certificate from another CA, a wrong password,
//! a missing permission, `#insecure`.
//!
//! `cargo xtask test-all` (or `cargo xtask redis-services`, which prints them) sets
//! `MCP_AUTH_TEST_REDIS_CLUSTER_URL`, `MCP_AUTH_TEST_REDIS_TLS_URL` with `..._TLS_CA`,
//! `..._TLS_CLIENT_CERT`, `..._TLS_CLIENT_KEY`, `..._TLS_OTHER_CA`, `..._TLS_OTHER_CLIENT_CERT`,
//! `..._TLS_OTHER_CLIENT_KEY`, and `MCP_AUTH_TEST_REDIS_ACL_URL`. A test whose variable is unset
//! says so and returns.
use std::time::{Duration, Instant};

use mcp_auth_core::conformance::run_all;
use mcp_auth_core::{
    Expect, IssuerId, Namespace, ResourceUri, SecretString, StoreError, TokenKey, TokenSet,
    TokenStore,
};
use mcp_auth_store_redis::{RedisOptions, RedisStore, RedisTls};

use crate::support::{RedisFactory, chain};

/// The variable's value, or `None` after saying that the test is skipped.
fn var(name: &str) -> Option<String> {
    let value = std::env::var(name).ok();
    if value.is_none() {
        eprintln!(
            "SKIPPED: {name} is not set; run `cargo xtask test-all`, or `cargo xtask redis-services` and export what it prints"
        );
    }
    value
}

async fn conformance(what: &str, url: String, options: RedisOptions) {
    let started = Instant::now();
    let report = run_all(&RedisFactory { url, options }).await;
    assert!(
        report.failed().is_empty(),
        "{what}: conformance failures:\n{report}"
    );
    println!(
        "{what}: {} conformance checks passed in {:?}",
        report.passed().len(),
        started.elapsed()
    );
}

fn token_key() -> TokenKey {
    TokenKey::new(
        IssuerId::new("https://as.example").unwrap(),
        ResourceUri::new("https://mcp.example").unwrap(),
    )
}

// ---------------------------------------------------------------------------------------------
// Cluster

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_passes_the_conformance_suite() {
    let Some(url) = var("MCP_AUTH_TEST_REDIS_CLUSTER_URL") else {
        return;
    };
    conformance("Redis Cluster", url, RedisOptions::default()).await;
}

/// Seed nodes can be any subset of the cluster: one node is enough to find the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_is_found_from_one_seed_node() {
    let Some(url) = var("MCP_AUTH_TEST_REDIS_CLUSTER_URL") else {
        return;
    };
    let first = url
        .trim_start_matches("redis+cluster://")
        .split(',')
        .next()
        .unwrap()
        .trim_end_matches('/');
    let store = RedisStore::connect_with(
        &format!("redis+cluster://{first}/"),
        RedisOptions {
            namespace: Namespace::random("one-seed"),
            ..RedisOptions::default()
        },
    )
    .await
    .unwrap();
    // Namespaces live in different slots, so on different masters: each is reachable.
    for i in 0..20 {
        let tenant = store.with_namespace(Namespace::new(format!("seed-tenant-{i}")).unwrap());
        let v = tenant
            .put_tokens(
                &token_key(),
                &TokenSet::new(SecretString::from("t")),
                Expect::Any,
            )
            .await
            .unwrap();
        assert_eq!(
            tenant
                .get_tokens(&token_key())
                .await
                .unwrap()
                .unwrap()
                .version,
            v
        );
        tenant
            .delete_tokens(&token_key(), Expect::Any)
            .await
            .unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// TLS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passes_the_conformance_suite_with_the_ca_from_the_url() {
    let (Some(url), Some(ca)) = (
        var("MCP_AUTH_TEST_REDIS_TLS_URL"),
        var("MCP_AUTH_TEST_REDIS_TLS_CA"),
    ) else {
        return;
    };
    let url = format!("{url}?tls_ca={ca}");
    conformance("TLS, no client certificate", url, RedisOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passes_the_conformance_suite_with_a_client_certificate() {
    let (Some(url), Some(ca), Some(cert), Some(key)) = (
        var("MCP_AUTH_TEST_REDIS_TLS_URL"),
        var("MCP_AUTH_TEST_REDIS_TLS_CA"),
        var("MCP_AUTH_TEST_REDIS_TLS_CLIENT_CERT"),
        var("MCP_AUTH_TEST_REDIS_TLS_CLIENT_KEY"),
    ) else {
        return;
    };
    let options = RedisOptions {
        tls: RedisTls::default()
            .with_ca_file(ca)
            .with_client_certificate(cert, key),
        ..RedisOptions::default()
    };
    conformance("TLS, client certificate", url, options).await;
}

/// A server whose certificate another CA signed is refused at once (not retried for the
/// budget), with an error that says what to check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_server_certificate_from_another_ca_is_refused_clearly() {
    let (Some(url), Some(other_ca)) = (
        var("MCP_AUTH_TEST_REDIS_TLS_URL"),
        var("MCP_AUTH_TEST_REDIS_TLS_OTHER_CA"),
    ) else {
        return;
    };
    let started = Instant::now();
    let err = RedisStore::connect_with(
        &format!("{url}?tls_ca={other_ca}"),
        RedisOptions {
            retry_budget: Duration::from_secs(5),
            ..RedisOptions::default()
        },
    )
    .await
    .unwrap_err();
    let took = started.elapsed();
    let text = chain(&err);
    assert!(matches!(err, StoreError::Backend { .. }), "{text}");
    assert!(!err.is_retryable(), "{text}");
    assert!(
        text.contains("TLS handshake with Redis failed") && text.contains("UnknownIssuer"),
        "{text}"
    );
    assert!(
        took < Duration::from_secs(2),
        "retried for {took:?}: {text}"
    );
    println!("refused in {took:?}: {text}");
}

/// A client certificate the server's CA did not sign is refused by the server: the client
/// certificate is really presented (and checked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_certificate_from_another_ca_is_refused() {
    let (Some(url), Some(ca), Some(cert), Some(key)) = (
        var("MCP_AUTH_TEST_REDIS_TLS_URL"),
        var("MCP_AUTH_TEST_REDIS_TLS_CA"),
        var("MCP_AUTH_TEST_REDIS_TLS_OTHER_CLIENT_CERT"),
        var("MCP_AUTH_TEST_REDIS_TLS_OTHER_CLIENT_KEY"),
    ) else {
        return;
    };
    let started = Instant::now();
    let err = RedisStore::connect_with(
        &url,
        RedisOptions {
            tls: RedisTls::default()
                .with_ca_file(ca)
                .with_client_certificate(cert, key),
            retry_budget: Duration::from_secs(5),
            ..RedisOptions::default()
        },
    )
    .await
    .unwrap_err();
    let text = chain(&err);
    assert!(!err.is_retryable(), "{text}");
    assert!(text.contains("TLS handshake with Redis failed"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(2), "{text}");
}

#[tokio::test]
async fn tls_without_certificate_checks_is_refused() {
    for url in [
        "rediss://127.0.0.1:1/#insecure",
        "rediss+cluster://127.0.0.1:1/#insecure",
    ] {
        let err = RedisStore::connect(url).await.unwrap_err();
        assert!(chain(&err).contains("#insecure"), "{}", chain(&err));
        assert!(!err.is_retryable());
    }
    let err = RedisStore::connect_with(
        "rediss://127.0.0.1:1/",
        RedisOptions {
            tls: RedisTls::default().with_ca_file("/nonexistent/ca.pem"),
            ..RedisOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(
        chain(&err).contains("/nonexistent/ca.pem"),
        "{}",
        chain(&err)
    );
}

// ---------------------------------------------------------------------------------------------
// ACL

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_with_the_readme_rules_passes_the_conformance_suite() {
    let Some(url) = var("MCP_AUTH_TEST_REDIS_ACL_URL") else {
        return;
    };
    conformance("narrow ACL user", url, RedisOptions::default()).await;
}

/// The same user given through the options (the URL without credentials).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_credentials_from_the_options_override_the_url() {
    let Some(url) = var("MCP_AUTH_TEST_REDIS_ACL_URL") else {
        return;
    };
    let (user, password, rest) = split_credentials(&url);
    let store = RedisStore::connect_with(
        &format!("redis://{rest}"),
        RedisOptions {
            namespace: Namespace::random("acl-options"),
            username: Some(user.clone()),
            password: Some(SecretString::from(password.clone())),
            ..RedisOptions::default()
        },
    )
    .await
    .unwrap();
    store
        .put_tokens(
            &token_key(),
            &TokenSet::new(SecretString::from("t")),
            Expect::Absent,
        )
        .await
        .unwrap();
    // Debug never shows the password.
    let options = RedisOptions {
        username: Some(user),
        password: Some(SecretString::from(password.clone())),
        ..RedisOptions::default()
    };
    assert!(!format!("{options:?} {store:?}").contains(&password));
}

/// `(user, password, host:port/…)` of `redis://user:password@host:port/…`.
fn split_credentials(url: &str) -> (String, String, String) {
    let rest = url.trim_start_matches("redis://");
    let (userinfo, host) = rest.split_once('@').unwrap();
    let (user, password) = userinfo.split_once(':').unwrap();
    (user.to_owned(), password.to_owned(), host.to_owned())
}

/// A wrong password is `PermissionDenied` at once (never retried), and the error does not
/// carry the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_acl_password_is_permission_denied_without_retries() {
    let Some(url) = var("MCP_AUTH_TEST_REDIS_ACL_URL") else {
        return;
    };
    let (user, _, rest) = split_credentials(&url);
    let wrong = "not-the-password-4711";
    let started = Instant::now();
    let err = RedisStore::connect_with(
        &format!("redis://{user}:{wrong}@{rest}"),
        RedisOptions {
            retry_budget: Duration::from_secs(5),
            ..RedisOptions::default()
        },
    )
    .await
    .unwrap_err();
    let took = started.elapsed();
    let text = chain(&err);
    assert!(matches!(err, StoreError::PermissionDenied { .. }), "{text}");
    assert!(!err.is_retryable(), "{text}");
    assert!(
        !text.contains(wrong) && !format!("{err:?}").contains(wrong),
        "{text}"
    );
    assert!(
        took < Duration::from_secs(2),
        "retried for {took:?}: {text}"
    );
    println!("refused in {took:?}: {text}");
}

/// A user that lacks one rule of the README's set gets `PermissionDenied` naming the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_missing_a_permission_is_told_which() {
    let (Some(acl_url), Some(admin_url)) = (
        var("MCP_AUTH_TEST_REDIS_ACL_URL"),
        var("MCP_AUTH_TEST_REDIS_URL"),
    ) else {
        return;
    };
    let (_, _, rest) = split_credentials(&acl_url);
    let user = format!("mcp-auth-noeval-{}", std::process::id());
    let client = redis::Client::open(admin_url).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("reset")
        .arg("on")
        .arg(">pw-noeval")
        .arg("~mcp-auth:*")
        .arg("-@all")
        .arg("+@read")
        .arg("+ping")
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    let store = RedisStore::connect_with(
        &format!("redis://{user}:pw-noeval@{rest}"),
        RedisOptions {
            namespace: Namespace::random("acl-noperm"),
            ..RedisOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(store.get_tokens(&token_key()).await.unwrap().is_none());
    let err = store
        .put_tokens(
            &token_key(),
            &TokenSet::new(SecretString::from("t")),
            Expect::Absent,
        )
        .await
        .unwrap_err();
    let text = chain(&err);
    redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    assert!(matches!(err, StoreError::PermissionDenied { .. }), "{text}");
    assert!(text.to_lowercase().contains("evalsha"), "{text}");
    println!("{text}");
}
