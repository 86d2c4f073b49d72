package panics

import "testing"

// A panic under Recover reaches the handler with the goroutine's name and value, and is raised
// again.
func TestRecoverHandsThePanicOnAndPanicsAgain(t *testing.T) {
	var gotName string
	var gotValue any
	restore := Handle(func(name string, v any) { gotName, gotValue = name, v })
	defer restore()
	var again any
	func() {
		defer func() { again = recover() }()
		run("exporter", func() { panic("boom") })
	}()
	if gotName != "exporter" || gotValue != "boom" {
		t.Errorf("handler got %q, %v; want exporter, boom", gotName, gotValue)
	}
	if again != "boom" {
		t.Errorf("the panic was not raised again: %v", again)
	}
}

// Without a panic the handler is not called; Handle's restore puts the previous one back.
func TestHandleRestores(t *testing.T) {
	calls := 0
	outer := Handle(func(string, any) { calls++ })
	inner := Handle(func(string, any) { t.Error("the inner handler ran after it was restored away") })
	run("quiet", func() {})
	inner()
	func() {
		defer func() { _ = recover() }()
		run("loud", func() { panic(1) })
	}()
	outer()
	if calls != 1 {
		t.Errorf("outer handler called %d times, want 1", calls)
	}
	func() {
		defer func() { _ = recover() }()
		run("unhandled", func() { panic(2) }) // no handler: re-raised all the same
	}()
}
