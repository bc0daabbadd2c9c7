#!/usr/bin/env bash
# edgeres on ARM64, checked here under qemu-user: build (or reuse) an arm64 Debian root, install
# edgeres runtime-only into it from this checkout (`pip install .`, base dependencies, no
# TensorFlow), run `edgeres check BUNDLE` and `edgeres predict --json` on real photos there, and
# compare the predictions with this machine's. Emulated: correctness only, never speed.
#
#   benchmarks/arm64/run.sh BUNDLE [PHOTO_OR_DIR...]      (as root: chroot, mounts, binfmt)
#   benchmarks/arm64/run.sh --prepare                     build the root and install edgeres only
#   benchmarks/arm64/run.sh --exec CMD [ARG...]            run CMD in the prepared root (benchmarks)
#
# Photos default to 10 per class from $EDGERES_TEST_DATA/validation (the shared photos).
# Environment: EDGERES_ARM64_ROOT (default ~/.cache/edgeres/arm64-root; built when absent,
# ~3-15 min), EDGERES_PYTHON (this machine's interpreter with edgeres; default .venv/bin/python,
# else python3), QEMU_CPU (the emulated CPU, default cortex-a72: a Raspberry Pi 4's), DEBIAN_MIRROR.
#
# Two traps this script avoids (benchmarks/cross_runtime.md): without /sys, XNNPACK cannot read
# the CPU list, does not start, and LiteRT silently runs its built-in kernels instead; and with
# qemu 7.2's default `max` CPU, XNNPACK picks kernels qemu emulates wrongly (every photo gets the
# same scores). So the root gets the two /sys files XNNPACK reads, the CPU is a real core's,
# and the script checks that XNNPACK started.
# Exit codes: 0 the check passed and predictions were compared; 1 the check failed (a runtime that
# computes the model beyond the bundle's stated tolerance); 2 usage or set-up error;
# 3 ARM64 cannot be emulated here (no qemu-user / binfmt_misc): nothing was checked.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
ROOT="${EDGERES_ARM64_ROOT:-$HOME/.cache/edgeres/arm64-root}"
SUITE=bookworm
VENV=/opt/edgeres-venv  # inside the root
export QEMU_CPU="${QEMU_CPU:-cortex-a72}"
cd "$REPO"

say() { echo "arm64: $*" >&2; }
die() { say "error: $*"; exit 2; }
cannot_emulate() {
  say "######################################################################"
  say "SKIPPED: ARM64 cannot be emulated on this machine: $*"
  say "Install qemu-user-static and binfmt-support (apt-get install qemu-user-static binfmt-support), as root."
  say "######################################################################"
  exit 3
}

