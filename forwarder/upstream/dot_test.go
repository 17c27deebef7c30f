package upstream

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder/upstream/upstreamtest"
)

// noGoroutinesLeft fails t unless the number of goroutines comes back to
// before within 3 s (timers and closing sockets take a moment).
func noGoroutinesLeft(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines: %d before, %d after Close\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// newDoTFor builds a DoT upstream for target, or fails t.
func newDoTFor(t *testing.T, target string, opts Options) *Do53 {
	t.Helper()
	u, err := New(target, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	return u.(*Do53)
}

// tlsStates returns the TLS state of every connection u has open.
func tlsStates(u *Do53) []tls.ConnectionState {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []tls.ConnectionState
	for c := range u.live {
		if tc, ok := c.nc.(*tls.Conn); ok {
			out = append(out, tc.ConnectionState())
		}
	}
	return out
}

// dropConns shuts down every connection of u, as a broken one would be.
func dropConns(u *Do53) {
	u.mu.Lock()
	var conns []*dnsConn
	for c := range u.live {
		conns = append(conns, c)
	}
	u.mu.Unlock()
	for _, c := range conns {
		c.shutdown(errIdle)
	}
}

func exchange(t *testing.T, u Upstream, name string, id uint16) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return Exchange(ctx, u, makeQuery(t, name, id))
}

// TestDoTResumesSessions: the second connection of a DoT upstream resumes
// the TLS session of the first (one ClientSessionCache per upstream),
// both negotiate ALPN dot, and neither uses UDP.
func TestDoTResumesSessions(t *testing.T) {
	f := upstreamtest.StartDoTFault(t, upstreamtest.TCPAnswerAll)
	u := newDoTFor(t, f.Target(true), Options{RootCAs: upstreamtest.PKI(t).Pool, Conns: 1})
	for i, wantResume := range []bool{false, true, true} {
		resp, err := exchange(t, u, "resume.example.", uint16(i))
		if err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		checkAnswer(t, resp, "resume.example.", uint16(i))
		st := tlsStates(u)
		if len(st) != 1 {
			t.Fatalf("query %d: %d connections, want 1", i, len(st))
		}
		if st[0].DidResume != wantResume || st[0].NegotiatedProtocol != "dot" || st[0].Version < tls.VersionTLS12 {
			t.Errorf("connection %d: DidResume %v, ALPN %q, version %#x; want DidResume %v, dot, TLS 1.2+",
				i+1, st[0].DidResume, st[0].NegotiatedProtocol, st[0].Version, wantResume)
		}
		if srv := f.Conn(i + 1).(*tls.Conn).ConnectionState(); srv.DidResume != wantResume {
			t.Errorf("server's connection %d: DidResume %v, want %v", i+1, srv.DidResume, wantResume)
		}
		dropConns(u)
	}
	if n := f.UDPQueries.Load(); n != 0 {
		t.Errorf("%d queries over UDP, want none", n)
	}
}

// TestDoTServerName: certificates are verified for the target's host, or
// Options.ServerName when set, against Options.RootCAs or the system's.
func TestDoTServerName(t *testing.T) {
	f := upstreamtest.StartDoTFault(t, upstreamtest.TCPAnswerAll)
	_, port, _ := net.SplitHostPort(f.Addr)
	tests := []struct {
		name    string
		target  string
		opts    Options
		wantErr string // "" for an answer
	}{
		{name: "IP in the certificate", target: "tls://" + f.Addr, opts: Options{RootCAs: upstreamtest.PKI(t).Pool}},
		{name: "ServerName in the certificate", target: "tls://" + f.Addr, opts: Options{RootCAs: upstreamtest.PKI(t).Pool, ServerName: "localhost"}},
		{name: "host name in the certificate", target: "tls://localhost:" + port, opts: Options{RootCAs: upstreamtest.PKI(t).Pool}},
		{name: "ServerName not in the certificate", target: "tls://" + f.Addr, opts: Options{RootCAs: upstreamtest.PKI(t).Pool, ServerName: "dns.example"}, wantErr: "certificate"},
		{name: "system roots do not know the test CA", target: "tls://" + f.Addr, wantErr: "certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.Timeout = 2 * time.Second
			u := newDoTFor(t, tt.target, tt.opts)
			resp, err := exchange(t, u, "name.example.", 7)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("error %v, want an answer", err)
			case tt.wantErr == "":
				checkAnswer(t, resp, "name.example.", 7)
			case err == nil || !strings.Contains(err.Error(), tt.wantErr):
				t.Fatalf("error %v, want one mentioning %q", err, tt.wantErr)
			}
		})
	}
}

