//! Building a store from raw records.
//!
//! A backend that can get, conditionally put, conditionally delete and list the encoded records
//! of the [`record`](mod@crate::record) format implements [`RawRecords`]; the
//! [`impl_record_stores!`](crate::impl_record_stores) macro then writes its
//! [`RegistrationStore`](crate::RegistrationStore) and [`BindingStore`](crate::BindingStore), and
//! the functions here give the record half of [`TokenStore`](crate::TokenStore) in one line each.
//! Bulk reads and imports ([`RawRecords::scan_records`], [`RawRecords::put_records_any`]) have
//! record-by-record defaults; a backend overrides them to serve `scan_*` and `put_*_any` of every
//! store trait with one query or one transaction.
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

    /// Every record of `kind` with its bytes and version: what `get_record` returns for each key
    /// `list_records` lists. The default does exactly that (a record deleted in between is left
    /// out); backends override it with one query.
    async fn scan_records(
        &self,
        kind: RecordKind,
    ) -> Result<Vec<(RecordKey, Vec<u8>, Version)>, StoreError> {
        let mut found = Vec::new();
        for key in self.list_records(kind).await? {
            if let Some((bytes, version)) = self.get_record(&key).await? {
                found.push((key, bytes, version));
            }
        }
        Ok(found)
    }

    /// Stores every `(key, bytes)` as `put_record(key, bytes, Expect::Any)` would; returns the
    /// new versions in order. On an error any subset may have been written. The default puts
    /// them one by one; backends may batch them in transactions.
    async fn put_records_any(
        &self,
        records: Vec<(RecordKey, Vec<u8>)>,
    ) -> Result<Vec<Version>, StoreError> {
        let mut versions = Vec::with_capacity(records.len());
        for (key, bytes) in records {
            versions.push(self.put_record(&key, bytes, Expect::Any).await?);
        }
        Ok(versions)
    }
}

/// `TokenStore::get_tokens` from raw records.
///
/// # Errors
///
/// Whatever [`RawRecords::get_record`] returns, and [`StoreError::Corrupt`] when the stored bytes
/// do not decode as a token set of `key` (see [`record::decode_tokens`]).
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
///
/// # Errors
///
/// [`StoreError::TooLarge`] when the encoded token set exceeds [`record::MAX_RECORD_BYTES`];
/// otherwise whatever [`RawRecords::put_record`] returns, [`StoreError::Conflict`] included when
/// `expect` does not hold.
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
///
/// # Errors
///
/// Whatever [`RawRecords::delete_record`] returns, [`StoreError::Conflict`] included when `expect`
/// does not hold.
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
///
/// # Errors
///
/// Whatever [`RawRecords::list_records`] returns.
pub async fn list_tokens<S: RawRecords + ?Sized>(store: &S) -> Result<Vec<TokenKey>, StoreError> {
    Ok(store
        .list_records(RecordKind::Tokens)
        .await?
        .into_iter()
        .filter_map(RecordKey::into_tokens)
        .collect())
}

/// Scans of at least this many records are decoded on several threads by [`par_map`].
const PARALLEL_FROM: usize = 2048;

/// Maps `f` over `items`, keeping their order: on the calling thread for small inputs, on up to
/// four scoped threads (one per available core) from [`PARALLEL_FROM`] items. Bulk scans use it
/// to decode records (URL validation of every key and JSON decoding dominate a large scan).
/// Blocks the calling thread until done; call it where blocking is allowed (after the rows are
/// read; the work is CPU-bound and short).
#[doc(hidden)]
pub fn par_map<T: Send, U: Send>(
    items: Vec<T>,
    f: &(dyn Fn(T) -> Result<Option<U>, StoreError> + Sync),
) -> Result<Vec<U>, StoreError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(4);
    if items.len() < PARALLEL_FROM || threads < 2 {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            out.extend(f(item)?);
        }
        return Ok(out);
    }
    let total = items.len();
    let per_thread = total.div_ceil(threads);
    let mut rest = items.into_iter();
    let chunks: Vec<Vec<T>> = (0..threads)
        .map(|_| rest.by_ref().take(per_thread).collect())
        .collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                scope.spawn(move || {
                    let mut out = Vec::with_capacity(chunk.len());
                    for item in chunk {
                        out.extend(f(item)?);
                    }
                    Ok::<_, StoreError>(out)
                })
            })
            .collect();
        let mut out = Vec::with_capacity(total);
        for handle in handles {
            match handle.join() {
                Ok(part) => out.extend(part?),
                // A panic in a decoder is a bug; surface it where it happened.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Ok(out)
    })
}

