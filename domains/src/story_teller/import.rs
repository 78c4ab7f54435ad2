//! Arcs imported from files at start-up (`arc_files` in `[domains.story_teller]`): a
//! studio keeps its arcs next to its game and the appliance defines them when it starts.
//! A file holds one `Arc` in proto3 JSON, exactly what DefineArc takes as `arc`. Reading
//! and checking happen before the domain serves: a file that cannot be read, is not an
//! arc, or whose graph [`graph::check`] refuses stops the start with an error naming the
//! file and the field (the JSON path, or the offending node as DefineArc names it).
//! Writing is [`StoryTeller::import`]: an arc equal to its latest stored version is left
//! alone, so restarting with the same files creates no new versions.

use std::path::{Path, PathBuf};

use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage};

use super::*;

/// The field of `files[i]` as the configuration names it.
fn file_field(i: usize) -> String {
    format!("domains.story_teller.arc_files[{i}]")
}

/// Reads one arc from a proto3 JSON file; InvalidArgument naming the JSON path of what is
/// wrong (`nodes[1].choices[0].targetNodeId`), the message naming the file.
pub fn read_arc(path: &Path) -> Result<Arc, Status> {
    let shown = path.display();
    let text = std::fs::read(path)
        .map_err(|e| Status::invalid("(file)", format!("cannot read arc file {shown}: {e}")))?;
    let descriptor = aicore_proto::descriptor_pool()
        .get_message_by_name("aicore.story_teller.v1.Arc")
        .ok_or_else(|| Status::internal("no descriptor for aicore.story_teller.v1.Arc"))?;
    let mut de = serde_json::Deserializer::from_slice(&text);
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(&mut de, &mut track);
    let message =
        DynamicMessage::deserialize_with_options(descriptor, tracked, &options).map_err(|e| {
            let at = track.path().to_string();
            let field = if at.is_empty() || at == "?" {
                "(file)".to_string()
            } else {
                at
            };
            Status::invalid(&field, format!("in arc file {shown}: {e}"))
        })?;
    de.end().map_err(|e| {
        Status::invalid(
            "(file)",
            format!("in arc file {shown}: trailing characters: {e}"),
        )
    })?;
    Arc::decode(message.encode_to_vec().as_slice())
        .map_err(|e| Status::internal(format!("arc file {shown} does not transcode: {e}")))
}

/// Reads and checks every file: all or nothing, the first refusal naming its file and
/// field (`arc.nodes[2].choices[0].target_node_id`, as DefineArc would).
pub fn load(files: &[PathBuf], max_nodes: usize) -> Result<Vec<Arc>, Status> {
    let mut arcs: Vec<Arc> = Vec::with_capacity(files.len());
    for (i, path) in files.iter().enumerate() {
        let arc = read_arc(path)?;
        graph::check(&arc, max_nodes).map_err(|mut e| {
            e.message = format!(
                "in arc file {} ({}): {}",
                path.display(),
                file_field(i),
                e.message
            );
            e
        })?;
        if arcs.iter().any(|a| a.arc_id == arc.arc_id) {
            return Err(Status::invalid(
                &file_field(i),
                format!("arc `{}` is defined by two files", arc.arc_id),
            ));
        }
        arcs.push(arc);
    }
    Ok(arcs)
}

/// An arc without what the server sets (version, time): what a file can say.
fn as_written(a: &Arc) -> Arc {
    Arc {
        version: 0,
        updated_at: None,
        ..a.clone()
    }
}

impl StoryTeller {
    /// Defines checked arcs ([`load`]), each unless its latest stored version is the same;
    /// answers how many were defined.
    pub async fn import(&self, arcs: Vec<Arc>) -> Result<u32, Status> {
        let mut defined = 0;
        for arc in arcs {
            let live = self.ctx.store.get_msg::<Arc>(ARCS, arc.arc_id.as_bytes())?;
            if live.is_some_and(|l| as_written(&l) == as_written(&arc)) {
                continue;
            }
            self.define_arc(Request::new(DefineArcRequest {
                arc: Some(arc),
                expected_version: None,
            }))
            .await?;
            defined += 1;
        }
        Ok(defined)
    }
}
