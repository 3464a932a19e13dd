//! Encryption at rest over the memory store: the whole conformance suite through
//! `EncryptedStore`; ciphertext moved between issuers, resources and namespaces, wrong and
//! unknown keys, truncations and flipped bits all refused as `Corrupt`; rotation and rekey
//! (including a concurrent writer and a plaintext migration); key providers; and an engine that
//! logs in, refreshes and rotates keys over an encrypted store whose raw bytes hold no secret.
#![cfg(feature = "encryption")]

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use data_encoding::{BASE64, BASE64URL_NOPAD};
use mcp_auth_core::conformance::MemoryFactory;
use mcp_auth_core::encryption::{
    EncryptedFactory, EncryptedStore, EncryptionKey, EnvKey, FileKey, KeyError, KeyProvider,
    KeySet, envelope_key_id,
};
use mcp_auth_core::raw::RawRecords;
use mcp_auth_core::record::RecordKind;
use mcp_auth_core::{
    BindingStore, ClientRegistration, CredentialStore, DpopMode, Expect, ExposeSecret, IssuerId,
    MemoryStore, Namespace, PendingAuthorization, PendingAuthorizationStore, RegistrationKind,
    RegistrationStore, ResourceBinding, ResourceUri, SecretString, StoreError, Timestamp, TokenKey,
    TokenSet, TokenStore,
};

const K1: [u8; 32] = [0x11; 32];
const K2: [u8; 32] = [0x22; 32];

fn k1() -> EncryptionKey {
    EncryptionKey::from_bytes(&K1)
}

fn k2() -> EncryptionKey {
    EncryptionKey::from_bytes(&K2)
}

mod conformance {
    use super::*;

    mcp_auth_core::store_conformance_tests!(EncryptedFactory::new(
        MemoryFactory::new(),
        KeySet::new(k1())
    ));

    /// The suite through a store that is mid-rotation: current key 2, old key 1.
    mod rotated {
        use super::*;

        mcp_auth_core::store_conformance_tests!(EncryptedFactory::new(
            MemoryFactory::new(),
            KeySet::new(k2()).with_old(k1()).unwrap()
        ));
    }
}

fn issuer(s: &str) -> IssuerId {
    IssuerId::new(s).unwrap()
}

fn res(s: &str) -> ResourceUri {
    ResourceUri::new(s).unwrap()
}

const AS_A: &str = "https://as-a.example/t";
const AS_B: &str = "https://as-b.example/t";
const R1: &str = "https://mcp-1.example/mcp";
const R2: &str = "https://mcp-2.example/mcp";

fn wrap(root: &MemoryStore, ns: &str, keys: KeySet) -> EncryptedStore<MemoryStore> {
    let ns = Namespace::new(ns).unwrap();
    EncryptedStore::new(root.with_namespace(ns.clone()), ns, keys)
}

/// Same visible fields for every issuer, so only the key tells two records apart.
fn registration(iss: &IssuerId, tag: &str) -> ClientRegistration {
    let mut r = ClientRegistration::new(iss.clone(), "client-1", RegistrationKind::Dynamic);
    r.client_secret = Some(SecretString::from(format!("CLIENT-SECRET-{tag}")));
    r.registration_access_token = Some(SecretString::from(format!("RAT-{tag}")));
    r.token_endpoint_auth_method = "client_secret_basic".into();
    r.created_at = Timestamp::from_unix_seconds(1_700_000_000);
    r.extra.insert(
        "software_statement".into(),
        format!("SOFTWARE-{tag}").into(),
    );
    r
}

fn tokens(tag: &str) -> TokenSet {
    let mut t = TokenSet::new(SecretString::from(format!("ACCESS-{tag}")));
    t.refresh_token = Some(SecretString::from(format!("REFRESH-{tag}")));
    t.dpop_key = Some(SecretString::from(format!("DPOPKEY-{tag}")));
    t.token_type = "DPoP".into();
    t.expires_at = Some(Timestamp::from_unix_seconds(4_000_000_000));
    t.obtained_at = Timestamp::from_unix_seconds(1_700_000_000);
    t.scopes = vec!["mcp:read".into()];
    t.extra
        .insert("id_token".into(), format!("IDTOKEN-{tag}").into());
    t
}

