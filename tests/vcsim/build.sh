#!/usr/bin/env bash
# Builds deskpool-vcsim (govmomi 0.24.2 simulator + deskpool extensions) and
# prints the absolute path of the binary as the only line on stdout.
#
# - cached at $REPO/.cache/vcsim/deskpool-vcsim-<sha256 of the .go sources>
# - installs golang-go and golang-github-vmware-govmomi-dev with apt-get when
#   missing (apt-get update only if the first install attempt fails)
# - builds offline in GOPATH mode
# - safe to run concurrently (flock)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="$repo/.cache/vcsim"
gopath=/usr/share/gocode
govmomi="$gopath/src/github.com/vmware/govmomi"

mkdir -p "$cache"
hash="$(cd "$here" && sha256sum -- *.go | sha256sum | cut -c1-16)"
bin="$cache/deskpool-vcsim-$hash"

# Fast path: already built.
if [[ -x "$bin" ]]; then
	echo "$bin"
	exit 0
fi

exec 9>"$cache/.lock"
flock 9
if [[ -x "$bin" ]]; then # built by another process while we waited
	echo "$bin"
	exit 0
fi

if ! command -v go >/dev/null 2>&1 || [[ ! -d "$govmomi/simulator" ]]; then
	pkgs=(golang-go golang-github-vmware-govmomi-dev)
	sudo=()
	if [[ "$(id -u)" != 0 ]]; then
		command -v sudo >/dev/null 2>&1 || {
			echo "build.sh: need ${pkgs[*]} (not root, no sudo)" >&2
			exit 1
		}
		sudo=(sudo -n)
	fi
	echo "build.sh: installing ${pkgs[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends "${pkgs[@]}" >&2; then
		"${sudo[@]}" apt-get update -q >&2
		"${sudo[@]}" apt-get install -y -q --no-install-recommends "${pkgs[@]}" >&2
	fi
fi

echo "build.sh: building $bin" >&2
tmp="$bin.tmp.$$"
trap 'rm -f "$tmp"' EXIT
(
	cd "$here"
	GOPATH="$gopath" GO111MODULE=off GOFLAGS= GOPROXY=off \
		GOCACHE="$cache/gocache" go build -trimpath -o "$tmp" . >&2
)
mv -f "$tmp" "$bin"
trap - EXIT

# Prune binaries of older source versions (not touched for a day).
find "$cache" -maxdepth 1 -name 'deskpool-vcsim-*' -type f -mtime +1 ! -path "$bin" -delete 2>/dev/null || true

echo "$bin"
