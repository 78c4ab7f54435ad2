//! NATS helpers: a bare nats-server, who answers `$SRV.PING`, and the game time.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::{free_port, nats_server_bin};

/// A bare nats-server on a free port, killed on drop (for runtime-level tests).
pub struct BareNats {
    child: Child,
    /// Its client URL.
    pub url: String,
}

impl BareNats {
    /// Starts one and waits until it accepts connections.
    pub async fn start() -> BareNats {
        BareNats::spawn(&[]).await
    }

    /// Starts one with JetStream keeping its store in `dir` (same `dir` after a restart
    /// finds the same streams).
    pub async fn start_js(dir: &Path) -> BareNats {
        let dir = dir.to_str().expect("a UTF-8 store dir");
        BareNats::spawn(&["-js", "-sd", dir]).await
    }

    async fn spawn(extra: &[&str]) -> BareNats {
        let port = free_port();
        let child = Command::new(nats_server_bin())
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning nats-server");
        let url = format!("nats://127.0.0.1:{port}");
        let give_up = Instant::now() + Duration::from_secs(20);
        while async_nats::connect(&url).await.is_err() {
            assert!(Instant::now() < give_up, "nats-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        BareNats { child, url }
    }
}

impl Drop for BareNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Service names answering `$SRV.PING` within `wait`.
pub async fn ping(nats: &async_nats::Client, wait: Duration) -> Vec<String> {
    let inbox = nats.new_inbox();
    let Ok(mut sub) = nats.subscribe(inbox.clone()).await else {
        return Vec::new();
    };
    if nats
        .publish_with_reply("$SRV.PING", inbox, bytes::Bytes::new())
        .await
        .is_err()
    {
        return Vec::new();
    }
    let _ = nats.flush().await;
    let mut names = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.next()).await {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&m.payload)
            && let Some(n) = v.get("name").and_then(|n| n.as_str())
        {
            names.push(n.to_string());
        }
    }
    names
}

/// The game time time-manager reports, in game seconds.
pub async fn game_seconds(
    time: &aicore_proto::aicore::time_manager::v1::TimeManagerClient<aicore_sdk::Client>,
) -> i64 {
    use aicore_proto::aicore::time_manager::v1::NowRequest;
    time.now(
        NowRequest::default(),
        &aicore_proto::CallOptions::timeout(Duration::from_secs(10)),
    )
    .await
    .expect("now")
    .clock
    .and_then(|c| c.game_time)
    .expect("game time")
    .seconds
}
