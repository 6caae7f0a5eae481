//! Writes the embedded store's two write patterns into redb (the engine the store uses) and
//! into fjall (an LSM tree), with the same reads, rows and durability, and reports what each
//! takes: rate, commit time, bytes written to disk per message, size on disk and peak
//! resident memory, and reads the counters back.
//!
//! 1. One-offs (the drain): per one-off it does what `sluice_embedded`'s writer does for a
//!    campaign's one-off that creates its direct room (`persist_one`): look up the msg_id (not
//!    there), the room's newest message and record (none), the recipient's inbox row and
//!    total; then write the message, the msg_id marker, the inbox row and the total. Per
//!    commit it writes the counters' version and the campaign's record. Recipients are named
//!    as `sluice-bench spike` names them, in the order it enqueues them.
//! 2. Then, on the grown store, chat (the interactive lane): 200 rooms of 5 made as
//!    CreateRoom makes them; per message look up the msg_id, the room's record and members,
//!    write the record, the message and the marker, and each other member's inbox row and
//!    total; commits of `--chat-group` messages, as the writer groups what arrived during the
//!    last commit.
//!
//! Every commit is durable (redb `Durability::Immediate`; fjall `SyncAll`). Rows carry values
//! of the store's sizes and shapes (see `Rows`).

use clap::{Parser, ValueEnum};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Engine {
    Redb,
    Fjall,
}

#[derive(Parser)]
struct Args {
    #[arg(long, value_enum)]
    engine: Engine,
    /// One-offs to write first (the drain's pattern).
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// One-offs per durable commit (the store's writer groups at most 4,096).
    #[arg(long, default_value_t = 2048)]
    batch: u64,
    /// Chat messages to write after the one-offs (the interactive pattern), in rooms of 5.
    #[arg(long, default_value_t = 0)]
    chat: u64,
    /// Chat messages per durable commit (the writer groups what arrived during the last
    /// commit: at 5,000 msg/s and 5 ms a commit, about 25).
    #[arg(long, default_value_t = 25)]
    chat_group: u64,
    /// redb only: make one chat commit in this many durable, the others `Durability::None`
    /// (what a log of its own in front of redb would allow; 1: every commit durable, as the
    /// store does).
    #[arg(long, default_value_t = 1)]
    redb_durable_every: u64,
    /// redb only: before each chat commit, append the rows it writes to a log file of its own
    /// and sync it (the durability a log in front of redb gives while most commits are
    /// `Durability::None`; use with `--redb-durable-every`).
    #[arg(long)]
    redb_log: bool,
    /// redb only: a thread syncs the redb file every this many milliseconds (0: never), so a
    /// durable commit finds few dirty pages left to write.
    #[arg(long, default_value_t = 0)]
    redb_flush_ms: u64,
    /// redb only: chat messages' msg_id index keyed by (room, msg_id) in a table of its own,
    /// so a room's markers share leaves, instead of by msg_id alone (random keys).
    #[arg(long)]
    redb_ids_by_room: bool,
    /// Cache of either engine, MiB (the store's default is 64).
    #[arg(long, default_value_t = 64)]
    cache_mib: u64,
    /// Directory to write in (made; must not exist).
    #[arg(long)]
    dir: PathBuf,
}

const SENDER: &str = "bench-sender";
const CAMPAIGN: &str = "c2f1a6d4-97a3-4c4e-9a1e-5f0e2b7c8d10";
const BODY: &str = "Spring sale: 20% off every plan until Sunday. Reply STOP to opt out";
/// Chat rooms (of `ROOM_SIZE` members each), as `sluice-bench interactive` makes them.
const ROOMS_N: u64 = 200;
const ROOM_SIZE: u64 = 5;

/// The keys and values of one one-off, shaped like the store's postcard records.
struct Rows {
    user: String,
    room: String,
    msg_id: String,
    message: Vec<u8>,
    marker: Vec<u8>,
    inbox: Vec<u8>,
}

fn rows(i: u64) -> Rows {
    let user = format!("run1-s{i}");
    let room = if SENDER < user.as_str() { format!("dm:{SENDER}:{user}") } else { format!("dm:{user}:{SENDER}") };
    rows_in(i, user, room, SENDER)
}

