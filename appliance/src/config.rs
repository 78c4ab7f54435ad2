//! `aicore.toml`: one documented struct with a default for every field, so an empty (or
//! absent) file runs the appliance on its embedded defaults. `aicore.example.toml` in the
//! repository is this struct's defaults with comments; a test keeps the two equal.
//! Command-line flags override the file (see `main.rs`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use aicore_domains::DomainsConfig;

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory for all state: the redb file, JetStream's store, the generated
    /// nats-server config. Relative paths are relative to the working directory.
    pub data_dir: PathBuf,
    /// Domains this process serves: `["all"]` or names such as `["auth", "payment"]`.
    pub serve: Vec<String>,
    /// Log filter (`tracing` env-filter syntax); `RUST_LOG` overrides it.
    pub log: String,
    /// NATS: the bundled child server, or an existing server to join.
    pub nats: NatsConfig,
    /// The HTTP gateway: every served RPC as `POST /v1/<domain>/<rpc>` with JSON.
    pub http: HttpConfig,
    /// The embedded store.
    pub store: StoreConfig,
    /// Prometheus metrics on the gateway's `/metrics`.
    pub metrics: MetricsConfig,
    /// Certificates and NATS users (mTLS and least privilege, on by default).
    pub security: SecurityConfig,
    /// Per-domain settings (`[domains.<name>]`).
    pub domains: DomainsConfig,
    /// Distributed traces: exported over OTLP when an endpoint is set.
    pub traces: crate::otlp::TracesConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("data"),
            serve: vec!["all".into()],
            log: "info".into(),
            nats: NatsConfig::default(),
            http: HttpConfig::default(),
            store: StoreConfig::default(),
            metrics: MetricsConfig::default(),
            security: SecurityConfig::default(),
            domains: DomainsConfig::default(),
            traces: Default::default(),
        }
    }
}

/// NATS settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// An existing NATS server or cluster (`nats://host:4222`). When set, no child
    /// nats-server is started and the settings below except `max_payload` are unused.
    pub url: Option<String>,
    /// The nats-server binary; empty = `AICORE_NATS_SERVER`, `.tools/nats/bin`, `PATH`.
    pub server_bin: Option<PathBuf>,
    /// Address the child listens on. Keep it on loopback unless TLS is configured.
    pub host: String,
    /// Client port of the child; 0 picks a free port.
    pub port: u16,
    /// HTTP monitoring port of the child (`/healthz`, `/varz`); 0 picks a free port.
    pub monitor_port: u16,
    /// JetStream fsync policy: `always` (an acknowledged event survives a power cut) or
    /// a period such as `2m` (much faster, loses up to that much on a crash).
    pub sync_interval: String,
    /// Largest message in bytes the server accepts.
    pub max_payload: u32,
    /// JetStream memory storage limit in bytes.
    pub max_memory_store: u64,
    /// JetStream file storage limit in bytes.
    pub max_file_store: u64,
    /// Crash-loop limit: more restarts than this within `restart_window_secs` and the
    /// appliance gives up and exits with an error.
    pub max_restarts: u32,
    /// The crash-loop window, in seconds.
    pub restart_window_secs: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: None,
            server_bin: None,
            host: "127.0.0.1".into(),
            port: 4222,
            monitor_port: 8222,
            sync_interval: "always".into(),
            max_payload: 1024 * 1024,
            max_memory_store: 256 * 1024 * 1024,
            max_file_store: 10 * 1024 * 1024 * 1024,
            max_restarts: 5,
            restart_window_secs: 60,
        }
    }
}

