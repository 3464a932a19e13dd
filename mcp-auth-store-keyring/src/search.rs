//! Finding a namespace's records by searching the keyring itself, to rebuild a missing or
//! damaged index.
//!
//! - Secret Service: keyring-core's search by the item attribute `service = mcp-auth:<ns key>`;
//!   each match's `username` attribute is a record key.
//! - Kernel keyring: keyutils has no search by prefix, so the candidates come from the kernel's
//!   list of keys this process may view (`/proc/keys`), matched by their description
//!   `keyring:<record key>@mcp-auth:<ns key>`; the caller then reads each candidate through the
//!   store (a key of another session keyring, not reachable from ours, is not found and dropped).
//! - Any other keyring-core store: not searchable here (its search syntax is its own).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use keyring_core::{CredentialStore, Entry};

/// How a keyring is searched for a namespace's items.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Search {
    /// keyring-core's search by item attributes (the Secret Service store).
    #[cfg_attr(
        not(all(target_os = "linux", feature = "secret-service")),
        allow(
            dead_code,
            reason = "only the Secret Service store is searched this way"
        )
    )]
    Attributes,
    /// Key descriptions `<prefix><user><divider><service><suffix>` in `/proc/keys`.
    #[cfg_attr(
        not(all(target_os = "linux", feature = "keyutils")),
        allow(
            dead_code,
            reason = "only the kernel keyring store is searched this way"
        )
    )]
    KeyDescriptions {
        prefix: String,
        divider: String,
        suffix: String,
    },
    /// This keyring cannot be searched.
    Unsupported,
}

/// Whether a keyring `user` names a record (record storage keys are `<kind>/<id>`; the index
/// item's user has no `/`). Records of kinds this version does not know are kept too.
pub(crate) fn is_record_user(user: &str) -> bool {
    user.contains('/')
}

/// The record users of `service`, by attribute search.
pub(crate) fn by_attributes(
    keyring: &Arc<CredentialStore>,
    service: &str,
) -> Result<BTreeSet<String>, keyring_core::Error> {
    let spec = HashMap::from([("service", service)]);
    let mut found = BTreeSet::new();
    for entry in Entry::search_in_store(keyring, &spec)? {
        // Attributes, not `get_specifiers`: the latter hides a locked item instead of failing.
        let attributes = entry.get_attributes()?;
        if attributes.get("service").map(String::as_str) == Some(service)
            && let Some(user) = attributes.get("username")
            && is_record_user(user)
        {
            found.insert(user.clone());
        }
    }
    Ok(found)
}

/// The kernel's list of the keys this process may view; `None` without one.
pub(crate) fn read_proc_keys() -> Option<String> {
    let mut file = std::fs::File::open("/proc/keys").ok()?;
    // One large read instead of many small ones: the kernel renders the list on every read.
    let mut bytes = Vec::with_capacity(1 << 20);
    std::io::Read::read_to_end(&mut file, &mut bytes).ok()?;
    String::from_utf8(bytes).ok()
}

/// Candidate record users of `service` in the text of `/proc/keys`: `user` keys whose
/// description is `<prefix><user><divider><service><suffix>`.
pub(crate) fn in_proc_keys(
    proc_keys: &str,
    (prefix, divider, suffix): (&str, &str, &str),
    service: &str,
) -> BTreeSet<String> {
    let tail = format!("{divider}{service}{suffix}");
    let mut found = BTreeSet::new();
    for line in proc_keys.lines() {
        // `serial flags usage expiry perm uid gid type description[: datalen]`
        let mut rest = line;
        let mut kind = "";
        for _ in 0..8 {
            rest = rest.trim_start();
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            kind = &rest[..end];
            rest = &rest[end..];
        }
        if kind != "user" {
            continue;
        }
        let rest = rest.trim();
        // A positive user key is followed by ": <payload length>".
        let description = match rest.rsplit_once(": ") {
            Some((description, len)) if len.bytes().all(|b| b.is_ascii_digit()) => description,
            _ => rest,
        };
        if let Some(user) = description
            .strip_prefix(prefix)
            .and_then(|d| d.strip_suffix(tail.as_str()))
            && is_record_user(user)
        {
            found.insert(user.to_owned());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_keys_lines_are_matched_by_description() {
        let text = "\
0196d60d I------     1 perm 1f030000     0     0 keyring   .dns_resolver: empty
1263709a I--Q---    11 perm 3f030000     0     0 keyring   _ses: empty
2a0b1c3d I--Q---     1 perm 3f010000     0     0 user      keyring:tokens/abc.def@mcp-auth:ns1: 812
2a0b1c3e I--Q---     1 perm 3f010000     0     0 user      keyring:binding/xyz@mcp-auth:ns1: 90
2a0b1c3f I--Q---     1 perm 3f010000     0     0 user      keyring:index@mcp-auth:ns1: 40
2a0b1c40 I--Q---     1 perm 3f010000     0     0 user      keyring:tokens/abc.def@mcp-auth:ns12: 812
2a0b1c41 I--Q---     1 perm 3f010000     0     0 user      keyring:tokens/other@mcp-auth:ns0: 812
2a0b1c42 I--Q---     1 perm 3f010000     0     0 logon     keyring:tokens/q@mcp-auth:ns1: 812
2a0b1c43 I--Q---     1 perm 3f010000     0     0 user      keyring:pending/st@mcp-auth:ns1
short line
";
        let found = in_proc_keys(text, ("keyring:", "@", ""), "mcp-auth:ns1");
        let found: Vec<&str> = found.iter().map(String::as_str).collect();
        assert_eq!(found, ["binding/xyz", "pending/st", "tokens/abc.def"]);
    }
}