/// Decodes one scanned row (`Ok(None)` leaves it out).
type Decoder<U> = dyn Fn(RecordKey, &[u8], Version) -> Result<Option<U>, StoreError> + Sync;

/// [`par_map`] over scanned rows, decoding each value by reference: the values are freed here,
/// on the calling thread, once the decoders are done. (Freed by the decoder threads, they were
/// freed by two threads at once into the allocator arena of the thread that read them, and the
/// two contended for its lock on every row.)
fn par_decode<U: Send>(
    rows: Vec<(RecordKey, Vec<u8>, Version)>,
    f: &Decoder<U>,
) -> Result<Vec<U>, StoreError> {
    let (rows, values): (Vec<(RecordKey, Version)>, Vec<Vec<u8>>) = rows
        .into_iter()
        .map(|(key, bytes, version)| ((key, version), bytes))
        .unzip();
    let items: Vec<_> = rows.into_iter().zip(&values).collect();
    par_map(items, &|((key, version), bytes)| f(key, bytes, version))
}

/// `TokenStore::scan_tokens` from raw records: one [`RawRecords::scan_records`].
///
/// # Errors
///
/// Whatever [`RawRecords::scan_records`] returns, and [`StoreError::Corrupt`] when any scanned
/// record does not decode as a token set of its key.
pub async fn scan_tokens<S: RawRecords + ?Sized>(
    store: &S,
) -> Result<Vec<(TokenKey, Versioned<TokenSet>)>, StoreError> {
    let rows = store.scan_records(RecordKind::Tokens).await?;
    par_decode(rows, &|key, bytes, version| {
        let Some(key) = key.into_tokens() else {
            return Ok(None);
        };
        let value = record::decode_tokens(&key, bytes)?;
        Ok(Some((key, Versioned { value, version })))
    })
}

