package doh

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/datapath/tlsconf"
	"xdoh/forwarder"
)

const testMaxBody = 1024

// funcHandler is a test pipeline: fn answers a query (nil: no answer).
// Queries for which async reports true go the upstream way, through
// Resolve, and are answered from another goroutine.
type funcHandler struct {
	fn    func(r *forwarder.Request, out []byte) []byte
	async func(r *forwarder.Request) bool
}

func (h funcHandler) Answer(r *forwarder.Request, out []byte) ([]byte, bool) {
	if h.async != nil && h.async(r) {
		return nil, false
	}
	return h.fn(r, out), true
}

func (h funcHandler) Resolve(r *forwarder.Request, _ []byte, done func([]byte)) ([]byte, bool) {
	req := *r
	req.Msg = bytes.Clone(r.Msg)
	go func() { done(h.fn(&req, make([]byte, 0, 65536))) }()
	return nil, false
}

// answerHandler answers example.com A with two records, nx.example.com with
// NXDOMAIN, fail.example.com with SERVFAIL and drop.example.com not at all.
// Names under async. are answered the same, through Resolve. Any query
// arriving with the wrong Request fields gets REFUSED.
func answerHandler(t testing.TB) Handler {
	return funcHandler{fn: func(r *forwarder.Request, out []byte) []byte {
		req := new(dns.Msg)
		if err := req.Unpack(r.Msg); err != nil || len(req.Question) != 1 {
			t.Errorf("handler got an unparsable query: %v", err)
			return nil
		}
		resp := new(dns.Msg).SetReply(req)
		switch {
		case r.Transport != forwarder.TransportDoH, r.Listener != "test",
			!r.Client.Addr().IsLoopback(), r.Client.Port() == 0:
			t.Errorf("unexpected request fields: transport %v listener %q client %v", r.Transport, r.Listener, r.Client)
			resp.Rcode = dns.RcodeRefused
		default:
			name := strings.TrimPrefix(strings.ToLower(req.Question[0].Name), "async.")
			switch name {
			case "example.com.":
				resp.Answer = []dns.RR{
					mustRR(t, req.Question[0].Name+" 300 IN A 192.0.2.1"),
					mustRR(t, req.Question[0].Name+" 120 IN A 192.0.2.2"),
				}
			case "nx.example.com.":
				resp.Rcode = dns.RcodeNameError
				resp.Ns = []dns.RR{mustRR(t, "example.com. 900 IN SOA ns.example.com. host.example.com. 1 7200 900 1209600 60")}
			case "fail.example.com.":
				resp.Rcode = dns.RcodeServerFailure
			case "drop.example.com.":
				return nil
			}
		}
		b, err := resp.PackBuffer(out[:cap(out)])
		if err != nil {
			t.Errorf("packing response: %v", err)
			return nil
		}
		return b
	}, async: func(r *forwarder.Request) bool {
		return bytes.Contains(bytes.ToLower(r.Msg), []byte("\x05async"))
	}}
}

func mustRR(t testing.TB, s string) dns.RR {
	rr, err := dns.NewRR(s)
	if err != nil {
		t.Fatalf("dns.NewRR(%q): %v", s, err)
	}
	return rr
}

func query(t testing.TB, name string, qtype uint16, mutate func(*dns.Msg)) []byte {
	m := new(dns.Msg).SetQuestion(name, qtype)
	m.Id = 0 // RFC 8484 section 4.1
	if mutate != nil {
		mutate(m)
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatalf("packing query: %v", err)
	}
	return b
}

