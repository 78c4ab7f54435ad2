//! The checks of what Define and the run RPCs receive, each refusal naming the field: a
//! workflow (ids, sizes, timeouts, retries) and every call in it against the contract in
//! the descriptor pool (the RPC exists, is unary and can be made exactly once; the literal
//! request fits its message; bindings target its fields and read earlier steps), and run
//! ids. The executor reuses [`method_of`] and [`duration`] on the stored workflow.

use std::time::Duration;

use aicore_proto::aicore::orchestration::v1::{Call, Workflow};
use aicore_proto::{MethodInfo, Status};
use aicore_runtime::validate;
use prost::Message;

use super::config::{
    DEFAULT_RUN_TIMEOUT, DEFAULT_STEP_TIMEOUT, MAX_BINDINGS, MAX_CALL_INPUT_BYTES,
    MAX_DESCRIPTION_CHARS, MAX_RETRIES, MAX_RUN_ID, MAX_RUN_TIMEOUT, MAX_STEP_ID, MAX_STEP_TIMEOUT,
    MAX_STEPS, MAX_WORKFLOW_BYTES, MAX_WORKFLOW_ID,
};
use super::json;

/// A protobuf duration as a std one; InvalidArgument naming `field` unless it is positive,
/// well-formed and at most `max`.
pub(super) fn duration(
    d: &Option<prost_types::Duration>,
    default: Duration,
    max: Duration,
    field: &str,
) -> Result<Duration, Status> {
    let Some(d) = d else { return Ok(default) };
    let ok =
        d.seconds >= 0 && (0..1_000_000_000).contains(&d.nanos) && (d.seconds, d.nanos) != (0, 0);
    let value = ok.then(|| Duration::new(d.seconds as u64, d.nanos as u32));
    match value {
        Some(v) if v <= max => Ok(v),
        _ => Err(Status::invalid(
            field,
            format!("must be positive and at most {} s", max.as_secs()),
        )),
    }
}

/// The RPC a call names; InvalidArgument naming `field` when it is not one a step may call.
pub(super) fn method_of(call: &Call, field: &str) -> Result<&'static MethodInfo, Status> {
    let domain = call.domain.replace('-', "_");
    if domain == "orchestration" {
        return Err(Status::invalid(
            &format!("{field}.domain"),
            "a workflow may not call orchestration itself",
        ));
    }
    let service = aicore_proto::find_service(&domain).ok_or_else(|| {
        Status::invalid(
            &format!("{field}.domain"),
            format!(
                "`{}` is not a domain",
                call.domain.chars().take(64).collect::<String>()
            ),
        )
    })?;
    let (_, method) = service.method(&call.rpc).ok_or_else(|| {
        Status::invalid(
            &format!("{field}.rpc"),
            format!(
                "`{}` is not an RPC of {}",
                call.rpc.chars().take(64).collect::<String>(),
                service.domain
            ),
        )
    })?;
    if method.server_streaming {
        return Err(Status::invalid(
            &format!("{field}.rpc"),
            "is a streaming RPC; a step calls unary RPCs",
        ));
    }
    if !method.policy.read_only && method.idempotency_key == 0 {
        return Err(Status::invalid(
            &format!("{field}.rpc"),
            "writes without an idempotency_key cannot be made exactly once after a crash; \
             a step calls read-only RPCs or RPCs whose request has an idempotency_key",
        ));
    }
    Ok(method)
}

