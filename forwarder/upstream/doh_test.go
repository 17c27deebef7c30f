package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/http2"

	"xdoh/datapath/tlsconf"
	"xdoh/forwarder/upstream/upstreamtest"
)

func newTestDoH(t testing.TB, url string, opts Options) *DoH {
	t.Helper()
	if opts.RootCAs == nil && opts.CAFile == "" {
		opts.RootCAs = upstreamtest.PKI(t).Pool
	}
	u, err := New(url, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	return u.(*DoH)
}

func TestDoHExchange(t *testing.T) {
	srv := upstreamtest.StartDoHServer(t, true)
	u := newTestDoH(t, srv.URL+"/dns-query", Options{})
	tests := []struct {
		name    string
		qname   string
		wantErr error
	}{
		{name: "answer with ID restored", qname: "a.example."},
		{name: "mixed case question", qname: "MiXeD.example."},
		{name: "HTTP 500", qname: "status500.example.", wantErr: ErrBadResponse},
		{name: "non-DNS body", qname: "garbage.example.", wantErr: ErrBadResponse},
		{name: "wrong content type", qname: "texttype.example.", wantErr: ErrBadResponse},
		{name: "answer to another question", qname: "otherquestion.example.", wantErr: ErrBadResponse},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := makeQuery(t, tt.qname, 0xBEEF)
			resp, err := Exchange(context.Background(), u, q)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("error %v, want %v", err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), srv.URL) {
					t.Errorf("error %q does not name the target", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			checkAnswer(t, resp, tt.qname, 0xBEEF)
			if q[0] != 0xBE || q[1] != 0xEF {
				t.Error("Exchange modified the caller's query")
			}
		})
	}
	if n := srv.Conns.Load(); n > DefaultConns {
		t.Errorf("%d connections, want at most %d", n, DefaultConns)
	}
}

func TestDoHConcurrentOneConnection(t *testing.T) {
	srv := upstreamtest.StartDoHServer(t, true)
	u := newTestDoH(t, srv.URL+"/dns-query", Options{Conns: 1, Timeout: 20 * time.Second})
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			name := fmt.Sprintf("q%d.example.", i)
			id := uint16(i * 7)
			resp, err := Exchange(context.Background(), u, makeQuery(t, name, id))
			if err != nil {
				errs <- err
				return
			}
			checkAnswer(t, resp, name, id)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := srv.Requests.Load(); got != n {
		t.Errorf("server saw %d requests, want %d", got, n)
	}
	if got := srv.Conns.Load(); got != 1 {
		t.Errorf("%d connections, want 1", got)
	}
}

func TestDoHDialErrors(t *testing.T) {
	h2 := upstreamtest.StartDoHServer(t, true)
	h1 := upstreamtest.StartDoHServer(t, false)
	other, err := tlsconf.NewPKI("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	// A TLS server without ALPN: the handshake succeeds without h2.
	noALPN, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{upstreamtest.PKI(t).Cert}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer noALPN.Close()
	wg.Go(func() {
		for {
			c, err := noALPN.Accept()
			if err != nil {
				return
			}
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	})
	tests := []struct {
		name string
		url  string
		opts Options
		want string
	}{
		{name: "untrusted CA", url: h2.URL, opts: Options{RootCAs: other.Pool}, want: "certificate"},
		{name: "wrong server name", url: h2.URL, opts: Options{ServerName: "wrong.example"}, want: "certificate"},
		{name: "server refuses h2", url: h1.URL, want: "no application protocol"},
		{name: "server ignores ALPN", url: "https://" + noALPN.Addr().String(), want: "did not negotiate HTTP/2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newTestDoH(t, tt.url+"/dns-query", tt.opts)
			_, err := Exchange(context.Background(), u, makeQuery(t, "a.example.", 1))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one mentioning %q", err, tt.want)
			}
			// Backing off: the next exchange fails at once without dialling.
			start := time.Now()
			_, err2 := Exchange(context.Background(), u, makeQuery(t, "a.example.", 1))
			if err2 == nil || time.Since(start) > 20*time.Millisecond {
				t.Errorf("second exchange: %v after %v, want a fast failure", err2, time.Since(start))
			}
		})
	}
}