/// HTTP gateway settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Serve the gateway at all.
    pub enabled: bool,
    /// Address to listen on. `0.0.0.0` accepts LAN clients; keep loopback until TLS is
    /// configured if the network is not trusted.
    pub host: String,
    /// Port to listen on; 0 picks a free port (logged at start-up).
    pub port: u16,
    /// Domains exposed over HTTP: `served` (those this process serves), `all` (every
    /// contract, for domains served by other hosts of a cluster) or domain names.
    pub domains: Vec<String>,
    /// Largest request body in bytes (413 beyond); must stay below `nats.max_payload`.
    /// Unset: sized from the largest object a domain accepts (see
    /// [`Config::http_max_body_bytes`]), 365 912 bytes with the defaults.
    pub max_body_bytes: Option<u32>,
    /// Requests handled at once; further ones are refused with 503 and `Retry-After`
    /// (never queued).
    pub max_in_flight: u32,
    /// SSE streams open at once; further stream requests get 503 and `Retry-After`.
    pub max_streams: u32,
    /// Requests per second each client may make (its token bucket's refill rate); 0
    /// disables rate limiting. A client is its account when authenticated, else its IP.
    pub rate_limit_per_sec: f64,
    /// Requests a client may make at once after a pause (the bucket's size).
    pub rate_limit_burst: u32,
    /// Most clients whose buckets are remembered (least recently seen are forgotten).
    pub rate_limit_clients: u64,
    /// Deadline in milliseconds of an RPC whose policy sets none, when the request has no
    /// `X-Request-Timeout-Ms` header.
    pub default_deadline_ms: u64,
    /// Longest deadline a client may ask for with `X-Request-Timeout-Ms`.
    pub max_deadline_ms: u64,
    /// Origins allowed by CORS (`https://game.example`); `["*"]` allows any; empty sends
    /// no CORS headers (browsers then refuse cross-origin calls).
    pub cors_origins: Vec<String>,
    /// How long a token's `auth.Validate` answer is reused, in milliseconds. Revocations
    /// take effect at once regardless (auth announces them); this bounds staleness only
    /// if a notice is lost.
    pub validate_cache_ttl_ms: u64,
    /// Most tokens whose Validate answers are cached.
    pub validate_cache_capacity: u64,
    /// Deadline in milliseconds of the gateway's own `auth.Validate` call for a token not
    /// in the cache. The gateway's, not the client's: a client's short
    /// `X-Request-Timeout-Ms` bounds its RPC, never the token check every client shares.
    pub validate_timeout_ms: u64,
    /// How often the gateway reloads the router domain's route table, in milliseconds.
    /// Changes take effect at once regardless (router announces them); this bounds how
    /// long a lost announcement goes unnoticed.
    pub route_refresh_ms: u64,
    /// How long a `/readyz` answer is reused, in milliseconds.
    pub ready_cache_ms: u64,
    /// On shutdown, how long in-flight requests may take to finish before they are cut, in
    /// seconds.
    pub drain_timeout_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            host: "127.0.0.1".into(),
            port: 8080,
            domains: vec!["served".into()],
            max_body_bytes: None,
            max_in_flight: 1024,
            max_streams: 1024,
            rate_limit_per_sec: 100.0,
            rate_limit_burst: 200,
            rate_limit_clients: 100_000,
            default_deadline_ms: 5000,
            max_deadline_ms: 60_000,
            cors_origins: Vec::new(),
            validate_cache_ttl_ms: 10_000,
            validate_cache_capacity: 100_000,
            validate_timeout_ms: 1000,
            route_refresh_ms: 5000,
            ready_cache_ms: 1000,
            drain_timeout_secs: 10,
        }
    }
}

/// Store settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// File name of the redb database inside `data_dir`.
    pub file: String,
    /// Bytes the moka caches may hold: three quarters for hot rows, a quarter for values
    /// the domains derive from them (e.g. a state-manager Get reply, weighed with its data).
    pub cache_bytes: u64,
    /// Most concurrent writes folded into one durable commit.
    pub max_batch: usize,
    /// Make each batch durable by appending it to the store's write-ahead log
    /// (`<file>.wal0`/`.wal1`, one sequential fsync per batch) and write to redb in bulk
    /// in the background; `false`: every batch is a durable redb commit (slower on
    /// random keys, see BENCHMARKS.md).
    pub write_ahead_log: bool,
    /// Flush the writes held in memory to redb once a log segment holds this many bytes.
    /// Larger: fewer, larger flushes (each rewrites every redb page it touches, so write
    /// volume per write falls). It also bounds that memory and the log replayed after a
    /// crash: while a flush runs, the next layer may grow to twice this much of log.
    /// Default 64 MiB: durable Put at C=64 ran ~5 % faster than with 16 MiB in three
    /// alternating 20-s runs (40.4K against 38.6K/s on average, BENCHMARKS.md);
    /// replaying 55 MB of log at startup took 0.76 s.
    pub wal_bytes: u64,
}

impl StoreConfig {
    /// The store's tunables as configured.
    pub fn options(&self) -> aicore_runtime::store::StoreOptions {
        aicore_runtime::store::StoreOptions {
            cache_bytes: self.cache_bytes,
            max_batch: self.max_batch,
            wal: self.write_ahead_log,
            wal_bytes: self.wal_bytes,
            ..Default::default()
        }
    }
}

impl Default for StoreConfig {
    /// The store's own defaults ([`aicore_runtime::store::StoreOptions`]), so they are
    /// stated once.
    fn default() -> Self {
        let o = aicore_runtime::store::StoreOptions::default();
        StoreConfig {
            file: "aicore.redb".into(),
            cache_bytes: o.cache_bytes,
            max_batch: o.max_batch,
            write_ahead_log: o.wal,
            wal_bytes: o.wal_bytes,
        }
    }
}

