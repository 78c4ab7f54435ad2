//! The store's errors, keeping their cause: a full disk, an I/O error and corruption
//! are different answers to a caller and different lines in the log, so they are told
//! apart where they arise (an `io::Error`'s code, redb's error kind) and mapped to the
//! protocol's status once, here.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use aicore_proto::{Code, Status};

/// Errors of the store itself (not of a domain's logic). Cheap to clone: one failed
/// commit answers every caller of its batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The disk (or the user's quota) is full: writes are refused until space is freed,
    /// and resume on their own then; reads keep working.
    #[error("the store's disk is full ({what})")]
    DiskFull {
        /// What was being done.
        what: &'static str,
        /// The error from the file system.
        #[source]
        source: Arc<io::Error>,
    },
    /// The file system failed a read, write or sync.
    #[error("storage I/O error ({what})")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error from the file system.
        #[source]
        source: Arc<io::Error>,
    },
    /// The store's files hold something they cannot: a damaged record in the middle of
    /// the log, or a corrupt database page. Never repaired silently.
    #[error("the store is corrupt: {0}")]
    Corrupt(#[from] Corruption),
    /// redb refused for another reason (a bug, a value over its limits, the file open
    /// in another process).
    #[error("database error")]
    Db(#[source] Arc<redb::Error>),
    /// Writes are stopped after a failure whose outcome is unknown (a failed log sync);
    /// the store tries again on its own (see `crate::durable`).
    #[error("writes are stopped after a storage failure")]
    Stopped(#[source] Box<StoreError>),
    /// The store is closing and takes no more writes.
    #[error("the store is shutting down")]
    Closed,
}

/// Corruption found in one of the store's files.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}{}: {what}", offset.map(|o| format!(" at offset {o}")).unwrap_or_default())]
pub struct Corruption {
    /// The file.
    pub file: PathBuf,
    /// Where in it, when known.
    pub offset: Option<u64>,
    /// What is wrong.
    pub what: String,
}

impl StoreError {
    /// An I/O error while doing `what`, told apart by its cause.
    pub(crate) fn io(what: &'static str, e: io::Error) -> StoreError {
        let source = Arc::new(e);
        if crate::fs::is_disk_full(&source) {
            StoreError::DiskFull { what, source }
        } else {
            StoreError::Io { what, source }
        }
    }

    /// The error with its chain of causes, for messages.
    pub fn chain(&self) -> String {
        chain(self)
    }

    /// Whether the disk being full is the cause (directly or of a stop).
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::DiskFull { .. } => true,
            StoreError::Stopped(e) => e.is_disk_full(),
            _ => false,
        }
    }
}

/// A redb error, told apart by its cause.
pub(crate) fn db_err<E: Into<redb::Error>>(e: E) -> StoreError {
    match e.into() {
        redb::Error::Io(e) => StoreError::io("database file", e),
        redb::Error::Corrupted(what) => StoreError::Corrupt(Corruption {
            file: PathBuf::from("the database file"),
            offset: None,
            what,
        }),
        redb::Error::PreviousIo => StoreError::Io {
            what: "database file, after an earlier I/O error",
            source: Arc::new(io::Error::other("redb refuses after an earlier I/O error")),
        },
        other => StoreError::Db(Arc::new(other)),
    }
}

/// The full chain of causes, for logs.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

impl From<StoreError> for Status {
    /// The one mapping of store errors to the protocol: a full disk is
    /// ResourceExhausted (a caller may retry later), an I/O error Unavailable,
    /// corruption and anything else Internal with a loud log.
    fn from(e: StoreError) -> Status {
        let root = match &e {
            StoreError::Stopped(inner) => &**inner,
            other => other,
        };
        match root {
            StoreError::DiskFull { .. } => {
                tracing::warn!(error = %chain(&e), "store: write refused, the disk is full");
                Status::new(
                    Code::ResourceExhausted,
                    "the store's disk is full: writes are refused until space is freed (reads still work)",
                )
            }
            StoreError::Io { .. } => {
                tracing::error!(error = %chain(&e), "store: I/O error");
                Status::new(
                    Code::Unavailable,
                    "the store cannot write (I/O error); reads still work",
                )
            }
            StoreError::Corrupt(_) => {
                tracing::error!(error = %chain(&e), "STORE CORRUPTION: run `aicore store check`");
                Status::new(Code::Internal, "storage failure")
            }
            StoreError::Closed => Status::new(Code::Unavailable, "the store is shutting down"),
            StoreError::Db(_) | StoreError::Stopped(_) => {
                tracing::error!(error = %chain(&e), "storage failure");
                Status::new(Code::Internal, "storage failure")
            }
        }
    }
}
