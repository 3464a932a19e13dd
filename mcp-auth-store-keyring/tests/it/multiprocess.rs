//! The keyring store across processes, on the real keyrings: two processes writing one namespace
//! at once never lose an index entry, the lock file is the same whatever the environment, and
//! refresh leases are exclusive (and renewed and released only by their holder) between
//! processes. Run through `scripts/with-keyrings.sh` (see the README).
//!
//! Worker processes are this test binary re-executed with `MCP_AUTH_KEYRING_WORKER` set,
//! running the ignored `worker` test; they inherit the private session keyring and D-Bus
//! session.
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mcp_auth_core::{
    BindingStore, Expect, IssuerId, Namespace, RefreshLease, ResourceBinding, ResourceUri,
    SecretString, StoreError, StoreInfo, TokenKey, TokenSet, TokenStore,
};
use mcp_auth_store_keyring::{KeyringBackend, KeyringOptions, KeyringStore, testing};

const HOW: &str = "the keyring tests need a private session keyring, a D-Bus session and an \
unlocked gnome-keyring: run them through mcp-auth-store-keyring/scripts/with-keyrings.sh (see \
the crate README; MCP_AUTH_TEST_KEYRINGS is not set)";

const BACKENDS: [KeyringBackend; 2] = [KeyringBackend::SecretService, KeyringBackend::Keyutils];

fn backend_name(backend: KeyringBackend) -> &'static str {
    match backend {
        KeyringBackend::SecretService => "secret-service",
        KeyringBackend::Keyutils => "keyutils",
        _ => panic!("unknown backend"),
    }
}

fn backend_named(name: &str) -> KeyringBackend {
    BACKENDS
        .into_iter()
        .find(|b| backend_name(*b) == name)
        .unwrap()
}

fn issuer() -> IssuerId {
    IssuerId::new("https://as.example").unwrap()
}

fn resource(i: usize) -> ResourceUri {
    ResourceUri::new(format!("https://mcp-{i}.example/mcp")).unwrap()
}

fn token_key(i: usize) -> TokenKey {
    TokenKey::new(issuer(), resource(i))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn sleep_until_ms(at: u64) {
    let now = now_ms();
    if at > now {
        std::thread::sleep(Duration::from_millis(at - now));
    }
}

async fn open(backend: KeyringBackend, namespace: &str) -> KeyringStore {
    if std::env::var_os("MCP_AUTH_TEST_KEYRINGS").is_none() {
        panic!("{HOW}");
    }
    KeyringStore::open(
        backend,
        KeyringOptions {
            namespace: Namespace::new(namespace).unwrap(),
        },
    )
    .await
    .unwrap()
}

fn spawn_worker(
    mode: &str,
    backend: KeyringBackend,
    namespace: &str,
    env: &[(&str, String)],
) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "multiprocess::worker",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("MCP_AUTH_KEYRING_WORKER", mode)
    .env("MCP_AUTH_KEYRING_BACKEND", backend_name(backend))
    .env("MCP_AUTH_KEYRING_NS", namespace)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// Collects the lines a worker prints after `WORKER `.
fn collect_lines(child: &mut Child, sink: Arc<Mutex<Vec<String>>>) -> std::thread::JoinHandle<()> {
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some((_, payload)) = line.split_once("WORKER ") {
                sink.lock().unwrap().push(payload.to_owned());
            }
        }
    })
}

/// Runs `children` to completion and returns every worker line, each tagged `<child index> `.
fn wait_all(children: Vec<Child>) -> Vec<String> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let mut running = Vec::new();
    for (i, mut child) in children.into_iter().enumerate() {
        let mine = Arc::new(Mutex::new(Vec::new()));
        let reader = collect_lines(&mut child, Arc::clone(&mine));
        running.push((i, child, reader, mine));
    }
    for (i, mut child, reader, mine) in running {
        let status = child.wait().unwrap();
        reader.join().unwrap();
        assert!(status.success(), "worker {i} failed: {status}");
        let mut all = lines.lock().unwrap();
        all.extend(mine.lock().unwrap().iter().map(|l| format!("{i} {l}")));
    }
    Arc::try_unwrap(lines).unwrap().into_inner().unwrap()
}

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("worker needs {key}"))
}

