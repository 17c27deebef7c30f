package doh

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/http2"

	"xdoh/forwarder"
)

// pipeConn is the server's end of two net.Pipes, one each way, so that the
// client can close its sending side (the server reads EOF) and still read
// what the server sends. It claims a loopback address, as answerHandler
// wants.
type pipeConn struct {
	net.Conn          // reads: from the client
	out      net.Conn // writes: to the client
}

func (p pipeConn) Write(b []byte) (int, error)        { return p.out.Write(b) }
func (p pipeConn) Close() error                       { p.out.Close(); return p.Conn.Close() }
func (p pipeConn) SetWriteDeadline(t time.Time) error { return p.out.SetWriteDeadline(t) }
func (p pipeConn) RemoteAddr() net.Addr               { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353} }
func (p pipeConn) SetDeadline(t time.Time) error {
	p.out.SetWriteDeadline(t)
	return p.Conn.SetReadDeadline(t)
}

// serveRaw serves one plain HTTP/2 connection (Server.plain) whose client
// sends the preface and input, then closes its sending side; it returns
// what the server sent, decoded. It fails t unless the server ends the
// connection within 2 s, sends only well-formed HTTP/2 (see h2client's
// checks), and leaves nothing behind once shut down.
func serveRaw(t testing.TB, cert tls.Certificate, input []byte) *h2client {
	h := answerHandler(t).(funcHandler)
	answer := h.fn
	h.fn = func(r *forwarder.Request, out []byte) []byte {
		if m := new(dns.Msg); m.Unpack(r.Msg) != nil || len(m.Question) != 1 {
			return nil // a garbage query, as the server lets through: 400
		}
		return answer(r, out)
	}
	s, err := New(Config{Name: "test", Addr: "127.0.0.1:0", TLS: &tls.Config{Certificates: []tls.Certificate{cert}}}, h)
	if err != nil {
		t.Fatal(err)
	}
	s.plain = true
	cIn, sIn := net.Pipe()
	sOut, cOut := net.Pipe()
	s.serveConn(pipeConn{Conn: sIn, out: sOut})
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		if _, err := cIn.Write([]byte(http2.ClientPreface)); err == nil {
			cIn.Write(input) // fails once the server hangs up
		}
		cIn.Close()
	}()
	cOut.SetReadDeadline(time.Now().Add(2 * time.Second))
	out, err := io.ReadAll(cOut)
	if err != nil {
		t.Errorf("the server did not end the connection within 2s of the client's EOF: %v", err)
	}
	cOut.Close()
	<-sent
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if n := s.conns.Len(); n > 0 {
		t.Errorf("%d connections left after Shutdown", n)
	}
	c := newH2(t, struct {
		io.Reader
		io.Writer
	}{bytes.NewReader(out), io.Discard})
	if err := c.readToEnd(); err != io.EOF {
		t.Errorf("the server's output ends in the middle of a frame: %v", err)
	}
	return c
}

// rawSeed is a client's byte stream after the preface, and what the server
// answers it with (h2client.summary).
type rawSeed struct {
	name  string
	input []byte
	want  string
}

