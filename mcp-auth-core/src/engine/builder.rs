//! [`McpAuthBuilder`]: assembling an [`McpAuth`] and checking its configuration.

use std::sync::{Arc, Mutex};

use url::Url;

use super::http::Http;
use super::{
    AuthError, Authorizer, ClientConfig, HttpPolicy, KeyedLocks, LoopbackAuthorizer, McpAuth,
    assertion, dpop,
};
use crate::store::CredentialStore;

#[cfg(doc)]
use super::PasteAuthorizer;

/// Builds an [`McpAuth`].
#[derive(Debug)]
pub struct McpAuthBuilder {
    store: Arc<dyn CredentialStore>,
    config: ClientConfig,
    policy: HttpPolicy,
    authorizer: Option<Arc<dyn Authorizer>>,
}

impl McpAuthBuilder {
    /// Who the client is.
    pub fn client(mut self, config: ClientConfig) -> Self {
        self.config = config;
        self
    }

    /// Timeouts, size limits and the address policy.
    pub fn http_policy(mut self, policy: HttpPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// How authorization codes are obtained. Default:
    /// [`LoopbackAuthorizer::system_browser`] — the system browser and a listener on the
    /// configured loopback redirect URI, 5 minutes to finish. Give another one to show the URL
    /// yourself ([`LoopbackAuthorizer::with_opener`]), to accept a pasted redirect
    /// ([`PasteAuthorizer`]) or, in tests against a server that approves at once, the
    /// `HeadlessAuthorizer` of feature `headless`.
    pub fn authorizer(mut self, authorizer: Arc<dyn Authorizer>) -> Self {
        self.authorizer = Some(authorizer);
        self
    }

    /// Builds the engine.
    ///
    /// # Errors
    ///
    /// [`AuthError::Config`] when the configuration is inconsistent: `redirect_uri` or
    /// `client_metadata_url` is not an absolute URL (or the latter has no path, has a fragment or
    /// is refused by the [`HttpPolicy`]); a pre-registered client secret or client credentials name
    /// no issuer (unless undeclared secret issuers are allowed); more than one of client
    /// credentials, identity assertion and JWT bearer is configured; or an identity assertion grant
    /// lacks its `client_id`, its issuer or a usable IdP token endpoint.
    pub fn build(self) -> Result<McpAuth, AuthError> {
        Url::parse(&self.config.redirect_uri)
            .map_err(|_| AuthError::Config("redirect_uri is not an absolute URL".to_owned()))?;
        // A secret must know where it may be sent: without a declared issuer it would go to
        // whichever authorization server a (possibly hostile) MCP server names first.
        if !self.config.allow_undeclared_secret_issuer {
            if let Some(pre) = &self.config.pre_registered
                && pre.client_secret.is_some()
                && pre.issuer.is_none()
            {
                return Err(AuthError::Config(
                    "a pre-registered client secret needs the issuer it belongs to (set \
                     PreRegisteredClient::issuer)"
                        .to_owned(),
                ));
            }
            if let Some(cc) = &self.config.client_credentials
                && cc.issuer.is_none()
            {
                return Err(AuthError::Config(
                    "client credentials need the issuer they belong to (set \
                     ClientCredentials::issuer)"
                        .to_owned(),
                ));
            }
        }
        let http = Http::new(self.policy.clone())?;
        assertion::check_config(&self.config, &http)?;
        if let Some(raw) = &self.config.client_metadata_url {
            // R21: a Client ID Metadata Document URL is https with a path (http only to loopback
            // when the policy allows it, for tests).
            let url = Url::parse(raw).map_err(|_| {
                AuthError::Config("client_metadata_url is not an absolute URL".to_owned())
            })?;
            http.check_url(&url)
                .map_err(|e| AuthError::Config(format!("client_metadata_url: {e}")))?;
            if url.path() == "/" || url.fragment().is_some() {
                return Err(AuthError::Config(
                    "client_metadata_url must have a path and no fragment".to_owned(),
                ));
            }
        }
        let authorizer = match self.authorizer {
            Some(a) => a,
            None => Arc::new(LoopbackAuthorizer::system_browser()),
        };
        Ok(McpAuth {
            store: self.store,
            http,
            config: self.config,
            authorizer,
            refresh_locks: KeyedLocks::new(),
            authorize_locks: KeyedLocks::new(),
            registration_locks: KeyedLocks::new(),
            step_ups: Mutex::default(),
            unsaved: Arc::default(),
            hot: Mutex::default(),
            versions_supported: std::sync::atomic::AtomicBool::new(true),
            dpop_nonces: dpop::Nonces::default(),
            dpop_keys: dpop::KeyCache::default(),
        })
    }
}

impl McpAuth {
    /// Starts building an engine over `store`.
    pub fn builder(store: Arc<dyn CredentialStore>) -> McpAuthBuilder {
        McpAuthBuilder {
            store,
            config: ClientConfig::default(),
            policy: HttpPolicy::default(),
            authorizer: None,
        }
    }
}
