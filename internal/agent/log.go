package agent

import (
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
)

// NewLogger builds the agent's logger from log.level and log.format (already validated). It
// writes through a LogWriter, so a log reader that went away never fails the agent.
func NewLogger(w io.Writer, level, format string) *slog.Logger {
	var l slog.Level
	switch strings.ToLower(level) {
	case "debug":
		l = slog.LevelDebug
	case "warn":
		l = slog.LevelWarn
	case "error":
		l = slog.LevelError
	default:
		l = slog.LevelInfo
	}
	if _, ok := w.(*LogWriter); !ok {
		w = NewLogWriter(w)
	}
	opts := &slog.HandlerOptions{Level: l}
	if strings.ToLower(format) == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// LogWriter is the agent's stderr as the logger sees it. Power safety must not depend on who
// reads the logs: once a write fails (EPIPE after `| tee` died, EIO after the terminal hung up)
// every later line is dropped and counted instead of written, and no write ever reports an
// error that could stop the caller.
type LogWriter struct {
	mu      sync.Mutex
	w       io.Writer
	broken  bool
	dropped atomic.Uint64
}

// NewLogWriter wraps w.
func NewLogWriter(w io.Writer) *LogWriter { return &LogWriter{w: w} }

// Write writes p whole, or drops it once the underlying writer has failed.
func (lw *LogWriter) Write(p []byte) (int, error) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	if !lw.broken {
		if _, err := lw.w.Write(p); err == nil {
			return len(p), nil
		}
		lw.broken = true
	}
	lw.dropped.Add(1)
	return len(p), nil
}

// Dropped is how many writes were dropped since the writer broke.
func (lw *LogWriter) Dropped() uint64 { return lw.dropped.Load() }
