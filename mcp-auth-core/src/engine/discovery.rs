//! Discovery: `WWW-Authenticate` challenges, protected resource metadata (RFC 9728) and
//! authorization server metadata (RFC 8414 / OpenID Connect Discovery).

use serde_json::{Map, Value};
use tracing::{Instrument, debug, info_span};
use url::Url;

use super::McpAuth;
use super::error::AuthError;
use super::http::{Http, redact};
use crate::ids::{IssuerId, ResourceUri};
use crate::model::ResourceBinding;

/// The parts of a `Bearer` or `DPoP` challenge the client uses. Unparseable input yields an empty
/// challenge (the caller then falls back to well-known discovery), never an error or a panic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Challenge {
    /// `resource_metadata`: where the protected resource metadata is.
    pub resource_metadata: Option<String>,
    /// `scope`: the scopes needed.
    pub scope: Option<String>,
    /// `error` (`invalid_token`, `insufficient_scope`, ...).
    pub error: Option<String>,
}

impl Challenge {
    /// Parses a `WWW-Authenticate` header value and returns its `Bearer` (RFC 6750 §3) and
    /// `DPoP` (RFC 9449 §7.1) challenges' parameters (RFC 9110 §11.6.1 syntax:
    /// `Bearer k=v, k="quoted, value"`); the first value of each parameter wins. Other schemes
    /// in the same header are skipped.
    pub fn parse(header: &str) -> Self {
        let mut out = Self::default();
        let mut in_bearer = false;
        let mut rest = header.trim();
        while !rest.is_empty() {
            rest = rest.trim_start_matches([',', ' ', '\t']);
            // Read a token (scheme or parameter name).
            let end = rest
                .find(|c: char| c == '=' || c == ',' || c.is_whitespace())
                .unwrap_or(rest.len());
            let token = &rest[..end];
            rest = rest[end..].trim_start_matches([' ', '\t']);
            if token.is_empty() {
                // Stray character: skip it.
                let mut chars = rest.chars();
                chars.next();
                rest = chars.as_str();
                continue;
            }
            if let Some(after_eq) = rest.strip_prefix('=') {
                let after_eq = after_eq.trim_start_matches([' ', '\t']);
                let (value, remaining) = if let Some(quoted) = after_eq.strip_prefix('"') {
                    let mut value = String::new();
                    let mut chars = quoted.char_indices();
                    let mut end = quoted.len();
                    while let Some((i, c)) = chars.next() {
                        match c {
                            '\\' => {
                                if let Some((_, escaped)) = chars.next() {
                                    value.push(escaped);
                                }
                            }
                            '"' => {
                                end = i + 1;
                                break;
                            }
                            c => value.push(c),
                        }
                    }
                    (value, &quoted[end.min(quoted.len())..])
                } else {
                    let end = after_eq.find(',').unwrap_or(after_eq.len());
                    // token68 values may end in '='; keep them whole.
                    (after_eq[..end].trim().to_owned(), &after_eq[end..])
                };
                rest = remaining;
                if in_bearer {
                    let field = match token.to_ascii_lowercase().as_str() {
                        "resource_metadata" => &mut out.resource_metadata,
                        "scope" => &mut out.scope,
                        "error" => &mut out.error,
                        _ => continue,
                    };
                    if field.is_none() {
                        *field = Some(value);
                    }
                }
            } else {
                // A new scheme starts.
                in_bearer =
                    token.eq_ignore_ascii_case("bearer") || token.eq_ignore_ascii_case("dpop");
            }
        }
        out
    }

    /// True for a resource server's request for a DPoP nonce (`error="use_dpop_nonce"`, RFC
    /// 9449 §9): retry with a proof carrying the `DPoP-Nonce` it sent, never re-authorize.
    pub fn is_dpop_nonce(&self) -> bool {
        self.error.as_deref() == Some("use_dpop_nonce")
    }

    /// The challenged scopes, split on spaces.
    pub fn scopes(&self) -> Vec<String> {
        self.scope
            .as_deref()
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    }
}

