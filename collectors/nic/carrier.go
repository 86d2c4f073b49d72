package nic

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// carrierWatcher counts carrier transitions from an rtnetlink link subscription. The kernel
// notifies every change of a link's flags as it happens, so a link that goes down and up again
// between two collections, which both see up, is still counted.
type carrierWatcher struct {
	ns  netns.NsHandle
	log *slog.Logger

	mu    sync.Mutex
	links map[int32]*carrierState // by ifindex
	// live is false once the subscription ended (its socket overflowed or failed); the next
	// collection subscribes again.
	live     bool
	done     chan struct{} // closed to end the subscription
	finished chan struct{} // closed when the goroutine reading it returned
	stopping bool
	lastErr  string
	// epoch counts the link dumps begun (mark); a link first notified after a dump began may be
	// missing from it without being gone.
	epoch uint64
}

type carrierState struct {
	lowerUp     bool
	transitions uint64
	born        uint64 // the epoch in which it was first notified
}

// receiveBuffer is large enough for a burst of notifications (every link of a host flapping at
// once when a switch reboots) to wait until the reader catches up.
const receiveBuffer = 1 << 20

func newCarrierWatcher(ns netns.NsHandle, log *slog.Logger) *carrierWatcher {
	return &carrierWatcher{ns: ns, log: log, links: map[int32]*carrierState{}}
}

// start subscribes when no subscription is live. The subscription first lists the existing
// links (their current state, not counted) and then delivers changes, in order, on one socket.
func (w *carrierWatcher) start() error {
	w.mu.Lock()
	if w.live || w.stopping {
		w.mu.Unlock()
		return nil
	}
	w.mu.Unlock()
	if w.finished != nil {
		<-w.finished  // the previous subscription's reader has returned
		close(w.done) // and its socket is closed
		w.done, w.finished = nil, nil
	}
	ch := make(chan netlink.LinkUpdate, 64)
	done := make(chan struct{})
	finished := make(chan struct{})
	ns := w.ns
	err := netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{
		Namespace:         &ns,
		ListExisting:      true,
		ReceiveBufferSize: receiveBuffer,
		ErrorCallback:     w.onError,
	})
	if err != nil {
		close(done)
		return fmt.Errorf("subscribing to link changes (RTNLGRP_LINK): %w", err)
	}
	w.mu.Lock()
	w.live, w.done, w.finished = true, done, finished
	w.mu.Unlock()
	go func() {
		defer close(finished)
		for u := range ch {
			w.apply(u)
		}
		w.mu.Lock()
		w.live = false
		w.mu.Unlock()
	}()
	return nil
}

// apply records one notification: a link's lower-up flag (carrier, as the kernel reports it in
// the link's flags) that differs from the last one seen is a transition.
func (w *carrierWatcher) apply(u netlink.LinkUpdate) {
	index := u.Index
	w.mu.Lock()
	defer w.mu.Unlock()
	if u.Header.Type == unix.RTM_DELLINK {
		delete(w.links, index)
		return
	}
	lowerUp := u.Flags&unix.IFF_LOWER_UP != 0
	st, ok := w.links[index]
	if !ok {
		w.links[index] = &carrierState{lowerUp: lowerUp, born: w.epoch}
		return
	}
	if st.lowerUp != lowerUp {
		st.transitions++
		st.lowerUp = lowerUp
	}
}

// mark is called as a link dump begins; it returns the epoch to pass to prune after it.
func (w *carrierWatcher) mark() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.epoch++
	return w.epoch
}

// prune forgets the links that a complete dump, begun at epoch, did not list (keep false).
// Deletions are notified, but those made while no subscription was live (after it overflowed)
// are not, and a new subscription's listing of existing links only adds.
func (w *carrierWatcher) prune(epoch uint64, keep func(index int32) bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for index, st := range w.links {
		if st.born < epoch && !keep(index) {
			delete(w.links, index)
		}
	}
}

// onError logs a failure of the subscription once per distinct message; the library ends the
// subscription after a receive error, and the next collection subscribes again.
func (w *carrierWatcher) onError(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopping || errors.Is(err, netlink.ErrDumpInterrupted) {
		return
	}
	if msg := err.Error(); msg != w.lastErr {
		w.lastErr = msg
		w.log.Warn("link change subscription failed; carrier transitions may be missed until it is renewed", "err", err)
	}
}

// transitions returns the transitions counted for the link with index, and whether the
// subscription knows that link.
func (w *carrierWatcher) transitions(index int32) (uint64, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	st, ok := w.links[index]
	if !ok {
		return 0, false
	}
	return st.transitions, true
}

// isLive reports whether the subscription is running.
func (w *carrierWatcher) isLive() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.live
}

// stop ends the subscription and waits for its reader to return.
func (w *carrierWatcher) stop() {
	w.mu.Lock()
	w.stopping = true
	done, finished := w.done, w.finished
	w.done = nil
	w.mu.Unlock()
	if done != nil {
		close(done)
	}
	if finished != nil {
		<-finished
	}
}
