package doq

import (
	"context"
	"encoding/binary"
	"io"
	"testing"

	"xdoh/datapath/internal/pipetest"
)

// BenchmarkCacheHit: one query at a time, each on its own stream of one
// DoQ connection, answered from the cache. The allocations counted include
// the client's and quic-go's on both sides.
func BenchmarkCacheHit(b *testing.B) {
	s := start(b, Config{}, pipetest.Forwarder(b, &pipetest.Upstream{}, nil))
	c := mustDial(b, s)
	q := frame(pipetest.Query(b, "hit.example.org", 0))
	resp := make([]byte, 512)
	ctx := context.Background()
	roundTrip := func() {
		st, err := c.OpenStreamSync(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := st.Write(q); err != nil {
			b.Fatal(err)
		}
		st.Close()
		if _, err := io.ReadFull(st, resp[:2]); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(st, resp[:binary.BigEndian.Uint16(resp)]); err != nil {
			b.Fatal(err)
		}
	}
	roundTrip() // fills the cache
	b.ReportAllocs()
	for b.Loop() {
		roundTrip()
	}
}
