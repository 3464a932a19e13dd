//! `mcp-auth`: log in to MCP servers once, then print fresh tokens for any script or MCP client.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod completions;
#[cfg(feature = "demo")]
mod demo;
mod encryption;
mod logging;
mod proxy;
mod store;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mcp_auth_core::{
    AuthError, Authorizer, ClientConfig, CredentialStore, EncryptedStore, Expect, ExposeSecret,
    HeadlessAuthorizer, HttpPolicy, IssuerId, LoopbackAuthorizer, McpAuth, Namespace,
    PasteAuthorizer, PreRegisteredClient, ResourceUri, SecretString, TokenKey, TokenStore,
};

/// Exit code of `token` when a login is needed.
const EXIT_LOGIN_REQUIRED: u8 = 3;

/// Exit code of a usage error: clap's, and ours (a store that does not fit the keys given, a key
/// that cannot be loaded).
pub(crate) const EXIT_USAGE: u8 = 2;

/// Every exit code, shown after `--help` (keep in step with [`EXIT_USAGE`],
/// [`EXIT_LOGIN_REQUIRED`] and the README).
const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  failure: network, authorization server, store, a logout or rekey that left problems
  2  usage error: invalid arguments (clap), or keys that do not fit the store (an encrypted
     store without its key, a record under a key id not given, a key that cannot be loaded)
  3  `token`: a login is needed; run `mcp-auth login URL`";

/// Log in to MCP servers once; get fresh tokens from any script or MCP client.
#[derive(Parser, Debug)]
#[command(name = "mcp-auth", version, about, after_help = EXIT_CODES_HELP)]
struct Cli {
    #[command(flatten)]
    globals: Globals,
    #[command(subcommand)]
    command: Command,
}

/// `mcp-auth [OPTIONS] token URL [--format F]` alone: the global options and `token`, nothing
/// else. `token` runs on every request of a headers helper, and building the whole command tree
/// (every subcommand and its arguments) was a tenth of its process; see [`parse_token_command`].
#[derive(Parser, Debug)]
#[command(name = "mcp-auth")]
struct TokenCli {
    #[command(flatten)]
    globals: Globals,
    #[command(subcommand)]
    command: TokenOnly,
}

/// The one subcommand of [`TokenCli`].
#[derive(Subcommand, Debug)]
enum TokenOnly {
    Token(TokenArgs),
}

/// The options every command takes (`global`: before or after the subcommand).
#[derive(Args, Debug)]
struct Globals {
    /// Log to stderr: -v info, -vv debug, -vvv trace (of the mcp-auth crates). RUST_LOG, when
    /// set, replaces this filter. Nothing is logged on stdout.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Credential store: sqlite:PATH (default: sqlite: at the platform data directory), memory:,
    /// redis://…, keyring:, aws-sm:…
    #[arg(long, global = true, env = "MCP_AUTH_STORE")]
    store: Option<String>,
    /// Tenant namespace inside the store.
    #[arg(
        long,
        global = true,
        env = "MCP_AUTH_NAMESPACE",
        default_value = "default"
    )]
    namespace: String,
    /// Allow plain http to MCP servers and authorization servers on this machine (loopback
    /// addresses); every other server needs https.
    #[arg(
        long,
        global = true,
        env = "MCP_AUTH_ALLOW_HTTP",
        value_parser = clap::builder::BoolishValueParser::new(),
        num_args = 0,
        default_missing_value = "true"
    )]
    allow_http: bool,
    /// Allow servers on private-network addresses (10.x, 192.168.x, fd00::/8, link-local …),
    /// e.g. an MCP server inside a company. Off by default: a hostile server's metadata could
    /// otherwise point this machine at internal services.
    #[arg(
        long,
        global = true,
        env = "MCP_AUTH_ALLOW_PRIVATE_NETWORK",
        value_parser = clap::builder::BoolishValueParser::new(),
        num_args = 0,
        default_missing_value = "true"
    )]
    allow_private_network: bool,
    /// Send https requests through the proxy named by HTTPS_PROXY / ALL_PROXY / HTTP_PROXY
    /// (NO_PROXY honoured). Off by default: those variables are ignored.
    #[arg(
        long,
        global = true,
        env = "MCP_AUTH_USE_SYSTEM_PROXY",
        value_parser = clap::builder::BoolishValueParser::new(),
        num_args = 0,
        default_missing_value = "true"
    )]
    use_system_proxy: bool,
    /// The former name of --allow-http.
    #[arg(
        long,
        global = true,
        hide = true,
        env = "MCP_AUTH_INSECURE_LOOPBACK",
        value_parser = clap::builder::BoolishValueParser::new(),
        num_args = 0,
        default_missing_value = "true"
    )]
    insecure_allow_loopback: bool,
    #[command(flatten)]
    encryption: encryption::EncryptionArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Discover, register and authorize with an MCP server (browser flow on a loopback redirect).
    Login(LoginArgs),
    /// Print a valid access token for an MCP server (refreshing it when needed), and nothing else.
    Token(TokenArgs),
    /// Run a stdio MCP server that forwards to a remote MCP server, with OAuth handled here.
    Proxy(proxy::ProxyArgs),
    /// Show issuers, registrations, bound servers and token state (never a secret).
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Delete tokens (revoking them at the authorization server when it allows).
    Logout(LogoutArgs),
    /// Re-encrypt every record under the current key: records under an old key (given with
    /// --old-key-file or MCP_AUTH_OLD_KEY) and records not yet encrypted. Restartable; keep the
    /// old keys until a run completes.
    Rekey,
    /// Copy every registration, token and binding from one store to another, and verify the copy.
    /// With encryption on, the destination is written encrypted under the current key and the
    /// source may be encrypted (under the keys given) or not.
    Migrate {
        /// Source store URL.
        #[arg(long)]
        from: String,
        /// Destination store URL.
        #[arg(long)]
        to: String,
    },
    /// Run local authorization servers and an MCP server and narrate SEP-2352 in action.
    #[cfg(feature = "demo")]
    Demo,
    /// Print a shell completion script on stdout (see the README for where to install it).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout: `mcp-auth man > mcp-auth.1`.
    Man,
}

