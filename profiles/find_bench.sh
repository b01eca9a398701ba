# Sourced by ncu.sh and nsys.sh: find_bench SCRIPT BENCH sets $bin to the first executable named
# BENCH under --bin-dir, --build-dir, build/device, build/release (in that order; $bin_dir,
# $build_dir and $root come from the caller), exits 2 naming SCRIPT when there is none, and puts
# a --bin-dir (a carried build, its library beside it) on LD_LIBRARY_PATH.
find_bench() {
  local script="$1" bench="$2" d
  bin=""
  for d in ${bin_dir:+"$bin_dir"} ${build_dir:+"$build_dir"} "$root/build/device" "$root/build/release"; do
    [ -d "$d" ] || continue
    bin=$(find "$d" -maxdepth 3 -type f -name "$bench" -perm -u+x -not -path '*/CMakeFiles/*' | head -n 1)
    [ -n "$bin" ] && break
  done
  [ -n "$bin" ] || { echo "$script: $bench not found (build it, or pass --build-dir / --bin-dir)" >&2; exit 2; }
  if [ -n "$bin_dir" ]; then export LD_LIBRARY_PATH="$bin_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
}
