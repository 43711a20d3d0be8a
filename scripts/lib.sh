# Shell functions the scripts share: sourced (`. scripts/lib.sh`), not run.
# The sourcing script defines die MESSAGE (print, exit non-zero) first.

# Runs a command as root: directly when root, else through sudo -n.
as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo > /dev/null 2>&1; then
        sudo -n "$@" || die "needs root for: $* (sudo -n failed)"
    else
        die "needs root for: $*"
    fi
}
