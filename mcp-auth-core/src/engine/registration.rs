//! Choosing the client at an authorization server: pre-registered credentials, a Client ID
//! Metadata Document, or dynamic client registration, and the redirect URI each flow uses.

use secrecy::SecretString;
use serde_json::{Map, Value, json};
use tracing::{Instrument, debug, info_span};
use url::Url;

use super::discovery::ServerMetadata;
use super::http::redact;
use super::{AuthError, McpAuth, device, oauth_error};
use crate::error::StoreError;
use crate::ids::{IssuerId, ResourceUri};
use crate::model::{ClientRegistration, RegistrationKind};
use crate::store::Expect;
use crate::time::Timestamp;

impl McpAuth {
    /// The registration to use at this AS: the stored one, else pre-registered > CIMD > DCR
    /// (R20).
    pub(super) async fn ensure_registration(
        &self,
        meta: &ServerMetadata,
    ) -> Result<ClientRegistration, AuthError> {
        let issuer = &meta.issuer;
        let lock = self.registration_locks.get(issuer);
        let _guard = lock.lock().await;
        let existing = self.store.get_registration(issuer).await?;
        if let Some(existing) = &existing
            && !existing.value.secret_expired()
        {
            return Ok(existing.value.clone());
        }
        let registration = if let Some(pre) = &self.config.pre_registered {
            // Undeclared pre-registered credentials bind to the first AS they are used with.
            for other in self.store.list_registrations().await.unwrap_or_default() {
                if &other != issuer
                    && let Some(r) = self.store.get_registration(&other).await?
                    && r.value.kind == RegistrationKind::PreRegistered
                    && r.value.client_id == pre.client_id
                {
                    return Err(AuthError::AuthorizationServerChanged {
                        from: other,
                        to: issuer.clone(),
                    });
                }
            }
            let mut r = ClientRegistration::new(
                issuer.clone(),
                pre.client_id.clone(),
                RegistrationKind::PreRegistered,
            );
            r.client_secret = pre.client_secret.clone();
            r.token_endpoint_auth_method = pre.token_endpoint_auth_method.clone();
            r.redirect_uris = vec![self.config.redirect_uri.clone()];
            r
        } else if let (Some(url), true) = (&self.config.client_metadata_url, meta.cimd_supported) {
            let mut r = ClientRegistration::new(
                issuer.clone(),
                url.clone(),
                RegistrationKind::MetadataDocument,
            );
            r.redirect_uris = vec![self.config.redirect_uri.clone()];
            r
        } else if let Some(endpoint) = &meta.registration_endpoint {
            self.register(meta, endpoint).await?
        } else {
            return Err(AuthError::RegistrationNotPossible {
                issuer: issuer.clone(),
            });
        };
        // Another process may have registered meanwhile: keep the first registration saved.
        let expect = match existing {
            Some(old) => Expect::Version(old.version),
            None => Expect::Absent,
        };
        match self.store.put_registration(&registration, expect).await {
            Ok(_) => Ok(registration),
            Err(StoreError::Conflict { .. }) => match self.store.get_registration(issuer).await? {
                Some(theirs) => Ok(theirs.value),
                None => Err(AuthError::Store(StoreError::Conflict {
                    key: format!("registration(issuer={issuer})"),
                })),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Dynamic Client Registration (RFC 7591), using the values the AS returns.
    async fn register(
        &self,
        meta: &ServerMetadata,
        endpoint: &Url,
    ) -> Result<ClientRegistration, AuthError> {
        let span = info_span!("register", issuer = %meta.issuer);
        async {
            // A native client is public (PKCE protects the code): ask for `none` when the AS
            // allows it, else the first secret-based method it lists (RFC 7591's default when
            // it lists none).
            let requested_method = match meta.auth_methods() {
                Some(methods) => ["none", "client_secret_basic", "client_secret_post"]
                    .into_iter()
                    .find(|m| methods.iter().any(|s| s == m))
                    .unwrap_or("client_secret_basic"),
                None => "client_secret_basic",
            };
            // The device grant (RFC 8628) too when the AS offers it, so `authorize_device` can
            // use the same registration.
            let mut grant_types = vec!["authorization_code", "refresh_token"];
            if meta.device_authorization_endpoint.is_some()
                && meta.supports_grant(device::DEVICE_CODE_GRANT)
            {
                grant_types.push(device::DEVICE_CODE_GRANT);
            }
            let body = json!({
                "client_name": self.config.client_name,
                "redirect_uris": [self.issuer_redirect_uri(&meta.issuer)],
                "grant_types": grant_types,
                "response_types": ["code"],
                "token_endpoint_auth_method": requested_method,
                "application_type": self.config.application_type,
            });
            let fetched = self.http.post_json(endpoint, &body).await?;
            if !(200..300).contains(&fetched.status) {
                return Err(oauth_error(
                    &meta.issuer,
                    "registration",
                    fetched.status,
                    &fetched.body,
                ));
            }
            let mut map = fetched.json_object()?;
            let invalid = |reason: &str| AuthError::InvalidResponse {
                url: redact(endpoint),
                reason: reason.to_owned(),
            };
            let client_id = map
                .remove("client_id")
                .and_then(|v| v.as_str().map(str::to_owned))
                .filter(|s| !s.is_empty())
                .ok_or_else(|| invalid("registration response has no client_id"))?;
            let mut r =
                ClientRegistration::new(meta.issuer.clone(), client_id, RegistrationKind::Dynamic);
            let take_str = |map: &mut Map<String, Value>, k: &str| {
                map.remove(k).and_then(|v| v.as_str().map(str::to_owned))
            };
            let take_time = |map: &mut Map<String, Value>, k: &str| {
                map.remove(k)
                    .and_then(|v| v.as_i64())
                    .filter(|t| *t > 0)
                    .map(Timestamp::from_unix_seconds)
            };
            r.client_secret = take_str(&mut map, "client_secret").map(SecretString::from);
            r.client_secret_expires_at = take_time(&mut map, "client_secret_expires_at");
            r.client_id_issued_at = take_time(&mut map, "client_id_issued_at");
            // The AS's answer wins; when it says nothing, what was asked for (RFC 7591 §3.2.1),
            // except that a secret-based method without a secret means a public client.
            r.token_endpoint_auth_method = take_str(&mut map, "token_endpoint_auth_method")
                .unwrap_or_else(|| {
                    if requested_method != "none" && r.client_secret.is_none() {
                        "none".to_owned()
                    } else {
                        requested_method.to_owned()
                    }
                });
            let list = |map: &mut Map<String, Value>, k: &str| -> Vec<String> {
                map.remove(k)
                    .and_then(|v| v.as_array().cloned())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            };
            r.redirect_uris = list(&mut map, "redirect_uris");
            r.grant_types = list(&mut map, "grant_types");
            r.registration_access_token =
                take_str(&mut map, "registration_access_token").map(SecretString::from);
            r.registration_client_uri = take_str(&mut map, "registration_client_uri");
            r.extra = map;
            Ok(r)
        }
        .instrument(span)
        .await
    }

    /// The redirect URI for a flow with `registration`: for dynamic registrations made by this
    /// library, a path of its own per authorization server (`<redirect_uri>/<issuer key>`), so a
    /// response that comes back without `iss` still names the server it belongs to (RFC 9700
    /// §4.4.2) — exactly as registered, port included, since some servers match redirect URIs
    /// exactly; otherwise (pre-registered, Client ID Metadata Document, older registrations)
    /// the configured redirect URI, which is what the server has on record.
    fn redirect_uri_for(&self, registration: &ClientRegistration) -> String {
        let own = self.issuer_redirect_uri(&registration.issuer);
        let Ok(own_url) = Url::parse(&own) else {
            return self.config.redirect_uri.clone();
        };
        let registered = registration.redirect_uris.iter().find(|u| {
            Url::parse(u).is_ok_and(|a| {
                a.scheme() == own_url.scheme()
                    && a.path() == own_url.path()
                    && a.host() == own_url.host()
            })
        });
        match registered {
            Some(exact) if registration.kind == RegistrationKind::Dynamic => exact.clone(),
            _ => self.config.redirect_uri.clone(),
        }
    }

    /// The registration and redirect URI of an authorization-code flow, making sure the
    /// authorizer can receive the callback there. A dynamic registration whose loopback port
    /// another program now holds is replaced by a new one on the configured redirect URI —
    /// unless another MCP server's tokens at this authorization server may have been issued to
    /// the registered client (re-registering would cut their refresh off): then the error names
    /// the port to free.
    pub(super) async fn servable_redirect(
        &self,
        resource: &ResourceUri,
        meta: &ServerMetadata,
        registration: ClientRegistration,
    ) -> Result<(ClientRegistration, String), AuthError> {
        let redirect_uri = self.redirect_uri_for(&registration);
        let servable = Url::parse(&redirect_uri).is_ok_and(|u| self.authorizer.can_serve(&u));
        let fresh = self.issuer_redirect_uri(&meta.issuer);
        if servable || registration.kind != RegistrationKind::Dynamic || redirect_uri == fresh {
            return Ok((registration, redirect_uri));
        }
        let Some(endpoint) = &meta.registration_endpoint else {
            return Ok((registration, redirect_uri));
        };
        let issuer = &meta.issuer;
        let others = self
            .store
            .list_tokens()
            .await?
            .into_iter()
            .any(|k| &k.issuer == issuer && &k.resource != resource);
        if others {
            return Err(AuthError::Authorizer(format!(
                "the redirect URI registered at {issuer} ({}) cannot be served: another program \
                 holds its port; close it and log in again (registering a new client would end \
                 the other MCP servers' logins at this authorization server)",
                redirect_uri
            )));
        }
        let lock = self.registration_locks.get(issuer);
        let _guard = lock.lock().await;
        let current = self.store.get_registration(issuer).await?;
        // Another process may already have registered again.
        if let Some(current) = &current
            && current.value.client_id != registration.client_id
        {
            let redirect_uri = self.redirect_uri_for(&current.value);
            return Ok((current.value.clone(), redirect_uri));
        }
        debug!(issuer = %issuer, "registered redirect port is taken; registering again");
        let replacement = self.register(meta, endpoint).await?;
        let expect = match current {
            Some(old) => Expect::Version(old.version),
            None => Expect::Absent,
        };
        self.store.put_registration(&replacement, expect).await?;
        let redirect_uri = self.redirect_uri_for(&replacement);
        Ok((replacement, redirect_uri))
    }

    fn issuer_redirect_uri(&self, issuer: &IssuerId) -> String {
        let base = &self.config.redirect_uri;
        match Url::parse(base) {
            Ok(mut url) => {
                let path = format!(
                    "{}/{}",
                    url.path().trim_end_matches('/'),
                    issuer.storage_key()
                );
                url.set_path(&path);
                url.to_string()
            }
            Err(_) => base.clone(),
        }
    }
}
