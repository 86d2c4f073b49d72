package nic

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/procfs/sysfs"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"go.opentelemetry.io/otel/attribute"
	"golang.org/x/sys/unix"

	"github.com/capstan-power/capstan/collectors"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

const fixtureSysfs = "testdata/sys"

func ifname(name string) attribute.KeyValue {
	return attribute.String(metrics.AttrInterfaceName, name)
}

func direction(d string) attribute.KeyValue {
	return attribute.String(metrics.AttrIODirection, d)
}

func testLogger(buf *bytes.Buffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func TestRegistered(t *testing.T) {
	for _, f := range collectors.Factories() {
		if f.Name == Name {
			if !f.EnabledByDefault || f.Interval != 5*time.Second {
				t.Errorf("nic registered enabled=%v interval=%v, want enabled every 5s", f.EnabledByDefault, f.Interval)
			}
			return
		}
	}
	t.Fatal("nic is not registered")
}

// rtattr serializes one attribute as the kernel does.
func rtattr(typ int, v []byte) []byte {
	return nl.NewRtAttr(typ, v).Serialize()
}

// newlinkMessage builds the payload of an RTM_NEWLINK message: ifinfomsg and attributes.
func newlinkMessage(index int32, flags uint32, attrs ...[]byte) []byte {
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index, msg.Flags = index, flags
	out := msg.Serialize()
	for _, a := range attrs {
		out = append(out, a...)
	}
	return out
}

func TestParseLink(t *testing.T) {
	stats := make([]byte, 8*24) // struct rtnl_link_stats64 has 24 fields on Linux 6.x
	for i := range 8 {
		binary.NativeEndian.PutUint64(stats[8*i:], uint64(1000+i))
	}
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("bond"))
	data := newlinkMessage(7, unix.IFF_UP|unix.IFF_LOWER_UP,
		rtattr(unix.IFLA_IFNAME, nl.ZeroTerminated("bond0")),
		rtattr(unix.IFLA_MTU, nl.Uint32Attr(9000)),
		rtattr(unix.IFLA_OPERSTATE, nl.Uint8Attr(6)),
		rtattr(unix.IFLA_CARRIER, nl.Uint8Attr(1)),
		rtattr(unix.IFLA_CARRIER_CHANGES, nl.Uint32Attr(5)),
		rtattr(unix.IFLA_STATS64, stats),
		info.Serialize(),
	)
	var m linkMsg
	if err := parseLink(data, &m); err != nil {
		t.Fatal(err)
	}
	want := stats64{1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007}
	if m.index != 7 || string(m.name) != "bond0" || string(m.kind) != "bond" || m.mtu != 9000 ||
		m.operState != 6 || m.carrier != 1 || m.carrierChanges != 5 || !m.hasStats || m.stats != want {
		t.Errorf("parsed %+v", m)
	}
	if kindOf(&m) != "bond" {
		t.Errorf("kind %q, want bond", kindOf(&m))
	}

	// A link without IFLA_CARRIER_CHANGES (Linux before 3.15) and without a kind.
	data = newlinkMessage(1, unix.IFF_UP|unix.IFF_LOOPBACK, rtattr(unix.IFLA_IFNAME, nl.ZeroTerminated("lo")))
	if err := parseLink(data, &m); err != nil {
		t.Fatal(err)
	}
	if m.carrierChanges != -1 || m.carrier != -1 || m.hasStats || kindOf(&m) != "loopback" {
		t.Errorf("parsed %+v, kind %q", m, kindOf(&m))
	}

	for name, bad := range map[string][]byte{
		"short ifinfomsg":        make([]byte, 8),
		"attribute past the end": append(newlinkMessage(2, 0), 0xff, 0x00, byte(unix.IFLA_MTU), 0x00, 1, 2, 3, 4),
		"no name":                newlinkMessage(3, 0, rtattr(unix.IFLA_MTU, nl.Uint32Attr(1500))),
	} {
		if err := parseLink(bad, &m); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// TestSysfsAttributesOfPhysicalNICs joins a dumped link with sysfs speed and driver on a fixture
// of a ConnectX-7 port at 400 Gb/s and an Intel port without link (speed -1, unknown).
func TestSysfsAttributesOfPhysicalNICs(t *testing.T) {
	var logs bytes.Buffer
	c := &Collector{log: testLogger(&logs), sysfs: fixtureSysfs, links: map[int32]*link{},
		watcher: newCarrierWatcher(netns.None(), testLogger(&logs))}
	var b sample.Batch
	for _, m := range []linkMsg{
		{index: 4, name: []byte("ens1f0np0"), flags: unix.IFF_UP | unix.IFF_LOWER_UP, operState: 6, carrier: 1, carrierChanges: 2, mtu: 4200},
		{index: 2, name: []byte("eno1"), flags: unix.IFF_UP | unix.IFF_LOWER_UP, operState: 6, carrier: 1, carrierChanges: 1, mtu: 1500},
		{index: 9, name: []byte("ens2f0np0"), flags: unix.IFF_UP, operState: 2, carrier: 0, carrierChanges: 0, mtu: 1500},
	} {
		l := c.newLink(&m)
		c.add(&b, l, &m)
	}
	for _, tc := range []struct {
		name, kind, driver string
		bandwidth          float64 // 0: absent
		up                 float64
	}{
		{"ens1f0np0", "physical", "mlx5_core", 400e9 / 8, 1},
		{"eno1", "physical", "igb", 0, 1},
		{"ens2f0np0", "physical", "", 0, 0}, // not in the fixture: vanished, or another namespace
	} {
		if _, ok := b.Find(metrics.NetworkInfo, ifname(tc.name),
			attribute.String(metrics.AttrLinkKind, tc.kind), attribute.String(metrics.AttrLinkDriver, tc.driver)); !ok {
			t.Errorf("%s: no capstan.network.info with kind %s driver %q", tc.name, tc.kind, tc.driver)
		}
		bw, ok := b.Find(metrics.NetworkBandwidthLimit, ifname(tc.name))
		if tc.bandwidth == 0 && ok || tc.bandwidth != 0 && bw != tc.bandwidth {
			t.Errorf("%s: hw.network.bandwidth.limit %v (present %v), want %v", tc.name, bw, ok, tc.bandwidth)
		}
		if up, _ := b.Find(metrics.NetworkUp, ifname(tc.name)); up != tc.up {
			t.Errorf("%s: hw.network.up %v, want %v", tc.name, up, tc.up)
		}
	}
	if strings.Contains(logs.String(), "level=WARN") || strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("unknown speed and a missing sysfs directory are not worth a warning:\n%s", logs.String())
	}
}

func TestInfiniBandPorts(t *testing.T) {
	fs, err := sysfs.NewFS(fixtureSysfs)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	ib := newInfiniband(fs, testLogger(&logs))
	var b sample.Batch
	ib.collect(&b)
	port := func(dev string) []attribute.KeyValue {
		return []attribute.KeyValue{attribute.String(metrics.AttrIBDevice, dev), attribute.Int(metrics.AttrIBPort, 1)}
	}
	for _, tc := range []struct {
		def   *metrics.Def
		attrs []attribute.KeyValue
		want  float64
	}{
		// Data counters count 4-byte words.
		{metrics.IBIO, append(port("mlx5_0"), direction("transmit")), 1234567890123 * 4},
		{metrics.IBIO, append(port("mlx5_0"), direction("receive")), 987654321000 * 4},
		{metrics.IBPackets, append(port("mlx5_0"), direction("transmit")), 4123456789},
		{metrics.IBPackets, append(port("mlx5_0"), direction("receive")), 3123456789},
		{metrics.IBErrors, append(port("mlx5_0"), attribute.String(metrics.AttrErrorType, "symbol_error")), 3},
		{metrics.IBErrors, append(port("mlx5_0"), attribute.String(metrics.AttrErrorType, "link_downed")), 2},
		{metrics.IBErrors, append(port("mlx5_0"), attribute.String(metrics.AttrErrorType, "port_xmit_discards")), 7},
		{metrics.IBXmitWait, port("mlx5_0"), 55512345},
		{metrics.IBPortState, port("mlx5_0"), 4},
		{metrics.IBPortPhysState, port("mlx5_0"), 5},
		{metrics.IBPortRate, append(port("mlx5_0"), attribute.String(metrics.AttrIBLinkLayer, "InfiniBand")), 200e9 / 8},
		{metrics.IBPortRate, append(port("mlx5_1"), attribute.String(metrics.AttrIBLinkLayer, "Ethernet")), 100e9 / 8},
		{metrics.IBIO, append(port("mlx5_1"), direction("receive")), 2000000},
		{metrics.IBHWCounters, append(port("mlx5_1"), attribute.String(metrics.AttrIBHWCounter, "out_of_buffer")), 12},
		{metrics.IBHWCounters, append(port("mlx5_1"), attribute.String(metrics.AttrIBHWCounter, "np_cnp_sent")), 40},
		{metrics.IBHWCounters, append(port("mlx5_1"), attribute.String(metrics.AttrIBHWCounter, "rp_cnp_handled")), 38},
	} {
		got, ok := b.Find(tc.def, tc.attrs...)
		if !ok || got != tc.want {
			t.Errorf("%s %v = %v (present %v), want %v", tc.def.Name, tc.attrs, got, ok, tc.want)
		}
	}
	if _, ok := b.Find(metrics.IBPortState, port("mlx5_2")...); ok {
		t.Error("mlx5_2 lacks its rate file and should be skipped")
	}
	if _, ok := b.Find(metrics.IBHWCounters, port("mlx5_0")...); ok {
		t.Error("mlx5_0 has no hw_counters and reports some")
	}
	// port_rcv_discards is not in the fixture: left out, not reported as 0.
	if _, ok := b.Find(metrics.IBErrors, append(port("mlx5_0"), attribute.String(metrics.AttrErrorType, "port_rcv_discards"))...); ok {
		t.Error("a counter the adapter lacks is reported")
	}
	for _, p := range b.Points {
		for _, kv := range p.Series.Attrs.ToSlice() {
			if !contains(p.Series.Def.Attributes, string(kv.Key)) {
				t.Errorf("%s carries %s, which the table does not list", p.Series.Def.Name, kv.Key)
			}
		}
	}
	// A second collection: the broken adapter is not logged again.
	b.Reset(Name, time.Now())
	ib.collect(&b)
	if n := strings.Count(logs.String(), "skipping an InfiniBand adapter"); n != 1 {
		t.Errorf("broken adapter logged %d times, want once:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "device=mlx5_2") {
		t.Errorf("the log does not name the broken adapter:\n%s", logs.String())
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// failingConn is a real rtnetlink socket whose dump fails as a kernel refusal would.
type failingConn struct {
	conn
	err error
}

func (f failingConn) Receive() ([]syscall.NetlinkMessage, *unix.SockaddrNetlink, error) {
	return nil, nil, f.err
}

// TestDumpErrorFailsTheCollection needs no root: rtnetlink dumps are open to every user.
func TestDumpErrorFailsTheCollection(t *testing.T) {
	c, err := New(Options{Sysfs: fixtureSysfs, Netns: netns.None(), Logger: testLogger(&bytes.Buffer{})})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var b sample.Batch
	if err := c.Collect(context.Background(), &b); err != nil {
		t.Fatalf("collection in the test's own namespace: %v", err)
	}
	if _, ok := b.Find(metrics.NetworkIO, direction("receive")); !ok {
		t.Fatal("no system.network.io in the test's own namespace")
	}

	real := c.conn
	c.conn = failingConn{conn: real, err: syscall.ENOBUFS}
	err = c.Collect(context.Background(), &b)
	if !errors.Is(err, syscall.ENOBUFS) || !strings.Contains(err.Error(), "dumping network links over rtnetlink") {
		t.Errorf("Collect = %v, want a wrapped ENOBUFS saying what failed", err)
	}
	c.conn = real

	// A closed socket: the real failure after the descriptor is gone.
	real.Close()
	if err := c.Collect(context.Background(), &b); err == nil || !strings.Contains(err.Error(), "sending the RTM_GETLINK dump request") {
		t.Errorf("Collect on a closed socket = %v, want an error naming the dump request", err)
	}
}

func TestFilters(t *testing.T) {
	cfg := newConfig(t)
	include, err := compileFilter("nic.include", "^(eth|ens|ib).*")
	if err != nil {
		t.Fatal(err)
	}
	exclude, err := compileFilter("nic.exclude", cfg.Exclude)
	if err != nil {
		t.Fatal(err)
	}
	c := &Collector{sysfs: fixtureSysfs, include: include, exclude: exclude}
	for name, excluded := range map[string]bool{
		"ens1f0np0": false, "ib0": false, "eth0": false, "eno1": true, "lo": true,
	} {
		if l := c.newLink(&linkMsg{name: []byte(name)}); l.excluded != excluded {
			t.Errorf("%s excluded=%v, want %v", name, l.excluded, excluded)
		}
	}
	c.include = nil
	for name, excluded := range map[string]bool{
		"eno1": false, "lo": true, "veth3a2b": true, "cali12ab": true, "lxc_health": true, "docker0": true, "vethernet": true,
	} {
		if l := c.newLink(&linkMsg{name: []byte(name)}); l.excluded != excluded {
			t.Errorf("default filter: %s excluded=%v, want %v", name, l.excluded, excluded)
		}
	}
	if _, err := compileFilter("nic.include", "(("); err == nil {
		t.Error("a bad expression compiled")
	}
}

// BenchmarkInfiniBandFixture reads the fixture's adapters (two ports and a broken adapter).
func BenchmarkInfiniBandFixture(b *testing.B) {
	fs, err := sysfs.NewFS(fixtureSysfs)
	if err != nil {
		b.Fatal(err)
	}
	ib := newInfiniband(fs, testLogger(&bytes.Buffer{}))
	batch := &sample.Batch{}
	b.ReportAllocs()
	for b.Loop() {
		batch.Reset(Name, time.Time{})
		ib.collect(batch)
	}
}
