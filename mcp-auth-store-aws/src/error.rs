//! What went wrong talking to Secrets Manager, and how each failure becomes a [`StoreError`].
//!
//! Every SDK error is reduced to an [`ApiFailure`]: the API, the AWS error code and message (AWS
//! never echoes a secret value in them) and a [`FailureKind`] the store decides on. Nothing of
//! the request, which carries the secret value, is kept.

use std::fmt;
use std::time::Duration;

use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use mcp_auth_core::StoreError;

pub(crate) const BACKEND: &str = "aws-secrets-manager";

/// The Secrets Manager APIs this store calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    GetSecretValue,
    CreateSecret,
    PutSecretValue,
    UpdateSecretVersionStage,
    DeleteSecret,
    ListSecrets,
}

impl Api {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Api::GetSecretValue => "GetSecretValue",
            Api::CreateSecret => "CreateSecret",
            Api::PutSecretValue => "PutSecretValue",
            Api::UpdateSecretVersionStage => "UpdateSecretVersionStage",
            Api::DeleteSecret => "DeleteSecret",
            Api::ListSecrets => "ListSecrets",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Errors of this backend, carried as the source of a [`StoreError`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AwsStoreError {
    /// An option is not usable.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// Secrets Manager (or the network to it) failed in a way a later attempt may not meet:
    /// throttling, a 5xx, a timeout, a dropped connection.
    #[error(
        "Secrets Manager {operation} failed ({detail}); the SDK's retries are spent: retry later, or raise the SDK's retry attempts (AWS_MAX_ATTEMPTS) if this persists"
    )]
    Transient {
        /// The API.
        operation: &'static str,
        /// The AWS error code and message, or what the connection did.
        detail: String,
    },
    /// IAM (or KMS) refused the call.
    #[error(
        "access denied to {action} ({code}: {message}); grant {action} to this role on the store's secrets (see the IAM policy in the mcp-auth-store-aws documentation)"
    )]
    AccessDenied {
        /// The IAM action that was refused (`secretsmanager:GetSecretValue`, `kms:Decrypt`, ...).
        action: String,
        /// The AWS error code.
        code: String,
        /// The AWS error message.
        message: String,
    },
    /// Secrets Manager keeps every version created in the last 24 hours and at most about 100
    /// versions per secret; a record written more often than that is refused until old versions
    /// age out.
    #[error(
        "Secrets Manager refused a new version of {key} ({message}): a secret keeps every version created in the last 24 hours, up to its quota of about 100; this record is written too often (tokens that live a few minutes are refreshed too often for this store: see \"Quotas\" in the mcp-auth-store-aws documentation), or the account's quota of secrets is reached"
    )]
    QuotaExceeded {
        /// Which record.
        key: String,
        /// The AWS message.
        message: String,
    },
    /// The request budget ran out before Secrets Manager answered.
    #[error(
        "Secrets Manager did not complete {operation} within the {budget:?} request budget; retry later, or raise AwsOptions::request_budget"
    )]
    BudgetExceeded {
        /// The store operation.
        operation: &'static str,
        /// [`AwsOptions::request_budget`](crate::AwsOptions::request_budget).
        budget: Duration,
    },
    /// A write may or may not have been applied: its answer was lost and reading it back failed.
    #[error(
        "the write to {key} may or may not have been applied ({detail}); re-read {key} before deciding to write it again"
    )]
    OutcomeUnknown {
        /// Which record (or lease).
        key: String,
        /// What failed.
        detail: String,
    },
    /// The secret's name is held by a secret being deleted (by this store, or outside it with a
    /// recovery window).
    #[error(
        "the secret for {key} is still being deleted ({detail}); retry in a few seconds, or if it was deleted outside mcp-auth with a recovery window, restore it (RestoreSecret) or delete it for good (DeleteSecret with ForceDeleteWithoutRecovery)"
    )]
    NameBusy {
        /// Which record.
        key: String,
        /// What Secrets Manager said.
        detail: String,
    },
    /// Any other refusal by Secrets Manager.
    #[error("Secrets Manager {operation} failed: {detail}")]
    Api {
        /// The API.
        operation: &'static str,
        /// The AWS error code and message.
        detail: String,
    },
}