fn env_u64(key: &str) -> u64 {
    env(key).parse().unwrap()
}

/// The body of every worker process; a no-op when run directly.
#[test]
#[ignore = "worker process body, started by the other tests"]
fn worker() {
    let Ok(mode) = std::env::var("MCP_AUTH_KEYRING_WORKER") else {
        return;
    };
    let backend = backend_named(&env("MCP_AUTH_KEYRING_BACKEND"));
    let namespace = env("MCP_AUTH_KEYRING_NS");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = open(backend, &namespace).await;
        let mut out = std::io::stdout().lock();
        match mode.as_str() {
            // Like one `mcp-auth login` per trial: a binding and tokens for this worker's own
            // MCP server, in the trial's namespace, at the trial's start time.
            "login" => {
                let id = env_u64("WORKER_ID") as usize;
                let start = env_u64("START_AT_MS");
                let slot = env_u64("SLOT_MS");
                for trial in 0..env_u64("TRIALS") {
                    let store = store.with_namespace(trial_namespace(&namespace, trial));
                    sleep_until_ms(start + trial * slot);
                    let binding = ResourceBinding::new(resource(id), issuer());
                    let tokens = TokenSet::new(SecretString::from(format!("access-{id}")));
                    let result = async {
                        store.put_binding(&binding, Expect::Any).await?;
                        store.put_tokens(&token_key(id), &tokens, Expect::Any).await
                    }
                    .await;
                    match result {
                        Ok(_) => writeln!(out, "WORKER OK {trial}").unwrap(),
                        Err(e) => writeln!(out, "WORKER ERR {trial} {e}").unwrap(),
                    }
                }
            }
            // Every worker asks for the same lease at the same moment, once.
            "lease-race" => {
                sleep_until_ms(env_u64("START_AT_MS"));
                let got = store
                    .try_acquire_refresh_lease(&token_key(0), Duration::from_secs(60))
                    .await
                    .unwrap();
                writeln!(out, "WORKER {}", if got.is_some() { "GOT" } else { "NONE" }).unwrap();
            }
            // Takes the lease whenever it is free, holds it briefly, releases it; reports the
            // lock file it uses and every interval it held the lease.
            "lease-loop" => {
                writeln!(out, "WORKER LOCK {}", store.lock_file().unwrap().display()).unwrap();
                let start = env_u64("START_AT_MS");
                sleep_until_ms(start);
                let end = start + env_u64("DURATION_MS");
                // Until the end, and at least one turn (a late start must not make it vacuous).
                let mut turns = 0;
                while now_ms() < end || (turns == 0 && now_ms() < end + 10_000) {
                    let lease = store
                        .try_acquire_refresh_lease(&token_key(0), Duration::from_secs(30))
                        .await
                        .unwrap();
                    match lease {
                        Some(lease) => {
                            let from = now_ms();
                            std::thread::sleep(Duration::from_millis(10));
                            let to = now_ms();
                            assert!(store.release_refresh_lease(&lease).await.unwrap());
                            writeln!(out, "WORKER HELD {from} {to}").unwrap();
                            turns += 1;
                        }
                        None => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            }
            // One lease holder driven line by line from stdin.
            "script" => {
                let mut held: Option<RefreshLease> = None;
                for line in std::io::stdin().lines() {
                    let line = line.unwrap();
                    let parts: Vec<&str> = line.split_whitespace().collect();
                    let ttl = |s: &str| Duration::from_millis(s.parse().unwrap());
                    let answer = match parts[..] {
                        ["acquire", ms] => {
                            held = store
                                .try_acquire_refresh_lease(&token_key(0), ttl(ms))
                                .await
                                .unwrap();
                            if held.is_some() { "GOT" } else { "NONE" }.to_owned()
                        }
                        ["renew", ms] => {
                            let lease = held.as_ref().unwrap();
                            match store.renew_refresh_lease(lease, ttl(ms)).await.unwrap() {
                                Some(renewed) => {
                                    assert_eq!(renewed.token(), lease.token());
                                    held = Some(renewed);
                                    "RENEWED".to_owned()
                                }
                                None => "NONE".to_owned(),
                            }
                        }
                        ["release"] => {
                            let released = store
                                .release_refresh_lease(held.as_ref().unwrap())
                                .await
                                .unwrap();
                            if released { "RELEASED" } else { "NOT-HELD" }.to_owned()
                        }
                        _ => panic!("unknown command {line}"),
                    };
                    writeln!(out, "WORKER {answer}").unwrap();
                    out.flush().unwrap();
                }
            }
            other => panic!("unknown worker mode {other}"),
        }
        out.flush().unwrap();
    });
}

