//! What the store connects to and how: one node (`ConnectionManager`) or a Redis Cluster (the
//! `redis` crate's async cluster connection, which follows MOVED/ASK redirections and failovers),
//! over TCP or TLS (rustls, a custom CA, an optional client certificate), with ACL credentials.
//!
//! URLs: `redis://[user[:password]@]host:port[/db]`, `rediss://…` for TLS, and
//! `redis+cluster://[user[:password]@]h1:p1,h2:p2,…` (`rediss+cluster://` for TLS) whose hosts
//! are the cluster's seed nodes. TLS files come from the query parameters `tls_ca`, `tls_cert`
//! and `tls_key` (file paths) or from [`crate::RedisTls`]. The `redis` crate reads a `#insecure`
//! fragment as "accept any certificate"; this store refuses every fragment, and its build never
//! includes the crate's insecure TLS mode.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mcp_auth_core::ExposeSecret as _;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{
    ClientTlsConfig, Cmd, IntoConnectionInfo, Pipeline, RedisFuture, TlsCertificates, Value,
};

use mcp_auth_core::StoreError;

use crate::{BACKEND, RedisOptions, RedisStoreError, RedisTls, map_err, retry};

/// The connection every command goes through: cheap to clone, reconnects by itself.
#[derive(Clone)]
pub(crate) enum Conn {
    /// One Redis server.
    Single(ConnectionManager),
    /// A Redis Cluster: commands are routed by their keys' hash slot.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A store URL taken apart.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// `rediss`: TLS.
    pub(crate) tls: bool,
    /// `+cluster`: the hosts are seed nodes of a Redis Cluster.
    pub(crate) cluster: bool,
    /// One `redis[s]://[userinfo@]host[/path]` per host, without query or fragment.
    pub(crate) nodes: Vec<String>,
    /// TLS files named by the query.
    pub(crate) files: RedisTls,
}

/// Splits `url` into its nodes and TLS files. Errors never quote the URL (it may hold a
/// password).
pub(crate) fn parse(url: &str) -> Result<Target, RedisStoreError> {
    let invalid = |reason: &str| RedisStoreError::InvalidUrl(reason.to_owned());
    let (url, fragment) = match url.split_once('#') {
        Some((u, f)) => (u, Some(f)),
        None => (url, None),
    };
    if let Some(fragment) = fragment {
        return Err(if fragment == "insecure" {
            RedisStoreError::InsecureTlsRefused
        } else {
            invalid("a URL fragment ('#…') is not supported")
        });
    }
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        invalid("expected redis://, rediss://, redis+cluster:// or rediss+cluster://")
    })?;
    let (tls, cluster) = match scheme.to_ascii_lowercase().as_str() {
        "redis" => (false, false),
        "rediss" => (true, false),
        "redis+cluster" => (false, true),
        "rediss+cluster" => (true, true),
        _ => {
            return Err(invalid(
                "unknown scheme: use redis://, rediss://, redis+cluster:// or rediss+cluster://",
            ));
        }
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let hosts: Vec<&str> = hosts.split(',').map(str::trim).collect();
    if hosts.iter().any(|h| h.is_empty()) {
        return Err(invalid("a host is missing"));
    }
    if !cluster && hosts.len() > 1 {
        return Err(invalid(
            "several hosts need redis+cluster:// (or rediss+cluster://)",
        ));
    }
    if cluster && !matches!(path, "" | "/" | "/0") {
        return Err(invalid("a Redis Cluster has only database 0"));
    }
    let mut files = RedisTls::default();
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let slot = match name.as_ref() {
            "tls_ca" => &mut files.ca_file,
            "tls_cert" => &mut files.client_cert_file,
            "tls_key" => &mut files.client_key_file,
            _ => {
                return Err(invalid(
                    "unknown query parameter: the store reads tls_ca, tls_cert and tls_key",
                ));
            }
        };
        *slot = Some(PathBuf::from(value.as_ref()));
    }
    if !tls && files != RedisTls::default() {
        return Err(invalid("tls_ca, tls_cert and tls_key need rediss://"));
    }
    let node_scheme = if tls { "rediss" } else { "redis" };
    let nodes = hosts
        .iter()
        .map(|host| match userinfo {
            Some(u) => format!("{node_scheme}://{u}@{host}{path}"),
            None => format!("{node_scheme}://{host}{path}"),
        })
        .collect();
    Ok(Target {
        tls,
        cluster,
        nodes,
        files,
    })
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, RedisStoreError> {
    std::fs::read(path).map_err(|source| RedisStoreError::TlsFile {
        what,
        path: path.to_owned(),
        source,
    })
}

/// The CA and client certificate to use, read from their files; `None` for the system roots and
/// no client certificate.
fn certificates(tls: &RedisTls) -> Result<Option<TlsCertificates>, RedisStoreError> {
    let root_cert = tls
        .ca_file
        .as_deref()
        .map(|p| read_file("CA certificate", p))
        .transpose()?;
    let client_tls = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read_file("client certificate", cert)?,
            client_key: read_file("client key", key)?,
        }),
        (None, None) => None,
        _ => {
            return Err(RedisStoreError::InvalidUrl(
                "a client certificate needs both tls_cert and tls_key".to_owned(),
            ));
        }
    };
    Ok(
        (root_cert.is_some() || client_tls.is_some()).then_some(TlsCertificates {
            client_tls,
            root_cert,
        }),
    )
}

