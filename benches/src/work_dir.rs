//! A run's own directory, `<temp>/streamgate-<bench>-<pid>`: the logs of the processes it
//! starts and the files it writes. Made fresh, and removed when dropped, so runs leave
//! nothing behind; declare it before the processes that write into it, so they are
//! stopped first.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

pub struct WorkDir(PathBuf);

impl WorkDir {
    pub fn new(bench: &str) -> Result<WorkDir> {
        let dir = std::env::temp_dir().join(format!("streamgate-{bench}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(WorkDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, path: impl AsRef<Path>) -> PathBuf {
        self.0.join(path)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
