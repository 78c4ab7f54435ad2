//! What an operator meets on the machine itself: the CLI finds the running appliance
//! through the data directory alone (its runtime file), on whatever ports it runs.

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
