//! The checks. Each opens a fresh random namespace, deletes everything it wrote before returning
//! (pass or fail), and returns a [`CheckResult`] instead of panicking, so a harness can run them
//! against deliberately broken stores and see each defect caught.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use super::{CheckResult, Failure, Outcome, StoreFactory};
use crate::error::StoreError;
use crate::ids::{IssuerId, Namespace, ResourceUri, TokenKey};
use crate::model::{
    ClientRegistration, Extra, PendingAuthorization, RegistrationKind, ResourceBinding, TokenSet,
};
use crate::record::{self, RecordKey};
use crate::store::{
    BindingStore, CredentialStore, Expect, PendingAuthorizationStore, RegistrationStore, StoreInfo,
    TokenStore,
};
use crate::time::Timestamp;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(Failure::new(format!($($fmt)+)));
        }
    };
}

/// Opens the check's namespace(s) and cleans them up afterwards.
struct Cx<'f, F: StoreFactory> {
    factory: &'f F,
    namespace: Namespace,
    store: Arc<F::Store>,
    /// Every (namespace, store) opened, with the pending states written there, for cleanup.
    opened: std::sync::Mutex<Vec<(Namespace, Arc<F::Store>)>>,
    pending_states: std::sync::Mutex<Vec<String>>,
}

impl<'f, F: StoreFactory> Cx<'f, F> {
    async fn open(factory: &'f F) -> Result<Self, Failure> {
        let namespace = Namespace::random("conformance");
        let store = Arc::new(factory.open(&namespace).await?);
        Ok(Self {
            factory,
            namespace: namespace.clone(),
            store: Arc::clone(&store),
            opened: std::sync::Mutex::new(vec![(namespace, store)]),
            pending_states: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Another fresh namespace over the same backend.
    async fn other_namespace(
        &self,
        name: Option<&str>,
    ) -> Result<(Namespace, Arc<F::Store>), Failure> {
        let namespace = match name {
            Some(n) => Namespace::new(format!("{}{n}", self.namespace.as_str()))?,
            None => Namespace::random("conformance"),
        };
        let store = Arc::new(self.factory.open(&namespace).await?);
        self.opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((namespace.clone(), Arc::clone(&store)));
        Ok((namespace, store))
    }

    /// Reopens this check's namespace (a new store over the same data).
    async fn reopen(&self) -> Result<Arc<F::Store>, Failure> {
        let store = Arc::new(self.factory.open(&self.namespace).await?);
        Ok(store)
    }

    fn track_pending(&self, state: &str) {
        self.pending_states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(state.to_owned());
    }

    /// Deletes everything this check may have written, then returns `result`.
    async fn finish(self, result: CheckResult) -> CheckResult {
        let opened = std::mem::take(
            &mut *self
                .opened
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let states = std::mem::take(
            &mut *self
                .pending_states
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let mut cleanup_error = None;
        for (_, store) in &opened {
            if let Err(e) = wipe(store.as_ref(), &states).await {
                cleanup_error.get_or_insert(e);
            }
        }
        match (result, cleanup_error) {
            (Err(e), _) => Err(e),
            (Ok(_), Some(e)) => Err(Failure::new(format!("cleanup failed: {e}"))),
            (Ok(outcome), None) => Ok(outcome),
        }
    }
}

/// Deletes every record the suite's fixtures could have created in this namespace.
async fn wipe<S: CredentialStore + ?Sized>(store: &S, states: &[String]) -> Result<(), Failure> {
    for state in states {
        // Corrupt pending records cannot be taken; the namespace is random, so a leftover is
        // harmless, but report other errors.
        match store.take_pending(state).await {
            Ok(_) | Err(StoreError::Corrupt { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut issuers = fixture_issuers();
    let mut resources = fixture_resources();
    if store.capabilities().list {
        issuers.extend(store.list_registrations().await?);
        for key in store.list_tokens().await? {
            issuers.push(key.issuer.clone());
            resources.push(key.resource);
        }
        resources.extend(store.list_bindings().await?);
    }
    for issuer in &issuers {
        store.delete_registration(issuer, Expect::Any).await?;
        store.delete_issuer_tokens(issuer).await?;
        for resource in &resources {
            store
                .delete_tokens(
                    &TokenKey::new(issuer.clone(), resource.clone()),
                    Expect::Any,
                )
                .await?;
        }
    }
    for resource in &resources {
        store.delete_binding(resource, Expect::Any).await?;
    }
    Ok(())
}

macro_rules! with_cx {
    ($factory:expr, |$cx:ident| $body:block) => {{
        let $cx = Cx::open($factory).await?;
        let result: CheckResult = async { $body }.await;
        $cx.finish(result).await
    }};
}

// ---------------------------------------------------------------------------------------------
// Fixtures

const ISSUER_A: &str = "https://as-a.conformance.example/tenant";
const ISSUER_B: &str = "https://as-b.conformance.example/tenant";
const RESOURCE_1: &str = "https://mcp-1.conformance.example/mcp";
const RESOURCE_2: &str = "https://mcp-2.conformance.example/mcp";

/// Issuers that differ from `https://as.conformance.example/t` only in ways that must matter.
const LOOKALIKE_ISSUERS: &[&str] = &[
    "https://as.conformance.example/t",
    "https://as.conformance.example/t/",
    "https://as.conformance.example/T",
    "https://as.conformance.example:443/t",
    "https://as.conformance.example/%74",
    "https://as.conformance.example/t%2F",
    "https://as.conformance.example/t/caf\u{e9}",
    "https://as.conformance.example/t/cafe\u{301}",
    "https://as.conformance.example/t/caf%C3%A9",
    "https://xn--caf-dma.conformance.example/t",
    "https://as.conformance.example/t:x",
    "https://as.conformance.example/t*",
    "https://as.conformance.example/t{x}",
    "https://as.conformance.example/t/x.y",
    "https://as.conformance.example/t/x",
    "https://as.conformance.example/t_x",
];

const LOOKALIKE_RESOURCES: &[&str] = &[
    "https://mcp.conformance.example/mcp",
    "https://mcp.conformance.example/mcp/",
    "https://mcp.conformance.example/MCP",
    "https://mcp.conformance.example/mcp?x=1",
    "https://mcp.conformance.example:8443/mcp",
    "https://mcp.conformance.example",
];

fn fixture_issuers() -> Vec<IssuerId> {
    [ISSUER_A, ISSUER_B]
        .iter()
        .chain(LOOKALIKE_ISSUERS)
        .filter_map(|s| IssuerId::new(*s).ok())
        .collect()
}

fn fixture_resources() -> Vec<ResourceUri> {
    [RESOURCE_1, RESOURCE_2]
        .iter()
        .chain(LOOKALIKE_RESOURCES)
        .filter_map(|s| ResourceUri::new(*s).ok())
        .collect()
}

fn issuer(s: &str) -> Result<IssuerId, Failure> {
    Ok(IssuerId::new(s)?)
}

fn resource(s: &str) -> Result<ResourceUri, Failure> {
    Ok(ResourceUri::new(s)?)
}

fn tagged_secret(kind: &str, tag: &str) -> SecretString {
    SecretString::from(format!("SECRET-{kind}-{tag}"))
}

fn rich_extra(tag: &str) -> Extra {
    let value = json!({
        "tag": tag,
        "unicode": "caf\u{e9} \u{1F511} \u{4E2D}\u{6587}",
        "nested": {"list": [1, 2.5, -3, true, null, "x"], "empty": {}},
        "big": 9_007_199_254_740_993_u64,
        "quote\"and\\slash": "line\nbreak",
    });
    match value {
        serde_json::Value::Object(map) => map,
        _ => Extra::new(),
    }
}

fn full_registration(issuer: &IssuerId, tag: &str) -> ClientRegistration {
    let mut r = ClientRegistration::new(
        issuer.clone(),
        format!("client-{tag}"),
        RegistrationKind::Dynamic,
    );
    r.client_secret = Some(tagged_secret("client", tag));
    r.client_secret_expires_at = Some(Timestamp::from_unix_seconds(4_102_444_800));
    r.client_id_issued_at = Some(Timestamp::from_unix_seconds(1_700_000_000));
    r.token_endpoint_auth_method = "client_secret_basic".to_owned();
    r.redirect_uris = vec![
        "http://127.0.0.1:33418/callback".to_owned(),
        format!("https://app.example/cb/{tag}"),
    ];
    r.grant_types = vec!["authorization_code".to_owned(), "refresh_token".to_owned()];
    r.registration_access_token = Some(tagged_secret("rat", tag));
    r.registration_client_uri = Some(format!("https://as.example/register/{tag}"));
    r.created_at = Timestamp::from_unix_seconds(1_700_000_123);
    r.extra = rich_extra(tag);
    r
}

fn full_tokens(tag: &str) -> TokenSet {
    let mut t = TokenSet::new(tagged_secret("access", tag));
    t.token_type = "DPoP".to_owned();
    t.expires_at = Some(Timestamp::from_unix_seconds(4_102_444_801));
    t.refresh_token = Some(tagged_secret("refresh", tag));
    t.scopes = vec!["mcp:read".to_owned(), format!("scope-{tag}")];
    t.obtained_at = Timestamp::from_unix_seconds(1_700_000_456);
    t.refresh_state = Some(crate::model::RefreshState::Failed {
        at: Timestamp::from_unix_seconds(1_700_000_500),
        retry_after: Timestamp::from_unix_seconds(1_700_000_530),
        error: format!("temporarily_unavailable-{tag}"),
    });
    // The DPoP private key of DPoP-bound tokens (RFC 9449): a secret stored with them.
    t.dpop_key = Some(tagged_secret("dpop-key", tag));
    t.extra = rich_extra(tag);
    t
}

fn full_binding(resource: &ResourceUri, issuer: &IssuerId, tag: &str) -> ResourceBinding {
    let mut b = ResourceBinding::new(resource.clone(), issuer.clone());
    b.resource_metadata = rich_extra(&format!("prm-{tag}"));
    b.authorization_server_metadata = rich_extra(&format!("asm-{tag}"));
    b.bound_at = Timestamp::from_unix_seconds(1_700_000_789);
    b.extra = rich_extra(tag);
    b
}

fn full_pending(
    state: &str,
    issuer: &IssuerId,
    resource: &ResourceUri,
    ttl: Duration,
) -> PendingAuthorization {
    let mut p = PendingAuthorization::new(
        state,
        tagged_secret("verifier", state),
        issuer.clone(),
        resource.clone(),
        "client-pending",
        "http://127.0.0.1:33418/callback",
        ttl,
    );
    p.scopes = vec!["mcp:read".to_owned(), "offline_access".to_owned()];
    p.extra = rich_extra(state);
    p
}

fn fresh_state() -> String {
    format!("state-{}", crate::random_hex(12))
}

fn secret_eq(a: &Option<SecretString>, b: &Option<SecretString>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.expose_secret() == b.expose_secret(),
        _ => false,
    }
}

fn same_registration(got: &ClientRegistration, want: &ClientRegistration) -> Result<(), Failure> {
    let mismatch =
        |field: &str| Failure::new(format!("registration field `{field}` did not round-trip"));
    if got.issuer != want.issuer {
        return Err(Failure::new(format!(
            "registration for {} came back with issuer {}",
            want.issuer, got.issuer
        )));
    }
    if got.client_id != want.client_id {
        return Err(Failure::new(format!(
            "registration for {} came back with client_id {:?}, expected {:?}",
            want.issuer, got.client_id, want.client_id
        )));
    }
    ensure!(
        secret_eq(&got.client_secret, &want.client_secret),
        "{}",
        mismatch("client_secret")
    );
    ensure!(
        got.client_secret_expires_at == want.client_secret_expires_at,
        "{}",
        mismatch("client_secret_expires_at")
    );
    ensure!(
        got.client_id_issued_at == want.client_id_issued_at,
        "{}",
        mismatch("client_id_issued_at")
    );
    ensure!(
        got.token_endpoint_auth_method == want.token_endpoint_auth_method,
        "{}",
        mismatch("token_endpoint_auth_method")
    );
    ensure!(
        got.redirect_uris == want.redirect_uris,
        "{}",
        mismatch("redirect_uris")
    );
    ensure!(
        got.grant_types == want.grant_types,
        "{}",
        mismatch("grant_types")
    );
    ensure!(got.kind == want.kind, "{}", mismatch("kind"));
    ensure!(
        secret_eq(
            &got.registration_access_token,
            &want.registration_access_token
        ),
        "{}",
        mismatch("registration_access_token")
    );
    ensure!(
        got.registration_client_uri == want.registration_client_uri,
        "{}",
        mismatch("registration_client_uri")
    );
    ensure!(
        got.created_at == want.created_at,
        "{}",
        mismatch("created_at")
    );
    ensure!(got.extra == want.extra, "{}", mismatch("extra"));
    Ok(())
}

fn same_tokens(got: &TokenSet, want: &TokenSet, what: &str) -> Result<(), Failure> {
    let mismatch = |field: &str| {
        Failure::new(format!(
            "tokens for {what}: field `{field}` did not round-trip (or came from another key)"
        ))
    };
    ensure!(
        got.access_token.expose_secret() == want.access_token.expose_secret(),
        "{}",
        mismatch("access_token")
    );
    ensure!(
        got.token_type == want.token_type,
        "{}",
        mismatch("token_type")
    );
    ensure!(
        got.expires_at == want.expires_at,
        "{}",
        mismatch("expires_at")
    );
    ensure!(
        got.refresh_state == want.refresh_state,
        "{}",
        mismatch("refresh_state")
    );
    ensure!(
        secret_eq(&got.refresh_token, &want.refresh_token),
        "{}",
        mismatch("refresh_token")
    );
    ensure!(
        secret_eq(&got.dpop_key, &want.dpop_key),
        "{}",
        mismatch("dpop_key")
    );
    ensure!(got.scopes == want.scopes, "{}", mismatch("scopes"));
    ensure!(
        got.obtained_at == want.obtained_at,
        "{}",
        mismatch("obtained_at")
    );
    ensure!(got.extra == want.extra, "{}", mismatch("extra"));
    Ok(())
}

fn same_pending(got: &PendingAuthorization, want: &PendingAuthorization) -> Result<(), Failure> {
    let mismatch = |field: &str| {
        Failure::new(format!(
            "pending authorization field `{field}` did not round-trip"
        ))
    };
    ensure!(got.state == want.state, "{}", mismatch("state"));
    ensure!(
        got.pkce_verifier.expose_secret() == want.pkce_verifier.expose_secret(),
        "{}",
        mismatch("pkce_verifier")
    );
    ensure!(got.issuer == want.issuer, "{}", mismatch("issuer"));
    ensure!(got.resource == want.resource, "{}", mismatch("resource"));
    ensure!(got.client_id == want.client_id, "{}", mismatch("client_id"));
    ensure!(
        got.redirect_uri == want.redirect_uri,
        "{}",
        mismatch("redirect_uri")
    );
    ensure!(got.scopes == want.scopes, "{}", mismatch("scopes"));
    ensure!(
        got.created_at == want.created_at,
        "{}",
        mismatch("created_at")
    );
    ensure!(
        got.expires_at == want.expires_at,
        "{}",
        mismatch("expires_at")
    );
    ensure!(got.extra == want.extra, "{}", mismatch("extra"));
    Ok(())
}

async fn expect_registration<S: RegistrationStore + ?Sized>(
    store: &S,
    want: &ClientRegistration,
) -> Result<(), Failure> {
    match store.get_registration(&want.issuer).await? {
        Some(got) => same_registration(&got.value, want),
        None => Err(Failure::new(format!(
            "registration for {} is missing",
            want.issuer
        ))),
    }
}

async fn expect_tokens<S: TokenStore + ?Sized>(
    store: &S,
    key: &TokenKey,
    want: &TokenSet,
) -> Result<(), Failure> {
    match store.get_tokens(key).await? {
        Some(got) => same_tokens(&got.value, want, &key.to_string()),
        None => Err(Failure::new(format!("tokens for {key} are missing"))),
    }
}

fn expect_conflict<T: std::fmt::Debug>(
    result: Result<T, StoreError>,
    what: &str,
) -> Result<(), Failure> {
    match result {
        Err(StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(Failure::new(format!(
            "{what}: expected Conflict, got error {e}"
        ))),
        Ok(v) => Err(Failure::new(format!(
            "{what}: expected Conflict, but the write succeeded ({v:?})"
        ))),
    }
}

/// Writes one registration per issuer in `issuers` (each with its own client_id) and checks that
/// each reads back as its own.
async fn distinct_issuers<F: StoreFactory>(factory: &F, issuers: &[&str]) -> CheckResult {
    with_cx!(factory, |cx| {
        let resource = resource(RESOURCE_1)?;
        let mut written = Vec::new();
        for (i, raw) in issuers.iter().enumerate() {
            let id = issuer(raw)?;
            let reg = full_registration(&id, &format!("lookalike{i}"));
            let tokens = full_tokens(&format!("lookalike{i}"));
            cx.store.put_registration(&reg, Expect::Any).await?;
            let key = TokenKey::new(id.clone(), resource.clone());
            cx.store.put_tokens(&key, &tokens, Expect::Any).await?;
            written.push((reg, key, tokens));
        }
        for (reg, key, tokens) in &written {
            expect_registration(cx.store.as_ref(), reg).await?;
            expect_tokens(cx.store.as_ref(), key, tokens).await?;
        }
        // Deleting one must not delete its look-alikes.
        if let Some((first, first_key, _)) = written.first() {
            cx.store
                .delete_registration(&first.issuer, Expect::Any)
                .await?;
            cx.store.delete_issuer_tokens(&first_key.issuer).await?;
            for (reg, key, tokens) in written.iter().skip(1) {
                expect_registration(cx.store.as_ref(), reg).await?;
                expect_tokens(cx.store.as_ref(), key, tokens).await?;
            }
            ensure!(
                cx.store.get_registration(&first.issuer).await?.is_none(),
                "deleted registration for {} is still readable",
                first.issuer
            );
        }
        Ok(Outcome::Passed)
    })
}

// ---------------------------------------------------------------------------------------------
// Round trips

/// Every field of a registration, secrets and a rich `extra` map included, reads back unchanged.
///
/// # Errors
///
/// [`Failure`] when a registration of any kind reads back different from what was written; also
/// when the factory cannot open a namespace, a store call fails unexpectedly, or the check's
/// records cannot be cleaned up.
pub async fn registration_round_trips_every_field<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        for kind in [
            RegistrationKind::PreRegistered,
            RegistrationKind::Dynamic,
            RegistrationKind::MetadataDocument,
        ] {
            let mut reg = full_registration(&issuer(ISSUER_A)?, "rt");
            reg.kind = kind;
            cx.store.put_registration(&reg, Expect::Any).await?;
            expect_registration(cx.store.as_ref(), &reg).await?;
        }
        Ok(Outcome::Passed)
    })
}

/// Every field of a token set reads back unchanged.
///
/// # Errors
///
/// [`Failure`] when the token set reads back different from what was written; also when the factory
/// cannot open a namespace, a store call fails unexpectedly, or the check's records cannot be
/// cleaned up.
pub async fn tokens_round_trip_every_field<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let key = TokenKey::new(issuer(ISSUER_A)?, resource(RESOURCE_1)?);
        let tokens = full_tokens("rt");
        cx.store.put_tokens(&key, &tokens, Expect::Any).await?;
        expect_tokens(cx.store.as_ref(), &key, &tokens).await?;
        Ok(Outcome::Passed)
    })
}

/// Every field of a resource binding reads back unchanged.
///
/// # Errors
///
/// [`Failure`] when the binding reads back different from what was written, or is missing; also
/// when the factory cannot open a namespace, a store call fails unexpectedly, or the check's
/// records cannot be cleaned up.
pub async fn binding_round_trips_every_field<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let binding = full_binding(&resource(RESOURCE_1)?, &issuer(ISSUER_A)?, "rt");
        cx.store.put_binding(&binding, Expect::Any).await?;
        let got = cx.store.get_binding(&binding.resource).await?;
        ensure!(
            got.as_ref().map(|g| &g.value) == Some(&binding),
            "binding did not round-trip: {:?}",
            got.map(|g| g.value)
        );
        Ok(Outcome::Passed)
    })
}

