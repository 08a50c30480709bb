#!/usr/bin/env bash
# Installs or builds the real components of the local platform, cached outside the
# repository so every clone (and CI on this machine) reuses them.
#
#   ${STREAMGATE_TOOLS:-$HOME/.cache/streamgate}/<component>-<version>/bin/...
#
# Idempotent: a component whose stamp file exists is skipped. Nothing is installed
# system-wide and no system service is started: Debian packages are fetched with
# `apt-get download` through a private sources list and unpacked with `dpkg -x`.
set -euo pipefail

source "$(dirname "$0")/versions.sh"

TOOLS="${STREAMGATE_TOOLS:-$HOME/.cache/streamgate}"
mkdir -p "$TOOLS"

say() { printf '==> [%s] %s\n' "$1" "$2"; }
die() {
  local component="$1" msg="$2" fix="$3"
  printf 'ERROR [%s] %s\n  fix: %s\n' "$component" "$msg" "$fix" >&2
  exit 1
}

need_cmd() {
  local component="$1" cmd="$2" fix="$3"
  command -v "$cmd" >/dev/null 2>&1 || die "$component" "'$cmd' not found on PATH" "$fix"
}

# --- Debian packages through a private apt state -------------------------------------

# apt_fetch COMPONENT SUITE DEST PACKAGE...: downloads the .debs of SUITE into DEST and
# unpacks them there. apt's own state (/var/lib/apt, /etc/apt) is left untouched.
apt_fetch() {
  local component="$1" suite="$2" dest="$3"
  shift 3
  need_cmd "$component" apt-get "run on Debian/Ubuntu with apt-get available"
  need_cmd "$component" dpkg "apt-get install dpkg"
  local state="$TOOLS/.apt-$suite"
  mkdir -p "$state/lists/partial" "$state/cache/archives/partial"
  echo "deb http://deb.debian.org/debian $suite main" >"$state/sources.list"
  local opts=(-o "Dir::Etc::SourceList=$state/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$state/lists" -o "Dir::Cache=$state/cache" -o "Debug::NoLocking=1"
    -o "APT::Sandbox::User=root")
  if [ ! -f "$state/updated" ] || [ -n "$(find "$state/updated" -mmin +1440 2>/dev/null)" ]; then
    say "$component" "apt-get update ($suite)"
    apt-get "${opts[@]}" -qq update >"$state/update.log" 2>&1 ||
      die "$component" "apt-get update for Debian $suite failed (see $state/update.log)" \
        "check that deb.debian.org is reachable, then re-run 'make tools'"
    touch "$state/updated"
  fi
  local tmp
  tmp="$(mktemp -d)"
  say "$component" "apt-get download $* ($suite)"
  (cd "$tmp" && apt-get "${opts[@]}" -qq download "$@" >"$tmp/download.log" 2>&1) ||
    die "$component" "apt-get download $* failed: $(tail -n 3 "$tmp/download.log")" \
      "check the package exists in Debian $suite (apt-cache policy $*), then re-run 'make tools'"
  mkdir -p "$dest"
  for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$dest/root"; done
  rm -rf "$tmp"
}

# link_bin COMPONENT DIR NAME: links the unpacked binary NAME (wherever the package put it)
# as DIR/bin/NAME.
link_bin() {
  local component="$1" dir="$2" name="$3" found
  found="$(find "$dir/root" -type f -path "*bin/$name" -perm -u+x | head -n 1)"
  [ -n "$found" ] || die "$component" "package has no executable '$name'" "rm -rf $dir && make tools"
  mkdir -p "$dir/bin"
  ln -sf "$found" "$dir/bin/$name"
}

install_etcd() {
  local dir="$TOOLS/etcd-$ETCD_DEB_VERSION"
  if [ -f "$dir/.done" ]; then say etcd "cached in $dir"; return; fi
  rm -rf "$dir"
  apt_fetch etcd trixie "$dir" "etcd-server=$ETCD_DEB_VERSION"
  link_bin etcd "$dir" etcd
  "$dir/bin/etcd" --version >/dev/null || die etcd "unpacked etcd does not run" "rm -rf $dir && make tools"
  touch "$dir/.done"
  say etcd "installed in $dir"
}

