//! Every outbound request goes through here: scheme allowlist, SSRF policy (checked on IP
//! literals and on every DNS answer, so a hostname cannot smuggle a private address), a timeout,
//! a response-size limit, and no redirect following except same-origin ones where the caller
//! allows them.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, LOCATION};
use serde_json::Value;
use url::{Host, Url};

use super::error::AuthError;

/// Limits and address policy for every request the engine makes.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HttpPolicy {
    /// Whole-request timeout (connect, headers and body). Default 10 s.
    pub timeout: Duration,
    /// Largest response body accepted. Default 1 MiB.
    pub max_response_bytes: usize,
    /// Allow `http://` to loopback hosts and loopback addresses (tests, local development).
    /// Default false: only `https` to public addresses.
    pub allow_loopback: bool,
    /// Allow private, link-local, carrier-grade-NAT and other non-public addresses. Default false.
    pub allow_private: bool,
    /// Same-origin redirects followed when fetching metadata. Default 3.
    pub max_redirects: usize,
}

impl Default for HttpPolicy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_response_bytes: 1024 * 1024,
            allow_loopback: false,
            allow_private: false,
            max_redirects: 3,
        }
    }
}

impl HttpPolicy {
    /// The default policy plus loopback access (for tests against a local server).
    pub fn allowing_loopback() -> Self {
        Self {
            allow_loopback: true,
            ..Self::default()
        }
    }

    /// Sets the timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the response-size limit.
    pub fn with_max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response_bytes = bytes;
        self
    }

    /// Why `ip` may not be contacted, if it may not.
    fn refuse_ip(&self, ip: IpAddr) -> Option<&'static str> {
        let ip = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        if ip.is_loopback() {
            return (!self.allow_loopback).then_some("loopback address");
        }
        if ip.is_unspecified() || ip.is_multicast() {
            return Some("unspecified or multicast address");
        }
        let private = match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                v4.is_private()
                    || v4.is_link_local()
                    || v4.is_broadcast()
                    || v4.is_documentation()
                    || o[0] == 0
                    || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10
                    || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24
                    || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15
                    || o[0] >= 240
            }
            IpAddr::V6(v6) => {
                let s = v6.segments();
                (s[0] & 0xfe00) == 0xfc00 // unique local
                    || (s[0] & 0xffc0) == 0xfe80 // link-local
                    || (s[0] & 0xffc0) == 0xfec0 // site-local
                    || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                    || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64
            }
        };
        (private && !self.allow_private).then_some("private or link-local address")
    }
}

/// The URL without query or fragment, for messages and logs (queries carry state, codes and
/// challenges).
pub(crate) fn redact(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// A DNS resolver that drops addresses the policy forbids, so a hostname cannot resolve to a
/// private address behind the policy's back.
struct PolicyResolver {
    policy: HttpPolicy,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| policy.refuse_ip(a.ip()).is_none())
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no address this policy allows").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A response read within the limits.
/// Whether a failed request may have reached the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// It never left this process (refused by policy, or no connection was made).
    NotSent,
    /// It may have been read and acted on: the answer was lost, late or cut short.
    Unknown,
}

pub(crate) struct Fetched {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
    pub(crate) url: Url,
}

impl Fetched {
    /// The body as a JSON object.
    pub(crate) fn json_object(&self) -> Result<serde_json::Map<String, Value>, AuthError> {
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(AuthError::InvalidResponse {
                url: redact(&self.url),
                reason: "expected a JSON object".to_owned(),
            }),
            Err(e) => Err(AuthError::InvalidResponse {
                url: redact(&self.url),
                reason: format!("malformed JSON at line {} column {}", e.line(), e.column()),
            }),
        }
    }
}

/// The engine's HTTP client.
#[derive(Clone)]
pub(crate) struct Http {
    client: reqwest::Client,
    policy: Arc<HttpPolicy>,
}

impl fmt::Debug for Http {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http")
            .field("policy", &self.policy)
            .finish()
    }
}

