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
#   3. makes a 10 s clear test stream with ffmpeg (a key frame a second);
#   4. creates a headend (headend init) and starts its daemon;
#   5. adds a product and a channel through the headend CLI: the daemon
#      puts it on the air at once (no restart: channels change live);
#   6. plugs two virtual cards into pcscd's first two vpcd readers
#      (smartcard emulate), personalizes them and registers them with the
#      headend (smartcard provision --register), and subscribes them to
#      the product;
#   7. a receiver tunes in to the channel on the air and the first card
#      picks up its subscription from the air (an EMM); 3 s of the
#      scrambled broadcast are captured on the way;
#   8. shows that the capture is scrambled and that ffprobe cannot decode it;
#   9. runs the receiver with the card, and moves the channel, live
#      (headend channel update), to the receiver's port and to one pass of
#      the stream from its start: the receiver writes it as clear TS; then
#      removes the channel (headend channel remove), off the air at once;
#  10. has ffprobe count the frames of the clear output;
#  11. puts a live channel on the air (the stream again and again) and
#      plays it on two receivers at once, one per card, each to its own
#      clear TS;
#  12. revokes the second card, live (headend card revoke), and shows,
#      one line a step with its time since the revocation, the product
#      key's renewal (delivered to the card still subscribed, then the
#      ECMs switch to it), the revoked card's receiver stopping with its
#      message, and the other one still playing;
#  13. saves a frame of each receiver's output as a PNG (the revoked
#      one's last, from before its output ended), and one of what ffmpeg
#      makes of the scrambled broadcast, and says how to watch the clear
#      outputs (ffplay).
#
# Everything it starts is stopped when it exits, on failure or Ctrl-C too.
# WORK_DIR is created; if it exists, it must be empty or a previous demo's
# (it is then wiped). Nothing outside it is written, apart from what apt
# installs, pcscd's log, cargo's target folder and the vpcd slots' lock
# files in /tmp (the ones the tests take).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK_ARG="${1:-./demo-out}"
SECONDS_OF_VIDEO=10
CARD_ID=1000
# The second card: it plays along with the first, and is revoked live.
CARD2_ID=1001
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
# perl with its standard modules (JSON::PP reads `headend status --json`).
perl -MJSON::PP -MTime::HiRes -e 1 2> /dev/null || need+=(perl)
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
    -t "$SECONDS_OF_VIDEO" -c:v libx264 -preset ultrafast -g 25 -c:a aac \
    -f mpegts "$WORK/source.ts" || die "ffmpeg could not make the test stream"
source_frames="$(frames "$WORK/source.ts" /dev/null)"
say "$(stat -c %s "$WORK/source.ts") bytes, $source_frames video frames (H.264 test pattern, a key frame a second; AAC 1 kHz tone)"

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

step "Two virtual cards in pcscd's vpcd readers (smartcard emulate), provisioned and subscribed"
# The first two vpcd slots, with the locks the test suite takes, in port
# order as it does (so that no two takers deadlock), held until exit.
READERS=()
VPCD_PORTS=()
for slot in "35963:Virtual PCD 00 00" "35964:Virtual PCD 00 01"; do
    port="${slot%%:*}"
    exec {lockfd}> "/tmp/iodoform-vpcd-$port.lock"
    if ! flock -n "$lockfd"; then
        say "vpcd slot $port is in use (tests running?): waiting up to 5 minutes for it"
        flock -w 300 "$lockfd" || die "vpcd slot $port stayed in use for 5 minutes (tests running?); try again later"
    fi
    READERS+=("${slot#*:}")
    VPCD_PORTS+=("$port")
