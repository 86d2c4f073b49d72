package config

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/capstan-power/capstan/collectors"
	"github.com/capstan-power/capstan/collectors/gpu/sim/miglayout"
)

// Validate checks what each key's declaration allows (its tags), each collector's own rules, and
// the keys that go together. It returns the first problem in file order (node, log, path, gpu,
// collector, the collectors' sections, otlp, web, stdout, summary, capping, budget, etcd) as an
// *Error that points at the line of the file, or the flag, that set the value.
func (c *Config) Validate() error {
	if e := c.validate(); e != nil {
		return e
	}
	return nil
}

func (c *Config) validate() *Error {
	v := &validator{c: c}
	rules := v.rules()
	for _, f := range fields(reflect.ValueOf(c).Elem()) {
		switch {
		case f.name == "collector":
			v.collectors()
			continue
		case f.name == "etcd" && (!c.Capping.Enabled || c.Budget.Source != "etcd"):
			// Only budget.source etcd uses the etcd section.
			continue
		}
		v.declared(f.v, []string{f.name})
		if f.section {
			v.section(f.name, f.v)
		}
		if rule := rules[f.name]; rule != nil {
			rule()
		}
	}
	return v.err
}

// rules are the hand-written checks of a top-level section, run after its declared ones: the
// checks that depend on other keys or on more than a declaration says.
func (v *validator) rules() map[string]func() {
	c := v.c
	return map[string]func(){
		"node": v.nodeName,
		"gpu": func() {
			v.trace([]string{"gpu", "sim", "trace"}, c.GPU.Sim.Trace)
			v.migLayout()
		},
		"otlp": func() {
			v.headers("otlp.headers", c.OTLP.Headers)
			v.pair("otlp.tls.cert-file", c.OTLP.TLS.CertFile, "otlp.tls.key-file", c.OTLP.TLS.KeyFile)
			v.pair("otlp.tls.key-file", c.OTLP.TLS.KeyFile, "otlp.tls.cert-file", c.OTLP.TLS.CertFile)
		},
		"capping": v.weights,
		"metrics": v.metricToggles,
		"budget":  v.budget,
		"etcd":    v.etcd,
	}
}

// declared checks every key under v (at path) against its tags, in file order.
func (v *validator) declared(val reflect.Value, path []string) {
	if val.Kind() != reflect.Struct {
		return
	}
	for _, l := range leaves(val) {
		full := append(slices.Clone(path), l.path...)
		if l.spec.manual {
			continue
		}
		if l.spec.cond != "" {
			sib := append(slices.Clone(full[:len(full)-1]), l.spec.cond)
			if on := v.c.lookup(sib); !on.IsValid() || !on.Bool() {
				continue
			}
		}
		v.check(dotted(full), l.spec, l.v)
	}
}

// check applies one key's declaration to its value.
func (v *validator) check(key string, s spec, val reflect.Value) {
	switch {
	case s.required != "":
		v.nonEmpty(key, val.String(), s.required)
		if v.err != nil {
			return
		}
	}
	switch {
	case s.lo != "" && kindOf(val.Type()) == kindDuration:
		d := time.Duration(val.Int())
		if s.zero != "" && d == 0 {
			return
		}
		lo, hi := s.durRange()
		also := ""
		if s.zero != "" {
			also = "0 " + s.zero + ", or "
		}
		v.durRange(key, d, lo, hi, also)
	case s.lo != "":
		lo, hi := s.intRange()
		n := int(val.Int())
		if s.zero != "" && n == 0 {
			return
		}
		if s.zero != "" && (n < lo || n > hi) {
			v.fail(key, strconv.Itoa(n), fmt.Sprintf("is out of range (allowed: 0 %s, or %d to %d)", s.zero, lo, hi))
			return
		}
		v.intRange(key, n, lo, hi)
	case len(s.oneof) > 0:
		v.oneOf(key, val.String(), s.oneof, s.fold)
	case s.format == "regexp":
		v.regexp(key, val.String())
	case s.format == "hostport":
		v.hostPort(key, val.String())
	case s.format == "name":
		v.name(key, val.String())
	}
}

