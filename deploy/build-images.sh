#!/usr/bin/env bash
# Build the site and coordinator images from deploy/Dockerfile (one shared dependency layer).
#
#   deploy/build-images.sh [--base IMAGE|debootstrap] [--torch-source URL|index|wheelhouse]
#                          [--tag TAG] [--tool auto|buildah|docker] [--timings FILE]
#
#   --base          the Python 3.11 base image (Dockerfile ARG PYTHON_IMAGE; default python:3.11-slim-bookworm).
#                   "debootstrap": no registry needed; a Debian bookworm (python3 3.11) is debootstrapped from
#                   the mirror apt already uses and imported as localhost/fedcohort-bookworm-base (once).
#   --torch-source  where torch==2.13.0 (and, with "wheelhouse", every pinned dependency) comes from
#                   (Dockerfile ARG TORCH_SOURCE; default: PyTorch's CPU wheel index URL).
#                   "index": the index pip is configured with inside the build (PyPI: the CUDA build).
#                   "wheelhouse": deploy/wheelhouse/, filled here with `pip wheel -r deploy/requirements.lock`
#                   by the pip on this machine (its index, certificates, proxy and cache); the image build
#                   then installs offline from it (nothing of the wheelhouse stays in a layer).
#   --tag           image tag (default 0.1.0): fedcohort-site:TAG and fedcohort-coordinator:TAG
#   --tool          buildah (bud --isolation chroot --layers) or docker; auto picks buildah, then docker
#   --timings FILE  append "step seconds" lines (base, wheelhouse, site, coordinator) to FILE
#
# CI (.ci/run) runs:  deploy/build-images.sh --base debootstrap --torch-source wheelhouse
# A machine with a registry:  deploy/build-images.sh   (or plain `docker build --target site ...`)
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

BASE=python:3.11-slim-bookworm
TORCH_SOURCE=https://download.pytorch.org/whl/cpu
TAG=0.1.0
TOOL=auto
TIMINGS=""
DEBIAN_BASE=localhost/fedcohort-bookworm-base:bookworm
while [[ $# -gt 0 ]]; do
  case $1 in
    --base) BASE=$2; shift 2 ;;
    --torch-source) TORCH_SOURCE=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    --tool) TOOL=$2; shift 2 ;;
    --timings) TIMINGS=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "unknown option $1" >&2; usage ;;
  esac
done

if [[ $TOOL == auto ]]; then
  if command -v buildah >/dev/null; then TOOL=buildah
  elif command -v docker >/dev/null; then TOOL=docker
  else echo "neither buildah nor docker found: install one (Debian: apt-get install buildah podman runc)" >&2; exit 1
  fi
fi
command -v "$TOOL" >/dev/null || { echo "$TOOL not found" >&2; exit 1; }

timed() {  # timed STEP CMD...: run CMD, print and record its wall time
  local step=$1; shift
  local t0=$SECONDS
  "$@"
  local dt=$((SECONDS - t0))
  echo "build-images: $step took ${dt}s"
  if [[ -n $TIMINGS ]]; then echo "$step $dt" >> "$TIMINGS"; fi
}

image_exists() {
  if [[ $TOOL == docker ]]; then docker image inspect "$1" >/dev/null 2>&1
  else podman image exists "$1" 2>/dev/null || buildah inspect --type image "$1" >/dev/null 2>&1
  fi
}

apt_mirror() {  # the Debian mirror apt is configured with (deb822 .sources or one-line sources.list)
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' "$f"
  done | head -n1 | grep . && return 0
  awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null | grep .
}

debootstrap_base() {
  command -v debootstrap >/dev/null || { echo "debootstrap not found: apt-get install debootstrap" >&2; exit 1; }
  local mirror rootfs
  mirror=$(apt_mirror) || { echo "no Debian mirror found in apt's sources; pass --base IMAGE instead" >&2; exit 1; }
  rootfs=$(mktemp -d /var/tmp/fedcohort-rootfs.XXXXXX)
  # minbase + Python 3.11 (python3-venv brings ensurepip's pip) + CA certificates; nothing else.
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" \
    > /var/tmp/fedcohort-debootstrap.log 2>&1 \
    || { tail -20 /var/tmp/fedcohort-debootstrap.log >&2; rm -rf "$rootfs"; exit 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
  tar -C "$rootfs" -c . | podman import --change 'CMD ["python3"]' - "$DEBIAN_BASE" >/dev/null
  rm -rf "$rootfs"
}

if [[ $BASE == debootstrap ]]; then
  [[ $TOOL == buildah ]] || { echo "--base debootstrap needs buildah/podman (podman import)" >&2; exit 1; }
  if image_exists "$DEBIAN_BASE"; then echo "build-images: base $DEBIAN_BASE exists"
  else timed base debootstrap_base
  fi
  BASE=$DEBIAN_BASE
fi

if [[ $TORCH_SOURCE == wheelhouse ]]; then
  fill_wheelhouse() {
    # The machine's own pip (its config, certificates, proxy and cache) fetches the pinned wheels;
    # wheels already in the folder are reused.
    local py=${PYTHON:-python3}
    "$py" -m pip wheel -q -r deploy/requirements.lock -w deploy/wheelhouse --find-links deploy/wheelhouse
  }
  timed wheelhouse fill_wheelhouse
fi

build() {  # build TARGET
  local target=$1
  local args=(-f deploy/Dockerfile --target "$target" -t "fedcohort-$target:$TAG"
              --build-arg "PYTHON_IMAGE=$BASE" --build-arg "TORCH_SOURCE=$TORCH_SOURCE")
  if [[ $TOOL == buildah ]]; then
    # --layers: the second target reuses the first one's dependency layer (built once).
    buildah bud --isolation chroot --layers --pull=false "${args[@]}" . 
  else
    docker build "${args[@]}" .
  fi
}
timed site build site
timed coordinator build coordinator
if [[ $TOOL == buildah ]]; then podman images --filter "reference=fedcohort-*:$TAG"; fi
