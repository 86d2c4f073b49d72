package config

import (
	"fmt"
	"strings"
)

// DomainLabelKeys splits etcd.domain-labels into its label keys, in order.
func DomainLabelKeys(s string) []string {
	var keys []string
	for k := range strings.SplitSeq(s, ",") {
		if k = strings.TrimSpace(k); k != "" {
			keys = append(keys, k)
		}
	}
	return keys
}

// domainLabels checks etcd.domain-labels: label keys under etcd.group, which they extend, never
// beside etcd.domain, which they replace.
func (v *validator) domainLabels() {
	e := &v.c.Etcd
	const key = "etcd.domain-labels"
	if e.Domain != "" {
		v.fail(key, quote(e.DomainLabels), "is set with etcd.domain "+quote(e.Domain)+" (set one: the labels give the domain)")
		return
	}
	if e.Group == "" {
		v.fail(key, quote(e.DomainLabels), "is set without etcd.group (the labels give the path below the group)")
		return
	}
	v.name("etcd.group", e.Group)
	keys := DomainLabelKeys(e.DomainLabels)
	if len(keys) == 0 || len(keys) > MaxDomainDepth-1 {
		v.fail(key, quote(e.DomainLabels), fmt.Sprintf("has %d label keys (allowed: 1 to %d, comma-separated)", len(keys), MaxDomainDepth-1))
		return
	}
	for _, k := range keys {
		if err := ValidLabelKey(k); err != nil {
			v.fail(key, quote(e.DomainLabels), "has "+err.Error())
			return
		}
	}
}

// ValidLabelKey checks a Kubernetes label key: an optional DNS subdomain prefix and "/", then a
// name of 1 to 63 letters, digits, - _ . that starts and ends with a letter or digit.
func ValidLabelKey(k string) error {
	prefix, name, hasPrefix := strings.Cut(k, "/")
	if !hasPrefix {
		prefix, name = "", k
	}
	if hasPrefix {
		if prefix == "" || len(prefix) > 253 || strings.Trim(prefix, "abcdefghijklmnopqrstuvwxyz0123456789-.") != "" ||
			!alnum(prefix[0]) || !alnum(prefix[len(prefix)-1]) {
			return fmt.Errorf("label key %q: prefix %q is not a DNS subdomain (lower-case letters, digits, - and ., e.g. capstan.io)", k, prefix)
		}
	}
	if name == "" || len(name) > 63 || !alnum(name[0]) || !alnum(name[len(name)-1]) ||
		strings.Trim(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") != "" {
		return fmt.Errorf("label key %q: name %q must be 1 to 63 letters, digits, - _ . starting and ending with a letter or digit", k, name)
	}
	return nil
}

func alnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}