// section runs a collector's own Validate on its options; a *collectors.FieldError points at
// its key.
func (v *validator) section(name string, val reflect.Value) {
	if v.err != nil {
		return
	}
	check, ok := val.Addr().Interface().(collectors.Validator)
	if !ok {
		return
	}
	err := check.Validate()
	if err == nil {
		return
	}
	var fe *collectors.FieldError
	if !errors.As(err, &fe) {
		v.fail(name, "", err.Error())
		return
	}
	key, shown := join(name, fe.Key), ""
	if f, ok := fieldIndex(val, fe.Key); ok && f.v.Kind() != reflect.Struct && f.v.Kind() != reflect.Map {
		shown = formatLeaf(f.v)
		if kindOf(f.v.Type()) == kindString {
			shown = quote(shown)
		}
	}
	v.fail(key, shown, fe.Problem)
}

// weights checks capping.weights' values against the range declared at the field.
func (v *validator) weights() {
	cp := &v.c.Capping
	lo, hi := v.specAt("capping", "weights").intRange()
	for _, k := range sortedKeys(cp.Weights) {
		w, err := strconv.Atoi(strings.TrimSpace(cp.Weights[k]))
		if err != nil || w < lo || w > hi {
			v.fail("capping.weights."+k, quote(cp.Weights[k]), fmt.Sprintf("is not a weight (allowed: an integer %d to %d)", lo, hi))
		}
	}
}

// budget checks what capping needs of the state file and the budget, only when capping is on.
func (v *validator) budget() {
	cp, b := &v.c.Capping, &v.c.Budget
	if !cp.Enabled {
		return
	}
	if !cp.DryRun {
		v.check("capping.state-file", v.specAt("capping", "state-file"), reflect.ValueOf(cp.StateFile))
	}
	switch b.Source {
	case "static":
		watts := v.specAt("budget", "watts")
		if b.Watts == 0 {
			lo, hi := watts.intRange()
			v.fail("budget.watts", "0", fmt.Sprintf("must be set when capping is on with budget.source static (allowed: %d to %d)", lo, hi))
		}
		v.check("budget.watts", watts, reflect.ValueOf(b.Watts))
	case "file":
		v.check("budget.file", v.specAt("budget", "file"), reflect.ValueOf(b.File))
	}
}

// CheckBudgetWatts checks budget.watts for a command that needs a static budget whatever the
// configuration says of capping (simulate); need says what the value is, e.g. "the node budget
// in watts". The error names the value and the allowed range, or says to set it.
func (c *Config) CheckBudgetWatts(need string) error {
	v := &validator{c: c}
	lo, hi := v.specAt("budget", "watts").intRange()
	_, byFlag := c.src.flags["budget.watts"]
	_, inFile := c.src.lines["budget.watts"]
	if c.Budget.Watts == 0 && !byFlag && !inFile {
		return &Error{Key: "--budget.watts", Problem: fmt.Sprintf("must be set to %s (allowed: %d to %d)", need, lo, hi)}
	}
	v.intRange("budget.watts", c.Budget.Watts, lo, hi)
	if v.err != nil {
		return v.err
	}
	return nil
}

// specAt returns the declaration of the key at path.
func (v *validator) specAt(path ...string) spec {
	parent := v.c.lookup(path[:len(path)-1])
	f, ok := fieldIndex(parent, path[len(path)-1])
	if !ok {
		panic("config: no key " + dotted(path))
	}
	return specOf(f.tag)
}

// etcd checks what the etcd section's declarations cannot say; it runs only with capping on and
// budget.source etcd.
func (v *validator) etcd() {
	e := &v.c.Etcd
	v.name("node.name", v.c.Node.Name)
	v.domain()
	v.pair("etcd.tls.cert-file", e.TLS.CertFile, "etcd.tls.key-file", e.TLS.KeyFile)
	v.pair("etcd.tls.key-file", e.TLS.KeyFile, "etcd.tls.cert-file", e.TLS.CertFile)
	v.pair("etcd.username", e.Username, "etcd.password-file", e.PasswordFile)
	if e.LeaseTTL%time.Second != 0 {
		v.fail("etcd.lease-ttl", formatDuration(e.LeaseTTL), "is not whole seconds (etcd leases count seconds; examples: 5s, 10s)")
	}
	if v.c.Capping.Period > e.LeaseTTL {
		v.fail("etcd.lease-ttl", formatDuration(e.LeaseTTL), "is shorter than capping.period "+formatDuration(v.c.Capping.Period)+" (allowed: at least the period)")
	}
	if !strings.HasPrefix(e.Prefix, "/") || strings.HasSuffix(e.Prefix, "/") && e.Prefix != "/" {
		v.fail("etcd.prefix", quote(e.Prefix), "must start with / and not end with one (default /capstan/v1)")
	}
}

