package nic

import (
	"errors"
	"io/fs"
	"log/slog"
	"maps"
	"slices"
	"strconv"

	"github.com/prometheus/procfs/sysfs"
	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// infiniband reads the port counters of InfiniBand and RoCE adapters under
// <sysfs>/class/infiniband through procfs, which already turns the data counters (4-byte words)
// into bytes and the rate into bytes per second.
type infiniband struct {
	fs  sysfs.FS
	log *slog.Logger
	// ports by "<device>/<port>", built when first seen.
	ports map[string]*ibPort
	// failing holds devices whose last read failed, so a persistent failure is logged once.
	failing map[string]bool
	absent  bool // no class/infiniband: said once
	logged  logKinds
}

// ibErrorCounters name the error counters of a port in the order of ibPort.errors.
var ibErrorCounters = [...]string{
	"symbol_error", "link_error_recovery", "link_downed", "port_rcv_errors",
	"port_rcv_remote_physical_errors", "port_rcv_switch_relay_errors", "port_rcv_discards",
	"port_xmit_discards", "port_xmit_constraint_errors", "port_rcv_constraint_errors",
	"local_link_integrity_errors", "excessive_buffer_overrun_errors", "vl15_dropped",
}

// ibHWCounters name the driver counters reported, in the order of ibPort.hw.
var ibHWCounters = [...]string{
	"out_of_buffer", "out_of_sequence", "packet_seq_err", "local_ack_timeout_err", "rnr_nak_retry_err",
	"np_cnp_sent", "np_ecn_marked_roce_packets", "rp_cnp_handled", "rp_cnp_ignored",
	"roce_adp_retrans", "roce_slow_restart",
}

type ibPort struct {
	rxBytes, txBytes, rxPackets, txPackets *sample.Series
	errors                                 [len(ibErrorCounters)]*sample.Series
	hw                                     [len(ibHWCounters)]*sample.Series
	xmitWait, state, physState, rate       *sample.Series
}

func newInfiniband(fs sysfs.FS, log *slog.Logger) *infiniband {
	return &infiniband{fs: fs, log: log, ports: map[string]*ibPort{}, failing: map[string]bool{}}
}

func newIBPort(device string, port uint, linkLayer string) *ibPort {
	base := []attribute.KeyValue{
		attribute.String(metrics.AttrIBDevice, device),
		attribute.Int(metrics.AttrIBPort, int(port)),
		attribute.String(metrics.AttrIBLinkLayer, linkLayer),
	}
	dir := func(def *metrics.Def, d string) *sample.Series {
		return sample.NewSeries(def, append(base[:3:3], attribute.String(metrics.AttrIODirection, d))...)
	}
	p := &ibPort{
		rxBytes: dir(metrics.IBIO, "receive"), txBytes: dir(metrics.IBIO, "transmit"),
		rxPackets: dir(metrics.IBPackets, "receive"), txPackets: dir(metrics.IBPackets, "transmit"),
		xmitWait:  sample.NewSeries(metrics.IBXmitWait, base...),
		state:     sample.NewSeries(metrics.IBPortState, base...),
		physState: sample.NewSeries(metrics.IBPortPhysState, base...),
		rate:      sample.NewSeries(metrics.IBPortRate, base...),
	}
	for i, name := range ibErrorCounters {
		p.errors[i] = sample.NewSeries(metrics.IBErrors, append(base[:3:3], attribute.String(metrics.AttrErrorType, name))...)
	}
	for i, name := range ibHWCounters {
		p.hw[i] = sample.NewSeries(metrics.IBHWCounters, append(base[:3:3], attribute.String(metrics.AttrIBHWCounter, name))...)
	}
	return p
}

// collect adds every port of every adapter. A device that fails to read is skipped for this
// collection and logged once; the others are still reported.
func (ib *infiniband) collect(b *sample.Batch) {
	devices, err := ib.fs.InfiniBandClassDevices()
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			if !ib.absent {
				ib.absent = true
				ib.log.Debug("no InfiniBand or RoCE adapter (no class/infiniband in sysfs)")
			}
			return
		}
		if ib.logged.first(kindInfiniBandList) {
			ib.log.Debug("listing InfiniBand adapters", "err", err)
		}
		return
	}
	ib.absent = false
	ib.logged.forget(kindInfiniBandList)
	for _, name := range devices {
		dev, err := ib.fs.InfiniBandDevice(name)
		if err != nil {
			if !ib.failing[name] {
				ib.failing[name] = true
				ib.log.Warn("skipping an InfiniBand adapter while it fails to read", "device", name, "err", err)
			}
			continue
		}
		if ib.failing[name] {
			delete(ib.failing, name)
			ib.log.Info("InfiniBand adapter reads again", "device", name)
		}
		// Ports in order, so that output is stable.
		for _, num := range slices.Sorted(maps.Keys(dev.Ports)) {
			port := dev.Ports[num]
			key := name + "/" + strconv.FormatUint(uint64(num), 10)
			p := ib.ports[key]
			if p == nil {
				p = newIBPort(name, num, port.LinkLayer)
				ib.ports[key] = p
			}
			p.add(b, &port)
		}
	}
}

func (p *ibPort) add(b *sample.Batch, port *sysfs.InfiniBandPort) {
	c := &port.Counters
	// The 64-bit counters_ext files of kernels before 4.5 win over the 32-bit ones they extend.
	addFirst(b, p.rxBytes, c.LegacyPortRcvData64, c.PortRcvData)
	addFirst(b, p.txBytes, c.LegacyPortXmitData64, c.PortXmitData)
	addFirst(b, p.rxPackets, c.LegacyPortRcvPackets64, c.PortRcvPackets)
	addFirst(b, p.txPackets, c.LegacyPortXmitPackets64, c.PortXmitPackets)
	for i, v := range [len(ibErrorCounters)]*uint64{
		c.SymbolError, c.LinkErrorRecovery, c.LinkDowned, c.PortRcvErrors,
		c.PortRcvRemotePhysicalErrors, c.PortRcvSwitchRelayErrors, c.PortRcvDiscards,
		c.PortXmitDiscards, c.PortXmitConstraintErrors, c.PortRcvConstraintErrors,
		c.LocalLinkIntegrityErrors, c.ExcessiveBufferOverrunErrors, c.VL15Dropped,
	} {
		addFirst(b, p.errors[i], v)
	}
	h := &port.HwCounters
	for i, v := range [len(ibHWCounters)]*uint64{
		h.OutOfBuffer, h.OutOfSequence, h.PacketSeqErr, h.LocalAckTimeoutErr, h.RnrNakRetryErr,
		h.NpCnpSent, h.NpEcnMarkedRocePackets, h.RpCnpHandled, h.RpCnpIgnored,
		h.RoceAdpRetrans, h.RoceSlowRestart,
	} {
		addFirst(b, p.hw[i], v)
	}
	addFirst(b, p.xmitWait, c.PortXmitWait)
	b.Add(p.state, float64(port.StateID))
	b.Add(p.physState, float64(port.PhysStateID))
	b.Add(p.rate, float64(port.Rate))
}

// addFirst adds the first counter the adapter has; a counter it lacks is left out.
func addFirst(b *sample.Batch, s *sample.Series, vs ...*uint64) {
	for _, v := range vs {
		if v != nil {
			b.Add(s, float64(*v))
			return
		}
	}
}
