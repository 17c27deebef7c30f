package upstream

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder/upstream/upstreamtest"
)

// TestDo53TCPReaderWritesOut: the queries that answer callbacks submit
// leave in the reader's own write; when the socket cannot take them all
// (the server stops reading for a while) the writer sends the rest, in
// order, and every query is answered. The server answers none of them
// before it has read them all, so the reader gets no answers to write
// out more on: the writer must.
func TestDo53TCPReaderWritesOut(t *testing.T) {
	const n = 3000
	var (
		srv  atomic.Pointer[upstreamtest.TCPDNSServer] // set before the first query
		hold sync.Once
		held []*dns.Msg
	)
	srv.Store(upstreamtest.StartTCPDNSServer(t, func(conn int, q *dns.Msg) upstreamtest.TCPAction {
		if q.Question[0].Name == "first.example." {
			return upstreamtest.TCPAnswer
		}
		// The client's send buffer fills meanwhile. Only this connection's
		// goroutine runs here.
		hold.Do(func() { time.Sleep(200 * time.Millisecond) })
		held = append(held, q)
		if len(held) == n {
			for _, q := range held {
				upstreamtest.WriteFrame(srv.Load().Conn(conn), upstreamtest.MustPack(upstreamtest.AnswerFor(q)))
			}
		}
		return upstreamtest.TCPIgnore
	}))
	up, err := New("tcp://"+srv.Load().Addr(), Options{Conns: 1, Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	u := up.(*Do53)
	u.maxInflight = n

	// Padded queries: n of them are several times what loopback buffers hold.
	query := func(name string) []byte {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		m.SetEdns0(1232, false)
		opt := m.IsEdns0()
		opt.Option = append(opt.Option, &dns.EDNS0_PADDING{Padding: make([]byte, 8000)})
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var wg sync.WaitGroup
	var failed atomic.Int32
	var firstErr atomic.Pointer[error]
	wg.Add(n + 1)
	u.Submit(query("first.example."), 0, func(_ []byte, err error) {
		defer wg.Done()
		if err != nil {
			t.Errorf("first query: %v", err)
			return
		}
		for i := range n { // on the reader's goroutine, as a closed loop does
			u.Submit(query(fmt.Sprintf("q%d.example.", i)), 0, func(_ []byte, err error) {
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, &err)
				}
				wg.Done()
			})
		}
	})
	wg.Wait()
	if f := failed.Load(); f > 0 {
		t.Fatalf("%d of %d queries failed, first: %v", f, n, *firstErr.Load())
	}
}
