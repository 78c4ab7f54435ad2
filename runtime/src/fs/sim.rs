//! A file system that can lose power, for tests.
//!
//! Each file keeps its durable bytes apart from the writes (and length changes) made
//! since its last sync. [`SimFs::cut`] is the power cut: it returns the file system a
//! reboot would find, where each unsynced write of each file survived whole, torn at a
//! random byte, or not at all, independently of the others (the OS may write dirty pages
//! back in any order between two syncs), and a file created or removed since its
//! directory was last synced may or may not be there. The file system that lost power
//! refuses everything afterwards, so the threads of a store still running on it change
//! nothing. Faults can be injected: a full disk (anything that grows a file fails with
//! `ENOSPC`) and a failing disk (writes and syncs fail with `EIO`).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rand::Rng;

use super::{StoreFile, StoreFs};

/// An injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Growing a file fails with `ENOSPC`.
    Full,
    /// Writes and syncs fail with `EIO`.
    Eio,
    /// Syncs of the log segments (`*.wal*`) fail with `EIO` and, as Linux does
    /// (fsyncgate), what they should have made durable is dropped: the running system
    /// still reads it, a power cut loses it.
    LogSyncEio,
}

#[derive(Debug, Default)]
struct Power {
    off: AtomicBool,
    fault: Mutex<Option<Fault>>,
}

impl Power {
    fn check(&self) -> io::Result<()> {
        if self.off.load(Ordering::SeqCst) {
            return Err(io::Error::other("simulated power cut: the disk is gone"));
        }
        Ok(())
    }