/// Metrics settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Record per-request figures (per-RPC counts and latency, gateway rows, store cache
    /// hits and commit histograms). Off, `/metrics` still shows the figures read at
    /// scrape time (store, outbox, nats-server, certificates). Their cost on the hot
    /// path is measured by `aicore bench --only metrics` (BENCHMARKS.md).
    pub enabled: bool,
    /// How long a scrape of `/metrics` waits for nats-server's monitoring endpoint;
    /// past it the nats-server figures are left out and `aicore_nats_monitor_up` is 0.
    pub nats_scrape_timeout_ms: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            nats_scrape_timeout_ms: 500,
        }
    }
}

/// Security settings: the local CA under `<data_dir>/certs`, mTLS on NATS, and one
/// least-privilege NATS user per certificate identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Run NATS in plaintext with no users: anyone who reaches the port can do anything.
    /// For local debugging only; `aicore run --insecure-dev` is the same. Never the default.
    pub insecure_dev: bool,
    /// Host names and addresses of this machine that clients dial, added to the server
    /// certificate (localhost, 127.0.0.1, ::1 and `nats.host` are always in it).
    pub host_names: Vec<String>,
    /// Subjects a `game-server` certificate may request, e.g. `svc.world-state.v1.>`;
    /// everything else under `svc.` is refused. Game servers may always publish telemetry.
    pub game_server_allow: Vec<String>,
    /// The roles a `game-server` principal may claim when it acts for a player
    /// (`Aicore-Caller-Roles`), and holds when it calls as itself: its ceiling. A claim
    /// beyond it is refused (PermissionDenied).
    pub game_server_roles: Vec<String>,
    /// Per principal (certificate name): a ceiling replacing `game_server_roles`, e.g.
    /// `{ "matchmaker" = ["player", "service"] }`.
    pub principal_roles: std::collections::BTreeMap<String, Vec<String>>,
    /// Validity of the certificates `aicore run` issues itself (server, domains, gateway,
    /// admin); they are renewed at two thirds of it, without a restart.
    pub cert_days: u32,
    /// Validity of the local CA created on first run.
    pub ca_days: u32,
    /// How often, in seconds, revocations and due renewals are applied (nats-server is
    /// reloaded, not restarted).
    pub check_interval_secs: u64,
    /// Validity in seconds of the self-issued certificates, overriding `cert_days` (for
    /// rotation tests).
    pub cert_secs: Option<u64>,
    /// With `nats.url`: the client certificate the appliance presents to that server.
    pub client_cert: Option<PathBuf>,
    /// With `nats.url`: the key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// With `nats.url`: the CA the external server's certificate chains to.
    pub ca_cert: Option<PathBuf>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            insecure_dev: false,
            host_names: Vec::new(),
            game_server_allow: Vec::new(),
            game_server_roles: vec!["player".to_string()],
            principal_roles: Default::default(),
            cert_days: 90,
            ca_days: 3650,
            check_interval_secs: 2,
            cert_secs: None,
            client_cert: None,
            client_key: None,
            ca_cert: None,
        }
    }
}