/// How to open the connection, before any network traffic.
// Built once per `connect` and consumed at once: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Opener {
    Single(redis::Client),
    Cluster(ClusterClient),
}

/// Builds the client for `url` and `options` (no network traffic yet). Options win over the URL
/// for credentials and TLS files.
pub(crate) fn opener(url: &str, options: &RedisOptions) -> Result<Opener, StoreError> {
    let invalid = |e: RedisStoreError| StoreError::backend(BACKEND, e);
    let target = parse(url).map_err(invalid)?;
    let tls = RedisTls {
        ca_file: options.tls.ca_file.clone().or(target.files.ca_file),
        client_cert_file: options
            .tls
            .client_cert_file
            .clone()
            .or(target.files.client_cert_file),
        client_key_file: options
            .tls
            .client_key_file
            .clone()
            .or(target.files.client_key_file),
    };
    if !target.tls && tls != RedisTls::default() {
        return Err(invalid(RedisStoreError::InvalidUrl(
            "RedisOptions::tls needs a rediss:// URL".to_owned(),
        )));
    }
    let certs = certificates(&tls).map_err(invalid)?;
    if target.cluster {
        let mut builder = ClusterClientBuilder::new(target.nodes)
            .connection_timeout(options.response_timeout)
            .response_timeout(options.response_timeout)
            // The store's retry budget owns the waiting; the cluster connection itself retries
            // a few times (redirections, a refreshed slot map) within one attempt.
            .retries(CLUSTER_RETRIES)
            .max_retry_wait(duration_ms(retry::MAX_DELAY))
            .min_retry_wait(duration_ms(retry::FIRST_DELAY));
        if let Some(user) = &options.username {
            builder = builder.username(user);
        }
        if let Some(password) = &options.password {
            builder = builder.password(password.expose_secret());
        }
        if let Some(certs) = certs {
            builder = builder.certs(certs);
        }
        return builder.build().map(Opener::Cluster).map_err(map_err);
    }
    let node = target.nodes.into_iter().next().unwrap_or_default();
    let mut info = node.into_connection_info().map_err(map_err)?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &options.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &options.password {
        settings = settings.set_password(password.expose_secret());
    }
    info = info.set_redis_settings(settings);
    match certs {
        Some(certs) => redis::Client::build_with_tls(info, certs),
        None => redis::Client::open(info),
    }
    .map(Opener::Single)
    .map_err(map_err)
}

/// Retries the cluster connection makes inside one store attempt.
const CLUSTER_RETRIES: u32 = 6;

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Opener {
    /// Opens the connection: lazily for one node (the first command connects), eagerly for a
    /// cluster (the slot map is read now), within the retry budget.
    pub(crate) async fn open(self, options: &RedisOptions) -> Result<Conn, retry::GaveUp> {
        match self {
            Opener::Single(client) => {
                // The manager makes one connection attempt per reconnect (bounded by the
                // connection timeout); this store's retry loop owns the backoff and the budget.
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(options.response_timeout))
                    .set_connection_timeout(Some(options.response_timeout))
                    .set_number_of_retries(0)
                    .set_min_delay(retry::FIRST_DELAY)
                    .set_max_delay(retry::MAX_DELAY);
                ConnectionManager::new_lazy_with_config(client, config)
                    .map(Conn::Single)
                    .map_err(|error| retry::GaveUp {
                        error,
                        maybe_applied: false,
                    })
            }
            Opener::Cluster(client) => {
                retry::within(&client, options.retry_budget, |c| async move {
                    c.get_async_connection().await
                })
                .await
                .map(Conn::Cluster)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_nodes_and_tls_files() {
        let t = parse("redis+cluster://u:p%40w@10.0.0.1:7000,10.0.0.2:7001/").unwrap();
        assert!(t.cluster && !t.tls);
        assert_eq!(
            t.nodes,
            [
                "redis://u:p%40w@10.0.0.1:7000/",
                "redis://u:p%40w@10.0.0.2:7001/"
            ]
        );
        let t =
            parse("rediss://h:6380/2?tls_ca=/etc/ca.pem&tls_cert=c.pem&tls_key=k%20.pem").unwrap();
        assert!(t.tls && !t.cluster);
        assert_eq!(t.nodes, ["rediss://h:6380/2"]);
        assert_eq!(t.files.ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(
            t.files.client_key_file.as_deref(),
            Some(Path::new("k .pem"))
        );
    }

    #[test]
    fn unsafe_or_wrong_urls_are_refused_without_quoting_them() {
        for (url, expected) in [
            ("rediss://h:1/#insecure", "insecure"),
            ("rediss://h:1/#x", "fragment"),
            ("redis://a:1,b:2/", "redis+cluster"),
            ("redis://h:1/?tls_ca=x", "rediss"),
            ("rediss://h:1/?password=x", "unknown query"),
            ("redis+cluster://h:1/3", "database 0"),
            ("http://h/", "scheme"),
            ("redis+cluster://secret@h:1,/", "missing"),
        ] {
            let e = parse(url).unwrap_err().to_string();
            assert!(e.contains(expected), "{url}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }
}
