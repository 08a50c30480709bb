//! The image archives `make images` wrote: what is inside (the binary, its libraries, CA
//! certificates, the 65532 user, no shell), their configuration (user, entrypoint, OCI
//! labels), the sidecar's size target, and reproducibility (the builder run twice on the
//! same inputs gives the same bytes). No platform needed: these read files.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use streamgate_tests::platform::node_images;
use streamgate_tests::tools::{Tools, repo_root};

const MIB: u64 = 1024 * 1024;

/// The files of a tar archive (name → bytes), directories and links as empty entries.
fn tar_entries(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>> {
    // A plain ustar/pax reader is all this needs: 512-byte headers, sizes in octal, pax
    // headers skipped (the builder writes no long names).
    let mut entries = BTreeMap::new();
    let mut at = 0;
    while at + 512 <= bytes.len() {
        let header = &bytes[at..at + 512];
        if header.iter().all(|b| *b == 0) {
            break;
        }
        let field = |from: usize, len: usize| {
            String::from_utf8_lossy(&header[from..from + len])
                .trim_end_matches('\0')
                .trim()
                .to_string()
        };
        let name = field(0, 100);
        let size = u64::from_str_radix(&field(124, 12), 8).context("tar size")? as usize;
        let kind = header[156];
        let data = bytes[at + 512..at + 512 + size].to_vec();
        if kind != b'x' && kind != b'g' {
            entries.insert(name.trim_start_matches("./").to_string(), data);
        }
        at += 512 + size.div_ceil(512) * 512;
    }
    Ok(entries)
}

fn gunzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .args(["-dc"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("gzip stdin")?;
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .context("gzip stdout")?
        .read_to_end(&mut out)?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("gzip writer"))??;
    if !child.wait()?.success() {
        bail!("gzip -d failed");
    }
    Ok(out)
}

struct Image {
    config: Value,
    manifest: Value,
    index: Value,
    layer: BTreeMap<String, Vec<u8>>,
    uncompressed: u64,
}

fn open(archive: &Path) -> Result<Image> {
    let outer = tar_entries(&std::fs::read(archive)?)?;
    let json = |name: &str| -> Result<Value> {
        Ok(serde_json::from_slice(
            outer.get(name).with_context(|| format!("{name} missing"))?,
        )?)
    };
    let blob = |digest: &str| -> Result<&Vec<u8>> {
        let path = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
        outer.get(&path).with_context(|| format!("{path} missing"))
    };
    let index = json("index.json")?;
    json("oci-layout")?;
    let docker: Value = json("manifest.json")?;
    assert!(
        docker[0]["RepoTags"][0].is_string(),
        "docker manifest.json: {docker}"
    );
    let manifest: Value = serde_json::from_slice(blob(
        index["manifests"][0]["digest"].as_str().unwrap_or(""),
    )?)?;
    let config: Value =
        serde_json::from_slice(blob(manifest["config"]["digest"].as_str().unwrap_or(""))?)?;
    let layer_tar = gunzip(blob(
        manifest["layers"][0]["digest"].as_str().unwrap_or(""),
    )?)?;
    Ok(Image {
        config,
        manifest,
        index,
        uncompressed: layer_tar.len() as u64,
        layer: tar_entries(&layer_tar)?,
    })
}

fn archives() -> Result<Vec<(String, PathBuf)>> {
    Ok(node_images()?
        .into_iter()
        .map(|p| {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.rsplit_once('-'))
                .map(|(name, _)| name.to_string())
                .unwrap_or_default();
            (name, p)
        })
        .collect())
}

