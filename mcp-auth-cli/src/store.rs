//! Opening a credential store from a `--store` URL.

use std::sync::Arc;

use mcp_auth_core::{CredentialStore, KeySet, MemoryStore, Namespace};

/// Opens the store named by `url` (default: SQLite at the platform data directory) in
/// `namespace`.
pub(crate) async fn open(
    url: Option<&str>,
    namespace: &Namespace,
) -> Result<Arc<dyn CredentialStore>, String> {
    let url = url.unwrap_or("sqlite:");
    tracing::debug!(store = %redacted(url), namespace = namespace.as_str(), "opening the store");
    if let Some(path) = url.strip_prefix("sqlite:") {
        return open_sqlite(path, namespace).await;
    }
    if url == "memory:" {
        return Ok(Arc::new(
            MemoryStore::new().with_namespace(namespace.clone()),
        ));
    }
    let scheme = url.split(':').next().unwrap_or_default();
    match scheme {
        // Cluster seeds as `redis+cluster://h1:p1,h2:p2/`; TLS files as URL query parameters
        // `?tls_ca=PATH&tls_cert=PATH&tls_key=PATH` (see mcp-auth-store-redis).
        "redis" | "rediss" | "redis+cluster" | "rediss+cluster" => open_redis(url, namespace).await,
        "keyring" => open_keyring(url.trim_start_matches("keyring:"), namespace).await,
        "aws-sm" => open_aws(url.trim_start_matches("aws-sm:"), namespace).await,
        _ => Err(format!(
            "unknown store {:?}: use sqlite:PATH (or sqlite: for the default file), memory:, \
             redis://… (rediss://, redis+cluster://H:P,H:P), keyring: or aws-sm:[PREFIX]",
            redacted(url)
        )),
    }
}

/// Opens the store named by `url` in `namespace` as the commands use it: encrypted under `keys`
/// when given (writes sealed, reads opened, records that are not sealed refused), and, either
/// way, never handing out a record that does not fit the keys given (an envelope where no key
/// was given, a key id not given): see `crate::encryption`.
pub(crate) async fn open_with(
    url: Option<&str>,
    namespace: &Namespace,
    keys: Option<&KeySet>,
) -> Result<Arc<dyn CredentialStore>, String> {
    let raw = open(url, namespace).await?;
    Ok(crate::encryption::wrap(raw, namespace, keys, false))
}

/// `url` as it may be shown: a password in its user information (`redis://user:PASSWORD@host`)
/// replaced by `***`. Store URLs reach messages (`migrate` names both stores); passwords never do.
pub(crate) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, hosts)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let user = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        // `redis://SECRET@host`: a lone user-information part may be a password.
        None => "***".to_owned(),
    };
    format!("{scheme}://{user}@{hosts}{tail}")
}

/// The database file `url` names when it is a SQLite store whose file does not exist yet: the
/// read-only commands (`status`, `token`) then answer without creating it, or its directory.
pub(crate) fn missing_sqlite_file(url: Option<&str>) -> Option<std::path::PathBuf> {
    let path = url.unwrap_or("sqlite:").strip_prefix("sqlite:")?;
    let path = if path.is_empty() {
        sqlite_default_path()?
    } else {
        std::path::PathBuf::from(path)
    };
    (!path.exists()).then_some(path)
}

#[cfg(feature = "sqlite")]
fn sqlite_default_path() -> Option<std::path::PathBuf> {
    mcp_auth_store_sqlite::SqliteStore::default_path().ok()
}

#[cfg(not(feature = "sqlite"))]
fn sqlite_default_path() -> Option<std::path::PathBuf> {
    None
}

#[cfg(feature = "sqlite")]
async fn open_sqlite(
    path: &str,
    namespace: &Namespace,
) -> Result<Arc<dyn CredentialStore>, String> {
    use mcp_auth_store_sqlite::{SqliteOptions, SqliteStore};
    let path = if path.is_empty() {
        SqliteStore::default_path().map_err(|e| e.to_string())?
    } else {
        std::path::PathBuf::from(path)
    };
    let options = SqliteOptions {
        namespace: namespace.clone(),
        // `token` runs on a current-thread runtime and does one thing at a time: no blocking
        // pool thread to start (the other commands run on a multi-threaded runtime, where this
        // changes nothing).
        run_inline: true,
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open_with(&path, options)
        .await
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "sqlite"))]
async fn open_sqlite(_: &str, _: &Namespace) -> Result<Arc<dyn CredentialStore>, String> {
    Err("this build has no SQLite store (enable the `sqlite` feature)".to_owned())
}

