//! The proto comments that become the document's descriptions: every descriptor's leading
//! comment, looked up by its file and source path.

use std::collections::HashMap;

use aicore_proto::descriptor_pool;
use prost_reflect::FileDescriptor;

/// Leading comments of every descriptor, by (file, source path).
pub(super) struct Comments(HashMap<(String, Vec<i32>), String>);

impl Comments {
    pub(super) fn load() -> Self {
        let mut map = HashMap::new();
        for file in descriptor_pool().files() {
            let Some(info) = &file.file_descriptor_proto().source_code_info else {
                continue;
            };
            for loc in &info.location {
                if let Some(c) = &loc.leading_comments {
                    let text = c
                        .lines()
                        .map(str::trim)
                        .collect::<Vec<_>>()
                        .join("\n")
                        .trim()
                        .to_string();
                    if !text.is_empty() {
                        map.insert((file.name().to_string(), loc.path.clone()), text);
                    }
                }
            }
        }
        Comments(map)
    }

    pub(super) fn get(&self, file: &FileDescriptor, path: &[i32]) -> Option<&str> {
        self.0
            .get(&(file.name().to_string(), path.to_vec()))
            .map(String::as_str)
    }
}
