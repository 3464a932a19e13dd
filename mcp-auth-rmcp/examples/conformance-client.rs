//! The client the official MCP conformance suite drives (`cargo xtask conformance`).
//!
//! Invoked as `conformance-client <server-url>` with `MCP_CONFORMANCE_SCENARIO`,
//! `MCP_CONFORMANCE_PROTOCOL_VERSION` and, for some scenarios, `MCP_CONFORMANCE_CONTEXT` (JSON).
//! Every authorization decision is mcp-auth's: this program only turns the context into engine
//! configuration and makes the MCP calls the scenario expects.
#![allow(clippy::print_stderr)]

use std::sync::Arc;

use mcp_auth_core::{
    ClientConfig, ClientCredentials, ClientCredentialsAuth, DpopMode, HeadlessAuthorizer,
    HttpPolicy, IssuerId, McpAuth, MemoryStore, PreRegisteredClient, ResourceUri, SecretString,
};
use rmcp::ServiceExt;
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig as McpClientConfig, Implementation,
    ProtocolVersion,
};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt};
use serde_json::{Map, Value};

/// The Client ID Metadata Document URL the conformance authorization servers expect.
const CIMD_URL: &str = "https://conformance-test.local/client-metadata.json";

fn context() -> Map<String, Value> {
    std::env::var("MCP_CONFORMANCE_CONTEXT")
        .ok()
        .and_then(|raw| serde_json::from_str::<Value>(&raw).ok())
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default()
}

