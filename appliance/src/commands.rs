//! The subcommands behind `main`'s dispatch, one function each: `run` hands off to the
//! supervisor; `call`, `status`, `certs` and `store` act on an appliance from outside.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;

use crate::config::Config;
use crate::{certs, cli, files, init_logging, runtime_file, security, supervisor};

/// `aicore run`'s flags.
#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub place: Place,
    /// Client port of the nats-server child; 0 picks a free one.
    #[arg(long)]
    pub nats_port: Option<u16>,
    /// Monitoring port of the nats-server child; 0 picks a free one.
    #[arg(long)]
    pub nats_monitor_port: Option<u16>,
    /// Join this NATS server instead of starting a child.
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Domains to serve: `all` or a comma-separated list.
    #[arg(long)]
    pub domains: Option<String>,
    /// Port of the HTTP gateway; 0 picks a free one.
    #[arg(long)]
    pub http_port: Option<u16>,
    /// Run NATS in plaintext with no users (local debugging only; never the default).
    #[arg(long)]
    pub insecure_dev: bool,
}

/// `aicore call`'s arguments.
#[derive(clap::Args)]
pub struct CallArgs {
    /// Domain, e.g. `auth` or `state-manager`.
    pub domain: String,
    /// RPC, e.g. `login` (snake, kebab or Pascal case).
    pub rpc: String,
    /// The request as proto3 JSON.
    #[arg(default_value = "{}")]
    pub json: String,
    /// NATS URL (default: from the configuration).
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Deadline in milliseconds.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Act on behalf of this account id (as the gateway does for end users).
    #[arg(long = "as")]
    pub caller: Option<String>,
    /// Roles of `--as`, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub roles: Vec<String>,
    #[command(flatten)]
    pub place: Place,
    #[command(flatten)]
    pub identity: Identity,
}

/// `aicore status`'s flags.
#[derive(clap::Args)]
pub struct StatusArgs {
    /// NATS URL (default: from the configuration).
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Domains expected (default: the configured `serve` list).
    #[arg(long)]
    pub domains: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// How long to collect answers, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub wait_ms: u64,
    #[command(flatten)]
    pub place: Place,
    #[command(flatten)]
    pub identity: Identity,
}

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Read the write-ahead log and say what opening the store would do: batches to
    /// apply, a crash's torn tail to cut away, or damage that makes it refuse to open.
    /// Exits non-zero when there is damage.
    Check,
    /// Apply what provably precedes any damage in the log and drop the rest, saying
    /// which batches were dropped; the store opens again afterwards.
    Repair,
}

/// The appliance a command acts on: its data directory. Every command that has one
/// (`run`, `call`, `status`, `certs …`) takes the same flag, before or after a `certs`
/// subcommand.
#[derive(clap::Args)]
pub struct Place {
    /// The appliance's data directory (overrides `data_dir` of the configuration). A
    /// running appliance publishes where it listens in `<data-dir>/aicore.runtime.json`;
    /// the client commands read it.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
}

impl Place {
    /// The configuration with this data directory, if one was given.
    pub fn apply(self, config: &mut Config) {
        if let Some(d) = self.data_dir {
            config.data_dir = d;
        }
    }
}

/// Which certificate a client command presents: `admin` from the appliance's
/// certificate directory.
#[derive(clap::Args)]
pub struct Identity {
    /// The certificate directory (default: `<data-dir>/certs`): `admin.pem`,
    /// `admin.key` and `ca.pem`. Without them the command connects in plaintext.
    #[arg(long)]
    cert_dir: Option<PathBuf>,
}

impl Identity {
    fn dir(&self, config: &Config) -> PathBuf {
        match &self.cert_dir {
            Some(c) => c.clone(),
            None => config.data_dir.join("certs"),
        }
    }

    /// The admin identity, when its files exist.
    fn tls(&self, config: &Config) -> Option<security::ClientTls> {
        Some(security::ClientTls::in_dir(&self.dir(config), "admin"))
            .filter(security::ClientTls::exists)
    }

    /// The certificates of the local CA, when this machine holds it (else none).
    fn certificates(&self, config: &Config) -> Vec<certs::Issued> {
        let dir = self.dir(config);
        if !dir.join("ca.key").exists() {
            return Vec::new();
        }
        certs::Authority::open_or_create(&dir, config.security.ca_days)
            .and_then(|ca| ca.list())
            .unwrap_or_default()
    }
}

