package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/capstan-power/capstan/capping/cluster"
	"github.com/capstan-power/capstan/internal/testkit"
)

// bin is capstanctl built for the tests that run it in a terminal.
var bin string

func TestMain(m *testing.M) { testkit.MainWithBinary(m, ".", "capstanctl", &bin) }

// need skips a test whose tool is missing, except in CI (CI=true), where a missing tool is a
// broken CI setup and fails.
func need(t *testing.T, cmd, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(cmd); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is missing in CI: .ci/run must install it", cmd)
		}
		t.Skipf("%s is not installed (Debian: apt-get install %s)", cmd, pkg)
	}
}

// topGroup is row-a with three nodes whose headroom order (b, c, a) is neither their name
// order nor their demand order.
func topGroup(t *testing.T) (*clientv3.Client, cluster.Keys, string) {
	t.Helper()
	g := newEtcdGroup(t, "row-a")
	k, lease := g.k, g.lease
	g.put(k.Budget(), cluster.BudgetRecord{Watts: 9000, SetBy: "test", SetAt: time.Now().UTC()})
	for _, n := range []struct {
		name            string
		demand, granted float64
	}{{"gpu-a", 3000, 3500}, {"gpu-b", 5000, 3000}, {"gpu-c", 2000, 2100}} {
		g.put(k.Node(n.name), cluster.NodeRecord{DemandW: n.demand, MinW: 1600, MaxW: 5600, Priority: 1, AppliedW: n.granted,
			AckedGen: 1, Lease: int64(lease), UpdatedAt: time.Now().UTC()}, clientv3.WithLease(lease))
		g.put(k.Grant(n.name), cluster.GrantRecord{Watts: n.granted, MinW: 1600, Generation: 1, Lease: int64(lease)})
	}
	return g.cli, k, g.ep
}

// rowOrder returns the nodes in the order their rows appear on screen.
func rowOrder(screen string, nodes ...string) []string {
	var out []string
	for _, l := range strings.Split(screen, "\n") {
		for _, n := range nodes {
			if strings.HasPrefix(strings.TrimSpace(l), n+" ") {
				out = append(out, n)
			}
		}
	}
	return out
}

// TestTopInATerminal runs capstanctl top in tmux and reads the screen back: the group's line and
// its budget line on top, rows by headroom, colours, a key that reorders, a watched change
// redrawn in place, q to quit.
func TestTopInATerminal(t *testing.T) {
	need(t, "tmux", "tmux")
	cli, k, ep := topGroup(t)
	sock := filepath.Join(t.TempDir(), "tmux")
	tmux := func(args ...string) (string, error) {
		out, err := exec.Command("tmux", append([]string{"-S", sock, "-f", "/dev/null"}, args...)...).CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() { _, _ = tmux("kill-server") })
	dir := t.TempDir()
	status := func(session string) string { return filepath.Join(dir, session+".status") }
	start := func(session string, env ...string) {
		t.Helper()
		// A shell that outlives capstanctl (its trap keeps Ctrl-C from ending it) writes the exit
		// status to a file: tmux reports a pane's status only once it has reaped the process,
		// which it may not do before its next event.
		cmd := "env -u NO_COLOR " + strings.Join(env, " ") + " " + bin + " --etcd.endpoints " + ep + " top row-a --refresh 100ms"
		cmd = "sh -c 'trap : INT; " + cmd + "; echo $? > " + status(session) + "'"
		if out, err := tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "20", cmd); err != nil {
			t.Fatalf("tmux new-session: %v\n%s", err, out)
		}
	}
	capture := func(session string, escapes bool) string {
		args := []string{"capture-pane", "-p", "-t", session}
		if escapes {
			args = append(args, "-e")
		}
		out, _ := tmux(args...)
		return out
	}
	nodes := []string{"gpu-a", "gpu-b", "gpu-c"}
	shows := func(session, text string, order ...string) func() bool {
		return func() bool {
			s := capture(session, false)
			return strings.Contains(s, text) && strings.Join(rowOrder(s, nodes...), " ") == strings.Join(order, " ")
		}
	}

	start("top")
	testkit.WaitFor(t, "top's first screen", shows("top", "least headroom first", "gpu-b", "gpu-c", "gpu-a"))
	screen := capture("top", false)
	t.Logf("capstanctl top in a 120x20 terminal:\n%s", screen)
	lines := strings.Split(screen, "\n")
	if !strings.HasPrefix(lines[0], "capstanctl top row-a   3 nodes   generation 1   allocator none   ") {
		t.Errorf("first line %q: want the group's line", lines[0])
	}
	if want := "budget 9000 W   granted 8600 W (400 W free)   applied 8600 W   demand 10000 W   headroom -1000 W"; lines[1] != want {
		t.Errorf("second line %q: want the budget line %q", lines[1], want)
	}
	for _, want := range []string{"NODE   HEADROOM W  DEMAND W", "gpu-b       -2000      5000", "gpu-a         500      3000"} {
		if !strings.Contains(screen, want) {
			t.Errorf("screen lacks %q", want)
		}
	}
	// Negative headroom is red, a headroom under 5 % of the node's maximum yellow.
	// tmux writes an attribute where it changes: at the start of each of these rows.
	colored := capture("top", true)
	for node, sgr := range map[string]string{"gpu-b": "\x1b[31m", "gpu-c": "\x1b[33m"} {
		if i := strings.Index(colored, node); i < 0 || !strings.Contains(colored[strings.LastIndexByte(colored[:i], '\n')+1:i], sgr) {
			t.Errorf("the row of %s does not start with %q:\n%q", node, sgr, colored)
		}
	}

	if out, err := tmux("send-keys", "-t", "top", "s"); err != nil {
		t.Fatalf("send-keys: %v %s", err, out)
	}
	testkit.WaitFor(t, "the demand order after s", shows("top", "most demand first", "gpu-b", "gpu-a", "gpu-c"))
	for range 3 {
		_, _ = tmux("send-keys", "-t", "top", "s")
	}
	testkit.WaitFor(t, "the headroom order after s three more times", shows("top", "least headroom first", "gpu-b", "gpu-c", "gpu-a"))

	// gpu-a asks for more than its grant: it moves to the top, redrawn where it was.
	b, _ := json.Marshal(cluster.NodeRecord{DemandW: 6000, MinW: 1600, MaxW: 5600, Priority: 1, AppliedW: 3500, Lease: 0})
	if _, err := cli.Put(context.Background(), k.Node("gpu-a"), string(b)); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "gpu-a first after its demand rose", shows("top", "demand 13000 W", "gpu-a", "gpu-b", "gpu-c"))

	if out, err := tmux("send-keys", "-t", "top", "q"); err != nil {
		t.Fatalf("send-keys: %v %s", err, out)
	}
	testkit.WaitFor(t, "top to quit on q", func() bool {
		_, err := tmux("has-session", "-t", "top")
		return err != nil
	})

	// NO_COLOR: the same screen, without colours.
	start("plain", "NO_COLOR=1")
	testkit.WaitFor(t, "top's screen under NO_COLOR", shows("plain", "demand 13000 W", "gpu-a", "gpu-b", "gpu-c"))
	if colored := capture("plain", true); strings.Contains(colored, "\x1b[31m") || strings.Contains(colored, "\x1b[33m") {
		t.Errorf("NO_COLOR=1, yet colours:\n%q", colored)
	}
	// Ctrl-C ends it through its context, so it restores the terminal and exits 0 rather than
	// dying of the signal.
	if out, err := tmux("set-option", "-t", "plain", "remain-on-exit", "on"); err != nil {
		t.Fatalf("set-option: %v %s", err, out)
	}
	if out, err := tmux("send-keys", "-t", "plain", "C-c"); err != nil {
		t.Fatalf("send-keys: %v %s", err, out)
	}
	var code []byte
	if !testkit.Poll(testkit.DefaultWait, func() bool {
		var err error
		code, err = os.ReadFile(status("plain"))
		return err == nil && len(code) > 0
	}) {
		out, _ := exec.Command("ps", "-eo", "pid,ppid,stat,args").CombinedOutput()
		t.Fatalf("top did not quit on Ctrl-C; screen:\n%s\nprocesses:\n%s", capture("plain", false), out)
	}
	if got := strings.TrimSpace(string(code)); got != "0" {
		t.Errorf("after Ctrl-C: exit status %s; want a clean exit (0), not death by the signal (130)", got)
	}
	if s := capture("plain", false); strings.Contains(s, "gpu-a") {
		t.Errorf("the alternate screen was not left after Ctrl-C:\n%s", s)
	}
}