/// The arguments of `token`.
#[derive(Args, Debug)]
struct TokenArgs {
    /// The MCP server URL.
    url: String,
    /// Output: the bare token, `header-json` ({"Authorization":"Bearer …"}, for Claude Code's
    /// headersHelper) or `json` (token, expires_at, scopes).
    #[arg(long, value_enum, default_value_t = TokenFormat::Token)]
    format: TokenFormat,
}

/// Output format of `token`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum TokenFormat {
    /// The bare access token.
    Token,
    /// `{"Authorization":"Bearer …"}`.
    HeaderJson,
    /// `{"access_token":…,"expires_at":…,"scopes":[…]}`.
    Json,
}

#[derive(Args)]
struct LoginArgs {
    /// The MCP server URL.
    url: String,
    /// Pre-registered client_id.
    #[arg(long)]
    client_id: Option<String>,
    /// Pre-registered client secret. Prefer MCP_AUTH_CLIENT_SECRET or --client-secret-file: a
    /// value on the command line is visible to other local users in the process list.
    #[arg(
        long,
        env = "MCP_AUTH_CLIENT_SECRET",
        hide_env_values = true,
        requires = "issuer",
        conflicts_with = "client_secret_file"
    )]
    client_secret: Option<String>,
    /// A file holding the pre-registered client secret (trailing newline ignored).
    #[arg(long, requires = "issuer")]
    client_secret_file: Option<std::path::PathBuf>,
    /// The issuer the pre-registered credentials belong to (required with a secret: the secret
    /// is never sent to any other authorization server).
    #[arg(long)]
    issuer: Option<String>,
    /// A Client ID Metadata Document URL to use as client_id where supported.
    #[arg(long)]
    client_metadata_url: Option<String>,
    /// Scopes to request (space or comma separated; default: what the server asks for).
    #[arg(long)]
    scope: Option<String>,
    /// Print the authorization URL instead of opening a browser. When the browser cannot reach
    /// this machine's loopback (a login over SSH), paste the full URL it was redirected to on
    /// standard input: whichever comes first, the redirect or the pasted URL, completes the login.
    #[arg(long)]
    no_browser: bool,
    /// Log in with the device authorization grant (RFC 8628): prints a verification URI and a
    /// code to enter there from any browser, and waits for approval. Needs an authorization
    /// server that advertises a device_authorization_endpoint.
    #[arg(long, conflicts_with_all = ["no_browser", "headless"])]
    device: bool,
    /// The loopback port of the OAuth redirect. Default: a stable port derived from the URL
    /// (the one `mcp-auth proxy` uses too), so an authorization server that matches redirect
    /// URIs exactly sees the same one at every login; a dynamically registered client keeps
    /// the port it was registered with.
    #[arg(long)]
    callback_port: Option<u16>,
    /// Follow the authorization redirect without a browser (auto-approving servers only).
    #[arg(long, hide = true)]
    headless: bool,
}

impl std::fmt::Debug for LoginArgs {
    /// The client secret is never shown, only whether one was given.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginArgs")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("client_secret_file", &self.client_secret_file)
            .field("issuer", &self.issuer)
            .field("client_metadata_url", &self.client_metadata_url)
            .field("scope", &self.scope)
            .field("no_browser", &self.no_browser)
            .field("device", &self.device)
            .field("callback_port", &self.callback_port)
            .field("headless", &self.headless)
            .finish()
    }
}

/// The loopback port of the redirect URI: `explicit`, else the stable port of `url` when it is
/// free, else (another program holds it) an ephemeral one — said on stderr, since a server that
/// matches redirect URIs exactly accepts it only for a new dynamic registration.
pub(crate) fn callback_port(explicit: Option<u16>, url: &str) -> Result<u16, String> {
    if let Some(port) = explicit {
        return Ok(port);
    }
    let stable = proxy::default_callback_port(url);
    if std::net::TcpListener::bind(("127.0.0.1", stable)).is_ok() {
        return Ok(stable);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot pick a loopback port: {e}"))?;
    eprintln!(
        "mcp-auth: the usual redirect port {stable} of this server is in use; using {port} \
         (pass --callback-port to choose)"
    );
    Ok(port)
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct LogoutArgs {
    /// The MCP server URL.
    url: Option<String>,
    /// Every server bound to this authorization server.
    #[arg(long)]
    issuer: Option<String>,
    /// Everything in the namespace.
    #[arg(long)]
    all: bool,
}

/// A failure with the exit code it maps to.
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Failure {
    /// `e`'s failure: a usage error with the guard's own message when a record did not fit the
    /// keys given (see `encryption::SealError`), else a general one.
    fn of_error(e: &(dyn std::error::Error + 'static)) -> Self {
        match encryption::seal_error_in(e) {
            Some(sealed) => Self {
                code: EXIT_USAGE,
                message: sealed.to_string(),
            },
            None => Self {
                code: 1,
                message: e.to_string(),
            },
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self { code: 1, message }
    }
}

impl From<AuthError> for Failure {
    fn from(e: AuthError) -> Self {
        Self::of_error(&e)
    }
}

impl From<mcp_auth_core::StoreError> for Failure {
    fn from(e: mcp_auth_core::StoreError) -> Self {
        Self::of_error(&e)
    }
}

impl From<mcp_auth_core::InvalidId> for Failure {
    fn from(e: mcp_auth_core::InvalidId) -> Self {
        Self {
            code: 1,
            message: e.to_string(),
        }
    }
}

fn main() -> ExitCode {
    // Secrets live in this process's memory: never write them to a core file.
    if let Err(e) = rlimit::setrlimit(rlimit::Resource::CORE, 0, 0) {
        eprintln!("mcp-auth: warning: cannot disable core dumps: {e}");
    }
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (cli, matches) = match parse_token_command(&args) {
        Some(cli) => (cli, None),
        None => {
            let matches = <Cli as clap::CommandFactory>::command().get_matches_from(&args);
            match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
                Ok(cli) => (cli, Some(matches)),
                Err(e) => e.exit(),
            }
        }
    };
    // Generated from the definition alone: no store, no key, no runtime.
    match &cli.command {
        Command::Completions { shell } => return exit_code(completions::completions(*shell)),
        Command::Man => return exit_code(completions::man()),
        _ => {}
    }
    logging::init(cli.globals.verbose);
    if let Some(("login", login)) = matches.as_ref().and_then(clap::ArgMatches::subcommand)
        && login.value_source("client_secret") == Some(clap::parser::ValueSource::CommandLine)
    {
        eprintln!(
            "mcp-auth: warning: --client-secret on the command line is visible to other local \
             users (ps, /proc/PID/cmdline); use MCP_AUTH_CLIENT_SECRET or --client-secret-file"
        );
    }
    // `token` runs on every request of a headers helper: one thread, no worker pool to start
    // (a valid stored token is one store read; a refresh is a few awaited requests).
    let runtime = if matches!(cli.command, Command::Token(_)) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mcp-auth: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    exit_code(runtime.block_on(run(cli)))
}

/// `args` parsed by [`TokenCli`] when they are a `token` command it accepts: the same [`Cli`]
/// the whole command tree would give (the same global options, the same [`TokenArgs`]), at a
/// fraction of the cost. `None` for anything else, `--help` and every error included: the whole
/// tree parses those (and prints its help, or its error).
fn parse_token_command(args: &[std::ffi::OsString]) -> Option<Cli> {
    use clap::{CommandFactory as _, FromArgMatches as _};
    if !args.iter().skip(1).any(|a| a == "token") {
        return None;
    }
    let matches = TokenCli::command().try_get_matches_from(args).ok()?;
    let TokenCli { globals, command } = TokenCli::from_arg_matches(&matches).ok()?;
    let TokenOnly::Token(token) = command;
    Some(Cli {
        globals,
        command: Command::Token(token),
    })
}

/// The exit code of a command's result, its failure said on stderr.
fn exit_code(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("mcp-auth: {}", printable(&failure.message));
            ExitCode::from(failure.code)
        }
    }
}

/// Text for a terminal: control characters (escape sequences, carriage returns, bells) that an
/// authorization server or a stored record may carry are shown escaped, never interpreted.
/// Newlines and tabs stay.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The network options every command shares.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct NetworkOptions {
    /// Plain http to loopback servers (and private ones with `allow_private_network`).
    pub(crate) allow_http: bool,
    /// Private-network addresses.
    pub(crate) allow_private_network: bool,
    /// The proxy of the standard environment variables, for https.
    pub(crate) use_system_proxy: bool,
}

