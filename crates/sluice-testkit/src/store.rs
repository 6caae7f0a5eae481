//! The message store conformance suite (DESIGN.md invariants 1-3 and the data model).

use sluice_core::control::{Control, Scope};
use sluice_core::error::StoreError;
use sluice_core::ids;
use sluice_core::model::{HistoryQuery, InboxPage, InboxRoom, MessageKind, NewMessage};
use sluice_core::store::{Membership, MessageStore};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Generates one `#[tokio::test]` per store conformance test for the store made by `$make`,
/// an async closure returning `(Arc<dyn MessageStore>, Guard)`.
#[macro_export]
macro_rules! store_conformance {
    ($make:expr) => {
        $crate::__store_tests!($make;
            room_lifecycle, gap_free_seq_under_concurrent_senders, exactly_once_per_msg_id,
            unread_counters_are_exact, permanent_errors_are_per_message, direct_rooms_are_created_on_first_use,
            history_pages, campaign_progress, new_members_start_read, growing_rooms_keep_exact_counters,
            reads_racing_sends_keep_counters_exact, inbox_pages, unread_versions_order_a_users_counters, counters_are_read_for_any_user,
            drain_controls_are_kept_and_removed, a_campaign_knows_its_tenant, direct_rooms_stay_exact_under_racing_writers,
            campaign_bodies_are_stored_once_by_reference);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __store_tests {
    ($make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, _guard) = ($make)().await;
                $crate::store::$name(store).await;
            }
        )*
    };
}

