//! Taking the real node apart so that nothing is left: its processes (containerd, its
//! shims, the containers, the kubelet, kube-proxy), the mounts they made (the pods'
//! network namespaces among them: containerd keeps them under the node's state
//! directory, never in the machine's /run/netns), the pod cgroups, the bridge and the
//! iptables rules.
//!
//! The same code removes what an earlier node left when its owner died without stopping
//! it (a test binary killed, a supervisor lost), and [`leftovers`] lists anything that
//! remains, for the test that `env-down` leaves nothing behind.

use super::OwnerRecord;
use super::network;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The kubelet (cgroupfs driver) puts every pod under this cgroup in each hierarchy.
const PODS_CGROUP: &str = "kubepods";

/// Removes everything of the node `owner` describes. Best effort: every step runs, and the
/// errors come back together.
pub fn teardown(owner: &OwnerRecord, iptables: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    kill_all(owner);
    errors.extend(unmount_under(&[&owner.dir, &owner.run]));
    errors.extend(remove_pod_cgroups());
    errors.extend(network::remove(iptables, Some(&owner.ip_forward_before)));
    for dir in [&owner.run, &owner.dir] {
        if dir.exists()
            && let Err(e) = std::fs::remove_dir_all(dir)
        {
            errors.push(format!("removing {}: {e}", dir.display()));
        }
    }
    errors
}

/// What of a node is still there: processes, mounts, network namespaces, cgroups, the
/// bridge, rules.
pub fn leftovers(owner: &OwnerRecord, iptables: &Path) -> Vec<String> {
    let mut found: Vec<String> = node_processes(owner)
        .into_iter()
        .map(|(pid, cmd)| format!("process {pid}: {cmd}"))
        .collect();
    found.extend(
        mounts_under(&[&owner.dir, &owner.run])
            .into_iter()
            .map(|m| format!("mount {}", m.display())),
    );
    found.extend(
        pod_cgroup_dirs()
            .into_iter()
            .map(|d| format!("cgroup {}", d.display())),
    );
    found.extend(network::leftovers(iptables));
    found
}

/// Processes of the node: any whose command line names its directories (containerd, the
/// shims, the kubelet, kube-proxy), and any in the pod cgroups (the containers).
fn node_processes(owner: &OwnerRecord) -> Vec<(i32, String)> {
    let markers = [
        owner.dir.display().to_string(),
        owner.run.display().to_string(),
    ];
    let me = std::process::id() as i32;
    let in_pods = pod_pids();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            let ours = markers.iter().any(|m| cmd.contains(m.as_str())) || in_pods.contains(&pid);
            ours.then(|| (pid, cmd.trim().to_string()))
        })
        .collect()
}

fn pod_pids() -> Vec<i32> {
    let mut pids = Vec::new();
    for dir in pod_cgroup_dirs() {
        if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
    }
    pids
}

/// SIGKILLs every process of the node until none is left (bounded).
fn kill_all(owner: &OwnerRecord) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let procs = node_processes(owner);
        if procs.is_empty() || Instant::now() > deadline {
            return;
        }
        for (pid, _) in procs {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn mounts_under(dirs: &[&Path]) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|m| dirs.iter().any(|d| m.starts_with(d)))
        .collect();
    // Deepest first, so a mount on top of another goes before it.
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found.dedup();
    found
}

/// mountinfo escapes spaces and a few other bytes as `\NNN` (octal).
fn unescape_mount_path(raw: &str) -> PathBuf {
    let mut out = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            if let Ok(byte) = u8::from_str_radix(&code, 8) {
                out.push(byte as char);
                continue;
            }
            out.push('\\');
            out.push_str(&code);
        } else {
            out.push(c);
        }
    }
    PathBuf::from(out)
}

fn unmount_under(dirs: &[&Path]) -> Vec<String> {
    let mut errors = Vec::new();
    // A detached unmount may reveal a mount below it at the same path: repeat (bounded).
    for _ in 0..5 {
        let mounts = mounts_under(dirs);
        if mounts.is_empty() {
            return errors;
        }
        errors.clear();
        for mount in mounts {
            if let Err(e) = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH) {
                errors.push(format!("unmounting {}: {e}", mount.display()));
            }
        }
    }
    errors
}

fn pod_cgroup_dirs() -> Vec<PathBuf> {
    let Ok(hierarchies) = std::fs::read_dir(CGROUP_ROOT) else {
        return Vec::new();
    };
    let mut dirs = Vec::new();
    for h in hierarchies.flatten() {
        let top = h.path().join(PODS_CGROUP);
        if top.is_dir() {
            collect_dirs(&top, &mut dirs);
        }
    }
    dirs
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

fn remove_pod_cgroups() -> Vec<String> {
    let mut dirs = pod_cgroup_dirs();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    dirs.into_iter()
        .filter_map(|d| {
            std::fs::remove_dir(&d)
                .err()
                .map(|e| format!("removing cgroup {}: {e}", d.display()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/a\040b/c"), PathBuf::from("/a b/c"));
        assert_eq!(unescape_mount_path("/plain"), PathBuf::from("/plain"));
    }
}
