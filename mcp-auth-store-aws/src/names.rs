//! Secret names: `<prefix>/<namespace part>/<kind>/<id part>`, injective and within Secrets
//! Manager's rules (`[A-Za-z0-9/_+=.@-]`, at most 512 characters) for every identifier the core
//! accepts.
//!
//! Parts come from the core's injective storage keys (lowercase base32hex, `[0-9a-v]`, and `.`
//! between the issuer and resource of a token key). A part longer than its share of the 512
//! characters (identifiers may be 200 bytes, 320 characters once encoded, and a token key holds
//! two) is replaced by `_` and the SHA-256 of the key in hex: `_` is not in the base32hex
//! alphabet, so a hashed part never equals a plain one, and two hashed parts are equal only for
//! equal keys (a SHA-256 collision aside — and even then the record names its own key, which the
//! core checks on every read). The full storage key of a hashed name is kept in the secret's
//! description, so listing recovers it. Pending authorizations are always named by the hash of
//! their `state`: a name appears in CloudTrail and in `ListSecrets`, a one-time CSRF value should
//! not.

use mcp_auth_core::record::{RecordKey, RecordKind};
use mcp_auth_core::{IssuerId, Namespace, TokenKey};
use sha2::{Digest, Sha256};

/// Longest secret name Secrets Manager accepts.
pub const MAX_NAME_LEN: usize = 512;
/// Longest name prefix accepted.
pub const MAX_PREFIX_LEN: usize = 100;
/// Longest namespace part before it is hashed.
const MAX_NAMESPACE_PART: usize = 128;
/// Longest id part before it is hashed. `100 + 1 + 128 + 1 + 12 + 1 + 256 = 499 <= 512`.
const MAX_ID_PART: usize = 256;
/// Longest tag value part before it is hashed (tag values: at most 256 characters).
const MAX_TAG_PART: usize = 128;

/// Tag keys this store sets on every secret.
pub(crate) const TAG_NAMESPACE: &str = "mcp-auth:namespace";
pub(crate) const TAG_KIND: &str = "mcp-auth:kind";
pub(crate) const TAG_ISSUER: &str = "mcp-auth:issuer";
pub(crate) const TAG_EXPIRES: &str = "mcp-auth:expires";

/// Lease secrets' kind segment.
pub(crate) const LEASE_KIND: &str = "lease";

/// `_` followed by the SHA-256 of `raw` in lowercase hex.
fn hashed(raw: &str) -> String {
    let digest = Sha256::digest(raw.as_bytes());
    let mut out = String::with_capacity(65);
    out.push('_');
    for b in digest {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

fn part(raw: String, max: usize) -> String {
    if raw.len() <= max { raw } else { hashed(&raw) }
}

/// True for a name prefix this store accepts: 1–100 characters of `[A-Za-z0-9_+=.@-]` in
/// `/`-separated, non-empty segments.
pub(crate) fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_LEN
        && prefix.split('/').all(|segment| {
            !segment.is_empty()
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_+=.@-".contains(c))
        })
}

/// The namespace segment of every name in `namespace`.
pub(crate) fn namespace_part(namespace: &Namespace) -> String {
    part(namespace.storage_key(), MAX_NAMESPACE_PART)
}

/// The id segment of a record's name.
fn record_id_part(key: &RecordKey) -> String {
    match key {
        // Always hashed: see the module docs.
        RecordKey::Pending(state) => hashed(state),
        other => {
            let storage_key = other.storage_key();
            let id = storage_key
                .split_once('/')
                .map(|(_, id)| id.to_owned())
                .unwrap_or_default();
            part(id, MAX_ID_PART)
        }
    }
}

/// Names of one namespace's secrets.
#[derive(Clone, Debug)]
pub(crate) struct Names {
    /// `<prefix>/<namespace part>/`
    base: String,
    namespace_part: String,
}

impl Names {
    pub(crate) fn new(prefix: &str, namespace: &Namespace) -> Self {
        let namespace_part = namespace_part(namespace);
        Self {
            base: format!("{prefix}/{namespace_part}/"),
            namespace_part,
        }
    }

    /// `<prefix>/<namespace part>/`: every secret of the namespace starts with it.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    pub(crate) fn namespace_part(&self) -> &str {
        &self.namespace_part
    }

    /// `<prefix>/<namespace part>/<kind>/`
    pub(crate) fn kind_prefix(&self, kind: RecordKind) -> String {
        format!("{}{}/", self.base, kind.as_str())
    }

    /// The secret holding `key`.
    pub(crate) fn record(&self, key: &RecordKey) -> String {
        format!(
            "{}{}/{}",
            self.base,
            key.kind().as_str(),
            record_id_part(key)
        )
    }

    /// The secret holding the refresh lease of `key`.
    pub(crate) fn lease(&self, key: &TokenKey) -> String {
        format!(
            "{}{LEASE_KIND}/{}",
            self.base,
            part(key.storage_key(), MAX_ID_PART)
        )
    }

    /// The record key of a listed secret of `kind`, from its name and description; `None` when
    /// the secret is not one this store wrote under that name.
    pub(crate) fn parse_listed(
        &self,
        kind: RecordKind,
        name: &str,
        description: Option<&str>,
    ) -> Option<RecordKey> {
        let prefix = self.kind_prefix(kind);
        let id = name.strip_prefix(&prefix)?;
        let candidate = match description.and_then(RecordKey::from_storage_key) {
            Some(key) => key,
            None if !id.starts_with('_') => {
                RecordKey::from_storage_key(&format!("{}/{id}", kind.as_str()))?
            }
            None => return None,
        };
        (candidate.kind() == kind && self.record(&candidate) == name).then_some(candidate)
    }
}

