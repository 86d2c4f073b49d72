package sim

import (
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
)

// supportedEvents is what the simulated GPUs report from GetSupportedEventTypes, as an SXM board
// does; only XID and ECC events are ever raised.
const supportedEvents = nvml.EventTypeXidCriticalError | nvml.EventTypeSingleBitEccError |
	nvml.EventTypeDoubleBitEccError | nvml.EventTypePState | nvml.EventTypeClock

// maxQueuedEvents bounds an event set nobody reads; NVML's buffer drops events when full, too.
const maxQueuedEvents = 4096

// EventSet is an NVML event set of the simulated fleet.
type EventSet struct {
	*mock.EventSet
	fleet *Fleet

	mu         sync.Mutex
	registered map[*GPU]uint64 // event types per device
	queue      []nvml.EventData
	freed      bool
	wake       chan struct{} // signalled when an event is queued or the set is freed
}

func newEventSet(f *Fleet) *EventSet {
	return &EventSet{
		EventSet:   &mock.EventSet{},
		fleet:      f,
		registered: map[*GPU]uint64{},
		wake:       make(chan struct{}, 1),
	}
}

func (s *EventSet) register(g *GPU, types uint64) nvml.Return {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.freed {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	s.registered[g] |= types
	return nvml.SUCCESS
}

func (s *EventSet) offer(ev nvml.EventData) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, _ := ev.Device.(*GPU)
	if s.freed || s.registered[g]&ev.EventType == 0 || len(s.queue) >= maxQueuedEvents {
		return
	}
	s.queue = append(s.queue, ev)
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Wait returns the next event, waiting at most timeoutMs of wall-clock time (not simulated time:
// it is a real blocking call); with 0 it returns at once. Without an event it returns
// ERROR_TIMEOUT.
func (s *EventSet) Wait(timeoutMs uint32) (nvml.EventData, nvml.Return) {
	if !s.fleet.initialized() {
		return nvml.EventData{}, nvml.ERROR_UNINITIALIZED
	}
	var timeout <-chan time.Time
	for {
		s.mu.Lock()
		if s.freed {
			s.mu.Unlock()
			return nvml.EventData{}, nvml.ERROR_INVALID_ARGUMENT
		}
		if len(s.queue) > 0 {
			ev := s.queue[0]
			s.queue[0] = nvml.EventData{}
			s.queue = s.queue[1:]
			s.mu.Unlock()
			return ev, nvml.SUCCESS
		}
		s.mu.Unlock()
		if timeoutMs == 0 {
			return nvml.EventData{}, nvml.ERROR_TIMEOUT
		}
		if timeout == nil {
			t := time.NewTimer(time.Duration(timeoutMs) * time.Millisecond)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-s.wake:
		case <-timeout:
			return nvml.EventData{}, nvml.ERROR_TIMEOUT
		}
	}
}

// Free releases the set; a waiter returns and later calls fail with ERROR_INVALID_ARGUMENT.
func (s *EventSet) Free() nvml.Return {
	s.mu.Lock()
	if s.freed {
		s.mu.Unlock()
		return nvml.ERROR_INVALID_ARGUMENT
	}
	s.freed = true
	s.queue = nil
	s.mu.Unlock()
	s.fleet.forget(s)
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return nvml.SUCCESS
}
