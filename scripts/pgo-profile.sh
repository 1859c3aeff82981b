#!/usr/bin/env bash
# Regenerates pgo/kevents-amd64.profdata.gz, the execution profile scripts/static-build.sh lays
# the image's amd64 binary out by (docs/cost-at-low-rates.md, "Laid out by a profile"):
#   1. builds an instrumented static amd64 binary (KEVENTS_PGO_GENERATE: -C profile-generate);
#   2. runs it where kevents runs: the capture bench at 50, 500 and 2,000 events/s (leader and
#      follower, file sink), then a handover drill on two nodes shipping to the ADX emulator in
#      queued mode (the AKS overlay's sink);
#   3. merges what every replica wrote at exit (llvm-profdata from the rustup component
#      llvm-tools, added here when missing) into pgo/kevents-amd64.profdata.gz.
# Run it again after a change of toolchain (the profile's format follows rustc's LLVM) or when
# much of the code has changed: code changed since the profile matches no entry in it and is laid
# out as without a profile. Takes ~8 minutes on 2 cores. Needs what `make release azurite` needs.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "pgo-profile: $*" >&2; exit 1; }

sysroot=$(rustc --print sysroot)
host=$(rustc -vV | sed -n 's/^host: //p')
profdata=$sysroot/lib/rustlib/$host/bin/llvm-profdata
if [ ! -x "$profdata" ]; then
    rustup component add llvm-tools || die "cannot add the rustup component llvm-tools (llvm-profdata)"
fi
[ -x "$profdata" ] || die "$profdata not found after adding llvm-tools"

work=$(mktemp -d /tmp/kevents-pgo.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/raw"

# The instrumented build goes to its own target directory: it must not replace target/static.
CARGO_TARGET_DIR=target/pgo-generate KEVENTS_PGO_GENERATE=$work/raw \
    scripts/static-build.sh --arch amd64 --out "$work/kevents"
cargo build --locked --release -p kevents-lab --bin kevents-lab
scripts/azurite.sh

# Each replica writes its counters at exit (SIGTERM; a replica killed with SIGKILL writes none).
export LLVM_PROFILE_FILE=$work/raw/kevents-%p.profraw
KEVENTS_BIN=$work/kevents ./target/release/kevents-lab bench capture --rates 50,500,2000 \
    --duration 20s --idle 5s --workdir "$work/bench"
./target/release/kevents-lab drill handover --runs 1 --nodes 2 --attr-timeout 30 \
    --sink adx-queued --kevents "$work/kevents" --workdir "$work/drill"

shopt -s nullglob
raw=("$work"/raw/*.profraw)
[ ${#raw[@]} -gt 0 ] || die "the instrumented replicas wrote no profile into $work/raw"
"$profdata" merge --output "$work/kevents.profdata" "${raw[@]}"
mkdir -p pgo
gzip -9 -n -c "$work/kevents.profdata" > pgo/kevents-amd64.profdata.gz
echo "pgo-profile: pgo/kevents-amd64.profdata.gz ($(du -h pgo/kevents-amd64.profdata.gz | cut -f1)) from ${#raw[@]} replica runs"
