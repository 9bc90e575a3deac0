#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine, then run it all.
# Used by the README and by .ci/run.  Runs as root (apt-get) or with sudo available.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

APT_PACKAGES=(
  gearman-tools gearman-job-server          # gearman/gearadmin CLIs, C gearmand (the oracle)
  php-cli php-gearman                       # PHP client/worker tests
  libgearman-client-perl libjson-pp-perl    # Perl Gearman::Client tests
  memcached libtokyocabinet9                # queue backends
  procps iproute2 curl                      # ps/pgrep, ss, HTTP checks
  build-essential sysvinit-utils            # native launcher build; /lib/lsb/init-functions
  prometheus chromium                       # metrics port: real scraper, status page
)
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${APT_PACKAGES[@]}" >/dev/null

python3 -m pip install -q --disable-pip-version-check -e '.[test]'

# Put this project's console scripts first on PATH (Debian's /usr/bin/gearmand is a
# different program; C gearmand is called by its full path /usr/sbin/gearmand).
BIN_DIR="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
export PATH="$BIN_DIR:$PATH"

python3 -m pytest -q -p no:cacheprovider "$@"
