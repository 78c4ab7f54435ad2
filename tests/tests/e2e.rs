//! End-to-end tests against a real `aicore run` (real nats-server child, real redb file,
//! random ports, temp dirs), through the public interfaces only: the SDK's typed
//! clients, raw NATS, and the `aicore` CLI. One test binary for the whole crate.

mod events;
mod gateway;
mod operator;
mod overload;
mod payment;
mod runtime;
mod security;
mod time;
mod weather;
mod world;

use std::time::Duration;

use aicore_e2e::{Appliance, alive};
use aicore_proto::aicore::auth::v1 as auth;
use aicore_proto::aicore::state_manager::v1 as sm;
use aicore_proto::{CallOptions, Code, Status};
use bytes::Bytes;
use prost::Message;

fn opts() -> CallOptions {
    CallOptions::timeout(Duration::from_secs(10))
}

async fn put(
    c: &sm::StateManagerClient<aicore_sdk::Client>,
    player: &str,
    key: &str,
    data: &[u8],
    expected: Option<u64>,
) -> Result<sm::PutResponse, Status> {
    c.put(
        sm::PutRequest {
            player_id: player.into(),
            key: key.into(),
            data: Bytes::copy_from_slice(data),
            content_type: "application/octet-stream".into(),
            expected_version: expected,
            idempotency_key: String::new(),
        },
        &opts(),
    )
    .await
}

async fn get(
    c: &sm::StateManagerClient<aicore_sdk::Client>,
    player: &str,
    key: &str,
) -> Result<sm::GetResponse, Status> {
    c.get(
        sm::GetRequest {
            player_id: player.into(),
            key: key.into(),
            version: 0,
        },
        &opts(),
    )
    .await
}

#[tokio::test]
async fn auth_register_login_validate_and_refresh_reuse_revokes_family() {
    let app = Appliance::start().await;
    let a = auth::AuthClient::new(app.client().await);
    let reg = a
        .register(
            auth::RegisterRequest {
                username: "mira".into(),
                password: "violet-otter-lantern".into(),
                display_name: "Mira".into(),
            },
            &opts(),
        )
        .await
        .expect("register");
    assert!(!reg.account_id.is_empty());

    let weak = a
        .register(
            auth::RegisterRequest {
                username: "weakling".into(),
                password: "short".into(),
                display_name: String::new(),
            },
            &opts(),
        )
        .await
        .unwrap_err();
    assert_eq!(weak.code, Code::InvalidArgument);
    assert_eq!(weak.field_violations[0].field, "password");

    let login = a
        .login(
            auth::LoginRequest {
                username: "mira".into(),
                password: "violet-otter-lantern".into(),
                user_agent: "e2e".into(),
            },
            &opts(),
        )
        .await
        .expect("login");
    let v = a
        .validate(
            auth::ValidateRequest {
                access_token: login.access_token.clone(),
            },
            &opts(),
        )
        .await
        .expect("validate");
    assert_eq!(v.account_id, reg.account_id);
    assert!(v.roles.iter().any(|r| r == "player"));

    let wrong = a
        .login(
            auth::LoginRequest {
                username: "mira".into(),
                password: "not-the-password".into(),
                user_agent: String::new(),
            },
            &opts(),
        )
        .await
        .unwrap_err();
    assert_eq!(wrong.code, Code::Unauthenticated);

    // Rotation: the first refresh works, replaying the old refresh token is reuse.
    let r1 = a
        .refresh(
            auth::RefreshRequest {
                refresh_token: login.refresh_token.clone(),
            },
            &opts(),
        )
        .await
        .expect("refresh");
    assert_ne!(r1.refresh_token, login.refresh_token);
    let reuse = a
        .refresh(
            auth::RefreshRequest {
                refresh_token: login.refresh_token.clone(),
            },
            &opts(),
        )
        .await
        .unwrap_err();
    assert_eq!(reuse.code, Code::Unauthenticated);
    // The whole family is revoked: the rotated token and its access token stop working.
    let after = a
        .validate(
            auth::ValidateRequest {
                access_token: r1.access_token.clone(),
            },
            &opts(),
        )
        .await
        .unwrap_err();
    assert_eq!(after.code, Code::Unauthenticated);
    let rotated = a
        .refresh(
            auth::RefreshRequest {
                refresh_token: r1.refresh_token,
            },
            &opts(),
        )
        .await
        .unwrap_err();
    assert_eq!(rotated.code, Code::Unauthenticated);
}

