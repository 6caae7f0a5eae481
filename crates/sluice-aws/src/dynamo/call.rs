//! What every DynamoDB call shares: error classification, capacity and request metrics.

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::ConsumedCapacity;
use sluice_core::error::StoreError;
use sluice_core::metrics::Metrics;

/// Error codes DynamoDB answers when a caller should slow down and retry.
const THROTTLING: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "ThrottlingError",
    "ProvisionedThroughputExceeded",
];

/// Cancellation reason codes that mean "try the same thing again later".
pub(crate) fn reason_is_retryable(code: &str) -> bool {
    code == "TransactionConflict" || THROTTLING.contains(&code)
}

/// True when a cancellation was only for items other transactions held (contention, not
/// store trouble: retried at once with a little jitter rather than with backoff).
pub(crate) fn only_contention(reasons: &[String]) -> bool {
    reasons.iter().any(|r| r == "TransactionConflict") && reasons.iter().all(|r| r == "TransactionConflict" || r == "None")
}

/// Drops the entries of `chunk` whose item (at the same index of a cancelled transaction)
/// failed its condition; true when any was dropped.
pub(crate) fn drop_failed_conditions<T>(chunk: &mut Vec<T>, reasons: &[String]) -> bool {
    let before = chunk.len();
    let mut i = 0;
    chunk.retain(|_| {
        i += 1;
        reasons.get(i - 1).is_none_or(|r| r != "ConditionalCheckFailed")
    });
    chunk.len() != before
}

/// How a TransactWriteItems call ended, when it did not commit.
#[derive(Debug)]
pub(crate) enum TxFailure {
    /// Cancelled: one reason code per item, in request order ("None" where the item was fine).
    Cancelled(Vec<String>),
    /// The token was used within 10 minutes with other parameters.
    IdempotentMismatch,
    /// Worth retrying with backoff (throttling, a transaction in progress, network).
    Retryable(String),
    Fatal(StoreError),
}

pub(crate) fn classify_tx<R: std::fmt::Debug>(err: SdkError<TransactWriteItemsError, R>) -> TxFailure {
    if let SdkError::ServiceError(e) = &err {
        match e.err() {
            TransactWriteItemsError::TransactionCanceledException(c) => {
                return TxFailure::Cancelled(c.cancellation_reasons().iter().map(|r| r.code().unwrap_or("None").to_string()).collect());
            }
            TransactWriteItemsError::IdempotentParameterMismatchException(_) => return TxFailure::IdempotentMismatch,
            TransactWriteItemsError::TransactionInProgressException(_) => return TxFailure::Retryable("transaction in progress".into()),
            _ => {}
        }
    }
    match store_error("TransactWriteItems", err) {
        e @ (StoreError::Unavailable(_) | StoreError::Conflict(_)) => TxFailure::Retryable(e.to_string()),
        e => TxFailure::Fatal(e),
    }
}

/// Maps any SDK error to a store error: network trouble and throttling are `Unavailable`
/// (retryable), a missing table says how to create it.
pub(crate) fn store_error<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    op: &str,
    err: SdkError<E, R>,
) -> StoreError {
    match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            StoreError::Unavailable(format!("DynamoDB {op}: {}", aws_smithy_types::error::display::DisplayErrorContext(&err)))
        }
        SdkError::ServiceError(e) => {
            let code = e.err().code().unwrap_or("Unknown");
            let msg = e.err().message().unwrap_or("");
            if THROTTLING.contains(&code) || code == "InternalServerError" || code == "ServiceUnavailable" {
                StoreError::Unavailable(format!("DynamoDB {op}: {code}: {msg}"))
            } else if code == "TransactionConflictException" {
                // A standard write to an item that a transaction in flight holds.
                StoreError::Conflict(format!("DynamoDB {op}: {code}: {msg}"))
            } else if code == "ResourceNotFoundException" {
                StoreError::Internal(format!("DynamoDB {op}: {msg} (create the tables with `sluice migrate --backend aws`)"))
            } else {
                StoreError::Internal(format!("DynamoDB {op}: {code}: {msg}"))
            }
        }
        _ => StoreError::Internal(format!("DynamoDB {op}: {}", aws_smithy_types::error::display::DisplayErrorContext(&err))),
    }
}

/// Which capacity a call consumed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Capacity {
    Read,
    Write,
}

/// Counts one request and the capacity it reports.
pub(crate) fn account<'a>(metrics: &Metrics, op: &str, kind: Capacity, consumed: impl IntoIterator<Item = &'a ConsumedCapacity>) {
    metrics.aws_requests.with_label_values(&["dynamodb", op]).inc();
    let units: f64 = consumed.into_iter().filter_map(|c| c.capacity_units()).sum();
    let label = match kind {
        Capacity::Read => "read",
        Capacity::Write => "write",
    };
    if units > 0.0 {
        metrics.dynamodb_capacity.with_label_values(&[label]).inc_by(units);
    }
}