/// `TokenStore::put_tokens_any` from raw records: one [`RawRecords::put_records_any`].
///
/// # Errors
///
/// [`StoreError::TooLarge`] when any encoded token set exceeds [`record::MAX_RECORD_BYTES`] (before
/// anything is written); otherwise whatever [`RawRecords::put_records_any`] returns, after which
/// any subset may have been written.
pub async fn put_tokens_any<S: RawRecords + ?Sized>(
    store: &S,
    tokens: &[(TokenKey, TokenSet)],
) -> Result<Vec<Version>, StoreError> {
    let records = tokens
        .iter()
        .map(|(key, t)| {
            Ok((
                RecordKey::Tokens(key.clone()),
                record::encode_tokens(key, t)?,
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    store.put_records_any(records).await
}

#[doc(hidden)]
pub async fn scan_registrations<S: RawRecords + ?Sized>(
    store: &S,
) -> Result<Vec<Versioned<ClientRegistration>>, StoreError> {
    let rows = store.scan_records(RecordKind::Registration).await?;
    par_decode(rows, &|key, bytes, version| {
        let Some(issuer) = key.into_registration() else {
            return Ok(None);
        };
        let value = record::decode_registration(&issuer, bytes)?;
        Ok(Some(Versioned { value, version }))
    })
}

#[doc(hidden)]
pub async fn put_registrations_any<S: RawRecords + ?Sized>(
    store: &S,
    registrations: &[ClientRegistration],
) -> Result<Vec<Version>, StoreError> {
    let records = registrations
        .iter()
        .map(|r| {
            Ok((
                RecordKey::Registration(r.issuer.clone()),
                record::encode_registration(r)?,
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    store.put_records_any(records).await
}

#[doc(hidden)]
pub async fn scan_bindings<S: RawRecords + ?Sized>(
    store: &S,
) -> Result<Vec<Versioned<ResourceBinding>>, StoreError> {
    let rows = store.scan_records(RecordKind::Binding).await?;
    par_decode(rows, &|key, bytes, version| {
        let Some(resource) = key.into_binding() else {
            return Ok(None);
        };
        let value = record::decode_binding(&resource, bytes)?;
        Ok(Some(Versioned { value, version }))
    })
}

#[doc(hidden)]
pub async fn put_bindings_any<S: RawRecords + ?Sized>(
    store: &S,
    bindings: &[ResourceBinding],
) -> Result<Vec<Version>, StoreError> {
    let records = bindings
        .iter()
        .map(|b| {
            Ok((
                RecordKey::Binding(b.resource.clone()),
                record::encode_binding(b)?,
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    store.put_records_any(records).await
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
            async fn scan_registrations(
                &self,
            ) -> ::std::result::Result<
                ::std::vec::Vec<$crate::Versioned<$crate::ClientRegistration>>,
                $crate::StoreError,
            > {
                $crate::raw::scan_registrations(self).await
            }
            async fn put_registrations_any(
                &self,
                registrations: &[$crate::ClientRegistration],
            ) -> ::std::result::Result<::std::vec::Vec<$crate::Version>, $crate::StoreError> {
                $crate::raw::put_registrations_any(self, registrations).await
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
            async fn scan_bindings(
                &self,
            ) -> ::std::result::Result<
                ::std::vec::Vec<$crate::Versioned<$crate::ResourceBinding>>,
                $crate::StoreError,
            > {
                $crate::raw::scan_bindings(self).await
            }
            async fn put_bindings_any(
                &self,
                bindings: &[$crate::ResourceBinding],
            ) -> ::std::result::Result<::std::vec::Vec<$crate::Version>, $crate::StoreError> {
                $crate::raw::put_bindings_any(self, bindings).await
            }
        }
    };
}

#[doc(hidden)]
pub use async_trait::async_trait as __async_trait;

/// Implements [`BindingStore`](crate::BindingStore) for a wrapper by forwarding every method,
/// unchanged, to one of its fields: for a layer over a store that leaves bindings alone (they
/// hold no secret), as [`EncryptedStore`](crate::EncryptedStore) does.
/// `forward_binding_store!([S: BindingStore] Wrapper<S>, inner)`; `[]` when the wrapper has no
/// generic parameters. `missing_trait_methods` makes a method added to the trait and not
/// forwarded here a compile error, not a silently used default.
#[doc(hidden)]
#[macro_export]
macro_rules! forward_binding_store {
    ([$($generics:tt)*] $ty:ty, $field:ident) => {
        #[deny(clippy::missing_trait_methods)]
        #[$crate::raw::__async_trait]
        impl<$($generics)*> $crate::BindingStore for $ty {
            async fn get_binding(
                &self,
                resource: &$crate::ResourceUri,
            ) -> ::std::result::Result<
                ::std::option::Option<$crate::Versioned<$crate::ResourceBinding>>,
                $crate::StoreError,
            > {
                self.$field.get_binding(resource).await
            }

            async fn put_binding(
                &self,
                binding: &$crate::ResourceBinding,
                expect: $crate::Expect,
            ) -> ::std::result::Result<$crate::Version, $crate::StoreError> {
                self.$field.put_binding(binding, expect).await
            }

            async fn delete_binding(
                &self,
                resource: &$crate::ResourceUri,
                expect: $crate::Expect,
            ) -> ::std::result::Result<bool, $crate::StoreError> {
                self.$field.delete_binding(resource, expect).await
            }

            async fn list_bindings(
                &self,
            ) -> ::std::result::Result<::std::vec::Vec<$crate::ResourceUri>, $crate::StoreError>
            {
                self.$field.list_bindings().await
            }

            async fn scan_bindings(
                &self,
            ) -> ::std::result::Result<
                ::std::vec::Vec<$crate::Versioned<$crate::ResourceBinding>>,
                $crate::StoreError,
            > {
                self.$field.scan_bindings().await
            }

            async fn put_bindings_any(
                &self,
                bindings: &[$crate::ResourceBinding],
            ) -> ::std::result::Result<::std::vec::Vec<$crate::Version>, $crate::StoreError> {
                self.$field.put_bindings_any(bindings).await
            }
        }
    };
}
