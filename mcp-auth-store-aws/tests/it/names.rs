//! Awkward identifiers through moto: the longest issuers and resources (hashed name parts,
//! keys recovered from descriptions), unicode and key-syntax characters, a namespace long enough
//! to be hashed — written, listed back, deleted per issuer. (The name rules themselves are a
//! property test in `src/names.rs`.)
use crate::common;

use mcp_auth_core::record::RecordKey;
use mcp_auth_core::{
    BindingStore, ClientRegistration, Expect, IssuerId, Namespace, RegistrationKind,
    RegistrationStore, ResourceBinding, ResourceUri, SecretString, TokenKey, TokenSet, TokenStore,
};
use mcp_auth_store_aws::is_valid_secret_name;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_identifiers_round_trip_through_secrets_manager() {
    let long_ns = format!("tenant:{}-{}", "ü".repeat(60), std::process::id());
    for ns in [
        Namespace::random("aws-names"),
        Namespace::new(long_ns).unwrap(),
    ] {
        let store = common::store(&ns);
        let issuers: Vec<IssuerId> = [
            format!("https://as.example/{}", "é".repeat(90)),
            "https://as.example/t:x*{y}".to_owned(),
            "https://as.example/t".to_owned(),
            "https://as.example/t/".to_owned(),
            "https://xn--caf-dma.example/%74".to_owned(),
        ]
        .iter()
        .map(|s| IssuerId::new(s).unwrap())
        .collect();
        let resources: Vec<ResourceUri> = [
            format!("https://mcp.example/{}", "r".repeat(170)),
            "https://mcp.example/mcp?tenant=a".to_owned(),
        ]
        .iter()
        .map(|s| ResourceUri::new(s).unwrap())
        .collect();
        let mut token_keys = Vec::new();
        for issuer in &issuers {
            let reg = ClientRegistration::new(issuer.clone(), "client", RegistrationKind::Dynamic);
            store.put_registration(&reg, Expect::Absent).await.unwrap();
            for resource in &resources {
                let key = TokenKey::new(issuer.clone(), resource.clone());
                assert!(is_valid_secret_name(
                    &store.secret_name(&RecordKey::Tokens(key.clone()))
                ));
                store
                    .put_tokens(
                        &key,
                        &TokenSet::new(SecretString::from("at")),
                        Expect::Absent,
                    )
                    .await
                    .unwrap();
                token_keys.push(key);
            }
        }
        for resource in &resources {
            store
                .put_binding(
                    &ResourceBinding::new(resource.clone(), issuers[0].clone()),
                    Expect::Absent,
                )
                .await
                .unwrap();
        }
        assert!(
            store
                .secret_name(&RecordKey::Tokens(token_keys[0].clone()))
                .contains("/_"),
            "the longest token key is hashed"
        );
        let mut listed = store.list_registrations().await.unwrap();
        listed.sort();
        let mut want = issuers.clone();
        want.sort();
        assert_eq!(listed, want);
        let mut listed = store.list_tokens().await.unwrap();
        listed.sort();
        token_keys.sort();
        assert_eq!(listed, token_keys);
        let mut listed = store.list_bindings().await.unwrap();
        listed.sort();
        let mut want = resources.clone();
        want.sort();
        assert_eq!(listed, want);
        // `https://as.example/t` must not take `https://as.example/t/`'s tokens along.
        assert_eq!(store.delete_issuer_tokens(&issuers[2]).await.unwrap(), 2);
        assert_eq!(
            store.list_tokens().await.unwrap().len(),
            token_keys.len() - 2
        );
        for issuer in &issuers {
            store.delete_issuer_tokens(issuer).await.unwrap();
            store
                .delete_registration(issuer, Expect::Any)
                .await
                .unwrap();
        }
        for resource in &resources {
            store.delete_binding(resource, Expect::Any).await.unwrap();
        }
        assert!(store.list_tokens().await.unwrap().is_empty());
        assert!(store.list_registrations().await.unwrap().is_empty());
    }
}
