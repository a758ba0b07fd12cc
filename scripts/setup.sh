#!/usr/bin/env bash
# Installs everything clustermesh needs on a Debian machine, as root, and is
# safe to run any number of times: missing Debian packages, npm packages
# (npm ci when package-lock.json changed), the compiled CLI in dist/ (rebuilt
# when a source changed, see scripts/build.mjs), the compiled BPF objects and
# the CNI plugin executable (cni/), the lab's echo server (src/lab/echo-c/) and
# the lab kubelet's container start (src/lab/podstart-c/).
#
#   --prometheus  also Debian's prometheus, for `clustermesh lab up --prometheus`
#                 (scripts/test.sh asks for it: test/metrics-lab.test.ts)
#   --browser     also Debian's chromium: the headless browser test/ui.test.ts
#                 drives (scripts/test.sh asks for it)
# Neither is installed by default: the demo's setup stays as fast.
set -euo pipefail
WITH_PROMETHEUS=0
WITH_BROWSER=0
for arg in "$@"; do
  case "$arg" in
    --prometheus) WITH_PROMETHEUS=1 ;;
    --browser) WITH_BROWSER=1 ;;
    -h|--help) echo "usage: scripts/setup.sh [--prometheus] [--browser]"; exit 0 ;;
    *) echo "setup: unknown argument '$arg' (usage: scripts/setup.sh [--prometheus] [--browser])" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."

DEB_PACKAGES=(
  clang llvm libbpf-dev bpftool linux-libc-dev make   # compile and inspect the BPF datapath
  libc6-dev                                            # the CNI plugin executable (cni/), linked statically
  libssl-dev                                           # the lab's echo server (src/lab/echo-c/): SHA-256 from libcrypto
  iproute2 iputils-ping tcpdump ethtool curl util-linux procps # namespaces, links, tc, ping, captures, HTTP checks, setpriv/taskset, sysctl
  etcd-server etcd-client openssl                      # the mesh kvstore with mutual TLS
  iperf3 sockperf iptables                             # benchmarks (iptables: bench/services' kube-proxy baseline)
  openvpn                                              # bench/peers: the VPN row
)
if [ "$WITH_BROWSER" = 1 ]; then
  DEB_PACKAGES+=(chromium) # test/ui.test.ts: the web view in a real headless browser
fi

[ "$WITH_PROMETHEUS" -eq 1 ] && DEB_PACKAGES+=(prometheus)  # lab up --prometheus

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: clustermesh needs root (network namespaces, BPF, etcd); run as root" >&2
  exit 1
fi

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian starts etcd as a service when etcd-server is installed; clustermesh
# runs its own etcd processes with TLS, so the packaged default one is not used.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  systemctl stop etcd || true
  systemctl disable etcd >/dev/null 2>&1 || true
fi
# The same for prometheus: the lab runs its own, in the lab's router namespace.
if [ "$WITH_PROMETHEUS" -eq 1 ] && command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl stop prometheus || true
  systemctl disable prometheus >/dev/null 2>&1 || true
fi

stamp=node_modules/.clustermesh-setup
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi

# bin/clustermesh.js runs dist/js/ while it is current, src/ through tsx otherwise.
node scripts/build.mjs

make -s -C bpf

# The CNI plugin executable a kubelet runs (C, no Node.js): cni/build/clustermesh-cni.
make -s -C cni
# What lab pods run for `clustermesh lab workload echo` (C, no Node.js): dist/lab/clustermesh-echo.
make -s -C src/lab/echo-c
# How the lab kubelet starts every container (C: held start, cgroup, namespaces, mounts, exec): dist/lab/clustermesh-podstart.
make -s -C src/lab/podstart-c
