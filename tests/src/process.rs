//! One platform component as a child process: its own log file, a graceful stop, and a
//! parent-death signal so it can never outlive the process that started it (a test
//! binary that exits, a supervisor that is killed).

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// The parent-death signal fires when the *thread* that forked the child exits, not the
/// process. Test threads come and go, so every child is forked from this one thread,
/// which lives as long as the process.
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("platform-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("spawning the platform-spawner thread");
        Mutex::new(tx)
    })
}

/// A running component.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Mutex<Child>,
}

impl Proc {
    /// Starts `command` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Result<Proc> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        #[allow(unsafe_code)]
        // SAFETY: the closure runs in the forked child before exec and only calls
        // prctl(PR_SET_PDEATHSIG), which is async-signal-safe; it allocates nothing.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let (reply_tx, reply_rx) = mpsc::channel();
        spawner()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((command, reply_tx))
            .context("platform-spawner thread is gone")?;
        let child = reply_rx
            .recv()
            .context("platform-spawner thread is gone")?
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            name: name.to_string(),
            log: log.to_path_buf(),
            child: Mutex::new(child),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap_or_else(|e| e.into_inner()).id()
    }

    /// `Some(status)` once the process has exited.
    pub fn exit_status(&self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        child.try_wait().ok().flatten()
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`; reaps it either way.
    pub fn stop(&self, grace: Duration) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGKILL at once, and reap it.
    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The last `lines` lines of the component's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

/// The last `lines` lines of a file (reads at most the final 64 KiB).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut text = String::new();
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    text.push_str(&String::from_utf8_lossy(&bytes));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Components started together, each with its own log file, found by name, stopped in
/// the reverse order of their start.
#[derive(Debug, Default)]
pub struct Group {
    procs: Vec<Proc>,
}

impl Group {
    /// Starts `command` as `name`, logging to `<logs>/<name>.log`.
    pub fn launch(&mut self, logs: &Path, name: &str, command: Command) -> Result<()> {
        let log = logs.join(format!("{name}.log"));
        self.procs.push(Proc::spawn(name, command, &log)?);
        Ok(())
    }

    /// Waits until `check` holds for the component `name` (see [`wait_ready`]).
    pub fn ready(
        &self,
        name: &str,
        timeout: Duration,
        check: impl FnMut() -> Result<bool>,
    ) -> Result<()> {
        let proc = self
            .procs
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("{name} was not started"))?;
        wait_ready(proc, timeout, check)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Proc> {
        self.procs.iter()
    }

    /// Stops every component, last started first, each within `grace`.
    pub fn stop_all(&mut self, grace: Duration) {
        for proc in self.procs.iter().rev() {
            proc.stop(grace);
        }
        self.procs.clear();
    }
}

/// Waits until `check` holds for the component `proc`, failing early if it exits and
/// with its log tail when it is not ready within `timeout`.
pub fn wait_ready(
    proc: &Proc,
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let name = proc.name.clone();
    let mut exited = None;
    let result = crate::wait::wait_until(&name, timeout, || {
        if let Some(status) = proc.exit_status() {
            exited = Some(status);
            return Ok(true);
        }
        check()
    });
    let result = match exited {
        Some(status) => Err(anyhow::anyhow!("{name} exited ({status})")),
        None => result,
    };
    result.with_context(|| {
        format!(
            "{name} did not become ready; last lines of {}:\n{}",
            proc.log.display(),
            proc.log_tail(25)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_terminates_a_running_process_and_keeps_its_log() {
        let dir = std::env::temp_dir().join(format!("sg-proc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("sleeper.log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started; exec sleep 30"]);
        let proc = Proc::spawn("sleeper", cmd, &log).unwrap();
        crate::wait::wait_until("log written", Duration::from_secs(5), || {
            Ok(proc.log_tail(1) == "started")
        })
        .unwrap();
        assert!(proc.exit_status().is_none());
        proc.stop(Duration::from_secs(5));
        assert!(proc.exit_status().is_some());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn tail_returns_last_lines() {
        let path = std::env::temp_dir().join(format!("sg-tail-{}", std::process::id()));
        std::fs::write(&path, "a\nb\nc\nd\n").unwrap();
        assert_eq!(tail(&path, 2), "c\nd");
        std::fs::remove_file(path).unwrap();
    }
}
