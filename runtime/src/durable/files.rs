//! The store's files: the log segments' paths, redb's own table (checkpoint, log key),
//! applying writes and layers to redb, opening the files and recovering from the log,
//! and `aicore store check` / `repair`.

use super::*;

pub(super) fn wal_paths(path: &Path) -> Vec<PathBuf> {
    let name = path
        .file_name()
        .map_or_else(|| "store".to_string(), |n| n.to_string_lossy().into_owned());
    (0..2)
        .map(|i| path.with_file_name(format!("{name}.wal{i}")))
        .collect()
}

pub(super) fn write_checkpoint(txn: &redb::WriteTransaction, seq: u64) -> Result<(), StoreError> {
    let mut t = txn.open_table(def(META)).map_err(db_err)?;
    t.insert(CHECKPOINT, &seq.to_le_bytes()[..])
        .map_err(db_err)?;
    Ok(())
}

/// The checkpoint and the log key (created, durably, with a new store).
pub(super) fn read_meta(database: &redb::Database) -> Result<(u64, u64), StoreError> {
    let get = |t: &redb::ReadOnlyTable<&'static [u8], &'static [u8]>, k: &[u8]| {
        t.get(k)
            .map_err(db_err)
            .map(|v| v.and_then(|v| v.value().try_into().ok().map(u64::from_le_bytes)))
    };
    let txn = database.begin_read().map_err(db_err)?;
    let found = match txn.open_table(def(META)) {
        Ok(t) => (get(&t, CHECKPOINT)?, get(&t, LOG_KEY)?),
        Err(redb::TableError::TableDoesNotExist(_)) => (None, None),
        Err(e) => return Err(db_err(e)),
    };
    drop(txn);
    if let (checkpoint, Some(key)) = found {
        return Ok((checkpoint.unwrap_or(0), key));
    }
    let key = rand::random::<u64>() | 1;
    let mut txn = database.begin_write().map_err(db_err)?;
    txn.set_durability(Durability::Immediate).map_err(db_err)?;
    {
        let mut t = txn.open_table(def(META)).map_err(db_err)?;
        t.insert(LOG_KEY, &key.to_le_bytes()[..]).map_err(db_err)?;
    }
    txn.commit().map_err(db_err)?;
    Ok((found.0.unwrap_or(0), key))
}

/// Applies writes to a redb write transaction, opening each table once.
pub(super) fn apply<'n>(
    txn: &redb::WriteTransaction,
    writes: impl Iterator<Item = (&'n str, &'n [u8], Option<&'n [u8]>)>,
) -> Result<(), StoreError> {
    let mut open: HashMap<&'n str, Table<'_>> = HashMap::new();
    for (table, key, value) in writes {
        let t = match open.entry(table) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(txn.open_table(def(table)).map_err(db_err)?)
            }
        };
        match value {
            Some(v) => t.insert(key, v).map(|_| ()),
            None => t.remove(key).map(|_| ()),
        }
        .map_err(db_err)?;
    }
    Ok(())
}

/// A layer's writes, for [`apply`].
pub(super) fn layer_writes(layer: &Layer) -> impl Iterator<Item = (&str, &[u8], Option<&[u8]>)> {
    layer.iter().map(|(t, k, v)| (t, k, v.map(|v| v.as_ref())))
}

/// Commits `layer` to redb durably with `seq` as the checkpoint.
///
/// With `file` (the database file, opened for its page cache), in three steps: a
/// non-durable commit puts the pages into the page cache; they are written back a chunk
/// at a time ([`StoreFile::write_back`]); an empty durable commit then makes it all durable, its
/// `fsync` finding little left to write. One durable commit would hand the device all of
/// a flush's pages at once, and every log sync meanwhile (a device cache flush) waited
/// behind them: 24–38 ms syncs and 50–60 ms p99 in the payment row at C=128.
/// A crash before the durable commit leaves redb at the previous checkpoint, and the log
/// still holds everything after it.
pub(super) fn commit_layer(
    db: &redb::Database,
    layer: &Layer,
    seq: u64,
    file: Option<&dyn StoreFile>,
    before_durable: impl FnOnce(),
) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(db_err)?;
    let staged = file.is_some();
    txn.set_durability(if staged {
        Durability::None
    } else {
        Durability::Immediate
    })
    .map_err(db_err)?;
    apply(&txn, layer_writes(layer))?;
    write_checkpoint(&txn, seq)?;
    txn.commit().map_err(db_err)?;
    let Some(file) = file else { return Ok(()) };
    if let Err(e) = file.write_back() {
        tracing::debug!(error = %e, "store: paced write-back failed; the durable commit writes all");
    }
    before_durable();
    let mut txn = db.begin_write().map_err(db_err)?;
    txn.set_durability(Durability::Immediate).map_err(db_err)?;
    txn.commit().map_err(db_err)
}

