package exporters

import (
	"bytes"
	"os"
	"sync"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/procfs"
)

// processMetrics is client_golang's process collector (the same process_* names, help, types
// and values) made cheap to scrape. client_golang's re-reads and parses all of /proc/stat on
// every scrape for the boot time (one line per CPU: big on a many-core GPU node) and allocates
// each file it reads; this one reads the boot time once and its files into buffers it keeps.
type processMetrics struct {
	cpuTotal, openFDs, maxFDs, vsize, maxVsize, rss, startTime, inBytes, outBytes *prometheus.Desc

	// bootTime is the host's boot time, seconds since the epoch, read once.
	bootTime float64
	pageSize float64

	mu  sync.Mutex
	buf []byte
}

// userHZ is the clock tick of /proc/PID/stat's times, as procfs takes it.
const userHZ = 100

// newProcessCollector returns processMetrics, or client_golang's process collector where /proc
// does not give the boot time.
func newProcessCollector() prometheus.Collector {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})
	}
	st, err := fs.Stat()
	if err != nil {
		return collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})
	}
	d := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, nil) }
	return &processMetrics{
		cpuTotal:  d("process_cpu_seconds_total", "Total user and system CPU time spent in seconds."),
		openFDs:   d("process_open_fds", "Number of open file descriptors."),
		maxFDs:    d("process_max_fds", "Maximum number of open file descriptors."),
		vsize:     d("process_virtual_memory_bytes", "Virtual memory size in bytes."),
		maxVsize:  d("process_virtual_memory_max_bytes", "Maximum amount of virtual memory available in bytes."),
		rss:       d("process_resident_memory_bytes", "Resident memory size in bytes."),
		startTime: d("process_start_time_seconds", "Start time of the process since unix epoch in seconds."),
		inBytes:   d("process_network_receive_bytes_total", "Number of bytes received by the process over the network."),
		outBytes:  d("process_network_transmit_bytes_total", "Number of bytes sent by the process over the network."),
		bootTime:  float64(st.BootTime),
		pageSize:  float64(os.Getpagesize()),
		buf:       make([]byte, 0, 8192),
	}
}

// Describe implements prometheus.Collector.
func (p *processMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{p.cpuTotal, p.openFDs, p.maxFDs, p.vsize, p.maxVsize, p.rss, p.startTime, p.inBytes, p.outBytes} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. As client_golang's (without ReportErrors), a
// metric it cannot read is left out.
func (p *processMetrics) Collect(ch chan<- prometheus.Metric) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if f, ok := p.stat(); ok {
		ch <- prometheus.MustNewConstMetric(p.cpuTotal, prometheus.CounterValue, float64(f.utime+f.stime)/userHZ)
		ch <- prometheus.MustNewConstMetric(p.vsize, prometheus.GaugeValue, float64(f.vsize))
		ch <- prometheus.MustNewConstMetric(p.rss, prometheus.GaugeValue, float64(f.rss)*p.pageSize)
		ch <- prometheus.MustNewConstMetric(p.startTime, prometheus.GaugeValue, p.bootTime+float64(f.starttime)/userHZ)
	}
	if n, ok := p.fds(); ok {
		ch <- prometheus.MustNewConstMetric(p.openFDs, prometheus.GaugeValue, float64(n))
	}
	var files, as syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &files) == nil && syscall.Getrlimit(syscall.RLIMIT_AS, &as) == nil {
		ch <- prometheus.MustNewConstMetric(p.maxFDs, prometheus.GaugeValue, float64(files.Cur))
		ch <- prometheus.MustNewConstMetric(p.maxVsize, prometheus.GaugeValue, float64(as.Cur))
	}
	if in, out, ok := p.netstat(); ok {
		ch <- prometheus.MustNewConstMetric(p.inBytes, prometheus.CounterValue, in)
		ch <- prometheus.MustNewConstMetric(p.outBytes, prometheus.CounterValue, out)
	}
}

