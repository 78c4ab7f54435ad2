//! `<data-dir>/aicore.runtime.json`: where the `aicore run` that owns a data directory can
//! be reached right now. The configuration says where an appliance *would* listen; ports
//! picked at start (`--nats-port 0`) or given on the command line are known only to the
//! running process, so without this file `aicore status --data-dir D` dialled the
//! default port and missed an appliance on any other.
//!
//! `aicore run` writes it (mode 0600, atomically, through [`crate::files`]) once every
//! domain serves and the gateway listens, and removes it when it exits through its
//! teardown. The client commands (`status`, `call`, `certs`) read it; their explicit
//! flags still win. A file whose process is gone (after SIGKILL or a power cut) is
//! ignored: the pid must be alive and, where `/proc` tells, have started when the file
//! says, so a pid reused by another process does not count.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The file's name inside the data directory.
pub const FILE_NAME: &str = "aicore.runtime.json";

/// What a running appliance publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runtime {
    /// The `aicore run` process.
    pub pid: u32,
    /// When that process started, in clock ticks after boot (`/proc/<pid>/stat`), to
    /// tell it from a later process that got the same pid; absent where unknown.
    pub pid_start: Option<u64>,
    /// When the appliance became ready, in seconds since the Unix epoch.
    pub started_at: u64,
    /// Where clients reach its NATS (its child, or the server it joined).
    pub nats_url: String,
    /// Whether that NATS is this appliance's own child requiring certificates of this
    /// data directory's CA (false with `--insecure-dev` or `nats.url`).
    pub nats_mtls: bool,
    /// Its HTTP gateway, when enabled.
    pub http_url: Option<String>,
    /// Its nats-server child's monitoring endpoint, when it runs one.
    pub monitor_url: Option<String>,
}

/// The runtime file of `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// The runtime file while it is published: removed when dropped, which the supervisor
/// does at the end of its teardown (also when it fails or panics after start).
pub struct Published {
    path: PathBuf,
}

impl Published {
    /// Writes `runtime` as `data_dir`'s runtime file.
    pub fn write(data_dir: &Path, runtime: &Runtime) -> Result<Published> {
        let path = path(data_dir);
        crate::files::write_private(&path, &serde_json::to_vec_pretty(runtime)?)?;
        Ok(Published { path })
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the runtime file");
        }
    }
}

impl Runtime {
    /// This process, ready now.
    pub fn of_this_process(
        nats_url: String,
        nats_mtls: bool,
        http_url: Option<String>,
        monitor_url: Option<String>,
    ) -> Runtime {
        let pid = std::process::id();
        Runtime {
            pid,
            pid_start: process_start(pid),
            started_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            nats_url,
            nats_mtls,
            http_url,
            monitor_url,
        }
    }

    /// Whether the process it names still runs (a zombie does not).
    fn alive(&self) -> bool {
        let Ok(pid) = i32::try_from(self.pid) else {
            return false;
        };
        // SAFETY: kill(2) with signal 0 only checks that the process exists.
        let exists = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        exists
            && match proc_stat(self.pid) {
                Some((state, start)) => {
                    !matches!(state, 'Z' | 'X') && self.pid_start.is_none_or(|s| s == start)
                }
                None => true,
            }
    }
}

/// The running appliance of `data_dir`, if its runtime file names a live process.
/// `Ok(None)` when there is no file or it is stale; an error when it cannot be read.
pub fn read(data_dir: &Path) -> Result<Option<Runtime>> {
    let path = path(data_dir);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let runtime: Runtime = serde_json::from_slice(&text).with_context(|| {
        format!(
            "{} is not a runtime file of this version (remove it, or pass --nats-url)",
            path.display()
        )
    })?;
    Ok(runtime.alive().then_some(runtime))
}

/// Process `pid`'s state letter and start time (clock ticks after boot): fields 3 and
/// 22 of `/proc/<pid>/stat`, counted after the parenthesised command name (which may
/// contain spaces). `None` where there is no `/proc`.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state (field 3), starttime is field 22: 18 fields further.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// When process `pid` started (see [`proc_stat`]).
fn process_start(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|(_, start)| start)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn sample() -> Runtime {
        Runtime::of_this_process(
            "nats://127.0.0.1:14222".into(),
            true,
            Some("http://127.0.0.1:18080".into()),
            Some("http://127.0.0.1:18222".into()),
        )
    }

    #[test]
    fn published_while_held_private_and_gone_after() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let rt = sample();
        assert!(rt.pid_start.is_some(), "this test runs where /proc exists");
        let published = Published::write(dir.path(), &rt).unwrap();
        let mode = std::fs::metadata(path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read(dir.path()).unwrap(), Some(rt));
        drop(published);
        assert!(!path(dir.path()).exists());
        assert_eq!(read(dir.path()).unwrap(), None);
    }

    #[test]
    fn a_file_whose_process_is_gone_or_was_replaced_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        // A process that has exited (and been reaped): its pid names nothing now.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        let gone = Runtime {
            pid: child.id(),
            pid_start: None,
            ..sample()
        };
        let _published = Published::write(dir.path(), &gone).unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        // One that has exited but was not reaped (a zombie, as a killed appliance whose
        // parent never waits stays): gone too.
        let mut zombie = std::process::Command::new("true").spawn().unwrap();
        let exited = Runtime {
            pid: zombie.id(),
            pid_start: process_start(zombie.id()),
            ..sample()
        };
        while proc_stat(zombie.id()).is_some_and(|(state, _)| state != 'Z') {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _published = Published::write(dir.path(), &exited).unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        zombie.wait().unwrap();
        // A live pid that started at another time is another process.
        let reused = Runtime {
            pid_start: sample().pid_start.map(|s| s + 1),
            ..sample()
        };
        let _published = Published::write(dir.path(), &reused).unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
    }

    #[test]
    fn an_unreadable_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), b"{").unwrap();
        let err = read(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains(FILE_NAME), "{err:#}");
    }
}