/// Every field of a pending authorization reads back unchanged.
///
/// # Errors
///
/// [`Failure`] when the pending authorization is missing or reads back different from what was
/// inserted; also when the factory cannot open a namespace, a store call fails unexpectedly, or the
/// check's records cannot be cleaned up.
pub async fn pending_round_trips_every_field<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let state = fresh_state();
        cx.track_pending(&state);
        let pending = full_pending(
            &state,
            &issuer(ISSUER_A)?,
            &resource(RESOURCE_1)?,
            Duration::from_secs(600),
        );
        cx.store.insert_pending(&pending).await?;
        match cx.store.take_pending(&state).await? {
            Some(got) => same_pending(&got, &pending)?,
            None => return Err(Failure::new("pending authorization is missing")),
        }
        Ok(Outcome::Passed)
    })
}

/// Records with every optional field absent and empty collections read back the same way
/// (absent is not turned into empty strings or zero).
///
/// # Errors
///
/// [`Failure`] when a minimal registration or token set reads back different, with an absent field
/// turned into an empty or zero value; also when the factory cannot open a namespace, a store call
/// fails unexpectedly, or the check's records cannot be cleaned up.
pub async fn absent_optional_fields_round_trip<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let mut reg = ClientRegistration::new(
            issuer(ISSUER_A)?,
            "minimal",
            RegistrationKind::MetadataDocument,
        );
        reg.created_at = Timestamp::from_unix_seconds(0);
        cx.store.put_registration(&reg, Expect::Any).await?;
        expect_registration(cx.store.as_ref(), &reg).await?;
        let key = TokenKey::new(issuer(ISSUER_A)?, resource(RESOURCE_1)?);
        let mut tokens = TokenSet::new(SecretString::from("SECRET-minimal".to_owned()));
        tokens.obtained_at = Timestamp::from_unix_seconds(0);
        cx.store.put_tokens(&key, &tokens, Expect::Any).await?;
        expect_tokens(cx.store.as_ref(), &key, &tokens).await?;
        Ok(Outcome::Passed)
    })
}

/// Unknown fields in `extra` (nested objects, unicode, large integers, escapes) survive a round
/// trip and a rewrite.
///
/// # Errors
///
/// [`Failure`] when an unknown `extra` field is lost or altered by the round trip or the rewrite;
/// also when the factory cannot open a namespace, a store call fails unexpectedly, or the check's
/// records cannot be cleaned up.
pub async fn unknown_extra_fields_survive<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let mut reg = full_registration(&issuer(ISSUER_A)?, "extra");
        reg.extra.insert(
            "dpop_jkt".to_owned(),
            json!("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"),
        );
        reg.extra
            .insert("future".to_owned(), json!({"deep": {"deeper": [{"a": 1}]}}));
        cx.store.put_registration(&reg, Expect::Any).await?;
        let read = cx
            .store
            .get_registration(&reg.issuer)
            .await?
            .ok_or_else(|| Failure::new("registration is missing"))?;
        // Write back what was read, as a client of an older version would.
        cx.store
            .put_registration(&read.value, Expect::Version(read.version))
            .await?;
        expect_registration(cx.store.as_ref(), &reg).await?;
        Ok(Outcome::Passed)
    })
}

// ---------------------------------------------------------------------------------------------
// Isolation

/// Two issuers' registrations never see each other.
///
/// # Errors
///
/// [`Failure`] when one issuer's registration is overwritten or altered by the other's; also when
/// the factory cannot open a namespace, a store call fails unexpectedly, or the check's records
/// cannot be cleaned up.
pub async fn registrations_isolated_per_issuer<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let a = full_registration(&issuer(ISSUER_A)?, "a");
        let b = full_registration(&issuer(ISSUER_B)?, "b");
        cx.store.put_registration(&a, Expect::Absent).await?;
        cx.store.put_registration(&b, Expect::Absent).await?;
        expect_registration(cx.store.as_ref(), &a).await?;
        expect_registration(cx.store.as_ref(), &b).await?;
        Ok(Outcome::Passed)
    })
}

/// Tokens of the same resource from two issuers never see each other.
///
/// # Errors
///
/// [`Failure`] when tokens written for one issuer are visible under the other, or either set reads
/// back altered; also when the factory cannot open a namespace, a store call fails unexpectedly, or
/// the check's records cannot be cleaned up.
pub async fn tokens_isolated_per_issuer<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let ka = TokenKey::new(issuer(ISSUER_A)?, resource(RESOURCE_1)?);
        let kb = TokenKey::new(issuer(ISSUER_B)?, resource(RESOURCE_1)?);
        let ta = full_tokens("a");
        cx.store.put_tokens(&ka, &ta, Expect::Absent).await?;
        ensure!(
            cx.store.get_tokens(&kb).await?.is_none(),
            "tokens issued by {} are visible under issuer {}",
            ka.issuer,
            kb.issuer
        );
        let tb = full_tokens("b");
        cx.store.put_tokens(&kb, &tb, Expect::Absent).await?;
        expect_tokens(cx.store.as_ref(), &ka, &ta).await?;
        expect_tokens(cx.store.as_ref(), &kb, &tb).await?;
        Ok(Outcome::Passed)
    })
}

