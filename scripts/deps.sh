#!/bin/sh
# Installs what echokit needs to build, run and test on Debian 12, and only
# what is missing. Run as root (or with sudo available). `test` also installs
# the npm packages the suite drives echokit with (scripts/npm-deps.sh, into
# build/npm). `fuzz` adds clang and libFuzzer, which only `make fuzz` needs.
# Usage: scripts/deps.sh [build|test|fuzz]
set -eu

# lua-cjson: the JSON codec of the control API (--admin), -H http and -H debug,
# needed at run time.
build="gcc make cmake pkg-config liblua5.4-dev libev-dev lua-cjson libssl-dev"
# libpcap-dev: reads capture files (pcap, pcapng) back for -H replay and
# echokit replay
build="$build libpcap-dev"
# libssl-dev: OpenSSL 3, for TLS (listeners, upstreams, certificates made at
# run time, the decrypting debug proxy).
test="lua5.4 lua-busted openssl lua-socket bsdextrautils netcat-openbsd socat procps valgrind
      redis-server redis-tools curl python3
      wrk python3-websockets"
# wrk: the HTTP handler's load test (100 connections, zero errors);
# python3-websockets: the real WebSocket client the websocket handler is tested with
# the debugging proxy's pcap files are read back by tshark
test="$test tshark"
# tcpdump: replay_spec captures curl and http.server with it in a network namespace
test="$test tcpdump"
# prometheus (brings promtool): metrics_spec checks a scrape with `promtool check
# metrics` and has a real Prometheus scrape echokit and answer a query
test="$test prometheus"
# node + npm: the control API's spec drives it with toxiproxy's Node client
# (installed by scripts/npm-deps.sh). Checked by command, not package name: a
# Node.js from another source already brings npm, and Debian's npm would
# conflict with it.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  test="$test nodejs npm"
fi

# dnsmasq-base (dnsmasq without its system service) + dnsutils (dig): a real DNS
# server and client for udp_proxy_spec, which resolves through the UDP proxy
test="$test dnsmasq-base dnsutils"

# clang builds the harnesses with -fsanitize=fuzzer; libfuzzer-14-dev brings
# libFuzzer's main and libclang-rt-14-dev the sanitizer runtimes it links with.
fuzz="clang libfuzzer-14-dev libclang-rt-14-dev"

case "${1:-test}" in
  build) want="$build" ;;
  test)  want="$build $test" ;;
  fuzz)  want="$build $fuzz" ;;
  *) echo "usage: $0 [build|test|fuzz]" >&2; exit 2 ;;
esac

missing=""
for p in $want; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done

if [ -n "$missing" ]; then
  echo "deps: installing$missing" >&2
  if [ "$(id -u)" -eq 0 ]; then
    sudo=""
  elif command -v sudo >/dev/null 2>&1; then
    sudo="sudo"
  else
    echo "deps: missing$missing; run this script as root to install them" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  # shellcheck disable=SC2086
  $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# The control API's spec drives echokit with toxiproxy's Node client. It is
# installed here, at set-up time (npm-deps.sh bounds its own registry calls),
# not by the spec. Without a registry the spec fails unless ECHOKIT_SKIP_NPM=1
# says to skip it.
if [ "${1:-test}" = test ] && [ "${ECHOKIT_SKIP_NPM:-0}" != 1 ]; then
  cd "$(dirname "$0")/.."
  rc=0
  scripts/npm-deps.sh "${ECHOKIT_NPM_PREFIX:-build/npm}" || rc=$?
  if [ "$rc" -eq 3 ]; then
    echo "deps: toxiproxy-node-client not installed (no npm registry); the control API" \
         "spec will fail unless ECHOKIT_SKIP_NPM=1" >&2
  elif [ "$rc" -ne 0 ]; then
    exit "$rc"
  fi
fi