func TestDoHCAFile(t *testing.T) {
	srv := upstreamtest.StartDoHServer(t, true)
	ca, _, _, err := upstreamtest.PKI(t).WriteFiles(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	u, err := New(srv.URL+"/dns-query", Options{CAFile: ca})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	resp, err := Exchange(context.Background(), u, makeQuery(t, "ca.example.", 7))
	if err != nil {
		t.Fatal(err)
	}
	checkAnswer(t, resp, "ca.example.", 7)
}

func TestDoHGoAwayRetriedOnNewConnection(t *testing.T) {
	f := upstreamtest.StartFakeH2(t, nil, func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) {
		if conn == 1 {
			fc.GoAway(0, http2.ErrCodeNo) // stream 1 was not processed
			return
		}
		fc.Respond(id, q)
	})
	u := newTestDoH(t, f.URL(), Options{Conns: 1})
	resp, err := Exchange(context.Background(), u, makeQuery(t, "goaway.example.", 42))
	if err != nil {
		t.Fatal(err)
	}
	checkAnswer(t, resp, "goaway.example.", 42)
	if n := f.NConn.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

func TestDoHGoAwayEveryTimeFails(t *testing.T) {
	f := upstreamtest.StartFakeH2(t, nil, func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) {
		fc.GoAway(0, http2.ErrCodeNo)
	})
	u := newTestDoH(t, f.URL(), Options{Conns: 1})
	_, err := Exchange(context.Background(), u, makeQuery(t, "goaway.example.", 42))
	if !errors.Is(err, ErrGoAway) || !errors.Is(err, ErrConnClosed) || !Retryable(err) {
		t.Fatalf("error %v, want a retryable ErrGoAway", err)
	}
	if n := f.NConn.Load(); n != 2 {
		t.Errorf("%d connections, want 2 (one retry)", n)
	}
}

func TestDoHStreamReset(t *testing.T) {
	var calls atomic.Int32
	f := upstreamtest.StartFakeH2(t, nil, func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) {
		switch q.Question[0].Name {
		case "refused.example.":
			if calls.Add(1) == 1 {
				fc.RST(id, http2.ErrCodeRefusedStream)
				return
			}
		case "reset.example.":
			fc.RST(id, http2.ErrCodeInternal)
			return
		}
		fc.Respond(id, q)
	})
	u := newTestDoH(t, f.URL(), Options{Conns: 1})
	resp, err := Exchange(context.Background(), u, makeQuery(t, "refused.example.", 1))
	if err != nil {
		t.Fatalf("REFUSED_STREAM not retried: %v", err)
	}
	checkAnswer(t, resp, "refused.example.", 1)
	_, err = Exchange(context.Background(), u, makeQuery(t, "reset.example.", 2))
	if !errors.Is(err, ErrStreamReset) || Retryable(err) {
		t.Fatalf("error %v, want non-retryable ErrStreamReset", err)
	}
	// The connection survives stream resets.
	if _, err := Exchange(context.Background(), u, makeQuery(t, "fine.example.", 3)); err != nil {
		t.Fatal(err)
	}
	if n := f.NConn.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

func TestDoHDeadConnectionFailsFastAndRedials(t *testing.T) {
	f := upstreamtest.StartFakeH2(t, nil, func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) {
		if conn == 1 {
			fc.Close()
			return
		}
		fc.Respond(id, q)
	})
	u := newTestDoH(t, f.URL(), Options{Conns: 1, Timeout: 10 * time.Second})
	start := time.Now()
	resp, err := Exchange(context.Background(), u, makeQuery(t, "dead.example.", 9))
	if err != nil {
		t.Fatal(err)
	}
	checkAnswer(t, resp, "dead.example.", 9)
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("took %v: a dead connection must fail its streams at once", el)
	}
	if n := f.NConn.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

