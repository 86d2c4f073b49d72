#!/bin/sh
# Capstan pre-remove: stop the service on removal, which restores the GPUs' original power
# limits (capping.on-exit: restore). RPM also disables it on erase. Debian keeps the enablement
# link through "remove" (the unit file goes, the link dangles) so that reinstalling the package
# from its config-files state finds the admin's choice again; "purge" removes the link. An
# upgrade leaves the service running; the new package restarts it.
set -e
unit=capstan.service

# Debian runs "prerm remove" on removal and "prerm upgrade NEW-VERSION" on upgrade; RPM runs
# %preun with 0 on erase and 1 on upgrade.
case "$1" in
  remove|0)
    if [ -d /run/systemd/system ]; then
      systemctl stop "$unit" || echo "capstan: stopping $unit failed; check the GPUs' power limits" >&2
    fi
    ;;
esac
if [ "$1" = 0 ] && command -v systemctl >/dev/null 2>&1; then
  systemctl disable "$unit" >/dev/null 2>&1 || true
fi
exit 0