/// The store's files opened, the log read and recovery planned, nothing applied yet.
pub(crate) struct Opened {
    pub(super) db: redb::Database,
    pub(super) file: Arc<dyn StoreFile>,
    pub(super) wals: Vec<Wal>,
    pub(super) paths: Vec<PathBuf>,
    /// What to do with the log.
    pub plan: Plan,
}

/// Opens the database file and the log segments (syncing their directory when one was
/// created), reads the checkpoint and the log, and plans recovery (see
/// [`recovery`]); with `repair`, damage in the log is planned around instead of
/// refused.
pub(crate) fn open_files(
    fs: &dyn StoreFs,
    path: &Path,
    options: &StoreOptions,
    repair: bool,
) -> Result<Opened, StoreError> {
    let paths = wal_paths(path);
    let use_log = options.wal || paths.iter().any(|p| fs.exists(p));
    let created = !fs.exists(path) || (use_log && paths.iter().any(|p| !fs.exists(p)));
    let file = fs
        .open_exclusive(path)
        .map_err(|e| StoreError::io("opening the database file", e))?;
    let db = redb::Builder::new()
        .set_cache_size(options.redb_cache_bytes)
        .create_with_backend(RedbFile(file.clone()))
        .map_err(db_err)?;
    let (checkpoint, key) = read_meta(&db)?;
    let mut wals = Vec::new();
    let mut scans = Vec::new();
    if use_log {
        for p in &paths {
            let (w, scan) = Wal::open(fs, p, key)
                .map_err(|e| StoreError::io("reading the write-ahead log", e))?;
            wals.push(w);
            scans.push(scan);
        }
    }
    if created && let Some(dir) = path.parent() {
        // A file whose directory entry is not durable may be gone after a power cut,
        // with every write acknowledged through it.
        sync("dir-create", || fs.sync_dir(dir))
            .map_err(|e| StoreError::io("syncing the store's directory", e))?;
    }
    let plan = recovery::plan(scans, checkpoint, repair)?;
    Ok(Opened {
        db,
        file,
        wals,
        paths,
        plan,
    })
}

impl Opened {
    /// Applies the planned log records over the checkpoint in one durable commit, and
    /// records the new checkpoint (past every number found). Returns the new checkpoint.
    pub(crate) fn recover(&self) -> Result<u64, StoreError> {
        let plan = &self.plan;
        if plan.checkpoint > read_meta(&self.db)?.0 {
            let mut txn = self.db.begin_write().map_err(db_err)?;
            txn.set_durability(Durability::Immediate).map_err(db_err)?;
            apply(
                &txn,
                plan.apply.iter().flat_map(|r| {
                    r.ops
                        .iter()
                        .map(|o| (o.table.as_str(), o.key.as_slice(), o.value.as_deref()))
                }),
            )?;
            write_checkpoint(&txn, plan.checkpoint)?;
            txn.commit().map_err(db_err)?;
        }
        if !plan.apply.is_empty() || !plan.torn.is_empty() {
            tracing::info!(
                applied = plan.apply.len(),
                torn = plan.torn.len(),
                checkpoint = plan.checkpoint,
                "store: applied the write-ahead log's batches newer than the checkpoint; \
                 cut away a crash's torn tail (never acknowledged)"
            );
        }
        if let Some(damage) = &plan.damage {
            tracing::error!(
                %damage,
                lost = ?plan.lost,
                "store: REPAIRED the write-ahead log: acknowledged batches were dropped"
            );
        }
        Ok(plan.checkpoint)
    }
}

/// What `aicore store check` or `aicore store repair` found in a store's files.
#[derive(Debug)]
pub struct CheckReport {
    /// redb's checkpoint before (the last batch flushed into it).
    pub checkpoint: u64,
    /// Logged batches newer than it that opening applies (or, repairing, applied).
    pub to_apply: usize,
    /// Batches cut away as a crash's torn tail (never acknowledged).
    pub torn: Vec<u64>,
    /// Damage that loses acknowledged batches: the store refuses to open until
    /// repaired. Repairing drops the batches `lost` lists.
    pub damage: Option<Corruption>,
    /// Batches the damage makes unusable (dropped by a repair).
    pub lost: Vec<u64>,
    /// Whether this was a repair (the files were changed).
    pub repaired: bool,
}

/// Checks the store at `path` (it must not be open elsewhere): reads the log and plans
/// recovery without changing anything but what opening redb itself repairs. With
/// `repair`, applies what provably precedes any damage and moves the checkpoint past
/// the rest, which is then never read again.
pub fn check(path: &Path, repair: bool) -> Result<CheckReport, StoreError> {
    let options = StoreOptions::default();
    let opened = open_files(&crate::fs::RealFs, path, &options, true)?;
    let checkpoint = read_meta(&opened.db)?.0;
    let plan = &opened.plan;
    let mut report = CheckReport {
        checkpoint,
        to_apply: plan.apply.len(),
        torn: plan.torn.clone(),
        damage: plan.damage.clone(),
        lost: plan.lost.clone(),
        repaired: false,
    };
    if repair {
        opened.recover()?;
        report.repaired = true;
    }
    Ok(report)
}