/// Where a client command reaches NATS: `--nats-url`, else the running appliance's
/// runtime file, else the configuration.
fn client_url(
    flag: Option<String>,
    config: &Config,
    running: Option<&runtime_file::Runtime>,
) -> String {
    flag.or_else(|| running.map(|r| r.nats_url.clone()))
        .unwrap_or_else(|| config.nats_url())
}

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Issue a client certificate for an external principal (a game server, a tool).
    Issue {
        /// Its name (the certificate's CN).
        name: String,
        /// Its role: domains, gateway, admin or game-server.
        #[arg(long)]
        role: String,
        /// Where to write `<name>.pem` and `<name>.key` (default: the CA directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Validity in days.
        #[arg(long, default_value_t = 90)]
        days: u32,
        /// Start and end of validity as Unix seconds, instead of `--days` (tests issue
        /// already expired certificates with them).
        #[arg(long, hide = true, num_args = 2, value_names = ["NOT_BEFORE", "NOT_AFTER"])]
        validity: Option<Vec<u64>>,
    },
    /// List issued certificates with role, expiry and revocation.
    List,
    /// Revoke every certificate of a name (or one, with --serial). Issuing the name again
    /// makes a new certificate; the revoked ones stay refused.
    Revoke {
        /// The certificate's name.
        name: String,
        /// Revoke only the certificate with this serial (hex, as `certs list` shows).
        #[arg(long)]
        serial: Option<String>,
    },
}

/// `aicore run`: the appliance, until SIGTERM/SIGINT.
pub async fn run(mut config: Config, args: RunArgs) -> Result<ExitCode> {
    let RunArgs {
        place,
        nats_port,
        nats_monitor_port,
        nats_url,
        domains,
        http_port,
        insecure_dev,
    } = args;
    if insecure_dev {
        config.security.insecure_dev = true;
    }
    place.apply(&mut config);
    if let Some(p) = nats_port {
        config.nats.port = p;
    }
    if let Some(p) = nats_monitor_port {
        config.nats.monitor_port = p;
    }
    if let Some(u) = nats_url {
        config.nats.url = Some(u);
    }
    if let Some(d) = domains {
        config.serve = vec![d];
    }
    if let Some(p) = http_port {
        config.http.port = p;
    }
    init_logging(&config.log);
    supervisor::run(config).await?;
    Ok(ExitCode::SUCCESS)
}

/// `aicore call`: one RPC, its reply printed.
pub async fn call(mut config: Config, args: CallArgs) -> Result<ExitCode> {
    let CallArgs {
        domain,
        rpc,
        json,
        nats_url,
        timeout_ms,
        caller,
        roles,
        place,
        identity,
    } = args;
    init_logging("warn");
    place.apply(&mut config);
    let running = runtime_file::read(&config.data_dir)?;
    let url = client_url(nats_url, &config, running.as_ref());
    let nats = cli::connect_client(&url, identity.tls(&config).as_ref()).await?;
    let args = cli::CallArgs {
        domain,
        rpc,
        json,
        timeout: timeout_ms.map(Duration::from_millis),
        caller,
        roles,
    };
    match cli::call(nats, args).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(f) => {
            eprintln!("{}", cli::error_json(&f.status));
            Ok(ExitCode::from(f.exit as u8))
        }
    }
}

