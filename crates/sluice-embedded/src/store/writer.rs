//! One write transaction: its tables and the logic of each write the writer thread applies.

use super::lanes::*;
use super::records::*;
use super::redo::{Logged, REDO_LSN, Redo};
use crate::codec::{decode, encode};
use redb::ReadableTable;
use sluice_core::error::StoreError;
use sluice_core::model::{MessageKind, NewMessage, Persisted, ReadOutcome, Room, UnreadUpdate};
use std::sync::Arc;

/// Characters of a message body kept in the inbox row as its preview.
const PREVIEW_CHARS: usize = 100;

/// The tables of one write transaction and the logic of each write.
pub(super) struct Writer<'t> {
    rooms: Logged<'t, &'static str, &'static [u8]>,
    members: Logged<'t, (&'static str, &'static str), i64>,
    messages: Logged<'t, (&'static str, u64), &'static [u8]>,
    msg_ids: Logged<'t, (&'static str, &'static str), u64>,
    inbox: Logged<'t, (&'static str, &'static str), &'static [u8]>,
    campaigns: Logged<'t, &'static str, &'static [u8]>,
    campaign_recipients: Logged<'t, (&'static str, &'static str), ()>,
    campaign_dead: Logged<'t, (&'static str, &'static str), ()>,
    campaign_owners: Logged<'t, &'static str, &'static str>,
    campaign_bodies: Logged<'t, (&'static str, &'static str), &'static str>,
    meta: Logged<'t, &'static str, u64>,
    /// The counters' version (see `UnreadUpdate::version`): one store-wide sequence, so it
    /// grows for every user, saved once per commit.
    version: u64,
    version_moved: bool,
    outbox: Option<Logged<'t, u64, &'static [u8]>>,
    redo: Redo,
    outbox_written: bool,
    /// Campaign counters changed by this transaction, written once at its close: a group of
    /// a campaign's one-offs would otherwise rewrite the same record once per message.
    campaigns_changed: std::collections::HashMap<String, CampaignRec>,
}

impl<'t> Writer<'t> {
    /// The tables of `txn`, their writes recorded in `redo`; with `outbox`, persisted messages
    /// leave their analytics event in the outbox.
    pub(super) fn open(txn: &'t redb::WriteTransaction, outbox: bool, redo: &Redo) -> Result<Self, redb::Error> {
        let outbox_table = Logged::open(txn, crate::outbox::OUTBOX, redo)?;
        let meta = Logged::open(txn, META, redo)?;
        let version = meta.get(COUNTERS_VERSION)?.map_or(0, |v| v.value());
        Ok(Writer {
            rooms: Logged::open(txn, ROOMS, redo)?,
            members: Logged::open(txn, MEMBERS, redo)?,
            messages: Logged::open(txn, MESSAGES, redo)?,
            msg_ids: Logged::open(txn, ROOM_MSG_IDS, redo)?,
            inbox: Logged::open(txn, INBOX, redo)?,
            campaigns: Logged::open(txn, CAMPAIGNS, redo)?,
            campaign_recipients: Logged::open(txn, CAMPAIGN_RECIPIENTS, redo)?,
            campaign_dead: Logged::open(txn, CAMPAIGN_DEAD, redo)?,
            campaign_owners: Logged::open(txn, CAMPAIGN_OWNERS, redo)?,
            campaign_bodies: Logged::open(txn, CAMPAIGN_BODIES, redo)?,
            version,
            version_moved: false,
            meta,
            outbox: outbox.then_some(outbox_table),
            outbox_written: false,
            campaigns_changed: std::collections::HashMap::new(),
            redo: redo.clone(),
        })
    }

    /// The next version of the counters (every change of any user's counters takes one).
    fn bump(&mut self) -> u64 {
        self.version += 1;
        self.version_moved = true;
        self.version
    }