fn pending(state: &str, tag: &str) -> PendingAuthorization {
    let mut p = PendingAuthorization::new(
        state,
        SecretString::from(format!("VERIFIER-{tag}")),
        issuer(AS_A),
        res(R1),
        "client-1",
        "http://127.0.0.1:1/cb",
        Duration::from_secs(600),
    );
    p.extra
        .insert("nonce".into(), format!("NONCE-{tag}").into());
    p
}

fn expect_corrupt<T: std::fmt::Debug>(what: &str, result: Result<T, StoreError>) -> String {
    match result {
        Err(e @ StoreError::Corrupt { .. }) => {
            let text = format!("{e} {e:?}");
            for needle in [
                "ACCESS-",
                "REFRESH-",
                "DPOPKEY-",
                "CLIENT-SECRET-",
                "RAT-",
                "IDTOKEN-",
            ] {
                assert!(
                    !text.contains(needle),
                    "{what}: the error shows a secret: {text}"
                );
            }
            assert!(
                !text.contains("1111111111"),
                "{what}: the error shows the key: {text}"
            );
            text
        }
        other => panic!("{what}: expected Corrupt, got {other:?}"),
    }
}

/// The raw bytes of every record of the memory store's namespace.
async fn raw_bytes(store: &MemoryStore) -> Vec<u8> {
    let mut all = Vec::new();
    for kind in [
        RecordKind::Registration,
        RecordKind::Tokens,
        RecordKind::Binding,
        RecordKind::Pending,
    ] {
        for (_, bytes, _) in store.scan_records(kind).await.unwrap() {
            all.extend_from_slice(&bytes);
            all.push(b'\n');
        }
    }
    all
}

/// The 32-byte private scalar inside a PKCS#8 P-256 key (`ECPrivateKey`: `INTEGER 1`, then
/// `OCTET STRING` of 32 bytes).
fn private_scalar(der: &[u8]) -> Vec<u8> {
    let at = der
        .windows(5)
        .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
        .expect("a PKCS#8 EC private key");
    der[at + 5..at + 37].to_vec()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn the_inner_store_sees_envelopes_and_the_wrapper_round_trips() {
    let root = MemoryStore::new();
    let store = wrap(&root, "t", KeySet::new(k1()));
    let a = issuer(AS_A);
    let key = TokenKey::new(a.clone(), res(R1));
    store
        .put_registration(&registration(&a, "x"), Expect::Absent)
        .await
        .unwrap();
    store
        .put_tokens(&key, &tokens("x"), Expect::Absent)
        .await
        .unwrap();
    store
        .insert_pending(&pending("state-x", "x"))
        .await
        .unwrap();
    let binding = ResourceBinding::new(res(R1), a.clone());
    store.put_binding(&binding, Expect::Absent).await.unwrap();

    let raw = raw_bytes(store.inner()).await;
    for needle in [
        "ACCESS-x",
        "REFRESH-x",
        "DPOPKEY-x",
        "IDTOKEN-x",
        "CLIENT-SECRET-x",
        "RAT-x",
        "SOFTWARE-x",
        "VERIFIER-x",
        "NONCE-x",
    ] {
        assert!(
            !contains(&raw, needle.as_bytes()),
            "{needle} is stored in plaintext"
        );
    }
    // What stays visible: keys and listing metadata.
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains("mcpenc1."));
    assert!(text.contains("4000000000") && text.contains("mcp:read") && text.contains("DPoP"));

    let inner = store.inner().get_tokens(&key).await.unwrap().unwrap().value;
    assert_eq!(
        envelope_key_id(inner.access_token.expose_secret()),
        Some(k1().id())
    );
    assert!(inner.refresh_token.is_none() && inner.dpop_key.is_none() && inner.extra.is_empty());

    let got = store.get_tokens(&key).await.unwrap().unwrap().value;
    let want = tokens("x");
    assert_eq!(
        got.access_token.expose_secret(),
        want.access_token.expose_secret()
    );
    assert_eq!(
        got.refresh_token.unwrap().expose_secret(),
        want.refresh_token.unwrap().expose_secret()
    );
    assert_eq!(
        got.dpop_key.unwrap().expose_secret(),
        want.dpop_key.unwrap().expose_secret()
    );
    assert_eq!(got.extra, want.extra);
    let reg = store.get_registration(&a).await.unwrap().unwrap().value;
    assert_eq!(
        reg.client_secret.unwrap().expose_secret(),
        "CLIENT-SECRET-x"
    );
    assert_eq!(
        reg.registration_access_token.unwrap().expose_secret(),
        "RAT-x"
    );
    let p = store.take_pending("state-x").await.unwrap().unwrap();
    assert_eq!(p.pkce_verifier.expose_secret(), "VERIFIER-x");
    assert_eq!(p.extra, pending("state-x", "x").extra);
    assert_eq!(
        store.get_binding(&res(R1)).await.unwrap().unwrap().value,
        binding
    );

    // Versions, the change stamp and leases are the inner store's.
    let v = store.get_tokens(&key).await.unwrap().unwrap().version;
    assert_eq!(
        store.binding_and_token_versions(&key).await.unwrap().1,
        Some(v.clone())
    );
    assert_eq!(store.change_stamp(), store.inner().change_stamp());
    let lease = store
        .try_acquire_refresh_lease(&key, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .inner()
            .try_acquire_refresh_lease(&key, Duration::from_secs(30))
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.release_refresh_lease(&lease).await.unwrap());
    // The same record sealed twice gives different envelopes (a fresh nonce per write).
    store
        .put_tokens(&key, &tokens("x"), Expect::Version(v))
        .await
        .unwrap();
    let again = store.inner().get_tokens(&key).await.unwrap().unwrap().value;
    assert_ne!(
        again.access_token.expose_secret(),
        inner.access_token.expose_secret()
    );
    assert!(!format!("{store:?}").contains("1111"));
}

