//! Who may read what and claim whom, tried as a hostile principal would: reply inboxes are
//! private to the principal that asked; an external principal (a game server) acts for
//! players only within its configured role ceiling, as nats-server itself says who sent
//! a request; and every RPC's proto policy is enforced for NATS callers, not only at the
//! HTTP gateway.

use std::time::Duration;

use aicore_e2e::{Appliance, Identity};
use aicore_proto::aicore::auth::v1 as auth;
use aicore_proto::aicore::world_state::v1 as ws;
use aicore_proto::{Access, CallOptions, Caller, Code, Status, Transport};
use bytes::Bytes;
use futures::StreamExt;
use prost::Message;

use super::{eventually, ok, recording, try_connect, violation};
use crate::gateway::http::Http;

const PW: &str = "violet-otter-lantern";

/// A call of `domain.rpc` with `body` as `caller` (none = the principal itself).
async fn call(
    client: &aicore_sdk::Client,
    domain: &str,
    rpc: &str,
    body: Bytes,
    caller: Option<(&str, &[&str])>,
) -> Result<(), Status> {
    let (_, m) = aicore_proto::find_service(domain)
        .and_then(|s| s.method(rpc))
        .unwrap_or_else(|| panic!("no rpc {domain}.{rpc}"));
    let options = CallOptions {
        timeout: Some(Duration::from_secs(10)),
        caller: caller.map(|(account_id, roles)| Caller {
            account_id: account_id.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }),
        ..Default::default()
    };
    if m.server_streaming {
        let mut s = client.server_stream(m, body, &options).await?;
        // The first item (or the end) says whether the call was admitted.
        return match s.next().await {
            Some(Err(e)) => Err(e),
            _ => Ok(()),
        };
    }
    client.unary(m, body, &options).await.map(drop)
}

/// A connected SDK client presenting `id`, with the server's refusals recorded.
async fn connect(
    app: &Appliance,
    id: &Identity,
) -> (
    aicore_sdk::Client,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let (options, errors) = recording(id);
    let nats = try_connect(app, options)
        .await
        .unwrap_or_else(|e| panic!("{} connects: {e}", id.name));
    (aicore_sdk::Client::new(nats, Default::default()), errors)
}

