// Command argcheck checks capstan command lines for tests that cannot link the agent's
// collectors themselves (a binary that imports Go's plugin package binds every symbol at load,
// and go-nvml's NVML symbols only resolve once the driver's library is opened).
//
// It reads one JSON array of arguments per line on stdin and writes one JSON object per line:
// {"config": the effective configuration as YAML} or {"error": the agent's message}.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"

	"github.com/capstan-power/capstan/internal/agent/cmdline"
)

type result struct {
	Config string `json:"config,omitempty"`
	Error  string `json:"error,omitempty"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "argcheck:", err)
		os.Exit(1)
	}
}

func run() error {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 0, 64<<10), 1<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var args []string
		if err := json.Unmarshal(in.Bytes(), &args); err != nil {
			return fmt.Errorf("reading a command line: %w", err)
		}
		var r result
		cfg, err := cmdline.Parse(args)
		if err == nil {
			var y []byte
			y, err = cfg.YAML()
			r.Config = string(y)
		}
		if err != nil {
			r.Error = err.Error()
		}
		if err := out.Encode(r); err != nil {
			return err
		}
	}
	return in.Err()
}
