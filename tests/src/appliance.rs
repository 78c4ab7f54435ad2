//! [`Appliance`]: a running `aicore run` (with its nats-server child) on free ports, its
//! certificates, NATS connections and CLI, and its process (signals, exit, crash).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{
    Identity, aicore_bin, child_pids, domains, free_ports, nats_server_bin, ping, with_umask,
};

/// A running `aicore run`.
pub struct Appliance {
    child: Option<Child>,
    /// Its data directory (kept across restarts with [`Appliance::start_in`]).
    pub data_dir: PathBuf,
    /// The NATS URL of its nats-server child.
    pub nats_url: String,
    /// The base URL of its HTTP gateway (`http://127.0.0.1:<port>`).
    pub http_url: String,
    /// Where its log goes.
    pub log_path: PathBuf,
    /// The domains it serves (all unless started with [`Appliance::start_serving`]).
    serves: Vec<&'static str>,
    _temp: Option<tempfile::TempDir>,
}

impl Appliance {
    /// Starts an appliance in a fresh temporary directory and waits until it is ready.
    pub async fn start() -> Appliance {
        let temp = tempfile::tempdir().expect("a temp dir");
        let mut a = Appliance::start_in(temp.path()).await;
        a._temp = Some(temp);
        a
    }

    /// Starts an appliance in a fresh temporary directory with `toml` as its
    /// configuration file (ports and data dir still come from the command line).
    pub async fn start_with_config(toml: &str) -> Appliance {
        let temp = tempfile::tempdir().expect("a temp dir");
        std::fs::write(temp.path().join("aicore.toml"), toml).expect("writing aicore.toml");
        let mut a = Appliance::start_in(temp.path()).await;
        a._temp = Some(temp);
        a
    }

