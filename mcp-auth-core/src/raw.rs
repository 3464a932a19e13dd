//! Building a store from raw records.
//!
//! A backend that can get, conditionally put, conditionally delete and list the encoded records
//! of the [`record`](mod@crate::record) format implements [`RawRecords`]; the
//! [`impl_record_stores!`](crate::impl_record_stores) macro then writes its
//! [`RegistrationStore`](crate::RegistrationStore) and [`BindingStore`](crate::BindingStore), and
//! the functions here give the record half of [`TokenStore`](crate::TokenStore) in one line each.
//! Leases, pending authorizations and per-issuer deletion stay with the backend: they are where
//! backends differ.

use async_trait::async_trait;

use crate::error::StoreError;
use crate::ids::{IssuerId, ResourceUri, TokenKey};
use crate::model::{ClientRegistration, ResourceBinding, TokenSet};
use crate::record::{self, RecordKey, RecordKind};
use crate::store::{Expect, StoreInfo, Version, Versioned};

/// Raw access to encoded records inside the store's namespace.
#[async_trait]
pub trait RawRecords: StoreInfo {
    /// The bytes and version stored under `key`.
    async fn get_record(&self, key: &RecordKey) -> Result<Option<(Vec<u8>, Version)>, StoreError>;
    /// Stores `bytes` under `key` if `expect` holds ([`StoreError::Conflict`] otherwise); returns
    /// the new version, which must never repeat one seen before for this key.
    async fn put_record(
        &self,
        key: &RecordKey,
        bytes: Vec<u8>,
        expect: Expect,
    ) -> Result<Version, StoreError>;
    /// Deletes `key` if `expect` holds; `Ok(false)` when there was nothing (for `Any`/`Absent`).
    async fn delete_record(&self, key: &RecordKey, expect: Expect) -> Result<bool, StoreError>;
    /// Every key of `kind`.
    async fn list_records(&self, kind: RecordKind) -> Result<Vec<RecordKey>, StoreError>;
}

/// `TokenStore::get_tokens` from raw records.
pub async fn get_tokens<S: RawRecords + ?Sized>(
    store: &S,
    key: &TokenKey,
) -> Result<Option<Versioned<TokenSet>>, StoreError> {
    record::versioned(
        store.get_record(&RecordKey::Tokens(key.clone())).await?,
        |bytes| record::decode_tokens(key, bytes),
    )
}

/// `TokenStore::put_tokens` from raw records.
pub async fn put_tokens<S: RawRecords + ?Sized>(
    store: &S,
    key: &TokenKey,
    tokens: &TokenSet,
    expect: Expect,
) -> Result<Version, StoreError> {
    let bytes = record::encode_tokens(key, tokens)?;
    store
        .put_record(&RecordKey::Tokens(key.clone()), bytes, expect)
        .await
}

/// `TokenStore::delete_tokens` from raw records.
pub async fn delete_tokens<S: RawRecords + ?Sized>(
    store: &S,
    key: &TokenKey,
    expect: Expect,
) -> Result<bool, StoreError> {
    store
        .delete_record(&RecordKey::Tokens(key.clone()), expect)
        .await
}

/// `TokenStore::list_tokens` from raw records.
pub async fn list_tokens<S: RawRecords + ?Sized>(store: &S) -> Result<Vec<TokenKey>, StoreError> {
    Ok(store
        .list_records(RecordKind::Tokens)
        .await?
        .into_iter()
        .filter_map(RecordKey::into_tokens)
        .collect())
}

#[doc(hidden)]
pub async fn get_registration<S: RawRecords + ?Sized>(
    store: &S,
    issuer: &IssuerId,
) -> Result<Option<Versioned<ClientRegistration>>, StoreError> {
    record::versioned(
        store
            .get_record(&RecordKey::Registration(issuer.clone()))
            .await?,
        |bytes| record::decode_registration(issuer, bytes),
    )
}

#[doc(hidden)]
pub async fn put_registration<S: RawRecords + ?Sized>(
    store: &S,
    registration: &ClientRegistration,
    expect: Expect,
) -> Result<Version, StoreError> {
    let bytes = record::encode_registration(registration)?;
    store
        .put_record(
            &RecordKey::Registration(registration.issuer.clone()),
            bytes,
            expect,
        )
        .await
}

