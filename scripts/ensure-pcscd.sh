#!/usr/bin/env bash
# Makes sure the system's pcscd runs with the vsmartcard-vpcd reader driver,
# so that `smartcard emulate` can plug virtual cards into it. Idempotent:
# run it as often as you like; it only does what is missing.
#
#   1. installs pcscd, libpcsclite-dev and vsmartcard-vpcd if missing
#      (apt-get update first, only then);
#   2. adds two more vpcd readers ("Iodoform VPCD 00 00" on port 35965,
#      "Iodoform VPCD 00 01" on 35966) to the stock two ("Virtual PCD 00 00"
#      on 35963, "Virtual PCD 00 01" on 35964): the tests take a slot each
#      and some need three cards at once;
#   3. starts pcscd if it is not running. There is no systemd in CI or in
#      containers, so it runs `pcscd --foreground` detached with setsid,
#      logging to $PCSCD_LOG (default /var/log/pcscd-iodoform.log);
#   4. waits until every vpcd reader listens for its card.
#
# Needs root for steps 1 to 3 (it uses sudo -n when not root); step 4 alone
# needs nothing. Exits non-zero with a message saying what failed.
set -euo pipefail

# pkg-config: the pcsc crate finds libpcsclite through it at build time.
PACKAGES=(pcscd libpcsclite-dev vsmartcard-vpcd pkg-config)
LOG="${PCSCD_LOG:-/var/log/pcscd-iodoform.log}"
WAIT_SECONDS="${PCSCD_WAIT_SECONDS:-15}"
EXTRA_CONF=/etc/reader.conf.d/iodoform-vpcd
VPCD_LIB=/usr/lib/pcsc/drivers/serial/libifdvpcd.so
PIDFILE=/run/pcscd/pcscd.pid

for arg in "$@"; do
    case "$arg" in
        -h | --help)
            sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "ensure-pcscd: unknown argument $arg (try --help)" >&2
            exit 64
            ;;
    esac
done

say() { echo "ensure-pcscd: $*"; }
die() {
    echo "ensure-pcscd: error: $*" >&2
    exit 1
}

# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

installed() {
    dpkg-query -W -f='${Status}' "$1" 2> /dev/null | grep -q 'install ok installed'
}

# The pid of the running pcscd, from its pid file, if it is alive.
pcscd_pid() {
    local pid
    [ -r "$PIDFILE" ] || return 1
    pid="$(tr -dc '0-9' < "$PIDFILE")"
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
    [ "$(cat "/proc/$pid/comm")" = pcscd ] || return 1
    echo "$pid"
}

# Whether something listens on a TCP port on this machine (IPv4 or IPv6).
listening() {
    local hex
    hex="$(printf '%04X' "$1")"
    cat /proc/net/tcp /proc/net/tcp6 2> /dev/null |
        awk -v p=":$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { found = 1 } END { exit !found }'
}

show_log() {
    if [ -r "$LOG" ]; then
        echo "--- last lines of $LOG ---" >&2
        tail -n 20 "$LOG" >&2
    fi
}

# 1. Packages.
missing=()
for p in "${PACKAGES[@]}"; do
    installed "$p" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q ||
        die "apt-get update failed"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${PACKAGES[@]}" ||
        die "apt-get install ${PACKAGES[*]} failed"
fi
[ -e "$VPCD_LIB" ] || die "$VPCD_LIB is missing: reinstall vsmartcard-vpcd"
[ -e /etc/reader.conf.d/vpcd ] ||
    die "/etc/reader.conf.d/vpcd is missing: reinstall vsmartcard-vpcd (apt-get install --reinstall -o Dpkg::Options::=--force-confmiss vsmartcard-vpcd)"