/// The description of a record's secret: its storage key, from which listing recovers the key of
/// a hashed name. `None` for pending authorizations (their state stays out of AWS metadata).
pub(crate) fn description(key: &RecordKey) -> Option<String> {
    match key {
        RecordKey::Pending(_) => None,
        other => Some(other.storage_key()),
    }
}

/// The issuer tag value of a registration, a token set or a lease.
pub(crate) fn issuer_tag(issuer: &IssuerId) -> String {
    part(issuer.storage_key(), MAX_TAG_PART)
}

/// True when `name` satisfies Secrets Manager's name rules.
pub fn is_valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_auth_core::ResourceUri;

    #[test]
    fn prefixes() {
        for ok in ["mcp-auth", "prod/mcp-auth", "a", "A_b+c=d.e@f-g"] {
            assert!(valid_prefix(ok), "{ok}");
        }
        for bad in ["", "/a", "a/", "a//b", "a b", "a*", "é", &"x".repeat(101)] {
            assert!(!valid_prefix(bad), "{bad}");
        }
    }

    #[test]
    fn longest_identifiers_fit_and_round_trip() {
        let long = format!("https://as.example/{}", "é".repeat(90));
        let issuer = IssuerId::new(&long).unwrap();
        let resource =
            ResourceUri::new(format!("https://mcp.example/{}", "x".repeat(170))).unwrap();
        let ns = Namespace::new("n".repeat(200)).unwrap();
        let names = Names::new(&"p".repeat(MAX_PREFIX_LEN), &ns);
        let token_key = TokenKey::new(issuer.clone(), resource.clone());
        let keys = [
            RecordKey::Registration(issuer),
            RecordKey::Tokens(token_key.clone()),
            RecordKey::Binding(resource),
            RecordKey::Pending("s".repeat(500)),
        ];
        for key in &keys {
            let name = names.record(key);
            assert!(is_valid_secret_name(&name), "{name} ({} chars)", name.len());
            if !matches!(key, RecordKey::Pending(_)) {
                let desc = description(key);
                assert_eq!(
                    names
                        .parse_listed(key.kind(), &name, desc.as_deref())
                        .as_ref(),
                    Some(key)
                );
            }
        }
        assert!(is_valid_secret_name(&names.lease(&token_key)));
        assert!(
            names.record(&keys[1]).contains("/_"),
            "a long token key is hashed"
        );
    }

    #[test]
    fn foreign_secrets_are_not_parsed() {
        let names = Names::new("mcp-auth", &Namespace::default());
        let kind = RecordKind::Registration;
        let base = names.kind_prefix(kind);
        assert!(
            names
                .parse_listed(kind, &format!("{base}zz"), None)
                .is_none()
        );
        assert!(
            names
                .parse_listed(kind, &format!("{base}_abc"), None)
                .is_none()
        );
        assert!(
            names
                .parse_listed(kind, "other/prefix/registration/x", None)
                .is_none()
        );
        // A description naming another key than the name is refused.
        let a = RecordKey::Registration(IssuerId::new("https://a.example").unwrap());
        let b = RecordKey::Registration(IssuerId::new("https://b.example").unwrap());
        assert!(
            names
                .parse_listed(kind, &names.record(&a), description(&b).as_deref())
                .is_none()
        );
    }
}

/// The name rules over generated awkward identifiers: every name is valid for Secrets Manager,
/// names are injective across kinds, keys and namespaces, and listing recovers every key.
#[cfg(test)]
mod properties {
    use std::collections::HashMap;

    use mcp_auth_core::{IssuerId, ResourceUri};
    use proptest::prelude::*;

    use super::*;

    /// Path characters that matter: key-syntax characters, percent escapes, case, unicode
    /// (composed and decomposed), dots and slashes.
    fn segment() -> impl Strategy<Value = String> {
        let atoms = prop::sample::select(vec![
            "a",
            "A",
            "z",
            "0",
            "9",
            "-",
            "_",
            ".",
            "~",
            "/",
            ":",
            "*",
            "{",
            "}",
            "%2F",
            "%74",
            "%C3%A9",
            "\u{e9}",
            "e\u{301}",
            "\u{1F511}",
            "\u{4E2D}",
            "@",
            "+",
            "=",
            ",",
            ";",
            "!",
            "$",
            "'",
            "(",
            ")",
            "[",
            "]",
            "|",
            "^",
            "`",
        ]);
        prop::collection::vec(atoms, 0..40).prop_map(|parts| parts.concat())
    }