impl NetworkOptions {
    fn of(cli: &Cli) -> Self {
        Self {
            allow_http: cli.globals.allow_http || cli.globals.insecure_allow_loopback,
            allow_private_network: cli.globals.allow_private_network,
            use_system_proxy: cli.globals.use_system_proxy,
        }
    }

    /// The engine's policy for these options.
    pub(crate) fn policy(self) -> HttpPolicy {
        let mut policy = if self.allow_http {
            HttpPolicy::allowing_loopback()
        } else {
            HttpPolicy::default()
        };
        if self.allow_private_network {
            policy = policy.allowing_private_network();
        }
        if self.use_system_proxy {
            policy = policy.using_system_proxy();
        }
        policy
    }
}

fn policy(cli: &Cli) -> HttpPolicy {
    NetworkOptions::of(cli).policy()
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let namespace = Namespace::new(cli.globals.namespace.clone())?;
    #[cfg(feature = "demo")]
    if matches!(cli.command, Command::Demo) {
        return demo::run().await.map_err(Failure::from);
    }
    // Loaded once, before any store is opened (a key generated in the OS keyring is announced
    // once, and `migrate` uses the same keys on both sides).
    let keys = cli.globals.encryption.load().await?;
    let keys = keys.as_ref();
    match &cli.command {
        // Handled above (`demo`) and in `main` (generated output).
        #[cfg(feature = "demo")]
        Command::Demo => Ok(()),
        Command::Completions { .. } | Command::Man => Ok(()),
        Command::Migrate { from, to } => migrate(from, to, &namespace, keys).await,
        Command::Rekey => {
            let Some(keys) = keys else {
                return Err(Failure {
                    code: EXIT_USAGE,
                    message: "rekey needs the current key: set MCP_AUTH_KEY or --key-file, or \
                              pass --encrypt to use the key in the OS keyring (and give the old \
                              keys with --old-key-file or MCP_AUTH_OLD_KEY)"
                        .to_owned(),
                });
            };
            let raw = store::open(cli.globals.store.as_deref(), &namespace).await?;
            encryption::rekey(raw, &namespace, keys).await
        }
        Command::Login(args) => {
            let store = store::open_with(cli.globals.store.as_deref(), &namespace, keys).await?;
            login(&cli, args, store).await
        }
        Command::Proxy(args) => {
            let store = store::open_with(cli.globals.store.as_deref(), &namespace, keys).await?;
            if let Ok(resource) = ResourceUri::new(&args.url) {
                encryption::preflight(store.as_ref(), &resource).await?;
            }
            proxy::run(args, store, NetworkOptions::of(&cli))
                .await
                .map_err(Failure::from)
        }
        Command::Token(TokenArgs { url, format }) => {
            // Every persistent store's refresh lease reaches other processes (the keyring's
            // through a lock file derived from the keyring itself), so concurrent `token` calls
            // refresh once whatever their environment.
            let resource = ResourceUri::new(url)?;
            if store::missing_sqlite_file(cli.globals.store.as_deref()).is_some() {
                // Nothing stored yet, and nothing is created to say so.
                return Err(Failure {
                    code: EXIT_LOGIN_REQUIRED,
                    message: format!(
                        "no valid credentials for {resource}; log in first\nhint: run `mcp-auth \
                         login {url}`"
                    ),
                });
            }
            let store = store::open_with(cli.globals.store.as_deref(), &namespace, keys).await?;
            let auth = McpAuth::builder(store).http_policy(policy(&cli)).build()?;
            match auth.cached_access_credential(&resource).await {
                Ok(credential) if credential.is_dpop() => {
                    auth.flush().await.map_err(Failure::from)?;
                    Err(Failure::from(format!(
                        "the token for {resource} is DPoP-bound (RFC 9449): every request needs \
                         a fresh proof signed with a key kept in the store, so a bare token is \
                         useless to another program; use a client built on mcp-auth (such as \
                         mcp-auth-rmcp), which signs a proof for every request"
                    )))
                }
                Ok(credential) => {
                    tracing::info!(resource = %resource, "access token ready");
                    let token = credential.into_token();
                    println!("{}", token_output(&auth, &resource, &token, *format).await?);
                    // A refresh that rotated the token must reach the store before we exit.
                    auth.flush().await.map_err(Failure::from)
                }
                Err(e) if e.needs_login() => Err(Failure {
                    code: EXIT_LOGIN_REQUIRED,
                    message: format!("{e}\nhint: run `mcp-auth login {url}`"),
                }),
                Err(e) => Err(e.into()),
            }
        }
        Command::Status { json } => {
            if let Some(path) = store::missing_sqlite_file(cli.globals.store.as_deref()) {
                // Nothing stored yet: say so without creating the file or its directory.
                if *json {
                    println!("[]");
                } else {
                    println!(
                        "No credentials stored (no database at {}). Run `mcp-auth login \
                         <mcp-server-url>`.",
                        path.display()
                    );
                }
                return Ok(());
            }
            // The records as stored (envelopes included, never shown): `status` reports how they
            // are sealed whatever the keys given, and opens them only to tell whether a refresh
            // token is there.
            let raw = store::open(cli.globals.store.as_deref(), &namespace).await?;
            let opened = keys.map(|k| {
                EncryptedStore::new(Arc::clone(&raw), namespace.clone(), k.clone())
                    .accept_plaintext(true)
            });
            status(raw.as_ref(), opened.as_ref(), keys, *json).await
        }
        Command::Logout(args) => {
            let store = store::open_with(cli.globals.store.as_deref(), &namespace, keys).await?;
            // A sealed store without its key: stop before anything is deleted unrevoked.
            if let Some(resource) = args.url.as_deref().and_then(|u| ResourceUri::new(u).ok()) {
                encryption::preflight(store.as_ref(), &resource).await?;
            }
            logout(&cli, args, store).await
        }
    }
}

