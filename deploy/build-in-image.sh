#!/usr/bin/env bash
# The build steps of deploy/Dockerfile, kept here so CI can check them
# (bash -n, shellcheck) and xtask can compare the package list with
# xtask/src/deps.rs without a Docker daemon.
#
#   build-in-image.sh deps           apt packages the build needs (Debian 12)
#   build-in-image.sh build OUT_DIR  release build of the agent into OUT_DIR
#   build-in-image.sh packages       print the package list (for CI)
set -euo pipefail

# Same compiler and headers as `cargo xtask deps` installs: clang-19 compiles
# ebpf/ (build.rs), libclang (pulled in by clang-19) serves bindgen, libbpf-dev
# gives bpf_helpers.h. vmlinux.h is vendored, so bpftool is not needed.
PACKAGES=(clang-19 llvm-19 libbpf-dev)

deps() {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
    rm -rf /var/lib/apt/lists/*
    clang-19 --version | head -n 1
}

build() {
    local out="${1:?usage: build-in-image.sh build OUT_DIR}"
    # The image is always release; CI runs this step with PERISCOPE_PROFILE=dev
    # (already built by the tests) to exercise it without a long release build.
    local profile="${PERISCOPE_PROFILE:-release}" dir
    if [ "$profile" = dev ]; then dir=debug; else dir="$profile"; fi
    cargo --version
    cargo build --profile "$profile" --locked -p periscope
    mkdir -p "$out"
    # Keep the symbol table (profilers, backtraces), drop DWARF: ~5x smaller.
    objcopy --strip-debug "target/$dir/periscope" "$out/periscope"
    "$out/periscope" --version
}

case "${1:-}" in
    deps) deps ;;
    build) build "${2:-}" ;;
    packages) printf '%s\n' "${PACKAGES[@]}" ;;
    *) echo "usage: $0 deps | build OUT_DIR | packages" >&2; exit 64 ;;
esac
