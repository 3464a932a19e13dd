//! Log in to an OAuth-protected MCP server with the system browser and keep the credentials in
//! SQLite.
//!
//! ```text
//! cargo run -p mcp-auth-store-sqlite --example browser_login -- https://mcp.example.com/mcp
//! ```
//!
//! The first run discovers the server's authorization server, registers this client there,
//! opens the consent page in your browser and waits for the redirect on
//! `http://127.0.0.1:33418/callback`. The tokens are saved in the SQLite file named by
//! `MCP_AUTH_SQLITE_PATH`, else at the platform default (`SqliteStore::default_path()`, the one
//! the `mcp-auth` CLI uses), so the next run — of this program or any other sharing the file —
//! is answered from the store, refreshing the token when needed, with no browser.
//!
//! It prints when the access token expires, never the token itself.

use std::error::Error;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use mcp_auth_core::{BindingStore, LoopbackAuthorizer, McpAuth, ResourceUri, TokenKey, TokenStore};
use mcp_auth_store_sqlite::SqliteStore;

/// The environment variable naming the SQLite file.
const PATH_VAR: &str = "MCP_AUTH_SQLITE_PATH";

const USAGE: &str =
    "usage: cargo run -p mcp-auth-store-sqlite --example browser_login -- <MCP server URL>
  e.g. https://mcp.example.com/mcp
  credentials are kept in $MCP_AUTH_SQLITE_PATH, else in the platform data directory";

#[tokio::main]
async fn main() -> Result<(), Failure> {
    // The MCP server, checked before anything is opened or sent.
    let mut args = std::env::args().skip(1);
    let (Some(url), None) = (args.next(), args.next()) else {
        return Err(Failure::Usage("expected exactly one argument".to_owned()));
    };
    let server = ResourceUri::new(&url)
        .map_err(|e| Failure::Usage(format!("{url:?} is not an MCP server URL: {e}")))?;

    // The store: a file shared by every process that logs in as this user.
    let path = match std::env::var_os(PATH_VAR) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => SqliteStore::default_path()?,
    };
    let store = Arc::new(SqliteStore::open(&path).await?);
    eprintln!("credentials: {}", path.display());

    // The engine. `system_browser()` is also the default authorizer; it is named here to show
    // where another one goes (`LoopbackAuthorizer::with_opener` to show the URL yourself,
    // `PasteAuthorizer` over SSH).
    let auth = McpAuth::builder(store.clone())
        .authorizer(Arc::new(LoopbackAuthorizer::system_browser()))
        .build()?;

    // A valid token: from the store, refreshed, or (first run, or after the grant was revoked)
    // by logging in through the browser. Hand it to your HTTP client; never print or log it.
    eprintln!("logging in to {server} (a browser opens if a login is needed)...");
    let _token = auth.access_token(&server).await?;

    // The tokens are stored under the authorization server the MCP server is bound to.
    let binding = store
        .get_binding(&server)
        .await?
        .ok_or("the login finished but no binding was stored")?;
    let issuer = binding.value.issuer;
    let tokens = store
        .get_tokens(&TokenKey::new(issuer.clone(), server.clone()))
        .await?
        .ok_or("the login finished but no tokens were stored")?;
    println!("logged in to {server} through {issuer}");
    match tokens.value.expires_at {
        Some(at) => println!("access token expires at {at}"),
        None => println!("the authorization server gave no expiry for the access token"),
    }
    if tokens.value.refresh_token.is_some() {
        println!("a refresh token is stored: later runs renew the access token without a login");
    }

    // Wait for any token write still in flight (a refreshed token the store could not take at
    // once) before the process exits.
    auth.flush().await?;
    Ok(())
}

/// Why the program stopped. Rust prints an error returned from `main` with `Debug`, so `Debug`
/// here prints a readable message: the usage for a bad command line, else the error and its
/// causes.
enum Failure {
    Usage(String),
    Other(Box<dyn Error>),
}

impl<E: Into<Box<dyn Error>>> From<E> for Failure {
    fn from(e: E) -> Self {
        Self::Other(e.into())
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(message) => write!(f, "{message}\n{USAGE}"),
            Self::Other(e) => {
                let mut message = e.to_string();
                let mut source = e.source();
                while let Some(cause) = source {
                    // Some messages already quote their cause.
                    let cause_text = cause.to_string();
                    if !message.contains(&cause_text) {
                        message.push_str(&format!("\n  caused by: {cause_text}"));
                    }
                    source = cause.source();
                }
                f.write_str(&message)
            }
        }
    }
}
