#!/usr/bin/env bash
# Build llama.cpp's native `llama-server` FOR THE BENCHMARK ONLY (bench/bench_cpu.py's peer), from the llama.cpp
# sources vendored in the llama-cpp-python sdist of the version installed in the venv, so both run the same kernels.
# Output: bench/.build/llama-server (git-ignored). Never shipped, never committed. ≈6 min on 2 idle cores.
#
# Usage: bench/build_llama_server.sh [--force]
# Env:   PYTHON (default .venv/bin/python), JOBS (default nproc), LLAMA_CPP_PYTHON_VERSION (default: the installed one)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/bench/.build"
python="${PYTHON:-$root/.venv/bin/python}"
jobs="${JOBS:-$(nproc)}"
force=0
[[ "${1:-}" == "--force" ]] && force=1

if [[ -x "$out/llama-server" && $force -eq 0 ]]; then
  echo "already built: $out/llama-server (--force rebuilds)"
  exit 0
fi

version="${LLAMA_CPP_PYTHON_VERSION:-$("$python" -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))')}"
mkdir -p "$out"
src_root="$out/src"
sdist_dir="$src_root/llama_cpp_python-$version"
if [[ ! -d "$sdist_dir/vendor/llama.cpp" ]]; then
  rm -rf "$src_root" && mkdir -p "$src_root"
  echo "downloading the llama-cpp-python $version sdist"
  "$python" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$src_root"
  tar -xzf "$src_root/llama_cpp_python-$version.tar.gz" -C "$src_root"
fi
llama_src="$sdist_dir/vendor/llama.cpp"

# Same CPU backend choices as llama-cpp-python's default build (native ISA, OpenMP threadpool, Release).
# LLAMA_CURL is deprecated in this llama.cpp (model download is off without it); no web UI (it would fetch assets),
# no HTTPS (loopback only), no tests/examples.
cmake -S "$llama_src" -B "$out/cmake" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=OFF \
  -DGGML_NATIVE=ON \
  -DGGML_OPENMP=ON \
  -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_TOOLS=ON \
  -DLLAMA_BUILD_COMMON=ON \
  -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_UI=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_OPENSSL=OFF \
  >"$out/cmake-configure.log"
echo "building llama-server with $jobs job(s) (log: $out/cmake-build.log)"
cmake --build "$out/cmake" --target llama-server -j "$jobs" >"$out/cmake-build.log"
cp "$out/cmake/bin/llama-server" "$out/llama-server"
"$out/llama-server" --version 2>&1 | head -n 3 || true
echo "built: $out/llama-server"