done
READER="${READERS[0]}"
READER2="${READERS[1]}"
card_seen() {
    local readers
    readers="$("$BIN/smartcard" readers 2>&1)" || return 1
    printf '%s\n' "$readers" | grep -F "$1" | grep -q $'\tcard'
}
until_date="$(date -u -d '+30 days' +%F)"
# Plugs card ID into vpcd slot PORT (reader READER), personalizes and
# registers it, and subscribes it to the product.
plug_card() {
    local id="$1" port="$2" reader="$3" pid deadline
    # The slot's last holder may have gone a moment ago: its card first.
    deadline=$((SECONDS + 15))
    while card_seen "$reader"; do
        [ "$SECONDS" -lt "$deadline" ] || die "a card stays in '$reader' although nothing holds its slot: remove it (or restart pcscd), then run this again"
        sleep 0.2
    done
    background "$WORK/card-$id.log" env RUST_LOG=info "$BIN/smartcard" emulate \
        --state "$WORK/card-$id.img" --vpcd "127.0.0.1:$port"
    pid=$!
    deadline=$((SECONDS + 15))
    until card_seen "$reader"; do
        kill -0 "$pid" 2> /dev/null || {
            cat "$WORK/card-$id.log" >&2
            die "smartcard emulate exited"
        }
        [ "$SECONDS" -lt "$deadline" ] || {
            "$BIN/smartcard" readers >&2 || true
            die "pcscd does not see the virtual card in '$reader'"
        }
        sleep 0.2
    done
    say "card $id in reader '$reader' (state: $WORK_ARG/card-$id.img)"
    "$BIN/smartcard" provision --operator "$H/operator.json" --card-id "$id" \
        --reader "$reader" --out "$WORK/card-$id.json" \
        --register "http://127.0.0.1:$API_PORT" --token-file "$H/admin.token" ||
        die "smartcard provision failed"
    say "card $id personalized (its key pair made inside it), locked and registered ($WORK_ARG/card-$id.json)"
    headend subscribe "$id" "$PRODUCT" --until "$until_date" | sed 's/^/   /'
}
plug_card "$CARD_ID" "${VPCD_PORTS[0]}" "$READER"
plug_card "$CARD2_ID" "${VPCD_PORTS[1]}" "$READER2"

# ------------------------------------------------------ 7. on the air

step "On the air: a box tunes in"
# A tap on the air, as any box on the network sees it: tap LOG PORT FILE
# SECS DEST_PORT... listens on UDP PORT, keeps the first SECS seconds raw
# in FILE and passes every datagram on to each DEST_PORT; its pid in $!.
tap() {
    local log="$1"
    shift
    background "$log" perl -MIO::Socket::INET -MSocket -e '
        my ($port, $file, $secs, @to) = @ARGV;
        my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1:$port", Proto => "udp")
            or die "cannot listen on UDP port $port: $!\n";
        my @dest = map { pack_sockaddr_in($_, inet_aton("127.0.0.1")) } @to;
        open(my $f, ">:raw", $file) or die "$file: $!\n";
        my $end;
        while (defined($s->recv(my $b, 65536))) {
            $end //= time + $secs;
            if ($f && time < $end) { print $f $b } elsif ($f) { close($f); undef $f }
            send($s, $b, 0, $_) for @dest;
        }' "$@"
}
# It keeps the first 3 s in scrambled.ts and passes everything on to the
# receiver.
TAP_PORT="$(free_port udp $((AIR_PORT + 1)))"
tap "$WORK/tap.log" "$AIR_PORT" "$WORK/scrambled.ts" 3 "$TAP_PORT"
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

# ------------------------------------------------------ 11. two receivers

now() { date +%s.%N; }
# T - T0 in seconds, signed, one decimal.
rel() { awk -v t="$1" -v z="$2" 'BEGIN { printf "%+.1f", t - z }'; }
# One line of the revocation's story, at time T: kept in events.txt, and
# shown in order of time once it is over.
event() {
    local t="$1"
    shift
    printf '%s\t%s\n' "$(awk -v t="$t" -v z="$t0" 'BEGIN { printf "%.3f", t - z }')" "$*" >> "$WORK/events.txt"
}

