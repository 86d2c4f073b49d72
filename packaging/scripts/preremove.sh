#!/bin/sh
# Capstan pre-remove: stop the service on removal, which restores the GPUs' original power
# limits (capping.on-exit: restore), and disable it. An upgrade leaves it running; the new
# package restarts it.
set -e
unit=capstan.service

# Debian runs "prerm remove" on removal and "prerm upgrade NEW-VERSION" on upgrade; RPM runs
# %preun with 0 on erase and 1 on upgrade.
case "$1" in
  remove|0)
    if [ -d /run/systemd/system ]; then
      systemctl stop "$unit" || echo "capstan: stopping $unit failed; check the GPUs' power limits" >&2
    fi
    if command -v systemctl >/dev/null 2>&1; then
      systemctl disable "$unit" >/dev/null 2>&1 || true
    fi
    ;;
esac
exit 0