// TestTopRedrawsInPlace: on a terminal every frame starts at the cursor's home and clears only
// the rest of each line and what is below the last one; the screen is never cleared whole, which
// is what flickers. Lines are cut to the terminal's size.
func TestTopRedrawsInPlace(t *testing.T) {
	s := cluster.Status{Group: "row-a", BudgetW: 9000, Generation: 2, Nodes: []cluster.NodeStatus{
		{Node: "gpu-a", DemandW: 3000, GrantW: 3500, MaxW: 5600, LastSeen: time.Now()},
		{Node: "gpu-b", DemandW: 5000, GrantW: 3000, MaxW: 5600, LastSeen: time.Now()},
	}}
	var buf bytes.Buffer
	scr := screen{out: &buf, inPlace: true, color: true, size: func() (int, int) { return 40, 6 }}
	for range 2 {
		if err := scr.draw(frame(s, time.Now(), 0, true)); err != nil {
			t.Fatal(err)
		}
	}
	out := buf.String()
	if strings.Contains(out, "\x1b[2J") {
		t.Errorf("a frame clears the whole screen:\n%q", out)
	}
	frames := strings.Split(out, "\x1b[H")
	if len(frames) != 3 || frames[0] != "" {
		t.Fatalf("want two frames, each from the cursor's home:\n%q", out)
	}
	for _, f := range frames[1:] {
		rows := strings.Split(strings.TrimSuffix(f, "\x1b[J"), "\r\n")
		if len(rows) != 6 || !strings.HasSuffix(f, "\x1b[J") {
			t.Errorf("frame of %d rows (want the terminal's 6), ending %q:\n%q", len(rows), f[max(0, len(f)-4):], f)
		}
		for _, r := range rows {
			if !strings.HasSuffix(r, "\x1b[K") || len(stripSGR(strings.TrimSuffix(r, "\x1b[K"))) > 40 {
				t.Errorf("row %q: want at most 40 columns, then clear-to-end-of-line", r)
			}
		}
		if !strings.Contains(f, "more rows below") {
			t.Errorf("a cut table does not say so:\n%q", f)
		}
	}
}

func stripSGR(s string) string {
	for {
		i := strings.Index(s, "\x1b[")
		if i < 0 {
			return s
		}
		j := strings.IndexByte(s[i:], 'm')
		s = s[:i] + s[i+j+1:]
	}
}
