//! A segment of the store's write-ahead log (see [`crate::durable`] for how the store
//! uses two of them): each group-commit batch's writes appended as one checksummed
//! record, made durable by the syncer's one `fdatasync` for every record written since
//! the previous one.
//!
//! Record layout (little endian), each record starting at a multiple of 8 bytes:
//! `len: u32 | crc: u32 | seq: u64 | epoch: u64 | synced: u64 | body | zero padding`,
//! where `crc` is a CRC-32 of the store's log key (a random number kept in redb, so a
//! value someone stored cannot pass for a record) and of everything after it but the
//! padding; body = ops, each `kind: u8 (1 put, 2 delete) | table_len: u16 | table |
//! key_len: u32 | key | [value_len: u32 | value]`.
//!
//! - `epoch` is the sequence number of the first record written since the segment was
//!   last reused from its start: a segment is written from offset 0 again once what it
//!   held is in redb (checkpointed), over its older records, and the records of an
//!   older use (another epoch, and numbers the checkpoint covers) are never read as
//!   this one's. Recovery also moves the checkpoint past every number it found, applied
//!   or dropped, so no number is ever written twice.
//! - `synced` is the highest sequence number known durable when the record was written:
//!   after a power cut, a record missing or damaged *before* a record whose `synced`
//!   covers it was acknowledged and is lost (corruption, refused loudly), while one
//!   missing before records written in the same unsynced window is the normal torn
//!   tail of a crash (cut away silently).
//!
//! The file grows in zero-filled chunks (so an append never changes the file's size
//! and `fdatasync` flushes only the data) and is reused.
//!
//! The segments, like the redb file, hold every write in the clear (password and token
//! hashes, ledgers), so both are opened through [`crate::fs::open_private`]: mode `0600`
//! whatever the umask or the directory's mode.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::fs::{StoreFile, StoreFs, sync};

/// One write of a logged batch: a put (`Some` value) or a delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Op {
    pub table: String,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// A record read back.
#[derive(Debug, Clone)]
pub(crate) struct Logged {
    pub seq: u64,
    /// The highest sequence number durable when it was written.
    pub synced: u64,
    /// Where it starts in its segment.
    pub offset: u64,
    pub ops: Vec<Op>,
}

/// What reading a segment found.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// The segment's file.
    pub path: PathBuf,
    /// The whole records of its latest use, in the order found: first the run from
    /// offset 0 (consecutive numbers), then any of the same use found after the place
    /// where that run broke (a record missing or damaged before them).
    pub records: Vec<Logged>,
    /// Where the run from offset 0 ended.
    pub run_end: u64,
}

pub(crate) const HEADER: usize = 32;
const CHUNK: u64 = 1 << 20;
const ALIGN: u64 = 8;

/// Appends a put or delete to a batch body being built.
pub(crate) fn encode_op(body: &mut Vec<u8>, table: &str, key: &[u8], value: Option<&[u8]>) {
    body.push(if value.is_some() { 1 } else { 2 });
    body.extend_from_slice(&(table.len() as u16).to_le_bytes());
    body.extend_from_slice(table.as_bytes());
    body.extend_from_slice(&(key.len() as u32).to_le_bytes());
    body.extend_from_slice(key);
    if let Some(v) = value {
        body.extend_from_slice(&(v.len() as u32).to_le_bytes());
        body.extend_from_slice(v);
    }
}

/// Decodes a record body; `None` if it is not a well-formed list of ops.
pub(crate) fn decode_ops(mut body: &[u8]) -> Option<Vec<Op>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Some(head)
    }
    fn len32(b: &mut &[u8]) -> Option<usize> {
        Some(u32::from_le_bytes(take(b, 4)?.try_into().ok()?) as usize)
    }
    let mut ops = Vec::new();
    while !body.is_empty() {
        let kind = take(&mut body, 1)?[0];
        let tlen = u16::from_le_bytes(take(&mut body, 2)?.try_into().ok()?) as usize;
        let table = std::str::from_utf8(take(&mut body, tlen)?).ok()?.to_owned();
        let klen = len32(&mut body)?;
        let key = take(&mut body, klen)?.to_vec();
        let value = match kind {
            1 => {
                let vlen = len32(&mut body)?;
                Some(take(&mut body, vlen)?.to_vec())
            }
            2 => None,
            _ => return None,
        };
        ops.push(Op { table, key, value });
    }
    Some(ops)
}

fn checksum(key: u64, head: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&key.to_le_bytes());
    h.update(head);
    h.update(body);
    h.finalize()
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

