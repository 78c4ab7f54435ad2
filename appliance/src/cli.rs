//! The client-side commands: `aicore call` (any RPC of any domain, JSON in and out,
//! transcoded through the embedded descriptors by the proto3 JSON mapping),
//! `aicore status` (which domains answer `$SRV.PING`) and the last step of
//! `aicore certs issue` (waiting until the running appliance accepts the new
//! certificate). They speak plain NATS, like any other client, so they work against a
//! remote appliance or cluster as well; where a local appliance listens comes from its
//! runtime file ([`crate::runtime_file`]).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aicore_proto::{CallOptions, Caller, Code, Status, Transport};
use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use futures::StreamExt;

/// Exit code when the service answered with an error.
pub const EXIT_REMOTE_ERROR: i32 = 1;
/// Exit code when the command itself was wrong (unknown RPC, malformed JSON).
pub const EXIT_USAGE: i32 = 2;

/// A failure of `aicore call`, with the exit code it maps to.
pub struct CallFailure {
    /// The process exit code.
    pub exit: i32,
    /// The error as the service (or local validation) stated it.
    pub status: Status,
}

/// Options of `aicore call`.
pub struct CallArgs {
    /// Domain name.
    pub domain: String,
    /// RPC name (snake, kebab or Pascal case).
    pub rpc: String,
    /// Request as proto3 JSON.
    pub json: String,
    /// Deadline.
    pub timeout: Option<Duration>,
    /// Act on behalf of this account (trusted principals only).
    pub caller: Option<String>,
    /// Roles of `caller`.
    pub roles: Vec<String>,
}

/// Runs one RPC and prints the reply as JSON (one line per message for streams).
pub async fn call(nats: async_nats::Client, args: CallArgs) -> Result<(), CallFailure> {
    let usage = |m: String| CallFailure {
        exit: EXIT_USAGE,
        status: Status::new(Code::InvalidArgument, m),
    };
    let service = aicore_proto::find_service(&args.domain)
        .ok_or_else(|| usage(format!("unknown domain {:?}", args.domain)))?;
    let (_, method) = service
        .method(&args.rpc)
        .ok_or_else(|| usage(format!("{} has no rpc {:?}", service.full_name, args.rpc)))?;
    let input = crate::json::descriptor(method.input).map_err(|s| usage(s.message))?;
    let output = crate::json::descriptor(method.output).map_err(|s| usage(s.message))?;
    // Refused input keeps the field naming of the common error model.
    let body =
        crate::json::to_protobuf(&input, args.json.as_bytes()).map_err(|status| CallFailure {
            exit: EXIT_USAGE,
            status,
        })?;

    let client = aicore_sdk::Client::new(nats, Default::default());
    let options = CallOptions {
        timeout: args.timeout,
        caller: args.caller.map(|account_id| Caller {
            account_id,
            roles: args.roles,
        }),
        ..Default::default()
    };
    let remote = |status: Status| CallFailure {
        exit: EXIT_REMOTE_ERROR,
        status,
    };
    let print = |b: Bytes| -> Result<(), CallFailure> {
        let json =
            crate::json::from_protobuf(&output, b, !method.server_streaming).map_err(remote)?;
        println!("{}", String::from_utf8_lossy(&json));
        Ok(())
    };
    if method.server_streaming {
        let mut stream = client
            .server_stream(method, body, &options)
            .await
            .map_err(remote)?;
        while let Some(item) = stream.next().await {
            print(item.map_err(remote)?)?;
        }
        Ok(())
    } else {
        print(client.unary(method, body, &options).await.map_err(remote)?)
    }
}

/// The error as `aicore call` prints it on stderr: one JSON object, as the gateway
/// answers it.
pub fn error_json(s: &Status) -> String {
    aicore_proto::error_json(s)
}

