package upstream

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder/upstream/upstreamtest"
)

// TestDoHGet: with Method GET every query goes as an RFC 8484 GET (the
// server counts them and rejects a body, a content-type, padding or an ID
// other than 0 with 400), the caller gets its ID back, and the RFC 8484
// response rules hold as for POST.
func TestDoHGet(t *testing.T) {
	srv := upstreamtest.StartDoHServer(t, true)
	tests := []struct {
		name    string
		url     string
		qname   string
		pad     int // EDNS padding octets: 13000 makes a URL beyond one 16 KiB frame
		wantErr error
	}{
		{name: "answer with ID restored", url: "/dns-query", qname: "a.example."},
		{name: "target URL with a query of its own", url: "/dns-query?x=1", qname: "b.example."},
		{name: "URL beyond one frame: CONTINUATION", url: "/dns-query", qname: "big.example.", pad: 13000},
		{name: "HTTP 500", url: "/dns-query", qname: "status500.example.", wantErr: ErrBadResponse},
		{name: "wrong content type", url: "/dns-query", qname: "texttype.example.", wantErr: ErrBadResponse},
		{name: "answer to another question", url: "/dns-query", qname: "otherquestion.example.", wantErr: ErrBadResponse},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newTestDoH(t, srv.URL+tt.url, Options{Method: MethodGET, Conns: 1})
			q := makeQuery(t, tt.qname, 0xBEEF)
			if tt.pad > 0 {
				m := new(dns.Msg)
				if err := m.Unpack(q); err != nil {
					t.Fatal(err)
				}
				m.SetEdns0(4096, false)
				opt := m.IsEdns0()
				opt.Option = append(opt.Option, &dns.EDNS0_PADDING{Padding: make([]byte, tt.pad)})
				var err error
				if q, err = m.Pack(); err != nil {
					t.Fatal(err)
				}
			}
			gets := srv.Gets.Load()
			resp, err := Exchange(context.Background(), u, q)
			if n := srv.Gets.Load() - gets; n != 1 {
				t.Errorf("server saw %d GETs, want 1", n)
			}
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("error %v, want %v", err, tt.wantErr)
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
}

// TestDoHGetFake: GETs pipelined on one connection to the raw framer
// server arrive with ID 0 (RFC 8484 4.1) as single HEADERS frames that end
// their streams, and every answer carries its caller's ID.
func TestDoHGetFake(t *testing.T) {
	var nonzero atomic.Int32
	f := upstreamtest.StartFakeH2(t, nil, func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) {
		if q.Id != 0 {
			nonzero.Add(1)
		}
		fc.Respond(id, q)
	})
	u := newTestDoH(t, f.URL(), Options{Method: MethodGET, Conns: 1, Timeout: 10 * time.Second})
	warmUp(t, u)
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		name := fmt.Sprintf("q%d.example.", i)
		u.Submit(makeQuery(t, name, uint16(i)), 0, func(resp []byte, err error) {
			defer wg.Done()
			if err == nil {
				m := new(dns.Msg)
				if err = m.Unpack(resp); err == nil && (m.Id != uint16(i) || m.Question[0].Name != name) {
					err = fmt.Errorf("answer %#x %s, want %#x %s", m.Id, m.Question[0].Name, i, name)
				}
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if g := f.Gets.Load(); g != n || nonzero.Load() != 0 || f.NConn.Load() != 1 {
		t.Errorf("server: %d GETs (want %d), %d with an ID other than 0, %d connections (want 1)", g, n, nonzero.Load(), f.NConn.Load())
	}
}

// TestDoHGetBIND: a real BIND 9.18 answers GETs, many in flight on one
// connection, each with its caller's ID back.
func TestDoHGetBIND(t *testing.T) {
	b := upstreamtest.StartBIND(t, upstreamtest.BINDOptions{QueryLog: true})
	u := newTestDoH(t, b.DoHURL, Options{Method: MethodGET, RootCAs: b.RootCAs(), Conns: 1, Timeout: 5 * time.Second})
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		u.Submit(makeQuery(t, "foo.example.com.", uint16(0x4000+i)), 0, func(resp []byte, err error) {
			defer wg.Done()
			if err == nil {
				m := new(dns.Msg)
				if err = m.Unpack(resp); err == nil {
					a, ok := func() (*dns.A, bool) {
						if len(m.Answer) != 1 {
							return nil, false
						}
						a, ok := m.Answer[0].(*dns.A)
						return a, ok
					}()
					if m.Id != uint16(0x4000+i) || !ok || a.A.String() != "172.16.0.10" {
						err = fmt.Errorf("answer ID %#x (want %#x): %v", m.Id, 0x4000+i, m.Answer)
					}
				}
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if log := b.QueryLog(t); len(log) != n {
		t.Errorf("BIND logged %d queries, want %d", len(log), n)
	}
}

func TestNewMethod(t *testing.T) {
	for _, tt := range []struct {
		target, method, want string
	}{
		{"udp://127.0.0.1:53", MethodGET, "for DoH (https://) targets only"},
		{"tls://127.0.0.1", MethodGET, "for DoH (https://) targets only"},
		{"https://127.0.0.1/dns-query", "PUT", `method "PUT": want GET or POST`},
		{"https://127.0.0.1/dns-query", "get", `method "get": want GET or POST`},
	} {
		_, err := New(tt.target, Options{Method: tt.method})
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), tt.target) {
			t.Errorf("New(%s, method %s): %v, want an error naming the target and %q", tt.target, tt.method, err, tt.want)
		}
	}
	for _, m := range []string{"", MethodPOST, MethodGET} {
		u, err := New("https://127.0.0.1/dns-query", Options{Method: m})
		if err != nil {
			t.Errorf("method %q: %v", m, err)
			continue
		}
		u.Close()
	}
}

// BenchmarkDoHSubmitGet is BenchmarkDoHSubmit with GET: the same requests
// in flight, the same allocations (the query's base64 goes into the
// connection's reused header buffer).
func BenchmarkDoHSubmitGet(b *testing.B) {
	f := upstreamtest.StartFakeH2(b, nil, func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) { fc.Respond(id, q) })
	u := newTestDoH(b, f.URL(), Options{Method: MethodGET, Conns: 1, Timeout: 10 * time.Second})
	warmUp(b, u)
	q := makeQuery(b, "bench.example.", 0x1234)
	submitInFlight(b, u, q)
	if f.Gets.Load() == 0 {
		b.Fatal("the server saw no GET")
	}
}

// BenchmarkDoHExchangeFakeGet is BenchmarkDoHExchangeFake with GET.
func BenchmarkDoHExchangeFakeGet(b *testing.B) {
	f := upstreamtest.StartFakeH2(b, nil, func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) { fc.Respond(id, q) })
	u := newTestDoH(b, f.URL(), Options{Method: MethodGET, Conns: 1})
	q := makeQuery(b, "bench.example.", 0x1234)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Exchange(ctx, u, q); err != nil {
			b.Fatal(err)
		}
	}
}
