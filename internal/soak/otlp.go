package soak

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/config/configgrpc"
	"go.opentelemetry.io/collector/config/configoptional"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
	"go.opentelemetry.io/collector/receiver/receivertest"
)

// otlpSink is the OpenTelemetry Collector's own OTLP receiver (HTTP), with what arrives
// checked as it arrives: when each node's data came, and whether its cumulative counters
// stayed continuous (no reset, no drop) outside the node's restarts and reloads.
type otlpSink struct {
	rcv  receiver.Metrics
	addr string

	mu       sync.Mutex
	arrivals map[string][]time.Time // node → arrival times
	counters map[string]counterState
	// restarts tells whether node had a process start or reload between two times.
	restarts func(node string, from, to time.Time) bool
	problems []string
	points   int
	resets   int // resets across a restart or reload: expected, counted
}

type counterState struct {
	start   pcommon.Timestamp
	value   float64
	arrived time.Time
}

func startOTLP(addr string, restarts func(string, time.Time, time.Time) bool) (*otlpSink, error) {
	s := &otlpSink{addr: addr, arrivals: map[string][]time.Time{}, counters: map[string]counterState{}, restarts: restarts}
	f := otlpreceiver.NewFactory()
	cfg := f.CreateDefaultConfig().(*otlpreceiver.Config)
	h := cfg.Protocols.HTTP.GetOrInsertDefault()
	h.ServerConfig.NetAddr.Endpoint = addr
	cfg.Protocols.GRPC = configoptional.None[configgrpc.ServerConfig]()
	next, err := consumer.NewMetrics(s.consume)
	if err != nil {
		return nil, err
	}
	r, err := f.CreateMetrics(context.Background(), receivertest.NewNopSettings(f.Type()), cfg, next)
	if err != nil {
		return nil, fmt.Errorf("creating the OTLP receiver: %w", err)
	}
	if err := r.Start(context.Background(), componenttest.NewNopHost()); err != nil {
		return nil, fmt.Errorf("starting the OTLP receiver: %w", err)
	}
	s.rcv = r
	return s, nil
}

func (s *otlpSink) stop() { _ = s.rcv.Shutdown(context.Background()) }

func (s *otlpSink) consume(_ context.Context, md pmetric.Metrics) error {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	rms := md.ResourceMetrics()
	for i := 0; i < rms.Len(); i++ {
		rm := rms.At(i)
		node := "?"
		if v, ok := rm.Resource().Attributes().Get("host.name"); ok {
			node = v.Str()
		}
		s.arrivals[node] = append(s.arrivals[node], now)
		sms := rm.ScopeMetrics()
		for j := 0; j < sms.Len(); j++ {
			ms := sms.At(j).Metrics()
			for k := 0; k < ms.Len(); k++ {
				m := ms.At(k)
				if m.Type() != pmetric.MetricTypeSum || !m.Sum().IsMonotonic() ||
					m.Sum().AggregationTemporality() != pmetric.AggregationTemporalityCumulative {
					continue
				}
				dps := m.Sum().DataPoints()
				for l := 0; l < dps.Len(); l++ {
					s.point(node, m.Name(), dps.At(l), now)
				}
			}
		}
	}
	return nil
}

func (s *otlpSink) point(node, name string, dp pmetric.NumberDataPoint, now time.Time) {
	s.points++
	v := dp.DoubleValue()
	if dp.ValueType() == pmetric.NumberDataPointValueTypeInt {
		v = float64(dp.IntValue())
	}
	key := node + " " + name + "{" + attrString(dp.Attributes()) + "}"
	prev, seen := s.counters[key]
	s.counters[key] = counterState{start: dp.StartTimestamp(), value: v, arrived: now}
	if !seen {
		return
	}
	reset := dp.StartTimestamp() != prev.start
	drop := !reset && v < prev.value
	if !reset && !drop {
		return
	}
	if s.restarts(node, prev.arrived, now) {
		s.resets++
		return
	}
	what := "dropped from " + fmt.Sprint(prev.value) + " to " + fmt.Sprint(v)
	if reset {
		what = "reset (start time moved) from " + fmt.Sprint(prev.value) + " to " + fmt.Sprint(v)
	}
	if len(s.problems) < 50 {
		s.problems = append(s.problems, fmt.Sprintf("%s: %s between %s and %s with no restart or reload of the node",
			key, what, prev.arrived.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339)))
	}
}

func attrString(m pcommon.Map) string {
	var parts []string
	m.Range(func(k string, v pcommon.Value) bool {
		parts = append(parts, k+"="+v.AsString())
		return true
	})
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

// firstArrival is the first time node's data arrived at or after t (zero when none).
func (s *otlpSink) firstArrival(node string, t time.Time) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range s.arrivals[node] {
		if !a.Before(t) {
			return a
		}
	}
	return time.Time{}
}