/// The `i`th chat message: its room, sender and rows (the recipient fields name the room's
/// first other member; [`chat_members`] lists them all).
fn chat_rows(i: u64) -> (Rows, u64) {
    let h = splitmix(i ^ 0x5eed);
    let r = h % ROOMS_N;
    let sender = format!("run1-u{}", r * ROOM_SIZE + (h >> 32) % ROOM_SIZE);
    let mut rows = rows_in(i | 1 << 62, String::new(), format!("run1-r{r}"), &sender);
    rows.user = sender;
    (rows, r)
}

fn chat_members(r: u64) -> Vec<String> {
    (0..ROOM_SIZE).map(|k| format!("run1-u{}", r * ROOM_SIZE + k)).collect()
}

fn rows_in(i: u64, user: String, room: String, sender: &str) -> Rows {
    let h = splitmix(i);
    let h2 = splitmix(h);
    let msg_id = format!("{:08x}-{:04x}-5{:03x}-{:04x}-{:012x}", h >> 32, (h >> 16) & 0xffff, h & 0xfff, h2 >> 48, h2 & 0xffff_ffff_ffff);
    let sent_at: i64 = 1_764_000_000_000 + (i & 0xffff_ffff) as i64;
    let mut message = Vec::with_capacity(200);
    for s in [msg_id.as_str(), sender, BODY] {
        message.push(s.len() as u8);
        message.extend_from_slice(s.as_bytes());
    }
    message.push(1); // kind
    message.push(1); // Some(campaign)
    message.push(CAMPAIGN.len() as u8);
    message.extend_from_slice(CAMPAIGN.as_bytes());
    message.extend_from_slice(&sent_at.to_le_bytes()[..6]);
    let mut marker = Vec::with_capacity(64);
    marker.push(room.len() as u8);
    marker.extend_from_slice(room.as_bytes());
    marker.push(1);
    let mut inbox = vec![1, 0, (i & 0x7f) as u8, BODY.len() as u8];
    inbox.extend_from_slice(BODY.as_bytes());
    inbox.extend_from_slice(&sent_at.to_le_bytes()[..6]);
    Rows { user, room, msg_id, message, marker, inbox }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What one phase took.
#[derive(Default)]
struct Phase {
    secs: f64,
    written: u64,
    /// Each commit's time, begin to durable.
    commits: Vec<Duration>,
    /// Recipients read back at the expected total.
    checked: u64,
}

/// Runs `f` and measures it: time, bytes written, commits.
fn phase(f: impl FnOnce(&mut Vec<Duration>) -> u64) -> Phase {
    let written = proc_io("write_bytes");
    let started = Instant::now();
    let mut commits = Vec::new();
    let checked = f(&mut commits);
    Phase { secs: started.elapsed().as_secs_f64(), written: proc_io("write_bytes") - written, commits, checked }
}

fn main() {
    let a = Args::parse();
    assert!(!a.dir.exists(), "{} exists: give a new directory", a.dir.display());
    std::fs::create_dir_all(&a.dir).expect("make dir");
    let (oneoffs, chat) = match a.engine {
        Engine::Redb => redb_run(&a),
        Engine::Fjall => fjall_run(&a),
    };
    println!("engine {:?}, cache {} MiB", a.engine, a.cache_mib);
    println!("  {} one-offs in commits of {}", a.count, a.batch);
    println!("    one-offs/s          {:.0}", a.count as f64 / oneoffs.secs);
    println!("    written to disk     {:.0} B per one-off", oneoffs.written as f64 / a.count.max(1) as f64);
    println!("    read back           {} recipients with total 1", oneoffs.checked);
    if a.chat > 0 {
        let mut c = chat.commits.clone();
        c.sort();
        let q = |f: f64| c[((c.len() as f64 * f) as usize).min(c.len() - 1)].as_secs_f64() * 1000.0;
        println!("  then {} chat messages in rooms of {ROOM_SIZE}, commits of {}", a.chat, a.chat_group);
        if a.redb_durable_every > 1 {
            println!("    (redb: one commit in {} durable)", a.redb_durable_every);
        }
        if a.redb_log {
            println!("    (redb: each commit's rows appended to a log and synced first)");
        }
        if a.redb_flush_ms > 0 {
            println!("    (redb: file synced by a thread every {} ms)", a.redb_flush_ms);
        }
        println!("    messages/s          {:.0} (one writer, flat out)", a.chat as f64 / chat.secs);
        println!("    commit p50/p99/max  {:.2} / {:.2} / {:.2} ms", q(0.5), q(0.99), q(1.0));
        println!("    written to disk     {:.0} B per message", chat.written as f64 / a.chat as f64);
        println!("    read back           {} of {} members' totals add up", chat.checked, ROOMS_N * ROOM_SIZE);
    }
    println!("  size on disk          {} MiB", dir_size(&a.dir) >> 20);
    println!("  peak resident         {} MiB", proc_status_kib("VmHWM") / 1024);
}

fn progress(what: &str, done: u64, started: Instant, last: &mut Instant) {
    if last.elapsed().as_secs() >= 10 {
        *last = Instant::now();
        let s = started.elapsed().as_secs_f64();
        eprintln!("{what}: {done} in {s:.1} s: {:.0}/s", done as f64 / s);
    }
}

/// Unread counts chat gave each member of the rooms: every message adds one for each member
/// but its sender.
fn chat_expected(count: u64) -> std::collections::HashMap<String, u64> {
    let mut want = std::collections::HashMap::new();
    for i in 0..count {
        let (r, room) = chat_rows(i);
        for m in chat_members(room).into_iter().filter(|m| *m != r.user) {
            *want.entry(m).or_insert(0) += 1;
        }
    }
    want
}

fn redb_run(a: &Args) -> (Phase, Phase) {
    use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
    const ROOMS: TableDefinition<&str, &[u8]> = TableDefinition::new("rooms");
    const MEMBERS: TableDefinition<(&str, &str), i64> = TableDefinition::new("members");
    const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
    const MSG_IDS: TableDefinition<&str, &[u8]> = TableDefinition::new("msg_ids");
    const INBOX: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("inbox");
    const TOTALS: TableDefinition<&str, u64> = TableDefinition::new("totals");
    const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
    const CAMPAIGNS: TableDefinition<&str, &[u8]> = TableDefinition::new("campaigns");
    const ROOM_MSG_IDS: TableDefinition<(&str, &str), u64> = TableDefinition::new("room_msg_ids");

    let db = Database::builder().set_cache_size((a.cache_mib as usize) << 20).create(a.dir.join("store.redb")).expect("open redb");
    let oneoffs = phase(|commits| {
        let (started, mut last) = (Instant::now(), Instant::now());
        let mut next = 0;
        while next < a.count {
            let end = (next + a.batch).min(a.count);
            let t = Instant::now();
            let txn = db.begin_write().expect("begin");
            {
                let rooms = txn.open_table(ROOMS).expect("table");
                let mut messages = txn.open_table(MESSAGES).expect("table");
                let mut msg_ids = txn.open_table(MSG_IDS).expect("table");
                let mut inbox = txn.open_table(INBOX).expect("table");
                let mut totals = txn.open_table(TOTALS).expect("table");
                let mut meta = txn.open_table(META).expect("table");
                let mut campaigns = txn.open_table(CAMPAIGNS).expect("table");
                for i in next..end {
                    let r = rows(i);
                    assert!(msg_ids.get(r.msg_id.as_str()).expect("get").is_none());
                    let newest = messages.range((r.room.as_str(), 0)..=(r.room.as_str(), u64::MAX)).expect("range").next_back().is_some();
                    assert!(!newest);
                    assert!(rooms.get(r.room.as_str()).expect("get").is_none());
                    messages.insert((r.room.as_str(), 1), r.message.as_slice()).expect("insert");
                    msg_ids.insert(r.msg_id.as_str(), r.marker.as_slice()).expect("insert");
                    assert!(inbox.get((r.user.as_str(), r.room.as_str())).expect("get").is_none());
                    inbox.insert((r.user.as_str(), r.room.as_str()), r.inbox.as_slice()).expect("insert");
                    let total = totals.get(r.user.as_str()).expect("get").map_or(0, |v| v.value());
                    totals.insert(r.user.as_str(), total + 1).expect("insert");
                }
                meta.insert("counters_version", end).expect("insert");
                campaigns.insert(CAMPAIGN, end.to_le_bytes().as_slice()).expect("insert");
            }
            txn.commit().expect("commit");
            commits.push(t.elapsed());
            next = end;
            progress("one-offs", next, started, &mut last);
        }
        let read = db.begin_read().expect("read");
        let totals = read.open_table(TOTALS).expect("table");
        sample(a.count).filter(|i| totals.get(rows(*i).user.as_str()).expect("get").map(|v| v.value()) == Some(1)).count() as u64
    });
    // The chat rooms, made as CreateRoom makes them: a record, member rows, inbox rows.
    let txn = db.begin_write().expect("begin");
    {
        let mut rooms = txn.open_table(ROOMS).expect("table");
        let mut members = txn.open_table(MEMBERS).expect("table");
        let mut inbox = txn.open_table(INBOX).expect("table");
        for r in 0..ROOMS_N {
            let room = format!("run1-r{r}");
            rooms.insert(room.as_str(), 0u64.to_le_bytes().as_slice()).expect("insert");
            for m in chat_members(r) {
                members.insert((room.as_str(), m.as_str()), 0).expect("insert");
                inbox.insert((m.as_str(), room.as_str()), [0u8; 8].as_slice()).expect("insert");
            }
        }
    }
    txn.commit().expect("commit");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flusher = (a.redb_flush_ms > 0).then(|| {
        let (file, stop, every) = (std::fs::File::open(a.dir.join("store.redb")).expect("open"), stop.clone(), a.redb_flush_ms);
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(every));
                file.sync_data().expect("sync");
            }
        })
    });
    let mut durable_commits: Vec<Duration> = Vec::new();
    let mut log = a.redb_log.then(|| std::fs::File::create(a.dir.join("store.log")).expect("log"));
    let chat = phase(|commits| {
        let (started, mut last) = (Instant::now(), Instant::now());
        let mut next = 0;
        while next < a.chat {
            let end = (next + a.chat_group).min(a.chat);
            let t = Instant::now();
            let mut record: Vec<u8> = Vec::new();
            let mut txn = db.begin_write().expect("begin");
            if !(commits.len() as u64 + 1).is_multiple_of(a.redb_durable_every.max(1)) {
                txn.set_durability(redb::Durability::None).expect("durability");
            }
            {
                let mut rooms = txn.open_table(ROOMS).expect("table");
                let members = txn.open_table(MEMBERS).expect("table");
                let mut messages = txn.open_table(MESSAGES).expect("table");
                let mut msg_ids = txn.open_table(MSG_IDS).expect("table");
                let mut room_ids = txn.open_table(ROOM_MSG_IDS).expect("table");
                let mut inbox = txn.open_table(INBOX).expect("table");
                let mut totals = txn.open_table(TOTALS).expect("table");
                let mut meta = txn.open_table(META).expect("table");
                for i in next..end {
                    let (r, _) = chat_rows(i);
                    if a.redb_ids_by_room {
                        assert!(room_ids.get((r.room.as_str(), r.msg_id.as_str())).expect("get").is_none());
                    } else {
                        assert!(msg_ids.get(r.msg_id.as_str()).expect("get").is_none());
                    }
                    let seq = rooms
                        .get(r.room.as_str())
                        .expect("get")
                        .map(|v| u64::from_le_bytes(v.value()[..8].try_into().expect("8")))
                        .expect("room")
                        + 1;
                    let list: Vec<String> = members
                        .range((r.room.as_str(), "")..(r.room.as_str(), "\u{10ffff}"))
                        .expect("range")
                        .map(|e| e.expect("member").0.value().1.to_string())
                        .collect();
                    assert!(list.contains(&r.user));
                    rooms.insert(r.room.as_str(), seq.to_le_bytes().as_slice()).expect("insert");
                    messages.insert((r.room.as_str(), seq), r.message.as_slice()).expect("insert");
                    if a.redb_ids_by_room {
                        room_ids.insert((r.room.as_str(), r.msg_id.as_str()), seq).expect("insert");
                    } else {
                        msg_ids.insert(r.msg_id.as_str(), r.marker.as_slice()).expect("insert");
                    }
                    if a.redb_log {
                        for part in [r.room.as_bytes(), &seq.to_le_bytes(), &r.message, r.msg_id.as_bytes(), &r.marker] {
                            record.extend_from_slice(&(part.len() as u32).to_le_bytes());
                            record.extend_from_slice(part);
                        }
                    }
                    for m in list.iter().filter(|m| **m != r.user) {
                        let row = inbox.get((m.as_str(), r.room.as_str())).expect("get").map(|v| v.value().to_vec()).expect("row");
                        let mut row = if row.len() >= r.inbox.len() { row } else { r.inbox.clone() };
                        row[0] = row[0].wrapping_add(1);
                        inbox.insert((m.as_str(), r.room.as_str()), row.as_slice()).expect("insert");
                        let total = totals.get(m.as_str()).expect("get").map_or(0, |v| v.value());
                        totals.insert(m.as_str(), total + 1).expect("insert");
                        if a.redb_log {
                            for part in [m.as_bytes(), r.room.as_bytes(), &row, m.as_bytes(), &(total + 1).to_le_bytes()] {
                                record.extend_from_slice(&(part.len() as u32).to_le_bytes());
                                record.extend_from_slice(part);
                            }
                        }
                    }
                }
                meta.insert("counters_version", a.count + end).expect("insert");
            }
            if let Some(log) = &mut log {
                use std::io::Write;
                log.write_all(&(record.len() as u32).to_le_bytes()).expect("log");
                log.write_all(&record).expect("log");
                log.sync_data().expect("sync log");
            }
            txn.commit().expect("commit");
            if (commits.len() as u64 + 1).is_multiple_of(a.redb_durable_every.max(1)) {
                durable_commits.push(t.elapsed());
            }
            commits.push(t.elapsed());
            next = end;
            progress("chat", next, started, &mut last);
        }
        let read = db.begin_read().expect("read");
        let totals = read.open_table(TOTALS).expect("table");
        chat_expected(a.chat).iter().filter(|(m, n)| totals.get(m.as_str()).expect("get").map(|v| v.value()) == Some(**n)).count() as u64
    });
    if a.redb_durable_every > 1 && !durable_commits.is_empty() {
        durable_commits.sort();
        let n = durable_commits.len();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!("  durable chat commits: {n}, p50 {:.1} ms, max {:.1} ms", ms(durable_commits[n / 2]), ms(durable_commits[n - 1]));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(f) = flusher {
        f.join().expect("flusher");
    }
    (oneoffs, chat)
}