/// Validated protected resource metadata.
#[derive(Clone, Debug)]
pub(crate) struct ResourceMetadata {
    /// The `resource` (canonical form), for comparisons.
    pub(crate) resource: ResourceUri,
    /// The `resource` exactly as published: what is sent as the `resource` parameter.
    pub(crate) resource_raw: String,
    /// Synthesised for a 2025-03-26 server without protected resource metadata.
    pub(crate) legacy: bool,
    pub(crate) authorization_servers: Vec<String>,
    pub(crate) scopes_supported: Option<Vec<String>>,
    pub(crate) raw: Map<String, Value>,
}

fn string_list(map: &Map<String, Value>, field: &str) -> Option<Vec<String>> {
    map.get(field).and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    })
}

/// True when `requested` is `published` or lies under it (same origin, path prefix at a segment
/// boundary): a server may publish its origin as the resource of an `/mcp` endpoint.
fn resource_covers(published: &ResourceUri, requested: &ResourceUri) -> bool {
    if published == requested {
        return true;
    }
    let (p, r) = (published.url(), requested.url());
    if p.origin() != r.origin() || p.query().is_some() {
        return false;
    }
    let base = p.path().trim_end_matches('/');
    let path = r.path();
    path.strip_prefix(base)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl ResourceMetadata {
    fn from_json(
        url: &Url,
        map: Map<String, Value>,
        requested: &ResourceUri,
    ) -> Result<Self, AuthError> {
        let invalid = |reason: &str| AuthError::InvalidResponse {
            url: redact(url),
            reason: reason.to_owned(),
        };
        let published = map
            .get("resource")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("protected resource metadata has no \"resource\""))?;
        let resource = ResourceUri::new(published).map_err(|_| AuthError::ResourceMismatch {
            expected: requested.to_string(),
            found: published.chars().take(200).collect(),
        })?;
        if !resource_covers(&resource, requested) {
            return Err(AuthError::ResourceMismatch {
                expected: requested.to_string(),
                found: resource.to_string(),
            });
        }
        let authorization_servers = string_list(&map, "authorization_servers")
            .filter(|v| !v.is_empty())
            .ok_or_else(|| invalid("protected resource metadata lists no authorization_servers"))?;
        Ok(Self {
            resource,
            resource_raw: published.to_owned(),
            legacy: map
                .get("x-mcp-auth-legacy")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            authorization_servers,
            scopes_supported: string_list(&map, "scopes_supported"),
            raw: map,
        })
    }

    /// 2025-03-26 servers publish no protected resource metadata: their own origin is the
    /// authorization server. The synthesised document is marked so it is recognisable when
    /// stored.
    pub(crate) fn legacy(requested: &ResourceUri) -> Self {
        let origin = requested.url().origin().ascii_serialization();
        let mut raw = Map::new();
        raw.insert("resource".to_owned(), Value::String(requested.to_string()));
        raw.insert(
            "authorization_servers".to_owned(),
            Value::from(vec![origin.clone()]),
        );
        raw.insert("x-mcp-auth-legacy".to_owned(), Value::Bool(true));
        Self {
            resource: requested.clone(),
            resource_raw: requested.to_string(),
            legacy: true,
            authorization_servers: vec![origin],
            scopes_supported: None,
            raw,
        }
    }

    pub(crate) fn from_stored(map: &Map<String, Value>, requested: &ResourceUri) -> Option<Self> {
        let url = requested.url().clone();
        Self::from_json(&url, map.clone(), requested).ok()
    }
}

/// Fetches protected resource metadata: from the challenge's `resource_metadata` URL when there
/// is one (R1), else the path-suffixed well-known URL, then the root one (R2).
pub(crate) async fn discover_resource_metadata(
    http: &Http,
    resource: &ResourceUri,
    challenge_url: Option<&str>,
) -> Result<ResourceMetadata, AuthError> {
    match find_resource_metadata(http, resource, challenge_url).await? {
        Found::Metadata(prm) => Ok(prm),
        Found::NotFound(reason) => Err(AuthError::Discovery {
            url: resource.to_string(),
            reason: format!("no protected resource metadata ({reason})"),
        }),
    }
}

/// What the protected resource metadata probes found.
pub(crate) enum Found {
    /// A valid document.
    Metadata(ResourceMetadata),
    /// Every location answered `404`: the server publishes none (a 2025-03-26 server).
    NotFound(String),
}

