//! The files the store writes (its write-ahead log segments and the redb file), behind a
//! small trait, so that tests can cut the power under them.
//!
//! Production uses [`RealFs`]: a `std::fs::File` with `pread`/`pwrite`/`fdatasync`, one
//! dynamic call per operation in front of a system call (the bench's durable rows
//! measured the same before and after, see BENCHMARKS.md). Tests use
//! [`sim::SimFs`], which keeps what was written but not yet synced apart from what is
//! durable, and whose power cut drops the unsynced part: each unsynced write whole,
//! torn at any byte or not at all, in any order between two syncs, and a file whose
//! directory entry was never synced may vanish. redb's file goes through the same trait
//! ([`RedbFile`], its `StorageBackend`), so the cuts reach it too.
//!
//! # Every sync, and the test that fails without it
//!
//! Each sync the store makes goes through [`sync`] with a name. In test builds the
//! environment variable `AICORE_SKIP_SYNC=<name>` turns that one sync into a no-op (in
//! other builds the check is compiled out); `scripts/sync-mutations.sh` removes each in
//! turn and shows the test that then fails. The list (the script reads it from here):
//!
//! <!-- syncs -->
//! | name | where | tests that fail without it |
//! |---|---|---|
//! | `wal-record` | the syncer's `fdatasync` of a log segment before answering callers | `durable::crash_tests::acknowledged_writes_survive_power_cuts`, `durable::crash_tests::a_new_store_survives_a_power_cut`, `wal::tests::a_synced_record_survives_a_power_cut_and_an_unsynced_one_may_not` |
//! | `redb` | redb's own `fdatasync` (its durable commits: recovery, checkpoints, the log key, every batch without the log) | `durable::crash_tests::acknowledged_writes_survive_power_cuts`, `durable::crash_tests::a_new_store_survives_a_power_cut` |
//! | `dir-create` | directory sync after the store's files are created | `durable::crash_tests::acknowledged_writes_survive_power_cuts`, `durable::crash_tests::a_new_store_survives_a_power_cut` |
//! | `wal-grow` | `fdatasync` after a segment grows by zero-filled chunks | none, by design: not a durability sync (a record's `fdatasync` makes the length it needs durable); it keeps those syncs from writing metadata |
//! | `wal-shrink` | `fdatasync` after an outsized segment is cut back | none, by design: it makes the freed space durable; what lies past the cut is checkpointed |
//! | `reopen-probe` | `fdatasync` of the current log segment before the log is opened again after a failed sync | none, by design: it only asks whether the disk answers before anything is dropped |
//! <!-- /syncs -->

use std::fmt::Debug;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

#[cfg(test)]
pub(crate) mod sim;

/// One file of the store.
pub(crate) trait StoreFile: Send + Sync + Debug {
    /// The file's length.
    fn len(&self) -> io::Result<u64>;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset` (not durable until a sync).
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Grows (zero-filled) or cuts the file (not durable until a sync).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes what was written durable (`fdatasync`; the length too when it changed).
    fn sync_data(&self) -> io::Result<()>;
    /// Starts writing dirty pages back without a device flush (paced write-back of
    /// redb's file); durability is unchanged, so the simulation does nothing here.
    fn write_back(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Where the store's files live: opening them, and the directory operations that count
/// for durability.
pub(crate) trait StoreFs: Send + Sync + Debug {
    /// Opens `path` for reading and writing, creating it (mode `0600`) if needed.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn StoreFile>>;
    /// Opens `path` as [`StoreFs::open`] does, failing if another process has it open
    /// this way (the database file: one store per file).
    fn open_exclusive(&self, path: &Path) -> io::Result<Arc<dyn StoreFile>> {
        self.open(path)
    }
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> bool;
    /// Removes `path` (durable after [`StoreFs::sync_dir`]).
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (files created or removed in it) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// Runs the sync named `name` (one of the table above). In test builds,
/// `AICORE_SKIP_SYNC=<name>` skips it, for the mutation check.
#[inline]
pub(crate) fn sync(name: &'static str, f: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    #[cfg(test)]
    if std::env::var("AICORE_SKIP_SYNC").is_ok_and(|s| s == name) {
        return Ok(());
    }
    let _ = name;
    f()
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RealFs;

/// A real file.
#[derive(Debug)]
pub(crate) struct RealFile(std::fs::File);

impl RealFile {
    /// Takes an exclusive advisory lock on the file for as long as it is open (redb
    /// does this for its own file backend, which the store replaces with [`RedbFile`]):
    /// a second process opening the same store fails instead of corrupting it.
    pub(crate) fn lock(&self, path: &Path) -> io::Result<()> {
        self.0.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is open in another process", path.display()),
            ),
            std::fs::TryLockError::Error(e) => e,
        })
    }
}

/// Opens `path` for reading and writing, creating it if needed, readable by this user
/// only. A new file is created `0600` by `open(2)` itself, so there is no moment at which
/// another user could open it; an existing file more open than that (written by an older
/// version, or under a permissive umask) is narrowed to its owner's bits through the
/// open descriptor before anything is read from it or written to it. A descriptor
/// someone else opened earlier is not revoked by that: the warning says so.
pub(crate) fn open_private(path: &Path) -> io::Result<std::fs::File> {
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

impl RealFs {
    /// Opens `path` as [`StoreFs::open`] does, keeping the concrete type (for locking).
    pub(crate) fn open_real(&self, path: &Path) -> io::Result<Arc<RealFile>> {
        Ok(Arc::new(RealFile(open_private(path)?)))
    }
}

impl StoreFs for RealFs {
    fn open(&self, path: &Path) -> io::Result<Arc<dyn StoreFile>> {
        Ok(self.open_real(path)?)
    }

    fn open_exclusive(&self, path: &Path) -> io::Result<Arc<dyn StoreFile>> {
        let file = self.open_real(path)?;
        file.lock(path)?;
        Ok(file)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}

impl StoreFile for RealFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    /// Writes the file's dirty pages back to the device a chunk at a time, waiting for
    /// each (no device cache flush: the log's syncs get the device between chunks).
    fn write_back(&self) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            const CHUNK: u64 = 1 << 20;
            let len = self.len()?;
            let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER;
            let mut at = 0;
            while at < len {
                let n = CHUNK.min(len - at);
                // SAFETY: a plain syscall on an open descriptor with in-range offsets.
                let r = unsafe {
                    libc::sync_file_range(
                        self.0.as_raw_fd(),
                        at as libc::off64_t,
                        n as libc::off64_t,
                        flags,
                    )
                };
                if r != 0 {
                    return Err(io::Error::last_os_error());
                }
                at += n;
            }
        }
        Ok(())
    }
}

/// redb's file, through the store's file trait: its writes and syncs meet the same
/// power cuts and injected faults as the log's in tests.
#[derive(Debug)]
pub(crate) struct RedbFile(pub Arc<dyn StoreFile>);

impl redb::StorageBackend for RedbFile {
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.0.read_at(out, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        sync("redb", || self.0.sync_data())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write_at(data, offset)
    }
}

/// Whether an I/O error means the disk (or the user's quota) is full.
pub(crate) fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || e.raw_os_error() == Some(libc::ENOSPC)
}
