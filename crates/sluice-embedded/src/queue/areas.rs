//! The queue's two side areas: dead letters (a message moved out with its reason, and
//! redriven back) and messages held by an operator's pause (by hold key, released back).

use super::records::{DeadRec, Q_DEAD, Q_HELD, Q_MSGS, Q_RECV, QRec, decode_dead, decode_qrec};
use super::{EmbeddedQueue, Requeued, State, parse_receipt};
use crate::codec::encode;
use redb::ReadableTable;
use sluice_core::error::QueueError;
use sluice_core::now_ms;
use sluice_core::queue::Receipt;

impl EmbeddedQueue {
    pub(super) async fn dead_letter_now(&self, r: Receipt, reason: String) -> Result<(), QueueError> {
        let r = &r;
        let seq = self.current_seq(r)?;
        let count = parse_receipt(r)?.1;
        self.write(move |txn| {
            let mut msgs = txn.open_table(Q_MSGS)?;
            let mut recv = txn.open_table(Q_RECV)?;
            let mut dead = txn.open_table(Q_DEAD)?;
            let rec = match msgs.remove(seq)? {
                Some(v) => decode_qrec(v.value())?,
                None => return Ok(()),
            };
            recv.remove(seq)?;
            let d = DeadRec {
                dedup_id: rec.dedup_id,
                group: rec.group,
                body: rec.body,
                reason,
                receive_count: count,
                enqueued_at_ms: rec.enqueued_at_ms,
                dead_at_ms: now_ms(),
                tenant: rec.tenant,
            };
            dead.insert(seq, encode(&d).as_slice())?;
            Ok(())
        })
        .await?;
        let mut st = self.state();
        if st.sched.remove(seq) {
            st.dead += 1;
        }
        drop(st);
        self.inner.notify.notify_waiters();
        Ok(())
    }

    pub(super) async fn redrive_now(&self, limit: usize) -> Result<usize, QueueError> {
        let _guard = self.inner.send_lock.lock().await;
        let first_seq = self.state().next_seq;
        let moved = self
            .write(move |txn| {
                let mut dead = txn.open_table(Q_DEAD)?;
                let mut msgs = txn.open_table(Q_MSGS)?;
                let keys: Vec<u64> = dead.iter()?.take(limit).map(|e| e.map(|(k, _)| k.value())).collect::<Result<_, _>>()?;
                let mut moved = Vec::with_capacity(keys.len());
                for (i, k) in keys.into_iter().enumerate() {
                    let d = match dead.remove(k)? {
                        Some(v) => decode_dead(v.value())?,
                        None => continue,
                    };
                    let seq = first_seq + i as u64;
                    let rec = QRec {
                        dedup_id: d.dedup_id,
                        group: d.group.clone(),
                        body: d.body,
                        enqueued_at_ms: d.enqueued_at_ms,
                        tenant: d.tenant.clone(),
                    };
                    msgs.insert(seq, encode(&rec).as_slice())?;
                    moved.push((seq, d.group, d.tenant, d.enqueued_at_ms));
                }
                Ok(moved)
            })
            .await?;
        Ok(self.requeue(&moved, |st| &mut st.dead))
    }

    pub(super) async fn hold_now(&self, receipts: Vec<Receipt>, key: String) -> Result<usize, QueueError> {
        let seqs = {
            let st = self.state();
            self.current(&st, &receipts)?
        };
        if seqs.is_empty() {
            return Ok(0);
        }
        let s = seqs.clone();
        let moved: Vec<u64> = self
            .write(move |txn| {
                let mut msgs = txn.open_table(Q_MSGS)?;
                let mut recv = txn.open_table(Q_RECV)?;
                let mut held = txn.open_table(Q_HELD)?;
                let mut moved = Vec::with_capacity(s.len());
                for seq in s {
                    let Some(v) = msgs.remove(seq)? else { continue };
                    recv.remove(seq)?;
                    held.insert((key.as_str(), seq), v.value())?;
                    moved.push(seq);
                }
                Ok(moved)
            })
            .await?;
        let mut st = self.state();
        // `moved` is a subsequence of `seqs`, in the same order.
        let mut moved_seqs = moved.iter().peekable();
        for seq in seqs {
            let was_moved = moved_seqs.next_if_eq(&&seq).is_some();
            if st.sched.remove(seq) && was_moved {
                st.held += 1;
            }
        }
        drop(st);
        self.inner.notify.notify_waiters();
        Ok(moved.len())
    }

    pub(super) async fn release_held_now(&self, key: String, limit: usize) -> Result<usize, QueueError> {
        let _guard = self.inner.send_lock.lock().await;
        let first_seq = self.state().next_seq;
        let moved = self
            .write(move |txn| {
                let mut held = txn.open_table(Q_HELD)?;
                let mut msgs = txn.open_table(Q_MSGS)?;
                let keys: Vec<u64> = held
                    .range((key.as_str(), 0)..=(key.as_str(), u64::MAX))?
                    .take(limit)
                    .map(|e| e.map(|(k, _)| k.value().1))
                    .collect::<Result<_, _>>()?;
                let mut moved = Vec::with_capacity(keys.len());
                for (i, old) in keys.into_iter().enumerate() {
                    let Some(v) = held.remove((key.as_str(), old))? else { continue };
                    let rec = decode_qrec(v.value())?;
                    let seq = first_seq + i as u64;
                    msgs.insert(seq, encode(&rec).as_slice())?;
                    moved.push((seq, rec.group, rec.tenant, rec.enqueued_at_ms));
                }
                Ok(moved)
            })
            .await?;
        Ok(self.requeue(&moved, |st| &mut st.held))
    }

    /// Makes messages just written back into the queue (from the dead letters or the held
    /// area) visible, each with a receive count of 0, and takes them off the count of the
    /// area they left; returns how many.
    pub(super) fn requeue(&self, moved: &[Requeued], area: impl FnOnce(&mut State) -> &mut u64) -> usize {
        let mut st = self.state();
        for (seq, group, tenant, at) in moved {
            st.sched.push(*seq, group, tenant, 0, *at);
            st.next_seq = st.next_seq.max(seq + 1);
        }
        *area(&mut st) -= moved.len() as u64;
        drop(st);
        self.inner.notify.notify_waiters();
        moved.len()
    }
}
