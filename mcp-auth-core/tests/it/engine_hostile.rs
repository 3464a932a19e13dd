//! Hostile servers: every misbehaviour ends in a typed error (or a safe fallback), no request
//! reaches the wrong party, and nothing panics.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use mcp_auth_core::{AuthError, ClientConfig, HttpPolicy, McpAuth, SecretString};
use mcp_auth_testkit::{AuthServer, Endpoint, McpMisbehavior, McpServer, Misbehavior};

/// How the client is driven in a case.
#[derive(Clone, Copy)]
enum Drive {
    /// `access_token` from cold.
    Cold,
    /// A 401 from the server, then `handle_unauthorized` with its header.
    Challenge,
}

struct Case {
    drive: Drive,
    as_misbehavior: Box<dyn Fn(&AuthServer) -> Misbehavior>,
    mcp_misbehavior: Box<dyn Fn(&AuthServer) -> McpMisbehavior>,
}

fn case(as_m: impl Fn(&AuthServer) -> Misbehavior + 'static) -> Case {
    Case {
        drive: Drive::Cold,
        as_misbehavior: Box::new(as_m),
        mcp_misbehavior: Box::new(|_| McpMisbehavior::None),
    }
}

fn mcp_case(drive: Drive, mcp_m: impl Fn(&AuthServer) -> McpMisbehavior + 'static) -> Case {
    Case {
        drive,
        as_misbehavior: Box::new(|_| Misbehavior::None),
        mcp_misbehavior: Box::new(mcp_m),
    }
}

async fn run(case: Case) -> (Result<SecretString, AuthError>, AuthServer, McpServer) {
    let as1 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    as1.set_misbehavior((case.as_misbehavior)(&as1));
    mcp.set_misbehavior((case.mcp_misbehavior)(&as1));
    let auth = Arc::new(
        McpAuth::builder(memory())
            .client(ClientConfig::default().with_redirect_uri(REDIRECT))
            .http_policy(HttpPolicy::allowing_loopback().with_timeout(Duration::from_secs(1)))
            .authorizer(headless())
            .build()
            .unwrap(),
    );
    let r = resource(&mcp);
    let work = async {
        match case.drive {
            Drive::Cold => auth.access_token(&r).await,
            Drive::Challenge => {
                let (_, header) = call(&mcp, &SecretString::from("no-token-yet")).await;
                auth.handle_unauthorized(&r, header.as_deref()).await
            }
        }
    };
    let result = tokio::time::timeout(Duration::from_secs(20), work)
        .await
        .expect("the client hung");
    (result, as1, mcp)
}

fn no_code_exchange(as1: &AuthServer) {
    assert_eq!(
        as1.count(Endpoint::Token),
        0,
        "a code or token reached the token endpoint"
    );
}

fn nothing_reached(as1: &AuthServer) {
    assert!(
        as1.requests().is_empty(),
        "the authorization server was contacted: {:?}",
        as1.requests().iter().map(|r| &r.path).collect::<Vec<_>>()
    );
}

fn no_authorization(as1: &AuthServer) {
    for e in [Endpoint::Register, Endpoint::Authorize, Endpoint::Token] {
        assert_eq!(as1.count(e), 0, "{e:?} was called");
    }
}

macro_rules! hostile {
    ($name:ident, $case:expr, |$result:ident, $as1:ident| $check:block) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let ($result, $as1, _mcp) = run($case).await;
            $check
        }
    };
}

macro_rules! err_is {
    ($result:expr, $pat:pat) => {
        match &$result {
            Err(e @ $pat) => {
                // Errors render without panicking and without secrets.
                let text = format!("{e} {e:?}");
                assert!(!text.contains("SECRET"), "{text}");
            }
            other => panic!("expected {}, got {other:?}", stringify!($pat)),
        }
    };
}

// --- authorization server metadata -----------------------------------------------------------

