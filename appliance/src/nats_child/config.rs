//! nats-server's configuration file: rendered from [`NatsChildConfig`] (listeners,
//! JetStream, TLS, the accounts and users the security policy gives), checked, and written
//! atomically beside the store.

use super::*;

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
pub(super) fn render_tls(tls: &NatsTls) -> String {
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
pub(super) fn quote(value: &str) -> String {
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
pub(super) fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The address to connect to for a listen address: the wildcard becomes loopback.
pub(super) fn connect_host(host: &str) -> &str {
    match host {
        "" | "0.0.0.0" => "127.0.0.1",
        "::" | "[::]" => "::1",
        other => other,
    }
}

/// Rejects configurations nats-server would misread rather than refuse.
pub(super) fn validate(cfg: &NatsChildConfig) -> Result<()> {
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
pub(super) async fn write_config(cfg: &NatsChildConfig) -> Result<()> {
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
