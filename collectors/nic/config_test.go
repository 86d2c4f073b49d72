package nic

import (
	"io"
	"testing"

	"github.com/spf13/pflag"

	"github.com/capstan-power/capstan/internal/config"
)

// newConfig returns the collector's options as the agent's defaults hold them.
func newConfig(t *testing.T) *Config {
	t.Helper()
	cfg, ok := config.Default().CollectorConfig(Name).(*Config)
	if !ok {
		t.Fatalf("the nic section is %T, want *nic.Config", config.Default().CollectorConfig(Name))
	}
	return cfg
}

// resolve runs args through the agent's flags and configuration, as cmd/capstan does.
func resolve(args ...string) (*config.Config, error) {
	fs := pflag.NewFlagSet("capstan", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	flags := config.Default()
	config.BindFlags(fs, flags)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	return config.Resolve(fs, flags)
}

func TestConfigDefaults(t *testing.T) {
	if got := newConfig(t); *got != (Config{Exclude: DefaultExclude}) {
		t.Errorf("defaults = %+v, want only the exclude filter %q", got, DefaultExclude)
	}
}

func TestConfigFromFlagsAndFile(t *testing.T) {
	cfg, err := resolve("--config.file=testdata/config/filters.yaml", "--nic.exclude=^lo$")
	if err != nil {
		t.Fatal(err)
	}
	got := cfg.CollectorConfig(Name).(*Config)
	if want := (Config{Include: "^(eth|ib)", Exclude: "^lo$"}); *got != want {
		t.Errorf("nic options = %+v, want %+v (include from the file, exclude from the flag)", *got, want)
	}
}

// The messages of a bad filter name the flag, or the file and line, and what is allowed.
func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct{ args, want string }{
		{"--nic.exclude=[lo", "--nic.exclude: \"[lo\" is not a regular expression (error parsing regexp: missing closing ]: `[lo`; syntax: RE2, as Go's regexp)"},
		{"--config.file=testdata/config/include-regexp.yaml", "testdata/config/include-regexp.yaml:2: nic.include: \"^(eth|ib\" is not a regular expression (error parsing regexp: missing closing ): `^(eth|ib`; syntax: RE2, as Go's regexp)"},
	} {
		_, err := resolve(tc.args)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s: error = %v\nwant %s", tc.args, err, tc.want)
		}
	}
}
