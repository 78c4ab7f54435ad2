//! A segment of the store's write-ahead log (see [`crate::durable`] for how the store
//! uses two of them): each group-commit batch's writes appended as one checksummed
//! record, made durable with one `fdatasync`.
//!
//! Record layout (little endian): `len: u32 | crc32(seq ‖ body): u32 | seq: u64 | body`,
//! body = ops, each `kind: u8 (1 put, 2 delete) | table_len: u16 | table | key_len: u32
//! | key | [value_len: u32 | value]`. A segment is written from offset 0 again once what
//! it held is durable in redb, over its older records; reading a segment takes the
//! records from offset 0 while each is whole, its checksum holds and its sequence number
//! is the one after the previous, so a torn tail or a record of an older round ends the
//! run. The file grows in zero-filled chunks (so an append never changes the file's size
//! and `fdatasync` flushes only the data) and is reused.
//!
//! The segments, like the redb file, hold every write in the clear (password and token
//! hashes, ledgers), so both are opened through [`open_private`]: mode `0600` whatever the
//! umask or the directory's mode.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

/// Opens `path` for reading and writing, creating it if needed, readable by this user
/// only. A new file is created `0600` by `open(2)` itself, so there is no moment at which
/// another user could open it; an existing file more open than that (written by an older
/// version, or under a permissive umask) is narrowed to its owner's bits through the
/// open descriptor before anything is read from it or written to it. A descriptor
/// someone else opened earlier is not revoked by that: the warning says so.
pub(crate) fn open_private(path: &Path) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    let mode = file.metadata()?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o700))?;
        tracing::warn!(
            path = %path.display(),
            was = format!("{mode:04o}"),
            "store: narrowed a store file to its owner; other users could read it until now"
        );
    }
    Ok(file)
}

/// One write of a logged batch: a put (`Some` value) or a delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Op {
    pub table: String,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// A record read back: its sequence number and ops.
pub(crate) type Record = (u64, Vec<Op>);

const HEADER: usize = 16;
const CHUNK: u64 = 1 << 20;

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

fn checksum(seq: u64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(body);
    h.finalize()
}

/// The log file: where the next record goes and how much of the file is allocated.
pub(crate) struct Wal {
    /// Shared with the thread that syncs it while the next records are written.
    file: Arc<File>,
    /// Offset of the next record; 0 right after a checkpoint.
    pos: u64,
    /// Bytes of the file allocated (zero-filled) so far.
    allocated: u64,
}

impl Wal {
    /// Opens (creating if needed) the log segment at `path` and returns the run of
    /// records at its start: whole, checksummed, numbered one after the other. The caller
    /// keeps those newer than its checkpoint; the segment is then written from its start.
    pub(crate) fn open(path: &Path) -> io::Result<(Wal, Vec<Record>)> {
        let file = open_private(path)?;
        let allocated = file.metadata()?.len();
        let mut records = Vec::new();
        let mut pos = 0u64;
        let mut expected = None;
        let mut header = [0u8; HEADER];
        while pos + HEADER as u64 <= allocated {
            file.read_exact_at(&mut header, pos)?;
            let len = u32::from_le_bytes(header[0..4].try_into().unwrap()) as u64;
            let crc = u32::from_le_bytes(header[4..8].try_into().unwrap());
            let seq = u64::from_le_bytes(header[8..16].try_into().unwrap());
            if seq == 0
                || expected.is_some_and(|e| e != seq)
                || pos + HEADER as u64 + len > allocated
            {
                break;
            }
            let mut body = vec![0u8; len as usize];
            file.read_exact_at(&mut body, pos + HEADER as u64)?;
            if checksum(seq, &body) != crc {
                break;
            }
            let Some(ops) = decode_ops(&body) else { break };
            records.push((seq, ops));
            pos += HEADER as u64 + len;
            expected = Some(seq + 1);
        }
        Ok((
            Wal {
                file: Arc::new(file),
                pos: 0,
                allocated,
            },
            records,
        ))
    }

    /// Bytes appended since the last checkpoint.
    pub(crate) fn pending(&self) -> u64 {
        self.pos
    }

    /// Makes room for `need` more bytes at the end, zero-filled and durable, so that the
    /// append itself changes only data. An error here leaves the log as it was.
    fn reserve(&mut self, need: u64) -> io::Result<()> {
        if self.pos + need <= self.allocated {
            return Ok(());
        }
        let target = (self.pos + need).div_ceil(CHUNK) * CHUNK;
        let zeros = vec![0u8; CHUNK as usize];
        let mut at = self.allocated;
        while at < target {
            let n = (target - at).min(CHUNK);
            self.file.write_all_at(&zeros[..n as usize], at)?;
            at += n;
        }
        self.file.sync_all()?;
        self.allocated = target;
        Ok(())
    }

