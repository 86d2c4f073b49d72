package nic

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
	"github.com/capstan-power/capstan/internal/testkit"
)

// deadlineConn ends the collection's context after the first part of a dump has been read, as a
// collection deadline passing in the middle of a large dump does.
type deadlineConn struct {
	conn
	cancel func()
}

func (d *deadlineConn) Receive() ([]syscall.NetlinkMessage, *unix.SockaddrNetlink, error) {
	msgs, from, err := d.conn.Receive()
	if d.cancel != nil {
		d.cancel()
		d.cancel = nil
	}
	return msgs, from, err
}

// TestAbandonedDumpDoesNotFailTheNext: a dump abandoned at its deadline leaves the rest of it on
// the socket, where the kernel refuses every new dump (EBUSY) until it is read to its end.
func TestAbandonedDumpDoesNotFailTheNext(t *testing.T) {
	requireRoot(t)
	ns := manyLinks(t, 400) // many chunks: the first read leaves most of the dump queued
	c := newNetnsCollector(t, ns, &bytes.Buffer{})
	ctx, cancel := context.WithCancel(context.Background())
	c.conn = &deadlineConn{conn: c.conn, cancel: cancel}
	if err := c.Collect(ctx, &sample.Batch{}); err == nil {
		t.Fatal("a collection whose context ended in the middle of the dump succeeded")
	}
	for i := range 3 {
		b := collect(t, c) // fails the test on any error
		links := 0
		for _, p := range b.Points {
			if p.Series.Def == metrics.NetworkInfo {
				links++
			}
		}
		if links != 401 {
			t.Errorf("collection %d after the abandoned one reported %d links, want 401", i+1, links)
		}
	}
}

// TestWatcherForgetsLinksDeletedWhileResubscribing: links deleted while the subscription is
// down (after ENOBUFS) are never notified; the renewed subscription must not keep them.
func TestWatcherForgetsLinksDeletedWhileResubscribing(t *testing.T) {
	requireRoot(t)
	ns, h := newNetns(t)
	c := newNetnsCollector(t, ns, &bytes.Buffer{})
	w := c.watcher
	entries := func() int { w.mu.Lock(); defer w.mu.Unlock(); return len(w.links) }
	for round := range 3 {
		var gone []netlink.Link
		for i := range 5 {
			a, _ := veth(t, h, fmt.Sprintf("r%dp%da", round, i), fmt.Sprintf("r%dp%db", round, i), netns.None(), nil)
			gone = append(gone, a)
		}
		testkit.WaitFor(t, "the subscription to list the new links", func() bool { return entries() >= 11 })
		// The subscription ends as on a receive error; its reader closes the update channel.
		w.mu.Lock()
		done := w.done
		w.done = make(chan struct{})
		w.mu.Unlock()
		close(done)
		testkit.WaitFor(t, "the subscription to end", func() bool { return !w.isLive() })
		for _, l := range gone { // deleting one end of a veth deletes both
			if err := h.LinkDel(l); err != nil {
				t.Fatal(err)
			}
		}
		collect(t, c) // subscribes again
		testkit.WaitFor(t, "the subscription to be live", w.isLive)
	}
	collect(t, c)
	if n := entries(); n != 1 { // lo
		t.Errorf("the watcher keeps %d links for the 1 link of the namespace", n)
	}
}