async fn login(
    cli: &Cli,
    args: &LoginArgs,
    store: Arc<dyn CredentialStore>,
) -> Result<(), Failure> {
    let resource = ResourceUri::new(&args.url)?;
    let port = callback_port(args.callback_port, &args.url)?;
    let mut config =
        ClientConfig::default().with_redirect_uri(format!("http://127.0.0.1:{port}/callback"));
    if let Some(url) = &args.client_metadata_url {
        config = config.with_client_metadata_url(url.clone());
    }
    let secret = match (&args.client_secret, &args.client_secret_file) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the client secret from {}: {e}", path.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        ),
        (None, None) => None,
    };
    if secret.is_some() && args.client_id.is_none() {
        return Err(Failure::from(
            "a client secret needs --client-id (and --issuer)".to_owned(),
        ));
    }
    if let Some(client_id) = &args.client_id {
        config = config.with_pre_registered(PreRegisteredClient {
            client_id: client_id.clone(),
            client_secret: secret.clone().map(SecretString::from),
            token_endpoint_auth_method: if secret.is_some() {
                "client_secret_basic"
            } else {
                "none"
            }
            .to_owned(),
            issuer: args.issuer.as_deref().map(IssuerId::new).transpose()?,
        });
    }
    let authorizer: Arc<dyn Authorizer> = if args.headless {
        Arc::new(HeadlessAuthorizer::with_policy(policy(cli))?)
    } else if args.no_browser {
        // Over SSH the browser's redirect cannot reach this loopback listener: the user pastes
        // the URL it was sent to instead (checked exactly like the listener's callback).
        Arc::new(PasteAuthorizer::new(
            LoopbackAuthorizer::new(
                |url| {
                    eprintln!("Open this URL to authorize:\n  {url}");
                    eprintln!(
                        "If the browser then cannot reach this machine, paste the full URL it \
                         was redirected to here and press Enter:"
                    );
                },
                Duration::from_secs(300),
            ),
            tokio::io::BufReader::new(tokio::io::stdin()),
        ))
    } else {
        let no_browser = args.no_browser;
        Arc::new(LoopbackAuthorizer::new(
            move |url| {
                eprintln!("Open this URL to authorize:\n  {url}");
                if !no_browser && webbrowser::open(url.as_str()).is_err() {
                    eprintln!("(could not open a browser; open the URL yourself)");
                }
            },
            Duration::from_secs(300),
        ))
    };
    // Step 2 starts when the engine asks for the authorization: discovery and registration
    // (step 1, inside the engine's call) are done by then.
    let authorizer: Arc<dyn Authorizer> = Arc::new(StepAuthorizer { inner: authorizer });
    let auth = McpAuth::builder(store)
        .client(config)
        .http_policy(policy(cli))
        .authorizer(authorizer)
        .build()?;
    let scopes = args.scope.as_ref().map(|s| {
        s.split([' ', ','])
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    });
    eprintln!("[1/3] Discovering the authorization server of {resource} and registering with it …");
    if args.device {
        auth.authorize_device(&resource, scopes, |code| {
            eprintln!("{STEP_AUTHORIZE}");
            eprintln!(
                "To authorize, open {} and enter the code: {}",
                code.verification_uri, code.user_code
            );
            if let Some(complete) = &code.verification_uri_complete {
                eprintln!("(or open {complete} )");
            }
            eprintln!(
                "Waiting for approval (the code expires in {} s) …",
                code.expires_in.as_secs()
            );
        })
        .await?;
    } else {
        auth.authorize_with_scopes(&resource, scopes).await?;
    }
    let binding = auth
        .store()
        .get_binding(&resource)
        .await?
        .map(|b| b.value.issuer.to_string())
        .unwrap_or_default();
    tracing::info!(resource = %resource, issuer = %binding, "logged in");
    eprintln!(
        "[3/3] Logged in to {resource} (authorization server {}).",
        printable(&binding)
    );
    if let Ok(issuer) = IssuerId::new(&binding)
        && let Ok(Some(tokens)) = auth
            .store()
            .get_tokens(&TokenKey::new(issuer, resource.clone()))
            .await
        && tokens.value.refresh_token.is_none()
    {
        eprintln!(
            "Note: the authorization server issued no refresh token. The access token is used \
             until it expires ({}); then run `mcp-auth login {resource}` again.",
            expiry(&tokens.value)
        );
    }
    Ok(())
}

