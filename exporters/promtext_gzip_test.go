package exporters

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"runtime"
	"testing"
)

// TestGzipBorrowsLittleMemory: a gzipped scrape after a GC (which empties the writers' pool, as
// happens between most scrapes of an agent that allocates little) must not allocate a fresh
// compressor of over 1 MiB, which used to be most of the agent's heap. The answer is still a gzip
// stream any reader takes.
func TestGzipBorrowsLittleMemory(t *testing.T) {
	var text bytes.Buffer
	for i := range 4000 {
		fmt.Fprintf(&text, "hw_power_watts{gpu_index=\"%d\",hw_id=\"GPU-%08x\"} %d.%d\n", i%8, i*7919, 300+i%400, i%10)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&before)
	c := &exposition{text: text.Bytes()}
	gz, err := c.gzipText()
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 512<<10 {
		t.Errorf("one gzipped exposition of %d KiB allocated %d KiB, want ≤ 512 KiB", text.Len()>>10, alloc>>10)
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	plain, err := io.ReadAll(zr)
	if err != nil || !bytes.Equal(plain, text.Bytes()) {
		t.Fatalf("the gzip stream does not give the text back (%v)", err)
	}
	if len(gz) > text.Len()/3 {
		t.Errorf("compressed to %d of %d bytes: hardly compressed", len(gz), text.Len())
	}
	t.Logf("%d KiB → %d KiB, %d KiB allocated", text.Len()>>10, len(gz)>>10, (after.TotalAlloc-before.TotalAlloc)>>10)
}
