//! The store's redo log: what makes a commit durable without redb's durable commit.
//!
//! A durable redb commit writes every B-tree page the transaction touched, and the branch
//! pages above them, and syncs the file: about 24 KB for a chat message in a room of five on
//! a grown store, 3.5 ms for a commit of 25 (see `docs/benchmarks/README.md`, "Storage
//! engines"). So the writer instead appends each transaction's row writes (the new value of
//! every row it inserted, the key of every row it removed) to this log, syncs the log, and
//! only then commits the transaction to redb with `Durability::None`: visible to readers at
//! once, on disk at the next checkpoint. A checkpoint is an ordinary commit made durable,
//! every [`super::StoreConfig::checkpoint_every`] (when set: by default every commit is
//! durable and the log stays empty), after which the log starts over. Between two
//! checkpoints the same leaf pages absorb many commits' writes, and redb frees the pages of
//! non-durable commits immediately, so the file takes a fraction of the writes; but the
//! checkpoint writes them all out while the writer waits.
//!
//! Each transaction takes the next log sequence number (LSN) and saves it in `meta` with its
//! rows, so the store's durable state says which records it already holds. Opening the store
//! replays the records above that LSN in order (the crash case), makes the result durable and
//! empties the log. A record is `len | lsn | checksum | rows`; a torn or corrupt tail (a
//! record whose append never finished syncing, so no caller was answered for it) ends the
//! replay.

use redb::{Key, ReadableTable, Table, TableDefinition, TableHandle, Value, WriteTransaction};
use std::borrow::Borrow;
use std::cell::RefCell;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// The key in `meta` of the LSN of the last record the store holds.
pub(super) const REDO_LSN: &str = "redo_lsn";

const PUT: u8 = 1;
const REMOVE: u8 = 2;
/// Bytes before a record's rows: its length, LSN and checksum.
const HEADER: usize = 4 + 8 + 8;

/// The row writes of one transaction so far, shared by its [`Logged`] tables; or, when the
/// log is off, nothing.
#[derive(Clone, Default)]
pub(super) struct Redo(Option<Rc<RefCell<Vec<u8>>>>);

impl Redo {
    /// Records rows when `on`.
    pub(super) fn new(on: bool) -> Self {
        Redo(on.then(Default::default))
    }

    fn push(&self, table: u8, key: &[u8], value: Option<&[u8]>) {
        let Some(b) = &self.0 else { return };
        let mut b = b.borrow_mut();
        b.push(table);
        b.push(if value.is_some() { PUT } else { REMOVE });
        b.extend_from_slice(&(key.len() as u32).to_le_bytes());
        b.extend_from_slice(key);
        if let Some(v) = value {
            b.extend_from_slice(&(v.len() as u32).to_le_bytes());
            b.extend_from_slice(v);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|b| RefCell::borrow(b).is_empty())
    }

    /// The rows written so far, leaving none.
    pub(super) fn take(&self) -> Vec<u8> {
        self.0.as_ref().map(|b| std::mem::take(&mut *b.borrow_mut())).unwrap_or_default()
    }
}

/// A table of a write transaction whose writes go to the transaction's [`Redo`] as well.
/// Reads go straight to the table (it derefs to it).
pub(super) struct Logged<'t, K: Key + 'static, V: Value + 'static> {
    table: Table<'t, K, V>,
    id: u8,
    redo: Redo,
}

impl<'t, K: Key + 'static, V: Value + 'static> Logged<'t, K, V> {
    /// Opens `def` (one of [`TABLES`]) in `txn`.
    pub(super) fn open(txn: &'t WriteTransaction, def: TableDefinition<K, V>, redo: &Redo) -> Result<Self, redb::Error> {
        let id = TABLES.iter().position(|t| *t == def.name()).expect("a logged table is listed in TABLES") as u8;
        Ok(Logged { table: txn.open_table(def)?, id, redo: redo.clone() })
    }

