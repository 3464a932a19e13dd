//! Logging out: deleting a server's tokens and revoking them at its authorization server
//! (RFC 7009).

use secrecy::ExposeSecret;

use super::tokens::client_auth;
use super::{AuthError, McpAuth, oauth_error};
use crate::ids::{IssuerId, ResourceUri, TokenKey};
use crate::store::Expect;

/// What [`McpAuth::logout`] achieved at the authorization server (the local tokens are deleted
/// in every case).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct LogoutReport {
    /// The authorization server the MCP server was bound to.
    pub issuer: Option<IssuerId>,
    /// Tokens the server confirmed revoked (`"refresh_token"`, `"access_token"`).
    pub revoked: Vec<&'static str>,
    /// Tokens the server did not revoke, with its answer or the failure (RFC 7009 allows a
    /// server to refuse, e.g. `unsupported_token_type` for self-contained access tokens).
    pub not_revoked: Vec<(&'static str, String)>,
    /// Why nothing was sent to the server, when nothing was.
    pub not_attempted: Option<String>,
}

impl McpAuth {
    /// Deletes the tokens and binding of `resource` and revokes its tokens at the AS when it has
    /// a revocation endpoint (RFC 7009). The local deletion stands whatever the AS answers; the
    /// report says what the AS revoked, what it refused and why. The registration is kept.
    ///
    /// # Errors
    ///
    /// [`AuthError::Store`] when the stored binding, tokens or registration cannot be read, or the
    /// tokens and binding cannot be deleted. A revocation the authorization server refuses or
    /// cannot be reached for is not an error: it is listed in the [`LogoutReport`].
    pub async fn logout(&self, resource: &ResourceUri) -> Result<LogoutReport, AuthError> {
        let mut report = LogoutReport::default();
        let Some(binding) = self.store.get_binding(resource).await? else {
            report.not_attempted = Some("not logged in".to_owned());
            return Ok(report);
        };
        let binding = binding.value;
        report.issuer = Some(binding.issuer.clone());
        let key = TokenKey::new(binding.issuer.clone(), resource.clone());
        let tokens = self.store.get_tokens(&key).await?;
        let meta = self.stored_metadata(&binding).ok();
        let registration = self.store.get_registration(&binding.issuer).await?;
        match (
            &tokens,
            meta.as_ref().and_then(|m| m.revocation_endpoint.as_ref()),
            &registration,
        ) {
            (None, _, _) => report.not_attempted = Some("no tokens were stored".to_owned()),
            (Some(_), None, _) => {
                report.not_attempted = Some(format!(
                    "{} has no revocation endpoint; the tokens stay valid there until they expire",
                    binding.issuer
                ));
            }
            (Some(_), Some(_), None) => {
                report.not_attempted =
                    Some("no registration is stored to authenticate the revocation".to_owned());
            }
            (Some(tokens), Some(endpoint), Some(registration)) => {
                let to_revoke = [
                    ("refresh_token", tokens.value.refresh_token.clone()),
                    ("access_token", Some(tokens.value.access_token.clone())),
                ];
                for (hint, token) in to_revoke {
                    let Some(token) = token else { continue };
                    let mut form = vec![
                        ("token", token.expose_secret().to_owned()),
                        ("token_type_hint", hint.to_owned()),
                    ];
                    let basic = client_auth(&registration.value, &mut form);
                    let form_refs: Vec<(&str, &str)> =
                        form.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    let basic_refs = basic.as_ref().map(|(a, b)| (a.as_str(), b.as_str()));
                    match self.http.post_form(endpoint, &form_refs, basic_refs).await {
                        Ok(f) if f.status == 200 => report.revoked.push(hint),
                        Ok(f) => {
                            let why = oauth_error(&binding.issuer, "revocation", f.status, &f.body);
                            report.not_revoked.push((hint, why.to_string()));
                        }
                        Err(e) => report.not_revoked.push((hint, e.to_string())),
                    }
                }
            }
        }
        self.store.delete_tokens(&key, Expect::Any).await?;
        self.store.delete_binding(resource, Expect::Any).await?;
        Ok(report)
    }
}
