#!/usr/bin/env bash
# Builds deskpool-vcsim (govmomi 0.24.2 simulator + deskpool extensions) and
# prints the absolute path of the binary as the only line on stdout.
#
# - cached at $REPO/.cache/vcsim/deskpool-vcsim-<sha256 of the .go sources>
# - installs golang-go and golang-github-vmware-govmomi-dev with apt-get when
#   missing (apt-get update only if the first install attempt fails)
# - builds offline in GOPATH mode, with one patched simulator file (see below)
# - safe to run concurrently (flock)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="$repo/.cache/vcsim"
gopath=/usr/share/gocode
govmomi="$gopath/src/github.com/vmware/govmomi"

mkdir -p "$cache"
hash="$(cd "$here" && sha256sum -- *.go build.sh | sha256sum | cut -c1-16)"
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

# govmomi 0.24.2's WaitForUpdatesEx only looks for updates on a hard-coded 250 ms tick "to
# let updates accumulate", so every task completion reaches a watcher 0-250 ms late. A real
# vCenter answers a waiting WaitForUpdatesEx as soon as a watched property changes. The patched
# copy (a `go build -overlay`, the Debian sources stay untouched) reads the tick from an
# exported variable that main.go sets from -update-tick.
pc_src="$govmomi/simulator/property_collector.go"
overlay="$cache/overlay-$hash"
mkdir -p "$overlay"
sed 's/time\.NewTicker(250 \* time\.Millisecond)/time.NewTicker(WaitForUpdatesTick)/' \
	"$pc_src" >"$overlay/property_collector.go"
if ! grep -q 'NewTicker(WaitForUpdatesTick)' "$overlay/property_collector.go"; then
	echo "build.sh: $pc_src does not have the 250 ms WaitForUpdatesEx tick this patch expects (govmomi 0.24.2)" >&2
	exit 1
fi
# It also re-collects every filter's whole state (a RetrieveProperties over, say, a container
# view of every VM) once per filter per pending update: an answer carrying U changes costs
# F x U full collects, so with a few hundred VMs a waiting watch is answered hundreds of ms
# late (a real vCenter sends the changes it has). The patch collects once per answer: that
# finds every object that entered a view; the changes themselves are matched as before.
perl -0pi -e '
	s{(\t\t\tfor _, f := range pc\.Filter \{\n\t\t\t\tfilter := ctx\.Session\.Get\(f\))}{\t\t\tif !apply() { // once per answer (deskpool patch)\n\t\t\t\treturn body\n\t\t\t}\n$1};
	s{case types\.ObjectUpdateKindEnter: // Create\n\t+if !apply\(\) \{\n\t+return body\n\t+\}\n}{case types.ObjectUpdateKindEnter: // Create: collected above\n};
	s{\t+if !apply\(\) \{ // An update may apply to collector traversal specs\n\t+return body\n\t+\}\n}{};
' "$overlay/property_collector.go"
if [[ "$(grep -c 'if !apply()' "$overlay/property_collector.go")" != 1 ]] || ! grep -q 'once per answer (deskpool patch)' "$overlay/property_collector.go"; then
	echo "build.sh: $pc_src does not have the per-update apply() of WaitForUpdatesEx this patch expects (govmomi 0.24.2)" >&2
	exit 1
fi
cat >>"$overlay/property_collector.go" <<'GO'

// WaitForUpdatesTick is how often WaitForUpdatesEx looks for updates (added by deskpool's
// tests/vcsim/build.sh; govmomi 0.24.2 hard-codes 250 ms).
var WaitForUpdatesTick = 250 * time.Millisecond
GO
printf '{"Replace":{"%s":"%s"}}\n' "$pc_src" "$overlay/property_collector.go" >"$overlay/overlay.json"

echo "build.sh: building $bin" >&2
tmp="$bin.tmp.$$"
trap 'rm -f "$tmp"' EXIT
(
	cd "$here"
	GOPATH="$gopath" GO111MODULE=off GOFLAGS= GOPROXY=off \
		GOCACHE="$cache/gocache" go build -trimpath -overlay "$overlay/overlay.json" -o "$tmp" . >&2
)
mv -f "$tmp" "$bin"
trap - EXIT

# Prune binaries of older source versions (not touched for a day).
find "$cache" -maxdepth 1 -name 'deskpool-vcsim-*' -type f -mtime +1 ! -path "$bin" -delete 2>/dev/null || true
find "$cache" -maxdepth 1 -name 'overlay-*' -type d -mtime +1 ! -path "$overlay" -exec rm -rf {} + 2>/dev/null || true

echo "$bin"
