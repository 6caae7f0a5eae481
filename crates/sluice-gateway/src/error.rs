//! One error type for the gateway, mapped to WebSocket error frames and gRPC statuses.

use sluice_core::error::{ErrorCode, HubError, QueueError, StoreError};
use sluice_core::frames::ServerFrame;

/// A bad id where the frame makes its field plain (a room id in a chat frame).
impl From<sluice_core::ids::IdError> for AppError {
    fn from(e: sluice_core::ids::IdError) -> Self {
        AppError::bad(e.0)
    }
}

/// An error answered to a client: a stable code and a message safe to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppError {
    pub code: ErrorCode,
    pub message: String,
    /// The gRPC status code (finer than `code` where gRPC has a better one).
    pub grpc: tonic::Code,
    /// Facts for the caller as gRPC metadata (for example how much of a call was accepted).
    pub metadata: Vec<(&'static str, String)>,
}

impl AppError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let grpc = match code {
            ErrorCode::BadFrame | ErrorCode::TooLarge => tonic::Code::InvalidArgument,
            ErrorCode::Unauthorized => tonic::Code::Unauthenticated,
            ErrorCode::NotMember => tonic::Code::PermissionDenied,
            ErrorCode::UnknownRoom => tonic::Code::NotFound,
            ErrorCode::RateLimited => tonic::Code::ResourceExhausted,
            ErrorCode::Internal => tonic::Code::Internal,
        };
        AppError { code, message: message.into(), grpc, metadata: Vec::new() }
    }

    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadFrame, message)
    }

    /// A bad id in field `field` (`bad_frame`, naming the field).
    pub fn bad_id(field: &str, e: sluice_core::ids::IdError) -> Self {
        Self::bad(format!("{field}: {e}"))
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::TooLarge, message)
    }

    /// The WebSocket error frame, with the client's reference.
    pub fn frame(&self, reference: Option<String>) -> ServerFrame {
        ServerFrame::error(self.code, self.message.clone(), reference)
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        let mut a = AppError::new(e.code(), e.to_string());
        match e {
            StoreError::RoomExists(_) | StoreError::CampaignOwned { .. } => a.grpc = tonic::Code::AlreadyExists,
            StoreError::Unavailable(_) | StoreError::Conflict(_) => a.grpc = tonic::Code::Unavailable,
            StoreError::Internal(_) => a.message = "internal error".into(),
            _ => {}
        }
        if a.code == ErrorCode::Internal {
            tracing::error!(error = %e, "store error");
        }
        a
    }
}

impl From<QueueError> for AppError {
    fn from(e: QueueError) -> Self {
        tracing::error!(error = %e, "queue error");
        let mut a = AppError::new(ErrorCode::Internal, "spike queue unavailable; retry");
        a.grpc = tonic::Code::Unavailable;
        a
    }
}

impl From<HubError> for AppError {
    fn from(e: HubError) -> Self {
        tracing::error!(error = %e, "hub error");
        let mut a = AppError::new(ErrorCode::Internal, "session hub unavailable; retry");
        a.grpc = tonic::Code::Unavailable;
        a
    }
}

impl From<AppError> for tonic::Status {
    fn from(e: AppError) -> Self {
        let mut status = tonic::Status::new(e.grpc, format!("{}: {}", e.code.as_str(), e.message));
        for (k, v) in e.metadata {
            if let Ok(v) = v.parse() {
                status.metadata_mut().insert(k, v);
            }
        }
        status
    }
}
