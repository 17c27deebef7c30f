package upstream

import (
	"context"
	"encoding/binary"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/quic-go/quic-go"

	"xdoh/forwarder/upstream/upstreamtest"
)

// newDoQFor builds a DoQ upstream for target, closed at the end of the
// test, or fails t.
func newDoQFor(t *testing.T, target string, opts Options) *DoQ {
	t.Helper()
	opts.RootCAs = upstreamtest.PKI(t).Pool
	u, err := New(target, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	return u.(*DoQ)
}

// TestDoQStreams: many concurrent queries share one connection, each on a
// stream of its own (client-initiated, bidirectional), with ID 0 on the
// wire and the caller's ID in the answer.
func TestDoQStreams(t *testing.T) {
	var mu sync.Mutex
	ids := map[quic.StreamID]bool{}
	s := upstreamtest.StartDoQServer(t, upstreamtest.DoQServerOptions{}, func(r *upstreamtest.DoQQuery) {
		mu.Lock()
		ids[r.Stream.StreamID()] = true
		mu.Unlock()
		if binary.BigEndian.Uint16(r.Wire) != 0 {
			t.Errorf("query for %s with ID %#x on the wire, want 0", r.Msg.Question[0].Name, r.Msg.Id)
		}
		r.Answer(upstreamtest.AnswerFor(r.Msg))
	})
	u := newDoQFor(t, s.URL(), Options{Conns: 1, Timeout: 5 * time.Second})
	const n = 250 // more than the server's 100 streams at a time, fewer than the 256 that may wait
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		q := makeQuery(t, "stream.example.", uint16(0x1000+i))
		u.Submit(q, 0, func(resp []byte, err error) {
			defer wg.Done()
			if err != nil {
				t.Errorf("query %d: %v", i, err)
				return
			}
			checkAnswer(t, resp, "stream.example.", uint16(0x1000+i))
		})
	}
	wg.Wait()
	mu.Lock() // the server's goroutines wrote it; the network is no happens-before
	defer mu.Unlock()
	if c := s.NConn.Load(); c != 1 {
		t.Errorf("%d connections, want 1", c)
	}
	if len(ids) != n || s.Streams.Load() != n {
		t.Errorf("%d distinct streams (%d accepted) for %d queries, want one each", len(ids), s.Streams.Load(), n)
	}
	for id := range ids {
		if id%4 != 0 {
			t.Errorf("stream %d is not client-initiated and bidirectional", id)
		}
	}
	if z := s.NonZeroIDs.Load(); z != 0 {
		t.Errorf("%d queries with a message ID other than 0", z)
	}
}

