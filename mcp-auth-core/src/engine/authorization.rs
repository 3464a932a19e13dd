//! Authorizing: the authorization-code flow with PKCE, re-authorization after a `401`
//! ([`McpAuth::handle_unauthorized`]), step-up after a `403 insufficient_scope`
//! ([`McpAuth::handle_insufficient_scope`]), applying the SEP-2352 decisions of
//! [`crate::binding`], and scope selection.

use std::collections::{BTreeSet, HashMap};
use std::sync::PoisonError;

use secrecy::{ExposeSecret, SecretString};
use sha2::Digest as _;
use tracing::{Instrument, debug, info_span, warn};
use url::Url;

use super::discovery::{self, Challenge, ResourceMetadata, ServerMetadata};
use super::http::redact;
use super::tokens::parse_token_response_dpop;
use super::{AuthError, AuthorizationRequest, McpAuth, random_urlsafe, refresh};
use crate::binding::{self, BindingAction};
use crate::ids::{IssuerId, ResourceUri, TokenKey};
use crate::model::{
    ClientRegistration, PendingAuthorization, RegistrationKind, ResourceBinding, TokenSet,
};

impl McpAuth {
    /// Authorizes for `resource` now: discovery, SEP-2352 binding decision, registration,
    /// authorization code with PKCE, token exchange.
    ///
    /// # Errors
    ///
    /// As [`McpAuth::authorize_with_scopes`].
    pub async fn authorize(&self, resource: &ResourceUri) -> Result<SecretString, AuthError> {
        self.authorize_with_scopes(resource, None).await
    }

    /// [`McpAuth::authorize`] requesting exactly `scopes` (`None`: the server's challenge or
    /// metadata decides, R16).
    ///
    /// # Errors
    ///
    /// [`AuthError::NotProtected`] when `resource` publishes no protected resource metadata and
    /// does not ask for authorization; [`AuthError::AuthorizationServerChanged`] when it moved to
    /// another authorization server than the pre-registered credentials belong to;
    /// [`AuthError::IssuerMismatch`], [`AuthError::ResourceMismatch`] or
    /// [`AuthError::PkceNotSupported`] when the metadata fails validation;
    /// [`AuthError::RegistrationNotPossible`] when the client cannot register there;
    /// [`AuthError::Authorizer`] when no callback arrives, [`AuthError::StateMismatch`] or
    /// [`AuthError::AuthorizationDenied`] when the redirect is refused or does not match;
    /// [`AuthError::OAuth`], [`AuthError::UnsupportedTokenType`] or [`AuthError::DpopNotAvailable`]
    /// when the token exchange fails.
    ///
    /// Besides those: [`AuthError::Discovery`], [`AuthError::UnsafeUrl`], [`AuthError::Timeout`],
    /// [`AuthError::Http`], [`AuthError::ResponseTooLarge`] and [`AuthError::InvalidResponse`] when
    /// metadata or an endpoint cannot be used; [`AuthError::Store`] when the store keeps failing
    /// beyond its retry budget.
    pub async fn authorize_with_scopes(
        &self,
        resource: &ResourceUri,
        scopes: Option<Vec<String>>,
    ) -> Result<SecretString, AuthError> {
        let lock = self.authorize_locks.get(resource);
        let _guard = lock.lock().await;
        let prm = self.resource_metadata(resource, None).await?;
        self.authorize_with(resource, &prm, None, scopes).await
    }

    pub(super) async fn authorize_unlocked(
        &self,
        resource: &ResourceUri,
    ) -> Result<SecretString, AuthError> {
        let prm = self.resource_metadata(resource, None).await?;
        self.authorize_with(resource, &prm, None, None).await
    }

    /// The binding of `resource` and the tokens under its bound issuer. Callers compare access
    /// tokens, not record versions: recording a refresh state changes the version only.
    async fn token_snapshot(
        &self,
        resource: &ResourceUri,
    ) -> Result<Option<(ResourceBinding, TokenSet)>, AuthError> {
        let Some(binding) = self
            .store_retry(|| self.store.get_binding(resource))
            .await?
        else {
            return Ok(None);
        };
        let key = TokenKey::new(binding.value.issuer.clone(), resource.clone());
        Ok(self
            .store_retry(|| self.store.get_tokens(&key))
            .await?
            .map(|t| (binding.value, t.value)))
    }