    /// Saves what the transaction's operations leave besides their own rows, and `lsn` as
    /// the redo log's record of them if they wrote anything; true when they left events in
    /// the outbox.
    pub(super) fn close(mut self, lsn: u64) -> Result<bool, redb::Error> {
        for (id, c) in std::mem::take(&mut self.campaigns_changed) {
            self.campaigns.insert(id.as_str(), encode(&c).as_slice())?;
        }
        if self.version_moved {
            self.meta.insert(COUNTERS_VERSION, self.version)?;
        }
        if !self.redo.is_empty() {
            self.meta.insert(REDO_LSN, lsn)?;
        }
        Ok(self.outbox_written)
    }

    pub(super) fn apply(&mut self, op: Op) -> Result<Box<dyn Finish>, redb::Error> {
        Ok(match op {
            Op::Persist(batch, reply) => {
                let mut out = Vec::with_capacity(batch.len());
                for m in &batch {
                    out.push(self.persist_one(m)?);
                }
                done(reply, Ok(out))
            }
            Op::CreateRoom { room, members, now_ms, reply } => {
                let r = self.create_room(&room, &members, now_ms)?;
                done(reply, r)
            }
            Op::AddMembers { room, members, now_ms, reply } => {
                let r = self.add_members(&room, &members, now_ms)?;
                done(reply, r)
            }
            Op::MarkRead { user, room, from, to, became_read, now_ms, reply } => {
                let r = self.mark_read(&user, &room, from, to, became_read, now_ms)?;
                done(reply, r)
            }
            Op::RecordEnqueued { campaign_id, owner, requested, recipients, call, reply } => {
                let owned_by_sender = self.campaign_owners.get(campaign_id.as_str())?.map(|o| o.value() == owner);
                match owned_by_sender {
                    Some(false) => return Ok(done(reply, Err(StoreError::CampaignOwned { campaign_id }))),
                    Some(true) => {}
                    None => {
                        self.campaign_owners.insert(campaign_id.as_str(), owner.as_str())?;
                    }
                }
                // A retried call's request is counted once (its key sits beside the recipients).
                let requested = if requested > 0 && self.campaign_recipients.insert((campaign_id.as_str(), call.as_str()), ())?.is_none() {
                    requested
                } else {
                    0
                };
                let mut enqueued = 0;
                for r in &recipients {
                    if self.campaign_recipients.insert((campaign_id.as_str(), r.as_str()), ())?.is_none() {
                        enqueued += 1;
                    }
                }
                let c = self.update_campaign(&campaign_id, |c| {
                    c.requested += requested;
                    c.enqueued += enqueued;
                })?;
                done(reply, Ok(c.to_campaign(&campaign_id, Some(&owner))))
            }
            Op::RecordDeadLetter { campaign_id, room, msg_id, reply } => {
                let persisted = self.persisted_seq(&room, &msg_id)?.is_some();
                if !persisted && self.campaign_dead.insert((campaign_id.as_str(), msg_id.as_str()), ())?.is_none() {
                    self.update_campaign(&campaign_id, |c| c.dead_lettered += 1)?;
                }
                done(reply, Ok(()))
            }
            Op::PutBody { campaign_id, body_ref, body, reply } => {
                if self.campaign_bodies.get((campaign_id.as_str(), body_ref.as_str()))?.is_none() {
                    self.campaign_bodies.insert((campaign_id.as_str(), body_ref.as_str()), body.as_str())?;
                }
                done(reply, Ok(()))
            }
            Op::OutboxDone { keys, reply } => {
                if let Some(outbox) = &mut self.outbox {
                    for k in keys {
                        outbox.remove(k)?;
                    }
                }
                done(reply, Ok(()))
            }
            #[cfg(test)]
            Op::Crash => panic!("injected writer crash"),
            #[cfg(test)]
            Op::Block(rx) => {
                let _ = rx.recv();
                Box::new(Nothing)
            }
        })
    }

