//! `cargo bench -p mcp-auth-store-sqlite --bench bulk` (issue 13): the bulk commands over a
//! SQLite file of N servers (each with its own issuer: N registrations, N token sets and N
//! bindings, 3N rows, realistic sizes), for N = 1 000 and 10 000.
//!
//! * `status`: what `mcp-auth status` does since issue 13 (a scan of the registrations and one of
//!   the token sets, grouping in a hash map, the table formatted into one string; `--json` also
//!   lists the bound resources), beside one raw rusqlite `SELECT` of all 3N rows of the namespace
//!   (key, value, version; nothing decoded; a range scan of the primary key) and their ratio;
//!   the store calls one by one, each beside a `SELECT` of its rows; for reference the old path
//!   (list, then one get per record, an issuer × token scan) once per size.
//! * `migrate` sqlite → sqlite of the 10 000-server file into a fresh file: what `mcp-auth
//!   migrate` does since issue 13 (scans, `put_*_any` batches of 1 000, verification by a scan of
//!   the destination compared by encoded bytes, one re-verify pass over the source's versions),
//!   in records per second; for reference the old path (one get, put, read-back per record,
//!   each token set under the source's refresh lease) on the 1 000-server file.
//! * When the CLI binary is built (`target/release/mcp-auth`, or `MCP_AUTH_BIN`), the same two
//!   commands through the binary (process start included).
//!
//! Three runs, medians; a table with ratios, and JSON in `target/bench/bulk.json`. A benchmark,
//! not a test: it asserts nothing about time (it does check that each path saw every record).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mcp_auth_core::record;
use mcp_auth_core::{
    BindingStore, ClientRegistration, CredentialStore, Expect, Extra, IssuerId, JsonValue,
    RefreshState, RegistrationKind, RegistrationStore, ResourceBinding, ResourceUri, SecretString,
    Timestamp, TokenKey, TokenSet, TokenStore, Version,
};
use mcp_auth_store_sqlite::SqliteStore;
use rusqlite::params;

const RUNS: usize = 3;
const SIZES: [usize; 2] = [1_000, 10_000];
const BATCH: usize = 1_000;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn metadata(pairs: &[(&str, String)]) -> Extra {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), JsonValue::String(v.clone())))
        .collect()
}

/// N servers, each with its own issuer: a registration, a token set and a binding of the sizes
/// a real login leaves (a JWT-sized access token, refresh token, metadata documents).
async fn fill(store: &SqliteStore, n: usize) {
    let mut registrations = Vec::with_capacity(n);
    let mut tokens = Vec::with_capacity(n);
    let mut bindings = Vec::with_capacity(n);
    for i in 0..n {
        let base = format!("https://as{i}.bench.example");
        let issuer = IssuerId::new(format!("{base}/tenant")).unwrap();
        let resource = ResourceUri::new(format!("https://mcp{i}.bench.example/mcp")).unwrap();
        let mut r = ClientRegistration::new(
            issuer.clone(),
            format!("client-{i}"),
            RegistrationKind::Dynamic,
        );
        r.redirect_uris = vec!["http://127.0.0.1:33418/callback".to_owned()];
        r.grant_types = vec!["authorization_code".to_owned(), "refresh_token".to_owned()];
        registrations.push(r);
        let mut t = TokenSet::new(SecretString::from(format!("{i:08}{}", "a".repeat(792))));
        t.refresh_token = Some(SecretString::from(format!("{i:08}{}", "r".repeat(392))));
        t.scopes = vec!["mcp:read".to_owned(), "mcp:write".to_owned()];
        t.expires_at = Some(Timestamp::from_unix_seconds(4_102_444_800));
        tokens.push((TokenKey::new(issuer.clone(), resource.clone()), t));
        let mut b = ResourceBinding::new(resource.clone(), issuer.clone());
        b.resource_metadata = metadata(&[
            ("resource", resource.as_str().to_owned()),
            ("authorization_servers", issuer.as_str().to_owned()),
        ]);
        b.authorization_server_metadata = metadata(&[
            ("issuer", issuer.as_str().to_owned()),
            ("authorization_endpoint", format!("{base}/authorize")),
            ("token_endpoint", format!("{base}/token")),
            ("registration_endpoint", format!("{base}/register")),
            ("revocation_endpoint", format!("{base}/revoke")),
            ("code_challenge_methods_supported", "S256".to_owned()),
        ]);
        bindings.push(b);
    }
    store.put_registrations_any(&registrations).await.unwrap();
    store.put_tokens_any(&tokens).await.unwrap();
    store.put_bindings_any(&bindings).await.unwrap();
}

