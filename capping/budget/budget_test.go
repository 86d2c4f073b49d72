package budget

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStatic(t *testing.T) {
	now := time.Unix(1000, 0)
	s, err := NewStatic(4200, now)
	if err != nil {
		t.Fatal(err)
	}
	b, ok := s.Current()
	if !ok || b.Watts != 4200 || b.Source != "static" || b.Expired(now.Add(1000*time.Hour)) {
		t.Errorf("static budget = %+v, %v; want 4200 W from static, never expiring", b, ok)
	}
	for _, w := range []float64{0, -1, 1e12} {
		if _, err := NewStatic(w, now); err == nil || !strings.Contains(err.Error(), "--budget.watts") {
			t.Errorf("NewStatic(%v) error = %v, want one naming --budget.watts", w, err)
		}
	}
}

func TestExpired(t *testing.T) {
	at := time.Unix(1000, 0)
	b := Budget{Watts: 1, TTL: time.Minute, Received: at}
	if b.Expired(at.Add(time.Minute)) || !b.Expired(at.Add(time.Minute+time.Nanosecond)) {
		t.Error("a budget must hold for exactly its TTL")
	}
}

func TestParseFile(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name, body string
		watts      float64
		ttl        time.Duration
		err        string
	}{
		{"yaml", "watts: 4200\nttl: 5m\n", 4200, 5 * time.Minute, ""},
		{"json", `{"watts": 3100.5}`, 3100.5, 0, ""},
		{"no-watts", "ttl: 5m\n", 0, 0, "key watts is missing"},
		{"negative", "watts: -5\n", 0, 0, "out of range"},
		{"zero", "watts: 0\n", 0, 0, "out of range"},
		{"bad-ttl", "watts: 10\nttl: soon\n", 0, 0, `ttl "soon"`},
		{"unknown-key", "watts: 10\nwat: 3\n", 0, 0, "field wat not found"},
		{"garbage", "{{{", 0, 0, "parsing budget file"},
		{"string-watts", "watts: lots\n", 0, 0, "parsing budget file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(dir, c.name+".yaml")
			if err := os.WriteFile(p, []byte(c.body), 0o600); err != nil {
				t.Fatal(err)
			}
			b, err := ParseFile(p)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) || !strings.Contains(err.Error(), p) {
					t.Fatalf("error = %v, want one naming %s and containing %q", err, p, c.err)
				}
				return
			}
			if err != nil || b.Watts != c.watts || b.TTL != c.ttl || b.Source != "file" {
				t.Fatalf("got %+v, %v; want %v W ttl %v", b, err, c.watts, c.ttl)
			}
		})
	}
}

// A corrupt file is rejected with one log line and the last good budget stays; a fixed file
// applies at the next poll.
func TestFileKeepsLastGoodBudget(t *testing.T) {
	p := filepath.Join(t.TempDir(), "budget.yaml")
	write := func(body string, mtime time.Time) {
		t.Helper()
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	base := time.Unix(1_700_000_000, 0)
	write("watts: 4000\nttl: 1m\n", base)
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	now := base
	f := NewFile(p, time.Second, func() time.Time { return now }, log)
	if b, ok := f.Current(); !ok || b.Watts != 4000 || b.TTL != time.Minute || !b.Received.Equal(base) {
		t.Fatalf("first budget %+v, %v", b, ok)
	}

	write("watts: [oops\n", base.Add(time.Second))
	now = base.Add(2 * time.Second)
	for range 3 {
		if err := f.Poll(); err == nil {
			t.Fatal("a corrupt file was accepted")
		}
	}
	if b, _ := f.Current(); b.Watts != 4000 {
		t.Errorf("after a corrupt file the budget is %v W, want the last good 4000", b.Watts)
	}
	if n := strings.Count(logs.String(), "budget file rejected"); n != 1 {
		t.Errorf("the corrupt file was logged %d times, want once:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "kept_watts=4000") {
		t.Errorf("the rejection does not say which budget stays:\n%s", logs.String())
	}

	write("watts: 2500\n", base.Add(3*time.Second))
	now = base.Add(4 * time.Second)
	if err := f.Poll(); err != nil {
		t.Fatal(err)
	}
	if b, _ := f.Current(); b.Watts != 2500 || b.TTL != 0 || !b.Received.Equal(now) {
		t.Errorf("fixed file gave %+v, want 2500 W received now", b)
	}

	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := f.Poll(); err == nil {
		t.Error("a vanished file was not reported")
	}
	if b, ok := f.Current(); !ok || b.Watts != 2500 {
		t.Errorf("a vanished file dropped the budget: %+v", b)
	}
}

// A bad or missing file at start gives no budget, says so once naming the file, and the first
// good version is taken up by the next poll.
func TestNewFileWithBadFileAtStart(t *testing.T) {
	p := filepath.Join(t.TempDir(), "budget.json")
	if err := os.WriteFile(p, []byte(`{"watts": "many"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	f := NewFile(p, time.Second, time.Now, slog.New(slog.NewTextHandler(&logs, nil)))
	if b, ok := f.Current(); ok {
		t.Errorf("a malformed file at start gave the budget %+v", b)
	}
	if !strings.Contains(logs.String(), "budget file rejected; no budget yet") || !strings.Contains(logs.String(), p) {
		t.Errorf("the malformed file at start is not reported with its path:\n%s", logs.String())
	}
	if err := os.WriteFile(p, []byte(`{"watts": 3000}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := f.Poll(); err != nil {
		t.Fatal(err)
	}
	if b, ok := f.Current(); !ok || b.Watts != 3000 {
		t.Errorf("after the file was fixed: %+v, %v; want 3000 W", b, ok)
	}
	missing := NewFile(p+".missing", time.Second, time.Now, nil)
	if _, ok := missing.Current(); ok {
		t.Error("a missing file gave a budget")
	}
}

// A rewrite that keeps the file's size and modification time (a ConfigMap's symlink swap, an
// in-place writer) is still taken up: the file is watched by content.
func TestFileRewriteKeepingSizeAndModTime(t *testing.T) {
	p := filepath.Join(t.TempDir(), "budget.yaml")
	mtime := time.Unix(1_700_000_000, 0)
	write := func(body string) {
		t.Helper()
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	write("watts: 4000\n")
	f := NewFile(p, time.Second, time.Now, nil)
	if b, ok := f.Current(); !ok || b.Watts != 4000 {
		t.Fatalf("first budget %+v, %v", b, ok)
	}
	write("watts: 2500\n") // same size, same mtime
	if err := f.Poll(); err != nil {
		t.Fatal(err)
	}
	if b, _ := f.Current(); b.Watts != 2500 {
		t.Errorf("after a rewrite keeping size and mtime the budget is %v W, want 2500", b.Watts)
	}
}
