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

/// Finds a nats-server binary of at least v2.10.
///
/// Tries, in order: `configured`; the `AICORE_NATS_SERVER` environment variable;
/// `.tools/nats/bin/nats-server` under the current directory or any of its ancestors, then
/// under every ancestor of the current executable (so `target/debug/aicore` finds
/// `<repo>/.tools`); `nats-server` on `PATH`. An explicit choice (the first two) is used or rejected, never skipped over.
/// Each candidate is run with `--version`, so this blocks for a few milliseconds.
pub fn resolve_binary(configured: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = configured {
        probe_binary(path).with_context(|| {
            format!(
                "configured nats-server {} is not usable; {INSTALL_HINT}",
                path.display()
            )
        })?;
        return Ok(path.to_path_buf());
    }
    if let Some(value) = std::env::var_os(BINARY_ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        probe_binary(&path).with_context(|| {
            format!(
                "{BINARY_ENV}={} is not usable; {INSTALL_HINT}",
                path.display()
            )
        })?;
        return Ok(path);
    }

    let mut tried = Vec::new();
    for candidate in discovery_candidates() {
        match probe_binary(&candidate) {
            Ok(_) => return Ok(candidate),
            Err(e) => tried.push(format!("{}: {e:#}", candidate.display())),
        }
    }
    bail!(
        "no usable nats-server (>= v{}.{}) found; tried:\n  {BINARY_ENV}: not set\n  {}\n{INSTALL_HINT}",
        MIN_VERSION.0,
        MIN_VERSION.1,
        tried.join("\n  ")
    )
}

/// The places searched when nothing explicit is configured, in order, without duplicates.
fn discovery_candidates() -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    // The current directory's ancestors too: `cargo test` runs in the crate directory,
    // and with a shared CARGO_TARGET_DIR the executable is not under the repository.
    if let Ok(dir) = std::env::current_dir() {
        candidates.extend(dir.ancestors().map(|dir| dir.join(TOOLS_BINARY)));
    }
    if let Ok(exe) = std::env::current_exe() {
        candidates.extend(exe.ancestors().skip(1).map(|dir| dir.join(TOOLS_BINARY)));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(
            std::env::split_paths(&path)
                .map(|dir| dir.join("nats-server"))
                .filter(|p| p.is_file()),
        );
    }
    let mut unique = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        if !unique.contains(&candidate) {
            unique.push(candidate);
        }
    }
    unique
}