/// [`discover_resource_metadata`], telling "none published" (every location `404`) apart from
/// every other failure: only the former may lead to the 2025-03-26 fallback. A server error,
/// a refusal or a timeout is an error, never a reason to treat the origin as the AS.
pub(crate) async fn find_resource_metadata(
    http: &Http,
    resource: &ResourceUri,
    challenge_url: Option<&str>,
) -> Result<Found, AuthError> {
    let span = info_span!("discover_resource_metadata", resource = %resource);
    async {
        let candidates: Vec<Url> = match challenge_url {
            Some(raw) => {
                vec![
                    resource
                        .url()
                        .join(raw)
                        .map_err(|_| AuthError::InvalidResponse {
                            url: resource.to_string(),
                            reason: "resource_metadata in WWW-Authenticate is not a URL".to_owned(),
                        })?,
                ]
            }
            None => well_known_resource_urls(resource),
        };
        let mut last = None;
        for url in &candidates {
            debug!(url = %redact(url), "fetching protected resource metadata");
            let fetched = http.get(url, true).await?;
            match fetched.status {
                200 => {
                    return ResourceMetadata::from_json(url, fetched.json_object()?, resource)
                        .map(Found::Metadata);
                }
                404 => last = Some(format!("{} returned 404", redact(url))),
                status => {
                    return Err(AuthError::Discovery {
                        url: resource.to_string(),
                        reason: format!(
                            "protected resource metadata at {} is unavailable (HTTP {status}); try again later",
                            redact(url)
                        ),
                    });
                }
            }
        }
        Ok(Found::NotFound(
            last.unwrap_or_else(|| "nothing to try".to_owned()),
        ))
    }
    .instrument(span)
    .await
}

fn well_known_resource_urls(resource: &ResourceUri) -> Vec<Url> {
    let base = resource.url();
    let path = base.path().trim_end_matches('/');
    let mut urls = Vec::new();
    let mut origin = base.clone();
    origin.set_query(None);
    origin.set_fragment(None);
    if !path.is_empty() {
        let mut u = origin.clone();
        u.set_path(&format!("/.well-known/oauth-protected-resource{path}"));
        urls.push(u);
    }
    let mut root = origin;
    root.set_path("/.well-known/oauth-protected-resource");
    urls.push(root);
    urls
}

/// The metadata URLs to try for `issuer`, in the MCP-mandated order (R5): with a path,
/// RFC 8414 path-insertion, OIDC path-insertion, OIDC path-appending; without one, RFC 8414 then
/// OIDC. A terminating `/` is removed first (RFC 8414 §3.1).
pub fn metadata_urls(issuer: &IssuerId) -> Vec<Url> {
    let base = issuer.url();
    let path = base.path().trim_end_matches('/').to_owned();
    let mut origin = base.clone();
    origin.set_query(None);
    origin.set_fragment(None);
    let at = |p: &str| {
        let mut u = origin.clone();
        u.set_path(p);
        u
    };
    if path.is_empty() {
        vec![
            at("/.well-known/oauth-authorization-server"),
            at("/.well-known/openid-configuration"),
        ]
    } else {
        vec![
            at(&format!("/.well-known/oauth-authorization-server{path}")),
            at(&format!("/.well-known/openid-configuration{path}")),
            at(&format!("{path}/.well-known/openid-configuration")),
        ]
    }
}

/// Validated authorization server metadata.
#[derive(Clone, Debug)]
pub(crate) struct ServerMetadata {
    pub(crate) issuer: IssuerId,
    pub(crate) authorization_endpoint: Url,
    pub(crate) token_endpoint: Url,
    pub(crate) registration_endpoint: Option<Url>,
    pub(crate) revocation_endpoint: Option<Url>,
    /// RFC 8628 `device_authorization_endpoint`.
    pub(crate) device_authorization_endpoint: Option<Url>,
    pub(crate) code_challenge_methods: Option<Vec<String>>,
    pub(crate) iss_parameter_supported: bool,
    pub(crate) cimd_supported: bool,
    pub(crate) scopes_supported: Option<Vec<String>>,
    pub(crate) raw: Map<String, Value>,
}