    /// Call after the MCP server answered `401`. Re-discovers the protected resource metadata
    /// (from the challenge's `resource_metadata`, R1), so a move to another authorization server
    /// is always noticed, then refreshes or re-authorizes. Returns the token to retry with.
    ///
    /// # Errors
    ///
    /// When the challenge only asks for a DPoP nonce, what [`McpAuth::cached_access_token`] fails
    /// with (no new authorization is started). Otherwise what re-discovery fails with
    /// ([`AuthError::ResourceMismatch`], [`AuthError::AuthorizationServerChanged`],
    /// [`AuthError::Discovery`] and the network errors), what a refresh fails with other than a
    /// need to log in ([`AuthError::RefreshFailed`], [`AuthError::RefreshInProgress`],
    /// [`AuthError::RotatedTokenNotSaved`]), or what the new authorization fails with (see
    /// [`McpAuth::authorize`]).
    pub async fn handle_unauthorized(
        &self,
        resource: &ResourceUri,
        www_authenticate: Option<&str>,
    ) -> Result<SecretString, AuthError> {
        let challenge = www_authenticate.map(Challenge::parse).unwrap_or_default();
        if challenge.is_dpop_nonce() {
            // Not a refusal of the token: the server wants a proof with its nonce. The caller
            // records its `DPoP-Nonce` and retries with the same token; authorizing again would
            // only meet the same challenge.
            return self.cached_access_token(resource).await;
        }
        let seen = self.token_snapshot(resource).await?;
        let prm = self
            .resource_metadata(resource, challenge.resource_metadata.as_deref())
            .await?;
        let issuer = self.issuer_from(&prm)?;
        let lock = self.authorize_locks.get(resource);
        let _guard = lock.lock().await;
        // A concurrent caller may have recovered already (new tokens from this very AS).
        let now = self.token_snapshot(resource).await?;
        if let Some((bound, current)) = &now
            && bound.issuer == issuer
            && seen.as_ref().is_none_or(|(_, t)| {
                t.access_token.expose_secret() != current.access_token.expose_secret()
            })
            && let Ok(token) = self.cached_access_token(resource).await
        {
            return Ok(token);
        }
        if let Some((binding, current)) = now
            && binding.issuer == issuer
            && current.refresh_token.is_some()
        {
            // Same AS: the token itself was refused. A refresh may fix it; the token read here
            // makes concurrent callers refresh once.
            let key = TokenKey::new(issuer, resource.clone());
            match self
                .force_refresh(&binding, &key, &current.access_token)
                .await
            {
                Ok(token) => return Ok(token),
                Err(e) if e.needs_login() => {}
                Err(e) => return Err(e),
            }
        }
        self.authorize_with(resource, &prm, Some(&challenge), None)
            .await
    }

    /// Call after the MCP server answered `403` with `error="insufficient_scope"`. Authorizes
    /// again with the previously granted scopes plus the challenged ones (R18); gives up with
    /// [`AuthError::InsufficientScope`] when the same scopes are demanded again after
    /// `max_step_up_attempts` authorizations.
    ///
    /// # Errors
    ///
    /// [`AuthError::InsufficientScope`] when the same scopes are demanded again after
    /// `max_step_up_attempts` authorizations; otherwise whatever the new authorization fails with
    /// (see [`McpAuth::authorize`]).
    pub async fn handle_insufficient_scope(
        &self,
        resource: &ResourceUri,
        www_authenticate: &str,
    ) -> Result<SecretString, AuthError> {
        let challenge = Challenge::parse(www_authenticate);
        let required: BTreeSet<String> = challenge.scopes().into_iter().collect();
        // Concurrent 403s for the same scopes step up once: whoever waited for the lock uses
        // the token the first one obtained, and no attempt is counted for it.
        let seen = self.token_snapshot(resource).await?;
        let lock = self.authorize_locks.get(resource);
        let _guard = lock.lock().await;
        if let Some((_, current)) = self.token_snapshot(resource).await?
            && seen.as_ref().is_some_and(|(_, t)| {
                t.access_token.expose_secret() != current.access_token.expose_secret()
            })
            && required.iter().all(|s| current.scopes.contains(s))
            && !self.is_stale(&current)
        {
            return Ok(current.access_token);
        }
        let attempts = {
            let mut step_ups = self.step_ups.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = step_ups
                .entry(resource.clone())
                .or_insert((BTreeSet::new(), 0));
            if entry.0 != required {
                *entry = (required.clone(), 0);
            }
            entry.1 += 1;
            entry.1
        };
        if attempts > self.config.max_step_up_attempts {
            return Err(AuthError::InsufficientScope {
                scopes: required.into_iter().collect(),
                attempts: attempts - 1,
            });
        }
        let mut scopes: BTreeSet<String> = required;
        if let Ok(binding) = self.binding(resource).await {
            let key = TokenKey::new(binding.issuer, resource.clone());
            if let Some(current) = self.store.get_tokens(&key).await? {
                scopes.extend(current.value.scopes);
            }
        }
        let prm = discovery::discover_resource_metadata(
            &self.http,
            resource,
            challenge.resource_metadata.as_deref(),
        )
        .await?;
        // Already under the per-server authorization lock.
        self.authorize_with(
            resource,
            &prm,
            Some(&challenge),
            Some(scopes.into_iter().collect()),
        )
        .await
    }

