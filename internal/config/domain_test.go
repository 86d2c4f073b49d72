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

// etcd.domain-labels gives the domain below etcd.group from the node's labels: it needs the
// group, replaces etcd.domain, and holds Kubernetes label keys.
func TestEtcdDomainLabels(t *testing.T) {
	for _, tc := range []struct {
		group, domain, labels string
		want                  string // "" accepts; else a part of the error
	}{
		{"site", "", "capstan.io/hall,capstan.io/row,capstan.io/rack", ""},
		{"site", "", "rack", ""},
		{"site", "", " topology.example.com/row , topology.example.com/rack ", ""},
		{"", "", "capstan.io/rack", `etcd.domain-labels: "capstan.io/rack" is set without etcd.group`},
		{"site", "site/row3", "capstan.io/rack", `etcd.domain-labels: "capstan.io/rack" is set with etcd.domain "site/row3" (set one`},
		{"site", "", ",", "has 0 label keys (allowed: 1 to 7, comma-separated)"},
		{"site", "", "a,b,c,d,e,f,g,h", "has 8 label keys (allowed: 1 to 7"},
		{"site", "", "Capstan.io/rack", `prefix "Capstan.io" is not a DNS subdomain`},
		{"site", "", "capstan.io/", `name "" must be 1 to 63`},
		{"site", "", "capstan.io/-rack", `name "-rack" must be 1 to 63`},
		{"site", "", "capstan.io/ra ck", `name "ra ck"`},
		{"site", "", "/rack", `prefix "" is not a DNS subdomain`},
		{"si te", "", "rack", `etcd.group: "si te" is not a name`},
	} {
		c := Default()
		c.Capping.Enabled, c.Budget.Source = true, "etcd"
		c.Etcd.Endpoints, c.Etcd.Group, c.Etcd.Domain, c.Etcd.DomainLabels = "http://127.0.0.1:2379", tc.group, tc.domain, tc.labels
		err := c.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("labels %q: %v, want accepted", tc.labels, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("labels %q: %v, want an error with %q", tc.labels, err, tc.want)
		}
	}
	if got := DomainLabelKeys(" a/b ,c,, d "); strings.Join(got, "|") != "a/b|c|d" {
		t.Errorf("DomainLabelKeys = %q", got)
	}
}