#[tokio::test]
async fn ciphertext_moved_to_another_issuer_resource_or_namespace_does_not_open() {
    let root = MemoryStore::new();
    let keys = KeySet::new(k1());
    let store = wrap(&root, "tenant-1", keys.clone());
    let other_tenant = wrap(&root, "tenant-2", keys.clone());
    let (a, b) = (issuer(AS_A), issuer(AS_B));
    store
        .put_registration(&registration(&a, "a"), Expect::Absent)
        .await
        .unwrap();
    let ka1 = TokenKey::new(a.clone(), res(R1));
    store
        .put_tokens(&ka1, &tokens("a"), Expect::Absent)
        .await
        .unwrap();

    // A's sealed registration, relabelled as B's (every visible field equal).
    let mut moved = store
        .inner()
        .get_registration(&a)
        .await
        .unwrap()
        .unwrap()
        .value;
    moved.issuer = b.clone();
    store
        .inner()
        .put_registration(&moved, Expect::Any)
        .await
        .unwrap();
    expect_corrupt(
        "registration moved to another issuer",
        store.get_registration(&b).await,
    );
    // And into another tenant's namespace, same issuer.
    let original = store
        .inner()
        .get_registration(&a)
        .await
        .unwrap()
        .unwrap()
        .value;
    other_tenant
        .inner()
        .put_registration(&original, Expect::Any)
        .await
        .unwrap();
    expect_corrupt(
        "registration moved to another namespace",
        other_tenant.get_registration(&a).await,
    );

    // Tokens: to another issuer, another resource, another namespace.
    let sealed = store.inner().get_tokens(&ka1).await.unwrap().unwrap().value;
    for (what, target, to) in [
        ("issuer", TokenKey::new(b.clone(), res(R1)), &store),
        ("resource", TokenKey::new(a.clone(), res(R2)), &store),
        ("namespace", ka1.clone(), &other_tenant),
    ] {
        to.inner()
            .put_tokens(&target, &sealed, Expect::Any)
            .await
            .unwrap();
        let text = expect_corrupt(
            &format!("tokens moved to another {what}"),
            to.get_tokens(&target).await,
        );
        assert!(text.contains("does not open"), "{text}");
    }
    // Scans fail the same way instead of serving the moved record.
    expect_corrupt("scan with a moved record", store.scan_tokens().await);

    // Pending authorizations: under another state.
    store
        .insert_pending(&pending("state-1", "p"))
        .await
        .unwrap();
    let mut p = store
        .inner()
        .take_pending("state-1")
        .await
        .unwrap()
        .unwrap();
    p.state = "state-2".into();
    store.inner().insert_pending(&p).await.unwrap();
    expect_corrupt(
        "pending moved to another state",
        store.take_pending("state-2").await,
    );

    // The originals still open where they belong.
    assert!(store.get_registration(&a).await.unwrap().is_some());
    assert!(store.get_tokens(&ka1).await.unwrap().is_some());
}

