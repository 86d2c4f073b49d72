package agent

import (
	"log/slog"

	"github.com/coreos/go-systemd/v22/daemon"
)

// notifySystemd tells systemd (Type=notify) how the agent stands: READY=1 once every collector
// has reported, RELOADING=1 on SIGHUP, STOPPING=1 on shutdown. Outside systemd ($NOTIFY_SOCKET
// unset) it does nothing.
func notifySystemd(log *slog.Logger, state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		log.Warn("telling systemd the agent's state", "state", state, "err", err)
	}
}
