#!/usr/bin/env bash
# Creates (once) the Python environment outside the clone and points it at this clone.
# Dependencies are reinstalled only when pyproject.toml changes; the project itself is
# installed editable, so re-pointing a venv at another clone costs seconds, not a rebuild.
set -euo pipefail
cache="${MEDSHARE_CACHE_DIR:-$HOME/.cache/medshare}"
venv="$cache/venv"
here="$(cd "$(dirname "$0")/.." && pwd)"
stamp="$venv/.deps-$(sha256sum "$here/pyproject.toml" | cut -c1-16)"

if [ ! -x "$venv/bin/python" ]; then
  echo "medshare: creating Python environment in $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip setuptools wheel
fi
if [ ! -f "$stamp" ]; then
  echo "medshare: installing Python dependencies (first run takes a few minutes)"
  "$venv/bin/pip" install -q -e "$here[dev]"
  rm -f "$venv"/.deps-* && touch "$stamp"
fi
# Asked from / so the current folder cannot answer in place of the installed package.
where="$(cd / && "$venv/bin/python" -c 'import lakehouse, os; print(os.path.dirname(os.path.dirname(lakehouse.__file__)))' 2>/dev/null || true)"
if [ "$where" != "$here" ]; then
  "$venv/bin/pip" install -q --no-deps --no-build-isolation -e "$here"
fi
# Delta Sharing recipients' environment: the official client pins an older pyarrow than ours, so
# it gets its own venv (as on a hospital's machine); demo, tests and benchmark run it as a process.
recipient="$cache/recipient-venv"
if [ ! -f "$recipient/.delta-sharing-1.4.2" ]; then
  echo "medshare: creating the Delta Sharing recipient environment in $recipient"
  python3 -m venv "$recipient"
  "$recipient/bin/pip" install -q "delta-sharing==1.4.2"
  touch "$recipient/.delta-sharing-1.4.2"
fi
# The clinician page's test drives Debian's Chromium (no browser download: the machine has no
# internet beyond package registries). Installed only where we may: as root with apt-get.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "medshare: installing Debian's chromium for the browser tests"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q chromium >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
fi