    pub(super) fn insert<'k, 'v>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
        value: impl Borrow<V::SelfType<'v>>,
    ) -> Result<Option<redb::AccessGuard<'_, V>>, redb::StorageError> {
        self.redo.push(self.id, K::as_bytes(key.borrow()).as_ref(), Some(V::as_bytes(value.borrow()).as_ref()));
        self.table.insert(key, value)
    }

    pub(super) fn remove<'k>(&mut self, key: impl Borrow<K::SelfType<'k>>) -> Result<Option<redb::AccessGuard<'_, V>>, redb::StorageError> {
        self.redo.push(self.id, K::as_bytes(key.borrow()).as_ref(), None);
        self.table.remove(key)
    }
}

impl<'t, K: Key + 'static, V: Value + 'static> std::ops::Deref for Logged<'t, K, V> {
    type Target = Table<'t, K, V>;

    fn deref(&self) -> &Self::Target {
        &self.table
    }
}

/// The tables a record names, by their position here. Append only: positions are on disk.
pub(super) const TABLES: [&str; 14] = [
    "rooms",
    "members",
    "messages",
    "msg_ids",
    "inbox",
    "totals",
    "campaigns",
    "campaign_recipients",
    "campaign_dead",
    "campaign_owners",
    "campaign_bodies",
    "meta",
    "outbox",
    "room_msg_ids",
];

/// The log file beside the store file `store`.
pub(super) fn path_of(store: &Path) -> PathBuf {
    let mut p = store.as_os_str().to_owned();
    p.push(".redo");
    PathBuf::from(p)
}

/// The file grows by this much at a time, written with zeros: a sync of records written
/// over blocks the file already has changes no metadata, so it writes only the records (on
/// a journaling file system a sync that changes metadata commits the journal, which waits
/// in turn for other files' dirty data, the store's pages). The log starts over at the
/// beginning, so a file keeps its largest size and is written in place.
const GROW_BY: u64 = 4 << 20;

/// The open log, written by the writer thread only.
pub(super) struct RedoLog {
    file: std::fs::File,
    /// Bytes of whole records since the log last started over.
    len: u64,
    /// Where the last record appended starts.
    last_at: u64,
    /// Bytes the file has (zeros past `len`, or records from before it started over).
    allocated: u64,
    /// The LSN of the last record appended (or held by the store).
    lsn: u64,
}

