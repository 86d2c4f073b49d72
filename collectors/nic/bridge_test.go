package nic

import (
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/testkit"
)

// TestBridgePortKeepsItsTransitions: a link leaving a bridge is notified as an RTM_DELLINK of
// family AF_BRIDGE on the link group; the link is not gone, and its transitions must not restart
// from zero.
func TestBridgePortKeepsItsTransitions(t *testing.T) {
	requireRoot(t)
	ns, h := newNetns(t)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := h.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	a, _ := veth(t, h, "port0", "port1", netns.None(), nil)
	marker, _ := veth(t, h, "mark0", "mark1", netns.None(), nil)
	if err := h.LinkSetMaster(a, br); err != nil {
		t.Fatal(err)
	}
	log, _ := testkit.NewLogger()
	c, err := New(Options{Sysfs: mountSysfs(t, ns), Netns: ns, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	testkit.WaitFor(t, "the subscription to know port0 and mark0", func() bool {
		_, ok := c.watcher.transitions(int32(a.Attrs().Index))
		_, ok2 := c.watcher.transitions(int32(marker.Attrs().Index))
		return ok && ok2
	})
	if err := h.LinkSetDown(a); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(a); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "the flap of port0 to be counted", func() bool {
		return value(t, collect(t, c), metrics.NetworkCarrierTransitions, "port0", "") >= 2
	})
	if err := h.LinkSetNoMaster(a); err != nil {
		t.Fatal(err)
	}
	// A flap of another link, notified after the port's removal on the same socket: once it is
	// counted, the removal has been read.
	if err := h.LinkSetDown(marker); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(marker); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "the flap of the marker link to be counted", func() bool {
		n, _ := c.watcher.transitions(int32(marker.Attrs().Index))
		return n >= 2
	})
	if v := value(t, collect(t, c), metrics.NetworkCarrierTransitions, "port0", ""); v != 2 {
		t.Errorf("port0 has %v carrier transitions after leaving the bridge, want 2", v)
	}
}
