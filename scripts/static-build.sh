#!/usr/bin/env bash
# Builds a statically linked `kevents` for Linux on x86_64 and aarch64:
#   amd64  target/static/kevents           (x86_64-unknown-linux-musl)
#   arm64  target/static/aarch64/kevents   (aarch64-unknown-linux-musl)
# (under $CARGO_TARGET_DIR instead of target when that is set)
# Usage: scripts/static-build.sh [--arch amd64|arm64 ...] [--out PATH]
# Without --arch it builds both. --out also installs the one binary built at PATH; the Dockerfile
# runs this same script with --arch $TARGETARCH --out /out/kevents.
#
# musl, not glibc: a glibc binary linked with +crt-static still loads NSS modules at run time for
# name resolution, and a scratch or distroless-static image has none, so ADX host names would not
# resolve. musl's resolver is built in.
#
# ring compiles C and assembly with the target's C compiler, which also links. For the machine's
# own architecture that is musl-gcc (Debian package musl-tools), as before; for the other one it
# is Debian's cross gcc with its C headers (gcc-aarch64-linux-gnu and libc6-dev-arm64-cross on
# amd64; gcc-x86-64-linux-gnu and libc6-dev-amd64-cross on arm64). Those headers are glibc's, but
# ring takes only types, memcpy/memset and assert from them, which musl provides alike, and no
# glibc library reaches the binary: Rust's musl targets link their own musl (crt objects and
# libc.a). Needs the rustup targets too (added here when missing). Exits non-zero naming what is
# missing; there is no fallback to another toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET_DIR=${CARGO_TARGET_DIR:-target}
CARGO=${CARGO:-cargo}

die() { echo "static-build: $*" >&2; exit 1; }

archs=()
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) [ $# -ge 2 ] || die "--arch needs amd64 or arm64"; archs+=("$2"); shift 2 ;;
        --out) [ $# -ge 2 ] || die "--out needs a path"; out=$2; shift 2 ;;
        *) die "unknown argument '$1' (usage: static-build.sh [--arch amd64|arm64 ...] [--out PATH])" ;;
    esac
