package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"

	"github.com/capstan-power/capstan/capping/cluster"
)

func topCmd(g *globals, out io.Writer) *cobra.Command {
	o := topOptions{}
	var order string
	c := &cobra.Command{
		Use:   "top GROUP | top --tree PATH",
		Short: "A live view of the group: its budget line, then its nodes, least headroom first",
		Long: `A live view of the group, refreshed from etcd watches: the budget line (budget, granted,
applied, demand, headroom), then one row per node. A node's headroom is its grant minus its
demand: below zero, the budget holds the node under what it asks for.

On a terminal, top redraws in place and colours the rows (red: negative headroom, yellow:
under 5 % of the node's maximum, dim: gone); keys: s cycles the order, q quits. NO_COLOR
turns the colours off; when stdout is not a terminal it prints plain tables, one per change.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			i := slices.IndexFunc(sortOrders, func(s sortOrder) bool { return s.name == order })
			if i < 0 {
				return fmt.Errorf("--sort %q: want one of %s", order, strings.Join(sortNames(), ", "))
			}
			o.order, o.timeout = i, g.timeout
			group := args[0]
			if o.tree {
				var err error
				if group, o.under, err = cluster.SplitPath(args[0]); err != nil {
					return fmt.Errorf("PATH: %w", err)
				}
			}
			c, k, err := g.connect(group)
			if err != nil {
				return err
			}
			defer c.Close()
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			// A signal ends the view through its context, so the terminal is restored.
			ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
			defer stop()
			scr := detectScreen(out)
			var keys <-chan byte
			if scr.inPlace {
				var restore func()
				keys, restore = readKeys(os.Stdin)
				defer restore()
			}
			return g.explain(top(ctx, c, k, scr, keys, o), g.timeout)
		},
	}
	c.Flags().DurationVar(&o.refresh, "refresh", time.Second, "least time between two redraws")
	c.Flags().StringVar(&order, "sort", "headroom", "row order: "+strings.Join(sortNames(), ", "))
	c.Flags().BoolVar(&o.tree, "tree", false, "show the power domains under PATH (GROUP or GROUP/DOMAIN...) instead of the nodes: limit, Σ grants, Σ applied, Σ draw, headroom, oversubscription")
	return c
}

type topOptions struct {
	refresh, timeout time.Duration
	order            int    // index into sortOrders
	tree             bool   // the domains, not the nodes
	under            string // with tree: the domain (below the group) whose subtree is shown
}

// row is one node as top shows it.
type row struct {
	cluster.NodeStatus
	headroomW float64 // grant − demand
	gone      bool    // holds a reservation but is not registered
}

// sortOrder is one order of top's rows; ties go by node name.
type sortOrder struct {
	name, says string
	cmp        func(a, b row) int
}

var sortOrders = []sortOrder{
	{"headroom", "least headroom first", func(a, b row) int { return cmp.Compare(a.headroomW, b.headroomW) }},
	{"demand", "most demand first", func(a, b row) int { return cmp.Compare(b.DemandW, a.DemandW) }},
	{"grant", "largest grant first", func(a, b row) int { return cmp.Compare(b.GrantW, a.GrantW) }},
	{"node", "by node name", func(a, b row) int { return strings.Compare(a.Node, b.Node) }},
}

func sortNames() []string {
	out := make([]string, len(sortOrders))
	for i, s := range sortOrders {
		out[i] = s.name
	}
	return out
}

// style is how a line is coloured on a terminal.
type style int

const (
	plain style = iota
	bold
	warn // little headroom
	bad  // negative headroom
	dim  // a node that is gone
)

var sgr = map[style]string{bold: "\x1b[1m", warn: "\x1b[33m", bad: "\x1b[31m", dim: "\x1b[2m"}

type line struct {
	text  string
	style style
}

// frame lays out one screen: the group's line, its budget line, the order, then the table.
func frame(s cluster.Status, now time.Time, order int, interactive bool) []line {
	rows := make([]row, len(s.Nodes))
	var demand, grant, applied float64
	for i, n := range s.Nodes {
		rows[i] = row{NodeStatus: n, headroomW: n.GrantW - n.DemandW, gone: n.MaxW == 0}
		demand += n.DemandW
		grant += n.GrantW
		applied += n.AppliedW
	}
	so := sortOrders[order]
	slices.SortStableFunc(rows, func(a, b row) int {
		return cmp.Or(so.cmp(a, b), strings.Compare(a.Node, b.Node))
	})

	alloc := "none"
	for _, n := range s.Nodes {
		if n.Allocator {
			alloc = n.Node
		}
	}
	lines := []line{{fmt.Sprintf("capstanctl top %s   %d nodes   generation %d   allocator %s   %s",
		s.Group, len(s.Nodes), s.Generation, alloc, now.Format("15:04:05")), bold}}
	if s.BudgetW > 0 {
		head := s.BudgetW - demand
		st := plain
		if head < 0 {
			st = bad
		}
		lines = append(lines, line{fmt.Sprintf("budget %.0f W   granted %.0f W (%.0f W free)   applied %.0f W   demand %.0f W   headroom %.0f W",
			s.BudgetW, grant, s.BudgetW-grant, applied, demand, head), st})
	} else {
		lines = append(lines, line{fmt.Sprintf("budget none (capstanctl budget set %s WATTS)   granted %.0f W   applied %.0f W   demand %.0f W",
			s.Group, grant, applied, demand), warn})
	}
	help := "headroom = grant - demand; sorted " + so.says
	if interactive {
		help += "   [s] order  [q] quit"
	}
	lines = append(lines, line{help, dim}, line{})

	// Numbers align right; names read better aligned left, so they are padded to one width.
	nameW := len("NODE")
	for _, r := range rows {
		nameW = max(nameW, utf8.RuneCountInString(r.Node))
	}
	var tb bytes.Buffer
	tw := tabwriter.NewWriter(&tb, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "%-*s\tHEADROOM W\tDEMAND W\tGRANT W\tAPPLIED W\tMIN W\tMAX W\tPRIORITY\tLAST SEEN\tALLOCATOR\t\n", nameW, "NODE")
	for _, r := range rows {
		seen, mark := "gone", ""
		if !r.gone {
			seen = now.Sub(r.LastSeen).Round(time.Second).String() + " ago"
		}
		if r.Allocator {
			mark = "*"
		}
		fmt.Fprintf(tw, "%-*s\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%s\t%s\t\n",
			nameW, r.Node, r.headroomW, r.DemandW, r.GrantW, r.AppliedW, r.MinW, r.MaxW, r.Priority, seen, mark)
	}
	_ = tw.Flush() // a bytes.Buffer does not fail
	table := strings.Split(strings.TrimSuffix(tb.String(), "\n"), "\n")
	lines = append(lines, line{table[0], bold})
	for i, r := range rows {
		st := plain
		switch {
		case r.gone:
			st = dim
		case r.headroomW < 0:
			st = bad
		case r.headroomW < 0.05*r.MaxW:
			st = warn
		}
		lines = append(lines, line{table[i+1], st})
	}
	return lines
}

// screen is where top draws: a terminal redrawn in place, or a plain stream of tables.
type screen struct {
	out     io.Writer
	inPlace bool                     // a terminal: the alternate screen, redrawn from its top
	color   bool                     // SGR colours (a terminal, and NO_COLOR unset)
	size    func() (width, rows int) // the terminal's size; 0 when unknown
}

// detectScreen looks at out: a terminal that is not TERM=dumb is redrawn in place.
func detectScreen(out io.Writer) screen {
	f, ok := out.(*os.File)
	if !ok || os.Getenv("TERM") == "dumb" {
		return screen{out: out}
	}
	fd := int(f.Fd())
	if _, err := unix.IoctlGetTermios(fd, unix.TCGETS); err != nil {
		return screen{out: out}
	}
	return screen{out: out, inPlace: true, color: os.Getenv("NO_COLOR") == "", size: func() (int, int) {
		ws, err := unix.IoctlGetWinsize(fd, unix.TIOCGWINSZ)
		if err != nil {
			return 0, 0
		}
		return int(ws.Col), int(ws.Row)
	}}
}

// enter switches to the alternate screen and hides the cursor; leave undoes it.
func (s screen) enter() { fmt.Fprint(s.out, "\x1b[?1049h\x1b[?25l\x1b[H") }
func (s screen) leave() { fmt.Fprint(s.out, "\x1b[0m\x1b[?25h\x1b[?1049l") }

// draw writes one frame. In place, it moves the cursor home and overwrites each line, clearing
// only what is left of the old one and, at the end, below it: the screen is never blank between
// two frames, so it does not flicker. Lines are cut to the terminal's width (a wrapped line
// would shift the rows below) and the table to its height.
func (s screen) draw(lines []line) error {
	var b bytes.Buffer
	if !s.inPlace {
		for _, l := range lines {
			b.WriteString(l.text)
			b.WriteByte('\n')
		}
		b.WriteByte('\n')
		_, err := s.out.Write(b.Bytes())
		return err
	}
	width, rows := 0, 0
	if s.size != nil {
		width, rows = s.size()
	}
	if rows > 0 && len(lines) > rows {
		more := len(lines) - rows + 1
		lines = append(lines[:rows-1:rows-1], line{fmt.Sprintf("... %d more rows below: enlarge the window", more), dim})
	}
	b.WriteString("\x1b[H")
	for i, l := range lines {
		text := l.text
		if width > 0 && utf8.RuneCountInString(text) > width {
			text = string([]rune(text)[:width])
		}
		if s.color && sgr[l.style] != "" && text != "" {
			text = sgr[l.style] + text + "\x1b[0m"
		}
		b.WriteString(text)
		b.WriteString("\x1b[K")
		if i < len(lines)-1 {
			b.WriteString("\r\n")
		}
	}
	b.WriteString("\x1b[J")
	_, err := s.out.Write(b.Bytes())
	return err
}

// readKeys turns off line buffering and echo on a terminal stdin and sends each key pressed;
// restore puts the terminal back. Signals (Ctrl-C) keep working. When in is not a terminal,
// no key ever comes.
func readKeys(in *os.File) (<-chan byte, func()) {
	fd := int(in.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, func() {}
	}
	raw := *old
	raw.Lflag &^= unix.ICANON | unix.ECHO
	raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
		return nil, func() {}
	}
	ch := make(chan byte, 16)
	go func() {
		// This reader outlives top: a read on a terminal cannot be interrupted, and the process
		// exits right after top returns.
		var buf [16]byte
		for {
			n, err := in.Read(buf[:])
			for _, k := range buf[:n] {
				select {
				case ch <- k:
				default: // keys typed faster than frames are drawn are dropped
				}
			}
			if err != nil {
				return
			}
		}
	}()
	return ch, func() { _ = unix.IoctlSetTermios(fd, unix.TCSETS, old) }
}

// top draws the group, then redraws it after changes the watch brings, at most every refresh.
// On a terminal it also redraws every refresh (LAST SEEN ages), on a key and on a resize.
func top(ctx context.Context, c *clientv3.Client, k cluster.Keys, scr screen, keys <-chan byte, o topOptions) error {
	if ctx == nil {
		ctx = context.Background()
	}
	var winch chan os.Signal
	if scr.inPlace {
		scr.enter()
		defer scr.leave()
		winch = make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
	}
	order := o.order
	for ctx.Err() == nil {
		v := cluster.NewView(k)
		lctx, cancel := context.WithTimeout(ctx, o.timeout)
		_, err := v.Load(lctx, c)
		alloc, aerr := "", error(nil)
		if err == nil {
			alloc, aerr = cluster.Allocator(lctx, c, k)
		}
		cancel()
		if err = errors.Join(err, aerr); err != nil {
			return err
		}
		wch := c.Watch(clientv3.WithRequireLeader(ctx), k.Root(), clientv3.WithPrefix(), clientv3.WithRev(v.Revision+1))
		draw := func() error {
			if o.tree {
				return scr.draw(treeFrame(v, alloc, time.Now(), o.under, keys != nil))
			}
			return scr.draw(frame(cluster.StatusOf(v, alloc), time.Now(), order, keys != nil))
		}
		if err := draw(); err != nil {
			return err
		}
		tick := time.NewTicker(o.refresh)
		dirty := false
	watch:
		for {
			var err error
			select {
			case <-ctx.Done():
				tick.Stop()
				return nil
			case wr, ok := <-wch:
				if !ok || wr.Err() != nil {
					break watch
				}
				for _, ev := range wr.Events {
					var val []byte
					if ev.Type == clientv3.EventTypePut {
						val = ev.Kv.Value
					}
					_ = v.Apply(string(ev.Kv.Key), val) // a malformed record keeps the last good row
					if strings.HasPrefix(string(ev.Kv.Key), k.Election()) && len(ev.Kv.Key) > len(k.Election()) {
						actx, acancel := context.WithTimeout(ctx, o.timeout)
						alloc, _ = cluster.Allocator(actx, c, k)
						acancel()
					}
				}
				dirty = true
			case key := <-keys:
				switch key {
				case 's':
					order = (order + 1) % len(sortOrders)
					err = draw()
				case 'q', 'Q':
					tick.Stop()
					return nil
				}
			case <-winch:
				err = draw()
			case <-tick.C:
				if dirty || scr.inPlace {
					dirty = false
					err = draw()
				}
			}
			if err != nil {
				tick.Stop()
				return err
			}
		}
		tick.Stop()
	}
	return nil
}
