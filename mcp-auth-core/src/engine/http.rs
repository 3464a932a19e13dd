//! Every outbound request goes through here: scheme allowlist, SSRF policy (checked on IP
//! literals and on every DNS answer, so a hostname cannot smuggle a private address), a timeout,
//! a response-size limit, and no redirect following except same-origin ones where the caller
//! allows them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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
    /// Allow private, link-local, carrier-grade-NAT and other non-public addresses (an MCP
    /// server on `10.x` inside a company). Default false. Together with `allow_loopback`,
    /// plain `http://` is also allowed to such servers — only to them: a plain-http host name
    /// must resolve to loopback or private addresses, never a public one.
    pub allow_private: bool,
    /// Send `https` requests through the proxy the standard environment variables name
    /// (`HTTPS_PROXY`, `ALL_PROXY`, `HTTP_PROXY` and `NO_PROXY`, upper or lower case). Default
    /// false: those variables are ignored. The proxy's own address is exempt from the address
    /// policy (it is the user's choice, often on a private network); IP-literal targets are
    /// still checked, but the proxy resolves host names itself, so the DNS-answer check cannot
    /// see where a name leads. Plain-http requests (loopback and private servers) never go
    /// through the proxy.
    pub use_system_proxy: bool,
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
            use_system_proxy: false,
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

    /// Also allows private-network addresses ([`HttpPolicy::allow_private`]).
    pub fn allowing_private_network(mut self) -> Self {
        self.allow_private = true;
        self
    }

    /// Sends `https` requests through the system proxy ([`HttpPolicy::use_system_proxy`]).
    pub fn using_system_proxy(mut self) -> Self {
        self.use_system_proxy = true;
        self
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

    /// Why `ip` may not be contacted, if it may not. IPv6 forms that carry an IPv4 address
    /// (mapped, compatible, translated, NAT64, 6to4, Teredo, ISATAP) are judged by every IPv4
    /// address they carry as well, since a relay or translator on the path may deliver to it.
    fn refuse_ip(&self, ip: IpAddr) -> Option<&'static str> {
        let v6 = match ip {
            IpAddr::V4(v4) => return self.refuse_class(ipv4_class(v4), false),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                // ::ffff:a.b.c.d is the IPv4 address itself on a dual-stack socket.
                Some(v4) => return self.refuse_class(ipv4_class(v4), false),
                None => v6,
            },
        };
        if let Some(reason) = self.refuse_class(ipv6_class(v6), false) {
            return Some(reason);
        }
        let embedded = embedded_ipv4(v6);
        if let Some(reason) = embedded
            .exact
            .iter()
            .flatten()
            .find_map(|&v4| self.refuse_class(ipv4_class(v4), true))
        {
            return Some(reason);
        }
        // NAT64 local-use prefixes (RFC 8215) have an operator-chosen length, so the IPv4
        // address may sit at any RFC 6052 position; the range itself is non-global (refused
        // unless private addresses are allowed), and none of the positions may be loopback.
        embedded
            .possible
            .iter()
            .flatten()
            .find_map(|&v4| match ipv4_class(v4) {
                AddressClass::Loopback => self.refuse_class(AddressClass::Loopback, true),
                _ => None,
            })
    }

    /// Whether `ip` is a globally reachable address (by its own range and every IPv4 address
    /// it may carry).
    fn is_public(&self, ip: IpAddr) -> bool {
        let strict = HttpPolicy {
            allow_loopback: false,
            allow_private: false,
            ..self.clone()
        };
        strict.refuse_ip(ip).is_none()
    }

    fn refuse_class(&self, class: AddressClass, embedded: bool) -> Option<&'static str> {
        match class {
            AddressClass::Public => None,
            AddressClass::Loopback if self.allow_loopback => None,
            AddressClass::Private if self.allow_private => None,
            AddressClass::Loopback if embedded => {
                Some("IPv6 address carrying a loopback IPv4 address")
            }
            AddressClass::Loopback => Some("loopback address"),
            AddressClass::Private if embedded => {
                Some("IPv6 address carrying a private or link-local IPv4 address")
            }
            AddressClass::Private => Some("private or link-local address"),
            AddressClass::Never if embedded => {
                Some("IPv6 address carrying an unspecified, broadcast or multicast IPv4 address")
            }
            AddressClass::Never => Some("unspecified, broadcast or multicast address"),
        }
    }
}