impl Config {
    /// Reads `path`, or the defaults when `path` is `None` and `./aicore.toml` is absent.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => {
                let default = PathBuf::from("aicore.toml");
                if !default.exists() {
                    return Ok(Config::default());
                }
                default
            }
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))
    }

    /// The domain names to serve, `all` expanded, each checked to exist.
    pub fn served_domains(&self) -> Result<Vec<&'static str>> {
        let mut out = Vec::new();
        for name in &self.serve {
            for name in name.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if name == "all" {
                    out.extend(aicore_domains::registry::DOMAINS.iter().map(|d| d.name));
                } else if let Some(d) = aicore_domains::registry::find(name) {
                    out.push(d.name);
                } else if aicore_proto::find_service(name).is_some() {
                    bail!("domain {name:?} has a contract but is not served by this build");
                } else {
                    bail!("unknown domain {name:?}");
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Where clients reach NATS.
    pub fn nats_url(&self) -> String {
        match &self.nats.url {
            Some(u) => u.clone(),
            None => format!(
                "nats://{}:{}",
                connect_host(&self.nats.host),
                self.nats.port
            ),
        }
    }

    /// The domains the gateway exposes, `served` and `all` expanded, each a contract.
    pub fn http_domains(&self) -> Result<Vec<&'static str>> {
        let mut out = Vec::new();
        for name in &self.http.domains {
            for name in name.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                match name {
                    "served" => out.extend(self.served_domains()?),
                    "all" => out.extend(aicore_proto::SERVICES.iter().map(|s| s.domain)),
                    n => match aicore_proto::find_service(n) {
                        Some(s) => out.push(s.domain),
                        None => bail!("http.domains: unknown domain {n:?}"),
                    },
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// The HTTP gateway's body limit: `http.max_body_bytes` when set, else the largest
    /// payload a domain accepts ([`DomainsConfig::max_blob_bytes`], e.g. a state-manager
    /// object) as JSON carries it, base64 (4 characters per 3 bytes), plus
    /// [`JSON_OVERHEAD_BYTES`] for the request's other fields. A fixed 256 KiB refused a
    /// 256 KiB object, which base64 grows to 342 KiB.
    pub fn http_max_body_bytes(&self) -> u32 {
        self.http.max_body_bytes.unwrap_or_else(|| {
            let base64 = (self.domains.max_blob_bytes() as u64).div_ceil(3) * 4;
            u32::try_from(base64 + JSON_OVERHEAD_BYTES).unwrap_or(u32::MAX)
        })
    }

    /// The crash-loop window.
    pub fn restart_window(&self) -> Duration {
        Duration::from_secs(self.nats.restart_window_secs)
    }

    /// Replaces port 0 with a free port on the configured host.
    pub fn pick_free_ports(&mut self) -> Result<()> {
        let host = self.nats.host.clone();
        // Listeners stay bound until both ports are picked, so the two differ.
        let mut held = Vec::new();
        for port in [&mut self.nats.port, &mut self.nats.monitor_port] {
            if *port == 0 {
                let l = TcpListener::bind((host.as_str(), 0))
                    .with_context(|| format!("finding a free port on {host}"))?;
                *port = l.local_addr()?.port();
                held.push(l);
            }
        }
        Ok(())
    }
}

/// Room in a request body beside its largest `bytes` field: the other fields with
/// their names (ids, keys, content type, idempotency key: under 1 KiB in every
/// contract) and a client's whitespace.
pub const JSON_OVERHEAD_BYTES: u64 = 16 * 1024;

/// The address to dial for a listen address (`0.0.0.0` listens everywhere, dial loopback).
pub fn connect_host(host: &str) -> &str {
    match host {
        "0.0.0.0" | "" => "127.0.0.1",
        "::" => "::1",
        h => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key path of a TOML value (tables walked; arrays and scalars are leaves).
    fn key_paths(v: &toml::Value, prefix: &str, out: &mut Vec<String>) {
        if let toml::Value::Table(t) = v {
            for (k, v) in t {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    // An empty table (a map with no entries by default) has no fields.
                    toml::Value::Table(inner) if inner.is_empty() => {}
                    toml::Value::Table(_) => key_paths(v, &path, out),
                    _ => out.push(path),
                }
            }
        }
    }

    #[test]
    fn example_file_lists_every_section_and_field() {
        // Parsing fills a missing field from the defaults, so equal values alone would not
        // notice a field (or a whole new domain's section) left out of the file.
        let text = include_str!("../../aicore.example.toml");
        let written: toml::Value = toml::from_str(text).expect("aicore.example.toml parses");
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        let (mut have, mut want) = (Vec::new(), Vec::new());
        key_paths(&written, "", &mut have);
        key_paths(&defaults, "", &mut want);
        let missing: Vec<&String> = want.iter().filter(|k| !have.contains(k)).collect();
        assert!(
            missing.is_empty(),
            "aicore.example.toml lacks {missing:?} (`aicore default-config` prints them)"
        );
        let unknown: Vec<&String> = have.iter().filter(|k| !want.contains(k)).collect();
        assert!(
            unknown.is_empty(),
            "aicore.example.toml has unknown {unknown:?}"
        );
    }

    #[test]
    fn example_file_equals_the_defaults() {
        let text = include_str!("../../aicore.example.toml");
        let parsed: Config = toml::from_str(text).expect("aicore.example.toml parses");
        // Compared in serialised form: every section, every field.
        assert_eq!(
            toml::to_string(&parsed).unwrap(),
            toml::to_string(&Config::default()).unwrap()
        );
    }

    #[test]
    fn the_body_limit_follows_the_largest_object_a_domain_accepts() {
        let mut c = Config::default();
        let object = c.domains.state_manager.max_object_bytes as u32;
        // The largest object, base64-encoded in the JSON body, fits; NATS carries it.
        let limit = c.http_max_body_bytes();
        assert_eq!(limit, 365_912);
        assert!(limit >= object.div_ceil(3) * 4 + 1024);
        assert!(limit < c.nats.max_payload);
        // A larger configured object raises it; an explicit setting wins.
        c.domains.world_state.max_fact_bytes = 3 * 100_000;
        assert_eq!(c.http_max_body_bytes(), 400_000 + 16 * 1024);
        c.http.max_body_bytes = Some(1000);
        assert_eq!(c.http_max_body_bytes(), 1000);
    }

    #[test]
    fn empty_file_is_the_defaults_and_unknown_keys_are_refused() {
        let empty: Config = toml::from_str("").unwrap();
        assert_eq!(
            toml::to_string(&empty).unwrap(),
            toml::to_string(&Config::default()).unwrap()
        );
        let err = toml::from_str::<Config>("nats = { prot = 1 }").unwrap_err();
        assert!(err.to_string().contains("prot"), "{err}");
    }
}
