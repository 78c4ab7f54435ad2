//! What tests run and where: the domains served by default, the workspace, the `aicore`
//! and nats-server binaries, and free loopback ports.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

/// The domains `aicore run` serves by default in this build (all registered ones).
pub fn domains() -> Vec<&'static str> {
    aicore_domains::registry::DOMAINS
        .iter()
        .map(|d| d.name)
        .collect()
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// The `aicore` binary under test (`AICORE_BIN`, else the workspace's debug build).
pub fn aicore_bin() -> PathBuf {
    if let Ok(p) = std::env::var("AICORE_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join("target"));
    let bin = target.join("debug").join("aicore");
    assert!(
        bin.exists(),
        "{} is missing: run `make test` (it builds the binary first) or `cargo build -p aicore`",
        bin.display()
    );
    bin
}

/// The pinned nats-server the project installs (`make tools`).
pub fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("AICORE_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let bin = workspace().join(".tools/nats/bin/nats-server");
    assert!(
        bin.exists(),
        "{} is missing: run `make tools` (scripts/install-nats.sh)",
        bin.display()
    );
    bin
}

/// A free TCP port on loopback (bound then released).
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free TCP ports on loopback: all bound at once, then released (ports
/// picked one after another can come back equal once the previous one is released).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("its address").port())
}
