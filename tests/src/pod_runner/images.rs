//! Which local program stands in for a container image.
//!
//! An image is matched by its repository with the registry host, tag and digest taken
//! off (`registry.example.com/streamgate/sidecar:0.1.0@sha256:…` → `streamgate/sidecar`).
//! Built in:
//!
//! | repository | runs |
//! |---|---|
//! | `streamgate/sidecar` | `<bin dir>/streamgate-sidecar` (the operator's default `--sidecar-image`) |
//! | `streamgate/demo-app` | `<bin dir>/streamgate-demo-app` |
//! | `busybox`, `streamgate/host` | the container's `command` from the host's `PATH` (`sh -c 'exit 3'`) |
//!
//! [`ImageMap::add`] adds more (`--image REPO=BINARY` on the command line). Anything else
//! is not runnable: the container stays Waiting with reason `ErrImageNeverPull`.

use std::path::{Path, PathBuf};

/// What a container's process is, as far as the runner needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Program {
    /// The StreamGate sidecar: the runner moves its listeners onto the pod IP.
    Sidecar(PathBuf),
    /// The demo app: the runner tells it to listen on the pod IP.
    DemoApp(PathBuf),
    /// Some other workspace binary: `[binary] + command[1..] + args`.
    Binary(PathBuf),
    /// The container's own `command` + `args`, found on the host's `PATH`.
    Host,
}

/// Image repository → program.
#[derive(Clone, Debug)]
pub struct ImageMap {
    bin_dir: PathBuf,
    extra: Vec<(String, PathBuf)>,
}

pub const SIDECAR_REPO: &str = "streamgate/sidecar";
pub const DEMO_APP_REPO: &str = "streamgate/demo-app";
/// The image the sample platform (`examples/platform`) and the tests use for apps.
pub const DEMO_APP_IMAGE: &str = "streamgate/demo-app:latest";

impl ImageMap {
    /// The built-in images, with workspace binaries taken from `bin_dir`
    /// (`target/debug` usually).
    pub fn new(bin_dir: &Path) -> ImageMap {
        ImageMap {
            bin_dir: bin_dir.to_path_buf(),
            extra: Vec::new(),
        }
    }

    /// Maps `repository` to `binary` (a path, or a name in the bin directory); wins over
    /// the built-in images.
    pub fn add(&mut self, repository: &str, binary: &str) {
        let path = if binary.contains('/') {
            PathBuf::from(binary)
        } else {
            self.bin_dir.join(binary)
        };
        self.extra.push((repository.to_string(), path));
    }

    /// Parses `REPO=BINARY`.
    pub fn add_spec(&mut self, spec: &str) -> Result<(), String> {
        let (repo, bin) = spec
            .split_once('=')
            .ok_or_else(|| format!("--image {spec}: expected REPOSITORY=BINARY"))?;
        self.add(repo.trim(), bin.trim());
        Ok(())
    }

    /// The program for `image`, or why there is none (the Waiting message).
    pub fn resolve(&self, image: &str) -> Result<Program, String> {
        let repo = repository(image);
        let program = if let Some((_, path)) = self.extra.iter().rev().find(|(r, _)| *r == repo) {
            Program::Binary(path.clone())
        } else {
            match repo.as_str() {
                SIDECAR_REPO => Program::Sidecar(self.bin_dir.join("streamgate-sidecar")),
                DEMO_APP_REPO => Program::DemoApp(self.bin_dir.join("streamgate-demo-app")),
                "busybox" | "library/busybox" | "streamgate/host" => Program::Host,
                _ => {
                    return Err(format!(
                        "streamgate-pod-runner has no local program for image {image:?} \
                         (known: {SIDECAR_REPO}, {DEMO_APP_REPO}, busybox, streamgate/host{})",
                        self.extra
                            .iter()
                            .map(|(r, _)| format!(", {r}"))
                            .collect::<String>()
                    ));
                }
            }
        };
        match &program {
            Program::Sidecar(p) | Program::DemoApp(p) | Program::Binary(p) if !p.exists() => Err(
                format!("image {image:?} runs {}, which is not built", p.display()),
            ),
            _ => Ok(program),
        }
    }
}

/// `registry.example.com:5000/streamgate/sidecar:0.1.0@sha256:…` → `streamgate/sidecar`.
pub fn repository(image: &str) -> String {
    let no_digest = image.split('@').next().unwrap_or(image);
    // A tag is a ':' after the last '/'.
    let no_tag = match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
        _ => no_digest,
    };
    let mut parts: Vec<&str> = no_tag.split('/').collect();
    // A first component with '.' or ':' (or `localhost`) is a registry host.
    if parts.len() > 1
        && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost")
    {
        parts.remove(0);
    }
    let repo = parts.join("/");
    repo.strip_prefix("docker.io/").unwrap_or(&repo).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_drops_registry_tag_and_digest() {
        assert_eq!(repository("streamgate/sidecar:0.1.0"), "streamgate/sidecar");
        assert_eq!(
            repository("registry.example.com:5000/streamgate/demo-app:1@sha256:ab"),
            "streamgate/demo-app"
        );
        assert_eq!(repository("busybox"), "busybox");
        assert_eq!(repository("localhost/busybox:1.36"), "busybox");
    }

    #[test]
    fn unknown_images_and_missing_binaries_are_refused() {
        let dir = std::env::temp_dir();
        let map = ImageMap::new(&dir.join("no-such-bin-dir"));
        assert!(map.resolve("nginx:1.27").unwrap_err().contains("nginx"));
        assert!(
            map.resolve("streamgate/sidecar:1")
                .unwrap_err()
                .contains("not built")
        );
        assert_eq!(map.resolve("busybox:1.36"), Ok(Program::Host));
        let mut map = ImageMap::new(&dir);
        map.add_spec("example/tool=/bin/true").unwrap();
        assert_eq!(
            map.resolve("example/tool:2"),
            Ok(Program::Binary(PathBuf::from("/bin/true")))
        );
    }
}
