package agent

import (
	"strings"
	"syscall"
	"testing"

	"github.com/capstan-power/capstan/internal/testkit"
)

// A panic under the guard runs the registered exit once, logs the panic, and panics again so
// that the process still dies of it.
func TestGuardRestoresThenPanicsAgain(t *testing.T) {
	log, logs := testkit.NewLogger()
	g := newGuard(log)
	exits := 0
	g.onPanic(func() { exits++ })
	var again any
	func() {
		defer func() { again = recover() }()
		defer g.recover("test")
		panic("boom")
	}()
	if again != "boom" {
		t.Errorf("re-panicked with %v, want the original boom", again)
	}
	if exits != 1 {
		t.Errorf("exit ran %d times, want 1", exits)
	}
	if !logs.Contains("panic; restoring GPU limits before exiting") || !logs.Contains("boom") {
		t.Errorf("the panic was not logged: %s", logs)
	}
}

// Without a running controller (none started, or it already stopped) a panic only panics.
func TestGuardWithoutExit(t *testing.T) {
	log, _ := testkit.NewLogger()
	g := newGuard(log)
	g.onPanic(func() { t.Error("a cleared exit ran") })
	g.onPanic(nil)
	var again any
	func() {
		defer func() { again = recover() }()
		defer g.recover("test")
		panic("boom")
	}()
	if again != "boom" {
		t.Errorf("re-panicked with %v, want boom", again)
	}
}

// brokenPipe fails every write after the first n, as stderr does once its reader died.
type brokenPipe struct {
	n     int
	lines []string
}

func (b *brokenPipe) Write(p []byte) (int, error) {
	if len(b.lines) >= b.n {
		return 0, syscall.EPIPE
	}
	b.lines = append(b.lines, string(p))
	return len(p), nil
}

// Once stderr breaks, lines are dropped and counted, never reported as errors, and the writer
// does not try the dead reader again.
func TestLogWriterDropsLinesAfterABrokenPipe(t *testing.T) {
	pipe := &brokenPipe{n: 1}
	w := NewLogWriter(pipe)
	log := NewLogger(w, "info", "logfmt")
	log.Info("first")
	log.Info("second")
	log.Info("third")
	if len(pipe.lines) != 1 || !strings.Contains(pipe.lines[0], "first") {
		t.Errorf("written: %q, want only the first line", pipe.lines)
	}
	if got := w.Dropped(); got != 2 {
		t.Errorf("dropped %d lines, want 2", got)
	}
	if n, err := w.Write([]byte("x\n")); err != nil || n != 2 {
		t.Errorf("Write after the break = %d, %v; want 2, nil", n, err)
	}
}
