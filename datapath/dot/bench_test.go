package dot

import (
	"bufio"
	"encoding/binary"
	"io"
	"testing"

	"xdoh/datapath/internal/pipetest"
)

// BenchmarkCacheHit: one query at a time through a DoT connection,
// answered from the cache. The allocations counted include the client's.
func BenchmarkCacheHit(b *testing.B) {
	s := start(b, Config{}, pipetest.Forwarder(b, &pipetest.Upstream{}, nil))
	c := dial(b, s)
	q := frame(pipetest.Query(b, "hit.example.org", 1))
	br := bufio.NewReader(c)
	resp := make([]byte, 512)
	roundTrip := func() {
		if _, err := c.Write(q); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(br, resp[:2]); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(br, resp[:binary.BigEndian.Uint16(resp)]); err != nil {
			b.Fatal(err)
		}
	}
	roundTrip() // fills the cache
	b.ReportAllocs()
	for b.Loop() {
		roundTrip()
	}
}
