package nic

// logKinds remembers which kinds of a repeated condition have been logged, so that each kind is
// logged once whatever values its occurrences carry (a sender's port id, an errno, a link index):
// keyed by the message text, every new value would be logged as a new condition. The zero value
// is ready to use.
type logKinds struct{ seen map[string]struct{} }

// Kinds of repeated conditions.
const (
	kindForeignSender  = "foreign sender"         // a message on the subscription not sent by the kernel
	kindMalformed      = "malformed notification" // a kernel message on the subscription that does not parse
	kindKernelError    = "kernel error"           // an NLMSG_ERROR on the subscription
	kindReceive        = "receive"                // the subscription's socket failed
	kindSubscribe      = "subscribe"              // the subscription could not start
	kindMalformedDump  = "malformed dump"         // a link in the collection's dump that does not parse
	kindInfiniBandList = "infiniband list"        // class/infiniband could not be listed
)

// first reports whether kind has not been logged yet, and remembers that it now is.
func (k *logKinds) first(kind string) bool {
	if _, ok := k.seen[kind]; ok {
		return false
	}
	if k.seen == nil {
		k.seen = map[string]struct{}{}
	}
	k.seen[kind] = struct{}{}
	return true
}

// forget lets kind be logged again: the condition ended, and its return is news.
func (k *logKinds) forget(kind string) { delete(k.seen, kind) }