// TestRecreatedLinkStaysMonotonic: a link deleted and created again under the same name (a
// pod's veth) gets a new ifindex and counters from zero; its series must not go backwards.
func TestRecreatedLinkStaysMonotonic(t *testing.T) {
	requireRoot(t)
	ns, h := newNetns(t)
	c := newNetnsCollector(t, ns, &bytes.Buffer{})
	known := func(l netlink.Link) func() bool {
		return func() bool { _, ok := c.watcher.transitions(int32(l.Attrs().Index)); return ok }
	}
	flap := func(l netlink.Link) {
		for range 2 {
			if err := h.LinkSetDown(l); err != nil {
				t.Fatal(err)
			}
			if err := h.LinkSetUp(l); err != nil {
				t.Fatal(err)
			}
		}
	}
	cumulative := []struct {
		def *metrics.Def
		dir string
	}{{metrics.NetworkCarrierTransitions, ""}, {metrics.NetworkCarrierChanges, ""},
		{metrics.NetworkIO, "transmit"}, {metrics.NetworkPackets, "transmit"}}
	values := func(b *sample.Batch) []float64 {
		var v []float64
		for _, x := range cumulative {
			v = append(v, value(t, b, x.def, "pod0", x.dir))
		}
		return v
	}

	a, _ := veth(t, h, "pod0", "pod0p", netns.None(), nil)
	testkit.WaitFor(t, "pod0 to be listed", known(a))
	flap(a)
	var before []float64
	testkit.WaitFor(t, "pod0's transitions", func() bool {
		before = values(collect(t, c))
		return before[0] >= 2
	})

	// Deleted and created again between two collections, then once more with a collection between.
	if err := h.LinkDel(a); err != nil {
		t.Fatal(err)
	}
	a, _ = veth(t, h, "pod0", "pod0p", netns.None(), nil)
	testkit.WaitFor(t, "the new pod0 to be listed", known(a))
	after := values(collect(t, c))
	for i, x := range cumulative {
		if after[i] < before[i] {
			t.Errorf("%s %s of pod0 went from %v to %v when pod0 was created again", x.def.Name, x.dir, before[i], after[i])
		}
	}
	if err := h.LinkDel(a); err != nil {
		t.Fatal(err)
	}
	collect(t, c)
	a, _ = veth(t, h, "pod0", "pod0p", netns.None(), nil)
	testkit.WaitFor(t, "the third pod0 to be listed", known(a))
	flap(a)
	testkit.WaitFor(t, "the third pod0's transitions", func() bool {
		return values(collect(t, c))[0] >= after[0]+2
	})
	final := values(collect(t, c))
	for i, x := range cumulative {
		if final[i] < after[i] {
			t.Errorf("%s %s of pod0 went from %v to %v across a collection without it", x.def.Name, x.dir, after[i], final[i])
		}
	}
}

// TestSpeedReadAgainAfterTransientFailure: a failed read of sysfs speed (EIO or EBUSY while a
// driver resets; a directory here) or a speed not negotiated yet is read again at the next
// collection, not only after the next carrier change.
func TestSpeedReadAgainAfterTransientFailure(t *testing.T) {
	var logs bytes.Buffer
	c := &Collector{log: testLogger(&logs)}
	p := filepath.Join(t.TempDir(), "speed")
	if err := os.Mkdir(p, 0o755); err != nil { // read(2) of a directory fails with EISDIR
		t.Fatal(err)
	}
	l := &link{name: "eth0", speedPath: p}
	c.updateSpeed(l, 3)
	if l.speedBps != 0 || !l.speedFails {
		t.Fatalf("failed read: speed %v, speedFails %v", l.speedBps, l.speedFails)
	}
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("-1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.updateSpeed(l, 3) // carrier unchanged
	if l.speedBps != 0 || l.speedFails {
		t.Fatalf("unknown speed: speed %v, speedFails %v", l.speedBps, l.speedFails)
	}
	if err := os.WriteFile(p, []byte("25000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.updateSpeed(l, 3)
	if l.speedBps != 25000e6/8 {
		t.Errorf("speed after the driver answered: %v bytes/s, want %v", l.speedBps, 25000e6/8)
	}
	// Read; carrier unchanged: not read again.
	if err := os.WriteFile(p, []byte("100000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.updateSpeed(l, 3)
	if l.speedBps != 25000e6/8 {
		t.Errorf("speed read again without a carrier change: %v", l.speedBps)
	}
	// A link without speed (EINVAL, ENOENT) is settled until its carrier changes.
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	c.updateSpeed(l, 4)
	if err := os.WriteFile(p, []byte("100000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.updateSpeed(l, 4)
	if l.speedBps != 0 {
		t.Errorf("a missing speed was read again without a carrier change: %v", l.speedBps)
	}
}
