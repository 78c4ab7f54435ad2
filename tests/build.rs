//! Finds the end-to-end suites: every folder `tests/<suite>/` with a `mod.rs` becomes a
//! module of the one e2e test binary (`tests/e2e.rs` includes the generated list), so a
//! new domain's tests need no hand-edited `mod` line.

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    let dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("tests");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut suites: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .expect("tests/ is readable")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("mod.rs").is_file())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            let ident = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                && !name.as_bytes()[0].is_ascii_digit();
            ident.then(|| (name, p.join("mod.rs")))
        })
        .collect();
    suites.sort();
    let mut out = String::new();
    for (name, path) in &suites {
        // Each suite folder's files are watched too (rustc watches them anyway; this keeps
        // a new folder from being missed).
        println!("cargo:rerun-if-changed={}", path.display());
        writeln!(
            out,
            "#[path = {:?}]\nmod {name};",
            path.display().to_string()
        )
        .unwrap();
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    std::fs::write(out_dir.join("suites.rs"), out).expect("writing suites.rs");
}
