//! `flood`: what two floods do to a real appliance, and to the normal users beside them.
//! It starts `aicore run` (the binary in `AICORE_BIN`, else the workspace's debug build;
//! `make flood` uses the release build) in a temporary directory and, over real HTTP:
//!
//! - **login**: `--connections` clients (default 1,500), each on its own connection from
//!   its own loopback address (127.1.x.y, like a botnet: every address stays under the
//!   per-address rate limit), log in as random names with random passwords as fast as
//!   they are answered, while 8 real players log in with their right passwords from
//!   127.0.0.1. Reported: the players' successful logins/s without and during the flood,
//!   what the flood got (by status), the appliance's peak RSS and threads, and the CPU it
//!   still burned in the 5 s after the flood stopped.
//! - **bogus**: about 80 requests/s with made-up bearer tokens and
//!   `X-Request-Timeout-Ms: 1` (under the per-address rate limit), while a player reads
//!   its account and logs in again. Reported: the player's successful share of calls
//!   without and during the flood, and the appliance's RSS before and at the flood's peak.
//!
//! Numbers depend on the machine; compare the ratios (during / without), and runs of the
//! same build. Usage: `flood [login|bogus|all] [--seconds S] [--connections N]`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aicore_e2e::Appliance;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::net::TcpSocket;

const PW: &str = "violet-otter-lantern";
const PLAYERS: usize = 8;

/// One HTTP/1.1 connection from a chosen local address, re-opened when it breaks.
struct Conn {
    from: IpAddr,
    to: SocketAddr,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Conn {
    fn new(from: IpAddr, to: SocketAddr) -> Conn {
        Conn {
            from,
            to,
            sender: None,
        }
    }

    /// POSTs `body` to `path`; the status, or 0 when the connection failed.
    async fn post(&mut self, path: &str, body: String, headers: &[(&str, &str)]) -> u16 {
        self.call(path, body, headers).await.0
    }

    /// POSTs `body` to `path`; the status (0 when the connection failed) and the body.
    /// A request on a kept-alive connection the server has closed is sent again once on a
    /// new one.
    async fn call(&mut self, path: &str, body: String, headers: &[(&str, &str)]) -> (u16, Bytes) {
        let fresh = self.sender.is_none();
        let r = self.call_once(path, body.clone(), headers).await;
        if r.0 == 0 && !fresh {
            return self.call_once(path, body, headers).await;
        }
        r
    }

    async fn call_once(
        &mut self,
        path: &str,
        body: String,
        headers: &[(&str, &str)],
    ) -> (u16, Bytes) {
        if self.sender.is_none() {
            let Ok(socket) = TcpSocket::new_v4() else {
                return (0, Bytes::new());
            };
            if socket.bind(SocketAddr::new(self.from, 0)).is_err() {
                return (0, Bytes::new());
            }
            let Ok(stream) = socket.connect(self.to).await else {
                return (0, Bytes::new());
            };
            let io = hyper_util::rt::TokioIo::new(stream);
            let Ok((sender, conn)) = hyper::client::conn::http1::handshake(io).await else {
                return (0, Bytes::new());
            };
            tokio::spawn(conn);
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().expect("connected above");
        let mut req = http::Request::post(path)
            .header("host", self.to.to_string())
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let Ok(req) = req.body(Full::new(Bytes::from(body))) else {
            return (0, Bytes::new());
        };
        match sender.send_request(req).await {
            Ok(r) => {
                let status = r.status().as_u16();
                match r.into_body().collect().await {
                    Ok(b) => (status, b.to_bytes()),
                    Err(_) => {
                        self.sender = None;
                        (status, Bytes::new())
                    }
                }
            }
            Err(_) => {
                self.sender = None;
                (0, Bytes::new())
            }
        }
    }
}

/// The appliance's RSS (KiB) and threads, from /proc.
fn rss_and_threads(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("Threads:"))
}

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

/// Samples RSS and threads until `stop`; returns the peaks.
fn sample_peaks(pid: u32, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let (mut rss, mut threads) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            let (r, t) = rss_and_threads(pid);
            rss = rss.max(r);
            threads = threads.max(t);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (rss, threads)
    })
}