// TestDoTNoCookie: a DoT query with EDNS goes out without a COOKIE option
// (the TLS stream is authenticated already), while the same query to the
// same kind of server over plain TCP carries one.
func TestDoTNoCookie(t *testing.T) {
	var mu sync.Mutex
	cookies := map[string]bool{}
	onQuery := func(_ *upstreamtest.Do53Fault, _ int, q *dns.Msg) upstreamtest.TCPAction {
		has := false
		if opt := q.IsEdns0(); opt != nil {
			for _, o := range opt.Option {
				_, ok := o.(*dns.EDNS0_COOKIE)
				has = has || ok
			}
		}
		mu.Lock()
		cookies[q.Question[0].Name] = has
		mu.Unlock()
		return upstreamtest.TCPAnswer
	}
	dot := upstreamtest.StartDoTFault(t, onQuery)
	tcp := upstreamtest.StartDo53Fault(t, nil, onQuery)
	for _, tt := range []struct {
		target, name string
		want         bool
	}{
		{target: dot.Target(true), name: "dot.example.", want: false},
		{target: tcp.Target(true), name: "tcp.example.", want: true},
	} {
		u := newDoTFor(t, tt.target, Options{RootCAs: upstreamtest.PKI(t).Pool})
		m := new(dns.Msg).SetQuestion(tt.name, dns.TypeA)
		m.SetEdns0(1232, false)
		q, _ := m.Pack()
		if _, err := Exchange(context.Background(), u, q); err != nil {
			t.Fatalf("%s: %v", tt.target, err)
		}
		mu.Lock()
		if cookies[tt.name] != tt.want {
			t.Errorf("%s: query with a COOKIE option %v, want %v", tt.target, cookies[tt.name], tt.want)
		}
		mu.Unlock()
	}
}

// TestDoTBadPeers: a TLS handshake that never finishes and a length
// prefix that lies (500 promised, 10 sent, then silence) each end the
// query with an error at its timeout, the second also the connection,
// and nothing is left running after Close.
func TestDoTBadPeers(t *testing.T) {
	const timeout = 300 * time.Millisecond
	tests := []struct {
		name  string
		start func(t *testing.T) (addr string, closed <-chan struct{})
	}{
		{name: "handshake never finishes", start: func(t *testing.T) (string, <-chan struct{}) {
			return upstreamtest.StartTCPSink(t, false).Addr(), nil
		}},
		{name: "length prefix lies", start: func(t *testing.T) (string, <-chan struct{}) {
			ln, err := tls.Listen("tcp", "127.0.0.1:0", upstreamtest.DoQServerTLS(t, "dot"))
			if err != nil {
				t.Fatal(err)
			}
			closed := make(chan struct{}, 4)
			var wg sync.WaitGroup
			wg.Go(func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					wg.Go(func() {
						defer c.Close()
						var l [2]byte
						if _, err := io.ReadFull(c, l[:]); err != nil {
							return
						}
						io.ReadFull(c, make([]byte, binary.BigEndian.Uint16(l[:])))
						c.Write(append([]byte{0x01, 0xF4}, make([]byte, 10)...)) // 500 promised, 10 sent
						io.Copy(io.Discard, c)                                   // until the client gives up
						closed <- struct{}{}
					})
				}
			})
			t.Cleanup(func() {
				ln.Close()
				wg.Wait()
			})
			return ln.Addr().String(), closed
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := runtime.NumGoroutine()
			t.Cleanup(func() { noGoroutinesLeft(t, before) }) // after the server's
			addr, closed := tt.start(t)
			u, err := New("tls://"+addr, Options{RootCAs: upstreamtest.PKI(t).Pool, Timeout: timeout, Conns: 1})
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			_, err = Exchange(context.Background(), u, makeQuery(t, "bad.example.", 1))
			if took := time.Since(start); err == nil || took > timeout+400*time.Millisecond {
				t.Errorf("error %v after %v, want one within %v", err, took, timeout)
			}
			if !errors.Is(err, ErrTimeout) && !errors.Is(err, ErrConnClosed) {
				t.Errorf("error %v, want ErrTimeout or ErrConnClosed", err)
			}
			if closed != nil {
				select {
				case <-closed:
				case <-time.After(2 * timeout):
					t.Errorf("connection with a lying length still open %v after the query", 2*timeout)
				}
			}
			u.Close()
		})
	}
}
