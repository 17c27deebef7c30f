package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestNew(t *testing.T) {
	tests := []struct {
		target  string
		wantErr string // substring; "" for success
		check   func(t *testing.T, u Upstream)
	}{
		{target: "https://127.0.0.1/dns-query", check: wantDoH("127.0.0.1:443", "127.0.0.1", "/dns-query")},
		{target: "https://[::1]:8443", check: wantDoH("[::1]:8443", "[::1]:8443", "/dns-query")},
		{target: "https://dns.example:444/q?x=1", check: wantDoH("dns.example:444", "dns.example:444", "/q?x=1")},
		{target: "udp://192.0.2.1", check: wantDo53("192.0.2.1:53", false)},
		{target: "192.0.2.1:5353", check: wantDo53("192.0.2.1:5353", false)},
		{target: "192.0.2.1", check: wantDo53("192.0.2.1:53", false)},
		{target: "[2001:db8::1]:53", check: wantDo53("[2001:db8::1]:53", false)},
		{target: "2001:db8::1", check: wantDo53("[2001:db8::1]:53", false)},
		{target: "tcp://[::1]:5300", check: wantDo53("[::1]:5300", true)},
		{target: "TCP://127.0.0.1", check: wantDo53("127.0.0.1:53", true)},
		{target: "tls://192.0.2.1", check: wantDoT("192.0.2.1:853", "192.0.2.1")},
		{target: "tls://dns.example:8853", check: wantDoT("dns.example:8853", "dns.example")},
		{target: "TLS://[2001:db8::1]", check: wantDoT("[2001:db8::1]:853", "2001:db8::1")},
		{target: "quic://192.0.2.1", check: wantDoQ("192.0.2.1:853", "192.0.2.1")},
		{target: "quic://dns.example:784", check: wantDoQ("dns.example:784", "dns.example")},
		{target: "tls://", wantErr: "missing host"},
		{target: "tls://192.0.2.1/dns-query", wantErr: "unexpected path"},
		{target: "quic://192.0.2.1:0", wantErr: "invalid port"},
		{target: "ftp://192.0.2.1", wantErr: "unsupported scheme"},
		{target: "udp://resolver.example", wantErr: "not an IP address"},
		{target: "resolver.example:53", wantErr: "not an IP address"},
		{target: "udp://192.0.2.1:0", wantErr: "invalid port"},
		{target: "udp://192.0.2.1:99999", wantErr: "invalid port"},
		{target: "udp://192.0.2.1/path", wantErr: "unexpected path"},
		{target: "", wantErr: "missing address"},
		{target: "https://", wantErr: "missing host"},
		{target: "https://user@host/dns-query", wantErr: "user info"},
		{target: "https://host:0/dns-query", wantErr: "invalid port"},
	}
	for _, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			u, err := New(tt.target, Options{})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				if !strings.HasPrefix(err.Error(), `upstream "`+tt.target+`": `) {
					t.Errorf("error %q does not name the target", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			if u.String() != tt.target {
				t.Errorf("String() = %q", u.String())
			}
			tt.check(t, u)
		})
	}
}

func TestNewOptions(t *testing.T) {
	for _, tt := range []struct {
		opts Options
		want string
	}{
		{Options{Timeout: -1}, "negative timeout"},
		{Options{Conns: -1}, "negative number of connections"},
		{Options{CAFile: "/nonexistent/ca.pem"}, "reading CA file"},
	} {
		if _, err := New("https://127.0.0.1/dns-query", tt.opts); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: error %v, want %q", tt.opts, err, tt.want)
		}
	}
	u, err := New("https://127.0.0.1/dns-query", Options{})
	if err != nil {
		t.Fatal(err)
	}
	d := u.(*DoH)
	if d.timeout != DefaultTimeout || len(d.pool.slots) != DefaultConns {
		t.Errorf("defaults: timeout %v, %d conns", d.timeout, len(d.pool.slots))
	}
	if d.tlsConf.ServerName != "127.0.0.1" || d.tlsConf.ClientSessionCache == nil {
		t.Errorf("TLS config: %+v", d.tlsConf)
	}
}

func wantDoH(dial, authority, path string) func(*testing.T, Upstream) {
	return func(t *testing.T, u Upstream) {
		d, ok := u.(*DoH)
		if !ok {
			t.Fatalf("got %T, want *DoH", u)
		}
		if d.dialAddr != dial || d.authority != authority || d.path != path {
			t.Errorf("dial %q authority %q path %q, want %q %q %q", d.dialAddr, d.authority, d.path, dial, authority, path)
		}
	}
}

func wantDo53(addr string, tcpOnly bool) func(*testing.T, Upstream) {
	return func(t *testing.T, u Upstream) {
		d, ok := u.(*Do53)
		if !ok {
			t.Fatalf("got %T, want *Do53", u)
		}
		if d.addr.String() != addr || d.tcpOnly != tcpOnly {
			t.Errorf("addr %v tcpOnly %v, want %v %v", d.addr, d.tcpOnly, addr, tcpOnly)
		}
	}
}