// domain checks etcd.group and etcd.domain: a group name, or a domain path whose first segment
// is the group (which may then be left out).
func (v *validator) domain() {
	e := &v.c.Etcd
	if e.DomainLabels != "" {
		v.domainLabels()
		return
	}
	if e.Domain == "" {
		v.name("etcd.group", e.Group)
		return
	}
	if err := ValidDomainPath(e.Domain); err != nil {
		v.fail("etcd.domain", quote(e.Domain), "is not a domain path: "+err.Error())
		return
	}
	root, _, _ := strings.Cut(e.Domain, "/")
	if e.Group != "" && e.Group != root {
		v.fail("etcd.domain", quote(e.Domain), "does not start with the group "+quote(e.Group)+" of etcd.group (a domain path starts at its group: "+e.Group+"/...)")
	}
}

// MaxDomainDepth is how many segments a domain path may have: site, hall, row, rack and a few
// more levels than any electrical tree has.
const MaxDomainDepth = 8

// ValidDomainPath checks a power domain's path: 1 to MaxDomainDepth segments joined by "/",
// each a name (see ValidName) other than "." and "..", so every path names one domain and its
// parent is the path without its last segment.
func ValidDomainPath(p string) error {
	if p == "" {
		return fmt.Errorf("empty (allowed: names joined by /, e.g. site/row3/rack12)")
	}
	segs := strings.Split(p, "/")
	if len(segs) > MaxDomainDepth {
		return fmt.Errorf("%d levels (allowed: 1 to %d)", len(segs), MaxDomainDepth)
	}
	for i, s := range segs {
		switch s {
		case "":
			return fmt.Errorf("segment %d is empty (no leading, trailing or double /)", i+1)
		case ".", "..":
			return fmt.Errorf("segment %d is %q (allowed: names, not . or ..)", i+1, s)
		}
		if err := ValidName(s); err != nil {
			return fmt.Errorf("segment %d: %w", i+1, err)
		}
	}
	return nil
}

// nodeNameMax is the longest node.name, a DNS name's limit.
const nodeNameMax = 253

// nodeName bounds node.name, which every export carries (host.name, target_info in every
// scrape); etcd mode narrows it further (name). An empty name is left to the key's declaration.
func (v *validator) nodeName() {
	s := v.c.Node.Name
	allowed := fmt.Sprintf("(allowed: 1 to %d characters, no control characters)", nodeNameMax)
	if n := utf8.RuneCountInString(s); n > nodeNameMax {
		v.fail("node.name", fmt.Sprintf("a name of %d characters", n), "is too long "+allowed)
		return
	}
	if i := strings.IndexFunc(s, unicode.IsControl); i >= 0 {
		v.fail("node.name", quote(s), fmt.Sprintf("has a control character at byte %d %s", i, allowed))
	}
}

// nameRule says what ValidName accepts.
const nameRule = "1 to 253 letters, digits, - _ . :"

// ValidName checks a group or node name that becomes one segment of an etcd key; its error says
// which character or length is wrong.
func ValidName(s string) error {
	if s == "" || len(s) > 253 {
		return fmt.Errorf("name %q: must be 1 to 253 characters", s)
	}
	for _, r := range s {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.:", r)
		if !ok {
			return fmt.Errorf("name %q: character %q not allowed (allowed: letters, digits, - _ . :)", s, r)
		}
	}
	return nil
}

// name checks a group or node name with ValidName.
func (v *validator) name(key, s string) {
	if ValidName(s) != nil {
		v.fail(key, quote(s), "is not a name (allowed: "+nameRule+")")
	}
}

// validator keeps the first problem; later checks do nothing once one failed.
type validator struct {
	c   *Config
	err *Error
}

// fail records a problem, locating it through the config's sources.
func (v *validator) fail(key, value, problem string) {
	if v.err == nil {
		v.err = v.c.locate(&Error{Key: key, Value: value, Problem: problem})
	}
}

// ErrorAt is a problem with the value of key found after validation, such as a file it names
// that cannot be read, located like Validate's errors (the flag that set it, else the line of
// the file) and wrapping cause. value is shown quoted.
func (c *Config) ErrorAt(key, value, problem string, cause error) *Error {
	return c.locate(&Error{Key: key, Value: quote(value), Problem: problem, err: cause})
}

// locate fills in where the value of e.Key came from: the flag that set it, else the line of
// the file; a default has no position.
func (c *Config) locate(e *Error) *Error {
	if flag, ok := c.src.flags[e.Key]; ok {
		e.Key = "--" + flag
		return e
	}
	if line, ok := c.src.lines[e.Key]; ok {
		e.File, e.Line = c.src.file, line
	}
	return e
}