/// What `mcp-auth status` does (since issue 13): one scan of registrations and one of tokens,
/// one hash map, one string (`--json` also lists the bound resources: `list_bindings` below).
/// Returns the number of server rows.
async fn status_bulk(store: &dyn CredentialStore) -> usize {
    type Issuer<'a> = (
        Option<&'a ClientRegistration>,
        Vec<(&'a ResourceUri, &'a TokenSet)>,
    );
    let registrations = store.scan_registrations().await.unwrap();
    let tokens = store.scan_tokens().await.unwrap();
    let mut by_issuer: HashMap<&IssuerId, Issuer<'_>> =
        HashMap::with_capacity(registrations.len().max(tokens.len()));
    for r in &registrations {
        by_issuer.entry(&r.value.issuer).or_default().0 = Some(&r.value);
    }
    for (key, t) in &tokens {
        by_issuer
            .entry(&key.issuer)
            .or_default()
            .1
            .push((&key.resource, &t.value));
    }
    let mut rows: Vec<_> = by_issuer.into_iter().collect();
    rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
    // The table as the CLI writes it: the issuer's columns once, then two cells per server.
    let mut out = String::new();
    let mut n = 0;
    for (issuer, (registration, mut servers)) in rows {
        servers.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let prefix = format!(
            "{:<40} {:<18} {:<48} ",
            issuer.as_str(),
            registration.map_or("-", |r| r.kind.as_str()),
            registration.map_or("-", |r| r.client_id.as_str()),
        );
        for (resource, t) in &servers {
            out.push_str(&prefix);
            let _ = write!(out, "{:<40} ", resource.as_str());
            let left =
                t.expires_at.map_or(0, |e| e.unix_seconds()) - Timestamp::now().unix_seconds();
            let _ = write!(out, "{:<14} ", format!("in {}m{}s", left / 60, left % 60));
            out.push_str(if t.refresh_token.is_some() {
                "yes\n"
            } else {
                "no\n"
            });
            n += 1;
        }
    }
    std::hint::black_box(out);
    n
}

/// What `mcp-auth status` did before issue 13: lists, an issuer × token scan, one get per record.
async fn status_per_record(store: &dyn CredentialStore) -> usize {
    let mut issuers = store.list_registrations().await.unwrap();
    let bindings = store.list_bindings().await.unwrap();
    let tokens = store.list_tokens().await.unwrap();
    for key in &tokens {
        if !issuers.contains(&key.issuer) {
            issuers.push(key.issuer.clone());
        }
    }
    issuers.sort();
    let mut rows = 0;
    for issuer in &issuers {
        let registration = store.get_registration(issuer).await.unwrap();
        for key in tokens.iter().filter(|k| &k.issuer == issuer) {
            let t = store.get_tokens(key).await.unwrap();
            std::hint::black_box((&registration, t, bindings.contains(&key.resource)));
            rows += 1;
        }
    }
    rows
}

