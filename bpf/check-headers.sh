#!/usr/bin/env bash
# Fails when a BPF object was built with a header from outside the allowed
# places: the project's own bpf/ sources, clang's resource directory, and the
# kernel UAPI / libbpf folders linked under bpf/build/include (see Makefile).
# Anything else (glibc above all) means the build depends on a package
# scripts/setup.sh does not promise, or on the machine's word size.
# Usage: check-headers.sh OBJECT.d CLANG_RESOURCE_DIR
set -euo pipefail
depfile=$1
resource=$(realpath "$2")
here=$(realpath "$(dirname "$0")")
allowed=()
for d in /usr/include/linux /usr/include/asm-generic /usr/include/bpf /usr/include/$(uname -m)-linux-gnu/asm /usr/include/asm; do
  [ -d "$d" ] && allowed+=("$(realpath "$d")")
done
bad=0
# The depfile is "target: dep dep \" lines; every word after the colon is a path.
for f in $(sed -e 's/^[^:]*://' -e 's/\\$//' "$depfile"); do
  real=$(realpath "$f")
  case "$real" in
    "$here"/*|"$resource"/*) continue ;;
  esac
  ok=0
  for a in "${allowed[@]}"; do
    case "$real" in "$a"/*) ok=1; break ;; esac
  done
  if [ $ok -eq 0 ]; then
    echo "bpf: $depfile: header $f ($real) is outside the kernel UAPI, libbpf and clang headers; the datapath must not include libc" >&2
    bad=1
  fi
done
exit $bad
