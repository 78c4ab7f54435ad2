//! The files and directories the appliance writes, private to its user whatever the
//! umask and whatever the mode of the directory they land in. The data directory holds
//! the store (password and token hashes, ledgers), its write-ahead log, the CA's keys and
//! the nats-server configuration; an operator's pre-existing `0755` directory or a
//! permissive umask must not make any of them readable by other users.
//!
//! Two rules, both stated here once: a directory the appliance creates is `0700`, and a
//! file it replaces (keys, certificates, the certificate index, the generated
//! nats-server configuration, the runtime file) is written through a temporary file
//! with a random name in the same directory, opened `O_CREAT|O_EXCL|O_NOFOLLOW` with
//! mode `0600` (so a link planted there is never followed and the file is never readable
//! by anyone else, not even for a moment), synced, then renamed over the target; a
//! symbolic link at the target is refused rather than replaced. The store's own files
//! (redb and its write-ahead log) are opened `0600` by the domains crate itself
//! (`open_private` in `runtime/src/fs.rs`). Existing directories keep their mode (an operator chose it); [`shared_mode`]
//! lets `aicore run` and `aicore status` say when the data directory is open to others.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Creates `dir` and its missing parents, each `0700`. An existing directory keeps its
/// mode (an operator may have chosen one, as systemd's `StateDirectoryMode` does).
///
/// The parent of each directory created is synced: a new directory's entry is not
/// durable until its parent is, and the store's files inside it (synced themselves, and
/// their own directory after they are created) would vanish with it after a power cut,
/// with every write acknowledged through them.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let created: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    // Outermost first: each entry made durable in a parent whose own entry already is.
    for d in created.iter().rev() {
        let parent = d
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::File::open(parent)
            .and_then(|f| f.sync_all())
            .with_context(|| {
                format!(
                    "syncing {} after creating {}",
                    parent.display(),
                    d.display()
                )
            })?;
    }
    Ok(())
}

/// Writes `contents` to `path` atomically, mode `0600`: through a randomly named
/// temporary file created exclusively (never through a link) in `path`'s directory,
/// synced before it is renamed over `path`, and the directory synced after, so a crash
/// leaves the old file or the new one. Refuses when `path` is a symbolic link.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?
        .to_string_lossy();
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        bail!(
            "refusing to write {}: it is a symbolic link (remove it to have the file written there)",
            path.display()
        );
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .make_in(dir, |p| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(p)
        })
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let written = tmp
        .as_file_mut()
        .write_all(contents)
        .and_then(|()| tmp.as_file().sync_all());
    written.with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming into {}", path.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// The mode of `dir` when group or others may read, write or enter it (else `None`).
pub fn shared_mode(dir: &Path) -> Option<u32> {
    let mode = std::fs::metadata(dir).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

/// What `aicore run` logs and `aicore status` prints when the data directory is open to
/// other users.
pub fn shared_warning(dir: &Path, mode: u32) -> String {
    format!(
        "the data directory {} is mode {mode:04o}: other users may reach what it holds \
         (run `chmod 700 {}`; the files aicore writes there are 0600 regardless)",
        dir.display(),
        dir.display()
    )
}

/// What the modes tests here and in [`crate::certs`] share.
#[cfg(test)]
pub(crate) mod testing {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    /// The permission bits of `p` itself (a link's own, not its target's).
    pub(crate) fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// A temporary directory an operator made world-readable.
    pub(crate) fn open_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::testing::{mode, open_dir};
    use super::*;

    #[test]
    fn a_new_dir_is_private_and_an_existing_one_is_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b/data");
        create_private_dir(&dir).unwrap();
        for d in [root.path().join("a"), root.path().join("a/b"), dir] {
            assert_eq!(mode(&d), 0o700, "{}", d.display());
            assert_eq!(shared_mode(&d), None);
        }
        let open = open_dir();
        create_private_dir(open.path()).unwrap();
        assert_eq!(mode(open.path()), 0o755);
        assert_eq!(shared_mode(open.path()), Some(0o755));
    }

    #[test]
    fn written_files_are_private_in_an_open_directory_and_replace_atomically() {
        let dir = open_dir();
        let path = dir.path().join("index.json");
        write_private(&path, b"one").unwrap();
        assert_eq!(mode(&path), 0o600);
        // An existing, more open file is replaced by a private one.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"two").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["index.json"]);
    }

    #[test]
    fn a_symlink_at_the_target_is_refused_and_its_target_untouched() {
        let dir = open_dir();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let path = dir.path().join("arena.key");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let err = write_private(&path, b"secret").unwrap_err();
        assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
}

/// The data directory's file system for `/metrics`: free and total bytes (the store,
/// its log and JetStream all live there, and a full disk makes the store read-only).
pub struct DiskMetrics {
    dir: PathBuf,
}

impl DiskMetrics {
    /// The file system holding `dir`.
    pub fn new(dir: PathBuf) -> Self {
        DiskMetrics { dir }
    }

    /// (available to us, total) bytes.
    fn space(&self) -> std::io::Result<(u64, u64)> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.dir.as_os_str().as_bytes())
            .map_err(std::io::Error::other)?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated path and a buffer of the right type, both ours.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let frsize = st.f_frsize as u64;
        Ok((st.f_bavail as u64 * frsize, st.f_blocks as u64 * frsize))
    }
}

impl aicore_runtime::metrics::Collect for DiskMetrics {
    fn collect(&self, out: &mut aicore_runtime::metrics::Exposition) {
        use aicore_runtime::metrics::Kind;
        match self.space() {
            Ok((free, total)) => {
                out.scalar(
                    "aicore_data_dir_free_bytes",
                    Kind::Gauge,
                    "Bytes available on the data directory's file system.",
                    free,
                );
                out.scalar(
                    "aicore_data_dir_size_bytes",
                    Kind::Gauge,
                    "Size of the data directory's file system.",
                    total,
                );
            }
            Err(e) => tracing::debug!(error = %e, "data directory's file system not read"),
        }
    }
}
