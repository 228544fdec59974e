#!/usr/bin/env bash
# check-fresh.sh [--no-cuda] [--suite NAME] [main|test]...: the README's two commands on a fresh
# Debian, as a new user runs them. A minimal Debian (debootstrap --variant=minbase: no compiler, no
# cmake, no python; bookworm, Debian 12, unless --suite names another, e.g. trixie) is made in
# build-fresh, the committed HEAD is cloned into it, and each named command (default: main) runs
# there as root through chroot: scripts/main.sh or scripts/test.sh must install what they need with
# apt-get and pass. The CUDA toolkit is the one thing the machine gives (as the brief's machines
# do): /usr/local/cuda is bound into the root read-only (--no-cuda: not even that, as on a machine
# without the toolkit, where moeppc builds without its CUDA parts). Each command gets a root of its
# own, unpacked from the debootstrapped one kept in build-fresh/SUITE.tar. Needs root (debootstrap,
# mount, chroot) and Debian's package mirror. Logs: build-fresh/SUITE-NAME.log.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
dir=$repo/build-fresh
root=$dir/root
[ "$(id -u)" = 0 ] || { echo "check-fresh: needs root (debootstrap, mount, chroot)"; exit 1; }
cuda=1 suite=bookworm
while [ $# -gt 0 ]; do
  case $1 in
    --no-cuda) cuda=0; shift ;;
    --suite) [ $# -ge 2 ] || { echo "check-fresh: --suite needs a name"; exit 2; }; suite=$2; shift 2 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || set -- main
for c in "$@"; do
  case $c in main|test) ;; *) echo "check-fresh: expected main or test, found '$c'"; exit 2 ;; esac
done
bash scripts/deps.sh debootstrap git

mkdir -p "$dir"
base=$dir/$suite.tar
if [ ! -f "$base" ]; then
  echo "check-fresh: a minimal Debian $suite (debootstrap), kept as $base"
  rm -rf "$dir/base"
  debootstrap --variant=minbase "$suite" "$dir/base" http://deb.debian.org/debian > "$dir/debootstrap.log" 2>&1 ||
    { tail -20 "$dir/debootstrap.log"; exit 1; }
  cp /etc/resolv.conf "$dir/base/etc/"
  if [ "$suite" = bookworm ] && [ -f /etc/apt/sources.list.d/debian.sources ]; then # this host's, updates included
    cp /etc/apt/sources.list.d/debian.sources "$dir/base/etc/apt/sources.list.d/" && rm -f "$dir/base/etc/apt/sources.list"
  fi
  tar -C "$dir/base" -cf "$base.tmp" . && mv "$base.tmp" "$base" && rm -rf "$dir/base"
fi

mounts=()
unmount_all() {
  for ((k = ${#mounts[@]} - 1; k >= 0; k--)); do umount -R "${mounts[k]}" 2>/dev/null || umount -l "${mounts[k]}" || true; done
  mounts=()
}
trap unmount_all EXIT
# A root as debootstrap left it, with this machine's /proc, /sys, /dev and CUDA toolkit, and a clone of HEAD.
fresh_root() {
  # a run that was killed may have left its mounts: never remove through them into the host's /dev
  for m in proc sys dev usr/local/cuda; do umount -R "$root/$m" 2>/dev/null || true; done
  if grep -q " $root/" /proc/mounts; then echo "check-fresh: still mounted under $root; unmount it first"; exit 1; fi
  rm -rf --one-file-system "$root" && mkdir -p "$root" && tar -C "$root" -xf "$base"
  mount -t proc proc "$root/proc" && mounts+=("$root/proc")
  mount --rbind /sys "$root/sys" && mounts+=("$root/sys")
  mount --rbind /dev "$root/dev" && mounts+=("$root/dev")
  if [ $cuda = 1 ] && [ -d /usr/local/cuda ]; then
    mkdir -p "$root/usr/local/cuda"
    mount --bind /usr/local/cuda "$root/usr/local/cuda" && mounts+=("$root/usr/local/cuda")
    mount -o remount,bind,ro "$root/usr/local/cuda"
  fi
  git clone -q "$repo" "$root/root/moeppc"
}

echo "check-fresh: Debian $suite, HEAD $(git log --oneline -1)$([ $cuda = 1 ] || echo '; no CUDA toolkit')"
status=0
for c in "$@"; do
  fresh_root
  t0=$(date +%s)
  if chroot "$root" /bin/bash -c "cd /root/moeppc && bash scripts/$c.sh" > "$dir/$suite-$c.log" 2>&1; then
    what="a fresh Debian $suite$([ $cuda = 1 ] || echo ' without CUDA')"
    echo "check-fresh: scripts/$c.sh passed on $what in $(( $(date +%s) - t0 )) s (log: $dir/$suite-$c.log)"
  else
    echo "check-fresh: scripts/$c.sh FAILED on a fresh Debian $suite (log: $dir/$suite-$c.log):"
    tail -30 "$dir/$suite-$c.log"
    status=1
  fi
  unmount_all
done
exit $status
