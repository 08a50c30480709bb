//! The pod network's host side: the harness's own bridge with the node's address on it,
//! and the rules that keep everything on it on this machine.
//!
//! The CNI bridge plugin switches `net.ipv4.ip_forward` on (a gateway must route), so the
//! harness adds two rules to the `mangle` table's FORWARD chain, which the filter table's
//! chains (kube-proxy's among them) cannot pre-empt: nothing arriving from the bridge is
//! forwarded to another interface, and nothing from another interface is forwarded onto
//! it. There is no masquerading either. Pods still reach the node itself (the API server,
//! Consul and NATS listen on its bridge address) and each other.

use super::{BRIDGE, NODE_IP, POD_SUBNET_PREFIX};
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::Command;

/// Comment on the harness's rules, so they are found (and removed) by it alone.
pub const GUARD_COMMENT: &str = "streamgate-pod-network-stays-local";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// The two guard rules, as `iptables -t mangle` arguments after `-A`/`-C`/`-D`.
pub fn guard_rules() -> [Vec<String>; 2] {
    let rule = |dir_in: &[&str]| -> Vec<String> {
        let mut r: Vec<String> = vec!["FORWARD".into()];
        r.extend(dir_in.iter().map(|s| s.to_string()));
        r.extend(
            ["-m", "comment", "--comment", GUARD_COMMENT, "-j", "DROP"]
                .iter()
                .map(|s| s.to_string()),
        );
        r
    };
    [
        rule(&["-i", BRIDGE, "!", "-o", BRIDGE]),
        rule(&["!", "-i", BRIDGE, "-o", BRIDGE]),
    ]
}

/// Runs a command, failing with its stderr.
pub fn run(program: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("starting {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "{} {} failed: {}",
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    run(Path::new("ip"), args)
}

pub fn bridge_exists() -> bool {
    ip(&["link", "show", "dev", BRIDGE]).is_ok()
}

/// Creates the bridge with the node's address and installs the guard rules before anything
/// can be attached to it. Returns the previous value of `ip_forward` (restored on teardown).
pub fn create(iptables: &Path) -> Result<String> {
    let before = std::fs::read_to_string(IP_FORWARD)
        .context("reading net.ipv4.ip_forward")?
        .trim()
        .to_string();
    for rule in guard_rules() {
        let mut args = vec!["-w", "-t", "mangle", "-A"];
        args.extend(rule.iter().map(String::as_str));
        run(iptables, &args).context("adding the pod network's forwarding guard")?;
    }
    ip(&["link", "add", BRIDGE, "type", "bridge"]).context("creating the pod bridge")?;
    ip(&[
        "addr",
        "add",
        &format!("{NODE_IP}/{POD_SUBNET_PREFIX}"),
        "dev",
        BRIDGE,
    ])?;
    ip(&["link", "set", BRIDGE, "up"])?;
    Ok(before)
}

/// Whether both guard rules are in place (read from the kernel's rule set, never by
/// sending a packet).
pub fn guard_in_place(iptables: &Path) -> Result<bool> {
    for rule in guard_rules() {
        let mut args = vec!["-w", "-t", "mangle", "-C"];
        args.extend(rule.iter().map(String::as_str));
        if run(iptables, &args).is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Removes the bridge, the guard rules and every chain kube-proxy made, and restores
/// `ip_forward`. Each step is attempted; the errors are returned together.
pub fn remove(iptables: &Path, ip_forward_before: Option<&str>) -> Vec<String> {
    let mut errors = Vec::new();
    if bridge_exists()
        && let Err(e) = ip(&["link", "del", BRIDGE])
    {
        errors.push(format!("{e:#}"));
    }
    for rule in guard_rules() {
        let mut args = vec!["-w", "-t", "mangle", "-D"];
        args.extend(rule.iter().map(String::as_str));
        // Delete until there is none (an interrupted start may have added them twice).
        while run(iptables, &args).is_ok() {}
    }
    errors.extend(remove_kube_proxy_chains(iptables));
    if let Some(value) = ip_forward_before
        && let Err(e) = std::fs::write(IP_FORWARD, value)
    {
        errors.push(format!("restoring ip_forward: {e}"));
    }
    errors
}

/// kube-proxy's rules: every `KUBE-*` chain, and the jumps to them from the built-in
/// chains, in every table.
fn remove_kube_proxy_chains(iptables: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    for table in ["nat", "filter", "mangle"] {
        let Ok(rules) = run(iptables, &["-w", "-t", table, "-S"]) else {
            continue;
        };
        for line in rules.lines() {
            if let Some(rule) = line.strip_prefix("-A ")
                && !rule.starts_with("KUBE-")
                && rule.contains("-j KUBE-")
            {
                let mut args = vec!["-w", "-t", table, "-D"];
                let words = shell_words(rule);
                args.extend(words.iter().map(String::as_str));
                if let Err(e) = run(iptables, &args) {
                    errors.push(format!("{e:#}"));
                }
            }
        }
        let chains: Vec<&str> = rules
            .lines()
            .filter_map(|l| l.strip_prefix("-N "))
            .filter(|c| c.starts_with("KUBE-"))
            .collect();
        for chain in &chains {
            let _ = run(iptables, &["-w", "-t", table, "-F", chain]);
        }
        for chain in &chains {
            if let Err(e) = run(iptables, &["-w", "-t", table, "-X", chain]) {
                errors.push(format!("{e:#}"));
            }
        }
    }
    errors
}

/// Leftovers of the pod network, for the test that `env-down` leaves nothing behind.
pub fn leftovers(iptables: &Path) -> Vec<String> {
    let mut found = Vec::new();
    if bridge_exists() {
        found.push(format!("bridge {BRIDGE}"));
    }
    for table in ["nat", "filter", "mangle"] {
        if let Ok(rules) = run(iptables, &["-w", "-t", table, "-S"]) {
            found.extend(
                rules
                    .lines()
                    .filter(|l| l.contains("KUBE-") || l.contains(GUARD_COMMENT))
                    .map(|l| format!("iptables -t {table}: {l}")),
            );
        }
    }
    found
}

/// Splits an `iptables -S` rule into arguments, keeping quoted comments whole.
fn shell_words(rule: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in rule.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            _ => current.push(c),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_rules_drop_both_directions_between_the_bridge_and_elsewhere() {
        let [out, inward] = guard_rules();
        assert_eq!(
            out.join(" "),
            format!(
                "FORWARD -i {BRIDGE} ! -o {BRIDGE} -m comment --comment {GUARD_COMMENT} -j DROP"
            )
        );
        assert!(
            inward
                .join(" ")
                .starts_with(&format!("FORWARD ! -i {BRIDGE} -o {BRIDGE}"))
        );
    }

    #[test]
    fn shell_words_keeps_quoted_comments_whole() {
        assert_eq!(
            shell_words(
                r#"OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#
            ),
            vec![
                "OUTPUT",
                "-m",
                "comment",
                "--comment",
                "kubernetes service portals",
                "-j",
                "KUBE-SERVICES"
            ]
        );
    }
}
