#!/bin/bash -eu
# .clusterfuzzlite/build.sh: build every anyctx fuzz target the way OSS-Fuzz
# and ClusterFuzzLite expect, into $OUT:
#
#   $OUT/NAME                   the fuzzer (fuzz/NAME.cc linked with $LIB_FUZZING_ENGINE)
#   $OUT/NAME_seed_corpus.zip   corpus/NAME/ and corpus/NAME-regressions/
#   $OUT/NAME.dict              fuzz/NAME.dict
#   $OUT/NAME.options           fuzz/NAME.options
#
# Every compile and link flag comes from the engine: $CXX, $CXXFLAGS (the
# sanitizer and the coverage instrumentation) and $LIB_FUZZING_ENGINE, through
# the 'external' mode of cmake/AnyctxSanitizers.cmake; none of the presets'
# flags are used. One thing is added: fuzz/coverage.ignorelist, which keeps
# coverage on the code under test (docs/fuzzing.md, "What an execution
# costs") — as a flag where $CXXFLAGS asks for sanitizer coverage (libFuzzer,
# honggfuzz, centipede), and as AFL_LLVM_DENYLIST, which only AFL++'s
# compiler reads. The build tree is $WORK/anyctx-build. The targets are the
# fuzz_NAME executables cmake builds (one per fuzz/NAME.cc listed in
# fuzz/CMakeLists.txt), so a new target needs no change here.
#
# Also run here by ci/test-clusterfuzzlite (ctest: clusterfuzzlite.build).

: "${CXX:?CXX is set by the fuzzing engine}"
: "${OUT:?OUT is set by the fuzzing engine}"
: "${WORK:?WORK is set by the fuzzing engine}"
: "${LIB_FUZZING_ENGINE:?LIB_FUZZING_ENGINE is set by the fuzzing engine}"
CXXFLAGS=${CXXFLAGS:-}

# The checkout: where this script lies when it runs from the repository,
# else the working directory (the Dockerfile's WORKDIR, $SRC/anyctx).
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -f $here/../fuzz/CMakeLists.txt ]]; then
  src_dir=$(cd "$here/.." && pwd)
elif [[ -f $PWD/fuzz/CMakeLists.txt ]]; then
  src_dir=$PWD
else
  src_dir=${SRC:?}/anyctx
fi

ignorelist=$src_dir/fuzz/coverage.ignorelist
if [[ $CXXFLAGS == *-fsanitize=fuzzer* || $CXXFLAGS == *-fsanitize-coverage=* ]]; then
  CXXFLAGS+=" -fsanitize-coverage-ignorelist=$ignorelist"
fi
export AFL_LLVM_DENYLIST=$ignorelist

build=$WORK/anyctx-build
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)

# CMAKE_BUILD_TYPE stays empty so that no -O or -DNDEBUG of a build type is
# added to the engine's flags.
cmake -S "$src_dir" -B "$build" "${generator[@]}" \
  -DCMAKE_BUILD_TYPE= \
  -DCMAKE_CXX_COMPILER="$CXX" \
  -DCMAKE_CXX_FLAGS="$CXXFLAGS" \
  -DANYCTX_SANITIZER=external \
  -DANYCTX_FUZZ_LINK_FLAGS="$LIB_FUZZING_ENGINE" \
  -DANYCTX_BUILD_TESTS=OFF \
  -DANYCTX_BUILD_BENCH=OFF \
  -DANYCTX_BUILD_FUZZ=ON
cmake --build "$build" --target anyctx_fuzzers -j "$(nproc)"

mkdir -p "$OUT"
count=0
for bin in "$build"/fuzz/fuzz_*; do
  name=${bin##*/fuzz_}
  [[ -f $bin && -x $bin && $name != *.* ]] || continue  # not fuzz_NAME.dict
  cp "$bin" "$OUT/$name"
  for ext in dict options; do
    if [[ -f $src_dir/fuzz/$name.$ext ]]; then
      cp "$src_dir/fuzz/$name.$ext" "$OUT/$name.$ext"
    fi
  done

  # Seeds: corpus/NAME/ as they are, corpus/NAME-regressions/ prefixed with
  # "regression-" so that equal names in the two never collide.
  seeds=$WORK/seeds/$name
  rm -rf "$seeds"
  mkdir -p "$seeds"
  if [[ -d $src_dir/corpus/$name ]]; then
    find "$src_dir/corpus/$name" -maxdepth 1 -type f -exec cp -t "$seeds" {} +
  fi
  if [[ -d $src_dir/corpus/$name-regressions ]]; then
    for f in "$src_dir/corpus/$name-regressions"/*; do
      [[ -f $f ]] && cp "$f" "$seeds/regression-${f##*/}"
    done
  fi
  rm -f "$OUT/${name}_seed_corpus.zip"
  if [[ -n $(ls -A "$seeds") ]]; then
    (cd "$seeds" && zip -q -X "$OUT/${name}_seed_corpus.zip" ./*)
  fi
  count=$((count + 1))
  beside=()
  for f in "$OUT/$name.dict" "$OUT/$name.options" "$OUT/${name}_seed_corpus.zip"; do
    [[ -f $f ]] && beside+=("${f##*/}")
  done
  echo "build.sh: $OUT/$name, beside it: ${beside[*]:-nothing}"
done

if ((count == 0)); then
  echo "build.sh: no fuzz targets were built in $build/fuzz" >&2
  exit 1
fi
echo "build.sh: $count fuzz targets in $OUT"
