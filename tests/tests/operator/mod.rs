//! What an operator meets on the machine itself: the files a real `aicore run` leaves in
//! its data directory are private to its user whatever the directory's mode and the
//! umask; the CLI finds the running appliance through the data directory alone (its
//! runtime file), on whatever ports it runs; and `aicore certs issue` returns only once
//! the running appliance accepts the new certificate.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use aicore_e2e::{Appliance, aicore_bin, with_umask};

mod store;
mod systemd;

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

/// Every file and directory under `dir` (not `dir` itself).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            walk(&p, out);
        }
    }
}

#[tokio::test]
async fn files_are_private_in_an_open_data_dir_under_a_permissive_umask() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let app = Appliance::start_in_with_umask(&data, 0).await;
    // The operator issues a certificate (into the CA directory and elsewhere) the same way.
    let out_dir = root.path().join("handed-out");
    for extra in [&[][..], &["--out", out_dir.to_str().unwrap()][..]] {
        let mut issue = Command::new(aicore_bin());
        with_umask(&mut issue, 0)
            .args(["certs", "--data-dir"])
            .arg(&data)
            .args(["issue", "arena", "--role", "game-server"])
            .args(extra);
        ok(&issue.output().unwrap());
    }

    let mut paths = Vec::new();
    walk(&data, &mut paths);
    let names: Vec<String> = paths
        .iter()
        .map(|p| p.strip_prefix(&data).unwrap().display().to_string())
        .collect();
    walk(&out_dir, &mut paths);
    paths.push(out_dir);
    for p in &paths {
        // The test harness's own log of the appliance is not the appliance's file.
        if p.starts_with(&app.log_path) {
            continue;
        }
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(p), want, "{}", p.display());
    }
    for expected in [
        "aicore.redb",
        "aicore.redb.wal0",
        "aicore.redb.wal1",
        "aicore.runtime.json",
        "nats-server.conf",
        "jetstream",
        "certs",
        "certs/index.json",
        "certs/ca.key",
        "certs/arena.key",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    // The directory the operator made keeps its mode, and the appliance says it is open.
    assert_eq!(mode(&data), 0o755);
    assert!(
        app.log().contains("the data directory") && app.log().contains("mode 0755"),
        "{}",
        app.log()
    );
    let status = aicore(&data, &["status", "--data-dir", data.to_str().unwrap()]);
    ok(&status);
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(
        stderr.contains("WARNING") && stderr.contains("0755"),
        "{stderr}"
    );
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

/// `aicore status | head`: the reader goes away before the command has printed
/// everything. The command must end quietly (the conventional death by SIGPIPE, or exit
/// 0), never with a panic message about a broken pipe. The pipe's read end is closed
/// before the command starts, so its very first write meets a closed pipe, whatever the
/// timing.
#[tokio::test]
async fn client_output_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let app = Appliance::start().await;
    let data = app.data_dir.to_str().unwrap().to_string();
    for args in [
        vec!["status", "--data-dir", &data],
        vec!["status", "--json", "--data-dir", &data],
        vec!["certs", "list", "--data-dir", &data],
        vec!["default-config"],
    ] {
        let (reader, writer) = std::io::pipe().expect("a pipe");
        drop(reader);
        let out = Command::new(aicore_bin())
            .args(&args)
            .current_dir(&app.data_dir)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("running aicore");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "aicore {args:?} complained about the closed pipe: {stderr}"
        );
        assert!(
            out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
            "aicore {args:?} ended with {:?}: {stderr}",
            out.status
        );
    }
}