#[doc(hidden)]
pub async fn list_registrations<S: RawRecords + ?Sized>(
    store: &S,
) -> Result<Vec<IssuerId>, StoreError> {
    Ok(store
        .list_records(RecordKind::Registration)
        .await?
        .into_iter()
        .filter_map(RecordKey::into_registration)
        .collect())
}

#[doc(hidden)]
pub async fn get_binding<S: RawRecords + ?Sized>(
    store: &S,
    resource: &ResourceUri,
) -> Result<Option<Versioned<ResourceBinding>>, StoreError> {
    record::versioned(
        store
            .get_record(&RecordKey::Binding(resource.clone()))
            .await?,
        |bytes| record::decode_binding(resource, bytes),
    )
}

#[doc(hidden)]
pub async fn put_binding<S: RawRecords + ?Sized>(
    store: &S,
    binding: &ResourceBinding,
    expect: Expect,
) -> Result<Version, StoreError> {
    let bytes = record::encode_binding(binding)?;
    store
        .put_record(&RecordKey::Binding(binding.resource.clone()), bytes, expect)
        .await
}

#[doc(hidden)]
pub async fn list_bindings<S: RawRecords + ?Sized>(
    store: &S,
) -> Result<Vec<ResourceUri>, StoreError> {
    Ok(store
        .list_records(RecordKind::Binding)
        .await?
        .into_iter()
        .filter_map(RecordKey::into_binding)
        .collect())
}

/// Implements [`RegistrationStore`](crate::RegistrationStore) and
/// [`BindingStore`](crate::BindingStore) for a type that implements [`RawRecords`].
#[macro_export]
macro_rules! impl_record_stores {
    ($ty:ty) => {
        #[$crate::raw::__async_trait]
        impl $crate::RegistrationStore for $ty {
            async fn get_registration(
                &self,
                issuer: &$crate::IssuerId,
            ) -> ::std::result::Result<
                ::std::option::Option<$crate::Versioned<$crate::ClientRegistration>>,
                $crate::StoreError,
            > {
                $crate::raw::get_registration(self, issuer).await
            }
            async fn put_registration(
                &self,
                registration: &$crate::ClientRegistration,
                expect: $crate::Expect,
            ) -> ::std::result::Result<$crate::Version, $crate::StoreError> {
                $crate::raw::put_registration(self, registration, expect).await
            }
            async fn delete_registration(
                &self,
                issuer: &$crate::IssuerId,
                expect: $crate::Expect,
            ) -> ::std::result::Result<bool, $crate::StoreError> {
                $crate::raw::RawRecords::delete_record(
                    self,
                    &$crate::record::RecordKey::Registration(issuer.clone()),
                    expect,
                )
                .await
            }
            async fn list_registrations(
                &self,
            ) -> ::std::result::Result<::std::vec::Vec<$crate::IssuerId>, $crate::StoreError> {
                $crate::raw::list_registrations(self).await
            }
        }

        #[$crate::raw::__async_trait]
        impl $crate::BindingStore for $ty {
            async fn get_binding(
                &self,
                resource: &$crate::ResourceUri,
            ) -> ::std::result::Result<
                ::std::option::Option<$crate::Versioned<$crate::ResourceBinding>>,
                $crate::StoreError,
            > {
                $crate::raw::get_binding(self, resource).await
            }
            async fn put_binding(
                &self,
                binding: &$crate::ResourceBinding,
                expect: $crate::Expect,
            ) -> ::std::result::Result<$crate::Version, $crate::StoreError> {
                $crate::raw::put_binding(self, binding, expect).await
            }
            async fn delete_binding(
                &self,
                resource: &$crate::ResourceUri,
                expect: $crate::Expect,
            ) -> ::std::result::Result<bool, $crate::StoreError> {
                $crate::raw::RawRecords::delete_record(
                    self,
                    &$crate::record::RecordKey::Binding(resource.clone()),
                    expect,
                )
                .await
            }
            async fn list_bindings(
                &self,
            ) -> ::std::result::Result<::std::vec::Vec<$crate::ResourceUri>, $crate::StoreError>
            {
                $crate::raw::list_bindings(self).await
            }
        }
    };
}

#[doc(hidden)]
pub use async_trait::async_trait as __async_trait;
