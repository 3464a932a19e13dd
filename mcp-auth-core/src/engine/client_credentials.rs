//! The `client_credentials` grant (SEP-1046) and RFC 7523 client assertions.

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use tracing::{Instrument, info_span};

use super::authorization::select_scopes;
use super::discovery::{Challenge, ResourceMetadata, ServerMetadata};
use super::tokens::parse_token_response;
use super::{AuthError, ClientCredentials, ClientCredentialsAuth, McpAuth, random_urlsafe};
use crate::ids::ResourceUri;
use crate::model::{ClientRegistration, RegistrationKind};
use crate::store::Expect;
use crate::time::Timestamp;

impl McpAuth {
    /// SEP-1046: the `client_credentials` grant, with `client_secret_basic` or `private_key_jwt`
    /// client authentication. The credentials are recorded as this issuer's pre-registered
    /// registration, so a move to another AS is refused like any pre-registered client's.
    pub(super) async fn client_credentials_grant(
        &self,
        resource: &ResourceUri,
        prm: &ResourceMetadata,
        meta: &ServerMetadata,
        credentials: &ClientCredentials,
        challenge: Option<&Challenge>,
        explicit_scopes: Option<Vec<String>>,
    ) -> Result<SecretString, AuthError> {
        if let Some(declared) = &credentials.issuer
            && declared != &meta.issuer
        {
            return Err(AuthError::AuthorizationServerChanged {
                from: declared.clone(),
                to: meta.issuer.clone(),
            });
        }
        let mut registration = ClientRegistration::new(
            meta.issuer.clone(),
            credentials.client_id.clone(),
            RegistrationKind::PreRegistered,
        );
        let mut form: Vec<(&'static str, String)> = vec![
            ("grant_type", "client_credentials".to_owned()),
            ("resource", prm.resource_raw.clone()),
        ];
        let scopes = select_scopes(prm, meta, challenge, explicit_scopes)
            .into_iter()
            .filter(|s| s != "offline_access")
            .collect::<Vec<_>>();
        if !scopes.is_empty() {
            form.push(("scope", scopes.join(" ")));
        }
        match &credentials.auth {
            ClientCredentialsAuth::Secret(secret) => {
                registration.client_secret = Some(secret.clone());
                registration.token_endpoint_auth_method = "client_secret_basic".to_owned();
            }
            ClientCredentialsAuth::PrivateKeyJwt {
                private_key_pem,
                algorithm,
                key_id,
            } => {
                registration.token_endpoint_auth_method = "private_key_jwt".to_owned();
                let assertion = client_assertion(
                    &credentials.client_id,
                    meta.issuer.as_str(),
                    private_key_pem,
                    algorithm,
                    key_id.as_deref(),
                )?;
                form.push(("client_id", credentials.client_id.clone()));
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
                ));
                form.push(("client_assertion", assertion));
            }
        }
        self.store
            .put_registration(&registration, Expect::Any)
            .await?;
        let span = info_span!("client_credentials", issuer = %meta.issuer);
        let body = self
            .token_request(meta, &registration, &mut form)
            .instrument(span)
            .await?;
        let tokens = parse_token_response(meta, &body, None, &scopes)?;
        self.bind(resource, prm, meta, &tokens).await?;
        Ok(tokens.access_token)
    }
}

/// An RFC 7523 client assertion: `iss = sub = client_id`, `aud` = the issuer, 60 s lifetime,
/// random `jti`.
fn client_assertion(
    client_id: &str,
    audience: &str,
    private_key_pem: &SecretString,
    algorithm: &str,
    key_id: Option<&str>,
) -> Result<String, AuthError> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let pem = private_key_pem.expose_secret().as_bytes();
    let (alg, key) = match algorithm {
        "ES256" => (Algorithm::ES256, EncodingKey::from_ec_pem(pem)),
        "ES384" => (Algorithm::ES384, EncodingKey::from_ec_pem(pem)),
        "RS256" => (Algorithm::RS256, EncodingKey::from_rsa_pem(pem)),
        "PS256" => (Algorithm::PS256, EncodingKey::from_rsa_pem(pem)),
        "EdDSA" => (Algorithm::EdDSA, EncodingKey::from_ed_pem(pem)),
        other => {
            return Err(AuthError::Config(format!(
                "unsupported client assertion algorithm {other:?} (use ES256, ES384, RS256, PS256 or EdDSA)"
            )));
        }
    };
    // The key error names the format problem, never the key.
    let key = key.map_err(|e| {
        AuthError::Config(format!(
            "private key is not a usable PEM for {algorithm}: {e}"
        ))
    })?;
    let mut header = Header::new(alg);
    header.kid = key_id.map(str::to_owned);
    let now = Timestamp::now().unix_seconds();
    let claims = json!({
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": now,
        "exp": now + 60,
        "jti": random_urlsafe(16),
    });
    jsonwebtoken::encode(&header, &claims, &key)
        .map_err(|e| AuthError::Config(format!("cannot sign the client assertion: {e}")))
}
