package gnet

import (
	"encoding/binary"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestTCPClientThatDoesNotRead: a client pipelining queries without reading
// the answers is disconnected once its backlog passes the bound, instead of
// growing the server's memory with everything it sends (found in review: 293
// MB of heap for 38 MB of queries).
func TestTCPClientThatDoesNotRead(t *testing.T) {
	s := startServer(t, Config{Name: "t", Addrs: []string{freePort(t, "127.0.0.1")}})
	addr := s.Addrs()[0]
	m := new(dns.Msg).SetQuestion("aws.example.internal.", dns.TypeANY)
	q, _ := m.Pack()
	frame := binary.BigEndian.AppendUint16(nil, uint16(len(q)))
	frame = append(frame, q...)
	var batch []byte
	for range 10000 {
		batch = append(batch, frame...)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.(*net.TCPConn).SetReadBuffer(4096)
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.HeapInuse
	// ~4 s alone; much longer under -race with every package testing at
	// once. The deadline is per batch: a slow server is fine, a server that
	// stops reading without closing is not.
	var werr error
	for range 100 { // up to 1M queries, ~40 MB
		_ = c.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if _, werr = c.Write(batch); werr != nil {
			break
		}
	}
	if werr == nil {
		t.Fatal("the server kept reading queries from a client that never reads answers")
	}
	if ne, ok := werr.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the server neither read nor closed for 30 s: %v", werr)
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	if grew := int64(ms.HeapInuse) - int64(before); grew > 64<<20 {
		t.Fatalf("server heap grew by %d MB", grew>>20)
	}
	if s.Stats().TCPBacklogClosed == 0 {
		t.Fatal("backlog close not counted")
	}
}
