//! What the embedded store keeps when its process is killed (SIGKILL) while it writes: every
//! write it answered (invariant 4), with exact counters (invariant 1): with every commit
//! durable (the default), and with the redo log, whether the kill comes long after the last
//! checkpoint (everything since is in the log only) or among frequent ones.
//!
//! Each test runs itself again as a child process (same binary, same test name, with
//! `SLUICE_CRASH_CHILD` naming the store file) that writes and prints what it was answered,
//! until the parent kills it.

use sluice_core::model::{HistoryQuery, MessageKind, NewMessage};
use sluice_core::store::MessageStore;
use sluice_embedded::{EmbeddedStore, StoreConfig};
use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use std::time::Duration;

const MEMBERS: [&str; 3] = ["alice", "bob", "carol"];

fn chat(sender: &str, id: String) -> NewMessage {
    NewMessage {
        msg_id: id,
        room: "r".into(),
        sender: sender.into(),
        body: format!("from {sender}"),
        kind: MessageKind::Chat,
        campaign_id: None,
        sent_at_ms: 1,
        create_members: vec![],
        body_ref: None,
    }
}

/// The child: alice and carol chat in `r`, bob reads now and then, a campaign sends one-offs
/// in batches of three; each answer is printed as a line once it arrives.
async fn child(path: &Path, checkpoint_ms: u64) {
    let config = StoreConfig { outbox: true, checkpoint_every: Duration::from_millis(checkpoint_ms), ..StoreConfig::default() };
    let store = EmbeddedStore::open_with(path, config).unwrap();
    store.create_room("r", &MEMBERS.map(String::from), 1).await.unwrap();
    println!("ready");
    let mut tasks = Vec::new();
    for sender in ["alice", "carol"] {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let id = format!("{sender}-{i}");
                let p = store.persist(vec![chat(sender, id.clone())]).await.unwrap().remove(0).unwrap();
                println!("chat {id} {}", p.message.seq);
            }
        }));
    }
    let s = store.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(3)).await;
            let last = s.room("r").await.unwrap().unwrap().last_seq;
            let r = s.mark_read("bob", "r", last, 1).await.unwrap();
            println!("read {}", r.read_seq);
        }
    }));
    let s = store.clone();
    tasks.push(tokio::spawn(async move {
        let campaign = sluice_core::ids::CampaignId::new("spring").unwrap();
        let brand = sluice_core::ids::UserId::new("brand").unwrap();
        for i in 0.. {
            let users: Vec<String> = (0..3).map(|k| format!("u{i}x{k}")).collect();
            let batch = users
                .iter()
                .map(|u| NewMessage::one_off(&campaign, &brand, &sluice_core::ids::UserId::new(u.as_str()).unwrap(), "sale", 1))
                .collect();
            for (u, r) in users.iter().zip(s.persist(batch).await.unwrap()) {
                r.unwrap();
                println!("oneoff {u}");
            }
        }
    }));
    for t in tasks {
        t.await.unwrap();
    }
}

/// Runs the child until it has printed `answers` answers, kills it, and returns what it was
/// answered: chat msg_id -> seq, bob's highest read, the one-offs' recipients.
fn run_and_kill(test: &str, path: &Path, checkpoint_ms: u64, answers: usize) -> (HashMap<String, u64>, u64, Vec<String>) {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env("SLUICE_CRASH_CHILD", path)
        .env("SLUICE_CRASH_CHECKPOINT_MS", checkpoint_ms.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (mut chats, mut read, mut oneoffs) = (HashMap::new(), 0, Vec::new());
    let mut seen = 0;
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["chat", id, seq] => drop(chats.insert(id.to_string(), seq.parse().unwrap())),
            ["read", seq] => read = read.max(seq.parse().unwrap()),
            ["oneoff", user] => oneoffs.push(user.to_string()),
            _ => continue,
        }
        seen += 1;
        if seen == answers {
            break;
        }
    }
    assert_eq!(seen, answers, "the child stopped before it was killed");
    child.kill().unwrap();
    child.wait().unwrap();
    (chats, read, oneoffs)
}

