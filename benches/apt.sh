#!/usr/bin/env bash
# imgbuild building recipes/coderall-bookworm.toml whole (bootstrap, apt packages, configure,
# pip, users, links, services, its [[run]], the OCI layout written) against mmdebstrap
# installing the same package request into a directory, side by side in one run.
#
# Fair by construction:
# - One local partial mirror on 127.0.0.1 serves both: the real signed InRelease and Packages
#   files of the four suites (as the machine's Debian mirror has them now, by-hash copies
#   included) and only the pool files the set needs, fetched once before timing.
# - Cold vs cold: each round starts both from empty caches; imgbuild has no lock (it fetches
#   the indexes, resolves, downloads every .deb), mmdebstrap fetches the indexes and .debs.
#   mmdebstrap runs plain (no hooks); translations are off for it, as imgbuild reads none.
# - imgbuild does more: pip (the recipe's `ansible`, resolved and downloaded from the
#   machine's Python package index, which is not mirrored), users, links, a run, the layout.
# - Both must install the same packages: the name=version lists are compared, and the bench
#   fails when they differ or when any command fails.
# Each side's best and median of ROUNDS are printed. Then, warm: imgbuild's no-op rebuild and
# its rebuild after a change to the last step. The goals (cold: imgbuild at most half of
# mmdebstrap's median; no-op under 100 ms; a changed last step under 100 ms besides that
# step) are checked and the bench fails without them (IMGBUILD_BENCH_NO_GOAL=1 reports only).
#
#   benches/apt.sh [ROUNDS]      (default 3; needs this machine's Debian mirror once)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
for t in mmdebstrap python3 curl dpkg-query; do
  command -v "$t" >/dev/null || { echo "apt.sh needs $t (scripts/deps installs it)" >&2; exit 1; }
done
upstream=$(scripts/mirror)
upstream_sec=$(scripts/mirror security)
work=$(mktemp -d /var/tmp/imgbuild-bench-apt.XXXXXX)
server=
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cargo build --release --locked -q
bin=$PWD/target/release/imgbuild
suites=(bookworm bookworm-updates bookworm-backports)

# --- The partial mirror: indexes first, then the pool files the lock names. ---
mirror=$work/mirror
fetch_dists() { # fetch_dists UPSTREAM LOCALDIR SUITE
  local up=$1 dir=$2 suite=$3 d
  d=$dir/dists/$suite
  mkdir -p "$d/main/binary-amd64"
  curl -fsS --max-time 120 -o "$d/InRelease" "$up/dists/$suite/InRelease"
  local got=0
  for f in Packages.xz Packages.gz; do
    # A suite has one or both (the smaller suites only .xz).
    curl -fsS --max-time 300 -o "$d/main/binary-amd64/$f" "$up/dists/$suite/main/binary-amd64/$f" \
      2>/dev/null || { rm -f "$d/main/binary-amd64/$f"; continue; }
    got=1
    local h
    h=$(sha256sum "$d/main/binary-amd64/$f" | cut -d' ' -f1)
    mkdir -p "$d/main/binary-amd64/by-hash/SHA256"
    ln -f "$d/main/binary-amd64/$f" "$d/main/binary-amd64/by-hash/SHA256/$h"
  done
  [ "$got" = 1 ] || { echo "no Packages index for $suite" >&2; exit 1; }
}
echo "building the partial mirror (indexes of ${#suites[@]}+1 suites) ..." >&2
for s in "${suites[@]}"; do fetch_dists "$upstream" "$mirror/debian" "$s"; done
fetch_dists "$upstream_sec" "$mirror/debian-security" bookworm-security
python3 -m http.server --bind 127.0.0.1 0 --directory "$mirror" > "$work/http.log" 2>&1 &
server=$!
port=
for _ in $(seq 50); do
  port=$(sed -n 's/.*port \([0-9]*\).*/\1/p' "$work/http.log" | head -1)
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { echo "the mirror's HTTP server did not start" >&2; exit 1; }
local_main=http://127.0.0.1:$port/debian
local_sec=http://127.0.0.1:$port/debian-security
vars=(--var "mirror=$local_main" --var "security_mirror=$local_sec")

cp -r recipes "$work/recipes"
recipe=$work/recipes/coderall-bookworm.toml
rm -f "$work/recipes/coderall-bookworm.lock"
# The set, resolved once against the mirror's indexes (the apt part alone: resolving pip
# needs the packages installed), names the pool files to fetch.
sed '/^\[pip\]/,/^$/d' "$recipe" > "$work/recipes/apt-part.toml"
"$bin" --quiet --cache-dir "$work/lockcache" "${vars[@]}" lock "$work/recipes/apt-part.toml" >/dev/null
python3 - "$work/recipes/apt-part.lock" > "$work/pool.txt" <<'PY'
import sys, tomllib
lock = tomllib.load(open(sys.argv[1], "rb"))
for p in lock.get("package", []) + lock.get("build_package", []):
    print(p["url"])