/// What the address policy makes of an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AddressClass {
    /// Globally reachable: always allowed.
    Public,
    /// This host: allowed only with `allow_loopback`.
    Loopback,
    /// Private, link-local (cloud metadata), carrier-grade NAT, documentation, benchmarking,
    /// reserved: allowed only with `allow_private`.
    Private,
    /// Unspecified (which reaches this host), broadcast, multicast: never.
    Never,
}

fn ipv4_class(v4: Ipv4Addr) -> AddressClass {
    let o = v4.octets();
    let reserved = o[0] >= 240; // 240.0.0.0/4 (255.255.255.255 is caught before as broadcast)
    if v4.is_loopback() {
        AddressClass::Loopback
    } else if o[0] == 0 || v4.is_broadcast() || v4.is_multicast() {
        // 0.0.0.0/8 "this network" (0.0.0.0 reaches this host).
        AddressClass::Never
    } else if v4.is_private()
        || v4.is_link_local() // 169.254.0.0/16, cloud metadata
        || v4.is_documentation()
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10 carrier-grade NAT
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24 protocol assignments
        || (o[0] == 192 && o[1] == 88 && o[2] == 99) // 192.88.99.0/24 6to4 relay anycast
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15 benchmarking
        || reserved
    {
        AddressClass::Private
    } else {
        AddressClass::Public
    }
}

/// The class of an IPv6 address by its own range (the IPv4 addresses it carries are judged
/// separately, by [`embedded_ipv4`]).
fn ipv6_class(v6: Ipv6Addr) -> AddressClass {
    let s = v6.segments();
    if v6.is_loopback() {
        AddressClass::Loopback
    } else if v6.is_unspecified() || v6.is_multicast() {
        AddressClass::Never
    } else if (s[0] & 0xfe00) == 0xfc00 // fc00::/7 unique local
        || (s[0] & 0xffc0) == 0xfe80 // fe80::/10 link-local
        || (s[0] & 0xffc0) == 0xfec0 // fec0::/10 site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // 2001:db8::/32 documentation
        || (s[0] & 0xfff0) == 0x3ff0 // 3fff::/20 documentation (RFC 9637)
        || (s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0) // 100::/64 discard-only
        || (s[0] == 0x2001 && s[1] == 0x0002 && s[2] == 0) // 2001:2::/48 benchmarking
        || (s[0] == 0x2001 && (s[1] & 0xffe0) == 0x0020) // 2001:20::/28 ORCHIDv2
        || (s[0] == 0x2001 && (s[1] & 0xfff0) == 0x0010) // 2001:10::/28 ORCHID (deprecated)
        // 64:ff9b::/32 outside the well-known /96 (this covers 64:ff9b:1::/48 local-use).
        || (s[0] == 0x0064 && s[1] == 0xff9b && s[2..6] != [0, 0, 0, 0])
    {
        AddressClass::Private
    } else {
        AddressClass::Public
    }
}

/// IPv4 addresses an IPv6 address carries.
struct EmbeddedIpv4 {
    /// Addresses at a position fixed by the address form.
    exact: [Option<Ipv4Addr>; 3],
    /// Every position an address may occupy under a NAT64 local-use prefix.
    possible: [Option<Ipv4Addr>; 4],
}