/// Tokens of one issuer for two resources never see each other.
///
/// # Errors
///
/// [`Failure`] when tokens written for one resource are visible under the other, or either set
/// reads back altered; also when the factory cannot open a namespace, a store call fails
/// unexpectedly, or the check's records cannot be cleaned up.
pub async fn tokens_isolated_per_resource<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let k1 = TokenKey::new(issuer(ISSUER_A)?, resource(RESOURCE_1)?);
        let k2 = TokenKey::new(issuer(ISSUER_A)?, resource(RESOURCE_2)?);
        let t1 = full_tokens("r1");
        cx.store.put_tokens(&k1, &t1, Expect::Absent).await?;
        ensure!(
            cx.store.get_tokens(&k2).await?.is_none(),
            "tokens for {} are visible for {}",
            k1.resource,
            k2.resource
        );
        let t2 = full_tokens("r2");
        cx.store.put_tokens(&k2, &t2, Expect::Absent).await?;
        expect_tokens(cx.store.as_ref(), &k1, &t1).await?;
        expect_tokens(cx.store.as_ref(), &k2, &t2).await?;
        cx.store.delete_tokens(&k1, Expect::Any).await?;
        expect_tokens(cx.store.as_ref(), &k2, &t2).await?;
        Ok(Outcome::Passed)
    })
}

/// Bindings of two resources never see each other.
///
/// # Errors
///
/// [`Failure`] when one resource's binding is visible under the other, or either reads back
/// altered; also when the factory cannot open a namespace, a store call fails unexpectedly, or the
/// check's records cannot be cleaned up.
pub async fn bindings_isolated_per_resource<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let b1 = full_binding(&resource(RESOURCE_1)?, &issuer(ISSUER_A)?, "1");
        let b2 = full_binding(&resource(RESOURCE_2)?, &issuer(ISSUER_B)?, "2");
        cx.store.put_binding(&b1, Expect::Absent).await?;
        cx.store.put_binding(&b2, Expect::Absent).await?;
        for b in [&b1, &b2] {
            let got = cx.store.get_binding(&b.resource).await?;
            ensure!(
                got.as_ref().map(|g| &g.value) == Some(b),
                "binding of {} came back as {:?}",
                b.resource,
                got.map(|g| g.value)
            );
        }
        Ok(Outcome::Passed)
    })
}

/// Two namespaces over one backend keep separate registrations.
///
/// # Errors
///
/// [`Failure`] when a registration written in one namespace is visible in, or altered by writes to,
/// the other; also when the factory cannot open a namespace, a store call fails unexpectedly, or
/// the check's records cannot be cleaned up.
pub async fn namespaces_isolate_registrations<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let (_, other) = cx.other_namespace(None).await?;
        let mine = full_registration(&issuer(ISSUER_A)?, "mine");
        ensure!(
            other.get_registration(&mine.issuer).await?.is_none(),
            "fresh namespace is not empty"
        );
        cx.store.put_registration(&mine, Expect::Absent).await?;
        ensure!(
            other.get_registration(&mine.issuer).await?.is_none(),
            "a registration written in one namespace is visible in another"
        );
        let theirs = full_registration(&issuer(ISSUER_A)?, "theirs");
        other.put_registration(&theirs, Expect::Absent).await?;
        expect_registration(cx.store.as_ref(), &mine).await?;
        expect_registration(other.as_ref(), &theirs).await?;
        other
            .delete_registration(&theirs.issuer, Expect::Any)
            .await?;
        expect_registration(cx.store.as_ref(), &mine).await?;
        if other.capabilities().list {
            ensure!(
                other.list_registrations().await?.is_empty(),
                "list in one namespace shows another namespace's registrations"
            );
        }
        Ok(Outcome::Passed)
    })
}

/// Two namespaces keep separate tokens, bindings and pending authorizations, and deleting an
/// issuer's tokens in one leaves the other's intact.
///
/// # Errors
///
/// [`Failure`] when a token set, binding or pending authorization crosses namespaces, or deleting
/// an issuer's tokens in one namespace removes them in the other; also when the factory cannot open
/// a namespace, a store call fails unexpectedly, or the check's records cannot be cleaned up.
pub async fn namespaces_isolate_tokens_bindings_and_pending<F: StoreFactory>(
    factory: &F,
) -> CheckResult {
    with_cx!(factory, |cx| {
        let (_, other) = cx.other_namespace(None).await?;
        let key = TokenKey::new(issuer(ISSUER_A)?, resource(RESOURCE_1)?);
        let mine = full_tokens("mine");
        let theirs = full_tokens("theirs");
        cx.store.put_tokens(&key, &mine, Expect::Absent).await?;
        ensure!(
            other.get_tokens(&key).await?.is_none(),
            "tokens leak across namespaces"
        );
        other.put_tokens(&key, &theirs, Expect::Absent).await?;
        other.delete_issuer_tokens(&key.issuer).await?;
        expect_tokens(cx.store.as_ref(), &key, &mine).await?;

        let binding = full_binding(&key.resource, &key.issuer, "mine");
        cx.store.put_binding(&binding, Expect::Absent).await?;
        ensure!(
            other.get_binding(&key.resource).await?.is_none(),
            "bindings leak across namespaces"
        );

        let state = fresh_state();
        cx.track_pending(&state);
        let pending = full_pending(&state, &key.issuer, &key.resource, Duration::from_secs(600));
        cx.store.insert_pending(&pending).await?;
        ensure!(
            other.take_pending(&state).await?.is_none(),
            "a pending authorization was redeemed from another namespace"
        );
        ensure!(
            cx.store.take_pending(&state).await?.is_some(),
            "pending authorization vanished after a lookup in another namespace"
        );
        Ok(Outcome::Passed)
    })
}

/// A refresh lease in one namespace does not block the same key in another.
///
/// # Errors
///
/// [`Failure`] when a lease held in one namespace keeps the same key from being acquired in the
/// other; also when the factory cannot open a namespace, a store call fails unexpectedly, or the
/// check's records cannot be cleaned up.
pub async fn namespaces_isolate_leases<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let (_, other) = cx.other_namespace(None).await?;
        let key = TokenKey::new(issuer(ISSUER_A)?, resource(RESOURCE_1)?);
        let ttl = Duration::from_secs(30);
        let mine = cx.store.try_acquire_refresh_lease(&key, ttl).await?;
        ensure!(mine.is_some(), "could not acquire a free lease");
        let theirs = other.try_acquire_refresh_lease(&key, ttl).await?;
        ensure!(
            theirs.is_some(),
            "a lease in one namespace blocks another namespace"
        );
        for (store, lease) in [(&cx.store, mine), (&other, theirs)] {
            if let Some(lease) = lease {
                store.release_refresh_lease(&lease).await?;
            }
        }
        Ok(Outcome::Passed)
    })
}

/// Namespaces whose names differ by case, a trailing character or a separator stay apart.
///
/// # Errors
///
/// [`Failure`] when a record written in one of the look-alike namespaces is visible in another;
/// also when the factory cannot open a namespace, a store call fails unexpectedly, or the check's
/// records cannot be cleaned up.
pub async fn lookalike_namespaces_are_distinct<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let suffixes = ["/", ":", "A", "a", " ", "{x}", "*"];
        let reg_issuer = issuer(ISSUER_A)?;
        let mut stores = Vec::new();
        for (i, suffix) in suffixes.iter().enumerate() {
            let (_, store) = cx.other_namespace(Some(suffix)).await?;
            let reg = full_registration(&reg_issuer, &format!("ns{i}"));
            store.put_registration(&reg, Expect::Absent).await?;
            stores.push((store, reg));
        }
        for (store, reg) in &stores {
            expect_registration(store.as_ref(), reg).await?;
        }
        ensure!(
            cx.store.get_registration(&reg_issuer).await?.is_none(),
            "a look-alike namespace's registration is visible in the base namespace"
        );
        Ok(Outcome::Passed)
    })
}

/// `https://as/t` and `https://as/t/` are different issuers (no trailing-slash normalisation).
///
/// # Errors
///
/// [`Failure`] when the two issuers share a registration or tokens; also when the factory cannot
/// open a namespace, a store call fails unexpectedly, or the check's records cannot be cleaned up.
pub async fn lookalike_issuer_trailing_slash<F: StoreFactory>(factory: &F) -> CheckResult {
    distinct_issuers(
        factory,
        &[
            "https://as.conformance.example/t",
            "https://as.conformance.example/t/",
            "https://as.conformance.example",
            "https://as.conformance.example/",
        ],
    )
    .await
}

/// Issuers differing only by case in the path are different.
///
/// # Errors
///
/// [`Failure`] when the two issuers share a registration or tokens; also when the factory cannot
/// open a namespace, a store call fails unexpectedly, or the check's records cannot be cleaned up.
pub async fn lookalike_issuer_path_case<F: StoreFactory>(factory: &F) -> CheckResult {
    distinct_issuers(
        factory,
        &[
            "https://as.conformance.example/t",
            "https://as.conformance.example/T",
            "https://as.conformance.example/tA",
            "https://as.conformance.example/ta",
        ],
    )
    .await
}

/// An explicit default port makes a different issuer string.
///
/// # Errors
///
/// [`Failure`] when the two issuers share a registration or tokens; also when the factory cannot
/// open a namespace, a store call fails unexpectedly, or the check's records cannot be cleaned up.
pub async fn lookalike_issuer_explicit_default_port<F: StoreFactory>(factory: &F) -> CheckResult {
    distinct_issuers(
        factory,
        &[
            "https://as.conformance.example/t",
            "https://as.conformance.example:443/t",
        ],
    )
    .await
}

/// Percent-encoded and literal characters are different issuers.
///
/// # Errors
///
/// [`Failure`] when the two issuers share a registration or tokens; also when the factory cannot
/// open a namespace, a store call fails unexpectedly, or the check's records cannot be cleaned up.
pub async fn lookalike_issuer_percent_encoding<F: StoreFactory>(factory: &F) -> CheckResult {
    distinct_issuers(
        factory,
        &[
            "https://as.conformance.example/t",
            "https://as.conformance.example/%74",
            "https://as.conformance.example/t%2F",
            "https://as.conformance.example/t%2f",
        ],
    )
    .await
}

/// Unicode normalisation forms and IDN/punycode hosts are different issuers.
///
/// # Errors
///
/// [`Failure`] when any two of the issuers share a registration or tokens; also when the factory
/// cannot open a namespace, a store call fails unexpectedly, or the check's records cannot be
/// cleaned up.
pub async fn lookalike_issuer_unicode<F: StoreFactory>(factory: &F) -> CheckResult {
    distinct_issuers(
        factory,
        &[
            "https://as.conformance.example/t/caf\u{e9}",
            "https://as.conformance.example/t/cafe\u{301}",
            "https://as.conformance.example/t/caf%C3%A9",
            "https://caf\u{e9}.conformance.example/t",
            "https://xn--caf-dma.conformance.example/t",
        ],
    )
    .await
}

/// Characters that are syntax in some backend's keys (`:` `*` `/` `{` `}` `.` `_`) cannot make two
/// issuers collide.
///
/// # Errors
///
/// [`Failure`] when any two of the issuers share a registration or tokens; also when the factory
/// cannot open a namespace, a store call fails unexpectedly, or the check's records cannot be
/// cleaned up.
pub async fn lookalike_issuer_key_syntax_characters<F: StoreFactory>(factory: &F) -> CheckResult {
    distinct_issuers(
        factory,
        &[
            "https://as.conformance.example/t:x",
            "https://as.conformance.example/t*",
            "https://as.conformance.example/t",
            "https://as.conformance.example/t{x}",
            "https://as.conformance.example/t/x.y",
            "https://as.conformance.example/t/x",
            "https://as.conformance.example/t_x",
            "https://as.conformance.example/t/x:y",
        ],
    )
    .await
}

/// Resources differing by a path slash, case, query or port hold separate tokens.
///
/// # Errors
///
/// [`Failure`] when any two of the resources share tokens; also when the factory cannot open a
/// namespace, a store call fails unexpectedly, or the check's records cannot be cleaned up.
pub async fn lookalike_resources_are_distinct<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let id = issuer(ISSUER_A)?;
        let mut written = Vec::new();
        for (i, raw) in LOOKALIKE_RESOURCES.iter().enumerate() {
            let key = TokenKey::new(id.clone(), resource(raw)?);
            let tokens = full_tokens(&format!("res{i}"));
            cx.store.put_tokens(&key, &tokens, Expect::Absent).await?;
            written.push((key, tokens));
        }
        for (key, tokens) in &written {
            expect_tokens(cx.store.as_ref(), key, tokens).await?;
        }
        Ok(Outcome::Passed)
    })
}

