package nic

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/prometheus/procfs/sysfs"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/capstan-power/capstan/internal/sample"
)

// corruptingConn breaks the first attribute of the dumped link whose index is *target.
type corruptingConn struct {
	conn
	target *int32
}

func (cc corruptingConn) Receive() ([]syscall.NetlinkMessage, *unix.SockaddrNetlink, error) {
	msgs, from, err := cc.conn.Receive()
	for i := range msgs {
		m := &msgs[i]
		if m.Header.Type == unix.RTM_NEWLINK && len(m.Data) >= ifinfomsgLen+unix.SizeofRtAttr &&
			int32(binary.NativeEndian.Uint32(m.Data[4:8])) == *cc.target {
			m.Data[ifinfomsgLen], m.Data[ifinfomsgLen+1] = 0xff, 0xff // an rtattr longer than the message
		}
	}
	return msgs, from, err
}

// TestMalformedLinksLoggedOnce: malformed links in the dump, a different one at each collection
// (each error names its own link and lengths), make one warning, not one per message text.
func TestMalformedLinksLoggedOnce(t *testing.T) {
	requireRoot(t)
	ns, h := newNetns(t)
	a, _ := veth(t, h, "bad0", "bad1", netns.None(), nil)
	var logs bytes.Buffer
	c := newNetnsCollector(t, ns, &logs)
	target := int32(1) // lo
	c.conn = corruptingConn{conn: c.conn, target: &target}
	collect(t, c)
	target = int32(a.Attrs().Index)
	collect(t, c)
	if n := strings.Count(logs.String(), "skipping a malformed link message"); n != 1 {
		t.Errorf("%d warnings for malformed links, want 1:\n%s", n, logs.String())
	}
}

// TestInfiniBandListingFailureLoggedOnce: a class/infiniband that cannot be listed (not a
// directory here) is said once, not at every collection.
func TestInfiniBandListingFailureLoggedOnce(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "class"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "class", "infiniband"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	fs, err := sysfs.NewFS(root)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	ib := newInfiniband(fs, testLogger(&logs))
	for range 3 {
		ib.collect(&sample.Batch{})
	}
	if n := strings.Count(logs.String(), "listing InfiniBand adapters"); n != 1 {
		t.Errorf("%d lines for a listing that keeps failing, want 1:\n%s", n, logs.String())
	}
}