#[tokio::test]
async fn edited_visible_fields_do_not_open() {
    let root = MemoryStore::new();
    let store = wrap(&root, "t", KeySet::new(k1()));
    let a = issuer(AS_A);
    let key = TokenKey::new(a.clone(), res(R1));
    store
        .put_tokens(&key, &tokens("a"), Expect::Absent)
        .await
        .unwrap();
    store
        .put_registration(&registration(&a, "a"), Expect::Absent)
        .await
        .unwrap();
    let sealed = store.inner().get_tokens(&key).await.unwrap().unwrap().value;
    type Edit = Box<dyn Fn(&mut TokenSet)>;
    let edits: Vec<(&str, Edit)> = vec![
        (
            "expiry",
            Box::new(|t| t.expires_at = Some(Timestamp::from_unix_seconds(5_000_000_000))),
        ),
        ("scopes", Box::new(|t| t.scopes.push("admin".into()))),
        ("token type", Box::new(|t| t.token_type = "Bearer".into())),
        (
            "obtained_at",
            Box::new(|t| t.obtained_at = Timestamp::from_unix_seconds(1)),
        ),
        (
            "a plaintext refresh token beside the envelope",
            Box::new(|t| t.refresh_token = Some(SecretString::from("planted"))),
        ),
        (
            "a planted extra field",
            Box::new(|t| {
                t.extra.insert("x".into(), 1.into());
            }),
        ),
    ];
    for (what, edit) in edits {
        let mut t = sealed.clone();
        edit(&mut t);
        store
            .inner()
            .put_tokens(&key, &t, Expect::Any)
            .await
            .unwrap();
        expect_corrupt(what, store.get_tokens(&key).await);
    }
    let mut r = store
        .inner()
        .get_registration(&a)
        .await
        .unwrap()
        .unwrap()
        .value;
    r.redirect_uris.push("https://attacker.example/cb".into());
    store
        .inner()
        .put_registration(&r, Expect::Any)
        .await
        .unwrap();
    expect_corrupt("an added redirect URI", store.get_registration(&a).await);
}

#[tokio::test]
async fn wrong_unknown_truncated_and_flipped_envelopes_are_corrupt() {
    let root = MemoryStore::new();
    let store = wrap(&root, "t", KeySet::new(k1()));
    let key = TokenKey::new(issuer(AS_A), res(R1));
    store
        .put_tokens(&key, &tokens("a"), Expect::Absent)
        .await
        .unwrap();
    let sealed = store.inner().get_tokens(&key).await.unwrap().unwrap().value;
    let envelope = sealed.access_token.expose_secret().to_owned();

    // A different key under the same id.
    let impostor = EncryptionKey::with_id(k1().id(), &[0x33; 32]).unwrap();
    let wrong = wrap(&root, "t", KeySet::new(impostor));
    let text = expect_corrupt("wrong key", wrong.get_tokens(&key).await);
    assert!(
        text.contains(k1().id()),
        "the error names the key id: {text}"
    );
    // A key set without the record's key: the error names the missing id.
    let unknown = wrap(&root, "t", KeySet::new(k2()));
    let text = expect_corrupt("key not provided", unknown.get_tokens(&key).await);
    assert!(
        text.contains(k1().id()) && text.contains("not among"),
        "{text}"
    );

    let put_access = |value: String| {
        let mut t = sealed.clone();
        t.access_token = SecretString::from(value);
        t
    };
    // An unknown key id written into the envelope.
    let relabelled = envelope.replacen(k1().id(), "someotherkey", 1);
    store
        .inner()
        .put_tokens(&key, &put_access(relabelled), Expect::Any)
        .await
        .unwrap();
    let text = expect_corrupt("unknown key id", store.get_tokens(&key).await);
    assert!(text.contains("someotherkey"), "{text}");
    // A newer envelope format.
    store
        .inner()
        .put_tokens(
            &key,
            &put_access(envelope.replacen("mcpenc1.", "mcpenc2.", 1)),
            Expect::Any,
        )
        .await
        .unwrap();
    expect_corrupt("newer format", store.get_tokens(&key).await);

    // Every truncation.
    for len in 0..envelope.len() {
        store
            .inner()
            .put_tokens(&key, &put_access(envelope[..len].to_owned()), Expect::Any)
            .await
            .unwrap();
        expect_corrupt(&format!("truncated to {len}"), store.get_tokens(&key).await);
    }
    // Every flipped bit of nonce, ciphertext and tag.
    let (head, body) = envelope.rsplit_once('.').unwrap();
    let bytes = BASE64URL_NOPAD.decode(body.as_bytes()).unwrap();
    for bit in 0..bytes.len() * 8 {
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        let value = format!("{head}.{}", BASE64URL_NOPAD.encode(&flipped));
        store
            .inner()
            .put_tokens(&key, &put_access(value), Expect::Any)
            .await
            .unwrap();
        expect_corrupt(&format!("bit {bit} flipped"), store.get_tokens(&key).await);
    }
    // Not base64 at all.
    store
        .inner()
        .put_tokens(&key, &put_access(format!("{head}.!!!!")), Expect::Any)
        .await
        .unwrap();
    expect_corrupt("not base64", store.get_tokens(&key).await);
    // The untouched envelope still opens.
    store
        .inner()
        .put_tokens(&key, &put_access(envelope), Expect::Any)
        .await
        .unwrap();
    assert!(store.get_tokens(&key).await.unwrap().is_some());
}

