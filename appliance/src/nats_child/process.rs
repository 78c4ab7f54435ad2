//! One nats-server process: spawned in its own process group (from a helper thread, so the
//! kernel kills it with its parent), its output forwarded to `tracing`, waited on until its
//! monitoring endpoint reports it healthy, and stopped with SIGTERM, then SIGKILL.

use super::*;

/// Why a (re)start did not produce a healthy child.
pub(super) enum StartError {
    /// Shutdown was requested meanwhile; the child has been stopped.
    Cancelled,
    /// The child exited, never became healthy, or could not be spawned.
    Failed(anyhow::Error),
}

/// A spawned nats-server process with its log forwarders.
pub(super) struct Process {
    pub(super) child: Child,
    pub(super) pid: u32,
    /// Last notable lines of output, to explain a failure.
    pub(super) tail: Arc<Mutex<VecDeque<String>>>,
    pub(super) forwarders: Vec<JoinHandle<()>>,
}

impl Process {
    /// Once the child has exited, lets the forwarders read the rest of its output and
    /// returns the last lines.
    pub(super) async fn drain_output(&mut self) -> String {
        for forwarder in self.forwarders.drain(..) {
            let abort = forwarder.abort_handle();
            // A grandchild holding the pipe open must not hang us; a late line is lost.
            if tokio::time::timeout(OUTPUT_DRAIN_TIMEOUT, forwarder)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        if tail.is_empty() {
            "(no warnings or errors)".to_owned()
        } else {
            tail.iter().cloned().collect::<Vec<_>>().join("\n")
        }
    }

    /// SIGTERM, up to [`STOP_TIMEOUT`] to exit, then SIGKILL; reaps the child.
    pub(super) async fn terminate(&mut self) -> Option<ExitStatus> {
        // Already exited (and maybe already reaped): nothing to signal.
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        if let Some(pid) = self.child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
            // SAFETY: plain syscalls. `pid` is our own unreaped child (`id()` is None once
            // it has been waited for), so it cannot name a recycled, unrelated process.
            // SIGCONT after SIGTERM (as systemd does): a stopped child acts on the
            // SIGTERM at once instead of sitting out the timeout.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
                libc::kill(pid, libc::SIGCONT);
            }
            match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
                Ok(Ok(status)) => return Some(status),
                Ok(Err(e)) => tracing::warn!(pid, error = %e, "cannot wait for nats-server"),
                Err(_) => tracing::warn!(
                    pid,
                    "nats-server did not exit within {STOP_TIMEOUT:?} of SIGTERM; killing it"
                ),
            }
        }
        if let Err(e) = self.child.kill().await {
            tracing::warn!(pid = self.pid, error = %e, "cannot kill nats-server");
        }
        self.child.wait().await.ok()
    }
}

/// Spawns nats-server and waits until it is healthy; on any failure the child is gone
/// before this returns.
pub(super) async fn spawn_healthy(
    cfg: &NatsChildConfig,
    spawner: &Spawner,
    shared: &Shared,
    stop: &CancellationToken,
) -> Result<Process, StartError> {
    let mut process = spawn(cfg, spawner).await.map_err(StartError::Failed)?;
    shared.pid.store(process.pid, Ordering::SeqCst);
    let result = wait_healthy(cfg, &mut process, stop).await;
    if result.is_err() {
        process.terminate().await;
        shared.pid.store(0, Ordering::SeqCst);
    }
    match result {
        Ok(()) => Ok(process),
        Err(StartError::Failed(e)) => {
            let output = process.drain_output().await;
            Err(StartError::Failed(e.context(format!(
                "nats-server did not start; its last warnings and errors:\n{output}"
            ))))
        }
        Err(StartError::Cancelled) => Err(StartError::Cancelled),
    }
}