fn login_body(user: &str, password: &str) -> String {
    format!(r#"{{"username":"{user}","password":"{password}"}}"#)
}

/// Answers by status.
type Statuses = Arc<std::sync::Mutex<std::collections::BTreeMap<u16, u64>>>;

/// The players log in with their right passwords for `seconds`; successful logins/s and
/// their answers by status.
async fn players_log_in(to: SocketAddr, seconds: f64) -> (f64, Statuses) {
    let ok = Arc::new(AtomicU64::new(0));
    let statuses: Statuses = Arc::default();
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..PLAYERS)
        .map(|i| {
            let (ok, statuses) = (ok.clone(), statuses.clone());
            tokio::spawn(async move {
                let mut c = Conn::new(IpAddr::V4(Ipv4Addr::LOCALHOST), to);
                while Instant::now() < end {
                    let (s, body) = c
                        .call("/v1/auth/login", login_body(&format!("player{i}"), PW), &[])
                        .await;
                    *statuses.lock().unwrap().entry(s).or_default() += 1;
                    if s != 200 && std::env::var_os("FLOOD_VERBOSE").is_some() {
                        eprintln!("player{i}: {s} {}", String::from_utf8_lossy(&body));
                    }
                    if s == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    (ok.load(Ordering::Relaxed) as f64 / seconds, statuses)
}

async fn login_flood(app: &Appliance, to: SocketAddr, seconds: f64, connections: usize) {
    let pid = app.pid();
    let (rss0, threads0) = rss_and_threads(pid);
    let (quiet, _) = players_log_in(to, seconds).await;
    let (rss1, threads1) = rss_and_threads(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let peaks = sample_peaks(pid, stop.clone());
    let statuses: Arc<std::sync::Mutex<std::collections::BTreeMap<u16, u64>>> = Arc::default();
    let flood: Vec<_> = (0..connections)
        .map(|i| {
            let (stop, statuses) = (stop.clone(), statuses.clone());
            let from = IpAddr::V4(Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8));
            tokio::spawn(async move {
                let mut c = Conn::new(from, to);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let s = c
                        .post(
                            "/v1/auth/login",
                            login_body(&format!("bot{i}x{n}"), &format!("guess-{i}-{n}-pw")),
                            &[],
                        )
                        .await;
                    *statuses.lock().unwrap().entry(s).or_default() += 1;
                    if s == 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();
    // Let the flood build up, then measure the players during it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (during, players) = players_log_in(to, seconds).await;
    stop.store(true, Ordering::Relaxed);
    for t in flood {
        t.abort();
    }
    let (rss_peak, threads_peak) = peaks.await.unwrap_or_default();
    let cpu_at_stop = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cpu_after = cpu_seconds(pid) - cpu_at_stop;
    let (rss2, threads2) = rss_and_threads(pid);

    println!("login flood: {connections} connections, {seconds} s per phase");
    println!("  players' logins/s without the flood  {quiet:>8.1}");
    println!(
        "  players' logins/s during the flood   {during:>8.1}  ({:.0}% of without)",
        if quiet > 0.0 {
            100.0 * during / quiet
        } else {
            0.0
        }
    );
    println!(
        "  players' answers during the flood by status: {:?}",
        players.lock().unwrap()
    );
    println!(
        "  flood answers by status (0 = connection failed): {:?}",
        statuses.lock().unwrap()
    );
    println!(
        "  appliance RSS MiB: start {:.0}, quiet {:.0}, flood peak {:.0}, 5 s after {:.0}",
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        rss_peak as f64 / 1024.0,
        rss2 as f64 / 1024.0
    );
    println!(
        "  appliance threads: start {threads0}, quiet {threads1}, flood peak {threads_peak}, 5 s after {threads2}"
    );
    println!("  appliance CPU in the 5 s after the flood stopped: {cpu_after:.2} s");
}

async fn bogus_flood(app: &Appliance, to: SocketAddr, seconds: f64) {
    let pid = app.pid();
    // The player's token.
    let login = player_login(to).await;
    let token = format!("Bearer {}", login.0);
    let account = login.1;
    let quiet = player_calls(to, &token, &account, seconds).await;
    let (rss_quiet, _) = rss_and_threads(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let peaks = sample_peaks(pid, stop.clone());
    let statuses: Arc<std::sync::Mutex<std::collections::BTreeMap<u16, u64>>> = Arc::default();
    let bots = bogus_bots(to, &stop, &statuses);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = player_calls(to, &token, &account, seconds).await;
    stop.store(true, Ordering::Relaxed);
    for b in bots {
        b.abort();
    }
    let (rss_peak, _) = peaks.await.unwrap_or_default();
    let pct = |(ok, all): (u64, u64)| 100.0 * ok as f64 / all.max(1) as f64;
    println!("bogus-token flood: ~80 req/s, X-Request-Timeout-Ms: 1, {seconds} s per phase");
    println!(
        "  player's calls succeeding without the flood {:>5.1}% of {}",
        pct(quiet),
        quiet.1
    );
    println!(
        "  player's calls succeeding during the flood  {:>5.1}% of {}",
        pct(during),
        during.1
    );
    println!("  flood answers by status: {:?}", statuses.lock().unwrap());
    println!(
        "  appliance RSS: after the quiet phase {} MiB, flood peak {} MiB",
        rss_quiet / 1024,
        rss_peak / 1024
    );
}

/// The player reads its account and logs in again, every 20 ms for `seconds`; its
/// successful calls and all of them.
async fn player_calls(to: SocketAddr, token: &str, account: &str, seconds: f64) -> (u64, u64) {
    let mut c = Conn::new(IpAddr::V4(Ipv4Addr::LOCALHOST), to);
    let (mut ok, mut all) = (0u64, 0u64);
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        let s = c
            .post(
                "/v1/auth/get_account",
                format!(r#"{{"accountId":"{account}"}}"#),
                &[("authorization", token)],
            )
            .await;
        all += 1;
        ok += (s == 200) as u64;
        let s = c
            .post("/v1/auth/login", login_body("player0", PW), &[])
            .await;
        all += 1;
        ok += (s == 200) as u64;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (ok, all)
}

/// Starts the bogus-token bots; they count their answers in `statuses` until `stop`.
fn bogus_bots(
    to: SocketAddr,
    stop: &Arc<AtomicBool>,
    statuses: &Statuses,
) -> Vec<tokio::task::JoinHandle<()>> {
    // Eight addresses at 10 req/s each: each under the per-address limit.
    (0..8u8)
        .map(|i| {
            let (stop, statuses) = (stop.clone(), statuses.clone());
            tokio::spawn(async move {
                let mut c = Conn::new(IpAddr::V4(Ipv4Addr::new(127, 2, 0, i + 1)), to);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let bogus = format!("Bearer at_{i}_{n}_{:032x}", rand_u128(n));
                    let s = c
                        .post(
                            "/v1/auth/get_account",
                            r#"{"accountId":"acc_x"}"#.to_string(),
                            &[("authorization", &bogus), ("x-request-timeout-ms", "1")],
                        )
                        .await;
                    *statuses.lock().unwrap().entry(s).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .collect()
}

/// A pseudo-random 128-bit number (no rand dependency needed for made-up tokens).
fn rand_u128(n: u64) -> u128 {
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xdead_beef;
    x ^= x >> 31;
    (u128::from(x) << 64) | u128::from(x.rotate_left(17))
}

/// Logs player0 in; its access token and account id.
async fn player_login(to: SocketAddr) -> (String, String) {
    let mut c = Conn::new(IpAddr::V4(Ipv4Addr::LOCALHOST), to);
    let (status, body) = c
        .call("/v1/auth/login", login_body("player0", PW), &[])
        .await;
    assert_eq!(status, 200, "player0 logs in");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    (
        v["accessToken"].as_str().unwrap_or_default().to_string(),
        v["accountId"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let which = args
        .first()
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "all".into());
    let seconds = arg("--seconds").unwrap_or(10.0);
    let connections = arg("--connections").unwrap_or(1500.0) as usize;
    let app = Appliance::start().await;
    let to: SocketAddr = app
        .http_url
        .trim_start_matches("http://")
        .parse()
        .expect("the gateway address");
    let mut c = Conn::new(IpAddr::V4(Ipv4Addr::LOCALHOST), to);
    for i in 0..PLAYERS {
        let (s, body) = c
            .call(
                "/v1/auth/register",
                login_body(&format!("player{i}"), PW),
                &[],
            )
            .await;
        assert_eq!(
            s,
            200,
            "registering player{i}: {s} {}",
            String::from_utf8_lossy(&body)
        );
    }
    if which == "login" || which == "all" {
        login_flood(&app, to, seconds, connections).await;
    }
    if which == "bogus" || which == "all" {
        bogus_flood(&app, to, seconds).await;
    }
}