// startServer runs a Server on a loopback port with a fresh private CA.
func startServer(t testing.TB) (*Server, *tlsconf.PKI) {
	t.Helper()
	pki, err := tlsconf.NewPKI("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{
		Name:        "test",
		Addr:        "127.0.0.1:0",
		TLS:         &tls.Config{Certificates: []tls.Certificate{pki.Cert}},
		MaxBodySize: testMaxBody,
	}, answerHandler(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return s, pki
}

// newClient returns an HTTP/2 client trusting pki.
func newClient(t testing.TB, pki *tlsconf.PKI) *http.Client {
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.Pool}, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func TestServer(t *testing.T) {
	s, pki := startServer(t)
	base := "https://" + s.Addr().String()
	c := newClient(t, pki)
	b64 := base64.RawURLEncoding.EncodeToString

	okQuery := query(t, "example.com.", dns.TypeA, nil)
	big := make([]byte, testMaxBody+1)
	copy(big, okQuery)

	tests := []struct {
		name        string
		method      string
		url         string // after base
		contentType string
		body        []byte
		chunked     bool // hide the body's length: no content-length

		wantStatus  int
		wantRcode   int
		wantAnswers int
		wantMaxAge  string
	}{
		{
			name: "POST", method: "POST", url: "/dns-query", contentType: mediaType, body: okQuery,
			wantStatus: 200, wantAnswers: 2, wantMaxAge: "max-age=120",
		},
		{
			name: "POST with media type parameters", method: "POST", url: "/dns-query", contentType: "Application/DNS-Message; charset=binary", body: okQuery,
			wantStatus: 200, wantAnswers: 2, wantMaxAge: "max-age=120",
		},
		{
			name: "GET", method: "GET", url: "/dns-query?dns=" + b64(okQuery),
			wantStatus: 200, wantAnswers: 2, wantMaxAge: "max-age=120",
		},
		{
			name: "GET with padding", method: "GET", url: "/dns-query?ct&dns=" + base64.URLEncoding.EncodeToString(query(t, "example.com.", dns.TypeA, func(m *dns.Msg) { m.Id = 1 })),
			wantStatus: 200, wantAnswers: 2, wantMaxAge: "max-age=120",
		},
		{
			name: "GET with percent-encoded padding", method: "GET", url: "/dns-query?dns=" + strings.ReplaceAll(base64.URLEncoding.EncodeToString(query(t, "example.com.", dns.TypeA, func(m *dns.Msg) { m.Id = 1 })), "=", "%3D"),
			wantStatus: 200, wantAnswers: 2, wantMaxAge: "max-age=120",
		},
		{
			name: "negative answer takes the SOA minimum", method: "POST", url: "/dns-query", contentType: mediaType, body: query(t, "nx.example.com.", dns.TypeA, nil),
			wantStatus: 200, wantRcode: dns.RcodeNameError, wantMaxAge: "max-age=60",
		},
		{
			name: "SERVFAIL is not cacheable", method: "GET", url: "/dns-query?dns=" + b64(query(t, "fail.example.com.", dns.TypeA, nil)),
			wantStatus: 200, wantRcode: dns.RcodeServerFailure, wantMaxAge: "max-age=0",
		},
		{
			name: "POST without content-length", method: "POST", url: "/dns-query", contentType: mediaType, body: okQuery, chunked: true,
			wantStatus: 200, wantAnswers: 2, wantMaxAge: "max-age=120",
		},
		{
			name: "POST resolved upstream", method: "POST", url: "/dns-query", contentType: mediaType, body: query(t, "async.example.com.", dns.TypeA, nil),
			wantStatus: 200, wantAnswers: 2, wantMaxAge: "max-age=120",
		},
		{
			name: "GET resolved upstream", method: "GET", url: "/dns-query?dns=" + b64(query(t, "async.nx.example.com.", dns.TypeA, nil)),
			wantStatus: 200, wantRcode: dns.RcodeNameError, wantMaxAge: "max-age=60",
		},
		{
			name: "no answer from upstream", method: "POST", url: "/dns-query", contentType: mediaType, body: query(t, "async.drop.example.com.", dns.TypeA, nil),
			wantStatus: 400,
		},
		{name: "wrong content type", method: "POST", url: "/dns-query", contentType: "application/octet-stream", body: okQuery, wantStatus: 415},
		{name: "missing content type", method: "POST", url: "/dns-query", body: okQuery, wantStatus: 415},
		{name: "GET without dns", method: "GET", url: "/dns-query?name=example.com", wantStatus: 400},
		{name: "GET with empty dns", method: "GET", url: "/dns-query?dns=", wantStatus: 400},
		{name: "GET with bad base64", method: "GET", url: "/dns-query?dns=!!!!", wantStatus: 400},
		{name: "GET with standard base64 alphabet", method: "GET", url: "/dns-query?dns=" + strings.Repeat("+/", 10), wantStatus: 400},
		{name: "POST shorter than a header", method: "POST", url: "/dns-query", contentType: mediaType, body: okQuery[:11], wantStatus: 400},
		{name: "POST empty", method: "POST", url: "/dns-query", contentType: mediaType, wantStatus: 400},
		{
			name: "POST of a response", method: "POST", url: "/dns-query", contentType: mediaType,
			body: query(t, "example.com.", dns.TypeA, func(m *dns.Msg) { m.Response = true }), wantStatus: 400,
		},
		{name: "GET of a short message", method: "GET", url: "/dns-query?dns=" + b64(okQuery[:5]), wantStatus: 400},
		{name: "handler returns nil", method: "POST", url: "/dns-query", contentType: mediaType, body: query(t, "drop.example.com.", dns.TypeA, nil), wantStatus: 400},
		{name: "POST over MaxBodySize", method: "POST", url: "/dns-query", contentType: mediaType, body: big, wantStatus: 413},
		{name: "POST over MaxBodySize without content-length", method: "POST", url: "/dns-query", contentType: mediaType, body: big, chunked: true, wantStatus: 413},
		{name: "POST at MaxBodySize", method: "POST", url: "/dns-query", contentType: mediaType, body: big[:testMaxBody], wantStatus: 200, wantAnswers: 2, wantMaxAge: "max-age=120"},
		{name: "GET over MaxBodySize", method: "GET", url: "/dns-query?dns=" + b64(big), wantStatus: 413},
		{name: "PUT", method: "PUT", url: "/dns-query", contentType: mediaType, body: okQuery, wantStatus: 405},
		{name: "DELETE", method: "DELETE", url: "/dns-query", wantStatus: 405},
		{name: "HEAD", method: "HEAD", url: "/dns-query?dns=" + b64(okQuery), wantStatus: 405},
		{name: "other path", method: "POST", url: "/resolve", contentType: mediaType, body: okQuery, wantStatus: 404},
		{name: "path prefix", method: "GET", url: "/dns-query/x?dns=" + b64(okQuery), wantStatus: 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body io.Reader
			if tt.body != nil {
				body = bytes.NewReader(tt.body)
				if tt.chunked {
					body = io.MultiReader(body) // no length known to net/http
				}
			}
			req, err := http.NewRequest(tt.method, base+tt.url, body)
			if err != nil {
				t.Fatal(err)
			}
			if tt.contentType != "" {
				req.Header.Set("Content-Type", tt.contentType)
			}
			req.Header.Set("Accept", mediaType)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatalf("%s %s: %v", tt.method, tt.url, err)
			}
			defer resp.Body.Close()
			raw, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatalf("reading body: %v", err)
			}
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status = %d (%q), want %d", resp.StatusCode, raw, tt.wantStatus)
			}
			if tt.wantStatus != 200 {
				if tt.wantStatus == 405 && resp.Header.Get("Allow") != "GET, POST" {
					t.Errorf("Allow = %q, want %q", resp.Header.Get("Allow"), "GET, POST")
				}
				return
			}
			if resp.ProtoMajor != 2 {
				t.Errorf("proto = %s, want HTTP/2", resp.Proto)
			}
			if got := resp.Header.Get("Content-Type"); got != mediaType {
				t.Errorf("Content-Type = %q, want %q", got, mediaType)
			}
			if got := resp.Header.Get("Cache-Control"); got != tt.wantMaxAge {
				t.Errorf("Cache-Control = %q, want %q", got, tt.wantMaxAge)
			}
			m := new(dns.Msg)
			if err := m.Unpack(raw); err != nil {
				t.Fatalf("unpacking response: %v", err)
			}
			if m.Rcode != tt.wantRcode || len(m.Answer) != tt.wantAnswers {
				t.Errorf("response rcode %s with %d answers, want %s with %d:\n%v",
					dns.RcodeToString[m.Rcode], len(m.Answer), dns.RcodeToString[tt.wantRcode], tt.wantAnswers, m)
			}
		})
	}
}