    /// A campaign's counters as this transaction left them so far.
    fn campaign_rec(&self, id: &str) -> Result<CampaignRec, redb::Error> {
        if let Some(c) = self.campaigns_changed.get(id) {
            return Ok(c.clone());
        }
        match self.campaigns.get(id)? {
            Some(v) => decode(v.value()),
            None => Ok(CampaignRec::default()),
        }
    }

    /// Changes a campaign's counters (saved at the transaction's close).
    fn update_campaign(&mut self, id: &str, f: impl FnOnce(&mut CampaignRec)) -> Result<CampaignRec, redb::Error> {
        if !self.campaigns_changed.contains_key(id) {
            let c = self.campaign_rec(id)?;
            self.campaigns_changed.insert(id.to_string(), c);
        }
        let c = self.campaigns_changed.get_mut(id).expect("just inserted");
        f(c);
        Ok(c.clone())
    }

    fn room_rec(&self, room: &str) -> Result<Option<RoomRec>, redb::Error> {
        room_state(&*self.rooms, &*self.messages, room)
    }

    /// The seq `msg_id` was persisted at in `room`, if it was. The index (`room_msg_ids`)
    /// holds every message's id but a direct room's first message's, which only its own row
    /// holds: a one-off that makes its direct room writes one leaf fewer, at random places of
    /// a store larger than its cache.
    fn persisted_seq(&self, room: &str, msg_id: &str) -> Result<Option<u64>, redb::Error> {
        if let Some(seq) = self.msg_ids.get((room, msg_id))? {
            return Ok(Some(seq.value()));
        }
        if sluice_core::ids::dm_pair(room).is_some()
            && let Some(first) = self.messages.get((room, 1))?
            && decode::<MsgRec>(first.value())?.msg_id == msg_id
        {
            return Ok(Some(1));
        }
        Ok(None)
    }

    fn set_total(&mut self, user: &str, total: u64) -> Result<(), redb::Error> {
        self.inbox.insert((user, TOTAL_ROW), total.to_le_bytes().as_slice())?;
        Ok(())
    }

    fn member_list(&self, room: &str) -> Result<Vec<String>, redb::Error> {
        room_members(&*self.members, room)
    }

    fn room_view(&self, room: &str, rec: &RoomRec) -> Result<Room, redb::Error> {
        let created_at_ms = created_at(&*self.rooms, &*self.messages, room, rec)?;
        Ok(Room { room: room.to_string(), members: self.member_list(room)?, last_seq: rec.last_seq, created_at_ms })
    }

    fn join(&mut self, room: &str, user: &str, last_seq: u64, now_ms: i64) -> Result<bool, redb::Error> {
        if self.members.get((room, user))?.is_some() {
            return Ok(false);
        }
        self.members.insert((room, user), now_ms)?;
        let row = InboxRec { read_seq: last_seq, updated_at_ms: now_ms, ..InboxRec::default() };
        self.inbox.insert((user, room), encode(&row).as_slice())?;
        Ok(true)
    }

    fn create_room(&mut self, room: &str, members: &[String], now_ms: i64) -> Result<Result<Room, StoreError>, redb::Error> {
        if let Some(rec) = self.room_rec(room)? {
            let existing = self.member_list(room)?;
            return Ok(if existing == sorted(members) {
                Ok(self.room_view(room, &rec)?)
            } else {
                Err(StoreError::RoomExists(room.to_string()))
            });
        }
        let rec = RoomRec { last_seq: 0, version: 1, created_at_ms: now_ms };
        self.rooms.insert(room, encode(&rec).as_slice())?;
        for m in members {
            self.join(room, m, 0, now_ms)?;
        }
        Ok(Ok(self.room_view(room, &rec)?))
    }

    fn add_members(&mut self, room: &str, members: &[String], now_ms: i64) -> Result<Result<Room, StoreError>, redb::Error> {
        let Some(mut rec) = self.room_rec(room)? else {
            return Ok(Err(StoreError::UnknownRoom(room.to_string())));
        };
        let mut changed = false;
        for m in members {
            changed |= self.join(room, m, rec.last_seq, now_ms)?;
        }
        if changed {
            rec.version += 1;
            self.rooms.insert(room, encode(&rec).as_slice())?;
        }
        Ok(Ok(self.room_view(room, &rec)?))
    }

