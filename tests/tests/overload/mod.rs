//! Under overload and faults, against a real `aicore run`: one client's hopeless requests
//! never shut the others out (a flood of made-up tokens with 1 ms deadlines leaves a
//! normal player's calls and fresh logins working).

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