// TestServerConcurrentStreams multiplexes many queries over one HTTP/2
// connection.
func TestServerConcurrentStreams(t *testing.T) {
	s, pki := startServer(t)
	c := newClient(t, pki)
	url := "https://" + s.Addr().String() + "/dns-query"
	q := query(t, "example.com.", dns.TypeA, nil)
	// One request first, so that the rest share its connection.
	resp, err := c.Post(url, mediaType, bytes.NewReader(q))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	errs := make(chan error, 64)
	for range cap(errs) {
		go func() {
			resp, err := c.Post(url, mediaType, bytes.NewReader(q))
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			io.Copy(io.Discard, resp.Body)
			if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
				errs <- &unexpectedStatus{resp.Status, resp.Proto}
				return
			}
			errs <- nil
		}()
	}
	for range cap(errs) {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

type unexpectedStatus struct{ status, proto string }

func (e *unexpectedStatus) Error() string { return "unexpected " + e.proto + " " + e.status }

// TestHTTP1Refused: HTTP/1.1 is not spoken. A client that offers only
// http/1.1 in ALPN, or none, and sends an HTTP/1.1 request gets 505 and
// the connection is closed; one that negotiated h2 gets the server's
// SETTINGS at once, and is closed when its preface is not HTTP/2's.
func TestHTTP1Refused(t *testing.T) {
	s, pki := startServer(t)
	for _, tt := range []struct {
		name   string
		alpn   []string
		send   string
		want   string // prefix of what the server says before it closes
		wantN1 uint64 // Stats().HTTP1 after
	}{
		{name: "HTTP/1.1 over ALPN http/1.1", alpn: []string{"http/1.1"}, send: "GET /dns-query?dns=AAAB HTTP/1.1\r\nHost: x\r\n\r\n", want: "HTTP/1.1 505 ", wantN1: 1},
		{name: "HTTP/1.1 without ALPN", send: "POST /dns-query HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", want: "HTTP/1.1 505 ", wantN1: 2},
		{name: "h2 with a bad preface", alpn: []string{"h2"}, send: "INVALID CONNECTION PREFACE\r\n\r\n", want: "\x00\x00\x18\x04\x00", wantN1: 2}, // SETTINGS, 24 octets
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tls.Dial("tcp", s.Addr().String(), &tls.Config{RootCAs: pki.Pool, NextProtos: tt.alpn})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.WriteString(c, tt.send); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("reading until the server closes: %v (got %q)", err, got)
			}
			if !strings.HasPrefix(string(got), tt.want) {
				t.Errorf("server said %q, want %q…", got, tt.want)
			}
			if n := s.Stats().HTTP1; n != tt.wantN1 {
				t.Errorf("Stats().HTTP1 = %d, want %d", n, tt.wantN1)
			}
		})
	}
}