#[tokio::test]
async fn plaintext_records_are_refused_unless_accepted_then_rekey_encrypts_them() {
    let root = MemoryStore::new();
    let plain = root.with_namespace(Namespace::new("t").unwrap());
    let a = issuer(AS_A);
    let key = TokenKey::new(a.clone(), res(R1));
    plain
        .put_tokens(&key, &tokens("p"), Expect::Absent)
        .await
        .unwrap();
    plain
        .put_registration(&registration(&a, "p"), Expect::Absent)
        .await
        .unwrap();
    // A public client's registration (no secret at all) is plaintext too.
    let b = issuer(AS_B);
    plain
        .put_registration(
            &ClientRegistration::new(b.clone(), "public", RegistrationKind::Dynamic),
            Expect::Absent,
        )
        .await
        .unwrap();

    let strict = wrap(&root, "t", KeySet::new(k1()));
    let text = expect_corrupt("plaintext tokens", strict.get_tokens(&key).await);
    assert!(
        text.contains("not encrypted") && text.contains("accept_plaintext"),
        "{text}"
    );
    expect_corrupt("plaintext registration", strict.get_registration(&a).await);
    expect_corrupt("public registration", strict.get_registration(&b).await);
    let report = strict.rekey().await.unwrap();
    assert_eq!(report.failed.len(), 3, "{report:?}");
    assert!(!report.is_complete());

    let migrating = wrap(&root, "t", KeySet::new(k1())).accept_plaintext(true);
    assert_eq!(
        migrating
            .get_tokens(&key)
            .await
            .unwrap()
            .unwrap()
            .value
            .access_token
            .expose_secret(),
        "ACCESS-p"
    );
    let report = migrating.rekey().await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(
        (report.tokens.resealed, report.registrations.resealed),
        (1, 2)
    );
    assert!(!contains(&raw_bytes(&plain).await, b"ACCESS-p"));
    // Now the strict store reads everything.
    assert_eq!(
        strict
            .get_tokens(&key)
            .await
            .unwrap()
            .unwrap()
            .value
            .access_token
            .expose_secret(),
        "ACCESS-p"
    );
    let public = strict.get_registration(&b).await.unwrap().unwrap().value;
    assert!(public.client_secret.is_none());
    assert_eq!(public.client_id, "public");
}

