package metrics

import (
	"fmt"
	"strings"
)

//go:generate go run ./gen -o ../../docs/metrics.md

// Markdown renders the metric reference, docs/metrics.md, from Table.
func Markdown() string {
	var sb strings.Builder
	sb.WriteString("# Metrics reference\n\n")
	sb.WriteString("Generated from `internal/metrics/table.go` by `make generate`; do not edit by hand.\n\n")
	sb.WriteString("Every metric is exported through OTLP with the name below, and on the Prometheus endpoint\n")
	sb.WriteString("under the OpenTelemetry-to-Prometheus translation of that name (dots become underscores,\n")
	sb.WriteString("the unit and `_total` for counters are appended: `hw.power` is `hw_power_watts`).\n\n")
	sb.WriteString("Resource attributes on every metric: `service.name` (capstan), `service.version`, `host.name`,\n")
	sb.WriteString("`host.id` (where /etc/machine-id is readable), `k8s.node.name` (when `$NODE_NAME` is set).\n\n")
	// Each source's metrics form one section, in the order the sources first appear, so a
	// table file of their own (table_gpu.go) joins the section of its collector.
	var sources []string
	bySource := map[string][]*Def{}
	for _, d := range Table {
		s := d.Sources[0]
		if _, ok := bySource[s]; !ok {
			sources = append(sources, s)
		}
		bySource[s] = append(bySource[s], d)
	}
	for _, source := range sources {
		fmt.Fprintf(&sb, "## %s\n\n", sourceTitle(source))
		sb.WriteString("| name | instrument | unit | attributes | collectors | description |\n")
		sb.WriteString("| --- | --- | --- | --- | --- | --- |\n")
		for _, d := range bySource[source] {
			attrs := make([]string, len(d.Attributes))
			for i, a := range d.Attributes {
				attrs[i] = "`" + a + "`"
			}
			desc := d.Description
			if !d.OnByDefault() {
				desc = "Off by default (`metrics." + d.Name + ".enabled`). " + desc
			}
			fmt.Fprintf(&sb, "| `%s` | %s | `%s` | %s | %s | %s |\n", d.Name, d.Kind, d.Unit, strings.Join(attrs, ", "), strings.Join(d.Sources, ", "), desc)
		}
		sb.WriteString("\n")
	}
	return sb.String()
}

func sourceTitle(source string) string {
	switch source {
	case "gpu":
		return "GPU (collector `gpu`)"
	case "agent":
		return "The agent itself"
	}
	return "Collector `" + source + "`"
}