    fn fault(&self) -> Option<Fault> {
        *self.fault.lock().unwrap()
    }
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

#[derive(Debug, Clone)]
enum Change {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

fn apply(data: &mut Vec<u8>, change: &Change) {
    match change {
        Change::Write(at, bytes) => {
            let end = *at as usize + bytes.len();
            if data.len() < end {
                data.resize(end, 0);
            }
            data[*at as usize..end].copy_from_slice(bytes);
        }
        Change::SetLen(len) => data.resize(*len as usize, 0),
    }
}

#[derive(Debug, Default, Clone)]
struct Contents {
    durable: Vec<u8>,
    current: Vec<u8>,
    unsynced: Vec<Change>,
}

impl Contents {
    /// What a power cut leaves of this file.
    fn after_cut(&self, rng: &mut impl Rng) -> Vec<u8> {
        let mut data = self.durable.clone();
        for change in &self.unsynced {
            match (change, rng.random_range(0..3)) {
                (_, 0) => {}
                (Change::Write(at, bytes), 2) if !bytes.is_empty() => {
                    let torn = rng.random_range(0..bytes.len());
                    apply(&mut data, &Change::Write(*at, bytes[..torn].to_vec()));
                }
                (c, _) => apply(&mut data, c),
            }
        }
        data
    }
}

/// A simulated file.
#[derive(Debug)]
pub(crate) struct SimFile {
    power: Arc<Power>,
    /// A log segment (what [`Fault::LogSyncEio`] reaches).
    log: bool,
    contents: Mutex<Contents>,
}

impl SimFile {
    fn change(&self, change: Change) -> io::Result<()> {
        // Checked under the file's lock, which a cut takes after turning the power off:
        // a change either is in the cut's image or fails.
        let mut c = self.contents.lock().unwrap();
        self.power.check()?;
        let grows = match &change {
            Change::Write(at, b) => *at as usize + b.len() > c.current.len(),
            Change::SetLen(len) => *len as usize > c.current.len(),
        };
        match self.power.fault() {
            Some(Fault::Eio) => return Err(eio()),
            Some(Fault::Full) if grows => return Err(enospc()),
            _ => {}
        }
        apply(&mut c.current, &change);
        c.unsynced.push(change);
        Ok(())
    }
}

impl StoreFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        self.power.check()?;
        Ok(self.contents.lock().unwrap().current.len() as u64)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.power.check()?;
        let c = self.contents.lock().unwrap();
        let end = offset as usize + buf.len();
        if end > c.current.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.copy_from_slice(&c.current[offset as usize..end]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.change(Change::Write(offset, buf.to_vec()))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.change(Change::SetLen(len))
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut c = self.contents.lock().unwrap();
        self.power.check()?;
        match self.power.fault() {
            Some(Fault::Eio) => return Err(eio()),
            Some(Fault::LogSyncEio) if self.log => {
                c.unsynced.clear();
                return Err(eio());
            }
            _ => {}
        }
        let changes = std::mem::take(&mut c.unsynced);
        for change in &changes {
            apply(&mut c.durable, change);
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Dir {
    /// Files as the running system sees them.
    files: BTreeMap<PathBuf, Arc<SimFile>>,
    /// Names whose directory entry is durable.
    durable: BTreeSet<PathBuf>,
    /// Files removed since their directory was last synced (a cut may bring them back).
    removed: BTreeMap<PathBuf, Arc<SimFile>>,
}

/// A simulated file system that can lose power.
#[derive(Debug, Default)]
pub(crate) struct SimFs {
    power: Arc<Power>,
    dir: Mutex<Dir>,
}

impl SimFs {
    pub(crate) fn new() -> Arc<SimFs> {
        Arc::new(SimFs::default())
    }

    /// Cuts the power: this file system refuses everything from now on, and the one
    /// returned is what a reboot finds (see the module's documentation).
    pub(crate) fn cut(&self, rng: &mut impl Rng) -> Arc<SimFs> {
        let dir = self.dir.lock().unwrap();
        self.power.off.store(true, Ordering::SeqCst);
        let after = SimFs::new();
        let mut next = after.dir.lock().unwrap();
        let candidates = dir.files.iter().chain(
            dir.removed
                .iter()
                .filter(|(p, _)| !dir.files.contains_key(*p)),
        );
        for (path, file) in candidates {
            let named_now = dir.files.contains_key(path);
            let survives = if dir.durable.contains(path) == named_now {
                named_now
            } else {
                // Created or removed since the directory's last sync: either way.
                rng.random_bool(0.5)
            };
            if !survives {
                continue;
            }
            let data = file.contents.lock().unwrap().after_cut(rng);
            next.durable.insert(path.clone());
            next.files.insert(
                path.clone(),
                Arc::new(SimFile {
                    power: after.power.clone(),
                    log: file.log,
                    contents: Mutex::new(Contents {
                        durable: data.clone(),
                        current: data,
                        unsynced: Vec::new(),
                    }),
                }),
            );
        }
        drop(next);
        after
    }

    /// Injects a fault (or clears it with `None`).
    pub(crate) fn set_fault(&self, fault: Option<Fault>) {
        *self.power.fault.lock().unwrap() = fault;
    }

    /// Overwrites bytes of a file durably, as a failing disk might (tests of recovery).
    pub(crate) fn damage(&self, path: &Path, at: u64, bytes: &[u8]) {
        let dir = self.dir.lock().unwrap();
        let f = &dir.files[path];
        let mut c = f.contents.lock().unwrap();
        let change = Change::Write(at, bytes.to_vec());
        apply(&mut c.current, &change);
        apply(&mut c.durable, &change);
    }
}

impl StoreFs for SimFs {
    fn open(&self, path: &Path) -> io::Result<Arc<dyn StoreFile>> {
        self.power.check()?;
        let mut dir = self.dir.lock().unwrap();
        if let Some(f) = dir.files.get(path) {
            return Ok(f.clone());
        }
        if self.power.fault().is_some() {
            return Err(enospc());
        }
        let f = Arc::new(SimFile {
            power: self.power.clone(),
            log: path
                .extension()
                .is_some_and(|e| e.to_string_lossy().starts_with("wal")),
            contents: Mutex::default(),
        });
        dir.files.insert(path.to_path_buf(), f.clone());
        Ok(f)
    }

    fn exists(&self, path: &Path) -> bool {
        self.dir.lock().unwrap().files.contains_key(path)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.power.check()?;
        let mut dir = self.dir.lock().unwrap();
        let f = dir
            .files
            .remove(path)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        dir.removed.insert(path.to_path_buf(), f);
        Ok(())
    }

    fn sync_dir(&self, dir_path: &Path) -> io::Result<()> {
        self.power.check()?;
        let mut dir = self.dir.lock().unwrap();
        let in_dir = |p: &Path| p.parent() == Some(dir_path);
        let dir = &mut *dir;
        dir.removed.retain(|p, _| !in_dir(p));
        dir.durable.retain(|p| !in_dir(p));
        for p in dir.files.keys().filter(|p| in_dir(p)) {
            dir.durable.insert(p.clone());
        }
        Ok(())
    }
}