/// One instance's answer to `$SRV.PING`.
#[derive(Debug, serde::Deserialize)]
struct Ping {
    name: String,
    id: String,
    version: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// What `aicore status` reports besides the domains.
pub struct Report {
    /// The certificates of the local CA, with their expiry.
    pub certs: Vec<crate::certs::Issued>,
    /// The appliance running on the data directory, from its runtime file.
    pub running: Option<crate::runtime_file::Runtime>,
    /// Problems an operator should fix (a data directory open to other users); the
    /// caller prints them on stderr before connecting, this puts them in the JSON.
    pub warnings: Vec<String>,
}

/// What the services answered to one `$SRV.PING`.
struct Answers {
    /// Instances (id, version) by service name.
    seen: BTreeMap<String, Vec<(String, String)>>,
    /// Why the store refuses writes, if a domain says it does.
    store_error: Option<String>,
}

/// Pings every service for `wait` and reports which of `expected` answered, the
/// appliance's runtime file, warnings, and when each certificate of the local CA
/// expires. Returns whether all answered.
pub async fn status(
    nats: &async_nats::Client,
    expected: &[&str],
    wait: Duration,
    json: bool,
    report: &Report,
) -> Result<bool> {
    let answers = ping_all(nats, wait).await?;
    let missing: Vec<&str> = expected
        .iter()
        .copied()
        .filter(|d| !answers.seen.contains_key(*d))
        .collect();
    if json {
        println!("{}", status_json(&answers, &missing, report));
    } else {
        print_status(&answers, &missing, report);
    }
    Ok(missing.is_empty())
}

/// Every answer to one `$SRV.PING` within `wait`.
async fn ping_all(nats: &async_nats::Client, wait: Duration) -> Result<Answers> {
    let inbox = nats.new_inbox();
    let mut sub = nats.subscribe(inbox.clone()).await?;
    nats.publish_with_reply("$SRV.PING", inbox, Bytes::new())
        .await
        .context("sending $SRV.PING")?;
    nats.flush().await?;
    let mut answers = Answers {
        seen: BTreeMap::new(),
        store_error: None,
    };
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, sub.next()).await {
        if let Ok(p) = serde_json::from_slice::<Ping>(&msg.payload) {
            if p.metadata.get("store").is_some_and(|s| s == "read-only") {
                answers.store_error = p
                    .metadata
                    .get("store_error")
                    .cloned()
                    .or(Some(String::new()));
            }
            answers
                .seen
                .entry(p.name)
                .or_default()
                .push((p.id, p.version));
        }
    }
    Ok(answers)
}

