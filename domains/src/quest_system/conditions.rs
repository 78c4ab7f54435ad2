//! What an existing entry allows an Accept. (Fact conditions are read by
//! `aicore_runtime::facts`, shared with environmental-narrative and story-teller.)

use super::*;

/// Whether an entry allows a new Accept: `Ok(true)` to (re)start, `Ok(false)` when it is
/// already active (answered unchanged), an error for a completed non-repeatable quest.
pub(super) fn may_accept(entry: Option<&Entry>, repeatable: bool) -> Result<bool, Status> {
    let Some(e) = entry else { return Ok(true) };
    let state = e.quest.as_ref().map_or(0, |q| q.state);
    if e.completing || state == QuestState::Active as i32 {
        return Ok(false);
    }
    if state == QuestState::Completed as i32 && !repeatable {
        return Err(illegal("accept again", state_name(state)));
    }
    Ok(true)
}
