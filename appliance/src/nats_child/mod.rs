//! The bundled `nats-server`, run as a child process of `aicore`.
//!
//! This module owns the whole life of that child: finding a usable binary
//! ([`resolve_binary`]), writing its configuration file ([`render_config`]), starting it and
//! waiting until its monitoring endpoint reports it healthy with JetStream enabled,
//! forwarding its log lines to `tracing` (target `nats_server`), restarting it with
//! exponential backoff when it dies, giving up when it crash-loops, and stopping it
//! (SIGTERM, then SIGKILL). The child never outlives `aicore`: it is killed when its handle
//! is dropped, and on Linux the kernel kills it when the parent dies, even by SIGKILL.
//!
//! It deliberately does not decide *when* to stop nats-server relative to the rest of the
//! appliance (that is the supervisor's ordered teardown), does not connect to NATS itself
//! (the client URL is handed out), and does not choose certificates or permissions (the
//! supervisor's security policy does); [`render_config`] only writes the TLS and
//! authorization blocks it is given, and [`NatsChild::reload`] applies a new one. The child runs
//! in its own process group so a terminal's Ctrl-C reaches only `aicore`, which then stops
//! nats-server last, after the domains have drained.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod binary;
mod config;
pub mod metrics;
mod monitor;
mod process;

pub use binary::*;
pub use config::*;
use monitor::*;
use process::*;

/// Oldest nats-server accepted: `sync_interval` and the JetStream behaviour we rely on
/// arrived in 2.10 (Debian's packaged 2.9.x is too old).
const MIN_VERSION: (u32, u32) = (2, 10);
/// Environment variable naming the nats-server binary, checked after the configured path.
const BINARY_ENV: &str = "AICORE_NATS_SERVER";
/// Where `scripts/install-nats.sh` puts the pinned binary, relative to the repository.
const TOOLS_BINARY: &str = ".tools/nats/bin/nats-server";
/// Told to the user whenever no usable binary is found.
const INSTALL_HINT: &str = "install the pinned nats-server with `make tools` (runs \
     scripts/install-nats.sh, which puts it in <repo>/.tools/nats/bin/nats-server), or point \
     the `nats.binary` setting or AICORE_NATS_SERVER at a nats-server >= v2.10";
/// How long `nats-server --version` may take before the candidate is rejected.
const VERSION_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a (re)started child has to report healthy before it is killed.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the child has to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two health probes while waiting for the child to come up.
const HEALTH_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Bound on one health probe (connect, request, response).
const HEALTH_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest health response read; the real one is a few dozen bytes.
const HEALTH_RESPONSE_LIMIT: u64 = 64 * 1024;
/// Health endpoint that answers 200 only once JetStream is enabled and the server is up.
const HEALTH_PATH: &str = "/healthz?js-enabled-only=true";
/// First restart delay; doubles with each restart within the window.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Ceiling of the restart delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Notable output lines (warnings, errors, anything not in the log format such as a Go
/// panic) kept to explain a failed start or a crash.
const OUTPUT_TAIL_LINES: usize = 30;
/// How long to wait for the log forwarders to see end-of-file once the child has exited.
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Everything needed to run the bundled nats-server; built by the supervisor from
/// `aicore.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsChildConfig {
    /// The nats-server executable, normally found by [`resolve_binary`].
    pub binary: PathBuf,
    /// Address nats-server listens on for clients and monitoring (e.g. `127.0.0.1`).
    pub host: String,
    /// Client port.
    pub port: u16,
    /// HTTP monitoring port (`/healthz`, `/varz`), on the same host.
    pub monitor_port: u16,
    /// JetStream storage directory; created if missing.
    pub store_dir: PathBuf,
    /// Where the generated nats-server configuration file is written.
    pub config_path: PathBuf,
    /// JetStream fsync policy: `always` (fsync every write) or a period such as `2m`.
    pub sync_interval: String,
    /// Largest message payload nats-server accepts, in bytes.
    pub max_payload: u32,
    /// JetStream memory storage limit, in bytes.
    pub max_memory_store: u64,
    /// JetStream file storage limit, in bytes.
    pub max_file_store: u64,
    /// Restarts allowed within `restart_window`; one more crash and the child is given up.
    pub max_restarts: u32,
    /// Sliding window over which restarts are counted for crash-loop detection.
    pub restart_window: Duration,
    /// Mutual TLS and the users certificate identities map to; `None` runs plaintext
    /// with no users (`--insecure-dev`, benchmarks' raw baseline).
    pub tls: Option<NatsTls>,
}