/// How the store reacts to a failed call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// `ResourceNotFoundException`.
    NotFound,
    /// `ResourceExistsException`.
    Exists,
    /// `InvalidParameterException`: for `UpdateSecretVersionStage`, the label was not on the
    /// expected version (another writer moved it).
    InvalidParameter,
    /// `InvalidRequestException`: the secret is marked for deletion.
    InvalidRequest,
    /// Throttling, 5xx, timeout, connection: retryable.
    Transient,
    /// IAM or KMS said no.
    AccessDenied,
    /// `LimitExceededException`.
    Limit,
    /// Anything else.
    Other,
}

/// One failed call, reduced to what the store needs. Never holds request data.
#[derive(Clone, Debug)]
pub(crate) struct ApiFailure {
    pub(crate) api: Api,
    pub(crate) kind: FailureKind,
    pub(crate) code: String,
    pub(crate) message: String,
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.code.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.code, self.message)
        }
    }
}

/// Only printable ASCII, at most 600 characters: AWS messages end up in logs and terminals.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(600)
        .collect()
}

const TRANSIENT_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestThrottled",
    "RequestThrottledException",
    "RequestLimitExceeded",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "InternalServiceError",
    "InternalServiceErrorException",
    "InternalFailure",
    "InternalError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
    "PriorRequestNotComplete",
];

const ACCESS_CODES: &[&str] = &[
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "ExpiredToken",
    "ExpiredTokenException",
    "NotAuthorized",
];

impl ApiFailure {
    /// Reduces an SDK error. `E` is the operation's error type.
    pub(crate) fn from_sdk<E>(api: Api, err: &SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match err {
            SdkError::ServiceError(ctx) => {
                let e = ctx.err();
                let code = e.code().unwrap_or_default().to_owned();
                let message = printable(e.message().unwrap_or_default());
                let server_error = ctx.raw().status().is_server_error();
                let kind = match code.as_str() {
                    "ResourceNotFoundException" => FailureKind::NotFound,
                    "ResourceExistsException" => FailureKind::Exists,
                    "InvalidParameterException" => FailureKind::InvalidParameter,
                    "InvalidRequestException" => FailureKind::InvalidRequest,
                    "LimitExceededException" => FailureKind::Limit,
                    // KMS could not encrypt or decrypt with the secret's key: in practice the
                    // role lacks kms:GenerateDataKey / kms:Decrypt on it.
                    "DecryptionFailure" | "EncryptionFailure" => FailureKind::AccessDenied,
                    c if ACCESS_CODES.contains(&c) => FailureKind::AccessDenied,
                    c if TRANSIENT_CODES.contains(&c) => FailureKind::Transient,
                    _ if server_error => FailureKind::Transient,
                    _ => FailureKind::Other,
                };
                Self {
                    api,
                    kind,
                    code,
                    message,
                }
            }
            SdkError::TimeoutError(_) => Self {
                api,
                kind: FailureKind::Transient,
                code: String::new(),
                message: "timed out".to_owned(),
            },
            // The connection failed or timed out: transient. Anything else kept the request from
            // being sent at all: no region, no credentials, a bad endpoint.
            SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => Self {
                api,
                kind: FailureKind::Transient,
                code: String::new(),
                message: printable(&format!(
                    "could not reach Secrets Manager: {}",
                    DisplayErrorContext(err)
                )),
            },
            SdkError::DispatchFailure(_) => Self {
                api,
                kind: FailureKind::Other,
                code: String::new(),
                message: printable(&format!(
                    "the request was not sent; check the AWS region, credentials and endpoint configuration: {}",
                    DisplayErrorContext(err)
                )),
            },
            SdkError::ResponseError(_) => Self {
                api,
                kind: FailureKind::Transient,
                code: String::new(),
                message: printable(&format!(
                    "unreadable response: {}",
                    DisplayErrorContext(err)
                )),
            },
            // Credentials that cannot be loaded, a missing region, an invalid endpoint.
            _ => Self {
                api,
                kind: FailureKind::Other,
                code: String::new(),
                message: printable(&format!(
                    "the request could not be built (check the AWS region, credentials and endpoint configuration): {}",
                    DisplayErrorContext(err)
                )),
            },
        }
    }