    fn persist_one(&mut self, m: &NewMessage) -> Result<Result<Persisted, StoreError>, redb::Error> {
        let room = m.room.as_str();
        let state = self.room_rec(room)?;
        // A room without messages (a one-off's new direct room) has no msg_id to look up.
        let existing = match &state {
            Some(rec) if rec.last_seq > 0 => self.persisted_seq(room, &m.msg_id)?,
            _ => None,
        };
        if let Some(seq) = existing {
            let rec = self.messages.get((room, seq))?.map(|v| decode::<MsgRec>(v.value())).transpose()?;
            let rec = rec.ok_or_else(|| redb::Error::Corrupted(format!("msg_id {} points at a missing message", m.msg_id)))?;
            return Ok(Ok(Persisted {
                message: Arc::new(stored(room, seq, rec)),
                duplicate: true,
                members: Arc::new(Vec::new()),
                unread: Vec::new(),
                unread_deferred: Vec::new(),
            }));
        }
        let direct = sluice_core::ids::dm_pair(room).is_some();
        let (mut rec, fresh) = match state {
            Some(rec) => (rec, None),
            None if m.create_members.is_empty() => return Ok(Err(StoreError::UnknownRoom(m.room.clone()))),
            None => {
                let members = direct_members(room).unwrap_or_else(|| sorted(&m.create_members));
                if members.binary_search(&m.sender).is_err() {
                    if !direct && let Err(e) = self.create_room(room, &m.create_members, m.sent_at_ms)? {
                        return Ok(Err(e));
                    }
                    return Ok(Err(StoreError::NotMember { user: m.sender.clone(), room: m.room.clone() }));
                }
                (RoomRec { last_seq: 0, version: 1, created_at_ms: m.sent_at_ms }, Some(members))
            }
        };
        if fresh.is_none() && !is_member(&*self.members, room, &m.sender)? {
            return Ok(Err(StoreError::NotMember { user: m.sender.clone(), room: m.room.clone() }));
        }
        rec.last_seq += 1;
        rec.version += 1;
        let seq = rec.last_seq;
        let one_off = m.kind == MessageKind::OneOff;
        if !direct {
            // A direct room's seq is its newest message's, and its members are its id's: it
            // writes neither its record nor member rows (see `room_state`).
            self.rooms.insert(room, encode(&rec).as_slice())?;
            if let Some(members) = &fresh {
                // A room created by its first message: each row is written once, as it
                // stands after the message, instead of created then updated.
                for user in members {
                    self.members.insert((room, user.as_str()), m.sent_at_ms)?;
                }
            }
        }
        // The one-off that creates a direct room writes no row for its sender (a marketing
        // sender would list a million rooms at unread 0); any later message of the sender's
        // puts the room in its inbox (as does an answer, or a read). Only a direct room can
        // lack its sender's row, so other rooms skip the lookup.
        let sender_row = match &fresh {
            Some(_) => !one_off,
            None => direct && self.inbox.get((m.sender.as_str(), room))?.is_none(),
        };
        if sender_row {
            let row = InboxRec { updated_at_ms: m.sent_at_ms, ..InboxRec::default() };
            self.inbox.insert((m.sender.as_str(), room), encode(&row).as_slice())?;
        }
        let msg = MsgRec {
            msg_id: m.msg_id.clone(),
            sender: m.sender.clone(),
            body: m.body.clone(),
            kind: m.kind,
            campaign_id: m.campaign_id.clone(),
            sent_at_ms: m.sent_at_ms,
        };
        self.messages.insert((room, seq), encode(&msg).as_slice())?;
        if !(direct && seq == 1) {
            self.msg_ids.insert((room, m.msg_id.as_str()), seq)?;
        }

        let created = fresh.is_some();
        let members = match fresh {
            Some(members) => members,
            None => self.member_list(room)?,
        };
        let version = self.bump();
        let preview: String = m.body.chars().take(PREVIEW_CHARS).collect();
        let mut unread = Vec::with_capacity(members.len().saturating_sub(1));
        for user in members.iter().filter(|u| **u != m.sender) {
            let stored =
                if created { None } else { self.inbox.get((user.as_str(), room))?.map(|v| decode::<InboxRec>(v.value())).transpose()? };
            let mut row = stored.unwrap_or_default();
            row.unread += 1;
            row.version += 1;
            row.preview.clone_from(&preview);
            row.updated_at_ms = m.sent_at_ms;
            self.inbox.insert((user.as_str(), room), encode(&row).as_slice())?;
            let total = total_of(&*self.inbox, user)? + 1;
            self.set_total(user, total)?;
            unread.push(UnreadUpdate { user: user.clone(), room: m.room.clone(), unread: row.unread, total_unread: total, version });
        }
        if let Some(cid) = &m.campaign_id {
            let c = self.update_campaign(cid, |c| c.persisted += 1)?;
            // A message dead-lettered earlier and persisted after a redrive counts once.
            if c.dead_lettered > 0 && self.campaign_dead.remove((cid.as_str(), m.msg_id.as_str()))?.is_some() {
                self.update_campaign(cid, |c| c.dead_lettered -= 1)?;
            }
        }
        if let Some(outbox) = &mut self.outbox {
            let rec = crate::outbox::OutboxRec {
                room: m.room.clone(),
                seq,
                msg_id: m.msg_id.clone(),
                sender: m.sender.clone(),
                kind: m.kind.as_str().to_string(),
                campaign_id: m.campaign_id.clone(),
                sent_at_ms: m.sent_at_ms,
                persisted_at_ms: sluice_core::now_ms(),
                recipients: unread.len() as u32,
            };
            outbox.insert(version, encode(&rec).as_slice())?;
            self.outbox_written = true;
        }
        Ok(Ok(Persisted {
            message: Arc::new(stored(room, seq, msg)),
            duplicate: false,
            members: Arc::new(members),
            unread,
            unread_deferred: Vec::new(),
        }))
    }