/// One raw `SELECT` of every row `status` reads (nothing decoded).
fn raw_select(conn: &rusqlite::Connection, ns: &str) -> usize {
    // The namespace holds exactly these rows: one range scan of the primary key.
    let mut stmt = conn
        .prepare_cached("SELECT key, value, version FROM records WHERE namespace = ?1")
        .unwrap();
    let rows: Vec<(String, Vec<u8>, i64)> = stmt
        .query_map(params![ns], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let n = rows.len();
    std::hint::black_box(rows);
    n
}

/// One raw `SELECT` of the rows of one kind (nothing decoded).
fn raw_select_kind(conn: &rusqlite::Connection, ns: &str, kind: &str) -> usize {
    let mut stmt = conn
        .prepare_cached(
            "SELECT key, value, version FROM records
             WHERE namespace = ?1 AND key >= ?2 || '/' AND key < ?2 || '0'",
        )
        .unwrap();
    let rows: Vec<(String, Vec<u8>, i64)> = stmt
        .query_map(params![ns, kind], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let n = rows.len();
    std::hint::black_box(rows);
    n
}

/// What `mcp-auth migrate` does (since issue 13), minus the progress bar. Returns the records
/// copied.
async fn migrate_bulk(source: &dyn CredentialStore, target: &dyn CredentialStore) -> usize {
    let registrations: Vec<ClientRegistration> = source
        .scan_registrations()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.value)
        .collect();
    let tokens = source.scan_tokens().await.unwrap();
    let bindings: Vec<ResourceBinding> = source
        .scan_bindings()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.value)
        .collect();
    for batch in registrations.chunks(BATCH) {
        target.put_registrations_any(batch).await.unwrap();
    }
    let copied: HashMap<IssuerId, Vec<u8>> = target
        .scan_registrations()
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            let bytes = record::encode_registration(&r.value).unwrap();
            (r.value.issuer, bytes)
        })
        .collect();
    for r in &registrations {
        assert_eq!(
            copied.get(&r.issuer),
            Some(&record::encode_registration(r).unwrap())
        );
    }
    let mut copied_from: HashMap<TokenKey, Option<Version>> = HashMap::new();
    let mut settled = Vec::with_capacity(tokens.len());
    for (key, t) in tokens {
        assert!(!matches!(
            t.value.refresh_state,
            Some(RefreshState::InFlight { .. })
        ));
        copied_from.insert(key.clone(), Some(t.version));
        settled.push((key, t.value));
    }
    for batch in settled.chunks(BATCH) {
        target.put_tokens_any(batch).await.unwrap();
    }
    let copied: HashMap<TokenKey, Vec<u8>> = target
        .scan_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            let bytes = record::encode_tokens(&k, &t.value).unwrap();
            (k, bytes)
        })
        .collect();
    for (key, t) in &settled {
        assert_eq!(
            copied.get(key),
            Some(&record::encode_tokens(key, t).unwrap())
        );
    }
    for batch in bindings.chunks(BATCH) {
        target.put_bindings_any(batch).await.unwrap();
    }
    let copied: HashMap<ResourceUri, Vec<u8>> = target
        .scan_bindings()
        .await
        .unwrap()
        .into_iter()
        .map(|b| {
            let bytes = record::encode_binding(&b.value).unwrap();
            (b.value.resource, bytes)
        })
        .collect();
    for b in &bindings {
        assert_eq!(
            copied.get(&b.resource),
            Some(&record::encode_binding(b).unwrap())
        );
    }
    // One re-verify pass: nothing changed in the source.
    for (key, now) in source.scan_tokens().await.unwrap() {
        assert_eq!(copied_from.get(&key), Some(&Some(now.version)));
    }
    registrations.len() + settled.len() + bindings.len()
}

/// What `mcp-auth migrate` did before issue 13: one get, put and read-back per record, each token
/// set under the source's refresh lease.
async fn migrate_per_record(source: &dyn CredentialStore, target: &dyn CredentialStore) -> usize {
    let mut n = 0;
    for issuer in source.list_registrations().await.unwrap() {
        let r = source.get_registration(&issuer).await.unwrap().unwrap();
        target
            .put_registration(&r.value, Expect::Any)
            .await
            .unwrap();
        let back = target.get_registration(&issuer).await.unwrap().unwrap();
        assert_eq!(
            record::encode_registration(&back.value).unwrap(),
            record::encode_registration(&r.value).unwrap()
        );
        n += 1;
    }
    let keys = source.list_tokens().await.unwrap();
    for _pass in 0..2 {
        for key in &keys {
            let lease = source
                .try_acquire_refresh_lease(key, Duration::from_secs(30))
                .await
                .unwrap()
                .unwrap();
            let t = source.get_tokens(key).await.unwrap().unwrap();
            let want = record::encode_tokens(key, &t.value).unwrap();
            let have = target
                .get_tokens(key)
                .await
                .unwrap()
                .map(|h| record::encode_tokens(key, &h.value).unwrap());
            if have.as_ref() != Some(&want) {
                target.put_tokens(key, &t.value, Expect::Any).await.unwrap();
                let back = target.get_tokens(key).await.unwrap().unwrap();
                assert_eq!(record::encode_tokens(key, &back.value).unwrap(), want);
            }
            source.release_refresh_lease(&lease).await.unwrap();
        }
    }
    n += keys.len();
    for resource in source.list_bindings().await.unwrap() {
        let b = source.get_binding(&resource).await.unwrap().unwrap();
        target.put_binding(&b.value, Expect::Any).await.unwrap();
        let back = target.get_binding(&resource).await.unwrap().unwrap();
        assert_eq!(
            record::encode_binding(&back.value).unwrap(),
            record::encode_binding(&b.value).unwrap()
        );
        n += 1;
    }
    n
}

