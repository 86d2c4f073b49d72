// Package packaging holds Capstan's RPM/DEB definition (nfpm.yaml), its systemd unit, default
// configuration and package scripts, and reads the unit back so that tests can hold the
// Kubernetes manifests and the unit to the same capabilities and flags.
package packaging

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/coreos/go-systemd/v22/unit"
)

// Unit is what the tests need of a systemd unit and its drop-ins.
type Unit struct {
	// Options are every option of the unit, then of each drop-in, in order.
	Options []*unit.UnitOption
}

// ReadUnit reads a unit file followed by drop-ins, as systemd layers them.
func ReadUnit(path string, dropIns ...string) (*Unit, error) {
	u := &Unit{}
	for _, p := range append([]string{path}, dropIns...) {
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		opts, err := unit.DeserializeOptions(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("reading systemd unit %s: %w", p, err)
		}
		u.Options = append(u.Options, opts...)
	}
	return u, nil
}

// Values returns every value of section.name, in order.
func (u *Unit) Values(section, name string) []string {
	var vs []string
	for _, o := range u.Options {
		if o.Section == section && o.Name == name {
			vs = append(vs, o.Value)
		}
	}
	return vs
}

// Value returns the last value of section.name (the one systemd uses for a single-valued
// option), or "" when unset.
func (u *Unit) Value(section, name string) string {
	vs := u.Values(section, name)
	if len(vs) == 0 {
		return ""
	}
	return vs[len(vs)-1]
}

// Capabilities returns the effective CapabilityBoundingSet, sorted, combining its lines as
// systemd.exec(5) says: an empty assignment resets, plain lines are ORed, "~" lines remove.
// An unset bounding set is every capability, which Capabilities reports as an error.
func (u *Unit) Capabilities() ([]string, error) {
	set := map[string]bool{}
	seen := false
	for _, v := range u.Values("Service", "CapabilityBoundingSet") {
		v = strings.TrimSpace(v)
		switch {
		case v == "":
			clear(set)
			seen = false
		case strings.HasPrefix(v, "~"):
			if !seen {
				return nil, fmt.Errorf("CapabilityBoundingSet=%s without an allow list keeps every other capability", v)
			}
			for _, c := range strings.Fields(v[1:]) {
				delete(set, c)
			}
		default:
			seen = true
			for _, c := range strings.Fields(v) {
				set[c] = true
			}
		}
	}
	if !seen {
		return nil, fmt.Errorf("no CapabilityBoundingSet: the service would keep every capability")
	}
	caps := make([]string, 0, len(set))
	for c := range set {
		caps = append(caps, c)
	}
	slices.Sort(caps)
	return caps, nil
}

// ExecStart returns the command line of ExecStart with $NAME words replaced by the words of
// env[NAME] and ${NAME} by its whole value, as systemd expands them.
func (u *Unit) ExecStart(env map[string]string) ([]string, error) {
	line := strings.TrimLeft(u.Value("Service", "ExecStart"), "@-:+!")
	if line == "" {
		return nil, fmt.Errorf("no ExecStart")
	}
	var args []string
	for _, w := range strings.Fields(line) {
		switch {
		case strings.HasPrefix(w, "${") && strings.HasSuffix(w, "}"):
			args = append(args, env[w[2:len(w)-1]])
		case strings.HasPrefix(w, "$"):
			args = append(args, strings.Fields(env[w[1:]])...)
		case strings.ContainsAny(w, `"'\`):
			return nil, fmt.Errorf("ExecStart word %s: quoting is not handled here; keep ExecStart unquoted", w)
		default:
			args = append(args, w)
		}
	}
	return args, nil
}

// ReadEnvironmentFile reads KEY=VALUE lines of a systemd EnvironmentFile; values may be
// double- or single-quoted. Comment and blank lines are skipped.
func ReadEnvironmentFile(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	env := map[string]string{}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("%s:%d: %q is not KEY=VALUE", path, i+1, line)
		}
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			if v[0] == '"' {
				if v, err = strconv.Unquote(v); err != nil {
					return nil, fmt.Errorf("%s:%d: %w", path, i+1, err)
				}
			} else {
				v = v[1 : len(v)-1]
			}
		}
		env[strings.TrimSpace(k)] = v
	}
	return env, nil
}