/// Records sealed with key 1 open under key 2 with key 1 as an old key; writes use key 2; a
/// rekey leaves no envelope under key 1, and then key 1 can go.
#[tokio::test]
async fn rotation_and_rekey() {
    let root = MemoryStore::new();
    let before = wrap(&root, "t", KeySet::new(k1()));
    let mut keys = Vec::new();
    for i in 0..20 {
        let iss = issuer(&format!("https://as-{i}.example"));
        before
            .put_registration(&registration(&iss, &i.to_string()), Expect::Absent)
            .await
            .unwrap();
        let key = TokenKey::new(iss, res(R1));
        before
            .put_tokens(&key, &tokens(&i.to_string()), Expect::Absent)
            .await
            .unwrap();
        keys.push(key);
    }
    before
        .insert_pending(&pending("state-r", "r"))
        .await
        .unwrap();

    let after = wrap(&root, "t", KeySet::new(k2()).with_old(k1()).unwrap());
    for (i, key) in keys.iter().enumerate() {
        let t = after.get_tokens(key).await.unwrap().unwrap().value;
        assert_eq!(t.access_token.expose_secret(), format!("ACCESS-{i}"));
    }
    assert_eq!(after.scan_registrations().await.unwrap().len(), 20);
    // A write under the new key set seals with key 2.
    let v = after.get_tokens(&keys[0]).await.unwrap().unwrap().version;
    after
        .put_tokens(&keys[0], &tokens("0"), Expect::Version(v))
        .await
        .unwrap();
    let sealed = after
        .inner()
        .get_tokens(&keys[0])
        .await
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(
        envelope_key_id(sealed.access_token.expose_secret()),
        Some(k2().id())
    );

    let report = after.rekey().await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.tokens.resealed, 19);
    assert_eq!(report.tokens.already_current, 1);
    assert_eq!(report.registrations.resealed, 20);
    // No envelope under key 1 is left (pending authorizations are not rekeyed: they expire).
    for (_, t) in after.inner().scan_tokens().await.unwrap() {
        assert_eq!(
            envelope_key_id(t.value.access_token.expose_secret()),
            Some(k2().id())
        );
    }
    for r in after.inner().scan_registrations().await.unwrap() {
        let secret = r.value.client_secret.unwrap();
        assert_eq!(envelope_key_id(secret.expose_secret()), Some(k2().id()));
    }
    // A second run has nothing to do.
    let again = after.rekey().await.unwrap();
    assert_eq!(
        (again.tokens.resealed, again.tokens.already_current),
        (0, 20)
    );

    // Key 1 retired: everything still opens with key 2 alone; key 1 alone opens nothing.
    let only_new = wrap(&root, "t", KeySet::new(k2()));
    assert_eq!(only_new.scan_tokens().await.unwrap().len(), 20);
    let only_old = wrap(&root, "t", KeySet::new(k1()));
    let text = expect_corrupt("old key only", only_old.get_tokens(&keys[3]).await);
    assert!(text.contains(k2().id()), "{text}");
    // The pending authorization sealed with key 1 still opens while key 1 is an old key.
    assert!(after.take_pending("state-r").await.unwrap().is_some());
}

