//! placeholder
pub struct KinesisEvents;