    /// Applies a read counted on a snapshot. Messages committed since the snapshot all have
    /// seqs above the room's last seq then (so above `to`) and stay unread; so while the read
    /// position is still `from`, unread drops by exactly `became_read`. O(1) on the writer.
    fn mark_read(
        &mut self,
        user: &str,
        room: &str,
        from: u64,
        to: u64,
        became_read: u64,
        now_ms: i64,
    ) -> Result<Result<Option<ReadOutcome>, StoreError>, redb::Error> {
        let row = self.inbox.get((user, room))?.map(|v| decode::<InboxRec>(v.value())).transpose()?;
        let mut row = match row {
            Some(row) => row,
            // The sender of a one-off has no row until it reads, chats or is written to.
            None if is_member(&*self.members, room, user)? => InboxRec::default(),
            None => return Ok(Err(StoreError::NotMember { user: user.to_string(), room: room.to_string() })),
        };
        let total = total_of(&*self.inbox, user)?;
        if row.read_seq >= to {
            let version = self.version;
            return Ok(Ok(Some(ReadOutcome { read_seq: row.read_seq, unread: row.unread, total_unread: total, changed: false, version })));
        }
        if row.read_seq != from {
            return Ok(Ok(None));
        }
        let new_unread = row.unread - became_read.min(row.unread);
        let total = total - (row.unread - new_unread).min(total);
        row.unread = new_unread;
        row.read_seq = to;
        row.version += 1;
        row.updated_at_ms = now_ms;
        self.inbox.insert((user, room), encode(&row).as_slice())?;
        self.set_total(user, total)?;
        let version = self.bump();
        Ok(Ok(Some(ReadOutcome { read_seq: to, unread: new_unread, total_unread: total, changed: true, version })))
    }
}