install_nats() {
  local dir="$TOOLS/nats-server-$NATS_DEB_VERSION"
  if [ -f "$dir/.done" ]; then say nats-server "cached in $dir"; return; fi
  rm -rf "$dir"
  apt_fetch nats-server trixie "$dir" "nats-server=$NATS_DEB_VERSION"
  link_bin nats-server "$dir" nats-server
  "$dir/bin/nats-server" --version >/dev/null || die nats-server "unpacked nats-server does not run" "rm -rf $dir && make tools"
  touch "$dir/.done"
  say nats-server "installed in $dir"
}

install_consul() {
  local dir="$TOOLS/consul-$CONSUL_DEB_VERSION"
  if [ -f "$dir/.done" ]; then say consul "cached in $dir"; return; fi
  rm -rf "$dir"
  apt_fetch consul bullseye "$dir" "consul=$CONSUL_DEB_VERSION"
  link_bin consul "$dir" consul
  "$dir/bin/consul" version >/dev/null || die consul "unpacked consul does not run" "rm -rf $dir && make tools"
  touch "$dir/.done"
  say consul "installed in $dir"
}

# nginx, the reference gRPC proxy of forward-bench (`grpc_pass` is ngx_http_grpc_module,
# built in by default; it needs --with-http_v2_module, which Debian's build has). Since
# bookworm the `nginx` package itself carries the binary; its libraries are the base
# system's. Should one be missing (ldd says "not found"), the packages providing them are
# unpacked beside it and bin/nginx becomes a wrapper setting LD_LIBRARY_PATH.
install_nginx() {
  local dir="$TOOLS/nginx-$NGINX_DEB_VERSION"
  if [ -f "$dir/.done" ]; then say nginx "cached in $dir"; return; fi
  rm -rf "$dir"
  apt_fetch nginx bookworm "$dir" "nginx=$NGINX_DEB_VERSION"
  link_bin nginx "$dir" nginx
  local real
  real="$(readlink -f "$dir/bin/nginx")"
  if ldd "$real" | grep -q 'not found'; then
    say nginx "missing libraries: $(ldd "$real" | awk '/not found/{print $1}' | xargs)"
    apt_fetch nginx bookworm "$dir" libpcre2-8-0 libssl3 zlib1g libcrypt1
    local libs
    libs="$(find "$dir/root" -name '*.so*' -printf '%h\n' | sort -u | paste -sd:)"
    rm -f "$dir/bin/nginx"
    printf '#!/bin/bash\nLD_LIBRARY_PATH="%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "%s" "$@"\n' "$libs" "$real" >"$dir/bin/nginx"
    chmod +x "$dir/bin/nginx"
  fi
  local built
  built="$("$dir/bin/nginx" -V 2>&1)" || die nginx "unpacked nginx does not run: $built" "rm -rf $dir && make tools"
  grep -q -- '--with-http_v2_module' <<<"$built" ||
    die nginx "nginx $NGINX_DEB_VERSION lacks --with-http_v2_module (grpc_pass needs HTTP/2)" \
      "pin a Debian nginx build with HTTP/2 in scripts/versions.sh"
  touch "$dir/.done"
  say nginx "installed in $dir"
}