/// `delete_issuer_tokens` removes every token of that issuer and nothing else.
///
/// # Errors
///
/// [`Failure`] when a token of that issuer survives the delete, or another issuer's token is
/// removed or altered; also when the factory cannot open a namespace, a store call fails
/// unexpectedly, or the check's records cannot be cleaned up.
pub async fn delete_issuer_tokens_leaves_other_issuers<F: StoreFactory>(
    factory: &F,
) -> CheckResult {
    with_cx!(factory, |cx| {
        let a = issuer(ISSUER_A)?;
        let b = issuer(ISSUER_B)?;
        let a_slash = issuer(&format!("{ISSUER_A}/"))?;
        let mut keep = Vec::new();
        let mut gone = Vec::new();
        for (i, r) in [RESOURCE_1, RESOURCE_2].iter().enumerate() {
            let r = resource(r)?;
            gone.push(TokenKey::new(a.clone(), r.clone()));
            keep.push((
                TokenKey::new(b.clone(), r.clone()),
                full_tokens(&format!("b{i}")),
            ));
            keep.push((
                TokenKey::new(a_slash.clone(), r.clone()),
                full_tokens(&format!("s{i}")),
            ));
        }
        for key in &gone {
            cx.store
                .put_tokens(key, &full_tokens("gone"), Expect::Absent)
                .await?;
        }
        for (key, tokens) in &keep {
            cx.store.put_tokens(key, tokens, Expect::Absent).await?;
        }
        let reg = full_registration(&a, "kept");
        cx.store.put_registration(&reg, Expect::Absent).await?;
        let deleted = cx.store.delete_issuer_tokens(&a).await?;
        ensure!(
            deleted == gone.len(),
            "delete_issuer_tokens reported {deleted} deletions, expected {}",
            gone.len()
        );
        for key in &gone {
            ensure!(
                cx.store.get_tokens(key).await?.is_none(),
                "tokens for {key} survived delete_issuer_tokens"
            );
        }
        for (key, tokens) in &keep {
            expect_tokens(cx.store.as_ref(), key, tokens).await?;
        }
        expect_registration(cx.store.as_ref(), &reg).await?;
        Ok(Outcome::Passed)
    })
}

/// Deleting one issuer's registration leaves the others and all tokens intact.
///
/// # Errors
///
/// [`Failure`] when the deleted registration is still readable, or another issuer's registration or
/// any token is removed or altered; also when the factory cannot open a namespace, a store call
/// fails unexpectedly, or the check's records cannot be cleaned up.
pub async fn delete_registration_leaves_other_issuers<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let a = full_registration(&issuer(ISSUER_A)?, "a");
        let b = full_registration(&issuer(ISSUER_B)?, "b");
        let key = TokenKey::new(a.issuer.clone(), resource(RESOURCE_1)?);
        let tokens = full_tokens("a");
        cx.store.put_registration(&a, Expect::Absent).await?;
        cx.store.put_registration(&b, Expect::Absent).await?;
        cx.store.put_tokens(&key, &tokens, Expect::Absent).await?;
        ensure!(
            cx.store.delete_registration(&a.issuer, Expect::Any).await?,
            "delete of an existing registration reported none"
        );
        ensure!(
            cx.store.get_registration(&a.issuer).await?.is_none(),
            "deleted registration is still readable"
        );
        expect_registration(cx.store.as_ref(), &b).await?;
        expect_tokens(cx.store.as_ref(), &key, &tokens).await?;
        Ok(Outcome::Passed)
    })
}

// ---------------------------------------------------------------------------------------------
// Compare-and-swap

/// Reading what was never written gives `None`, not an error.
///
/// # Errors
///
/// [`Failure`] when a read of a missing registration, token set, binding or pending authorization
/// gives a value or an error instead of `None`; also when the factory cannot open a
/// namespace, a store call fails unexpectedly, or the check's records cannot be cleaned up.
pub async fn get_missing_is_none<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let key = TokenKey::new(issuer(ISSUER_A)?, resource(RESOURCE_1)?);
        ensure!(
            cx.store.get_registration(&key.issuer).await?.is_none(),
            "registration exists in a fresh namespace"
        );
        ensure!(
            cx.store.get_tokens(&key).await?.is_none(),
            "tokens exist in a fresh namespace"
        );
        ensure!(
            cx.store.get_binding(&key.resource).await?.is_none(),
            "binding exists in a fresh namespace"
        );
        ensure!(
            cx.store.take_pending(&fresh_state()).await?.is_none(),
            "pending authorization exists in a fresh namespace"
        );
        Ok(Outcome::Passed)
    })
}

/// `Expect::Absent` fails with `Conflict` when a record exists, and leaves it unchanged.
///
/// # Errors
///
/// [`Failure`] when an `Expect::Absent` write over an existing record succeeds, fails with another
/// error, or changes the record; also when the factory cannot open a namespace, a store call fails
/// unexpectedly, or the check's records cannot be cleaned up.
pub async fn put_absent_conflicts_when_present<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let first = full_registration(&issuer(ISSUER_A)?, "first");
        let second = full_registration(&issuer(ISSUER_A)?, "second");
        cx.store.put_registration(&first, Expect::Absent).await?;
        expect_conflict(
            cx.store.put_registration(&second, Expect::Absent).await,
            "put_registration(Absent) over a record",
        )?;
        expect_registration(cx.store.as_ref(), &first).await?;
        let key = TokenKey::new(issuer(ISSUER_A)?, resource(RESOURCE_1)?);
        cx.store
            .put_tokens(&key, &full_tokens("first"), Expect::Absent)
            .await?;
        expect_conflict(
            cx.store
                .put_tokens(&key, &full_tokens("second"), Expect::Absent)
                .await,
            "put_tokens(Absent) over a record",
        )?;
        expect_tokens(cx.store.as_ref(), &key, &full_tokens("first")).await?;
        let binding = full_binding(&key.resource, &key.issuer, "first");
        cx.store.put_binding(&binding, Expect::Absent).await?;
        expect_conflict(
            cx.store
                .put_binding(
                    &full_binding(&key.resource, &key.issuer, "second"),
                    Expect::Absent,
                )
                .await,
            "put_binding(Absent) over a record",
        )?;
        Ok(Outcome::Passed)
    })
}

/// A write with a version that is no longer current fails with `Conflict` and changes nothing:
/// the rotated refresh token written by another process is never overwritten.
///
/// # Errors
///
/// [`Failure`] when a write with a stale version succeeds, fails with another error than
/// `Conflict`, or changes the stored record; also when the factory cannot open a namespace, a store
/// call fails unexpectedly, or the check's records cannot be cleaned up.
pub async fn put_version_conflicts_when_stale<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let key = TokenKey::new(issuer(ISSUER_A)?, resource(RESOURCE_1)?);
        let v1 = cx
            .store
            .put_tokens(&key, &full_tokens("v1"), Expect::Absent)
            .await?;
        let v2 = cx
            .store
            .put_tokens(&key, &full_tokens("v2"), Expect::Version(v1.clone()))
            .await?;
        expect_conflict(
            cx.store
                .put_tokens(&key, &full_tokens("stale"), Expect::Version(v1.clone()))
                .await,
            "put_tokens with a stale version",
        )?;
        expect_tokens(cx.store.as_ref(), &key, &full_tokens("v2")).await?;
        cx.store
            .put_tokens(&key, &full_tokens("v3"), Expect::Version(v2))
            .await?;
        expect_tokens(cx.store.as_ref(), &key, &full_tokens("v3")).await?;

        let reg = full_registration(&key.issuer, "r1");
        let r1 = cx.store.put_registration(&reg, Expect::Absent).await?;
        cx.store
            .put_registration(
                &full_registration(&key.issuer, "r2"),
                Expect::Version(r1.clone()),
            )
            .await?;
        expect_conflict(
            cx.store
                .put_registration(
                    &full_registration(&key.issuer, "stale"),
                    Expect::Version(r1),
                )
                .await,
            "put_registration with a stale version",
        )?;
        expect_registration(cx.store.as_ref(), &full_registration(&key.issuer, "r2")).await?;
        Ok(Outcome::Passed)
    })
}

/// A write expecting a version of a record that has since been deleted fails with `Conflict` and
/// does not resurrect it.
///
/// # Errors
///
/// [`Failure`] when a write expecting the version of a deleted record succeeds, fails with another
/// error than `Conflict`, or brings the record back; also when the factory cannot open a namespace,
/// a store call fails unexpectedly, or the check's records cannot be cleaned up.
pub async fn put_version_conflicts_when_deleted<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let key = TokenKey::new(issuer(ISSUER_A)?, resource(RESOURCE_1)?);
        let v1 = cx
            .store
            .put_tokens(&key, &full_tokens("v1"), Expect::Absent)
            .await?;
        cx.store.delete_tokens(&key, Expect::Any).await?;
        expect_conflict(
            cx.store
                .put_tokens(&key, &full_tokens("ghost"), Expect::Version(v1))
                .await,
            "put_tokens expecting a deleted version",
        )?;
        ensure!(
            cx.store.get_tokens(&key).await?.is_none(),
            "a CAS write resurrected a deleted token record"
        );
        Ok(Outcome::Passed)
    })
}

/// A store that offers a change stamp (`TokenStore::change_stamp`, only for stores whose
/// every writer is in this process) moves it on every write of tokens, bindings and
/// registrations, deletions included: the engine serves its cached token without asking the
/// store while the stamp stands still, so a stamp that misses a write serves a revoked or
/// rotated token.
///
/// # Errors
///
/// [`Failure`] when the store offers a change stamp and a write or deletion leaves it unchanged;
/// also when the factory cannot open a namespace, a store call fails unexpectedly, or the check's
/// records cannot be cleaned up.
pub async fn change_stamp_moves_on_every_write<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let Some(mut last) = cx.store.change_stamp() else {
            return Ok(Outcome::Skipped(
                "store offers no change stamp (right for stores shared between processes)"
                    .to_owned(),
            ));
        };
        let a = TokenKey::new(issuer(ISSUER_A)?, resource(RESOURCE_1)?);
        let mut moved = |what: &str, now: Option<u64>| -> Result<(), Failure> {
            ensure!(
                now.is_some() && now != Some(last),
                "the change stamp did not move after {what} ({last} → {now:?})"
            );
            last = now.unwrap_or_default();
            Ok(())
        };
        let v = cx
            .store
            .put_tokens(&a, &full_tokens("s1"), Expect::Absent)
            .await?;
        moved("a token write", cx.store.change_stamp())?;
        cx.store
            .put_tokens(&a, &full_tokens("s2"), Expect::Version(v))
            .await?;
        moved("a compare-and-swap token write", cx.store.change_stamp())?;
        cx.store
            .put_binding(&full_binding(&a.resource, &a.issuer, "s"), Expect::Any)
            .await?;
        moved("a binding write", cx.store.change_stamp())?;
        cx.store
            .put_registration(&full_registration(&a.issuer, "s"), Expect::Any)
            .await?;
        moved("a registration write", cx.store.change_stamp())?;
        cx.store.delete_tokens(&a, Expect::Any).await?;
        moved("a token deletion", cx.store.change_stamp())?;
        cx.store.delete_binding(&a.resource, Expect::Any).await?;
        moved("a binding deletion", cx.store.change_stamp())?;
        Ok(Outcome::Passed)
    })
}