/// The step line of `login` printed when the authorization starts.
const STEP_AUTHORIZE: &str = "[2/3] Authorizing …";

/// An [`Authorizer`] that says `login`'s step 2 has begun, then lets `inner` do the work: the
/// engine calls it only once discovery and registration have succeeded.
#[derive(Debug)]
struct StepAuthorizer {
    inner: Arc<dyn Authorizer>,
}

#[async_trait::async_trait]
impl Authorizer for StepAuthorizer {
    async fn authorize(
        &self,
        request: mcp_auth_core::AuthorizationRequest,
    ) -> Result<reqwest::Url, AuthError> {
        eprintln!("{STEP_AUTHORIZE}");
        self.inner.authorize(request).await
    }

    fn can_serve(&self, redirect_uri: &reqwest::Url) -> bool {
        self.inner.can_serve(redirect_uri)
    }
}

/// What `token --format …` prints.
async fn token_output(
    auth: &McpAuth,
    resource: &ResourceUri,
    token: &SecretString,
    format: TokenFormat,
) -> Result<String, Failure> {
    let secret = token.expose_secret();
    Ok(match format {
        TokenFormat::Token => secret.to_owned(),
        TokenFormat::HeaderJson => {
            serde_json::json!({ "Authorization": format!("Bearer {secret}") }).to_string()
        }
        TokenFormat::Json => {
            let mut expires_at = None;
            let mut scopes = Vec::new();
            if let Some(binding) = auth.store().get_binding(resource).await?
                && let Some(tokens) = auth
                    .store()
                    .get_tokens(&TokenKey::new(binding.value.issuer, resource.clone()))
                    .await?
                && tokens.value.access_token.expose_secret() == secret
            {
                expires_at = tokens.value.expires_at.map(|t| rfc3339(t.unix_seconds()));
                scopes = tokens.value.scopes;
            }
            serde_json::json!({
                "access_token": secret,
                "token_type": "Bearer",
                "expires_at": expires_at,
                "scopes": scopes,
            })
            .to_string()
        }
    })
}

/// `YYYY-MM-DDTHH:MM:SSZ` for Unix seconds (proleptic Gregorian, UTC).
fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn expiry(tokens: &mcp_auth_core::TokenSet) -> String {
    match tokens.expires_at {
        None => "no expiry".to_owned(),
        Some(at) => {
            let left = at.unix_seconds() - mcp_auth_core::Timestamp::now().unix_seconds();
            if left <= 0 {
                "expired".to_owned()
            } else {
                format!("in {}m{}s", left / 60, left % 60)
            }
        }
    }
}

/// [`printable`] without a copy when there is nothing to escape (the usual case).
fn printable_cow(text: &str) -> std::borrow::Cow<'_, str> {
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        std::borrow::Cow::Owned(printable(text))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// `text` left-aligned in `width` characters and a space, as `{text:<width} ` formats it.
fn status_cell(out: &mut String, text: &str, width: usize) {
    out.push_str(text);
    for _ in text.chars().count()..width {
        out.push(' ');
    }
    out.push(' ');
}

/// One issuer of `status`: its registration and its servers (borrowed from the scans, so that
/// grouping and sorting move no record).
#[derive(Default)]
struct StatusIssuer<'a> {
    registration: Option<(&'a mcp_auth_core::ClientRegistration, encryption::Seal)>,
    servers: Vec<StatusServer<'a>>,
}

/// One server of `status`: its token set as stored, how it is sealed, and whether it holds a
/// refresh token (`None`: sealed and not opened — no key given, or not the right one).
struct StatusServer<'a> {
    resource: &'a ResourceUri,
    tokens: &'a mcp_auth_core::TokenSet,
    seal: encryption::Seal,
    refresh: Option<bool>,
}

/// Whether each sealed token set holds a refresh token, read through `opened` (which decrypts):
/// one scan, or when one record does not open, one read per sealed record, so that the others
/// are still shown.
async fn sealed_refresh_tokens(
    opened: &EncryptedStore<Arc<dyn CredentialStore>>,
    sealed: &[&TokenKey],
) -> std::collections::HashMap<TokenKey, bool> {
    if sealed.is_empty() {
        return std::collections::HashMap::new();
    }
    if let Ok(all) = opened.scan_tokens().await {
        return all
            .into_iter()
            .map(|(key, t)| (key, t.value.refresh_token.is_some()))
            .collect();
    }
    let mut found = std::collections::HashMap::with_capacity(sealed.len());
    for key in sealed {
        if let Ok(Some(t)) = opened.get_tokens(key).await {
            found.insert((*key).clone(), t.value.refresh_token.is_some());
        }
    }
    found
}

