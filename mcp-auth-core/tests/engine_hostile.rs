//! Hostile servers: every misbehaviour ends in a typed error (or a safe fallback), no request
//! reaches the wrong party, and nothing panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
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
