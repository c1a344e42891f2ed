#!/usr/bin/env bash
# Provision and enter the tme environment.
#
#   scripts/env.sh ensure        build the environment if needed; print nothing else on success
#   scripts/env.sh exec CMD...   run CMD inside the environment (builds it first if needed)
#   scripts/env.sh root          print the path of the cached root (after ensuring it)
#
# Two lanes, chosen by TME_ENV:
#   trixie (default)  Debian trixie: DOLFINx 0.9, the release the project is developed on
#   sid               Debian sid (unstable): the newest DOLFINx (0.11 when written); `make test
#                     DOLFINX=latest` selects it. sid moves daily, so a build can fail on a
#                     broken day; the root is cached like trixie's under its own hash.
# Package names that differ in a lane are renamed or dropped in docker/apt-packages-<lane>.txt
# (lines `old new` or `old -`), applied to the one list docker/apt-packages.txt.
# TME_ENV_MIRROR overrides the Debian mirror debootstrap and apt use.
#
# If the current python3 already imports dolfinx (the DOLFINx Docker image, a conda-forge
# environment, an HPC module), that interpreter is used directly and nothing is built.
# Otherwise (or when TME_ENV is set) a Debian root holding DOLFINx 0.9 and every package listed in
# docker/apt-packages.txt (the same list the Dockerfile installs) is built once with
# debootstrap, cached under $TME_ENV_CACHE (default /var/cache/tme-env) keyed by a hash of
# that list, and commands run inside it with unshare --mount + chroot, the repository
# mounted at its own path.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PKG_LIST="$REPO/docker/apt-packages.txt"
CACHE="${TME_ENV_CACHE:-/var/cache/tme-env}"
MIRROR="${TME_ENV_MIRROR:-http://deb.debian.org/debian}"
case "${TME_ENV:-trixie}" in
    trixie) SUITE=trixie ;;
    sid|latest) SUITE=sid ;;
    *) printf '[tme-env] error: TME_ENV=%s is not a lane; valid: trixie (DOLFINx 0.9), sid (the newest DOLFINx)\n' "$TME_ENV" >&2; exit 2 ;;
esac
OVERRIDE="$REPO/docker/apt-packages-$SUITE.txt"
# sid's Release file is valid for a week only: a mirror or snapshot a little behind would stop apt
APT_OPTS=""
[ "$SUITE" = sid ] && APT_OPTS="-o Acquire::Check-Valid-Until=false"
# the PRRTE variable that lets mpirun start more ranks than cores (renamed in sid's PRRTE 5,
# which warns about the old name on every mpirun)
PRTE_MAP=PRTE_MCA_rmaps_default_mapping_policy
[ "$SUITE" = sid ] && PRTE_MAP=PRTE_MCA_mapby

say() { printf '[tme-env] %s\n' "$*" >&2; }
die() { printf '[tme-env] error: %s\n' "$*" >&2; exit 1; }

# the lane's override (if any) renames (`old new`) or drops (`old -`) names of the one list
packages() {
    sed -e 's/#.*//' -e 's/[[:space:]]//g' "$PKG_LIST" | grep -v '^$' | {
        if [ -f "$OVERRIDE" ]; then
            awk 'NR == FNR { sub(/#.*/, ""); if (NF == 2) map[$1] = $2; next }
                 ($0 in map) { if (map[$0] != "-") print map[$0]; next } { print }' "$OVERRIDE" -
        else cat; fi
    }
}

# the last apt/debootstrap error line of a log (E: ...), for the one-line reason of a failure
error_line() { grep -E '^E: ' "$1" | tail -1 | cut -c4- || true; }

env_key() { packages | sha256sum | cut -c1-16; }

native_dolfinx() {
    # an explicit lane always means its root
    [ -z "${TME_ENV:-}" ] && [ "${TME_ENV_FORCE_ROOT:-0}" != 1 ] && python3 -c 'import dolfinx' >/dev/null 2>&1
}

root_dir() { echo "$CACHE/$SUITE-$(env_key)"; }

