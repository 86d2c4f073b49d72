package nic

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/capstan-power/capstan/internal/panics"
)

// carrierWatcher counts carrier transitions from an rtnetlink link subscription. The kernel
// notifies every change of a link's flags as it happens, so a link that goes down and up again
// between two collections, which both see up, is still counted.
//
// The watcher reads its socket itself rather than through the netlink package's LinkSubscribe:
// any process with CAP_NET_ADMIN may send to the RTNLGRP_LINK group, and does whenever it
// subscribes with that package (its listing request goes to the socket's own address, which
// names the group). The package's reader fails its whole receive on a foreign datagram it cannot
// parse, before looking at the sender, and ends the subscription; here a message whose sender is
// not the kernel is counted and skipped, whatever it holds.
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
	logged   logKinds
	// foreign counts the messages skipped because the kernel did not send them.
	foreign uint64
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

// datagramBuffer holds one datagram of the subscription: the kernel builds link notifications
// and dump chunks well under 64 KiB; a longer one is cut and skipped as malformed.
const datagramBuffer = 1 << 16

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
	sock, err := subscribeLinks(w.ns)
	if err != nil {
		return err
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	w.mu.Lock()
	w.live, w.done, w.finished = true, done, finished
	w.mu.Unlock()
	panics.Go("nic link subscription closer", func() {
		<-done
		sock.Close()
	})
	panics.Go("nic link subscription", func() {
		defer close(finished)
		w.read(sock)
		w.mu.Lock()
		w.live = false
		w.mu.Unlock()
	})
	return nil
}

// subscribeLinks opens a socket in ns bound to RTNLGRP_LINK and asks the kernel, on it, for the
// existing links.
func subscribeLinks(ns netns.NsHandle) (*os.File, error) {
	s, err := nl.SubscribeAt(ns, netns.None(), unix.NETLINK_ROUTE, unix.RTNLGRP_LINK)
	if err != nil {
		return nil, fmt.Errorf("subscribing to link changes (RTNLGRP_LINK): %w", err)
	}
	// A copy of the descriptor that this package owns, to read whole datagrams from it.
	fd, err := unix.FcntlInt(uintptr(s.GetFd()), unix.F_DUPFD_CLOEXEC, 0)
	s.Close()
	if err != nil {
		return nil, fmt.Errorf("duplicating the link subscription's socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, receiveBuffer); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("sizing the link subscription's receive buffer: %w", err)
	}
	// To the kernel alone (port id 0, no group): sent to the socket's own address, as the
	// netlink package's Send does, the request would also reach every other listener of the group.
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_DUMP)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	if err := unix.Sendto(fd, req.Serialize(), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("asking for the existing links on the link subscription: %w", err)
	}
	// The descriptor is non-blocking (as nl opened it): the file waits in the runtime's poller,
	// and closing it ends a pending read.
	return os.NewFile(uintptr(fd), "rtnetlink RTNLGRP_LINK"), nil
}

// read applies the subscription's messages until its socket fails or is closed.
func (w *carrierWatcher) read(sock *os.File) {
	rc, err := sock.SyscallConn()
	if err != nil {
		w.failed(kindReceive, fmt.Errorf("reading the link subscription: %w", err))
		return
	}
	buf := make([]byte, datagramBuffer)
	for {
		var (
			n    int
			from unix.Sockaddr
			rerr error
		)
		err := rc.Read(func(fd uintptr) bool {
			for {
				// MSG_TRUNC: n is the datagram's length even when buf cuts it.
				n, from, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_TRUNC)
				if rerr != unix.EINTR {
					return rerr != unix.EAGAIN
				}
			}
		})
		if err == nil {
			err = rerr
		}
		if err != nil {
			// ENOBUFS: notifications were dropped; the next collection subscribes again, and its
			// listing brings the links up to date.
			w.failed(kindReceive, fmt.Errorf("receiving link changes: %w", err))
			return
		}
		// The sender first: what another process sends is none of the subscription's business,
		// however it is formed.
		if sa, ok := from.(*unix.SockaddrNetlink); !ok || sa.Pid != nl.PidKernel {
			w.skipForeign(from)
			continue
		}
		if n > len(buf) {
			w.skipMalformed(fmt.Errorf("a datagram of %d bytes is longer than the %d read", n, len(buf)))
			continue
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			w.skipMalformed(fmt.Errorf("parsing a datagram of %d bytes: %w", n, err))
			continue
		}
		for i := range msgs {
			w.handle(&msgs[i])
		}
	}
}

// handle applies one kernel message: a link notification or a part of the listing.
func (w *carrierWatcher) handle(m *syscall.NetlinkMessage) {
	switch m.Header.Type {
	case unix.RTM_NEWLINK, unix.RTM_DELLINK:
		if len(m.Data) < ifinfomsgLen {
			w.skipMalformed(fmt.Errorf("link message of %d bytes is shorter than its ifinfomsg", len(m.Data)))
			return
		}
		// The bridge notifies its ports' changes on the same group with family AF_BRIDGE, and
		// deletes them (RTM_DELLINK) when a port leaves it: those say nothing of the link's
		// existence or carrier.
		if m.Data[0] != unix.AF_UNSPEC {
			return
		}
		w.apply(m.Header.Type, int32(binary.NativeEndian.Uint32(m.Data[4:8])), binary.NativeEndian.Uint32(m.Data[8:12]))
	case unix.NLMSG_ERROR:
		// The listing refused; a notification of a change still arrives, and the next
		// collection's dump has the links.
		if errno := doneErrno(m); errno != 0 {
			w.mu.Lock()
			defer w.mu.Unlock()
			if !w.stopping && w.logged.first(kindKernelError) {
				w.log.Warn("the kernel refused to list the links on the link subscription; links are known from their next change",
					"err", errno)
			}
		}
	}
	// NLMSG_DONE ends the listing. One interrupted (NLM_F_DUMP_INTR) may miss a link created
	// meanwhile, whose creation is notified after it.
}

// apply records one notification: a link's lower-up flag (carrier, as the kernel reports it in
// the link's flags) that differs from the last one seen is a transition.
func (w *carrierWatcher) apply(typ uint16, index int32, flags uint32) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if typ == unix.RTM_DELLINK {
		delete(w.links, index)
		return
	}
	lowerUp := flags&unix.IFF_LOWER_UP != 0
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

// failed logs the end of the subscription, once per kind; the next collection subscribes again.
func (w *carrierWatcher) failed(kind string, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopping {
		return
	}
	if w.logged.first(kind) {
		w.log.Warn("link change subscription failed; carrier transitions may be missed until it is renewed", "err", err)
	}
}

// skipForeign counts a message another process sent to the group or to the subscription's port
// id: a normal event (another subscriber's listing request), logged once at debug level.
func (w *carrierWatcher) skipForeign(from unix.Sockaddr) {
	var port uint32
	if sa, ok := from.(*unix.SockaddrNetlink); ok {
		port = sa.Pid
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.foreign++
	if w.logged.first(kindForeignSender) {
		w.log.Debug("skipping link messages not sent by the kernel (another process on the link group); counted, logged once",
			"sender_port_id", port)
	}
}

// skipMalformed skips a kernel message that does not parse; logged once.
func (w *carrierWatcher) skipMalformed(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.logged.first(kindMalformed) {
		w.log.Warn("skipping a malformed link notification", "err", err)
	}
}

// foreignMessages returns how many messages the subscription skipped because the kernel did not
// send them.
func (w *carrierWatcher) foreignMessages() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.foreign
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