impl ServerMetadata {
    /// True when the authorization server is also an OpenID provider (its metadata has the
    /// fields OpenID Connect Discovery requires, or lists the `openid` scope). Such servers drop
    /// `offline_access` unless the request asks for consent (OpenID Connect Core §11).
    pub(crate) fn is_openid_provider(&self) -> bool {
        self.raw
            .contains_key("id_token_signing_alg_values_supported")
            || self.raw.contains_key("userinfo_endpoint")
            || self
                .scopes_supported
                .as_ref()
                .is_some_and(|s| s.iter().any(|s| s == "openid"))
    }

    /// Whether the server binds tokens to DPoP proofs signed with ES256 (RFC 9449 §5.1:
    /// `dpop_signing_alg_values_supported`).
    pub(crate) fn supports_dpop_es256(&self) -> bool {
        self.raw
            .get("dpop_signing_alg_values_supported")
            .and_then(Value::as_array)
            .is_some_and(|algs| {
                algs.iter()
                    .any(|a| a.as_str() == Some(super::dpop::DPOP_ALG))
            })
    }

    /// Whether `prompt=consent` may be sent: the server lists it in `prompt_values_supported`
    /// (OpenID Connect Prompt Create), or lists no prompt values at all.
    pub(crate) fn accepts_prompt_consent(&self) -> bool {
        match self
            .raw
            .get("prompt_values_supported")
            .and_then(Value::as_array)
        {
            Some(values) => values.iter().any(|v| v.as_str() == Some("consent")),
            None => true,
        }
    }

    /// Validates metadata fetched for `issuer` (or stored for it): the `issuer` field must be
    /// the identical string (RFC 8414 §3.3), and every endpoint must pass the URL policy (R34).
    pub(crate) fn from_json(
        http: &Http,
        source: &Url,
        issuer: &IssuerId,
        map: Map<String, Value>,
    ) -> Result<Self, AuthError> {
        let published = map.get("issuer").and_then(Value::as_str);
        if published != Some(issuer.as_str()) {
            return Err(AuthError::IssuerMismatch {
                context: "authorization server metadata",
                expected: issuer.to_string(),
                found: published.map(|s| s.chars().take(200).collect()),
            });
        }
        let endpoint = |field: &str, required: bool| -> Result<Option<Url>, AuthError> {
            let Some(raw) = map.get(field) else {
                return if required {
                    Err(AuthError::InvalidResponse {
                        url: redact(source),
                        reason: format!("metadata has no {field}"),
                    })
                } else {
                    Ok(None)
                };
            };
            let raw = raw.as_str().ok_or_else(|| AuthError::InvalidResponse {
                url: redact(source),
                reason: format!("{field} is not a string"),
            })?;
            let url = Url::parse(raw).map_err(|_| AuthError::UnsafeUrl {
                url: raw.chars().take(100).collect(),
                reason: format!("{field} is not an absolute URL"),
            })?;
            http.check_url(&url)?;
            Ok(Some(url))
        };
        let authorization_endpoint = endpoint("authorization_endpoint", true)?;
        let token_endpoint = endpoint("token_endpoint", true)?;
        let (Some(authorization_endpoint), Some(token_endpoint)) =
            (authorization_endpoint, token_endpoint)
        else {
            return Err(AuthError::InvalidResponse {
                url: redact(source),
                reason: "metadata lacks authorization or token endpoint".to_owned(),
            });
        };
        Ok(Self {
            issuer: issuer.clone(),
            authorization_endpoint,
            token_endpoint,
            registration_endpoint: endpoint("registration_endpoint", false)?,
            revocation_endpoint: endpoint("revocation_endpoint", false)?,
            device_authorization_endpoint: endpoint("device_authorization_endpoint", false)?,
            code_challenge_methods: string_list(&map, "code_challenge_methods_supported"),
            iss_parameter_supported: map
                .get("authorization_response_iss_parameter_supported")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            cimd_supported: map
                .get("client_id_metadata_document_supported")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            scopes_supported: string_list(&map, "scopes_supported"),
            raw: map,
        })
    }

