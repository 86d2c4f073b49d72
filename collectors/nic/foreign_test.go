package nic

import (
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/testkit"
)

// TestForeignMessagesOnTheLinkGroup: another process subscribing to link changes with the
// netlink package (ListExisting) sends its RTM_GETLINK request to its socket's own address,
// which names the RTNLGRP_LINK group, so every other listener receives it from that socket's
// port id. Such messages, and a forged link notification from user space, are normal events:
// the subscription skips them, stays live, counts the next flap exactly, and logs the kind once.
func TestForeignMessagesOnTheLinkGroup(t *testing.T) {
	requireRoot(t)
	ns, h := newNetns(t)
	a, _ := veth(t, h, "fgn0", "fgn1", netns.None(), nil)
	log, logs := testkit.NewLogger()
	c, err := New(Options{Sysfs: mountSysfs(t, ns), Netns: ns, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	index := int32(a.Attrs().Index)
	testkit.WaitFor(t, "the subscription to know fgn0", func() bool {
		_, ok := c.watcher.transitions(index)
		return ok
	})
	before := value(t, collect(t, c), metrics.NetworkCarrierTransitions, "fgn0", "")

	// Three subscribers of other processes, each with its own port id.
	for range 3 {
		ch := make(chan netlink.LinkUpdate, 1024)
		done := make(chan struct{})
		if err := netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{
			Namespace: &ns, ListExisting: true,
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { close(done) })
	}
	// A forged notification from user space, multicast to the group: fgn0 without carrier.
	// Without NLM_F_REQUEST the kernel does not act on it.
	forger, err := nl.SubscribeAt(ns, netns.None(), unix.NETLINK_ROUTE, unix.RTNLGRP_LINK)
	if err != nil {
		t.Fatal(err)
	}
	defer forger.Close()
	forged := nl.NewNetlinkRequest(unix.RTM_NEWLINK, 0)
	forged.Flags = 0
	info := nl.NewIfInfomsg(unix.AF_UNSPEC)
	info.Index = index
	forged.AddData(info)
	if err := forger.Send(forged); err != nil {
		t.Fatalf("multicasting a forged link notification: %v", err)
	}
	// A datagram shorter than a netlink header, and one whose header claims more than it holds.
	group := &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1 << (unix.RTNLGRP_LINK - 1)}
	for _, junk := range [][]byte{{1, 2, 3, 4}, {0xff, 0xff, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}} {
		if err := unix.Sendto(forger.GetFd(), junk, 0, group); err != nil {
			t.Fatalf("multicasting %d bytes of junk: %v", len(junk), err)
		}
	}

	if err := h.LinkSetDown(a); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(a); err != nil {
		t.Fatal(err)
	}
	var after float64
	testkit.WaitFor(t, "the flap of fgn0 to be counted", func() bool {
		after = value(t, collect(t, c), metrics.NetworkCarrierTransitions, "fgn0", "")
		return after >= before+2
	})
	if after != before+2 {
		t.Errorf("fgn0 counted %v transitions across one flap and a forged notification, want 2", after-before)
	}
	if !c.watcher.isLive() {
		t.Error("the subscription ended")
	}
	if n := c.watcher.foreignMessages(); n < 6 {
		t.Errorf("%d foreign messages counted, want at least 6 (3 requests, 1 forgery, 2 junk)", n)
	}
	out := logs.String()
	foreign := 0
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "Wrong sender portid") || strings.Contains(line, "not sent by the kernel") {
			foreign++
		}
	}
	if foreign > 1 {
		t.Errorf("%d log lines for messages from other senders, want at most 1:\n%s", foreign, out)
	}
	if strings.Contains(out, "level=WARN") || strings.Contains(out, "level=ERROR") {
		t.Errorf("messages from other senders are not worth a warning:\n%s", out)
	}
}