/// `binding_and_token_versions` reports exactly the versions reads see: absent → `None`,
/// every write → the new version, other issuers' tokens and other namespaces never.
///
/// # Errors
///
/// [`Failure`] when `binding_and_token_versions` reports a version that differs from what the reads
/// see, or one from another issuer or namespace; also when the factory cannot open a namespace, a
/// store call fails unexpectedly, or the check's records cannot be cleaned up.
pub async fn binding_and_token_versions_match_reads<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let a = TokenKey::new(issuer(ISSUER_A)?, resource(RESOURCE_1)?);
        match cx.store.binding_and_token_versions(&a).await {
            Err(StoreError::Unsupported { .. }) => {
                return Ok(Outcome::Skipped(
                    "store does not implement binding_and_token_versions (the engine reads both records on every call)"
                        .to_owned(),
                ));
            }
            Err(e) => return Err(e.into()),
            Ok(pair) => ensure!(pair == (None, None), "versions of absent records: {pair:?}"),
        }
        let tokens_v = cx
            .store
            .put_tokens(&a, &full_tokens("v1"), Expect::Absent)
            .await?;
        ensure!(
            cx.store.binding_and_token_versions(&a).await? == (None, Some(tokens_v.clone())),
            "tokens written, binding absent: versions do not match"
        );
        let binding_v = cx
            .store
            .put_binding(&full_binding(&a.resource, &a.issuer, "v1"), Expect::Any)
            .await?;
        let both = cx.store.binding_and_token_versions(&a).await?;
        ensure!(
            both == (Some(binding_v.clone()), Some(tokens_v.clone())),
            "versions {both:?} differ from the writes' versions"
        );
        let tokens_v2 = cx
            .store
            .put_tokens(&a, &full_tokens("v2"), Expect::Version(tokens_v))
            .await?;
        let read = cx.store.get_tokens(&a).await?.map(|t| t.version);
        let both = cx.store.binding_and_token_versions(&a).await?;
        ensure!(
            both == (Some(binding_v.clone()), Some(tokens_v2.clone())) && read == Some(tokens_v2),
            "after a token write: versions {both:?}, read {read:?}"
        );
        // Another issuer's tokens for the same resource are not these tokens.
        let b = TokenKey::new(issuer(ISSUER_B)?, resource(RESOURCE_1)?);
        let other = cx.store.binding_and_token_versions(&b).await?;
        ensure!(
            other == (Some(binding_v), None),
            "tokens of another issuer reported: {other:?}"
        );
        let (_, elsewhere) = cx.other_namespace(None).await?;
        let seen = elsewhere.binding_and_token_versions(&a).await?;
        ensure!(
            seen == (None, None),
            "another namespace sees versions {seen:?}"
        );
        cx.store.delete_tokens(&a, Expect::Any).await?;
        let gone = cx.store.binding_and_token_versions(&a).await?;
        ensure!(
            gone.1.is_none(),
            "deleted tokens still have a version: {gone:?}"
        );
        Ok(Outcome::Passed)
    })
}

/// `Expect::Any` overwrites whatever is there.
///
/// # Errors
///
/// [`Failure`] when an `Expect::Any` write fails or leaves the old record in place; also when the
/// factory cannot open a namespace, a store call fails unexpectedly, or the check's records cannot
/// be cleaned up.
pub async fn put_any_overwrites<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let key = TokenKey::new(issuer(ISSUER_A)?, resource(RESOURCE_1)?);
        cx.store
            .put_tokens(&key, &full_tokens("one"), Expect::Any)
            .await?;
        cx.store
            .put_tokens(&key, &full_tokens("two"), Expect::Any)
            .await?;
        expect_tokens(cx.store.as_ref(), &key, &full_tokens("two")).await?;
        Ok(Outcome::Passed)
    })
}

/// Every write returns a new version, the version `get` reports is the one the last write returned,
/// and rewriting identical content still changes it.
///
/// # Errors
///
/// [`Failure`] when a write returns a version it already returned, or `get` reports another version
/// than the last write returned; also when the factory cannot open a namespace, a store call fails
/// unexpectedly, or the check's records cannot be cleaned up.
pub async fn versions_change_on_every_write<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let key = TokenKey::new(issuer(ISSUER_A)?, resource(RESOURCE_1)?);
        let tokens = full_tokens("same");
        let mut seen = Vec::new();
        for _ in 0..4 {
            let v = cx.store.put_tokens(&key, &tokens, Expect::Any).await?;
            let read = cx
                .store
                .get_tokens(&key)
                .await?
                .ok_or_else(|| Failure::new("tokens missing"))?;
            ensure!(
                read.version == v,
                "get reported version {:?}, the write returned {:?}",
                read.version,
                v
            );
            ensure!(
                !seen.contains(&v),
                "version {v:?} was returned by two writes"
            );
            seen.push(v);
        }
        Ok(Outcome::Passed)
    })
}

/// A delete expecting a stale version fails with `Conflict` and keeps the newer record (the
/// `invalid_grant` rule: delete only the exact record that was rejected).
///
/// # Errors
///
/// [`Failure`] when a delete with a stale version succeeds, fails with another error than
/// `Conflict`, or removes the newer record; also when the factory cannot open a namespace, a store
/// call fails unexpectedly, or the check's records cannot be cleaned up.
pub async fn delete_with_stale_version_conflicts_and_keeps_record<F: StoreFactory>(
    factory: &F,
) -> CheckResult {
    with_cx!(factory, |cx| {
        let key = TokenKey::new(issuer(ISSUER_A)?, resource(RESOURCE_1)?);
        let v1 = cx
            .store
            .put_tokens(&key, &full_tokens("old"), Expect::Absent)
            .await?;
        let v2 = cx
            .store
            .put_tokens(&key, &full_tokens("new"), Expect::Version(v1.clone()))
            .await?;
        expect_conflict(
            cx.store.delete_tokens(&key, Expect::Version(v1)).await,
            "delete_tokens with a stale version",
        )?;
        expect_tokens(cx.store.as_ref(), &key, &full_tokens("new")).await?;
        ensure!(
            cx.store.delete_tokens(&key, Expect::Version(v2)).await?,
            "delete_tokens with the current version did not delete"
        );
        ensure!(
            cx.store.get_tokens(&key).await?.is_none(),
            "tokens survived a delete at their current version"
        );

        let reg = full_registration(&key.issuer, "r");
        let r1 = cx.store.put_registration(&reg, Expect::Absent).await?;
        cx.store
            .put_registration(&reg, Expect::Version(r1.clone()))
            .await?;
        expect_conflict(
            cx.store
                .delete_registration(&key.issuer, Expect::Version(r1))
                .await,
            "delete_registration with a stale version",
        )?;
        expect_registration(cx.store.as_ref(), &reg).await?;
        Ok(Outcome::Passed)
    })
}

/// Deleting what is not there is `Ok(false)`, twice.
///
/// # Errors
///
/// [`Failure`] when deleting a missing record gives anything but `Ok(false)`; also when the factory
/// cannot open a namespace, a store call fails unexpectedly, or the check's records cannot be
/// cleaned up.
pub async fn delete_is_idempotent<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let key = TokenKey::new(issuer(ISSUER_A)?, resource(RESOURCE_1)?);
        cx.store
            .put_tokens(&key, &full_tokens("x"), Expect::Absent)
            .await?;
        ensure!(
            cx.store.delete_tokens(&key, Expect::Any).await?,
            "first delete reported nothing deleted"
        );
        ensure!(
            !cx.store.delete_tokens(&key, Expect::Any).await?,
            "second delete reported a deletion"
        );
        ensure!(
            !cx.store
                .delete_registration(&key.issuer, Expect::Any)
                .await?,
            "deleting a missing registration reported a deletion"
        );
        ensure!(
            !cx.store.delete_binding(&key.resource, Expect::Any).await?,
            "deleting a missing binding reported a deletion"
        );
        ensure!(
            cx.store.delete_issuer_tokens(&key.issuer).await? == 0,
            "deleting an issuer without tokens reported deletions"
        );
        Ok(Outcome::Passed)
    })
}

/// Many concurrent writers expecting the same version: exactly one wins, the rest get
/// `Conflict`, and the stored record is the winner's.
///
/// # Errors
///
/// [`Failure`] when more or fewer than one concurrent writer wins, a loser gets another error than
/// `Conflict`, or the stored record is not the winner's; also when the factory cannot open a
/// namespace, a store call fails unexpectedly, or the check's records cannot be cleaned up.
pub async fn concurrent_cas_has_one_winner<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        if !cx.store.capabilities().atomic_cas {
            return Ok(Outcome::Skipped(
                "store does not declare atomic_cas".to_owned(),
            ));
        }
        let key = TokenKey::new(issuer(ISSUER_A)?, resource(RESOURCE_1)?);
        let base = cx
            .store
            .put_tokens(&key, &full_tokens("base"), Expect::Absent)
            .await?;
        let mut tasks = Vec::new();
        for i in 0..16 {
            let store = Arc::clone(&cx.store);
            let key = key.clone();
            let base = base.clone();
            tasks.push(tokio::spawn(async move {
                (
                    i,
                    store
                        .put_tokens(&key, &full_tokens(&format!("w{i}")), Expect::Version(base))
                        .await,
                )
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            let (i, result) = task
                .await
                .map_err(|e| Failure::new(format!("writer task failed: {e}")))?;
            match result {
                Ok(_) => winners.push(i),
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        ensure!(
            winners.len() == 1,
            "{} concurrent CAS writers succeeded on one version: {winners:?}",
            winners.len()
        );
        expect_tokens(
            cx.store.as_ref(),
            &key,
            &full_tokens(&format!("w{}", winners[0])),
        )
        .await?;
        Ok(Outcome::Passed)
    })
}

/// Concurrent writers on different keys all succeed and none loses another's write.
///
/// # Errors
///
/// [`Failure`] when a concurrent write on its own key fails or is lost; also when the factory
/// cannot open a namespace, a store call fails unexpectedly, or the check's records cannot be
/// cleaned up.
pub async fn concurrent_writers_on_different_keys<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let id = issuer(ISSUER_A)?;
        let mut tasks = Vec::new();
        for i in 0..16 {
            let store = Arc::clone(&cx.store);
            let key = TokenKey::new(
                id.clone(),
                resource(&format!("https://mcp-{i}.conformance.example/mcp"))?,
            );
            tasks.push(tokio::spawn(async move {
                for round in 0..3 {
                    store
                        .put_tokens(&key, &full_tokens(&format!("k{i}r{round}")), Expect::Any)
                        .await?;
                }
                Ok::<_, StoreError>(key)
            }));
        }
        let mut keys = Vec::new();
        for task in tasks {
            keys.push(
                task.await
                    .map_err(|e| Failure::new(format!("writer task failed: {e}")))??,
            );
        }
        for (i, key) in keys.iter().enumerate() {
            expect_tokens(cx.store.as_ref(), key, &full_tokens(&format!("k{i}r2"))).await?;
        }
        for key in &keys {
            cx.store.delete_tokens(key, Expect::Any).await?;
        }
        Ok(Outcome::Passed)
    })
}

// ---------------------------------------------------------------------------------------------
// Refresh leases

/// While one holder has a lease, nobody else gets it, even when many ask at once.
///
/// # Errors
///
/// [`Failure`] when a second caller acquires a lease that is held; also when the factory cannot
/// open a namespace, a store call fails unexpectedly, or the check's records cannot be cleaned up.
pub async fn lease_is_exclusive<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let key = TokenKey::new(issuer(ISSUER_A)?, resource(RESOURCE_1)?);
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let store = Arc::clone(&cx.store);
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .try_acquire_refresh_lease(&key, Duration::from_secs(30))
                    .await
            }));
        }
        let mut granted = Vec::new();
        for task in tasks {
            if let Some(lease) = task
                .await
                .map_err(|e| Failure::new(format!("task failed: {e}")))??
            {
                granted.push(lease);
            }
        }
        let count = granted.len();
        for lease in &granted {
            cx.store.release_refresh_lease(lease).await?;
        }
        ensure!(
            count == 1,
            "{count} of 16 concurrent callers were granted the same refresh lease"
        );
        let held = cx
            .store
            .try_acquire_refresh_lease(&key, Duration::from_secs(30))
            .await?;
        let again = cx
            .store
            .try_acquire_refresh_lease(&key, Duration::from_secs(30))
            .await?;
        let double = again.is_some();
        for lease in [held, again].into_iter().flatten() {
            cx.store.release_refresh_lease(&lease).await?;
        }
        ensure!(!double, "a held lease was granted a second time");
        Ok(Outcome::Passed)
    })
}

/// Releasing a lease lets the next caller acquire it at once.
///
/// # Errors
///
/// [`Failure`] when the lease cannot be acquired again right after its release; also when the
/// factory cannot open a namespace, a store call fails unexpectedly, or the check's records cannot
/// be cleaned up.
pub async fn lease_release_allows_reacquire<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let key = TokenKey::new(issuer(ISSUER_A)?, resource(RESOURCE_1)?);
        let lease = cx
            .store
            .try_acquire_refresh_lease(&key, Duration::from_secs(30))
            .await?
            .ok_or_else(|| Failure::new("free lease not granted"))?;
        ensure!(
            lease.key() == &key,
            "lease is for {} instead of {key}",
            lease.key()
        );
        ensure!(
            cx.store.release_refresh_lease(&lease).await?,
            "release of a held lease reported it was not held"
        );
        let next = cx
            .store
            .try_acquire_refresh_lease(&key, Duration::from_secs(30))
            .await?
            .ok_or_else(|| Failure::new("released lease could not be re-acquired"))?;
        ensure!(
            next.token() != lease.token(),
            "a re-acquired lease reused the previous holder token"
        );
        ensure!(
            !cx.store.release_refresh_lease(&lease).await?,
            "releasing an already released lease reported success"
        );
        ensure!(
            cx.store.release_refresh_lease(&next).await?,
            "release of the new lease failed"
        );
        Ok(Outcome::Passed)
    })
}

