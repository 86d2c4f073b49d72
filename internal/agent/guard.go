package agent

import (
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"sync"
)

// guard runs the agent's goroutines. A panic in a goroutine ends the process at once, without
// running any other goroutine's deferred calls, so the limits would stay capped with a state
// file that says "not clean": the guard recovers it, puts the GPUs' limits back through the
// registered exit (once, also when the main goroutine is stopping at the same time), then
// panics again so that the process still dies of it, with the stack and a non-zero status.
type guard struct {
	log *slog.Logger

	mu   sync.Mutex
	exit func() // the running controller's stop; nil while none runs
}

func newGuard(log *slog.Logger) *guard { return &guard{log: log} }

// onPanic sets what a panic does to the limits before the process dies; nil clears it.
func (g *guard) onPanic(exit func()) {
	g.mu.Lock()
	g.exit = exit
	g.mu.Unlock()
}

// Go runs f in a goroutine under the guard; name says which in the panic's log line.
func (g *guard) Go(name string, f func()) {
	go func() {
		defer g.recover(name)
		f()
	}()
}

// recover is deferred by every guarded goroutine and by Run itself.
func (g *guard) recover(name string) {
	r := recover()
	if r == nil {
		return
	}
	g.handle(name, r)
	panic(r)
}

// handle logs a panic with its stack and runs the registered exit. Goroutines started outside
// this package (through panics.Go) reach it too, once Run installed it.
func (g *guard) handle(name string, r any) {
	g.log.Error("panic; restoring GPU limits before exiting", "goroutine", name, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	g.mu.Lock()
	exit := g.exit
	g.mu.Unlock()
	if exit != nil {
		exit()
	}
}

// testFaultEnv names a fault for cmd/capstan's end-to-end tests to inject, to prove that the
// limits are restored on ways out that a healthy agent never takes. Only those tests set it;
// the name is long and documented nowhere for users, so nobody trips on it. Its values:
//   - goroutine-panic: a guarded goroutine panics once the agent is ready;
//   - panic:NAME: the goroutine NAME, started through panics.Go in any package, panics once
//     the agent is ready (see package panics);
//   - start-after-reload: every start after the first fails, as a reloaded configuration and
//     the previous one would when neither can start any more.
const testFaultEnv = "CAPSTAN_TEST_INJECT_FAULT"

const (
	faultGoroutinePanic   = "goroutine-panic"
	faultStartAfterReload = "start-after-reload"
)

func injectedFault() string { return os.Getenv(testFaultEnv) }