#[tokio::test]
async fn state_manager_occ_conflict_oversize_and_malformed_protobuf() {
    let app = Appliance::start().await;
    let c = sm::StateManagerClient::new(app.client().await);
    let first = put(&c, "p1", "save/slot1", b"v1", Some(0))
        .await
        .expect("create");
    let v1 = first.metadata.expect("metadata").version;
    // Create-only on an existing object, and a stale expected version, are Conflicts.
    assert_eq!(
        put(&c, "p1", "save/slot1", b"x", Some(0))
            .await
            .unwrap_err()
            .code,
        Code::Conflict
    );
    put(&c, "p1", "save/slot1", b"v2", Some(v1))
        .await
        .expect("update");
    let stale = put(&c, "p1", "save/slot1", b"v3", Some(v1))
        .await
        .unwrap_err();
    assert_eq!(stale.code, Code::Conflict);
    assert_eq!(
        get(&c, "p1", "save/slot1").await.unwrap().data.as_ref(),
        b"v2"
    );

    // An object over the size limit is refused and nothing is written.
    let big = vec![7u8; 300 * 1024];
    let e = put(&c, "p1", "save/big", &big, None).await.unwrap_err();
    assert!(
        matches!(e.code, Code::InvalidArgument | Code::ResourceExhausted),
        "{e}"
    );
    assert_eq!(
        get(&c, "p1", "save/big").await.unwrap_err().code,
        Code::NotFound
    );

    // Missing fields name the field.
    let e = put(&c, "", "k", b"x", None).await.unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument);
    assert_eq!(e.field_violations[0].field, "player_id");

    // Malformed protobuf straight on NATS: micro-protocol error headers + Error body.
    let nats = app.nats().await;
    let reply = nats
        .request(
            "svc.state_manager.v1.put",
            Bytes::from_static(&[0xff, 0xff, 0xff, 0x01]),
        )
        .await
        .expect("a reply");
    let h = reply.headers.expect("error headers");
    assert_eq!(h.get("Nats-Service-Error-Code").unwrap().as_str(), "400");
    let body = aicore_proto::ErrorProto::decode(reply.payload).expect("an Error body");
    assert_eq!(body.code, Code::InvalidArgument as i32);
}