impl RedoLog {
    /// Opens the log at `path` empty; `lsn` is the last the store holds.
    pub(super) fn create(path: &Path, lsn: u64) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(path)?;
        file.sync_all()?;
        // The file's name must survive a crash as well as its records.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(RedoLog { file, len: 0, last_at: 0, allocated: 0, lsn })
    }

    /// The next LSN a record will take.
    pub(super) fn next_lsn(&self) -> u64 {
        self.lsn + 1
    }

    /// Bytes of records since the log last started over.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// Appends the record of [`Self::next_lsn`] and syncs it; once this returns, the
    /// transaction survives a crash. If the append fails, the record is not in the log.
    pub(super) fn append(&mut self, rows: &[u8]) -> std::io::Result<()> {
        let lsn = self.lsn + 1;
        let mut rec = Vec::with_capacity(HEADER + rows.len());
        rec.extend_from_slice(&(rows.len() as u32).to_le_bytes());
        rec.extend_from_slice(&lsn.to_le_bytes());
        rec.extend_from_slice(&checksum(lsn, rows).to_le_bytes());
        rec.extend_from_slice(rows);
        let end = self.len + rec.len() as u64;
        if end > self.allocated {
            self.grow(end)?;
        }
        if let Err(e) = self.write_at(self.len, &rec) {
            self.erase_at(self.len)?;
            return Err(e);
        }
        self.last_at = self.len;
        self.len = end;
        self.lsn = lsn;
        Ok(())
    }

    /// Zeros to past `end`, synced with the file's new size.
    fn grow(&mut self, end: u64) -> std::io::Result<()> {
        let to = end.div_ceil(GROW_BY) * GROW_BY;
        let zeros = vec![0u8; 1 << 20];
        self.file.seek(SeekFrom::Start(self.allocated))?;
        let mut at = self.allocated;
        while at < to {
            let n = (to - at).min(zeros.len() as u64) as usize;
            self.file.write_all(&zeros[..n])?;
            at += n as u64;
        }
        self.file.sync_all()?;
        self.allocated = to;
        Ok(())
    }

    fn write_at(&mut self, at: u64, bytes: &[u8]) -> std::io::Result<()> {
        self.file.seek(SeekFrom::Start(at))?;
        self.file.write_all(bytes)?;
        self.file.sync_data()
    }

    /// Makes the record at `at` unreadable (and so every one after it).
    fn erase_at(&mut self, at: u64) -> std::io::Result<()> {
        self.write_at(at, &[0; HEADER])
    }

    /// Counts the LSN a durable commit took without a record.
    pub(super) fn skip_lsn(&mut self) {
        self.lsn += 1;
    }

    /// Takes back the last record appended: its transaction did not commit, so a replay must
    /// not apply it before the ones committed after it.
    pub(super) fn undo_last(&mut self) -> std::io::Result<()> {
        self.erase_at(self.last_at)?;
        self.len = self.last_at;
        self.lsn -= 1;
        Ok(())
    }

    /// Starts the log over: everything in it is in the store's durable state. The old
    /// records stay until written over; a replay skips them (their LSNs are held) and stops
    /// where they follow newer ones (their LSNs do not follow).
    pub(super) fn reset(&mut self) {
        self.len = 0;
    }
}

fn checksum(lsn: u64, rows: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(rows, lsn)
}