hostile!(
    metadata_issuer_mismatch,
    case(|_| Misbehavior::WrongIssuerInMetadata),
    |r, as1| {
        err_is!(r, AuthError::IssuerMismatch { .. });
        no_authorization(&as1);
    }
);
hostile!(
    metadata_without_pkce_support,
    case(|_| Misbehavior::NoPkceSupport),
    |r, as1| {
        err_is!(r, AuthError::PkceNotSupported { .. });
        no_authorization(&as1);
    }
);
hostile!(
    javascript_authorization_endpoint,
    case(|_| Misbehavior::AuthorizationEndpoint("javascript:alert(1)".into())),
    |r, as1| {
        err_is!(r, AuthError::UnsafeUrl { .. });
        no_authorization(&as1);
    }
);
hostile!(
    data_authorization_endpoint,
    case(|_| Misbehavior::AuthorizationEndpoint("data:text/html,<script>x</script>".into())),
    |r, as1| {
        err_is!(r, AuthError::UnsafeUrl { .. });
        no_authorization(&as1);
    }
);
hostile!(
    file_token_endpoint,
    case(|_| Misbehavior::TokenEndpoint("file:///etc/passwd".into())),
    |r, as1| {
        err_is!(r, AuthError::UnsafeUrl { .. });
        no_authorization(&as1);
    }
);
hostile!(
    plain_http_public_token_endpoint,
    case(|_| Misbehavior::TokenEndpoint("http://example.com/token".into())),
    |r, as1| {
        err_is!(r, AuthError::UnsafeUrl { .. });
        no_authorization(&as1);
    }
);
hostile!(
    private_ip_token_endpoint,
    case(|_| Misbehavior::TokenEndpoint("https://10.0.0.1/token".into())),
    |r, as1| {
        err_is!(r, AuthError::UnsafeUrl { .. });
        no_authorization(&as1);
    }
);
hostile!(
    metadata_service_authorization_endpoint,
    case(|_| Misbehavior::AuthorizationEndpoint("http://169.254.169.254/authorize".into())),
    |r, as1| {
        err_is!(r, AuthError::UnsafeUrl { .. });
        no_authorization(&as1);
    }
);
hostile!(
    metadata_redirects_to_another_origin,
    case(|_| Misbehavior::RedirectMetadata("http://127.0.0.2:9/evil".into())),
    |r, as1| {
        err_is!(r, AuthError::UnsafeUrl { .. });
        no_authorization(&as1);
    }
);
hostile!(
    ten_megabyte_metadata,
    case(|_| Misbehavior::HugeMetadata(10 * 1024 * 1024)),
    |r, as1| {
        err_is!(r, AuthError::ResponseTooLarge { .. });
        no_authorization(&as1);
    }
);
hostile!(
    slow_metadata_body,
    case(|_| Misbehavior::SlowMetadata(Duration::from_secs(5))),
    |r, as1| {
        err_is!(r, AuthError::Timeout { .. });
        no_authorization(&as1);
    }
);
hostile!(
    malformed_metadata_json,
    case(|_| Misbehavior::RawMetadata("{\"issuer\": ".into())),
    |r, as1| {
        err_is!(r, AuthError::InvalidResponse { .. });
        no_authorization(&as1);
    }
);
hostile!(
    metadata_is_a_json_array,
    case(|_| Misbehavior::RawMetadata("[1, 2, 3]".into())),
    |r, as1| {
        err_is!(r, AuthError::InvalidResponse { .. });
        no_authorization(&as1);
    }
);
hostile!(
    metadata_without_token_endpoint,
    case(|a: &AuthServer| {
        Misbehavior::RawMetadata(
    serde_json::json!({"issuer": a.issuer(), "authorization_endpoint": format!("{}/authorize", a.issuer()), "code_challenge_methods_supported": ["S256"]}).to_string()
)
    }),
    |r, as1| {
        err_is!(r, AuthError::InvalidResponse { .. });
        no_authorization(&as1);
    }
);

// --- authorization response ------------------------------------------------------------------

hostile!(
    wrong_iss_in_authorization_response,
    case(|_| Misbehavior::WrongIss),
    |r, as1| {
        err_is!(r, AuthError::IssuerMismatch { .. });
        no_code_exchange(&as1);
    }
);
hostile!(
    missing_iss_when_advertised,
    case(|_| Misbehavior::MissingIss),
    |r, as1| {
        err_is!(r, AuthError::IssuerMismatch { .. });
        no_code_exchange(&as1);
    }
);
hostile!(
    iss_with_a_trailing_slash_is_not_normalised,
    case(|_| Misbehavior::IssTrailingSlash),
    |r, as1| {
        err_is!(r, AuthError::IssuerMismatch { .. });
        no_code_exchange(&as1);
    }
);
hostile!(wrong_state, case(|_| Misbehavior::WrongState), |r, as1| {
    err_is!(r, AuthError::StateMismatch);
    no_code_exchange(&as1);
});

