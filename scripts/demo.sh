#!/usr/bin/env bash
# The end-to-end demo: headend -> virtual card on the real pcscd -> receiver
# -> clear video you can play.
#
#   scripts/demo.sh [WORK_DIR]        (default: ./demo-out)
#
# On a Debian machine, as root (or with sudo), it:
#   1. installs what is missing: pcscd, libpcsclite-dev and vsmartcard-vpcd
#      (through scripts/ensure-pcscd.sh, which also starts pcscd), ffmpeg,
#      a C compiler and pkg-config; Rust 1.82 or newer from apt if apt has
#      one (otherwise it asks you to install it with rustup);
#   2. builds the workspace (cargo build --release --bins --locked);
#   3. makes a 10 s clear test stream with ffmpeg;
#   4. creates a headend (headend init) and starts its daemon;
#   5. adds a product and a channel through the headend CLI: the daemon
#      puts it on the air at once (no restart: channels change live);
#   6. plugs a virtual card into pcscd (smartcard emulate), personalizes it
#      and registers it with the headend (smartcard provision --register),
#      and subscribes it to the product;
#   7. a receiver tunes in to the channel on the air and its card picks up
#      its subscription from the air (an EMM); 3 s of the scrambled
#      broadcast are captured on the way;
#   8. shows that the capture is scrambled and that ffprobe cannot decode it;
#   9. runs the receiver with the card, and moves the channel, live
#      (headend channel update), to the receiver's port and to one pass of
#      the stream from its start: the receiver writes it as clear TS; then
#      removes the channel (headend channel remove), off the air at once;
#  10. has ffprobe count the frames of the clear output, and says how to
#      watch it (ffplay).
#
# Everything it starts is stopped when it exits, on failure or Ctrl-C too.
# WORK_DIR is created; if it exists, it must be empty or a previous demo's
# (it is then wiped). Nothing outside it is written, apart from what apt
# installs, pcscd's log, cargo's target folder and the vpcd slot's lock
# file in /tmp (the one the tests take).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK_ARG="${1:-./demo-out}"
SECONDS_OF_VIDEO=10
CARD_ID=1000
PRODUCT=premium
MARKER=.iodoform-demo

TTY=0
[ -t 1 ] && TTY=1
step_no=0
step() {
    step_no=$((step_no + 1))
    if [ "$TTY" = 1 ]; then
        printf '\n\033[1m== %d. %s\033[0m\n' "$step_no" "$*"
    else
        printf '\n== %d. %s\n' "$step_no" "$*"
    fi
}
say() { echo "   $*"; }
die() {
    echo "demo: error: $*" >&2
    exit 1
}

# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q || die "apt-get update failed"
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" ||
        die "apt-get install $* failed"
}

case "$WORK_ARG" in
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
        exit 0
        ;;
esac

# ---------------------------------------------------------------- clean-up

