//! environmental-narrative's configuration (`[domains.environmental_narrative]`): the
//! bounds of a fragment and of a location, and the pages of ListDiscovered.

/// Configuration of environmental-narrative (`[domains.environmental_narrative]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnvironmentalNarrativeConfig {
    /// Most fragments bound to one location (a DefineFragment past it is
    /// ResourceExhausted), so one Discover's work stays bounded.
    pub max_fragments_per_location: usize,
    /// Longest fragment text, in characters.
    pub max_text_chars: usize,
    /// Longest title, in characters.
    pub max_title_chars: usize,
    /// Most conditions of each kind (facts, weathers, required fragments) on a fragment.
    pub max_conditions: usize,
    /// Page size of ListDiscovered when the request asks for none.
    pub default_page_size: u32,
    /// Largest page of ListDiscovered.
    pub max_page_size: u32,
}

impl Default for EnvironmentalNarrativeConfig {
    fn default() -> Self {
        EnvironmentalNarrativeConfig {
            max_fragments_per_location: 200,
            max_text_chars: 8000,
            max_title_chars: 200,
            max_conditions: 32,
            default_page_size: 50,
            max_page_size: 500,
        }
    }
}
