//! End-to-end test support: starts the real `aicore run` binary (with its real
//! nats-server child) on free ports in a temporary data directory, waits until every
//! domain answers `$SRV.PING`, and hands out SDK clients and CLI invocations. Dropping an
//! [`Appliance`] kills it (its nats-server child dies with it). Nothing here is a mock:
//! tests talk to the processes a user would run.
//!
//! The appliance runs NATS with mutual TLS by default, so every connection made here
//! presents the appliance's `admin` certificate from `<data-dir>/certs` (when the
//! appliance runs `--insecure-dev`, there is none and connections are plaintext).

pub mod openai;

mod appliance;
mod identity;
mod nats;
mod paths;
mod process;

pub use appliance::Appliance;
pub use identity::{Identity, install_crypto};
pub use nats::{BareNats, game_seconds, ping};
pub use paths::{aicore_bin, domains, free_port, free_ports, nats_server_bin, workspace};
pub use process::{alive, child_pids, with_umask};