fn embedded_ipv4(v6: Ipv6Addr) -> EmbeddedIpv4 {
    let s = v6.segments();
    let b = v6.octets();
    let v4 = |i: usize| Some(Ipv4Addr::new(b[i], b[i + 1], b[i + 2], b[i + 3]));
    let mut exact = [None; 3];
    let mut possible = [None; 4];
    if s[..6] == [0; 6] && !v6.is_unspecified() && !v6.is_loopback() {
        // ::a.b.c.d IPv4-compatible (deprecated, RFC 4291 §2.5.5.1).
        exact[0] = v4(12);
    } else if s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0 {
        // ::ffff:0:a.b.c.d IPv4-translated (RFC 2765).
        exact[0] = v4(12);
    } else if s[0] == 0x0064 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        // 64:ff9b::a.b.c.d NAT64 well-known prefix (RFC 6052).
        exact[0] = v4(12);
    } else if s[0] == 0x0064 && s[1] == 0xff9b && s[2] == 0x0001 {
        // 64:ff9b:1::/48 NAT64 local-use (RFC 8215), prefix /48, /56, /64 or /96 (RFC 6052
        // §2.2: the octet at bits 64..72 is skipped).
        possible = [
            Some(Ipv4Addr::new(b[6], b[7], b[9], b[10])),
            Some(Ipv4Addr::new(b[7], b[9], b[10], b[11])),
            v4(9),
            v4(12),
        ];
    } else if s[0] == 0x2002 {
        // 2002:a.b.c.d::/48 6to4 (RFC 3056).
        exact[0] = v4(2);
    } else if s[0] == 0x2001 && s[1] == 0 {
        // 2001:0:SERVER:flags:port:CLIENT Teredo (RFC 4380); the client address is inverted.
        exact[0] = v4(4);
        exact[1] = Some(!Ipv4Addr::new(b[12], b[13], b[14], b[15]));
    }
    if (s[4] & 0xfdff) == 0 && s[5] == 0x5efe {
        // PREFIX::0:5efe:a.b.c.d / PREFIX::200:5efe:a.b.c.d ISATAP (RFC 5214), any prefix.
        exact[2] = v4(12);
    }
    EmbeddedIpv4 { exact, possible }
}

/// The URL without query or fragment, for messages and logs (queries carry state, codes and
/// challenges).
pub(crate) fn redact(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// Host names of the proxies the standard environment variables name (IP-literal proxies
/// need no resolution).
fn system_proxy_hosts() -> Vec<String> {
    [
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "HTTP_PROXY",
        "http_proxy",
    ]
    .iter()
    .filter_map(|name| std::env::var(name).ok())
    .filter_map(|value| {
        let value = value.trim();
        let with_scheme = if value.contains("://") {
            value.to_owned()
        } else {
            format!("http://{value}")
        };
        Url::parse(&with_scheme)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
    })
    .collect()
}

/// A DNS resolver that drops addresses the policy forbids, so a hostname cannot resolve to a
/// private address behind the policy's back.
struct PolicyResolver {
    policy: HttpPolicy,
    /// Plain-http requests: public addresses are refused too (plaintext stays off the
    /// internet).
    refuse_public: bool,
    /// Host names of the system proxy, resolved without the address policy.
    exempt: Arc<[String]>,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        let exempt = self.exempt.iter().any(|h| h.eq_ignore_ascii_case(&host));
        let refuse_public = self.refuse_public;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| {
                    exempt
                        || (policy.refuse_ip(a.ip()).is_none()
                            && !(refuse_public && policy.is_public(a.ip())))
                })
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
    /// Built on the first request, not before: building loads the system's CA certificates
    /// (hundreds of file reads), which a process that answers from the store never needs.
    client: std::sync::OnceLock<Result<reqwest::Client, String>>,
    /// For plain-http requests (loopback and private servers only): never proxied, and its
    /// resolver refuses public addresses.
    plain_client: std::sync::OnceLock<Result<reqwest::Client, String>>,
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
        Ok(Self {
            client: std::sync::OnceLock::new(),
            plain_client: std::sync::OnceLock::new(),
            policy: Arc::new(policy),
        })
    }

    /// The client for `url`, built once, on first use.
    fn client(&self, url: &Url) -> Result<&reqwest::Client, AuthError> {
        let plain = url.scheme() == "http";
        let cell = if plain {
            &self.plain_client
        } else {
            &self.client
        };
        cell.get_or_init(|| self.build_client(plain))
            .as_ref()
            .map_err(|e| AuthError::Config(format!("cannot build the HTTP client: {e}")))
    }

    fn build_client(&self, plain: bool) -> Result<reqwest::Client, String> {
        let proxied = self.policy.use_system_proxy && !plain;
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(self.policy.timeout)
            .connect_timeout(self.policy.timeout)
            .user_agent(concat!("mcp-auth/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(PolicyResolver {
                policy: (*self.policy).clone(),
                refuse_public: plain,
                exempt: if proxied {
                    system_proxy_hosts().into()
                } else {
                    Arc::from([])
                },
            }));
        if !proxied {
            builder = builder.no_proxy();
        }
        builder.build().map_err(|e| e.to_string())
    }

    /// Refuses anything but `https` (or `http` to loopback when allowed) and forbidden IP
    /// literals. Hostnames are checked again at resolution.
    pub(crate) fn check_url(&self, url: &Url) -> Result<(), AuthError> {
        self.policy.check_url(url)
    }
}

