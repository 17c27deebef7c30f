package upstream

import (
	"bytes"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder/upstream/upstreamtest"
)

// writerConn counts the writes made from writeInline, by the goroutine that
// submitted, and those made by the connection's writer goroutine.
type writerConn struct {
	net.Conn
	inline, writer *atomic.Int32
}

func (w writerConn) Write(b []byte) (int, error) {
	stack := make([]byte, 8<<10)
	stack = stack[:runtime.Stack(stack, false)]
	switch {
	case bytes.Contains(stack, []byte("(*h2Conn).writeInline(")):
		w.inline.Add(1)
	case bytes.Contains(stack, []byte("(*h2Conn).writeLoop(")):
		w.writer.Add(1)
	}
	return w.Conn.Write(b)
}

// TestDoHSubmitWritesInlineWhenIdle: a Submit on a connection with nothing
// in flight writes its request itself; under load the writer batches
// requests as before, and every query is answered either way.
func TestDoHSubmitWritesInlineWhenIdle(t *testing.T) {
	release := make(chan struct{})
	var held atomic.Bool
	f := upstreamtest.StartFakeH2(t, nil, func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) {
		if held.Load() {
			<-release // keep the burst's streams open
		}
		fc.Respond(id, q)
	})
	u := newTestDoH(t, f.URL(), Options{Conns: 1, Timeout: 5 * time.Second})
	var inline, writer atomic.Int32
	u.wrapConn = func(nc net.Conn) net.Conn { return writerConn{Conn: nc, inline: &inline, writer: &writer} }

	// Lone queries, one after the other.
	const lone = 5
	b := newAsyncBurst(t, u, lone, numberedNames("lone"))
	for i := range lone {
		b.submit(i, 0)
		waitFor(t, "the lone query's answer", func() bool { return b.calls[i].calls.Load() == 1 })
		// The first Submit finds no connection and waits in the pool's
		// queue; the dial hands it to the writer.
	}
	b.wait(t, 5*time.Second)
	for i := range b.calls {
		if c := &b.calls[i]; c.err != nil {
			t.Fatalf("lone query %d: %v", i, c.err)
		}
	}
	if got := inline.Load(); got < lone-1 {
		t.Fatalf("%d of %d lone queries written inline (writer: %d writes)", got, lone, writer.Load())
	}

	// A burst while the server holds the first request: the others find
	// a stream in flight and go to the writer.
	inline.Store(0)
	writer.Store(0)
	held.Store(true)
	const burst = 40
	b = newAsyncBurst(t, u, burst, numberedNames("burst"))
	for i := range burst {
		b.submit(i, 0)
	}
	waitFor(t, "the writer to send the burst", func() bool { return writer.Load() > 0 })
	close(release)
	b.wait(t, 5*time.Second)
	for i := range b.calls {
		if c := &b.calls[i]; c.err != nil {
			t.Fatalf("burst query %d: %v", i, c.err)
		}
	}
	if got := inline.Load(); got > 1 {
		t.Fatalf("%d writes of the burst inline, want at most the first", got)
	}
}
