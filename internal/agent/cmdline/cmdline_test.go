package cmdline

import (
	"go/parser"
	"go/token"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// collectorImports returns the collector packages a Go file imports: collectors/all, or single
// collectors imported past it.
func collectorImports(t *testing.T, path string) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
	if err != nil {
		t.Fatal(err)
	}
	var pkgs []string
	for _, imp := range f.Imports {
		p, _ := strconv.Unquote(imp.Path.Value)
		if strings.HasPrefix(p, "github.com/capstan-power/capstan/collectors/") {
			pkgs = append(pkgs, p)
		}
	}
	slices.Sort(pkgs)
	return pkgs
}

// The flags of a collector exist only when its package is linked in: the collectors here must be
// the agent's, or a manifest could pass a flag the agent lacks (or the reverse) unnoticed. Both
// import collectors/all and no collector past it.
func TestSameCollectorsAsTheAgent(t *testing.T) {
	agent := collectorImports(t, "../../../cmd/capstan/main.go")
	here := collectorImports(t, "cmdline.go")
	if !slices.Equal(agent, here) {
		t.Fatalf("cmd/capstan imports collectors %v, internal/agent/cmdline imports %v: make them equal", agent, here)
	}
	if want := []string{"github.com/capstan-power/capstan/collectors/all"}; !slices.Equal(here, want) {
		t.Fatalf("internal/agent/cmdline imports collectors %v, want only %v, which the agent imports too", here, want)
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{args: []string{"--gpu.backend=sim", "--no-collector.nic", "--otlp.endpoint=collector:4317"}},
		{args: []string{"--capping.enabled", "--budget.watts=3000"}},
		{args: []string{"--gpu.bakend=sim"}, wantErr: "unknown flag: --gpu.bakend"},
		{args: []string{"--collector.nosuch"}, wantErr: "unknown flag: --collector.nosuch"},
		{args: []string{"--gpu.sim.count=0"}, wantErr: "--gpu.sim.count"},
		{args: []string{"--capping.enabled"}, wantErr: "budget.watts"},
		{args: []string{"run"}, wantErr: `unexpected argument "run"`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			cfg, err := Parse(tc.args)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if cfg.Node.Name == "" {
					t.Fatal("no node name in the effective configuration")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Parse error = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
	cfg, err := Parse([]string{"--gpu.backend=sim", "--no-collector.nic"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.GPU.Backend != "sim" || cfg.Collector("nic").Enabled {
		t.Fatalf("flags not applied: backend %q, nic enabled %v", cfg.GPU.Backend, cfg.Collector("nic").Enabled)
	}
}