fn trial_namespace(base: &str, trial: u64) -> Namespace {
    Namespace::new(format!("{base}-{trial}")).unwrap()
}

/// Removes the lock files of a namespace nobody else uses (the store removes them only once the
/// namespace is empty and no lease is held).
fn remove_lock_file(store: &KeyringStore) {
    let lock = store.lock_file().unwrap();
    let _ = std::fs::remove_file(lock.with_extension("leases"));
    let _ = std::fs::remove_file(lock.with_extension("leases.lock"));
    let _ = std::fs::remove_file(lock);
}

/// Two processes write their own records into one namespace at the same moment, 100 times:
/// afterwards every record is listed (the index is read, changed and written under the lock).
async fn two_logins_at_once_lose_no_index_entry(backend: KeyringBackend, slot_ms: u64) {
    const TRIALS: u64 = 100;
    let base = Namespace::random("keyring-mp-index");
    let store = open(backend, base.as_str()).await;
    let start = now_ms() + 1500;
    let workers: Vec<Child> = (0..2)
        .map(|id| {
            spawn_worker(
                "login",
                backend,
                base.as_str(),
                &[
                    ("WORKER_ID", id.to_string()),
                    ("START_AT_MS", start.to_string()),
                    ("SLOT_MS", slot_ms.to_string()),
                    ("TRIALS", TRIALS.to_string()),
                ],
            )
        })
        .collect();
    let lines = wait_all(workers);
    let errors: Vec<&String> = lines.iter().filter(|l| l.contains(" ERR ")).collect();
    assert!(errors.is_empty(), "worker writes failed: {errors:?}");
    assert_eq!(lines.len(), 2 * TRIALS as usize, "{lines:?}");

    let mut lost = 0;
    let mut damaged_trials = BTreeSet::new();
    for trial in 0..TRIALS {
        let ns = store.with_namespace(trial_namespace(base.as_str(), trial));
        let tokens: BTreeSet<TokenKey> = ns.list_tokens().await.unwrap().into_iter().collect();
        let bindings: BTreeSet<ResourceUri> =
            ns.list_bindings().await.unwrap().into_iter().collect();
        for id in 0..2 {
            // The records themselves are there; only the index could lose them.
            assert!(ns.get_tokens(&token_key(id)).await.unwrap().is_some());
            lost += usize::from(!tokens.contains(&token_key(id)));
            lost += usize::from(!bindings.contains(&resource(id)));
            if !tokens.contains(&token_key(id)) || !bindings.contains(&resource(id)) {
                damaged_trials.insert(trial);
            }
        }
    }
    println!(
        "{}: {TRIALS} trials of two concurrent logins, {lost} lost index entries in {} trials",
        backend_name(backend),
        damaged_trials.len()
    );
    // Kernel keys outlive the test's session keyring (the store links them into the user's
    // persistent keyring): leave nothing behind.
    for trial in 0..TRIALS {
        let ns = store.with_namespace(trial_namespace(base.as_str(), trial));
        for id in 0..2 {
            ns.delete_tokens(&token_key(id), Expect::Any).await.unwrap();
            ns.delete_binding(&resource(id), Expect::Any).await.unwrap();
        }
        if lost == 0 {
            // An empty namespace leaves no lock file behind.
            let lock = ns.lock_file().unwrap();
            assert!(!lock.exists(), "{} is left behind", lock.display());
        } else {
            testing::set_index_item(&ns, None).await.unwrap();
            remove_lock_file(&ns);
        }
    }
    assert_eq!(
        lost,
        0,
        "{lost} index entries lost in {} of {TRIALS} trials: {damaged_trials:?}",
        damaged_trials.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_service_two_logins_at_once_lose_no_index_entry() {
    two_logins_at_once_lose_no_index_entry(KeyringBackend::SecretService, 120).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyutils_two_logins_at_once_lose_no_index_entry() {
    two_logins_at_once_lose_no_index_entry(KeyringBackend::Keyutils, 40).await;
}

/// Two processes whose `XDG_RUNTIME_DIR`, `TMPDIR` and `HOME` differ use the same lock file, and
/// take turns with one refresh lease: never both at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_and_the_lease_do_not_depend_on_the_environment() {
    for backend in BACKENDS {
        let ns = Namespace::random("keyring-mp-env");
        let store = open(backend, ns.as_str()).await;
        let expected = store.lock_file().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let start = now_ms() + 1500;
        let workers: Vec<Child> = ["a", "b"]
            .into_iter()
            .map(|who| {
                let dir = |name: &str| {
                    let d = scratch.path().join(who).join(name);
                    std::fs::create_dir_all(&d).unwrap();
                    d.display().to_string()
                };
                spawn_worker(
                    "lease-loop",
                    backend,
                    ns.as_str(),
                    &[
                        ("XDG_RUNTIME_DIR", dir("run")),
                        ("TMPDIR", dir("tmp")),
                        ("HOME", dir("home")),
                        ("XDG_DATA_HOME", dir("data")),
                        ("START_AT_MS", start.to_string()),
                        ("DURATION_MS", "1500".to_owned()),
                    ],
                )
            })
            .collect();
        let lines = wait_all(workers);
        let mut held: Vec<(u64, u64, String)> = Vec::new();
        for line in &lines {
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts[..] {
                [_, "LOCK", path] => assert_eq!(path, expected.display().to_string()),
                [who, "HELD", from, to] => {
                    held.push((from.parse().unwrap(), to.parse().unwrap(), who.to_owned()))
                }
                _ => panic!("unexpected worker line {line}"),
            }
        }
        held.sort();
        for pair in held.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "{}: the lease was held twice at once: {:?} and {:?}",
                backend_name(backend),
                pair[0],
                pair[1]
            );
        }
        for who in ["0", "1"] {
            let turns = held.iter().filter(|h| h.2 == who).count();
            assert!(turns > 0, "worker {who} never got the lease: {held:?}");
        }
        println!(
            "{}: {} turns with the lease, none overlapping, one lock file {}",
            backend_name(backend),
            held.len(),
            expected.display()
        );
        remove_lock_file(&store);
    }
}