/// `aicore status`: which domains answer, and the appliance's files and certificates.
pub async fn status(mut config: Config, args: StatusArgs) -> Result<ExitCode> {
    let StatusArgs {
        nats_url,
        domains,
        json,
        wait_ms,
        place,
        identity,
    } = args;
    init_logging("warn");
    place.apply(&mut config);
    if let Some(d) = domains {
        config.serve = vec![d];
    }
    let expected = config.served_domains()?;
    let warnings: Vec<String> = files::shared_mode(&config.data_dir)
        .map(|mode| files::shared_warning(&config.data_dir, mode))
        .into_iter()
        .collect();
    for w in &warnings {
        eprintln!("WARNING: {w}");
    }
    let running = runtime_file::read(&config.data_dir)?;
    let url = client_url(nats_url, &config, running.as_ref());
    let tls = identity.tls(&config);
    let nats = cli::connect_client(&url, tls.as_ref()).await?;
    let report = cli::Report {
        certs: identity.certificates(&config),
        running,
        warnings,
    };
    let wait = Duration::from_millis(wait_ms);
    let ok = cli::status(&nats, &expected, wait, json, &report).await?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `aicore certs …`: the local CA's certificates.
pub async fn certs(mut config: Config, place: Place, command: CertsCommand) -> Result<ExitCode> {
    // Refusals while waiting for a new certificate to be accepted are expected;
    // the outcome is reported below, not logged by the NATS client.
    init_logging("warn,async_nats=off");
    place.apply(&mut config);
    let dir = config.data_dir.join("certs");
    let ca = certs::Authority::open_or_create(&dir, 3650)?;
    match command {
        CertsCommand::Issue {
            name,
            role,
            out,
            days,
            validity,
        } => issue(&config, &ca, (name, role), out, days, validity).await?,
        CertsCommand::List => list(&ca)?,
        CertsCommand::Revoke { name, serial } => {
            for c in ca.revoke(&name, serial.as_deref())? {
                println!("revoked {name} (serial {})", c.serial);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `aicore certs issue`: a client certificate, then waits until the running appliance
/// accepts it.
async fn issue(
    config: &Config,
    ca: &certs::Authority,
    (name, role): (String, String),
    out: Option<PathBuf>,
    days: u32,
    validity: Option<Vec<u64>>,
) -> Result<()> {
    if role == "server" {
        anyhow::bail!("server certificates are issued by `aicore run` itself");
    }
    security::check_manual_issue(&name, &role)?;
    let c = match validity.as_deref() {
        Some(&[from, until]) => {
            let at = |s| std::time::UNIX_EPOCH + Duration::from_secs(s);
            ca.issue_between(&name, &role, at(from), at(until), &[], out.as_deref())?
        }
        _ => ca.issue(&name, &role, days, &[], out.as_deref())?,
    };
    println!("certificate {}", c.cert_path.display());
    println!("key         {}", c.key_path.display());
    println!("ca          {}", ca.ca_path().display());
    let running = runtime_file::read(&config.data_dir)?;
    let tls = security::ClientTls {
        ca: ca.ca_path(),
        cert: c.cert_path.clone(),
        key: c.key_path.clone(),
    };
    let outcome = cli::await_accepted(&c, &tls, running.as_ref()).await?;
    println!("{outcome}");
    Ok(())
}

/// `aicore certs list`: every certificate of the index with its state.
fn list(ca: &certs::Authority) -> Result<()> {
    println!(
        "{:<24} {:<12} {:<12} {:<8} serial",
        "name", "role", "expires", "status"
    );
    for c in ca.list_all()? {
        let days_left = (c.not_after as i64
            - std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64))
            / 86_400;
        let status = if c.revoked {
            "revoked"
        } else if days_left < 0 {
            "expired"
        } else if c.needs_renewal(std::time::SystemTime::now()) {
            "renew"
        } else {
            "valid"
        };
        println!(
            "{:<24} {:<12} {:<12} {:<8} {}",
            c.name,
            c.role,
            format!("in {days_left} d"),
            status,
            c.serial
        );
    }
    Ok(())
}

/// `aicore store check|repair`.
pub fn store(mut config: Config, place: Place, command: StoreCommand) -> Result<ExitCode> {
    init_logging("warn");
    place.apply(&mut config);
    let path = config.data_dir.join(&config.store.file);
    let repair = matches!(command, StoreCommand::Repair);
    let r = aicore_runtime::store::check(&path, repair).map_err(|e| {
        anyhow::anyhow!(
            "checking the store {}: {}",
            path.display(),
            aicore_runtime::store::StoreError::chain(&e)
        )
    })?;
    println!(
        "store {}: checkpoint at batch {}",
        path.display(),
        r.checkpoint
    );
    let verb = if r.repaired { "applied" } else { "to apply" };
    println!("logged batches {verb}: {}", r.to_apply);
    if !r.torn.is_empty() {
        println!(
            "torn tail of a crash (never acknowledged), cut away: batches {:?}",
            r.torn
        );
    }
    match (&r.damage, r.repaired) {
        (None, _) => {
            println!("no damage");
            Ok(ExitCode::SUCCESS)
        }
        (Some(d), false) => {
            println!("DAMAGE: {d}");
            println!(
                "`aicore store repair` would drop acknowledged batches {:?}",
                r.lost
            );
            Ok(ExitCode::FAILURE)
        }
        (Some(d), true) => {
            println!("REPAIRED past damage: {d}");
            println!("dropped acknowledged batches {:?}", r.lost);
            Ok(ExitCode::SUCCESS)
        }
    }
}