/// The whole records in the log at `path` (none if it does not exist), in order: each its
/// LSN and rows. Reading stops at the first torn or corrupt record, or one whose LSN does
/// not follow the one before.
pub(super) fn read(path: &Path) -> std::io::Result<Vec<(u64, Vec<u8>)>> {
    let mut bytes = Vec::new();
    match std::fs::File::open(path) {
        Ok(mut f) => f.read_to_end(&mut bytes)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut records: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= HEADER {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let lsn = u64::from_le_bytes(bytes[at + 4..at + 12].try_into().expect("8 bytes"));
        let sum = u64::from_le_bytes(bytes[at + 12..at + 20].try_into().expect("8 bytes"));
        let Some(rows) = bytes.get(at + HEADER..at + HEADER + len) else { break };
        if lsn == 0 || checksum(lsn, rows) != sum || records.last().is_some_and(|(prev, _)| *prev + 1 != lsn) {
            break;
        }
        records.push((lsn, rows.to_vec()));
        at += HEADER + len;
    }
    Ok(records)
}

/// Applies one record's rows to `txn`.
pub(super) fn apply(txn: &WriteTransaction, mut rows: &[u8]) -> Result<(), redb::Error> {
    use super::records::*;
    let corrupt = || redb::Error::Corrupted("a redo record's rows do not parse".into());
    while !rows.is_empty() {
        let (&[table, op], rest) = rows.split_first_chunk::<2>().ok_or_else(corrupt)?;
        let (key, rest) = field(rest).ok_or_else(corrupt)?;
        let (value, rest) = match op {
            PUT => field(rest).map(|(v, r)| (Some(v), r)).ok_or_else(corrupt)?,
            REMOVE => (None, rest),
            _ => return Err(corrupt()),
        };
        rows = rest;
        match TABLES.get(table as usize).copied() {
            Some("rooms") => put(txn, ROOMS, key, value)?,
            Some("members") => put(txn, MEMBERS, key, value)?,
            Some("messages") => put(txn, MESSAGES, key, value)?,
            Some("msg_ids") => put(txn, MSG_IDS, key, value)?,
            Some("inbox") => put(txn, INBOX, key, value)?,
            Some("totals") => put(txn, TOTALS, key, value)?,
            Some("campaigns") => put(txn, CAMPAIGNS, key, value)?,
            Some("campaign_recipients") => put(txn, CAMPAIGN_RECIPIENTS, key, value)?,
            Some("campaign_dead") => put(txn, CAMPAIGN_DEAD, key, value)?,
            Some("campaign_owners") => put(txn, CAMPAIGN_OWNERS, key, value)?,
            Some("campaign_bodies") => put(txn, CAMPAIGN_BODIES, key, value)?,
            Some("meta") => put(txn, META, key, value)?,
            Some("outbox") => put(txn, crate::outbox::OUTBOX, key, value)?,
            Some("room_msg_ids") => put(txn, ROOM_MSG_IDS, key, value)?,
            _ => return Err(corrupt()),
        }
    }
    Ok(())
}

fn field(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = b.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    (rest.len() >= len).then(|| rest.split_at(len))
}

fn put<K: Key + 'static, V: Value + 'static>(
    txn: &WriteTransaction,
    def: TableDefinition<K, V>,
    key: &[u8],
    value: Option<&[u8]>,
) -> Result<(), redb::Error> {
    let mut t = txn.open_table(def)?;
    match value {
        Some(v) => drop(t.insert(K::from_bytes(key), V::from_bytes(v))?),
        None => drop(t.remove(K::from_bytes(key))?),
    }
    Ok(())
}

/// The LSN the store's state holds (0 for a store that never had a log).
pub(super) fn held_lsn(txn: &WriteTransaction) -> Result<u64, redb::Error> {
    Ok(txn.open_table(super::records::META)?.get(REDO_LSN)?.map_or(0, |v| v.value()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_of(records: &[&[u8]]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redo");
        let mut log = RedoLog::create(&path, 6).unwrap();
        for r in records {
            log.append(r).unwrap();
        }
        (dir, path)
    }

    #[test]
    fn records_read_back_in_order_with_their_lsns() {
        let (_dir, path) = log_of(&[b"one", b"", b"three"]);
        let got = read(&path).unwrap();
        assert_eq!(got, vec![(7, b"one".to_vec()), (8, Vec::new()), (9, b"three".to_vec())]);
    }

    #[test]
    fn reading_stops_at_a_corrupt_or_torn_record() {
        let (_dir, path) = log_of(&[b"one", b"two", b"three"]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER + 3 + HEADER] ^= 1; // the second record's first row byte
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(&path).unwrap(), vec![(7, b"one".to_vec())]);
        // Torn: the second record's last bytes never reached the disk (the zeros the file
        // was grown with are still there).
        let (_dir, path) = log_of(&[b"one", b"two"]);
        let mut bytes = std::fs::read(&path).unwrap();
        let end = 2 * HEADER + 6;
        bytes[end - 2..end].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(&path).unwrap(), vec![(7, b"one".to_vec())]);
    }

    #[test]
    fn an_undone_record_is_gone_and_its_lsn_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redo");
        let mut log = RedoLog::create(&path, 0).unwrap();
        log.append(b"kept").unwrap();
        log.append(b"failed").unwrap();
        log.undo_last().unwrap();
        log.append(b"next").unwrap();
        assert_eq!(read(&path).unwrap(), vec![(1, b"kept".to_vec()), (2, b"next".to_vec())]);
    }

    #[test]
    fn after_a_reset_the_old_records_beyond_the_new_ones_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redo");
        let mut log = RedoLog::create(&path, 0).unwrap();
        for r in [b"one".as_slice(), b"two", b"three"] {
            log.append(r).unwrap();
        }
        log.reset();
        log.skip_lsn();
        // Records of the same length: the old third follows the new ones whole.
        log.append(b"six").unwrap();
        log.append(b"ten").unwrap();
        assert_eq!(read(&path).unwrap(), vec![(5, b"six".to_vec()), (6, b"ten".to_vec())]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), GROW_BY, "written in place");
    }
}
