#!/bin/sh
# Capstan post-install: state directory, unit reload, enable (not start) on a first install,
# restart on upgrade. Works without a running systemd (containers, image builds, chroots): the
# unit is then only enabled.
set -e
unit=capstan.service

# Debian runs "postinst configure OLD-VERSION" (OLD-VERSION empty on a first install); RPM runs
# %post with 1 on a first install and 2 or more on an upgrade.
action=install
case "$1" in
  configure) [ -z "$2" ] || action=upgrade ;;
  abort-*) action=abort ;;
  [0-9]*) [ "$1" -lt 2 ] || action=upgrade ;;
esac

install -d -m 0750 -o root -g root /var/lib/capstan

running=false
# The check sd_booted(3) makes: systemd is PID 1 exactly when this directory exists.
[ -d /run/systemd/system ] && running=true
if $running; then
  systemctl daemon-reload || true
fi

case "$action" in
  install)
    # Enabled, not started: review /etc/capstan/capstan.yaml, then "systemctl start capstan".
    if command -v systemctl >/dev/null 2>&1; then
      systemctl enable "$unit" >/dev/null 2>&1 || echo "capstan: could not enable $unit; enable it by hand" >&2
    fi
    echo "capstan: installed and enabled; start it with: systemctl start capstan"
    ;;
  upgrade)
    # try-restart restarts only a running service; a stopped one stays stopped.
    if $running; then
      systemctl try-restart "$unit" || echo "capstan: restarting $unit failed; see journalctl -u capstan" >&2
    fi
    ;;
esac
exit 0
