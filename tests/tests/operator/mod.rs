//! What an operator meets on the machine itself: the CLI finds the running appliance
//! through the data directory alone (its runtime file), on whatever ports it runs; and
//! `aicore certs issue` returns only once the running appliance accepts the new
//! certificate.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use aicore_e2e::{Appliance, aicore_bin};

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `aicore <args>` in `dir`, with nothing but what the arguments say.
fn aicore(dir: &Path, args: &[&str]) -> Output {
    Command::new(aicore_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running aicore")
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn the_cli_finds_the_appliance_on_its_ports_from_the_data_dir_alone() {
    // Random ports, none of them the defaults the configuration would name.
    let mut app = Appliance::start().await;
    let data = app.data_dir.clone();
    let d = data.to_str().unwrap();

    // Every client command takes --data-dir in the same place, and needs nothing else.
    let status = ok(&aicore(&data, &["status", "--data-dir", d]));
    assert!(status.contains(&app.nats_url), "{status}");
    for domain in aicore_e2e::domains() {
        assert!(status.contains(domain), "{domain} missing:\n{status}");
    }
    let runtime: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("aicore.runtime.json")).unwrap()).unwrap();
    assert_eq!(runtime["nats_url"], app.nats_url.as_str(), "{runtime}");
    assert_eq!(runtime["http_url"], app.http_url.as_str(), "{runtime}");
    assert_eq!(runtime["pid"], app.pid(), "{runtime}");
    assert_eq!(mode(&data.join("aicore.runtime.json")), 0o600);
    let register = r#"{"username":"ops","password":"violet-otter-lantern"}"#;
    let reply = ok(&aicore(
        &data,
        &["call", "auth", "register", register, "--data-dir", d],
    ));
    assert!(reply.contains("accountId"), "{reply}");
    ok(&aicore(&data, &["certs", "list", "--data-dir", d]));
    ok(&aicore(&data, &["certs", "--data-dir", d, "list"]));

    // A clean exit takes the file away.
    app.signal(libc::SIGTERM);
    assert_eq!(app.wait_exit(Duration::from_secs(30)).await, Some(0));
    assert!(!data.join("aicore.runtime.json").exists());

    // After a crash the file stays, but names a process that is gone: it is ignored.
    let mut app = Appliance::start_in(&data).await;
    let stale_url = app.nats_url.clone();
    app.crash().await;
    assert!(data.join("aicore.runtime.json").exists());
    let status = aicore(&data, &["status", "--data-dir", d]);
    let said = String::from_utf8_lossy(&status.stderr);
    assert!(
        !said.contains(&stale_url),
        "the stale file was used: {said}"
    );
}

#[tokio::test]
async fn an_issued_certificate_is_accepted_when_the_command_returns() {
    // Index changes are applied every 5 s: a command that returned at once would leave
    // the new certificate refused for up to that long.
    let mut app = Appliance::start_with_config("[security]\ncheck_interval_secs = 5\n").await;
    let said = ok(&app.certs(&["issue", "arena-7", "--role", "game-server"]));
    // At once, no retry: accepted (a refusal would be an authorization violation).
    aicore_e2e::install_crypto();
    let nats = app
        .identity("arena-7")
        .options()
        .connection_timeout(Duration::from_secs(3))
        .connect(&app.nats_url)
        .await
        .expect("the new certificate is accepted");
    nats.flush().await.expect("a round trip as arena-7");
    assert!(said.contains("accepted by the running appliance"), "{said}");

    // With no appliance running, issuing says so and succeeds.
    app.signal(libc::SIGTERM);
    assert_eq!(app.wait_exit(Duration::from_secs(30)).await, Some(0));
    let said = ok(&app.certs(&["issue", "arena-8", "--role", "game-server"]));
    assert!(said.contains("no appliance is running"), "{said}");
}

#[tokio::test]
async fn issuing_fails_when_the_running_appliance_never_accepts_the_certificate() {
    // A runtime file naming a live process (this test) and a NATS address nobody answers
    // on: the certificate is issued, never accepted, and the command says so and fails.
    let dir = tempfile::tempdir().unwrap();
    let port = aicore_e2e::free_port();
    let runtime = serde_json::json!({
        "pid": std::process::id(),
        "pid_start": null,
        "started_at": 0,
        "nats_url": format!("nats://127.0.0.1:{port}"),
        "nats_mtls": true,
        "http_url": null,
        "monitor_url": null,
    });
    std::fs::write(dir.path().join("aicore.runtime.json"), runtime.to_string()).unwrap();
    let d = dir.path().to_str().unwrap();
    let out = aicore(
        dir.path(),
        &[
            "certs",
            "--data-dir",
            d,
            "issue",
            "lost",
            "--role",
            "game-server",
        ],
    );
    assert!(!out.status.success(), "issuing claimed success");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("\"lost\" was issued") && said.contains("did not accept it"),
        "{said}"
    );
}
