package upstream

import (
	"sync/atomic"
	"testing"
	"time"

	"xdoh/forwarder/upstream/upstreamtest"
)

// A cancelled DoH query's open stream is reset (the server's request
// context ends), its callback is never called, its stream slot is free at
// once, and its connection is not suspected: no PING, the next queries use
// it. Cancel after an answer, and a second Cancel, do nothing.
func TestDoHSubmitCancel(t *testing.T) {
	srv := upstreamtest.StartDoHServer(t, true)
	u := newTestDoH(t, srv.URL+"/dns-query", Options{Conns: 1, Timeout: 300 * time.Millisecond})
	warmUp(t, u)
	conn := u.pool.slots[0].conn.Load()
	conn.mu.Lock()
	pingsBefore := conn.pingSent
	conn.mu.Unlock()
	before := srv.Requests.Load()

	var called atomic.Int32
	h := u.Submit(makeQuery(t, "slow.example.", 7), 0, func([]byte, error) { called.Add(1) })
	if h == nil {
		t.Fatal("Submit returned no Canceler for a query in flight")
	}
	waitFor(t, "the request reaching the server", func() bool { return srv.Requests.Load() > before })
	h.Cancel()
	if n := conn.inflight.Load(); n != 0 {
		t.Errorf("%d streams held right after Cancel, want 0", n)
	}
	select {
	case <-srv.Canceled: // the server saw our RST_STREAM
	case <-time.After(5 * time.Second):
		t.Fatal("the server's request was not cancelled: no RST_STREAM")
	}
	h.Cancel()
	time.Sleep(500 * time.Millisecond) // past the query's timeout
	if n := called.Load(); n != 0 {
		t.Fatalf("done called %d times after Cancel", n)
	}
	conn.mu.Lock()
	pinged := conn.pingSent != pingsBefore
	conn.mu.Unlock()
	if pinged || conn.closing.Load() {
		t.Errorf("a cancel made the connection suspect (PING sent %v, closing %v)", pinged, conn.closing.Load())
	}

	got := make(chan []byte, 1)
	h = u.Submit(makeQuery(t, "after.example.", 8), 0, func(resp []byte, err error) {
		if err != nil {
			t.Error(err)
		}
		got <- resp
	})
	var resp []byte
	select {
	case resp = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("no answer on the connection after a cancel")
	}
	h.Cancel() // answered already: nothing happens
	checkAnswer(t, resp, "after.example.", 8)
	if u.pool.slots[0].conn.Load() != conn || srv.Conns.Load() != 1 {
		t.Errorf("the connection was replaced (%d dialled)", srv.Conns.Load())
	}
}

// A cancelled Do53 query's ID is withdrawn from its socket, so that a late
// answer is dropped, and its callback is never called.
func TestDo53SubmitCancel(t *testing.T) {
	for _, tcp := range []bool{false, true} {
		t.Run(map[bool]string{false: "udp", true: "tcp"}[tcp], func(t *testing.T) {
			f := upstreamtest.StartDo53Fault(t, nil, upstreamtest.TCPIgnoreAll)
			target := f.Target(tcp)
			u := newTestDo53(t, target, Options{Conns: 1, Timeout: 300 * time.Millisecond})
			warmDo53(t, u)
			var called atomic.Int32
			h := u.Submit(makeQuery(t, "silent.example.", 9), 0, func([]byte, error) { called.Add(1) })
			if h == nil {
				t.Fatal("Submit returned no Canceler for a query in flight")
			}
			waitFor(t, "the query reaching the server", func() bool {
				return f.UDPQueries.Load()+f.TCPQueries.Load() > 0
			})
			a := h.(*asyncQuery)
			a.mu.Lock()
			c := a.c
			a.mu.Unlock()
			if c == nil {
				t.Fatal("the query is registered nowhere")
			}
			h.Cancel()
			c.mu.Lock()
			left := len(c.waiters)
			c.mu.Unlock()
			if left != 0 {
				t.Errorf("%d queries still registered on the socket after Cancel", left)
			}
			h.Cancel()
			time.Sleep(500 * time.Millisecond) // past the timeout
			if n := called.Load(); n != 0 {
				t.Fatalf("done called %d times after Cancel", n)
			}
		})
	}
}
