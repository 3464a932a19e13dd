//! The RFC 7523 JWT bearer grant at the [`AuthServer`]: ID-JAGs from a trusted enterprise IdP
//! (SEP-990) and workload JWTs from a trusted workload issuer (SEP-1933).

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;

use super::{AsInner, AuthServer, Basic, Req, parse_basic};
use crate::idp::{ID_JAG_TYP, TestJwtKey, decode_unverified, names_any};
use crate::util::{lock, oauth_error, unix_now, valid_resource};

/// Allowed clock skew for `nbf`/`iat`.
const SKEW: u64 = 30;

/// What an issuer's assertions are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AssertionProfile {
    /// SEP-990 ID-JAGs: `typ` `oauth-id-jag+jwt`, client authentication required, `client_id`
    /// claim = the authenticated client.
    IdJag,
    /// Workload JWTs: no client authentication needed (a `client_id` may be sent).
    Workload,
}

/// An issuer whose assertions the AS accepts, with its key.
#[derive(Clone, Debug)]
pub(super) struct TrustedIssuer {
    issuer: String,
    key: TestJwtKey,
    profile: AssertionProfile,
}

/// HTTP Basic credentials (form-decoded), when well-formed.
pub(crate) fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    match parse_basic(headers) {
        Basic::Present(id, secret) => Some((id, secret)),
        _ => None,
    }
}

impl AuthServer {
    /// Accepts ID-JAGs (SEP-990) signed by `key` with `iss` = `issuer` in the JWT bearer grant
    /// (and lists the grant in metadata). The client must authenticate as registered, and be
    /// the ID-JAG's `client_id`; the token is bound to the ID-JAG's `resource`. Usually
    /// `as.trust_id_jag_issuer(&idp.issuer(), &idp.grant_key())`.
    pub fn trust_id_jag_issuer(&self, issuer: &str, key: &TestJwtKey) {
        self.trust(issuer, key, AssertionProfile::IdJag);
    }

    /// Accepts workload JWTs signed by `key` with `iss` = `issuer` in the JWT bearer grant
    /// (and lists the grant in metadata). No client authentication is needed; a `client_id`
    /// may be sent. Make the JWTs with [`TestJwtKey::sign`]: `aud` = this server's issuer (or
    /// token endpoint), `exp`, `sub`.
    pub fn trust_workload_issuer(&self, issuer: &str, key: &TestJwtKey) {
        self.trust(issuer, key, AssertionProfile::Workload);
    }

    fn trust(&self, issuer: &str, key: &TestJwtKey, profile: AssertionProfile) {
        lock(&self.inner.state)
            .assertion_issuers
            .push(TrustedIssuer {
                issuer: issuer.to_string(),
                key: key.clone(),
                profile,
            });
    }
}

impl AsInner {
    /// Whether any assertion issuer is trusted (the grant is then advertised).
    pub(super) fn accepts_jwt_bearer(&self) -> bool {
        !lock(&self.state).assertion_issuers.is_empty()
    }

    /// The JWT bearer grant, strictly: a trusted issuer's valid signature, `aud` = this AS,
    /// unexpired, `sub`, the profile's `typ` and client rules, and a `resource` that agrees
    /// with the assertion's. No refresh token is issued.
    pub(super) fn jwt_bearer_grant(&self, req: &Req<'_>) -> Response {
        let invalid_grant = |d: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", d);
        let Some(assertion) = req.form.get("assertion").filter(|a| !a.is_empty()) else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "missing assertion",
            );
        };
        let Ok((_, unverified)) = decode_unverified(assertion) else {
            return invalid_grant("assertion is not a compact JWS");
        };
        let iss = unverified.get("iss").and_then(Value::as_str).unwrap_or("");
        let trusted = lock(&self.state)
            .assertion_issuers
            .iter()
            .find(|t| t.issuer == iss)
            .cloned();
        let Some(trusted) = trusted else {
            return invalid_grant("assertion issuer is not trusted");
        };
        let (header, claims) = match trusted.key.verify(assertion) {
            Ok(parts) => parts,
            Err(e) => return invalid_grant(&format!("assertion {e}")),
        };
        let typ = header.get("typ").and_then(Value::as_str);
        let is_jag = typ.is_some_and(|t| t.eq_ignore_ascii_case(ID_JAG_TYP));
        match trusted.profile {
            AssertionProfile::IdJag if !is_jag => {
                return invalid_grant("assertion typ must be oauth-id-jag+jwt");
            }
            AssertionProfile::Workload if is_jag => {
                return invalid_grant("an ID-JAG is not a workload assertion");
            }
            _ => {}
        }
        let token_endpoint = format!("{}/token", self.issuer);
        let slash = format!("{}/", self.issuer);
        if !names_any(
            claims.get("aud"),
            &[
                self.issuer.as_str(),
                slash.as_str(),
                token_endpoint.as_str(),
            ],
        ) {
            return invalid_grant("assertion audience is not this authorization server");
        }
        let now = unix_now();
        match claims.get("exp").and_then(Value::as_u64) {
            None => return invalid_grant("assertion has no exp"),
            Some(exp) if exp <= now => return invalid_grant("assertion expired"),
            Some(_) => {}
        }
        for claim in ["nbf", "iat"] {
            if claims
                .get(claim)
                .and_then(Value::as_u64)
                .is_some_and(|t| t > now + SKEW)
            {
                return invalid_grant(&format!("assertion {claim} is in the future"));
            }
        }
        let Some(sub) = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        else {
            return invalid_grant("assertion has no sub");
        };

        // Client: authenticated for ID-JAGs (and the ID-JAG's own client); optional for
        // workloads, authenticated whenever credentials are presented.
        let presents_credentials = !matches!(parse_basic(req.headers), Basic::Absent)
            || req.form.get("client_secret").is_some();
        let client_id = match trusted.profile {
            AssertionProfile::IdJag => {
                let client = match self.authenticate(req) {
                    Ok(c) => c,
                    Err(r) => return *r,
                };
                if claims.get("client_id").and_then(Value::as_str) != Some(&client.client_id) {
                    return invalid_grant("the ID-JAG was issued to another client");
                }
                client.client_id
            }
            AssertionProfile::Workload if presents_credentials => match self.authenticate(req) {
                Ok(c) => c.client_id,
                Err(r) => return *r,
            },
            AssertionProfile::Workload => req.form.get("client_id").unwrap_or(sub).to_string(),
        };

        let claimed = claims.get("resource").and_then(Value::as_str);
        let requested = req.form.get("resource");
        if let Some(r) = requested
            && !valid_resource(r)
        {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_target",
                "resource must be an absolute URI without fragment",
            );
        }
        let resource = match (claimed, requested) {
            (Some(c), Some(r)) if c != r => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_target",
                    "resource differs from the assertion's resource",
                );
            }
            (Some(c), _) => Some(c.to_string()),
            (None, r) => r.map(str::to_string),
        };
        let scopes: Vec<String> = req
            .form
            .get("scope")
            .or_else(|| claims.get("scope").and_then(Value::as_str))
            .unwrap_or("")
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if let Some(supported) = &self.config.scopes_supported
            && let Some(bad) = scopes.iter().find(|s| !supported.contains(s))
        {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                &format!("unsupported scope {bad}"),
            );
        }
        let mut st = lock(&self.state);
        let grant = st.grants.len();
        st.grants.push(false);
        let st = &mut *st;
        self.issue(st, grant, &client_id, resource, scopes, false)
    }
}
