package agent

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/capstan-power/capstan/internal/config"
)

// TestSystemdNotify runs the agent as systemd would with Type=notify: it must say READY=1 once
// its collectors reported, RELOADING=1 and READY=1 again on SIGHUP, and STOPPING=1 on shutdown.
func TestSystemdNotify(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)

	cfg := config.Default()
	cfg.Node.Name = "test-node"
	cfg.GPU.Backend = "sim"
	cfg.GPU.Sim.Count = 2
	cfg.Web.ListenAddress = "127.0.0.1:0"
	for name, c := range cfg.Collectors {
		c.Enabled = name == "gpu"
		cfg.Collectors[name] = c
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hup := make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, cfg, Options{
			Log:    slog.New(slog.NewTextHandler(io.Discard, nil)),
			Reload: func() (*config.Config, error) { return cfg, nil },
			Hangup: hup,
		})
	}()

	next := func() string {
		t.Helper()
		buf := make([]byte, 256)
		if err := conn.SetReadDeadline(time.Now().Add(20 * time.Second)); err != nil {
			t.Fatal(err)
		}
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no notification from the agent: %v", err)
		}
		return string(buf[:n])
	}
	if got := next(); got != "READY=1" {
		t.Fatalf("first notification = %q, want READY=1", got)
	}
	hup <- os.Interrupt // any signal value: Run only counts arrivals
	for _, want := range []string{"RELOADING=1", "READY=1"} {
		if got := next(); got != want {
			t.Fatalf("after SIGHUP: notification = %q, want %q", got, want)
		}
	}
	cancel()
	if got := next(); got != "STOPPING=1" {
		t.Fatalf("on shutdown: notification = %q, want STOPPING=1", got)
	}
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}