    /// 2025-03-26 default endpoints for a server with no metadata at all (`/authorize`,
    /// `/token`, `/register` on the issuer's origin). PKCE S256 is mandatory there.
    pub(crate) fn legacy_defaults(http: &Http, issuer: &IssuerId) -> Result<Self, AuthError> {
        let origin = issuer.url().origin().ascii_serialization();
        let mut map = Map::new();
        map.insert("issuer".to_owned(), Value::String(issuer.to_string()));
        for (field, path) in [
            ("authorization_endpoint", "/authorize"),
            ("token_endpoint", "/token"),
            ("registration_endpoint", "/register"),
        ] {
            map.insert(field.to_owned(), Value::String(format!("{origin}{path}")));
        }
        map.insert(
            "code_challenge_methods_supported".to_owned(),
            Value::from(vec!["S256"]),
        );
        map.insert("x-mcp-auth-legacy".to_owned(), Value::Bool(true));
        Self::from_json(http, issuer.url(), issuer, map)
    }

    /// The token endpoint authentication methods the AS lists, if it does.
    pub(crate) fn auth_methods(&self) -> Option<Vec<String>> {
        string_list(&self.raw, "token_endpoint_auth_methods_supported")
    }

    /// Whether `grant_types_supported` lists `grant`.
    pub(crate) fn supports_grant(&self, grant: &str) -> bool {
        string_list(&self.raw, "grant_types_supported")
            .is_some_and(|g| g.iter().any(|g| g == grant))
    }

    /// R7/R8: authorization needs advertised `S256`.
    pub(crate) fn supports_s256(&self) -> bool {
        self.code_challenge_methods
            .as_ref()
            .is_some_and(|m| m.iter().any(|m| m == "S256"))
    }
}

/// Fetches and validates the metadata of `issuer`, trying [`metadata_urls`] in order. A
/// document whose `issuer` differs is an error, not a reason to try the next URL: its data must
/// not be used (R6).
pub(crate) async fn discover_server_metadata(
    http: &Http,
    issuer: &IssuerId,
) -> Result<ServerMetadata, AuthError> {
    let span = info_span!("discover_server_metadata", issuer = %issuer);
    async {
        let mut last = None;
        for url in metadata_urls(issuer) {
            debug!(url = %redact(&url), "fetching authorization server metadata");
            let fetched = http.get(&url, true).await?;
            if fetched.status == 200 {
                return ServerMetadata::from_json(http, &url, issuer, fetched.json_object()?);
            }
            last = Some(format!("{} returned {}", redact(&url), fetched.status));
        }
        Err(AuthError::Discovery {
            url: issuer.to_string(),
            reason: format!(
                "no authorization server metadata ({})",
                last.unwrap_or_default()
            ),
        })
    }
    .instrument(span)
    .await
}

impl McpAuth {
    /// PRM from the challenge URL or the well-known locations; for a 2025-03-26 server that has
    /// none at all (and no challenge URL), the synthesised legacy document.
    pub(super) async fn resource_metadata(
        &self,
        resource: &ResourceUri,
        challenge_url: Option<&str>,
    ) -> Result<ResourceMetadata, AuthError> {
        // Only "none published" (every location 404) falls back; a server error never makes the
        // origin the authorization server.
        match find_resource_metadata(&self.http, resource, challenge_url).await? {
            Found::Metadata(prm) => Ok(prm),
            Found::NotFound(_) if challenge_url.is_none() && self.config.legacy_discovery => {
                // The origin becomes the authorization server only for a server that does ask
                // for credentials: a site that is no MCP server (or needs no authorization)
                // must never receive a client registration.
                let status = self.http.probe_mcp(resource.url()).await?;
                if status != 401 {
                    return Err(AuthError::NotProtected {
                        resource: resource.to_string(),
                        status,
                    });
                }
                debug!(resource = %resource, "no protected resource metadata; using the 2025-03-26 fallback");
                Ok(ResourceMetadata::legacy(resource))
            }
            Found::NotFound(reason) => Err(AuthError::Discovery {
                url: resource.to_string(),
                reason: format!("no protected resource metadata ({reason})"),
            }),
        }
    }

