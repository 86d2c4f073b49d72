package nic

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"go.opentelemetry.io/otel/attribute"
	"golang.org/x/sys/unix"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
	"github.com/capstan-power/capstan/internal/testkit"
)

func requireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root to create network namespaces and veth links (CAP_SYS_ADMIN, CAP_NET_ADMIN); CI runs as root")
	}
}

// inNetns runs fn on a thread moved into ns; sockets and sysfs mounts made there belong to ns.
func inNetns(tb testing.TB, ns netns.NsHandle, fn func() error) {
	tb.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		tb.Fatal(err)
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		tb.Fatal(err)
	}
	fnErr := fn()
	if err := netns.Set(orig); err != nil {
		// The thread stays locked, so the runtime retires it rather than reuse it in ns.
		panic(fmt.Sprintf("returning to the original network namespace: %v", err))
	}
	runtime.UnlockOSThread()
	if fnErr != nil {
		tb.Fatal(fnErr)
	}
}

// newNetns creates an unnamed network namespace with IPv6 off (no DAD, router solicitations or
// MLD reports on its links, so their counters move only with the test's traffic). The kernel
// frees it when the test closes its handle at cleanup.
func newNetns(tb testing.TB) (netns.NsHandle, *netlink.Handle) {
	tb.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		tb.Fatal(err)
	}
	ns, err := netns.New() // also moves this thread into it
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		tb.Fatalf("creating a network namespace: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		panic(fmt.Sprintf("returning to the original network namespace: %v", err))
	}
	orig.Close()
	runtime.UnlockOSThread()
	tb.Cleanup(func() { ns.Close() })
	inNetns(tb, ns, func() error {
		for _, f := range []string{"all", "default"} {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+f+"/disable_ipv6", []byte("1"), 0o644); err != nil {
				return fmt.Errorf("turning IPv6 off: %w", err)
			}
		}
		return nil
	})
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(h.Close)
	return ns, h
}