impl HttpPolicy {
    /// Whether the engine may send a request to `url`: `https`, or plain `http` to loopback
    /// (`allow_loopback`) or to a private network (`allow_private` too), with no credentials in
    /// the URL and no IP literal the policy refuses. Host names are checked again when they
    /// are resolved (every DNS answer), so a name cannot lead to an address refused here.
    ///
    /// # Errors
    /// [`AuthError::UnsafeUrl`] naming the reason and the setting that would allow it.
    pub fn check_url(&self, url: &Url) -> Result<(), AuthError> {
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
        let public_literal = match &host {
            Host::Ipv4(ip) => self.is_public(IpAddr::V4(*ip)),
            Host::Ipv6(ip) => self.is_public(IpAddr::V6(*ip)),
            Host::Domain(_) => false,
        };
        match url.scheme() {
            "https" => {}
            "http" if loopback_host && self.allow_loopback => {}
            // A host name is resolved by the plain-http client, which refuses public addresses.
            "http" if self.allow_loopback && self.allow_private && !public_literal => {}
            "http" if self.allow_loopback => {
                return Err(refuse(
                    "plain http is allowed to loopback servers only (and to private-network \
                     servers with HttpPolicy::allow_private, CLI --allow-private-network); use \
                     https",
                ));
            }
            "http" => {
                return Err(refuse(
                    "plain http is refused; for a server on this machine allow it with \
                     HttpPolicy::allow_loopback (CLI --allow-http), otherwise use https",
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
            Host::Domain(d) if d.eq_ignore_ascii_case("localhost") && !self.allow_loopback => {
                return Err(refuse("loopback address"));
            }
            Host::Domain(_) => None,
        };
        if let Some(reason) = literal.and_then(|ip| self.refuse_ip(ip)) {
            return Err(refuse(reason));
        }
        Ok(())
    }
}

impl Http {
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
                    self.client(&current)?
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

    /// GET `url` as a browser would (the authorization endpoint), following no redirect: the
    /// caller decides where a redirect may lead. Same checks and limits as every request.
    #[cfg(feature = "headless")]
    pub(crate) async fn get_page(&self, url: &Url) -> Result<Fetched, AuthError> {
        self.send(
            self.client(url)?
                .get(url.clone())
                .header("Accept", "text/html,application/xhtml+xml"),
            url,
        )
        .await
    }

    /// POST an `application/x-www-form-urlencoded` body, optionally with HTTP Basic client
    /// authentication (already form-encoded as RFC 6749 §2.3.1 requires).
    pub(crate) async fn post_form(
        &self,
        url: &Url,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> Result<Fetched, AuthError> {
        self.post_form_with_headers(url, form, basic, &[]).await
    }

    /// [`Http::post_form`] with extra request headers (a `DPoP` proof).
    pub(crate) async fn post_form_with_headers(
        &self,
        url: &Url,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
        headers: &[(&str, String)],
    ) -> Result<Fetched, AuthError> {
        let mut request = self
            .client(url)?
            .post(url.clone())
            .header("Accept", "application/json")
            .form(form);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
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
        headers: &[(&str, String)],
        timeout: Duration,
    ) -> Result<Fetched, (AuthError, Delivery)> {
        self.check_url(url).map_err(|e| (e, Delivery::NotSent))?;
        let mut request = self
            .client(url)
            .map_err(|e| (e, Delivery::NotSent))?
            .post(url.clone())
            .header("Accept", "application/json")
            .timeout(timeout)
            .form(form);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some((id, secret)) = basic {
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            request = request.basic_auth(enc(id), Some(enc(secret)));
        }
        self.send_classified(request, url, timeout).await
    }

    /// POST a JSON body.
    /// The status an MCP endpoint answers to an `initialize` request without credentials (the
    /// body is not read: a server may answer with an open event stream).
    pub(crate) async fn probe_mcp(&self, url: &Url) -> Result<u16, AuthError> {
        self.check_url(url)?;
        let body = serde_json::json!({
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-03-26",
                "capabilities": {},
                "clientInfo": {"name": "mcp-auth", "version": env!("CARGO_PKG_VERSION")},
            },
        });
        let response = self
            .client(url)?
            .post(url.clone())
            .header("Accept", "application/json, text/event-stream")
            .json(&body)
            .send()
            .await
            .map_err(|e| self.transport_error(url, e))?;
        Ok(response.status().as_u16())
    }

    pub(crate) async fn post_json(&self, url: &Url, body: &Value) -> Result<Fetched, AuthError> {
        self.send(
            self.client(url)?
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// Which of the four policies (default, loopback, private, both) let an address through.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Class {
        /// Every policy.
        Public,
        /// Only policies with `allow_loopback`.
        Loopback,
        /// Only policies with `allow_private`.
        Private,
        /// Only the policy allowing both (a non-public range embedding a loopback address).
        Both,
        /// No policy: unspecified, multicast, broadcast, "this network".
        Never,
    }

    fn policies() -> [(bool, bool); 4] {
        [(false, false), (true, false), (false, true), (true, true)]
    }

    fn allowed(class: Class, (loopback, private): (bool, bool)) -> bool {
        match class {
            Class::Public => true,
            Class::Loopback => loopback,
            Class::Private => private,
            Class::Both => loopback && private,
            Class::Never => false,
        }
    }

    /// Every address form, and what each policy must do with it. Pure: nothing is contacted.
    const TABLE: &[(&str, Class)] = &[
        // IPv4
        ("8.8.8.8", Class::Public),
        ("1.1.1.1", Class::Public),
        ("127.0.0.1", Class::Loopback),
        ("127.255.255.254", Class::Loopback),
        ("10.0.0.1", Class::Private),
        ("172.16.0.1", Class::Private),
        ("172.31.255.255", Class::Private),
        ("192.168.1.1", Class::Private),
        ("169.254.169.254", Class::Private), // cloud metadata (link-local)
        ("100.64.0.1", Class::Private),      // carrier-grade NAT
        ("100.100.100.200", Class::Private), // cloud metadata (CGNAT range)
        ("192.0.0.192", Class::Private),     // cloud metadata (IETF protocol assignments)
        ("192.0.2.1", Class::Private),       // documentation
        ("198.51.100.1", Class::Private),    // documentation
        ("203.0.113.1", Class::Private),     // documentation
        ("198.18.0.1", Class::Private),      // benchmarking
        ("192.88.99.1", Class::Private),     // 6to4 relay anycast (deprecated)
        ("240.0.0.1", Class::Private),       // reserved
        ("0.0.0.0", Class::Never),
        ("0.1.2.3", Class::Never),
        ("255.255.255.255", Class::Never),
        ("224.0.0.1", Class::Never),
        ("239.255.255.250", Class::Never),
        // IPv6
        ("2606:4700:4700::1111", Class::Public),
        ("2001:4860:4860::8888", Class::Public),
        ("::1", Class::Loopback),
        ("::", Class::Never),
        ("ff02::1", Class::Never),
        ("ff05::1:3", Class::Never),
        ("ff0e::1", Class::Never),
        ("fc00::1", Class::Private),       // unique local
        ("fd00:ec2::254", Class::Private), // cloud metadata (unique local)
        ("fe80::1", Class::Private),       // link-local
        ("febf:ffff::1", Class::Private),  // link-local
        ("fec0::1", Class::Private),       // site-local (deprecated)
        ("feff::1", Class::Private),       // site-local (deprecated)
        ("2001:db8::1", Class::Private),   // documentation
        ("3fff::1", Class::Private),       // documentation (RFC 9637)
        ("100::1", Class::Private),        // discard-only
        ("2001:2::1", Class::Private),     // benchmarking
        ("2001:20::1", Class::Private),    // ORCHIDv2
        // IPv4-mapped ::ffff:a.b.c.d
        ("::ffff:127.0.0.1", Class::Loopback),
        ("::ffff:10.0.0.1", Class::Private),
        ("::ffff:169.254.169.254", Class::Private),
        ("::ffff:8.8.8.8", Class::Public),
        ("::ffff:0.0.0.0", Class::Never),
        ("::ffff:224.0.0.1", Class::Never),
        // IPv4-compatible ::a.b.c.d (deprecated)
        ("::127.0.0.1", Class::Loopback),
        ("::10.0.0.1", Class::Private),
        ("::169.254.169.254", Class::Private),
        ("::8.8.8.8", Class::Public),
        ("::2", Class::Never), // 0.0.0.2
        // IPv4-translated ::ffff:0:a.b.c.d (RFC 2765)
        ("::ffff:0:127.0.0.1", Class::Loopback),
        ("::ffff:0:10.1.2.3", Class::Private),
        ("::ffff:0:169.254.169.254", Class::Private),
        ("::ffff:0:8.8.8.8", Class::Public),
        // 6to4 2002:V4ADDR::/48
        ("2002:7f00:1::1", Class::Loopback),
        ("2002:a9fe:a9fe::1", Class::Private),
        ("2002:c0a8:101::1", Class::Private),
        ("2002:a00:1:1::1", Class::Private),
        ("2002:808:808::1", Class::Public),
        ("2002::1", Class::Never), // 0.0.0.0
        // Teredo 2001:0:SERVER:flags:port:~CLIENT
        ("2001:0:7f00:1:0:0:f7f7:f7f7", Class::Loopback), // server 127.0.0.1, client 8.8.8.8
        ("2001:0:808:808:0:0:80ff:fffe", Class::Loopback), // client 127.0.0.1
        ("2001:0:808:808:0:0:f5ff:fffe", Class::Private), // client 10.0.0.1
        ("2001:0:808:808:0:0:5601:5601", Class::Private), // client 169.254.169.254
        ("2001:0:a9fe:a9fe:0:0:f7f7:f7f7", Class::Private), // server 169.254.169.254
        ("2001:0:808:808:0:0:fefe:fefe", Class::Public),  // server 8.8.8.8, client 1.1.1.1
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Class::Private), // RFC 4380: client 192.0.2.45
        // NAT64 well-known prefix 64:ff9b::/96 (RFC 6052)
        ("64:ff9b::127.0.0.1", Class::Loopback),
        ("64:ff9b::7f00:1", Class::Loopback),
        ("64:ff9b::10.0.0.1", Class::Private),
        ("64:ff9b::169.254.169.254", Class::Private),
        ("64:ff9b::8.8.8.8", Class::Public),
        ("64:ff9b::0.0.0.0", Class::Never),
        ("64:ff9b:0:1::1", Class::Private), // in 64:ff9b::/32 but not the /96 form
        // NAT64 local-use 64:ff9b:1::/48 (RFC 8215): non-global, any RFC 6052 position
        ("64:ff9b:1::8.8.8.8", Class::Private),
        ("64:ff9b:1::a9fe:a9fe", Class::Private),
        ("64:ff9b:1::127.0.0.1", Class::Both),   // /96
        ("64:ff9b:1:7f00:0:100::", Class::Both), // /48: 127.0.0.1
        ("64:ff9b:1:7f:0:1::", Class::Both),     // /56: 127.0.0.1
        ("64:ff9b:1:0:7f:0:100:0", Class::Both), // /64: 127.0.0.1
        // ISATAP interface identifiers (::0:5efe:V4, ::200:5efe:V4)
        ("2606:4700::5efe:7f00:1", Class::Loopback),
        ("2606:4700::200:5efe:a00:1", Class::Private),
        ("2606:4700::5efe:808:808", Class::Public),
    ];

    #[test]
    fn every_address_form_is_classified_under_every_policy() {
        let mut wrong = Vec::new();
        for &(text, class) in TABLE {
            let ip: IpAddr = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            for (loopback, private) in policies() {
                let policy = HttpPolicy {
                    allow_loopback: loopback,
                    allow_private: private,
                    ..HttpPolicy::default()
                };
                let refused = policy.refuse_ip(ip);
                if refused.is_none() != allowed(class, (loopback, private)) {
                    wrong.push(format!(
                        "{text} ({class:?}) with allow_loopback={loopback} allow_private={private}: {}",
                        refused.map_or("allowed".to_owned(), |r| format!("refused ({r})"))
                    ));
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "{} wrong:\n{}",
            wrong.len(),
            wrong.join("\n")
        );
    }

    /// The same table through `check_url`, as every request sees it (https, so the scheme is
    /// not what refuses): an address refused by the policy is refused before any connection.
    #[test]
    fn check_url_refuses_ip_literals_the_policy_refuses() {
        let http = Http::new(HttpPolicy::default()).unwrap();
        for &(text, class) in TABLE {
            let ip: IpAddr = text.parse().unwrap();
            let host = match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            };
            let url = Url::parse(&format!(
                "https://{host}/.well-known/oauth-protected-resource"
            ))
            .unwrap();
            let result = http.check_url(&url);
            assert_eq!(result.is_ok(), class == Class::Public, "{text}: {result:?}");
            if let Err(e) = result {
                assert!(matches!(e, AuthError::UnsafeUrl { .. }), "{text}: {e:?}");
            }
        }
    }

    fn policy(loopback: bool, private: bool) -> HttpPolicy {
        HttpPolicy {
            allow_loopback: loopback,
            allow_private: private,
            ..HttpPolicy::default()
        }
    }

    #[test]
    fn plain_http_needs_allow_loopback_and_reaches_private_servers_only_with_allow_private() {
        let check =
            |p: HttpPolicy, url: &str| Http::new(p).unwrap().check_url(&Url::parse(url).unwrap());
        for url in [
            "http://127.0.0.1:8080/mcp",
            "http://localhost/mcp",
            "http://[::1]/mcp",
        ] {
            assert!(check(policy(false, false), url).is_err(), "{url}");
            assert!(check(policy(true, false), url).is_ok(), "{url}");
            assert!(check(policy(true, true), url).is_ok(), "{url}");
        }
        for url in [
            "http://10.1.2.3/mcp",
            "http://192.168.1.9:8000/mcp",
            "http://mcp.corp.internal/mcp",
        ] {
            assert!(check(policy(false, false), url).is_err(), "{url}");
            assert!(check(policy(true, false), url).is_err(), "{url}");
            assert!(check(policy(false, true), url).is_err(), "{url}");
            assert!(check(policy(true, true), url).is_ok(), "{url}");
        }
        // Plaintext never goes to a public address, whatever the policy.
        for url in ["http://8.8.8.8/mcp", "http://[2606:4700::1111]/mcp"] {
            assert!(check(policy(true, true), url).is_err(), "{url}");
        }
        // The errors name the switch that allows it.
        let e = check(policy(false, false), "http://127.0.0.1/mcp")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--allow-http"), "{e}");
        let e = check(policy(true, false), "http://10.0.0.1/mcp")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--allow-private-network"), "{e}");
    }

    async fn resolve(resolver: PolicyResolver, name: &str) -> Result<Vec<SocketAddr>, String> {
        use reqwest::dns::Resolve as _;
        let name: reqwest::dns::Name = name.parse().unwrap();
        resolver
            .resolve(name)
            .await
            .map(Iterator::collect)
            .map_err(|e| e.to_string())
    }

    // Names that are IP literals resolve without any network traffic.
    #[tokio::test]
    async fn the_plain_http_resolver_refuses_public_addresses() {
        let plain = |p| PolicyResolver {
            policy: p,
            refuse_public: true,
            exempt: Arc::from([]),
        };
        assert!(resolve(plain(policy(true, true)), "8.8.8.8").await.is_err());
        assert!(resolve(plain(policy(true, true)), "10.0.0.7").await.is_ok());
        assert!(
            resolve(plain(policy(true, false)), "10.0.0.7")
                .await
                .is_err()
        );
        assert!(
            resolve(plain(policy(true, false)), "127.0.0.1")
                .await
                .is_ok()
        );
        let https = PolicyResolver {
            policy: policy(false, false),
            refuse_public: false,
            exempt: Arc::from([]),
        };
        assert!(resolve(https, "8.8.8.8").await.is_ok());
    }

    #[tokio::test]
    async fn the_system_proxy_host_is_exempt_from_the_address_policy() {
        let with = |exempt: &[&str]| PolicyResolver {
            policy: HttpPolicy::default(),
            refuse_public: false,
            exempt: exempt.iter().map(|h| (*h).to_owned()).collect(),
        };
        assert!(resolve(with(&[]), "10.0.0.8").await.is_err());
        assert!(resolve(with(&["10.0.0.8"]), "10.0.0.8").await.is_ok());
        assert!(resolve(with(&["10.0.0.9"]), "10.0.0.8").await.is_err());
    }
}
