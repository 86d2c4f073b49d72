package config

import (
	"strings"
	"testing"
)

// etcd.domain names the node's leaf power domain; its first segment is the group, so etcd.group
// may be left out, and when given must agree.
func TestEtcdDomain(t *testing.T) {
	for _, tc := range []struct {
		group, domain string
		want          string // "" accepts; else a part of the error
	}{
		{"row-a", "", ""},
		{"", "site/row3/rack12", ""},
		{"site", "site/row3/rack12", ""},
		{"site", "site", ""},
		{"", "", `etcd.group: "" is not a name`},
		{"row-a", "site/row3", `etcd.domain: "site/row3" does not start with the group "row-a" of etcd.group`},
		{"", "site//rack12", "segment 2 is empty"},
		{"", "/site", "segment 1 is empty"},
		{"", "site/rack12/", "segment 3 is empty"},
		{"", "site/../site", `segment 2 is ".."`},
		{"", "site/r a", `segment 2: name "r a": character ' ' not allowed`},
		{"", "a/b/c/d/e/f/g/h/i", "9 levels (allowed: 1 to 8)"},
	} {
		c := Default()
		c.Capping.Enabled, c.Budget.Source = true, "etcd"
		c.Etcd.Endpoints, c.Etcd.Group, c.Etcd.Domain = "http://127.0.0.1:2379", tc.group, tc.domain
		err := c.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("group %q domain %q: %v, want accepted", tc.group, tc.domain, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("group %q domain %q: %v, want an error with %q", tc.group, tc.domain, err, tc.want)
		}
	}
}