step "Live: channel 'live' on the air, a receiver for each card"
LIVE_PORT="$(free_port udp $((RX_PORT + 1)))"
LIVE_RX1="$(free_port udp $((LIVE_PORT + 1)))"
LIVE_RX2="$(free_port udp $((LIVE_RX1 + 1)))"
# Each receiver gives up 8 s after its card starts refusing the ECMs.
live_receiver() {
    local id="$1" reader="$2" port="$3"
    background "$WORK/receiver-$id.log" env RUST_LOG=receiver=info "$BIN/receiver" \
        --reader "$reader" --identity "$WORK/receiver-$id.key" --entitlement-wait 8 -q \
        -i "udp://127.0.0.1:$port" -o "$WORK/clear-$id.ts" --stats-json "$WORK/receiver-$id-stats.json"
}
live_receiver "$CARD_ID" "$READER" "$LIVE_RX1"
RX1_PID=$!
live_receiver "$CARD2_ID" "$READER2" "$LIVE_RX2"
RX2_PID=$!
wait_for_log "$WORK/receiver-$CARD_ID.log" "card session established" "$RX1_PID" 20 "receiver $CARD_ID"
wait_for_log "$WORK/receiver-$CARD2_ID.log" "card session established" "$RX2_PID" 20 "receiver $CARD2_ID"
# What comes out: each time clear audio or video packets are added to a
# receiver's output, a line "TIME RECEIVER(0|1) PACKETS_SO_FAR BYTES".
background "$WORK/clear-packets.log" perl -MTime::HiRes=time,sleep -e '
    $| = 1;
    my @f = @ARGV;
    my (@off, @n, @carry);
    for my $i (0 .. $#f) { ($off[$i], $n[$i], $carry[$i]) = (0, 0, "") }
    while (1) {
        for my $i (0 .. $#f) {
            open(my $h, "<:raw", $f[$i]) or next;
            seek($h, $off[$i], 0);
            my $got = read($h, my $buf, 1 << 24) // 0;
            close($h);
            next unless $got;
            $off[$i] += $got;
            $buf = $carry[$i] . $buf;
            my $whole = length($buf) - length($buf) % 188;
            $carry[$i] = substr($buf, $whole);
            my $es = 0;
            for (my $p = 0; $p < $whole; $p += 188) {
                my $pid = ((ord(substr($buf, $p + 1, 1)) & 0x1F) << 8) | ord(substr($buf, $p + 2, 1));
                $es++ if $pid == 0x100 || $pid == 0x101;
            }
            next unless $es;
            $n[$i] += $es;
            printf("%.3f %d %d %d\n", time, $i, $n[$i], $off[$i] - length($carry[$i]));
        }
        sleep(0.05);
    }' "$WORK/clear-$CARD_ID.ts" "$WORK/clear-$CARD2_ID.ts"
MONITOR_PID=$!
# RECEIVER (0 or 1): the time of its last clear audio or video packet,
# their count and the output's size then (nothing before the first).
last_clear() {
    awk -v i="$1" -v until="${2:-}" '$2 == i && (until == "" || $1 <= until) { t = $1; n = $3; o = $4 }
        END { if (t != "") print t, n, o }' "$WORK/clear-packets.log"
}
tap "$WORK/tap-live.log" "$LIVE_PORT" /dev/null 0 "$LIVE_RX1" "$LIVE_RX2"
LIVE_TAP_PID=$!
headend channel add --name live --service-id 1 --product "$PRODUCT" \
    --ecm-pid 0x1F0 --emm-pid 0x1F1 \
    --input "$WORK/source.ts?loop" --output "udp://127.0.0.1:$LIVE_PORT" | sed 's/^/   /'
wait_channel_state on_air 5
say "on the air on udp://127.0.0.1:$LIVE_PORT ($WORK_ARG/source.ts again and again); a tap passes it to both receivers"
deadline=$((SECONDS + 30))
until [ -n "$(last_clear 0)" ] && [ -n "$(last_clear 1)" ]; do
    for p in "$RX1_PID" "$RX2_PID"; do
        kill -0 "$p" 2> /dev/null || {
            tail -n 5 "$WORK"/receiver-10*.log >&2
            die "a receiver exited before it played"
        }
    done
    [ "$SECONDS" -lt "$deadline" ] || die "the receivers did not both play within 30 s (see $WORK_ARG/receiver-*.log)"
    sleep 0.2
done
# A few seconds of picture each (a key frame comes every second).
sleep 3
for i in 0 1; do
    id=$([ "$i" = 0 ] && echo "$CARD_ID" || echo "$CARD2_ID")
    read -r _ n _ < <(last_clear "$i")
    say "receiver $id with card $id plays: $n clear audio and video packets so far in $WORK_ARG/clear-$id.ts"
done

# ------------------------------------------------------ 12. revocation

# The product's keys: NEWEST ACTIVE RENEWAL_STATE DELIVERED ECM_GENERATIONS
# METHOD HOLDERS ACTIVATE_AT (- where there is no renewal under way).
product_state() {
    headend status --json 2> /dev/null | perl -MJSON::PP -e '
        my $s = eval { decode_json(do { local $/; <STDIN> }) } or exit 1;
        my ($p) = grep { $_->{name} eq $ARGV[0] } @{ $s->{products} } or exit 1;
        my $r = $p->{renewal};
        my %g = map { ($_->{generation} => 1) } grep { $_->{product} == $p->{id} } @{ $s->{ecms} };
        print join(" ", $p->{generation}, $p->{active_generation},
            $r ? ($r->{state}, $r->{delivered} ? 1 : 0) : ("-", 0),
            join(",", sort keys %g) || "-",
            $r && $r->{method} ne "" ? $r->{method} : "-", $r ? $r->{holders} : 0,
            $r ? $r->{activate_at} : "-"), "\n";' "$PRODUCT"
}

step "Revoking card $CARD2_ID, live (headend card revoke $CARD2_ID)"
read -r gen0 active0 _ < <(product_state) || die "headend status --json did not show product $PRODUCT"
refused_before="$(grep -c 'ECM refused' "$WORK/receiver-$CARD2_ID.log" || true)"
t0="$(now)"
headend card revoke "$CARD2_ID" > "$WORK/revoke.txt" 2>&1 || {
    cat "$WORK/revoke.txt" >&2
    die "headend card revoke failed"
}
event "$t0" "revoked card $CARD2_ID (the API answered in $(awk -v a="$(now)" -v b="$t0" 'BEGIN { printf "%.2f", a - b }') s); ECMs on generation $active0"
say "watching the headend and both receivers for 10 s at least..."
gen_new=
delivering_at=
delivered_at=
switched_at=
kept_bytes=
refused_at=
rx2_done=
deadline=$((SECONDS + 60))
while :; do
    t="$(now)"
    if read -r gen _ rstate delivered ecm_gens method holders activate_at < <(product_state); then
        [ -n "$gen_new" ] || [ "$gen" = "$gen0" ] || gen_new="$gen"
        if [ -n "$gen_new" ] && [ -z "$delivering_at" ] && [ "$rstate" = delivering ]; then
            delivering_at="$t"
            event "$t" "renewal on the air: product $PRODUCT's new key, generation $gen_new, to $holders card(s) ($method delivery)"
        fi
        if [ -n "$gen_new" ] && [ -z "$delivered_at" ] && [ "$delivered" = 1 ]; then
            delivered_at="$t"
            act="$(date -d "$activate_at" +%s.%N 2> /dev/null)" || act=
            event "$t" "renewal delivered (every pass sent)${act:+; ECMs switch to it at $(rel "$act" "$t0") s}"
        fi
        if [ -n "$gen_new" ] && [ -z "$switched_at" ] && [[ ",$ecm_gens," == *",$gen_new,"* ]]; then
            switched_at="$t"
            [ -n "$delivered_at" ] || event "$t" "renewal delivered"
            event "$t" "ECMs on generation $gen_new"
            kept_bytes="$(stat -c %s "$WORK/clear-$CARD_ID.ts")"
        fi
    fi
    if [ -z "$refused_at" ] && [ "$(grep -c 'ECM refused' "$WORK/receiver-$CARD2_ID.log" || true)" -gt "$refused_before" ]; then
        refused_at="$t"
        event "$t" "receiver $CARD2_ID: its card refuses an ECM: $(grep 'ECM refused' "$WORK/receiver-$CARD2_ID.log" | tail -n 1 | sed 's/.*ECM refused //')"
    fi
    if [ -z "$rx2_done" ] && ! kill -0 "$RX2_PID" 2> /dev/null; then
        rx2_done="$t"
        rc=0
        wait "$RX2_PID" || rc=$?
        stop_pid "$RX2_PID"
        read -r last2 _ < <(last_clear 1)
        event "$last2" "receiver $CARD2_ID: last clear packet"
        event "$t" "receiver $CARD2_ID gave up (exit $rc): $(grep '^receiver: ' "$WORK/receiver-$CARD2_ID.log" | grep -v ' packets in, ' | tail -n 1 | sed 's/^receiver: //')"
    fi
    kill -0 "$RX1_PID" 2> /dev/null || {
        tail -n 5 "$WORK/receiver-$CARD_ID.log" >&2
        die "receiver $CARD_ID (card still subscribed) stopped"
    }
    read -r last1 _ < <(last_clear 0)
    if [ -n "$rx2_done" ] && [ -n "$switched_at" ] &&
        awk -v t="$t" -v z="$t0" -v l="$last1" 'BEGIN { exit !(t - z >= 10 && t - l < 1) }'; then
        break
    fi
    [ "$SECONDS" -lt "$deadline" ] || {
        [ -n "$gen_new" ] || die "no renewal of product $PRODUCT after the revocation"
        [ -n "$switched_at" ] || die "the ECMs did not switch to generation $gen_new within 60 s"
        [ -n "$rx2_done" ] || die "receiver $CARD2_ID still runs 60 s after its card was revoked"
        die "receiver $CARD_ID (card still subscribed) has not played for $(awk -v t="$t" -v l="$last1" 'BEGIN { printf "%.1f", t - l }') s"
    }
    sleep 0.1
done
read -r _ n_t0 _ < <(last_clear 0 "$t0")
read -r _ n_end _ < <(last_clear 0)
longest="$(awk -v z="$t0" '$2 == 0 { if ($1 > z && p != "" && $1 - p > g) g = $1 - p; p = $1 } END { printf "%.2f", g }' "$WORK/clear-packets.log")"
event "$t" "receiver $CARD_ID still playing: $((n_end - n_t0)) clear audio and video packets since the revocation, the last $(awk -v t="$t" -v l="$last1" 'BEGIN { printf "%.2f", t - l }') s ago, the longest pause between them ${longest} s"
sort -t "$(printf '\t')" -k1,1g "$WORK/events.txt" | awk -F '\t' '{ printf "   %+.1f s  %s\n", $1, $2 }'
stop_pid "$RX1_PID"
stop_pid "$MONITOR_PID"
stop_pid "$LIVE_TAP_PID"
headend channel remove live | sed 's/^/   /'
grep '^receiver: ' "$WORK/receiver-$CARD_ID.log" | sed 's/^/   /'

# ------------------------------------------------------------ 13. pictures

step "Pictures (PNG): each receiver's output and the scrambled broadcast"
kept_png="$WORK/card-$CARD_ID.png"
revoked_png="$WORK/card-$CARD2_ID.png"
scrambled_png="$WORK/scrambled.png"
# The card still subscribed: a frame from after the ECMs switched.
tail -c +$((kept_bytes / 188 * 188 + 1)) "$WORK/clear-$CARD_ID.ts" |
    ffmpeg -nostdin -loglevel error -y -f mpegts -i - -frames:v 1 "$kept_png" 2> "$WORK/ffmpeg-card-$CARD_ID.txt" &&
    [ -s "$kept_png" ] || die "ffmpeg made no frame of $WORK_ARG/clear-$CARD_ID.ts (see $WORK_ARG/ffmpeg-card-$CARD_ID.txt)"
say "receiver $CARD_ID: $WORK_ARG/card-$CARD_ID.png, a frame from after the ECMs switched to generation $gen_new"
# The revoked card: its output's last frame, before the revocation took hold.
ffmpeg -nostdin -loglevel error -y -i "$WORK/clear-$CARD2_ID.ts" -update 1 "$revoked_png" \
    2> "$WORK/ffmpeg-card-$CARD2_ID.txt" && [ -s "$revoked_png" ] ||
    die "ffmpeg made no frame of $WORK_ARG/clear-$CARD2_ID.ts (see $WORK_ARG/ffmpeg-card-$CARD2_ID.txt)"
revoked_frames="$(frames "$WORK/clear-$CARD2_ID.ts" /dev/null)"
say "receiver $CARD2_ID: $WORK_ARG/card-$CARD2_ID.png, the last of the ${revoked_frames:-?} frames in its output, which ended at $(rel "$last2" "$t0") s"
# What ffmpeg makes of the scrambled broadcast: a frame of garbage if it
# decodes any, else a black frame saying so.
if ffmpeg -nostdin -loglevel error -y -err_detect ignore_err -i "$WORK/scrambled.ts" \
    -frames:v 1 "$scrambled_png" 2> "$WORK/ffmpeg-scrambled.txt" && [ -s "$scrambled_png" ]; then
    say "scrambled broadcast: $WORK_ARG/scrambled.png, the first frame ffmpeg makes of it (ignoring errors)"
else
    rm -f "$scrambled_png"
    why="$(grep -v '^\s*$' "$WORK/ffmpeg-scrambled.txt" | tail -n 1)"
    ffmpeg -nostdin -loglevel error -y -f lavfi -i color=black:size=640x360 -frames:v 1 \
        -vf "drawtext=text='ffmpeg decodes no frame from the scrambled broadcast':fontcolor=white:fontsize=20:x=(w-text_w)/2:y=(h-text_h)/2" \
        "$scrambled_png" 2> /dev/null ||
        ffmpeg -nostdin -loglevel error -y -f lavfi -i color=black:size=640x360 -frames:v 1 "$scrambled_png" ||
        die "ffmpeg could not make a black frame"
    say "scrambled broadcast: ffmpeg decodes no frame from it${why:+ ($why)};"
    say "$WORK_ARG/scrambled.png is a black frame saying so"
fi
echo
echo "Pictures:  $WORK_ARG/card-$CARD_ID.png  $WORK_ARG/card-$CARD2_ID.png  $WORK_ARG/scrambled.png"
echo "Watch it:  ffplay $WORK_ARG/clear.ts   (the live receivers' outputs: clear-$CARD_ID.ts, clear-$CARD2_ID.ts)"
echo "Live, while a headend broadcasts:  receiver -i udp://127.0.0.1:PORT -o - | ffplay -"