#[cfg(feature = "redis")]
async fn open_redis(url: &str, namespace: &Namespace) -> Result<Arc<dyn CredentialStore>, String> {
    use mcp_auth_store_redis::{RedisOptions, RedisStore};
    let options = RedisOptions {
        namespace: namespace.clone(),
        ..RedisOptions::default()
    };
    let store = RedisStore::connect_with(url, options)
        .await
        .map_err(|e| format!("cannot connect to Redis: {e}"))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "redis"))]
async fn open_redis(_: &str, _: &Namespace) -> Result<Arc<dyn CredentialStore>, String> {
    Err("this build has no Redis store (enable the `redis` feature)".to_owned())
}

#[cfg(all(feature = "keyring", target_os = "linux"))]
async fn open_keyring(
    which: &str,
    namespace: &Namespace,
) -> Result<Arc<dyn CredentialStore>, String> {
    use mcp_auth_store_keyring::{KeyringBackend, KeyringOptions, KeyringStore};
    let backend = match which {
        "" | "secret-service" => KeyringBackend::SecretService,
        "keyutils" => KeyringBackend::Keyutils,
        other => {
            return Err(format!(
                "unknown keyring {other:?}: use keyring: (Secret Service) or keyring:keyutils"
            ));
        }
    };
    let options = KeyringOptions {
        namespace: namespace.clone(),
    };
    let store = KeyringStore::open(backend, options)
        .await
        .map_err(|e| format!("cannot open the OS keyring: {e}"))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "keyring"))]
async fn open_keyring(_: &str, _: &Namespace) -> Result<Arc<dyn CredentialStore>, String> {
    Err("this build has no OS keyring store (enable the `keyring` feature)".to_owned())
}

/// The keyring stores are Secret Service and keyutils: Linux only until macOS and Windows
/// stores exist (the `keyring` feature then depends on nothing).
#[cfg(all(feature = "keyring", not(target_os = "linux")))]
async fn open_keyring(_: &str, _: &Namespace) -> Result<Arc<dyn CredentialStore>, String> {
    Err(
        "the OS keyring store (keyring:) is not available on this platform yet (Linux only); \
         use sqlite: or another store"
            .to_owned(),
    )
}

/// `aws-sm:` (secrets under `mcp-auth/`) or `aws-sm:PREFIX`; region, credentials and endpoint
/// come from the standard AWS configuration (`AWS_REGION`, `AWS_PROFILE`, `AWS_ENDPOINT_URL`,
/// instance or container credentials, ...).
#[cfg(feature = "aws")]
async fn open_aws(prefix: &str, namespace: &Namespace) -> Result<Arc<dyn CredentialStore>, String> {
    use mcp_auth_store_aws::{AwsOptions, AwsSecretsStore};
    let defaults = AwsOptions::default();
    let options = AwsOptions {
        namespace: namespace.clone(),
        name_prefix: if prefix.is_empty() {
            defaults.name_prefix.clone()
        } else {
            prefix.to_owned()
        },
        ..defaults
    };
    let store = AwsSecretsStore::connect(options)
        .await
        .map_err(|e| format!("cannot use AWS Secrets Manager: {e}"))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "aws"))]
async fn open_aws(_: &str, _: &Namespace) -> Result<Arc<dyn CredentialStore>, String> {
    Err(
        "this build has no AWS Secrets Manager store (build mcp-auth with `--features aws`)"
            .to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn passwords_in_store_urls_are_never_shown() {
        for (url, shown) in [
            (
                "redis://app:s3cret@127.0.0.1:6379/",
                "redis://app:***@127.0.0.1:6379/",
            ),
            (
                "rediss://:s3cret@cache.example:6380",
                "rediss://:***@cache.example:6380",
            ),
            ("redis://s3cret@h", "redis://***@h"),
            (
                "redis+cluster://app:p%40ss@h1:7000,h2:7001/?tls_ca=/ca.pem",
                "redis+cluster://app:***@h1:7000,h2:7001/?tls_ca=/ca.pem",
            ),
            ("redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/"),
            ("sqlite:/home/me/store.db", "sqlite:/home/me/store.db"),
            ("aws-sm:team/", "aws-sm:team/"),
        ] {
            assert_eq!(redacted(url), shown, "{url}");
            assert!(!redacted(url).contains("s3cret"));
        }
    }
}