/// A writer racing the rekey is never overwritten: the rekey's compare-and-swap loses, re-reads
/// and finds the writer's record already under the current key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_never_overwrites_a_concurrent_writer() {
    let root = MemoryStore::new();
    let before = wrap(&root, "t", KeySet::new(k1()));
    let hot = TokenKey::new(issuer(AS_A), res(R1));
    for i in 0..200 {
        let key = TokenKey::new(issuer(AS_A), res(&format!("https://mcp.example/{i}")));
        before
            .put_tokens(&key, &tokens("old"), Expect::Absent)
            .await
            .unwrap();
    }
    before
        .put_tokens(&hot, &tokens("old"), Expect::Absent)
        .await
        .unwrap();
    let after = Arc::new(wrap(&root, "t", KeySet::new(k2()).with_old(k1()).unwrap()));
    let writer = {
        let after = Arc::clone(&after);
        let hot = hot.clone();
        tokio::spawn(async move {
            for n in 0..300 {
                loop {
                    let current = after.get_tokens(&hot).await.unwrap().unwrap();
                    let mut t = current.value;
                    t.extra.insert("n".into(), n.into());
                    match after
                        .put_tokens(&hot, &t, Expect::Version(current.version))
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let report = after.rekey().await.unwrap();
    writer.await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    let t = after.get_tokens(&hot).await.unwrap().unwrap().value;
    assert_eq!(
        t.extra.get("n"),
        Some(&299.into()),
        "the writer's last write was lost"
    );
    for (_, t) in after.inner().scan_tokens().await.unwrap() {
        assert_eq!(
            envelope_key_id(t.value.access_token.expose_secret()),
            Some(k2().id())
        );
    }
}

#[tokio::test]
async fn file_keys_need_owner_only_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    let created = FileKey::create(&path).unwrap();
    let loaded = FileKey::new(&path).load_key().await.unwrap();
    assert_eq!(created.id(), loaded.id());
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.trim().len(), 64);
    // Never overwritten.
    assert!(matches!(FileKey::create(&path), Err(KeyError::Io { .. })));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        for mode in [0o644, 0o640, 0o604, 0o660, 0o666] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = FileKey::new(&path).load_key().await.unwrap_err();
            assert!(
                matches!(err, KeyError::InsecurePermissions { .. }),
                "{mode:o}: {err}"
            );
            let message = err.to_string();
            assert!(message.contains("chmod 600"), "{message}");
            assert!(!message.contains(text.trim()), "the error shows the key");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(
            FileKey::new(&path).load_key().await.unwrap().id(),
            created.id()
        );
    }
    // Raw 32 bytes, base64 with a newline.
    let raw = dir.path().join("raw");
    let b64 = dir.path().join("b64");
    for (p, content) in [
        (&raw, K1.to_vec()),
        (&b64, format!("{}\n", BASE64.encode(&K1)).into_bytes()),
    ] {
        std::fs::write(p, content).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert_eq!(FileKey::new(p).load_key().await.unwrap().id(), k1().id());
    }
    // Garbage, a directory, a missing file.
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "not a key at all").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let err = FileKey::new(&bad).load_key().await.unwrap_err();
    assert!(matches!(err, KeyError::Malformed { .. }), "{err}");
    assert!(!err.to_string().contains("not a key at all"));
    assert!(matches!(
        FileKey::new(dir.path()).load_key().await,
        Err(KeyError::NotAFile { .. } | KeyError::Io { .. } | KeyError::InsecurePermissions { .. })
    ));
    assert!(matches!(
        FileKey::new(dir.path().join("missing")).load_key().await,
        Err(KeyError::Io { .. })
    ));
}

/// The body of the environment-key child process (the test cannot set variables in its own
/// process: `set_var` is unsafe and unsafe code is forbidden).
#[test]
#[ignore = "worker process body, started by env_key_reads_hex_and_base64"]
fn env_key_worker() {
    let Ok(var) = std::env::var("MCP_AUTH_TEST_KEY_VAR") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    match rt.block_on(EnvKey::new(&var).load_key()) {
        Ok(key) => println!("KEYID {}", key.id()),
        Err(e) => println!("KEYERR {e}"),
    }
}

#[test]
fn env_key_reads_hex_and_base64() {
    let run = |value: &str| -> String {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "encryption::env_key_worker",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env("MCP_AUTH_TEST_KEY_VAR", "MCP_AUTH_TEST_KEY")
            .env("MCP_AUTH_TEST_KEY", value)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        stdout
            .lines()
            .find_map(|l| l.split_once("KEY").map(|(_, rest)| rest.to_owned()))
            .unwrap_or_else(|| panic!("no answer from the worker: {stdout}"))
    };
    let id = k1().id().to_owned();
    let hex = data_encoding::HEXLOWER.encode(&K1);
    assert_eq!(run(&hex), format!("ID {id}"));
    assert_eq!(run(&format!(" {hex}\n")), format!("ID {id}"));
    assert_eq!(run(&BASE64.encode(&K1)), format!("ID {id}"));
    assert_eq!(run(&BASE64URL_NOPAD.encode(&K1)), format!("ID {id}"));
    let err = run("0123");
    assert!(
        err.starts_with("ERR") && err.contains("MCP_AUTH_TEST_KEY"),
        "{err}"
    );
    assert!(!err.contains("0123"), "the error shows the value: {err}");
    // Not set at all.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let err = rt
        .block_on(EnvKey::new("MCP_AUTH_TEST_KEY_SURELY_UNSET").load_key())
        .unwrap_err();
    assert!(matches!(err, KeyError::NotSet { .. }), "{err}");
}

