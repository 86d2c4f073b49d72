package gpu

import (
	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// NVLink: the collector finds a GPU's links once (state, version, remote device type per link)
// and reads them with one field-value request per collection (bytes per direction, state, replay,
// recovery and CRC-flit errors per link, scoped by link) plus one error-counter call per link for
// CRC-data errors, which has no field. The GPU's links together are on by default; each link's
// series are off by default.

// nvlinkFieldsPerLink are the field ids requested per link, in this order.
var nvlinkFieldsPerLink = [...]uint32{
	nvml.FI_DEV_NVLINK_THROUGHPUT_DATA_TX, nvml.FI_DEV_NVLINK_THROUGHPUT_DATA_RX, nvml.FI_DEV_NVLINK_GET_STATE,
	nvml.FI_DEV_NVLINK_ERROR_DL_CRC, nvml.FI_DEV_NVLINK_ERROR_DL_REPLAY, nvml.FI_DEV_NVLINK_ERROR_DL_RECOVERY,
}

// nvlinkErrorTypes are the error.type values, in the order of a link's error counts: CRC flit,
// CRC data, replay, recovery.
var nvlinkErrorTypes = [4]string{"crc_flit", "crc_data", "replay", "recovery"}

const kib = 1024

type nvlinkState struct {
	links  int
	fields []nvml.FieldValue
	// aggregate series
	up, down *sample.Series
	tx, rx   *sample.Series
	errors   [4]*sample.Series
	perLink  []nvlinkLink // nil when no per-link metric is exported
	crcData  crcSupport   // whether GetNvLinkErrorCounter answers CRC-data counts
	// last holds each link's counters as last read: the GPU's totals add every link's last
	// value, so a read that fails on one link leaves the totals where they were (they are
	// counters: a total that dropped would read as a reset and a burst after it).
	last []nvlinkCounts
}

// nvlinkCounts are one link's counters (or the GPU's over all links): bytes transmitted and
// received, errors by nvlinkErrorTypes.
type nvlinkCounts struct {
	tx, rx nvlinkCounter
	errors [4]nvlinkCounter
}

// nvlinkCounter is a counter as last read; have once it was read at all.
type nvlinkCounter struct {
	v    float64
	have bool
}

func (c *nvlinkCounter) set(v float64) { c.v, c.have = v, true }

// add adds a link's counter to a total, which has a value once any link's was read.
func (c *nvlinkCounter) add(o nvlinkCounter) { c.v, c.have = c.v+o.v, c.have || o.have }

// export adds the counter to b as s, when it was ever read.
func (c nvlinkCounter) export(b *sample.Batch, s *sample.Series) {
	if c.have {
		b.Add(s, c.v)
	}
}

// crcSupport is what the first answers of GetNvLinkErrorCounter for CRC-data said: unknown
// until one is success or not supported (a timeout says neither).
type crcSupport int

const (
	crcUnknown crcSupport = iota
	crcYes
	crcNo
)

type nvlinkLink struct {
	state  *sample.Series
	tx, rx *sample.Series
	errors [4]*sample.Series
}

// nvlinkWanted reports whether any NVLink metric is exported.
func (c *Collector) nvlinkWanted() bool {
	for _, m := range [...]*metrics.Def{metrics.GPUNVLinkLinks, metrics.GPUNVLinkIO, metrics.GPUNVLinkErrors,
		metrics.GPUNVLinkLinkState, metrics.GPUNVLinkLinkIO, metrics.GPUNVLinkLinkErrors} {
		if c.exports(m) {
			return true
		}
	}
	return false
}

// openNVLink finds the GPU's links; a GPU without NVLink says so through probeNVLink.
func (c *Collector) openNVLink(d *device) *nvlinkState {
	st := &nvlinkState{}
	for l := range nvml.NVLINK_MAX_LINKS {
		_, ret := d.dev.GetNvLinkState(l)
		if l == 0 && ret != nvml.SUCCESS {
			c.ok(d, probeNVLink, ret)
			return nil
		}
		if ret != nvml.SUCCESS {
			break
		}
		st.links++
	}
	s := func(def *metrics.Def, extra ...attribute.KeyValue) *sample.Series { return d.base.With(def, extra...) }
	st.up = s(metrics.GPUNVLinkLinks, attribute.String(metrics.AttrHWState, "up"))
	st.down = s(metrics.GPUNVLinkLinks, attribute.String(metrics.AttrHWState, "down"))
	st.tx = s(metrics.GPUNVLinkIO, attribute.String(metrics.AttrIODirection, "transmit"))
	st.rx = s(metrics.GPUNVLinkIO, attribute.String(metrics.AttrIODirection, "receive"))
	for i, e := range nvlinkErrorTypes {
		st.errors[i] = s(metrics.GPUNVLinkErrors, attribute.String(metrics.AttrErrorType, e))
	}
	st.fields = make([]nvml.FieldValue, 0, st.links*len(nvlinkFieldsPerLink))
	for l := range st.links {
		for _, id := range nvlinkFieldsPerLink {
			st.fields = append(st.fields, nvml.FieldValue{FieldId: id, ScopeId: uint32(l)})
		}
	}
	st.last = make([]nvlinkCounts, st.links)
	if c.exports(metrics.GPUNVLinkLinkState) || c.exports(metrics.GPUNVLinkLinkIO) || c.exports(metrics.GPUNVLinkLinkErrors) {
		st.perLink = make([]nvlinkLink, st.links)
		for l := range st.links {
			link := attribute.Int(metrics.AttrNVLink, l)
			version, _ := d.dev.GetNvLinkVersion(l)
			remote, _ := d.dev.GetNvLinkRemoteDeviceType(l)
			pl := &st.perLink[l]
			pl.state = s(metrics.GPUNVLinkLinkState, link, attribute.Int64(metrics.AttrNVLinkVersion, int64(version)),
				attribute.String(metrics.AttrNVLinkRemote, remoteName(remote)))
			pl.tx = s(metrics.GPUNVLinkLinkIO, link, attribute.String(metrics.AttrIODirection, "transmit"))
			pl.rx = s(metrics.GPUNVLinkLinkIO, link, attribute.String(metrics.AttrIODirection, "receive"))
			for i, e := range nvlinkErrorTypes {
				pl.errors[i] = s(metrics.GPUNVLinkLinkErrors, link, attribute.String(metrics.AttrErrorType, e))
			}
		}
	}
	return st
}

func remoteName(t nvml.IntNvLinkDeviceType) string {
	switch t {
	case nvml.NVLINK_DEVICE_TYPE_GPU:
		return "gpu"
	case nvml.NVLINK_DEVICE_TYPE_SWITCH:
		return "switch"
	case nvml.NVLINK_DEVICE_TYPE_IBMNPU:
		return "ibmnpu"
	}
	return "unknown"
}

// collectNVLink reads every link of the GPU.
func (c *Collector) collectNVLink(d *device, b *sample.Batch) {
	if !d.want(probeNVLink) || !c.nvlinkOn {
		return
	}
	if d.nvlink == nil {
		if d.nvlink = c.openNVLink(d); d.nvlink == nil {
			return
		}
	}
	st := d.nvlink
	for i := range st.fields {
		st.fields[i].NvmlReturn = 0
	}
	if ret := d.dev.GetFieldValues(st.fields); !c.ok(d, probeNVLink, ret) {
		return
	}
	if st.crcData == crcUnknown {
		switch _, ret := d.dev.GetNvLinkErrorCounter(0, nvml.NVLINK_ERROR_DL_CRC_DATA); ret {
		case nvml.SUCCESS:
			st.crcData = crcYes
		case nvml.ERROR_NOT_SUPPORTED:
			st.crcData = crcNo
		}
	}
	var up, down float64
	per := len(nvlinkFieldsPerLink)
	for l := range st.links {
		f := st.fields[l*per : (l+1)*per]
		last := &st.last[l]
		var pl *nvlinkLink
		if st.perLink != nil {
			pl = &st.perLink[l]
		}
		if v, ok := fieldValue(&f[2]); ok {
			if v != 0 {
				up++
			} else {
				down++
			}
			if pl != nil {
				b.Add(pl.state, boolValue(v != 0))
			}
		}
		if v, ok := fieldValue(&f[0]); ok {
			last.tx.set(v * kib)
			if pl != nil {
				b.Add(pl.tx, v*kib)
			}
		}
		if v, ok := fieldValue(&f[1]); ok {
			last.rx.set(v * kib)
			if pl != nil {
				b.Add(pl.rx, v*kib)
			}
		}
		var counts [4]float64
		var have [4]bool
		counts[0], have[0] = fieldValue(&f[3])
		counts[2], have[2] = fieldValue(&f[4])
		counts[3], have[3] = fieldValue(&f[5])
		if st.crcData == crcYes && d.want(probeNVLinkCRCData) {
			n, ret := d.dev.GetNvLinkErrorCounter(l, nvml.NVLINK_ERROR_DL_CRC_DATA)
			if c.okPart(d, probeNVLinkCRCData, "link", l, ret) {
				counts[1], have[1] = float64(n), true
			}
		}
		for i := range counts {
			if !have[i] {
				continue
			}
			last.errors[i].set(counts[i])
			if pl != nil {
				b.Add(pl.errors[i], counts[i])
			}
		}
	}
	b.Add(st.up, up)
	b.Add(st.down, down)
	var total nvlinkCounts
	for l := range st.last {
		last := &st.last[l]
		total.tx.add(last.tx)
		total.rx.add(last.rx)
		for i := range last.errors {
			total.errors[i].add(last.errors[i])
		}
	}
	total.tx.export(b, st.tx)
	total.rx.export(b, st.rx)
	for i, s := range st.errors {
		total.errors[i].export(b, s)
	}
}