/// `status`: one scan of the registrations and one of the token sets (plus, for `--json`, the list
/// of bound resources), grouped in a hash map, so the work grows linearly with the number of
/// records. Never prints a secret.
///
/// `store` is the store as stored: envelopes are classified by key id (counted, never shown);
/// `opened`, when keys are given, decrypts token sets only to tell whether they hold a refresh
/// token. Never fails on a record that does not fit the keys given.
async fn status(
    store: &dyn CredentialStore,
    opened: Option<&EncryptedStore<Arc<dyn CredentialStore>>>,
    keys: Option<&mcp_auth_core::KeySet>,
    json: bool,
) -> Result<(), Failure> {
    use encryption::Seal;
    use std::collections::{HashMap, HashSet};
    use std::fmt::Write as _;
    let registrations = store.scan_registrations().await?;
    // Only `--json` shows whether a server is bound. Keys only: a damaged binding does not stop
    // `status`.
    let bound: HashSet<ResourceUri> = if json {
        store.list_bindings().await?.into_iter().collect()
    } else {
        HashSet::new()
    };
    let tokens = store.scan_tokens().await?;
    let mut seals = encryption::SealCounts::default();
    let token_seals: Vec<Seal> = tokens
        .iter()
        .map(|(_, t)| Seal::of_tokens(&t.value))
        .collect();
    let sealed: Vec<&TokenKey> = tokens
        .iter()
        .zip(&token_seals)
        .filter(|(_, seal)| **seal != Seal::Plain)
        .map(|((key, _), _)| key)
        .collect();
    let opened_refresh = match opened {
        Some(opened) => sealed_refresh_tokens(opened, &sealed).await,
        None => HashMap::new(),
    };
    let mut by_issuer: HashMap<&IssuerId, StatusIssuer<'_>> =
        HashMap::with_capacity(registrations.len().max(tokens.len()));
    for r in &registrations {
        let seal = Seal::of_registration(&r.value);
        seals.add(&seal);
        by_issuer.entry(&r.value.issuer).or_default().registration = Some((&r.value, seal));
    }
    for ((key, t), seal) in tokens.iter().zip(token_seals) {
        seals.add(&seal);
        let refresh = if seal == Seal::Plain {
            Some(t.value.refresh_token.is_some())
        } else {
            opened_refresh.get(key).copied()
        };
        let servers = &mut by_issuer.entry(&key.issuer).or_default().servers;
        servers.push(StatusServer {
            resource: &key.resource,
            tokens: &t.value,
            seal,
            refresh,
        });
    }
    let mut rows: Vec<(&IssuerId, StatusIssuer<'_>)> = by_issuer.into_iter().collect();
    rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (_, row) in &mut rows {
        row.servers
            .sort_unstable_by(|a, b| a.resource.cmp(b.resource));
    }
    let encryption_line = seals.summary(keys);
    if json {
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|(issuer, row)| {
                let servers: Vec<serde_json::Value> = row
                    .servers
                    .iter()
                    .map(|server| {
                        serde_json::json!({
                            "resource": server.resource.as_str(),
                            "bound": bound.contains(server.resource),
                            "token_expires": expiry(server.tokens),
                            "expires_at": server
                                .tokens
                                .expires_at
                                .map(|t| rfc3339(t.unix_seconds())),
                            "refresh_available": server.refresh,
                            "key_id": server.seal.key_id(),
                            "encrypted": server.seal != Seal::Plain,
                        })
                    })
                    .collect();
                let registration = row.registration.as_ref();
                serde_json::json!({
                    "issuer": issuer.as_str(),
                    "registration": registration.map(|(r, _)| r.kind.as_str()),
                    "client_id": registration.map(|(r, _)| r.client_id.clone()),
                    "registration_key_id": registration.and_then(|(_, seal)| seal.key_id()),
                    "registration_encrypted": registration.map(|(_, seal)| *seal != Seal::Plain),
                    "servers": servers,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    // One write to stdout (a line-buffered stdout would make one system call per row).
    let mut out = String::new();
    if let Some(line) = encryption_line {
        let _ = writeln!(out, "{line}");
    }
    if rows.is_empty() {
        out.push_str("No credentials stored. Run `mcp-auth login <mcp-server-url>`.\n");
        print!("{out}");
        return Ok(());
    }
    let _ = writeln!(
        out,
        "{:<40} {:<18} {:<48} {:<40} {:<14} REFRESH",
        "ISSUER", "REGISTRATION", "CLIENT_ID", "MCP SERVER", "TOKEN"
    );
    for (issuer, row) in &rows {
        let registration = row.registration.as_ref().map(|(r, _)| r);
        // The issuer's three columns, formatted once for all its servers.
        let prefix = format!(
            "{:<40} {:<18} {:<48} ",
            printable_cow(issuer.as_str()),
            registration.map_or("-", |r| r.kind.as_str()),
            printable_cow(registration.map_or("-", |r| r.client_id.as_str()))
        );
        if row.servers.is_empty() {
            let _ = writeln!(out, "{prefix}{:<40} {:<14} -", "-", "-");
        }
        for server in &row.servers {
            out.push_str(&prefix);
            status_cell(&mut out, &printable_cow(server.resource.as_str()), 40);
            status_cell(&mut out, &expiry(server.tokens), 14);
            out.push_str(match server.refresh {
                Some(true) => "yes\n",
                Some(false) => "no\n",
                // Sealed, and not opened here.
                None => "?\n",
            });
        }
    }
    print!("{out}");
    Ok(())
}

async fn logout(
    cli: &Cli,
    args: &LogoutArgs,
    store: Arc<dyn CredentialStore>,
) -> Result<(), Failure> {
    let auth = McpAuth::builder(Arc::clone(&store))
        .http_policy(policy(cli))
        .build()?;
    // One damaged record must not stop a logout: every problem is reported at the end, and the
    // exit code says there was one.
    let mut problems: Vec<String> = Vec::new();
    let mut targets = Vec::new();
    if let Some(url) = &args.url {
        targets.push(ResourceUri::new(url)?);
    } else {
        let issuer = args.issuer.as_deref().map(IssuerId::new).transpose()?;
        for resource in store.list_bindings().await? {
            match store.get_binding(&resource).await {
                Ok(bound) => {
                    if args.all || bound.map(|b| b.value.issuer) == issuer {
                        targets.push(resource);
                    }
                }
                Err(e) if args.all => {
                    problems.push(format!("{resource}: {e}; the damaged record was deleted"));
                    store.delete_binding(&resource, Expect::Any).await?;
                }
                Err(e) => problems.push(format!("{resource}: {e}")),
            }
        }
    }
    for resource in &targets {
        match auth.logout(resource).await {
            Ok(report) => {
                eprintln!("Logged out of {resource}.");
                for kind in &report.revoked {
                    eprintln!(
                        "  {} revoked at the authorization server.",
                        kind.replace('_', " ")
                    );
                }
                for (kind, why) in &report.not_revoked {
                    eprintln!(
                        "  {} NOT revoked by the authorization server: {}",
                        kind.replace('_', " "),
                        printable(why)
                    );
                }
                if let Some(why) = &report.not_attempted {
                    eprintln!("  Nothing revoked: {}.", printable(why));
                }
            }
            Err(e) => problems.push(format!("{resource}: {e}")),
        }
    }
    // Tokens left without a binding (e.g. after a migration) go too.
    for key in store.list_tokens().await? {
        let matches = args.all
            || args.issuer.as_deref() == Some(key.issuer.as_str())
            || args
                .url
                .as_deref()
                .and_then(|u| ResourceUri::new(u).ok())
                .as_ref()
                == Some(&key.resource);
        if matches
            && let Err(e) = store
                .delete_tokens(
                    &TokenKey::new(key.issuer.clone(), key.resource.clone()),
                    Expect::Any,
                )
                .await
        {
            problems.push(format!("tokens {key}: {e}"));
        }
    }
    if targets.is_empty() && problems.is_empty() {
        eprintln!("Nothing to log out of.");
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure::from(format!(
            "{} problem(s) during logout:\n  {}",
            problems.len(),
            problems.join("\n  ")
        )))
    }
}

/// Records `migrate` writes per batch (`put_*_any`; one transaction each on SQLite).
const MIGRATE_BATCH: usize = 1000;

/// Copies every registration, token set and binding of `from` into `to`, then verifies the copy.
///
/// Bulk: one scan per kind of the source, writes in batches of [`MIGRATE_BATCH`], one scan per
/// kind of the destination to verify (compared by encoded bytes). Grant safety: a token set
/// whose record shows a refresh in flight is copied on its own under the source's refresh lease
/// (the refresh is waited for, never copied half-way); every other one is copied as a committed
/// state in which no refresh was running (a refresh records `InFlight` before it sends anything).
/// Then passes compare the source's current versions (one scan) with the versions copied and
/// copy every changed token set again under the lease, until a pass finds nothing changed.
///
/// With `keys`, the destination is written sealed under the current key (and must hold no
/// record that is not), and the source is read with the same keys, plaintext records accepted: a
/// plain store moves into an encrypted one, and records under an old key are re-sealed. The
/// checks compare decrypted records (every write seals with a fresh nonce), after reading the
/// destination back through the decryption, so a record that did not land sealed fails them.
async fn migrate(
    from: &str,
    to: &str,
    namespace: &Namespace,
    keys: Option<&mcp_auth_core::KeySet>,
) -> Result<(), Failure> {
    use mcp_auth_core::{RefreshState, Version, record};
    use std::collections::HashMap;
    let source = encryption::wrap(
        store::open(Some(from), namespace).await?,
        namespace,
        keys,
        true,
    );
    let target = encryption::wrap(
        store::open(Some(to), namespace).await?,
        namespace,
        keys,
        false,
    );
    // Named in messages from here on: without a password a URL may carry.
    let (from, to) = (store::redacted(from), store::redacted(to));
    let registrations: Vec<mcp_auth_core::ClientRegistration> = source
        .scan_registrations()
        .await?
        .into_iter()
        .map(|r| r.value)
        .collect();
    let tokens = source.scan_tokens().await?;
    let bindings: Vec<mcp_auth_core::ResourceBinding> = source
        .scan_bindings()
        .await?
        .into_iter()
        .map(|b| b.value)
        .collect();
    let token_count = tokens.len();
    let total = (registrations.len() + token_count + bindings.len()) as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} records")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if total < 50 {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mismatch = |what: String| {
        Failure::from(format!(
            "verification failed: {what} differs after the copy"
        ))
    };

    for batch in registrations.chunks(MIGRATE_BATCH) {
        target.put_registrations_any(batch).await?;
        bar.inc(batch.len() as u64);
    }
    let copied: HashMap<IssuerId, Vec<u8>> = target
        .scan_registrations()
        .await?
        .into_iter()
        .map(|r| {
            Ok((
                r.value.issuer.clone(),
                record::encode_registration(&r.value)?,
            ))
        })
        .collect::<Result<_, Failure>>()?;
    for r in &registrations {
        if copied.get(&r.issuer) != Some(&record::encode_registration(r)?) {
            return Err(mismatch(format!("registration {}", r.issuer)));
        }
    }

    // The source version each token set was copied from (`None`: it was gone by then).
    let mut copied_from: HashMap<TokenKey, Option<Version>> = HashMap::with_capacity(token_count);
    let mut settled = Vec::with_capacity(token_count);
    let mut in_flight = Vec::new();
    for (key, t) in tokens {
        if matches!(t.value.refresh_state, Some(RefreshState::InFlight { .. })) {
            in_flight.push(key);
        } else {
            copied_from.insert(key.clone(), Some(t.version));
            settled.push((key, t.value));
        }
    }
    for batch in settled.chunks(MIGRATE_BATCH) {
        target.put_tokens_any(batch).await?;
        bar.inc(batch.len() as u64);
    }
    for key in in_flight {
        let (_, version) = copy_tokens(source.as_ref(), target.as_ref(), &key).await?;
        copied_from.insert(key, version);
        bar.inc(1);
    }
    // The ones copied under the lease were verified there; the batches are verified here.
    let copied: HashMap<TokenKey, Vec<u8>> = target
        .scan_tokens()
        .await?
        .into_iter()
        .map(|(key, t)| {
            let bytes = record::encode_tokens(&key, &t.value)?;
            Ok((key, bytes))
        })
        .collect::<Result<_, Failure>>()?;
    for (key, t) in &settled {
        if copied.get(key) != Some(&record::encode_tokens(key, t)?) {
            return Err(mismatch(format!("tokens {key}")));
        }
    }
    drop(copied);
    drop(settled);

    for batch in bindings.chunks(MIGRATE_BATCH) {
        target.put_bindings_any(batch).await?;
        bar.inc(batch.len() as u64);
    }
    let copied: HashMap<ResourceUri, Vec<u8>> = target
        .scan_bindings()
        .await?
        .into_iter()
        .map(|b| Ok((b.value.resource.clone(), record::encode_binding(&b.value)?)))
        .collect::<Result<_, Failure>>()?;
    for b in &bindings {
        if copied.get(&b.resource) != Some(&record::encode_binding(b)?) {
            return Err(mismatch(format!("binding {}", b.resource)));
        }
    }
    bar.finish_and_clear();

    // A refresh may have rotated a token set after it was copied: compare the source's current
    // versions with the ones copied, and copy every changed token set again under its lease,
    // until a pass finds nothing changed.
    let mut recopied = 0;
    for pass in 1..=5 {
        let mut changed = 0;
        for (key, now) in source.scan_tokens().await? {
            // Token sets created after the scan are not part of this migration.
            let Some(was) = copied_from.get(&key) else {
                continue;
            };
            if was.as_ref() == Some(&now.version) {
                continue;
            }
            let (did_change, version) = copy_tokens(source.as_ref(), target.as_ref(), &key).await?;
            copied_from.insert(key, version);
            if did_change {
                changed += 1;
            }
        }
        recopied += changed;
        if changed == 0 {
            break;
        }
        if pass == 5 {
            return Err(Failure::from(format!(
                "{changed} token sets kept changing in {from} during the copy (refreshes are \
                 running there); stop the clients using it and run migrate again"
            )));
        }
    }
    eprintln!(
        "Copied and verified {} registrations, {} token sets and {} bindings from {from} to {to}.",
        registrations.len(),
        token_count,
        bindings.len()
    );
    if recopied > 0 {
        eprintln!(
            "{recopied} token sets were refreshed during the copy and copied again. Point clients \
             at {to} now: refreshes made through {from} from here on are not copied."
        );
    }
    Ok(())
}

/// Copies one token set while holding the source's refresh lease, so no refresh can replace it
/// half-way (a refresh that is running is waited for), and verifies the copy against the
/// source's state at that moment. Returns whether the destination changed, and the source
/// version copied (`None`: the source has no such token set).
async fn copy_tokens(
    source: &dyn CredentialStore,
    target: &dyn CredentialStore,
    key: &TokenKey,
) -> Result<(bool, Option<mcp_auth_core::Version>), Failure> {
    use mcp_auth_core::record;
    let waited_since = std::time::Instant::now();
    let lease = loop {
        if let Some(lease) = source
            .try_acquire_refresh_lease(key, Duration::from_secs(30))
            .await?
        {
            break lease;
        }
        if waited_since.elapsed() > Duration::from_secs(120) {
            return Err(Failure::from(format!(
                "a refresh of {key} in the source store has been running for 2 minutes; \
                 try again later"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let copied = async {
        let Some(current) = source.get_tokens(key).await? else {
            return Ok::<_, Failure>((false, None));
        };
        let want = record::encode_tokens(key, &current.value)?;
        let have = match target.get_tokens(key).await? {
            Some(t) => Some(record::encode_tokens(key, &t.value)?),
            None => None,
        };
        if have.as_deref() == Some(want.as_slice()) {
            return Ok((false, Some(current.version)));
        }
        target.put_tokens(key, &current.value, Expect::Any).await?;
        let back = target.get_tokens(key).await?.ok_or_else(|| {
            Failure::from(format!(
                "verification failed: tokens {key} are missing after the copy"
            ))
        })?;
        if record::encode_tokens(key, &back.value)? != want {
            return Err(Failure::from(format!(
                "verification failed: tokens {key} differ after the copy"
            )));
        }
        Ok((true, Some(current.version)))
    }
    .await;
    if let Err(e) = source.release_refresh_lease(&lease).await {
        eprintln!("warning: could not release the refresh lease of {key} in the source: {e}");
    }
    copied
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_trees_are_well_formed() {
        <Cli as clap::CommandFactory>::command().debug_assert();
        <TokenCli as clap::CommandFactory>::command().debug_assert();
    }

    /// The `token` parser gives exactly what the whole tree gives, or stands aside.
    #[test]
    fn token_parser_agrees_with_the_whole_command_tree() {
        let url = "https://mcp.example.com/mcp";
        let taken: &[&[&str]] = &[
            &["token", url],
            &["token", url, "--format", "header-json"],
            &["token", "--format=json", url],
            &["--store", "sqlite:/tmp/x.db", "token", url],
            &["--store=memory:", "--namespace", "team", "token", url],
            &["token", url, "--store", "sqlite:", "--namespace=n"],
            &["-vv", "token", url],
            &["token", url, "-v"],
            &["--allow-http", "token", url],
            &[
                "--allow-private-network",
                "--use-system-proxy",
                "token",
                url,
            ],
            &[
                "--encrypt",
                "--key-file",
                "/k",
                "--old-key-file",
                "/o",
                "token",
                url,
            ],
            &["--store", "token", "token", url],
            &["token", ""],
        ];
        let declined: &[&[&str]] = &[
            &["token"],
            &["token", url, "extra"],
            &["token", url, "--help"],
            &["token", "-h"],
            &["help", "token"],
            &["--version", "token", url],
            &["token", url, "--format", "yaml"],
            &["token", url, "--client-id", "x"],
            &["login", "token"],
            &["status"],
            &["logout", url],
            &["token", url, "--store"],
        ];
        let argv = |args: &[&str]| -> Vec<std::ffi::OsString> {
            std::iter::once("mcp-auth")
                .chain(args.iter().copied())
                .map(Into::into)
                .collect()
        };
        for args in taken {
            let fast = parse_token_command(&argv(args))
                .unwrap_or_else(|| panic!("{args:?} should take the token parser"));
            let whole = <Cli as Parser>::try_parse_from(argv(args)).unwrap();
            assert_eq!(format!("{fast:?}"), format!("{whole:?}"), "{args:?}");
        }
        for args in declined {
            assert!(parse_token_command(&argv(args)).is_none(), "{args:?}");
        }
    }

    #[test]
    fn debug_of_the_command_line_hides_the_client_secret() {
        let cli = <Cli as Parser>::try_parse_from([
            "mcp-auth",
            "login",
            "https://mcp.example.com/mcp",
            "--client-id",
            "pre",
            "--issuer",
            "https://as.example.com",
            "--client-secret",
            "very-secret-value",
        ]);
        let shown = format!("{cli:?}");
        assert!(
            shown.contains("client_secret") && !shown.contains("very-secret-value"),
            "{shown}"
        );
    }

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
