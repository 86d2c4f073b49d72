package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/capstan-power/capstan/capping/cluster"
)

// withPath checks a domain path, then runs f with a client, a deadline and the keys of the
// path's group; rel is the path below the group.
func (g *globals) withPath(path string, f func(ctx context.Context, c *clientv3.Client, k cluster.Keys, rel string) error) error {
	group, rel, err := cluster.SplitPath(path)
	if err != nil {
		return fmt.Errorf("PATH: %w", err)
	}
	return g.with(group, func(ctx context.Context, c *clientv3.Client, k cluster.Keys) error {
		return f(ctx, c, k, rel)
	})
}

func domainCmd(g *globals, out io.Writer) *cobra.Command {
	d := &cobra.Command{
		Use:   "domain",
		Short: "Set, read, remove and list power domains: the electrical tree under a group",
		Long: `A power domain is a level of the electrical tree (site, hall, row, rack/PDU) with a limit in
watts. Its PATH starts with its group, the root of the tree, whose limit is the group budget:
site, site/row3, site/row3/rack12. A parent is set before its children. Nodes attach to a
domain with --etcd.domain=PATH; grants under every domain stay within its limit.`,
	}
	var guard, prio float64
	var reason string
	set := &cobra.Command{
		Use:   "set PATH WATTS",
		Short: "Set a domain's limit (its parent must exist; refused below what its nodes need at least)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			w, err := parseWatts(args[1], "domain limit")
			if err != nil {
				return err
			}
			return g.withPath(args[0], func(ctx context.Context, c *clientv3.Client, k cluster.Keys, rel string) error {
				rec := cluster.DomainRecord{LimitW: w, GuardBand: guard, Priority: prio, SetBy: who(g), SetAt: time.Now().UTC(), Reason: reason}
				need, err := cluster.SetDomain(ctx, c, k.Prefix, args[0], rec)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "domain %s: limit %.0f W", args[0], w)
				if guard > 0 {
					fmt.Fprintf(out, " (guard band %g: grants within %.0f W)", guard, w*(1-guard))
				}
				fmt.Fprintf(out, ", set by %s\n", rec.SetBy)
				if msg := need.JoinerShortfall(args[0], w*(1-guard)); msg != "" && rel != "" {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s\n", strings.Replace(msg, "group ", "domain ", 1))
				}
				return nil
			})
		},
	}
	set.Flags().Float64Var(&guard, "guard-band", 0, "share of the limit kept free, 0 to 0.5: grants stay within limit × (1 − guard band)")
	set.Flags().Float64Var(&prio, "priority", 0, "the domain's weight against its sibling domains, 1 to 1000 (default 1)")
	set.Flags().StringVar(&reason, "reason", "", "why the limit changes")
	var getJSON bool
	get := &cobra.Command{
		Use:   "get PATH",
		Short: "Print a domain's limit",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return g.withPath(args[0], func(ctx context.Context, c *clientv3.Client, k cluster.Keys, _ string) error {
				r, err := cluster.GetDomain(ctx, c, k.Prefix, args[0])
				if err != nil {
					return err
				}
				if getJSON {
					enc := json.NewEncoder(out)
					enc.SetIndent("", "  ")
					return enc.Encode(struct {
						Path string `json:"path"`
						cluster.DomainRecord
					}{args[0], r})
				}
				fmt.Fprintf(out, "domain %s: %.0f W, guard band %g, priority %g, set by %s at %s: %s\n",
					args[0], r.LimitW, r.GuardBand, max(r.Priority, 1), r.SetBy, r.SetAt.Format(time.RFC3339), reasonText(r.Reason))
				return nil
			})
		},
	}
	get.Flags().BoolVar(&getJSON, "json", false, `print {"path","limit_w","guard_band","priority","set_by","set_at","reason"} for scripts`)
	rm := &cobra.Command{
		Use:   "rm PATH",
		Short: "Remove a domain with no domains below it; its nodes then count in its parent",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return g.withPath(args[0], func(ctx context.Context, c *clientv3.Client, k cluster.Keys, _ string) error {
				if err := cluster.RemoveDomain(ctx, c, k.Prefix, args[0]); err != nil {
					return err
				}
				fmt.Fprintf(out, "domain %s removed; its nodes count in its parent\n", args[0])
				return nil
			})
		},
	}
	var asJSON bool
	tree := &cobra.Command{
		Use:   "tree [PATH]",
		Short: "List the domains under PATH (every group's without it): limit, Σ grants, Σ applied, Σ draw, headroom",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			var doms []cluster.DomainStatus
			var bad []error
			load := func(ctx context.Context, c *clientv3.Client, k cluster.Keys, rel string) error {
				v := cluster.NewView(k)
				b, err := v.Load(ctx, c)
				if err != nil {
					return err
				}
				if !v.HasBudget && len(v.Domains) == 0 {
					return fmt.Errorf("%w: group %s has no budget (capstanctl domain set %s WATTS)", cluster.ErrRefused, k.Group, k.Group)
				}
				if _, ok := v.Domains[rel]; rel != "" && !ok {
					return fmt.Errorf("%w: no domain %s", cluster.ErrRefused, args[0])
				}
				doms = append(doms, cluster.DomainsOf(v, rel)...)
				bad = append(bad, b...)
				return nil
			}
			var err error
			if len(args) == 1 {
				err = g.withPath(args[0], load)
			} else {
				err = g.withAllGroups(load)
			}
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(cluster.DomainTree{Domains: doms})
			}
			if _, err := io.WriteString(out, strings.Join(domainTable(doms), "\n")+"\n"); err != nil {
				return err
			}
			for _, e := range bad {
				fmt.Fprintf(out, "skipped malformed record: %v\n", e)
			}
			return nil
		},
	}
	tree.Flags().BoolVar(&asJSON, "json", false, `print {"domains": [{"path","limit_w","granted_w","applied_w","draw_w",...}]} for scripts`)
	d.AddCommand(set, get, rm, tree)
	return d
}

