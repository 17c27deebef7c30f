package forwarder

import "testing"

// The query log's upstream_transport names each target's protocol as
// the transport field names a client's.
func TestUpstreamTransport(t *testing.T) {
	for _, tt := range []struct{ target, want string }{
		{"", ""},
		{"127.0.0.1:53", "UDP"},
		{"[::1]:5301", "UDP"},
		{"udp://127.0.0.1:53", "UDP"},
		{"tcp://127.0.0.1:53", "TCP"},
		{"https://127.0.0.1:8443/dns-query", "DoH"},
		{"tls://127.0.0.1:853", "DoT"},
		{"quic://127.0.0.1:853", "DoQ"},
	} {
		if got := upstreamTransport(tt.target); got != tt.want {
			t.Errorf("upstreamTransport(%q) = %q, want %q", tt.target, got, tt.want)
		}
	}
}
