package metrics

import (
	"os"
	"regexp"
	"testing"
)

// The committed reference must be what the table generates, so docs never drift from code.
func TestDocsMatchTable(t *testing.T) {
	got, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatalf("reading docs/metrics.md: %v (run make generate)", err)
	}
	if string(got) != Markdown() {
		t.Fatal("docs/metrics.md differs from the metric table: run `make generate` and commit the result")
	}
}

func TestTableIsWellFormed(t *testing.T) {
	name := regexp.MustCompile(`^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$`)
	annotation := regexp.MustCompile(`^\{[a-z_]+\}$`)
	units := map[string]bool{"W": true, "J": true, "Cel": true, "1": true, "By": true, "Hz": true, "s": true, "V": true, "A": true, "{error}": true, "By/s": true, "W/s": true}
	seen := map[string]bool{}
	for i, d := range Table {
		if d.ID != i {
			t.Errorf("%s: ID %d, want its index %d", d.Name, d.ID, i)
		}
		if !name.MatchString(d.Name) {
			t.Errorf("%q is not a dotted lower-case OpenTelemetry name", d.Name)
		}
		if seen[d.Name] {
			t.Errorf("%s defined twice", d.Name)
		}
		seen[d.Name] = true
		if !units[d.Unit] && !annotation.MatchString(d.Unit) {
			t.Errorf("%s: unit %q is not a UCUM unit this table knows", d.Name, d.Unit)
		}
		if d.Description == "" || len(d.Sources) == 0 || len(d.Attributes) == 0 {
			t.Errorf("%s: description, source and attributes are required", d.Name)
		}
		if d.Kind == Counter && d.Unit == "Cel" {
			t.Errorf("%s: a temperature cannot be a counter", d.Name)
		}
	}
	if ByName("hw.power") != HWPower || ByName("no.such") != nil {
		t.Error("ByName does not find table entries")
	}
}
