#!/bin/sh
# Runs a command with a throwaway, unlocked gnome-keyring (Secret Service) on the current D-Bus
# session bus. Use it inside a private session keyring and a private D-Bus session:
#
#   keyctl session - dbus-run-session -- scripts/with-keyrings.sh cargo nextest run -p mcp-auth-store-keyring
#
# Needs: apt-get install -y --no-install-recommends gnome-keyring keyutils
set -eu
if [ -z "${DBUS_SESSION_BUS_ADDRESS:-}" ]; then
    echo "with-keyrings.sh: no D-Bus session; run it under dbus-run-session (see the header)" >&2
    exit 2
fi
command -v gnome-keyring-daemon >/dev/null || {
    echo "with-keyrings.sh: gnome-keyring-daemon not found; apt-get install -y --no-install-recommends gnome-keyring keyutils" >&2
    exit 2
}
tmp=$(mktemp -d)
# HOME stays as it is: cargo and rustup live there.
export XDG_RUNTIME_DIR="$tmp/run" XDG_DATA_HOME="$tmp/data"
mkdir -p -m 700 "$XDG_RUNTIME_DIR" "$XDG_DATA_HOME"
eval "$(printf '%s' mcp-auth-test | gnome-keyring-daemon --unlock --components=secrets)"
export GNOME_KEYRING_CONTROL
export MCP_AUTH_TEST_KEYRINGS=1
exec "$@"
