//! The defaults table: which model is the default for each capability (key: the
//! capability's number in decimal), read in a transaction or from the store. A model's
//! `default_for` is always read from here, never stored with the model.

use aicore_proto::Status;
use aicore_proto::aicore::model_management::v1::Capability;
use aicore_runtime::store::{Store, Tx};

use super::DEFAULTS;

pub(super) fn default_key(c: Capability) -> Vec<u8> {
    (c as i32).to_string().into_bytes()
}

const CAPABILITIES: [Capability; 3] = [
    Capability::Chat,
    Capability::Completion,
    Capability::Embedding,
];

/// The capabilities `model_id` is the default for, read in a transaction.
pub(super) fn defaults_of_tx(tx: &Tx<'_>, model_id: &str) -> Result<Vec<i32>, Status> {
    let mut out = Vec::new();
    for c in CAPABILITIES {
        if tx.get(DEFAULTS, &default_key(c))?.as_deref() == Some(model_id.as_bytes()) {
            out.push(c as i32);
        }
    }
    Ok(out)
}

pub(super) fn defaults_of(store: &Store, model_id: &str) -> Result<Vec<i32>, Status> {
    let mut out = Vec::new();
    for c in CAPABILITIES {
        if store.get(DEFAULTS, &default_key(c))?.as_deref() == Some(model_id.as_bytes()) {
            out.push(c as i32);
        }
    }
    Ok(out)
}
