package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/capstan-power/capstan/collectors"
)

// Load reads the configuration file at path and parses it with Parse. A file that cannot be
// read is an *Error naming the path and wrapping the OS error.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, readError(path, err)
	}
	return Parse(path, data)
}

// Parse applies the YAML document in data on top of Default(); name is the file name that
// errors give. It is strict: an unknown or duplicate key, a value of the wrong type and a YAML
// syntax error are each an *Error with the line and the dotted key. An empty file, or a mapping
// key whose value is empty (null), keeps the defaults; an empty leaf value is an error, since
// "web.listen-address:" could mean either the default or off. Anchors, aliases and merge keys
// (<<) work. Parse does not Validate.
func Parse(name string, data []byte) (cfg *Config, err error) {
	defer func() {
		// yaml.v3 has panicked on hostile input before; a configuration error beats a crash.
		if r := recover(); r != nil {
			cfg, err = nil, &Error{File: name, Problem: fmt.Sprintf("%s (%v)", internalError, r)}
		}
	}()
	root, e := parseDocument(name, data)
	if e != nil {
		return nil, e
	}
	cfg = Default()
	d := &decoder{file: name, cfg: cfg, lines: map[string]int{}, budget: maxNodes}
	if root != nil {
		if e := d.top(root); e != nil {
			return nil, e
		}
	}
	cfg.src = sources{file: name, lines: d.lines}
	return cfg, nil
}

// internalError starts the problem of a recovered panic, which the fuzz test looks for.
const internalError = "cannot parse the file (internal error, please report it)"

// maxNodes bounds the nodes one parse visits, since aliases can make a small file expand
// exponentially (the "billion laughs").
const maxNodes = 100_000

// maxMergeDepth bounds merge keys (<<) nested inside merged mappings.
const maxMergeDepth = 64

// parseDocument returns the root node of the single YAML document in data, or nil when data
// holds no document.
func parseDocument(name string, data []byte) (*yaml.Node, *Error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, syntaxError(name, data, err)
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, syntaxError(name, data, err)
	default:
		return nil, &Error{File: name, Line: next.Line,
			Problem: "a second YAML document starts here; a configuration file holds one"}
	}
	if doc.Kind == yaml.DocumentNode {
		if len(doc.Content) == 0 {
			return nil, nil
		}
		return doc.Content[0], nil
	}
	return &doc, nil
}

// yamlLine splits yaml.v3's "yaml: line N: problem" messages.
var yamlLine = regexp.MustCompile(`(?s)^yaml: line (\d+): (.*)$`)

// syntaxError turns a yaml.v3 error into an *Error at the line where the parser stopped, with
// the last key it read before that line. yaml.v3's own line is often where the enclosing block
// began (line 1 for a mis-indented key deep in the file), so the line is found again.
func syntaxError(name string, data []byte, err error) *Error {
	e := &Error{File: name, Problem: strings.TrimPrefix(err.Error(), "yaml: "), err: err}
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		if line, convErr := strconv.Atoi(m[1]); convErr == nil {
			e.Line = line
		}
		e.Problem = m[2]
	}
	lines := bytes.SplitAfter(data, []byte("\n"))
	after := ""
	if stop := stopLine(lines, e.Problem); stop > 0 {
		e.Line = stop
		if key, line := lastKey(bytes.Join(lines[:stop-1], nil)); key != "" {
			after = fmt.Sprintf(" (after %s on line %d)", key, line)
		}
	}
	if e.Line > 0 && e.Line <= len(lines) {
		l := lines[e.Line-1]
		if indent := l[:len(l)-len(bytes.TrimLeft(l, " \t"))]; bytes.IndexByte(indent, '\t') >= 0 {
			e.Problem = "a tab in the indentation, where YAML allows spaces only"
		}
	}
	e.Problem = "invalid YAML: " + e.Problem + after
	return e
}

// maxScanLines bounds stopLine's work, which grows with the square of the file's lines; a
// longer file keeps yaml.v3's line.
const maxScanLines = 2000

