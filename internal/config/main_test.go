package config

import (
	"os"
	"testing"
	"time"

	"github.com/capstan-power/capstan/collectors"
	// Two real collectors with options of their own, whose sections (nic, workload) the tests
	// read, write and validate.
	_ "github.com/capstan-power/capstan/collectors/nic"
	_ "github.com/capstan-power/capstan/collectors/workload"
)

// TestMain registers stand-ins for two collectors without options of their own, and pins the
// node name that Default reads from the environment.
func TestMain(m *testing.M) {
	registerStandIn("gpu", true, time.Second)
	registerStandIn("cpufreq", false, 10*time.Second)
	if err := os.Setenv("NODE_NAME", "test-node"); err != nil {
		panic(err)
	}
	os.Exit(m.Run())
}

func registerStandIn(name string, enabled bool, interval time.Duration) {
	collectors.Register(collectors.Factory{Name: name, EnabledByDefault: enabled, Interval: interval,
		New: func(collectors.Settings, collectors.Config) (collectors.Collector, error) { return nil, nil }})
}
