//! Registration, authorization code flow, token endpoint, refresh and revocation.
use crate::common;

use crate::common::{
    Auth, REDIRECT, authorize, authorize_raw, exchange, http, pkce, public_tokens, query_of,
    refresh, token_request,
};
use mcp_auth_testkit::{AuthServer, AuthServerConfig, Endpoint, Misbehavior};
use serde_json::{Value, json};

const RES: &str = "http://127.0.0.1:1/mcp";

async fn register(auth: &AuthServer, body: Value) -> (u16, Value) {
    let resp = http()
        .post(format!("{}/register", auth.issuer()))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn dcr_happy_path_and_basic_flow() {
    let auth = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    let (status, reg) = register(
        &auth,
        json!({"redirect_uris": [REDIRECT], "client_name": "Test", "application_type": "native",
               "grant_types": ["authorization_code", "refresh_token"], "token_endpoint_auth_method": "none"}),
    )
    .await;
    assert_eq!(status, 201, "{reg}");
    let id = reg["client_id"].as_str().unwrap().to_string();
    let secret = reg["client_secret"].as_str().unwrap().to_string();
    assert_eq!(reg["client_secret_expires_at"], 0);
    assert!(reg["client_id_issued_at"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(reg["token_endpoint_auth_method"], "client_secret_basic");
    assert_eq!(reg["redirect_uris"], json!([REDIRECT]));
    assert_eq!(
        reg["grant_types"],
        json!(["authorization_code", "refresh_token"])
    );
    assert_eq!(reg["response_types"], json!(["code"]));
    assert_eq!(reg["client_name"], "Test");
    assert_eq!(reg["application_type"], "native");
    let regs = auth.registrations();
    assert_eq!(regs.len(), 1);
    assert!(regs[0].via_dcr);
    assert_eq!(regs[0].client_secret.as_deref(), Some(secret.as_str()));
    let logged = &auth.requests()[0];
    assert_eq!(logged.endpoint, Endpoint::Register);
    assert_eq!(logged.status, 201);
    assert_eq!(logged.json.as_ref().unwrap()["client_name"], "Test");

    let (q, verifier) = authorize(&auth, &id, Some(RES), Some("a b")).await;
    assert_eq!(q["state"], "st4te");
    assert_eq!(q["iss"], auth.issuer());

    // client_secret_post is not the registered method.
    let (status, body) = exchange(
        &auth,
        Auth::Post(&id, &secret),
        &q["code"],
        &verifier,
        Some(RES),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    // Wrong secret.
    let (status, _) = exchange(
        &auth,
        Auth::Basic(&id, "nope"),
        &q["code"],
        &verifier,
        Some(RES),
    )
    .await;
    assert_eq!(status, 401);

    let (status, tok) = exchange(
        &auth,
        Auth::Basic(&id, &secret),
        &q["code"],
        &verifier,
        Some(RES),
    )
    .await;
    assert_eq!(status, 200, "{tok}");
    assert_eq!(tok["token_type"], "Bearer");
    assert_eq!(tok["expires_in"], 3600);
    assert_eq!(tok["scope"], "a b");
    let at = tok["access_token"].as_str().unwrap();
    let info = auth.introspect(at).unwrap();
    assert_eq!(info.issuer, auth.issuer());
    assert_eq!(info.client_id, id);
    assert_eq!(info.resource.as_deref(), Some(RES));
    assert_eq!(info.scopes, vec!["a", "b"]);
    assert!(!info.expired && !info.revoked);
    assert_eq!(auth.issued_tokens().len(), 2);

    let token_reqs: Vec<_> = auth
        .requests()
        .into_iter()
        .filter(|r| r.endpoint == Endpoint::Token)
        .collect();
    assert_eq!(token_reqs.len(), 3);
    assert!(
        token_reqs
            .iter()
            .all(|r| r.client_id.as_deref() == Some(id.as_str()) && r.presented_secret)
    );
    assert_eq!(
        token_reqs[2].grant_type.as_deref(),
        Some("authorization_code")
    );
    assert_eq!(token_reqs[2].status, 200);

    let dbg = format!("{auth:?}");
    assert!(!dbg.contains(at) && !dbg.contains(&secret), "{dbg}");
}

#[tokio::test]
async fn dcr_rejects_bad_metadata() {
    let auth = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    for uris in [
        json!([]),
        json!(["http://evil.example/cb"]),
        json!(["https://a.example/cb#x"]),
        json!("x"),
    ] {
        let (status, body) = register(&auth, json!({"redirect_uris": uris})).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_redirect_uri")),
            "{uris}"
        );
    }
    let (status, body) = register(&auth, json!({})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_redirect_uri"))
    );
    let (status, body) = register(
        &auth,
        json!({"redirect_uris": [REDIRECT], "grant_types": ["password"]}),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_client_metadata"))
    );
    let resp = http()
        .post(format!("{}/register", auth.issuer()))
        .body("not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(auth.registrations().is_empty());
}

#[tokio::test]
async fn dcr_public_and_post_clients() {
    for method in ["none", "client_secret_post"] {
        let auth = AuthServer::start(AuthServerConfig {
            dcr_token_endpoint_auth_method: method.into(),
            ..AuthServerConfig::default()
        })
        .await
        .unwrap();
        let (status, reg) = register(
            &auth,
            json!({"redirect_uris": ["http://127.0.0.1/callback"]}),
        )
        .await;
        assert_eq!(status, 201);
        assert_eq!(reg["token_endpoint_auth_method"], method);
        let id = reg["client_id"].as_str().unwrap();
        // Loopback redirect URIs match with any port.
        let (q, verifier) = authorize(&auth, id, None, None).await;
        let a = if method == "none" {
            assert!(reg.get("client_secret").is_none());
            Auth::None(id)
        } else {
            Auth::Post(id, reg["client_secret"].as_str().unwrap())
        };
        let (status, tok) = exchange(&auth, a, &q["code"], &verifier, None).await;
        assert_eq!(status, 200, "{tok}");
        assert!(tok.get("scope").is_none());
        let last = auth.requests().pop().unwrap();
        assert_eq!(last.presented_secret, method != "none");
    }
}

#[tokio::test]
async fn authorize_errors() {
    let auth = AuthServer::start(AuthServerConfig {
        scopes_supported: Some(vec!["read".into()]),
        ..AuthServerConfig::default()
    })
    .await
    .unwrap();
    auth.preregister_client("pub", None, "none", vec![REDIRECT.into()]);
    let (_, challenge) = pkce();
    let good = [
        ("response_type", "code"),
        ("client_id", "pub"),
        ("redirect_uri", REDIRECT),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("state", "s"),
    ];
    let with = |k: &'static str, v: Option<&'static str>| {
        let mut p: Vec<(&str, &str)> = good.iter().copied().filter(|(n, _)| *n != k).collect();
        if let Some(v) = v {
            p.push((k, v));
        }
        p
    };
    // Invalid client / redirect URI: 400 page, no redirect.
    for p in [
        with("client_id", Some("unknown")),
        with("client_id", None),
        with("redirect_uri", Some("http://127.0.0.1:4711/other")),
        with("redirect_uri", Some("https://evil.example/callback")),
        with("redirect_uri", None),
    ] {
        let resp = authorize_raw(&auth, &p).await;
        assert_eq!(resp.status(), 400, "{p:?}");
        assert!(resp.headers().get("location").is_none());
    }
    // Other errors are redirected with state and iss.
    for (p, err) in [
        (with("code_challenge", None), "invalid_request"),
        (with("code_challenge_method", None), "invalid_request"),
        (
            with("code_challenge_method", Some("plain")),
            "invalid_request",
        ),
        (
            with("response_type", Some("token")),
            "unsupported_response_type",
        ),
        (with("scope", Some("read write")), "invalid_scope"),
        (with("resource", Some("not a uri")), "invalid_target"),
    ] {
        let resp = authorize_raw(&auth, &p).await;
        assert_eq!(resp.status(), 302, "{p:?}");
        let q = query_of(resp.headers()["location"].to_str().unwrap());
        assert_eq!(q["error"], err, "{p:?}");
        assert_eq!(q["state"], "s");
        assert_eq!(q["iss"], auth.issuer());
        assert!(!q.contains_key("code"));
    }
    assert_eq!(auth.count(Endpoint::Authorize), 11);
}

#[tokio::test]
async fn code_checks() {
    let auth = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    auth.preregister_client("pub", None, "none", vec![REDIRECT.into()]);
    auth.preregister_client("other", None, "none", vec![REDIRECT.into()]);
    let a = Auth::None("pub");

    // Wrong verifier.
    let (q, _) = authorize(&auth, "pub", Some(RES), None).await;
    let (wrong, _) = pkce();
    let (status, body) = exchange(&auth, a, &q["code"], &wrong, Some(RES)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // Missing verifier.
    let (q, _) = authorize(&auth, "pub", None, None).await;
    let (status, body) = token_request(
        &auth,
        a,
        &[
            ("grant_type", "authorization_code"),
            ("code", &q["code"]),
            ("redirect_uri", REDIRECT),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // Wrong redirect_uri, wrong client, wrong/missing resource.
    let (q, verifier) = authorize(&auth, "pub", Some(RES), None).await;
    let (status, body) = token_request(
        &auth,
        a,
        &[
            ("grant_type", "authorization_code"),
            ("code", &q["code"]),
            ("redirect_uri", "http://127.0.0.1:4711/other"),
            ("code_verifier", &verifier),
            ("resource", RES),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (status, body) =
        exchange(&auth, Auth::None("other"), &q["code"], &verifier, Some(RES)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (status, body) = exchange(
        &auth,
        a,
        &q["code"],
        &verifier,
        Some("http://127.0.0.1:2/mcp"),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target"))
    );
    let (status, body) = exchange(&auth, a, &q["code"], &verifier, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target"))
    );

    // Success, then reuse → invalid_grant, and the tokens from the code are revoked.
    let (status, tok) = exchange(&auth, a, &q["code"], &verifier, Some(RES)).await;
    assert_eq!(status, 200, "{tok}");
    let at = tok["access_token"].as_str().unwrap();
    assert!(!auth.introspect(at).unwrap().revoked);
    let (status, body) = exchange(&auth, a, &q["code"], &verifier, Some(RES)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert!(auth.introspect(at).unwrap().revoked);

    // Unknown grant type, missing client auth, secret presented by a public client.
    let (status, body) = token_request(&auth, a, &[("grant_type", "password")]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    let resp = http()
        .post(format!("{}/token", auth.issuer()))
        .form(&[("grant_type", "authorization_code"), ("code", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let (status, _) = token_request(
        &auth,
        Auth::Post("pub", "s"),
        &[("grant_type", "refresh_token")],
    )
    .await;
    assert_eq!(status, 401);
    // Two authentication methods at once are refused.
    auth.preregister_client(
        "conf",
        Some("sec"),
        "client_secret_basic",
        vec![REDIRECT.into()],
    );
    let resp = http()
        .post(format!("{}/token", auth.issuer()))
        .header("authorization", common::basic("conf", "sec"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "x"),
            ("client_secret", "sec"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // JSON bodies are not accepted.
    let resp = http()
        .post(format!("{}/token", auth.issuer()))
        .json(&json!({"grant_type": "authorization_code", "client_id": "pub"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn basic_credentials_are_form_urlencoded() {
    let auth = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    let id = "id:with spaces&more";
    let secret = "s3cr3t:+/=%";
    auth.preregister_client(
        id,
        Some(secret),
        "client_secret_basic",
        vec![REDIRECT.into()],
    );
    let (q, verifier) = authorize(&auth, id, None, None).await;
    // Raw (not urlencoded) credentials are rejected.
    let raw = format!(
        "Basic {}",
        data_encoding::BASE64.encode(format!("{id}:{secret}").as_bytes())
    );
    let resp = http()
        .post(format!("{}/token", auth.issuer()))
        .header("authorization", raw)
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", q["code"].as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let (status, tok) = exchange(&auth, Auth::Basic(id, secret), &q["code"], &verifier, None).await;
    assert_eq!(status, 200, "{tok}");
}

#[tokio::test]
async fn refresh_rotation_and_reuse_detection() {
    let auth = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    auth.preregister_client("pub", None, "none", vec![REDIRECT.into()]);
    auth.preregister_client("other", None, "none", vec![REDIRECT.into()]);
    let a = Auth::None("pub");
    let tok = public_tokens(&auth, "pub", Some(RES), Some("x")).await;
    let at1 = tok["access_token"].as_str().unwrap().to_string();
    let rt1 = tok["refresh_token"].as_str().unwrap().to_string();

    // Another client cannot use it; a different resource is refused.
    let (status, _) = refresh(&auth, Auth::None("other"), &rt1, None).await;
    assert_eq!(status, 400);
    let (status, body) = refresh(&auth, a, &rt1, Some("http://127.0.0.1:2/mcp")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target"))
    );

    auth.expire_access_tokens();
    assert!(auth.introspect(&at1).unwrap().expired);

    let (status, tok2) = refresh(&auth, a, &rt1, Some(RES)).await;
    assert_eq!(status, 200, "{tok2}");
    let at2 = tok2["access_token"].as_str().unwrap().to_string();
    let rt2 = tok2["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt1, rt2);
    let info = auth.introspect(&at2).unwrap();
    assert!(!info.expired && !info.revoked);
    assert_eq!(info.resource.as_deref(), Some(RES));
    assert_eq!(info.scopes, vec!["x"]);

    // Reuse of the rotated-out token revokes the whole grant.
    let (status, body) = refresh(&auth, a, &rt1, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert!(auth.introspect(&at2).unwrap().revoked);
    let (status, _) = refresh(&auth, a, &rt2, None).await;
    assert_eq!(status, 400);
    assert_eq!(auth.issued_tokens(), vec![at1, rt1, at2, rt2]);
}

#[tokio::test]
async fn refresh_without_rotation_and_without_refresh_tokens() {
    let auth = AuthServer::start(AuthServerConfig {
        rotate_refresh_tokens: false,
        access_token_ttl: std::time::Duration::from_secs(5),
        ..AuthServerConfig::default()
    })
    .await
    .unwrap();
    auth.preregister_client("pub", None, "none", vec![REDIRECT.into()]);
    let tok = public_tokens(&auth, "pub", None, None).await;
    assert_eq!(tok["expires_in"], 5);
    let rt = tok["refresh_token"].as_str().unwrap();
    for _ in 0..2 {
        let (status, t) = refresh(&auth, Auth::None("pub"), rt, None).await;
        assert_eq!(status, 200);
        assert!(t.get("refresh_token").is_none());
    }

    let auth = AuthServer::start(AuthServerConfig {
        issue_refresh_tokens: false,
        ..AuthServerConfig::default()
    })
    .await
    .unwrap();
    auth.preregister_client("pub", None, "none", vec![REDIRECT.into()]);
    let tok = public_tokens(&auth, "pub", None, None).await;
    assert!(tok.get("refresh_token").is_none());
}

#[tokio::test]
async fn revocation() {
    let auth = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    auth.preregister_client(
        "conf",
        Some("sec"),
        "client_secret_post",
        vec![REDIRECT.into()],
    );
    let (q, verifier) = authorize(&auth, "conf", None, None).await;
    let (_, tok) = exchange(
        &auth,
        Auth::Post("conf", "sec"),
        &q["code"],
        &verifier,
        None,
    )
    .await;
    let at = tok["access_token"].as_str().unwrap();
    let rt = tok["refresh_token"].as_str().unwrap();
    let revoke = |form: Vec<(&'static str, String)>| {
        let auth = auth.clone();
        async move {
            http()
                .post(format!("{}/revoke", auth.issuer()))
                .form(&form)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // Missing client auth.
    assert_eq!(revoke(vec![("token", rt.to_string())]).await, 401);
    let creds = |t: &str| {
        vec![
            ("token", t.to_string()),
            ("client_id", "conf".into()),
            ("client_secret", "sec".into()),
        ]
    };
    assert_eq!(revoke(creds("unknown-token")).await, 200);
    assert_eq!(revoke(creds(rt)).await, 200);
    assert!(auth.introspect(at).unwrap().revoked);
    let (status, _) = refresh(&auth, Auth::Post("conf", "sec"), rt, None).await;
    assert_eq!(status, 400);
    assert_eq!(auth.count(Endpoint::Revoke), 3);
}

#[tokio::test]
async fn authorization_response_misbehaviors() {
    let auth = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    auth.preregister_client("pub", None, "none", vec![REDIRECT.into()]);
    auth.set_misbehavior(Misbehavior::WrongIss);
    let (q, _) = authorize(&auth, "pub", None, None).await;
    assert!(!q["iss"].is_empty() && q["iss"] != auth.issuer());
    auth.set_misbehavior(Misbehavior::MissingIss);
    let (q, _) = authorize(&auth, "pub", None, None).await;
    assert!(!q.contains_key("iss"));
    auth.set_misbehavior(Misbehavior::IssTrailingSlash);
    let (q, _) = authorize(&auth, "pub", None, None).await;
    assert_eq!(q["iss"], format!("{}/", auth.issuer()));
    auth.set_misbehavior(Misbehavior::WrongState);
    let (q, _) = authorize(&auth, "pub", None, None).await;
    assert_ne!(q["state"], "st4te");
    assert!(q.contains_key("code"));
    auth.set_misbehavior(Misbehavior::TokenResponse(
        503,
        "{\"error\":\"temporarily_unavailable\"}".into(),
    ));
    let (q, verifier) = authorize(&auth, "pub", None, None).await;
    let (status, body) = exchange(&auth, Auth::None("pub"), &q["code"], &verifier, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("temporarily_unavailable"))
    );
    auth.set_misbehavior(Misbehavior::None);
    let (status, _) = exchange(&auth, Auth::None("pub"), &q["code"], &verifier, None).await;
    assert_eq!(status, 200);

    // No iss at all when the AS does not support it.
    let plain = AuthServer::start(AuthServerConfig {
        iss_parameter_supported: false,
        ..AuthServerConfig::default()
    })
    .await
    .unwrap();
    plain.preregister_client("pub", None, "none", vec![REDIRECT.into()]);
    let (q, _) = authorize(&plain, "pub", None, None).await;
    assert!(!q.contains_key("iss"));
}

/// Serves a client ID metadata document from a tiny axum server.
async fn serve_cimd(doc: impl Fn(&str) -> Value) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://127.0.0.1:{}/client.json",
        listener.local_addr().unwrap().port()
    );
    let body = doc(&url);
    let app = axum::Router::new().route(
        "/client.json",
        axum::routing::get(move || {
            let body = body.clone();
            async move { axum::Json(body) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test]
async fn client_id_metadata_documents() {
    let auth = AuthServer::start(AuthServerConfig {
        client_id_metadata_documents: true,
        ..AuthServerConfig::default()
    })
    .await
    .unwrap();
    let good = serve_cimd(|u| json!({"client_id": u, "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"})).await;
    let (q, verifier) = authorize(&auth, &good, Some(RES), None).await;
    let (status, tok) = exchange(&auth, Auth::None(&good), &q["code"], &verifier, Some(RES)).await;
    assert_eq!(status, 200, "{tok}");
    assert!(auth.registrations().is_empty());

    let mismatched = serve_cimd(
        |_| json!({"client_id": "https://other.example/c.json", "redirect_uris": [REDIRECT]}),
    )
    .await;
    let no_redirect =
        serve_cimd(|u| json!({"client_id": u, "redirect_uris": ["http://127.0.0.1/elsewhere"]}))
            .await;
    let confidential = serve_cimd(|u| json!({"client_id": u, "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "client_secret_basic"})).await;
    for id in [
        mismatched,
        no_redirect,
        confidential,
        "not-a-url".to_string(),
    ] {
        let (_, challenge) = pkce();
        let resp = authorize_raw(
            &auth,
            &[
                ("response_type", "code"),
                ("client_id", &id),
                ("redirect_uri", REDIRECT),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
            ],
        )
        .await;
        assert_eq!(resp.status(), 400, "{id}");
    }

    // Disabled: URL client IDs are unknown.
    let off = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    let (_, challenge) = pkce();
    let resp = authorize_raw(
        &off,
        &[
            ("response_type", "code"),
            ("client_id", &good),
            ("redirect_uri", REDIRECT),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 400);
}