// procStat is what the collector takes from /proc/self/stat.
type procStat struct {
	utime, stime, starttime, vsize, rss uint64
}

// stat reads /proc/self/stat.
func (p *processMetrics) stat() (procStat, bool) {
	var f procStat
	b, ok := p.read("/proc/self/stat")
	if !ok {
		return f, false
	}
	// The command name in parentheses may hold spaces: fields count from after the last ')',
	// where field 3 (state) begins.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return f, false
	}
	fields := 0
	for field := range bytes.FieldsSeq(b[i+1:]) {
		var dst *uint64
		switch fields + 3 {
		case 14:
			dst = &f.utime
		case 15:
			dst = &f.stime
		case 22:
			dst = &f.starttime
		case 23:
			dst = &f.vsize
		case 24:
			dst = &f.rss
		}
		fields++
		if dst == nil {
			continue
		}
		v, ok := parseDecimal(field)
		if !ok {
			return f, false
		}
		*dst = v
	}
	return f, fields+3 >= 24
}

// fds counts the entries of /proc/self/fd (the descriptor reading it included, as procfs
// counts them).
func (p *processMetrics) fds() (int, bool) {
	fd, err := syscall.Open("/proc/self/fd", syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return 0, false
	}
	defer syscall.Close(fd) //nolint:errcheck // read-only
	n := 0
	buf := p.buf[:cap(p.buf)]
	for {
		m, err := syscall.ReadDirent(fd, buf)
		if err != nil {
			return 0, false
		}
		if m <= 0 {
			return n, true
		}
		// linux_dirent64: ino (8), off (8), reclen (2), type (1), name NUL-terminated.
		for off := 0; off+19 < m; {
			reclen := int(buf[off+16]) | int(buf[off+17])<<8
			if reclen == 0 {
				return 0, false
			}
			name := buf[off+19 : off+reclen]
			if !bytes.HasPrefix(name, []byte(".\x00")) && !bytes.HasPrefix(name, []byte("..\x00")) {
				n++
			}
			off += reclen
		}
	}
}

// netstat reads IpExt's InOctets and OutOctets from /proc/self/net/netstat.
func (p *processMetrics) netstat() (in, out float64, ok bool) {
	b, ok := p.read("/proc/self/net/netstat")
	if !ok {
		return 0, 0, false
	}
	// Each section is a line of names and a line of values, both prefixed "IpExt: ".
	prefix := []byte("IpExt:")
	i := bytes.Index(b, prefix)
	if i < 0 {
		return 0, 0, true
	}
	names, rest, _ := bytes.Cut(b[i:], []byte("\n"))
	values, _, _ := bytes.Cut(rest, []byte("\n"))
	if !bytes.HasPrefix(values, prefix) {
		return 0, 0, false
	}
	var nameFields [64][]byte
	k := 0
	for f := range bytes.FieldsSeq(names[len(prefix):]) {
		if k == len(nameFields) {
			break
		}
		nameFields[k] = f
		k++
	}
	j := 0
	for f := range bytes.FieldsSeq(values[len(prefix):]) {
		if j == k {
			break
		}
		switch string(nameFields[j]) {
		case "InOctets":
			v, _ := parseDecimal(f)
			in = float64(v)
		case "OutOctets":
			v, _ := parseDecimal(f)
			out = float64(v)
		}
		j++
	}
	return in, out, true
}

// read reads the whole of a small /proc file into the collector's buffer.
func (p *processMetrics) read(path string) ([]byte, bool) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, false
	}
	defer syscall.Close(fd) //nolint:errcheck // read-only
	b := p.buf[:0]
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := syscall.Read(fd, b[len(b):cap(b)])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, false
		}
		if n == 0 {
			break
		}
		b = b[:len(b)+n]
	}
	p.buf = b[:0]
	return b, true
}

// parseDecimal parses an unsigned decimal number.
func parseDecimal(b []byte) (uint64, bool) {
	if len(b) == 0 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
	}
	return v, true
}
