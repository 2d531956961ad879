#!/usr/bin/env bash
# Installs what lowbit needs to build and test, from Debian packages (run as root, or with sudo).
set -euo pipefail
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  build-essential cmake ninja-build pkg-config git ca-certificates \
  libopenblas-openmp-dev liblapacke-dev \
  nlohmann-json3-dev libcli11-dev libfmt-dev libpcre2-dev libsentencepiece-dev \
  libsqlite3-dev libpq-dev postgresql libzstd-dev zstd zlib1g-dev libssl-dev libtomlplusplus-dev \
  libjpeg-dev libpng-dev \
  libgtest-dev libgmock-dev libbenchmark-dev \
  gnuplot-nox \
  clang libclang-rt-14-dev
