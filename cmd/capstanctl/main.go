// Command capstanctl is the SRE's command line for Capstan's cluster power budgets: set and read
// a group's budget, see every node's demand, grant and applied power, release a dead node's
// reservation, and watch the group live.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/user"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/capstan-power/capstan/capping/cluster"
	"github.com/capstan-power/capstan/internal/cli"
	"github.com/capstan-power/capstan/internal/version"
)

func main() {
	if err := newRoot(os.Stdout, os.Stderr).Execute(); err != nil {
		os.Exit(1)
	}
}

// globals are the etcd flags, the same as the agent's --etcd.* flags.
type globals struct {
	endpoints, prefix      string
	ca, cert, key          string
	username, passwordFile string
	timeout                time.Duration
	// probed is what dialling the endpoints found, kept to explain a request nobody answered.
	probed []probeResult
}

func (g *globals) endpointList() []string { return cluster.SplitEndpoints(g.endpoints) }

// dial builds the client, then dials the endpoints itself: when every one refuses or does not
// exist, waiting out the request's deadline would tell the user nothing more, so it says so now.
func (g *globals) dial() (*clientv3.Client, error) {
	c, err := cluster.Dial(cluster.Conn{Endpoints: g.endpointList(), CAFile: g.ca, CertFile: g.cert,
		KeyFile: g.key, Username: g.username, PasswordFile: g.passwordFile, DialTimeout: g.timeout})
	if err != nil {
		return nil, err
	}
	if err := g.reachable(); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

func (g *globals) keys(group string) (cluster.Keys, error) {
	if err := cluster.ValidName(group); err != nil {
		return cluster.Keys{}, fmt.Errorf("group: %w", err)
	}
	return cluster.Keys{Prefix: g.prefix, Group: group}, nil
}

// connect checks the group's name and dials etcd; the caller closes the client.
func (g *globals) connect(group string) (*clientv3.Client, cluster.Keys, error) {
	k, err := g.keys(group)
	if err != nil {
		return nil, k, err
	}
	c, err := g.dial()
	return c, k, err
}

// with runs f with a client and a deadline.
func (g *globals) with(group string, f func(ctx context.Context, c *clientv3.Client, k cluster.Keys) error) error {
	c, k, err := g.connect(group)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), g.timeout)
	defer cancel()
	return g.explain(f(ctx, c, k), g.timeout)
}

func newRoot(out, errOut io.Writer) *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "capstanctl",
		Short:         "Set and watch Capstan's cluster power budgets in etcd",
		SilenceUsage:  true,
		SilenceErrors: false,
	}
	root.SetOut(out)
	root.SetErr(errOut)
	root.SetFlagErrorFunc(cli.FlagError)
	root.Version = version.Of("capstanctl")
	root.SetVersionTemplate("{{.Version}}\n")
	pf := root.PersistentFlags()
	pf.StringVar(&g.endpoints, "etcd.endpoints", endpointsDefault(), "comma-separated etcd client URLs; $"+endpointsEnv+" sets the default")
	pf.StringVar(&g.prefix, "etcd.prefix", "/capstan/v1", "etcd key prefix of Capstan's records")
	pf.StringVar(&g.ca, "etcd.tls.ca-file", "", "PEM CA bundle that verifies the etcd servers")
	pf.StringVar(&g.cert, "etcd.tls.cert-file", "", "PEM client certificate; needs --etcd.tls.key-file")
	pf.StringVar(&g.key, "etcd.tls.key-file", "", "PEM private key of --etcd.tls.cert-file")
	pf.StringVar(&g.username, "etcd.username", "", "etcd user; needs --etcd.password-file")
	pf.StringVar(&g.passwordFile, "etcd.password-file", "", "file holding the etcd user's password")
	pf.DurationVar(&g.timeout, "timeout", 10*time.Second, "deadline of each etcd request")
	root.AddCommand(budgetCmd(g, out), statusCmd(g, out), drainCmd(g, out), topCmd(g, out), domainCmd(g, out))
	return root
}

// parseWatts reads a WATTS argument: a positive finite number of at least cluster.MinBudgetW;
// what names the quantity in the error (a group budget, a domain limit).
func parseWatts(arg, what string) (float64, error) {
	w, err := strconv.ParseFloat(arg, 64)
	if err != nil || math.IsNaN(w) || math.IsInf(w, 0) || w <= 0 {
		return 0, fmt.Errorf("WATTS %q: not a positive finite number of watts", arg)
	}
	if w < cluster.MinBudgetW {
		return 0, fmt.Errorf("WATTS %q: below %d W; a %s is a number of watts (1e3, not 1e-3)", arg, cluster.MinBudgetW, what)
	}
	return w, nil
}

