#!/usr/bin/env bash
# Installs the pinned Azurite (the real Azure Storage emulator, from npm) into the project-local,
# git-ignored .tools/azurite, which the ADX emulator's tests and `kevents-lab adx` start from.
# Idempotent: does nothing when the pinned version is already there.
#
#   scripts/azurite.sh            install (or check) the pinned version
#   scripts/azurite.sh --path     print the azurite executable's path
set -euo pipefail

AZURITE_VERSION="${AZURITE_VERSION:-3.37.0}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX="${ROOT}/.tools/azurite"
BIN="${PREFIX}/node_modules/.bin/azurite"

if [[ "${1:-}" == "--path" ]]; then
    echo "${BIN}"
    exit 0
fi

command -v node >/dev/null || { echo "azurite.sh: node is required (Node.js >= 18)" >&2; exit 1; }
command -v npm >/dev/null || { echo "azurite.sh: npm is required" >&2; exit 1; }

installed=""
if [[ -f "${PREFIX}/node_modules/azurite/package.json" ]]; then
    installed="$(node -p "require('${PREFIX}/node_modules/azurite/package.json').version")"
fi
if [[ "${installed}" == "${AZURITE_VERSION}" && -x "${BIN}" ]]; then
    echo "azurite ${AZURITE_VERSION} already installed in ${PREFIX}"
    exit 0
fi

mkdir -p "${PREFIX}"
echo "installing azurite ${AZURITE_VERSION} into ${PREFIX}"
npm install --prefix "${PREFIX}" --no-audit --no-fund --loglevel=error --save-exact "azurite@${AZURITE_VERSION}"
"${BIN}" --version >/dev/null
echo "azurite ${AZURITE_VERSION} installed: ${BIN}"