func TestServerLifecycle(t *testing.T) {
	pki, err := tlsconf.NewPKI("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	_, certFile, keyFile, err := pki.WriteFiles(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Name: "files", Addr: "127.0.0.1:0", CertFile: certFile, KeyFile: keyFile}, answerHandler(t))
	if err != nil {
		t.Fatalf("New with CertFile/KeyFile: %v", err)
	}
	if s.Addr() != nil {
		t.Errorf("Addr() before Start = %v, want nil", s.Addr())
	}
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	addr := s.Addr().String()
	if strings.HasSuffix(addr, ":0") {
		t.Errorf("Addr() = %s, port not resolved", addr)
	}
	if err := s.Start(); err == nil {
		t.Error("second Start succeeded")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("dial after Shutdown succeeded")
	}
	if err := s.Start(); err != ErrServerClosed {
		t.Errorf("Start after Shutdown = %v, want %v", err, ErrServerClosed)
	}
}

func TestNewErrors(t *testing.T) {
	pki, err := tlsconf.NewPKI("localhost")
	if err != nil {
		t.Fatal(err)
	}
	_, certFile, keyFile, err := pki.WriteFiles(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	good := &tls.Config{Certificates: []tls.Certificate{pki.Cert}}
	tests := []struct {
		name    string
		cfg     Config
		nilH    bool
		wantErr string // substring naming the field
	}{
		{name: "nil handler", cfg: Config{Addr: "127.0.0.1:0", TLS: good}, nilH: true, wantErr: "Handler"},
		{name: "no address", cfg: Config{TLS: good}, wantErr: "Addr"},
		{name: "address without port", cfg: Config{Addr: "127.0.0.1", TLS: good}, wantErr: "Addr"},
		{name: "relative path", cfg: Config{Addr: "127.0.0.1:0", Path: "dns-query", TLS: good}, wantErr: "Path"},
		{name: "no certificate", cfg: Config{Addr: "127.0.0.1:0"}, wantErr: "CertFile/KeyFile"},
		{name: "TLS without certificate", cfg: Config{Addr: "127.0.0.1:0", TLS: &tls.Config{}}, wantErr: "TLS"},
		{name: "TLS and files", cfg: Config{Addr: "127.0.0.1:0", TLS: good, CertFile: certFile, KeyFile: keyFile}, wantErr: "TLS and CertFile/KeyFile"},
		{name: "cert without key", cfg: Config{Addr: "127.0.0.1:0", CertFile: certFile}, wantErr: "KeyFile"},
		{name: "key without cert", cfg: Config{Addr: "127.0.0.1:0", KeyFile: keyFile}, wantErr: "CertFile"},
		{name: "missing cert file", cfg: Config{Addr: "127.0.0.1:0", CertFile: certFile + ".nope", KeyFile: keyFile}, wantErr: ".nope"},
		{name: "key file is not a key", cfg: Config{Addr: "127.0.0.1:0", CertFile: certFile, KeyFile: certFile}, wantErr: "KeyFile " + certFile},
		{name: "cert file is not a certificate", cfg: Config{Addr: "127.0.0.1:0", CertFile: keyFile, KeyFile: keyFile}, wantErr: "CertFile " + keyFile},
		{name: "negative MaxHeaderBytes", cfg: Config{Addr: "127.0.0.1:0", TLS: good, MaxHeaderBytes: -1}, wantErr: "MaxHeaderBytes"},
		{name: "negative ReadHeaderTimeout", cfg: Config{Addr: "127.0.0.1:0", TLS: good, ReadHeaderTimeout: -time.Second}, wantErr: "ReadHeaderTimeout"},
		{name: "negative ReadTimeout", cfg: Config{Addr: "127.0.0.1:0", TLS: good, ReadTimeout: -time.Second}, wantErr: "ReadTimeout"},
		{name: "MaxBodySize too small", cfg: Config{Addr: "127.0.0.1:0", TLS: good, MaxBodySize: 11}, wantErr: "MaxBodySize"},
		{name: "MaxBodySize too large", cfg: Config{Addr: "127.0.0.1:0", TLS: good, MaxBodySize: 70000}, wantErr: "MaxBodySize"},
		{name: "negative IdleTimeout", cfg: Config{Addr: "127.0.0.1:0", TLS: good, IdleTimeout: -time.Second}, wantErr: "IdleTimeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Handler = answerHandler(t)
			if tt.nilH {
				h = nil
			}
			_, err := New(tt.cfg, h)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New error = %v, want one naming %q", err, tt.wantErr)
			}
		})
	}
}