/// Six processes ask for one free lease at the same moment: exactly one gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_lease_is_exclusive_across_processes() {
    for backend in BACKENDS {
        for _round in 0..3 {
            let ns = Namespace::random("keyring-mp-lease");
            let store = open(backend, ns.as_str()).await;
            let start = now_ms() + 1200;
            let workers: Vec<Child> = (0..6)
                .map(|_| {
                    spawn_worker(
                        "lease-race",
                        backend,
                        ns.as_str(),
                        &[("START_AT_MS", start.to_string())],
                    )
                })
                .collect();
            let lines = wait_all(workers);
            assert_eq!(lines.len(), 6, "{lines:?}");
            let winners = lines.iter().filter(|l| l.ends_with(" GOT")).count();
            assert_eq!(winners, 1, "{}: {lines:?}", backend_name(backend));
            // The winner exited without releasing: the lease is still live for everyone else.
            assert!(
                store
                    .try_acquire_refresh_lease(&token_key(0), Duration::from_secs(1))
                    .await
                    .unwrap()
                    .is_none()
            );
            remove_lock_file(&store);
        }
    }
}

struct Scripted {
    child: Child,
    stdin: ChildStdin,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Scripted {
    fn start(backend: KeyringBackend, ns: &Namespace) -> Self {
        let mut child = spawn_worker("script", backend, ns.as_str(), &[]);
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            child,
            stdin,
            lines,
        }
    }

