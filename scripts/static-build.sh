#!/usr/bin/env bash
# Builds a statically linked `kevents` for x86_64 Linux into target/static/kevents.
#
# musl, not glibc: a glibc binary linked with +crt-static still loads NSS modules at run time for
# name resolution, and a scratch or distroless-static image has none, so ADX host names would not
# resolve. musl's resolver is built in. The Dockerfile runs this same script.
#
# Needs: the rustup target x86_64-unknown-linux-musl (added here when missing) and musl-gcc
# (Debian package musl-tools) for ring's C and assembly. Exits non-zero with the reason otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-unknown-linux-musl
TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUT=target/static/kevents
CARGO=${CARGO:-cargo}

die() { echo "static-build: $*" >&2; exit 1; }

if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    echo "static-build: adding the rustup target $TARGET" >&2
    rustup target add "$TARGET" || die "cannot add the rustup target $TARGET"
fi
command -v musl-gcc >/dev/null || die "musl-gcc not found: install the Debian package musl-tools"

# ring's build script compiles C and assembly with the target's C compiler.
export CC_x86_64_unknown_linux_musl=musl-gcc
# Static is musl's default; say so anyway, so a changed default cannot silently produce a
# dynamic binary.
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C target-feature=+crt-static"

"$CARGO" build --locked --release --target "$TARGET" --bin kevents

mkdir -p "$(dirname "$OUT")"
if command -v strip >/dev/null; then
    strip -o "$OUT.tmp" "$TARGET_DIR/$TARGET/release/kevents"
else
    cp "$TARGET_DIR/$TARGET/release/kevents" "$OUT.tmp"
fi
mv "$OUT.tmp" "$OUT"

# A static executable has no program interpreter (PT_INTERP) and no needed libraries.
if command -v readelf >/dev/null; then
    if readelf -l "$OUT" | grep -q 'Requesting program interpreter'; then
        die "$OUT is dynamically linked"
    fi
    if readelf -d "$OUT" 2>/dev/null | grep -q '(NEEDED)'; then
        die "$OUT needs shared libraries"
    fi
fi
echo "static-build: $OUT ($(du -h "$OUT" | cut -f1)): $("$OUT" --version)"
