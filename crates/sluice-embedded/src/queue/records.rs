//! What the embedded queue writes: its redb tables and records, and how records written
//! before tenants existed are read.

use crate::codec::decode;
use redb::TableDefinition;
use serde::{Deserialize, Serialize};

pub(super) const Q_MSGS: TableDefinition<u64, &[u8]> = TableDefinition::new("queue_messages");
pub(super) const Q_RECV: TableDefinition<u64, u32> = TableDefinition::new("queue_receive_counts");
pub(super) const Q_DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("queue_dead_letters");
/// Messages held by an operator's pause: (hold key, seq) -> the queued message.
pub(super) const Q_HELD: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("queue_held");

#[derive(Serialize, Deserialize)]
pub(super) struct QRec {
    pub(super) dedup_id: String,
    pub(super) group: String,
    pub(super) body: Vec<u8>,
    pub(super) enqueued_at_ms: i64,
    /// Last: records written before tenants existed end before it (see [`decode_qrec`]).
    pub(super) tenant: String,
}

/// A queued message as written before tenants existed.
#[derive(Deserialize)]
struct QRecV1 {
    dedup_id: String,
    group: String,
    body: Vec<u8>,
    enqueued_at_ms: i64,
}

pub(super) fn decode_qrec(bytes: &[u8]) -> Result<QRec, redb::Error> {
    decode::<QRec>(bytes).or_else(|e| match decode::<QRecV1>(bytes) {
        Ok(r) => Ok(QRec { dedup_id: r.dedup_id, group: r.group, body: r.body, enqueued_at_ms: r.enqueued_at_ms, tenant: String::new() }),
        Err(_) => Err(e),
    })
}

#[derive(Serialize, Deserialize)]
pub(super) struct DeadRec {
    pub(super) dedup_id: String,
    pub(super) group: String,
    pub(super) body: Vec<u8>,
    pub(super) reason: String,
    pub(super) receive_count: u32,
    pub(super) enqueued_at_ms: i64,
    pub(super) dead_at_ms: i64,
    /// Last, as in [`QRec`].
    pub(super) tenant: String,
}

#[derive(Deserialize)]
struct DeadRecV1 {
    dedup_id: String,
    group: String,
    body: Vec<u8>,
    reason: String,
    receive_count: u32,
    enqueued_at_ms: i64,
    dead_at_ms: i64,
}

pub(super) fn decode_dead(bytes: &[u8]) -> Result<DeadRec, redb::Error> {
    decode::<DeadRec>(bytes).or_else(|e| match decode::<DeadRecV1>(bytes) {
        Ok(r) => Ok(DeadRec {
            dedup_id: r.dedup_id,
            group: r.group,
            body: r.body,
            reason: r.reason,
            receive_count: r.receive_count,
            enqueued_at_ms: r.enqueued_at_ms,
            dead_at_ms: r.dead_at_ms,
            tenant: String::new(),
        }),
        Err(_) => Err(e),
    })
}
