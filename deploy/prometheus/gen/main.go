// Command gen copies deploy/prometheus/capstan-rules.yaml, the alert rules, into the Helm chart
// (files/capstan-rules.yaml, which templates/prometheusrule.yaml wraps) and into the kustomize
// component components/prometheusrule as a PrometheusRule, so that the three never differ.
// Run from deploy/ by `go generate` (make generate).
package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

const (
	source    = "prometheus/capstan-rules.yaml"
	helmCopy  = "helm/capstan/files/capstan-rules.yaml"
	component = "kustomize/components/prometheusrule/prometheusrule.yaml"
	generated = "# Generated from deploy/" + source + " by `make generate`; edit that file, not this one.\n"
)

// ruleObject is the PrometheusRule the kustomize component applies; the rules follow as spec.
const ruleObject = `apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: capstan
  namespace: capstan-system
  labels:
    app.kubernetes.io/name: capstan
spec:
`

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

func run() error {
	src, err := os.ReadFile(source)
	if err != nil {
		return fmt.Errorf("reading the rules: %w", err)
	}
	rules := withoutHeader(src)
	if err := write(helmCopy, generated+string(rules)); err != nil {
		return err
	}
	return write(component, generated+ruleObject+indent(rules, "  "))
}

// withoutHeader drops the source's leading comment block, which speaks of the source itself.
func withoutHeader(src []byte) []byte {
	for len(src) > 0 && (src[0] == '#' || src[0] == '\n') {
		i := bytes.IndexByte(src, '\n')
		if i < 0 {
			return nil
		}
		src = src[i+1:]
	}
	return src
}

func indent(b []byte, prefix string) string {
	var sb strings.Builder
	for line := range strings.Lines(string(b)) {
		if strings.TrimSpace(line) != "" {
			sb.WriteString(prefix)
		}
		sb.WriteString(line)
	}
	return sb.String()
}

func write(path, content string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