    /// Starts an appliance in a fresh temporary directory serving only `served` (`serve`
    /// in its configuration), and waits until those answer: the others are down.
    pub async fn start_serving(served: &[&'static str]) -> Appliance {
        Appliance::start_serving_with_config(served, "").await
    }

    /// [`Appliance::start_serving`] with `toml` (sections only, no `serve`) added to its
    /// configuration.
    pub async fn start_serving_with_config(served: &[&'static str], toml: &str) -> Appliance {
        let temp = tempfile::tempdir().expect("a temp dir");
        let list: Vec<String> = served.iter().map(|d| format!("{d:?}")).collect();
        std::fs::write(
            temp.path().join("aicore.toml"),
            format!("serve = [{}]\n{toml}", list.join(", ")),
        )
        .expect("writing aicore.toml");
        let mut a = Appliance::spawn(temp.path(), None, None);
        a.serves = served.to_vec();
        a.wait_ready(Duration::from_secs(60)).await;
        a._temp = Some(temp);
        a
    }

    /// Starts an appliance that joins the NATS server at `url` (`nats.url`) instead of
    /// starting its own child.
    pub async fn start_joining(url: &str) -> Appliance {
        let temp = tempfile::tempdir().expect("a temp dir");
        std::fs::write(
            temp.path().join("aicore.toml"),
            format!("[nats]\nurl = \"{url}\"\n"),
        )
        .expect("writing aicore.toml");
        let mut a = Appliance::launch(temp.path(), Some(url), None).await;
        a._temp = Some(temp);
        a
    }

    /// Starts a second `aicore` process serving `served` on `host`'s NATS server (its
    /// child), connecting as `host`'s `domains` principal, with `toml` (sections only)
    /// added to its configuration; it starts no nats-server of its own. Connections the
    /// test makes to it present `host`'s `admin` certificate.
    pub async fn start_joining_appliance(
        host: &Appliance,
        served: &[&'static str],
        toml: &str,
    ) -> Appliance {
        let temp = tempfile::tempdir().expect("a temp dir");
        let certs = temp.path().join("certs");
        std::fs::create_dir_all(&certs).expect("certs dir");
        for f in ["admin.pem", "admin.key", "ca.pem"] {
            std::fs::copy(host.certs_dir().join(f), certs.join(f)).expect("copying a certificate");
        }
        let domains = host.identity("domains");
        let list: Vec<String> = served.iter().map(|d| format!("{d:?}")).collect();
        std::fs::write(
            temp.path().join("aicore.toml"),
            format!(
                "serve = [{}]\n[nats]\nurl = {:?}\n[security]\nclient_cert = {:?}\nclient_key = {:?}\nca_cert = {:?}\n{toml}",
                list.join(", "),
                host.nats_url,
                domains.cert,
                domains.key,
                domains.ca,
            ),
        )
        .expect("writing aicore.toml");
        let mut a = Appliance::spawn(temp.path(), Some(&host.nats_url), None);
        a.serves = served.to_vec();
        a.wait_ready(Duration::from_secs(60)).await;
        a._temp = Some(temp);
        a
    }

    /// Starts an appliance on `data_dir` (e.g. again after a crash), with
    /// `data_dir/aicore.toml` as its configuration when that file exists.
    pub async fn start_in(data_dir: &Path) -> Appliance {
        Appliance::launch(data_dir, None, None).await
    }

    /// [`Appliance::start_in`] with the process's umask set to `umask` (`0` makes every
    /// file created without an explicit mode world-writable).
    pub async fn start_in_with_umask(data_dir: &Path, umask: u32) -> Appliance {
        Appliance::launch(data_dir, None, Some(umask)).await
    }

    async fn launch(data_dir: &Path, external_nats: Option<&str>, umask: Option<u32>) -> Appliance {
        let mut a = Appliance::spawn(data_dir, external_nats, umask);
        a.wait_ready(Duration::from_secs(60)).await;
        a
    }

    /// Starts `aicore run` on `data_dir` serving `served`, with `env` added to its
    /// environment, without waiting for it to be ready.
    pub fn spawn_serving_with_env(
        data_dir: &Path,
        served: &[&'static str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Appliance {
        let list: Vec<String> = served.iter().map(|d| format!("{d:?}")).collect();
        std::fs::create_dir_all(data_dir).expect("data dir");
        std::fs::write(
            data_dir.join("aicore.toml"),
            format!("serve = [{}]\n", list.join(", ")),
        )
        .expect("writing aicore.toml");
        let mut a = Appliance::spawn_env(data_dir, None, None, env);
        a.serves = served.to_vec();
        a
    }

    /// Starts `aicore run` on `data_dir` without waiting for it.
    fn spawn(data_dir: &Path, external_nats: Option<&str>, umask: Option<u32>) -> Appliance {
        Appliance::spawn_env(data_dir, external_nats, umask, &[])
    }

    fn spawn_env(
        data_dir: &Path,
        external_nats: Option<&str>,
        umask: Option<u32>,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Appliance {
        let [port, monitor, http] = free_ports::<3>();
        let log_path = data_dir.join(format!("aicore-{port}.log"));
        std::fs::create_dir_all(data_dir).expect("data dir");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut command = Command::new(aicore_bin());
        if let Some(mask) = umask {
            with_umask(&mut command, mask);
        }
        let child = command
            .args(["run", "--data-dir"])
            .arg(data_dir)
            .args(["--nats-port", &port.to_string()])
            .args(["--nats-monitor-port", &monitor.to_string()])
            .args(["--http-port", &http.to_string()])
            .args(
                Some(data_dir.join("aicore.toml"))
                    .filter(|c| c.exists())
                    .map(|c| vec!["--config".into(), c.into_os_string()])
                    .unwrap_or_default(),
            )
            .env("AICORE_NATS_SERVER", nats_server_bin())
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .current_dir(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning aicore");
        Appliance {
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            nats_url: external_nats
                .map(str::to_string)
                .unwrap_or_else(|| format!("nats://127.0.0.1:{port}")),
            http_url: format!("http://127.0.0.1:{http}"),
            log_path,
            serves: domains(),
            _temp: None,
        }
    }

    /// Waits until every domain answers `$SRV.PING` and the HTTP gateway accepts
    /// connections, failing with the log otherwise.
    pub async fn wait_ready(&mut self, limit: Duration) {
        let give_up = Instant::now() + limit;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("aicore exited early ({status}):\n{}", self.log());
            }
            if let Ok(nats) = self.options().connect(&self.nats_url).await {
                let answered = ping(&nats, Duration::from_millis(300)).await;
                if self.serves.iter().all(|d| answered.iter().any(|a| a == d))
                    && self.http_listening()
                {
                    return;
                }
            }
            assert!(
                Instant::now() < give_up,
                "aicore not ready in time:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the HTTP gateway accepts connections.
    fn http_listening(&self) -> bool {
        let addr = self.http_url.trim_start_matches("http://");
        std::net::TcpStream::connect(addr).is_ok()
    }

    /// The appliance's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Its certificate directory (the local CA and the certificates it issued).
    pub fn certs_dir(&self) -> PathBuf {
        self.data_dir.join("certs")
    }

    /// The identity of certificate `name` issued by this appliance's CA.
    pub fn identity(&self, name: &str) -> Identity {
        let dir = self.certs_dir();
        Identity::in_dir(&dir, name, &dir.join("ca.pem"))
    }

    /// Connect options as `admin` (plaintext when the appliance has no certificates).
    pub fn options(&self) -> async_nats::ConnectOptions {
        let admin = self.identity("admin");
        if admin.cert.exists() {
            admin.options()
        } else {
            async_nats::ConnectOptions::new()
        }
    }

    /// Runs `aicore certs <args> --data-dir <its data dir>`.
    pub fn certs(&self, args: &[&str]) -> Output {
        Command::new(aicore_bin())
            .arg("certs")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .current_dir(&self.data_dir)
            .output()
            .expect("running aicore certs")
    }

    /// A NATS connection to the appliance, as `admin`.
    pub async fn nats(&self) -> async_nats::Client {
        self.options()
            .retry_on_initial_connect()
            .reconnect_delay_callback(|n| Duration::from_millis((n as u64 * 100).min(1000)))
            .connect(&self.nats_url)
            .await
            .expect("connecting to the appliance's NATS")
    }

    /// The messages of a new durable pull consumer `name` on the EVENTS stream, filtered
    /// to `subject`, from the start of the stream, with explicit acks.
    pub async fn events(
        &self,
        name: &str,
        subject: &str,
    ) -> async_nats::jetstream::consumer::pull::Stream {
        use async_nats::jetstream::{self, consumer};
        let js = jetstream::new(self.nats().await);
        let stream = js.get_stream("EVENTS").await.expect("stream EVENTS");
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(name.into()),
                filter_subject: subject.into(),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .expect("consumer");
        consumer.messages().await.expect("messages")
    }

    /// An SDK client.
    pub async fn client(&self) -> aicore_sdk::Client {
        aicore_sdk::Client::new(self.nats().await, Default::default())
    }

    /// Runs `aicore <args>` against this appliance (with `--nats-url` and `--data-dir`
    /// appended, so it presents the admin certificate).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(aicore_bin())
            .args(args)
            .args(["--nats-url", &self.nats_url])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .current_dir(&self.data_dir)
            .output()
            .expect("running aicore")
    }

    /// The appliance's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The pid of its nats-server child.
    pub fn nats_pid(&self) -> Option<u32> {
        child_pids(self.pid()).into_iter().find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .map(|c| c.trim() == "nats-server")
                .unwrap_or(false)
        })
    }

    /// Sends a signal to the appliance.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a pid we spawned; no memory is touched.
        unsafe {
            libc::kill(self.pid() as i32, sig);
        }
    }

    /// Waits for the appliance to exit and returns its exit code (None = killed by a signal).
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let give_up = Instant::now() + limit;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(s) = child.try_wait().expect("waiting on aicore") {
                self.child = None;
                return s.code();
            }
            assert!(
                Instant::now() < give_up,
                "aicore did not exit:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the appliance with SIGKILL (a crash) and waits for it.
    pub async fn crash(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(10)).await;
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // A failing test shows what the appliance said (nextest prints a failed test's
        // stderr), so a failure seen once in CI can be explained from its output.
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(LOG_TAIL_LINES).collect();
            eprintln!(
                "--- the last {} lines of {} ---",
                tail.len(),
                self.log_path.display()
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Lines of the appliance's log a failing test prints.
const LOG_TAIL_LINES: usize = 200;
