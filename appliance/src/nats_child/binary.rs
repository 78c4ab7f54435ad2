//! Finding a usable nats-server: the configured path, `AICORE_NATS_SERVER`, the pinned
//! copy `make tools` installs, then `PATH`; each candidate's version is probed and one older
//! than the minimum refused with a hint how to install the pinned one.

use super::*;

/// Finds a nats-server binary of at least v2.10.
///
/// Tries, in order: `configured`; the `AICORE_NATS_SERVER` environment variable;
/// `.tools/nats/bin/nats-server` under the current directory or any of its ancestors, then
/// under every ancestor of the current executable (so `target/debug/aicore` finds
/// `<repo>/.tools`); `nats-server` on `PATH`. An explicit choice (the first two) is used or rejected, never skipped over.
/// Each candidate is run with `--version`, so this blocks for a few milliseconds.
pub fn resolve_binary(configured: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = configured {
        probe_binary(path).with_context(|| {
            format!(
                "configured nats-server {} is not usable; {INSTALL_HINT}",
                path.display()
            )
        })?;
        return Ok(path.to_path_buf());
    }
    if let Some(value) = std::env::var_os(BINARY_ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        probe_binary(&path).with_context(|| {
            format!(
                "{BINARY_ENV}={} is not usable; {INSTALL_HINT}",
                path.display()
            )
        })?;
        return Ok(path);
    }

    let mut tried = Vec::new();
    for candidate in discovery_candidates() {
        match probe_binary(&candidate) {
            Ok(_) => return Ok(candidate),
            Err(e) => tried.push(format!("{}: {e:#}", candidate.display())),
        }
    }
    bail!(
        "no usable nats-server (>= v{}.{}) found; tried:\n  {BINARY_ENV}: not set\n  {}\n{INSTALL_HINT}",
        MIN_VERSION.0,
        MIN_VERSION.1,
        tried.join("\n  ")
    )
}

/// The places searched when nothing explicit is configured, in order, without duplicates.
pub(super) fn discovery_candidates() -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    // The current directory's ancestors too: `cargo test` runs in the crate directory,
    // and with a shared CARGO_TARGET_DIR the executable is not under the repository.
    if let Ok(dir) = std::env::current_dir() {
        candidates.extend(dir.ancestors().map(|dir| dir.join(TOOLS_BINARY)));
    }
    if let Ok(exe) = std::env::current_exe() {
        candidates.extend(exe.ancestors().skip(1).map(|dir| dir.join(TOOLS_BINARY)));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(
            std::env::split_paths(&path)
                .map(|dir| dir.join("nats-server"))
                .filter(|p| p.is_file()),
        );
    }
    let mut unique = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        if !unique.contains(&candidate) {
            unique.push(candidate);
        }
    }
    unique
}

/// Runs `binary --version` and checks the version; returns `(major, minor, patch)`.
pub(super) fn probe_binary(binary: &Path) -> Result<(u32, u32, u32)> {
    if !binary.is_file() {
        bail!("not found");
    }
    let mut child = std::process::Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot run it")?;
    let deadline = Instant::now() + VERSION_PROBE_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().context("cannot wait for `--version`")? {
            break status;
        }
        if Instant::now() >= deadline {
            // Best effort: the child is being abandoned as unusable either way.
            let _ = child.kill();
            let _ = child.wait();
            bail!("`--version` did not finish within {VERSION_PROBE_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut output = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        io::Read::read_to_string(&mut stdout, &mut output)
            .context("cannot read `--version` output")?;
    }
    if !status.success() {
        bail!("`--version` failed ({status})");
    }
    let version = parse_version(&output)
        .ok_or_else(|| anyhow!("unrecognised `--version` output {:?}", output.trim()))?;
    if (version.0, version.1) < MIN_VERSION {
        bail!(
            "version v{}.{}.{} is too old (need >= v{}.{})",
            version.0,
            version.1,
            version.2,
            MIN_VERSION.0,
            MIN_VERSION.1
        );
    }
    Ok(version)
}

/// Parses `nats-server: v2.15.1` (pre-release suffixes allowed) into `(2, 15, 1)`.
pub(super) fn parse_version(output: &str) -> Option<(u32, u32, u32)> {
    output.split_whitespace().find_map(|token| {
        let rest = token.strip_prefix('v')?;
        let mut parts = rest.splitn(3, '.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts
            .next()
            .map(|p| {
                let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().unwrap_or(0)
            })
            .unwrap_or(0);
        Some((major, minor, patch))
    })
}