#[tokio::test]
async fn cli_call_settings_schema_refusal_and_status() {
    let app = Appliance::start().await;
    let ok = app.cli(&[
        "call",
        "settings",
        "define-schema",
        r#"{"key":"audio.volume","type":"SETTING_TYPE_INT","defaultValue":{"intValue":"70"},"min":0,"max":100,"scopes":["SCOPE_PLAYER"]}"#,
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let set = app.cli(&[
        "call",
        "settings",
        "set",
        r#"{"scope":"SCOPE_PLAYER","playerId":"p7","key":"audio.volume","value":{"intValue":"55"}}"#,
    ]);
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let got = app.cli(&[
        "call",
        "settings",
        "get",
        r#"{"scope":"SCOPE_PLAYER","playerId":"p7","key":"audio.volume"}"#,
    ]);
    let doc: serde_json::Value = serde_json::from_slice(&got.stdout).expect("JSON reply");
    assert_eq!(doc["setting"]["value"]["intValue"], "55");

    // Out of range: the service refuses, exit 1, the code and the field on stderr.
    let refused = app.cli(&[
        "call",
        "settings",
        "set",
        r#"{"scope":"SCOPE_PLAYER","playerId":"p7","key":"audio.volume","value":{"intValue":"101"}}"#,
    ]);
    assert_eq!(refused.status.code(), Some(1));
    let err: serde_json::Value = serde_json::from_slice(&refused.stderr).expect("JSON error");
    assert_eq!(err["code"], "INVALID_ARGUMENT");
    assert_eq!(err["field_violations"][0]["field"], "value");

    // Wrong JSON: refused locally, exit 2, naming the problem.
    let bad = app.cli(&[
        "call",
        "settings",
        "set",
        r#"{"scope":"SCOPE_PLAYER","nope":1}"#,
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("nope"));
    let unknown = app.cli(&["call", "settings", "frobnicate", "{}"]);
    assert_eq!(unknown.status.code(), Some(2));

    // Status: every served domain answers $SRV.PING.
    let st = app.cli(&["status", "--json"]);
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stdout)
    );
    let doc: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let names: Vec<&str> = doc["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for d in &aicore_e2e::domains() {
        assert!(names.contains(d), "{d} missing from {names:?}");
    }
}

#[tokio::test]
async fn nats_child_killed_is_restarted_and_no_acknowledged_write_is_lost() {
    let app = Appliance::start().await;
    let c = sm::StateManagerClient::new(app.client().await);
    for i in 0..20 {
        put(&c, "p9", &format!("k{i}"), format!("v{i}").as_bytes(), None)
            .await
            .expect("put before the kill");
    }
    let before = app.nats_pid().expect("nats-server child");
    // SAFETY: kill(2) on the appliance's own child.
    unsafe {
        libc::kill(before as i32, libc::SIGKILL);
    }
    // Writes keep being attempted while the child restarts (the SDK does not retry a
    // write without an idempotency key: this loop does), so every put is eventually
    // acknowledged.
    let mut acked = 0;
    for i in 20..40 {
        let key = format!("k{i}");
        let mut tries = 0;
        loop {
            match put(&c, "p9", &key, format!("v{i}").as_bytes(), None).await {
                Ok(_) => {
                    acked += 1;
                    break;
                }
                Err(e) => {
                    tries += 1;
                    assert!(
                        tries < 60,
                        "put never succeeded after the restart: {e}\n{}",
                        app.log()
                    );
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }
    assert_eq!(acked, 20);
    let after = app.nats_pid().expect("a new nats-server child");
    assert_ne!(before, after);
    assert!(!alive(before));
    for i in 0..40 {
        let got = get(&c, "p9", &format!("k{i}"))
            .await
            .expect("acknowledged write");
        assert_eq!(got.data.as_ref(), format!("v{i}").as_bytes());
    }
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero_and_a_crash_loses_no_acknowledged_write() {
    let mut app = Appliance::start().await;
    let dir = app.data_dir.clone();
    let c = sm::StateManagerClient::new(app.client().await);
    let mut tasks = Vec::new();
    for w in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..200 {
                let key = format!("w{w}-{i}");
                match put(&c, "drain", &key, key.as_bytes(), None).await {
                    Ok(_) => acked.push(key),
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let nats_child = app.nats_pid().expect("nats child");
    app.signal(libc::SIGTERM);
    let code = app.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "{}", app.log());
    assert!(!alive(nats_child), "nats-server outlived aicore");
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(!acked.is_empty());

    // Restart on the same data dir: every acknowledged write is there. Then crash it
    // (SIGKILL) right after more acknowledged writes and check again.
    let mut app2 = Appliance::start_in(&dir).await;
    let c2 = sm::StateManagerClient::new(app2.client().await);
    for key in &acked {
        let got = get(&c2, "drain", key)
            .await
            .expect("write acknowledged before SIGTERM");
        assert_eq!(got.data.as_ref(), key.as_bytes());
    }
    for i in 0..50 {
        put(&c2, "crash", &format!("c{i}"), b"durable", None)
            .await
            .unwrap();
    }
    let child2 = app2.nats_pid().expect("nats child");
    app2.crash().await;
    // The nats-server child dies with its parent (PR_SET_PDEATHSIG).
    for _ in 0..100 {
        if !alive(child2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive(child2), "nats-server outlived a killed aicore");
    let app3 = Appliance::start_in(&dir).await;
    let c3 = sm::StateManagerClient::new(app3.client().await);
    for i in 0..50 {
        let got = get(&c3, "crash", &format!("c{i}"))
            .await
            .expect("acknowledged before the crash");
        assert_eq!(got.data.as_ref(), b"durable");
    }
}

#[tokio::test]
async fn joins_an_existing_nats_server_and_starts_no_child() {
    let js = tempfile::tempdir().unwrap();
    let server = aicore_e2e::BareNats::start_js(js.path()).await;
    let app = Appliance::start_joining(&server.url).await;
    assert_eq!(app.nats_pid(), None, "a child was started:\n{}", app.log());
    let c = sm::StateManagerClient::new(app.client().await);
    put(&c, "p1", "joined", b"via the external server", None)
        .await
        .expect("put through the external server");
    assert_eq!(
        get(&c, "p1", "joined").await.unwrap().data.as_ref(),
        b"via the external server"
    );
}