/// A whole, well-formed record at `pos` of `data`: it and where the next one starts.
fn record_at(data: &[u8], pos: u64, key: u64) -> Option<(Logged, u64, u64)> {
    let at = usize::try_from(pos).ok()?;
    let header = data.get(at..at.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let (seq, epoch, synced) = (u64_at(header, 8), u64_at(header, 16), u64_at(header, 24));
    if seq == 0 || epoch == 0 || epoch > seq || synced >= seq {
        return None;
    }
    let body = data.get(at + HEADER..(at + HEADER).checked_add(len)?)?;
    let mut head = [0u8; HEADER - 4];
    head[..4].copy_from_slice(&header[0..4]);
    head[4..].copy_from_slice(&header[8..]);
    if checksum(key, &head, body) != crc {
        return None;
    }
    let ops = decode_ops(body)?;
    let next = (pos + (HEADER + len) as u64).div_ceil(ALIGN) * ALIGN;
    let logged = Logged {
        seq,
        synced,
        offset: pos,
        ops,
    };
    Some((logged, epoch, next))
}

/// Reads a segment's records (see [`Scan`]).
pub(crate) fn scan(data: &[u8], key: u64) -> (Vec<Logged>, u64) {
    let mut records = Vec::new();
    let mut pos = 0u64;
    let mut run: Option<(u64, u64)> = None; // (epoch, last seq)
    while let Some((r, epoch, next)) = record_at(data, pos, key) {
        if run.is_some_and(|(e, last)| e != epoch || r.seq != last + 1) {
            break;
        }
        run = Some((epoch, r.seq));
        records.push(r);
        pos = next;
    }
    let run_end = pos;
    // Past the break, records of the same use: only they can tell a damaged record
    // (acknowledged, then lost) from a torn tail. A record of this use whose offset 0
    // itself is torn is found too: its epoch is the number the torn one would have had.
    let mut at = run_end + ALIGN;
    while at + HEADER as u64 <= data.len() as u64 {
        match record_at(data, at, key) {
            Some((r, epoch, next)) if run.is_none_or(|(e, last)| e == epoch && r.seq > last) => {
                run = Some((epoch, r.seq));
                records.push(r);
                at = next;
            }
            _ => at += ALIGN,
        }
    }
    (records, run_end)
}

/// The log file: where the next record goes and how much of the file is allocated.
pub(crate) struct Wal {
    /// Shared with the thread that syncs it while the next records are written.
    file: Arc<dyn StoreFile>,
    /// Offset of the next record; 0 right after a checkpoint.
    pos: u64,
    /// Bytes of the file allocated (zero-filled) so far.
    allocated: u64,
    /// The number of the first record since the segment was last reused.
    epoch: u64,
    /// The log key: part of every record's checksum.
    key: u64,
}

impl Wal {
    /// Opens (creating if needed) the log segment at `path` and reads its records (see
    /// [`Scan`]). The caller keeps those newer than its checkpoint; the segment is then
    /// written from its start.
    pub(crate) fn open(fs: &dyn StoreFs, path: &Path, key: u64) -> io::Result<(Wal, Scan)> {
        let file = fs.open(path)?;
        let allocated = file.len()?;
        let mut data = vec![0u8; allocated as usize];
        file.read_at(&mut data, 0)?;
        let (records, run_end) = scan(&data, key);
        let wal = Wal {
            file,
            pos: 0,
            allocated,
            epoch: 0,
            key,
        };
        let scan = Scan {
            path: path.to_path_buf(),
            records,
            run_end,
        };
        Ok((wal, scan))
    }

    /// Bytes appended since the last checkpoint.
    pub(crate) fn pending(&self) -> u64 {
        self.pos
    }

    /// Makes room for `need` more bytes at the end, zero-filled, so that the append
    /// itself changes only data. An error here leaves the log as it was.
    fn reserve(&mut self, need: u64) -> io::Result<()> {
        if self.pos + need <= self.allocated {
            return Ok(());
        }
        let target = (self.pos + need).div_ceil(CHUNK) * CHUNK;
        let zeros = vec![0u8; CHUNK as usize];
        let mut at = self.allocated;
        while at < target {
            let n = (target - at).min(CHUNK);
            self.file.write_at(&zeros[..n as usize], at)?;
            at += n;
        }
        // Not needed for durability (a record's `fdatasync` makes the length it needs
        // durable too); it keeps those syncs from having to write the file's metadata.
        sync("wal-grow", || self.file.sync_data())?;
        self.allocated = target;
        Ok(())
    }

    /// Appends record `seq` holding `body` (from [`encode_op`]) and waits until it is on
    /// disk. On `Err(Reserve)` nothing was written; on `Err(Append)` the record may or
    /// may not have reached the disk.
    #[cfg(test)]
    pub(crate) fn append(&mut self, seq: u64, body: &[u8]) -> Result<(), AppendError> {
        self.write(seq, seq - 1, body)?;
        sync("wal-record", || self.file.sync_data()).map_err(AppendError::Append)
    }

    /// Writes record `seq` holding `body` (from [`encode_op`]) after the previous one,
    /// without waiting for the disk: it is durable once [`Wal::file`] has been synced
    /// after this returns. `synced` is the highest number durable so far. On
    /// `Err(Reserve)` nothing was written; on `Err(Append)` part of the record may have
    /// been.
    pub(crate) fn write(&mut self, seq: u64, synced: u64, body: &[u8]) -> Result<(), AppendError> {
        if self.pos == 0 {
            self.epoch = seq;
        }
        let padded = (HEADER + body.len()).div_ceil(ALIGN as usize) * ALIGN as usize;
        let mut record = Vec::with_capacity(padded);
        record.extend_from_slice(&(body.len() as u32).to_le_bytes());
        record.extend_from_slice(&[0; 4]);
        record.extend_from_slice(&seq.to_le_bytes());
        record.extend_from_slice(&self.epoch.to_le_bytes());
        record.extend_from_slice(&synced.to_le_bytes());
        let mut head = [0u8; HEADER - 4];
        head[..4].copy_from_slice(&record[0..4]);
        head[4..].copy_from_slice(&record[8..HEADER]);
        let crc = checksum(self.key, &head, body);
        record[4..8].copy_from_slice(&crc.to_le_bytes());
        record.extend_from_slice(body);
        record.resize(padded, 0);
        self.reserve(record.len() as u64)
            .map_err(AppendError::Reserve)?;
        self.file
            .write_at(&record, self.pos)
            .map_err(AppendError::Append)?;
        self.pos += record.len() as u64;
        Ok(())
    }

    /// Grows the segment by one chunk: after a refused write, whether the log can be
    /// written again (the space is back, the disk answers).
    pub(crate) fn probe(&mut self) -> io::Result<()> {
        self.reserve(self.allocated - self.pos + 1)
    }

    /// The segment's file, for syncing what was written.
    pub(crate) fn file(&self) -> &Arc<dyn StoreFile> {
        &self.file
    }

    /// Once everything this segment holds is durable elsewhere: the next record starts
    /// the file again (a new epoch). A file grown past `keep` bytes by an outsized batch
    /// is cut back (to whole chunks), so one large batch does not hold its disk space
    /// for good.
    pub(crate) fn reset(&mut self, keep: u64) {
        self.pos = 0;
        let keep = keep.div_ceil(CHUNK).max(1) * CHUNK;
        if self.allocated > keep {
            // The sync is for the space only: records past the cut are checkpointed,
            // so the file growing back after a crash would bring back nothing.
            match self
                .file
                .set_len(keep)
                .and_then(|()| sync("wal-shrink", || self.file.sync_data()))
            {
                Ok(()) => self.allocated = keep,
                Err(e) => tracing::warn!(error = %e, "could not shrink a log segment"),
            }
        }
    }

    /// Bytes of the file allocated so far.
    #[cfg(test)]
    pub(crate) fn allocated(&self) -> u64 {
        self.allocated
    }
}

/// Why an append failed.
#[derive(Debug)]
pub(crate) enum AppendError {
    /// Growing the file failed; nothing of the record was written.
    Reserve(io::Error),
    /// Writing the record failed; part of it may be in the file.
    Append(io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::RealFs;
    use crate::fs::sim::SimFs;

    type TestOp<'a> = (&'a str, &'a [u8], Option<&'a [u8]>);
    const KEY: u64 = 0x5eed;

    fn body(ops: &[TestOp<'_>]) -> Vec<u8> {
        let mut b = Vec::new();
        for (t, k, v) in ops {
            encode_op(&mut b, t, k, *v);
        }
        b
    }

    fn seqs(scan: &Scan) -> Vec<u64> {
        scan.records.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.wal");
        let (mut wal, old) = Wal::open(&RealFs, &path, KEY).unwrap();
        assert!(old.records.is_empty());
        wal.append(1, &body(&[("t", b"a", Some(b"1")), ("t", b"b", None)]))
            .unwrap();
        wal.append(2, &body(&[("u", b"", Some(b""))])).unwrap();
        drop(wal);
        let (_, got) = Wal::open(&RealFs, &path, KEY).unwrap();
        assert_eq!(seqs(&got), vec![1, 2]);
        assert_eq!(
            got.records[0].ops,
            vec![
                Op {
                    table: "t".into(),
                    key: b"a".to_vec(),
                    value: Some(b"1".to_vec())
                },
                Op {
                    table: "t".into(),
                    key: b"b".to_vec(),
                    value: None
                },
            ]
        );
        assert_eq!(got.records[1].synced, 1);
        // Another store's key reads nothing: its records do not pass the checksum.
        let (_, other) = Wal::open(&RealFs, &path, KEY + 1).unwrap();
        assert!(other.records.is_empty());
    }

    #[test]
    fn a_reused_segment_reads_only_its_latest_use() {
        let fs = SimFs::new();
        let path = Path::new("/s/x.wal");
        let (mut wal, _) = Wal::open(&*fs, path, KEY).unwrap();
        for seq in 1..=5 {
            wal.append(seq, &body(&[("t", b"k", Some(&[seq as u8; 100]))]))
                .unwrap();
        }
        // Reused from its start with two shorter records (numbers 11 and 12): records
        // 3..5 of the old use stay on disk after them and are not read as this use's.
        wal.reset(1 << 20);
        wal.append(11, &body(&[("t", b"k", None)])).unwrap();
        wal.append(12, &body(&[("t", b"j", None)])).unwrap();
        let (_, got) = Wal::open(&*fs, path, KEY).unwrap();
        assert_eq!(seqs(&got), vec![11, 12]);
        assert_eq!(got.run_end, 2 * (HEADER as u64 + 8 + 8));
    }

    #[test]
    fn a_damaged_record_is_told_from_a_torn_tail_by_what_follows() {
        let fs = SimFs::new();
        let path = Path::new("/s/x.wal");
        let (mut wal, _) = Wal::open(&*fs, path, KEY).unwrap();
        let b = body(&[("t", b"k", Some(b"value"))]);
        for seq in 1..=3 {
            wal.append(seq, &b).unwrap();
        }
        let size = (HEADER + b.len()).div_ceil(8) as u64 * 8;
        // Flip a byte in record 2's body: the run ends there, and record 3 (written
        // after 2 was durable) is found past the break, for recovery to judge.
        fs.damage(path, size + HEADER as u64 + 3, &[0xff]);
        let (_, got) = Wal::open(&*fs, path, KEY).unwrap();
        assert_eq!(seqs(&got), vec![1, 3]);
        assert_eq!(got.run_end, size);
        assert_eq!(got.records[1].synced, 2);
        // A length running past the file's end ends the run at 0; what follows is
        // still found.
        fs.damage(path, 0, &u32::MAX.to_le_bytes());
        let (_, got) = Wal::open(&*fs, path, KEY).unwrap();
        assert_eq!(got.run_end, 0);
        assert_eq!(seqs(&got), vec![3]);
    }

    #[test]
    fn an_outsized_segment_is_cut_back_on_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.wal");
        let (mut wal, _) = Wal::open(&RealFs, &path, KEY).unwrap();
        let big = vec![7u8; 3 << 20];
        wal.append(1, &body(&[("t", b"k", Some(&big))])).unwrap();
        assert_eq!(wal.allocated(), 4 << 20);
        wal.reset(1 << 20);
        assert_eq!(wal.allocated(), 1 << 20);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
        // Still usable, and what is appended after the cut reads back.
        wal.append(2, &body(&[("t", b"k", None)])).unwrap();
        drop(wal);
        let (_, got) = Wal::open(&RealFs, &path, KEY).unwrap();
        assert_eq!(seqs(&got), vec![2]);
    }

    #[test]
    fn a_synced_record_survives_a_power_cut_and_an_unsynced_one_may_not() {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
        let path = Path::new("/s/x.wal");
        let b = body(&[("t", b"k", Some(b"v"))]);
        let mut lost = 0;
        for _ in 0..50 {
            let fs = SimFs::new();
            let (mut wal, _) = Wal::open(&*fs, path, KEY).unwrap();
            fs.sync_dir(Path::new("/s")).unwrap();
            wal.append(1, &b).unwrap();
            wal.write(2, 1, &b).unwrap();
            let after = fs.cut(&mut rng);
            let (_, got) = Wal::open(&*after, path, KEY).unwrap();
            assert_eq!(got.records[0].seq, 1);
            lost += usize::from(got.records.len() == 1);
        }
        assert!(
            lost > 0,
            "an unsynced record always survived: the cut keeps too much"
        );
    }

    #[test]
    fn malformed_bodies_are_rejected() {
        assert_eq!(decode_ops(&[]), Some(vec![]));
        assert_eq!(decode_ops(&[3, 0, 0, 0, 0, 0, 0]), None);
        let mut b = body(&[("t", b"k", Some(b"v"))]);
        b.pop();
        assert_eq!(decode_ops(&b), None);
    }
}