func (v *validator) nonEmpty(key, s, hint string) {
	if strings.TrimSpace(s) == "" {
		v.fail(key, "", "must not be empty ("+hint+")")
	}
}

func (v *validator) oneOf(key, s string, allowed []string, foldCase bool) {
	for _, a := range allowed {
		if s == a || foldCase && strings.EqualFold(strings.TrimSpace(s), a) {
			return
		}
	}
	v.fail(key, quote(s), "is not allowed (allowed: "+strings.Join(allowed, ", ")+")")
}

func (v *validator) intRange(key string, n, lo, hi int) {
	if n < lo || n > hi {
		v.fail(key, strconv.Itoa(n), fmt.Sprintf("is out of range (allowed: %d to %d)", lo, hi))
	}
}

// durRange checks lo ≤ d ≤ hi; also names what else is allowed, such as 0.
func (v *validator) durRange(key string, d, lo, hi time.Duration, also string) {
	if d < lo || d > hi {
		v.fail(key, formatDuration(d), fmt.Sprintf("is out of range (allowed: %s%s to %s)",
			also, formatDuration(lo), formatDuration(hi)))
	}
}

// trace accepts the declared traces, case-insensitively as the simulator does, or a CSV file.
func (v *validator) trace(path []string, s string) {
	decl := v.specAt(path...)
	name := strings.ToLower(strings.TrimSpace(s))
	for _, t := range decl.oneof {
		if name == t {
			return
		}
	}
	if strings.HasSuffix(name, ".csv") {
		return
	}
	v.fail(dotted(path), quote(s), "is not allowed (allowed: "+decl.allowedList()+")")
}

// collectors checks every collector.<name> entry, sorted by name.
func (v *validator) collectors() {
	for _, name := range sortedKeys(v.c.Collectors) {
		key := join("collector", name)
		if _, ok := collectors.FactoryOf(name); !ok {
			v.fail(key, "", "unknown collector (known: "+knownCollectors()+")")
			return
		}
		cc := v.c.Collectors[name]
		v.durRange(key+".interval", cc.Interval, collectors.MinInterval, collectors.MaxInterval, "")
		if cc.Timeout != 0 && (cc.Timeout < collectors.MinTimeout || cc.Timeout > cc.Interval) {
			v.fail(key+".timeout", formatDuration(cc.Timeout), fmt.Sprintf(
				"is out of range (allowed: 0, meaning the interval, or %s to the interval %s)",
				formatDuration(collectors.MinTimeout), formatDuration(cc.Interval)))
		}
	}
}

// regexp requires s to compile as a Go (RE2) regular expression; empty is allowed.
func (v *validator) regexp(key, s string) {
	if _, err := regexp.Compile(s); err != nil {
		v.fail(key, quote(s), "is not a regular expression ("+err.Error()+"; syntax: RE2, as Go's regexp)")
	}
}

func (v *validator) headers(key string, h map[string]string) {
	if _, ok := h[""]; ok {
		v.fail(key, "", "has a header with an empty name")
	}
}

// pair requires other to be set whenever key is.
func (v *validator) pair(key, s, otherKey, other string) {
	if s != "" && other == "" {
		v.fail(key, quote(s), "is set without "+otherKey+" (set both or neither)")
	}
}

// hostPort accepts an empty address (off) or host:port with a numeric port; port 0 picks one.
func (v *validator) hostPort(key, addr string) {
	if addr == "" {
		return
	}
	_, port, err := net.SplitHostPort(addr)
	if err == nil {
		if p, convErr := strconv.ParseUint(port, 10, 16); convErr == nil && p <= 65535 {
			return
		}
	}
	v.fail(key, quote(addr), "is not host:port (examples: 127.0.0.1:9400, :9400, [::1]:9400; empty turns it off)")
}

// sortedKeys returns a map's keys in order, so that checks and output are deterministic.
func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}

// migLayout checks the simulated MIG layouts against the simulated model and GPU count.
func (v *validator) migLayout() {
	s := v.c.GPU.Sim
	if strings.TrimSpace(s.MIG) == "" {
		return
	}
	if _, _, err := miglayout.ParseAll(s.Model, s.MIG, s.Count); err != nil {
		v.fail("gpu.sim.mig", quote(s.MIG), "is not a MIG layout of "+s.Model+": "+err.Error())
	}
}
