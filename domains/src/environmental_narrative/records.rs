//! Discoveries as stored: one player's discovery of one fragment ([`Found`]), the keys of
//! the tables (two parts joined by `\0`), and the recording of a Discover's discoveries
//! in its transaction (the first of each recorded and published once).

use std::time::UNIX_EPOCH;

use aicore_proto::Status;
use aicore_proto::aicore::environmental_narrative::v1::{Discovery, Fragment, FragmentDiscovered};
use aicore_runtime::outbox::Emit;
use aicore_runtime::store::Tx;

use super::{FOUND, RECENT};

/// One player's discovery of one fragment (value of `environmental_narrative.found`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Found {
    /// When it was first discovered.
    #[prost(message, optional, tag = "1")]
    pub discovered_at: Option<prost_types::Timestamp>,
    /// Where (the fragment's location then).
    #[prost(string, tag = "2")]
    pub location_id: String,
}

pub(super) fn pair(a: &str, b: &str) -> Vec<u8> {
    [a.as_bytes(), b"\0", b.as_bytes()].concat()
}

pub(super) fn prefix(a: &str) -> Vec<u8> {
    [a.as_bytes(), b"\0"].concat()
}

pub(super) fn millis(ts: &prost_types::Timestamp) -> u64 {
    std::time::SystemTime::try_from(*ts)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// Records `eligible` as discovered by `player` at `location` now: a fragment found
/// before is answered with its first discovery; the others are stored (`found` and
/// `recent`) and published on [`super::DISCOVERED_SUBJECT`].
pub(super) fn record_discoveries(
    tx: &mut Tx<'_>,
    eligible: Vec<Fragment>,
    player: &str,
    location: &str,
    now: prost_types::Timestamp,
) -> Result<Vec<Discovery>, Status> {
    let mut out = Vec::with_capacity(eligible.len());
    for f in eligible {
        let key = pair(player, &f.fragment_id);
        if let Some(found) = tx.get_msg::<Found>(FOUND, &key)? {
            out.push(Discovery {
                fragment: Some(f),
                discovered_at: found.discovered_at,
                first_time: false,
            });
            continue;
        }
        tx.put_msg(
            FOUND,
            &key,
            &Found {
                discovered_at: Some(now),
                location_id: location.to_string(),
            },
        );
        let recent = [
            prefix(player).as_slice(),
            &(u64::MAX - millis(&now)).to_be_bytes(),
            b"\0",
            f.fragment_id.as_bytes(),
        ]
        .concat();
        tx.put(RECENT, &recent, location.as_bytes().to_vec());
        tx.emit(&FragmentDiscovered {
            player_id: player.to_string(),
            fragment_id: f.fragment_id.clone(),
            location_id: location.to_string(),
            discovered_at: Some(now),
        })?;
        out.push(Discovery {
            fragment: Some(f),
            discovered_at: Some(now),
            first_time: true,
        });
    }
    Ok(out)
}
