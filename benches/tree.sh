# Sourced by the benches: `bench_tree DIR` assembles (once) a ~1.9 GB, ~66k-file Debian tree
# from this machine's /usr and /etc in DIR, marked complete by DIR/.complete.
bench_tree() {
  local tree=$1
  if [ ! -f "$tree/.complete" ]; then
    echo "assembling a Debian tree in $tree ..." >&2
    rm -rf "$tree"; mkdir -p "$tree/usr/lib"
    cp -a /usr/bin /usr/sbin /usr/share /usr/include "$tree/usr/"
    for d in /usr/lib/x86_64-linux-gnu /usr/lib/gcc /usr/lib/python3*; do
      [ -e "$d" ] && cp -a "$d" "$tree/usr/lib/"
    done
    cp -a /etc "$tree/" 2>/dev/null || true
    touch "$tree/.complete"
  fi
}