    /// A failure that is not an SDK error (a budget that ran out).
    pub(crate) fn transient(api: Api, message: impl Into<String>) -> Self {
        Self {
            api,
            kind: FailureKind::Transient,
            code: String::new(),
            message: message.into(),
        }
    }

    /// The IAM action a denial is about: named in AWS's message when it says so, otherwise
    /// the API's own action.
    fn denied_action(&self) -> String {
        if let Some(rest) = self.message.split("perform: ").nth(1)
            && let Some(action) = rest.split_whitespace().next()
            && action.contains(':')
        {
            return action.trim_end_matches([',', '.']).to_owned();
        }
        match self.code.as_str() {
            "DecryptionFailure" => "kms:Decrypt".to_owned(),
            "EncryptionFailure" => "kms:GenerateDataKey".to_owned(),
            _ => format!("secretsmanager:{}", self.api.name()),
        }
    }

    /// The store error for this failure on record `key` (its `Display`, which never shows a
    /// pending authorization's state).
    pub(crate) fn into_store_error(self, key: &str) -> StoreError {
        let detail = self.to_string();
        match self.kind {
            FailureKind::Transient => StoreError::unavailable(
                BACKEND,
                AwsStoreError::Transient {
                    operation: self.api.name(),
                    detail,
                },
            ),
            FailureKind::AccessDenied => StoreError::PermissionDenied {
                backend: BACKEND,
                source: Box::new(AwsStoreError::AccessDenied {
                    action: self.denied_action(),
                    code: self.code,
                    message: self.message,
                }),
            },
            FailureKind::Limit => StoreError::backend(
                BACKEND,
                AwsStoreError::QuotaExceeded {
                    key: key.to_owned(),
                    message: self.message,
                },
            ),
            FailureKind::InvalidRequest => StoreError::unavailable(
                BACKEND,
                AwsStoreError::NameBusy {
                    key: key.to_owned(),
                    detail,
                },
            ),
            _ => StoreError::backend(
                BACKEND,
                AwsStoreError::Api {
                    operation: self.api.name(),
                    detail,
                },
            ),
        }
    }
}

/// `StoreError::Unavailable` for an operation whose request budget ran out.
pub(crate) fn budget_exceeded(operation: &'static str, budget: Duration) -> StoreError {
    StoreError::unavailable(BACKEND, AwsStoreError::BudgetExceeded { operation, budget })
}

/// `StoreError::Unavailable` for a write whose outcome could not be read back.
pub(crate) fn outcome_unknown(key: &str, detail: String) -> StoreError {
    StoreError::unavailable(
        BACKEND,
        AwsStoreError::OutcomeUnknown {
            key: key.to_owned(),
            detail,
        },
    )
}

/// `StoreError::Unavailable` for a name still held by a secret being deleted.
pub(crate) fn name_busy(key: &str, detail: &str) -> StoreError {
    StoreError::unavailable(
        BACKEND,
        AwsStoreError::NameBusy {
            key: key.to_owned(),
            detail: detail.to_owned(),
        },
    )
}

pub(crate) fn invalid_option(message: impl Into<String>) -> StoreError {
    StoreError::backend(BACKEND, AwsStoreError::InvalidOption(message.into()))
}