PIDS=()
cleanup() {
    local status=$? i
    trap - EXIT INT TERM
    # Last started, first stopped: receiver, daemon, then the card.
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        terminate "${PIDS[i]}" 50
    done
    if [ "$status" != 0 ] && [ -n "${WORK_READY:-}" ]; then
        echo >&2
        echo "demo: FAILED (exit $status). Logs are in $WORK_ARG/*.log" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# SIGTERM to PID, then SIGKILL if it still runs after TRIES tenths of a
# second; reaps it.
terminate() {
    local pid="$1" tries="$2"
    kill -TERM "$pid" 2> /dev/null || return 0
    for _ in $(seq "$tries"); do
        kill -0 "$pid" 2> /dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2> /dev/null || true
    wait "$pid" 2> /dev/null || true
}

# Starts a command in the background, logging to a file; its pid in $!.
background() {
    local log="$1"
    shift
    "$@" < /dev/null > "$log" 2>&1 &
    PIDS+=("$!")
}

# Stops one background process (SIGTERM) and waits for it.
stop_pid() {
    local pid="$1" i
    terminate "$pid" 100
    local kept=()
    for i in "${PIDS[@]}"; do
        [ "$i" = "$pid" ] || kept+=("$i")
    done
    PIDS=("${kept[@]}")
}

# Whether something listens on a TCP port, or has bound a UDP port.
port_used() {
    local hex files
    hex="$(printf '%04X' "$2")"
    if [ "$1" = tcp ]; then files=(/proc/net/tcp /proc/net/tcp6); else files=(/proc/net/udp /proc/net/udp6); fi
    cat "${files[@]}" 2> /dev/null |
        awk -v p=":$hex" -v tcp="$1" 'substr($2, length($2) - 4) == p && (tcp != "tcp" || $4 == "0A") { f = 1 } END { exit !f }'
}

free_port() {
    local kind="$1" port="$2"
    while port_used "$kind" "$port"; do
        port=$((port + 1))
    done
    echo "$port"
}

# Waits until a file contains a string; fails after a timeout, or at once
# if the process is gone.
wait_for_log() {
    local file="$1" text="$2" pid="$3" secs="$4" what="$5"
    local deadline=$((SECONDS + secs))
    until grep -q -- "$text" "$file" 2> /dev/null; do
        kill -0 "$pid" 2> /dev/null || {
            tail -n 20 "$file" >&2
            die "$what exited"
        }
        [ "$SECONDS" -lt "$deadline" ] || {
            tail -n 20 "$file" >&2
            die "$what: timed out after ${secs}s"
        }
        sleep 0.1
    done
}

frames() {
    ffprobe -v error -count_frames -select_streams v:0 \
        -show_entries stream=nb_read_frames -of csv=p=0 "$1" 2> "$2" |
        awk -F, '$1 ~ /^[0-9]+$/ { print $1; exit }'
}

# The work folder: new, empty, or a previous demo's.
case "$WORK_ARG" in /*) WORK="$WORK_ARG" ;; *) WORK="$PWD/$WORK_ARG" ;; esac
if [ -e "$WORK" ]; then
    if [ -f "$WORK/$MARKER" ]; then
        rm -rf -- "$WORK"
    elif [ -d "$WORK" ] && [ -z "$(ls -A "$WORK")" ]; then
        :
    else
        die "$WORK_ARG exists and was not made by this demo: remove it or give another folder"
    fi
fi
mkdir -p "$WORK"
touch "$WORK/$MARKER"
WORK="$(cd "$WORK" && pwd)"
WORK_READY=1

# ------------------------------------------------------------ 1. install

step "Installing what is missing"
"$ROOT/scripts/ensure-pcscd.sh" | sed 's/^/   /'
need=()
command -v ffmpeg > /dev/null && command -v ffprobe > /dev/null || need+=(ffmpeg)
command -v cc > /dev/null || need+=(gcc libc6-dev)
command -v pkg-config > /dev/null || need+=(pkg-config)
command -v flock > /dev/null || need+=(util-linux)
command -v perl > /dev/null || need+=(perl-base)
if [ "${#need[@]}" -gt 0 ]; then
    say "installing ${need[*]}"
    apt_install "${need[@]}"
fi
[ -x "${HOME:-/root}/.cargo/bin/cargo" ] && PATH="${HOME:-/root}/.cargo/bin:$PATH"
rust_ok() {
    local v
    v="$(rustc --version 2> /dev/null | awk '{print $2}')" || return 1
    [ -n "$v" ] && command -v cargo > /dev/null &&
        [ "$(printf '%s\n1.82.0\n' "$v" | sort -V | head -n 1)" = 1.82.0 ]
}
if ! rust_ok; then
    candidate="$(apt-cache policy rustc 2> /dev/null | awk '/Candidate:/ {print $2}' | sed 's/[+~-].*//')"
    if [ -n "$candidate" ] && [ "$(printf '%s\n1.82.0\n' "$candidate" | sort -V | head -n 1)" = 1.82.0 ]; then
        say "installing Rust $candidate (cargo, rustc) from apt"
        apt_install cargo rustc
    fi
    rust_ok || die "Rust 1.82 or newer is needed and apt does not have it: install it with rustup (https://rustup.rs), then run this again"
fi
say "ffmpeg, pcscd with vpcd, $(rustc --version) ready"

# --------------------------------------------------------------- 2. build

step "Building (cargo build --release --bins --locked)"
(cd "$ROOT" && cargo build --release --bins --locked 2>&1 | tail -n 3 | sed 's/^/   /')
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
for b in headend smartcard receiver; do
    [ -x "$BIN/$b" ] || die "$BIN/$b was not built"
done
headend() { "$BIN/headend" "$@" --config "$H/headend.toml"; }

# -------------------------------------------------------------- 3. source

step "Making a ${SECONDS_OF_VIDEO} s clear test stream with ffmpeg ($WORK_ARG/source.ts)"
ffmpeg -nostdin -loglevel error -y \
    -f lavfi -i testsrc=size=640x360:rate=25 -f lavfi -i sine=frequency=1000 \
    -t "$SECONDS_OF_VIDEO" -c:v libx264 -preset ultrafast -c:a aac \
    -f mpegts "$WORK/source.ts" || die "ffmpeg could not make the test stream"
source_frames="$(frames "$WORK/source.ts" /dev/null)"
say "$(stat -c %s "$WORK/source.ts") bytes, $source_frames video frames (H.264 test pattern, AAC 1 kHz tone)"

# ------------------------------------------------------------- 4. headend

H="$WORK/headend"
API_PORT="$(free_port tcp 7480)"
AIR_PORT="$(free_port udp 5000)"
step "Creating a headend (headend init) and starting its daemon (headend run)"
"$BIN/headend" init --dir "$H" --listen "127.0.0.1:$API_PORT" \
    --crypto-period-ms 2000 --emm-cycle-ms 1000 | sed 's/^/   /'
background "$WORK/headend-run.log" env RUST_LOG=info "$BIN/headend" run --config "$H/headend.toml"
HEADEND_PID=$!
deadline=$((SECONDS + 20))
until headend status > /dev/null 2>&1; do
    kill -0 "$HEADEND_PID" 2> /dev/null || {
        tail -n 20 "$WORK/headend-run.log" >&2
        die "headend run exited"
    }
    [ "$SECONDS" -lt "$deadline" ] || die "headend run did not answer within 20 s"
    sleep 0.1
done
say "admin API on 127.0.0.1:$API_PORT, 2 s crypto periods (log: $WORK_ARG/headend-run.log)"

# Waits until `headend status` shows the channel in a state.
wait_channel_state() {
    local want="$1" secs="$2" deadline=$((SECONDS + $2)) st
    while :; do
        st="$(headend status --json 2> /dev/null)" || st=
        grep -q "\"state\": \"$want\"" <<< "$st" && break
        kill -0 "$HEADEND_PID" 2> /dev/null || die "headend run exited"
        [ "$SECONDS" -lt "$deadline" ] || {
            headend status >&2 || true
            die "the channel is not $want after ${secs}s"
        }
        sleep 0.1
    done
}

# ------------------------------------------------------ 5. product, channel

step "Adding product '$PRODUCT' and channel 'demo' (headend product add, headend channel add)"
headend product add "$PRODUCT" | sed 's/^/   /'
# The source again and again, as a live encoder would send it. The daemon
# puts the channel on the air at once: no restart.
headend channel add --name demo --service-id 1 --product "$PRODUCT" \
    --ecm-pid 0x1F0 --emm-pid 0x1F1 \
    --input "$WORK/source.ts?loop" --output "udp://127.0.0.1:$AIR_PORT" | sed 's/^/   /'
wait_channel_state on_air 5
say "on the air at once, scrambled, on udp://127.0.0.1:$AIR_PORT (headend status: on_air)"

# ---------------------------------------------------------------- 6. card

step "A virtual card in pcscd's vpcd reader (smartcard emulate), provisioned and subscribed"
# A vpcd slot, with the lock the test suite takes, held until exit.
READER=
for slot in "35963:Virtual PCD 00 00" "35964:Virtual PCD 00 01"; do
    port="${slot%%:*}"
    exec {lockfd}> "/tmp/iodoform-vpcd-$port.lock"
    if flock -n "$lockfd"; then
        READER="${slot#*:}"
        VPCD_PORT="$port"
        break
    fi
    exec {lockfd}>&-
done
[ -n "$READER" ] || die "both vpcd slots are in use (tests running?); try again later"
background "$WORK/card.log" env RUST_LOG=info "$BIN/smartcard" emulate \
    --state "$WORK/card.img" --vpcd "127.0.0.1:$VPCD_PORT"
CARD_PID=$!
deadline=$((SECONDS + 15))
card_seen() {
    local readers
    readers="$("$BIN/smartcard" readers 2>&1)" || return 1
    printf '%s\n' "$readers" | grep -F "$READER" | grep -q $'\tcard'
}
until card_seen; do
    kill -0 "$CARD_PID" 2> /dev/null || {
        cat "$WORK/card.log" >&2
        die "smartcard emulate exited"
    }
    [ "$SECONDS" -lt "$deadline" ] || {
        "$BIN/smartcard" readers >&2 || true
        die "pcscd does not see the virtual card in '$READER'"
    }
    sleep 0.2
done
say "card in reader '$READER' (state: $WORK_ARG/card.img)"
"$BIN/smartcard" provision --operator "$H/operator.json" --card-id "$CARD_ID" \
    --reader "$READER" --out "$WORK/card.json" \
    --register "http://127.0.0.1:$API_PORT" --token-file "$H/admin.token" ||
    die "smartcard provision failed"
say "card $CARD_ID personalized (its key pair made inside it), locked and registered ($WORK_ARG/card.json)"
until_date="$(date -u -d '+30 days' +%F)"
headend subscribe "$CARD_ID" "$PRODUCT" --until "$until_date" | sed 's/^/   /'

# ------------------------------------------------------ 7. on the air

step "On the air: a box tunes in"
# A tap on the air, as any box on the network sees it: it keeps the first
# 3 s raw in scrambled.ts and passes everything on to the receiver.
TAP_PORT="$(free_port udp $((AIR_PORT + 1)))"
background "$WORK/tap.log" perl -MIO::Socket::INET -MSocket -e '
    my ($port, $to, $file, $secs) = @ARGV;
    my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1:$port", Proto => "udp")
        or die "cannot listen on UDP port $port: $!\n";
    my $dest = sockaddr_in($to, inet_aton("127.0.0.1"));
    open(my $f, ">:raw", $file) or die "$file: $!\n";
    my $end;
    while (defined($s->recv(my $b, 65536))) {
        $end //= time + $secs;
        if ($f && time < $end) { print $f $b } elsif ($f) { close($f); undef $f }
        send($s, $b, 0, $dest);
    }' "$AIR_PORT" "$TAP_PORT" "$WORK/scrambled.ts" 3
TAP_PID=$!
say "udp://127.0.0.1:$AIR_PORT carries the scrambled channel: $WORK_ARG/source.ts again and again"
RECEIVER=("$BIN/receiver" --reader "$READER" --identity "$WORK/receiver.key"
    --entitlement-wait 30 -q)
background "$WORK/receiver-tune-in.log" env RUST_LOG=receiver=debug \
    "${RECEIVER[@]}" -i "udp://127.0.0.1:$TAP_PORT" -o /dev/null
TUNE_PID=$!
# The card's first ECM is refused until the EMM with its subscription
# comes by on the air's carousel.
wait_for_log "$WORK/receiver-tune-in.log" "ECM answered" "$TUNE_PID" 9 \
    "the receiver (waiting for the card to release control words)"
say "the card got its subscription from the air (an EMM) and releases control words"
sleep 3
stop_pid "$TUNE_PID"
stop_pid "$TAP_PID"

step "The scrambled broadcast ($WORK_ARG/scrambled.ts, 3 s)"
read -r total es scrambled < <(perl -e '
    local $/ = \188; my ($t, $e, $s) = (0, 0, 0);
    while (my $p = <STDIN>) {
        next unless length($p) == 188 && ord($p) == 0x47; $t++;
        my $pid = ((ord(substr($p, 1)) & 0x1F) << 8) | ord(substr($p, 2));
        next unless $pid == 0x100 || $pid == 0x101; $e++;
        $s++ if ord(substr($p, 3)) & 0xC0;
    }
    print "$t $e $s\n";' < "$WORK/scrambled.ts")
say "$total packets: $scrambled of its $es audio and video packets are scrambled (DVB-CISSA)"
[ "$es" -gt 0 ] && [ "$scrambled" = "$es" ] || die "the broadcast carries clear audio or video"
scrambled_frames="$(frames "$WORK/scrambled.ts" "$WORK/ffprobe-scrambled.txt")"
say "ffprobe decodes ${scrambled_frames:-0} video frames from it$([ -s "$WORK/ffprobe-scrambled.txt" ] && echo ", with $(wc -l < "$WORK/ffprobe-scrambled.txt") lines of errors")"
[ "${scrambled_frames:-0}" = 0 ] || [ -s "$WORK/ffprobe-scrambled.txt" ] ||
    die "ffprobe decoded the scrambled broadcast without an error"

# -------------------------------------------------------------- 8. receive

RX_PORT="$(free_port udp $((TAP_PORT + 1)))"
step "Receiving: receiver -i udp://127.0.0.1:$RX_PORT -o $WORK_ARG/clear.ts --reader '$READER'"
# Once the receiver listens, the channel is moved to its port, live, and to
# one pass of the source: the whole pass comes out clear, from its first
# picture to its last.
background "$WORK/receiver.log" env RUST_LOG=receiver=info "${RECEIVER[@]}" \
    -i "udp://127.0.0.1:$RX_PORT" -o "$WORK/clear.ts" --stats-json "$WORK/receiver-stats.json"
RECEIVER_PID=$!
wait_for_log "$WORK/receiver.log" "card session established" "$RECEIVER_PID" 20 "the receiver"
say "receiver listening, card session up; the channel moves to its port and plays the source once, from the top:"
headend channel update demo --input "$WORK/source.ts" --output "udp://127.0.0.1:$RX_PORT" |
    sed 's/^/   /'
started=$SECONDS
last=-1
quiet=0
while :; do
    sleep 0.5
    size="$(stat -c %s "$WORK/clear.ts" 2> /dev/null || echo 0)"
    if [ "$TTY" = 1 ]; then
        printf '\r   receiving... %3d s, %8d bytes of clear TS ' "$((SECONDS - started))" "$size"
    elif [ "$size" != "$last" ] && [ $((SECONDS - started)) -ge "${next_note:-0}" ]; then
        next_note=$((SECONDS - started + 2))
        printf '   receiving... %3d s, %8d bytes of clear TS\n' "$((SECONDS - started))" "$size"
    fi
    if [ "$size" -gt 0 ] && [ "$size" = "$last" ]; then
        quiet=$((quiet + 1))
        [ "$quiet" -ge 3 ] && break
    else
        quiet=0
    fi
    last="$size"
    kill -0 "$RECEIVER_PID" 2> /dev/null || {
        echo
        tail -n 5 "$WORK/receiver.log" >&2
        die "the receiver exited"
    }
    [ $((SECONDS - started)) -lt $((SECONDS_OF_VIDEO + 15)) ] || {
        echo
        die "the broadcast did not end"
    }
done
[ "$TTY" = 0 ] || echo
stop_pid "$RECEIVER_PID"
wait_channel_state ended 5
headend channel remove demo | sed 's/^/   /'
grep '^receiver: ' "$WORK/receiver.log" | sed 's/^/   /'
[ -s "$WORK/clear.ts" ] || die "the receiver wrote nothing"

# --------------------------------------------------------------- results

step "Result"
clear_frames="$(frames "$WORK/clear.ts" "$WORK/ffprobe-clear.txt")"
if [ -s "$WORK/ffprobe-clear.txt" ]; then
    head -n 5 "$WORK/ffprobe-clear.txt" | sed 's/^/   ffprobe: /'
    die "ffprobe reported errors in the clear output ($WORK_ARG/ffprobe-clear.txt)"
fi
[ "${clear_frames:-0}" -gt 0 ] || die "ffprobe found no video frame in the clear output"
say "clear output: $WORK_ARG/clear.ts, $(stat -c %s "$WORK/clear.ts") bytes"
say "ffprobe decodes $clear_frames video frames from it, with no error; the source has $source_frames"
say "scrambled capture: $WORK_ARG/scrambled.ts, ${scrambled_frames:-0} video frames decodable"
[ "$clear_frames" = "$source_frames" ] ||
    say "(not every frame came through: UDP on a busy machine may drop some; see $WORK_ARG/receiver.log)"
echo
echo "Watch it:  ffplay $WORK_ARG/clear.ts"
echo "Live, while a headend broadcasts:  receiver -i udp://127.0.0.1:PORT -o - | ffplay -"
