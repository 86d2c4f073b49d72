package main

import (
	"bytes"
	"testing"

	"github.com/capstan-power/capstan/internal/version"
)

// TestVersionAndUnknownFlags needs no etcd: both are answered before any command runs.
func TestVersionAndUnknownFlags(t *testing.T) {
	cases := []struct {
		args            []string
		wantOut, wantEr string
	}{
		{[]string{"--version"}, version.Of("capstanctl") + "\n", ""},
		{[]string{"--etcd.endpoint=http://etcd:2379", "status", "row-a"}, "",
			"unknown flag: --etcd.endpoint (did you mean --etcd.endpoints?)"},
		{[]string{"budget", "set", "row-a", "4000", "--floor-per-nod=100"}, "",
			"unknown flag: --floor-per-nod (did you mean --floor-per-node?)"},
		{[]string{"budget", "get", "row-a", "--etcd.prefx=/x"}, "",
			"unknown flag: --etcd.prefx (did you mean --etcd.prefix?)"},
		{[]string{"status", "row-a", "--verbose"}, "", "unknown flag: --verbose"},
	}
	for _, tc := range cases {
		var out, errOut bytes.Buffer
		root := newRoot(&out, &errOut)
		root.SetArgs(tc.args)
		err := root.Execute()
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != tc.wantEr || out.String() != tc.wantOut {
			t.Errorf("capstanctl %v:\n got error %q, output %q\nwant error %q, output %q", tc.args, got, out.String(), tc.wantEr, tc.wantOut)
		}
	}
}