/// `target/` (the bench binary runs from `target/<profile>/deps/`).
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The CLI binary, when built.
fn cli_binary() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("MCP_AUTH_BIN") {
        return Some(PathBuf::from(bin));
    }
    let bin = target_dir().join("release").join("mcp-auth");
    bin.is_file().then_some(bin)
}

/// Runs the CLI once; its wall time.
fn run_cli(bin: &Path, args: &[String]) -> Duration {
    let t = Instant::now();
    let out = std::process::Command::new(bin)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let elapsed = t.elapsed();
    assert!(
        out.status.success(),
        "{bin:?} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

/// A result row: name, size, ours, baseline (label and time).
struct Row {
    what: String,
    n: usize,
    ours: Duration,
    base_label: &'static str,
    base: Option<Duration>,
    records: usize,
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // MCP_AUTH_BENCH_DIR keeps the files (for profiling); by default a temporary directory.
    let dir = tempfile::tempdir().unwrap();
    let kept = std::env::var_os("MCP_AUTH_BENCH_DIR").map(PathBuf::from);
    let dir_path = kept.as_deref().unwrap_or(dir.path()).to_owned();
    let bin = cli_binary();
    let mut rows: Vec<Row> = Vec::new();
    let mut files = HashMap::new();

    for n in SIZES {
        let path = dir_path.join(format!("status-{n}.db"));
        let store = rt.block_on(SqliteStore::open(&path)).unwrap();
        rt.block_on(fill(&store, n));
        let ns = store.namespace().as_str().to_owned();
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.pragma_update(None, "journal_mode", "WAL").unwrap();
        assert_eq!(raw_select(&raw, &ns), 3 * n);

        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let s = store.clone();
            let t = Instant::now();
            let seen = rt.block_on(async move { status_bulk(&s).await });
            ours.push(t.elapsed());
            assert_eq!(seen, n);
            let t = Instant::now();
            raw_select(&raw, &ns);
            base.push(t.elapsed());
        }
        let select = median(base);
        rows.push(Row {
            what: "status (scans)".into(),
            n,
            ours: median(ours),
            base_label: "one SELECT",
            base: Some(select),
            records: 3 * n,
        });
        let s = store.clone();
        let t = Instant::now();
        let seen = rt.block_on(async move { status_per_record(&s).await });
        let old = t.elapsed();
        assert_eq!(seen, n);
        rows.push(Row {
            what: "status (old: list + get each)".into(),
            n,
            ours: old,
            base_label: "one SELECT",
            base: Some(select),
            records: 3 * n,
        });
        if let Some(bin) = &bin {
            let args = vec![
                "--store".to_owned(),
                format!("sqlite:{}", path.display()),
                "status".to_owned(),
            ];
            run_cli(bin, &args);
            let cli = median((0..RUNS).map(|_| run_cli(bin, &args)).collect());
            rows.push(Row {
                what: "mcp-auth status (binary)".into(),
                n,
                ours: cli,
                base_label: "one SELECT",
                base: Some(select),
                records: 3 * n,
            });
            let mut json = args.clone();
            json.push("--json".to_owned());
            let cli = median((0..RUNS).map(|_| run_cli(bin, &json)).collect());
            rows.push(Row {
                what: "mcp-auth status --json (binary)".into(),
                n,
                ours: cli,
                base_label: "one SELECT",
                base: Some(select),
                records: 3 * n,
            });
        }
        // Where the time of `status` goes: each call beside a SELECT of its rows.
        let parts: [(&str, &str); 3] = [
            ("  scan_registrations", "registration"),
            ("  list_bindings", "binding"),
            ("  scan_tokens", "tokens"),
        ];
        for (what, kind) in parts {
            let (mut ours, mut base) = (Vec::new(), Vec::new());
            for _ in 0..RUNS {
                let s = store.clone();
                let t = Instant::now();
                let seen = rt.block_on(async move {
                    match kind {
                        "registration" => s.scan_registrations().await.unwrap().len(),
                        "binding" => s.list_bindings().await.unwrap().len(),
                        _ => s.scan_tokens().await.unwrap().len(),
                    }
                });
                ours.push(t.elapsed());
                assert_eq!(seen, n);
                let t = Instant::now();
                assert_eq!(raw_select_kind(&raw, &ns, kind), n);
                base.push(t.elapsed());
            }
            rows.push(Row {
                what: what.into(),
                n,
                ours: median(ours),
                base_label: "one SELECT",
                base: Some(median(base)),
                records: n,
            });
        }
        files.insert(n, (path, store));
    }

    // migrate sqlite → sqlite, into a fresh file each run.
    let mut copies = 0;
    let mut fresh = |rt: &tokio::runtime::Runtime| {
        copies += 1;
        let path = dir_path.join(format!("copy-{copies}.db"));
        let store = rt.block_on(SqliteStore::open(&path)).unwrap();
        (path, store)
    };
    let n = SIZES[SIZES.len() - 1];
    let (source_path, source) = &files[&n];
    let mut samples = Vec::new();
    for _ in 0..RUNS {
        let (path, target) = fresh(&rt);
        let (s, t2) = (source.clone(), target.clone());
        let t = Instant::now();
        let copied = rt.block_on(async move { migrate_bulk(&s, &t2).await });
        samples.push(t.elapsed());
        assert_eq!(copied, 3 * n);
        drop(target);
        let _ = std::fs::remove_file(path);
    }
    rows.push(Row {
        what: "migrate (scans + batches)".into(),
        n,
        ours: median(samples),
        base_label: "",
        base: None,
        records: 3 * n,
    });
    let small = SIZES[0];
    {
        let (_, source) = &files[&small];
        let (_, target) = fresh(&rt);
        let s = source.clone();
        let t = Instant::now();
        let copied = rt.block_on(async move { migrate_per_record(&s, &target).await });
        assert_eq!(copied, 3 * small);
        rows.push(Row {
            what: "migrate (old: per record)".into(),
            n: small,
            ours: t.elapsed(),
            base_label: "",
            base: None,
            records: 3 * small,
        });
    }
    if let Some(bin) = &bin {
        let mut samples = Vec::new();
        for _ in 0..RUNS {
            let (path, target) = fresh(&rt);
            drop(target);
            let args = vec![
                "migrate".to_owned(),
                "--from".to_owned(),
                format!("sqlite:{}", source_path.display()),
                "--to".to_owned(),
                format!("sqlite:{}", path.display()),
            ];
            samples.push(run_cli(bin, &args));
            let _ = std::fs::remove_file(path);
        }
        rows.push(Row {
            what: "mcp-auth migrate (binary)".into(),
            n,
            ours: median(samples),
            base_label: "",
            base: None,
            records: 3 * n,
        });
    }

    println!(
        "\nbulk commands over SQLite: N servers = 3N records (registration, token set, binding \
         each); medians of {RUNS} runs (the old paths: one run)"
    );
    if bin.is_none() {
        println!(
            "(the CLI binary is not built: `cargo build --release -p mcp-auth-cli` adds its rows)"
        );
    }
    println!(
        "{:<32} {:>7} {:>11} {:>13} {:>8} {:>12}",
        "path", "N", "time (ms)", "SELECT (ms)", "ratio", "records/s"
    );
    let mut json = String::from("{\n  \"bench\": \"bulk\",\n  \"runs\": 3,\n  \"rows\": [\n");
    for (i, row) in rows.iter().enumerate() {
        let per_s = row.records as f64 / row.ours.as_secs_f64();
        let (base, ratio) = match row.base {
            Some(b) => (
                format!("{:.1}", ms(b)),
                format!("{:.2}x", ms(row.ours) / ms(b)),
            ),
            None => ("-".to_owned(), "-".to_owned()),
        };
        println!(
            "{:<32} {:>7} {:>11.1} {:>13} {:>8} {:>12.0}",
            row.what,
            row.n,
            ms(row.ours),
            base,
            ratio,
            per_s
        );
        let _ = writeln!(
            json,
            "    {{\"path\": \"{}\", \"servers\": {}, \"records\": {}, \"ms\": {:.3}, \"baseline\": {}, \"baseline_ms\": {}, \"records_per_s\": {:.0}}}{}",
            row.what,
            row.n,
            row.records,
            ms(row.ours),
            if row.base_label.is_empty() {
                "null".to_owned()
            } else {
                format!("\"{}\"", row.base_label)
            },
            row.base
                .map_or("null".to_owned(), |b| format!("{:.3}", ms(b))),
            per_s,
            if i + 1 < rows.len() { "," } else { "" }
        );
    }
    json.push_str("  ]\n}\n");
    let out = target_dir().join("bench");
    std::fs::create_dir_all(&out).unwrap();
    let file = out.join("bulk.json");
    std::fs::write(&file, json).unwrap();
    println!("JSON: {}", file.display());
}
