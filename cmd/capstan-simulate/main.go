// Command capstan-simulate is Capstan's what-if simulator: `capstan simulate` (the controller
// against a simulated node, faster than real time) and `capstan simulate fleet` (a fleet of nodes
// in a power domain tree). Users run it as `capstan simulate …`, which executes this binary from
// beside capstan or from $PATH; it is a binary of its own so that the agent does not carry the
// simulator and its plotting.
package main

import (
	"os"

	"github.com/capstan-power/capstan/internal/simcmd"
)

func main() {
	os.Exit(simcmd.Run(os.Args[1:], os.Stdout, os.Stderr))
}
