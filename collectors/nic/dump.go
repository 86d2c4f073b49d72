package nic

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// conn is the part of a netlink socket a link dump uses. *nl.NetlinkSocket is one; tests wrap it
// to count the requests that reach the kernel.
type conn interface {
	Send(*nl.NetlinkRequest) error
	Receive() ([]syscall.NetlinkMessage, *unix.SockaddrNetlink, error)
	GetPid() (uint32, error)
	SetReceiveTimeout(*unix.Timeval) error
	Close()
}

// defaultDumpTimeout bounds a dump when the collection's context has no deadline.
const defaultDumpTimeout = 5 * time.Second

// errDumpInterrupted says the link list changed while the kernel dumped it; the links it holds
// are each consistent, only the list may miss or repeat a link.
var errDumpInterrupted = errors.New("link dump interrupted by a change of the link list")

// maxDrainMessages bounds the messages read to finish an abandoned dump: far more than the
// largest link list in any chunking, so it only stops a socket that never says NLMSG_DONE.
const maxDrainMessages = 1 << 20

// dumpLinks sends one RTM_GETLINK dump request and calls fn with each RTM_NEWLINK answer (the
// ifinfomsg and its attributes). One request per collection, whatever the number of links,
// is what keeps a host with hundreds of links cheap.
//
// *pending is true while a dump this socket started has not been read to its end: the kernel
// answers every dump request on that socket with EBUSY until then, so a dump abandoned at its
// deadline (or a receive error) is drained up to its NLMSG_DONE before the next request.
func dumpLinks(ctx context.Context, c conn, pid uint32, pending *bool, fn func(data []byte)) error {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(defaultDumpTimeout)
	}
	wait := max(time.Until(deadline), time.Millisecond)
	tv := unix.NsecToTimeval(wait.Nanoseconds())
	if err := c.SetReceiveTimeout(&tv); err != nil {
		return fmt.Errorf("setting the netlink receive timeout: %w", err)
	}
	if *pending {
		if err := drainDump(ctx, c, pid); err != nil {
			if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) && ctx.Err() == nil {
				// The socket itself failed: draining it cannot help, the request says why.
				*pending = false
			}
			if *pending {
				return fmt.Errorf("draining an abandoned link dump: %w", err)
			}
		}
		*pending = false
	}
	// No IFLA_EXT_MASK: without RTEXT_FILTER_VF the kernel leaves out the per-VF data of SR-IOV
	// NICs, which would multiply the size of the dump.
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_DUMP)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	if err := c.Send(req); err != nil {
		return fmt.Errorf("sending the RTM_GETLINK dump request: %w", err)
	}
	// Until its NLMSG_DONE is read, whatever ends this function leaves the dump on the socket.
	*pending = true
	interrupted := false
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("receiving the link dump: %w", err)
		}
		msgs, from, err := c.Receive()
		if err != nil {
			return fmt.Errorf("receiving the link dump: %w", err)
		}
		if from.Pid != nl.PidKernel {
			continue
		}
		for i := range msgs {
			m := &msgs[i]
			if m.Header.Seq != req.Seq || m.Header.Pid != pid {
				continue
			}
			if m.Header.Flags&unix.NLM_F_DUMP_INTR != 0 {
				interrupted = true
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE, unix.NLMSG_ERROR:
				*pending = false
				if errno := doneErrno(m); errno != 0 {
					// EBUSY: another dump (not ours to know of) still runs on the socket.
					*pending = errno == syscall.EBUSY
					return fmt.Errorf("kernel answered the link dump with: %w", errno)
				}
				if interrupted {
					return errDumpInterrupted
				}
				return nil
			case unix.RTM_NEWLINK:
				fn(m.Data)
			}
		}
	}
}

// drainDump reads and discards what an abandoned dump left on the socket, up to its end.
func drainDump(ctx context.Context, c conn, pid uint32) error {
	for n := 0; n < maxDrainMessages; {
		if err := ctx.Err(); err != nil {
			return err
		}
		msgs, from, err := c.Receive()
		if err != nil {
			return err
		}
		if from.Pid != nl.PidKernel {
			continue
		}
		for i := range msgs {
			n++
			m := &msgs[i]
			if m.Header.Pid != pid {
				continue
			}
			if endsDump(m) {
				return nil
			}
		}
	}
	return fmt.Errorf("no end after %d messages", maxDrainMessages)
}

