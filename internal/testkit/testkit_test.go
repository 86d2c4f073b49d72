package testkit

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestPollSeesAConditionThatComesTrue(t *testing.T) {
	var calls atomic.Int64
	if !Poll(DefaultWait, func() bool { return calls.Add(1) >= 5 }) {
		t.Fatal("Poll gave up on a condition that holds on its fifth check")
	}
	if n := calls.Load(); n != 5 {
		t.Errorf("condition checked %d times, want 5 (it stops at the first true)", n)
	}
}

func TestPollGivesUpAtItsTimeout(t *testing.T) {
	if Poll(20*time.Millisecond, func() bool { return false }) {
		t.Fatal("Poll reported a condition that never holds")
	}
}

func TestReceive(t *testing.T) {
	ch := make(chan int, 1)
	ch <- 7
	if got := Receive(t, ch, DefaultWait, "a value"); got != 7 {
		t.Errorf("Receive = %d, want 7", got)
	}
}

func TestLogBufferCountsWhatGoroutinesWrite(t *testing.T) {
	log, buf := NewLogger()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() { log.Debug("collected", "worker", i) })
	}
	wg.Wait()
	if n := buf.Count(`level=DEBUG msg=collected`); n != 8 {
		t.Errorf("%d debug lines, want 8:\n%s", n, buf)
	}
	if !buf.Contains(fmt.Sprintf("worker=%d", 3)) {
		t.Errorf("worker 3's line missing:\n%s", buf)
	}
}
