package config

import (
	"bytes"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// YAML renders the configuration as a file with the same keys, every key present and durations
// written as Go durations, such that Parse(name, c.YAML()) gives c back. Values are printed as
// they are, otlp.headers included, so treat the output as being as secret as the file.
func (c *Config) YAML() ([]byte, error) {
	root := encodeStruct(reflect.ValueOf(c).Elem())
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(root); err != nil {
		return nil, fmt.Errorf("rendering the configuration as YAML: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("rendering the configuration as YAML: %w", err)
	}
	return buf.Bytes(), nil
}

// encodeStruct builds a mapping node of v's keyed fields in declaration order.
func encodeStruct(v reflect.Value) *yaml.Node {
	n := &yaml.Node{Kind: yaml.MappingNode}
	for _, f := range fields(v) {
		n.Content = append(n.Content, str(f.name), encodeValue(f.v))
	}
	return n
}

// encodeValue builds the node of one field: a nested mapping, a sorted map, or a scalar.
func encodeValue(v reflect.Value) *yaml.Node {
	switch {
	case v.Kind() == reflect.Struct:
		return encodeStruct(v)
	case v.Kind() == reflect.Map:
		n := &yaml.Node{Kind: yaml.MappingNode}
		if v.Len() == 0 {
			n.Style = yaml.FlowStyle // {} says "none" more plainly than an empty key
		}
		keys := v.MapKeys()
		slices.SortFunc(keys, func(a, b reflect.Value) int { return strings.Compare(a.String(), b.String()) })
		for _, k := range keys {
			n.Content = append(n.Content, str(k.String()), encodeValue(v.MapIndex(k)))
		}
		return n
	}
	tag := "!!str"
	switch kindOf(v.Type()) {
	case kindInt:
		tag = "!!int"
	case kindBool:
		tag = "!!bool"
	}
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: tag, Value: formatLeaf(v)}
}

// str is a string scalar; the encoder quotes it when it would read back as something else,
// except "<<", which yaml.v3 writes bare and then reads back as a merge key.
func str(s string) *yaml.Node {
	n := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s}
	if s == "<<" {
		n.Style = yaml.DoubleQuotedStyle
	}
	return n
}

// Effective returns a copy that states the values in force where a key's zero stands for
// another value: a collector's timeout 0 is its interval. Parse of its YAML runs the agent as c
// does; this is what `capstan config check` prints.
func (c *Config) Effective() *Config {
	out := *c
	out.Collectors = make(map[string]Collector, len(c.Collectors))
	for name := range c.Collectors {
		out.Collectors[name] = c.Collector(name)
	}
	return &out
}

// Redacted returns a copy whose OTLP header values (API keys, tokens) are masked, for printing.
func (c *Config) Redacted() *Config {
	out := *c
	out.OTLP.Headers = make(map[string]string, len(c.OTLP.Headers))
	for k := range c.OTLP.Headers {
		out.OTLP.Headers[k] = "<redacted>"
	}
	return &out
}