func TestDoHContextDeadlineResetsStream(t *testing.T) {
	srv := upstreamtest.StartDoHServer(t, true)
	u := newTestDoH(t, srv.URL+"/dns-query", Options{Conns: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Exchange(ctx, u, makeQuery(t, "slow.example.", 5))
	if !errors.Is(err, ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v, want ErrTimeout and context.DeadlineExceeded", err)
	}
	if el := time.Since(start); el > 500*time.Millisecond {
		t.Errorf("returned after %v, want about 100ms", el)
	}
	select {
	case <-srv.Canceled: // the server saw our RST_STREAM
	case <-time.After(5 * time.Second):
		t.Fatal("server request not cancelled: no RST_STREAM")
	}
	// The connection is still good.
	if _, err := Exchange(context.Background(), u, makeQuery(t, "after.example.", 6)); err != nil {
		t.Fatal(err)
	}
	if n := srv.Conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

func TestDoHTimeoutOption(t *testing.T) {
	srv := upstreamtest.StartDoHServer(t, true)
	u := newTestDoH(t, srv.URL+"/dns-query", Options{Conns: 1, Timeout: 150 * time.Millisecond})
	u.dialTime = 10 * time.Second // a loaded machine must not fail the warm-up dial
	for {                         // warm up, so that only the exchange is timed
		_, err := Exchange(context.Background(), u, makeQuery(t, "warm.example.", 1))
		if err == nil {
			break
		}
		if !errors.Is(err, ErrTimeout) {
			t.Fatal(err)
		}
	}
	start := time.Now()
	_, err := Exchange(context.Background(), u, makeQuery(t, "slow.example.", 5))
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("error %v, want ErrTimeout", err)
	}
	if el := time.Since(start); el < 140*time.Millisecond || el > 600*time.Millisecond {
		t.Errorf("returned after %v, want about 150ms", el)
	}
}

func TestDoHBlackholeTimesOut(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held sync.WaitGroup
	accepted := make(chan net.Conn, 8)
	held.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c // never read, never answer
		}
	})
	defer func() {
		ln.Close()
		held.Wait()
		close(accepted)
		for c := range accepted {
			c.Close()
		}
	}()
	before := runtime.NumGoroutine()
	u, err := New("https://"+ln.Addr().String()+"/dns-query", Options{RootCAs: upstreamtest.PKI(t).Pool, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		start := time.Now()
		_, err = Exchange(context.Background(), u, makeQuery(t, "a.example.", 1))
		if !errors.Is(err, ErrTimeout) {
			t.Fatalf("error %v, want ErrTimeout", err)
		}
		if el := time.Since(start); el > 400*time.Millisecond {
			t.Errorf("returned after %v, want about 200ms", el)
		}
	}
	u.Close() // aborts the pending dial
	waitGoroutines(t, before)
}

func TestDoHStreamIDExhaustion(t *testing.T) {
	f := upstreamtest.StartFakeH2(t, nil, func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) { fc.Respond(id, q) })
	u := newTestDoH(t, f.URL(), Options{Conns: 1})
	u.maxStreamID = 5 // streams 1, 3, 5 per connection
	for i := range 10 {
		name := fmt.Sprintf("x%d.example.", i)
		resp, err := Exchange(context.Background(), u, makeQuery(t, name, uint16(i)))
		if err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		checkAnswer(t, resp, name, uint16(i))
	}
	if n := f.NConn.Load(); n != 4 {
		t.Errorf("%d connections, want 4", n)
	}
}

func TestDoHMaxConcurrentStreams(t *testing.T) {
	var open, peak atomic.Int32
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait) // after the server's cleanup: no request can add to wg then
	f := upstreamtest.StartFakeH2(t, []http2.Setting{{ID: http2.SettingMaxConcurrentStreams, Val: 2}},
		func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) {
			n := open.Add(1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			wg.Go(func() {
				time.Sleep(10 * time.Millisecond)
				open.Add(-1)
				fc.Respond(id, q)
			})
		})
	u := newTestDoH(t, f.URL(), Options{Conns: 1})
	var cw sync.WaitGroup
	for i := range 10 {
		cw.Go(func() {
			name := fmt.Sprintf("m%d.example.", i)
			resp, err := Exchange(context.Background(), u, makeQuery(t, name, uint16(i)))
			if err != nil {
				t.Error(err)
				return
			}
			checkAnswer(t, resp, name, uint16(i))
		})
	}
	cw.Wait()
	if p := peak.Load(); p > 2 {
		t.Errorf("server saw %d concurrent streams, allowed 2", p)
	}
}

func TestDoHServerShrinksHPACKTable(t *testing.T) {
	f := upstreamtest.StartFakeH2(t, []http2.Setting{{ID: http2.SettingHeaderTableSize, Val: 0}},
		func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) { fc.Respond(id, q) })
	u := newTestDoH(t, f.URL(), Options{Conns: 1})
	for i := range 3 {
		if _, err := Exchange(context.Background(), u, makeQuery(t, "t.example.", uint16(i))); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.NConn.Load(); n != 1 {
		t.Errorf("%d connections, want 1 (HPACK errors would close it)", n)
	}
}