# The forwarding benchmark's other peers (issue: measure like with like): HAProxy and
# nghttpx from Debian bookworm, unpacked like nginx. Their libraries that the base system
# lacks (liblua, libopentracing-c-wrapper for HAProxy; libev, c-ares, jemalloc for
# nghttpx) are unpacked beside them and bin/<name> becomes a wrapper setting
# LD_LIBRARY_PATH. `install_deb_program COMPONENT VERSION PACKAGE BINARY LIB...`.
install_deb_program() {
  local component="$1" version="$2" package="$3" binary="$4"
  shift 4
  local dir="$TOOLS/$component-$version"
  if [ -f "$dir/.done" ]; then say "$component" "cached in $dir"; return; fi
  rm -rf "$dir"
  apt_fetch "$component" bookworm "$dir" "$package=$version" "$@"
  link_bin "$component" "$dir" "$binary"
  local real libs
  real="$(readlink -f "$dir/bin/$binary")"
  libs="$(find "$dir/root" -name '*.so*' -printf '%h\n' | sort -u | paste -sd:)"
  if [ -n "$libs" ]; then
    rm -f "$dir/bin/$binary"
    printf '#!/bin/bash\nLD_LIBRARY_PATH="%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "%s" "$@"\n' "$libs" "$real" >"$dir/bin/$binary"
    chmod +x "$dir/bin/$binary"
  fi
  if LD_LIBRARY_PATH="$libs" ldd "$real" | grep -q 'not found'; then
    die "$component" "missing libraries: $(LD_LIBRARY_PATH="$libs" ldd "$real" | awk '/not found/{print $1}' | xargs)" \
      "add the Debian packages providing them to its line in tools.sh, then rm -rf $dir && make tools"
  fi
  touch "$dir/.done"
  say "$component" "installed in $dir"
}

# The real node's runtime: containerd (with its runc shim and ctr), runc, the CNI plugins
# (bridge, host-local, loopback, portmap) and iptables (legacy backend, the one kube-proxy
# and the harness's forwarding rule use). iptables is a glibc program with shared
# libraries and extension modules of its own, so bin/iptables* are wrappers that point
# LD_LIBRARY_PATH and XTABLES_LIBDIR into the unpacked tree.
install_node() {
  local dir="$TOOLS/node-containerd-$CONTAINERD_DEB_VERSION-runc-$RUNC_DEB_VERSION-cni-$CNI_PLUGINS_DEB_VERSION-iptables-$IPTABLES_DEB_VERSION"
  if [ -f "$dir/.done" ]; then say node "cached in $dir"; return; fi
  rm -rf "$dir"
  apt_fetch node bookworm "$dir" "containerd=$CONTAINERD_DEB_VERSION" "runc=$RUNC_DEB_VERSION" \
    "containernetworking-plugins=$CNI_PLUGINS_DEB_VERSION" "iptables=$IPTABLES_DEB_VERSION" \
    "libxtables12=$IPTABLES_DEB_VERSION" "libip4tc2=$IPTABLES_DEB_VERSION" "libip6tc2=$IPTABLES_DEB_VERSION" \
    libnftnl11 libnetfilter-conntrack3 libnfnetlink0 libmnl0
  for b in containerd containerd-shim-runc-v2 ctr runc; do link_bin node "$dir" "$b"; done
  local cni
  cni="$(dirname "$(find "$dir/root" -type f -name bridge -perm -u+x | head -n 1)")"
  [ -d "$cni" ] || die node "containernetworking-plugins has no bridge plugin" "rm -rf $dir && make tools"
  ln -sfn "$cni" "$dir/cni"
  local multi libs xt
  multi="$(find "$dir/root" -type f -name xtables-legacy-multi | head -n 1)"
  [ -n "$multi" ] || die node "iptables has no xtables-legacy-multi" "rm -rf $dir && make tools"
  libs="$(find "$dir/root" -name '*.so*' -printf '%h\n' | grep -v xtables | sort -u | paste -sd:)"
  xt="$(find "$dir/root" -type d -name xtables | head -n 1)"
  for b in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    # xtables-legacy-multi picks the command from argv[0]; `exec -a` sets it.
    printf '#!/bin/bash\nLD_LIBRARY_PATH="%s" XTABLES_LIBDIR="%s" exec -a %s "%s" "$@"\n' \
      "$libs" "$xt" "${b/iptables/iptables-legacy}" "$multi" >"$dir/bin/$b"
    chmod +x "$dir/bin/$b"
  done
  "$dir/bin/containerd" --version >/dev/null || die node "unpacked containerd does not run" "rm -rf $dir && make tools"
  "$dir/bin/runc" --version >/dev/null || die node "unpacked runc does not run" "rm -rf $dir && make tools"
  "$dir/bin/iptables" --version | grep -q legacy || die node "unpacked iptables does not run" "rm -rf $dir && make tools"
  touch "$dir/.done"
  say node "installed in $dir"
}