// stopLine is the 1-based line where the parser stops with the problem yaml.v3 reported: the
// first prefix of whole lines that fails with the same problem (a prefix of a good file
// parses, but a prefix cut inside a multi-line flow or quoted value fails differently). 0 when
// none does.
func stopLine(lines [][]byte, problem string) int {
	if len(lines) > maxScanLines {
		return 0
	}
	var prefix []byte
	for i, l := range lines {
		prefix = append(prefix, l...)
		err := decodeAll(prefix)
		if err == nil {
			continue
		}
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
			msg = m[2]
		}
		if msg == problem {
			return i + 1
		}
	}
	return 0
}

// decodeAll parses every document in data and returns the first error.
func decodeAll(data []byte) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var n yaml.Node
		if err := dec.Decode(&n); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// lastKey returns the dotted path and line of the last mapping key in the first document of
// data, the one read last before a syntax error further on; "" when there is none.
func lastKey(data []byte) (string, int) {
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil {
		return "", 0
	}
	var walk func(n *yaml.Node, path string)
	key, line := "", 0
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.DocumentNode, yaml.SequenceNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k := n.Content[i]
				p := join(path, k.Value)
				if k.Line >= line {
					key, line = p, k.Line
				}
				walk(n.Content[i+1], p)
			}
		}
	}
	walk(&doc, "")
	return key, line
}

// decoder walks a yaml.Node tree against the Config struct.
type decoder struct {
	file   string
	cfg    *Config
	lines  map[string]int // dotted key → line of its value
	budget int            // nodes left to visit
}

// entry is one key and value of a mapping, after merge keys are expanded.
type entry struct{ key, val *yaml.Node }

func (d *decoder) fail(n *yaml.Node, key, value, problem string) *Error {
	return &Error{File: d.file, Line: n.Line, Key: key, Value: value, Problem: problem}
}

// deref follows an alias to its anchored node and charges the visit to the budget.
func (d *decoder) deref(n *yaml.Node, key string) (*yaml.Node, *Error) {
	d.budget--
	if d.budget < 0 {
		return nil, d.fail(n, "", "", fmt.Sprintf(
			"the file has more than %d keys and values, counting every use of an alias", maxNodes))
	}
	if n.Kind == yaml.AliasNode {
		if n.Alias == nil || n.Alias.Kind == yaml.AliasNode {
			return nil, d.fail(n, key, quote(n.Value), "is an alias to nothing")
		}
		return n.Alias, nil
	}
	return n, nil
}

func isNull(n *yaml.Node) bool {
	return n.Kind == 0 || n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// kindName names what a node is, for "found ..." messages.
func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a sequence"
	case yaml.ScalarNode:
		if isNull(n) {
			return "nothing (null)"
		}
		return "a scalar"
	}
	return "an empty document"
}

// showNode renders a scalar as written for a message: numbers and booleans bare, text quoted.
func showNode(n *yaml.Node) string {
	if n.Kind != yaml.ScalarNode {
		return ""
	}
	quoted := n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle|yaml.LiteralStyle|yaml.FoldedStyle) != 0
	switch n.ShortTag() {
	case "!!int", "!!float", "!!bool":
		if !quoted && len(n.Value) <= maxShown {
			return n.Value
		}
	}
	return quote(n.Value)
}

func (d *decoder) top(n *yaml.Node) *Error {
	n, e := d.deref(n, "")
	if e != nil {
		return e
	}
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return d.fail(n, "", "", "top level must be a mapping of keys, found "+kindName(n))
	}
	return d.structure(n, "", reflect.ValueOf(d.cfg).Elem())
}