    fn ask(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        for line in self.lines.by_ref() {
            let line = line.unwrap();
            if let Some((_, answer)) = line.split_once("WORKER ") {
                return answer.to_owned();
            }
        }
        panic!("the worker ended before answering {command}");
    }

    fn finish(self) {
        drop(self.stdin);
        let mut child = self.child;
        assert!(child.wait().unwrap().success());
    }
}

/// Renewal and release across processes: a holder renews its live lease; once it expired and
/// another process took it, the old holder can neither renew nor release it; once that lease is
/// released, the old holder takes it back by renewing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_and_release_follow_the_holder_across_processes() {
    for backend in BACKENDS {
        let ns = Namespace::random("keyring-mp-renew");
        let store = open(backend, ns.as_str()).await;
        let acquire = |ttl: u64| {
            let store = store.clone();
            async move {
                store
                    .try_acquire_refresh_lease(&token_key(0), Duration::from_millis(ttl))
                    .await
                    .unwrap()
            }
        };
        let mut other = Scripted::start(backend, &ns);
        assert_eq!(other.ask("acquire 1500"), "GOT");
        assert!(acquire(30_000).await.is_none(), "a live lease was granted");
        assert_eq!(other.ask("renew 1000"), "RENEWED");
        assert!(
            acquire(30_000).await.is_none(),
            "a renewed lease was granted"
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let mine = acquire(30_000)
            .await
            .expect("an expired lease was not taken over");
        assert_eq!(
            other.ask("renew 30000"),
            "NONE",
            "renewed over a live holder"
        );
        assert_eq!(other.ask("release"), "NOT-HELD", "released another's lease");
        assert!(acquire(30_000).await.is_none());
        assert!(store.release_refresh_lease(&mine).await.unwrap());
        assert_eq!(
            other.ask("renew 30000"),
            "RENEWED",
            "a free lease was not taken back"
        );
        assert!(
            acquire(30_000).await.is_none(),
            "the taken-back lease was granted"
        );
        assert_eq!(other.ask("release"), "RELEASED");
        assert!(!store.release_refresh_lease(&mine).await.unwrap());
        let next = acquire(30_000)
            .await
            .expect("a released lease was not granted");
        assert!(store.release_refresh_lease(&next).await.unwrap());
        other.finish();
        // No lease left: neither the lease table nor its lock file stays behind.
        let lock = store.lock_file().unwrap();
        assert!(!lock.with_extension("leases").exists());
        assert!(!lock.with_extension("leases.lock").exists());
    }
}

/// A lock file held elsewhere for longer than the timeout fails the write as `Unavailable`,
/// naming the lock file, instead of hanging; reads go on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_lock_fails_writes_after_the_timeout_naming_the_file() {
    let ns = Namespace::random("keyring-mp-stuck");
    let store = open(KeyringBackend::Keyutils, ns.as_str()).await;
    let tokens = TokenSet::new(SecretString::from("stuck-secret"));
    store
        .put_tokens(&token_key(0), &tokens, Expect::Absent)
        .await
        .unwrap();
    let path = store.lock_file().unwrap();
    // Another open file description: `flock` excludes it like another process.
    let holder = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    holder.lock().unwrap();
    let started = Instant::now();
    let err = store
        .put_tokens(&token_key(1), &tokens, Expect::Absent)
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(err.is_retryable());
    let chain = format!("{err} {:?}", std::error::Error::source(&err));
    assert!(chain.contains(&path.display().to_string()), "{chain}");
    assert!(!chain.contains("stuck-secret"), "{chain}");
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(20)).contains(&waited),
        "gave up after {waited:?}"
    );
    assert!(store.get_tokens(&token_key(0)).await.unwrap().is_some());
    assert_eq!(store.list_tokens().await.unwrap(), vec![token_key(0)]);
    drop(holder);
    store
        .put_tokens(&token_key(1), &tokens, Expect::Absent)
        .await
        .unwrap();
    assert!(store.capabilities().atomic_cas);
    for i in 0..2 {
        store
            .delete_tokens(&token_key(i), Expect::Any)
            .await
            .unwrap();
    }
    remove_lock_file(&store);
}