PREPARE_ONLY=0 EXEC=0
if [ "${1:-}" = "--prepare" ]; then PREPARE_ONLY=1; shift; fi
if [ "${1:-}" = "--exec" ]; then EXEC=1; shift; fi
if [ "$PREPARE_ONLY" = 0 ] && [ $# -lt 1 ]; then
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2
fi
[ "$(id -u)" = 0 ] || die "run as root (chroot, bind mounts and binfmt_misc need it)."

# -- 1. qemu-user and binfmt_misc: aarch64 binaries must run transparently ------------------
if { ! [ -x /usr/bin/qemu-aarch64-static ] && ! [ -x /usr/bin/qemu-aarch64 ]; } || ! command -v mmdebstrap >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    say "installing qemu-user-static, binfmt-support, mmdebstrap ..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      qemu-user-static binfmt-support mmdebstrap >/dev/null) || cannot_emulate "apt-get could not install qemu-user-static"
  else
    cannot_emulate "no qemu-aarch64(-static) and no apt-get"
  fi
fi
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || cannot_emulate "binfmt_misc cannot be mounted (a container without the privilege?)"
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  command -v update-binfmts >/dev/null 2>&1 && update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  [ -x /usr/lib/systemd/systemd-binfmt ] && /usr/lib/systemd/systemd-binfmt >/dev/null 2>&1 || true
fi
grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null || cannot_emulate "no enabled qemu-aarch64 entry in /proc/sys/fs/binfmt_misc"

# -- 2. the arm64 Debian root (reused when a previous build finished) -------------------------
if [ ! -f "$ROOT/.edgeres-root-done" ]; then
  command -v mmdebstrap >/dev/null 2>&1 || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null; } \
    || die "mmdebstrap is needed to build the arm64 root (apt-get install mmdebstrap)."
  say "building an arm64 Debian $SUITE root at $ROOT (several minutes) ..."
  # A half-built root may still have a killed run's bind mounts: never delete through them.
  for m in proc dev sys; do while mountpoint -q "$ROOT/$m" 2>/dev/null; do umount -l "$ROOT/$m"; done; done
  rm -rf --one-file-system "$ROOT"; mkdir -p "$(dirname "$ROOT")"
  t0=$(date +%s)
  mmdebstrap --arch=arm64 --variant=apt --include=python3,python3-venv,python3-pip,ca-certificates \
    "$SUITE" "$ROOT" ${DEBIAN_MIRROR:-} >"$ROOT.build.log" 2>&1 \
    || { tail -20 "$ROOT.build.log" >&2; die "mmdebstrap failed (log: $ROOT.build.log)"; }
  touch "$ROOT/.edgeres-root-done"
  say "root built in $(( $(date +%s) - t0 )) s"
fi
[ "$(chroot "$ROOT" uname -m)" = aarch64 ] || cannot_emulate "a binary of the arm64 root does not run"

# Network for pip, and /proc and /dev for Python. Each run stacks its own bind mounts and takes
# them off on exit, so runs side by side (benchmarks) do not pull them from under each other.
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
for ca in /etc/ssl/certs/ca-certificates.crt; do [ -f "$ca" ] && cp "$ca" "$ROOT$ca"; done
MOUNTED=()
cleanup() { for m in "${MOUNTED[@]:-}"; do [ -n "$m" ] && umount -l "$m" 2>/dev/null || true; done; }
trap cleanup EXIT
for m in proc dev; do mount --bind "/$m" "$ROOT/$m"; MOUNTED+=("$ROOT/$m"); done
# What XNNPACK's cpuinfo reads to start (the host's whole /sys crashes it under qemu): one core.
mkdir -p "$ROOT/sys/devices/system/cpu"
for f in possible present; do mountpoint -q "$ROOT/sys" || echo 0 >"$ROOT/sys/devices/system/cpu/$f"; done
# QEMU_CPU (e.g. cortex-a72) picks the emulated CPU; env -i would drop it for the next exec.
in_root() { chroot "$ROOT" /usr/bin/env -i HOME=/root PATH="$VENV/bin:/usr/bin:/bin" LANG=C.UTF-8 \
  ${QEMU_CPU:+QEMU_CPU=$QEMU_CPU} "$@"; }
if [ "$EXEC" = 1 ]; then
  [ -x "$ROOT$VENV/bin/edgeres" ] || die "edgeres is not installed in $ROOT yet: run $0 --prepare first."
  set +e; in_root "$@"; rc=$?; exit $rc
fi

# -- 3. edgeres, runtime-only, from this checkout (tracked and new files; nothing ignored) ---
rm -rf "$ROOT/opt/edgeres-src"; mkdir -p "$ROOT/opt/edgeres-src"
git ls-files -co --exclude-standard -z | while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done \
  | tar --null -T - -cf - | tar -xf - -C "$ROOT/opt/edgeres-src"
