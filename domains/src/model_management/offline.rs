//! The built-in offline model (`offline`, provider `offline`): its spec, and its
//! registration on first start (never again once an operator removed it).

use aicore_proto::Status;
use aicore_proto::aicore::model_management::v1::{
    Capability, Model, ModelSpec, ModelStatus, ModelTier, TokenCost,
};

use super::{META, MODELS, ModelManagement, SEEDED};

/// The built-in offline model's id (and its provider's).
pub const OFFLINE: &str = "offline";

/// The built-in offline model's spec.
pub fn offline_spec() -> ModelSpec {
    ModelSpec {
        display_name: "Offline (built-in, deterministic templates)".into(),
        provider_id: OFFLINE.into(),
        endpoint: String::new(),
        provider_model: OFFLINE.into(),
        capabilities: vec![
            Capability::Chat as i32,
            Capability::Completion as i32,
            Capability::Embedding as i32,
        ],
        context_length: 0,
        cost: Some(TokenCost::default()),
        tier: ModelTier::Small as i32,
        disabled: false,
        embedding_dimensions: 0,
    }
}

impl ModelManagement {
    /// Registers the built-in offline model once (never again after a removal).
    pub async fn seed(&self) -> Result<(), Status> {
        if !self.config.builtin_offline_model {
            return Ok(());
        }
        let now = self.ctx.now_ts();
        self.ctx
            .store
            .write(move |tx| {
                if tx.get(META, SEEDED)?.is_some() {
                    return Ok(());
                }
                tx.put(META, SEEDED, b"1".to_vec());
                if tx.get(MODELS, OFFLINE.as_bytes())?.is_none() {
                    let m = Model {
                        model_id: OFFLINE.into(),
                        spec: Some(offline_spec()),
                        status: ModelStatus::Ready as i32,
                        version: 1,
                        updated_at: Some(now),
                        ..Default::default()
                    };
                    tx.put_msg(MODELS, OFFLINE.as_bytes(), &m);
                }
                Ok(())
            })
            .await
    }
}
