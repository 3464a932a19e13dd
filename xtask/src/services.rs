//! Starting the real services tests talk to: a free loopback port, a child process, a readiness
//! wait, and a stop that runs on every exit path (the child is killed when its handle drops,
//! including after a failed step or a panic).
//!
//! Backend issues wire their services (Redis, moto, keyrings) into `test-all` through these.
#![allow(dead_code)] // Some helpers serve the backend crates still to land.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it).
pub(crate) fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("cannot bind a loopback port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("cannot read the bound port: {e}"))
}

/// True when something accepts TCP connections on 127.0.0.1:`port`.
pub(crate) fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Installs Debian packages when `command` is not on the PATH (CI machines start bare).
pub(crate) fn ensure_installed(command: &str, packages: &[&str]) -> Result<(), String> {
    if which(command) {
        return Ok(());
    }
    println!("==> installing {} (for {command})", packages.join(" "));
    apt_install(packages)?;
    if !which(command) {
        return Err(format!(
            "installing {} did not provide {command}",
            packages.join(" ")
        ));
    }
    Ok(())
}

/// `apt-get update` and `apt-get install` of `packages`, then `apt-get clean`: the downloaded
/// archives (chromium's alone are ~100 MB) are not kept on a CI disk that the build needs.
fn apt_install(packages: &[&str]) -> Result<(), String> {
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("cannot run apt-get: {e}"))
    };
    if !apt(&["update", "-qq"])?.success() {
        return Err("apt-get update failed".to_owned());
    }
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend_from_slice(packages);
    let installed = apt(&install)?.success();
    // Best effort: a failed clean leaves the cache, which costs space, not correctness.
    let _ = apt(&["clean"]);
    if installed {
        Ok(())
    } else {
        Err(format!("apt-get install {} failed", packages.join(" ")))
    }
}

/// True when `command` is found on the PATH.
pub(crate) fn which(command: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(command).is_file()))
}

/// The headless browser of the browser-path tests (mcp-auth-cli/tests/it/browser.rs, which read
/// it from `MCP_AUTH_TEST_CHROMIUM`): Debian's `chromium`, installed if missing. Its path.
pub(crate) fn chromium() -> Result<std::path::PathBuf, String> {
    ensure_installed("chromium", &["chromium"])?;
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("chromium"))
                .find(|candidate| candidate.is_file())
        })
        .ok_or_else(|| "chromium is not on the PATH".to_owned())
}

