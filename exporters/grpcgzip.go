package exporters

import (
	"io"

	"github.com/klauspost/compress/gzip"
	"google.golang.org/grpc/encoding"
)

// OTLP over gRPC compresses with the compressor gRPC has registered as "gzip". gRPC's own wraps
// the standard library's writer, which holds over 1 MiB of tables at every level and which its
// pool loses at every GC: for an agent that exports every 10 s, a fresh megabyte per export and
// the largest part of its heap. This one compresses statelessly (about 300 KiB borrowed for the
// length of one message, gRPC writes a message at once) and replaces gRPC's: registered here, after
// gRPC's gzip package, whose init runs first because this package imports the OTLP exporter
// that imports it, it is the one gRPC finds by name.
func init() { encoding.RegisterCompressor(statelessGzip{}) }

type statelessGzip struct{}

func (statelessGzip) Name() string { return "gzip" }

func (statelessGzip) Compress(w io.Writer) (io.WriteCloser, error) {
	z := gzipWriters.Get().(*gzip.Writer)
	z.Reset(w)
	return &pooledGzip{Writer: z}, nil
}

// pooledGzip gives its writer back to the pool when the message is complete.
type pooledGzip struct{ *gzip.Writer }

func (p *pooledGzip) Close() error {
	err := p.Writer.Close()
	p.Reset(nil)
	gzipWriters.Put(p.Writer)
	return err
}

// Decompress reads a compressed response; OTLP export responses are a few bytes and seldom
// compressed, so readers are not pooled.
func (statelessGzip) Decompress(r io.Reader) (io.Reader, error) { return gzip.NewReader(r) }