// newNetnsCollector is the collector of namespace ns, reading the namespace's own sysfs and
// logging to logs; it is closed when the test ends.
func newNetnsCollector(tb testing.TB, ns netns.NsHandle, logs *bytes.Buffer) *Collector {
	tb.Helper()
	c, err := New(Options{Sysfs: mountSysfs(tb, ns), Netns: ns, Logger: testLogger(logs)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// mountSysfs mounts a sysfs that shows ns's links (sysfs takes the network namespace of the
// thread that mounts it), as the agent's container sees its host's.
func mountSysfs(tb testing.TB, ns netns.NsHandle) string {
	tb.Helper()
	dir := tb.TempDir()
	inNetns(tb, ns, func() error {
		if err := unix.Mount("sysfs", dir, "sysfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("mounting sysfs in the test namespace: %w", err)
		}
		return nil
	})
	tb.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// veth creates a veth pair from h's namespace to peerNS (nil: the same), both ends up.
func veth(tb testing.TB, h *netlink.Handle, name, peer string, peerNS netns.NsHandle, peerH *netlink.Handle) (netlink.Link, netlink.Link) {
	tb.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer}
	if peerH != nil {
		v.PeerNamespace = netlink.NsFd(int(peerNS))
	} else {
		peerH = h
	}
	if err := h.LinkAdd(v); err != nil {
		tb.Fatalf("creating veth %s: %v", name, err)
	}
	a, err := h.LinkByName(name)
	if err != nil {
		tb.Fatal(err)
	}
	b, err := peerH.LinkByName(peer)
	if err != nil {
		tb.Fatal(err)
	}
	if err := h.LinkSetUp(a); err != nil {
		tb.Fatal(err)
	}
	if err := peerH.LinkSetUp(b); err != nil {
		tb.Fatal(err)
	}
	return a, b
}

func collect(tb testing.TB, c *Collector) *sample.Batch {
	tb.Helper()
	b := &sample.Batch{}
	if err := c.Collect(context.Background(), b); err != nil {
		tb.Fatal(err)
	}
	return b
}

func value(tb testing.TB, b *sample.Batch, def *metrics.Def, name, dir string) float64 {
	tb.Helper()
	var v float64
	var ok bool
	if dir == "" {
		v, ok = b.Find(def, ifname(name))
	} else {
		v, ok = b.Find(def, ifname(name), direction(dir))
	}
	if !ok {
		tb.Fatalf("no %s for %s %s", def.Name, name, dir)
	}
	return v
}

// TestCountersOverVeth sends a known number of UDP datagrams across a veth pair between two
// namespaces and checks the counters moved by exactly that; then flaps the link between two
// collections and checks the flap was counted by the kernel and by the subscription.
func TestCountersOverVeth(t *testing.T) {
	requireRoot(t)
	ns1, h1 := newNetns(t)
	ns2, h2 := newNetns(t)
	a, b := veth(t, h1, "cap0", "cap1", ns2, h2)
	ipA, ipB := net.IPv4(10, 77, 0, 1), net.IPv4(10, 77, 0, 2)
	for _, x := range []struct {
		h         *netlink.Handle
		l         netlink.Link
		ip, other net.IP
		otherMAC  net.HardwareAddr
	}{{h1, a, ipA, ipB, b.Attrs().HardwareAddr}, {h2, b, ipB, ipA, a.Attrs().HardwareAddr}} {
		if err := x.h.AddrAdd(x.l, &netlink.Addr{IPNet: &net.IPNet{IP: x.ip, Mask: net.CIDRMask(24, 32)}}); err != nil {
			t.Fatal(err)
		}
		// A permanent neighbour entry: no ARP exchange adds packets to the count.
		if err := x.h.NeighAdd(&netlink.Neigh{LinkIndex: x.l.Attrs().Index, State: netlink.NUD_PERMANENT,
			IP: x.other, HardwareAddr: x.otherMAC}); err != nil {
			t.Fatal(err)
		}
	}
	testkit.WaitFor(t, "cap0 to come up", func() bool {
		l, err := h1.LinkByName("cap0")
		return err == nil && l.Attrs().OperState == netlink.OperUp
	})

	c := newNetnsCollector(t, ns1, &bytes.Buffer{})

	var err error
	var recv *net.UDPConn
	inNetns(t, ns2, func() error {
		recv, err = net.ListenUDP("udp4", &net.UDPAddr{IP: ipB, Port: 7777})
		return err
	})
	defer recv.Close()
	var send *net.UDPConn
	inNetns(t, ns1, func() error {
		send, err = net.DialUDP("udp4", &net.UDPAddr{IP: ipA}, &net.UDPAddr{IP: ipB, Port: 7777})
		return err
	})
	defer send.Close()

	before := collect(t, c)
	const datagrams, payload = 100, 1000
	// Lockstep, one datagram in flight: the receiving socket's buffer never overflows, so the
	// peer's count proves every datagram crossed the link.
	_ = recv.SetReadDeadline(time.Now().Add(10 * time.Second))
	msg := bytes.Repeat([]byte{0xca}, payload)
	buf := make([]byte, 2*payload)
	for i := range datagrams {
		if _, err := send.Write(msg); err != nil {
			t.Fatal(err)
		}
		if n, err := recv.Read(buf); err != nil || n != payload {
			t.Fatalf("datagram %d: the peer read %d bytes, err %v", i, n, err)
		}
	}
	after := collect(t, c)

	// Each datagram is the payload plus UDP (8), IPv4 (20) and Ethernet (14) headers.
	const frame = payload + 8 + 20 + 14
	for _, tc := range []struct {
		def  *metrics.Def
		dir  string
		want float64
	}{
		{metrics.NetworkIO, "transmit", datagrams * frame},
		{metrics.NetworkPackets, "transmit", datagrams},
		{metrics.NetworkIO, "receive", 0},
		{metrics.NetworkPackets, "receive", 0},
		{metrics.NetworkErrors, "transmit", 0},
		{metrics.NetworkDropped, "transmit", 0},
	} {
		if d := value(t, after, tc.def, "cap0", tc.dir) - value(t, before, tc.def, "cap0", tc.dir); d != tc.want {
			t.Errorf("cap0 %s %s moved by %v, want %v", tc.def.Name, tc.dir, d, tc.want)
		}
	}
	for def, want := range map[*metrics.Def]float64{
		metrics.NetworkUp: 1, metrics.NetworkCarrier: 1, metrics.NetworkOperState: 6, metrics.NetworkMTU: 1500,
	} {
		if v := value(t, after, def, "cap0", ""); v != want {
			t.Errorf("cap0 %s = %v, want %v", def.Name, v, want)
		}
	}
	if _, ok := after.Find(metrics.NetworkInfo, ifname("cap0"),
		stringAttr(metrics.AttrLinkKind, "veth"), stringAttr(metrics.AttrLinkDriver, "")); !ok {
		t.Error("cap0 is not reported as a veth without driver")
	}
	// The kernel gives veth links with carrier a nominal 10000 Mb/s.
	if v := value(t, after, metrics.NetworkBandwidthLimit, "cap0", ""); v != 10000e6/8 {
		t.Errorf("cap0 hw.network.bandwidth.limit = %v By/s, want 10 Gb/s", v)
	}
	if _, ok := after.Find(metrics.NetworkIO, ifname("cap1")); ok {
		t.Error("cap1 lives in the other namespace and is reported")
	}

	// Flap cap0 between two collections.
	testkit.WaitFor(t, "the subscription to know cap0", func() bool {
		_, ok := c.watcher.transitions(int32(a.Attrs().Index))
		return ok
	})
	changes0 := value(t, after, metrics.NetworkCarrierChanges, "cap0", "")
	transitions0, _ := c.watcher.transitions(int32(a.Attrs().Index))
	// flap takes cap0 down and up, and waits until a collection counts transitions0+want
	// transitions: notifications arrive asynchronously.
	var flapped *sample.Batch
	flap := func(what string, want int) {
		t.Helper()
		if err := h1.LinkSetDown(a); err != nil {
			t.Fatal(err)
		}
		if err := h1.LinkSetUp(a); err != nil {
			t.Fatal(err)
		}
		testkit.WaitFor(t, what, func() bool {
			flapped = collect(t, c)
			v, ok := flapped.Find(metrics.NetworkCarrierTransitions, ifname("cap0"))
			return ok && v >= float64(transitions0)+float64(want)
		})
	}
	flap("two carrier transitions of cap0", 2)
	if v := value(t, flapped, metrics.NetworkCarrierTransitions, "cap0", ""); v != float64(transitions0)+2 {
		t.Errorf("subscription counted %v transitions, want %d (down, up)", v, transitions0+2)
	}
	if v := value(t, flapped, metrics.NetworkCarrierChanges, "cap0", ""); v != changes0+2 {
		t.Errorf("kernel carrier changes %v, want %v", v, changes0+2)
	}

	// The subscription's socket fails (as on ENOBUFS after a notification storm): the next
	// collection subscribes again, keeps the counts, and later flaps are counted.
	w := c.watcher
	w.mu.Lock()
	done := w.done
	w.done = make(chan struct{}) // what start closes when it renews
	w.mu.Unlock()
	close(done) // closes the socket under the reader, which fails and ends
	testkit.WaitFor(t, "the subscription to end", func() bool { return !w.isLive() })
	collect(t, c)
	if !w.isLive() {
		t.Fatal("the collection did not renew the subscription")
	}
	flap("two more carrier transitions of cap0", 4)
	if v := value(t, flapped, metrics.NetworkCarrierTransitions, "cap0", ""); v != float64(transitions0)+4 {
		t.Errorf("after renewal the subscription counted %v transitions, want %d", v, transitions0+4)
	}
}

// TestVanishedInterfaceIsSkipped deletes a link between the dump and the sysfs reads: the
// collection reports it from the dump and does not fail; the next one no longer reports it.
func TestVanishedInterfaceIsSkipped(t *testing.T) {
	requireRoot(t)
	ns, h := newNetns(t)
	gone, _ := veth(t, h, "gone0", "gone1", netns.None(), nil)
	var logs bytes.Buffer
	c := newNetnsCollector(t, ns, &logs)
	c.afterDump = func() {
		if err := h.LinkDel(gone); err != nil {
			t.Error(err)
		}
		c.afterDump = nil
	}
	b := collect(t, c)
	if _, ok := b.Find(metrics.NetworkIO, ifname("gone0"), direction("transmit")); !ok {
		t.Error("gone0 was in the dump and is not reported")
	}
	if _, ok := b.Find(metrics.NetworkInfo, ifname("gone0"), stringAttr(metrics.AttrLinkDriver, "")); !ok {
		t.Error("gone0 has no info point")
	}
	b = collect(t, c)
	if _, ok := b.Find(metrics.NetworkIO, ifname("gone0"), direction("transmit")); ok {
		t.Error("gone0 is still reported after it was deleted")
	}
	if _, ok := c.links[int32(gone.Attrs().Index)]; ok {
		t.Error("gone0's state is kept after it was deleted")
	}
	if bytes.Contains(logs.Bytes(), []byte("level=WARN")) || bytes.Contains(logs.Bytes(), []byte("level=ERROR")) {
		t.Errorf("a vanished link is not worth a warning:\n%s", logs.String())
	}
}

// countingConn counts the RTM_GETLINK requests that reach the kernel.
type countingConn struct {
	conn
	getlink int
}

func (cc *countingConn) Send(req *nl.NetlinkRequest) error {
	if req.Type == unix.RTM_GETLINK {
		cc.getlink++
	}
	return cc.conn.Send(req)
}

// manyLinks creates n links (veth pairs) in a new namespace.
func manyLinks(tb testing.TB, n int) netns.NsHandle {
	ns, h := newNetns(tb)
	for i := range n / 2 {
		veth(tb, h, fmt.Sprintf("bench%da", i), fmt.Sprintf("bench%db", i), netns.None(), nil)
	}
	return ns
}

func TestOneDumpPerCollection(t *testing.T) {
	requireRoot(t)
	ns := manyLinks(t, 64)
	c, err := New(Options{Sysfs: filepath.Join(t.TempDir(), "no-sysfs-here"), Netns: ns, Logger: testLogger(&bytes.Buffer{})})
	if err == nil {
		c.Close()
		t.Fatal("New accepted a sysfs path that does not exist")
	}
	c = newNetnsCollector(t, ns, &bytes.Buffer{})
	cc := &countingConn{conn: c.conn}
	c.conn = cc
	b := collect(t, c)
	if cc.getlink != 1 {
		t.Errorf("one collection sent %d RTM_GETLINK requests, want 1", cc.getlink)
	}
	links := 0
	for _, p := range b.Points {
		if p.Series.Def == metrics.NetworkIO {
			if v, _ := p.Series.Attrs.Value(metrics.AttrIODirection); v.AsString() == "receive" {
				links++
			}
		}
	}
	if links != 65 { // 64 veths and lo
		t.Errorf("%d links reported, want 65", links)
	}
	collect(t, c)
	if cc.getlink != 2 {
		t.Errorf("two collections sent %d RTM_GETLINK requests, want 2", cc.getlink)
	}
}

// BenchmarkNICCollection64Links measures one collection of a namespace with 64 veth links (and
// lo), sysfs speed included.
func BenchmarkNICCollection64Links(b *testing.B) {
	requireRoot(b)
	ns := manyLinks(b, 64)
	c := newNetnsCollector(b, ns, &bytes.Buffer{})
	batch := &sample.Batch{}
	ctx := context.Background()
	b.ReportAllocs()
	var start, end unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &start)
	n := 0
	for b.Loop() {
		batch.Reset(Name, time.Time{})
		if err := c.Collect(ctx, batch); err != nil {
			b.Fatal(err)
		}
		n++
	}
	_ = unix.Getrusage(unix.RUSAGE_SELF, &end)
	// CPU time, user and kernel (the dump is built in the kernel), of the whole process per
	// collection: the target is 1 ms.
	cpu := time.Duration(end.Utime.Nano() - start.Utime.Nano() + end.Stime.Nano() - start.Stime.Nano())
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(n), "cpu-ns/op")
	b.ReportMetric(float64(len(batch.Points)), "points")
}

func stringAttr(k, v string) attribute.KeyValue { return attribute.String(k, v) }
