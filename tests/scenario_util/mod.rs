//! Shared by the tests that run scenario files: cheap password hashing and a way to write a
//! scenario file.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Cheap password hashing, so the tests spend their time on behaviour.
pub const CHEAP_AUTH: &str = "[server.auth]\nargon2_memory_kib = 64\nargon2_iterations = 1\n";

/// Writes `text` as `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf, std::io::Error> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}