#[test]
fn every_image_is_distroless_runs_as_65532_and_is_labelled() -> Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    for (name, archive) in archives()? {
        let image = open(&archive).with_context(|| archive.display().to_string())?;
        let cfg = &image.config["config"];
        assert_eq!(cfg["User"], "65532:65532", "{name}: user");
        let entrypoint = cfg["Entrypoint"][0].as_str().unwrap_or_default();
        let binary = entrypoint.trim_start_matches('/');
        assert!(image.layer.contains_key(binary), "{name}: no {entrypoint}");
        for shell in ["bin/sh", "bin/bash", "usr/bin/sh", "bin/busybox"] {
            assert!(!image.layer.contains_key(shell), "{name} carries {shell}");
        }
        let passwd = String::from_utf8_lossy(&image.layer["etc/passwd"]).to_string();
        assert!(
            passwd.contains("nonroot:x:65532:65532:"),
            "{name}: {passwd}"
        );
        assert!(
            String::from_utf8_lossy(&image.layer["etc/ssl/certs/ca-certificates.crt"])
                .contains("BEGIN CERTIFICATE"),
            "{name}: no CA certificates"
        );
        let labels = &cfg["Labels"];
        for key in [
            "source", "version", "revision", "licenses", "created", "title",
        ] {
            let label = format!("org.opencontainers.image.{key}");
            assert!(
                labels[&label].as_str().is_some_and(|v| !v.is_empty()),
                "{name}: label {label} missing"
            );
        }
        assert_eq!(labels["org.opencontainers.image.version"], version);
        assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
        assert_eq!(
            image.manifest["annotations"], *labels,
            "{name}: annotations"
        );
        assert_eq!(
            image.index["manifests"][0]["annotations"]["io.containerd.image.name"],
            format!("docker.io/streamgate/{name}:{version}")
        );
        if name != "pause" {
            // A dynamic glibc binary: its loader and libc come with it.
            assert!(
                image.layer.contains_key("lib/x86_64-linux-gnu/libc.so.6"),
                "{name}: libc"
            );
            assert!(
                image.layer.contains_key("lib64/ld-linux-x86-64.so.2"),
                "{name}: loader"
            );
        }
        if name == "sidecar" {
            assert!(
                image.uncompressed <= 15 * MIB,
                "sidecar image is {:.1} MiB uncompressed; the target is 15 MiB",
                image.uncompressed as f64 / MIB as f64
            );
        }
    }
    Ok(())
}

#[test]
fn the_builder_gives_the_same_bytes_for_the_same_inputs() -> Result<()> {
    let tools = Tools::locate()?;
    let v = &tools.versions;
    let base = tools.root.join(format!(
        "image-base-libc6-{}-libgcc-{}-ca-{}",
        v["LIBC6_DEB_VERSION"], v["LIBGCC_DEB_VERSION"], v["CA_CERTIFICATES_DEB_VERSION"]
    ));
    let dir = std::env::temp_dir().join(format!("sg-image-repro-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // A dynamic binary, so the library lookup is part of what must be stable.
    let binary = dir.join("hello");
    std::fs::write(dir.join("hello.c"), "int main(void) { return 0; }\n")?;
    let cc = Command::new("gcc")
        .arg("-o")
        .arg(&binary)
        .arg(dir.join("hello.c"))
        .status()?;
    assert!(cc.success(), "gcc failed");
    let build = |out: &str, epoch: &str| -> Result<Vec<u8>> {
        let output = dir.join(out);
        let status = Command::new("python3")
            .arg(repo_root().join("scripts/oci_image.py"))
            .args(["--binary", &binary.to_string_lossy()])
            .args(["--repository", "streamgate/hello", "--version", "1.0.0"])
            .args(["--revision", "abc", "--source", "https://example.com/src"])
            .args(["--licenses", "Apache-2.0", "--epoch", epoch])
            .args(["--base-root", &base.join("root").to_string_lossy()])
            .args([
                "--ca-bundle",
                &base.join("ca-certificates.crt").to_string_lossy(),
            ])
            .args(["--output", &output.to_string_lossy()])
            .stdout(std::process::Stdio::null())
            .status()?;
        assert!(status.success(), "oci_image.py failed");
        Ok(std::fs::read(output)?)
    };
    let first = build("a.tar", "1700000000")?;
    let second = build("b.tar", "1700000000")?;
    assert!(first == second, "two builds of the same inputs differ");
    // The check can fail: another timestamp is another image.
    let later = build("c.tar", "1700000001")?;
    assert!(first != later, "the timestamp does not reach the archive");
    let image = open(&dir.join("a.tar"))?;
    assert!(image.layer.contains_key("lib/x86_64-linux-gnu/libc.so.6"));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
