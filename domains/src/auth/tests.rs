//! auth's unit tests, on an in-memory store and a manual clock.

use super::*;

use std::time::Duration;

use aicore_proto::Code;

use aicore_runtime::ManualClock;

const PW: &str = "correct horse battery";

fn req<T>(body: T) -> Request<T> {
    Request::new(body)
}

fn as_caller<T>(body: T, account_id: &str, roles: &[&str]) -> Request<T> {
    Request::new(body).on_behalf_of(account_id, roles)
}

fn setup() -> (Auth, Arc<ManualClock>) {
    let (ctx, clock) = Ctx::for_tests();
    (Auth::new(&ctx, AuthConfig::default()).unwrap(), clock)
}

async fn register(auth: &Auth, username: &str) -> String {
    auth.register(req(RegisterRequest {
        username: username.into(),
        password: PW.into(),
        display_name: String::new(),
    }))
    .await
    .unwrap()
    .account_id
}

async fn login(auth: &Auth, username: &str, password: &str) -> Result<LoginResponse, Status> {
    auth.login(req(LoginRequest {
        username: username.into(),
        password: password.into(),
        user_agent: "test-agent".into(),
    }))
    .await
}

async fn validate(auth: &Auth, token: &str) -> Result<ValidateResponse, Status> {
    auth.validate(req(ValidateRequest {
        access_token: token.into(),
    }))
    .await
}

async fn refresh(auth: &Auth, token: &str) -> Result<RefreshResponse, Status> {
    auth.refresh(req(RefreshRequest {
        refresh_token: token.into(),
    }))
    .await
}

fn field(s: &Status) -> &str {
    s.field_violations.first().map_or("", |v| v.field.as_str())
}

#[tokio::test]
async fn register_login_validate() {
    let (auth, _clock) = setup();
    let id = register(&auth, "Alice").await;
    // Usernames are case-insensitive at login.
    let l = login(&auth, "alice", PW).await.unwrap();
    assert_eq!(l.account_id, id);
    assert_eq!(l.roles, vec!["player"]);
    assert!(l.access_token.starts_with("at_") && l.refresh_token.starts_with("rt_"));
    assert_ne!(l.access_token, l.refresh_token);
    let v = validate(&auth, &l.access_token).await.unwrap();
    assert_eq!(v.account_id, id);
    assert_eq!(v.roles, vec!["player"]);
    assert_eq!(v.session_id, l.session_id);
    assert_eq!(v.expires_at, l.access_expires_at);
    let access_ttl = l.access_expires_at.unwrap().seconds - auth.ctx.now_ts().seconds;
    assert_eq!(access_ttl, 15 * 60);
    // A refresh token is not an access token, and vice versa.
    assert_eq!(
        validate(&auth, &l.refresh_token).await.unwrap_err().code,
        Code::Unauthenticated
    );
    assert_eq!(
        refresh(&auth, &l.access_token).await.unwrap_err().code,
        Code::Unauthenticated
    );
    let a = auth
        .get_account(as_caller(
            GetAccountRequest {
                account_id: id.clone(),
            },
            &id,
            &["player"],
        ))
        .await
        .unwrap()
        .account
        .unwrap();
    assert_eq!(
        (a.username.as_str(), a.display_name.as_str()),
        ("Alice", "Alice")
    );
    assert!(a.locked_until.is_none());
}

