//! Security by default: the appliance's NATS accepts only certificates from its own CA
//! that are neither expired nor revoked, and each identity may do only what its role
//! allows. Everything here goes through a real `aicore run` and real TLS.

mod principals;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aicore_e2e::{Appliance, Identity};
use aicore_proto::CallOptions;
use aicore_proto::aicore::state_manager::v1 as sm;
use bytes::Bytes;

/// Tries to connect once (no retry), with a bound.
async fn try_connect(
    app: &Appliance,
    options: async_nats::ConnectOptions,
) -> Result<async_nats::Client, String> {
    let attempt = options
        .connection_timeout(Duration::from_secs(3))
        .connect(&app.nats_url);
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Ok(c)) => {
            // The server refuses an unmapped certificate after the handshake; a round trip
            // shows whether the connection is really accepted.
            match tokio::time::timeout(Duration::from_secs(3), c.flush()).await {
                Ok(Ok(())) => Ok(c),
                other => Err(format!("flush failed: {other:?}")),
            }
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Waits until `ok(connect result)` holds (the supervisor applies index changes within a
/// few seconds); panics with the last result otherwise.
async fn eventually(app: &Appliance, id: &Identity, accepted: bool) {
    let give_up = Instant::now() + Duration::from_secs(20);
    loop {
        let r = try_connect(app, id.options()).await;
        if r.is_ok() == accepted {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "{} still {} after 20 s: {:?}",
            id.cert.display(),
            if accepted { "refused" } else { "accepted" },
            r.err()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Connect options presenting `id` that record the server's asynchronous errors.
fn recording(id: &Identity) -> (async_nats::ConnectOptions, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let options = id.options().event_callback(move |event| {
        let seen = seen.clone();
        async move {
            if let async_nats::Event::ServerError(e) = event {
                seen.lock().unwrap().push(e.to_string());
            }
        }
    });
    (options, errors)
}

/// Waits for a permissions violation naming `subject` among `errors`.
async fn violation(errors: &Mutex<Vec<String>>, subject: &str) {
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        {
            let e = errors.lock().unwrap();
            if e.iter()
                .any(|m| m.to_lowercase().contains("permissions violation") && m.contains(subject))
            {
                return;
            }
            assert!(
                Instant::now() < give_up,
                "no violation for {subject}: {e:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_client_without_a_certificate_or_with_another_cas_is_refused() {
    let app = Appliance::start().await;
    aicore_e2e::install_crypto();
    // The admin certificate works (the control).
    try_connect(&app, app.options())
        .await
        .expect("admin connects");

    // Plaintext: the server requires TLS.
    let plain = try_connect(&app, async_nats::ConnectOptions::new()).await;
    assert!(plain.is_err(), "plaintext accepted");
    // TLS that trusts the server but presents no certificate.
    let anonymous = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(app.certs_dir().join("ca.pem"));
    assert!(
        try_connect(&app, anonymous).await.is_err(),
        "no client certificate accepted"
    );

    // Another CA's certificate with exactly the admin's subject: the chain decides.
    let rogue = tempfile::tempdir().unwrap();
    ok(&std::process::Command::new(aicore_e2e::aicore_bin())
        .args(["certs", "--data-dir"])
        .arg(rogue.path())
        .args(["issue", "admin", "--role", "admin"])
        .output()
        .unwrap());
    let forged = Identity::in_dir(
        &rogue.path().join("certs"),
        "admin",
        &app.certs_dir().join("ca.pem"),
    );
    let r = try_connect(&app, forged.options()).await;
    assert!(r.is_err(), "a certificate from another CA was accepted");
}

#[tokio::test]
async fn expired_and_revoked_certificates_are_refused() {
    let app = Appliance::start().await;
    let t = now();
    ok(&app.certs(&[
        "issue",
        "old-tool",
        "--role",
        "admin",
        "--validity",
        &(t - 2 * 86_400).to_string(),
        &(t - 86_400).to_string(),
    ]));
    ok(&app.certs(&["issue", "arena-1", "--role", "game-server"]));
    let arena = app.identity("arena-1");
    // A fresh certificate is accepted once the supervisor has applied the index...
    eventually(&app, &arena, true).await;
    // ...an expired one never.
    let expired = try_connect(&app, app.identity("old-tool").options()).await;
    assert!(expired.is_err(), "an expired certificate was accepted");

    let (options, _) = recording(&arena);
    let held = try_connect(&app, options).await.expect("arena connects");
    ok(&app.certs(&["revoke", "arena-1"]));
    let list = app.certs(&["list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("revoked"));
    // After the reload, new connections are refused and the open one is closed.
    eventually(&app, &arena, false).await;
    let give_up = Instant::now() + Duration::from_secs(10);
    while held.connection_state() == async_nats::connection::State::Connected {
        assert!(
            Instant::now() < give_up,
            "the revoked identity's connection stayed open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Everyone else is unaffected.
    try_connect(&app, app.options())
        .await
        .expect("admin still connects");
}

#[tokio::test]
async fn the_gateway_identity_may_call_but_not_serve() {
    let app = Appliance::start().await;
    let gateway = app.identity("gateway");
    let (options, errors) = recording(&gateway);
    let nats = try_connect(&app, options).await.expect("gateway connects");

    // It may send requests and receive their replies.
    let client =
        sm::StateManagerClient::new(aicore_sdk::Client::new(nats.clone(), Default::default()));
    put_and_get(&client, "gw-player").await;

    // It may not take requests meant for the domains.
    let _sub = nats.subscribe("svc.>").await.unwrap();
    nats.flush().await.ok();
    violation(&errors, "svc.>").await;
    // Nor read events.
    let _events = nats.subscribe("evt.>").await.unwrap();
    nats.flush().await.ok();
    violation(&errors, "evt.>").await;
}

async fn put_and_get(client: &sm::StateManagerClient<aicore_sdk::Client>, player: &str) {
    put_and_get_as(client, player, None).await
}

/// Writes and reads back `player`'s object, acting for `caller` (a player) when given.
async fn put_and_get_as(
    client: &sm::StateManagerClient<aicore_sdk::Client>,
    player: &str,
    caller: Option<&str>,
) {
    let opts = CallOptions {
        caller: caller.map(|c| aicore_proto::Caller {
            account_id: c.into(),
            roles: vec!["player".into()],
        }),
        ..CallOptions::timeout(Duration::from_secs(10))
    }
    // Retried (e.g. over a reconnect) only with an idempotency key: the SDK adds one.
    .with_fresh_idempotency_key();
    client
        .put(
            sm::PutRequest {
                player_id: player.into(),
                key: "k".into(),
                data: Bytes::from_static(b"v"),
                content_type: "application/octet-stream".into(),
                expected_version: None,
                idempotency_key: String::new(),
            },
            &opts,
        )
        .await
        .expect("put allowed");
    let got = client
        .get(
            sm::GetRequest {
                player_id: player.into(),
                key: "k".into(),
                version: 0,
            },
            &opts,
        )
        .await
        .expect("get allowed");
    assert_eq!(&got.data[..], b"v");
}

#[tokio::test]
async fn a_game_server_calls_only_the_configured_rpcs() {
    let app = Appliance::start_with_config(
        "[security]\ngame_server_allow = [\"svc.state_manager.v1.>\"]\n",
    )
    .await;
    ok(&app.certs(&["issue", "arena-2", "--role", "game-server"]));
    let arena = app.identity("arena-2");
    eventually(&app, &arena, true).await;
    let (options, errors) = recording(&arena);
    let nats = try_connect(&app, options)
        .await
        .expect("game server connects");
    let client =
        sm::StateManagerClient::new(aicore_sdk::Client::new(nats.clone(), Default::default()));
    // A game server acts for a player (within its ceiling, `player` by default).
    put_and_get_as(&client, "arena-player", Some("arena-player")).await;

    // Anything else under svc. is refused by the server: no reply, a violation.
    let forbidden = nats.request("svc.payment.v1.credit", Bytes::new()).await;
    assert!(forbidden.is_err(), "a forbidden RPC was answered");
    violation(&errors, "svc.payment.v1.credit").await;
    // Telemetry is allowed (no violation for it).
    nats.publish("telemetry.arena.fps", Bytes::from_static(b"60"))
        .await
        .unwrap();
    nats.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !errors
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.contains("telemetry")),
        "telemetry refused"
    );
}

/// Serial numbers of the certificates `aicore certs list` shows, by name.
fn serials(app: &Appliance) -> std::collections::BTreeMap<String, String> {
    let out = app.certs(&["list"]);
    ok(&out);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            Some((cols.first()?.to_string(), cols.last()?.to_string()))
        })
        .collect()
}

#[tokio::test]
async fn certificates_rotate_under_load_without_a_restart_or_a_lost_request() {
    // Six-second certificates: renewed every four seconds, checked every second.
    let app =
        Appliance::start_with_config("[security]\ncert_secs = 6\ncheck_interval_secs = 1\n").await;
    let nats_pid = app.nats_pid().expect("nats-server child");
    let before = serials(&app);
    let nats = app.nats().await;
    let client =
        sm::StateManagerClient::new(aicore_sdk::Client::new(nats.clone(), Default::default()));
    let opts = CallOptions::timeout(Duration::from_secs(10));

    // Steady load across two full renewals of every certificate.
    let until = Instant::now() + Duration::from_secs(14);
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let client = client.clone();
        // A write is retried over a reconnect only with an idempotency key: the SDK adds
        // one to each put.
        let opts = opts.clone().with_fresh_idempotency_key();
        tasks.push(tokio::spawn(async move {
            let (mut done, mut failed) = (0u32, Vec::new());
            while Instant::now() < until {
                let r = client
                    .put(
                        sm::PutRequest {
                            player_id: format!("rot-{worker}"),
                            key: format!("k{done}"),
                            data: Bytes::from_static(b"v"),
                            content_type: "application/octet-stream".into(),
                            expected_version: None,
                            idempotency_key: String::new(),
                        },
                        &opts,
                    )
                    .await;
                match r {
                    Ok(_) => done += 1,
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (done, failed)
        }));
    }
    let mut total = 0;
    for t in tasks {
        let (done, failed) = t.await.unwrap();
        assert!(
            failed.is_empty(),
            "requests failed during rotation: {failed:?}"
        );
        total += done;
    }
    assert!(total > 0);

    let after = serials(&app);
    for name in ["nats", "domains", "gateway", "admin"] {
        assert_ne!(before.get(name), after.get(name), "{name} was not renewed");
    }
    assert_eq!(app.nats_pid(), Some(nats_pid), "nats-server was restarted");
    assert!(
        app.log().contains("renewed certificates"),
        "no renewal logged:\n{}",
        app.log()
    );
    // Renewals keep the appliance's own keys, so nats-server closed none of its
    // connections when the certificates they were made with expired.
    assert!(
        !app.log().contains("pinned certs reload"),
        "a renewal closed connections:\n{}",
        app.log()
    );
    // The certificate this connection started with has expired by now: a reconnect
    // presents the renewed files, and is accepted.
    nats.force_reconnect().await.expect("reconnect");
    put_and_get(&client, "after-rotation").await;
    try_connect(&app, app.options())
        .await
        .expect("the renewed admin certificate connects");
    // Every domain still answers, the CLI (reading the renewed files) gets through, and
    // status shows each certificate's expiry (six-second certificates: within seconds).
    let st = app.cli(&["status", "--json"]);
    ok(&st);
    let doc: serde_json::Value = serde_json::from_slice(&st.stdout).expect("JSON status");
    let shown = doc["certificates"]
        .as_array()
        .expect("certificates in status");
    for name in ["nats", "domains", "gateway", "admin"] {
        let c = shown
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name} not in status: {doc}"));
        let not_after = c["not_after"].as_u64().unwrap();
        assert!(not_after.abs_diff(now()) <= 10, "{c}");
        assert!(c["renewal_due"].is_boolean(), "{c}");
    }
}

#[tokio::test]
async fn insecure_dev_runs_plaintext_only_when_asked_and_says_so() {
    let app = Appliance::start_with_config("[security]\ninsecure_dev = true\n").await;
    assert!(
        !app.certs_dir().join("admin.pem").exists(),
        "insecure-dev issued certificates"
    );
    // Plaintext, no identity: accepted, and may do anything.
    let plain = try_connect(&app, async_nats::ConnectOptions::new())
        .await
        .expect("plaintext accepted in insecure-dev");
    let _sub = plain.subscribe("svc.>").await.unwrap();
    plain.flush().await.unwrap();
    assert!(app.log().contains("INSECURE DEV MODE"), "{}", app.log());
    // The CLI falls back to plaintext when there is no admin certificate.
    ok(&app.cli(&["status"]));
}

#[tokio::test]
async fn login_brute_force_is_locked_out() {
    use aicore_proto::Code;
    use aicore_proto::aicore::auth::v1 as auth;
    // A minute-long first lock, so a slow machine cannot outwait it between two calls.
    let app = Appliance::start_with_config("[domains.auth]\nlockout_base_ms = 60000\n").await;
    let a = auth::AuthClient::new(app.client().await);
    let opts = CallOptions::timeout(Duration::from_secs(10));
    a.register(
        auth::RegisterRequest {
            username: "target".into(),
            password: "copper-heron-meadow".into(),
            display_name: String::new(),
        },
        &opts,
    )
    .await
    .expect("register");
    let login = |password: &str| auth::LoginRequest {
        username: "target".into(),
        password: password.into(),
        user_agent: "e2e".into(),
    };
    // Guessing: refused as unauthenticated until the lockout starts, then refused as
    // locked with a growing wait.
    let mut locked_after = None;
    for guess in 0..12 {
        let e = a
            .login(login(&format!("guess-number-{guess}")), &opts)
            .await
            .unwrap_err();
        match e.code {
            Code::Unauthenticated => {}
            Code::ResourceExhausted => {
                locked_after = Some(guess);
                break;
            }
            other => panic!("unexpected {other:?}: {}", e.message),
        }
    }
    let locked_after = locked_after.expect("never locked out after 12 wrong passwords");
    assert!(
        locked_after <= 10,
        "locked only after {locked_after} guesses"
    );
    // While locked, even the right password is refused: guessing gains nothing.
    let e = a
        .login(login("copper-heron-meadow"), &opts)
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::ResourceExhausted, "{}", e.message);
}

#[tokio::test]
async fn joining_an_external_server_presents_the_configured_certificate() {
    // The first appliance plays the external NATS server; a second one joins it with
    // `nats.url` and the client certificate named in its configuration.
    let app = Appliance::start().await;
    let certs = app.certs_dir();
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[security]\nclient_cert = {:?}\nclient_key = {:?}\nca_cert = {:?}\n",
        certs.join("domains.pem"),
        certs.join("domains.key"),
        certs.join("ca.pem"),
    );
    std::fs::write(dir.path().join("aicore.toml"), toml).unwrap();
    let log_path = dir.path().join("joiner.log");
    let mut joiner = std::process::Command::new(aicore_e2e::aicore_bin())
        .arg("run")
        .arg("--config")
        .arg(dir.path().join("aicore.toml"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--nats-url", &app.nats_url, "--domains", "settings"])
        .args(["--http-port", &aicore_e2e::free_port().to_string()])
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let give_up = Instant::now() + Duration::from_secs(60);
    let log = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains("aicore ready") {
            break log;
        }
        if let Ok(Some(status)) = joiner.try_wait() {
            panic!("the joining appliance exited ({status}):\n{log}");
        }
        assert!(Instant::now() < give_up, "never ready:\n{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!log.contains("INSECURE"), "{log}");
    // It issued nothing of its own: the identity came from the configuration.
    assert!(!dir.path().join("certs").exists());
    let _ = joiner.kill();
    let _ = joiner.wait();
}

#[tokio::test]
async fn streams_written_before_accounts_existed_are_kept() {
    use async_nats::jetstream;
    // An appliance whose JetStream lives in nats-server's global account (as every one
    // did before accounts, and as --insecure-dev still runs) ...
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("aicore.toml"),
        "[security]\ninsecure_dev = true\n",
    )
    .unwrap();
    let mut app = Appliance::start_in(dir.path()).await;
    let js = jetstream::new(app.nats().await);
    js.publish("evt.test.before", Bytes::from_static(b"kept"))
        .await
        .unwrap()
        .await
        .unwrap();
    app.signal(libc::SIGTERM);
    assert_eq!(app.wait_exit(Duration::from_secs(30)).await, Some(0));
    assert!(dir.path().join("jetstream/jetstream/$G").is_dir());
    // ... restarted with the defaults (mTLS, accounts) still has the message.
    std::fs::remove_file(dir.path().join("aicore.toml")).unwrap();
    let app = Appliance::start_in(dir.path()).await;
    let js = jetstream::new(app.nats().await);
    let mut stream = js.get_stream("EVENTS").await.unwrap();
    let last = stream
        .get_last_raw_message_by_subject("evt.test.before")
        .await
        .expect("the message written before the upgrade");
    assert_eq!(&last.payload[..], b"kept");
    assert!(stream.info().await.unwrap().state.messages >= 1);
}

#[tokio::test]
async fn certificate_issues_and_revocations_are_audited_once() {
    use async_nats::jetstream;
    let dir = tempfile::tempdir().unwrap();
    let mut app = Appliance::start_in(dir.path()).await;
    ok(&app.certs(&["issue", "arena-9", "--role", "game-server"]));
    ok(&app.certs(&["revoke", "arena-9"]));
    let serial = serials(&app)["arena-9"].clone();
    let js = jetstream::new(app.nats().await);
    let stream = js.get_stream("AUDIT").await.unwrap();
    let give_up = Instant::now() + Duration::from_secs(20);
    for kind in ["issued", "revoked"] {
        let subject = format!("audit.certs.{kind}.{serial}");
        let record = loop {
            match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(m) => break m,
                Err(_) if Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => panic!("no {subject}: {e}"),
            }
        };
        let v: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
        assert_eq!(v["kind"], kind);
        assert_eq!(v["name"], "arena-9");
        assert_eq!(v["role"], "game-server");
        let text = String::from_utf8_lossy(&record.payload);
        assert!(!text.contains("PRIVATE KEY"), "{text}");
    }
    // A restart reads the same index again and records nothing twice.
    app.signal(libc::SIGTERM);
    assert_eq!(app.wait_exit(Duration::from_secs(30)).await, Some(0));
    let app = Appliance::start_in(dir.path()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let js = jetstream::new(app.nats().await);
    let stream = js.get_stream("AUDIT").await.unwrap();
    let info = stream
        .info_with_subjects(format!("audit.certs.*.{serial}"))
        .await
        .unwrap();
    use futures::StreamExt;
    let counts: Vec<(String, usize)> = info
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert!(counts.iter().all(|(_, n)| *n == 1), "{counts:?}");
}