// --- token endpoint --------------------------------------------------------------------------

hostile!(
    token_endpoint_server_error,
    case(|_| Misbehavior::TokenResponse(500, "<html>oops</html>".into())),
    |r, _as1| {
        err_is!(r, AuthError::OAuth { .. });
    }
);
hostile!(
    token_response_malformed_json,
    case(|_| Misbehavior::TokenResponse(200, "{\"access_token\": ".into())),
    |r, _as1| {
        err_is!(r, AuthError::InvalidResponse { .. });
    }
);
hostile!(
    token_response_without_access_token,
    case(|_| Misbehavior::TokenResponse(200, r#"{"token_type":"Bearer"}"#.into())),
    |r, _as1| {
        err_is!(r, AuthError::InvalidResponse { .. });
    }
);
hostile!(
    token_response_too_large,
    case(|_| Misbehavior::TokenResponse(
        200,
        format!("{{\"pad\":\"{}\"}}", "x".repeat(2 * 1024 * 1024))
    )),
    |r, _as1| {
        err_is!(r, AuthError::ResponseTooLarge { .. });
    }
);

// --- protected resource metadata -------------------------------------------------------------

hostile!(
    prm_for_another_resource,
    mcp_case(Drive::Cold, |_| McpMisbehavior::PrmResourceMismatch),
    |r, as1| {
        err_is!(r, AuthError::ResourceMismatch { .. });
        nothing_reached(&as1);
    }
);
hostile!(
    prm_points_at_cloud_metadata_service,
    mcp_case(Drive::Cold, |_| McpMisbehavior::PrmAuthorizationServer(
        "https://169.254.169.254/".into()
    )),
    |r, as1| {
        err_is!(r, AuthError::UnsafeUrl { .. });
        nothing_reached(&as1);
    }
);
hostile!(
    prm_points_at_plain_http_issuer,
    mcp_case(Drive::Cold, |_| McpMisbehavior::PrmAuthorizationServer(
        "http://169.254.169.254/".into()
    )),
    |r, as1| {
        err_is!(r, AuthError::Discovery { .. });
        nothing_reached(&as1);
    }
);
hostile!(
    prm_points_at_private_network,
    mcp_case(Drive::Cold, |_| McpMisbehavior::PrmAuthorizationServer(
        "https://10.1.2.3".into()
    )),
    |r, as1| {
        err_is!(r, AuthError::UnsafeUrl { .. });
        nothing_reached(&as1);
    }
);
hostile!(
    prm_points_at_ipv6_link_local,
    mcp_case(Drive::Cold, |_| McpMisbehavior::PrmAuthorizationServer(
        "https://[fe80::1]".into()
    )),
    |r, as1| {
        err_is!(r, AuthError::UnsafeUrl { .. });
        nothing_reached(&as1);
    }
);
hostile!(
    prm_points_at_ipv4_mapped_metadata_service,
    mcp_case(Drive::Cold, |_| McpMisbehavior::PrmAuthorizationServer(
        "https://[::ffff:169.254.169.254]".into()
    )),
    |r, as1| {
        err_is!(r, AuthError::UnsafeUrl { .. });
        nothing_reached(&as1);
    }
);
hostile!(
    prm_authorization_server_not_a_url,
    mcp_case(Drive::Cold, |_| McpMisbehavior::PrmAuthorizationServer(
        "not a url".into()
    )),
    |r, as1| {
        err_is!(r, AuthError::Discovery { .. });
        nothing_reached(&as1);
    }
);
hostile!(
    prm_authorization_server_javascript,
    mcp_case(Drive::Cold, |_| McpMisbehavior::PrmAuthorizationServer(
        "javascript:alert(1)".into()
    )),
    |r, as1| {
        err_is!(r, AuthError::Discovery { .. });
        nothing_reached(&as1);
    }
);
hostile!(
    prm_authorization_server_with_query,
    mcp_case(Drive::Cold, |a: &AuthServer| {
        McpMisbehavior::PrmAuthorizationServer(format!("{}?tenant=x", a.issuer()))
    }),
    |r, as1| {
        err_is!(r, AuthError::Discovery { .. });
        nothing_reached(&as1);
    }
);
hostile!(
    ten_megabyte_prm,
    mcp_case(Drive::Cold, |_| McpMisbehavior::HugePrm(10 * 1024 * 1024)),
    |r, as1| {
        err_is!(r, AuthError::ResponseTooLarge { .. });
        nothing_reached(&as1);
    }
);
hostile!(
    malformed_prm_json,
    mcp_case(Drive::Cold, |_| McpMisbehavior::RawPrm("{{{".into())),
    |r, as1| {
        err_is!(r, AuthError::InvalidResponse { .. });
        nothing_reached(&as1);
    }
);
hostile!(
    prm_without_authorization_servers,
    mcp_case(Drive::Cold, |_| McpMisbehavior::RawPrm(
        "{\"resource\": \"http://127.0.0.1/\"}".into()
    )),
    |r, as1| {
        assert!(r.is_err());
        nothing_reached(&as1);
    }
);

// --- WWW-Authenticate ------------------------------------------------------------------------

hostile!(
    challenge_points_at_cloud_metadata_service,
    mcp_case(Drive::Challenge, |_| McpMisbehavior::RawWwwAuthenticate(
        r#"Bearer resource_metadata="http://169.254.169.254/latest/meta-data""#.into()
    )),
    |r, as1| {
        err_is!(r, AuthError::UnsafeUrl { .. });
        nothing_reached(&as1);
    }
);
hostile!(
    challenge_points_at_javascript,
    mcp_case(Drive::Challenge, |_| McpMisbehavior::RawWwwAuthenticate(
        r#"Bearer resource_metadata="javascript:alert(1)""#.into()
    )),
    |r, as1| {
        err_is!(r, AuthError::UnsafeUrl { .. });
        nothing_reached(&as1);
    }
);
hostile!(
    malformed_challenge_falls_back_to_well_known,
    mcp_case(Drive::Challenge, |_| McpMisbehavior::RawWwwAuthenticate(
        "Bearer resource_metadata=\"unterminated, scope=".into()
    )),
    |r, _as1| {
        // The unterminated value is not a usable URL: well-known discovery takes over... or the
        // garbage URL is refused. Either way a typed outcome, no panic.
        if let Err(e) = &r {
            assert!(
                matches!(
                    e,
                    AuthError::UnsafeUrl { .. }
                        | AuthError::InvalidResponse { .. }
                        | AuthError::Discovery { .. }
                        | AuthError::Http { .. }
                ),
                "{e:?}"
            );
        }
    }
);
hostile!(
    garbage_challenge_falls_back_to_well_known,
    mcp_case(Drive::Challenge, |_| McpMisbehavior::RawWwwAuthenticate(
        "\u{1}=\"\"\"==,,,Bearer".into()
    )),
    |r, _as1| {
        assert!(r.is_ok(), "{r:?}");
    }
);
hostile!(
    non_bearer_challenge_falls_back_to_well_known,
    mcp_case(Drive::Challenge, |_| McpMisbehavior::RawWwwAuthenticate(
        r#"Basic realm="x", resource_metadata="http://169.254.169.254/""#.into()
    )),
    |r, _as1| {
        assert!(r.is_ok(), "{r:?}");
    }
);

// --- token responses (RFC 6749 §5.1, §7.1; RFC 6750 §2.1) --------------------------------------

fn token_body(access: &str, token_type: &str, extra: &str) -> Misbehavior {
    Misbehavior::TokenResponse(
        200,
        format!(
            r#"{{"access_token":{},"token_type":{}{extra}}}"#,
            serde_json::Value::from(access),
            serde_json::Value::from(token_type)
        ),
    )
}

hostile!(
    access_token_with_crlf_is_refused,
    case(|_| token_body("abc\r\nX-Injected: 1", "Bearer", "")),
    |r, _as1| {
        err_is!(r, AuthError::InvalidResponse { .. });
    }
);
hostile!(
    access_token_with_a_space_is_refused,
    case(|_| token_body("abc def", "Bearer", "")),
    |r, _as1| {
        err_is!(r, AuthError::InvalidResponse { .. });
    }
);
hostile!(
    access_token_with_a_control_character_is_refused,
    case(|_| token_body("abc\u{7}def", "Bearer", "")),
    |r, _as1| {
        err_is!(r, AuthError::InvalidResponse { .. });
    }
);
hostile!(
    access_token_longer_than_16_kib_is_refused,
    case(|_| token_body(&"a".repeat(20_000), "Bearer", "")),
    |r, _as1| {
        err_is!(r, AuthError::InvalidResponse { .. });
    }
);
hostile!(
    refresh_token_with_a_newline_is_refused,
    case(|_| token_body("abc", "Bearer", r#","refresh_token":"r1\nX: y""#)),
    |r, _as1| {
        err_is!(r, AuthError::InvalidResponse { .. });
    }
);
hostile!(
    dpop_token_type_is_not_used_as_bearer,
    case(|_| token_body("abc", "DPoP", "")),
    |r, _as1| {
        err_is!(r, AuthError::UnsupportedTokenType { .. });
    }
);
hostile!(
    mac_token_type_is_not_used_as_bearer,
    case(|_| token_body("abc", "mac", "")),
    |r, _as1| {
        err_is!(r, AuthError::UnsupportedTokenType { .. });
    }
);
hostile!(
    missing_token_type_is_refused,
    case(|_| Misbehavior::TokenResponse(200, r#"{"access_token":"abc"}"#.into())),
    |r, _as1| {
        err_is!(r, AuthError::InvalidResponse { .. });
    }
);

/// Control characters in AS-supplied text never reach a message.
fn assert_printable(r: &Result<SecretString, AuthError>) {
    let e = r.as_ref().expect_err("expected an error");
    let text = e.to_string();
    assert!(
        !text.chars().any(|c| c.is_control()),
        "control characters in {text:?}"
    );
}

hostile!(
    error_description_with_escape_sequences_is_neutralised,
    case(|_| {
        Misbehavior::TokenResponse(
        400,
        r#"{"error":"invalid_request","error_description":"\u001b[2J\u001b[1;1HOpen this URL: https://evil.example/\u0007"}"#.into()
    )
    }),
    |r, _as1| {
        err_is!(r, AuthError::OAuth { .. });
        assert_printable(&r);
    }
);
hostile!(
    error_code_with_escape_sequences_is_neutralised,
    case(|_| Misbehavior::TokenResponse(
        400,
        r#"{"error":"invalid\u001b]8;;https://evil.example\u0007grant\r\nforged line"}"#.into()
    )),
    |r, _as1| {
        err_is!(r, AuthError::OAuth { .. });
        assert_printable(&r);
    }
);

// --- expires_in (RFC 6749 §5.1): a bad value never means "never expires" ------------------------

async fn expiry_after(extra: &str) -> Option<i64> {
    let as1 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    as1.set_misbehavior(token_body("abc", "Bearer", extra));
    let store = memory();
    let auth = engine(store.clone());
    auth.access_token(&resource(&mcp)).await.unwrap();
    let key = mcp_auth_core::TokenKey::new(
        mcp_auth_core::IssuerId::new(as1.issuer()).unwrap(),
        resource(&mcp),
    );
    let t = store.get_tokens(&key).await.unwrap().unwrap().value;
    t.expires_at
        .map(|at| at.unix_seconds() - mcp_auth_core::Timestamp::now().unix_seconds())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_expires_in_gets_a_short_lifetime() {
    let short = mcp_auth_core::engine::INVALID_EXPIRES_IN_LIFETIME.as_secs() as i64;
    for bad in [
        r#","expires_in":-60"#,
        r#","expires_in":"soon""#,
        r#","expires_in":1e300"#,
        r#","expires_in":true"#,
    ] {
        let left = expiry_after(bad).await.expect(bad);
        assert!((short - 2..=short).contains(&left), "{bad}: {left}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numeric_expires_in_forms_are_honoured() {
    for (form, want) in [
        (r#","expires_in":120"#, 120),
        (r#","expires_in":120.7"#, 120),
        (r#","expires_in":"120""#, 120),
    ] {
        let left = expiry_after(form).await.expect(form);
        assert!((want - 2..=want).contains(&left), "{form}: {left}");
    }
    assert_eq!(expiry_after("").await, None, "absent expires_in");
}

// --- protected resource metadata that fails ----------------------------------------------------

/// A PRM answering 5xx (or 403) is an error, not "no PRM": the origin is never taken as the AS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prm_server_error_does_not_fall_back_to_the_origin() {
    for status in [500, 503, 403] {
        let as1 = auth_server(|_| {}).await;
        let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
        mcp.set_misbehavior(McpMisbehavior::PrmStatus(status));
        let auth = engine(memory());
        let err = auth.access_token(&resource(&mcp)).await.unwrap_err();
        assert!(
            matches!(err, AuthError::Discovery { .. }),
            "{status}: {err:?}"
        );
        assert!(err.to_string().contains(&status.to_string()), "{err}");
        assert!(
            mcp.requests()
                .iter()
                .all(|r| !r.path.contains("oauth-authorization-server")
                    && !r.path.contains("authorize")
                    && !r.path.contains("register")),
            "{status}: the MCP server's origin was treated as the AS"
        );
        nothing_reached(&as1);
    }
}

/// A move to an AS whose metadata does not validate costs nothing: the old AS's tokens stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_move_keeps_the_old_servers_tokens() {
    let as1 = auth_server(|_| {}).await;
    let as2 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let store = memory();
    let auth = engine(store.clone());
    auth.access_token(&resource(&mcp)).await.unwrap();
    let old = mcp_auth_core::TokenKey::new(
        mcp_auth_core::IssuerId::new(as1.issuer()).unwrap(),
        resource(&mcp),
    );
    as2.set_misbehavior(Misbehavior::WrongIssuerInMetadata);
    mcp.set_authorization_servers(vec![as2.clone()]);
    let (_, header) = call(&mcp, &SecretString::from("rejected")).await;
    let err = auth
        .handle_unauthorized(&resource(&mcp), header.as_deref())
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::IssuerMismatch { .. }), "{err:?}");
    assert!(
        store.get_tokens(&old).await.unwrap().is_some(),
        "the old server's tokens were dropped before the new server validated"
    );
}

// --- the authorization response belongs to its own flow --------------------------------------

/// Runs the real (headless) authorization and lets `tamper` rewrite the callback URL.
#[derive(Debug)]
struct Tampering {
    inner: mcp_auth_core::HeadlessAuthorizer,
    tamper: fn(url::Url, &str) -> url::Url,
}

#[async_trait::async_trait]
impl mcp_auth_core::Authorizer for Tampering {
    async fn authorize(
        &self,
        request: mcp_auth_core::AuthorizationRequest,
    ) -> Result<url::Url, AuthError> {
        let state = request.state.clone();
        let real = self.inner.authorize(request).await?;
        Ok((self.tamper)(real, &state))
    }
}

async fn tampered(
    tamper: fn(url::Url, &str) -> url::Url,
    configure: impl FnOnce(&mut mcp_auth_testkit::AuthServerConfig),
) -> (
    Result<SecretString, AuthError>,
    AuthServer,
    Arc<dyn mcp_auth_core::CredentialStore>,
) {
    let as1 = auth_server(configure).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let store = memory();
    let auth = McpAuth::builder(store.clone())
        .client(ClientConfig::default().with_redirect_uri(REDIRECT))
        .http_policy(HttpPolicy::allowing_loopback())
        .authorizer(Arc::new(Tampering {
            inner: mcp_auth_core::HeadlessAuthorizer::with_policy(HttpPolicy::allowing_loopback())
                .unwrap(),
            tamper,
        }))
        .build()
        .unwrap();
    (auth.access_token(&resource(&mcp)).await, as1, store)
}

fn with_query(mut url: url::Url, pairs: &[(&str, &str)]) -> url::Url {
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| !pairs.iter().any(|(p, _)| p == k))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.set_query(None);
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in &kept {
            q.append_pair(k, v);
        }
        for (k, v) in pairs {
            q.append_pair(k, v);
        }
    }
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_with_another_flows_state_is_refused() {
    let (r, as1, _) = tampered(
        |u, _| with_query(u, &[("state", "someone-elses-state")]),
        |_| {},
    )
    .await;
    err_is!(r, AuthError::StateMismatch);
    no_code_exchange(&as1);
}

/// An attacker's code arriving with the state of a stale flow at another AS (the pending record
/// still in the store) is never redeemed, and the other flow's record is left alone: a callback
/// answers only the flow that is waiting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pending_flow_from_another_server_cannot_complete_this_login() {
    const STALE: &str = "stale-state-from-an-earlier-login-0123456789";
    let as1 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let store = memory();
    let stale = mcp_auth_core::PendingAuthorization::new(
        STALE,
        SecretString::from("v".repeat(43)),
        mcp_auth_core::IssuerId::new("https://evil-issuer.example").unwrap(),
        resource(&mcp),
        "attacker-client".to_owned(),
        // The path this login's callback uses, so only the state and issuer checks can stop it.
        format!(
            "{REDIRECT}/{}",
            mcp_auth_core::IssuerId::new(as1.issuer())
                .unwrap()
                .storage_key()
        ),
        Duration::from_secs(600),
    );
    store.insert_pending(&stale).await.unwrap();
    let auth = McpAuth::builder(store.clone())
        .client(ClientConfig::default().with_redirect_uri(REDIRECT))
        .http_policy(HttpPolicy::allowing_loopback())
        .authorizer(Arc::new(Tampering {
            inner: mcp_auth_core::HeadlessAuthorizer::with_policy(HttpPolicy::allowing_loopback())
                .unwrap(),
            tamper: |u, _| {
                with_query(
                    u,
                    &[
                        ("state", STALE),
                        ("iss", "https://evil-issuer.example"),
                        ("code", "attackers-code"),
                    ],
                )
            },
        }))
        .build()
        .unwrap();
    let r = auth.access_token(&resource(&mcp)).await;
    err_is!(r, AuthError::StateMismatch);
    no_code_exchange(&as1);
    assert!(
        store.take_pending(STALE).await.unwrap().is_some(),
        "the other flow's record was consumed"
    );
}

/// Replaces the pending record of the running flow with one naming another authorization
/// server and client (as a corrupted or tampered store would), then answers the flow.
#[derive(Debug)]
struct SwapPending {
    inner: mcp_auth_core::HeadlessAuthorizer,
    store: Arc<dyn mcp_auth_core::CredentialStore>,
}

#[async_trait::async_trait]
impl mcp_auth_core::Authorizer for SwapPending {
    async fn authorize(
        &self,
        request: mcp_auth_core::AuthorizationRequest,
    ) -> Result<url::Url, AuthError> {
        let state = request.state.clone();
        let callback = self.inner.authorize(request).await?;
        let mine = self.store.take_pending(&state).await.unwrap().unwrap();
        let swapped = mcp_auth_core::PendingAuthorization::new(
            state,
            mine.pkce_verifier.clone(),
            mcp_auth_core::IssuerId::new("https://evil-issuer.example").unwrap(),
            mine.resource.clone(),
            "attacker-client".to_owned(),
            mine.redirect_uri.clone(),
            Duration::from_secs(600),
        );
        self.store.insert_pending(&swapped).await.unwrap();
        Ok(callback)
    }
}

/// The pending record must name the authorization server and client in use now, or the code is
/// not redeemed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_record_of_another_server_or_client_is_refused() {
    // Without `iss` in the response, only the record's issuer and client stand in the way.
    let as1 = auth_server(|c| c.iss_parameter_supported = false).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let store = memory();
    let auth = McpAuth::builder(store.clone())
        .client(ClientConfig::default().with_redirect_uri(REDIRECT))
        .http_policy(HttpPolicy::allowing_loopback())
        .authorizer(Arc::new(SwapPending {
            inner: mcp_auth_core::HeadlessAuthorizer::with_policy(HttpPolicy::allowing_loopback())
                .unwrap(),
            store: store.clone(),
        }))
        .build()
        .unwrap();
    let r = auth.access_token(&resource(&mcp)).await;
    err_is!(r, AuthError::StateMismatch);
    no_code_exchange(&as1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_with_a_repeated_state_is_refused() {
    let (r, as1, _) = tampered(
        |mut u, state| {
            u.query_pairs_mut().append_pair("state", state);
            u
        },
        |_| {},
    )
    .await;
    err_is!(r, AuthError::InvalidResponse { .. });
    no_code_exchange(&as1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_with_a_repeated_iss_is_refused() {
    let (r, as1, _) = tampered(
        |mut u, _| {
            u.query_pairs_mut()
                .append_pair("iss", "https://evil-issuer.example");
            u
        },
        |_| {},
    )
    .await;
    err_is!(r, AuthError::InvalidResponse { .. });
    no_code_exchange(&as1);
}

/// RFC 9700 §4.4.2: without `iss`, the redirect path names the AS; a response arriving on
/// another path (another AS's, or the shared one) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_on_another_servers_redirect_path_is_refused() {
    let (r, as1, _) = tampered(
        |mut u, _| {
            u.set_path("/callback");
            u
        },
        |c| c.iss_parameter_supported = false,
    )
    .await;
    err_is!(r, AuthError::StateMismatch);
    no_code_exchange(&as1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_registration_gets_a_redirect_path_per_server() {
    let as1 = auth_server(|c| c.iss_parameter_supported = false).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    engine(memory())
        .access_token(&resource(&mcp))
        .await
        .unwrap();
    let key = mcp_auth_core::IssuerId::new(as1.issuer())
        .unwrap()
        .storage_key()
        .to_owned();
    let registered = &as1.registrations()[0].redirect_uris;
    assert!(
        registered
            .iter()
            .all(|u| u.ends_with(&format!("/callback/{key}"))),
        "{registered:?}"
    );
    let authorize = as1
        .requests()
        .into_iter()
        .find(|r| r.endpoint == Endpoint::Authorize)
        .unwrap();
    assert!(
        authorize.query["redirect_uri"].ends_with(&format!("/callback/{key}")),
        "{:?}",
        authorize.query
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_authorization_text_is_neutralised() {
    let (r, _as1, _) = tampered(
        |u, state| {
            let mut u = u;
            u.set_query(None);
            with_query(
                u,
                &[
                    ("state", state),
                    ("error", "access_denied\u{1b}[31m"),
                    (
                        "error_description",
                        "\u{1b}[2JOpen https://evil.example\r\nnow",
                    ),
                ],
            )
        },
        |c| c.iss_parameter_supported = false,
    )
    .await;
    err_is!(r, AuthError::AuthorizationDenied { .. });
    assert_printable(&r);
}

#[derive(Debug)]
struct Failing;

#[async_trait::async_trait]
impl mcp_auth_core::Authorizer for Failing {
    async fn authorize(
        &self,
        request: mcp_auth_core::AuthorizationRequest,
    ) -> Result<url::Url, AuthError> {
        *LAST_STATE.lock().unwrap() = Some(request.state.clone());
        Err(AuthError::Authorizer("the user closed the browser".into()))
    }
}

static LAST_STATE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// A login that fails or times out deletes its pending record: nothing redeemable is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_login_leaves_no_pending_authorization() {
    let as1 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let store = memory();
    let auth = McpAuth::builder(store.clone())
        .client(ClientConfig::default().with_redirect_uri(REDIRECT))
        .http_policy(HttpPolicy::allowing_loopback())
        .authorizer(Arc::new(Failing))
        .build()
        .unwrap();
    let err = auth.access_token(&resource(&mcp)).await.unwrap_err();
    assert!(matches!(err, AuthError::Authorizer(_)), "{err:?}");
    let state = LAST_STATE.lock().unwrap().clone().unwrap();
    assert!(
        store.take_pending(&state).await.unwrap().is_none(),
        "the abandoned flow is still redeemable"
    );
}

/// A client secret without a declared issuer would go to whatever AS a server names.
#[test]
fn secrets_without_a_declared_issuer_are_refused() {
    let pre = ClientConfig::default().with_pre_registered(mcp_auth_core::PreRegisteredClient {
        client_id: "c".into(),
        client_secret: Some(SecretString::from("s")),
        token_endpoint_auth_method: "client_secret_basic".into(),
        issuer: None,
    });
    let err = McpAuth::builder(memory()).client(pre).build().unwrap_err();
    assert!(matches!(err, AuthError::Config(_)), "{err:?}");
    let cc = ClientConfig::default().with_client_credentials(mcp_auth_core::ClientCredentials {
        client_id: "c".into(),
        auth: mcp_auth_core::ClientCredentialsAuth::Secret(SecretString::from("s")),
        issuer: None,
    });
    let err = McpAuth::builder(memory()).client(cc).build().unwrap_err();
    assert!(matches!(err, AuthError::Config(_)), "{err:?}");
}
