#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine, then run it all.
# Used by the README and by .ci/run.  Runs as root (apt-get) or with sudo available.
#
# Python: $PYTHON (default python3).  When it is externally managed (PEP 668: Debian's own
# python3 refuses `pip install`), the PyPI packages go into a venv, .venv in the checkout,
# made with that Python and reused by later runs; otherwise (pyenv, a venv already
# active) they are installed into it as before.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

APT_PACKAGES=(
  python3 python3-venv                      # Debian's Python: .venv, the packaging tests
  python3-click python3-daemon python3-h11 python3-setuptools python3-wheel  # apt-only test
  gearman-tools gearman-job-server          # gearman/gearadmin CLIs, C gearmand (the oracle)
  php-cli php-gearman                       # PHP client/worker tests
  libgearman-client-perl libjson-pp-perl    # Perl Gearman::Client tests
  memcached libtokyocabinet9                # queue backends
  procps iproute2 curl                      # ps/pgrep, ss, HTTP checks
  build-essential sysvinit-utils            # native launcher build; /lib/lsb/init-functions
  systemd                                   # systemd-analyze verify/security, systemd-sysusers
  git                                       # the sdist test compares with git ls-files
  prometheus chromium                       # metrics port: real scraper, status page
)
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${APT_PACKAGES[@]}" >/dev/null

PYTHON="${PYTHON:-python3}"
if "$PYTHON" - <<'PY'
import os, sys, sysconfig
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if sys.prefix == sys.base_prefix and os.path.exists(marker) else 1)
PY
then
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  PYTHON="$PWD/.venv/bin/python"
fi

"$PYTHON" -m pip install -q --disable-pip-version-check -e '.[test]'

# Put this project's console scripts first on PATH (Debian's /usr/bin/gearmand is a
# different program; C gearmand is called by its full path /usr/sbin/gearmand).
BIN_DIR="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
export PATH="$BIN_DIR:$PATH"

"$PYTHON" -m pytest -q -p no:cacheprovider "$@"
