//! The browser path with a real browser: `mcp-auth login` and the interactive login of
//! `mcp-auth proxy` open headless Chromium (Debian's `chromium`) as the user's browser, through
//! `$BROWSER` (which the `webbrowser` crate honours on Linux before anything else). Chromium loads
//! the authorization URL of a testkit authorization server, follows its redirect to the CLI's
//! loopback listener and ends on the page the listener serves; the CLI completes the login.
//!
//! Needs `MCP_AUTH_TEST_CHROMIUM` (the Chromium binary, e.g. `/usr/bin/chromium`);
//! `cargo xtask test-all` installs Debian's `chromium` if needed and sets it. Only loopback
//! traffic: the testkit servers, the loopback listener and Chromium with background networking
//! off.
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mcp_auth_testkit::{AuthServer, AuthServerConfig, Endpoint, McpServer, McpServerConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The text of the page the loopback listener serves for this login's callback
/// (mcp-auth-core/src/engine/authorizer.rs).
const RECEIVED: &str = "Authorization received. You can close this window";

/// How long a login may take before the test gives up (a guard against hanging, not a measured
/// bound: a working login takes a few seconds). Longer than the proxy's `--auth-timeout 60`, so
/// that its answer to a login that never completes is seen.
const LOGIN_GUARD: Duration = Duration::from_secs(90);

fn chromium() -> PathBuf {
    let value = std::env::var_os("MCP_AUTH_TEST_CHROMIUM").unwrap_or_else(|| {
        panic!(
            "MCP_AUTH_TEST_CHROMIUM is not set: set it to a Chromium binary (Debian: `apt-get \
             install chromium`, then MCP_AUTH_TEST_CHROMIUM=/usr/bin/chromium); \
             cargo xtask test-all sets it"
        )
    });
    PathBuf::from(value)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn servers() -> (AuthServer, McpServer) {
    let as1 = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    let mcp = McpServer::start(McpServerConfig {
        authorization_servers: vec![as1.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    (as1, mcp)
}

/// No secret the AS ever issued or received (tokens, client secrets) is in `out`.
fn assert_no_secret(as1: &AuthServer, out: &str) {
    let mut secrets = as1.issued_tokens();
    for c in as1.clients() {
        secrets.extend(c.client_secret);
    }
    for s in secrets {
        assert!(!out.contains(&s), "a secret leaked into output:\n{out}");
    }
}

/// The one authorization request the AS saw went to the loopback redirect URI of a login.
fn assert_one_loopback_authorization(as1: &AuthServer) {
    let authorizations: Vec<_> = as1
        .requests()
        .into_iter()
        .filter(|r| r.endpoint == Endpoint::Authorize)
        .collect();
    assert_eq!(
        authorizations.len(),
        1,
        "the AS saw {} authorization requests",
        authorizations.len()
    );
    let redirect = authorizations[0]
        .query
        .get("redirect_uri")
        .cloned()
        .unwrap_or_default();
    assert!(
        redirect.starts_with("http://127.0.0.1:") && redirect.contains("/callback"),
        "{redirect}"
    );
    assert_eq!(authorizations[0].status, 302, "the AS did not redirect");
}

/// A `$BROWSER` for mcp-auth: a script (in its own temporary directory) that loads the URL it is
/// given in headless Chromium with a fresh profile and writes the DOM of the page Chromium ends
/// on to `dom.html`. It records each time it is run in `opened`, and Chromium's exit status in
/// `exit` once Chromium is done.
struct Browser {
    dir: tempfile::TempDir,
    script: PathBuf,
}

/// What one run of the browser left behind.
struct Visit {
    /// Lines of `opened`: one per run of the script.
    runs: usize,
    /// Chromium's exit status.
    exit: String,
    /// The DOM Chromium dumped after the load.
    dom: String,
}

impl Browser {
    fn new() -> Browser {
        let chromium = chromium();
        assert!(
            chromium.is_file(),
            "MCP_AUTH_TEST_CHROMIUM={} is not a file",
            chromium.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("browser.sh");
        // `$BROWSER` is split on ':' and whitespace, the script is quoted with '…' below.
        for path in [dir.path(), chromium.as_path()] {
            let p = path.display().to_string();
            assert!(
                !p.contains([':', '\'', ' ', '\t', '\n']),
                "unusable path {p:?}"
            );
        }
        let body = format!(
            r#"#!/bin/sh
# mcp-auth's browser ($BROWSER): the authorization URL is the only argument.
dir='{dir}'
echo run >> "$dir/opened"
mkdir -p "$dir/home"
profile=$(mktemp -d "$dir/profile.XXXXXX")
HOME="$dir/home" '{chromium}' --headless --no-sandbox --disable-gpu \
  --disable-background-networking --disable-component-update --disable-sync --no-first-run \
  --user-data-dir="$profile" --dump-dom "$1" > "$dir/dom.html" 2> "$dir/chromium.log" < /dev/null
echo $? > "$dir/exit.tmp"
mv "$dir/exit.tmp" "$dir/exit"
"#,
            dir = dir.path().display(),
            chromium = chromium.display(),
        );
        std::fs::write(&script, body).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        Browser { dir, script }
    }

    /// The value of `BROWSER` that runs this browser.
    fn env(&self) -> &Path {
        &self.script
    }

    /// Waits for Chromium to finish (the CLI may exit before Chromium has written the page it
    /// ended on) and returns what the run left behind.
    async fn visit(&self) -> Visit {
        let dir = self.dir.path();
        let exit = dir.join("exit");
        let deadline = tokio::time::Instant::now() + LOGIN_GUARD;
        while !exit.is_file() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the browser script never finished (opened: {})",
                dir.join("opened").is_file()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Visit {
            runs: std::fs::read_to_string(dir.join("opened"))
                .unwrap_or_default()
                .lines()
                .count(),
            exit: std::fs::read_to_string(exit).unwrap().trim().to_owned(),
            dom: std::fs::read_to_string(dir.join("dom.html")).unwrap_or_default(),
        }
    }

    /// Chromium's log, for a failure message (lines that could carry the callback URL and its
    /// authorization code are left out).
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chromium.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.contains("code="))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Chromium ran once, exited cleanly and ended on the listener's success page.
    async fn assert_ended_on_the_success_page(&self) {
        let visit = self.visit().await;
        assert_eq!(visit.runs, 1, "the browser was opened {} times", visit.runs);
        assert_eq!(visit.exit, "0", "chromium failed:\n{}", self.log());
        assert!(
            visit.dom.contains(RECEIVED),
            "chromium did not end on the loopback listener's success page; it dumped:\n{}\n\
             chromium's log:\n{}",
            visit.dom,
            self.log()
        );
    }
}

/// `mcp-auth login URL` with neither `--headless` nor `--no-browser`: the CLI opens Chromium
/// through `$BROWSER`; Chromium follows the AS's redirect to the loopback listener, which
/// completes the login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_through_headless_chromium() {
    let browser = Browser::new();
    let (as1, mcp) = servers().await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", dir.path().join("c.db").display());
    let run = |args: Vec<String>| {
        let store = store.clone();
        let browser = browser.env().to_owned();
        async move {
            tokio::time::timeout(
                LOGIN_GUARD,
                tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-auth"))
                    .args(["--store", &store])
                    .args(args)
                    .env("MCP_AUTH_INSECURE_LOOPBACK", "true")
                    .env("BROWSER", browser)
                    .env_remove("MCP_AUTH_STORE")
                    .stdin(Stdio::null())
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .expect("mcp-auth did not finish (did the browser reach the loopback listener?)")
            .unwrap()
        }
    };
    let url = mcp.url();

    // A browser that ends anywhere but on the success page fails the test at once.
    let login = run(vec!["login".into(), url.clone()]);
    tokio::pin!(login);
    let out = tokio::select! {
        out = &mut login => out,
        () = browser.assert_ended_on_the_success_page() => login.await,
    };
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "{stderr}\nchromium:\n{}",
        browser.log()
    );
    assert_no_secret(&as1, &(text(&out.stdout) + &stderr));
    assert!(stderr.contains("Open this URL to authorize"), "{stderr}");
    assert!(!stderr.contains("could not open a browser"), "{stderr}");
    assert!(stderr.contains("Logged in"), "{stderr}");
    browser.assert_ended_on_the_success_page().await;
    assert_one_loopback_authorization(&as1);
    assert_eq!(as1.count(Endpoint::Token), 1, "one code exchange");

    // The stored token is the AS's and the MCP server accepts it.
    let out = run(vec!["token".into(), url.clone()]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_owned();
    assert!(
        as1.issued_tokens().contains(&token),
        "`token` printed something the AS did not issue"
    );
    let status = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(&url)
        .bearer_auth(&token)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200, "the MCP server refused the token");
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `mcp-auth proxy URL` (not `--headless`): the first MCP request needs a login, for which the
/// proxy opens Chromium through `$BROWSER`; the request's answer comes once Chromium has brought
/// the code to the loopback listener, and later requests use the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_logs_in_through_headless_chromium() {
    let browser = Browser::new();
    let (as1, mcp) = servers().await;
    let dir = tempfile::tempdir().unwrap();
    let stderr_path = dir.path().join("proxy.stderr");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-auth"))
        .arg("--store")
        .arg(format!("sqlite:{}", dir.path().join("c.db").display()))
        .args(["proxy", &mcp.url(), "--allow-http", "--auth-timeout", "60"])
        .arg("--callback-port")
        .arg(free_port().to_string())
        .env("BROWSER", browser.env())
        .env_remove("MCP_AUTH_STORE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let proxy_stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();

    let mut send = async |message: Value| {
        stdin
            .write_all(format!("{message}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    };
    // The answer to request `id` (notifications in between are skipped).
    let mut answer = async |id: i64| -> Value {
        let deadline = tokio::time::Instant::now() + LOGIN_GUARD;
        loop {
            let line = tokio::time::timeout_at(deadline, stdout.next_line())
                .await
                .expect("no answer from the proxy")
                .unwrap()
                .expect("the proxy closed stdout");
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("stdout carried a non-JSON line {line:?}: {e}"));
            if v["id"] == json!(id) {
                return v;
            }
        }
    };

    send(
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "browser-test", "version": "1"},
        }}),
    )
    .await;
    let init = tokio::select! {
        init = answer(0) => init,
        () = browser.assert_ended_on_the_success_page() => answer(0).await,
    };
    assert_eq!(
        init["result"]["serverInfo"]["name"],
        "mcp-auth-testkit",
        "{init}\nproxy stderr:\n{}\nchromium:\n{}",
        proxy_stderr(),
        browser.log()
    );
    browser.assert_ended_on_the_success_page().await;
    assert_one_loopback_authorization(&as1);

    send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
    send(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})).await;
    let tools = answer(1).await;
    assert_eq!(tools["result"]["tools"][0]["name"], "echo", "{tools}");
    // initialize and tools/list reached the MCP server with a token of the AS.
    let issuer = as1.issuer();
    let authorized = mcp
        .requests()
        .iter()
        .filter(|r| {
            r.method == "POST" && r.status == 200 && r.token_issuer.as_deref() == Some(&issuer)
        })
        .count();
    assert!(
        authorized >= 2,
        "{authorized} MCP requests answered with the AS's token"
    );
    assert_eq!(
        as1.count(Endpoint::Authorize),
        1,
        "the browser was asked again"
    );

    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the proxy did not exit after stdin EOF")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let stderr = proxy_stderr();
    assert!(stderr.contains("open this URL to authorize"), "{stderr}");
    assert!(!stderr.contains("could not open a browser"), "{stderr}");
    assert_no_secret(&as1, &stderr);
}
