package config

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/capstan-power/capstan/collectors"
)

// configFileFlag is the one flag that is not a key: it names the file the keys come from.
const configFileFlag = "config.file"

// boundValue is a flag bound to one key of the Config given to BindFlags.
type boundValue interface {
	pflag.Value
	// configKey is the dotted key the flag sets.
	configKey() string
	// copyTo copies the key's value from src, the bound Config, into dst.
	copyTo(dst, src *Config)
}

// BindFlags registers a flag for every key, named like the key (--gpu.sim.count), bound to cfg
// and showing cfg's values as defaults, with the help and bounds declared at the key's field;
// for each registered collector --collector.<name>, --no-collector.<name>,
// --collector.<name>.interval and --collector.<name>.timeout, and its own options under its
// section (--<section>.<key>); and --config.file. Pass cfg = Default() and later hand the same cfg
// to Resolve.
func BindFlags(fs *pflag.FlagSet, cfg *Config) {
	fs.String(configFileFlag, "", "YAML configuration file; flags given on the command line override its values")
	for _, l := range leaves(reflect.ValueOf(cfg).Elem()) {
		switch {
		case l.v.Type() == metricTogglesType:
			fs.Var(&togglesFlag{cfg: cfg, key: l.key}, l.key, l.helpText())
		case l.v.Type() == reflect.TypeFor[map[string]string]():
			fs.Var(&mapFlag{cfg: cfg, key: l.key, path: l.path}, l.key, l.helpText())
		case kindOf(l.v.Type()) == kindBool:
			fl := fs.VarPF(&boolFlag{fieldFlag{cfg: cfg, key: l.key, path: l.path}}, l.key, "", l.helpText())
			fl.NoOptDefVal = "true"
		default:
			fs.Var(&fieldFlag{cfg: cfg, key: l.key, path: l.path}, l.key, l.helpText())
		}
	}
	for _, name := range RegisteredCollectors() {
		key := join("collector", name)
		on := fs.VarPF(&collectorFlag{cfg: cfg, name: name, field: "enabled"}, key, "",
			"enable the "+name+" collector")
		on.NoOptDefVal = "true"
		off := fs.VarPF(&collectorFlag{cfg: cfg, name: name, field: "enabled", negate: true}, "no-"+key, "",
			"disable the "+name+" collector")
		off.NoOptDefVal, off.DefValue = "true", "false"
		fs.Var(&collectorFlag{cfg: cfg, name: name, field: "interval"}, key+".interval",
			collectorIntervalHelp(name))
		fs.Var(&collectorFlag{cfg: cfg, name: name, field: "timeout"}, key+".timeout",
			collectorTimeoutHelp(name))
	}
}

func collectorIntervalHelp(name string) string {
	return fmt.Sprintf("how often the %s collector runs, %s to %s", name,
		formatDuration(collectors.MinInterval), formatDuration(collectors.MaxInterval))
}

func collectorTimeoutHelp(name string) string {
	return fmt.Sprintf("deadline of one %s collection, %s to the interval; 0 means the interval",
		name, formatDuration(collectors.MinTimeout))
}

