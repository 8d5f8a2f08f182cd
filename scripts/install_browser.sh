#!/bin/sh
# Installs Debian's chromium and chromium-driver for the browser tests, when
# they are missing and this runs as root with apt-get. Otherwise it says why
# not and exits 0: tests/browser then skips with that reason.
set -u
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "install_browser: chromium is missing and installing it needs root (apt-get install chromium chromium-driver)" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser: chromium is missing and there is no apt-get here" >&2
  exit 0
fi
echo "install_browser: apt-get install chromium chromium-driver" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null \
  || echo "install_browser: apt-get could not install chromium; the browser tests will skip" >&2
exit 0
