// Command gen writes docs/metrics.md from the metric table.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/capstan-power/capstan/internal/metrics"
)

func main() {
	out := flag.String("o", "docs/metrics.md", "file to write")
	flag.Parse()
	if err := os.WriteFile(*out, []byte(metrics.Markdown()), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "writing metrics reference:", err)
		os.Exit(1)
	}
}