// Resolve computes the effective configuration after the command line was parsed: Default(),
// then the --config.file (if given), then every flag the user set (Changed), then Validate.
// flags is the Config that BindFlags bound, which holds the flags' values. An error from a
// flag's value names the flag: "--gpu.sim.count: 0 is out of range (allowed: 1 to 64)".
// Call it again to reload the file; the command line still wins.
func Resolve(fs *pflag.FlagSet, flags *Config) (*Config, error) {
	cfg := Default()
	if path, err := fs.GetString(configFileFlag); err == nil && path != "" {
		loaded, err := Load(path)
		if err != nil {
			return nil, err
		}
		cfg = loaded
	}
	cfg.src.flags = map[string]string{}
	// VisitAll and Changed, not Visit: cobra parses persistent flags through a child's FlagSet,
	// so the FlagSet that defined them never learns they were set, but the *Flag does.
	fs.VisitAll(func(f *pflag.Flag) {
		if b, ok := f.Value.(boundValue); ok && f.Changed {
			b.copyTo(cfg, flags)
			cfg.src.flags[b.configKey()] = f.Name
		}
	})
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// fieldFlag binds a flag to a string, integer or duration field, found by its key's path.
type fieldFlag struct {
	cfg  *Config
	key  string
	path []string
}

func (f *fieldFlag) field(c *Config) reflect.Value { return c.lookup(f.path) }

func (f *fieldFlag) Set(s string) error {
	if p := setLeaf(f.field(f.cfg), s, true); p != "" {
		return fmt.Errorf("%s %s", quote(s), p)
	}
	return nil
}

func (f *fieldFlag) String() string {
	if f.cfg == nil {
		return ""
	}
	return formatLeaf(f.field(f.cfg))
}

func (f *fieldFlag) Type() string {
	if f.cfg == nil {
		return "string"
	}
	return typeOf(f.field(f.cfg).Type())
}

func (f *fieldFlag) configKey() string { return f.key }

func (f *fieldFlag) copyTo(dst, src *Config) {
	if to := f.field(dst); to.IsValid() {
		to.Set(f.field(src))
	}
}

// boolFlag is a fieldFlag that may be given without a value (--otlp.insecure).
type boolFlag struct{ fieldFlag }

func (*boolFlag) IsBoolFlag() bool { return true }

// mapFlag binds a repeatable key=value flag to a map[string]string field; given keys are added
// to the file's, winning per key.
type mapFlag struct {
	cfg  *Config
	key  string
	path []string
}

func (f *mapFlag) field(c *Config) reflect.Value { return c.lookup(f.path) }

func (f *mapFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("%s is not key=value", quote(s))
	}
	m := f.field(f.cfg)
	if m.IsNil() {
		m.Set(reflect.MakeMap(m.Type()))
	}
	m.SetMapIndex(reflect.ValueOf(k), reflect.ValueOf(v))
	return nil
}

func (f *mapFlag) String() string {
	if f.cfg == nil {
		return ""
	}
	m, _ := f.field(f.cfg).Interface().(map[string]string)
	pairs := make([]string, 0, len(m))
	for _, k := range sortedKeys(m) {
		pairs = append(pairs, k+"="+m[k])
	}
	return strings.Join(pairs, ",")
}

func (*mapFlag) Type() string { return "key=value" }

func (f *mapFlag) configKey() string { return f.key }

func (f *mapFlag) copyTo(dst, src *Config) {
	from, to := f.field(src), f.field(dst)
	if from.Len() == 0 {
		return
	}
	if to.IsNil() {
		to.Set(reflect.MakeMap(to.Type()))
	}
	iter := from.MapRange()
	for iter.Next() {
		to.SetMapIndex(iter.Key(), iter.Value())
	}
}

// collectorFlag binds a flag to one field of collector.<name>; negate makes --no-collector.<name>.
type collectorFlag struct {
	cfg    *Config
	name   string
	field  string // enabled, interval or timeout
	negate bool
}

func (f *collectorFlag) Set(s string) error {
	c := f.cfg.collectorEntry(f.name)
	switch f.field {
	case "enabled":
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("%s %s", quote(s), notBoolean)
		}
		c.Enabled = b != f.negate
	default:
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%s %s", quote(s), notDuration)
		}
		if f.field == "interval" {
			c.Interval = d
		} else {
			c.Timeout = d
		}
	}
	if f.cfg.Collectors == nil {
		f.cfg.Collectors = map[string]Collector{}
	}
	f.cfg.Collectors[f.name] = c
	return nil
}

func (f *collectorFlag) String() string {
	if f.cfg == nil {
		return ""
	}
	c := f.cfg.collectorEntry(f.name)
	switch f.field {
	case "enabled":
		return strconv.FormatBool(c.Enabled != f.negate)
	case "interval":
		return formatDuration(c.Interval)
	}
	return formatDuration(c.Timeout)
}

func (f *collectorFlag) Type() string {
	if f.field == "enabled" {
		return "bool"
	}
	return "duration"
}

func (f *collectorFlag) IsBoolFlag() bool { return f.field == "enabled" }

func (f *collectorFlag) configKey() string { return join("collector", f.name) + "." + f.field }

func (f *collectorFlag) copyTo(dst, src *Config) {
	from, to := src.collectorEntry(f.name), dst.collectorEntry(f.name)
	switch f.field {
	case "enabled":
		to.Enabled = from.Enabled
	case "interval":
		to.Interval = from.Interval
	default:
		to.Timeout = from.Timeout
	}
	if dst.Collectors == nil {
		dst.Collectors = map[string]Collector{}
	}
	dst.Collectors[f.name] = to
}
