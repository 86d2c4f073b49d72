// Command gen writes docs/configuration.md from the declarations of the configuration's keys,
// with every collector the agent ships registered.
package main

import (
	"flag"
	"fmt"
	"os"

	_ "github.com/capstan-power/capstan/collectors/all"
	"github.com/capstan-power/capstan/internal/config"
)

func main() {
	out := flag.String("o", "docs/configuration.md", "file to write")
	flag.Parse()
	if err := os.WriteFile(*out, []byte(reference()), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "writing configuration reference:", err)
		os.Exit(1)
	}
}

// reference renders the reference with the node name's default as the host decides it.
func reference() string { return config.Markdown() }