/// An engine logs in (DCR with a client secret, DPoP-bound tokens), refreshes with rotation and
/// serves cached tokens over an encrypted memory store; then the key rotates and the store is
/// rekeyed. At no point do the raw records hold a token, the client secret or the DPoP key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_over_an_encrypted_store_leaves_no_secret_in_the_raw_records() {
    let as1 = auth_server(|c| {
        c.dpop = true;
        c.rotate_refresh_tokens = true;
    })
    .await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let root = MemoryStore::new();
    let store: Arc<EncryptedStore<MemoryStore>> =
        Arc::new(wrap(&root, "default", KeySet::new(k1())));
    let dyn_store: Arc<dyn CredentialStore> = store.clone();
    let auth = engine_with(
        dyn_store.clone(),
        mcp_auth_core::ClientConfig::default().with_dpop(DpopMode::IfSupported),
    );
    let r = resource(&mcp);
    let key = TokenKey::new(IssuerId::new(as1.issuer()).unwrap(), r.clone());
    let mut secrets: Vec<Vec<u8>> = Vec::new();
    let mut collect = |t: &TokenSet, reg: &ClientRegistration| {
        secrets.push(t.access_token.expose_secret().as_bytes().to_vec());
        if let Some(rt) = &t.refresh_token {
            secrets.push(rt.expose_secret().as_bytes().to_vec());
        }
        let dpop = t
            .dpop_key
            .as_ref()
            .expect("DPoP-bound tokens")
            .expose_secret();
        secrets.push(dpop.as_bytes().to_vec());
        let der = BASE64URL_NOPAD.decode(dpop.as_bytes()).unwrap();
        secrets.push(BASE64.encode(&der).into_bytes());
        secrets.push(private_scalar(&der));
        secrets.push(der);
        if let Some(s) = &reg.client_secret {
            secrets.push(s.expose_secret().as_bytes().to_vec());
        }
        if let Some(s) = &reg.registration_access_token {
            secrets.push(s.expose_secret().as_bytes().to_vec());
        }
    };

    let credential = auth.access_credential(&r).await.unwrap();
    assert!(credential.is_dpop());
    let snapshot = |store: Arc<EncryptedStore<MemoryStore>>, key: TokenKey| async move {
        let t = store.get_tokens(&key).await.unwrap().unwrap().value;
        let reg = store
            .get_registration(&key.issuer)
            .await
            .unwrap()
            .unwrap()
            .value;
        (t, reg)
    };
    let (t, reg) = snapshot(store.clone(), key.clone()).await;
    assert!(
        reg.client_secret.is_some(),
        "the testkit issues a client secret"
    );
    collect(&t, &reg);
    // Cached: the same token, no request to the AS.
    as1.clear_requests();
    assert_eq!(
        auth.access_token(&r).await.unwrap().expose_secret(),
        t.access_token.expose_secret()
    );
    assert!(as1.requests().is_empty());

    // Refresh (rotating the refresh token).
    let current = store.get_tokens(&key).await.unwrap().unwrap();
    let mut expired = current.value.clone();
    expired.expires_at = Some(Timestamp::from_unix_seconds(1));
    store
        .put_tokens(&key, &expired, Expect::Version(current.version))
        .await
        .unwrap();
    auth.access_credential(&r).await.unwrap();
    let (t2, reg) = snapshot(store.clone(), key.clone()).await;
    assert_ne!(
        t2.access_token.expose_secret(),
        t.access_token.expose_secret()
    );
    collect(&t2, &reg);

    // Rotation: key 2 current, key 1 old, rekey.
    let rotated = Arc::new(EncryptedStore::new(
        root.with_namespace(Namespace::default()),
        Namespace::default(),
        KeySet::new(k2()).with_old(k1()).unwrap(),
    ));
    assert!(rotated.rekey().await.unwrap().is_complete());
    let auth2 = engine_with(
        rotated.clone(),
        mcp_auth_core::ClientConfig::default().with_dpop(DpopMode::IfSupported),
    );
    let credential = auth2.access_credential(&r).await.unwrap();
    assert!(
        credential
            .authorization()
            .expose_secret()
            .contains(t2.access_token.expose_secret())
    );

    let raw = raw_bytes(&root.with_namespace(Namespace::default())).await;
    for secret in &secrets {
        assert!(
            !contains(&raw, secret),
            "a secret ({} bytes) is in the raw records",
            secret.len()
        );
    }
    for (_, t) in rotated.inner().scan_tokens().await.unwrap() {
        assert_eq!(
            envelope_key_id(t.value.access_token.expose_secret()),
            Some(k2().id())
        );
    }
}