PY
echo "fetching $(wc -l < "$work/pool.txt") pool files once ..." >&2
while read -r url; do
  case $url in
    "$local_sec"/*) rel=debian-security/${url#"$local_sec"/}; up=$upstream_sec/${url#"$local_sec"/} ;;
    "$local_main"/*) rel=debian/${url#"$local_main"/}; up=$upstream/${url#"$local_main"/} ;;
    *) echo "a package URL outside the mirror: $url" >&2; exit 1 ;;
  esac
  printf '%s\t%s\n' "$up" "$mirror/$rel"
done < "$work/pool.txt" | xargs -P 8 -L 1 sh -c 'mkdir -p "$(dirname "$2")" && curl -fsS --max-time 300 -o "$2" "$1"' _

pkgs=$(python3 -c 'import sys,tomllib; print(",".join(tomllib.load(open(sys.argv[1],"rb"))["apt"]["packages"]))' "$recipe")
srcs=()
for s in "${suites[@]}"; do srcs+=("deb $local_main $s main"); done
srcs+=("deb $local_sec bookworm-security main")

ib() { # cold: empty cache, no lock
  rm -rf "$work/ibcache" "$work/ib-out" "$work/recipes/coderall-bookworm.lock"
  "$bin" --quiet --cache-dir "$work/ibcache" "${vars[@]}" build "$recipe" --out "$work/ib-out" > /dev/null
}
mm() { # cold: mmdebstrap keeps no cache between runs unless told to
  rm -rf "$work/mm"
  mmdebstrap --quiet --variant=minbase --include="$pkgs" \
    --aptopt='Acquire::Languages "none"' bookworm "$work/mm" "${srcs[@]}"
}
timed() { # timed VAR CMD...: seconds into VAR; the bench fails with the command
  local s e
  s=$(date +%s.%N)
  "${@:2}" > /dev/null || { echo "$2 failed" >&2; exit 1; }
  e=$(date +%s.%N)
  printf -v "$1" '%s' "$(echo "$e - $s" | bc)"
}

ib_times=(); mm_times=()
for r in $(seq 1 "$rounds"); do
  timed a ib
  timed b mm
  echo "round $r: imgbuild ${a}s  mmdebstrap ${b}s" >&2
  ib_times+=("$a"); mm_times+=("$b")
done

# The same packages, name=version.
python3 - "$work/ib-out/imgbuild.lock" > "$work/ib.set" <<'PY'
import sys, tomllib
for p in tomllib.load(open(sys.argv[1], "rb")).get("package", []):
    print(f'{p["name"]}={p["version"]}')
PY
dpkg-query --admindir "$work/mm/var/lib/dpkg" -W -f '${db:Status-Abbrev}${Package}=${Version}\n' \
  | sed -n 's/^ii *//p' > "$work/mm.set"
sort -o "$work/ib.set" "$work/ib.set"; sort -o "$work/mm.set" "$work/mm.set"
if ! cmp -s "$work/ib.set" "$work/mm.set"; then
  echo "the two package sets differ (< imgbuild, > mmdebstrap):" >&2
  diff "$work/ib.set" "$work/mm.set" >&2 || true
  exit 1
fi

# Warm: no-op rebuilds (everything cached, the layout in place), then rebuilds after a change
# to the last step (the [[run]]), whose own time (from the plain progress log) is taken out.
warm=(--cache-dir "$work/ibcache" "${vars[@]}")
noop_times=(); over_times=()
for i in 1 2 3 4 5; do
  timed t "$bin" --quiet "${warm[@]}" build "$recipe" --out "$work/ib-out"
  noop_times+=("$t")
done
for i in 1 2 3; do
  sed -i "s/ && locale-gen\(.*\)\"$/ \&\& locale-gen \&\& : $i\"/" "$recipe"
  s=$(date +%s.%N)
  "$bin" --progress plain "${warm[@]}" build "$recipe" --out "$work/ib-out" 2> "$work/last.log" > /dev/null \
    || { cat "$work/last.log" >&2; exit 1; }
  e=$(date +%s.%N)
  step=$(sed -n 's/^\[ *[0-9]*\] built .* \([0-9.]*\)s  run .*/\1/p' "$work/last.log" | tail -1)
  built=$(grep -c '^\[ *[0-9]*\] built ' "$work/last.log" || true)
  [ "$built" = 1 ] && [ -n "$step" ] || { echo "expected the run step alone to be built:" >&2; cat "$work/last.log" >&2; exit 1; }
  over_times+=("$(echo "$e - $s - $step" | bc)")
done

stats() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "%.2f %.2f", a[1], a[int((NR+1)/2)]}'; }
read -r ib_best ib_med <<< "$(stats "${ib_times[@]}")"
read -r mm_best mm_med <<< "$(stats "${mm_times[@]}")"
n=$(wc -l < "$work/ib.set")
echo
echo "| cold, from the local mirror, $n packages | best | median |"
echo "|---|---:|---:|"
echo "| imgbuild build coderall-bookworm (apt + pip + users + run, OCI layout) | ${ib_best} s | ${ib_med} s |"
echo "| mmdebstrap --variant=minbase --include=... (directory) | ${mm_best} s | ${mm_med} s |"
read -r noop_best noop_med <<< "$(stats "${noop_times[@]}")"
read -r over_best over_med <<< "$(stats "${over_times[@]}")"
echo
echo "| warm, imgbuild alone | best | median |"
echo "|---|---:|---:|"
echo "| no-op rebuild of coderall-bookworm (5 runs) | ${noop_best} s | ${noop_med} s |"
echo "| last step changed: time besides that step (3 runs) | ${over_best} s | ${over_med} s |"
ratio=$(echo "$ib_med / $mm_med" | bc -l)
printf 'imgbuild / mmdebstrap (median of %s): %.2f (goal: at most 0.50); both with empty caches\n' "$rounds" "$ratio"
missed=
[ "$(echo "$ratio > 0.5" | bc)" = 1 ] && missed="$missed cold-build"
[ "$(echo "$noop_med > 0.1" | bc)" = 1 ] && missed="$missed no-op"
[ "$(echo "$over_med > 0.1" | bc)" = 1 ] && missed="$missed last-step"
if [ -n "$missed" ]; then
  echo "goals missed:$missed" >&2
  if [ -z "${IMGBUILD_BENCH_NO_GOAL:-}" ]; then exit 1; fi
fi