done
[ ${#archs[@]} -gt 0 ] || archs=(amd64 arm64)
if [ -n "$out" ] && [ ${#archs[@]} -ne 1 ]; then
    die "--out installs one binary: give exactly one --arch"
fi

case "$(uname -m)" in
    x86_64 | amd64) host=x86_64 ;;
    aarch64 | arm64) host=aarch64 ;;
    *) host=$(uname -m) ;;
esac

# build ARCH: cargo build for ARCH's musl target, then copy and check the binary. Sets `built`.
build() {
    local arch=$1 cpu dest pkgs
    case "$arch" in
        amd64) cpu=x86_64 dest=$TARGET_DIR/static/kevents pkgs="gcc-x86-64-linux-gnu libc6-dev-amd64-cross" ;;
        arm64) cpu=aarch64 dest=$TARGET_DIR/static/aarch64/kevents pkgs="gcc-aarch64-linux-gnu libc6-dev-arm64-cross" ;;
        "") die "--arch is empty (the Dockerfile's TARGETARCH is set by BuildKit: docker buildx build)" ;;
        *) die "unsupported --arch '$arch': amd64 or arm64" ;;
    esac
    local target=$cpu-unknown-linux-musl
    local env_target=${target//-/_}
    local cargo_env=CARGO_TARGET_${env_target^^}

    if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
        echo "static-build: adding the rustup target $target" >&2
        rustup target add "$target" || die "cannot add the rustup target $target"
    fi

    if [ "$cpu" = "$host" ]; then
        command -v musl-gcc >/dev/null || die "musl-gcc not found: install the Debian package musl-tools"
        export "CC_$env_target=musl-gcc"
    else
        local cc=$cpu-linux-gnu-gcc
        command -v "$cc" >/dev/null \
            || die "$cc not found: building for $arch on $host needs the Debian packages $pkgs"
        printf '#include <stdint.h>\n#include <string.h>\n' | "$cc" -x c -fsyntax-only - 2>/dev/null \
            || die "$cc finds no C headers for $cpu: install the Debian packages $pkgs"
        export "CC_$env_target=$cc" "AR_$env_target=$cpu-linux-gnu-ar" "${cargo_env}_LINKER=$cc"
        # Ubuntu's gcc fortifies by default; the _chk functions that adds are glibc's, not musl's.
        export "CFLAGS_$env_target=-U_FORTIFY_SOURCE"
    fi
    # Static is musl's default; say so anyway, so a changed default cannot silently produce a
    # dynamic binary. The linker strips it: no target-specific strip tool needed. Packed relative
    # relocations (DT_RELR, applied by musl's static-pie start-up since musl 1.2.4) replace a
    # ~800 KiB relocation table that every replica would keep mapped with an ~8 KiB one.
    local root
    case "$TARGET_DIR" in
        /*) root=$TARGET_DIR ;;
        *) root=$PWD/$TARGET_DIR ;;
    esac
    # The link map (next to the binary) says where each function went; tests/static_binary.rs
    # reads it to check the layout below.
    local rustflags="-C target-feature=+crt-static -C strip=symbols -C link-arg=-Wl,-z,pack-relative-relocs -C link-arg=-Wl,-Map=$root/$target.map"
    # Laid out by a profile (docs/cost-at-low-rates.md, "Laid out by a profile"): code that never
    # ran in the profile's workload goes to `.text.unlikely.*`, which the linker places apart from
    # the rest, so the code a replica runs shares fewer pages with code it never runs. Only count-0
    # code counts as cold (`profile-summary-cold-count=0`): start-up code runs once and must stay
    # with the code that runs. pgo/kevents-ARCH.profdata.gz is made by scripts/pgo-profile.sh, for
    # amd64 only: symbol names carry the target, so an amd64 profile matches no arm64 function.
    # Code changed since the profile was made matches no entry and is laid out as without a
    # profile; the warnings about it are silenced. KEVENTS_PGO_GENERATE=DIR builds the
    # instrumented binary instead.
    local pgo=pgo/kevents-$arch.profdata.gz
    if [ -n "${KEVENTS_PGO_GENERATE:-}" ]; then
        rustflags="$rustflags -C profile-generate=$KEVENTS_PGO_GENERATE"
    elif [ -f "$pgo" ]; then
        # Used under a name that carries its checksum: a new profile changes RUSTFLAGS, so cargo
        # rebuilds with it instead of keeping code laid out by the old one.
        local profile
        profile=$root/pgo/kevents-$(sha256sum "$pgo" | cut -c1-16).profdata
        mkdir -p "$root/pgo"
        gzip -dc "$pgo" > "$profile.tmp" || die "cannot decompress $pgo"
        mv "$profile.tmp" "$profile"
        rustflags="$rustflags -C profile-use=$profile -C llvm-args=-no-pgo-warn-mismatch -C llvm-args=-profile-summary-cold-count=0"
    fi
    export "${cargo_env}_RUSTFLAGS=$rustflags"

    # The `image` profile (Cargo.toml): release, with the code off the per-event path optimised
    # for size.
    "$CARGO" build --locked --profile image --target "$target" -p kevents --bin kevents

    mkdir -p "$(dirname "$dest")"
    cp "$TARGET_DIR/$target/image/kevents" "$dest.tmp"
    mv "$dest.tmp" "$dest"
    cp "$root/$target.map" "$dest.map"

    # A static executable has no program interpreter (PT_INTERP) and no needed libraries.
    # readelf reads any architecture's ELF.
    if command -v readelf >/dev/null; then
        if readelf -l "$dest" | grep -q 'Requesting program interpreter'; then
            die "$dest is dynamically linked"
        fi
        if readelf -d "$dest" 2>/dev/null | grep -q '(NEEDED)'; then
            die "$dest needs shared libraries"
        fi
    fi
    local version="not run on $host"
    if [ "$cpu" = "$host" ]; then
        version=$("$dest" --version)
    elif command -v "qemu-$cpu-static" >/dev/null; then
        version="$("qemu-$cpu-static" "$dest" --version) (qemu-$cpu-static)"
    fi
    echo "static-build: $dest ($(du -h "$dest" | cut -f1)): $version"
    built=$dest
}

for arch in "${archs[@]}"; do
    build "$arch"
done
if [ -n "$out" ]; then
    install -D -m 0755 "$built" "$out"
fi