// endsDump reports whether m is the end of a dump: its NLMSG_DONE, or an NLMSG_ERROR other than
// the EBUSY that refused a later request while the dump ran.
func endsDump(m *syscall.NetlinkMessage) bool {
	return m.Header.Type == unix.NLMSG_DONE || m.Header.Type == unix.NLMSG_ERROR && doneErrno(m) != syscall.EBUSY
}

// doneErrno is the error an NLMSG_DONE or NLMSG_ERROR message carries, 0 for none.
func doneErrno(m *syscall.NetlinkMessage) syscall.Errno {
	if len(m.Data) >= 4 {
		if errno := int32(binary.NativeEndian.Uint32(m.Data[:4])); errno != 0 {
			return syscall.Errno(-errno)
		}
	}
	return 0
}

// linkMsg is what one RTM_NEWLINK message says about a link. Byte slices point into the message.
type linkMsg struct {
	index          int32
	flags          uint32
	name           []byte
	kind           []byte
	mtu            uint32
	operState      uint8
	carrier        int8  // -1 when the kernel did not say
	carrierChanges int64 // -1 when the kernel did not say (before Linux 3.15)
	hasStats       bool
	stats          stats64
}

// stats64 holds the first eight fields of struct rtnl_link_stats64, in its order.
type stats64 struct {
	rxPackets, txPackets, rxBytes, txBytes, rxErrors, txErrors, rxDropped, txDropped uint64
}

const ifinfomsgLen = 16 // struct ifinfomsg, already 4-byte aligned

// parseLink decodes the attributes the collector needs in one pass, without allocating. It
// parses by hand because the netlink package's LinkDeserialize neither exposes IFLA_CARRIER nor
// IFLA_CARRIER_CHANGES, and decodes far more (and allocates) than a collection needs.
func parseLink(data []byte, m *linkMsg) error {
	if len(data) < ifinfomsgLen {
		return fmt.Errorf("RTM_NEWLINK message of %d bytes is shorter than its ifinfomsg", len(data))
	}
	*m = linkMsg{carrier: -1, carrierChanges: -1}
	m.index = int32(binary.NativeEndian.Uint32(data[4:8]))
	m.flags = binary.NativeEndian.Uint32(data[8:12])
	err := eachAttr(data[ifinfomsgLen:], func(typ uint16, v []byte) {
		switch typ {
		case unix.IFLA_IFNAME:
			m.name = cString(v)
		case unix.IFLA_MTU:
			if len(v) >= 4 {
				m.mtu = binary.NativeEndian.Uint32(v)
			}
		case unix.IFLA_OPERSTATE:
			if len(v) >= 1 {
				m.operState = v[0]
			}
		case unix.IFLA_CARRIER:
			if len(v) >= 1 {
				m.carrier = int8(v[0])
			}
		case unix.IFLA_CARRIER_CHANGES:
			if len(v) >= 4 {
				m.carrierChanges = int64(binary.NativeEndian.Uint32(v))
			}
		case unix.IFLA_STATS64:
			if len(v) >= 64 {
				s := &m.stats
				for i, p := range [8]*uint64{&s.rxPackets, &s.txPackets, &s.rxBytes, &s.txBytes,
					&s.rxErrors, &s.txErrors, &s.rxDropped, &s.txDropped} {
					*p = binary.NativeEndian.Uint64(v[8*i:])
				}
				m.hasStats = true
			}
		case unix.IFLA_LINKINFO:
			_ = eachAttr(v, func(typ uint16, v []byte) {
				if typ == unix.IFLA_INFO_KIND {
					m.kind = cString(v)
				}
			})
		}
	})
	if err != nil {
		return fmt.Errorf("link %d: %w", m.index, err)
	}
	if len(m.name) == 0 {
		return fmt.Errorf("link %d: RTM_NEWLINK without IFLA_IFNAME", m.index)
	}
	return nil
}

// eachAttr calls fn for each rtattr of b.
func eachAttr(b []byte, fn func(typ uint16, v []byte)) error {
	for len(b) >= unix.SizeofRtAttr {
		n := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if n < unix.SizeofRtAttr || n > len(b) {
			return fmt.Errorf("malformed rtattr of length %d with %d bytes left", n, len(b))
		}
		fn(typ, b[unix.SizeofRtAttr:n])
		n = (n + unix.RTA_ALIGNTO - 1) &^ (unix.RTA_ALIGNTO - 1)
		if n >= len(b) {
			return nil
		}
		b = b[n:]
	}
	return nil
}

// cString trims a NUL-terminated attribute value.
func cString(v []byte) []byte {
	for i, c := range v {
		if c == 0 {
			return v[:i]
		}
	}
	return v
}