/// `aicore status --json`.
fn status_json(answers: &Answers, missing: &[&str], report: &Report) -> serde_json::Value {
    serde_json::json!({
        "ok": missing.is_empty(),
        "services": answers.seen.iter().map(|(name, inst)| serde_json::json!({
            "name": name,
            "instances": inst.len(),
            "versions": inst.iter().map(|i| i.1.clone()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "missing": missing,
        "store": if answers.store_error.is_some() { "read-only" } else { "writable" },
        "store_error": answers.store_error,
        "appliance": report.running,
        "warnings": report.warnings,
        "certificates": report.certs.iter().map(|c| serde_json::json!({
            "name": c.name,
            "role": c.role,
            "not_after": c.not_after,
            "revoked": c.revoked,
            "renewal_due": c.needs_renewal(std::time::SystemTime::now()),
        })).collect::<Vec<_>>(),
    })
}

/// `aicore status` for a terminal: the appliance, the store, the domains, certificates.
fn print_status(answers: &Answers, missing: &[&str], report: &Report) {
    if let Some(r) = &report.running {
        let up = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .saturating_sub(r.started_at);
        println!(
            "appliance pid {}, ready for {up} s: NATS {}, HTTP {}, monitor {}",
            r.pid,
            r.nats_url,
            r.http_url.as_deref().unwrap_or("off"),
            r.monitor_url.as_deref().unwrap_or("none"),
        );
        println!();
    }
    if let Some(e) = &answers.store_error {
        println!("store: READ-ONLY (reads work, writes are refused until it recovers): {e}");
        println!();
    }
    println!("{:<28} {:>9}  version", "domain", "instances");
    for (name, inst) in &answers.seen {
        println!("{name:<28} {:>9}  {}", inst.len(), inst[0].1);
    }
    for m in missing {
        println!("{m:<28} {:>9}  NOT ANSWERING", 0);
    }
    if !report.certs.is_empty() {
        println!();
        print_certificates(&report.certs);
    }
}

/// The local CA's certificates: role, time left, state.
fn print_certificates(certs: &[crate::certs::Issued]) {
    println!(
        "{:<28} {:<12} {:>12}  state",
        "certificate", "role", "expires in"
    );
    let now = SystemTime::now();
    let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    for c in certs {
        let left = c.not_after as i64 - now_secs as i64;
        let state = if c.revoked {
            "revoked"
        } else if left <= 0 {
            "expired"
        } else if c.needs_renewal(now) {
            "renewal due"
        } else {
            "valid"
        };
        let expires = format!("{}d {}h", left / 86_400, left % 86_400 / 3_600);
        println!("{:<28} {:<12} {expires:>12}  {state}", c.name, c.role);
    }
}

/// Connects (presenting `tls` when given: the admin certificate); a failure names the URL.
pub async fn connect_client(
    url: &str,
    tls: Option<&crate::security::ClientTls>,
) -> Result<async_nats::Client> {
    crate::security::with_tls(async_nats::ConnectOptions::new(), tls)
        .name("aicore-cli")
        .custom_inbox_prefix(crate::security::inbox_prefix("admin"))
        .connection_timeout(Duration::from_secs(3))
        .connect(url)
        .await
        .map_err(|e| anyhow!("cannot reach NATS at {url}: {e}"))
}

/// How long `aicore certs issue` waits for the running appliance to accept a new
/// certificate. Its supervisor applies the certificate index every
/// `security.check_interval_secs` (2 s by default) and then reloads nats-server; the
/// rest is room for a loaded machine.
pub const ACCEPT_BOUND: Duration = Duration::from_secs(15);

/// After `aicore certs issue`: when the appliance of this data directory runs (its
/// runtime file, `running`) with its own mTLS nats-server, connects as the new
/// certificate (`tls`) until the server accepts it, retrying with backoff (100 ms
/// doubling to 1 s) for at most [`ACCEPT_BOUND`], so the command returns only once the
/// certificate works. Returns what to tell the operator; an error when the appliance
/// never accepted it.
pub async fn await_accepted(
    issued: &crate::certs::Issued,
    tls: &crate::security::ClientTls,
    running: Option<&crate::runtime_file::Runtime>,
) -> Result<String> {
    let Some(running) = running else {
        return Ok(
            "no appliance is running on this data directory: the certificate is \
                   accepted from its next start"
                .into(),
        );
    };
    if !running.nats_mtls {
        return Ok(format!(
            "the running appliance (pid {}) does not check this CA's certificates \
             (--insecure-dev or nats.url): nothing to wait for",
            running.pid
        ));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if !(issued.not_before..issued.not_after).contains(&now) {
        return Ok(
            "the certificate is not valid now: not checked against the running \
                   appliance"
                .into(),
        );
    }
    let url = &running.nats_url;
    let give_up = tokio::time::Instant::now() + ACCEPT_BOUND;
    let mut delay = Duration::from_millis(100);
    loop {
        let attempt = async {
            let nats = crate::security::with_tls(async_nats::ConnectOptions::new(), Some(tls))
                .name("aicore-certs-issue")
                .connection_timeout(Duration::from_secs(3))
                .connect(url.as_str())
                .await?;
            // A round trip: the connection is really accepted, not closed right after.
            nats.flush().await?;
            anyhow::Ok(())
        };
        let refused = match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(())) => {
                return Ok(format!(
                    "accepted by the running appliance at {url} (pid {})",
                    running.pid
                ));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within 5 s".to_string(),
        };
        if tokio::time::Instant::now() + delay >= give_up {
            bail!(
                "certificate {:?} was issued, but the running appliance at {url} (pid {}) \
                 did not accept it within {} s; last refusal: {refused}",
                issued.name,
                running.pid,
                ACCEPT_BOUND.as_secs()
            );
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}
