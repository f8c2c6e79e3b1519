#!/usr/bin/env bash
# Push speed: imgbuild push vs skopeo copy of the same ~500 MB image layout to a local CNCF
# distribution registry, alternating, each into a fresh repository; then the re-push of an
# unchanged image (which must upload nothing and take under 0.2 s).
# usage: benches/push.sh [MB] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
mb=${1:-500}; rounds=${2:-2}
cargo build --release --locked -q
bin=$PWD/target/release/imgbuild
work=$(mktemp -d); trap 'kill $reg 2>/dev/null || true; rm -rf "$work"' EXIT

# An image of incompressible files, 100 MB each.
mkdir -p "$work/recipe/files"
{ echo '[image]'; echo 'name = "big"'; } > "$work/recipe/big.toml"
for i in $(seq $((mb / 100))); do
  head -c 100000000 /dev/urandom > "$work/recipe/files/f$i"
  printf '[[file]]\ndest = "/data/f%s"\nsrc = "files/f%s"\n' "$i" "$i" >> "$work/recipe/big.toml"
done
$bin -q --cache-dir "$work/cache" build "$work/recipe/big.toml" --out "$work/layout" >/dev/null

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
reg=
# A fresh, empty registry per run: nothing to skip or mount for either tool.
fresh_registry() {
  [ -n "$reg" ] && { kill "$reg"; wait "$reg" 2>/dev/null || true; }
  rm -rf "$work/registry"
  cat > "$work/reg.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: 127.0.0.1:$port, secret: bench}
YML
  docker-registry serve "$work/reg.yml" >/dev/null 2>&1 & reg=$!
  until curl -s "http://127.0.0.1:$port/v2/" >/dev/null; do sleep 0.05; done
}

t() { local s=$(date +%s.%N); "$@" >/dev/null 2>&1; echo "$(date +%s.%N) - $s" | bc; }
best_i=999; best_s=999
for r in $(seq "$rounds"); do
  # Fresh cache each time: no mount hints, every blob really uploads.
  fresh_registry
  i=$(t $bin -q --cache-dir "$work/c$r" push "$work/layout" "127.0.0.1:$port/imgbuild$r:1")
  fresh_registry
  s=$(t skopeo copy --dest-tls-verify=false "oci:$work/layout:latest" "docker://127.0.0.1:$port/skopeo$r:1")
  echo "round $r: imgbuild push ${i}s, skopeo copy ${s}s" >&2
  best_i=$(echo "if ($i < $best_i) $i else $best_i" | bc); best_s=$(echo "if ($s < $best_s) $s else $best_s" | bc)
done
$bin -q --cache-dir "$work/c1" push "$work/layout" "127.0.0.1:$port/again:1" >/dev/null
again=$(t $bin -q --cache-dir "$work/c1" push "$work/layout" "127.0.0.1:$port/again:1")
size=$(du -sm "$work/layout/blobs" | cut -f1)
echo
echo "image: ${size} MB of blobs; best of $rounds rounds, fresh repositories"
printf '%-40s %8.2f s  %6.0f MB/s\n' "imgbuild push" "$best_i" "$(echo "$size / $best_i" | bc -l)"
printf '%-40s %8.2f s  %6.0f MB/s\n' "skopeo copy oci: docker://" "$best_s" "$(echo "$size / $best_s" | bc -l)"
printf '%-40s %8.3f s\n' "imgbuild re-push, unchanged" "$again"
