//! The workspace's own binaries for tests that run them as processes (the operator, the
//! sidecar, the demo app). A test in this crate gets no CARGO_BIN_EXE_ for other
//! packages, so each binary is built once per test binary with `cargo build`.

use crate::tools::repo_root;
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);

/// Build profile of the binaries: `debug`, or `release` when `STREAMGATE_BIN_PROFILE`
/// says so (`make bench` measures release builds).
fn profile() -> String {
    std::env::var("STREAMGATE_BIN_PROFILE").unwrap_or_else(|_| "debug".into())
}

/// Path to `bin` of workspace package `package`, built (or found up to date) first.
pub fn binary(package: &str, bin: &str) -> Result<PathBuf> {
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(path) = built.get(bin) {
        return Ok(path.clone());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let profile = profile();
    let mut command = std::process::Command::new(&cargo);
    command
        .current_dir(repo_root())
        // Features resolved for the whole workspace, as `cargo test --workspace` and
        // `make bench` build them: resolving for one package alone would rebuild the
        // shared crates with other features (minutes in release, with fat LTO).
        .args(["build", "--quiet", "--workspace", "--bin", bin]);
    if profile == "release" {
        command.arg("--release");
    }
    let status = command
        .status()
        .with_context(|| format!("running {cargo} build --bin {bin} (package {package})"))?;
    if !status.success() {
        bail!("cargo build --workspace --bin {bin} failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let path = target.join(&profile).join(bin);
    if !path.exists() {
        bail!("{} was not built", path.display());
    }
    built.insert(bin.to_string(), path.clone());
    Ok(path)
}