/// Reopens the store and checks it against what the child was answered.
async fn check(path: &Path, chats: &HashMap<String, u64>, read: u64, oneoffs: &[String]) {
    let store = EmbeddedStore::open(path).unwrap();
    let mut history = Vec::new();
    loop {
        let after = history.last().map(|m: &sluice_core::model::StoredMessage| m.seq).unwrap_or(0);
        let page = store.history("r", HistoryQuery { before: None, after: Some(after), limit: 500 }).await.unwrap();
        if page.is_empty() {
            break;
        }
        history.extend(page);
    }
    let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=history.len() as u64).collect::<Vec<_>>(), "seqs are gap-free");
    let stored: HashMap<&str, u64> = history.iter().map(|m| (m.msg_id.as_str(), m.seq)).collect();
    for (id, seq) in chats {
        assert_eq!(stored.get(id.as_str()), Some(seq), "answered message {id} kept at its seq");
    }
    for user in MEMBERS {
        let inbox = store.inbox(user).await.unwrap();
        let row = inbox.rooms.iter().find(|r| r.room == "r").unwrap();
        let unread = history.iter().filter(|m| m.seq > row.read_seq && m.sender != user).count() as u64;
        assert_eq!((row.unread, inbox.total_unread), (unread, unread), "{user}'s counters match the history");
        assert_eq!(row.last_seq, history.len() as u64);
    }
    let bob = store.inbox("bob").await.unwrap();
    assert!(bob.rooms[0].read_seq >= read, "bob's answered read is kept");
    for u in oneoffs {
        assert_eq!(store.inbox(u).await.unwrap().total_unread, 1, "{u} has its one-off once");
    }
}

async fn crash_test(test: &str, checkpoint_ms: u64, torn_tail: bool) {
    if let Ok(path) = std::env::var("SLUICE_CRASH_CHILD") {
        let ms = std::env::var("SLUICE_CRASH_CHECKPOINT_MS").unwrap().parse().unwrap();
        return child(Path::new(&path), ms).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let log = dir.path().join("store.redb.redo");
    let (chats, read, oneoffs) = run_and_kill(test, &path, checkpoint_ms, 1500);
    assert!(chats.len() > 100 && read > 0 && oneoffs.len() > 100, "the child wrote all kinds: {} {read} {}", chats.len(), oneoffs.len());
    let logged = std::fs::metadata(&log).unwrap().len();
    if checkpoint_ms == 0 {
        assert_eq!(logged, 0, "with every commit durable, the log stays empty");
    }
    if checkpoint_ms > 60_000 {
        assert!(logged > 0, "with no checkpoint since the start, the writes are in the log");
    }
    if torn_tail {
        // A record whose append the kill cut short, after the last whole one: the next LSN,
        // but rows that do not match the checksum.
        let mut bytes = std::fs::read(&log).unwrap();
        let (mut at, mut last) = (0, 0);
        loop {
            let lsn = u64::from_le_bytes(bytes[at + 4..at + 12].try_into().unwrap());
            if lsn == 0 || (last > 0 && lsn != last + 1) {
                break;
            }
            last = lsn;
            at += 20 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        }
        assert!(last > 0, "records in the log");
        bytes[at..at + 4].copy_from_slice(&40u32.to_le_bytes());
        bytes[at + 4..at + 12].copy_from_slice(&(last + 1).to_le_bytes());
        bytes[at + 12..at + 60].fill(7);
        std::fs::write(&log, &bytes).unwrap();
    }
    check(&path, &chats, read, &oneoffs).await;
    // The replayed state is durable: the log starts over, and a second open finds the same.
    assert_eq!(std::fs::metadata(&log).unwrap().len(), 0, "the log starts over after a replay");
    check(&path, &chats, read, &oneoffs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_writes_survive_a_kill_with_every_commit_durable() {
    crash_test("answered_writes_survive_a_kill_with_every_commit_durable", 0, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_writes_survive_a_kill_long_after_the_last_checkpoint() {
    crash_test("answered_writes_survive_a_kill_long_after_the_last_checkpoint", 3_600_000, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_writes_survive_a_kill_among_frequent_checkpoints() {
    crash_test("answered_writes_survive_a_kill_among_frequent_checkpoints", 5, false).await;
}
