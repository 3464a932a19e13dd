//! The OAuth 2.0 device authorization grant (RFC 8628): login on a machine without a browser.
//! The user opens the verification URI elsewhere and enters the user code while the engine
//! polls the token endpoint.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tracing::{Instrument, debug, info_span};
use url::Url;

use super::authorization::select_scopes;
use super::discovery::{self, ServerMetadata};
use super::http::redact;
use super::tokens::{client_auth, expires_in, parse_token_response};
use super::{AuthError, INVALID_EXPIRES_IN_LIFETIME, McpAuth, oauth_error, refresh};
use crate::ids::ResourceUri;

/// The RFC 8628 grant type.
pub(crate) const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Polling interval when the authorization server names none (RFC 8628 §3.2).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Bounds on the interval: a server asking for 0 s is not hammered, one asking for an hour is
/// not believed.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_INTERVAL: Duration = Duration::from_secs(300);
/// Added to the interval on every `slow_down` (RFC 8628 §3.5).
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// Longest device code accepted.
const MAX_DEVICE_CODE_LEN: usize = 4096;

/// What the user needs to authorize this device: shown through the callback of
/// [`McpAuth::authorize_device`]. Every field is authorization-server text reduced to printable
/// ASCII. The device code itself is never part of it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DeviceCode {
    /// Where the user goes (`verification_uri`).
    pub verification_uri: String,
    /// The same URI with the user code in it, when the server offers one
    /// (`verification_uri_complete`).
    pub verification_uri_complete: Option<String>,
    /// The code the user enters (`user_code`).
    pub user_code: String,
    /// How long the code stays valid.
    pub expires_in: Duration,
    /// The polling interval the server asked for.
    pub interval: Duration,
}