/// Forks children from one dedicated thread that lives as long as the monitor.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the
/// process. A tokio worker thread can retire while the process lives on (after
/// `block_in_place` it joins the blocking pool, whose idle threads exit), which would
/// SIGKILL a healthy nats-server; this thread exits only once the monitor is done.
#[derive(Debug)]
pub(super) struct Spawner {
    pub(super) requests: std::sync::mpsc::Sender<SpawnRequest>,
}

/// A command to start and where to send the result.
pub(super) type SpawnRequest = (Command, oneshot::Sender<io::Result<Child>>);

impl Spawner {
    /// Starts the thread; it enters the current tokio runtime so the children it spawns
    /// are reaped and their pipes polled by that runtime.
    pub(super) fn new() -> Result<Spawner> {
        let runtime = tokio::runtime::Handle::current();
        let (requests, incoming) = std::sync::mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("nats-spawner".to_owned())
            .spawn(move || {
                let _runtime = runtime.enter();
                for (mut command, reply) in incoming {
                    // The requester may have given up (cancelled); the child then drops
                    // here and kill_on_drop ends it.
                    let _ = reply.send(command.spawn());
                }
            })
            .context("cannot start the nats-server spawner thread")?;
        Ok(Spawner { requests })
    }

    pub(super) async fn spawn(&self, command: Command) -> io::Result<Child> {
        let (reply, result) = oneshot::channel();
        self.requests
            .send((command, reply))
            .map_err(|_| io::Error::other("nats-server spawner thread is gone"))?;
        result
            .await
            .map_err(|_| io::Error::other("nats-server spawner thread is gone"))?
    }
}

/// Starts the process with piped output forwarded to `tracing`.
pub(super) async fn spawn(cfg: &NatsChildConfig, spawner: &Spawner) -> Result<Process> {
    let mut command = Command::new(&cfg.binary);
    command
        .arg("-c")
        .arg(&cfg.config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // systemd's notification socket and watchdog are aicore's alone.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        // Own process group: a terminal's SIGINT must reach only aicore, which stops the
        // child last in its ordered teardown.
        .process_group(0)
        .kill_on_drop(true);
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id();
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // syscalls (prctl, getppid) and builds an io::Error without allocating.
        unsafe {
            command.pre_exec(move || {
                // The kernel SIGKILLs the child when the thread that forked it (the
                // spawner's) dies, which includes the whole process dying.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
    let mut child = spawner
        .spawn(command)
        .await
        .with_context(|| format!("cannot start {}", cfg.binary.display()))?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow!("nats-server exited before its pid could be read"))?;
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(OUTPUT_TAIL_LINES)));
    let mut forwarders = Vec::with_capacity(2);
    if let Some(stdout) = child.stdout.take() {
        forwarders.push(tokio::spawn(forward_output(
            stdout,
            pid,
            false,
            Arc::clone(&tail),
        )));
    }
    if let Some(stderr) = child.stderr.take() {
        forwarders.push(tokio::spawn(forward_output(
            stderr,
            pid,
            true,
            Arc::clone(&tail),
        )));
    }
    tracing::debug!(pid, binary = %cfg.binary.display(), config = %cfg.config_path.display(), "nats-server spawned");
    Ok(Process {
        child,
        pid,
        tail,
        forwarders,
    })
}

/// Forwards each output line to `tracing` (target `nats_server`) at the level nats-server
/// gave it, and keeps the last notable ones in `tail`: routine `[INF]` lines (the start-up
/// banner alone is twenty) would push out the one line that says what went wrong.
pub(super) async fn forward_output<R: AsyncRead + Unpin>(
    output: R,
    pid: u32,
    is_stderr: bool,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    let mut reader = BufReader::new(output);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let (level, message) = split_log_line(line);
        if message.is_empty() {
            continue;
        }
        match level {
            Some("ERR" | "FTL") => tracing::error!(target: "nats_server", pid, "{message}"),
            Some("WRN") => tracing::warn!(target: "nats_server", pid, "{message}"),
            Some("DBG" | "TRC") => tracing::debug!(target: "nats_server", pid, "{message}"),
            Some(_) => tracing::info!(target: "nats_server", pid, "{message}"),
            // Unprefixed stderr is how nats-server reports fatal start-up errors.
            None if is_stderr => tracing::warn!(target: "nats_server", pid, "{message}"),
            None => tracing::info!(target: "nats_server", pid, "{message}"),
        }
        if matches!(level, Some("INF" | "DBG" | "TRC")) {
            continue;
        }
        let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
        if tail.len() == OUTPUT_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.to_owned());
    }
}

