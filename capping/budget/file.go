package budget

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"sync"
	"time"

	"gopkg.in/yaml.v3"
)

// maxFileBytes bounds what the file source reads: a budget is a line or two.
const maxFileBytes = 64 << 10

// File is a budget read from a small YAML or JSON file ({watts: 4200, ttl: 5m}) and watched by
// polling: no inotify, so it also works on the bind-mounted ConfigMaps and NFS paths budgets
// are pushed through. A change is found by the file's content, not only its size and
// modification time, which a ConfigMap's symlink swap or an in-place writer can leave as they
// were. A malformed file is rejected with one log
// line and the last good budget stays.
type File struct {
	path   string
	period time.Duration
	now    func() time.Time
	log    *slog.Logger

	mu      sync.Mutex
	b       Budget
	ok      bool
	lastKey fileKey
	lastErr string // the last rejection logged, so a bad file is reported once, not every period
}

// fileKey is what a change of the file is detected by: its content, and its modification
// time too, so that a pusher that rewrites the same budget still renews its TTL.
type fileKey struct {
	sum     [sha256.Size]byte
	modTime time.Time
}

// fileBudget is the file's format. TTL is a Go duration ("90s", "5m"); absent means no expiry.
type fileBudget struct {
	Watts *float64 `yaml:"watts"`
	TTL   string   `yaml:"ttl"`
}

// NewFile reads path once and returns a source that re-reads it every period when it changed.
// A missing or malformed file at start is logged as an error and gives no budget until a good
// one appears (the controller steers to its fallback meanwhile): a budget pushed by another
// system that is briefly bad at boot, or on a reload, must not stop the agent.
func NewFile(path string, period time.Duration, now func() time.Time, log *slog.Logger) *File {
	f := &File{path: path, period: period, now: now, log: log}
	_ = f.Poll() // Poll logs what it rejects.
	return f
}

// Name is "file".
func (f *File) Name() string { return "file" }

// Current returns the last good budget from the file.
func (f *File) Current() (Budget, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.b, f.ok
}

// Run polls the file every period until ctx is done.
func (f *File) Run(ctx context.Context) {
	t := time.NewTicker(f.period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = f.Poll() // Poll logs what it rejects.
		}
	}
}

// Poll reads the file (a budget is a line or two) and takes it up when its content or its
// modification time changed. A file that vanished or
// fails to parse leaves the last good budget in place, whose TTL then decides how long it holds.
// The error is also logged once per distinct problem.
func (f *File) Poll() error {
	st, err := os.Stat(f.path)
	if err != nil {
		return f.reject(fmt.Errorf("reading budget file %s: %w", f.path, err))
	}
	data, err := readLimited(f.path)
	if err != nil {
		return f.reject(err)
	}
	key := fileKey{sum: sha256.Sum256(data), modTime: st.ModTime()}
	f.mu.Lock()
	same := f.ok && key == f.lastKey
	f.mu.Unlock()
	if same {
		return nil
	}
	b, err := parseFile(f.path, data)
	if err != nil {
		return f.reject(err)
	}
	b.Received = f.now()
	f.mu.Lock()
	changed := !f.ok || b.Watts != f.b.Watts || b.TTL != f.b.TTL
	f.b, f.ok, f.lastKey, f.lastErr = b, true, key, ""
	f.mu.Unlock()
	if changed && f.log != nil {
		f.log.Info("budget file read", "file", f.path, "watts", b.Watts, "ttl", b.TTL)
	}
	return nil
}

func (f *File) reject(err error) error {
	f.mu.Lock()
	repeat := err.Error() == f.lastErr
	f.lastErr = err.Error()
	kept, ok := f.b, f.ok
	f.mu.Unlock()
	if !repeat && f.log != nil {
		if ok {
			f.log.Error("budget file rejected; keeping the last good budget", "err", err, "kept_watts", kept.Watts)
		} else {
			f.log.Error("budget file rejected; no budget yet", "err", err)
		}
	}
	return err
}

// ParseFile reads and checks a budget file. YAML is a superset of JSON, so one parser reads both.
func ParseFile(path string) (Budget, error) {
	data, err := readLimited(path)
	if err != nil {
		return Budget{}, err
	}
	return parseFile(path, data)
}

// parseFile checks the content data of the budget file at path.
func parseFile(path string, data []byte) (Budget, error) {
	var fb fileBudget
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&fb); err != nil {
		return Budget{}, fmt.Errorf("parsing budget file %s: %w (expected {watts: NUMBER, ttl: DURATION})", path, err)
	}
	if fb.Watts == nil {
		return Budget{}, fmt.Errorf("budget file %s: key watts is missing (expected {watts: NUMBER, ttl: DURATION})", path)
	}
	b := Budget{Watts: *fb.Watts, Source: "file"}
	if !b.Valid() || math.IsNaN(b.Watts) {
		return Budget{}, fmt.Errorf("budget file %s: watts %v is out of range (allowed: a positive number of watts below 1e9)", path, *fb.Watts)
	}
	if fb.TTL != "" {
		ttl, err := time.ParseDuration(fb.TTL)
		if err != nil || ttl < 0 {
			return Budget{}, fmt.Errorf("budget file %s: ttl %q is not a non-negative duration (examples: 90s, 5m; absent means no expiry)", path, fb.TTL)
		}
		b.TTL = ttl
	}
	return b, nil
}

func readLimited(path string) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading budget file %s: %w", path, err)
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, maxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading budget file %s: %w", path, err)
	}
	if len(data) > maxFileBytes {
		return nil, fmt.Errorf("budget file %s is larger than %d bytes: not a budget file", path, maxFileBytes)
	}
	return data, nil
}