    async fn binding(&self, resource: &ResourceUri) -> Result<ResourceBinding, AuthError> {
        self.store_retry(|| self.store.get_binding(resource))
            .await?
            .map(|b| b.value)
            .ok_or_else(|| AuthError::LoginRequired {
                resource: resource.to_string(),
            })
    }

    /// The full authorization for `resource` at the AS named by `prm`, after the SEP-2352
    /// decision.
    async fn authorize_with(
        &self,
        resource: &ResourceUri,
        prm: &ResourceMetadata,
        challenge: Option<&Challenge>,
        explicit_scopes: Option<Vec<String>>,
    ) -> Result<SecretString, AuthError> {
        let issuer = self.issuer_from(prm)?;
        let span = info_span!("authorize", resource = %resource, issuer = %issuer);
        async {
            self.apply_binding_policy(resource, &issuer).await?;
            let meta = match discovery::discover_server_metadata(&self.http, &issuer).await {
                Err(AuthError::Discovery { .. }) if prm.legacy => {
                    ServerMetadata::legacy_defaults(&self.http, &issuer)?
                }
                other => other?,
            };
            if let Some(credentials) = &self.config.client_credentials {
                return self
                    .client_credentials_grant(
                        resource,
                        prm,
                        &meta,
                        credentials,
                        challenge,
                        explicit_scopes,
                    )
                    .await;
            }
            if let Some(grant) = &self.config.identity_assertion {
                return self
                    .identity_assertion_grant(
                        resource,
                        prm,
                        &meta,
                        grant,
                        challenge,
                        explicit_scopes,
                    )
                    .await;
            }
            if let Some(grant) = &self.config.jwt_bearer {
                return self
                    .jwt_bearer_grant(resource, prm, &meta, grant, challenge, explicit_scopes)
                    .await;
            }
            if !meta.supports_s256() {
                return Err(AuthError::PkceNotSupported {
                    issuer: issuer.clone(),
                });
            }
            let registration = self.ensure_registration(&meta).await?;
            let (registration, redirect_uri) = self
                .servable_redirect(resource, &meta, registration)
                .await?;
            let scopes = select_scopes(prm, &meta, challenge, explicit_scopes);

            let verifier = random_urlsafe(32);
            let state = random_urlsafe(24);
            if verifier.len() < 43 || state.len() < 32 {
                return Err(AuthError::Config(
                    "the operating system gave no randomness for PKCE and state".to_owned(),
                ));
            }
            let mut pending = PendingAuthorization::new(
                state.clone(),
                SecretString::from(verifier.clone()),
                issuer.clone(),
                resource.clone(),
                registration.client_id.clone(),
                redirect_uri.clone(),
                self.config.pending_ttl,
            );
            pending.scopes = scopes.clone();
            self.store.insert_pending(&pending).await?;

            let mut url = meta.authorization_endpoint.clone();
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("response_type", "code")
                    .append_pair("client_id", &registration.client_id)
                    .append_pair("redirect_uri", &redirect_uri)
                    .append_pair("code_challenge", &pkce_challenge(&verifier))
                    .append_pair("code_challenge_method", "S256")
                    .append_pair("state", &state)
                    .append_pair("resource", &prm.resource_raw);
                if !scopes.is_empty() {
                    q.append_pair("scope", &scopes.join(" "));
                }
                // SEP-2207 lets a client ask for `offline_access` when the AS lists it; an
                // OpenID provider grants it only with `prompt=consent` (OIDC Core §11), else the
                // user gets no refresh token and must log in again when the access token ends.
                if scopes.iter().any(|s| s == "offline_access")
                    && meta.is_openid_provider()
                    && meta.accepts_prompt_consent()
                {
                    q.append_pair("prompt", "consent");
                }
            }
            debug!(endpoint = %redact(&meta.authorization_endpoint), "starting authorization");
            let callback = match self
                .authorizer
                .authorize(AuthorizationRequest {
                    url,
                    redirect_uri: redirect_uri.clone(),
                    state: state.clone(),
                })
                .await
            {
                Ok(callback) => callback,
                Err(e) => {
                    // A login that failed or timed out leaves nothing redeemable behind.
                    if let Err(cleanup) = self.store.take_pending(&state).await {
                        warn!(error = %cleanup, "could not delete the abandoned authorization");
                    }
                    return Err(e);
                }
            };
            let result = self
                .complete(resource, prm, &meta, &registration, &state, &callback)
                .await;
            if result.is_err() {
                // `complete` takes the record when the state matches; make sure it is gone.
                let _ = self.store.take_pending(&state).await;
            }
            result
        }
        .instrument(span)
        .await
    }

    /// SEP-2352: compares the discovered issuer with the bound one and acts on the difference.
    pub(super) async fn apply_binding_policy(
        &self,
        resource: &ResourceUri,
        issuer: &IssuerId,
    ) -> Result<(), AuthError> {
        // Declared pre-registered credentials never reach another AS.
        if let Some(pre) = &self.config.pre_registered
            && let Some(declared) = &pre.issuer
            && declared != issuer
        {
            return Err(AuthError::AuthorizationServerChanged {
                from: declared.clone(),
                to: issuer.clone(),
            });
        }
        // So do the declared credentials of an assertion grant (not even metadata is fetched).
        if let Some(declared) = self.declared_assertion_issuer()
            && declared != issuer
        {
            return Err(AuthError::AuthorizationServerChanged {
                from: declared.clone(),
                to: issuer.clone(),
            });
        }
        let bound = match self.store.get_binding(resource).await? {
            Some(b) => {
                let kind = self
                    .store
                    .get_registration(&b.value.issuer)
                    .await?
                    .map(|r| r.value.kind)
                    .unwrap_or(RegistrationKind::Dynamic);
                Some((b.value.issuer, kind))
            }
            None => None,
        };
        match binding::decide(bound.as_ref().map(|(i, k)| (i, *k)), issuer) {
            BindingAction::Bind | BindingAction::Unchanged => Ok(()),
            BindingAction::Refuse { from, to } => {
                Err(AuthError::AuthorizationServerChanged { from, to })
            }
            BindingAction::SwitchAndRegister { from }
            | BindingAction::SwitchKeepClientId { from } => {
                // The old server's tokens are dropped only once the new server has issued
                // tokens ([`McpAuth::bind`]): a move that fails half-way (metadata that does
                // not validate, a refused login) costs nothing.
                debug!(from = %from, to = %issuer, "authorization server changed");
                Ok(())
            }
        }
    }

    /// Validates the authorization response (state R13, `iss` R9–R12) and exchanges the code.
    /// The response must answer this very flow: its `state` is the one this flow sent, and the
    /// pending record names the authorization server, client and redirect URI in use now.
    async fn complete(
        &self,
        resource: &ResourceUri,
        prm: &ResourceMetadata,
        meta: &ServerMetadata,
        registration: &ClientRegistration,
        expected_state: &str,
        callback: &Url,
    ) -> Result<SecretString, AuthError> {
        let mut params: HashMap<String, String> = HashMap::new();
        for (k, v) in callback.query_pairs() {
            if matches!(k.as_ref(), "state" | "iss" | "code" | "error")
                && params.contains_key(k.as_ref())
            {
                return Err(AuthError::InvalidResponse {
                    url: redact(callback),
                    reason: format!("authorization response repeats the {k} parameter"),
                });
            }
            params.insert(k.into_owned(), v.into_owned());
        }
        let state = params.get("state").ok_or(AuthError::StateMismatch)?;
        if state != expected_state {
            // Another flow's state (perhaps an attacker's): leave its record alone.
            return Err(AuthError::StateMismatch);
        }
        let pending = self
            .store
            .take_pending(state)
            .await?
            .ok_or(AuthError::StateMismatch)?;
        let expected_path = Url::parse(&pending.redirect_uri)
            .map(|u| u.path().to_owned())
            .unwrap_or_default();
        if &pending.resource != resource
            || pending.issuer != meta.issuer
            || pending.client_id != registration.client_id
            || callback.path() != expected_path
        {
            return Err(AuthError::StateMismatch);
        }
        // R9/R10/R11: compare `iss` with the issuer recorded for this very flow, exactly.
        match params.get("iss") {
            Some(iss) if iss != pending.issuer.as_str() => {
                // R12: error fields of a response from the wrong issuer are not trusted.
                return Err(AuthError::IssuerMismatch {
                    context: "authorization response",
                    expected: pending.issuer.to_string(),
                    found: Some(refresh::printable(iss)),
                });
            }
            None if meta.iss_parameter_supported => {
                return Err(AuthError::IssuerMismatch {
                    context: "authorization response",
                    expected: pending.issuer.to_string(),
                    found: None,
                });
            }
            _ => {}
        }
        if let Some(error) = params.get("error") {
            return Err(AuthError::AuthorizationDenied {
                error: refresh::printable(error).chars().take(100).collect(),
                description: params
                    .get("error_description")
                    .map(|d| refresh::printable(d)),
            });
        }
        let code = params
            .get("code")
            .ok_or_else(|| AuthError::InvalidResponse {
                url: redact(callback),
                reason: "authorization response has neither code nor error".to_owned(),
            })?;
        let mut form = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.clone()),
            ("redirect_uri", pending.redirect_uri.clone()),
            (
                "code_verifier",
                pending.pkce_verifier.expose_secret().to_owned(),
            ),
            ("resource", prm.resource_raw.clone()),
        ];
        let span = info_span!("token_exchange", issuer = %meta.issuer);
        let dpop_required = self.dpop_required(&meta.issuer, resource).await;
        let dpop = self.new_dpop_key(meta, dpop_required)?;
        let body = self
            .token_request_dpop(meta, registration, &mut form, dpop.as_ref())
            .instrument(span)
            .await?;
        let tokens = parse_token_response_dpop(
            meta,
            &body,
            None,
            &pending.scopes,
            dpop.as_ref(),
            dpop_required,
        )?;
        self.bind(resource, prm, meta, &tokens).await?;
        Ok(tokens.access_token)
    }
}

fn pkce_challenge(verifier: &str) -> String {
    data_encoding::BASE64URL_NOPAD.encode(&sha2::Sha256::digest(verifier.as_bytes()))
}

/// R16/R17/R19: explicit scopes, else the challenge's, else every PRM `scopes_supported`, else
/// none; challenged scopes are always included; `offline_access` only when the AS lists it.
pub(super) fn select_scopes(
    prm: &ResourceMetadata,
    meta: &ServerMetadata,
    challenge: Option<&Challenge>,
    explicit: Option<Vec<String>>,
) -> Vec<String> {
    let challenged = challenge.map(Challenge::scopes).unwrap_or_default();
    let mut scopes: Vec<String> = match explicit {
        Some(s) => s,
        None if !challenged.is_empty() => challenged.clone(),
        None => prm.scopes_supported.clone().unwrap_or_default(),
    };
    for s in challenged {
        if !scopes.contains(&s) {
            scopes.push(s);
        }
    }
    if !scopes.is_empty()
        && !scopes.iter().any(|s| s == "offline_access")
        && meta
            .scopes_supported
            .as_ref()
            .is_some_and(|s| s.iter().any(|s| s == "offline_access"))
    {
        scopes.push("offline_access".to_owned());
    }
    scopes
}
