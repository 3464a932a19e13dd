//! The README example, run as a test (nextest does not run doctests). Keep in sync with
//! README.md; `readme_in_sync` checks that.
// BEGIN README EXAMPLE
use mcp_auth_testkit::{AuthServer, AuthServerConfig, McpServer, McpServerConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let auth = AuthServer::start(AuthServerConfig::default()).await?;
        let mcp = McpServer::start(McpServerConfig {
            authorization_servers: vec![auth.clone()],
            ..McpServerConfig::default()
        })
        .await?;

        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;

        // No token: 401 with a challenge pointing at the protected resource metadata.
        let resp = http
            .post(mcp.url())
            .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
            .send()
            .await?;
        assert_eq!(resp.status(), 401);
        let challenge = resp.headers()["www-authenticate"].to_str()?.to_string();
        assert_eq!(
            challenge,
            format!("Bearer resource_metadata=\"{}\"", mcp.prm_url())
        );

        // The PRM names the resource and its authorization server.
        let prm: serde_json::Value = http.get(mcp.prm_url()).send().await?.json().await?;
        assert_eq!(prm["resource"], mcp.url());
        assert_eq!(prm["authorization_servers"][0], auth.issuer());
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
// END README EXAMPLE

#[test]
fn readme_example() {
    main().unwrap();
}

#[test]
fn readme_in_sync() {
    let this = include_str!("readme_example.rs");
    let example = this
        .split("// BEGIN README EXAMPLE\n")
        .nth(1)
        .and_then(|s| s.split("// END README EXAMPLE").next())
        .unwrap();
    let readme = include_str!("../../README.md");
    assert!(
        readme.contains(example),
        "README.md example differs from tests/it/readme_example.rs"
    );
}
