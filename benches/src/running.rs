//! A child process of a bench, stopped when dropped, so no run (finished, failed, or
//! ended by an error) leaves processes behind. It is started through the harness's
//! [`Proc`], so it also dies with the bench when the bench itself is killed
//! (parent-death signal), and its output goes to a log file of its own.

use anyhow::Result;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Duration;
use streamgate_tests::process::Proc;

pub struct Running {
    proc: Proc,
    grace: Duration,
}

impl Running {
    /// Starts `command` as `name`, its stdout and stderr appended to `log`. When dropped it
    /// gets SIGTERM and `grace` to exit before SIGKILL; with `Duration::ZERO`, SIGKILL at
    /// once (for processes with nothing to clean up).
    pub fn spawn(name: &str, command: Command, log: &Path, grace: Duration) -> Result<Running> {
        Ok(Running {
            proc: Proc::spawn(name, command, log)?,
            grace,
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// `Some(status)` once the process has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.proc.exit_status()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.log_tail(lines)
    }

    /// Stops it now rather than at the end of its scope (see [`Running::spawn`]).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.grace.is_zero() {
            self.proc.kill();
        } else {
            self.proc.stop(self.grace);
        }
    }
}
