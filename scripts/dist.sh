#!/bin/sh
# Build the release tarball of AI Core:
#   <out>/aicore-<version>-<arch>.tar.gz and its .sha256, holding one top directory with
#   bin/aicore                 the appliance (built by `make build`)
#   lib/aicore/nats-server     the pinned nats-server (`make tools`)
#   systemd/aicore.service     the unit (Type=notify, watchdog, hardening)
#   systemd/aicore.sysusers    its system user
#   etc/aicore.toml            the example configuration
#   share/ops/                 Grafana dashboards and Prometheus alert rules
#   share/doc/                 README.md, SECURITY.md, BENCHMARKS.md
#   install.sh                 installs all of the above (see its header)
#
# Usage: scripts/dist.sh [--bin PATH] [--nats PATH] [--out DIR] [--stage-only]
#   --stage-only   assemble the directory but pack no tarball (what `make install` uses)
# Prints the tarball's path (or with --stage-only the directory's) as the last line.
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
bin="$repo/target/release/aicore"
nats="$repo/.tools/nats/bin/nats-server"
out="$repo/dist"
pack=yes
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) bin=$2; shift 2 ;;
        --nats) nats=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --stage-only) pack=no; shift ;;
        *) echo "dist.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
for f in "$bin" "$nats"; do
    if [ ! -x "$f" ]; then
        echo "dist.sh: $f is missing or not executable (make build / make tools)" >&2
        exit 1
    fi
done

# `aicore --version` prints "aicore <version>".
version=$("$bin" --version | sed -n 's/^aicore \([0-9A-Za-z.+-]*\)$/\1/p')
[ -n "$version" ] || { echo "dist.sh: cannot read the version of $bin" >&2; exit 1; }
name="aicore-$version-$(uname -m)"
mkdir -p "$out"
out=$(cd "$out" && pwd)
stage="$out/$name"
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/lib/aicore" "$stage/systemd" "$stage/etc" \
    "$stage/share/doc"

install -m 0755 "$bin" "$stage/bin/aicore"
install -m 0755 "$nats" "$stage/lib/aicore/nats-server"
install -m 0644 "$repo/systemd/aicore.service" "$stage/systemd/aicore.service"
install -m 0644 "$repo/systemd/aicore.sysusers" "$stage/systemd/aicore.sysusers"
install -m 0644 "$repo/aicore.example.toml" "$stage/etc/aicore.toml"
for doc in README.md SECURITY.md BENCHMARKS.md; do
    install -m 0644 "$repo/$doc" "$stage/share/doc/$doc"
done
if [ -d "$repo/ops" ]; then
    cp -R "$repo/ops" "$stage/share/ops"
    find "$stage/share/ops" -type f -exec chmod 0644 {} +
fi
install -m 0755 "$repo/scripts/install.sh" "$stage/install.sh"

if [ "$pack" = no ]; then
    echo "$stage"
    exit 0
fi
tarball="$out/$name.tar.gz"
# Reproducible: sorted names, no owners, one fixed time (the last commit's, when known).
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)}
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
    -C "$out" -czf "$tarball" "$name"
(cd "$out" && sha256sum "$name.tar.gz" > "$name.tar.gz.sha256")
rm -rf "$stage"
echo "$tarball"