// countingConn counts writes on the TCP connection under TLS; with a gate
// set, writes wait for it.
type countingConn struct {
	net.Conn
	writes  atomic.Int64
	gate    atomic.Pointer[chan struct{}]
	blocked atomic.Bool
}

func (c *countingConn) Write(p []byte) (int, error) {
	if g := c.gate.Load(); g != nil {
		c.blocked.Store(true)
		<-*g
	}
	c.writes.Add(1)
	return c.Conn.Write(p)
}

func TestDoHHeadersAndDataInOneWrite(t *testing.T) {
	srv := upstreamtest.StartDoHServer(t, true)
	u := newTestDoH(t, srv.URL+"/dns-query", Options{Conns: 1, Timeout: 5 * time.Second})
	var cc *countingConn
	u.wrapConn = func(nc net.Conn) net.Conn {
		cc = &countingConn{Conn: nc}
		return cc
	}
	ctx := context.Background()
	if _, err := Exchange(ctx, u, makeQuery(t, "warm.example.", 1)); err != nil {
		t.Fatal(err)
	}

	// Serial: exactly one write per query.
	const serial = 20
	w0 := cc.writes.Load()
	for i := range serial {
		if _, err := Exchange(ctx, u, makeQuery(t, "s.example.", uint16(i))); err != nil {
			t.Fatal(err)
		}
	}
	if got := cc.writes.Load() - w0; got != serial {
		t.Errorf("%d serial queries took %d writes, want %d", serial, got, serial)
	}

	// Concurrent: hold the writer inside its first write while n-1 more
	// queries queue up; they must leave in one batch.
	const n = 50
	gate := make(chan struct{})
	cc.gate.Store(&gate)
	w0 = cc.writes.Load()
	var wg sync.WaitGroup
	query := func(i int) {
		name := fmt.Sprintf("c%d.example.", i)
		resp, err := Exchange(ctx, u, makeQuery(t, name, uint16(i)))
		if err != nil {
			t.Error(err)
			return
		}
		checkAnswer(t, resp, name, uint16(i))
	}
	wg.Go(func() { query(0) })
	waitFor(t, "writer blocked in first write", cc.blocked.Load)
	for i := 1; i < n; i++ {
		wg.Go(func() { query(i) })
	}
	c := u.pool.slots[0].conn.Load()
	waitFor(t, "queries queued", func() bool { return c.inflight.Load() == n })
	cc.gate.Store(nil)
	close(gate)
	wg.Wait()
	got := cc.writes.Load() - w0
	t.Logf("%d concurrent queries took %d writes", n, got)
	if got >= 2*n || got > 3 {
		t.Errorf("%d concurrent queries took %d writes, want at most 3", n, got)
	}
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitGoroutines waits until no more goroutines run than before (plus a
// little slack for runtime and test helpers).
func waitGoroutines(t testing.TB, before int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= before+1 {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines: %d before, %d after Close\n%s", before, n, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func BenchmarkDoHExchange(b *testing.B) {
	srv := upstreamtest.StartDoHServer(b, true)
	u := newTestDoH(b, srv.URL+"/dns-query", Options{Conns: 1})
	q := makeQuery(b, "bench.example.", 0x1234)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Exchange(ctx, u, q); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDoHExchangeParallel(b *testing.B) {
	srv := upstreamtest.StartDoHServer(b, true)
	u := newTestDoH(b, srv.URL+"/dns-query", Options{Timeout: 10 * time.Second})
	q := makeQuery(b, "bench.example.", 0x1234)
	ctx := context.Background()
	b.ReportAllocs()
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := Exchange(ctx, u, q); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkDoHExchangeFake measures the client alone against the raw framer
// server, which costs far less per request than net/http.
func BenchmarkDoHExchangeFake(b *testing.B) {
	f := upstreamtest.StartFakeH2(b, nil, func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) { fc.Respond(id, q) })
	u := newTestDoH(b, f.URL(), Options{Conns: 1})
	q := makeQuery(b, "bench.example.", 0x1234)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Exchange(ctx, u, q); err != nil {
			b.Fatal(err)
		}
	}
}