// rawSeeds are the fuzz target's seeds.
func rawSeeds(t testing.TB) []rawSeed {
	q := query(t, "example.com.", dns.TypeA, nil)
	frames := func(write func(c *h2client)) []byte {
		var b bytes.Buffer
		write(newH2(t, &b))
		return b.Bytes()
	}
	// after SETTINGS, as a client must start
	settings := func(write func(c *h2client)) []byte {
		return frames(func(c *h2client) { c.fr.WriteSettings(); write(c) })
	}
	get := func(c *h2client) { c.writeRequest(1, "GET", -1, q) }
	return []rawSeed{
		{"GET", settings(get), "1:200"},
		{"POST", settings(func(c *h2client) { c.writeRequest(1, "POST", len(q), q) }), "1:200"},
		{"POST in pieces without content-length", settings(func(c *h2client) { c.writeRequest(1, "POST", -1, q[:5], q[5:]) }), "1:200"},
		{"two GETs", settings(func(c *h2client) { c.writeRequest(1, "GET", -1, q); c.writeRequest(3, "GET", -1, q) }), "1:200 3:200"},
		{"CONTINUATION", settings(func(c *h2client) {
			b := c.encode(requestFields("POST", DefaultPath, len(q))...)
			c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:3]})
			c.fr.WriteContinuation(1, false, b[3:5])
			c.fr.WriteContinuation(1, true, b[5:])
			c.writeData(1, true, q)
		}), "1:200"},
		{"padding", settings(func(c *h2client) {
			b := c.encode(requestFields("POST", DefaultPath, len(q))...)
			c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b, EndHeaders: true, PadLength: 7})
			c.fr.WriteDataPadded(1, true, q, make([]byte, 200))
		}), "1:200"},
		{"PATCH", settings(func(c *h2client) { c.writeRequest(1, "PATCH", len(q), q) }), "1:405"},
		{"other path", settings(func(c *h2client) {
			c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: c.encode(requestFields("GET", "/x", -1)...), EndHeaders: true, EndStream: true})
		}), "1:404"},
		{"header table size 0", frames(func(c *h2client) {
			c.fr.WriteSettings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0})
			get(c)
			c.writeRequest(3, "GET", -1, q)
		}), "1:200 3:200"},
		{"window 0, then WINDOW_UPDATE", frames(func(c *h2client) {
			c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
			get(c)
			c.fr.WriteWindowUpdate(1, 20)
			c.fr.WriteWindowUpdate(1, 1000)
		}), "1:200"},
		{"window 0", frames(func(c *h2client) {
			c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
			get(c)
		}), "1:200…"},
		{"PING", settings(func(c *h2client) { c.fr.WritePing(false, [8]byte{1}) }), "PING"},
		{"GET, then GOAWAY", settings(func(c *h2client) { get(c); c.fr.WriteGoAway(0, http2.ErrCodeNo, nil) }), "1:200"},
		{"GET, then RST_STREAM", settings(func(c *h2client) { get(c); c.fr.WriteRSTStream(1, http2.ErrCodeCancel) }), "1:200"},
		{"DATA beyond content-length", settings(func(c *h2client) { c.writeRequest(1, "POST", 5, q) }), "1:RST_STREAM(PROTOCOL_ERROR)"},
		{"PRIORITY on itself", settings(func(c *h2client) {
			get(c)
			c.fr.WritePriority(3, http2.PriorityParam{StreamDep: 3})
		}), "1:200 3:RST_STREAM(PROTOCOL_ERROR)"},
		{"bad HPACK", settings(func(c *h2client) {
			c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0x80}, EndHeaders: true, EndStream: true})
		}), "GOAWAY(COMPRESSION_ERROR)"},
		{"first frame not SETTINGS", frames(get), "GOAWAY(PROTOCOL_ERROR)"},
		{"RST_STREAM on an idle stream", settings(func(c *h2client) { c.fr.WriteRSTStream(1, http2.ErrCodeCancel) }), "GOAWAY(PROTOCOL_ERROR)"},
		{"even stream", settings(func(c *h2client) { c.writeRequest(2, "GET", -1, q) }), "GOAWAY(PROTOCOL_ERROR)"},
		{"CONTINUATION without HEADERS", settings(func(c *h2client) { c.fr.WriteContinuation(1, true, []byte{0x82}) }), "GOAWAY(PROTOCOL_ERROR)"},
		{"WINDOW_UPDATE of 0", settings(func(c *h2client) { c.fr.WriteWindowUpdate(0, 0) }), "GOAWAY(PROTOCOL_ERROR)"},
		{"SETTINGS_MAX_FRAME_SIZE too small", frames(func(c *h2client) {
			c.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 100})
		}), "GOAWAY(PROTOCOL_ERROR)"},
		{"HEADERS padded beyond its end, then CONTINUATION", settings(func(c *h2client) {
			c.writeRaw(frameHeader(1, http2.FrameHeaders, http2.FlagHeadersPadded, 1), []byte{0x80})
			c.fr.WriteContinuation(1, true, c.encode(requestFields("GET", DefaultPath, -1)...))
		}), "GOAWAY(PROTOCOL_ERROR)"},
		{"huge frame", settings(func(c *h2client) { c.writeRaw(frameHeader(1<<24-1, http2.FrameData, 0, 1)) }), "GOAWAY(FRAME_SIZE_ERROR)"},
		{"cut-off frame", settings(func(c *h2client) { c.writeRaw(frameHeader(100, http2.FrameHeaders, 0, 1), []byte{0x82}) }), ""},
		{"HTTP/1.1 after the preface", []byte("GET / HTTP/1.1\r\n\r\n"), "GOAWAY(FRAME_SIZE_ERROR)"}, // "GET" is a length,
	}
}

// TestServerRequestSeeds runs the fuzz target's seeds and checks what the
// server answers each.
func TestServerRequestSeeds(t *testing.T) {
	cert := mustPKI(t).Cert
	for _, seed := range rawSeeds(t) {
		t.Run(seed.name, func(t *testing.T) {
			if got := serveRaw(t, cert, seed.input).summary(); got != seed.want {
				t.Errorf("server answered %q, want %q", got, seed.want)
			}
		})
	}
}

// FuzzServerRequest feeds the server arbitrary client byte streams after
// the preface: it must not panic, must end the connection soon after the
// client's EOF, must send only well-formed HTTP/2 (DATA only after a
// stream's HEADERS, bodies as long as their content-length) and must
// leave no connection behind.
func FuzzServerRequest(f *testing.F) {
	for _, seed := range rawSeeds(f) {
		f.Add(seed.input)
	}
	cert := mustPKI(f).Cert
	f.Fuzz(func(t *testing.T, input []byte) {
		serveRaw(t, cert, input)
	})
}
