//! `streamgate-env`: the local platform for `make env-up` / `make env-down` / `make dev`.
//!
//! `up` starts a detached supervisor process that boots the platform (the same code the
//! integration tests use), writes `.streamgate/env` once everything is ready, and stops
//! the components when it receives SIGTERM. `down` signals it and waits until every
//! component is gone. A second `up` finds the running supervisor and starts nothing.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use streamgate_tests::Platform;
use streamgate_tests::process::tail;
use streamgate_tests::tools::repo_root;

#[derive(Parser)]
#[command(
    name = "streamgate-env",
    about = "Start and stop the StreamGate local platform"
)]
struct Cli {
    /// Where the platform keeps its data, logs and env file.
    #[arg(long, env = "STREAMGATE_DIR", global = true)]
    dir: Option<PathBuf>,
    /// Also run a real node (containerd, kubelet, kube-proxy) for the images `make images`
    /// built; needs root.
    #[arg(long, env = "STREAMGATE_REAL_NODE", global = true)]
    real_node: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the platform in the background and wait until it is ready.
    Up,
    /// Stop the platform and wait until no component is left.
    Down,
    /// Say whether the platform is running.
    Status,
    /// (internal) Run the platform in the foreground until SIGTERM or SIGINT.
    Supervise,
}

const UP_TIMEOUT: Duration = Duration::from_secs(300);
const DOWN_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    let cli = Cli::parse();
    let dir = cli
        .dir
        .clone()
        .unwrap_or_else(|| repo_root().join(".streamgate"));
    let result = match cli.command {
        Cmd::Up => up(&dir, cli.real_node),
        Cmd::Down => down(&dir),
        Cmd::Status => status(&dir),
        Cmd::Supervise => supervise(&dir, cli.real_node),
    };
    if let Err(e) = result {
        eprintln!("streamgate-env: {e:#}");
        std::process::exit(1);
    }
}

struct Files {
    pid: PathBuf,
    env: PathBuf,
    components: PathBuf,
    log: PathBuf,
}

fn files(dir: &Path) -> Files {
    Files {
        pid: dir.join("supervisor.pid"),
        env: dir.join("env"),
        components: dir.join("components.pids"),
        log: dir.join("supervisor.log"),
    }
}

fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn running_supervisor(dir: &Path) -> Option<u32> {
    read_pid(&files(dir).pid).filter(|pid| alive(*pid))
}

fn up(dir: &Path, real_node: bool) -> Result<()> {
    let f = files(dir);
    if let Some(pid) = running_supervisor(dir) {
        println!(
            "local platform already running (supervisor pid {pid}); environment: {}",
            f.env.display()
        );
        return Ok(());
    }
    for stale in [&f.pid, &f.env, &f.components] {
        let _ = std::fs::remove_file(stale);
    }
    std::fs::create_dir_all(dir)?;
    let log = std::fs::File::create(&f.log)?;
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .arg("--dir")
        .arg(dir)
        .args(real_node.then_some("--real-node"))
        .arg("supervise")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C in the shell that ran `make env-up` must not
        // reach the platform.
        .process_group(0)
        .spawn()
        .context("starting the platform supervisor")?;
    let pid = child.id();
    println!(
        "starting the local platform (supervisor pid {pid}, logs in {})",
        dir.join("logs").display()
    );
    let started = Instant::now();
    loop {
        if f.env.exists() {
            println!(
                "local platform ready in {:.1}s",
                started.elapsed().as_secs_f64()
            );
            println!("  . {}", f.env.display());
            print!("{}", std::fs::read_to_string(&f.env)?);
            return Ok(());
        }
        if !alive(pid) || is_zombie(pid) {
            bail!("the local platform failed to start:\n{}", tail(&f.log, 40));
        }
        if started.elapsed() > UP_TIMEOUT {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            bail!(
                "the local platform was not ready after {UP_TIMEOUT:?}:\n{}",
                tail(&f.log, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child we have not reaped shows as a zombie: it has exited.
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

fn down(dir: &Path) -> Result<()> {
    let f = files(dir);
    let components: Vec<u32> = std::fs::read_to_string(&f.components)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    match running_supervisor(dir) {
        None => println!("local platform is not running"),
        Some(pid) => {
            println!("stopping the local platform (supervisor pid {pid})");
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            let deadline = Instant::now() + DOWN_TIMEOUT;
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if alive(pid) {
                eprintln!("supervisor still running after {DOWN_TIMEOUT:?}; killing it");
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
    // The components die with the supervisor (parent-death signal); make sure of it.
    for pid in components.iter().copied().filter(|p| alive(*p)) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while components.iter().any(|p| alive(*p) && !is_zombie(*p)) {
        if Instant::now() > deadline {
            bail!("components still running: {components:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for stale in [&f.pid, &f.env, &f.components, &dir.join("helm-values.yaml")] {
        let _ = std::fs::remove_file(stale);
    }
    println!("local platform stopped");
    Ok(())
}

fn status(dir: &Path) -> Result<()> {
    let f = files(dir);
    match running_supervisor(dir) {
        Some(pid) if f.env.exists() => {
            println!("running (supervisor pid {pid}); . {}", f.env.display())
        }
        Some(pid) => println!("starting (supervisor pid {pid})"),
        None => println!("not running"),
    }
    Ok(())
}

fn supervise(dir: &Path, real_node: bool) -> Result<()> {
    let f = files(dir);
    std::fs::write(&f.pid, std::process::id().to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let boot_dir = dir.to_path_buf();
        let booting = tokio::task::spawn_blocking(move || match real_node {
            true => Platform::start_with_node(&boot_dir),
            false => Platform::start(&boot_dir),
        });
        let mut platform = tokio::select! {
            started = booting => started??,
            _ = term.recv() => bail!("stopped by SIGTERM during start-up"),
            _ = int.recv() => bail!("stopped by SIGINT during start-up"),
        };
        let pids: Vec<String> = platform.pids().iter().map(u32::to_string).collect();
        std::fs::write(&f.components, pids.join(" "))?;
        let env_tmp = f.env.with_extension("tmp");
        std::fs::write(&env_tmp, platform.info.env_file())?;
        if let Some(values) = platform.info.helm_values() {
            std::fs::write(dir.join("helm-values.yaml"), values)?;
        }
        std::fs::rename(&env_tmp, &f.env)?;
        println!("local platform ready");
        let mut health = tokio::time::interval(Duration::from_secs(2));
        let mut reported = std::collections::HashSet::new();
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = health.tick() => {
                    let exited: Vec<String> = platform
                        .exited()
                        .into_iter()
                        .filter(|name| reported.insert(name.clone()))
                        .collect();
                    if !exited.is_empty() {
                        eprintln!("components exited unexpectedly: {}", exited.join(", "));
                        eprintln!("{}", platform.log_tails(20));
                    }
                }
            }
        }
        println!("stopping the local platform");
        let leftovers = tokio::task::spawn_blocking(move || platform.stop()).await?;
        if !leftovers.is_empty() {
            bail!("the real node left: {}", leftovers.join("; "));
        }
        Ok(())
    });
    let _ = std::fs::remove_file(&f.env);
    let _ = std::fs::remove_file(&f.pid);
    result
}
