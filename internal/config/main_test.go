package config

import (
	"os"
	"testing"
	"time"
)

// TestMain registers stand-ins for the real collectors, which live in packages that import this
// one, and pins the node name that Default reads from the environment.
func TestMain(m *testing.M) {
	RegisterCollector("gpu", true, time.Second)
	RegisterCollector("cpufreq", false, 10*time.Second)
	if err := os.Setenv("NODE_NAME", "test-node"); err != nil {
		panic(err)
	}
	os.Exit(m.Run())
}