func budgetCmd(g *globals, out io.Writer) *cobra.Command {
	b := &cobra.Command{Use: "budget", Short: "Set, read and list a group's power budget"}
	var floor float64
	var reason string
	set := &cobra.Command{
		Use:   "set GROUP WATTS",
		Short: "Set a group's budget (refused below what its nodes need at least)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			w, err := parseWatts(args[1], "group budget")
			if err != nil {
				return err
			}
			return g.with(args[0], func(ctx context.Context, c *clientv3.Client, k cluster.Keys) error {
				rec := cluster.BudgetRecord{Watts: w, FloorPerNodeW: floor, SetBy: who(g), SetAt: time.Now().UTC(), Reason: reason}
				need, err := cluster.SetBudgetNeed(ctx, c, k, rec)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "group %s: budget %.0f W (floor per node %.0f W), set by %s\n", k.Group, w, floor, rec.SetBy)
				// Set all the same: an SRE cutting a row's power in an emergency must not be
				// stopped, only told what the group gives up.
				if msg := need.JoinerShortfall(k.Group, w); msg != "" {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s\n", msg)
				}
				return nil
			})
		},
	}
	set.Flags().Float64Var(&floor, "floor-per-node", 0, "least watts every node is granted, and what a node cut off from etcd drops to")
	set.Flags().StringVar(&reason, "reason", "", "why the budget changes; recorded in the history")
	get := &cobra.Command{
		Use:   "get GROUP",
		Short: "Print a group's budget",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return g.with(args[0], func(ctx context.Context, c *clientv3.Client, k cluster.Keys) error {
				r, err := cluster.GetBudget(ctx, c, k)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "group %s: %.0f W, floor per node %.0f W, set by %s at %s: %s\n",
					k.Group, r.Watts, r.FloorPerNodeW, r.SetBy, r.SetAt.Format(time.RFC3339), reasonText(r.Reason))
				return nil
			})
		},
	}
	history := &cobra.Command{
		Use:   "history GROUP",
		Short: "List a group's budget changes, oldest first",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return g.with(args[0], func(ctx context.Context, c *clientv3.Client, k cluster.Keys) error {
				recs, bad, err := cluster.History(ctx, c, k)
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "SET AT\tWATTS\tFLOOR/NODE\tSET BY\tREASON")
				for _, r := range recs {
					fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%s\t%s\n", r.SetAt.Format(time.RFC3339), r.Watts, r.FloorPerNodeW, r.SetBy, reasonText(r.Reason))
				}
				if err := tw.Flush(); err != nil {
					return err
				}
				for _, e := range bad {
					fmt.Fprintf(out, "skipped malformed entry: %v\n", e)
				}
				return nil
			})
		},
	}
	b.AddCommand(set, get, history)
	return b
}

func reasonText(r string) string {
	if r == "" {
		return "(no reason given)"
	}
	return r
}

// who names the person behind a change: the etcd user if any, and the local user and host.
func who(g *globals) string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	if h, err := os.Hostname(); err == nil {
		name += "@" + h
	}
	if g.username != "" {
		name = g.username + " (" + name + ")"
	}
	return name
}

func statusCmd(g *globals, out io.Writer) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "status GROUP",
		Short: "One row per node: demand, grant, applied, limits, priority, last seen, allocator",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return g.with(args[0], func(ctx context.Context, c *clientv3.Client, k cluster.Keys) error {
				s, bad, err := loadStatus(ctx, c, k)
				if err != nil {
					return err
				}
				if asJSON {
					enc := json.NewEncoder(out)
					enc.SetIndent("", "  ")
					return enc.Encode(s)
				}
				if err := printStatus(out, s, time.Now()); err != nil {
					return err
				}
				for _, e := range bad {
					fmt.Fprintf(out, "skipped malformed record: %v\n", e)
				}
				return nil
			})
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, `print {"group","budget_w","generation","nodes":[...]} for scripts`)
	return c
}

func loadStatus(ctx context.Context, c *clientv3.Client, k cluster.Keys) (cluster.Status, []error, error) {
	v := cluster.NewView(k)
	bad, err := v.Load(ctx, c)
	if err != nil {
		return cluster.Status{}, nil, err
	}
	alloc, err := cluster.Allocator(ctx, c, k)
	if err != nil {
		return cluster.Status{}, nil, err
	}
	return cluster.StatusOf(v, alloc), bad, nil
}

func printStatus(out io.Writer, s cluster.Status, now time.Time) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "NODE\tDEMAND W\tGRANT W\tAPPLIED W\tMIN W\tMAX W\tPRIORITY\tLAST SEEN\tALLOCATOR\t")
	var demand, grant, applied float64
	for _, n := range s.Nodes {
		alloc := ""
		if n.Allocator {
			alloc = "*"
		}
		seen := "gone"
		if n.MaxW > 0 {
			seen = now.Sub(n.LastSeen).Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%s\t%s\t\n", n.Node, n.DemandW, n.GrantW, n.AppliedW, n.MinW, n.MaxW, n.Priority, seen, alloc)
		demand += n.DemandW
		grant += n.GrantW
		applied += n.AppliedW
	}
	fmt.Fprintf(tw, "TOTAL\t%.0f\t%.0f\t%.0f\t\t\t\t\t\t\n", demand, grant, applied)
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(out, "group %s: budget %.0f W, granted %.0f W (%.0f W free), applied %.0f W, generation %d\n",
		s.Group, s.BudgetW, grant, s.BudgetW-grant, applied, s.Generation)
	return err
}

func drainCmd(g *globals, out io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "drain GROUP NODE",
		Short: "Release the reservation of a node that is gone",
		Args:  cobra.ExactArgs(2),
		RunE: func(_ *cobra.Command, args []string) error {
			return g.with(args[0], func(ctx context.Context, c *clientv3.Client, k cluster.Keys) error {
				if err := cluster.Drain(ctx, c, k, args[1]); err != nil {
					return err
				}
				fmt.Fprintf(out, "group %s: released the reservation of node %s\n", k.Group, args[1])
				return nil
			})
		},
	}
}
