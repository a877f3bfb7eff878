# Sourced by the .ci scripts.
# fresh_build_dir DIR: drop DIR when its CMake cache was made for another source
# tree (another checkout of the project), which CMake refuses to reuse.
fresh_build_dir() {
  local dir=$1 cache=$1/CMakeCache.txt home
  [ -f "$cache" ] || return 0
  home=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$cache")
  if [ "$home" != "$PWD" ]; then
    echo "== $dir was configured for $home; starting it afresh"
    rm -rf "$dir"
  fi
}