#[tokio::test]
async fn the_store_holds_no_token_or_password() {
    let (auth, _clock) = setup();
    let id = register(&auth, "bob").await;
    let l = login(&auth, "bob", PW).await.unwrap();
    let tokens = auth.ctx.store.scan(TOKENS, b"", b"", 100).unwrap();
    assert_eq!(tokens.len(), 2);
    let account = auth
        .ctx
        .store
        .get(ACCOUNTS, id.as_bytes())
        .unwrap()
        .unwrap();
    assert!(!contains(&account, PW.as_bytes()));
    for table in [TOKENS, SESSIONS, SESSION_TOKENS, ACCOUNT_SESSIONS] {
        for (k, v) in auth.ctx.store.scan(table, b"", b"", 100).unwrap() {
            for t in [&l.access_token, &l.refresh_token] {
                let secret = &t.as_bytes()[3..];
                assert!(!contains(&k, secret) && !contains(&v, secret), "{table}");
            }
        }
    }
    let rec: AccountRecord = auth
        .ctx
        .store
        .get_msg(ACCOUNTS, id.as_bytes())
        .unwrap()
        .unwrap();
    assert!(
        rec.password_hash
            .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
    );
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn duplicate_username_conflicts_case_insensitively() {
    let (auth, _clock) = setup();
    register(&auth, "Carol").await;
    let e = auth
        .register(req(RegisterRequest {
            username: "cAROL".into(),
            password: "another good passphrase".into(),
            display_name: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::Conflict);
}

#[tokio::test]
async fn bad_usernames_and_weak_passwords_are_refused_naming_the_field() {
    let (auth, _clock) = setup();
    let cases = [
        ("dave", "short7!", "password"),
        ("dave", &"x".repeat(257), "password"),
        ("dave", "Password1", "password"),
        ("dave", "QWERTYUIOP", "password"),
        ("dave", "iloveyou", "password"),
        ("davedave", "DaveDave", "password"),
        ("da", PW, "username"),
        (&"d".repeat(65), PW, "username"),
        ("dave smith", PW, "username"),
        ("dave/x", PW, "username"),
    ];
    for (username, password, want) in cases {
        let e = auth
            .register(req(RegisterRequest {
                username: username.into(),
                password: password.into(),
                display_name: String::new(),
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument, "{username} / {password}");
        assert_eq!(field(&e), want, "{username} / {password}");
    }
    let e = auth
        .register(req(RegisterRequest {
            username: "dave".into(),
            password: PW.into(),
            display_name: "d".repeat(65),
        }))
        .await
        .unwrap_err();
    assert_eq!(field(&e), "display_name");
    // 256 characters is allowed, as are multi-byte characters.
    let long = "é".repeat(256);
    auth.register(req(RegisterRequest {
        username: "dave".into(),
        password: long.clone(),
        display_name: String::new(),
    }))
    .await
    .unwrap();
    login(&auth, "dave", &long).await.unwrap();
}

#[tokio::test]
async fn unknown_user_and_wrong_password_answer_alike() {
    let (auth, _clock) = setup();
    register(&auth, "erin").await;
    let wrong = login(&auth, "erin", "not the password").await.unwrap_err();
    let unknown = login(&auth, "nobody", "not the password")
        .await
        .unwrap_err();
    assert_eq!(wrong.code, Code::Unauthenticated);
    assert_eq!(wrong, unknown);
}

#[tokio::test]
async fn refresh_rotates_the_pair_within_the_session() {
    let (auth, clock) = setup();
    register(&auth, "frank").await;
    let l = login(&auth, "frank", PW).await.unwrap();
    clock.advance(Duration::from_secs(60));
    let r1 = refresh(&auth, &l.refresh_token).await.unwrap();
    assert_eq!(r1.session_id, l.session_id);
    assert_eq!(r1.account_id, l.account_id);
    assert_ne!(r1.access_token, l.access_token);
    assert_ne!(r1.refresh_token, l.refresh_token);
    assert!(r1.refresh_expires_at.unwrap().seconds > l.refresh_expires_at.unwrap().seconds);
    let v = validate(&auth, &r1.access_token).await.unwrap();
    assert_eq!(v.session_id, l.session_id);
    let r2 = refresh(&auth, &r1.refresh_token).await.unwrap();
    validate(&auth, &r2.access_token).await.unwrap();
}

#[tokio::test]
async fn a_reused_refresh_token_revokes_the_family() {
    let (auth, _clock) = setup();
    register(&auth, "grace").await;
    let l = login(&auth, "grace", PW).await.unwrap();
    let other = login(&auth, "grace", PW).await.unwrap();
    let r1 = refresh(&auth, &l.refresh_token).await.unwrap();
    validate(&auth, &l.access_token).await.unwrap();
    validate(&auth, &r1.access_token).await.unwrap();
    // The spent token comes back (a thief, or a client that lost the reply).
    let e = refresh(&auth, &l.refresh_token).await.unwrap_err();
    assert_eq!(e.code, Code::Unauthenticated);
    for t in [&l.access_token, &r1.access_token] {
        assert_eq!(
            validate(&auth, t).await.unwrap_err().code,
            Code::Unauthenticated
        );
    }
    assert_eq!(
        refresh(&auth, &r1.refresh_token).await.unwrap_err().code,
        Code::Unauthenticated
    );
    // Other sessions of the account are not part of the family.
    validate(&auth, &other.access_token).await.unwrap();
    refresh(&auth, &other.refresh_token).await.unwrap();
}

#[tokio::test]
async fn logout_takes_effect_at_once_even_when_cached() {
    let (auth, _clock) = setup();
    register(&auth, "heidi").await;
    let l = login(&auth, "heidi", PW).await.unwrap();
    let keep = login(&auth, "heidi", PW).await.unwrap();
    // Warm the cache.
    validate(&auth, &l.access_token).await.unwrap();
    validate(&auth, &l.access_token).await.unwrap();
    let out = auth
        .logout(req(LogoutRequest {
            token: Some(logout_request::Token::AccessToken(l.access_token.clone())),
            all_sessions: false,
        }))
        .await
        .unwrap();
    assert_eq!(out.revoked_sessions, 1);
    assert_eq!(
        validate(&auth, &l.access_token).await.unwrap_err().code,
        Code::Unauthenticated
    );
    assert_eq!(
        refresh(&auth, &l.refresh_token).await.unwrap_err().code,
        Code::Unauthenticated
    );
    // Twice is not an error; the other session lives on.
    let again = auth
        .logout(req(LogoutRequest {
            token: Some(logout_request::Token::RefreshToken(l.refresh_token.clone())),
            all_sessions: false,
        }))
        .await
        .unwrap();
    assert_eq!(again.revoked_sessions, 0);
    validate(&auth, &keep.access_token).await.unwrap();
    // A made-up token is Unauthenticated, a missing one InvalidArgument.
    let e = auth
        .logout(req(LogoutRequest {
            token: Some(logout_request::Token::AccessToken(format!(
                "at_{}",
                "A".repeat(43)
            ))),
            all_sessions: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::Unauthenticated);
    let e = auth
        .logout(req(LogoutRequest {
            token: None,
            all_sessions: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(field(&e), "token");
}

#[tokio::test]
async fn logout_of_all_sessions() {
    let (auth, _clock) = setup();
    register(&auth, "ivan").await;
    let a = login(&auth, "ivan", PW).await.unwrap();
    let b = login(&auth, "ivan", PW).await.unwrap();
    let c = login(&auth, "ivan", PW).await.unwrap();
    let out = auth
        .logout(req(LogoutRequest {
            token: Some(logout_request::Token::RefreshToken(a.refresh_token.clone())),
            all_sessions: true,
        }))
        .await
        .unwrap();
    assert_eq!(out.revoked_sessions, 3);
    for l in [&a, &b, &c] {
        assert_eq!(
            validate(&auth, &l.access_token).await.unwrap_err().code,
            Code::Unauthenticated
        );
    }
}

#[tokio::test]
async fn access_and_refresh_tokens_expire() {
    let (auth, clock) = setup();
    register(&auth, "judy").await;
    let l = login(&auth, "judy", PW).await.unwrap();
    clock.advance(Duration::from_secs(15 * 60 - 1));
    validate(&auth, &l.access_token).await.unwrap();
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        validate(&auth, &l.access_token).await.unwrap_err().code,
        Code::Unauthenticated
    );
    // The refresh token still works and gives a fresh access token.
    let r = refresh(&auth, &l.refresh_token).await.unwrap();
    validate(&auth, &r.access_token).await.unwrap();
    // An expired access token cannot log out; the refresh token can.
    let e = auth
        .logout(req(LogoutRequest {
            token: Some(logout_request::Token::AccessToken(l.access_token.clone())),
            all_sessions: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::Unauthenticated);
    clock.advance(Duration::from_secs(30 * 24 * 3600));
    assert_eq!(
        refresh(&auth, &r.refresh_token).await.unwrap_err().code,
        Code::Unauthenticated
    );
    // The next login purges the dead session's rows.
    let l2 = login(&auth, "judy", PW).await.unwrap();
    assert!(
        auth.ctx
            .store
            .get(SESSIONS, l.session_id.as_bytes())
            .unwrap()
            .is_none()
    );
    let tokens = auth.ctx.store.scan(TOKENS, b"", b"", 100).unwrap();
    assert_eq!(tokens.len(), 2, "only the new session's pair is left");
    validate(&auth, &l2.access_token).await.unwrap();
}

#[tokio::test]
async fn lockout_grows_and_success_resets_it() {
    let (auth, clock) = setup();
    let id = register(&auth, "mallory").await;
    let wrong = "wrong password!";
    for _ in 0..5 {
        let e = login(&auth, "mallory", wrong).await.unwrap_err();
        assert_eq!(e.code, Code::Unauthenticated);
    }
    // Locked: even the right password is refused, with when to retry.
    let e = login(&auth, "mallory", PW).await.unwrap_err();
    assert_eq!(e.code, Code::ResourceExhausted);
    assert_eq!(e.retry_after_ms, 1000);
    let a = auth
        .get_account(req(GetAccountRequest {
            account_id: id.clone(),
        }))
        .await
        .unwrap()
        .account
        .unwrap();
    // One source's failures lock that source only, not the account for everyone.
    assert!(a.locked_until.is_none());
    clock.advance(Duration::from_millis(1000));
    // Each further failure doubles the lock: 2 s after the sixth, 4 s after the seventh.
    assert_eq!(
        login(&auth, "mallory", wrong).await.unwrap_err().code,
        Code::Unauthenticated
    );
    assert_eq!(
        login(&auth, "mallory", PW)
            .await
            .unwrap_err()
            .retry_after_ms,
        2000
    );
    clock.advance(Duration::from_millis(2000));
    assert_eq!(
        login(&auth, "mallory", wrong).await.unwrap_err().code,
        Code::Unauthenticated
    );
    clock.advance(Duration::from_millis(1000));
    assert_eq!(
        login(&auth, "mallory", PW)
            .await
            .unwrap_err()
            .retry_after_ms,
        3000
    );
    clock.advance(Duration::from_millis(3000));
    // Success resets the counter: the next failure does not lock.
    login(&auth, "mallory", PW).await.unwrap();
    for _ in 0..4 {
        assert_eq!(
            login(&auth, "mallory", wrong).await.unwrap_err().code,
            Code::Unauthenticated
        );
    }
    login(&auth, "mallory", PW).await.unwrap();
}

/// Auth with cheap argon2 parameters, for tests that run many password checks (what
/// they count is checks, not time).
fn setup_cheap() -> (Auth, Arc<ManualClock>) {
    let (ctx, clock) = Ctx::for_tests();
    let config = AuthConfig {
        argon2_memory_kib: 64,
        argon2_iterations: 1,
        // Slots for every racing attempt at once, as on a machine with many cores: with
        // one or two, hashing's own queue would serialise the races these tests run
        // and hide a throttle that counts too late.
        max_concurrent_hashes: 64,
        ..AuthConfig::default()
    };
    (Auth::new(&ctx, config).unwrap(), clock)
}

async fn login_from(
    auth: &Auth,
    username: &str,
    password: impl Into<String>,
    addr: &str,
) -> Result<LoginResponse, Status> {
    let mut r = req(LoginRequest {
        username: username.into(),
        password: password.into(),
        user_agent: String::new(),
    });
    r.meta.client_addr = Some(addr.into());
    auth.login(r).await
}

fn checks(auth: &Auth) -> u64 {
    auth.password_checks.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_guesses_cost_at_most_threshold_password_checks() {
    let (auth, _clock) = setup_cheap();
    register(&auth, "olga").await;
    let before = checks(&auth);
    let guesses = (0..48).map(|i| login_from(&auth, "olga", format!("guess {i}"), "198.51.100.9"));
    let answers = futures::future::join_all(guesses).await;
    let threshold = u64::from(AuthConfig::default().lockout_threshold);
    assert_eq!(checks(&auth) - before, threshold);
    let codes = |c: Code| {
        answers
            .iter()
            .filter(|a| a.as_ref().unwrap_err().code == c)
            .count()
    };
    assert_eq!(codes(Code::Unauthenticated) as u64, threshold);
    assert_eq!(codes(Code::ResourceExhausted) as u64, 48 - threshold);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_locked_attempt_is_refused_without_a_password_check_whatever_the_password() {
    let (auth, clock) = setup_cheap();
    register(&auth, "petra").await;
    let from = "198.51.100.10";
    for i in 0..4 {
        login_from(&auth, "petra", &format!("wrong {i}"), from)
            .await
            .unwrap_err();
    }
    // Right and wrong passwords race for the last admission before the lock: one is
    // checked, every other one is refused unchecked, the right ones included.
    let before = checks(&auth);
    let shared = &auth;
    let racing = (0..8).map(|i| {
        let pw = if i % 2 == 0 {
            PW.to_string()
        } else {
            format!("wrong {i}")
        };
        async move { login_from(shared, "petra", pw, from).await }
    });
    let answers = futures::future::join_all(racing).await;
    let refused: Vec<&Status> = answers
        .iter()
        .filter_map(|a| a.as_ref().err())
        .filter(|e| e.code == Code::ResourceExhausted)
        .collect();
    // Whatever was checked was answered as checked; the rest were refused unchecked.
    assert_eq!(checks(&auth) - before, (8 - refused.len()) as u64);
    if answers.iter().all(Result::is_err) {
        // A wrong password won the admission: its lock held every other attempt off.
        assert_eq!(checks(&auth) - before, 1);
        assert_eq!(refused.len(), 7);
    }
    // Otherwise a right password won and its success lifted the lock, so attempts
    // admitted after it were checked again (the scheduler decides how many).
    // Locked, the right and the wrong password get the very same answer, unchecked.
    // (If the admitted one was right, its success started the count over.)
    clock.advance(Duration::from_secs(1));
    for i in 0..5 {
        let _ = login_from(&auth, "petra", format!("again {i}"), from).await;
    }
    let before = checks(&auth);
    let right = login_from(&auth, "petra", PW, from).await.unwrap_err();
    let wrong = login_from(&auth, "petra", "wrong again", from)
        .await
        .unwrap_err();
    assert_eq!(right.code, Code::ResourceExhausted);
    assert_eq!(right, wrong);
    assert_eq!(checks(&auth), before);
}

#[tokio::test]
async fn unknown_usernames_are_answered_counted_and_locked_like_known_ones() {
    let (auth, clock) = setup_cheap();
    register(&auth, "quentin").await;
    let from = "198.51.100.11";
    for round in 0..2 {
        for i in 0..5 {
            let before = checks(&auth);
            let known = login_from(&auth, "quentin", "not it", from)
                .await
                .unwrap_err();
            assert_eq!(checks(&auth) - before, 1);
            let unknown = login_from(&auth, "quentina", "not it", from)
                .await
                .unwrap_err();
            assert_eq!(
                checks(&auth) - before,
                2,
                "a dummy check for the unknown name"
            );
            assert_eq!(known, unknown, "round {round}, attempt {i}");
            if round == 1 {
                break;
            }
        }
        let before = checks(&auth);
        let known = login_from(&auth, "quentin", PW, from).await.unwrap_err();
        let unknown = login_from(&auth, "quentina", PW, from).await.unwrap_err();
        assert_eq!(known.code, Code::ResourceExhausted);
        assert_eq!(known, unknown, "round {round}");
        // Whatever the case of the name.
        let upper = login_from(&auth, "QUENTINA", PW, from).await.unwrap_err();
        assert_eq!(upper, unknown);
        assert_eq!(checks(&auth), before);
        clock.advance(Duration::from_millis(known.retry_after_ms));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_from_one_source_does_not_lock_the_player_out_elsewhere() {
    let (auth, clock) = setup_cheap();
    let cfg = AuthConfig::default();
    let id = register(&auth, "rhea").await;
    // The player's usual address.
    login_from(&auth, "rhea", PW, "192.0.2.50").await.unwrap();
    // One address bursts: it locks itself out, and only itself.
    let burst = (0..48).map(|i| login_from(&auth, "rhea", format!("guess {i}"), "203.0.113.1"));
    futures::future::join_all(burst).await;
    let e = login_from(&auth, "rhea", PW, "203.0.113.1")
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::ResourceExhausted);
    login_from(&auth, "rhea", PW, "198.51.100.77")
        .await
        .unwrap();

    // Many addresses flood the name: past the all-sources ceiling it locks for
    // addresses the player has not used, never longer than the short cap, and the
    // player's usual address keeps working.
    let cap = cfg.account_lockout_max_secs * 1000;
    let mut longest = 0;
    for i in 0..500u32 {
        let addr = format!("10.0.{}.{}", i / 250, i % 250);
        if let Err(e) = login_from(&auth, "rhea", "spray", &addr).await
            && e.code == Code::ResourceExhausted
        {
            longest = longest.max(e.retry_after_ms);
            if e.retry_after_ms == cap {
                break;
            }
            clock.advance(Duration::from_millis(e.retry_after_ms));
        }
    }
    assert_eq!(longest, cap);
    let a = auth
        .get_account(req(GetAccountRequest { account_id: id }))
        .await
        .unwrap()
        .account
        .unwrap();
    assert!(
        a.locked_until.is_some(),
        "the flood locks the name for new sources"
    );
    let e = login_from(&auth, "rhea", PW, "198.51.100.200")
        .await
        .unwrap_err();
    assert!(e.retry_after_ms <= cfg.account_lockout_max_secs * 1000);
    login_from(&auth, "rhea", PW, "192.0.2.50").await.unwrap();
    // Once the short lock is over, a new address gets in with the right password.
    clock.advance(Duration::from_millis(e.retry_after_ms));
    login_from(&auth, "rhea", PW, "198.51.100.200")
        .await
        .unwrap();
}

#[tokio::test]
async fn change_password_revokes_sessions_and_retires_the_old_password() {
    let (auth, _clock) = setup();
    let id = register(&auth, "nina").await;
    let a = login(&auth, "nina", PW).await.unwrap();
    let b = login(&auth, "nina", PW).await.unwrap();
    let new_pw = "a brand new passphrase";
    // Wrong old password.
    let e = auth
        .change_password(as_caller(
            ChangePasswordRequest {
                account_id: id.clone(),
                old_password: "not it at all".into(),
                new_password: new_pw.into(),
            },
            &id,
            &["player"],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::Unauthenticated);
    // New password breaking the rules.
    let e = auth
        .change_password(as_caller(
            ChangePasswordRequest {
                account_id: id.clone(),
                old_password: PW.into(),
                new_password: "password123".into(),
            },
            &id,
            &["player"],
        ))
        .await
        .unwrap_err();
    assert_eq!(field(&e), "new_password");
    validate(&auth, &a.access_token).await.unwrap();
    let out = auth
        .change_password(as_caller(
            ChangePasswordRequest {
                account_id: id.clone(),
                old_password: PW.into(),
                new_password: new_pw.into(),
            },
            &id,
            &["player"],
        ))
        .await
        .unwrap();
    assert_eq!(out.revoked_sessions, 2);
    for l in [&a, &b] {
        assert_eq!(
            validate(&auth, &l.access_token).await.unwrap_err().code,
            Code::Unauthenticated
        );
        assert_eq!(
            refresh(&auth, &l.refresh_token).await.unwrap_err().code,
            Code::Unauthenticated
        );
    }
    assert_eq!(
        login(&auth, "nina", PW).await.unwrap_err().code,
        Code::Unauthenticated
    );
    login(&auth, "nina", new_pw).await.unwrap();
}

#[tokio::test]
async fn change_password_keeps_the_calling_session_and_ends_the_others() {
    let (auth, _clock) = setup();
    let id = register(&auth, "nora").await;
    register(&auth, "olaf").await;
    let mine = login(&auth, "nora", PW).await.unwrap();
    let b = login(&auth, "nora", PW).await.unwrap();
    let c = login(&auth, "nora", PW).await.unwrap();
    let olaf = login(&auth, "olaf", PW).await.unwrap();
    let change = |old: &str, new: &str, session: &str| {
        let mut r = as_caller(
            ChangePasswordRequest {
                account_id: id.clone(),
                old_password: old.into(),
                new_password: new.into(),
            },
            &id,
            &["player"],
        );
        r.meta.caller_session = Some(session.to_string());
        r
    };
    let out = auth
        .change_password(change(PW, "first new passphrase", &mine.session_id))
        .await
        .unwrap();
    assert_eq!(out.revoked_sessions, 2);
    validate(&auth, &mine.access_token).await.unwrap();
    let mine = refresh(&auth, &mine.refresh_token).await.unwrap();
    for l in [&b, &c] {
        assert_eq!(
            validate(&auth, &l.access_token).await.unwrap_err().code,
            Code::Unauthenticated
        );
        assert_eq!(
            refresh(&auth, &l.refresh_token).await.unwrap_err().code,
            Code::Unauthenticated
        );
    }
    // The session is listed as the current one.
    let mut list = as_caller(
        ListSessionsRequest {
            account_id: id.clone(),
            page_size: 0,
            page_token: String::new(),
        },
        &id,
        &["player"],
    );
    list.meta.caller_session = Some(mine.session_id.clone());
    let sessions = auth.list_sessions(list).await.unwrap().sessions;
    assert_eq!(sessions.len(), 1);
    assert!(sessions[0].current);
    // Naming another account's session spares nothing of this one and touches nothing
    // of the other.
    let d = login(&auth, "nora", "first new passphrase").await.unwrap();
    let out = auth
        .change_password(change(
            "first new passphrase",
            "second new passphrase",
            &olaf.session_id,
        ))
        .await
        .unwrap();
    assert_eq!(out.revoked_sessions, 2);
    for t in [&mine.access_token, &d.access_token] {
        assert_eq!(
            validate(&auth, t).await.unwrap_err().code,
            Code::Unauthenticated
        );
    }
    validate(&auth, &olaf.access_token).await.unwrap();
}

#[tokio::test]
async fn change_password_authorization() {
    let (auth, _clock) = setup();
    let victim = register(&auth, "oscar").await;
    let other = register(&auth, "peggy").await;
    let body = |old: &str| ChangePasswordRequest {
        account_id: victim.clone(),
        old_password: old.into(),
        new_password: "taken over by someone".into(),
    };
    let e = auth
        .change_password(as_caller(body(PW), &other, &["player"]))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::PermissionDenied);
    // The owner must give the old password.
    let e = auth
        .change_password(as_caller(body(""), &victim, &["player"]))
        .await
        .unwrap_err();
    assert_eq!(field(&e), "old_password");
    // An admin acting for another account need not.
    auth.change_password(as_caller(body(""), &other, &["admin"]))
        .await
        .unwrap();
    login(&auth, "oscar", "taken over by someone")
        .await
        .unwrap();
}

#[tokio::test]
async fn grant_role_takes_effect_in_validate_at_once() {
    let (auth, _clock) = setup();
    let id = register(&auth, "quinn").await;
    let l = login(&auth, "quinn", PW).await.unwrap();
    assert_eq!(
        validate(&auth, &l.access_token).await.unwrap().roles,
        vec!["player"]
    );
    let grant = |role: &str, revoke: bool| GrantRoleRequest {
        account_id: id.clone(),
        role: role.into(),
        revoke,
    };
    let r = auth
        .grant_role(as_caller(grant("admin", false), "acc_admin", &["admin"]))
        .await
        .unwrap();
    assert_eq!(r.roles, vec!["player", "admin"]);
    assert_eq!(
        validate(&auth, &l.access_token).await.unwrap().roles,
        vec!["player", "admin"]
    );
    // Granting again changes nothing; revoking applies at once too.
    let r = auth.grant_role(req(grant("admin", false))).await.unwrap();
    assert_eq!(r.roles, vec!["player", "admin"]);
    auth.grant_role(req(grant("player", true))).await.unwrap();
    assert_eq!(
        validate(&auth, &l.access_token).await.unwrap().roles,
        vec!["admin"]
    );
    let e = auth
        .grant_role(req(grant("root", false)))
        .await
        .unwrap_err();
    assert_eq!(field(&e), "role");
    let e = auth
        .grant_role(req(GrantRoleRequest {
            account_id: "acc_missing".into(),
            role: "admin".into(),
            revoke: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::NotFound);
}

#[tokio::test]
async fn players_see_only_their_own_sessions_and_account() {
    let (auth, _clock) = setup();
    let alice = register(&auth, "rita").await;
    let bob = register(&auth, "sam").await;
    login(&auth, "rita", PW).await.unwrap();
    let list = |caller: &str, roles: &[&str]| {
        as_caller(
            ListSessionsRequest {
                account_id: alice.clone(),
                page_size: 0,
                page_token: String::new(),
            },
            caller,
            roles,
        )
    };
    let e = auth
        .list_sessions(list(&bob, &["player"]))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::PermissionDenied);
    let own = auth.list_sessions(list(&alice, &["player"])).await.unwrap();
    assert_eq!(own.sessions.len(), 1);
    assert_eq!(own.sessions[0].user_agent, "test-agent");
    let admin = auth.list_sessions(list(&bob, &["admin"])).await.unwrap();
    assert_eq!(admin.sessions, own.sessions);
    let e = auth
        .get_account(as_caller(
            GetAccountRequest {
                account_id: alice.clone(),
            },
            &bob,
            &["player"],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::PermissionDenied);
}

#[tokio::test]
async fn list_sessions_paginates_newest_first_and_skips_ended_sessions() {
    let (auth, clock) = setup();
    let id = register(&auth, "trent").await;
    let mut logins = Vec::new();
    for _ in 0..7 {
        logins.push(login(&auth, "trent", PW).await.unwrap());
        clock.advance(Duration::from_secs(1));
    }
    // End two of them.
    for i in [1, 4] {
        auth.logout(req(LogoutRequest {
            token: Some(logout_request::Token::AccessToken(
                logins[i].access_token.clone(),
            )),
            all_sessions: false,
        }))
        .await
        .unwrap();
    }
    let mut want: Vec<String> = logins.iter().map(|l| l.session_id.clone()).collect();
    want.remove(4);
    want.remove(1);
    want.reverse();
    let mut got = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = auth
            .list_sessions(req(ListSessionsRequest {
                account_id: id.clone(),
                page_size: 2,
                page_token: token,
            }))
            .await
            .unwrap();
        pages += 1;
        assert!(page.sessions.len() <= 2);
        assert!(page.sessions.iter().all(|s| !s.current));
        got.extend(page.sessions.into_iter().map(|s| s.session_id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(got, want);
    assert_eq!(pages, 3);
    let e = auth
        .list_sessions(req(ListSessionsRequest {
            account_id: id.clone(),
            page_size: 2,
            page_token: "bm90IGEgdG9rZW4".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(field(&e), "page_token");
    let e = auth
        .list_sessions(req(ListSessionsRequest {
            account_id: id.clone(),
            page_size: -1,
            page_token: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(field(&e), "page_size");
    let all = auth
        .list_sessions(req(ListSessionsRequest {
            account_id: id,
            page_size: 1000,
            page_token: String::new(),
        }))
        .await
        .unwrap();
    assert_eq!(all.sessions.len(), 5);
    assert!(all.next_page_token.is_empty());
}

#[tokio::test]
async fn every_revocation_is_announced_with_the_next_epoch_after_its_commit() {
    let (ctx, _clock) = Ctx::for_tests();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<RevocationNotice>::new()));
    let sink = seen.clone();
    let auth = Auth::new(&ctx, AuthConfig::default())
        .unwrap()
        .with_revocation_hook(Arc::new(move |r| sink.lock().unwrap().push(r)));
    let take = || std::mem::take(&mut *seen.lock().unwrap());
    let notice = |sessions: &[&str], accounts: &[&str], epoch: u64| RevocationNotice {
        session_ids: sessions.iter().map(|s| s.to_string()).collect(),
        account_ids: accounts.iter().map(|s| s.to_string()).collect(),
        epoch,
        heartbeat_interval_ms: 500,
    };
    let id = register(&auth, "rosa").await;
    let a = login(&auth, "rosa", PW).await.unwrap();
    let b = login(&auth, "rosa", PW).await.unwrap();
    assert!(take().is_empty(), "login revokes nothing");
    // Validate answers carry the epoch too.
    assert_eq!(
        validate(&auth, &b.access_token)
            .await
            .unwrap()
            .revocation_epoch,
        0
    );

    // Logout of one session names it; the refreshed token still belongs to it.
    auth.logout(req(LogoutRequest {
        token: Some(logout_request::Token::AccessToken(a.access_token.clone())),
        all_sessions: false,
    }))
    .await
    .unwrap();
    assert_eq!(take(), vec![notice(&[&a.session_id], &[], 1)]);
    // Nothing revoked, nothing announced, the epoch unchanged.
    auth.logout(req(LogoutRequest {
        token: Some(logout_request::Token::RefreshToken(a.refresh_token.clone())),
        all_sessions: false,
    }))
    .await
    .unwrap();
    assert!(take().is_empty());

    // Refresh-token reuse names the session.
    refresh(&auth, &b.refresh_token).await.unwrap();
    refresh(&auth, &b.refresh_token).await.unwrap_err();
    assert_eq!(take(), vec![notice(&[&b.session_id], &[], 2)]);

    // Password change, role change and logout-all name the account; a grant that
    // changes nothing announces nothing.
    login(&auth, "rosa", PW).await.unwrap();
    auth.change_password(req(ChangePasswordRequest {
        account_id: id.clone(),
        old_password: String::new(),
        new_password: "another-fine-passphrase".into(),
    }))
    .await
    .unwrap();
    assert_eq!(take(), vec![notice(&[], &[&id], 3)]);
    let grant = || GrantRoleRequest {
        account_id: id.clone(),
        role: "admin".into(),
        revoke: false,
    };
    auth.grant_role(req(grant())).await.unwrap();
    assert_eq!(take(), vec![notice(&[], &[&id], 4)]);
    auth.grant_role(req(grant())).await.unwrap();
    assert!(take().is_empty());
    let c = login(&auth, "rosa", "another-fine-passphrase")
        .await
        .unwrap();
    assert_eq!(
        validate(&auth, &c.access_token)
            .await
            .unwrap()
            .revocation_epoch,
        4
    );
    auth.logout(req(LogoutRequest {
        token: Some(logout_request::Token::AccessToken(c.access_token)),
        all_sessions: true,
    }))
    .await
    .unwrap();
    assert_eq!(take(), vec![notice(&[], &[&id], 5)]);
    // A heartbeat repeats the current epoch, with no ids.
    auth.heartbeat().await;
    assert_eq!(take(), vec![notice(&[], &[], 5)]);
    // The epoch is stored with the revocations.
    let stored = auth.ctx.store.get(META, EPOCH_KEY).unwrap().unwrap();
    assert_eq!(decode_epoch(&stored).unwrap(), 5);
}

#[tokio::test]
async fn heartbeats_run_until_shutdown() {
    let (ctx, _clock) = Ctx::for_tests();
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sink = seen.clone();
    let auth = Arc::new(
        Auth::new(&ctx, AuthConfig::default())
            .unwrap()
            .with_revocation_hook(Arc::new(move |_| {
                sink.fetch_add(1, Ordering::Relaxed);
            })),
    );
    let task = tokio::spawn(auth.clone().run_heartbeats());
    let beats = async {
        while seen.load(Ordering::Relaxed) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), beats)
        .await
        .expect("no heartbeats");
    ctx.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the heartbeats outlived shutdown")
        .unwrap();
}

/// The outbox's auth audit events, in order.
fn audited(auth: &Auth) -> Vec<AuthAuditEvent> {
    use aicore_runtime::outbox::{OUTBOX, OutboxEvent};
    use aicore_runtime::store::decode;
    auth.ctx
        .store
        .scan(OUTBOX, b"", b"", usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(_, v)| decode::<OutboxEvent>(OUTBOX, v).unwrap())
        .filter(|e| e.subject.starts_with("audit.auth."))
        .map(|e| {
            let a = AuthAuditEvent::decode(e.payload.as_slice()).unwrap();
            assert_eq!(e.subject, format!("audit.auth.{}", a.kind));
            a
        })
        .collect()
}

/// What a flow through every audited change used: the secrets that must not appear
/// in any event.
struct Flow {
    account_id: String,
    secrets: Vec<Vec<u8>>,
}

const FROM: &str = "192.0.2.44";
const NEW_PW: &str = "a fresh enough passphrase";
const UNKNOWN: &str = "hunter2-typed-as-a-name";

/// Logs in, fails, gets locked, changes roles and password, reuses a refresh token and
/// logs out, each once; refusals in between. Returns the account and the secrets.
async fn audited_flow(auth: &Auth, clock: &ManualClock) -> Flow {
    let id = register(auth, "sasha").await;
    assert!(audited(auth).is_empty(), "registering is not audited");
    let mut secrets: Vec<Vec<u8>> = vec![
        PW.into(),
        NEW_PW.into(),
        UNKNOWN.into(),
        UNKNOWN.to_lowercase().into(),
    ];
    let l = login_from(auth, "sasha", PW, FROM).await.unwrap();
    login_from(auth, "sasha", "wrong once", FROM)
        .await
        .unwrap_err();
    login_from(auth, UNKNOWN, "wrong again", FROM)
        .await
        .unwrap_err();
    for i in 0..4 {
        login_from(auth, "sasha", format!("wrong {i}"), FROM)
            .await
            .unwrap_err();
    }
    // Refused while locked: nothing to record.
    let locked = login_from(auth, "sasha", PW, FROM).await.unwrap_err();
    assert_eq!(locked.code, Code::ResourceExhausted);
    clock.advance(Duration::from_millis(locked.retry_after_ms));
    let mut grant = as_caller(
        GrantRoleRequest {
            account_id: id.clone(),
            role: "admin".into(),
            revoke: false,
        },
        "acc_boss",
        &["admin"],
    );
    grant.meta.request_id = Some("req-9".into());
    auth.grant_role(grant.clone()).await.unwrap();
    auth.grant_role(grant).await.unwrap();
    let e = auth
        .grant_role(req(GrantRoleRequest {
            account_id: "acc_missing".into(),
            role: "admin".into(),
            revoke: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::NotFound);
    let other = login_from(auth, "sasha", PW, FROM).await.unwrap();
    let change = |old: &str| {
        let mut r = as_caller(
            ChangePasswordRequest {
                account_id: id.clone(),
                old_password: old.into(),
                new_password: NEW_PW.into(),
            },
            &id,
            &["player"],
        );
        r.meta.caller_session = Some(l.session_id.clone());
        r.meta.client_addr = Some(FROM.into());
        r
    };
    auth.change_password(change("not the old one"))
        .await
        .unwrap_err();
    auth.change_password(change(PW)).await.unwrap();
    let rotated = refresh(auth, &l.refresh_token).await.unwrap();
    refresh(auth, &l.refresh_token).await.unwrap_err();
    let last = login_from(auth, "sasha", NEW_PW, FROM).await.unwrap();
    auth.logout(req(LogoutRequest {
        token: Some(logout_request::Token::AccessToken(
            last.access_token.clone(),
        )),
        all_sessions: false,
    }))
    .await
    .unwrap();
    // Logging out twice ends nothing and records nothing.
    auth.logout(req(LogoutRequest {
        token: Some(logout_request::Token::AccessToken(
            last.access_token.clone(),
        )),
        all_sessions: false,
    }))
    .await
    .unwrap();
    for t in [&l, &other, &last] {
        for token in [&t.access_token, &t.refresh_token] {
            secrets.push(token.as_bytes().to_vec());
            secrets.push(token.as_bytes()[3..].to_vec());
            let hash = sha256(token);
            secrets.push(hash.to_vec());
            secrets.push(
                hash.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
                    .into(),
            );
        }
    }
    for token in [&rotated.access_token, &rotated.refresh_token] {
        secrets.push(token.as_bytes()[3..].to_vec());
    }
    let a: AccountRecord = auth
        .ctx
        .store
        .get_msg(ACCOUNTS, id.as_bytes())
        .unwrap()
        .unwrap();
    secrets.push(a.password_hash.clone().into());
    // The PHC string's salt and hash parts on their own.
    for part in a.password_hash.split('$').skip(4) {
        secrets.push(part.into());
    }
    Flow {
        account_id: id,
        secrets,
    }
}

#[tokio::test]
async fn every_security_change_queues_its_audit_event_with_the_change() {
    let (auth, clock) = setup_cheap();
    let Flow { account_id: id, .. } = audited_flow(&auth, &clock).await;
    let events = audited(&auth);
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "login_succeeded",
            "login_failed",
            "login_failed",
            "login_failed",
            "login_failed",
            "login_failed",
            "login_failed",
            "lockout",
            "role_changed",
            "login_succeeded",
            "password_change_failed",
            "password_changed",
            "refresh_reuse",
            "login_succeeded",
            "logout",
        ]
    );
    for e in &events {
        assert!(e.at.is_some());
        // Refresh, logout and the grant were sent without a client address.
        let over_nats = matches!(e.kind.as_str(), "role_changed" | "refresh_reuse" | "logout");
        assert_eq!(e.source, if over_nats { "nats" } else { FROM }, "{e:?}");
        if e.kind != "login_failed" || e.account_id == id {
            assert_eq!(e.account_id, id, "{e:?}");
            assert!(e.username_sha256_prefix.is_empty());
        }
    }
    // The unknown name: no account, only a short hash of what was typed.
    let unknown = &events[2];
    assert_eq!(unknown.account_id, "");
    assert_eq!(
        unknown.username_sha256_prefix,
        audit::username_prefix(UNKNOWN)
    );
    assert_eq!(unknown.username_sha256_prefix.len(), 16);
    let lockout = &events[7];
    assert_eq!((lockout.all_sources, lockout.failures), (false, 5));
    assert!(lockout.locked_until.is_some());
    let role = &events[8];
    assert_eq!(
        (role.role.as_str(), role.role_removed, role.roles.clone()),
        (
            "admin",
            false,
            vec!["player".to_string(), "admin".to_string()]
        )
    );
    assert_eq!(
        (role.actor_account_id.as_str(), role.request_id.as_str()),
        ("acc_boss", "req-9")
    );
    let changed = &events[11];
    assert_eq!(
        changed.revoked_sessions, 1,
        "the other session; the caller's kept"
    );
    assert!(!changed.session_id.is_empty());
    assert_eq!(events[12].revoked_sessions, 1);
    assert_eq!(events[14].revoked_sessions, 1);
    assert_eq!(events[14].session_id, events[13].session_id);
}

#[tokio::test]
async fn audit_events_hold_no_password_token_or_hash() {
    let (auth, clock) = setup_cheap();
    let flow = audited_flow(&auth, &clock).await;
    let events = audited(&auth);
    assert!(events.len() > 10);
    for e in &events {
        let bytes = e.encode_to_vec();
        for secret in &flow.secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_slice()),
                "{} holds {:?}",
                e.kind,
                String::from_utf8_lossy(secret)
            );
        }
    }
}
