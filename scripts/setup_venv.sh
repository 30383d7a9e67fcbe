# Sourced by scripts/test.sh and scripts/demo.sh: creates .venv in the repository root on
# first use and (re)installs cerebro-bp with its test and torch extras whenever setup.cfg
# changed since the last install. Needs python3 (3.10+) on PATH, or PYTHON set.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  echo "Creating .venv with ${PYTHON:-python3} ..."
  "${PYTHON:-python3}" -m venv .venv
fi
stamp=.venv/.cerebro-bp-installed
wanted=$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "Installing cerebro-bp and its dependencies into .venv (first use: a few minutes) ..."
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[test,torch]'
  echo "$wanted" > "$stamp"
fi
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
# glibc (Linux): XLA's CPU runtime allocates each step's scratch memory (192 MiB for
# CEReBrO small's train step at 32 windows a device) afresh. hugetlb=1 backs such blocks
# with transparent huge pages (a few hundred page faults a step instead of 49,000:
# training 1.09-1.12x faster); mmap_max=0 and a 16-GiB trim_threshold keep freed blocks
# in malloc's heap, so that a step allocated on the main thread (main.py's synchronous
# CPU dispatch) reuses the last step's pages without faults (one device 1.02-1.17x
# faster). See docs/benchmarks.md. The process keeps its peak memory until it exits.
# Other C libraries ignore it; a value of your own (even empty) is kept.
export GLIBC_TUNABLES="${GLIBC_TUNABLES-glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
