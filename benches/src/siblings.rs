//! The workspace binaries a bench starts (the sidecar, the demo app), found next to the
//! bench's own executable: `cargo build [--release] --workspace --bins` puts them all in
//! `target/<profile>/`, so a release bench runs release binaries.
//!
//! Not the harness's `streamgate_tests::bins::binary`, which runs `cargo build` first: a
//! bench would then wait on the shared target directory's lock behind other builds and
//! compete with them for the cores while it measures.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;

/// The path of workspace binary `name` beside this executable.
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this bench's executable")?;
    let dir = exe
        .parent()
        .with_context(|| format!("{} has no parent directory", exe.display()))?;
    let path = dir.join(name);
    if !path.exists() {
        let release = if cfg!(debug_assertions) {
            ""
        } else {
            " --release"
        };
        bail!(
            "{} not found: cargo build{release} --workspace --bins",
            path.display()
        );
    }
    Ok(path)
}
