//! An rmcp client for an OAuth-protected MCP server: connects, lists the server's tools and
//! prints their names.
//!
//! ```text
//! cargo run -p mcp-auth-rmcp --example rmcp_client -- https://mcp.example.com/mcp
//! ```
//!
//! The transport is `mcp_auth_rmcp::transport`: every request carries the token mcp-auth keeps
//! for the server; the first `401` starts discovery, registration and a login in the system
//! browser, and a later `401` or `403 insufficient_scope` a refresh or step-up, each followed by
//! one retry. When mcp-auth cannot authorize, the rmcp error carries the reason
//! (`mcp_auth_core::AuthError`), found with `mcp_auth_rmcp::auth_error` and matched below to
//! tell the user what to do.
//!
//! Credentials are kept in memory here, so every run logs in again: give `McpAuth::builder` a
//! durable store (`mcp-auth-store-sqlite`'s `SqliteStore`, or the keyring, Redis or AWS stores)
//! to keep the login across runs.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use mcp_auth_core::{AuthError, McpAuth, MemoryStore, ResourceUri};
// The rmcp this adapter is built on, re-exported: its traits are the ones the transport
// implements.
use mcp_auth_rmcp::rmcp::ServiceExt;
use mcp_auth_rmcp::rmcp::model::{ClientCapabilities, ClientConfig, Implementation};

const USAGE: &str = "usage: cargo run -p mcp-auth-rmcp --example rmcp_client -- <MCP server URL>
  e.g. https://mcp.example.com/mcp";

#[tokio::main]
async fn main() -> Result<(), Failure> {
    // The MCP server, checked before anything is sent.
    let mut args = std::env::args().skip(1);
    let (Some(url), None) = (args.next(), args.next()) else {
        return Err(Failure::Usage("expected exactly one argument".to_owned()));
    };
    let server = ResourceUri::new(&url)
        .map_err(|e| Failure::Usage(format!("{url:?} is not an MCP server URL: {e}")))?;

    // The engine, with the default authorizer: the system browser and a loopback listener on
    // http://127.0.0.1:33418/callback.
    let auth = Arc::new(
        McpAuth::builder(Arc::new(MemoryStore::new()))
            .build()
            .map_err(|e| Failure::new(&e))?,
    );

    // Connect: rmcp's `initialize` goes through the authorized transport, and the server's
    // challenge to it decides where to log in.
    let info = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("mcp-auth-rmcp-example", env!("CARGO_PKG_VERSION")),
    );
    eprintln!("connecting to {server} (a browser opens if a login is needed)...");
    let client = info
        .serve(mcp_auth_rmcp::transport(Arc::clone(&auth), server.clone()))
        .await
        .map_err(|e| Failure::new(&e))?;

    // Any request may also need authorization (an expired token, a scope step-up).
    let tools = client
        .list_all_tools()
        .await
        .map_err(|e| Failure::new(&e))?;
    println!("{} tool(s) on {server}:", tools.len());
    for tool in &tools {
        println!("  {}", tool.name);
    }

    // Close the session, then wait for any token write still in flight.
    let _closed = client.cancel().await;
    auth.flush().await.map_err(|e| Failure::new(&e))?;
    Ok(())
}

/// Why the program stopped. Rust prints an error returned from `main` with `Debug`, so `Debug`
/// here prints a readable message.
enum Failure {
    /// A bad command line: printed with the usage.
    Usage(String),
    /// Anything else: what happened and what to do.
    Message(String),
}

impl Failure {
    /// Explains an error from mcp-auth or rmcp. An authorization failure is matched on its
    /// `AuthError` (`auth_error` finds it inside rmcp's errors); anything else is a connection
    /// or protocol error.
    fn new(error: &(dyn Error + 'static)) -> Self {
        let Some(auth) = mcp_auth_rmcp::auth_error(error) else {
            return Self::Message(format!("cannot talk to the MCP server: {}", chain(error)));
        };
        // `AuthError` is `#[non_exhaustive]`: keep a catch-all arm.
        let advice = match auth {
            AuthError::AuthorizationServerChanged { from, to } => format!(
                "the server moved from authorization server {from} to {to}, and this client's \
                 pre-registered credentials belong to {from}: register the client with {to} and \
                 configure those credentials (with issuer {to})"
            ),
            AuthError::LoginRequired { resource } => {
                format!("no valid credentials for {resource}: log in first")
            }
            AuthError::Authorizer(why) => format!(
                "the login was not completed ({why}): run again and finish the login in the \
                 browser; without a browser use PasteAuthorizer or the device flow"
            ),
            AuthError::AuthorizationDenied { .. } => {
                format!("{auth}: run again and approve the access")
            }
            AuthError::RefreshRejected { .. } | AuthError::RefreshOutcomeUnknown { .. } => {
                format!("{auth}: log in again")
            }
            AuthError::NotProtected { .. } => {
                format!("{auth}: is this the server's MCP endpoint URL?")
            }
            AuthError::RegistrationNotPossible { .. } => format!(
                "{auth}: ask the server's operator for a client ID and configure it \
                 (ClientConfig::with_pre_registered)"
            ),
            other => format!("cannot authorize: {}", chain(other)),
        };
        Self::Message(advice)
    }
}

/// An error and its causes, on one line, without repeating a cause its message already quotes.
fn chain(error: &(dyn Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.contains(&cause_text) {
            message.push_str(": ");
            message.push_str(&cause_text);
        }
        source = cause.source();
    }
    message
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(message) => write!(f, "{message}\n{USAGE}"),
            Self::Message(message) => f.write_str(message),
        }
    }
}