// value decodes n into v, the field at the dotted key.
func (d *decoder) value(n *yaml.Node, key string, v reflect.Value) *Error {
	n, e := d.deref(n, key)
	if e != nil {
		return e
	}
	if isNull(n) {
		switch {
		case v.Kind() == reflect.Map || v.Kind() == reflect.Struct:
			return nil
		case v.Kind() == reflect.String:
			return d.fail(n, key, "", `has no value (write "" for an empty string, or leave the key out for the default)`)
		default:
			return d.fail(n, key, "", "has no value (leave the key out for the default)")
		}
	}
	d.lines[key] = n.Line
	switch {
	case v.Type() == reflect.TypeFor[map[string]Collector]():
		return d.collectors(n, key)
	case v.Type() == metricTogglesType:
		return d.metricToggles(n, key, v)
	case v.Kind() == reflect.Map:
		return d.stringMap(n, key, v)
	case v.Kind() == reflect.Struct:
		return d.structure(n, key, v)
	}
	return d.leaf(n, key, v)
}

// structure decodes a mapping into a struct by its yaml tags.
func (d *decoder) structure(n *yaml.Node, key string, v reflect.Value) *Error {
	known := strings.Join(fieldNames(v), ", ")
	if n.Kind != yaml.MappingNode {
		return d.notMapping(n, key, fmt.Sprintf("keys under %q: %s", key, known))
	}
	entries, e := d.entries(n, key, 0)
	if e != nil {
		return e
	}
	for _, en := range entries {
		name := en.key.Value
		f, ok := fieldIndex(v, name)
		if !ok {
			full := join(key, name)
			where := "known top-level keys"
			if key != "" {
				where = fmt.Sprintf("known keys under %q", key)
			}
			return &Error{File: d.file, Line: en.key.Line, Key: full, keyInProblem: true,
				Problem: fmt.Sprintf("unknown key %s (%s: %s)", strconv.Quote(full), where, known)}
		}
		if e := d.value(en.val, join(key, name), f.v); e != nil {
			return e
		}
	}
	return nil
}

// notMapping reports a scalar or sequence where a mapping belongs; hint lists what goes in it.
func (d *decoder) notMapping(n *yaml.Node, key, hint string) *Error {
	if n.Kind == yaml.ScalarNode {
		return d.fail(n, key, showNode(n), "is not a mapping ("+hint+")")
	}
	return d.fail(n, key, "", "must be a mapping, found "+kindName(n)+" ("+hint+")")
}

// collectors decodes collector.<name> entries, each on top of the collector's defaults.
func (d *decoder) collectors(n *yaml.Node, key string) *Error {
	known := knownCollectors()
	if n.Kind != yaml.MappingNode {
		return d.notMapping(n, key, "keys are collector names: "+known)
	}
	entries, e := d.entries(n, key, 0)
	if e != nil {
		return e
	}
	for _, en := range entries {
		name, full := en.key.Value, join(key, en.key.Value)
		if _, ok := collectors.FactoryOf(name); !ok {
			return &Error{File: d.file, Line: en.key.Line, Key: full,
				Problem: "unknown collector (known: " + known + ")"}
		}
		c := d.cfg.Collectors[name]
		if e := d.value(en.val, full, reflect.ValueOf(&c).Elem()); e != nil {
			return e
		}
		d.cfg.Collectors[name] = c
	}
	return nil
}

// knownCollectors lists the registered collectors for messages.
func knownCollectors() string {
	names := RegisteredCollectors()
	if len(names) == 0 {
		return "none are registered"
	}
	return strings.Join(names, ", ")
}

// stringMap decodes a mapping of strings (otlp.headers), adding to what v holds.
func (d *decoder) stringMap(n *yaml.Node, key string, v reflect.Value) *Error {
	if n.Kind != yaml.MappingNode {
		return d.notMapping(n, key, "names to values, e.g. x-api-key: secret")
	}
	entries, e := d.entries(n, key, 0)
	if e != nil {
		return e
	}
	m, _ := v.Interface().(map[string]string)
	for _, en := range entries {
		full := join(key, en.key.Value)
		val, e := d.deref(en.val, full)
		if e != nil {
			return e
		}
		switch {
		case isNull(val):
			return d.fail(val, full, "", `has no value (write "" for an empty string)`)
		case val.Kind != yaml.ScalarNode:
			return d.fail(val, full, "", "must be a string, found "+kindName(val))
		}
		if m == nil {
			m = map[string]string{}
			v.Set(reflect.ValueOf(m))
		}
		m[en.key.Value] = val.Value
		d.lines[full] = val.Line
	}
	return nil
}