fn text(ctx: &Map<String, Value>, key: &str) -> Option<String> {
    ctx.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// Engine configuration from the scenario's context.
fn client_config(
    scenario: &str,
    ctx: &Map<String, Value>,
) -> Result<ClientConfig, Box<dyn std::error::Error>> {
    let mut config = ClientConfig::default()
        .with_client_name("mcp-auth conformance client")
        .with_redirect_uri("http://localhost:3000/callback")
        .with_client_metadata_url(CIMD_URL)
        // DPoP-bound tokens wherever the authorization server offers them (SEP-1932).
        .with_dpop(DpopMode::IfSupported);
    let issuer = text(ctx, "issuer").map(IssuerId::new).transpose()?;
    if issuer.is_none() {
        // The harness is the MCP server and the AS at once, and says which credentials to use:
        // a secret without a declared issuer is acceptable here, never in a real client.
        config = config.allowing_undeclared_secret_issuer();
    }
    match scenario {
        "auth/client-credentials-basic" => {
            config = config.with_client_credentials(ClientCredentials {
                client_id: text(ctx, "client_id").unwrap_or_default(),
                auth: ClientCredentialsAuth::Secret(SecretString::from(
                    text(ctx, "client_secret").unwrap_or_default(),
                )),
                issuer,
            });
        }
        "auth/client-credentials-jwt" => {
            config = config.with_client_credentials(ClientCredentials {
                client_id: text(ctx, "client_id").unwrap_or_default(),
                auth: ClientCredentialsAuth::PrivateKeyJwt {
                    private_key_pem: SecretString::from(
                        text(ctx, "private_key_pem").unwrap_or_default(),
                    ),
                    algorithm: text(ctx, "signing_algorithm").unwrap_or_else(|| "ES256".to_owned()),
                    key_id: None,
                },
                issuer,
            });
        }
        // SEP-990: the ID token is exchanged at the IdP for an ID-JAG, which is presented to
        // the AS (learnt from the PRM) with this client's client_secret_basic credentials.
        "auth/enterprise-managed-authorization" => {
            let mut grant = mcp_auth_core::IdentityAssertionGrant::new(
                &text(ctx, "idp_token_endpoint").ok_or("the context has no idp_token_endpoint")?,
                SecretString::from(text(ctx, "idp_id_token").unwrap_or_default()),
                text(ctx, "client_id").unwrap_or_default(),
                SecretString::from(text(ctx, "client_secret").unwrap_or_default()),
            )?;
            if let Some(idp_client_id) = text(ctx, "idp_client_id") {
                grant = grant.with_idp_client(idp_client_id, None);
            }
            if let Some(idp_issuer) = text(ctx, "idp_issuer") {
                grant = grant.with_idp_issuer(idp_issuer);
            }
            if let Some(issuer) = issuer {
                grant = grant.with_issuer(issuer);
            }
            config = config.with_identity_assertion(grant);
        }
        // Workload identity federation: the harness's workload JWT as an RFC 7523 grant.
        "auth/wif-jwt-bearer" => {
            let mut grant = mcp_auth_core::JwtBearerGrant::new(SecretString::from(
                text(ctx, "valid_jwt").unwrap_or_default(),
            ));
            if let Some(client_id) = text(ctx, "client_id") {
                grant = grant.with_client_id(client_id);
            }
            if let Some(issuer) = issuer {
                grant = grant.with_issuer(issuer);
            }
            config = config.with_jwt_bearer(grant);
        }
        _ => {
            if let (Some(client_id), Some(secret)) =
                (text(ctx, "client_id"), text(ctx, "client_secret"))
            {
                config = config.with_pre_registered(PreRegisteredClient {
                    client_id,
                    client_secret: Some(SecretString::from(secret)),
                    token_endpoint_auth_method: "client_secret_basic".to_owned(),
                    issuer,
                });
            }
        }
    }
    Ok(config)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .init();
    let url = std::env::args()
        .next_back()
        .ok_or("usage: conformance-client <server-url>")?;
    let scenario = std::env::var("MCP_CONFORMANCE_SCENARIO").unwrap_or_default();
    let version = std::env::var("MCP_CONFORMANCE_PROTOCOL_VERSION")
        .unwrap_or_else(|_| "2025-11-25".to_owned());
    let ctx = context();
    eprintln!("scenario={scenario} version={version} url={url}");

    let auth = Arc::new(
        McpAuth::builder(Arc::new(MemoryStore::new()))
            .client(client_config(&scenario, &ctx)?)
            // The conformance servers run on http://localhost.
            .http_policy(HttpPolicy::allowing_loopback())
            // and approve at once: the authorization URL is followed without a browser.
            .authorizer(Arc::new(HeadlessAuthorizer::with_policy(
                HttpPolicy::allowing_loopback(),
            )?))
            .build()?,
    );
    let transport = mcp_auth_rmcp::transport(auth, ResourceUri::new(&url)?);
    let info = McpClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("mcp-auth-conformance-client", env!("CARGO_PKG_VERSION")),
    );
    let client = if version == "2026-07-28" {
        info.serve_with_lifecycle(
            transport,
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await?
    } else {
        info.with_protocol_version(ProtocolVersion::V_2025_11_25)
            .serve(transport)
            .await?
    };

    let call = |name: String, args: Value| {
        let client = &client;
        async move {
            let params = CallToolRequestParams::new(name.clone())
                .with_arguments(args.as_object().cloned().unwrap_or_default());
            let result = client.call_tool(params).await;
            eprintln!(
                "tools/call {name}: {}",
                if result.is_ok() { "ok" } else { "error" }
            );
            result.map(|_| ())
        }
    };

    let tools = client.list_tools(None).await?;
    eprintln!(
        "tools/list: {:?}",
        tools
            .tools
            .iter()
            .map(|t| t.name.to_string())
            .collect::<Vec<_>>()
    );
    let outcome: Result<(), Box<dyn std::error::Error>> = match scenario.as_str() {
        "http-custom-headers" => {
            for call_spec in ctx
                .get("toolCalls")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
            {
                let name = call_spec
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                call(
                    name,
                    call_spec.get("arguments").cloned().unwrap_or(Value::Null),
                )
                .await?;
            }
            Ok(())
        }
        "http-invalid-tool-headers" => call(
            "valid_tool".into(),
            serde_json::json!({"region": "us-west1"}),
        )
        .await
        .map_err(Into::into),
        "sep-2322-client-request-state" => {
            for name in [
                "test_mrtr_echo_state",
                "test_mrtr_unrelated",
                "test_mrtr_no_state",
                "test_mrtr_no_result_type",
            ] {
                let _ = call(name.into(), serde_json::json!({})).await;
            }
            Ok(())
        }
        "json-schema-2020-12-preservation" => {
            match tools
                .tools
                .iter()
                .find(|t| t.name == "json_schema_2020_12_tool")
            {
                Some(focal) => {
                    let schema = Value::Object((*focal.input_schema).clone());
                    call(
                        "json_schema_echo".into(),
                        serde_json::json!({ "schema": schema }),
                    )
                    .await
                    .map_err(Into::into)
                }
                None => Err("json_schema_2020_12_tool missing".into()),
            }
        }
        // Listing is the whole scenario: never call (or dereference) anything else.
        "json-schema-ref-no-deref" => Ok(()),
        _ => {
            if tools.tools.iter().any(|t| t.name == "add_numbers") {
                call("add_numbers".into(), serde_json::json!({"a": 2, "b": 3}))
                    .await
                    .map_err(Into::into)
            } else if let Some(tool) = tools.tools.first() {
                call(tool.name.to_string(), serde_json::json!({}))
                    .await
                    .map_err(Into::into)
            } else {
                Ok(())
            }
        }
    };
    let _ = client.cancel().await;
    outcome
}
