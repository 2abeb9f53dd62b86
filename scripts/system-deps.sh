#!/usr/bin/env bash
# Debian packages the integration tests drive for real, installed where any of
# their binaries is missing. Every binary is checked on its own: a machine once
# had `chromium` without `chromedriver`, and the dashboard test failed.
#
#   binary                    Debian package            used by
#   prometheus                prometheus                tests/test_prometheus.py (scrapes a worker)
#   promtool                  prometheus                tests/test_deploy_compose.py (rules, config)
#   chromium                  chromium                  tests/test_dashboard.py (loads the dashboard)
#   chromedriver              chromium-driver           tests/test_dashboard.py (selenium's driver)
#   prometheus-alertmanager   prometheus-alertmanager   alert delivery tests (a real Alertmanager)
#   amtool                    prometheus-alertmanager   alert delivery tests (config checks)
#
# `scripts/system-deps.sh --check` only lists what is missing (exit 1 if anything is).
set -euo pipefail
binaries=(
  "prometheus prometheus"
  "promtool prometheus"
  "chromium chromium"
  "chromedriver chromium-driver"
  "prometheus-alertmanager prometheus-alertmanager"
  "amtool prometheus-alertmanager"
)
need=()
for entry in "${binaries[@]}"; do
  read -r binary package <<<"$entry"
  if ! command -v "$binary" >/dev/null 2>&1; then
    echo "missing: $binary (Debian package $package)"
    [[ " ${need[*]-} " == *" $package "* ]] || need+=("$package")
  fi
done
[ ${#need[@]} -eq 0 ] && exit 0
[ "${1-}" = "--check" ] && exit 1
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing ${need[*]} (Debian packages) for the tests"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
