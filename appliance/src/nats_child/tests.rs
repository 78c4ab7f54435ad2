//! Tests of the nats-server child, against a real nats-server binary.

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
