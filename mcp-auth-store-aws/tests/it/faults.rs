//! Secrets Manager failures, injected by a proxy in front of moto (`common::proxy`): throttling
//! and 500s before a request reaches moto (nothing applied) and after moto applied it (the
//! answer is lost), lasting outages, denials, quotas, names still being deleted. Every failure
//! must surface as the right `StoreError`, and no acknowledged write may be lost.
use crate::common;

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::proxy::{Answer, Fault, FaultProxy, SERVER_ERROR, THROTTLE, When};
use mcp_auth_core::record::RecordKey;
use mcp_auth_core::{
    Expect, IssuerId, Namespace, PendingAuthorization, PendingAuthorizationStore, ResourceUri,
    SecretString, StoreError, TokenKey, TokenSet, TokenStore,
};
use mcp_auth_store_aws::{AwsOptions, AwsSecretsStore, write_raw_record};

fn key(n: usize) -> TokenKey {
    TokenKey::new(
        IssuerId::new("https://as.faults.example").unwrap(),
        ResourceUri::new(format!("https://mcp-{n}.faults.example/mcp")).unwrap(),
    )
}

fn tokens(tag: &str) -> TokenSet {
    TokenSet::new(SecretString::from(format!("at-{tag}")))
}

fn access(t: &TokenSet) -> String {
    use mcp_auth_core::ExposeSecret;
    t.access_token.expose_secret().to_owned()
}

/// A store through `proxy`, in a fresh namespace, with `attempts` SDK attempts per call.
fn store_via(proxy: &FaultProxy, attempts: u32, budget: Duration) -> AwsSecretsStore {
    let namespace = Namespace::random("aws-faults");
    AwsSecretsStore::from_client(
        &common::client_for(&proxy.endpoint(), attempts),
        AwsOptions {
            request_budget: budget,
            ..common::options(&namespace)
        },
    )
    .unwrap()
}

/// The same namespace, straight to moto (no faults), no cache: the truth.
fn direct(store: &AwsSecretsStore) -> AwsSecretsStore {
    AwsSecretsStore::from_client(
        &common::client(),
        AwsOptions {
            cache_ttl: Duration::ZERO,
            ..common::options(store.namespace())
        },
    )
    .unwrap()
}