# What an image carries besides its binary, from Debian packages (distroless-style): the
# shared libraries a Rust glibc binary links (libc6, libgcc-s1) and the CA certificates.
install_image_base() {
  local dir="$TOOLS/image-base-libc6-$LIBC6_DEB_VERSION-libgcc-$LIBGCC_DEB_VERSION-ca-$CA_CERTIFICATES_DEB_VERSION"
  if [ -f "$dir/.done" ]; then say image-base "cached in $dir"; return; fi
  rm -rf "$dir"
  apt_fetch image-base bookworm "$dir" "libc6=$LIBC6_DEB_VERSION" "libgcc-s1=$LIBGCC_DEB_VERSION" \
    "ca-certificates=$CA_CERTIFICATES_DEB_VERSION"
  # ca-certificates builds its bundle at install time; build it the same way: every
  # certificate the package ships, in name order.
  find "$dir/root/usr/share/ca-certificates" -name '*.crt' | LC_ALL=C sort | xargs cat >"$dir/ca-certificates.crt"
  grep -q 'BEGIN CERTIFICATE' "$dir/ca-certificates.crt" || die image-base "no CA certificates unpacked" "rm -rf $dir && make tools"
  touch "$dir/.done"
  say image-base "unpacked in $dir"
}

# --- Go-built components ----------------------------------------------------------------

# The k8s.io/kubernetes module points every k8s.io/* staging module at ./staging, so it
# cannot be `go install`ed. We build from a generated wrapper module that requires it and
# replaces each staging module with its published v0.X.Y, taken from the release's go.mod.
install_kube() {
  local dir="$TOOLS/kubernetes-$K8S_VERSION"
  local commands="kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy"
  local missing=""
  for cmd in $commands; do [ -x "$dir/bin/$cmd" ] || missing+=" $cmd"; done
  if [ -z "$missing" ]; then say kubernetes "cached in $dir"; return; fi
  need_cmd kubernetes go "install Go >= 1.24 (https://go.dev/doc/install) and put it on PATH"
  local mod="$dir/wrapper"
  mkdir -p "$mod" "$dir/bin"
  if [ -f "$mod/go.mod" ]; then build_kube_commands "$dir" $commands; return; fi
  say kubernetes "downloading k8s.io/kubernetes@$K8S_VERSION module"
  local gomod
  gomod="$(cd "$mod" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
    sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')" ||
    die kubernetes "go mod download k8s.io/kubernetes@$K8S_VERSION failed" "check GOPROXY reaches the Go module proxy, then re-run 'make tools'"
  [ -f "$gomod" ] || die kubernetes "go.mod of k8s.io/kubernetes@$K8S_VERSION not found" "re-run 'make tools'"
  local staging_version="v0.${K8S_VERSION#v1.}"
  (
    cd "$mod"
    rm -f go.mod go.sum
    go mod init streamgate.local/kube-wrapper >/dev/null 2>&1
    go mod edit -go="$(sed -n 's/^go \(.*\)/\1/p' "$gomod")"
    go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
    # Every `k8s.io/foo => ./staging/src/k8s.io/foo` line becomes `k8s.io/foo => k8s.io/foo v0.X.Y`.
    grep -E '^\s*k8s\.io/[^ ]+ => \./staging/' "$gomod" | awk '{print $1}' | while read -r m; do
      go mod edit -replace="$m=$m@$staging_version"
    done
    cat >tools.go <<'EOF'
//go:build tools

// Package tools pins the Kubernetes commands this wrapper module builds.
package tools
EOF
  )
  build_kube_commands "$dir" $commands
}