/// The `tls` and `authorization` blocks: every client must present a certificate signed
/// by `ca_file`, and its subject must be one of `users` (`verify_and_map`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsTls {
    /// The server certificate (PEM).
    pub cert_file: PathBuf,
    /// Its key (PEM).
    pub key_file: PathBuf,
    /// The CA client certificates must chain to.
    pub ca_file: PathBuf,
    /// The accounts, users and pins: nothing else may connect.
    pub accounts: Accounts,
}

/// Who may connect and where each lands: the home account (the appliance's own
/// principals, JetStream, every service) and one account per external principal,
/// importing only the services it may call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accounts {
    /// The home account's name.
    pub home: String,
    /// Its users.
    pub users: Vec<NatsUser>,
    /// What it offers other accounts.
    pub exports: Vec<Export>,
    /// The external principals' account.
    pub external: ExternalAccount,
    /// Public-key pins (`pinned_certs`) of exactly the certificates accepted: a revoked,
    /// expired or unknown certificate fails the handshake, and a reload closes its
    /// connections.
    pub pinned: Vec<String>,
}

/// A service the home account exports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// Its subject.
    pub subject: String,
    /// Whether a request gets a stream of replies (else one).
    pub streamed: bool,
}

/// The account of the external principals (game servers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExternalAccount {
    /// The account's name.
    pub name: String,
    /// Its users (one per accepted certificate subject).
    pub users: Vec<NatsUser>,
    /// The home account's services it imports (literal subjects).
    pub imports: Vec<String>,
}

/// A NATS user: a certificate subject and what it may publish and subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsUser {
    /// The certificate subject, RFC 2253 (`CN=admin,OU=admin,O=AI Core`).
    pub user: String,
    /// Subjects it may publish to (everything else is denied).
    pub publish: Vec<String>,
    /// Subjects it may subscribe to (everything else is denied).
    pub subscribe: Vec<String>,
    /// Whether it may publish to the reply subject of a request it received.
    pub allow_responses: bool,
}

impl Default for NatsChildConfig {
    fn default() -> Self {
        Self {
            binary: PathBuf::from("nats-server"),
            host: "127.0.0.1".to_owned(),
            port: 4222,
            monitor_port: 8222,
            store_dir: PathBuf::from("data/nats"),
            config_path: PathBuf::from("data/nats-server.conf"),
            sync_interval: "always".to_owned(),
            max_payload: 1024 * 1024,
            max_memory_store: 256 * 1024 * 1024,
            max_file_store: 10 * 1024 * 1024 * 1024,
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
            tls: None,
        }
    }
}

/// Where the child is in its life; watch it with [`NatsChild::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsStatus {
    /// The first start is in progress.
    Starting,
    /// The child is up and reported healthy.
    Running {
        /// Process id of the running child.
        pid: u32,
    },
    /// The child died and is being restarted; `attempt` counts restarts within the window.
    Restarting {
        /// Restarts within the current crash-loop window, this one included.
        attempt: u32,
    },
    /// The child crash-looped and was given up; the text says why. Terminal.
    Failed(String),
    /// The child was stopped on request. Terminal.
    Stopped,
}

/// Counters shared between the handle and the monitor task.
#[derive(Debug, Default)]
struct Shared {
    /// Pid of the current child process, 0 when there is none.
    pid: AtomicU32,
    /// Restart attempts since start.
    restarts: AtomicU64,
}

/// A running nats-server child and the task that keeps it running.
///
/// Dropping the handle stops the child too (without waiting); prefer [`NatsChild::stop`].
#[derive(Debug)]
pub struct NatsChild {
    client_url: String,
    monitor_url: String,
    status: watch::Receiver<NatsStatus>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    monitor: Option<JoinHandle<()>>,
}

