//! placeholder
pub struct SqsQueue;