// TestDoQStreamLimit: a server that allows 2 streams at a time gets at
// most 2 queries at a time, and every query is answered in the end (the
// client waits with OpenStreamSync for the server's MAX_STREAMS).
func TestDoQStreamLimit(t *testing.T) {
	var open, most atomic.Int32
	s := upstreamtest.StartDoQServer(t, upstreamtest.DoQServerOptions{QUIC: &quic.Config{MaxIncomingStreams: 2}}, func(r *upstreamtest.DoQQuery) {
		if o := open.Add(1); o > most.Load() {
			most.Store(o)
		}
		time.Sleep(5 * time.Millisecond)
		open.Add(-1)
		r.Answer(upstreamtest.AnswerFor(r.Msg))
	})
	u := newDoQFor(t, s.URL(), Options{Conns: 1, Timeout: 5 * time.Second})
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		u.Submit(makeQuery(t, "limit.example.", uint16(i)), 0, func(resp []byte, err error) {
			defer wg.Done()
			if err != nil {
				t.Errorf("query %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if m := most.Load(); m > 2 {
		t.Errorf("%d queries at the server at once, want at most its 2 streams", m)
	}
}

// TestDoQCancel: Cancel (a hedge's loser) resets the query's stream with
// DOQ_REQUEST_CANCELLED, and its callback is never called.
func TestDoQCancel(t *testing.T) {
	cause := make(chan error, 1)
	s := upstreamtest.StartDoQServer(t, upstreamtest.DoQServerOptions{}, func(r *upstreamtest.DoQQuery) {
		<-r.Stream.Context().Done() // the client's STOP_SENDING
		cause <- context.Cause(r.Stream.Context())
	})
	u := newDoQFor(t, s.URL(), Options{Conns: 1, Timeout: 5 * time.Second})
	var calls atomic.Int32
	c := u.Submit(makeQuery(t, "cancel.example.", 9), 0, func([]byte, error) { calls.Add(1) })
	for s.Streams.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // the server has the query
	c.Cancel()
	select {
	case err := <-cause:
		var se *quic.StreamError
		if !errors.As(err, &se) || se.ErrorCode != 0x3 || !se.Remote {
			t.Errorf("server's stream ended with %v, want the client's DOQ_REQUEST_CANCELLED (0x3)", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the server's stream was not cancelled")
	}
	time.Sleep(50 * time.Millisecond)
	if n := calls.Load(); n != 0 {
		t.Errorf("callback called %d times after Cancel, want never", n)
	}
}

// TestDoQIdleReconnect: keep-alives hold an idle connection open within
// the idle timeout; when the path goes silent, the idle timeout closes
// the connection, and the next query reconnects.
func TestDoQIdleReconnect(t *testing.T) {
	s := upstreamtest.StartDoQServer(t, upstreamtest.DoQServerOptions{}, nil)
	relay := upstreamtest.StartUDPRelay(t, s.Addr)
	u := newDoQFor(t, "quic://"+relay.Addr, Options{Conns: 1, Timeout: time.Second})
	u.quicConf.MaxIdleTimeout = 300 * time.Millisecond
	u.quicConf.KeepAlivePeriod = 100 * time.Millisecond
	conns := func() int {
		u.mu.Lock()
		defer u.mu.Unlock()
		return len(u.conns)
	}
	if _, err := exchange(t, u, "idle.example.", 1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // three idle timeouts without a query
	if _, err := exchange(t, u, "idle.example.", 2); err != nil {
		t.Fatal(err)
	}
	if n := s.NConn.Load(); n != 1 {
		t.Fatalf("%d connections after an idle second, want 1: keep-alives hold it", n)
	}
	relay.Drop(true)
	deadline := time.Now().Add(2 * time.Second)
	for conns() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("connection still up 2s after its path went silent (idle timeout 300ms)")
		}
		time.Sleep(10 * time.Millisecond)
	}
	relay.Drop(false)
	resp, err := exchange(t, u, "idle.example.", 3)
	if err != nil {
		t.Fatal(err)
	}
	checkAnswer(t, resp, "idle.example.", 3)
	if n := s.NConn.Load(); n != 2 {
		t.Errorf("%d connections, want 2: the reconnection", n)
	}
}

// TestDoQBadPeers: what a DoQ server can do wrong ends each query with an
// error, within its timeout, and leaves nothing running after Close.
func TestDoQBadPeers(t *testing.T) {
	const timeout = 300 * time.Millisecond
	answerWith := func(f func(r *upstreamtest.DoQQuery)) func(t *testing.T) string {
		return func(t *testing.T) string {
			return upstreamtest.StartDoQServer(t, upstreamtest.DoQServerOptions{}, f).URL()
		}
	}
	frame := func(m *dns.Msg) []byte {
		b := upstreamtest.MustPack(m)
		return append(binary.BigEndian.AppendUint16(nil, uint16(len(b))), b...)
	}
	tests := []struct {
		name   string
		server func(t *testing.T) string
		want   error
	}{
		{name: "handshake never finishes", want: ErrTimeout, server: func(t *testing.T) string {
			return "quic://" + upstreamtest.UDPSink(t)
		}},
		{name: "stream with two messages", want: ErrBadResponse, server: answerWith(func(r *upstreamtest.DoQQuery) {
			a := frame(upstreamtest.AnswerFor(r.Msg))
			r.Stream.Write(append(a, a...))
			r.Stream.Close()
		})},
		{name: "length beyond the stream's end", want: ErrBadResponse, server: answerWith(func(r *upstreamtest.DoQQuery) {
			a := frame(upstreamtest.AnswerFor(r.Msg))
			r.Stream.Write(a[:len(a)-3])
			r.Stream.Close()
		})},
		{name: "answer with a message ID", want: ErrBadResponse, server: answerWith(func(r *upstreamtest.DoQQuery) {
			m := upstreamtest.AnswerFor(r.Msg)
			m.Id = 0x4242
			r.Answer(m)
		})},
		{name: "answer to another question", want: ErrBadResponse, server: answerWith(func(r *upstreamtest.DoQQuery) {
			m := r.Msg.Copy()
			m.Question[0].Name = "elsewhere.example."
			r.Answer(upstreamtest.AnswerFor(m))
		})},
		{name: "answer without FIN", want: ErrTimeout, server: answerWith(func(r *upstreamtest.DoQQuery) {
			r.Stream.Write(frame(upstreamtest.AnswerFor(r.Msg)))
		})},
		{name: "stream reset", want: ErrStreamReset, server: answerWith(func(r *upstreamtest.DoQQuery) {
			r.Stream.CancelWrite(0x1)
		})},
		{name: "no answer", want: ErrTimeout, server: answerWith(func(*upstreamtest.DoQQuery) {})},
		{name: "streams never accepted", want: ErrTimeout, server: func(t *testing.T) string {
			return upstreamtest.StartDoQServer(t, upstreamtest.DoQServerOptions{NoAccept: true, QUIC: &quic.Config{MaxIncomingStreams: 1}}, nil).URL()
		}},
		{name: "no stream allowed", want: ErrTimeout, server: func(t *testing.T) string {
			return upstreamtest.StartDoQServer(t, upstreamtest.DoQServerOptions{QUIC: &quic.Config{MaxIncomingStreams: -1}}, nil).URL()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := runtime.NumGoroutine()
			t.Cleanup(func() { noGoroutinesLeft(t, before) }) // after the server's
			target := tt.server(t)
			u, err := New(target, Options{RootCAs: upstreamtest.PKI(t).Pool, Timeout: timeout, Conns: 1})
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			for i := range 3 { // more than the one stream some of the servers allow
				wg.Go(func() {
					start := time.Now()
					_, err := Exchange(context.Background(), u, makeQuery(t, "bad.example.", uint16(i)))
					if took := time.Since(start); !errors.Is(err, tt.want) || took > timeout+400*time.Millisecond {
						t.Errorf("query %d: error %v after %v, want %v within %v", i, err, took, tt.want, timeout)
					}
				})
			}
			wg.Wait()
			u.Close()
		})
	}
}