impl NatsChild {
    /// Writes the configuration, starts nats-server and returns once it is healthy
    /// (JetStream enabled), or fails with the child's last warnings and errors.
    ///
    /// From then on a monitor task restarts the child when it dies, until `shutdown` is
    /// cancelled or [`NatsChild::stop`] is called (both stop the child the same way), or
    /// until it crash-loops ([`NatsChild::failed`]).
    pub async fn start(cfg: NatsChildConfig, shutdown: CancellationToken) -> Result<NatsChild> {
        validate(&cfg)?;
        if let Some(tls) = &cfg.tls {
            adopt_global_streams(&cfg.store_dir, &tls.accounts.home)?;
        }
        write_config(&cfg).await?;
        let stop = shutdown.child_token();
        let shared = Arc::new(Shared::default());
        let (status_tx, status) = watch::channel(NatsStatus::Starting);
        let client_url = format!("nats://{}", host_port(connect_host(&cfg.host), cfg.port));
        let monitor_url = format!(
            "http://{}",
            host_port(connect_host(&cfg.host), cfg.monitor_port)
        );

        let spawner = Spawner::new()?;
        let child = match spawn_healthy(&cfg, &spawner, &shared, &stop).await {
            Ok(child) => child,
            Err(StartError::Cancelled) => {
                status_tx.send_replace(NatsStatus::Stopped);
                bail!("shutdown requested while nats-server was starting");
            }
            Err(StartError::Failed(e)) => return Err(e),
        };
        tracing::info!(pid = child.pid, url = %client_url, "nats-server is up");
        status_tx.send_replace(NatsStatus::Running { pid: child.pid });

        let monitor = Monitor {
            cfg,
            spawner,
            stop: stop.clone(),
            status: status_tx,
            shared: Arc::clone(&shared),
        };
        let monitor = tokio::spawn(monitor.run(child));
        Ok(NatsChild {
            client_url,
            monitor_url,
            status,
            shared,
            stop,
            monitor: Some(monitor),
        })
    }

    /// Resolves with the reason once the child has been given up after a crash loop;
    /// never resolves otherwise (including after a requested stop). Meant for `select!`
    /// in the supervisor; independent of `self`'s lifetime.
    pub fn failed(&self) -> impl Future<Output = anyhow::Error> + Send + 'static {
        let mut status = self.status.clone();
        async move {
            if let Ok(current) = status
                .wait_for(|s| matches!(s, NatsStatus::Failed(_)))
                .await
                && let NatsStatus::Failed(reason) = &*current
            {
                return anyhow!("nats-server failed: {reason}");
            }
            // The monitor ended without failing (stopped): nothing will ever fail.
            std::future::pending().await
        }
    }

    /// A receiver of the child's [`NatsStatus`], for health reporting.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "for the supervisor's health and metrics; remove once used"
        )
    )]
    pub fn status(&self) -> watch::Receiver<NatsStatus> {
        self.status.clone()
    }

    /// Pid of the current child process, if one is running (or starting).
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "for the supervisor's health and metrics; remove once used"
        )
    )]
    pub fn pid(&self) -> Option<u32> {
        match self.shared.pid.load(Ordering::SeqCst) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// A handle that reloads this child's configuration (see [`Reloader::reload`]).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// URL clients use to reach this server, e.g. `nats://127.0.0.1:4222`.
    pub fn client_url(&self) -> String {
        self.client_url.clone()
    }

    /// Where its HTTP monitoring endpoint (`/healthz`, `/varz`) answers.
    pub fn monitor_url(&self) -> String {
        self.monitor_url.clone()
    }

    /// Restart attempts since [`NatsChild::start`], successful or not.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "for the supervisor's health and metrics; remove once used"
        )
    )]
    pub fn restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::SeqCst)
    }

    /// The child's figures for `/metrics`: its state and restarts.
    pub fn metrics(&self) -> Arc<dyn aicore_runtime::metrics::Collect> {
        Arc::new(metrics::ChildMetrics {
            status: self.status.clone(),
            shared: Arc::clone(&self.shared),
        })
    }

    /// Stops the child (SIGTERM, SIGKILL after 10 s) and waits until it and the monitor
    /// task are gone.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(monitor) = self.monitor.take()
            && let Err(e) = monitor.await
        {
            tracing::error!(error = %e, "nats-server monitor task failed");
        }
    }
}

impl Drop for NatsChild {
    fn drop(&mut self) {
        // The monitor task owns the process; cancelling makes it stop the child.
        self.stop.cancel();
    }
}

/// Reloads a running child's configuration; independent of the [`NatsChild`]'s lifetime.
#[derive(Debug, Clone)]
pub struct Reloader {
    shared: Arc<Shared>,
}

impl Reloader {
    /// Writes `cfg`'s configuration and makes the running child reload it (SIGHUP): new
    /// certificates and users take effect without a restart, and connections of users
    /// that no longer exist are closed by nats-server. A restart later uses it too.
    pub async fn reload(&self, cfg: &NatsChildConfig) -> Result<()> {
        validate(cfg)?;
        write_config(cfg).await?;
        let pid = self.shared.pid.load(Ordering::SeqCst);
        if pid != 0 {
            // SAFETY: kill(2) on the pid of our own child; no memory is touched.
            if unsafe { libc::kill(pid as i32, libc::SIGHUP) } != 0 {
                return Err(io::Error::last_os_error()).context("signalling nats-server to reload");
            }
            tracing::info!(pid, "nats-server reloads its configuration");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
