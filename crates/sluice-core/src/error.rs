//! Errors at the backend boundary and the stable error codes clients see.

use serde::Serialize;

/// The stable, snake_case error codes of the client contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadFrame,
    Unauthorized,
    NotMember,
    UnknownRoom,
    TooLarge,
    RateLimited,
    Internal,
}

impl ErrorCode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotMember => "not_member",
            ErrorCode::UnknownRoom => "unknown_room",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
        }
    }
}

/// An error from a message store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("unknown room {0}")]
    UnknownRoom(String),
    #[error("{user} is not a member of {room}")]
    NotMember { user: String, room: String },
    #[error("room {0} already exists with other members")]
    RoomExists(String),
    /// A campaign id belongs to the sender that first used it.
    #[error("campaign {campaign_id} belongs to another sender")]
    CampaignOwned { campaign_id: String },
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A concurrent writer won (optimistic lock); retry.
    #[error("write conflict: {0}")]
    Conflict(String),
    /// The backend could not be reached or is throttling; retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store failure: {0}")]
    Internal(String),
}

impl StoreError {
    /// Whether the same call may succeed later. Permanent errors (unknown room, not a member,
    /// invalid input) never will, so queued messages that hit them go to the dead-letter queue.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Conflict(_) | StoreError::Unavailable(_) | StoreError::Internal(_))
    }

    /// The client-facing code.
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::UnknownRoom(_) => ErrorCode::UnknownRoom,
            StoreError::NotMember { .. } => ErrorCode::NotMember,
            StoreError::Invalid(_) | StoreError::RoomExists(_) | StoreError::CampaignOwned { .. } => ErrorCode::BadFrame,
            _ => ErrorCode::Internal,
        }
    }
}

/// An error from the spike queue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("invalid queue request: {0}")]
    Invalid(String),
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    #[error("queue failure: {0}")]
    Internal(String),
}

impl QueueError {
    /// Whether retrying may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, QueueError::Invalid(_))
    }
}

/// An error from the session hub.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("hub unavailable: {0}")]
    Unavailable(String),
}