[ -x "$ROOT$VENV/bin/pip" ] || in_root python3 -m venv "$VENV"
say "pip install /opt/edgeres-src (runtime only) ..."
in_root pip install -q --disable-pip-version-check /opt/edgeres-src || die "pip install of the checkout failed in the root"
in_root pip install -q --disable-pip-version-check --no-deps --force-reinstall /opt/edgeres-src >/dev/null
if in_root python -c "import tensorflow" 2>/dev/null; then die "TensorFlow is installed in the root: not a runtime-only install"; fi
say "$(in_root python -c 'import platform, importlib.metadata as m; print(platform.machine(), "python", platform.python_version(), "ai-edge-litert", m.version("ai-edge-litert"), "numpy", m.version("numpy"))') (emulated CPU $QEMU_CPU)"
[ "$PREPARE_ONLY" = 1 ] && { say "root ready: $ROOT (edgeres in $VENV)"; exit 0; }

# -- 4. the bundle and the photos, copied in ---------------------------------------------------
BUNDLE="$1"; shift
[ -f "$BUNDLE/edgeres.json" ] || die "$BUNDLE is not an export bundle (no edgeres.json)."
PHOTOS=("$@")
if [ ${#PHOTOS[@]} = 0 ]; then
  DATA="${EDGERES_TEST_DATA:-$REPO/../shared/data/cats_and_dogs_filtered}"
  [ -d "$DATA/validation" ] || die "no photos given and no $DATA/validation (set EDGERES_TEST_DATA)."
  for cls in "$DATA"/validation/*/; do
    while IFS= read -r p; do PHOTOS+=("$p"); done < <(ls "$cls"*.jpg | sort | head -10)
  done
fi
WORK="$ROOT/opt/edgeres-work"; rm -rf "$WORK"; mkdir -p "$WORK/bundle" "$WORK/photos"
cp -r "$BUNDLE"/. "$WORK/bundle/"
for p in "${PHOTOS[@]}"; do cp "$p" "$WORK/photos/"; done

PY="${EDGERES_PYTHON:-}"
[ -n "$PY" ] || { [ -x "$REPO/.venv/bin/python" ] && PY="$REPO/.venv/bin/python" || PY=python3; }

# -- 5. the device check and predictions on ARM64; the same predictions here -----------------
# LiteRT says once per process when XNNPACK starts; without that line it ran its built-in kernels.
model=$(in_root python -c 'import sys; from edgeres.bundle import resolve_model; print(resolve_model(sys.argv[1]))' /opt/edgeres-work/bundle)
in_root python -c 'import sys; from ai_edge_litert.interpreter import Interpreter; Interpreter(model_path=sys.argv[1], num_threads=1).allocate_tensors()' \
  "$model" 2>"$WORK/xnnpack.log" || { cat "$WORK/xnnpack.log" >&2; die "LiteRT could not load $model on aarch64"; }
grep -q "XNNPACK delegate" "$WORK/xnnpack.log" \
  || { cat "$WORK/xnnpack.log" >&2; die "XNNPACK did not start on aarch64 (LiteRT would run its built-in kernels): the results would not be ARM64 XNNPACK's"; }
say "edgeres check on aarch64 (${#PHOTOS[@]} photos to predict after it; ~2-3 s a photo emulated) ..."
set +e
in_root edgeres check /opt/edgeres-work/bundle --json >"$WORK/check.json" 2>"$WORK/check.err"
check_rc=$?
set -e
if [ ! -s "$WORK/check.json" ]; then cat "$WORK/check.err" >&2; die "edgeres check printed nothing on aarch64 (rc $check_rc)"; fi
in_root edgeres predict /opt/edgeres-work/bundle /opt/edgeres-work/photos --json --threads 1 >"$WORK/predict_aarch64.jsonl"
"$PY" -m edgeres.cli predict "$WORK/bundle" "$WORK/photos" --json --threads 1 >"$WORK/predict_x86_64.jsonl"
"$PY" "$HERE/compare.py" "$WORK/check.json" "$WORK/predict_x86_64.jsonl" "$WORK/predict_aarch64.jsonl"
mkdir -p "$REPO/benchmarks/out/arm64"
cp "$WORK"/check.json "$WORK"/predict_*.jsonl "$REPO/benchmarks/out/arm64/"
if [ "$check_rc" != 0 ]; then say "FAILED: edgeres check on aarch64 exited $check_rc"; exit 1; fi
say "passed"