    pub(super) fn stored_metadata(
        &self,
        binding: &ResourceBinding,
    ) -> Result<ServerMetadata, AuthError> {
        let source = binding.issuer.url().clone();
        ServerMetadata::from_json(
            &self.http,
            &source,
            &binding.issuer,
            binding.authorization_server_metadata.clone(),
        )
    }

    pub(super) fn issuer_from(&self, prm: &ResourceMetadata) -> Result<IssuerId, AuthError> {
        // R3: the AS comes only from the PRM. The first listed is used.
        let raw = &prm.authorization_servers[0];
        let issuer = IssuerId::new(raw.as_str()).map_err(|e| AuthError::Discovery {
            url: prm.resource.to_string(),
            reason: format!("authorization server {e}"),
        })?;
        // R35: refuse private/link-local issuers before any request goes there.
        self.http.check_url(issuer.url())?;
        Ok(issuer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let c = Challenge::parse(
            r#"Bearer resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp", scope="files:read files:write""#,
        );
        assert_eq!(
            c.resource_metadata.as_deref(),
            Some("https://mcp.example.com/.well-known/oauth-protected-resource/mcp")
        );
        assert_eq!(c.scopes(), vec!["files:read", "files:write"]);
        let c = Challenge::parse(
            r#"DPoP algs="ES256", Bearer error="insufficient_scope", scope="a b""#,
        );
        assert_eq!(c.error.as_deref(), Some("insufficient_scope"));
        assert_eq!(c.scopes(), vec!["a", "b"]);
        let c = Challenge::parse(
            r#"DPoP error="use_dpop_nonce", resource_metadata="https://r/.well-known/x", Bearer error="invalid_token""#,
        );
        assert!(c.is_dpop_nonce());
        assert_eq!(
            c.resource_metadata.as_deref(),
            Some("https://r/.well-known/x")
        );
        let c = Challenge::parse(r#"Basic realm="x", scope="nope""#);
        assert_eq!(c, Challenge::default());
        let c = Challenge::parse(r#"bearer scope=unquoted , error="a \"q\" b""#);
        assert_eq!(c.scope.as_deref(), Some("unquoted"));
        assert_eq!(c.error.as_deref(), Some(r#"a "q" b"#));
    }

    #[test]
    fn malformed_challenges_never_panic() {
        for raw in [
            "",
            "Bearer",
            "Bearer ,,,",
            "Bearer =",
            "Bearer scope=\"unterminated",
            "Bearer \"\"\"",
            "=====",
            "Bearer resource_metadata",
            "\u{0}\u{1}",
            "Bearer a=b=c, ,=d",
            "é=ü, Bearer ☃=\"x\"",
        ] {
            let _ = Challenge::parse(raw);
        }
    }

    #[test]
    fn metadata_probe_order() {
        let with_path = IssuerId::new("https://auth.example.com/tenant1/").unwrap();
        let urls: Vec<String> = metadata_urls(&with_path)
            .iter()
            .map(Url::to_string)
            .collect();
        assert_eq!(
            urls,
            vec![
                "https://auth.example.com/.well-known/oauth-authorization-server/tenant1",
                "https://auth.example.com/.well-known/openid-configuration/tenant1",
                "https://auth.example.com/tenant1/.well-known/openid-configuration",
            ]
        );
        let root = IssuerId::new("https://auth.example.com").unwrap();
        let urls: Vec<String> = metadata_urls(&root).iter().map(Url::to_string).collect();
        assert_eq!(
            urls,
            vec![
                "https://auth.example.com/.well-known/oauth-authorization-server",
                "https://auth.example.com/.well-known/openid-configuration",
            ]
        );
    }

    #[test]
    fn resource_coverage() {
        let r = |s| ResourceUri::new(s).unwrap();
        assert!(resource_covers(
            &r("https://a.example/mcp"),
            &r("https://a.example/mcp")
        ));
        assert!(resource_covers(
            &r("https://a.example"),
            &r("https://a.example/mcp")
        ));
        assert!(!resource_covers(
            &r("https://a.example/mc"),
            &r("https://a.example/mcp")
        ));
        assert!(!resource_covers(
            &r("https://b.example"),
            &r("https://a.example/mcp")
        ));
        assert!(!resource_covers(
            &r("https://a.example/mcp/x"),
            &r("https://a.example/mcp")
        ));
    }
}