impl McpAuth {
    /// Authorizes for `resource` with the device authorization grant (RFC 8628): discovery,
    /// the SEP-2352 binding decision and registration exactly as [`McpAuth::authorize`], then a
    /// device authorization request whose verification URI and user code are handed to `show`,
    /// then polling of the token endpoint until the user approves, denies, or the code expires.
    ///
    /// `scopes`: `None` lets the server's metadata decide, as for [`McpAuth::authorize`].
    /// Fails with [`AuthError::DeviceFlowNotSupported`] when the authorization server
    /// advertises no `device_authorization_endpoint`.
    ///
    /// # Errors
    ///
    /// [`AuthError::DeviceFlowNotSupported`] when the authorization server advertises no device
    /// authorization endpoint; [`AuthError::DeviceAccessDenied`] when the user denies the request;
    /// [`AuthError::DeviceCodeExpired`] when the code expires before the user approves;
    /// [`AuthError::OAuth`] when an endpoint answers with another OAuth error. Discovery, the
    /// binding decision and registration fail as for [`McpAuth::authorize`].
    pub async fn authorize_device(
        &self,
        resource: &ResourceUri,
        scopes: Option<Vec<String>>,
        show: impl Fn(&DeviceCode) + Send,
    ) -> Result<SecretString, AuthError> {
        let lock = self.authorize_locks.get(resource);
        let _guard = lock.lock().await;
        let prm = self.resource_metadata(resource, None).await?;
        let issuer = self.issuer_from(&prm)?;
        let span = info_span!("authorize_device", resource = %resource, issuer = %issuer);
        async {
            self.apply_binding_policy(resource, &issuer).await?;
            let meta = match discovery::discover_server_metadata(&self.http, &issuer).await {
                Err(AuthError::Discovery { .. }) if prm.legacy => {
                    ServerMetadata::legacy_defaults(&self.http, &issuer)?
                }
                other => other?,
            };
            let Some(endpoint) = meta.device_authorization_endpoint.clone() else {
                return Err(AuthError::DeviceFlowNotSupported {
                    issuer: issuer.clone(),
                });
            };
            let registration = self.ensure_registration(&meta).await?;
            let scopes = select_scopes(&prm, &meta, None, scopes);

            let mut form: Vec<(&'static str, String)> =
                vec![("resource", prm.resource_raw.clone())];
            if !scopes.is_empty() {
                form.push(("scope", scopes.join(" ")));
            }
            let basic = client_auth(&registration, &mut form);
            let form_refs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let basic_refs = basic.as_ref().map(|(a, b)| (a.as_str(), b.as_str()));
            let fetched = self
                .http
                .post_form(&endpoint, &form_refs, basic_refs)
                .await?;
            if fetched.status != 200 {
                return Err(oauth_error(
                    &issuer,
                    "device_authorization",
                    fetched.status,
                    &fetched.body,
                ));
            }
            let body = fetched.json_object()?;
            let (device_code, shown) = parse_device_response(&endpoint, &body)?;
            show(&shown);

            let deadline = tokio::time::Instant::now() + shown.expires_in;
            let mut interval = shown.interval;
            loop {
                tokio::time::sleep(interval).await;
                if tokio::time::Instant::now() >= deadline {
                    return Err(AuthError::DeviceCodeExpired {
                        issuer: issuer.clone(),
                    });
                }
                let mut form: Vec<(&'static str, String)> = vec![
                    ("grant_type", DEVICE_CODE_GRANT.to_owned()),
                    ("device_code", device_code.expose_secret().to_owned()),
                    ("resource", prm.resource_raw.clone()),
                ];
                match self.token_request(&meta, &registration, &mut form).await {
                    Ok(body) => {
                        let tokens = parse_token_response(&meta, &body, None, &scopes)?;
                        self.bind(resource, &prm, &meta, &tokens).await?;
                        return Ok(tokens.access_token);
                    }
                    Err(AuthError::OAuth { error, .. }) if error == "authorization_pending" => {}
                    Err(AuthError::OAuth { error, .. }) if error == "slow_down" => {
                        interval = (interval + SLOW_DOWN_STEP).min(MAX_INTERVAL);
                        debug!(
                            interval_secs = interval.as_secs(),
                            "device flow: slow_down, polling less often"
                        );
                    }
                    Err(AuthError::OAuth { error, .. }) if error == "access_denied" => {
                        return Err(AuthError::DeviceAccessDenied {
                            issuer: issuer.clone(),
                        });
                    }
                    Err(AuthError::OAuth { error, .. }) if error == "expired_token" => {
                        return Err(AuthError::DeviceCodeExpired {
                            issuer: issuer.clone(),
                        });
                    }
                    // RFC 8628 §3.5: on a connection timeout, poll less often.
                    Err(AuthError::Timeout { .. } | AuthError::Http { .. }) => {
                        interval = (interval * 2).min(MAX_INTERVAL);
                        debug!(
                            interval_secs = interval.as_secs(),
                            "device flow: token endpoint unreachable, backing off"
                        );
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// Validates a device authorization response: the device code (kept secret) and what the user
/// is shown.
fn parse_device_response(
    endpoint: &Url,
    body: &serde_json::Map<String, Value>,
) -> Result<(SecretString, DeviceCode), AuthError> {
    let invalid = |reason: &str| AuthError::InvalidResponse {
        url: redact(endpoint),
        reason: reason.to_owned(),
    };
    let text = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let device_code = text("device_code")
        .filter(|s| s.len() <= MAX_DEVICE_CODE_LEN)
        .ok_or_else(|| invalid("device authorization response has no usable device_code"))?;
    let user_code = text("user_code")
        .ok_or_else(|| invalid("device authorization response has no user_code"))?;
    let web = |raw: &str| {
        Url::parse(raw)
            .ok()
            .filter(|u| matches!(u.scheme(), "https" | "http"))
            .map(|_| refresh::printable(raw))
    };
    let verification_uri = text("verification_uri")
        .and_then(web)
        .ok_or_else(|| invalid("device authorization response has no http(s) verification_uri"))?;
    let verification_uri_complete = text("verification_uri_complete").and_then(web);
    let expires_in = expires_in(body.get("expires_in")).unwrap_or(INVALID_EXPIRES_IN_LIFETIME);
    let interval = match body.get("interval") {
        None | Some(Value::Null) => DEFAULT_INTERVAL,
        Some(v) => v
            .as_u64()
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_INTERVAL)
            .clamp(MIN_INTERVAL, MAX_INTERVAL),
    };
    Ok((
        SecretString::from(device_code.to_owned()),
        DeviceCode {
            verification_uri,
            verification_uri_complete,
            user_code: refresh::printable(user_code),
            expires_in,
            interval,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> Url {
        Url::parse("https://as.example/device").unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn device_response_is_validated() {
        let ok = serde_json::json!({
            "device_code": "dc", "user_code": "AB\u{1b}CD", "verification_uri": "https://as.example/d",
            "expires_in": 30, "interval": 0,
        });
        let Value::Object(map) = ok else {
            unreachable!()
        };
        let Ok((code, shown)) = parse_device_response(&url(), &map) else {
            unreachable!()
        };
        assert_eq!(code.expose_secret(), "dc");
        assert_eq!(shown.user_code, "AB?CD");
        assert_eq!(shown.interval, MIN_INTERVAL);
        assert_eq!(shown.expires_in, Duration::from_secs(30));
        assert!(!format!("{shown:?}").contains("dc\""));
        for bad in [
            serde_json::json!({"user_code": "A", "verification_uri": "https://a.example"}),
            serde_json::json!({"device_code": "d", "verification_uri": "https://a.example"}),
            serde_json::json!({"device_code": "d", "user_code": "A", "verification_uri": "javascript:x"}),
            serde_json::json!({"device_code": 5, "user_code": "A", "verification_uri": "https://a.example"}),
        ] {
            let Value::Object(map) = bad else {
                unreachable!()
            };
            assert!(parse_device_response(&url(), &map).is_err());
        }
    }
}