// withAllGroups runs f on every group that has a budget under the prefix.
func (g *globals) withAllGroups(f func(ctx context.Context, c *clientv3.Client, k cluster.Keys, rel string) error) error {
	c, err := g.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), g.timeout)
	defer cancel()
	groups := strings.TrimSuffix(g.prefix, "/") + "/groups/"
	resp, err := c.Get(ctx, groups, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return g.explain(fmt.Errorf("listing groups: %w", err), g.timeout)
	}
	var names []string
	for _, kv := range resp.Kvs {
		if name, ok := strings.CutSuffix(strings.TrimPrefix(string(kv.Key), groups), "/budget"); ok && !strings.Contains(name, "/") {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	if len(names) == 0 {
		return fmt.Errorf("%w: no group has a budget under %s (capstanctl domain set GROUP WATTS)", cluster.ErrRefused, g.prefix)
	}
	for _, name := range names {
		if err := f(ctx, c, cluster.Keys{Prefix: g.prefix, Group: name}, ""); err != nil {
			return g.explain(err, g.timeout)
		}
	}
	return nil
}

// domainTable lays out domains as a tree: each indented under its parent by its depth.
func domainTable(doms []cluster.DomainStatus) []string {
	var tb bytes.Buffer
	tw := tabwriter.NewWriter(&tb, 0, 4, 2, ' ', tabwriter.AlignRight)
	nameW := len("DOMAIN")
	names := make([]string, len(doms))
	for i, d := range doms {
		depth := strings.Count(d.Path, "/")
		name := d.Path
		if depth > 0 {
			name = strings.Repeat("  ", depth) + d.Path[strings.LastIndexByte(d.Path, '/')+1:]
		}
		names[i] = name
		nameW = max(nameW, len(name))
	}
	fmt.Fprintf(tw, "%-*s\tLIMIT W\tGRANTED W\tAPPLIED W\tDRAW W\tHEADROOM W\tFLOORS W\tNODES\tSTATE\t\n", nameW, "DOMAIN")
	for i, d := range doms {
		limit, head := fmt.Sprintf("%.0f", d.LimitW), fmt.Sprintf("%.0f", d.HeadroomW)
		if d.Implicit {
			limit, head = "-", "-"
		}
		nodes := strconv.Itoa(d.Nodes)
		if d.Gone > 0 {
			nodes += fmt.Sprintf("+%d gone", d.Gone)
		}
		fmt.Fprintf(tw, "%-*s\t%s\t%.0f\t%.0f\t%.0f\t%s\t%.0f\t%s\t%s\t\n", nameW, names[i], limit, d.GrantedW, d.AppliedW, d.DrawW, head, d.FloorsW, nodes, domainState(d))
	}
	_ = tw.Flush() // a bytes.Buffer does not fail
	return strings.Split(strings.TrimSuffix(tb.String(), "\n"), "\n")
}

// domainState says in a word how a domain stands.
func domainState(d cluster.DomainStatus) string {
	switch {
	case d.Malformed:
		return "MALFORMED"
	case d.Implicit:
		return "no record"
	case d.Oversubscribed:
		return "OVERSUBSCRIBED"
	case d.HeadroomW < 0:
		return "over"
	}
	return "ok"
}

// treeFrame lays out top --tree: the group's line, then one row per domain under under (a path
// below the group), each indented under its parent. Oversubscribed or malformed domains are red,
// those with under 5 % of their limit as headroom yellow, levels without a record dim.
func treeFrame(v *cluster.View, alloc string, now time.Time, under string, interactive bool) []line {
	doms := cluster.DomainsOf(v, under)
	if alloc == "" {
		alloc = "none"
	}
	path := cluster.FullPath(v.Keys.Group, under)
	lines := []line{{fmt.Sprintf("capstanctl top --tree %s   %d domains   generation %d   allocator %s   %s",
		path, len(doms), v.Generation(), alloc, now.Format("15:04:05")), bold}}
	over := 0
	for _, d := range doms {
		if d.Oversubscribed {
			over++
		}
	}
	st := plain
	if over > 0 {
		st = bad
	}
	lines = append(lines, line{fmt.Sprintf("%d oversubscribed (floors above the limit: nodes held at their floors)", over), st})
	help := "headroom = limit × (1 − guard band) − Σ draw; grants, applied, draw summed over each subtree"
	if interactive {
		help += "   [q] quit"
	}
	lines = append(lines, line{help, dim}, line{})
	table := domainTable(doms)
	lines = append(lines, line{table[0], bold})
	for i, d := range doms {
		st := plain
		switch {
		case d.Malformed || d.Oversubscribed || !d.Implicit && d.HeadroomW < 0:
			st = bad
		case d.Implicit:
			st = dim
		case d.HeadroomW < 0.05*d.LimitW:
			st = warn
		}
		lines = append(lines, line{table[i+1], st})
	}
	return lines
}
