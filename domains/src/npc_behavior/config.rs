//! npc-behavior's configuration (`[domains.npc_behavior]`): the bounds of a definition,
//! of memory and of one Tick, and the length of a dialogue line. The checks that apply
//! them are in `check`.

/// Configuration of npc-behavior (`[domains.npc_behavior]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NpcBehaviorConfig {
    /// Memories an NPC keeps of each player; past it the least important is forgotten.
    pub max_memories: usize,
    /// Most actions of one NPC.
    pub max_actions: usize,
    /// Most considerations of one action.
    pub max_considerations: usize,
    /// Most traits, needs and schedule entries (each) of one NPC.
    pub max_entries: usize,
    /// Most NPCs one Tick advances (more: ResourceExhausted; tick in batches).
    pub max_tick: usize,
    /// Most tokens of a dialogue line.
    pub line_max_tokens: u32,
}

impl Default for NpcBehaviorConfig {
    fn default() -> Self {
        NpcBehaviorConfig {
            max_memories: 20,
            max_actions: 64,
            max_considerations: 16,
            max_entries: 64,
            max_tick: 10_000,
            line_max_tokens: 120,
        }
    }
}
