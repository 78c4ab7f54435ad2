//! The checks of model-management's input, each refusal naming the field: a model id, a
//! capability, and a model's spec as Register and Update receive it (normalised:
//! capabilities sorted and deduplicated, the provider model name defaulted, a missing
//! cost zero). Nothing here reads or writes the store.

use aicore_proto::Status;
use aicore_proto::aicore::model_management::v1::{Capability, ModelSpec, ModelTier};
use aicore_runtime::validate;

/// Longest model id.
const MAX_ID: usize = 64;

pub(super) fn check_id(id: &str) -> Result<(), Status> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid(
            "model_id",
            format!("must be 1 to {MAX_ID} characters of [a-z0-9_.:-]"),
        ))
    }
}

pub(super) fn capability(n: i32, field: &str) -> Result<Capability, Status> {
    match Capability::try_from(n) {
        Ok(Capability::Unspecified) | Err(_) => Err(Status::invalid(
            field,
            "must be CAPABILITY_CHAT, CAPABILITY_COMPLETION or CAPABILITY_EMBEDDING",
        )),
        Ok(c) => Ok(c),
    }
}

/// Checks a spec, normalising it (capabilities sorted and deduplicated, an empty
/// provider model name becoming the model id, a missing cost zero).
pub(super) fn check_spec(spec: Option<ModelSpec>, model_id: &str) -> Result<ModelSpec, Status> {
    let mut s = spec.ok_or_else(|| Status::invalid("spec", "is required"))?;
    if s.display_name.chars().count() > 128 || s.display_name.chars().any(char::is_control) {
        return Err(Status::invalid(
            "spec.display_name",
            "at most 128 characters without control characters",
        ));
    }
    validate::slug(&s.provider_id, "spec.provider_id", 64)?;
    let url = s.endpoint.starts_with("http://") || s.endpoint.starts_with("https://");
    if !(s.endpoint.is_empty() || url) {
        return Err(Status::invalid(
            "spec.endpoint",
            "must be empty or an http:// or https:// URL",
        ));
    }
    if s.provider_model.is_empty() {
        s.provider_model = model_id.to_string();
    }
    if s.provider_model.chars().count() > 256 || s.provider_model.chars().any(char::is_control) {
        return Err(Status::invalid(
            "spec.provider_model",
            "at most 256 characters without control characters",
        ));
    }
    if s.capabilities.is_empty() {
        return Err(Status::invalid("spec.capabilities", "at least one"));
    }
    for (i, c) in s.capabilities.iter().enumerate() {
        capability(*c, &format!("spec.capabilities[{i}]"))?;
    }
    s.capabilities.sort_unstable();
    s.capabilities.dedup();
    if s.context_length > 10_000_000 {
        return Err(Status::invalid("spec.context_length", "at most 10000000"));
    }
    let cost = s.cost.get_or_insert_with(Default::default);
    if cost.input_micros_per_million_tokens < 0 || cost.output_micros_per_million_tokens < 0 {
        return Err(Status::invalid("spec.cost", "costs must not be negative"));
    }
    let priced =
        cost.input_micros_per_million_tokens > 0 || cost.output_micros_per_million_tokens > 0;
    let code_ok = cost.currency.len() == 3 && cost.currency.bytes().all(|b| b.is_ascii_uppercase());
    if (priced || !cost.currency.is_empty()) && !code_ok {
        return Err(Status::invalid(
            "spec.cost.currency",
            "an ISO 4217 code such as USD when a cost is set",
        ));
    }
    match ModelTier::try_from(s.tier) {
        Ok(ModelTier::Unspecified) | Err(_) => {
            return Err(Status::invalid(
                "spec.tier",
                "must be MODEL_TIER_SMALL, MODEL_TIER_MEDIUM or MODEL_TIER_LARGE",
            ));
        }
        Ok(_) => {}
    }
    if s.embedding_dimensions > 65_536 {
        return Err(Status::invalid(
            "spec.embedding_dimensions",
            "at most 65536",
        ));
    }
    Ok(s)
}