    fn host() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "as.example".to_owned(),
            "AS.example".to_owned(),
            "xn--caf-dma.example".to_owned(),
            "caf\u{e9}.example".to_owned(),
            "127.0.0.1".to_owned(),
            "[::1]".to_owned(),
            "localhost".to_owned(),
            "a.b.c.d.e.example".to_owned(),
        ])
    }

    fn url(scheme_host_suffix: &'static str) -> impl Strategy<Value = String> {
        (
            host(),
            prop::option::of(prop::sample::select(vec![":443", ":8443", ":1", ":65535"])),
            segment(),
            prop::bool::ANY,
        )
            .prop_map(move |(host, port, path, slash)| {
                let scheme = if host.starts_with("127.") || host == "[::1]" || host == "localhost" {
                    "http"
                } else {
                    "https"
                };
                format!(
                    "{scheme}://{host}{}{scheme_host_suffix}/{path}{}",
                    port.unwrap_or(""),
                    if slash { "/" } else { "" }
                )
            })
    }

    fn namespace() -> impl Strategy<Value = Namespace> {
        prop_oneof![
            Just(Namespace::default()),
            "[a-zA-Z0-9:@/{}* .-]{1,40}"
                .prop_filter_map("valid namespace", |s| Namespace::new(s).ok()),
            // The longest namespaces are hashed.
            "[a-z]{150,200}".prop_filter_map("valid namespace", |s| Namespace::new(s).ok()),
        ]
    }

    fn prefix() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("mcp-auth".to_owned()),
            Just("prod/eu-west-1/mcp-auth".to_owned()),
            Just("p".repeat(MAX_PREFIX_LEN)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn names_are_valid_injective_and_listable(
            prefix in prefix(),
            ns in namespace(),
            issuers in prop::collection::vec(url(""), 1..6),
            resources in prop::collection::vec(url(""), 1..6),
            states in prop::collection::vec(".{0,300}", 1..4),
        ) {
            let issuers: Vec<IssuerId> = issuers.iter().filter_map(|s| IssuerId::new(s).ok()).collect();
            let resources: Vec<ResourceUri> =
                resources.iter().filter_map(|s| ResourceUri::new(s).ok()).collect();
            prop_assume!(!issuers.is_empty() && !resources.is_empty());
            let names = Names::new(&prefix, &ns);
            let other_ns = Names::new(&prefix, &Namespace::new(format!("{}x", ns.as_str())).unwrap_or_default());
            let mut keys = Vec::new();
            for issuer in &issuers {
                keys.push(RecordKey::Registration(issuer.clone()));
                for resource in &resources {
                    keys.push(RecordKey::Tokens(TokenKey::new(issuer.clone(), resource.clone())));
                }
            }
            for resource in &resources {
                keys.push(RecordKey::Binding(resource.clone()));
            }
            for state in &states {
                keys.push(RecordKey::Pending(state.clone()));
            }
            let mut seen: HashMap<String, String> = HashMap::new();
            for key in &keys {
                let name = names.record(key);
                prop_assert!(is_valid_secret_name(&name), "invalid name {name:?} ({} chars)", name.len());
                prop_assert!(name.starts_with(names.base()));
                prop_assert!(!names.base().is_empty() && name != other_ns.record(key));
                let id = format!("{key:?}/{}", key.storage_key());
                if let Some(previous) = seen.insert(name.clone(), id.clone()) {
                    prop_assert_eq!(&previous, &id, "two keys share the name {}", name);
                }
                if !matches!(key, RecordKey::Pending(_)) {
                    let listed = names.parse_listed(key.kind(), &name, description(key).as_deref());
                    prop_assert_eq!(listed.as_ref(), Some(key));
                    // Names short enough are listable from the name alone.
                    if !name.rsplit('/').next().unwrap_or_default().starts_with('_') {
                        let from_name = names.parse_listed(key.kind(), &name, None);
                        prop_assert_eq!(from_name.as_ref(), Some(key));
                    }
                    // Another kind's listing never claims it.
                    for kind in [RecordKind::Registration, RecordKind::Tokens, RecordKind::Binding] {
                        if kind != key.kind() {
                            prop_assert!(names.parse_listed(kind, &name, description(key).as_deref()).is_none());
                        }
                    }
                }
                if let RecordKey::Tokens(token_key) = key {
                    let lease = names.lease(token_key);
                    prop_assert!(is_valid_secret_name(&lease));
                    // The generator may produce the same key twice: only another key's lease is a
                    // collision.
                    if let Some(previous) = seen.insert(lease.clone(), format!("lease {id}")) {
                        prop_assert_eq!(previous, format!("lease {id}"), "lease name collides: {}", lease);
                    }
                    prop_assert!(issuer_tag(&token_key.issuer).len() <= 256);
                }
            }
            prop_assert!(names.namespace_part().len() <= 256, "namespace tag value too long");
        }
    }
}
