//! The redb database behind the layers, reopened in place after an I/O error.
//!
//! redb refuses every operation (reads too) once a write or sync of its file failed,
//! until the database is opened again. A full disk during a flush must not end reads or
//! stop writes for good, so the flusher (or, without the log, the writer) reopens it:
//! new readers wait on the slot's lock while the readers still holding the old database
//! finish, the old one is dropped, and the file is opened again, which rolls it back to
//! its last durable commit (the layers above still hold everything after that).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::fs::{RedbFile, StoreFile};
use crate::store::{StoreError, db_err};

/// The database, shared by readers, the writer and the flusher.
pub(crate) struct DbSlot {
    db: RwLock<Option<Arc<redb::Database>>>,
    file: Arc<dyn StoreFile>,
    cache_bytes: usize,
}

impl DbSlot {
    pub(crate) fn new(db: redb::Database, file: Arc<dyn StoreFile>, cache_bytes: usize) -> Self {
        DbSlot {
            db: RwLock::new(Some(Arc::new(db))),
            file,
            cache_bytes,
        }
    }

    /// The database; keep the handle for as long as a transaction of it is in use.
    pub(crate) fn get(&self) -> Result<Arc<redb::Database>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| StoreError::Io {
                what: "reopening the database file",
                source: Arc::new(std::io::Error::other(
                    "the database file could not be reopened",
                )),
            })
    }

    /// Drops the database once nobody else holds it, and opens its file again.
    pub(crate) fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = slot.take() {
            let mut old = old;
            // Readers that took it before the lock finish their short transactions.
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(still) => {
                        old = still;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
        let db = redb::Builder::new()
            .set_cache_size(self.cache_bytes)
            .create_with_backend(RedbFile(self.file.clone()))
            .map_err(db_err)?;
        *slot = Some(Arc::new(db));
        tracing::info!("store: reopened the database file after an I/O error");
        Ok(())
    }
}