# 2. Two more slots. The vpcd driver keeps its connections in one table
# indexed by slot number, shared by every reader entry that loads the same
# library: a second entry on the stock library would take over the stock
# readers' slots. So the extra entry loads its own copy of the driver
# (another path is another instance for the dynamic loader).
ports=(35963 35964 35965 35966)
config_changed=0
EXTRA_LIB="$(dirname "$VPCD_LIB")/libifdvpcd-iodoform.so"
if ! cmp -s "$(readlink -f "$VPCD_LIB")" "$EXTRA_LIB"; then
    say "copying the vpcd driver for the extra slots ($EXTRA_LIB)"
    as_root cp "$(readlink -f "$VPCD_LIB")" "$EXTRA_LIB"
    config_changed=1
fi
want="$(
    cat << EOF
# Added by Iodoform's scripts/ensure-pcscd.sh: two more virtual readers,
# "Iodoform VPCD 00 00" on port 35965 and "Iodoform VPCD 00 01" on 35966,
# served by their own copy of the vpcd driver.
FRIENDLYNAME "Iodoform VPCD"
DEVICENAME   /dev/null:0x8C7D
LIBPATH      $EXTRA_LIB
CHANNELID    0x8C7D
EOF
)"
# Compared without comments, so that a file an older version wrote (same
# readers, other comments) does not restart pcscd.
settings() { grep -v '^#' || true; }
installed_settings() {
    if [ -r "$EXTRA_CONF" ]; then settings < "$EXTRA_CONF"; fi
}
if [ "$(installed_settings)" != "$(settings <<< "$want")" ]; then
    say "adding vpcd slots on ports 35965 and 35966 ($EXTRA_CONF)"
    printf '%s\n' "$want" | as_root tee "$EXTRA_CONF" > /dev/null
    config_changed=1
fi

all_listening() {
    local port
    for port in "${ports[@]}"; do
        listening "$port" || return 1
    done
}

# 3. pcscd.
start_pcscd() {
    # A pid file or socket left by a pcscd that died would stop the new one.
    if ! pcscd_pid > /dev/null; then
        as_root rm -f "$PIDFILE" /run/pcscd/pcscd.comm
    fi
    as_root mkdir -p "$(dirname "$LOG")"
    say "starting pcscd (log: $LOG)"
    # Detached from this shell and its output, so that it outlives the
    # script and never holds a CI log pipe open.
    as_root sh -c 'echo "=== $(date -u +%FT%TZ) pcscd started by ensure-pcscd.sh" >> "$1";
        setsid pcscd --foreground --info < /dev/null >> "$1" 2>&1 &' sh "$LOG"
}

stop_pcscd() {
    local pid i
    pid="$(pcscd_pid)" || return 0
    say "restarting pcscd (pid $pid) to load the reader configuration"
    as_root kill "$pid"
    for i in $(seq 50); do
        [ -d "/proc/$pid" ] || return 0
        sleep 0.1
    done
    die "pcscd (pid $pid) did not stop"
}

if pid="$(pcscd_pid)"; then
    # Running, but started before a reader configuration it lacks.
    if [ "$config_changed" = 1 ] || ! all_listening; then
        sleep 0.5
        if [ "$config_changed" = 1 ] || ! all_listening; then
            stop_pcscd
            start_pcscd
        fi
    fi
else
    start_pcscd
fi

# 4. Wait for the readers.
deadline=$((SECONDS + WAIT_SECONDS))
while :; do
    if pcscd_pid > /dev/null && [ -S /run/pcscd/pcscd.comm ] && all_listening; then
        break
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        pcscd_pid > /dev/null || echo "ensure-pcscd: pcscd is not running" >&2
        for port in "${ports[@]}"; do
            listening "$port" || echo "ensure-pcscd: no vpcd reader listens on port $port" >&2
        done
        show_log
        die "pcscd with vpcd readers did not come up within ${WAIT_SECONDS}s"
    fi
    sleep 0.1
done
say "pcscd is running (pid $(pcscd_pid)); vpcd readers wait for cards on ports ${ports[*]}"