func wantDoT(addr, serverName string) func(*testing.T, Upstream) {
	return func(t *testing.T, u Upstream) {
		d, ok := u.(*Do53)
		if !ok {
			t.Fatalf("got %T, want *Do53", u)
		}
		if d.dialAddr != addr || !d.tcpOnly || d.tlsConf == nil || d.tlsConf.ServerName != serverName ||
			d.tlsConf.NextProtos[0] != "dot" || d.tlsConf.ClientSessionCache == nil {
			t.Errorf("dial %v tcpOnly %v TLS %+v, want %v, TCP only, TLS for %s with ALPN dot and a session cache", d.dialAddr, d.tcpOnly, d.tlsConf, addr, serverName)
		}
	}
}

func wantDoQ(addr, serverName string) func(*testing.T, Upstream) {
	return func(t *testing.T, u Upstream) {
		d, ok := u.(*DoQ)
		if !ok {
			t.Fatalf("got %T, want *DoQ", u)
		}
		if d.dialAddr != addr || d.tlsConf.ServerName != serverName || d.tlsConf.NextProtos[0] != "doq" {
			t.Errorf("dial %v TLS %+v, want %v, TLS for %s with ALPN doq", d.dialAddr, d.tlsConf, addr, serverName)
		}
	}
}

// fakeUpstream answers each Submit as answer says, on a goroutine of its
// own (nil: never), and records the timeouts it was given and the Cancels.
type fakeUpstream struct {
	answer   func(q []byte) ([]byte, error)
	timeouts chan time.Duration
	cancels  atomic.Int32
}

func (f *fakeUpstream) Submit(q []byte, timeout time.Duration, done func([]byte, error)) Canceler {
	f.timeouts <- timeout
	if f.answer != nil {
		q = bytes.Clone(q)
		go func() { done(f.answer(q)) }()
	}
	return f
}

func (f *fakeUpstream) Cancel()        { f.cancels.Add(1) }
func (f *fakeUpstream) Close() error   { return nil }
func (f *fakeUpstream) String() string { return "fake" }

func TestExchange(t *testing.T) {
	echo := func(q []byte) ([]byte, error) { return q, nil }
	tests := []struct {
		name        string
		ctx         func() (context.Context, context.CancelFunc)
		answer      func(q []byte) ([]byte, error)
		wantErr     []error // nil: the echoed query
		submitted   bool
		timeout     time.Duration // given to Submit, within 100ms; 0: exactly 0
		wantCancels int32
	}{
		{name: "no deadline: the upstream's timeout", ctx: background, answer: echo, submitted: true},
		{name: "deadline: the time left", ctx: withTimeout(time.Second), answer: echo, submitted: true, timeout: time.Second},
		{name: "error passed on", ctx: background, submitted: true,
			answer:  func([]byte) ([]byte, error) { return nil, ErrBadResponse },
			wantErr: []error{ErrBadResponse}},
		{name: "context done before", ctx: func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx, cancel
		}, answer: echo, wantErr: []error{context.Canceled}},
		{name: "deadline first: cancelled", ctx: withTimeout(50 * time.Millisecond), submitted: true,
			timeout: 50 * time.Millisecond, wantCancels: 1, wantErr: []error{ErrTimeout, context.DeadlineExceeded}},
		{name: "query's timer first", ctx: func() (context.Context, context.CancelFunc) {
			// A deadline whose timer never fires: the query's comes first.
			return deadlineOnly{context.Background(), time.Now().Add(50 * time.Millisecond)}, func() {}
		}, submitted: true, timeout: 50 * time.Millisecond,
			answer: func([]byte) ([]byte, error) {
				time.Sleep(60 * time.Millisecond)
				return nil, fmt.Errorf("upstream fake: %w", ErrTimeout)
			},
			wantErr: []error{ErrTimeout, context.DeadlineExceeded}},
		{name: "cancelled while waiting", ctx: func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(30*time.Millisecond, cancel)
			return ctx, cancel
		}, submitted: true, wantCancels: 1, wantErr: []error{context.Canceled}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeUpstream{answer: tt.answer, timeouts: make(chan time.Duration, 1)}
			ctx, cancel := tt.ctx()
			defer cancel()
			q := makeQuery(t, "x.example.", 7)
			resp, err := Exchange(ctx, f, q)
			for _, want := range tt.wantErr {
				if !errors.Is(err, want) {
					t.Errorf("error %v, want %v", err, want)
				}
			}
			if tt.wantErr == nil && (err != nil || !bytes.Equal(resp, q)) {
				t.Errorf("got %x, %v; want the query back", resp, err)
			}
			select {
			case got := <-f.timeouts:
				if !tt.submitted {
					t.Errorf("submitted with timeout %v, want no Submit", got)
				} else if got > tt.timeout || got < tt.timeout-100*time.Millisecond || (tt.timeout == 0) != (got == 0) {
					t.Errorf("Submit's timeout %v, want %v", got, tt.timeout)
				}
			default:
				if tt.submitted {
					t.Error("not submitted")
				}
			}
			if n := f.cancels.Load(); n != tt.wantCancels {
				t.Errorf("%d Cancels, want %d", n, tt.wantCancels)
			}
		})
	}
}

func background() (context.Context, context.CancelFunc) {
	return context.WithCancel(context.Background())
}

func withTimeout(d time.Duration) func() (context.Context, context.CancelFunc) {
	return func() (context.Context, context.CancelFunc) { return context.WithTimeout(context.Background(), d) }
}

// deadlineOnly has a deadline but is never done.
type deadlineOnly struct {
	context.Context
	dl time.Time
}

func (c deadlineOnly) Deadline() (time.Time, bool) { return c.dl, true }
