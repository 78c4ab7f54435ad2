//! Under overload and faults, against a real `aicore run`: one client's hopeless requests
//! never shut the others out (a flood of made-up tokens with 1 ms deadlines leaves a
//! normal player's calls and fresh logins working); giving up on nats-server means
//! exiting non-zero; SIGTERM ends the process even with NATS unreachable, losing no
//! acknowledged write.

use std::net::IpAddr;

use aicore_e2e::Appliance;

use crate::gateway::http::Http;

const PW: &str = "violet-otter-lantern";

/// A token of the shape auth issues (`at_` + 43 base64url characters) that no one was
/// ever issued: it reaches auth.Validate and is refused there.
fn made_up_token(i: usize) -> String {
    format!("at_{i:043}")
}

#[tokio::test]
async fn a_flood_of_made_up_tokens_with_1ms_deadlines_leaves_other_clients_served() {
    let app = Appliance::start().await;
    let http = Http::new(&app.http_url);
    // The flood comes from another address, as an attacker's would.
    let flooder = Http::from_address(&app.http_url, IpAddr::from([127, 0, 0, 2]));
    let register = format!(r#"{{"username":"steady","password":"{PW}"}}"#);
    let r = http.post("/v1/auth/register", &register, &[]).await;
    assert_eq!(r.status, 200, "register: {}", r.json());
    let first = http.post("/v1/auth/login", &register, &[]).await;
    assert_eq!(first.status, 200, "login: {}", first.json());
    let kept_token = first.json()["accessToken"].as_str().unwrap().to_string();
    let me = first.json()["accountId"].as_str().unwrap().to_string();

    let mut flood_statuses = Vec::new();
    for round in 0..3 {
        // 40 requests at once, each giving the gateway 1 ms, with tokens auth must look
        // up (and a few it never needs to: not even of auth's shape).
        let mut flood = Vec::new();
        for i in 0..40 {
            let flooder = flooder.clone();
            let token = match i % 8 {
                0 => format!("bogus-{round}-{i}"),
                _ => made_up_token(round * 100 + i),
            };
            let body = format!(r#"{{"playerId":"{me}","key":"save/1"}}"#);
            flood.push(tokio::spawn(async move {
                let auth = format!("Bearer {token}");
                flooder
                    .post(
                        "/v1/state_manager/get",
                        &body,
                        &[("authorization", &auth), ("x-request-timeout-ms", "1")],
                    )
                    .await
                    .status
            }));
        }
        for f in flood {
            flood_statuses.push(f.await.unwrap());
        }
        // The player: a fresh login (a token the gateway has not seen, so it asks auth),
        // a write with it, and a read with the token kept from the start.
        let login = http.post("/v1/auth/login", &register, &[]).await;
        assert_eq!(
            login.status,
            200,
            "fresh login in round {round}: {}",
            String::from_utf8_lossy(&login.body)
        );
        let fresh = login.json()["accessToken"].as_str().unwrap().to_string();
        let put = http
            .call(
                "/v1/state_manager/put",
                &format!(r#"{{"playerId":"{me}","key":"save/{round}","data":"aGVsbG8="}}"#),
                &fresh,
            )
            .await;
        assert_eq!(
            put.status,
            200,
            "put with a fresh token in round {round}: {}",
            String::from_utf8_lossy(&put.body)
        );
        let get = http
            .call(
                "/v1/state_manager/get",
                &format!(r#"{{"playerId":"{me}","key":"save/{round}"}}"#),
                &kept_token,
            )
            .await;
        assert_eq!(
            get.status,
            200,
            "get with the first token in round {round}: {}",
            String::from_utf8_lossy(&get.body)
        );
    }
    // The made-up tokens were refused as such (or rate-limited), never with a 503 that
    // would say the service is down.
    for s in &flood_statuses {
        assert!(
            matches!(s, 401 | 429),
            "flood answered {s}: {flood_statuses:?}"
        );
    }
}

/// The port of a `nats://host:port` URL.
fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// Giving up means exiting: once nats-server crash-loops past its restart limit, the
/// appliance serves nothing, so it must end by itself with a failure (for systemd to
/// restart it), not linger. The child is killed and its port taken, so every restart
/// fails.
#[tokio::test]
async fn after_giving_up_on_nats_server_the_appliance_exits_non_zero_by_itself() {
    let mut app =
        Appliance::start_with_config("[nats]\nmax_restarts = 2\nrestart_window_secs = 600\n").await;
    let port = port_of(&app.nats_url);
    let mut taken = None;
    for _ in 0..2000 {
        if let Some(pid) = app.nats_pid() {
            // SAFETY: kill(2) on the appliance's own child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            taken = Some(l);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let _taken = taken.expect("the nats-server port came free");
    // A liveness bound, not a performance figure: it must exit at all.
    let code = app.wait_exit(std::time::Duration::from_secs(120)).await;
    let log = app.log();
    assert!(log.contains("given up"), "{log}");
    assert!(
        matches!(code, Some(c) if c != 0),
        "exit code {code:?} after giving up:\n{log}"
    );
}

/// SIGTERM while NATS is unreachable (the child stopped with SIGSTOP: connections stay
/// open and nothing answers) still ends the process, even while the outbox relay waits
/// for acks that will never come; and nothing acknowledged is lost: the writes are there
/// after a restart, and their events, still in the outbox, are published then.
#[tokio::test]
async fn sigterm_with_nats_unreachable_exits_and_loses_no_acknowledged_write() {
    use aicore_proto::aicore::world_state::v1 as ws;
    use futures::StreamExt;
    use std::time::Duration;
    let mut app = Appliance::start().await;
    let dir = app.data_dir.clone();
    // Without its stream, every event publish fails at once: the events the writes below
    // queue stay in the outbox, and the relay keeps retrying them.
    async_nats::jetstream::new(app.nats().await)
        .delete_stream("EVENTS")
        .await
        .expect("deleting the EVENTS stream");
    let c = ws::WorldStateClient::new(app.client().await);
    let opts = aicore_proto::CallOptions::timeout(Duration::from_secs(10));
    const N: usize = 20;
    for i in 0..N {
        c.set(
            ws::SetRequest {
                key: format!("stuck.k{i}"),
                data: bytes::Bytes::from(format!("v{i}")),
                ..Default::default()
            },
            &opts,
        )
        .await
        .expect("set acknowledged");
    }
    let child = app.nats_pid().expect("nats-server child");
    // SAFETY: kill(2) on the appliance's own child.
    unsafe { libc::kill(child as i32, libc::SIGSTOP) };
    // Give the relay time to start its next retry (its backoff is at most 5 s): that
    // round now waits for acks from a server that does not answer.
    tokio::time::sleep(Duration::from_secs(6)).await;
    app.signal(libc::SIGTERM);
    // A liveness bound, not a performance figure: it must exit at all.
    app.wait_exit(Duration::from_secs(60)).await;
    for _ in 0..200 {
        if !aicore_e2e::alive(child) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!aicore_e2e::alive(child), "nats-server outlived aicore");

    let app = Appliance::start_in(&dir).await;
    let c = ws::WorldStateClient::new(app.client().await);
    for i in 0..N {
        let got = c
            .get(
                ws::GetRequest {
                    key: format!("stuck.k{i}"),
                },
                &opts,
            )
            .await
            .expect("a write acknowledged before the stop");
        assert_eq!(
            got.fact.expect("the fact").data.as_ref(),
            format!("v{i}").as_bytes()
        );
    }
    // The events the stop left in the outbox are published after the restart.
    let mut events = app.events("after-restart", "evt.world.changed").await;
    let mut seen = 0;
    while seen < N {
        let m = tokio::time::timeout(Duration::from_secs(30), events.next())
            .await
            .unwrap_or_else(|_| panic!("only {seen} of {N} events published:\n{}", app.log()))
            .expect("the consumer's stream")
            .expect("an event");
        m.ack().await.expect("ack");
        seen += 1;
    }
}
