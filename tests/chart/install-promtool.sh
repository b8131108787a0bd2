#!/bin/sh
# Puts promtool (Prometheus' rule checker, for the PrometheusRule's unit tests) at $1, the chart
# tests' .venv/bin/promtool. Uses a promtool already on PATH; otherwise extracts only the promtool
# binary from Debian's `prometheus` package (`apt-get download`, no install: nothing lands
# outside .venv and no Prometheus server is set up or started). On a fresh machine whose package
# lists are empty it runs `apt-get update` first, which needs root (as CI runs).
set -eu
# Absolute: the download happens in a temporary directory.
dest=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
if command -v promtool >/dev/null 2>&1; then
	ln -sf "$(command -v promtool)" "$dest"
	exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "promtool not found: install Prometheus' promtool (Debian/Ubuntu: apt-get install prometheus; macOS: brew install prometheus) or put it on PATH" >&2
	exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
if ! apt-get download prometheus >/dev/null 2>&1; then
	apt-get update -qq
	apt-get download prometheus >/dev/null
fi
dpkg-deb --fsys-tarfile prometheus_*.deb | tar -xO ./usr/bin/promtool >"$dest.tmp"
chmod 0755 "$dest.tmp"
mv "$dest.tmp" "$dest"
"$dest" --version | head -n 1
