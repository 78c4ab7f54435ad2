#!/bin/sh
# Install AI Core from a dist tree (what `make dist` packs; this script sits at its top):
#   $PREFIX/bin/aicore                      0755
#   $PREFIX/lib/aicore/nats-server          0755
#   $PREFIX/share/aicore/ops/               dashboards and alert rules
#   $PREFIX/share/doc/aicore/               README, SECURITY, BENCHMARKS
#   /etc/systemd/system/aicore.service      0644, its paths rewritten to $PREFIX
#   /etc/sysusers.d/aicore.conf             0644, the `aicore` system user
#   /etc/aicore/aicore.toml                 0640, the example; an existing one is kept
# all under DESTDIR when given. Without DESTDIR, as root, it then creates the user
# (systemd-sysusers) and reloads systemd; it never enables or starts the service:
#   systemctl enable --now aicore
#
# Usage: install.sh [--destdir DIR] [--prefix DIR] [--from DIR]
set -eu

from=$(cd "$(dirname "$0")" && pwd)
destdir=""
prefix=/usr/local
while [ $# -gt 0 ]; do
    case "$1" in
        --destdir) destdir=$2; shift 2 ;;
        --prefix) prefix=$2; shift 2 ;;
        --from) from=$2; shift 2 ;;
        *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$prefix" in
    /*) ;;
    *) echo "install.sh: --prefix must be absolute, not $prefix" >&2; exit 2 ;;
esac
for f in bin/aicore lib/aicore/nats-server systemd/aicore.service systemd/aicore.sysusers \
    etc/aicore.toml; do
    [ -f "$from/$f" ] || { echo "install.sh: $from/$f is missing (not a dist tree?)" >&2; exit 1; }
done

root="$destdir"
install -d -m 0755 "$root$prefix/bin" "$root$prefix/lib/aicore" \
    "$root$prefix/share/aicore" "$root$prefix/share/doc/aicore" \
    "$root/etc/systemd/system" "$root/etc/sysusers.d"
install -m 0755 "$from/bin/aicore" "$root$prefix/bin/aicore"
install -m 0755 "$from/lib/aicore/nats-server" "$root$prefix/lib/aicore/nats-server"
if [ -d "$from/share/ops" ]; then
    rm -rf "$root$prefix/share/aicore/ops"
    cp -R "$from/share/ops" "$root$prefix/share/aicore/ops"
fi
for doc in "$from"/share/doc/*; do
    [ -f "$doc" ] && install -m 0644 "$doc" "$root$prefix/share/doc/aicore/"
done
# The unit names /usr/local; follow the prefix.
sed "s#/usr/local/#$prefix/#g" "$from/systemd/aicore.service" > "$root/etc/systemd/system/aicore.service.new"
chmod 0644 "$root/etc/systemd/system/aicore.service.new"
mv "$root/etc/systemd/system/aicore.service.new" "$root/etc/systemd/system/aicore.service"
install -m 0644 "$from/systemd/aicore.sysusers" "$root/etc/sysusers.d/aicore.conf"

if [ -z "$destdir" ] && [ "$(id -u)" = 0 ] && command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers /etc/sysusers.d/aicore.conf
fi
install -d -m 0750 "$root/etc/aicore"
if [ -e "$root/etc/aicore/aicore.toml" ]; then
    echo "keeping the existing /etc/aicore/aicore.toml" >&2
else
    install -m 0640 "$from/etc/aicore.toml" "$root/etc/aicore/aicore.toml"
fi
if [ -z "$destdir" ] && [ "$(id -u)" = 0 ]; then
    if getent group aicore >/dev/null 2>&1; then
        chgrp aicore /etc/aicore /etc/aicore/aicore.toml
    fi
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl daemon-reload
    fi
fi
echo "installed AI Core under ${destdir:-/} (prefix $prefix); start it with: systemctl enable --now aicore" >&2
