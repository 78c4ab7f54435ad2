//! Checks of an arc's graph on definition, free of storage: ids, the start node, choices
//! that lead somewhere (no dangling choice), every node reachable from the start, and an
//! ending reachable from every node (no cycle without exit). A refusal names the field
//! of the offending node or choice, so a designer's tool can point at it.

use std::collections::{HashMap, HashSet, VecDeque};

use aicore_proto::Status;
use aicore_proto::aicore::story_teller::v1::{Arc, Choice, Node, QuestStatus, choice_condition};

/// Placeholders a node template may use.
pub const PLACEHOLDERS: [&str; 2] = ["player_name", "facts"];

fn slug(v: &str, field: &str) -> Result<(), Status> {
    aicore_runtime::validate::slug(v, field, 64)
}

/// Checks an arc (`max_nodes` bounds its size); InvalidArgument naming the field.
pub fn check(arc: &Arc, max_nodes: usize) -> Result<(), Status> {
    check_header(arc, max_nodes)?;
    let mut index = HashMap::new();
    for (i, n) in arc.nodes.iter().enumerate() {
        let f = format!("arc.nodes[{i}]");
        slug(&n.node_id, &format!("{f}.node_id"))?;
        if index.insert(n.node_id.as_str(), i).is_some() {
            return Err(Status::invalid(
                &format!("{f}.node_id"),
                format!("node `{}` appears twice", n.node_id),
            ));
        }
        check_node(n, &f)?;
    }
    check_targets(arc, &index)?;
    check_reachable(arc, &index)?;
    check_exits(arc, &index)
}

/// The arc's id, its title and the number of its nodes.
fn check_header(arc: &Arc, max_nodes: usize) -> Result<(), Status> {
    slug(&arc.arc_id, "arc.arc_id")?;
    if arc.title.chars().count() > 200 {
        return Err(Status::invalid(
            "arc.title",
            "must be at most 200 characters",
        ));
    }
    if arc.nodes.is_empty() || arc.nodes.len() > max_nodes {
        return Err(Status::invalid(
            "arc.nodes",
            format!("must hold 1 to {max_nodes} nodes"),
        ));
    }
    Ok(())
}

/// One node's template, prompt, knowledge tags and choices (`f` names the node); its id
/// is checked by the caller, which knows the other nodes.
fn check_node(n: &Node, f: &str) -> Result<(), Status> {
    if n.template.is_empty() || n.template.chars().count() > 8000 {
        return Err(Status::invalid(
            &format!("{f}.template"),
            "must be 1 to 8000 characters",
        ));
    }
    let segments = aicore_runtime::template::parse(&n.template)
        .map_err(|e| Status::invalid(&format!("{f}.template"), e))?;
    for (name, _) in aicore_runtime::template::placeholders(&segments) {
        if !PLACEHOLDERS.contains(&name.as_str()) {
            return Err(Status::invalid(
                &format!("{f}.template"),
                format!("`{{{name}}}` is not a narration placeholder (use {PLACEHOLDERS:?})"),
            ));
        }
    }
    if n.prompt.chars().count() > 4000 {
        return Err(Status::invalid(
            &format!("{f}.prompt"),
            "must be at most 4000 characters",
        ));
    }
    for (t, tag) in n.knowledge_tags.iter().enumerate() {
        if tag.is_empty() || tag.len() > 64 || tag.chars().any(char::is_control) {
            return Err(Status::invalid(
                &format!("{f}.knowledge_tags[{t}]"),
                "must be 1 to 64 bytes without control characters",
            ));
        }
    }
    let mut choices = HashSet::new();
    for (j, c) in n.choices.iter().enumerate() {
        let cf = format!("{f}.choices[{j}]");
        slug(&c.choice_id, &format!("{cf}.choice_id"))?;
        if !choices.insert(c.choice_id.as_str()) {
            return Err(Status::invalid(
                &format!("{cf}.choice_id"),
                "appears twice in the node",
            ));
        }
        check_choice(c, &cf)?;
    }
    Ok(())
}

