package exporters

import (
	"bytes"
	"fmt"
	"io"
	"runtime"
	"testing"

	"google.golang.org/grpc/encoding"
)

// TestGRPCGzipBorrowsLittleMemory: the compressor gRPC uses for OTLP's "gzip" is the stateless
// one; a message compressed after a GC (a pool emptied, as between two exports 10 s apart) does
// not allocate a fresh compressor of over 1 MiB, and the stream reads back through the same
// compressor.
func TestGRPCGzipBorrowsLittleMemory(t *testing.T) {
	c := encoding.GetCompressor("gzip")
	if c == nil {
		t.Fatal("no gzip compressor registered with gRPC")
	}
	var msg bytes.Buffer
	for i := range 4000 {
		fmt.Fprintf(&msg, "\x0ahw.power\x12GPU-%08x\x19%d.%d", i*7919, 300+i%400, i%10)
	}
	var out bytes.Buffer
	out.Grow(msg.Len())
	var before, after runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&before)
	w, err := c.Compress(&out)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(msg.Bytes()); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 512<<10 {
		t.Errorf("compressing a %d KiB message allocated %d KiB, want ≤ 512 KiB", msg.Len()>>10, alloc>>10)
	}
	r, err := c.Decompress(bytes.NewReader(out.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	back, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(back, msg.Bytes()) {
		t.Fatalf("the message does not read back (%v)", err)
	}
	if out.Len() > msg.Len()/2 {
		t.Errorf("compressed to %d of %d bytes: hardly compressed", out.Len(), msg.Len())
	}
}
