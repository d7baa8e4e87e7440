#!/usr/bin/env bash
# Makes sure clang can build a libFuzzer target with ASan and UBSan (the GGUF parser's fuzz target
# in native/): installs clang and its compiler-rt with apt-get when that fails, and fails loudly
# when it cannot. `make -C native test` calls it; a missing clang must fail the tests, not skip them.
set -euo pipefail
CLANG="${CLANG:-clang}"

# Linking a one-line fuzz target proves the compiler, libFuzzer and both sanitizer runtimes.
can_build_fuzzer() {
  local dir rc
  dir=$(mktemp -d)
  printf '%s\n' '#include <stddef.h>' '#include <stdint.h>' \
    'int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { (void)data; (void)size; return 0; }' > "$dir/probe.c"
  if "$CLANG" -fsanitize=fuzzer,address,undefined "$dir/probe.c" -o "$dir/probe" > "$dir/log" 2>&1; then rc=0; else rc=1; fi
  if [ $rc -ne 0 ] && command -v "$CLANG" > /dev/null; then sed 's/^/  /' "$dir/log" | head -5 >&2; fi
  rm -rf "$dir"
  return $rc
}

fail() {
  echo "ensure_clang: $*" >&2
  echo "ensure_clang: the fuzz target needs clang with libFuzzer (Debian/Ubuntu: apt-get install clang libclang-rt-<version>-dev)" >&2
  exit 1
}

can_build_fuzzer && exit 0

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo > /dev/null && sudo -n true 2> /dev/null; then
  as_root=(sudo -n)
else
  fail "$CLANG cannot build a libFuzzer target, and installing it needs root (or password-less sudo)"
fi
command -v apt-get > /dev/null || fail "$CLANG cannot build a libFuzzer target, and there is no apt-get to install it with"

echo "ensure_clang: installing clang and its compiler-rt (libFuzzer, sanitizer runtimes) with apt-get"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq || fail "apt-get update failed"
"${as_root[@]}" apt-get install -y -qq --no-install-recommends clang > /dev/null || fail "apt-get install clang failed"
# Since LLVM 14, Debian ships libFuzzer and the sanitizer runtimes in a versioned package that
# clang only recommends.
command -v "$CLANG" > /dev/null || fail "apt-get installed clang, but there is no $CLANG on PATH"
major=$("$CLANG" -dumpversion | cut -d. -f1)
if apt-cache show "libclang-rt-$major-dev" > /dev/null 2>&1; then
  "${as_root[@]}" apt-get install -y -qq --no-install-recommends "libclang-rt-$major-dev" > /dev/null \
    || fail "apt-get install libclang-rt-$major-dev failed"
fi
can_build_fuzzer || fail "clang $major is installed but still cannot build a libFuzzer target with ASan and UBSan"
echo "ensure_clang: $("$CLANG" --version | head -1)"
