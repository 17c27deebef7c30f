package upstream

import (
	"strings"
	"testing"
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
		{target: "tls://192.0.2.1", wantErr: "unsupported scheme"},
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
