#!/usr/bin/env python3
"""Builds one distroless-style OCI image archive from a binary, without Docker and without
pulling a base image (`make images` runs it through scripts/images.sh).

The image holds the binary, the shared libraries it links (taken from the Debian packages
`make tools` unpacked, never from this machine's own /lib), the CA certificates, an
/etc/passwd and /etc/group naming UID/GID 65532 `nonroot`, and nothing else: no shell, no
package manager. Its default user is 65532.

Reproducible: the same inputs give the same digests. Every file in the layer has the same
timestamp (SOURCE_DATE_EPOCH), owner and order (sorted paths); gzip writes no name and no
time; JSON is written with sorted keys.

The archive is an OCI image layout (oci-layout, index.json, blobs/sha256/...) that also
carries Docker's manifest.json, so `ctr images import`, `docker load`, `kind load
image-archive`, `skopeo copy oci-archive:` / `docker-archive:` and `crane push` all read it.
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

NONROOT = 65532
LIB_DIR = "lib/x86_64-linux-gnu"
INTERPRETER = "lib64/ld-linux-x86-64.so.2"


def fail(message):
    print(f"oci_image: {message}", file=sys.stderr)
    sys.exit(1)


def needed_libraries(path):
    """The DT_NEEDED entries of an ELF file (readelf, from binutils)."""
    out = subprocess.run(["readelf", "-d", path], check=True, capture_output=True, text=True).stdout
    return [line.split("[", 1)[1].split("]", 1)[0] for line in out.splitlines() if "(NEEDED)" in line]


def is_dynamic(path):
    out = subprocess.run(["readelf", "-l", path], check=True, capture_output=True, text=True).stdout
    return "Requesting program interpreter" in out


def find_library(base_root, soname):
    for directory in (LIB_DIR, "usr/" + LIB_DIR):
        candidate = os.path.join(base_root, directory, soname)
        if os.path.exists(candidate):
            return os.path.realpath(candidate)
    fail(f"shared library {soname} is not in the unpacked Debian packages under {base_root}; "
         "add the package that ships it to install_image_base in scripts/tools.sh")


def library_closure(binary, base_root):
    """Every shared library `binary` needs, transitively: {soname: file in base_root}."""
    found, queue = {}, list(needed_libraries(binary))
    while queue:
        soname = queue.pop()
        if soname in found:
            continue
        found[soname] = find_library(base_root, soname)
        queue.extend(needed_libraries(found[soname]))
    return found


class Layer:
    """A tar layer built in memory with fixed metadata."""

    def __init__(self, mtime):
        self.mtime = mtime
        self.entries = {}

    def directory(self, path, mode=0o755, uid=0):
        self.entries[path] = ("dir", None, mode, uid)

    def file(self, path, data, mode=0o644):
        self._parents(path)
        self.entries[path] = ("file", data, mode, 0)

    def symlink(self, path, target):
        self._parents(path)
        self.entries[path] = ("link", target, 0o777, 0)

    def _parents(self, path):
        parent = os.path.dirname(path)
        while parent and parent not in self.entries:
            self.entries[parent] = ("dir", None, 0o755, 0)
            parent = os.path.dirname(parent)

    def tar_bytes(self):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(self.entries):
                kind, data, mode, uid = self.entries[path]
                info = tarfile.TarInfo(path)
                info.mtime, info.mode, info.uid, info.gid = self.mtime, mode, uid, uid
                info.uname = info.gname = ""
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif kind == "link":
                    info.type, info.linkname = tarfile.SYMTYPE, data
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()


def read(path):
    with open(path, "rb") as f:
        return f.read()


def root_filesystem(args):
    layer = Layer(args.epoch)
    for directory in ("etc", "usr", "usr/local", "usr/local/bin", LIB_DIR, "lib64"):
        layer.directory(directory)
    layer.directory("tmp", mode=0o1777)
    layer.directory("home/nonroot", mode=0o700, uid=NONROOT)
    layer.file("etc/passwd", f"root:x:0:0:root:/root:/sbin/nologin\n"
               f"nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n".encode())
    layer.file("etc/group", f"root:x:0:\nnonroot:x:{NONROOT}:\n".encode())
    # glibc's resolver reads this; without it, DNS names of Services would not resolve
    # the way every other image resolves them.
    layer.file("etc/nsswitch.conf", b"hosts: files dns\n")
    layer.file("etc/ssl/certs/ca-certificates.crt", read(args.ca_bundle))
    binary_path = f"usr/local/bin/{os.path.basename(args.binary)}"
    layer.file(binary_path, read(args.binary), mode=0o755)
    if is_dynamic(args.binary):
        libraries = library_closure(args.binary, args.base_root)
        if os.path.basename(INTERPRETER) not in libraries:
            fail("the binary is dynamic but links no ld-linux-x86-64.so.2")
        for soname, source in sorted(libraries.items()):
            layer.file(f"{LIB_DIR}/{soname}", read(source), mode=0o755)
        layer.symlink(INTERPRETER, f"../{LIB_DIR}/{os.path.basename(INTERPRETER)}")
    return layer, "/" + binary_path


def canonical_json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build(args):
    layer, entrypoint = root_filesystem(args)
    layer_tar = layer.tar_bytes()
    gz = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=gz, mtime=0, compresslevel=9) as g:
        g.write(layer_tar)
    layer_gz = gz.getvalue()
    created = datetime.datetime.fromtimestamp(args.epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    labels = {
        "org.opencontainers.image.title": args.repository,
        "org.opencontainers.image.description": args.description,
        "org.opencontainers.image.source": args.source,
        "org.opencontainers.image.version": args.version,
        "org.opencontainers.image.revision": args.revision,
        "org.opencontainers.image.licenses": args.licenses,
        "org.opencontainers.image.created": created,
    }
    config = canonical_json({
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "User": f"{NONROOT}:{NONROOT}",
            "Entrypoint": [entrypoint] + args.arg,
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin",
                    "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [digest(layer_tar)]},
        "history": [{"created": created, "created_by": "scripts/oci_image.py"}],
    })
    manifest = canonical_json({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digest(layer_gz), "size": len(layer_gz)}],
        "annotations": labels,
    })
    reference = f"{args.repository}:{args.version}"
    index = canonical_json({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(manifest), "size": len(manifest),
            "annotations": {
                # containerd names the imported image after this; OCI tools after the tag.
                "io.containerd.image.name": f"docker.io/{reference}",
                "org.opencontainers.image.ref.name": args.version,
            },
            "platform": {"architecture": "amd64", "os": "linux"},
        }],
    })
    blob = lambda d: f"blobs/sha256/{d.split(':', 1)[1]}"
    docker_manifest = canonical_json([{
        "Config": blob(digest(config)),
        "RepoTags": [reference],
        "Layers": [blob(digest(layer_gz))],
    }])
    files = {
        "oci-layout": canonical_json({"imageLayoutVersion": "1.0.0"}),
        "index.json": index,
        "manifest.json": docker_manifest,
        blob(digest(config)): config,
        blob(digest(manifest)): manifest,
        blob(digest(layer_gz)): layer_gz,
    }
    archive = Layer(args.epoch)
    archive.directory("blobs")
    archive.directory("blobs/sha256")
    for path, data in files.items():
        archive.file(path, data)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = args.output + ".tmp"
    with open(tmp, "wb") as f:
        f.write(archive.tar_bytes())
    os.replace(tmp, args.output)
    print(json.dumps({"reference": reference, "archive": args.output,
                      "manifest": digest(manifest), "uncompressed": len(layer_tar),
                      "compressed": len(layer_gz)}))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--binary", required=True, help="the program the image runs")
    p.add_argument("--arg", action="append", default=[], help="an argument fixed after it (repeatable)")
    p.add_argument("--repository", required=True, help="e.g. streamgate/sidecar")
    p.add_argument("--version", required=True, help="the tag, e.g. 0.1.0")
    p.add_argument("--description", default="")
    p.add_argument("--revision", required=True, help="the source's git commit")
    p.add_argument("--source", required=True, help="the source repository's address")
    p.add_argument("--licenses", required=True, help="SPDX expression")
    p.add_argument("--epoch", type=int, required=True, help="timestamp of every file (SOURCE_DATE_EPOCH)")
    p.add_argument("--base-root", required=True, help="unpacked libc6/libgcc-s1 packages")
    p.add_argument("--ca-bundle", required=True, help="PEM bundle for /etc/ssl/certs/ca-certificates.crt")
    p.add_argument("--output", required=True, help="the archive to write")
    build(p.parse_args())


if __name__ == "__main__":
    main()
