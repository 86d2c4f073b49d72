package config

import (
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
)

var sectionsType = reflect.TypeFor[Sections]()

// field is one keyed value of a struct: a field with a yaml tag, or a collector's section.
type field struct {
	name string
	tag  reflect.StructTag
	v    reflect.Value
	// section: the options of a collector, from Config.Sections.
	section bool
}

// fields lists the keyed values of the struct v in file order, with Config's Sections expanded
// in place into one struct per collector section, sorted by key.
func fields(v reflect.Value) []field {
	t := v.Type()
	var out []field
	for i := range t.NumField() {
		sf := t.Field(i)
		if sf.Type == sectionsType {
			m, _ := v.Field(i).Interface().(Sections)
			for _, key := range sortedKeys(m) {
				if m[key] == nil {
					continue
				}
				out = append(out, field{name: key, v: reflect.ValueOf(m[key]).Elem(), section: true})
			}
			continue
		}
		if name := yamlName(sf); name != "" {
			out = append(out, field{name: name, tag: sf.Tag, v: v.Field(i)})
		}
	}
	return out
}

// fieldIndex finds the keyed value named name in the struct v.
func fieldIndex(v reflect.Value, name string) (field, bool) {
	for _, f := range fields(v) {
		if f.name == name {
			return f, true
		}
	}
	return field{}, false
}

// fieldNames lists the keys of the struct v in file order.
func fieldNames(v reflect.Value) []string {
	fs := fields(v)
	names := make([]string, len(fs))
	for i, f := range fs {
		names[i] = f.name
	}
	return names
}

// yamlName is the key of an exported field with a yaml tag, else "".
func yamlName(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if name == "-" {
		return ""
	}
	return name
}

// leaf is a key whose value is a scalar or a string map, with its declaration.
type leaf struct {
	key  string   // dotted
	path []string // the key's segments
	spec spec
	// parentHelp is the help of the struct holding it, which {peer} refers to.
	parentHelp string
	v          reflect.Value
}

// leaves lists every key of the struct v but those under collector, in file order.
func leaves(v reflect.Value) []leaf {
	var out []leaf
	var walk func(v reflect.Value, prefix []string, parentHelp string)
	walk = func(v reflect.Value, prefix []string, parentHelp string) {
		for _, f := range fields(v) {
			path := append(slices.Clone(prefix), f.name)
			switch {
			case f.v.Type() == reflect.TypeFor[map[string]Collector]():
			case f.v.Kind() == reflect.Struct:
				walk(f.v, path, f.tag.Get("help"))
			default:
				out = append(out, leaf{key: dotted(path), path: path, spec: specOf(f.tag), parentHelp: parentHelp, v: f.v})
			}
		}
	}
	walk(v, nil, "")
	return out
}

// lookup returns the value at path in c, or an invalid Value when there is none.
func (c *Config) lookup(path []string) reflect.Value {
	v := reflect.ValueOf(c).Elem()
	for _, name := range path {
		if v.Kind() != reflect.Struct {
			return reflect.Value{}
		}
		f, ok := fieldIndex(v, name)
		if !ok {
			return reflect.Value{}
		}
		v = f.v
	}
	return v
}

func dotted(path []string) string {
	key := ""
	for _, p := range path {
		key = join(key, p)
	}
	return key
}

// spec is what a field's tags declare about its key.
type spec struct {
	help       string
	lo, hi     string // range bounds as written; empty without a range
	zero       string
	oneof      []string
	fold       bool
	or         string
	format     string
	required   string
	cond       string
	manual     bool
	docDefault string
}

func specOf(tag reflect.StructTag) spec {
	s := spec{
		help: tag.Get("help"), zero: tag.Get("zero"), or: tag.Get("or"), format: tag.Get("format"),
		required: tag.Get("required"), cond: tag.Get("if"), manual: tag.Get("check") == "manual",
		fold: tag.Get("fold") == "true", docDefault: tag.Get("doc-default"),
	}
	if r := tag.Get("range"); r != "" {
		s.lo, s.hi, _ = strings.Cut(r, ",")
	}
	if o := tag.Get("oneof"); o != "" {
		s.oneof = strings.Split(o, ",")
	}
	return s
}

// intRange returns the declared integer bounds; a malformed tag is a programming error.
func (s spec) intRange() (lo, hi int) {
	var err1, err2 error
	lo, err1 = strconv.Atoi(s.lo)
	hi, err2 = strconv.Atoi(s.hi)
	if err1 != nil || err2 != nil {
		panic(fmt.Sprintf("config: range %q,%q is not two integers", s.lo, s.hi))
	}
	return lo, hi
}

// durRange returns the declared duration bounds; a malformed tag is a programming error.
func (s spec) durRange() (lo, hi time.Duration) {
	var err1, err2 error
	lo, err1 = time.ParseDuration(s.lo)
	hi, err2 = time.ParseDuration(s.hi)
	if err1 != nil || err2 != nil {
		panic(fmt.Sprintf("config: range %q,%q is not two durations", s.lo, s.hi))
	}
	return lo, hi
}

// rangeText renders the bounds as messages and help write them: "1 to 64", "1s to 1h".
func (s spec) rangeText(t reflect.Type) string {
	if kindOf(t) == kindDuration {
		lo, hi := s.durRange()
		return formatDuration(lo) + " to " + formatDuration(hi)
	}
	lo, hi := s.intRange()
	return strconv.Itoa(lo) + " to " + strconv.Itoa(hi)
}

// allowedList renders the allowed values for a message: "a, b, c", or "a, b, or what else".
func (s spec) allowedList() string {
	out := strings.Join(s.oneof, ", ")
	if s.or != "" {
		out += ", or " + s.or
	}
	return out
}

// allowedText is what the key allows, as help and the reference say it; "" when undeclared.
func (s spec) allowedText(t reflect.Type) string {
	switch {
	case s.lo != "":
		text := s.rangeText(t)
		if s.zero != "" {
			text += "; 0 " + s.zero
		}
		return text
	case len(s.oneof) > 0:
		if s.or != "" {
			return s.allowedList()
		}
		if len(s.oneof) == 1 {
			return s.oneof[0]
		}
		return strings.Join(s.oneof[:len(s.oneof)-1], ", ") + " or " + s.oneof[len(s.oneof)-1]
	case s.format == "regexp":
		return "a Go regular expression (RE2)"
	case s.format == "name":
		return "1 to 253 letters, digits, - _ . :"
	}
	return ""
}

// helpText is the flag's help: the declared help, with {allowed} replaced by what the key
// allows (or that appended), {peer} by the help of the struct holding the key, and
// {sibling:name} by the flag of the sibling key.
func (l leaf) helpText() string { return l.describe(true) }

// describe is the help; without appended, what the key allows is only where {allowed} says.
func (l leaf) describe(appended bool) string {
	h := l.spec.help
	h = strings.ReplaceAll(h, "{peer}", l.parentHelp)
	for {
		i := strings.Index(h, "{sibling:")
		if i < 0 {
			break
		}
		j := strings.Index(h[i:], "}")
		if j < 0 {
			break
		}
		sib := append(slices.Clone(l.path[:len(l.path)-1]), h[i+len("{sibling:"):i+j])
		h = h[:i] + "--" + dotted(sib) + h[i+j+1:]
	}
	allowed := l.spec.allowedText(l.v.Type())
	switch {
	case strings.Contains(h, "{allowed}"):
		h = strings.ReplaceAll(h, "{allowed}", allowed)
	case !appended || allowed == "" || l.spec.format != "":
	case l.spec.lo != "":
		h += ", " + allowed
	default:
		h += ": " + allowed
	}
	return h
}