/// A lease whose holder died is taken over after its TTL.
///
/// # Errors
///
/// [`Failure`] when the lease of a holder that stopped renewing is not acquired after its TTL; also
/// when the factory cannot open a namespace, a store call fails unexpectedly, or the check's
/// records cannot be cleaned up.
pub async fn expired_lease_is_taken_over<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let key = TokenKey::new(issuer(ISSUER_A)?, resource(RESOURCE_1)?);
        let first = cx
            .store
            .try_acquire_refresh_lease(&key, Duration::from_millis(300))
            .await?;
        ensure!(first.is_some(), "free lease not granted");
        tokio::time::sleep(Duration::from_millis(700)).await;
        let second = cx
            .store
            .try_acquire_refresh_lease(&key, Duration::from_secs(30))
            .await?;
        ensure!(second.is_some(), "an expired lease was not taken over");
        if let Some(lease) = second {
            cx.store.release_refresh_lease(&lease).await?;
        }
        Ok(Outcome::Passed)
    })
}

/// After a takeover, the old holder's release is a no-op and does not free the new holder's lease.
///
/// # Errors
///
/// [`Failure`] when the old holder's release frees the new holder's lease; also when the factory
/// cannot open a namespace, a store call fails unexpectedly, or the check's records cannot be
/// cleaned up.
pub async fn stale_holder_cannot_release_taken_over_lease<F: StoreFactory>(
    factory: &F,
) -> CheckResult {
    with_cx!(factory, |cx| {
        let key = TokenKey::new(issuer(ISSUER_A)?, resource(RESOURCE_1)?);
        let old = cx
            .store
            .try_acquire_refresh_lease(&key, Duration::from_millis(300))
            .await?
            .ok_or_else(|| Failure::new("free lease not granted"))?;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let new = cx
            .store
            .try_acquire_refresh_lease(&key, Duration::from_secs(30))
            .await?
            .ok_or_else(|| Failure::new("expired lease not taken over"))?;
        ensure!(
            !cx.store.release_refresh_lease(&old).await?,
            "the stale holder's release reported success"
        );
        let third = cx
            .store
            .try_acquire_refresh_lease(&key, Duration::from_secs(30))
            .await?;
        let stolen = third.is_some();
        if let Some(third) = third {
            cx.store.release_refresh_lease(&third).await?;
        }
        cx.store.release_refresh_lease(&new).await?;
        ensure!(
            !stolen,
            "the stale holder's release freed the new holder's lease"
        );
        Ok(Outcome::Passed)
    })
}

/// A renewed lease outlives its first TTL: nobody else acquires it while its holder renews.
///
/// # Errors
///
/// [`Failure`] when another caller acquires a lease while its holder keeps renewing it; also when
/// the factory cannot open a namespace, a store call fails unexpectedly, or the check's records
/// cannot be cleaned up.
pub async fn renewed_lease_stays_exclusive<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let key = TokenKey::new(issuer(ISSUER_A)?, resource(RESOURCE_1)?);
        let lease = cx
            .store
            .try_acquire_refresh_lease(&key, Duration::from_millis(400))
            .await?
            .ok_or_else(|| Failure::new("free lease not granted"))?;
        let renewed = cx
            .store
            .renew_refresh_lease(&lease, Duration::from_secs(30))
            .await?
            .ok_or_else(|| Failure::new("the holder could not renew its own live lease"))?;
        ensure!(
            renewed.token() == lease.token() && renewed.key() == &key,
            "renewal changed the holder token or the key"
        );
        tokio::time::sleep(Duration::from_millis(800)).await;
        let other = cx
            .store
            .try_acquire_refresh_lease(&key, Duration::from_secs(30))
            .await?;
        let stolen = other.is_some();
        if let Some(other) = other {
            cx.store.release_refresh_lease(&other).await?;
        }
        ensure!(
            !stolen,
            "a renewed lease was granted to another holder after its first TTL"
        );
        ensure!(
            cx.store.release_refresh_lease(&renewed).await?,
            "release of the renewed lease reported it was not held"
        );
        Ok(Outcome::Passed)
    })
}

/// A holder whose lease was taken over cannot renew it (and renewal does not disturb the new
/// holder); a holder whose lease merely expired takes it back.
///
/// # Errors
///
/// [`Failure`] when a holder whose lease was taken over renews it or disturbs the new holder, or a
/// holder whose lease merely expired cannot take it back; also when the factory cannot open a
/// namespace, a store call fails unexpectedly, or the check's records cannot be cleaned up.
pub async fn taken_over_lease_cannot_be_renewed<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let key = TokenKey::new(issuer(ISSUER_A)?, resource(RESOURCE_1)?);
        let old = cx
            .store
            .try_acquire_refresh_lease(&key, Duration::from_millis(300))
            .await?
            .ok_or_else(|| Failure::new("free lease not granted"))?;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let back = cx
            .store
            .renew_refresh_lease(&old, Duration::from_millis(300))
            .await?;
        ensure!(
            back.is_some(),
            "an expired lease nobody took over could not be renewed by its holder"
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
        let new = cx
            .store
            .try_acquire_refresh_lease(&key, Duration::from_secs(30))
            .await?
            .ok_or_else(|| Failure::new("expired lease not taken over"))?;
        let renewed = cx
            .store
            .renew_refresh_lease(&old, Duration::from_secs(30))
            .await?;
        ensure!(
            renewed.is_none(),
            "the old holder renewed a lease another holder had taken over"
        );
        let third = cx
            .store
            .try_acquire_refresh_lease(&key, Duration::from_secs(30))
            .await?;
        let stolen = third.is_some();
        if let Some(third) = third {
            cx.store.release_refresh_lease(&third).await?;
        }
        ensure!(
            cx.store.release_refresh_lease(&new).await?,
            "the new holder lost its lease to the old holder's renewal"
        );
        ensure!(
            !stolen,
            "the old holder's renewal freed the new holder's lease"
        );
        Ok(Outcome::Passed)
    })
}

/// Leases on different token keys (other issuer, other resource) are independent.
///
/// # Errors
///
/// [`Failure`] when a lease on one token key blocks a lease on another; also when the factory
/// cannot open a namespace, a store call fails unexpectedly, or the check's records cannot be
/// cleaned up.
pub async fn leases_are_per_token_key<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let keys = [
            TokenKey::new(issuer(ISSUER_A)?, resource(RESOURCE_1)?),
            TokenKey::new(issuer(ISSUER_B)?, resource(RESOURCE_1)?),
            TokenKey::new(issuer(ISSUER_A)?, resource(RESOURCE_2)?),
            TokenKey::new(issuer(&format!("{ISSUER_A}/"))?, resource(RESOURCE_1)?),
        ];
        let mut held = Vec::new();
        let mut blocked = None;
        for key in &keys {
            match cx
                .store
                .try_acquire_refresh_lease(key, Duration::from_secs(30))
                .await?
            {
                Some(lease) => held.push(lease),
                None => {
                    blocked = Some(key.clone());
                    break;
                }
            }
        }
        for lease in &held {
            cx.store.release_refresh_lease(lease).await?;
        }
        if let Some(key) = blocked {
            return Err(Failure::new(format!(
                "the lease for {key} was blocked by a lease on another key"
            )));
        }
        Ok(Outcome::Passed)
    })
}

// ---------------------------------------------------------------------------------------------
// Pending authorizations

/// A state can be redeemed exactly once.
///
/// # Errors
///
/// [`Failure`] when a state is returned by more than one take, or not by the first; also when the
/// factory cannot open a namespace, a store call fails unexpectedly, or the check's records cannot
/// be cleaned up.
pub async fn pending_is_taken_once<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let state = fresh_state();
        cx.track_pending(&state);
        let pending = full_pending(
            &state,
            &issuer(ISSUER_A)?,
            &resource(RESOURCE_1)?,
            Duration::from_secs(600),
        );
        cx.store.insert_pending(&pending).await?;
        ensure!(
            cx.store.take_pending(&state).await?.is_some(),
            "pending authorization missing"
        );
        ensure!(
            cx.store.take_pending(&state).await?.is_none(),
            "a state was redeemed twice"
        );
        Ok(Outcome::Passed)
    })
}

/// Inserting a state that is in use fails with `Conflict` and keeps the first flow (its issuer
/// and verifier).
///
/// # Errors
///
/// [`Failure`] when inserting a state that is in use succeeds, fails with another error than
/// `Conflict`, or replaces the first flow; also when the factory cannot open a namespace, a store
/// call fails unexpectedly, or the check's records cannot be cleaned up.
pub async fn pending_state_collision_conflicts<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let state = fresh_state();
        cx.track_pending(&state);
        let first = full_pending(
            &state,
            &issuer(ISSUER_A)?,
            &resource(RESOURCE_1)?,
            Duration::from_secs(600),
        );
        let mut second = full_pending(
            &state,
            &issuer(ISSUER_B)?,
            &resource(RESOURCE_1)?,
            Duration::from_secs(600),
        );
        second.pkce_verifier = SecretString::from("SECRET-other-verifier".to_owned());
        cx.store.insert_pending(&first).await?;
        expect_conflict(
            cx.store.insert_pending(&second).await,
            "insert_pending with a state in use",
        )?;
        match cx.store.take_pending(&state).await? {
            Some(got) => same_pending(&got, &first)?,
            None => return Err(Failure::new("first pending authorization is gone")),
        }
        Ok(Outcome::Passed)
    })
}

/// An expired flow is never returned.
///
/// # Errors
///
/// [`Failure`] when an expired pending authorization is returned; also when the factory cannot open
/// a namespace, a store call fails unexpectedly, or the check's records cannot be cleaned up.
pub async fn pending_expires<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let state = fresh_state();
        cx.track_pending(&state);
        let pending = full_pending(
            &state,
            &issuer(ISSUER_A)?,
            &resource(RESOURCE_1)?,
            Duration::from_secs(1),
        );
        cx.store.insert_pending(&pending).await?;
        tokio::time::sleep(Duration::from_millis(2100)).await;
        ensure!(
            cx.store.take_pending(&state).await?.is_none(),
            "an expired pending authorization was returned"
        );
        // The state can be reused once expired.
        let again = full_pending(
            &state,
            &issuer(ISSUER_A)?,
            &resource(RESOURCE_1)?,
            Duration::from_secs(600),
        );
        cx.store.insert_pending(&again).await?;
        ensure!(
            cx.store.take_pending(&state).await?.is_some(),
            "a state could not be reused after expiry"
        );
        Ok(Outcome::Passed)
    })
}

// ---------------------------------------------------------------------------------------------
// Listing, corruption, secrets, persistence

/// `list_*` return exactly the records of this namespace: no more, no fewer, no duplicates.
///
/// # Errors
///
/// [`Failure`] when a `list_*` call misses a record of this namespace, repeats one, or returns one
/// that was deleted or belongs to another namespace; also when the factory cannot open a namespace,
/// a store call fails unexpectedly, or the check's records cannot be cleaned up.
pub async fn list_returns_exactly_what_was_stored<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        if !cx.store.capabilities().list {
            return Ok(Outcome::Skipped("store does not declare list".to_owned()));
        }
        let (_, other) = cx.other_namespace(None).await?;
        let mut issuers: Vec<IssuerId> = LOOKALIKE_ISSUERS
            .iter()
            .take(6)
            .map(|s| issuer(s))
            .collect::<Result<_, _>>()?;
        let resources: Vec<ResourceUri> = LOOKALIKE_RESOURCES
            .iter()
            .take(3)
            .map(|s| resource(s))
            .collect::<Result<_, _>>()?;
        let mut keys = Vec::new();
        for (i, id) in issuers.iter().enumerate() {
            cx.store
                .put_registration(&full_registration(id, &i.to_string()), Expect::Absent)
                .await?;
            for r in &resources {
                let key = TokenKey::new(id.clone(), r.clone());
                cx.store
                    .put_tokens(&key, &full_tokens("l"), Expect::Absent)
                    .await?;
                keys.push(key);
            }
        }
        for r in &resources {
            cx.store
                .put_binding(&full_binding(r, &issuers[0], "l"), Expect::Absent)
                .await?;
        }
        other
            .put_registration(
                &full_registration(&issuer(ISSUER_B)?, "other"),
                Expect::Absent,
            )
            .await?;
        other
            .put_tokens(
                &TokenKey::new(issuer(ISSUER_B)?, resource(RESOURCE_2)?),
                &full_tokens("o"),
                Expect::Absent,
            )
            .await?;

        let mut listed = cx.store.list_registrations().await?;
        listed.sort();
        issuers.sort();
        ensure!(
            listed == issuers,
            "list_registrations returned {listed:?}, expected {issuers:?}"
        );
        let mut listed_keys = cx.store.list_tokens().await?;
        listed_keys.sort();
        keys.sort();
        ensure!(
            listed_keys == keys,
            "list_tokens returned {} keys, expected {}",
            listed_keys.len(),
            keys.len()
        );
        let mut listed_bindings = cx.store.list_bindings().await?;
        listed_bindings.sort();
        let mut want_bindings = resources.clone();
        want_bindings.sort();
        ensure!(
            listed_bindings == want_bindings,
            "list_bindings returned {listed_bindings:?}"
        );
        Ok(Outcome::Passed)
    })
}