// leaf decodes a scalar into a string, integer, boolean or duration field. Integers and
// booleans must be written as such, not quoted, so that "8" and yes are not silently coerced.
func (d *decoder) leaf(n *yaml.Node, key string, v reflect.Value) *Error {
	kind := kindOf(v.Type())
	if n.Kind != yaml.ScalarNode {
		return d.fail(n, key, "", "must be "+typeName(kind)+", found "+kindName(n))
	}
	shown, tag := showNode(n), n.ShortTag()
	switch kind {
	case kindInt:
		if _, ok := parseInt(n.Value); ok && tag == "!!str" {
			return d.fail(n, key, shown, "is quoted; write an integer without quotes")
		}
		if tag != "!!int" {
			return d.fail(n, key, shown, notInteger)
		}
	case kindBool:
		if _, ok := parseYAMLBool(n.Value); ok && tag == "!!str" {
			return d.fail(n, key, shown, "is quoted; write true or false without quotes")
		}
		if tag != "!!bool" {
			return d.fail(n, key, shown, notBoolean)
		}
	}
	if p := setLeaf(v, n.Value, false); p != "" {
		return d.fail(n, key, shown, p)
	}
	return nil
}

// entries lists a mapping's keys and values with merge keys (<<) expanded: keys written in the
// mapping win over merged ones, and earlier merged mappings win over later ones, as YAML says.
func (d *decoder) entries(n *yaml.Node, key string, depth int) ([]entry, *Error) {
	if depth > maxMergeDepth {
		return nil, d.fail(n, key, "", fmt.Sprintf("has merge keys (<<) nested deeper than %d", maxMergeDepth))
	}
	var out, merged []entry
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, e := d.deref(n.Content[i], key)
		if e != nil {
			return nil, e
		}
		if k.Kind != yaml.ScalarNode {
			return nil, d.fail(k, key, "", "a key must be a string, found "+kindName(k))
		}
		if k.ShortTag() == "!!merge" {
			sources, e := d.mergeSources(n.Content[i+1], key)
			if e != nil {
				return nil, e
			}
			for _, src := range sources {
				es, e := d.entries(src, key, depth+1)
				if e != nil {
					return nil, e
				}
				merged = append(merged, es...)
			}
			continue
		}
		full := join(key, k.Value)
		if first, dup := seen[k.Value]; dup {
			return nil, &Error{File: d.file, Line: k.Line, Key: full, keyInProblem: true,
				Problem: fmt.Sprintf("duplicate key %s (first at line %d)", strconv.Quote(full), first)}
		}
		seen[k.Value] = k.Line
		out = append(out, entry{k, n.Content[i+1]})
	}
	for _, m := range merged {
		if _, ok := seen[m.key.Value]; !ok {
			seen[m.key.Value] = m.key.Line
			out = append(out, m)
		}
	}
	return out, nil
}

// mergeSources returns the mappings a merge key (<<) names: one mapping or a sequence of them.
func (d *decoder) mergeSources(n *yaml.Node, key string) ([]*yaml.Node, *Error) {
	full := join(key, "<<")
	n, e := d.deref(n, full)
	if e != nil {
		return nil, e
	}
	const want = "a merge key (<<) takes a mapping or a sequence of mappings, found "
	switch n.Kind {
	case yaml.MappingNode:
		return []*yaml.Node{n}, nil
	case yaml.SequenceNode:
		out := make([]*yaml.Node, 0, len(n.Content))
		for _, item := range n.Content {
			m, e := d.deref(item, full)
			if e != nil {
				return nil, e
			}
			if m.Kind != yaml.MappingNode {
				return nil, d.fail(m, key, "", want+"a sequence holding "+kindName(m))
			}
			out = append(out, m)
		}
		return out, nil
	}
	return nil, d.fail(n, key, "", want+kindName(n))
}