#[tokio::test]
async fn replies_are_private_to_the_principal_that_asked() {
    let app = Appliance::start_with_config(
        "[security]\ngame_server_allow = [\"svc.auth.v1.>\", \"svc.world_state.v1.>\"]\n",
    )
    .await;
    for name in ["snoop", "arena"] {
        ok(&app.certs(&["issue", name, "--role", "game-server"]));
        eventually(&app, &app.identity(name), true).await;
    }

    // Two snoopers: a game server and the gateway's identity, each subscribing to every
    // inbox and to everything; the server refuses the subscriptions.
    let mut snoops = Vec::new();
    for id in [app.identity("snoop"), app.identity("gateway")] {
        let (options, errors) = recording(&id);
        let nats = try_connect(&app, options).await.expect("snooper connects");
        let mut subs = Vec::new();
        for subject in ["_INBOX.>", ">", "_INBOX.admin.>", "_INBOX.arena.>"] {
            subs.push(nats.subscribe(subject).await.unwrap());
        }
        nats.flush().await.unwrap();
        for subject in [
            "\"_INBOX.>\"",
            "\">\"",
            "\"_INBOX.admin.>\"",
            "\"_INBOX.arena.>\"",
        ] {
            violation(&errors, subject).await;
        }
        snoops.push((id.name.clone(), nats, subs));
    }

    // Traffic whose replies carry secrets: the admin CLI's login, a player's login over
    // HTTP (through the gateway's own connection), and another game server's calls.
    let admin = auth::AuthClient::new(app.client().await);
    let opts = CallOptions::timeout(Duration::from_secs(10));
    admin
        .register(
            auth::RegisterRequest {
                username: "mira".into(),
                password: PW.into(),
                ..Default::default()
            },
            &opts,
        )
        .await
        .unwrap();
    let login = admin
        .login(
            auth::LoginRequest {
                username: "mira".into(),
                password: PW.into(),
                ..Default::default()
            },
            &opts,
        )
        .await
        .unwrap();
    assert!(!login.access_token.is_empty());
    let http = Http::new(&app.http_url);
    let body = format!(r#"{{"username":"mira","password":"{PW}"}}"#);
    assert_eq!(http.post("/v1/auth/login", &body, &[]).await.status, 200);
    let (arena, _) = connect(&app, &app.identity("arena")).await;
    call(
        &arena,
        "world_state",
        "get",
        Bytes::from(ws::GetRequest { key: "k".into() }.encode_to_vec()),
        Some(("acc_player", &["player"])),
    )
    .await
    .expect_err("no fact k");

    // Nothing of it reached either snooper.
    for (name, _nats, subs) in &mut snoops {
        for sub in subs.iter_mut() {
            let got = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
            if let Ok(Some(m)) = got {
                panic!("{name} read {}: {:?}", m.subject, m.payload);
            }
        }
    }
}

#[tokio::test]
async fn a_principal_claims_no_more_than_it_is() {
    let app = Appliance::start_with_config(
        "[security]\ngame_server_allow = [\"svc.world_state.v1.>\", \"svc.auth.v1.grant_role\"]\n\
         [security.principal_roles]\nmatchmaker = [\"player\", \"service\"]\n",
    )
    .await;
    for name in ["arena", "matchmaker"] {
        ok(&app.certs(&["issue", name, "--role", "game-server"]));
        eventually(&app, &app.identity(name), true).await;
    }
    // Each principal, and its ceiling: `None` for the appliance's own (trusted) ones.
    let principals: [(&str, Option<&[&str]>); 4] = [
        ("arena", Some(&["player"])),
        ("matchmaker", Some(&["player", "service"])),
        ("gateway", None),
        ("admin", None),
    ];
    let get = Bytes::from(
        ws::GetRequest {
            key: "matrix".into(),
        }
        .encode_to_vec(),
    );
    let set = Bytes::from(
        ws::SetRequest {
            key: "matrix".into(),
            data: Bytes::from_static(b"v"),
            content_type: "text/plain".into(),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    let grant = Bytes::from(
        auth::GrantRoleRequest {
            account_id: "acc_nobody".into(),
            role: "service".into(),
            revoke: false,
        }
        .encode_to_vec(),
    );
    // The RPCs, and the roles each needs (none: any caller).
    let rpcs: [(&str, &str, &Bytes, &[&str]); 3] = [
        ("world_state", "get", &get, &[]),
        ("world_state", "set", &set, &["service", "admin"]),
        ("auth", "grant_role", &grant, &["admin"]),
    ];
    let mut wrong = Vec::new();
    for (name, ceiling) in principals {
        let (client, _) = connect(&app, &app.identity(name)).await;
        for claim in [None, Some("player"), Some("service"), Some("admin")] {
            // What the caller holds: the claim if within the ceiling, the ceiling when it
            // claims nothing; a trusted principal claiming nothing passes everything.
            let holds: Option<Vec<&str>> = match (claim, ceiling) {
                (None, None) => None,
                (None, Some(c)) => Some(c.to_vec()),
                (Some(r), Some(c)) if !c.contains(&r) => Some(Vec::new()),
                (Some(r), _) => Some(vec![r]),
            };
            let over_ceiling = matches!((claim, ceiling), (Some(r), Some(c)) if !c.contains(&r));
            for (domain, rpc, body, needs) in rpcs {
                let expect_admitted = !over_ceiling
                    && match &holds {
                        None => true,
                        Some(h) => needs.is_empty() || needs.iter().any(|n| h.contains(n)),
                    };
                let roles: Vec<&str> = claim.into_iter().collect();
                let claimed = claim.map(|_| ("acc_matrix", &roles[..]));
                let r = call(&client, domain, rpc, body.clone(), claimed).await;
                let admitted = !matches!(&r, Err(s) if s.code == Code::PermissionDenied);
                if admitted != expect_admitted {
                    wrong.push(format!(
                        "{name} claiming {claim:?} on {domain}.{rpc}: {r:?}, expected {}",
                        if expect_admitted {
                            "admitted"
                        } else {
                            "refused"
                        }
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn every_role_gated_rpc_refuses_a_caller_without_the_role_over_nats() {
    let app = Appliance::start().await;
    let client = app.client().await;
    let mut checked = 0;
    let mut wrong = Vec::new();
    for domain in aicore_e2e::domains() {
        let service = aicore_proto::find_service(domain).unwrap();
        for m in service.methods {
            if m.policy.access != Access::Roles {
                continue;
            }
            for role in ["player", "service", "admin"] {
                let allowed = m.policy.roles.contains(&role);
                // An empty body: the policy must refuse before anything reads it.
                let r = call(
                    &client,
                    domain,
                    m.rpc,
                    Bytes::new(),
                    Some(("acc_walker", &[role])),
                )
                .await;
                let by_policy = matches!(&r, Err(s) if s.code == Code::PermissionDenied
                    && s.message.starts_with("this call needs one of the roles"));
                if by_policy == allowed {
                    wrong.push(format!("{} as {role}: {r:?}", m.subject));
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 30, "only {checked} calls checked");
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}
