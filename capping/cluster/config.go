package cluster

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/capstan-power/capstan/internal/config"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// ConnFrom turns the validated --etcd.* settings into a Conn.
func ConnFrom(e config.Etcd) Conn {
	return Conn{Endpoints: SplitEndpoints(e.Endpoints), CAFile: e.TLS.CAFile, CertFile: e.TLS.CertFile,
		KeyFile: e.TLS.KeyFile, Username: e.Username, PasswordFile: e.PasswordFile}
}

// FromConfig builds the agent's member of its group: the node's limits are the Σ of its GPUs'
// limit constraints, its draw is what the capping controller (store key drawKey) last measured.
// The caller closes the client after the member stopped.
func FromConfig(cfg *config.Config, lib nvml.Interface, store *sample.Store, drawKey string, log *slog.Logger, now func() time.Time) (*Member, *clientv3.Client, error) {
	minW, maxW, err := nodeLimits(lib)
	if err != nil {
		return nil, nil, err
	}
	cli, err := Dial(ConnFrom(cfg.Etcd))
	if err != nil {
		return nil, nil, err
	}
	draw := func() (w float64, ok bool) {
		store.View(drawKey, func(b *sample.Batch) {
			if b != nil { // nothing measured yet
				w, ok = b.Find(metrics.CappingMeasured)
			}
		})
		return w, ok
	}
	m, err := NewMember(Options{Client: cli, Keys: Keys{Prefix: cfg.Etcd.Prefix, Group: cfg.Etcd.Group}, Node: cfg.Node.Name,
		LeaseTTL: cfg.Etcd.LeaseTTL, Period: cfg.Capping.Period, MinW: minW, MaxW: maxW, Priority: float64(cfg.Etcd.Priority),
		Draw: draw, Campaign: true, Store: store, Log: log, Now: now})
	if err != nil {
		_ = cli.Close()
		return nil, nil, err
	}
	return m, cli, nil
}

// nodeLimits sums the GPUs' power limit constraints, in watts.
func nodeLimits(lib nvml.Interface) (minW, maxW float64, err error) {
	n, ret := lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return 0, 0, fmt.Errorf("cluster budget: counting GPUs: %w", ret)
	}
	for i := range n {
		dev, ret := lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			return 0, 0, fmt.Errorf("cluster budget: GPU %d: %w", i, ret)
		}
		lo, hi, ret := dev.GetPowerManagementLimitConstraints()
		if ret != nvml.SUCCESS {
			return 0, 0, fmt.Errorf("cluster budget: limit constraints of GPU %d: %w", i, ret)
		}
		minW += float64(lo) / 1000
		maxW += float64(hi) / 1000
	}
	if n == 0 {
		return 0, 0, fmt.Errorf("cluster budget: no GPU")
	}
	return minW, maxW, nil
}