    /// Appends record `seq` holding `body` (from [`encode_op`]) and waits until it is on
    /// disk. On `Err(Reserve)` nothing was written; on `Err(Append)` the record may or
    /// may not have reached the disk.
    #[cfg(test)]
    pub(crate) fn append(&mut self, seq: u64, body: &[u8]) -> Result<(), AppendError> {
        self.write(seq, body)?;
        self.file.sync_data().map_err(AppendError::Append)
    }

    /// Writes record `seq` holding `body` (from [`encode_op`]) after the previous one,
    /// without waiting for the disk: it is durable once [`Wal::file`] has been synced
    /// after this returns. On `Err(Reserve)` nothing was written; on `Err(Append)` part
    /// of the record may have been.
    pub(crate) fn write(&mut self, seq: u64, body: &[u8]) -> Result<(), AppendError> {
        let mut record = Vec::with_capacity(HEADER + body.len());
        record.extend_from_slice(&(body.len() as u32).to_le_bytes());
        record.extend_from_slice(&checksum(seq, body).to_le_bytes());
        record.extend_from_slice(&seq.to_le_bytes());
        record.extend_from_slice(body);
        self.reserve(record.len() as u64)
            .map_err(AppendError::Reserve)?;
        self.file
            .write_all_at(&record, self.pos)
            .map_err(AppendError::Append)?;
        self.pos += record.len() as u64;
        Ok(())
    }

    /// The segment's file, for syncing what was written.
    pub(crate) fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Once everything this segment holds is durable elsewhere: the next record starts
    /// the file again. A file grown past `keep` bytes by an outsized batch is cut back
    /// (to whole chunks), so one large batch does not hold its disk space for good.
    pub(crate) fn reset(&mut self, keep: u64) {
        self.pos = 0;
        let keep = keep.div_ceil(CHUNK).max(1) * CHUNK;
        if self.allocated > keep {
            match self.file.set_len(keep).and_then(|()| self.file.sync_all()) {
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
    /// Writing or syncing the record failed; whether it is on disk is unknown.
    Append(io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestOp<'a> = (&'a str, &'a [u8], Option<&'a [u8]>);

    fn body(ops: &[TestOp<'_>]) -> Vec<u8> {
        let mut b = Vec::new();
        for (t, k, v) in ops {
            encode_op(&mut b, t, k, *v);
        }
        b
    }

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.wal");
        let (mut wal, old) = Wal::open(&path).unwrap();
        assert!(old.is_empty());
        wal.append(1, &body(&[("t", b"a", Some(b"1")), ("t", b"b", None)]))
            .unwrap();
        wal.append(2, &body(&[("u", b"", Some(b""))])).unwrap();
        drop(wal);
        let (_, got) = Wal::open(&path).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0].1,
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
        assert_eq!(got[1].0, 2);
    }

    #[test]
    fn a_reset_log_overwrites_older_records_and_ignores_their_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.wal");
        let (mut wal, _) = Wal::open(&path).unwrap();
        for seq in 1..=5 {
            wal.append(seq, &body(&[("t", b"k", Some(&[seq as u8; 100]))]))
                .unwrap();
        }
        // Reused from its start with two shorter records (numbers 11 and 12): records
        // 3..5 of the old round stay on disk after them and must not be read.
        wal.reset(1 << 20);
        wal.append(11, &body(&[("t", b"k", None)])).unwrap();
        wal.append(12, &body(&[("t", b"j", None)])).unwrap();
        drop(wal);
        let (_, got) = Wal::open(&path).unwrap();
        assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), vec![11, 12]);
    }

    #[test]
    fn a_torn_or_corrupt_record_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.wal");
        let (mut wal, _) = Wal::open(&path).unwrap();
        let b = body(&[("t", b"k", Some(b"value"))]);
        wal.append(1, &b).unwrap();
        wal.append(2, &b).unwrap();
        wal.append(3, &b).unwrap();
        drop(wal);
        // Flip a byte in record 2's body: 1 survives, 2 and 3 do not.
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let second = (HEADER + b.len() + HEADER + 3) as u64;
        file.write_all_at(&[0xff], second).unwrap();
        let (_, got) = Wal::open(&path).unwrap();
        assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1]);
        // A length running past the file's end is a torn record too.
        file.write_all_at(&u32::MAX.to_le_bytes(), 0).unwrap();
        assert!(Wal::open(&path).unwrap().1.is_empty());
    }

    #[test]
    fn an_outsized_segment_is_cut_back_on_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.wal");
        let (mut wal, _) = Wal::open(&path).unwrap();
        let big = vec![7u8; 3 << 20];
        wal.append(1, &body(&[("t", b"k", Some(&big))])).unwrap();
        assert_eq!(wal.allocated(), 4 << 20);
        wal.reset(1 << 20);
        assert_eq!(wal.allocated(), 1 << 20);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
        // Still usable, and what is appended after the cut reads back.
        wal.append(2, &body(&[("t", b"k", None)])).unwrap();
        drop(wal);
        let (_, got) = Wal::open(&path).unwrap();
        assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), vec![2]);
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