/// Checks one call of step `index` (`own` for a compensation, which may read its own
/// step's output): its RPC, its literal request and its bindings.
fn check_call(call: &Call, field: &str, earlier: &[&str], own: Option<&str>) -> Result<(), Status> {
    let method = method_of(call, field)?;
    let literal = call.input.clone().unwrap_or_default();
    validate::max_bytes(
        literal.encoded_len(),
        MAX_CALL_INPUT_BYTES,
        &format!("{field}.input"),
        "per-call input",
    )?;
    if let Some(k) = literal
        .fields
        .keys()
        .find(|k| json::is_key_field(method, k))
    {
        return Err(Status::invalid(
            &format!("{field}.input.{k}"),
            "is set by the run (from the run and step ids); a workflow may not set it",
        ));
    }
    json::request(
        method,
        json::from_struct(&literal),
        &format!("{field}.input"),
    )?;
    if call.bindings.len() > MAX_BINDINGS {
        return Err(Status::invalid(
            &format!("{field}.bindings"),
            format!("at most {MAX_BINDINGS} bindings per call"),
        ));
    }
    for (i, b) in call.bindings.iter().enumerate() {
        let f = format!("{field}.bindings[{i}]");
        let to = json::parse_pointer(&b.target, &format!("{f}.target"))?;
        let first = &to[0];
        if json::is_key_field(method, first) {
            return Err(Status::invalid(
                &format!("{f}.target"),
                "the idempotency key is set by the run; a binding may not set it",
            ));
        }
        if !json::has_field(method, first) {
            return Err(Status::invalid(
                &format!("{f}.target"),
                format!("`{first}` is not a field of {}", method.input),
            ));
        }
        let from = json::parse_pointer(&b.source, &format!("{f}.source"))?;
        let ok = match from.as_slice() {
            [input, ..] if input == "input" => true,
            [steps, id, output, ..] if steps == "steps" && output == "output" => {
                earlier.contains(&id.as_str()) || own == Some(id.as_str())
            }
            _ => false,
        };
        if !ok {
            return Err(Status::invalid(
                &format!("{f}.source"),
                "must start with /input or /steps/<an earlier step's id>/output",
            ));
        }
    }
    Ok(())
}

/// Checks a workflow as Define receives it.
pub(super) fn check_workflow(w: &Workflow) -> Result<(), Status> {
    validate::slug(&w.workflow_id, "workflow.workflow_id", MAX_WORKFLOW_ID)?;
    if w.description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(Status::invalid(
            "workflow.description",
            format!("at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    validate::max_bytes(
        w.encoded_len(),
        MAX_WORKFLOW_BYTES,
        "workflow",
        "per-workflow",
    )?;
    if w.steps.is_empty() || w.steps.len() > MAX_STEPS {
        return Err(Status::invalid(
            "workflow.steps",
            format!("must hold 1 to {MAX_STEPS} steps"),
        ));
    }
    duration(
        &w.run_timeout,
        DEFAULT_RUN_TIMEOUT,
        MAX_RUN_TIMEOUT,
        "workflow.run_timeout",
    )?;
    let mut ids: Vec<&str> = Vec::with_capacity(w.steps.len());
    for (i, s) in w.steps.iter().enumerate() {
        let f = format!("workflow.steps[{i}]");
        let id_ok = !s.step_id.is_empty()
            && s.step_id.len() <= MAX_STEP_ID
            && s.step_id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !id_ok {
            return Err(Status::invalid(
                &format!("{f}.step_id"),
                format!("must be 1 to {MAX_STEP_ID} characters of [a-z0-9_]"),
            ));
        }
        if ids.contains(&s.step_id.as_str()) {
            return Err(Status::invalid(
                &format!("{f}.step_id"),
                format!("`{}` names an earlier step too", s.step_id),
            ));
        }
        let call = s
            .call
            .as_ref()
            .ok_or_else(|| Status::invalid(&format!("{f}.call"), "is required"))?;
        check_call(call, &format!("{f}.call"), &ids, None)?;
        if let Some(c) = &s.compensation {
            check_call(c, &format!("{f}.compensation"), &ids, Some(&s.step_id))?;
        }
        duration(
            &s.timeout,
            DEFAULT_STEP_TIMEOUT,
            MAX_STEP_TIMEOUT,
            &format!("{f}.timeout"),
        )?;
        if s.max_retries > MAX_RETRIES {
            return Err(Status::invalid(
                &format!("{f}.max_retries"),
                format!("at most {MAX_RETRIES}"),
            ));
        }
        ids.push(&s.step_id);
    }
    Ok(())
}

/// Checks a run id as Status and Cancel receive it.
pub(super) fn check_run_id(run_id: &str) -> Result<(), Status> {
    if run_id.is_empty()
        || run_id.len() > MAX_RUN_ID
        || !run_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(Status::invalid(
            "run_id",
            format!("must be 1 to {MAX_RUN_ID} characters of [A-Za-z0-9_]"),
        ));
    }
    Ok(())
}
