#!/usr/bin/env bash
# Side by side, in one run: imgbuild building the apt part of recipes/coderall-bookworm.toml
# (bootstrap minbase + its package list, from the same four sources) against
# `mmdebstrap --variant=minbase --include=...` with the same packages writing a tarball.
# Both have a warm .deb cache: imgbuild's blob cache, mmdebstrap's archives synced in and
# out with its documented sync-in/sync-out hooks. imgbuild rebuilds every layer each round
# (a new SOURCE_DATE_EPOCH gives new keys; the .debs stay cached).
#
#   benches/apt.sh [ROUNDS]        (needs the network to this machine's Debian mirror)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
mirror=$(scripts/mirror)
security=$(scripts/mirror security)
work=$(mktemp -d /var/tmp/imgbuild-bench-apt.XXXXXX)
trap 'rm -rf "$work"' EXIT
cargo build --release -q
bin=$PWD/target/release/imgbuild

# The apt part of the recipe, as its own recipe (same directory for the key path).
python3 - "$work/bench.toml" <<'PY'
import sys, tomllib
r = tomllib.load(open("recipes/coderall-bookworm.toml", "rb"))
out = ['[image]', 'name = "bench-apt"', 'base = "scratch"', '', '[apt]', 'bootstrap = "minbase"',
       'packages = [' + ", ".join('"%s"' % p for p in r["apt"]["packages"]) + ']']
for s in r["apt"]["sources"]:
    out += ['', '[[apt.sources]]'] + ['%s = %s' % (k, ('"%s"' % v) if isinstance(v, str) else
            "[" + ", ".join('"%s"' % c for c in v) + "]") for k, v in s.items()]
open(sys.argv[1], "w").write("\n".join(out) + "\n")
print(" ".join(r["apt"]["packages"]), file=open(sys.argv[1] + ".pkgs", "w"))
PY
cp -r recipes/keys "$work/keys"
pkgs=$(tr ' ' ',' < "$work/bench.toml.pkgs" | tr -d '\n')
vars=(--var "mirror=$mirror" --var "security_mirror=$security")
srcs=("deb $mirror bookworm main" "deb $mirror bookworm-updates main"
      "deb $mirror bookworm-backports main" "deb $security bookworm-security main")
mm() {
  mmdebstrap --quiet --variant=minbase --include="$pkgs" --skip=essential/unlink \
    --setup-hook="mkdir -p $work/mmcache \"\$1\"/var/cache/apt/archives/" \
    --setup-hook="sync-in $work/mmcache /var/cache/apt/archives/" \
    --customize-hook="sync-out /var/cache/apt/archives $work/mmcache" \
    bookworm "$work/mm.tar" "${srcs[@]}"
}
ib() {
  SOURCE_DATE_EPOCH=$1 "$bin" --quiet --cache-dir "$work/cache" "${vars[@]}" \
    build "$work/bench.toml" --out "$work/ib-out" >/dev/null
}
echo "warming both caches (downloads every .deb once)..." >&2
"$bin" --quiet --cache-dir "$work/cache" "${vars[@]}" lock "$work/bench.toml" >/dev/null
ib 1
mm
best_ib=999999; best_mm=999999
for r in $(seq 1 "$rounds"); do
  t0=$(date +%s.%N); ib $((r + 100)); t1=$(date +%s.%N)
  rm -f "$work/mm.tar"; mm; t2=$(date +%s.%N)
  a=$(echo "$t1 - $t0" | bc); b=$(echo "$t2 - $t1" | bc)
  echo "round $r: imgbuild ${a}s   mmdebstrap ${b}s" >&2
  best_ib=$(echo "if ($a < $best_ib) $a else $best_ib" | bc)
  best_mm=$(echo "if ($b < $best_mm) $b else $best_mm" | bc)
done
n=$(wc -w < "$work/bench.toml.pkgs")
printf '%-58s %8.2f s\n' "imgbuild build (minbase + $n packages, layers, configure)" "$best_ib"
printf '%-58s %8.2f s\n' "mmdebstrap --variant=minbase --include=... (tarball)" "$best_mm"
printf 'imgbuild is %.2fx faster (best of %s rounds, same machine, same run)\n' \
  "$(echo "$best_mm / $best_ib" | bc -l)" "$rounds"
