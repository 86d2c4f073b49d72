// Package panics runs the agent's long-lived goroutines so that a panic in any of them reaches
// the agent's guard before the process dies. A panic ends the process without running any
// other goroutine's deferred calls: without the guard, a bug in an exporter, the etcd member or
// a collector's subscription would leave the GPUs capped. Every goroutine the agent starts,
// in whatever package, starts through Go (or defers Recover first).
package panics

import (
	"fmt"
	"os"
	"sync"
)

// Handler is told of a panic (the goroutine's name and the recovered value) before the process
// dies of it: the agent's guard logs the stack and puts the GPUs' limits back.
type Handler func(goroutine string, value any)

var (
	mu      sync.Mutex
	handler Handler
)

// Handle installs h for every goroutine started through Go and returns what puts the previous
// handler back.
func Handle(h Handler) (restore func()) {
	mu.Lock()
	prev := handler
	handler = h
	mu.Unlock()
	return func() {
		mu.Lock()
		handler = prev
		mu.Unlock()
	}
}

// Go runs f in a new goroutine named name (for the panic's log line) under Recover.
func Go(name string, f func()) { go run(name, f) }

func run(name string, f func()) {
	defer Recover(name)
	if injected == name {
		<-armed
		panic(fmt.Sprintf("injected by %s in goroutine %q", testFaultEnv, name))
	}
	f()
}

// Recover, deferred first by a goroutine, hands a panic to the handler, then panics again so
// that the process still dies of it, with its stack and a non-zero status.
func Recover(name string) {
	r := recover()
	if r == nil {
		return
	}
	mu.Lock()
	h := handler
	mu.Unlock()
	if h != nil {
		h(name, r)
	}
	panic(r)
}

// testFaultEnv, set by cmd/capstan's end-to-end tests to "panic:NAME", makes the goroutine NAME
// panic once Arm is called (the agent arms it when ready, so that capping runs), instead of
// running: it proves that a goroutine outside the agent's package reaches the guard. A
// goroutine the agent waits for before it is ready (a collector's first collection) cannot be
// named: it would wait for Arm forever.
const testFaultEnv = "CAPSTAN_TEST_INJECT_FAULT"

var (
	injected = injectedName()
	armed    = make(chan struct{})
	armOnce  sync.Once
)

func injectedName() string {
	v := os.Getenv(testFaultEnv)
	if len(v) > len("panic:") && v[:len("panic:")] == "panic:" {
		return v[len("panic:"):]
	}
	return ""
}

// Arm lets an injected panic happen.
func Arm() { armOnce.Do(func() { close(armed) }) }