/// One choice's label and conditions (`cf` names the choice); its id is checked by the
/// caller, which knows the node's other choices, and its target once every node is known.
fn check_choice(c: &Choice, cf: &str) -> Result<(), Status> {
    if c.label.chars().count() > 200 {
        return Err(Status::invalid(
            &format!("{cf}.label"),
            "must be at most 200 characters",
        ));
    }
    for (k, cond) in c.conditions.iter().enumerate() {
        let kf = format!("{cf}.conditions[{k}]");
        match &cond.condition {
            Some(choice_condition::Condition::Fact(fc)) => aicore_runtime::facts::check_condition(
                &format!("{kf}.fact"),
                &fc.key,
                fc.op,
                fc.value.as_ref(),
            )?,
            Some(choice_condition::Condition::Quest(q)) => {
                slug(&q.quest_id, &format!("{kf}.quest.quest_id"))?;
                if matches!(
                    QuestStatus::try_from(q.status),
                    Err(_) | Ok(QuestStatus::Unspecified)
                ) {
                    return Err(Status::invalid(
                        &format!("{kf}.quest.status"),
                        "must be a known status",
                    ));
                }
            }
            None => {
                return Err(Status::invalid(&kf, "must be a fact or a quest condition"));
            }
        }
    }
    Ok(())
}

/// The start node and every choice's target are nodes of the arc (`index`: node id to
/// its position).
fn check_targets(arc: &Arc, index: &HashMap<&str, usize>) -> Result<(), Status> {
    if !index.contains_key(arc.start_node_id.as_str()) {
        return Err(Status::invalid(
            "arc.start_node_id",
            format!("no node `{}` in the arc", arc.start_node_id),
        ));
    }
    for (i, n) in arc.nodes.iter().enumerate() {
        for (j, c) in n.choices.iter().enumerate() {
            if !index.contains_key(c.target_node_id.as_str()) {
                return Err(Status::invalid(
                    &format!("arc.nodes[{i}].choices[{j}].target_node_id"),
                    format!(
                        "choice `{}` of node `{}` leads to `{}`, which is not in the arc",
                        c.choice_id, n.node_id, c.target_node_id
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Every node is reachable from the start (the targets are checked).
fn check_reachable(arc: &Arc, index: &HashMap<&str, usize>) -> Result<(), Status> {
    // Reachable from the start.
    let mut seen = vec![false; arc.nodes.len()];
    let mut queue = VecDeque::from([index[arc.start_node_id.as_str()]]);
    while let Some(i) = queue.pop_front() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        for c in &arc.nodes[i].choices {
            queue.push_back(index[c.target_node_id.as_str()]);
        }
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        return Err(Status::invalid(
            &format!("arc.nodes[{i}]"),
            format!(
                "node `{}` cannot be reached from the start",
                arc.nodes[i].node_id
            ),
        ));
    }
    Ok(())
}

/// An ending is reachable from every node: no cycle without exit (the targets are checked).
fn check_exits(arc: &Arc, index: &HashMap<&str, usize>) -> Result<(), Status> {
    // An ending reachable from every node: walk back from the endings.
    let mut into: Vec<Vec<usize>> = vec![Vec::new(); arc.nodes.len()];
    for (i, n) in arc.nodes.iter().enumerate() {
        for c in &n.choices {
            into[index[c.target_node_id.as_str()]].push(i);
        }
    }
    let mut exits = vec![false; arc.nodes.len()];
    let mut queue: VecDeque<usize> = (0..arc.nodes.len())
        .filter(|&i| arc.nodes[i].choices.is_empty())
        .collect();
    while let Some(i) = queue.pop_front() {
        if std::mem::replace(&mut exits[i], true) {
            continue;
        }
        queue.extend(into[i].iter().copied());
    }
    if let Some(i) = exits.iter().position(|e| !e) {
        return Err(Status::invalid(
            &format!("arc.nodes[{i}]"),
            format!(
                "node `{}` can never reach an ending: it is in a cycle without exit",
                arc.nodes[i].node_id
            ),
        ));
    }
    Ok(())
}
