//! The one error type every store returns.

use std::error::Error as StdError;

/// A boxed error kept as the source of a [`StoreError`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What went wrong in a store. Callers match on the variant; the backend's own error is kept as
/// the `source`, never flattened to a string. Messages never contain a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The write's expectation ([`crate::Expect`]) did not hold: another writer got there first.
    /// Re-read and decide again.
    #[error("conflict on {key}: the record changed since it was read; re-read and retry")]
    Conflict {
        /// Which record.
        key: String,
    },
    /// The backend could not be reached or is busy. Retryable.
    #[error("{backend} store unavailable: {source}; retry later")]
    Unavailable {
        /// Backend name (`"sqlite"`, `"redis"`, ...).
        backend: &'static str,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
    /// A stored record could not be decoded. It is left in place for inspection; delete it
    /// explicitly to recover.
    #[error("corrupt record {key}: {reason}; the record was left untouched, delete it to recover")]
    Corrupt {
        /// Which record.
        key: String,
        /// What is wrong with it (never its content).
        reason: String,
    },
    /// The backend refused access (file mode, ACL, IAM policy, locked keyring).
    #[error("{backend} store denied access: {source}")]
    PermissionDenied {
        /// Backend name.
        backend: &'static str,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
    /// The encoded record is larger than the store accepts.
    #[error("record {key} is {size} bytes, above the {limit}-byte limit")]
    TooLarge {
        /// Which record.
        key: String,
        /// Encoded size.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// The store does not support this operation (see [`crate::StoreCapabilities`]).
    #[error("{backend} store does not support {operation}")]
    Unsupported {
        /// Backend name.
        backend: &'static str,
        /// The operation.
        operation: &'static str,
    },
    /// Any other backend failure.
    #[error("{backend} store failed: {source}")]
    Backend {
        /// Backend name.
        backend: &'static str,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
}

impl StoreError {
    /// True when retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }

    /// Wraps a backend error as [`StoreError::Backend`].
    pub fn backend(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            backend,
            source: source.into(),
        }
    }

    /// Wraps a backend error as [`StoreError::Unavailable`].
    pub fn unavailable(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Unavailable {
            backend,
            source: source.into(),
        }
    }
}
