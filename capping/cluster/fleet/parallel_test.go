package fleet

import (
	"fmt"
	"reflect"
	"runtime"
	"testing"
	"time"
)

// A run's report depends on its file and seed only, never on how many cores stepped its nodes:
// the nodes run their periods in parallel between the allocator's rounds, each on its own
// clock, and everything they share is summed in node order after the period.
func TestRunSameOnAnyCoreCount(t *testing.T) {
	f, err := Parse("f.yaml", []byte(`
fast_sample: true
domains:
  site: {limit_w: 60000}
  site/a: {limit_w: 20000, nodes: 5, gpus: 8, trace: inference, offset: 7m}
  site/b: {limit_w: 9000, nodes: 4, gpus: 4, model: A100, trace: training}
  site/c: {limit_w: 12000, nodes: 6, gpus: 2, model: H200, trace: lockstep}
  site/d: {limit_w: 15000, nodes: 3, gpus: 8, model: B200, trace: bursty, offset: 1m}
`))
	if err != nil {
		t.Fatal(err)
	}
	prev := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
	var want *Report
	for _, procs := range []int{1, 2, 3, 8} {
		runtime.GOMAXPROCS(procs)
		rep, err := Run(Options{File: f, Duration: 2 * time.Minute, Settings: settings(), Seed: 5, Baselines: true, StateDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		rep.Wall = 0
		if rep.FastCuts == 0 || rep.GrantWrites == 0 {
			t.Fatalf("GOMAXPROCS=%d: %d fast cuts, %d grant writes: the fleet never bound, so the test shows nothing", procs, rep.FastCuts, rep.GrantWrites)
		}
		if want == nil {
			want = rep
			continue
		}
		if !reflect.DeepEqual(rep, want) {
			t.Errorf("GOMAXPROCS=%d: the report differs from GOMAXPROCS=1's:\n%s\nwant\n%s", procs, fmt.Sprintf("%+v", *rep), fmt.Sprintf("%+v", *want))
		}
	}
}