fn chain(e: &StoreError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn lost_answer(op: &'static str) -> Fault {
    Fault {
        op: Some(op),
        when: When::After,
        answer: SERVER_ERROR,
        count: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_500s_are_retried_by_the_sdk() {
    let proxy = FaultProxy::start(&common::endpoint()).await;
    let store = store_via(&proxy, 3, Duration::from_secs(5));
    let k = key(1);
    for (op, answer) in [
        ("CreateSecret", THROTTLE),
        ("GetSecretValue", SERVER_ERROR),
        ("PutSecretValue", THROTTLE),
        ("UpdateSecretVersionStage", SERVER_ERROR),
    ] {
        proxy.push(Fault {
            op: Some(op),
            when: When::Before,
            answer,
            count: 2,
        });
    }
    let before = store.calls();
    let v1 = store
        .put_tokens(&k, &tokens("one"), Expect::Absent)
        .await
        .unwrap();
    store.clear_cache();
    let read = store.get_tokens(&k).await.unwrap().unwrap();
    assert_eq!(read.version, v1);
    let v2 = store
        .put_tokens(&k, &tokens("two"), Expect::Version(v1))
        .await
        .unwrap();
    let calls = store.calls().since(&before);
    assert_eq!(proxy.injected(), 8, "every planned fault struck");
    // The idempotent calls (create, read, put) were retried by the SDK: two hidden attempts
    // each. The move of AWSCURRENT is never retried blindly: the store read that it had not
    // happened (two reads), then moved again (two more calls).
    assert_eq!(calls.http_attempts - calls.total(), 6, "{calls:?}");
    assert_eq!(calls.update_secret_version_stage, 3, "{calls:?}");
    let truth = direct(&store).get_tokens(&k).await.unwrap().unwrap();
    assert_eq!((truth.version, access(&truth.value)), (v2, "at-two".into()));
    store.delete_tokens(&k, Expect::Any).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lasting_outage_is_unavailable_within_the_budget_and_changes_nothing() {
    let proxy = FaultProxy::start(&common::endpoint()).await;
    let budget = Duration::from_secs(2);
    let store = store_via(&proxy, 3, budget);
    let k = key(2);
    let v1 = store
        .put_tokens(&k, &tokens("kept"), Expect::Absent)
        .await
        .unwrap();
    for answer in [THROTTLE, SERVER_ERROR] {
        proxy.outage(answer.clone());
        store.clear_cache();
        let started = Instant::now();
        let read = store.get_tokens(&k).await.unwrap_err();
        assert!(read.is_retryable(), "{read:?}");
        assert!(chain(&read).contains(answer.code), "{}", chain(&read));
        let write = store
            .put_tokens(&k, &tokens("lost"), Expect::Version(v1.clone()))
            .await
            .unwrap_err();
        assert!(write.is_retryable(), "{write:?}");
        let lease = store
            .try_acquire_refresh_lease(&k, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(lease.is_retryable(), "{lease:?}");
        assert!(
            started.elapsed() < budget * 3 + Duration::from_secs(3),
            "three operations took {:?} with a {budget:?} budget",
            started.elapsed()
        );
        proxy.heal();
    }
    // Nothing was applied: the record and the lease are as before.
    let truth = direct(&store);
    let read = truth.get_tokens(&k).await.unwrap().unwrap();
    assert_eq!(
        (read.version.clone(), access(&read.value)),
        (v1, "at-kept".into())
    );
    let lease = truth
        .try_acquire_refresh_lease(&k, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(lease.is_some(), "a failed acquisition left the lease held");
    truth.release_refresh_lease(&lease.unwrap()).await.unwrap();
    store.delete_tokens(&k, Expect::Any).await.unwrap();
}

/// Every kind of write whose answer is lost after moto applied it: the SDK's retry (same
/// `ClientRequestToken`) or the store's read-back recognises its own write, so the caller is
/// told what happened — never a false `Conflict`, never a write applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_whose_answer_was_lost_reports_what_it_did() {
    let proxy = FaultProxy::start(&common::endpoint()).await;
    for attempts in [3, 1] {
        let store = store_via(&proxy, attempts, Duration::from_secs(5));
        let truth = direct(&store);
        let k = key(3);

        proxy.push(lost_answer("CreateSecret"));
        let v1 = store
            .put_tokens(&k, &tokens("created"), Expect::Absent)
            .await
            .unwrap_or_else(|e| panic!("{attempts} attempts, create: {}", chain(&e)));
        assert_eq!(truth.get_tokens(&k).await.unwrap().unwrap().version, v1);

        proxy.push(lost_answer("PutSecretValue"));
        let v2 = store
            .put_tokens(&k, &tokens("put"), Expect::Version(v1.clone()))
            .await
            .unwrap_or_else(|e| panic!("{attempts} attempts, put: {}", chain(&e)));
        proxy.push(lost_answer("UpdateSecretVersionStage"));
        let v3 = store
            .put_tokens(&k, &tokens("moved"), Expect::Version(v2.clone()))
            .await
            .unwrap_or_else(|e| panic!("{attempts} attempts, move: {}", chain(&e)));
        let now = truth.get_tokens(&k).await.unwrap().unwrap();
        assert_eq!(
            (now.version.clone(), access(&now.value)),
            (v3.clone(), "at-moved".into())
        );
        // The stale versions still conflict.
        assert!(matches!(
            store
                .put_tokens(&k, &tokens("stale"), Expect::Version(v2))
                .await,
            Err(StoreError::Conflict { .. })
        ));

        proxy.push(lost_answer("UpdateSecretVersionStage"));
        let lease = store
            .try_acquire_refresh_lease(&k, Duration::from_secs(30))
            .await
            .unwrap()
            .expect("the acquisition whose answer was lost is ours");
        assert!(
            truth
                .try_acquire_refresh_lease(&k, Duration::from_secs(30))
                .await
                .unwrap()
                .is_none()
        );
        proxy.push(lost_answer("UpdateSecretVersionStage"));
        let lease = store
            .renew_refresh_lease(&lease, Duration::from_secs(30))
            .await
            .unwrap()
            .expect("the renewal whose answer was lost is ours");
        proxy.push(lost_answer("UpdateSecretVersionStage"));
        assert!(
            store.release_refresh_lease(&lease).await.unwrap(),
            "the release whose answer was lost"
        );
        let other = truth
            .try_acquire_refresh_lease(&k, Duration::from_secs(30))
            .await
            .unwrap()
            .expect("released lease is free");
        truth.release_refresh_lease(&other).await.unwrap();

        proxy.push(lost_answer("UpdateSecretVersionStage"));
        assert!(
            store
                .delete_tokens(&k, Expect::Version(v3))
                .await
                .unwrap_or_else(|e| panic!("{attempts} attempts, delete: {}", chain(&e)))
        );
        assert!(truth.get_tokens(&k).await.unwrap().is_none());

        let pending = PendingAuthorization::new(
            format!("state-{attempts}-{}", std::process::id()),
            SecretString::from("verifier"),
            k.issuer.clone(),
            k.resource.clone(),
            "client",
            "http://127.0.0.1:1/cb",
            Duration::from_secs(600),
        );
        proxy.push(lost_answer("CreateSecret"));
        store.insert_pending(&pending).await.unwrap();
        proxy.push(lost_answer("UpdateSecretVersionStage"));
        assert!(
            store.take_pending(&pending.state).await.unwrap().is_some(),
            "the redemption whose answer was lost is ours"
        );
        assert!(truth.take_pending(&pending.state).await.unwrap().is_none());

        store
            .put_tokens(&k, &tokens("x"), Expect::Any)
            .await
            .unwrap();
        proxy.push(lost_answer("DeleteSecret"));
        store.delete_tokens(&k, Expect::Any).await.unwrap();
        assert!(truth.get_tokens(&k).await.unwrap().is_none());
        assert!(proxy.injected() > 0);
    }
}

/// A write refused before it reached moto, with no SDK retry: `Unavailable`, and nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_never_arrived_is_unavailable_and_not_applied() {
    let proxy = FaultProxy::start(&common::endpoint()).await;
    let store = store_via(&proxy, 1, Duration::from_secs(5));
    let truth = direct(&store);
    let k = key(4);
    let v1 = store
        .put_tokens(&k, &tokens("one"), Expect::Absent)
        .await
        .unwrap();
    for op in ["PutSecretValue", "UpdateSecretVersionStage"] {
        proxy.push(Fault {
            op: Some(op),
            when: When::Before,
            answer: THROTTLE,
            count: 1,
        });
        let e = store
            .put_tokens(&k, &tokens("two"), Expect::Version(v1.clone()))
            .await
            .unwrap_err();
        assert!(e.is_retryable(), "{op}: {e:?}");
        assert!(chain(&e).contains("ThrottlingException"), "{}", chain(&e));
        let now = truth.get_tokens(&k).await.unwrap().unwrap();
        assert_eq!(
            (now.version, access(&now.value)),
            (v1.clone(), "at-one".into())
        );
    }
    store.delete_tokens(&k, Expect::Any).await.unwrap();
}

/// Writers appending unique ids to one record by compare-and-swap through a proxy that fails a
/// quarter of all requests (before and after moto applied them, throttling and 500s), with one
/// SDK retry: every acknowledged id is in the final record exactly once, and nothing else is
/// there but ids whose write reported `Unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_faults_lose_no_acknowledged_write() {
    let proxy = FaultProxy::start(&common::endpoint()).await;
    let store = store_via(&proxy, 2, Duration::from_secs(5));
    let k = key(5);
    store
        .put_tokens(&k, &tokens("log"), Expect::Absent)
        .await
        .unwrap();
    proxy.random_faults(250, 0x5eed);
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let unknown = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (store, k, acked, unknown) = (
            store.clone(),
            k.clone(),
            Arc::clone(&acked),
            Arc::clone(&unknown),
        );
        writers.push(tokio::spawn(async move {
            for i in 0..12 {
                let id = format!("w{w}-{i}");
                loop {
                    let current = match store.get_tokens(&k).await {
                        Ok(Some(c)) => c,
                        Ok(None) => panic!("the record vanished"),
                        Err(e) if e.is_retryable() => continue,
                        Err(e) => panic!("read: {}", chain(&e)),
                    };
                    let mut next = current.value.clone();
                    next.scopes.push(id.clone());
                    match store
                        .put_tokens(&k, &next, Expect::Version(current.version))
                        .await
                    {
                        Ok(_) => {
                            acked.lock().unwrap().push(id.clone());
                            break;
                        }
                        Err(StoreError::Conflict { .. }) => {}
                        Err(e) if e.is_retryable() => {
                            unknown.lock().unwrap().push(id.clone());
                            break;
                        }
                        Err(e) => panic!("write: {}", chain(&e)),
                    }
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    proxy.heal();
    assert!(proxy.injected() > 10, "only {} faults", proxy.injected());
    let fin = direct(&store).get_tokens(&k).await.unwrap().unwrap().value;
    let stored: Vec<&String> = fin.scopes.iter().collect();
    let distinct: HashSet<&&String> = stored.iter().collect();
    assert_eq!(
        distinct.len(),
        stored.len(),
        "an id was applied twice: {stored:?}"
    );
    let acked = acked.lock().unwrap().clone();
    let unknown: BTreeSet<String> = unknown.lock().unwrap().iter().cloned().collect();
    for id in &acked {
        assert!(fin.scopes.contains(id), "acknowledged write {id} was lost");
    }
    for id in &fin.scopes {
        assert!(
            acked.contains(id) || unknown.contains(id),
            "{id} is stored but was neither acknowledged nor reported unavailable"
        );
    }
    assert!(
        acked.len() >= 24,
        "only {} of 48 writes acknowledged",
        acked.len()
    );
    eprintln!(
        "{} faults injected; {} acknowledged, {} unavailable (of which {} landed)",
        proxy.injected(),
        acked.len(),
        unknown.len(),
        unknown.iter().filter(|id| fin.scopes.contains(id)).count()
    );
    store.delete_tokens(&k, Expect::Any).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_still_being_deleted_is_waited_for() {
    let proxy = FaultProxy::start(&common::endpoint()).await;
    let store = store_via(&proxy, 1, Duration::from_secs(5));
    let k = key(6);
    proxy.push(Fault {
        op: Some("CreateSecret"),
        when: When::Before,
        answer: Answer {
            status: 400,
            code: "InvalidRequestException",
            message: "You can't create this secret because a secret with this name is already scheduled for deletion.",
        },
        count: 3,
    });
    store
        .put_tokens(&k, &tokens("again"), Expect::Absent)
        .await
        .unwrap();
    assert_eq!(proxy.injected(), 3);
    // A name that stays busy past the budget is a retryable error that says what to do.
    let short = store_via(&proxy, 1, Duration::from_millis(600));
    proxy.outage(Answer {
        status: 400,
        code: "InvalidRequestException",
        message: "You can't create this secret because a secret with this name is already scheduled for deletion.",
    });
    let e = short
        .put_tokens(&k, &tokens("busy"), Expect::Absent)
        .await
        .unwrap_err();
    proxy.heal();
    assert!(e.is_retryable(), "{e:?}");
    assert!(chain(&e).contains("still being deleted"), "{}", chain(&e));
    store.delete_tokens(&k, Expect::Any).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_quotas_and_sizes_are_typed_errors() {
    let proxy = FaultProxy::start(&common::endpoint()).await;
    let store = store_via(&proxy, 3, Duration::from_secs(5));
    let k = key(7);
    let v1 = store
        .put_tokens(&k, &tokens("one"), Expect::Absent)
        .await
        .unwrap();

    proxy.push(Fault {
        op: Some("PutSecretValue"),
        when: When::Before,
        answer: Answer {
            status: 400,
            code: "AccessDeniedException",
            message: "User: arn:aws:sts::123456789012:assumed-role/gateway/i-0 is not authorized to perform: secretsmanager:PutSecretValue on resource: mcp-auth-test/x because no identity-based policy allows the secretsmanager:PutSecretValue action",
        },
        count: 1,
    });
    let e = store
        .put_tokens(&k, &tokens("two"), Expect::Version(v1.clone()))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::PermissionDenied { .. }), "{e:?}");
    assert!(
        chain(&e).contains("grant secretsmanager:PutSecretValue"),
        "{}",
        chain(&e)
    );

    proxy.push(Fault {
        op: Some("GetSecretValue"),
        when: When::Before,
        answer: Answer {
            status: 400,
            code: "DecryptionFailure",
            message: "Secrets Manager can't decrypt the protected secret text using the provided KMS key.",
        },
        count: 1,
    });
    store.clear_cache();
    let e = store.get_tokens(&k).await.unwrap_err();
    assert!(matches!(e, StoreError::PermissionDenied { .. }), "{e:?}");
    assert!(chain(&e).contains("kms:Decrypt"), "{}", chain(&e));

    proxy.push(Fault {
        op: Some("PutSecretValue"),
        when: When::Before,
        answer: Answer {
            status: 400,
            code: "LimitExceededException",
            message: "You have exceeded the maximum number of versions for this secret.",
        },
        // The SDK counts LimitExceededException as throttling and retries it.
        count: 3,
    });
    let e = store
        .put_tokens(&k, &tokens("two"), Expect::Version(v1))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Backend { .. }), "{e:?}");
    assert!(
        chain(&e).contains("24 hours") && chain(&e).contains("100"),
        "{}",
        chain(&e)
    );

    let before = store.calls();
    let e = write_raw_record(&store, &RecordKey::Tokens(k.clone()), &vec![b'x'; 70_000])
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::TooLarge {
                size: 70_000,
                limit: 65_536,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        store.calls().since(&before).total(),
        0,
        "refused before any call"
    );
    store.delete_tokens(&k, Expect::Any).await.unwrap();
}