/// Splits `[pid] date time [INF] message` into the level tag and the message; lines in
/// any other shape come back whole.
pub(super) fn split_log_line(line: &str) -> (Option<&str>, &str) {
    let Some(rest) = line.strip_prefix('[') else {
        return (None, line);
    };
    rest.match_indices(" [")
        .find_map(|(i, _)| {
            let after = &rest[i + 2..];
            let level = after.get(..3)?;
            let message = after.get(3..)?.strip_prefix(']')?;
            let message = message.strip_prefix(' ').unwrap_or(message);
            level
                .chars()
                .all(|c| c.is_ascii_uppercase())
                .then_some((Some(level), message))
        })
        .unwrap_or((None, line))
}

/// Waits until the health endpoint answers 200, the child exits, the start timeout
/// passes, or `stop` is cancelled.
pub(super) async fn wait_healthy(
    cfg: &NatsChildConfig,
    process: &mut Process,
    stop: &CancellationToken,
) -> Result<(), StartError> {
    let host = connect_host(&cfg.host);
    let mut last_probe = String::from("no probe finished");
    tokio::select! {
        _ = stop.cancelled() => Err(StartError::Cancelled),
        status = process.child.wait() => Err(StartError::Failed(match status {
            Ok(status) => anyhow!("nats-server exited during start-up ({status})"),
            Err(e) => anyhow!("cannot wait for nats-server: {e}"),
        })),
        () = poll_until_healthy(host, cfg.monitor_port, &mut last_probe) => Ok(()),
        () = tokio::time::sleep(START_TIMEOUT) => Err(StartError::Failed(anyhow!(
            "nats-server was not healthy within {START_TIMEOUT:?} \
             (http://{}{HEALTH_PATH}: {last_probe})",
            host_port(host, cfg.monitor_port)
        ))),
    }
}

/// Probes the health endpoint until it answers 200, keeping the last failure's text.
pub(super) async fn poll_until_healthy(host: &str, port: u16, last_probe: &mut String) {
    loop {
        match tokio::time::timeout(HEALTH_REQUEST_TIMEOUT, probe_health(host, port)).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => *last_probe = format!("{e:#}"),
            Err(_) => *last_probe = format!("no answer within {HEALTH_REQUEST_TIMEOUT:?}"),
        }
        tokio::time::sleep(HEALTH_POLL_INTERVAL).await;
    }
}

/// One `GET /healthz?js-enabled-only=true` over HTTP/1.0 (the server closes the
/// connection after answering, so reading to the end delimits the response).
pub(super) async fn probe_health(host: &str, port: u16) -> Result<()> {
    let mut stream = TcpStream::connect((host, port))
        .await
        .context("cannot connect")?;
    let request = format!(
        "GET {HEALTH_PATH} HTTP/1.0\r\nHost: {}\r\n\r\n",
        host_port(host, port)
    );
    stream
        .write_all(request.as_bytes())
        .await
        .context("cannot send request")?;
    let mut response = Vec::with_capacity(256);
    (&mut stream)
        .take(HEALTH_RESPONSE_LIMIT)
        .read_to_end(&mut response)
        .await
        .context("cannot read response")?;
    let response = String::from_utf8_lossy(&response);
    let status_line = response.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        let body = response
            .split_once("\r\n\r\n")
            .map_or("", |(_, body)| body.trim());
        bail!("answered {status_line:?} {body}")
    }
}