/// Starts a throwaway `redis-server` on a free loopback port (installing Debian's package if
/// needed): no persistence, its own temporary directory. Returns the service and its URL.
pub(crate) fn start_redis() -> Result<(Service, String), String> {
    ensure_installed("redis-server", &["redis-server"])?;
    let port = free_port()?;
    let dir = std::env::temp_dir().join(format!("mcp-auth-redis-{port}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut command = Command::new("redis-server");
    command
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let service = Service::start("redis-server", command, Duration::from_secs(20), || {
        port_open(port)
    })?;
    println!("==> redis-server on 127.0.0.1:{port}");
    Ok((service, format!("redis://127.0.0.1:{port}/")))
}

/// The Redis deployments the Redis store is proven against besides the plain server: a Redis
/// Cluster (3 masters, 1 replica each), a TLS-only server with certificates made here, and an ACL
/// user with the narrow rule set of the store's README (on the plain server). Everything stops
/// when this drops.
pub(crate) struct RedisDeployments {
    _services: Vec<Service>,
    /// The environment that points the tests at them.
    pub(crate) env: Vec<(&'static str, String)>,
}

/// The ACL rules the store's README documents as the minimum (its tests use them on the plain
/// server, for the `mcp-auth` key prefix).
pub(crate) const REDIS_TEST_ACL: &[&str] = &[
    "on",
    "resetkeys",
    "~mcp-auth:*",
    "resetchannels",
    "-@all",
    "+@read",
    "+@write",
    "+evalsha",
    "+script|load",
    "+ping",
];

/// Starts [`RedisDeployments`] beside the plain server on `plain_port` (where the ACL user is
/// created). Takes a few seconds, most of it the cluster agreeing on its slots.
pub(crate) fn start_redis_deployments(plain_port: u16) -> Result<RedisDeployments, String> {
    ensure_installed("redis-cli", &["redis-tools"])?;
    ensure_installed("openssl", &["openssl"])?;
    let mut services = Vec::new();
    let mut env = Vec::new();

    // ACL user on the plain server.
    let password = format!("acl-test-{}", std::process::id());
    let mut setuser = vec!["ACL", "SETUSER", "mcp-auth-test", "reset"];
    let secret = format!(">{password}");
    setuser.push(&secret);
    setuser.extend_from_slice(REDIS_TEST_ACL);
    redis_cli(plain_port, &setuser)?;
    env.push((
        "MCP_AUTH_TEST_REDIS_ACL_URL",
        format!("redis://mcp-auth-test:{password}@127.0.0.1:{plain_port}/"),
    ));

    // TLS-only server.
    let dir = std::env::temp_dir().join(format!("mcp-auth-redis-tls-{}", std::process::id()));
    make_test_certificates(&dir)?;
    let tls_port = free_port()?;
    let mut command = Command::new("redis-server");
    command
        .args(["--port", "0", "--tls-port", &tls_port.to_string()])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .arg("--tls-cert-file")
        .arg(dir.join("server.pem"))
        .arg("--tls-key-file")
        .arg(dir.join("server.key"))
        .arg("--tls-ca-cert-file")
        .arg(dir.join("ca.pem"))
        .args(["--tls-auth-clients", "optional"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    services.push(Service::start(
        "redis-server (TLS)",
        command,
        Duration::from_secs(20),
        || port_open(tls_port),
    )?);
    println!("==> redis-server (TLS only) on 127.0.0.1:{tls_port}");
    env.push((
        "MCP_AUTH_TEST_REDIS_TLS_URL",
        format!("rediss://127.0.0.1:{tls_port}/"),
    ));
    for (var, file) in [
        ("MCP_AUTH_TEST_REDIS_TLS_CA", "ca.pem"),
        ("MCP_AUTH_TEST_REDIS_TLS_CLIENT_CERT", "client.pem"),
        ("MCP_AUTH_TEST_REDIS_TLS_CLIENT_KEY", "client.key"),
        ("MCP_AUTH_TEST_REDIS_TLS_OTHER_CA", "other-ca.pem"),
        (
            "MCP_AUTH_TEST_REDIS_TLS_OTHER_CLIENT_CERT",
            "other-client.pem",
        ),
        (
            "MCP_AUTH_TEST_REDIS_TLS_OTHER_CLIENT_KEY",
            "other-client.key",
        ),
    ] {
        env.push((var, dir.join(file).display().to_string()));
    }

    // Cluster: 3 masters, 1 replica each.
    let (cluster, url) = start_redis_cluster(3, 1)?;
    services.extend(cluster);
    env.push(("MCP_AUTH_TEST_REDIS_CLUSTER_URL", url));
    Ok(RedisDeployments {
        _services: services,
        env,
    })
}

/// Runs `redis-cli -p port ARGS…` and returns its output.
pub(crate) fn redis_cli(port: u16, args: &[&str]) -> Result<String, String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .map_err(|e| format!("cannot run redis-cli: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || text.starts_with("ERR") || text.starts_with("(error)") {
        return Err(format!(
            "redis-cli {} failed: {text}{}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(text)
}

/// A Redis Cluster of `masters` masters with `replicas` replicas each, on free loopback ports
/// (`redis-cli --cluster create`), ready (`cluster_state:ok` on every node). Returns its servers
/// and a `redis+cluster://` URL naming every node as a seed.
pub(crate) fn start_redis_cluster(
    masters: usize,
    replicas: usize,
) -> Result<(Vec<Service>, String), String> {
    let mut services = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..masters * (1 + replicas) {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("mcp-auth-redis-cluster-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args(["--cluster-node-timeout", "2000"])
            // A replica's first sync starts at once, not 5 s later (the default): writes made
            // before it ends have no replica to wait for.
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        services.push(Service::start(
            "redis-server (cluster node)",
            command,
            Duration::from_secs(20),
            || port_open(port),
        )?);
        ports.push(port);
    }
    let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let created = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&nodes)
        .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run redis-cli: {e}"))?;
    if !created.success() {
        return Err(format!("redis-cli --cluster create failed ({created})"));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for port in &ports {
        loop {
            let info = redis_cli(*port, &["CLUSTER", "INFO"]).unwrap_or_default();
            if info.contains("cluster_state:ok") {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the Redis Cluster on {} did not reach cluster_state:ok",
                    nodes.join(",")
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
    // Every replica has finished its first sync, so writes are replicated from the start.
    loop {
        let synced = ports
            .iter()
            .filter(|p| {
                let info = redis_cli(**p, &["INFO", "replication"]).unwrap_or_default();
                info.contains("role:slave")
                    && info.contains("master_link_status:up")
                    && info.contains("master_sync_in_progress:0")
            })
            .count();
        if synced == masters * replicas {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "only {synced} of the Redis Cluster's {} replicas finished their first sync",
                masters * replicas
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
    println!(
        "==> Redis Cluster ({masters} masters, {replicas} replica each) on {}",
        nodes.join(",")
    );
    Ok((services, format!("redis+cluster://{}/", nodes.join(","))))
}

/// Makes, in `dir`, a CA (`ca.pem`), a server certificate for 127.0.0.1 signed by it
/// (`server.pem`, `server.key`), a client certificate signed by it (`client.pem`,
/// `client.key`), and a second CA with its own client certificate (`other-ca.pem`,
/// `other-client.pem`, `other-client.key`) for the tests that must be refused.
fn make_test_certificates(dir: &std::path::Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let openssl = |args: &[&str]| -> Result<(), String> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| format!("cannot run openssl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "openssl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    for ca in ["ca", "other-ca"] {
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=mcp-auth test {ca}"),
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
        ])?;
    }
    for (name, ca, ext) in [
        ("server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ("client", "ca", "extendedKeyUsage=clientAuth"),
        ("other-client", "other-ca", "extendedKeyUsage=clientAuth"),
    ] {
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN=mcp-auth test {name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ])?;
        let ext_file = format!("{name}.ext");
        std::fs::write(dir.join(&ext_file), format!("{ext}\n"))
            .map_err(|e| format!("cannot write {ext_file}: {e}"))?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext_file,
            "-out",
            &format!("{name}.pem"),
        ])?;
    }
    Ok(())
}

/// What the AWS Secrets Manager store is tested against: moto's server mode, pinned.
pub(crate) const MOTO_REQUIREMENTS: &[&str] = &["moto[server]==5.2.5", "flask", "flask-cors"];

/// The region, and static credentials moto accepts, that the AWS tests use.
pub(crate) const AWS_TEST_REGION: &str = "us-east-1";

/// `target/moto-venv/bin/moto_server`, creating the virtualenv with [`MOTO_REQUIREMENTS`] when it
/// is missing or was made for other requirements (a marker file records them).
pub(crate) fn moto_server_binary() -> Result<std::path::PathBuf, String> {
    let venv = crate::project_root().join("target/moto-venv");
    let bin = venv.join("bin/moto_server");
    let marker = venv.join(".mcp-auth-requirements");
    let wanted = MOTO_REQUIREMENTS.join(" ");
    if bin.is_file() && std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) {
        return Ok(bin);
    }
    ensure_installed("python3", &["python3", "python3-venv"])?;
    println!("==> creating {} with {wanted}", venv.display());
    if venv.exists() {
        std::fs::remove_dir_all(&venv)
            .map_err(|e| format!("cannot remove the old {}: {e}", venv.display()))?;
    }
    let created = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !created.success() {
        // Debian's python3 needs python3-venv (ensurepip) for `-m venv`.
        let _ = std::fs::remove_dir_all(&venv);
        println!("==> installing python3-venv (for python3 -m venv)");
        apt_install(&["python3-venv"])?;
        let again = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .map_err(|e| format!("cannot run python3: {e}"))?;
        if !again.success() {
            return Err(format!("python3 -m venv {} failed", venv.display()));
        }
    }
    let installed = Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-cache-dir",
        ])
        .args(MOTO_REQUIREMENTS)
        .status()
        .map_err(|e| format!("cannot run pip: {e}"))?;
    if !installed.success() || !bin.is_file() {
        return Err(format!("pip install {wanted} failed"));
    }
    std::fs::write(&marker, &wanted)
        .map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
    Ok(bin)
}

/// True when moto answers its API on 127.0.0.1:`port`.
fn moto_ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

/// Starts a throwaway `moto_server` (AWS service emulator; the virtualenv is created under
/// target/ when missing) on a free loopback port. Returns the service and its endpoint URL.
pub(crate) fn start_moto() -> Result<(Service, String), String> {
    let bin = moto_server_binary()?;
    let port = free_port()?;
    let mut command = Command::new(bin);
    command
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let service = Service::start("moto_server", command, Duration::from_secs(60), || {
        moto_ready(port)
    })?;
    let endpoint = format!("http://127.0.0.1:{port}");
    println!("==> moto_server (AWS Secrets Manager emulator) on {endpoint}");
    Ok((service, endpoint))
}

/// The environment the AWS store's tests and benchmark run with: the moto endpoint, a region,
/// static credentials, and the instance metadata service switched off, so that nothing, not even
/// an SDK client built from the default configuration, can reach AWS or 169.254.169.254.
pub(crate) fn aws_test_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("MCP_AUTH_TEST_AWS_ENDPOINT", endpoint.to_owned()),
        ("AWS_ENDPOINT_URL", endpoint.to_owned()),
        ("AWS_REGION", AWS_TEST_REGION.to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ]
}

/// The command prefix that runs tests with throwaway OS keyrings: a private kernel session
/// keyring (`keyctl session -`), a private D-Bus session (`dbus-run-session`) and an unlocked
/// gnome-keyring in a temporary directory (`mcp-auth-store-keyring/scripts/with-keyrings.sh`).
/// Installs Debian's packages when they are missing.
pub(crate) fn keyring_session() -> Result<Vec<String>, String> {
    ensure_installed("keyctl", &["keyutils"])?;
    ensure_installed("dbus-run-session", &["dbus"])?;
    ensure_installed("gnome-keyring-daemon", &["gnome-keyring"])?;
    let script = crate::project_root().join("mcp-auth-store-keyring/scripts/with-keyrings.sh");
    Ok(vec![
        "keyctl".to_owned(),
        "session".to_owned(),
        "-".to_owned(),
        "dbus-run-session".to_owned(),
        "--".to_owned(),
        "sh".to_owned(),
        script.display().to_string(),
    ])
}

/// A running service; killed and reaped when dropped.
pub(crate) struct Service {
    name: String,
    child: Child,
}

impl Service {
    /// Spawns `command` and waits up to `timeout` for `ready` to return true. If the process exits
    /// or never becomes ready, it is killed and an error says which.
    pub(crate) fn start(
        name: &str,
        mut command: Command,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<Self, String> {
        command.stdin(Stdio::null());
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let mut service = Self {
            name: name.to_owned(),
            child,
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = service.child.try_wait() {
                return Err(format!("{name} exited during startup ({status})"));
            }
            if ready() {
                return Ok(service);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{name} was not ready after {:.1}s",
                    timeout.as_secs_f64()
                ));
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// The service's process id.
    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        println!("==> stopped {}", self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable() {
        // Another process may grab the port between the two binds (other tests run in
        // parallel); three fresh ports all being taken would mean free_port is broken.
        let bound = (0..3).any(|_| {
            let port = free_port().unwrap();
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
        });
        assert!(bound);
    }

    #[test]
    fn service_is_ready_then_stopped_on_drop() {
        let port = free_port().unwrap();
        let mut cmd = Command::new("python3");
        cmd.args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let service = Service::start("http.server", cmd, Duration::from_secs(20), || {
            port_open(port)
        })
        .unwrap();
        assert!(port_open(port));
        let pid = service.id();
        drop(service);
        assert!(!port_open(port));
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}/status")).exists() || {
                // A reaped pid may be reused, but not as our server.
                !port_open(port)
            }
        );
    }

    #[test]
    fn failed_startup_is_reported() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exit 3"]);
        let err = Service::start("failing", cmd, Duration::from_secs(5), || false)
            .err()
            .unwrap();
        assert!(err.contains("exited during startup"), "{err}");
        let cmd = Command::new("sleep");
        let mut cmd = cmd;
        cmd.arg("30");
        let err = Service::start("slow", cmd, Duration::from_millis(100), || false)
            .err()
            .unwrap();
        assert!(err.contains("not ready"), "{err}");
    }
}