/// What a namespace should hold, as encoded records, for [`scans_match`].
#[derive(Default)]
struct Expected {
    registrations: BTreeMap<IssuerId, Vec<u8>>,
    tokens: BTreeMap<TokenKey, Vec<u8>>,
    bindings: BTreeMap<ResourceUri, Vec<u8>>,
}

impl Expected {
    fn registration(&mut self, r: &ClientRegistration) -> Result<(), Failure> {
        self.registrations
            .insert(r.issuer.clone(), record::encode_registration(r)?);
        Ok(())
    }

    fn tokens(&mut self, key: &TokenKey, t: &TokenSet) -> Result<(), Failure> {
        self.tokens
            .insert(key.clone(), record::encode_tokens(key, t)?);
        Ok(())
    }

    fn binding(&mut self, b: &ResourceBinding) -> Result<(), Failure> {
        self.bindings
            .insert(b.resource.clone(), record::encode_binding(b)?);
        Ok(())
    }
}

/// The `scan_*` of `store` return exactly `want` (no more, no fewer, no duplicates), and each
/// scanned record has the value and version its individual `get` returns.
async fn scans_match<S: CredentialStore + ?Sized>(
    store: &S,
    want: &Expected,
    when: &str,
) -> Result<(), Failure> {
    let mut seen = BTreeMap::new();
    for r in store.scan_registrations().await? {
        let issuer = r.value.issuer.clone();
        let bytes = record::encode_registration(&r.value)?;
        let got = store.get_registration(&issuer).await?;
        ensure!(
            got.as_ref().map(|g| &g.version) == Some(&r.version),
            "{when}: scan_registrations gave {issuer} version {}, get_registration {:?}",
            r.version,
            got.as_ref().map(|g| &g.version)
        );
        ensure!(
            got.map(|g| record::encode_registration(&g.value))
                .transpose()?
                == Some(bytes.clone()),
            "{when}: scan_registrations and get_registration differ for {issuer}"
        );
        ensure!(
            seen.insert(issuer.clone(), bytes).is_none(),
            "{when}: scan_registrations returned {issuer} twice"
        );
    }
    ensure!(
        seen == want.registrations,
        "{when}: scan_registrations returned {:?}, expected {:?} (or different contents)",
        seen.keys().collect::<Vec<_>>(),
        want.registrations.keys().collect::<Vec<_>>()
    );
    let mut seen = BTreeMap::new();
    for (key, t) in store.scan_tokens().await? {
        let bytes = record::encode_tokens(&key, &t.value)?;
        let got = store.get_tokens(&key).await?;
        ensure!(
            got.as_ref().map(|g| &g.version) == Some(&t.version),
            "{when}: scan_tokens gave {key} version {}, get_tokens {:?}",
            t.version,
            got.as_ref().map(|g| &g.version)
        );
        ensure!(
            got.map(|g| record::encode_tokens(&key, &g.value))
                .transpose()?
                == Some(bytes.clone()),
            "{when}: scan_tokens and get_tokens differ for {key}"
        );
        ensure!(
            seen.insert(key.clone(), bytes).is_none(),
            "{when}: scan_tokens returned {key} twice"
        );
    }
    ensure!(
        seen == want.tokens,
        "{when}: scan_tokens returned {} token sets, expected {} (or different contents)",
        seen.len(),
        want.tokens.len()
    );
    let mut seen = BTreeMap::new();
    for b in store.scan_bindings().await? {
        let resource = b.value.resource.clone();
        let bytes = record::encode_binding(&b.value)?;
        let got = store.get_binding(&resource).await?;
        ensure!(
            got.as_ref().map(|g| &g.version) == Some(&b.version),
            "{when}: scan_bindings gave {resource} version {}, get_binding {:?}",
            b.version,
            got.as_ref().map(|g| &g.version)
        );
        ensure!(
            got.map(|g| record::encode_binding(&g.value)).transpose()? == Some(bytes.clone()),
            "{when}: scan_bindings and get_binding differ for {resource}"
        );
        ensure!(
            seen.insert(resource.clone(), bytes).is_none(),
            "{when}: scan_bindings returned {resource} twice"
        );
    }
    ensure!(
        seen == want.bindings,
        "{when}: scan_bindings returned {:?}, expected {:?} (or different contents)",
        seen.keys().collect::<Vec<_>>(),
        want.bindings.keys().collect::<Vec<_>>()
    );
    Ok(())
}

/// `scan_registrations`, `scan_tokens` and `scan_bindings` return exactly what the individual
/// `get_*` return — same records, same values, same versions — after writes, overwrites and
/// deletes, and only this namespace's records (like `list_*`).
///
/// # Errors
///
/// [`Failure`] when a scan returns a record, value or version that the matching `get_*` does not,
/// misses one, or returns another namespace's record; also when the factory cannot open a
/// namespace, a store call fails unexpectedly, or the check's records cannot be cleaned up.
pub async fn scans_return_exactly_what_gets_return<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        if !cx.store.capabilities().list {
            return Ok(Outcome::Skipped("store does not declare list".to_owned()));
        }
        let (_, other) = cx.other_namespace(None).await?;
        let (_, empty) = cx.other_namespace(None).await?;
        let issuers: Vec<IssuerId> = LOOKALIKE_ISSUERS
            .iter()
            .take(5)
            .map(|s| issuer(s))
            .collect::<Result<_, _>>()?;
        let resources: Vec<ResourceUri> = LOOKALIKE_RESOURCES
            .iter()
            .take(3)
            .map(|s| resource(s))
            .collect::<Result<_, _>>()?;
        let mut want = Expected::default();
        // The same keys in another namespace, with other contents: never part of this scan.
        let mut want_other = Expected::default();
        for (i, id) in issuers.iter().enumerate() {
            let r = full_registration(id, &format!("scan{i}"));
            cx.store.put_registration(&r, Expect::Absent).await?;
            want.registration(&r)?;
            let o = full_registration(id, &format!("other{i}"));
            other.put_registration(&o, Expect::Absent).await?;
            want_other.registration(&o)?;
            for (j, res) in resources.iter().enumerate() {
                let key = TokenKey::new(id.clone(), res.clone());
                let t = full_tokens(&format!("scan{i}-{j}"));
                cx.store.put_tokens(&key, &t, Expect::Absent).await?;
                want.tokens(&key, &t)?;
            }
        }
        let other_key = TokenKey::new(issuers[0].clone(), resources[0].clone());
        let o = full_tokens("other");
        other.put_tokens(&other_key, &o, Expect::Absent).await?;
        want_other.tokens(&other_key, &o)?;
        for (j, res) in resources.iter().enumerate() {
            let b = full_binding(res, &issuers[j % issuers.len()], &format!("scan{j}"));
            cx.store.put_binding(&b, Expect::Absent).await?;
            want.binding(&b)?;
        }
        let o = full_binding(&resources[0], &issuers[1], "other");
        other.put_binding(&o, Expect::Absent).await?;
        want_other.binding(&o)?;

        scans_match(cx.store.as_ref(), &want, "after the writes").await?;

        // Overwrite some records (new versions, new contents), delete others.
        let r = full_registration(&issuers[1], "rewritten");
        cx.store.put_registration(&r, Expect::Any).await?;
        want.registration(&r)?;
        cx.store
            .delete_registration(&issuers[2], Expect::Any)
            .await?;
        want.registrations.remove(&issuers[2]);
        let rewritten = TokenKey::new(issuers[0].clone(), resources[1].clone());
        let t = full_tokens("rewritten");
        cx.store.put_tokens(&rewritten, &t, Expect::Any).await?;
        want.tokens(&rewritten, &t)?;
        // Same contents again: only the version changes.
        let same = TokenKey::new(issuers[3].clone(), resources[2].clone());
        cx.store
            .put_tokens(&same, &full_tokens("scan3-2"), Expect::Any)
            .await?;
        let gone = TokenKey::new(issuers[1].clone(), resources[0].clone());
        cx.store.delete_tokens(&gone, Expect::Any).await?;
        want.tokens.remove(&gone);
        cx.store.delete_issuer_tokens(&issuers[4]).await?;
        want.tokens.retain(|k, _| k.issuer != issuers[4]);
        cx.store.delete_binding(&resources[2], Expect::Any).await?;
        want.bindings.remove(&resources[2]);
        let b = full_binding(&resources[1], &issuers[0], "rebound");
        cx.store.put_binding(&b, Expect::Any).await?;
        want.binding(&b)?;

        scans_match(cx.store.as_ref(), &want, "after overwrites and deletes").await?;
        scans_match(other.as_ref(), &want_other, "in another namespace").await?;
        scans_match(
            empty.as_ref(),
            &Expected::default(),
            "in an empty namespace",
        )
        .await?;
        Ok(Outcome::Passed)
    })
}

