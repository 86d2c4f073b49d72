#!/bin/sh
# Capstan post-remove: forget the unit; on purge, remove the state directory unless it still
# holds original power limits that were never restored.
set -e

# Debian: "postrm remove", "postrm purge", "postrm upgrade NEW-VERSION", ...; RPM: %postun with
# 0 on erase and 1 on upgrade.
case "$1" in
  remove|purge|0)
    if [ -d /run/systemd/system ]; then
      systemctl daemon-reload || true
    fi
    ;;
esac

if [ "$1" = purge ]; then
  # The enablement links "remove" kept for a reinstall.
  rm -f /etc/systemd/system/*.wants/capstan.service
fi

if [ "$1" = purge ] && [ -d /var/lib/capstan ]; then
  if [ -e /var/lib/capstan/state.json ]; then
    # Left by an agent that stopped without restoring: it holds the GPUs' original limits.
    echo "capstan: keeping /var/lib/capstan/state.json: it holds original GPU power limits that were not restored" >&2
  else
    rm -rf /var/lib/capstan
  fi
fi
exit 0