build_root() {
    local final tmp t0
    final="$(root_dir)"
    [ "$(id -u)" = 0 ] || die "building the environment needs root (debootstrap + chroot); run as root, or use a python3 that imports dolfinx (see README)"
    command -v unshare >/dev/null || die "unshare (util-linux) is missing"
    if ! command -v debootstrap >/dev/null; then
        say "installing debootstrap with apt-get"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null \
            || die "could not install debootstrap with apt-get"
    fi
    mkdir -p "$CACHE"
    tmp="$(mktemp -d "$CACHE/.build-XXXXXX")"
    # an interrupted build leaves only a .build-* directory, never a usable root
    trap 'say "build interrupted; removing $tmp"; rm -rf "$tmp"' INT TERM
    t0=$(date +%s)
    # the list is read once: an edit during the build cannot mix two lists in one root (the
    # copies are read until the root is in place, then the repository's files again)
    local pkg_list="$PKG_LIST" override="$OVERRIDE"
    cp "$PKG_LIST" "$tmp/apt-packages.txt"
    PKG_LIST="$tmp/apt-packages.txt"
    if [ -f "$OVERRIDE" ]; then cp "$OVERRIDE" "$tmp/override.txt"; OVERRIDE="$tmp/override.txt"; fi
    say "building the Debian $SUITE environment in $final (one time, about 5 minutes)"
    say "step 1/2: debootstrap --variant=minbase $SUITE"
    debootstrap --variant=minbase "$SUITE" "$tmp/root" "$MIRROR" > "$tmp/debootstrap.log" 2>&1 \
        || { tail -20 "$tmp/debootstrap.log" >&2; why="$(error_line "$tmp/debootstrap.log")"; rm -rf "$tmp"; die "debootstrap of Debian $SUITE from $MIRROR failed${why:+: $why}"; }
    say "step 2/2: apt-get install of $(packages | wc -l) packages from docker/apt-packages.txt$([ -f "$OVERRIDE" ] && echo " and apt-packages-$SUITE.txt")"
    # shellcheck disable=SC2046
    run_in "$tmp/root" /bin/sh -c "apt-get $APT_OPTS update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(packages | tr '\n' ' ') && apt-get clean" \
        2>&1 | tee "$tmp/apt.log" | grep --line-buffered -E '^(Get:[0-9]*0 |Setting up python3-dolfinx|Setting up paraview|E:)' | sed -u 's/^/[tme-env]   /' >&2 || true
    if ! run_in "$tmp/root" python3 -c 'import dolfinx, pyvista, gmsh, pydantic, pint' >/dev/null 2>&1; then
        tail -20 "$tmp/apt.log" >&2; why="$(error_line "$tmp/apt.log")"; rm -rf "$tmp"; die "package installation in Debian $SUITE failed${why:+: $why}"
    fi
    packages > "$tmp/root/.tme-apt-packages.txt"
    mv "$tmp/root" "$final"
    rm -rf "$tmp"
    PKG_LIST="$pkg_list" OVERRIDE="$override"
    trap - INT TERM
    say "environment ready in $(( $(date +%s) - t0 )) s, $(du -sh "$final" | cut -f1) on disk"
}

# run_in ROOT CMD...: run CMD in ROOT with a private mount namespace.
run_in() {
    local root="$1"; shift
    local inner
    inner='set -e
r="$1"; repo="$2"; shift 2
mount -t proc proc "$r/proc"
mount --rbind /dev "$r/dev"
mkdir -p "$r/dev/shm" && mount -t tmpfs -o mode=1777 tmpfs "$r/dev/shm"
mount -t sysfs sysfs "$r/sys" 2>/dev/null || true
# host directories that hold user files are seen at the same paths inside
for d in /tmp /home /mnt /srv; do
    if [ -d "$d" ]; then mkdir -p "$r$d" && mount --rbind "$d" "$r$d"; fi
done
cp /etc/resolv.conf "$r/etc/resolv.conf" 2>/dev/null || true
mkdir -p "$r$repo" && mount --bind "$repo" "$r$repo"
shared="$(dirname "$repo")/shared"
if [ -d "$shared" ]; then mkdir -p "$r$shared" && mount --bind "$shared" "$r$shared"; fi
exec chroot "$r" /usr/bin/env -u PYTHONHOME -u VIRTUAL_ENV -u prte_map \
    PATH="$repo/scripts/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    HOME=/root LANG=C.UTF-8 \
    PYTHONPATH="$repo/scripts/pythonpath${PYTHONPATH:+:$PYTHONPATH}" \
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    OMPI_MCA_rmaps_base_oversubscribe=1 "$prte_map=:oversubscribe" \
    OMPI_MCA_btl=self,sm \
    /bin/sh -c "cd \"\$0\" 2>/dev/null || cd \"$repo\"; exec \"\$@\"" "$PWD" "$@"'
    PYTHONPATH="${PYTHONPATH:-}" prte_map="$PRTE_MAP" unshare --mount --propagation private /bin/bash -c "$inner" _ "$root" "$REPO" "$@"
}

ensure() {
    native_dolfinx && return 0
    [ -d "$(root_dir)" ] && return 0
    # one build at a time in the cache (the lock is the cache directory itself, so no file is
    # left behind): a second caller (another shell, a test run, CI) waits for the first and then
    # uses its root instead of building its own copy alongside
    mkdir -p "$CACHE"
    exec 9<"$CACHE"
    if ! flock -n 9; then
        say "waiting for an environment build already under way in $CACHE"
        flock 9
    fi
    [ -d "$(root_dir)" ] || build_root
    exec 9>&-
}

cmd="${1:-}"; shift || true
case "$cmd" in
    ensure) ensure ;;
    root) ensure; native_dolfinx && echo / || root_dir ;;
    exec)
        [ $# -gt 0 ] || die "usage: scripts/env.sh exec CMD..."
        ensure
        if native_dolfinx; then
            export PATH="$REPO/scripts/bin:$PATH" PYTHONPATH="$REPO/scripts/pythonpath${PYTHONPATH:+:$PYTHONPATH}"
            exec "$@"
        fi
        [ "$(id -u)" = 0 ] || die "entering the environment needs root (unshare + chroot)"
        run_in "$(root_dir)" "$@" ;;
    *) die "usage: scripts/env.sh {ensure|root|exec CMD...}" ;;
esac