# build_kube_commands DIR COMMAND...: builds each missing command from the wrapper module.
build_kube_commands() {
  local dir="$1" mod="$1/wrapper"
  shift
  local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
  ldflags+=" -X k8s.io/component-base/version.gitMajor=1"
  ldflags+=" -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
  ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
  for cmd in "$@"; do
    if [ -x "$dir/bin/$cmd" ]; then say kubernetes "$cmd already built"; continue; fi
    say kubernetes "building $cmd $K8S_VERSION (the first build takes a while on 2 cores)"
    (cd "$mod" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" \
      -o "$dir/bin/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd" >"$dir/build-$cmd.log" 2>&1) ||
      die kubernetes "go build of $cmd failed: $(tail -n 5 "$dir/build-$cmd.log")" \
        "see $dir/build-$cmd.log; fix the Go toolchain (go version >= the release's go directive) and re-run 'make tools'"
    mv "$dir/bin/$cmd.tmp" "$dir/bin/$cmd"
  done
  say kubernetes "built in $dir"
}

# go_install COMPONENT MODULE PACKAGE VERSION: builds with `go install` into the cache.
# When the module's go.mod has replace directives (`go install pkg@v` refuses those),
# falls back to a wrapper module that copies them.
go_install() {
  local component="$1" module="$2" pkg="$3" version="$4"
  local dir="$TOOLS/$component-$version"
  if [ -f "$dir/.done" ]; then say "$component" "cached in $dir"; return; fi
  need_cmd "$component" go "install Go >= 1.24 (https://go.dev/doc/install) and put it on PATH"
  mkdir -p "$dir/bin"
  say "$component" "go install $pkg@$version"
  if ! GOBIN="$dir/bin" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "$pkg@$version" >"$dir/build.log" 2>&1; then
    grep -q 'replace directives' "$dir/build.log" ||
      die "$component" "go install $pkg@$version failed: $(tail -n 5 "$dir/build.log")" \
        "see $dir/build.log; check the Go toolchain and the module proxy, then re-run 'make tools'"
    say "$component" "module has replace directives; building through a wrapper module"
    local mod="$dir/wrapper"
    mkdir -p "$mod"
    local gomod
    gomod="$(cd "$mod" && GOFLAGS=-mod=mod go mod download -json "$module@$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    (
      cd "$mod"
      rm -f go.mod go.sum
      go mod init "streamgate.local/$component-wrapper" >/dev/null 2>&1
      go mod edit -require="$module@$version"
      awk '/^replace \(/{inblk=1;next} inblk&&/^\)/{inblk=0} inblk{print} /^replace [^(]/{sub(/^replace /,"");print}' "$gomod" |
        grep '=>' | while read -r line; do
        local from to
        from="$(echo "$line" | awk -F'=>' '{print $1}' | xargs | tr ' ' '@')"
        to="$(echo "$line" | awk -F'=>' '{print $2}' | xargs | tr ' ' '@')"
        # A replace into the module's own tree (`./api`) names a nested module that is
        # not in the zip; the version the go.mod requires is its published release.
        case "$to" in ./* | ../*) continue ;; esac
        go mod edit -replace="$from=$to"
      done
    )
    (cd "$mod" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$dir/bin/" "$pkg" >"$dir/build.log" 2>&1) ||
      die "$component" "build of $pkg@$version failed: $(tail -n 5 "$dir/build.log")" \
        "see $dir/build.log, then re-run 'make tools'"
  fi
  touch "$dir/.done"
  say "$component" "installed in $dir"
}

# The kwok binary plays no stage unless given some; kwokctl ships them in the module's
# kustomize/ tree. We take the same set kwokctl uses: nodes initialise and keep a lease,
# pods become Ready at once (native sidecars shown running), complete and delete.
install_kwok_stages() {
  local dir="$TOOLS/kwok-$KWOK_VERSION"
  [ -f "$dir/stages-fast.yaml" ] && return
  local src
  src="$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage"
  [ -d "$src" ] || (cd "$dir" && go mod download "sigs.k8s.io/kwok@$KWOK_VERSION" >/dev/null 2>&1) || true
  [ -d "$src" ] || die kwok "kwok stage files not found in $src" "go mod download sigs.k8s.io/kwok@$KWOK_VERSION && make tools"
  : >"$dir/stages-fast.yaml.tmp"
  for f in "$src"/node/fast/node-initialize.yaml "$src"/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml "$src"/pod/fast/pod-*.yaml; do
    printf -- '---\n' >>"$dir/stages-fast.yaml.tmp"
    grep -v '^---$' "$f" >>"$dir/stages-fast.yaml.tmp"
  done
  mv "$dir/stages-fast.yaml.tmp" "$dir/stages-fast.yaml"
  say kwok "stages written to $dir/stages-fast.yaml"
}

components="${*:-etcd nats consul consul-mpl kwok helm kube node image-base crane ghz nginx haproxy nghttpx jaeger}"
for c in $components; do
  case "$c" in
    etcd) install_etcd ;;
    nats) install_nats ;;
    consul)
      if [ -n "${STREAMGATE_CONSUL_BIN:-}" ]; then
        [ -x "$STREAMGATE_CONSUL_BIN" ] || die consul "STREAMGATE_CONSUL_BIN=$STREAMGATE_CONSUL_BIN is not an executable" "point it at a consul binary or unset it"
        say consul "using STREAMGATE_CONSUL_BIN=$STREAMGATE_CONSUL_BIN"
      else
        install_consul
      fi
      ;;
    kwok)
      go_install kwok sigs.k8s.io/kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"
      install_kwok_stages
      ;;
    helm) go_install helm helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm "$HELM_VERSION" ;;
    kube) install_kube ;;
    node) install_node ;;
    image-base) install_image_base ;;
    # `make push` and its test: crane pushes the image archives, and `crane registry
    # serve` is the registry on 127.0.0.1 the node pulls from.
    crane) go_install crane github.com/google/go-containerregistry github.com/google/go-containerregistry/cmd/crane "$CRANE_VERSION" ;;
    # forward-bench (make bench): ghz, the gRPC load generator, and nginx as the
    # reference gRPC proxy.
    ghz) go_install ghz github.com/bojand/ghz github.com/bojand/ghz/cmd/ghz "$GHZ_VERSION" ;;
    nginx) install_nginx ;;
    haproxy) install_deb_program haproxy "$HAPROXY_DEB_VERSION" haproxy haproxy liblua5.3-0 libopentracing-c-wrapper0 libopentracing1 ;;
    nghttpx) install_deb_program nghttpx "$NGHTTPX_DEB_VERSION" nghttp2-proxy nghttpx libev4 libc-ares2 libjemalloc2 ;;
    # Traces: the platform starts Jaeger with OTLP/gRPC on loopback, and the trace tests
    # read the spans back through its query API.
    jaeger) go_install jaeger github.com/jaegertracing/jaeger github.com/jaegertracing/jaeger/cmd/jaeger "$JAEGER_VERSION" ;;
    # The newer Consul of the test matrix (agentless catalog mode): the last release line
    # under MPL-2.0, built from its Go module. See CONSUL_MPL_VERSION in versions.sh.
    consul-mpl) go_install consul-mpl github.com/hashicorp/consul github.com/hashicorp/consul "$CONSUL_MPL_VERSION" ;;
    *) die "$c" "unknown component" "use one of: etcd nats consul consul-mpl kwok helm kube node image-base crane ghz nginx haproxy nghttpx jaeger" ;;
  esac
done
say tools "all components ready in $TOOLS"
