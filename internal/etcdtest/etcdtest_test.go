package etcdtest

import (
	"net"
	"strings"
	"sync/atomic"
	"testing"
)

// A member whose picked address another process bound before it started is started again on
// other addresses, and the cluster works.
func TestStartRetriesAnAddressTaken(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = taken.Close() }()
	var picks atomic.Int32
	pickAddr = func(tb testing.TB) string {
		if picks.Add(1) == 1 {
			return taken.Addr().String() // the client address of the first try
		}
		return FreeAddr(tb)
	}
	defer func() { pickAddr = FreeAddr }()
	_, eps := Start(t, 1, nil)
	if len(eps) != 1 || eps[0] == taken.Addr().String() || !strings.HasPrefix(eps[0], "127.0.0.1:") {
		t.Errorf("client addresses %v, want one on loopback other than the taken %s", eps, taken.Addr())
	}
	if picks.Load() < 4 {
		t.Errorf("%d addresses picked, want a second try's two after the first's", picks.Load())
	}
}