fn fjall_run(a: &Args) -> (Phase, Phase) {
    use fjall::{KeyspaceCreateOptions, PersistMode, Readable, SingleWriterTxDatabase};
    let db = SingleWriterTxDatabase::builder(a.dir.join("store.fjall")).cache_size(a.cache_mib << 20).open().expect("open fjall");
    let part = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default).expect("keyspace");
    let (rooms, members, messages, msg_ids, inbox, totals, meta, campaigns) =
        (part("rooms"), part("members"), part("messages"), part("msg_ids"), part("inbox"), part("totals"), part("meta"), part("campaigns"));
    // Keys as the store's tuples order them: a string, a 0 byte, then the next part.
    let pair = |a: &str, b: &[u8]| -> Vec<u8> { [a.as_bytes(), &[0], b].concat() };
    let num = |v: &[u8]| u64::from_le_bytes(v[..8].try_into().expect("8 bytes"));
    let oneoffs = phase(|commits| {
        let (started, mut last) = (Instant::now(), Instant::now());
        let mut next = 0;
        while next < a.count {
            let end = (next + a.batch).min(a.count);
            let t = Instant::now();
            let mut tx = db.write_tx().durability(Some(PersistMode::SyncAll));
            for i in next..end {
                let r = rows(i);
                assert!(tx.get(&msg_ids, &r.msg_id).expect("get").is_none());
                let lo = pair(&r.room, &0u64.to_be_bytes());
                let hi = pair(&r.room, &u64::MAX.to_be_bytes());
                assert!(tx.range(&messages, lo..=hi).next_back().is_none());
                assert!(tx.get(&rooms, &r.room).expect("get").is_none());
                tx.insert(&messages, pair(&r.room, &1u64.to_be_bytes()), r.message.as_slice());
                tx.insert(&msg_ids, r.msg_id.as_str(), r.marker.as_slice());
                let ik = pair(&r.user, r.room.as_bytes());
                assert!(tx.get(&inbox, &ik).expect("get").is_none());
                tx.insert(&inbox, ik, r.inbox.as_slice());
                let total = tx.get(&totals, &r.user).expect("get").map_or(0, |v| num(&v));
                tx.insert(&totals, r.user.as_str(), (total + 1).to_le_bytes().as_slice());
            }
            tx.insert(&meta, "counters_version", end.to_le_bytes().as_slice());
            tx.insert(&campaigns, CAMPAIGN, end.to_le_bytes().as_slice());
            tx.commit().expect("commit");
            commits.push(t.elapsed());
            next = end;
            progress("one-offs", next, started, &mut last);
        }
        sample(a.count).filter(|i| totals.get(rows(*i).user).expect("get").map(|v| num(&v)) == Some(1)).count() as u64
    });
    let mut tx = db.write_tx().durability(Some(PersistMode::SyncAll));
    for r in 0..ROOMS_N {
        let room = format!("run1-r{r}");
        tx.insert(&rooms, room.as_str(), 0u64.to_le_bytes().as_slice());
        for m in chat_members(r) {
            tx.insert(&members, pair(&room, m.as_bytes()), 0u64.to_le_bytes().as_slice());
            tx.insert(&inbox, pair(&m, room.as_bytes()), [0u8; 8].as_slice());
        }
    }
    tx.commit().expect("commit");
    let chat = phase(|commits| {
        let (started, mut last) = (Instant::now(), Instant::now());
        let mut next = 0;
        while next < a.chat {
            let end = (next + a.chat_group).min(a.chat);
            let t = Instant::now();
            let mut tx = db.write_tx().durability(Some(PersistMode::SyncAll));
            for i in next..end {
                let (r, _) = chat_rows(i);
                assert!(tx.get(&msg_ids, &r.msg_id).expect("get").is_none());
                let seq = tx.get(&rooms, &r.room).expect("get").map(|v| num(&v)).expect("room") + 1;
                let prefix = pair(&r.room, b"");
                let list: Vec<String> = tx
                    .prefix(&members, &prefix)
                    .map(|g| String::from_utf8(g.key().expect("member")[prefix.len()..].to_vec()).expect("utf8"))
                    .collect();
                assert!(list.contains(&r.user));
                tx.insert(&rooms, r.room.as_str(), seq.to_le_bytes().as_slice());
                tx.insert(&messages, pair(&r.room, &seq.to_be_bytes()), r.message.as_slice());
                tx.insert(&msg_ids, r.msg_id.as_str(), r.marker.as_slice());
                for m in list.iter().filter(|m| **m != r.user) {
                    let ik = pair(m, r.room.as_bytes());
                    let row = tx.get(&inbox, &ik).expect("get").map(|v| v.to_vec()).expect("row");
                    let mut row = if row.len() >= r.inbox.len() { row } else { r.inbox.clone() };
                    row[0] = row[0].wrapping_add(1);
                    tx.insert(&inbox, ik, row.as_slice());
                    let total = tx.get(&totals, m).expect("get").map_or(0, |v| num(&v));
                    tx.insert(&totals, m.as_str(), (total + 1).to_le_bytes().as_slice());
                }
            }
            tx.insert(&meta, "counters_version", (a.count + end).to_le_bytes().as_slice());
            tx.commit().expect("commit");
            commits.push(t.elapsed());
            next = end;
            progress("chat", next, started, &mut last);
        }
        chat_expected(a.chat).iter().filter(|(m, n)| totals.get(m).expect("get").map(|v| num(&v)) == Some(**n)).count() as u64
    });
    (oneoffs, chat)
}

/// 200 one-offs spread over the run.
fn sample(count: u64) -> impl Iterator<Item = u64> {
    let step = (count / 200).max(1);
    (0..count).step_by(step as usize).take(200)
}

fn proc_io(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io");
    field_value(&s, field)
}

fn proc_status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    field_value(&s, field)
}

fn field_value(s: &str, field: &str) -> u64 {
    s.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

fn dir_size(p: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).expect("read dir").flatten() {
        let m = e.metadata().expect("metadata");
        n += if m.is_dir() { dir_size(&e.path()) } else { m.len() };
    }
    n
}