/// Runs `binary --version` and checks the version; returns `(major, minor, patch)`.
fn probe_binary(binary: &Path) -> Result<(u32, u32, u32)> {
    if !binary.is_file() {
        bail!("not found");
    }
    let mut child = std::process::Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot run it")?;
    let deadline = Instant::now() + VERSION_PROBE_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().context("cannot wait for `--version`")? {
            break status;
        }
        if Instant::now() >= deadline {
            // Best effort: the child is being abandoned as unusable either way.
            let _ = child.kill();
            let _ = child.wait();
            bail!("`--version` did not finish within {VERSION_PROBE_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut output = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        io::Read::read_to_string(&mut stdout, &mut output)
            .context("cannot read `--version` output")?;
    }
    if !status.success() {
        bail!("`--version` failed ({status})");
    }
    let version = parse_version(&output)
        .ok_or_else(|| anyhow!("unrecognised `--version` output {:?}", output.trim()))?;
    if (version.0, version.1) < MIN_VERSION {
        bail!(
            "version v{}.{}.{} is too old (need >= v{}.{})",
            version.0,
            version.1,
            version.2,
            MIN_VERSION.0,
            MIN_VERSION.1
        );
    }
    Ok(version)
}

/// Parses `nats-server: v2.15.1` (pre-release suffixes allowed) into `(2, 15, 1)`.
fn parse_version(output: &str) -> Option<(u32, u32, u32)> {
    output.split_whitespace().find_map(|token| {
        let rest = token.strip_prefix('v')?;
        let mut parts = rest.splitn(3, '.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts
            .next()
            .map(|p| {
                let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().unwrap_or(0)
            })
            .unwrap_or(0);
        Some((major, minor, patch))
    })
}

/// Moves JetStream's data from nats-server's global account (`$G`, where it lived before
/// the appliance ran accounts, and where `--insecure-dev` keeps it) into the home account
/// `home`, once, when `home` has none yet: an upgraded appliance keeps its streams, their
/// messages and consumers instead of starting them empty. JetStream keeps each account's
/// data in `<store_dir>/jetstream/<account>/`, and a stream's files do not name their
/// account. Returns whether it moved anything.
pub fn adopt_global_streams(store_dir: &Path, home: &str) -> Result<bool> {
    let root = store_dir.join("jetstream");
    let (global, target) = (root.join("$G"), root.join(home));
    if !global.is_dir() || target.exists() {
        return Ok(false);
    }
    std::fs::rename(&global, &target).with_context(|| {
        format!(
            "moving JetStream data {} to {}",
            global.display(),
            target.display()
        )
    })?;
    tracing::info!(from = %global.display(), to = %target.display(), "JetStream data moved into the appliance's account");
    Ok(true)
}

/// Produces the nats-server configuration file for `cfg`.
///
/// The single place the child's configuration is written, so TLS and accounts blocks can
/// be appended here later. Strings are quoted and escaped; nats-server does not expand
/// `$variables` inside quotes.
pub fn render_config(cfg: &NatsChildConfig) -> String {
    format!(
        "# Written by aicore at every start of its nats-server child; edits are overwritten.
server_name: \"aicore\"
host: {host}
port: {port}
http: {http}
max_payload: {max_payload}
# Lame duck mode only applies to an explicit `nats-server --signal ldm`; aicore stops the
# child with SIGTERM. 30 s is the smallest duration nats-server accepts.
lame_duck_duration: \"30s\"
lame_duck_grace_period: \"5s\"

jetstream {{
  store_dir: {store_dir}
  max_memory_store: {max_memory_store}
  max_file_store: {max_file_store}
  sync_interval: {sync_interval}
}}
",
        host = quote(&cfg.host),
        port = cfg.port,
        http = quote(&host_port(&cfg.host, cfg.monitor_port)),
        max_payload = cfg.max_payload,
        store_dir = quote(&cfg.store_dir.to_string_lossy()),
        max_memory_store = cfg.max_memory_store,
        max_file_store = cfg.max_file_store,
        sync_interval = quote(&cfg.sync_interval),
    ) + &cfg.tls.as_ref().map(render_tls).unwrap_or_default()
}

/// The TLS and accounts blocks of the configuration.
fn render_tls(tls: &NatsTls) -> String {
    let list = |v: &[String]| v.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ");
    let a = &tls.accounts;
    let mut out = format!(
        "
tls {{
  cert_file: {cert}
  key_file: {key}
  ca_file: {ca}
  verify_and_map: true
  timeout: 5
  # Only these certificates (SHA-256 of their public keys) may connect at all.
  pinned_certs: [{pinned}]
}}

# Deny by default: a subject not listed for a user is refused.
accounts {{
  {home}: {{
    jetstream: enabled
    users: [
",
        cert = quote(&tls.cert_file.to_string_lossy()),
        key = quote(&tls.key_file.to_string_lossy()),
        ca = quote(&tls.ca_file.to_string_lossy()),
        pinned = list(&a.pinned),
        home = quote(&a.home),
    );
    let user = |u: &NatsUser| {
        format!(
            "      {{ user: {user}, permissions: {{ publish: {{ allow: [{publish}] }}, subscribe: {{ allow: [{subscribe}] }}{responses} }} }}\n",
            user = quote(&u.user),
            publish = list(&u.publish),
            subscribe = list(&u.subscribe),
            responses = if u.allow_responses {
                ", allow_responses: true"
            } else {
                ""
            },
        )
    };
    for u in &a.users {
        out.push_str(&user(u));
    }
    out.push_str("    ]\n    exports: [\n");
    for e in &a.exports {
        out.push_str(&format!(
            "      {{ service: {}{} }}\n",
            quote(&e.subject),
            if e.streamed {
                ", response_type: stream"
            } else {
                ""
            }
        ));
    }
    out.push_str("    ]\n  }\n");
    // `share`: nats-server stamps each request from here with the sender's mapped user.
    let x = &a.external;
    out.push_str(&format!("  {}: {{\n    users: [\n", quote(&x.name)));
    for u in &x.users {
        out.push_str(&user(u));
    }
    out.push_str("    ]\n    imports: [\n");
    for subject in &x.imports {
        out.push_str(&format!(
            "      {{ service: {{ account: {}, subject: {} }}, share: true }}\n",
            quote(&a.home),
            quote(subject)
        ));
    }
    out.push_str("    ]\n  }\n");
    out.push_str("}\n");
    out
}

/// A double-quoted nats-server configuration string.
fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `host:port`, with an IPv6 literal in brackets.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The address to connect to for a listen address: the wildcard becomes loopback.
fn connect_host(host: &str) -> &str {
    match host {
        "" | "0.0.0.0" => "127.0.0.1",
        "::" | "[::]" => "::1",
        other => other,
    }
}

/// Rejects configurations nats-server would misread rather than refuse.
fn validate(cfg: &NatsChildConfig) -> Result<()> {
    if cfg.host.is_empty() || cfg.host.chars().any(|c| c.is_whitespace() || c == '"') {
        bail!("nats host {:?} is not a valid address", cfg.host);
    }
    let store_dir = cfg
        .store_dir
        .to_str()
        .ok_or_else(|| anyhow!("JetStream store_dir {:?} is not UTF-8", cfg.store_dir))?;
    if store_dir.chars().any(char::is_control) {
        bail!("JetStream store_dir {store_dir:?} contains control characters");
    }
    if cfg.port == cfg.monitor_port {
        bail!("nats port and monitor port are both {}", cfg.port);
    }
    Ok(())
}

/// Creates the directories (`0700` when new: JetStream's store holds the events) and
/// writes the configuration file (`0600`: it names key files and the users),
/// atomically, through [`crate::files`].
async fn write_config(cfg: &NatsChildConfig) -> Result<()> {
    let (store_dir, path, text) = (
        cfg.store_dir.clone(),
        cfg.config_path.clone(),
        render_config(cfg),
    );
    tokio::task::spawn_blocking(move || {
        crate::files::create_private_dir(&store_dir).context("creating the JetStream store")?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::files::create_private_dir(parent)?;
        }
        crate::files::write_private(&path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    })
    .await
    .context("writing the nats-server configuration")?
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

/// Why a (re)start did not produce a healthy child.
enum StartError {
    /// Shutdown was requested meanwhile; the child has been stopped.
    Cancelled,
    /// The child exited, never became healthy, or could not be spawned.
    Failed(anyhow::Error),
}

/// A spawned nats-server process with its log forwarders.
struct Process {
    child: Child,
    pid: u32,
    /// Last notable lines of output, to explain a failure.
    tail: Arc<Mutex<VecDeque<String>>>,
    forwarders: Vec<JoinHandle<()>>,
}

impl Process {
    /// Once the child has exited, lets the forwarders read the rest of its output and
    /// returns the last lines.
    async fn drain_output(&mut self) -> String {
        for forwarder in self.forwarders.drain(..) {
            let abort = forwarder.abort_handle();
            // A grandchild holding the pipe open must not hang us; a late line is lost.
            if tokio::time::timeout(OUTPUT_DRAIN_TIMEOUT, forwarder)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        if tail.is_empty() {
            "(no warnings or errors)".to_owned()
        } else {
            tail.iter().cloned().collect::<Vec<_>>().join("\n")
        }
    }

    /// SIGTERM, up to [`STOP_TIMEOUT`] to exit, then SIGKILL; reaps the child.
    async fn terminate(&mut self) -> Option<ExitStatus> {
        // Already exited (and maybe already reaped): nothing to signal.
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        if let Some(pid) = self.child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
            // SAFETY: plain syscalls. `pid` is our own unreaped child (`id()` is None once
            // it has been waited for), so it cannot name a recycled, unrelated process.
            // SIGCONT after SIGTERM (as systemd does): a stopped child acts on the
            // SIGTERM at once instead of sitting out the timeout.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
                libc::kill(pid, libc::SIGCONT);
            }
            match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
                Ok(Ok(status)) => return Some(status),
                Ok(Err(e)) => tracing::warn!(pid, error = %e, "cannot wait for nats-server"),
                Err(_) => tracing::warn!(
                    pid,
                    "nats-server did not exit within {STOP_TIMEOUT:?} of SIGTERM; killing it"
                ),
            }
        }
        if let Err(e) = self.child.kill().await {
            tracing::warn!(pid = self.pid, error = %e, "cannot kill nats-server");
        }
        self.child.wait().await.ok()
    }
}

/// Spawns nats-server and waits until it is healthy; on any failure the child is gone
/// before this returns.
async fn spawn_healthy(
    cfg: &NatsChildConfig,
    spawner: &Spawner,
    shared: &Shared,
    stop: &CancellationToken,
) -> Result<Process, StartError> {
    let mut process = spawn(cfg, spawner).await.map_err(StartError::Failed)?;
    shared.pid.store(process.pid, Ordering::SeqCst);
    let result = wait_healthy(cfg, &mut process, stop).await;
    if result.is_err() {
        process.terminate().await;
        shared.pid.store(0, Ordering::SeqCst);
    }
    match result {
        Ok(()) => Ok(process),
        Err(StartError::Failed(e)) => {
            let output = process.drain_output().await;
            Err(StartError::Failed(e.context(format!(
                "nats-server did not start; its last warnings and errors:\n{output}"
            ))))
        }
        Err(StartError::Cancelled) => Err(StartError::Cancelled),
    }
}

/// Forks children from one dedicated thread that lives as long as the monitor.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the
/// process. A tokio worker thread can retire while the process lives on (after
/// `block_in_place` it joins the blocking pool, whose idle threads exit), which would
/// SIGKILL a healthy nats-server; this thread exits only once the monitor is done.
#[derive(Debug)]
struct Spawner {
    requests: std::sync::mpsc::Sender<SpawnRequest>,
}

/// A command to start and where to send the result.
type SpawnRequest = (Command, oneshot::Sender<io::Result<Child>>);

impl Spawner {
    /// Starts the thread; it enters the current tokio runtime so the children it spawns
    /// are reaped and their pipes polled by that runtime.
    fn new() -> Result<Spawner> {
        let runtime = tokio::runtime::Handle::current();
        let (requests, incoming) = std::sync::mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("nats-spawner".to_owned())
            .spawn(move || {
                let _runtime = runtime.enter();
                for (mut command, reply) in incoming {
                    // The requester may have given up (cancelled); the child then drops
                    // here and kill_on_drop ends it.
                    let _ = reply.send(command.spawn());
                }
            })
            .context("cannot start the nats-server spawner thread")?;
        Ok(Spawner { requests })
    }

    async fn spawn(&self, command: Command) -> io::Result<Child> {
        let (reply, result) = oneshot::channel();
        self.requests
            .send((command, reply))
            .map_err(|_| io::Error::other("nats-server spawner thread is gone"))?;
        result
            .await
            .map_err(|_| io::Error::other("nats-server spawner thread is gone"))?
    }
}

/// Starts the process with piped output forwarded to `tracing`.
async fn spawn(cfg: &NatsChildConfig, spawner: &Spawner) -> Result<Process> {
    let mut command = Command::new(&cfg.binary);
    command
        .arg("-c")
        .arg(&cfg.config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group: a terminal's SIGINT must reach only aicore, which stops the
        // child last in its ordered teardown.
        .process_group(0)
        .kill_on_drop(true);
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id();
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // syscalls (prctl, getppid) and builds an io::Error without allocating.
        unsafe {
            command.pre_exec(move || {
                // The kernel SIGKILLs the child when the thread that forked it (the
                // spawner's) dies, which includes the whole process dying.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
    let mut child = spawner
        .spawn(command)
        .await
        .with_context(|| format!("cannot start {}", cfg.binary.display()))?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow!("nats-server exited before its pid could be read"))?;
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(OUTPUT_TAIL_LINES)));
    let mut forwarders = Vec::with_capacity(2);
    if let Some(stdout) = child.stdout.take() {
        forwarders.push(tokio::spawn(forward_output(
            stdout,
            pid,
            false,
            Arc::clone(&tail),
        )));
    }
    if let Some(stderr) = child.stderr.take() {
        forwarders.push(tokio::spawn(forward_output(
            stderr,
            pid,
            true,
            Arc::clone(&tail),
        )));
    }
    tracing::debug!(pid, binary = %cfg.binary.display(), config = %cfg.config_path.display(), "nats-server spawned");
    Ok(Process {
        child,
        pid,
        tail,
        forwarders,
    })
}

/// Forwards each output line to `tracing` (target `nats_server`) at the level nats-server
/// gave it, and keeps the last notable ones in `tail`: routine `[INF]` lines (the start-up
/// banner alone is twenty) would push out the one line that says what went wrong.
async fn forward_output<R: AsyncRead + Unpin>(
    output: R,
    pid: u32,
    is_stderr: bool,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    let mut reader = BufReader::new(output);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let (level, message) = split_log_line(line);
        if message.is_empty() {
            continue;
        }
        match level {
            Some("ERR" | "FTL") => tracing::error!(target: "nats_server", pid, "{message}"),
            Some("WRN") => tracing::warn!(target: "nats_server", pid, "{message}"),
            Some("DBG" | "TRC") => tracing::debug!(target: "nats_server", pid, "{message}"),
            Some(_) => tracing::info!(target: "nats_server", pid, "{message}"),
            // Unprefixed stderr is how nats-server reports fatal start-up errors.
            None if is_stderr => tracing::warn!(target: "nats_server", pid, "{message}"),
            None => tracing::info!(target: "nats_server", pid, "{message}"),
        }
        if matches!(level, Some("INF" | "DBG" | "TRC")) {
            continue;
        }
        let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
        if tail.len() == OUTPUT_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.to_owned());
    }
}

/// Splits `[pid] date time [INF] message` into the level tag and the message; lines in
/// any other shape come back whole.
fn split_log_line(line: &str) -> (Option<&str>, &str) {
    let Some(rest) = line.strip_prefix('[') else {
        return (None, line);
    };
    rest.match_indices(" [")
        .find_map(|(i, _)| {
            let after = &rest[i + 2..];
            let level = after.get(..3)?;
            let message = after.get(3..)?.strip_prefix(']')?;
            let message = message.strip_prefix(' ').unwrap_or(message);
            level
                .chars()
                .all(|c| c.is_ascii_uppercase())
                .then_some((Some(level), message))
        })
        .unwrap_or((None, line))
}

/// Waits until the health endpoint answers 200, the child exits, the start timeout
/// passes, or `stop` is cancelled.
async fn wait_healthy(
    cfg: &NatsChildConfig,
    process: &mut Process,
    stop: &CancellationToken,
) -> Result<(), StartError> {
    let host = connect_host(&cfg.host);
    let mut last_probe = String::from("no probe finished");
    tokio::select! {
        _ = stop.cancelled() => Err(StartError::Cancelled),
        status = process.child.wait() => Err(StartError::Failed(match status {
            Ok(status) => anyhow!("nats-server exited during start-up ({status})"),
            Err(e) => anyhow!("cannot wait for nats-server: {e}"),
        })),
        () = poll_until_healthy(host, cfg.monitor_port, &mut last_probe) => Ok(()),
        () = tokio::time::sleep(START_TIMEOUT) => Err(StartError::Failed(anyhow!(
            "nats-server was not healthy within {START_TIMEOUT:?} \
             (http://{}{HEALTH_PATH}: {last_probe})",
            host_port(host, cfg.monitor_port)
        ))),
    }
}

/// Probes the health endpoint until it answers 200, keeping the last failure's text.
async fn poll_until_healthy(host: &str, port: u16, last_probe: &mut String) {
    loop {
        match tokio::time::timeout(HEALTH_REQUEST_TIMEOUT, probe_health(host, port)).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => *last_probe = format!("{e:#}"),
            Err(_) => *last_probe = format!("no answer within {HEALTH_REQUEST_TIMEOUT:?}"),
        }
        tokio::time::sleep(HEALTH_POLL_INTERVAL).await;
    }
}

/// One `GET /healthz?js-enabled-only=true` over HTTP/1.0 (the server closes the
/// connection after answering, so reading to the end delimits the response).
async fn probe_health(host: &str, port: u16) -> Result<()> {
    let mut stream = TcpStream::connect((host, port))
        .await
        .context("cannot connect")?;
    let request = format!(
        "GET {HEALTH_PATH} HTTP/1.0\r\nHost: {}\r\n\r\n",
        host_port(host, port)
    );
    stream
        .write_all(request.as_bytes())
        .await
        .context("cannot send request")?;
    let mut response = Vec::with_capacity(256);
    (&mut stream)
        .take(HEALTH_RESPONSE_LIMIT)
        .read_to_end(&mut response)
        .await
        .context("cannot read response")?;
    let response = String::from_utf8_lossy(&response);
    let status_line = response.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        let body = response
            .split_once("\r\n\r\n")
            .map_or("", |(_, body)| body.trim());
        bail!("answered {status_line:?} {body}")
    }
}

/// Delay before the `attempt`-th restart within the window (1-based).
fn backoff(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    BACKOFF_START
        .saturating_mul(1 << doublings)
        .min(BACKOFF_MAX)
}

/// The task that watches the child and restarts it.
struct Monitor {
    cfg: NatsChildConfig,
    spawner: Spawner,
    stop: CancellationToken,
    status: watch::Sender<NatsStatus>,
    shared: Arc<Shared>,
}

impl Monitor {
    async fn run(self, mut process: Process) {
        // Restart times within the window; its length also sets the backoff, so the delay
        // falls back to the minimum once the child has stayed up for a whole window.
        let mut recent: VecDeque<Instant> = VecDeque::new();
        loop {
            let exit = tokio::select! {
                _ = self.stop.cancelled() => {
                    self.shut_down(process).await;
                    return;
                }
                exit = process.child.wait() => exit,
            };
            self.shared.pid.store(0, Ordering::SeqCst);
            let output = process.drain_output().await;
            let exit = match exit {
                Ok(status) => status.to_string(),
                Err(e) => format!("cannot wait for it: {e}"),
            };
            tracing::warn!(pid = process.pid, %exit, last_output = %output, "nats-server exited unexpectedly");
            match self
                .restart(
                    &mut recent,
                    format!("{exit}; last warnings and errors:\n{output}"),
                )
                .await
            {
                Some(next) => process = next,
                None => return,
            }
        }
    }

    /// Restarts with backoff until a child is healthy (`Some`), or gives up or is stopped
    /// (`None`, status already set).
    async fn restart(
        &self,
        recent: &mut VecDeque<Instant>,
        mut last_failure: String,
    ) -> Option<Process> {
        loop {
            let now = Instant::now();
            while recent
                .front()
                .is_some_and(|t| now.duration_since(*t) >= self.cfg.restart_window)
            {
                recent.pop_front();
            }
            if recent.len() >= self.cfg.max_restarts as usize {
                let reason = format!(
                    "crash loop: gave up after {} restart(s) within {:?}; last failure: {last_failure}",
                    recent.len(),
                    self.cfg.restart_window
                );
                tracing::error!(restarts = recent.len(), "nats-server given up: {reason}");
                self.status.send_replace(NatsStatus::Failed(reason));
                return None;
            }
            recent.push_back(now);
            let attempt = u32::try_from(recent.len()).unwrap_or(u32::MAX);
            let delay = backoff(attempt);
            self.status.send_replace(NatsStatus::Restarting { attempt });
            tracing::info!(attempt, ?delay, "restarting nats-server");
            tokio::select! {
                _ = self.stop.cancelled() => {
                    self.status.send_replace(NatsStatus::Stopped);
                    return None;
                }
                () = tokio::time::sleep(delay) => {}
            }
            self.shared.restarts.fetch_add(1, Ordering::SeqCst);
            match spawn_healthy(&self.cfg, &self.spawner, &self.shared, &self.stop).await {
                Ok(process) => {
                    tracing::info!(pid = process.pid, attempt, "nats-server restarted");
                    self.status
                        .send_replace(NatsStatus::Running { pid: process.pid });
                    return Some(process);
                }
                Err(StartError::Cancelled) => {
                    self.status.send_replace(NatsStatus::Stopped);
                    return None;
                }
                Err(StartError::Failed(e)) => {
                    tracing::warn!(attempt, error = %format!("{e:#}"), "nats-server restart failed");
                    last_failure = format!("{e:#}");
                }
            }
        }
    }

    /// Stops the child on request and records it.
    async fn shut_down(&self, mut process: Process) {
        let status = process.terminate().await;
        self.shared.pid.store(0, Ordering::SeqCst);
        process.drain_output().await;
        match status {
            Some(status) => tracing::info!(pid = process.pid, %status, "nats-server stopped"),
            None => tracing::warn!(
                pid = process.pid,
                "nats-server stopped; exit status unknown"
            ),
        }
        self.status.send_replace(NatsStatus::Stopped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;

    /// Generous bound for anything the tests wait on; never a performance expectation.
    const GIVE_UP: Duration = Duration::from_secs(60);

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port")
    }

    /// A config on fresh ports and a temporary directory, with the real nats-server.
    fn test_config(dir: &Path) -> NatsChildConfig {
        let binary = resolve_binary(None).unwrap_or_else(|e| {
            panic!("these tests need the real nats-server (run scripts/install-nats.sh): {e:#}")
        });
        let port = free_port();
        let mut monitor_port = free_port();
        while monitor_port == port {
            monitor_port = free_port();
        }
        NatsChildConfig {
            binary,
            port,
            monitor_port,
            store_dir: dir.join("jetstream"),
            config_path: dir.join("nats-server.conf"),
            max_file_store: 64 * 1024 * 1024,
            max_memory_store: 64 * 1024 * 1024,
            ..NatsChildConfig::default()
        }
    }

    async fn round_trip(url: &str) {
        let client = async_nats::connect(url).await.expect("connect");
        let mut sub = client.subscribe("test.echo").await.expect("subscribe");
        let responder = client.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                if let Some(reply) = msg.reply {
                    responder.publish(reply, msg.payload).await.ok();
                }
            }
        });
        let answer = client
            .request("test.echo", "ping".into())
            .await
            .expect("request");
        assert_eq!(&answer.payload[..], b"ping");
    }

    fn process_exists(pid: u32) -> bool {
        let pid = libc::pid_t::try_from(pid).expect("pid fits");
        // SAFETY: signal 0 only checks for existence.
        unsafe { libc::kill(pid, 0) == 0 }
    }

    async fn wait_status(child: &NatsChild, what: &str, f: impl Fn(&NatsStatus) -> bool) {
        let mut status = child.status();
        tokio::time::timeout(GIVE_UP, status.wait_for(|s| f(s)))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "gave up waiting for {what}; status {:?}",
                    *child.status().borrow()
                )
            })
            .expect("status channel closed");
    }

    #[test]
    fn parses_versions() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15, 1)));
        assert_eq!(parse_version("nats-server: v2.11.0-RC.1"), Some((2, 11, 0)));
        assert_eq!(parse_version("nats-server: v2.9"), Some((2, 9, 0)));
        assert_eq!(parse_version("nats-server version unknown"), None);
    }

    #[test]
    fn splits_log_lines() {
        assert_eq!(
            split_log_line("[31] 2026/11/23 15:12:28.590846 [INF] Server is ready"),
            (Some("INF"), "Server is ready")
        );
        assert_eq!(
            split_log_line("[31] 2026/11/23 15:12:28.590846 [WRN] a [ERR] b"),
            (Some("WRN"), "a [ERR] b")
        );
        assert_eq!(
            split_log_line("[31] 2026/11/23 15:12:28.590846 [INF]"),
            (Some("INF"), "")
        );
        assert_eq!(
            split_log_line("nats-server: a.conf:6:1: invalid"),
            (None, "nats-server: a.conf:6:1: invalid")
        );
    }

    #[test]
    fn backoff_doubles_to_a_ceiling() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(100), BACKOFF_MAX);
    }

    #[test]
    fn missing_configured_binary_says_how_to_install() {
        let err = resolve_binary(Some(Path::new("/nonexistent/nats-server"))).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("/nonexistent/nats-server"), "{text}");
        assert!(text.contains("install-nats.sh"), "{text}");
    }

    #[test]
    fn too_old_binary_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = dir.path().join("nats-server");
        std::fs::write(&fake, "#!/bin/sh\necho 'nats-server: v2.9.25'\n").expect("write");
        let mut perms = std::fs::metadata(&fake).expect("metadata").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&fake, perms).expect("chmod");
        let err = resolve_binary(Some(&fake)).unwrap_err();
        assert!(format!("{err:#}").contains("too old"), "{err:#}");
    }

    /// The rendered file, with awkward characters in the store path, is accepted by the
    /// real nats-server and means what we wrote.
    #[test]
    fn rendered_config_is_valid_for_nats_server() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = test_config(dir.path());
        cfg.store_dir = dir.path().join("a \"quoted\" $dir\\with\tstuff");
        cfg.sync_interval = "2m".to_owned();
        let text = render_config(&cfg);
        std::fs::write(&cfg.config_path, &text).expect("write");
        let out = std::process::Command::new(&cfg.binary)
            .arg("-t")
            .arg("-c")
            .arg(&cfg.config_path)
            .output()
            .expect("run nats-server -t");
        assert!(
            out.status.success(),
            "nats-server rejected:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("sync_interval: \"2m\""), "{text}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn starts_serves_and_stops_without_leftovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = test_config(dir.path());
        let child = NatsChild::start(cfg.clone(), CancellationToken::new())
            .await
            .expect("start");
        assert_eq!(child.client_url(), format!("nats://127.0.0.1:{}", cfg.port));
        let pid = child.pid().expect("pid while running");
        assert!(matches!(*child.status().borrow(), NatsStatus::Running { pid: p } if p == pid));
        round_trip(&child.client_url()).await;

        let status = child.status();
        child.stop().await;
        assert_eq!(*status.borrow(), NatsStatus::Stopped);
        assert!(!process_exists(pid), "nats-server {pid} survived stop()");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelling_the_shutdown_token_stops_the_child() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shutdown = CancellationToken::new();
        let child = NatsChild::start(test_config(dir.path()), shutdown.clone())
            .await
            .expect("start");
        let pid = child.pid().expect("pid while running");
        shutdown.cancel();
        wait_status(&child, "Stopped", |s| *s == NatsStatus::Stopped).await;
        assert!(!process_exists(pid), "nats-server {pid} survived shutdown");
        assert_eq!(child.pid(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restarts_after_sigkill() {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = NatsChild::start(test_config(dir.path()), CancellationToken::new())
            .await
            .expect("start");
        let first = child.pid().expect("pid while running");
        // SAFETY: kills the child this test started.
        unsafe { libc::kill(libc::pid_t::try_from(first).expect("pid"), libc::SIGKILL) };

        wait_status(
            &child,
            "a new healthy child",
            |s| matches!(s, NatsStatus::Running { pid } if *pid != first),
        )
        .await;
        assert_ne!(child.pid(), Some(first));
        assert_eq!(child.restarts(), 1);
        round_trip(&child.client_url()).await;
        child.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_loop_is_reported_as_failed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = test_config(dir.path());
        cfg.max_restarts = 2;
        let child = NatsChild::start(cfg.clone(), CancellationToken::new())
            .await
            .expect("start");
        let failed = child.failed();
        // Every restart from now on exits at once on a configuration error.
        std::fs::write(&cfg.config_path, "this is { not a valid config").expect("corrupt");
        let pid = child.pid().expect("pid while running");
        // SAFETY: kills the child this test started.
        unsafe { libc::kill(libc::pid_t::try_from(pid).expect("pid"), libc::SIGKILL) };

        let err = tokio::time::timeout(GIVE_UP, failed)
            .await
            .expect("gave up waiting for the crash loop to be reported");
        let text = format!("{err:#}");
        assert!(text.contains("crash loop"), "{text}");
        assert!(matches!(*child.status().borrow(), NatsStatus::Failed(_)));
        assert_eq!(child.restarts(), 2);
        assert_eq!(child.pid(), None);
        child.stop().await;
    }

    /// Set for the helper process of `child_dies_with_its_parent`: its temporary directory.
    const HELPER_DIR_ENV: &str = "AICORE_TEST_NATS_CHILD_HELPER_DIR";
    const HELPER_PID_LINE: &str = "helper: nats-server pid ";

    /// Not a test on its own: the process `child_dies_with_its_parent` starts and kills.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "helper process for child_dies_with_its_parent"]
    async fn helper_parent_process() {
        let Some(dir) = std::env::var_os(HELPER_DIR_ENV) else {
            return;
        };
        let child = NatsChild::start(test_config(Path::new(&dir)), CancellationToken::new())
            .await
            .expect("start");
        println!(
            "{HELPER_PID_LINE}{}",
            child.pid().expect("pid while running")
        );
        tokio::time::sleep(GIVE_UP).await;
    }

    /// The helper's libtest name: its module path without the crate name.
    fn helper_test_name() -> String {
        let module = module_path!();
        let module = module.split_once("::").map_or(module, |(_, rest)| rest);
        format!("{module}::helper_parent_process")
    }

    /// Dead or a zombie waiting to be reaped by init (which may take its time).
    fn process_is_dead(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        }
    }

    /// The guarantee that survives everything: SIGKILL the parent, the child dies too.
    #[cfg(target_os = "linux")]
    #[test]
    fn child_dies_with_its_parent() {
        use std::io::BufRead as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut helper = std::process::Command::new(std::env::current_exe().expect("test exe"))
            .args(["--exact", &helper_test_name()])
            .args(["--ignored", "--nocapture", "--test-threads=1"])
            .env(HELPER_DIR_ENV, dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start helper process");
        let stdout = helper.stdout.take().expect("helper stdout");
        let nats_pid: u32 = std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            // libtest prints "test <name> ... " on the same line first.
            .find_map(|line| line.split_once(HELPER_PID_LINE)?.1.trim().parse().ok())
            .expect("helper never reported a running nats-server");
        assert!(
            !process_is_dead(nats_pid),
            "nats-server {nats_pid} is not running"
        );

        helper.kill().expect("SIGKILL helper");
        helper.wait().expect("reap helper");
        let deadline = Instant::now() + GIVE_UP;
        while !process_is_dead(nats_pid) {
            if Instant::now() >= deadline {
                // SAFETY: the orphan is the nats-server our helper started; don't leak it.
                unsafe { libc::kill(libc::pid_t::try_from(nats_pid).expect("pid"), libc::SIGKILL) };
                panic!("nats-server {nats_pid} outlived its SIGKILLed parent");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_start_reports_the_servers_complaint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = test_config(dir.path());
        cfg.sync_interval = "sometimes".to_owned();
        let err = NatsChild::start(cfg, CancellationToken::new())
            .await
            .expect_err("start with an invalid sync_interval");
        let text = format!("{err:#}");
        assert!(text.contains("exited during start-up"), "{text}");
        assert!(text.contains("sync_interval"), "{text}");
    }
}