/// `put_registrations_any`, `put_tokens_any` and `put_bindings_any` write like one
/// `put_*(…, Expect::Any)` per record: new records are created, existing ones overwritten, the
/// returned versions are the ones `get_*` report (and a compare-and-swap on them succeeds), other
/// namespaces are untouched, and an empty batch writes nothing.
///
/// # Errors
///
/// [`Failure`] when a batch write fails, misses or alters a record, returns versions that `get_*`
/// does not report or a compare-and-swap rejects, touches another namespace, or an empty batch
/// writes something; also when the factory cannot open a namespace, a store call fails
/// unexpectedly, or the check's records cannot be cleaned up.
pub async fn put_any_batches_write_like_puts<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let (_, other) = cx.other_namespace(None).await?;
        ensure!(
            cx.store.put_tokens_any(&[]).await?.is_empty()
                && cx.store.put_registrations_any(&[]).await?.is_empty()
                && cx.store.put_bindings_any(&[]).await?.is_empty(),
            "an empty batch returned versions"
        );
        let issuers: Vec<IssuerId> = LOOKALIKE_ISSUERS
            .iter()
            .take(4)
            .map(|s| issuer(s))
            .collect::<Result<_, _>>()?;
        let resources: Vec<ResourceUri> = LOOKALIKE_RESOURCES
            .iter()
            .take(3)
            .map(|s| resource(s))
            .collect::<Result<_, _>>()?;
        // One record of each kind exists before the batch: it is overwritten.
        let before_key = TokenKey::new(issuers[0].clone(), resources[0].clone());
        let before_v = cx
            .store
            .put_tokens(&before_key, &full_tokens("before"), Expect::Absent)
            .await?;
        let reg_before_v = cx
            .store
            .put_registration(&full_registration(&issuers[0], "before"), Expect::Absent)
            .await?;
        let binding_before_v = cx
            .store
            .put_binding(
                &full_binding(&resources[0], &issuers[0], "before"),
                Expect::Absent,
            )
            .await?;

        let registrations: Vec<ClientRegistration> = issuers
            .iter()
            .enumerate()
            .map(|(i, id)| full_registration(id, &format!("batch{i}")))
            .collect();
        let mut tokens = Vec::new();
        for (i, id) in issuers.iter().enumerate() {
            for (j, res) in resources.iter().enumerate() {
                tokens.push((
                    TokenKey::new(id.clone(), res.clone()),
                    full_tokens(&format!("batch{i}-{j}")),
                ));
            }
        }
        let bindings: Vec<ResourceBinding> = resources
            .iter()
            .enumerate()
            .map(|(j, res)| full_binding(res, &issuers[j], &format!("batch{j}")))
            .collect();

        let reg_versions = cx.store.put_registrations_any(&registrations).await?;
        let token_versions = cx.store.put_tokens_any(&tokens).await?;
        let binding_versions = cx.store.put_bindings_any(&bindings).await?;
        ensure!(
            reg_versions.len() == registrations.len()
                && token_versions.len() == tokens.len()
                && binding_versions.len() == bindings.len(),
            "a batch returned {} / {} / {} versions for {} / {} / {} records",
            reg_versions.len(),
            token_versions.len(),
            binding_versions.len(),
            registrations.len(),
            tokens.len(),
            bindings.len()
        );
        ensure!(
            token_versions[0] != before_v
                && reg_versions[0] != reg_before_v
                && binding_versions[0] != binding_before_v,
            "overwriting a record in a batch kept its old version"
        );
        let mut want = Expected::default();
        for (r, v) in registrations.iter().zip(&reg_versions) {
            let got = cx.store.get_registration(&r.issuer).await?;
            ensure!(
                got.as_ref().map(|g| &g.version) == Some(v),
                "registration {} reads at {:?}, the batch returned {v}",
                r.issuer,
                got.as_ref().map(|g| &g.version)
            );
            expect_registration(cx.store.as_ref(), r).await?;
            want.registration(r)?;
        }
        for ((key, t), v) in tokens.iter().zip(&token_versions) {
            let got = cx.store.get_tokens(key).await?;
            ensure!(
                got.as_ref().map(|g| &g.version) == Some(v),
                "tokens {key} read at {:?}, the batch returned {v}",
                got.as_ref().map(|g| &g.version)
            );
            expect_tokens(cx.store.as_ref(), key, t).await?;
            want.tokens(key, t)?;
        }
        for (b, v) in bindings.iter().zip(&binding_versions) {
            let got = cx.store.get_binding(&b.resource).await?;
            ensure!(
                got.as_ref().map(|g| &g.version) == Some(v),
                "binding {} reads at {:?}, the batch returned {v}",
                b.resource,
                got.as_ref().map(|g| &g.version)
            );
            ensure!(
                got.map(|g| record::encode_binding(&g.value)).transpose()?
                    == Some(record::encode_binding(b)?),
                "binding {} does not read back as written by the batch",
                b.resource
            );
            want.binding(b)?;
        }
        // The returned versions are current: a compare-and-swap on them succeeds.
        cx.store
            .put_tokens(
                &tokens[1].0,
                &tokens[1].1,
                Expect::Version(token_versions[1].clone()),
            )
            .await?;
        if cx.store.capabilities().list {
            // `tokens[1]` was rewritten with the same contents.
            scans_match(cx.store.as_ref(), &want, "after batch writes").await?;
            scans_match(other.as_ref(), &Expected::default(), "in another namespace").await?;
        } else {
            ensure!(
                other.get_tokens(&tokens[0].0).await?.is_none()
                    && other.get_registration(&issuers[0]).await?.is_none()
                    && other.get_binding(&resources[0]).await?.is_none(),
                "a batch wrote into another namespace"
            );
        }
        Ok(Outcome::Passed)
    })
}

/// Garbage stored under a key is reported as `Corrupt` naming the key — never a panic, never a
/// silent `None` — and stays in place until deleted explicitly.
///
/// # Errors
///
/// [`Failure`] when garbage under a key is read as a value or `None`, reported as another error
/// than `Corrupt` naming the key, or removed before an explicit delete; also when the factory
/// cannot open a namespace, a store call fails unexpectedly, or the check's records cannot be
/// cleaned up.
pub async fn corrupt_record_is_reported_and_kept<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let key = TokenKey::new(issuer(ISSUER_A)?, resource(RESOURCE_1)?);
        let garbage: &[&[u8]] = &[
            b"not json at all",
            b"{\"schema\":1}",
            b"\xff\xfe\x00binary",
            b"{\"schema\":99,\"type\":\"tokens\",\"record\":{}}",
        ];
        for bytes in garbage {
            let raw_key = RecordKey::Registration(key.issuer.clone());
            if !cx.factory.write_raw(&cx.namespace, &raw_key, bytes).await? {
                return Ok(Outcome::Skipped(
                    "factory cannot write raw records".to_owned(),
                ));
            }
            match cx.store.get_registration(&key.issuer).await {
                Err(StoreError::Corrupt { key: named, .. }) => {
                    ensure!(
                        named.contains(key.issuer.as_str()),
                        "Corrupt error names {named:?}, not the issuer"
                    )
                }
                other => {
                    return Err(Failure::new(format!(
                        "corrupt registration read as {other:?}, expected Corrupt"
                    )));
                }
            }
            ensure!(
                matches!(
                    cx.store.get_registration(&key.issuer).await,
                    Err(StoreError::Corrupt { .. })
                ),
                "a corrupt registration was removed or repaired by reading it"
            );
            cx.factory
                .write_raw(&cx.namespace, &RecordKey::Tokens(key.clone()), bytes)
                .await?;
            ensure!(
                matches!(
                    cx.store.get_tokens(&key).await,
                    Err(StoreError::Corrupt { .. })
                ),
                "corrupt tokens were not reported as Corrupt"
            );
            cx.factory
                .write_raw(
                    &cx.namespace,
                    &RecordKey::Binding(key.resource.clone()),
                    bytes,
                )
                .await?;
            ensure!(
                matches!(
                    cx.store.get_binding(&key.resource).await,
                    Err(StoreError::Corrupt { .. })
                ),
                "a corrupt binding was not reported as Corrupt"
            );
            let state = fresh_state();
            cx.track_pending(&state);
            cx.factory
                .write_raw(&cx.namespace, &RecordKey::Pending(state.clone()), bytes)
                .await?;
            ensure!(
                matches!(
                    cx.store.take_pending(&state).await,
                    Err(StoreError::Corrupt { .. })
                ),
                "a corrupt pending authorization was not reported as Corrupt"
            );
        }
        // Explicit deletion recovers.
        ensure!(
            cx.store
                .delete_registration(&key.issuer, Expect::Any)
                .await?,
            "deleting a corrupt registration reported nothing to delete"
        );
        cx.store.delete_tokens(&key, Expect::Any).await?;
        cx.store.delete_binding(&key.resource, Expect::Any).await?;
        ensure!(
            cx.store.get_registration(&key.issuer).await?.is_none(),
            "corrupt registration survived deletion"
        );
        Ok(Outcome::Passed)
    })
}

/// A valid record of one issuer placed under another issuer's key is refused as `Corrupt`
/// instead of being served for the wrong authorization server.
///
/// # Errors
///
/// [`Failure`] when a record placed under another issuer's key is served instead of refused as
/// `Corrupt`; also when the factory cannot open a namespace, a store call fails unexpectedly, or
/// the check's records cannot be cleaned up.
pub async fn misplaced_record_is_reported_corrupt<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let a = issuer(ISSUER_A)?;
        let b = issuer(ISSUER_B)?;
        let bytes = record::encode_registration(&full_registration(&a, "a"))?;
        if !cx
            .factory
            .write_raw(&cx.namespace, &RecordKey::Registration(b.clone()), &bytes)
            .await?
        {
            return Ok(Outcome::Skipped(
                "factory cannot write raw records".to_owned(),
            ));
        }
        ensure!(
            matches!(
                cx.store.get_registration(&b).await,
                Err(StoreError::Corrupt { .. })
            ),
            "issuer A's registration stored under issuer B's key was served for B"
        );
        let ka = TokenKey::new(a, resource(RESOURCE_1)?);
        let kb = TokenKey::new(b.clone(), resource(RESOURCE_1)?);
        let token_bytes = record::encode_tokens(&ka, &full_tokens("a"))?;
        cx.factory
            .write_raw(&cx.namespace, &RecordKey::Tokens(kb.clone()), &token_bytes)
            .await?;
        ensure!(
            matches!(
                cx.store.get_tokens(&kb).await,
                Err(StoreError::Corrupt { .. })
            ),
            "issuer A's tokens stored under issuer B's key were served for B"
        );
        cx.store.delete_registration(&b, Expect::Any).await?;
        cx.store.delete_tokens(&kb, Expect::Any).await?;
        Ok(Outcome::Passed)
    })
}

/// No secret reaches `Debug` of the store, of records read from it, or of its errors.
///
/// # Errors
///
/// [`Failure`] when a secret appears in the `Debug` output of the store, of a record read from it,
/// or of one of its errors; also when the factory cannot open a namespace, a store call fails
/// unexpectedly, or the check's records cannot be cleaned up.
pub async fn no_secret_in_debug<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let reg = full_registration(&issuer(ISSUER_A)?, "dbg");
        let key = TokenKey::new(reg.issuer.clone(), resource(RESOURCE_1)?);
        let tokens = full_tokens("dbg");
        let state = fresh_state();
        cx.track_pending(&state);
        let pending = full_pending(&state, &key.issuer, &key.resource, Duration::from_secs(600));
        cx.store.put_registration(&reg, Expect::Absent).await?;
        cx.store.put_tokens(&key, &tokens, Expect::Absent).await?;
        cx.store.insert_pending(&pending).await?;
        let conflict = cx.store.put_tokens(&key, &tokens, Expect::Absent).await;
        let lease = cx
            .store
            .try_acquire_refresh_lease(&key, Duration::from_secs(30))
            .await?;
        let mut rendered = vec![
            format!("{:?}", cx.store),
            format!("{:?}", cx.store.get_registration(&reg.issuer).await?),
            format!("{:?}", cx.store.get_tokens(&key).await?),
            format!("{conflict:?}"),
            format!("{lease:?}"),
        ];
        if let Err(e) = &conflict {
            rendered.push(e.to_string());
        }
        let taken = cx.store.take_pending(&state).await?;
        rendered.push(format!("{taken:?}"));
        if let Some(lease) = lease {
            cx.store.release_refresh_lease(&lease).await?;
        }
        let needles = [
            reg.client_secret
                .as_ref()
                .map(|s| s.expose_secret().to_owned()),
            reg.registration_access_token
                .as_ref()
                .map(|s| s.expose_secret().to_owned()),
            Some(tokens.access_token.expose_secret().to_owned()),
            tokens
                .refresh_token
                .as_ref()
                .map(|s| s.expose_secret().to_owned()),
            tokens
                .dpop_key
                .as_ref()
                .map(|s| s.expose_secret().to_owned()),
            Some(pending.pkce_verifier.expose_secret().to_owned()),
            Some(state.clone()),
        ];
        for text in &rendered {
            for needle in needles.iter().flatten() {
                ensure!(
                    !text.contains(needle.as_str()),
                    "a secret appears in Debug/Display output: {text}"
                );
            }
            ensure!(
                !text.contains("SECRET-"),
                "a secret appears in Debug/Display output: {text}"
            );
        }
        Ok(Outcome::Passed)
    })
}

/// Records written through one store are read back through a newly opened one (after a restart,
/// for durable stores).
///
/// # Errors
///
/// [`Failure`] when a record written through one store is missing or altered when read through a
/// newly opened one; also when the factory cannot open a namespace, a store call fails
/// unexpectedly, or the check's records cannot be cleaned up.
pub async fn records_persist_across_reopen<F: StoreFactory>(factory: &F) -> CheckResult {
    with_cx!(factory, |cx| {
        let reg = full_registration(&issuer(ISSUER_A)?, "persist");
        let key = TokenKey::new(reg.issuer.clone(), resource(RESOURCE_1)?);
        let tokens = full_tokens("persist");
        let binding = full_binding(&key.resource, &key.issuer, "persist");
        let state = fresh_state();
        cx.track_pending(&state);
        let pending = full_pending(&state, &key.issuer, &key.resource, Duration::from_secs(600));
        let version = cx.store.put_tokens(&key, &tokens, Expect::Absent).await?;
        cx.store.put_registration(&reg, Expect::Absent).await?;
        cx.store.put_binding(&binding, Expect::Absent).await?;
        cx.store.insert_pending(&pending).await?;
        let reopened = cx.reopen().await?;
        expect_registration(reopened.as_ref(), &reg).await?;
        expect_tokens(reopened.as_ref(), &key, &tokens).await?;
        let got = reopened.get_binding(&key.resource).await?;
        ensure!(
            got.map(|g| g.value) == Some(binding),
            "binding did not persist"
        );
        match reopened.take_pending(&state).await? {
            Some(p) => same_pending(&p, &pending)?,
            None => return Err(Failure::new("pending authorization did not persist")),
        }
        // Versions persist too: a CAS with the version from before the reopen still works.
        reopened
            .put_tokens(&key, &full_tokens("after"), Expect::Version(version))
            .await?;
        expect_tokens(cx.store.as_ref(), &key, &full_tokens("after")).await?;
        Ok(Outcome::Passed)
    })
}