fn users(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// A chat message from `sender` in `room` with a deterministic id.
pub fn chat(room: &str, sender: &str, client_id: &str) -> NewMessage {
    NewMessage {
        msg_id: ids::chat_msg_id(sender, room, client_id),
        room: room.to_string(),
        sender: sender.to_string(),
        body: format!("{sender} says {client_id}"),
        kind: MessageKind::Chat,
        campaign_id: None,
        sent_at_ms: 1_700_000_000_000,
        create_members: Vec::new(),
        body_ref: None,
    }
}

/// The one-off of campaign `campaign_id` from `sender` to `recipient`, as EnqueueBulk queues
/// it: a direct room created on first use, a msg_id derived from campaign and recipient.
pub fn one_off(campaign_id: &str, sender: &str, recipient: &str) -> NewMessage {
    one_off_saying(campaign_id, sender, recipient, "sale")
}

/// [`one_off`] with `body`, for tests that write their ids as literals (it panics on an
/// invalid one).
pub fn one_off_saying(campaign_id: &str, sender: &str, recipient: &str, body: &str) -> NewMessage {
    let user = |u: &str| sluice_core::ids::UserId::new(u).expect("a valid user id");
    let campaign = sluice_core::ids::CampaignId::new(campaign_id).expect("a valid campaign id");
    NewMessage::one_off(&campaign, &user(sender), &user(recipient), body, 5)
}

fn unique_room(prefix: &str) -> String {
    format!("{prefix}-{}", ids::random_id())
}

async fn persist_ok(store: &dyn MessageStore, m: NewMessage) -> sluice_core::model::Persisted {
    let mut out = store.persist(vec![m]).await.expect("persist call");
    out.pop().expect("one result").expect("message persists")
}

/// The recipients' counters after a persist: those it returned, and those it deferred, read now.
async fn counters_after(store: &dyn MessageStore, p: &sluice_core::model::Persisted) -> Vec<sluice_core::model::UnreadUpdate> {
    let mut all = p.unread.clone();
    if !p.unread_deferred.is_empty() {
        all.extend(store.counters(&p.message.room, &p.unread_deferred).await.expect("counters"));
    }
    all
}

async fn unread_of(store: &dyn MessageStore, user: &str, room: &str) -> (u64, u64) {
    let inbox = store.inbox(user).await.expect("inbox");
    let row = inbox.rooms.iter().find(|r| r.room == room).map_or(0, |r| r.unread);
    (row, inbox.total_unread)
}

pub async fn room_lifecycle(store: Arc<dyn MessageStore>) {
    let room = unique_room("lifecycle");
    let r = store.create_room(&room, &users(&["bob", "alice"]), 1).await.unwrap();
    assert_eq!(r.members, users(&["alice", "bob"]));
    assert_eq!(r.last_seq, 0);
    let again = store.create_room(&room, &users(&["alice", "bob"]), 2).await.unwrap();
    assert_eq!(again.members, r.members, "creating the same room again is a safe retry");
    assert_eq!(store.create_room(&room, &users(&["alice"]), 3).await.unwrap_err(), StoreError::RoomExists(room.clone()));
    let r = store.add_members(&room, &users(&["carol", "alice"]), 4).await.unwrap();
    assert_eq!(r.members, users(&["alice", "bob", "carol"]));
    assert_eq!(store.membership(&room, "carol").await.unwrap(), Membership::Member);
    assert_eq!(store.membership(&room, "mallory").await.unwrap(), Membership::NotMember);
    assert_eq!(store.membership("no-such-room-x", "alice").await.unwrap(), Membership::UnknownRoom);
    assert!(store.room("no-such-room-x").await.unwrap().is_none());
    assert!(matches!(store.add_members("no-such-room-x", &users(&["a"]), 5).await, Err(StoreError::UnknownRoom(_))));
    assert_eq!(store.room(&room).await.unwrap().unwrap().members.len(), 3);
}

/// Invariant 1: per-room seq is 1, 2, 3, ... gap-free under concurrent senders, and each
/// sender's messages keep their order.
pub async fn gap_free_seq_under_concurrent_senders(store: Arc<dyn MessageStore>) {
    let room = unique_room("order");
    let senders = users(&["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7"]);
    store.create_room(&room, &senders, 1).await.unwrap();
    const PER_SENDER: usize = 40;
    let mut tasks = Vec::new();
    for s in senders.clone() {
        let (store, room) = (store.clone(), room.clone());
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..PER_SENDER {
                seqs.push(persist_ok(store.as_ref(), chat(&room, &s, &i.to_string())).await.message.seq);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let seqs = t.await.unwrap();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "a sender's messages keep their order: {seqs:?}");
        all.extend(seqs);
    }
    all.sort();
    let want: Vec<u64> = (1..=(senders.len() * PER_SENDER) as u64).collect();
    assert_eq!(all, want, "every seq used exactly once, no gaps");
    let mut read = Vec::new();
    let mut after = 0;
    loop {
        let page = store.history(&room, HistoryQuery { before: None, after: Some(after), limit: 100 }).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().unwrap().seq;
        read.extend(page.into_iter().map(|m| m.seq));
    }
    assert_eq!(read, want, "paging with after=N misses nothing");
    assert_eq!(store.room(&room).await.unwrap().unwrap().last_seq, want.len() as u64);
}

/// Invariants 1 and 3 in a direct room that its first writers create at once: both users
/// chatting, one-offs of several campaigns and a CreateRoom, all racing from the start (on
/// DynamoDB a direct room has no room item: the message items' conditions order them).
pub async fn direct_rooms_stay_exact_under_racing_writers(store: Arc<dyn MessageStore>) {
    let tag = ids::random_id();
    let (a, b) = (format!("a-{tag}"), format!("b-{tag}"));
    let room = ids::dm_room(&a, &b);
    const CHATS: usize = 12;
    const ONE_OFFS: usize = 8;
    let mut tasks = Vec::new();
    for (from, to) in [(a.clone(), b.clone()), (b.clone(), a.clone())] {
        let (store, room) = (store.clone(), room.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..CHATS {
                // As the gateway sends into a direct room: it may be the first message.
                let m = NewMessage { create_members: vec![from.clone(), to.clone()], ..chat(&room, &from, &i.to_string()) };
                persist_ok(store.as_ref(), m).await;
            }
        }));
    }
    {
        let (store, a, b) = (store.clone(), a.clone(), b.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..ONE_OFFS {
                persist_ok(store.as_ref(), one_off(&format!("c{i}-{}", ids::random_id()), &a, &b)).await;
            }
        }));
    }
    {
        let (store, room, members) = (store.clone(), room.clone(), vec![a.clone(), b.clone()]);
        tasks.push(tokio::spawn(async move {
            store.create_room(&room, &members, 1).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = store.history(&room, HistoryQuery { before: None, after: Some(0), limit: 500 }).await.unwrap();
    let total = 2 * CHATS + ONE_OFFS;
    assert_eq!(all.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=total as u64).collect::<Vec<_>>(), "gap-free, each seq once");
    assert_eq!(all.iter().map(|m| &m.msg_id).collect::<std::collections::HashSet<_>>().len(), total, "each message once");
    assert_eq!(unread_of(store.as_ref(), &b, &room).await, ((CHATS + ONE_OFFS) as u64, (CHATS + ONE_OFFS) as u64));
    assert_eq!(unread_of(store.as_ref(), &a, &room).await, (CHATS as u64, CHATS as u64));
    let r = store.room(&room).await.unwrap().expect("the room exists");
    assert_eq!((r.members.len(), r.last_seq), (2, total as u64));
    assert_eq!(store.membership(&room, &a).await.unwrap(), Membership::Member);
    assert_eq!(store.membership(&room, "someone-else").await.unwrap(), Membership::NotMember);
}

/// Invariant 2: one message, one seq, one increment per msg_id.
pub async fn exactly_once_per_msg_id(store: Arc<dyn MessageStore>) {
    let room = unique_room("once");
    store.create_room(&room, &users(&["alice", "bob"]), 1).await.unwrap();
    let m = chat(&room, "alice", "c1");
    let first = persist_ok(store.as_ref(), m.clone()).await;
    assert!(!first.duplicate);
    assert_eq!(counters_after(store.as_ref(), &first).await.len(), 1);
    let again = persist_ok(store.as_ref(), m.clone()).await;
    assert!(again.duplicate);
    assert_eq!(again.message.seq, first.message.seq);
    assert_eq!(again.message.msg_id, first.message.msg_id);
    assert!(again.unread.is_empty() && again.unread_deferred.is_empty(), "a duplicate changes no counter");
    // The same id twice inside one batch, next to a new message.
    let m2 = chat(&room, "alice", "c2");
    let out = store.persist(vec![m2.clone(), m2.clone(), m.clone()]).await.unwrap();
    let out: Vec<_> = out.into_iter().map(|r| r.unwrap()).collect();
    assert!(!out[0].duplicate && out[1].duplicate && out[2].duplicate);
    assert_eq!(out[0].message.seq, 2);
    assert_eq!(out[1].message.seq, 2);
    assert_eq!(store.room(&room).await.unwrap().unwrap().last_seq, 2);
    assert_eq!(unread_of(store.as_ref(), "bob", &room).await.0, 2);
    let hist = store.history(&room, HistoryQuery { before: None, after: None, limit: 50 }).await.unwrap();
    assert_eq!(hist.len(), 2);
}

/// Invariant 3: unread = messages after read_seq not sent by the user; total = sum.
pub async fn unread_counters_are_exact(store: Arc<dyn MessageStore>) {
    let a = format!("ua-{}", ids::random_id());
    let b = format!("ub-{}", ids::random_id());
    let r1 = unique_room("unread1");
    let r2 = unique_room("unread2");
    store.create_room(&r1, &[a.clone(), b.clone()], 1).await.unwrap();
    store.create_room(&r2, &[a.clone(), b.clone()], 1).await.unwrap();
    for i in 0..5 {
        persist_ok(store.as_ref(), chat(&r1, &a, &format!("a{i}"))).await;
    }
    for i in 0..3 {
        persist_ok(store.as_ref(), chat(&r1, &b, &format!("b{i}"))).await;
        persist_ok(store.as_ref(), chat(&r2, &a, &format!("x{i}"))).await;
    }
    assert_eq!(unread_of(store.as_ref(), &b, &r1).await, (5, 8));
    assert_eq!(unread_of(store.as_ref(), &a, &r1).await, (3, 3), "own messages never count");
    // r1: seq 1-5 by a, 6-8 by b. b reads to 3: unread = 2 (seq 4, 5).
    let r = store.mark_read(&b, &r1, 3, 10).await.unwrap();
    assert_eq!((r.read_seq, r.unread, r.total_unread, r.changed), (3, 2, 5, true));
    let back = store.mark_read(&b, &r1, 1, 11).await.unwrap();
    assert_eq!((back.read_seq, back.unread, back.changed), (3, 2, false), "read position never moves back");
    let capped = store.mark_read(&b, &r1, 1_000, 12).await.unwrap();
    assert_eq!((capped.read_seq, capped.unread, capped.total_unread), (8, 0, 3));
    let ra = store.mark_read(&a, &r1, 7, 13).await.unwrap();
    assert_eq!((ra.unread, ra.total_unread), (1, 1));
    let inbox = store.inbox(&b).await.unwrap();
    let row = inbox.rooms.iter().find(|r| r.room == r1).unwrap();
    assert_eq!((row.read_seq, row.last_seq, row.unread), (8, 8, 0));
    assert_eq!(inbox.total_unread, inbox.rooms.iter().map(|r| r.unread).sum::<u64>());
    assert!(matches!(store.mark_read("stranger", &r1, 1, 14).await, Err(StoreError::NotMember { .. })));
    assert!(matches!(store.mark_read(&a, "no-such-room-y", 1, 14).await, Err(StoreError::UnknownRoom(_))));
}

/// Invariant 3 under races: reads of every member (the same user from two devices too) run
/// while all members send; afterwards every counter equals a recount from history.
pub async fn reads_racing_sends_keep_counters_exact(store: Arc<dyn MessageStore>) {
    let room = unique_room("racing");
    let members: Vec<String> = (0..3).map(|i| format!("racer{i}-{}", ids::random_id())).collect();
    store.create_room(&room, &members, 1).await.unwrap();
    let mut tasks = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let (store, room, m) = (store.clone(), room.clone(), m.clone());
        tasks.push(tokio::spawn(async move {
            for k in 0..12 {
                persist_ok(store.as_ref(), chat(&room, &m, &format!("{k}"))).await;
                // Two devices of the same user read to different points at once.
                let (s1, s2) = (store.clone(), store.clone());
                let (r1, r2, m1, m2) = (room.clone(), room.clone(), m.clone(), m.clone());
                let a = tokio::spawn(async move { s1.mark_read(&m1, &r1, (k * 3 + i as u64) % 20, 5).await });
                let b = tokio::spawn(async move { s2.mark_read(&m2, &r2, k * 3, 5).await });
                for r in [a.await.unwrap(), b.await.unwrap()] {
                    match r {
                        Ok(_) | Err(StoreError::Conflict(_)) => {}
                        Err(e) => panic!("mark_read failed: {e}"),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let hist = store.history(&room, HistoryQuery { before: None, after: Some(0), limit: 500 }).await.unwrap();
    assert_eq!(hist.len(), 36);
    for m in &members {
        let inbox = store.inbox(m).await.unwrap();
        let row = inbox.rooms.iter().find(|r| r.room == room).unwrap();
        let recount = hist.iter().filter(|h| h.seq > row.read_seq && &h.sender != m).count() as u64;
        assert_eq!(row.unread, recount, "{m}: unread after read_seq {}", row.read_seq);
        assert_eq!(inbox.total_unread, row.unread, "{m}: one room, total = its unread");
    }
}

/// `counters` reads what a persist may defer: each user's unread in the room and total.
pub async fn counters_are_read_for_any_user(store: Arc<dyn MessageStore>) {
    let room = unique_room("counters");
    let (a, b, c) = (format!("ca-{}", ids::random_id()), format!("cb-{}", ids::random_id()), format!("cc-{}", ids::random_id()));
    store.create_room(&room, &[a.clone(), b.clone()], 1).await.unwrap();
    for i in 0..3 {
        persist_ok(store.as_ref(), chat(&room, &a, &i.to_string())).await;
    }
    let got = store.counters(&room, &[b.clone(), a.clone(), c.clone()]).await.unwrap();
    let view: Vec<(&str, &str, u64, u64)> = got.iter().map(|u| (u.user.as_str(), u.room.as_str(), u.unread, u.total_unread)).collect();
    assert_eq!(
        view,
        vec![(b.as_str(), room.as_str(), 3, 3), (a.as_str(), room.as_str(), 0, 0), (c.as_str(), room.as_str(), 0, 0)],
        "in the order asked, a stranger at 0"
    );
    assert!(got[0].version > 0, "b's counters moved: {:?}", got[0]);
    let read = store.mark_read(&b, &room, 2, 2).await.unwrap();
    let after = store.counters(&room, std::slice::from_ref(&b)).await.unwrap();
    assert_eq!((after[0].unread, after[0].total_unread), (1, 1));
    assert!(after[0].version >= read.version, "a read after the mark-read is at least its version");
}

/// Every change of a user's counters carries a higher version than the one before, so a
/// client can tell a stale unread update from a fresh one (a read racing a send).
pub async fn unread_versions_order_a_users_counters(store: Arc<dyn MessageStore>) {
    let room = unique_room("versions");
    let (a, b) = (format!("va-{}", ids::random_id()), format!("vb-{}", ids::random_id()));
    store.create_room(&room, &[a.clone(), b.clone()], 1).await.unwrap();
    let s = store.as_ref();
    let v1 = counters_after(s, &persist_ok(s, chat(&room, &a, "1")).await).await[0].version;
    let v2 = counters_after(s, &persist_ok(s, chat(&room, &a, "2")).await).await[0].version;
    let read = store.mark_read(&b, &room, 1, 2).await.unwrap();
    assert!(read.changed);
    let v4 = counters_after(s, &persist_ok(s, chat(&room, &a, "3")).await).await[0].version;
    assert!(v1 < v2 && v2 < read.version && read.version < v4, "{v1} < {v2} < {} < {v4}", read.version);
    let same = store.mark_read(&b, &room, 1, 3).await.unwrap();
    assert!(!same.changed);
    assert!(same.version >= v4, "an unchanged read reports the current state's version: {} < {v4}", same.version);
    assert_eq!((same.unread, same.total_unread), (2, 2));
}

/// The inbox comes in pages of rooms ascending by id; the total always covers every room.
pub async fn inbox_pages(store: Arc<dyn MessageStore>) {
    let (u, other) = (format!("pager-{}", ids::random_id()), format!("other-{}", ids::random_id()));
    let mut rooms: Vec<String> = (0..5).map(|i| format!("{i}-{}", unique_room("page"))).collect();
    rooms.push(ids::dm_room(&u, &other));
    rooms.sort();
    for r in &rooms {
        store.create_room(r, &[u.clone(), other.clone()], 1).await.unwrap();
        persist_ok(store.as_ref(), chat(r, &other, "hi")).await;
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.inbox_page(&u, InboxPage { after: after.clone(), limit: 4 }).await.unwrap();
        assert_eq!(page.total_unread, 6, "the total covers every room, whatever the page");
        assert!(page.rooms.len() <= 4);
        seen.extend(page.rooms.iter().map(|r| r.room.clone()));
        match page.next {
            Some(next) => {
                assert_eq!(Some(&next), page.rooms.last().map(|r| &r.room), "the cursor is the page's last room");
                after = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(seen, rooms, "every room once, in order");
    let exact = store.inbox_page(&u, InboxPage { after: None, limit: 6 }).await.unwrap();
    assert_eq!((exact.rooms.len(), exact.next), (6, None), "no next page when the last room fits");
}

/// Invariant 7: a bad message in a batch fails alone; the others commit.
pub async fn permanent_errors_are_per_message(store: Arc<dyn MessageStore>) {
    let room = unique_room("errors");
    store.create_room(&room, &users(&["alice", "bob"]), 1).await.unwrap();
    let out = store
        .persist(vec![
            chat(&room, "alice", "1"),
            chat("no-such-room-z", "alice", "2"),
            chat(&room, "mallory", "3"),
            chat(&room, "bob", "4"),
        ])
        .await
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap().message.seq, 1);
    let e1 = out[1].as_ref().unwrap_err();
    assert!(matches!(e1, StoreError::UnknownRoom(_)) && !e1.is_retryable());
    let e2 = out[2].as_ref().unwrap_err();
    assert!(matches!(e2, StoreError::NotMember { .. }) && !e2.is_retryable());
    assert_eq!(out[3].as_ref().unwrap().message.seq, 2, "no seq is burnt by a failed message");
    assert!(store.room("no-such-room-z").await.unwrap().is_none());
}

pub async fn direct_rooms_are_created_on_first_use(store: Arc<dyn MessageStore>) {
    let shop = format!("shop-{}", ids::random_id());
    let room = ids::dm_room(&shop, "alice");
    let mut m = chat(&room, &shop, "promo");
    m.kind = MessageKind::OneOff;
    m.create_members = vec![shop.clone(), "alice".to_string()];
    let p = persist_ok(store.as_ref(), m.clone()).await;
    assert_eq!(p.message.seq, 1);
    assert_eq!(p.message.kind, MessageKind::OneOff);
    let r = store.room(&room).await.unwrap().unwrap();
    let mut want = vec![shop.clone(), "alice".to_string()];
    want.sort();
    assert_eq!(r.members, want);
    let counters = counters_after(store.as_ref(), &p).await;
    assert_eq!(counters.len(), 1);
    assert_eq!((counters[0].user.as_str(), counters[0].unread, counters[0].total_unread), ("alice", 1, 1));
    // The recipient's row stands as after the message; the sender, a member, has no row: a
    // marketing sender's inbox does not list a room per recipient.
    let page = || InboxPage { after: None, limit: 10 };
    let sender = store.inbox_page(&shop, page()).await.unwrap();
    assert_eq!((sender.rooms.len(), sender.total_unread), (0, 0), "no row for the sender of the one-off: {sender:?}");
    let alice = store.inbox_page("alice", page()).await.unwrap();
    let row = alice.rooms.iter().find(|r| r.room == room).expect("the recipient's row");
    assert_eq!((row.unread, row.read_seq, row.last_seq), (1, 0, 1));
    assert_eq!(store.membership(&room, &shop).await.unwrap(), Membership::Member, "the sender is a member");
    let read = store.mark_read("alice", &room, 1, 2).await.unwrap();
    assert_eq!((read.read_seq, read.unread), (1, 0));
    // The recipient answers: the room joins the sender's inbox, with the answer unread.
    persist_ok(store.as_ref(), chat(&room, "alice", "thanks")).await;
    let sender = store.inbox_page(&shop, page()).await.unwrap();
    assert_eq!(
        sender.rooms,
        vec![InboxRoom { room: room.clone(), unread: 1, read_seq: 0, last_seq: 2 }],
        "the answer makes the sender's row"
    );
    assert_eq!(sender.total_unread, 1);
    let read = store.mark_read(&shop, &room, 2, 3).await.unwrap();
    assert_eq!((read.read_seq, read.unread, read.total_unread), (2, 0, 0));
    let mut m2 = chat(&room, &shop, "promo2");
    m2.kind = MessageKind::OneOff;
    m2.create_members = m.create_members.clone();
    assert_eq!(persist_ok(store.as_ref(), m2).await.message.seq, 3, "an existing room is reused");
    let row = store.inbox_page(&shop, page()).await.unwrap().rooms.pop().unwrap();
    assert_eq!((row.unread, row.read_seq, row.last_seq), (0, 2, 3), "a one-off to an existing room moves the sender's last seq");

    // Another one-off's sender reads its new room before anyone answers: the read makes its row.
    let (shop2, bob) = (format!("shop-{}", ids::random_id()), format!("bob-{}", ids::random_id()));
    let room2 = ids::dm_room(&shop2, &bob);
    let mut m3 = chat(&room2, &shop2, "hello");
    m3.kind = MessageKind::OneOff;
    m3.create_members = vec![shop2.clone(), bob.clone()];
    persist_ok(store.as_ref(), m3).await;
    let read = store.mark_read(&shop2, &room2, 1, 4).await.unwrap();
    assert_eq!((read.read_seq, read.unread, read.total_unread), (1, 0, 0));
    let rows = store.inbox_page(&shop2, page()).await.unwrap().rooms;
    assert_eq!(rows, vec![InboxRoom { room: room2.clone(), unread: 0, read_seq: 1, last_seq: 1 }]);
    // And one whose second one-off (to the room the first made) makes its row before any read.
    let (shop3, carol) = (format!("shop-{}", ids::random_id()), format!("carol-{}", ids::random_id()));
    let room3 = ids::dm_room(&shop3, &carol);
    for body in ["first", "second"] {
        let mut m = chat(&room3, &shop3, body);
        m.kind = MessageKind::OneOff;
        m.create_members = vec![shop3.clone(), carol.clone()];
        persist_ok(store.as_ref(), m).await;
    }
    let rows = store.inbox_page(&shop3, page()).await.unwrap().rooms;
    assert_eq!(rows, vec![InboxRoom { room: room3.clone(), unread: 0, read_seq: 0, last_seq: 2 }]);
    let read = store.mark_read(&shop3, &room3, 2, 6).await.unwrap();
    assert_eq!((read.read_seq, read.unread, read.changed), (2, 0, true));
    assert_eq!(store.inbox_page(&carol, page()).await.unwrap().total_unread, 2);
    assert!(matches!(store.mark_read("mallory", &room2, 1, 5).await, Err(StoreError::NotMember { .. })), "a stranger still may not read");
}

pub async fn history_pages(store: Arc<dyn MessageStore>) {
    let room = unique_room("history");
    store.create_room(&room, &users(&["alice", "bob"]), 1).await.unwrap();
    let batch: Vec<NewMessage> = (0..20).map(|i| chat(&room, "alice", &i.to_string())).collect();
    assert!(store.persist(batch).await.unwrap().iter().all(|r| r.is_ok()));
    let seqs = |v: Vec<sluice_core::model::StoredMessage>| v.into_iter().map(|m| m.seq).collect::<Vec<_>>();
    let q = |before, after, limit| HistoryQuery { before, after, limit };
    assert_eq!(seqs(store.history(&room, q(None, None, 3)).await.unwrap()), vec![18, 19, 20], "newest page");
    assert_eq!(seqs(store.history(&room, q(Some(5), None, 10)).await.unwrap()), vec![1, 2, 3, 4]);
    assert_eq!(seqs(store.history(&room, q(None, Some(17), 10)).await.unwrap()), vec![18, 19, 20]);
    assert_eq!(seqs(store.history(&room, q(Some(10), Some(5), 2)).await.unwrap()), vec![6, 7]);
    assert_eq!(seqs(store.history(&room, q(Some(1), None, 10)).await.unwrap()), Vec::<u64>::new());
    assert_eq!(seqs(store.history(&room, q(None, Some(20), 10)).await.unwrap()), Vec::<u64>::new());
    let m = &store.history(&room, q(None, Some(0), 1)).await.unwrap()[0];
    assert_eq!((m.sender.as_str(), m.body.as_str(), m.kind), ("alice", "alice says 0", MessageKind::Chat));
}

pub async fn campaign_progress(store: Arc<dyn MessageStore>) {
    let cid = format!("camp-{}", ids::random_id());
    let shop = format!("shop-{}", ids::random_id());
    let rcpts = users(&["r1", "r2", "r3"]);
    let c = store.record_enqueued(&cid, &shop, 4, &rcpts).await.unwrap();
    assert_eq!((c.requested, c.enqueued, c.persisted), (4, 3, 0));
    let c = store.record_enqueued(&cid, &shop, 2, &users(&["r3", "r4"])).await.unwrap();
    assert_eq!((c.requested, c.enqueued), (6, 4), "a recipient repeated across calls counts once");
    // The same call again (its answer was lost, the producer retries): counted once.
    let c = store.record_enqueued(&cid, &shop, 2, &users(&["r3", "r4"])).await.unwrap();
    assert_eq!((c.requested, c.enqueued), (6, 4), "a retried call counts its request once");
    // The id belongs to its first sender: another sender's call records nothing.
    let thief = store.record_enqueued(&cid, "other-shop", 2, &users(&["r5"])).await;
    assert!(matches!(thief, Err(StoreError::CampaignOwned { .. })), "{thief:?}");
    let c = store.campaign(&cid).await.unwrap().unwrap();
    assert_eq!((c.requested, c.enqueued), (6, 4));
    let one_off = |r: &str| one_off(&cid, &shop, r);
    let out = store.persist(vec![one_off("r1"), one_off("r2"), one_off("r1")]).await.unwrap();
    assert!(out.iter().all(|r| r.is_ok()));
    // r2 persisted, then "dead-lettered" (a worker crashed after commit): not counted.
    for r in ["r2", "r3", "r3"] {
        let m = one_off(r);
        store.record_dead_letter(&cid, &m.room, &m.msg_id).await.unwrap();
    }
    let c = store.campaign(&cid).await.unwrap().unwrap();
    assert_eq!((c.persisted, c.dead_lettered, c.done()), (2, 1, false));
    // r3 redriven and persisted after all: moves from dead-lettered to persisted.
    store.persist(vec![one_off("r3"), one_off("r4")]).await.unwrap();
    let c = store.campaign(&cid).await.unwrap().unwrap();
    assert_eq!((c.enqueued, c.persisted, c.dead_lettered, c.done()), (4, 4, 0, true));
    assert!(store.campaign("no-such-campaign").await.unwrap().is_none());
}

pub async fn new_members_start_read(store: Arc<dyn MessageStore>) {
    let room = unique_room("join");
    store.create_room(&room, &users(&["alice", "bob"]), 1).await.unwrap();
    for i in 0..3 {
        persist_ok(store.as_ref(), chat(&room, "alice", &i.to_string())).await;
    }
    let carol = format!("carol-{}", ids::random_id());
    store.add_members(&room, std::slice::from_ref(&carol), 2).await.unwrap();
    assert_eq!(unread_of(store.as_ref(), &carol, &room).await, (0, 0));
    persist_ok(store.as_ref(), chat(&room, "alice", "after")).await;
    let inbox = store.inbox(&carol).await.unwrap();
    let rows: BTreeMap<_, _> = inbox.rooms.iter().map(|r| (r.room.clone(), (r.unread, r.read_seq, r.last_seq))).collect();
    assert_eq!(rows[&room], (1, 3, 4));
}

/// A room that grows past what one transaction can update per recipient (DynamoDB switches
/// such rooms to computed unread): counters stay exact across the switch and after it.
pub async fn growing_rooms_keep_exact_counters(store: Arc<dyn MessageStore>) {
    let tag = ids::random_id();
    let (a, b, c) = (format!("ga-{tag}"), format!("gb-{tag}"), format!("gc-{tag}"));
    let room = unique_room("grow");
    store.create_room(&room, &[a.clone(), b.clone(), c.clone()], 1).await.unwrap();
    for i in 0..5 {
        persist_ok(store.as_ref(), chat(&room, &a, &format!("a{i}"))).await;
    }
    persist_ok(store.as_ref(), chat(&room, &b, "b0")).await;
    store.mark_read(&b, &room, 2, 2).await.unwrap();
    // seq 1-5 by a, 6 by b; b read to 2.
    assert_eq!(unread_of(store.as_ref(), &b, &room).await, (3, 3));
    assert_eq!(unread_of(store.as_ref(), &c, &room).await, (6, 6));
    assert_eq!(unread_of(store.as_ref(), &a, &room).await, (1, 1));
    let newcomers: Vec<String> = (0..60).map(|i| format!("gn{i:02}-{tag}")).collect();
    let r = store.add_members(&room, &newcomers, 3).await.unwrap();
    assert_eq!(r.members.len(), 63);
    assert_eq!(store.membership(&room, &newcomers[59]).await.unwrap(), Membership::Member);
    assert_eq!(store.membership(&room, "gx-stranger").await.unwrap(), Membership::NotMember);
    // The counters survive the growth unchanged.
    assert_eq!(unread_of(store.as_ref(), &b, &room).await, (3, 3));
    assert_eq!(unread_of(store.as_ref(), &c, &room).await, (6, 6));
    assert_eq!(unread_of(store.as_ref(), &a, &room).await, (1, 1));
    assert_eq!(unread_of(store.as_ref(), &newcomers[0], &room).await, (0, 0));
    // And keep counting after it: seq 7, 8 by c, 9 by a newcomer.
    persist_ok(store.as_ref(), chat(&room, &c, "c0")).await;
    persist_ok(store.as_ref(), chat(&room, &c, "c1")).await;
    let p = persist_ok(store.as_ref(), chat(&room, &newcomers[0], "n0")).await;
    assert_eq!(p.message.seq, 9);
    assert_eq!(p.members.len(), 63, "live fan-out still reaches every member");
    assert_eq!(unread_of(store.as_ref(), &b, &room).await, (6, 6));
    assert_eq!(unread_of(store.as_ref(), &c, &room).await, (7, 7), "c's own messages are not unread");
    assert_eq!(unread_of(store.as_ref(), &newcomers[0], &room).await, (2, 2));
    assert_eq!(unread_of(store.as_ref(), &newcomers[1], &room).await, (3, 3));
    let r = store.mark_read(&newcomers[1], &room, 7, 4).await.unwrap();
    assert_eq!((r.read_seq, r.unread, r.total_unread, r.changed), (7, 2, 2, true));
    let r = store.mark_read(&c, &room, 7, 5).await.unwrap();
    assert_eq!((r.unread, r.total_unread), (1, 1), "seq 8 is c's own, seq 9 is not");
    let r = store.mark_read(&b, &room, 100, 6).await.unwrap();
    assert_eq!((r.read_seq, r.unread, r.total_unread), (9, 0, 0));
    let out = store.persist(vec![chat(&room, "gx-stranger", "x")]).await.unwrap();
    assert!(matches!(out[0], Err(StoreError::NotMember { .. })), "only members send to a large room");
    // Totals add large and small rooms.
    let small = unique_room("grow-small");
    store.create_room(&small, &[a.clone(), c.clone()], 7).await.unwrap();
    persist_ok(store.as_ref(), chat(&small, &a, "s0")).await;
    let inbox = store.inbox(&c).await.unwrap();
    assert_eq!(inbox.total_unread, 2);
    assert_eq!(inbox.total_unread, inbox.rooms.iter().map(|r| r.unread).sum::<u64>());
    let row = inbox.rooms.iter().find(|r| r.room == room).unwrap();
    assert_eq!((row.unread, row.read_seq, row.last_seq), (1, 7, 9));
}

pub async fn drain_controls_are_kept_and_removed(s: Arc<dyn MessageStore>) {
    assert!(s.controls().await.unwrap().entries.is_empty());
    let paused = Control { paused: true, rate: None };
    let (acme, spring) = (Scope::Tenant("acme".into()), Scope::Campaign("spring".into()));
    s.set_control(&acme, paused).await.unwrap();
    s.set_control(&spring, paused).await.unwrap();
    s.set_control(&Scope::Drain, Control { paused: false, rate: Some(250.5) }).await.unwrap();
    let c = s.controls().await.unwrap();
    assert_eq!(c.entries.len(), 3, "{c:?}");
    assert_eq!(c.drain(), Control { paused: false, rate: Some(250.5) });
    assert_eq!(c.paused_scope("acme", Some("other")), Some(acme.clone()));
    assert_eq!(c.paused_scope("globex", Some("spring")), Some(spring.clone()));
    // Setting the default removes a control; setting another value replaces it.
    s.set_control(&acme, Control::default()).await.unwrap();
    s.set_control(&spring, Control { paused: false, rate: Some(10.0) }).await.unwrap();
    let c = s.controls().await.unwrap();
    assert_eq!(c.paused_scope("acme", Some("spring")), None);
    assert_eq!(c.entries.len(), 2, "{c:?}");
    s.set_control(&Scope::Drain, Control::default()).await.unwrap();
    s.set_control(&spring, Control::default()).await.unwrap();
    assert!(s.controls().await.unwrap().entries.is_empty());
}

pub async fn a_campaign_knows_its_tenant(s: Arc<dyn MessageStore>) {
    s.record_enqueued("c1", &ids::campaign_owner("acme", "mailer"), 1, &users(&["ann"])).await.unwrap();
    s.record_enqueued("c2", &ids::campaign_owner("shop", "shop"), 1, &users(&["ann"])).await.unwrap();
    assert_eq!(s.campaign("c1").await.unwrap().unwrap().tenant, "acme");
    assert_eq!(s.campaign("c2").await.unwrap().unwrap().tenant, "shop");
    let err = s.record_enqueued("c1", &ids::campaign_owner("globex", "mailer"), 1, &users(&["bob"])).await.unwrap_err();
    assert!(matches!(err, StoreError::CampaignOwned { .. }), "{err:?}");
    // A large call (recorded in slices by some stores) is refused as a whole too.
    let many: Vec<String> = (0..3000).map(|i| format!("m{i}")).collect();
    let c = s.record_enqueued("big", &ids::campaign_owner("acme", "mailer"), 3000, &many).await.unwrap();
    assert_eq!((c.requested, c.enqueued), (3000, 3000));
    let err = s.record_enqueued("big", &ids::campaign_owner("globex", "mailer"), 3000, &many).await.unwrap_err();
    assert!(matches!(err, StoreError::CampaignOwned { .. }), "{err:?}");
    let c = s.campaign("big").await.unwrap().unwrap();
    assert_eq!((c.requested, c.enqueued, c.tenant.as_str()), (3000, 3000, "acme"), "the refused call recorded nothing");
}

/// A campaign's body is stored under its reference, found by campaign and reference only,
/// and storing it again changes nothing; a large body is kept whole.
pub async fn campaign_bodies_are_stored_once_by_reference(s: Arc<dyn MessageStore>) {
    let (spring, summer) = ("Spring sale: 20% off", "Summer sale: 30% off");
    let (r1, r2) = (ids::campaign_body_ref("c1", spring), ids::campaign_body_ref("c1", summer));
    assert_ne!(r1, r2, "another body, another reference");
    assert_eq!(s.campaign_body("c1", &r1).await.unwrap(), None);
    s.put_campaign_body("c1", &r1, spring).await.unwrap();
    s.put_campaign_body("c1", &r1, spring).await.unwrap();
    s.put_campaign_body("c1", &r2, summer).await.unwrap();
    assert_eq!(s.campaign_body("c1", &r1).await.unwrap().as_deref(), Some(spring));
    assert_eq!(s.campaign_body("c1", &r2).await.unwrap().as_deref(), Some(summer));
    assert_eq!(s.campaign_body("c2", &r1).await.unwrap(), None, "bodies belong to their campaign");
    let big = "é".repeat(30 * 1024);
    let r3 = ids::campaign_body_ref("c2", &big);
    s.put_campaign_body("c2", &r3, &big).await.unwrap();
    assert_eq!(s.campaign_body("c2", &r3).await.unwrap().as_deref(), Some(big.as_str()));
    // A body does not show as campaign progress.
    assert!(s.campaign("c2").await.unwrap().is_none(), "a stored body alone is no campaign");
}