impl Http {
    pub(crate) fn new(policy: HttpPolicy) -> Result<Self, AuthError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(policy.timeout)
            .connect_timeout(policy.timeout)
            .user_agent(concat!("mcp-auth/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(PolicyResolver {
                policy: policy.clone(),
            }))
            .build()
            .map_err(|e| AuthError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            client,
            policy: Arc::new(policy),
        })
    }

    /// Refuses anything but `https` (or `http` to loopback when allowed) and forbidden IP
    /// literals. Hostnames are checked again at resolution.
    pub(crate) fn check_url(&self, url: &Url) -> Result<(), AuthError> {
        let refuse = |reason: &str| AuthError::UnsafeUrl {
            url: redact(url),
            reason: reason.to_owned(),
        };
        let host = url.host().ok_or_else(|| refuse("no host"))?;
        let loopback_host = match &host {
            Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
            Host::Ipv4(ip) => ip.is_loopback(),
            Host::Ipv6(ip) => ip.is_loopback(),
        };
        match url.scheme() {
            "https" => {}
            "http" if loopback_host && self.policy.allow_loopback => {}
            "http" => {
                return Err(refuse(
                    "plain http is only allowed to loopback in test mode",
                ));
            }
            other => return Err(refuse(&format!("scheme {other:?} is not allowed"))),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refuse("URL carries credentials"));
        }
        let literal = match host {
            Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
            Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
            Host::Domain(d)
                if d.eq_ignore_ascii_case("localhost") && !self.policy.allow_loopback =>
            {
                return Err(refuse("loopback address"));
            }
            Host::Domain(_) => None,
        };
        if let Some(reason) = literal.and_then(|ip| self.policy.refuse_ip(ip)) {
            return Err(refuse(reason));
        }
        Ok(())
    }

    /// GET `url` accepting JSON; follows up to `max_redirects` same-origin redirects when
    /// `follow_same_origin`, refuses cross-origin ones.
    pub(crate) async fn get(
        &self,
        url: &Url,
        follow_same_origin: bool,
    ) -> Result<Fetched, AuthError> {
        let mut current = url.clone();
        for _ in 0..=self.policy.max_redirects {
            let fetched = self
                .send(
                    self.client
                        .get(current.clone())
                        .header("Accept", "application/json"),
                    &current,
                )
                .await?;
            if !(300..400).contains(&fetched.status) {
                return Ok(fetched);
            }
            let next = fetched
                .headers
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|loc| current.join(loc).ok())
                .ok_or_else(|| AuthError::InvalidResponse {
                    url: redact(&current),
                    reason: format!("redirect {} without a valid Location", fetched.status),
                })?;
            if !follow_same_origin || next.origin() != url.origin() {
                return Err(AuthError::UnsafeUrl {
                    url: redact(&next),
                    reason: format!(
                        "{} redirected to another origin; not followed",
                        redact(&current)
                    ),
                });
            }
            current = next;
        }
        Err(AuthError::InvalidResponse {
            url: redact(url),
            reason: "too many redirects".to_owned(),
        })
    }

    /// POST an `application/x-www-form-urlencoded` body, optionally with HTTP Basic client
    /// authentication (already form-encoded as RFC 6749 §2.3.1 requires).
    pub(crate) async fn post_form(
        &self,
        url: &Url,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> Result<Fetched, AuthError> {
        let mut request = self
            .client
            .post(url.clone())
            .header("Accept", "application/json")
            .form(form);
        if let Some((id, secret)) = basic {
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            request = request.basic_auth(enc(id), Some(enc(secret)));
        }
        self.send(request, url).await
    }

    /// [`Http::post_form`] with its own whole-request `timeout`, telling a failure that happened
    /// before the request left (nothing reached the server: [`Delivery::NotSent`]) from one
    /// after (the server may have acted on it: [`Delivery::Unknown`]).
    pub(crate) async fn post_form_classified(
        &self,
        url: &Url,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
        timeout: Duration,
    ) -> Result<Fetched, (AuthError, Delivery)> {
        self.check_url(url).map_err(|e| (e, Delivery::NotSent))?;
        let mut request = self
            .client
            .post(url.clone())
            .header("Accept", "application/json")
            .timeout(timeout)
            .form(form);
        if let Some((id, secret)) = basic {
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            request = request.basic_auth(enc(id), Some(enc(secret)));
        }
        self.send_classified(request, url, timeout).await
    }

    /// POST a JSON body.
    pub(crate) async fn post_json(&self, url: &Url, body: &Value) -> Result<Fetched, AuthError> {
        self.send(
            self.client
                .post(url.clone())
                .header("Accept", "application/json")
                .json(body),
            url,
        )
        .await
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &Url,
    ) -> Result<Fetched, AuthError> {
        self.check_url(url)?;
        self.send_classified(request, url, self.policy.timeout)
            .await
            .map_err(|(e, _)| e)
    }

    async fn send_classified(
        &self,
        request: reqwest::RequestBuilder,
        url: &Url,
        timeout: Duration,
    ) -> Result<Fetched, (AuthError, Delivery)> {
        let after_send = |e| (e, Delivery::Unknown);
        let work = async {
            let response = request.send().await.map_err(|e| {
                // A connection that was never made carried nothing; any other failure may
                // have come after the server read the request.
                let delivery = if e.is_connect() {
                    Delivery::NotSent
                } else {
                    Delivery::Unknown
                };
                (self.transport_error(url, e), delivery)
            })?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let limit = self.policy.max_response_bytes;
            if response
                .content_length()
                .is_some_and(|len| len > limit as u64)
            {
                return Err(after_send(AuthError::ResponseTooLarge {
                    url: redact(url),
                    limit,
                }));
            }
            let mut response = response;
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| after_send(self.transport_error(url, e)))?
            {
                if body.len() + chunk.len() > limit {
                    return Err(after_send(AuthError::ResponseTooLarge {
                        url: redact(url),
                        limit,
                    }));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Fetched {
                status,
                headers,
                body,
                url: url.clone(),
            })
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => Err((AuthError::Timeout { url: redact(url) }, Delivery::Unknown)),
        }
    }

    fn transport_error(&self, url: &Url, e: reqwest::Error) -> AuthError {
        if e.is_timeout() {
            return AuthError::Timeout { url: redact(url) };
        }
        // reqwest errors can embed the URL (with its query); keep only the cause chain.
        let mut reason = String::new();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            if !reason.is_empty() {
                reason.push_str(": ");
            }
            reason.push_str(&s.to_string());
            source = s.source();
        }
        if reason.is_empty() {
            reason = "connection failed".to_owned();
        }
        AuthError::Http {
            url: redact(url),
            source: reason.into(),
        }
    }
}
