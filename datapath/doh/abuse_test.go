package doh

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"xdoh/datapath/tlsconf"
	"xdoh/forwarder"
)

// readWait bounds every wait for the server in these tests: generous, for
// a busy machine and the race detector.
const readWait = 10 * time.Second

// h2client is a raw HTTP/2 client for tests that break the rules: it writes
// what it is told to and records what the server answers, stream by stream.
// Recording checks that the server keeps to the protocol: one HEADERS per
// stream, DATA only after it and before END_STREAM, a body as long as its
// content-length.
type h2client struct {
	t    testing.TB
	nc   net.Conn      // nil when the client only encodes or decodes (fuzz_test.go)
	w    io.Writer     // where frames go: nc, or a buffer
	fr   *http2.Framer // writes through Write
	hold *bytes.Buffer // Write's destination while batched
	enc  *hpack.Encoder
	hbuf bytes.Buffer

	streams map[uint32]*h2stream
	goAway  *http2.GoAwayFrame // the server's GOAWAY (its debug data not kept)
	pings   int                // PING ACKs received
}

// h2stream is the server's answer on one stream.
type h2stream struct {
	status string // :status; "" before HEADERS
	header map[string]string
	body   []byte
	ended  bool          // END_STREAM received
	reset  bool          // RST_STREAM received, with code rst
	rst    http2.ErrCode // RST_STREAM's error code
}

// newH2 returns a client that writes frames to rw and reads them from it.
func newH2(t testing.TB, rw io.ReadWriter) *h2client {
	c := &h2client{t: t, w: rw, streams: map[uint32]*h2stream{}}
	c.fr = http2.NewFramer(c, rw)
	c.fr.AllowIllegalWrites = true
	c.fr.ReadMetaHeaders = hpack.NewDecoder(tableSize, nil)
	c.enc = hpack.NewEncoder(&c.hbuf)
	return c
}

// ok fails the test on a write error.
func (c *h2client) ok(err error) {
	c.t.Helper()
	if err != nil {
		c.t.Fatalf("writing to the server: %v", err)
	}
}

// Write is where the Framer writes.
func (c *h2client) Write(p []byte) (int, error) {
	if c.hold != nil {
		return c.hold.Write(p)
	}
	return c.w.Write(p)
}

// batched sends the frames write writes in one write: a burst of pipelined
// requests the server takes in as one.
func (c *h2client) batched(write func()) error {
	c.hold = new(bytes.Buffer)
	write()
	b := c.hold.Bytes()
	c.hold = nil
	return c.writeRaw(b)
}

// writeRaw writes octets as they are: frames that lie about their length.
func (c *h2client) writeRaw(b ...[]byte) error {
	_, err := c.w.Write(bytes.Join(b, nil))
	return err
}

// frameHeader is a frame header announcing length octets, whatever follows.
func frameHeader(length int, typ http2.FrameType, flags http2.Flags, id uint32) []byte {
	return []byte{byte(length >> 16), byte(length >> 8), byte(length), byte(typ), byte(flags),
		byte(id >> 24), byte(id >> 16), byte(id >> 8), byte(id)}
}

// requestFields is a request header list: content-length unless clen is
// -1.
func requestFields(method, path string, clen int) []hpack.HeaderField {
	f := []hpack.HeaderField{
		{Name: ":method", Value: method}, {Name: ":scheme", Value: "https"}, {Name: ":path", Value: path},
		{Name: "content-type", Value: mediaType},
	}
	if clen >= 0 {
		f = append(f, hpack.HeaderField{Name: "content-length", Value: strconv.Itoa(clen)})
	}
	return f
}

// encode returns a header block, with the client's HPACK state.
func (c *h2client) encode(fields ...hpack.HeaderField) []byte {
	c.hbuf.Reset()
	for _, f := range fields {
		c.enc.WriteField(f)
	}
	return bytes.Clone(c.hbuf.Bytes())
}

// writeRequest sends a request on stream id: a GET carries the body in
// ?dns=, any other method in DATA frames, each part of body in its own, the
// last with END_STREAM. clen is the content-length to announce; -1: none.
func (c *h2client) writeRequest(id uint32, method string, clen int, body ...[]byte) error {
	path := DefaultPath
	if method == "GET" {
		path += "?dns=" + base64.RawURLEncoding.EncodeToString(bytes.Join(body, nil))
		body = nil
	}
	block := c.encode(requestFields(method, path, clen)...)
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true, EndStream: len(body) == 0}); err != nil {
		return err
	}
	for i, part := range body {
		if err := c.writeData(id, i == len(body)-1, part); err != nil {
			return err
		}
	}
	return nil
}

// writeData sends b in DATA frames of at most 16384 octets, the last with
// END_STREAM when end.
func (c *h2client) writeData(id uint32, end bool, b []byte) error {
	for {
		n := min(len(b), maxFrame)
		if err := c.fr.WriteData(id, end && n == len(b), b[:n]); err != nil || n == len(b) {
			return err
		}
		b = b[n:]
	}
}

// stream returns the record of stream id.
func (c *h2client) stream(id uint32) *h2stream {
	st := c.streams[id]
	if st == nil {
		st = &h2stream{}
		c.streams[id] = st
	}
	return st
}

// readUntil reads and records frames until done reports true for one; it
// fails the test if the connection ends or stays silent first.
func (c *h2client) readUntil(done func(http2.Frame) bool) {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(readWait))
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.t.Fatalf("waiting for a frame: %v (so far: %s)", err, c.summary())
		}
		c.record(f)
		if done(f) {
			return
		}
	}
}

// ended is a readUntil condition: stream id is answered or reset.
func (c *h2client) ended(id uint32) func(http2.Frame) bool {
	return func(http2.Frame) bool { st := c.streams[id]; return st != nil && (st.ended || st.reset) }
}

// readToEnd reads and records frames until the server closes the
// connection, and returns the error the reading ended with (io.EOF: a
// clean close after a whole frame). It fails the test if the connection is
// still open after readWait or the server sends a malformed frame.
func (c *h2client) readToEnd() error {
	c.t.Helper()
	if c.nc != nil {
		c.nc.SetReadDeadline(time.Now().Add(readWait))
	}
	for {
		f, err := c.fr.ReadFrame()
		var ce http2.ConnectionError
		var se http2.StreamError
		switch {
		case err == nil:
			c.record(f)
		case errors.Is(err, os.ErrDeadlineExceeded):
			c.t.Fatalf("connection still open after %v (so far: %s)", readWait, c.summary())
		case errors.As(err, &ce), errors.As(err, &se), errors.Is(err, http2.ErrFrameTooLarge):
			c.t.Fatalf("malformed frame from the server: %v (so far: %s)", err, c.summary())
		default:
			return err
		}
	}
}

// record takes note of a frame from the server.
func (c *h2client) record(f http2.Frame) {
	id := f.Header().StreamID
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		st := c.stream(id)
		if st.status != "" || st.reset {
			c.t.Errorf("stream %d: HEADERS after HEADERS or RST_STREAM", id)
		}
		st.status, st.header, st.ended = f.PseudoValue("status"), map[string]string{}, f.StreamEnded()
		for _, hf := range f.RegularFields() {
			st.header[hf.Name] = hf.Value
		}
	case *http2.DataFrame:
		st := c.stream(id)
		if st.status == "" || st.ended || st.reset {
			c.t.Errorf("stream %d: DATA without HEADERS before it, or after END_STREAM or RST_STREAM", id)
		}
		st.body = append(st.body, f.Data()...)
		if st.ended = f.StreamEnded(); st.ended && strconv.Itoa(len(st.body)) != st.header["content-length"] {
			c.t.Errorf("stream %d: %d octets of body, content-length %s", id, len(st.body), st.header["content-length"])
		}
		if c.nc != nil && f.Length > 0 {
			// Keep the connection window open; tests of flow control
			// work the stream windows.
			c.fr.WriteWindowUpdate(0, f.Length)
		}
	case *http2.RSTStreamFrame:
		st := c.stream(id)
		st.reset, st.rst = true, f.ErrCode
	case *http2.GoAwayFrame:
		if c.goAway != nil {
			c.t.Errorf("second GOAWAY (%v after %v)", f.ErrCode, c.goAway.ErrCode)
		}
		c.goAway = &http2.GoAwayFrame{LastStreamID: f.LastStreamID, ErrCode: f.ErrCode}
	case *http2.PingFrame:
		if f.IsAck() {
			c.pings++
		}
	}
}

// summary is the server's answer in brief: "id:status" for each stream
// ("…" while unfinished, "+RST_STREAM(code)" when reset), "PING" for each
// PING ACK and "GOAWAY(code)", e.g. "1:200 3:RST_STREAM(REFUSED_STREAM)".
func (c *h2client) summary() string {
	var out []string
	for _, id := range slices.Sorted(maps.Keys(c.streams)) {
		st := c.streams[id]
		s := fmt.Sprintf("%d:%s", id, st.status)
		if st.status != "" && !st.ended && !st.reset {
			s += "…"
		}
		if st.reset {
			if st.status != "" {
				s += "+"
			}
			s += "RST_STREAM(" + st.rst.String() + ")"
		}
		out = append(out, s)
	}
	for range c.pings {
		out = append(out, "PING")
	}
	if c.goAway != nil {
		out = append(out, "GOAWAY("+c.goAway.ErrCode.String()+")")
	}
	return strings.Join(out, " ")
}

// h2env is a loopback DoH server for raw HTTP/2 clients, with the number of
// goroutines that ran before any client connected.
type h2env struct {
	s    *Server
	pki  *tlsconf.PKI
	base int
}

// newEnv starts a server configured by cfg (see startServerWith) with
// handler h; nil means answerHandler.
func newEnv(t *testing.T, cfg Config, h Handler) *h2env {
	t.Helper()
	pki := mustPKI(t)
	cfg.Name, cfg.Addr = "test", "127.0.0.1:0"
	cfg.TLS = &tls.Config{Certificates: []tls.Certificate{pki.Cert}}
	if h == nil {
		h = answerHandler(t)
	}
	s, err := New(cfg, h)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), readWait)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return &h2env{s: s, pki: pki, base: runtime.NumGoroutine()}
}

// dial connects over TLS with ALPN h2 and sends the client preface and a
// SETTINGS frame with settings.
func (e *h2env) dial(t *testing.T, settings ...http2.Setting) *h2client {
	t.Helper()
	nc, err := tls.Dial("tcp", e.s.Addr().String(), &tls.Config{RootCAs: e.pki.Pool, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetWriteDeadline(time.Now().Add(3 * readWait))
	c := newH2(t, nc)
	c.nc = nc
	c.ok(c.writeRaw([]byte(http2.ClientPreface)))
	c.ok(c.fr.WriteSettings(settings...))
	return c
}

// settled fails the test unless, within a few seconds, the server has no
// connection left and no more goroutines run than before the test's
// clients connected: whatever a connection held is gone with it.
func (e *h2env) settled(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		n := e.s.conns.Len()
		g := runtime.NumGoroutine()
		if n == 0 && g <= e.base {
			return
		}
		if time.Now().After(deadline) {
			var dump strings.Builder
			pprof.Lookup("goroutine").WriteTo(&dump, 1)
			t.Fatalf("%d connections and %d goroutines left (%d before the test):\n%s", n, g, e.base, dump.String())
		}
	}
}

// waitStats polls the server's counters until ok holds, or fails the test.
func (e *h2env) waitStats(t *testing.T, what string, ok func(Stats) bool) {
	t.Helper()
	for deadline := time.Now().Add(readWait); !ok(e.s.Stats()); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			var dump strings.Builder
			pprof.Lookup("goroutine").WriteTo(&dump, 1)
			t.Fatalf("after %v, want %s; Stats() = %+v\n%s", readWait, what, e.s.Stats(), dump.String())
		}
	}
}

// heldHandler is answerHandler with its upstream answers (names under
// async.) held until release. It counts the queries in flight: Resolve
// called, done not yet.
type heldHandler struct {
	funcHandler
	mu                    sync.Mutex
	held                  []func()
	inFlight, maxInFlight int
}

func newHeldHandler(t *testing.T) *heldHandler {
	h := &heldHandler{funcHandler: answerHandler(t).(funcHandler)}
	t.Cleanup(func() { h.release() })
	return h
}

func (h *heldHandler) Resolve(r *forwarder.Request, _ []byte, done func([]byte)) ([]byte, bool) {
	req := *r
	req.Msg = bytes.Clone(r.Msg)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.inFlight++
	h.maxInFlight = max(h.maxInFlight, h.inFlight)
	h.held = append(h.held, func() { done(h.fn(&req, make([]byte, 0, 512))) })
	return nil, false
}

// release answers every query held.
func (h *heldHandler) release() {
	h.mu.Lock()
	held := h.held
	h.held = nil
	h.inFlight -= len(held)
	h.mu.Unlock()
	for _, answer := range held {
		answer()
	}
}

// waitHeld waits until n queries are held.
func (h *heldHandler) waitHeld(t *testing.T, n int) {
	t.Helper()
	for deadline := time.Now().Add(readWait); ; time.Sleep(time.Millisecond) {
		h.mu.Lock()
		got := len(h.held)
		h.mu.Unlock()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d queries held after %v, want %d", got, readWait, n)
		}
	}
}

// padded makes answer's DNS messages n octets longer with junk, which the
// server passes on as it is.
func padded(answer func(*forwarder.Request, []byte) []byte, n int) func(*forwarder.Request, []byte) []byte {
	return func(r *forwarder.Request, out []byte) []byte { return append(answer(r, out), make([]byte, n)...) }
}

// TestTruncatedFrame: a client that announces a 100-octet frame, sends 10
// and closes leaves nothing behind; when it closes only its sending side,
// the server closes the connection.
func TestTruncatedFrame(t *testing.T) {
	for _, half := range []bool{false, true} {
		t.Run(map[bool]string{false: "close", true: "close write"}[half], func(t *testing.T) {
			e := newEnv(t, Config{}, nil)
			c := e.dial(t)
			c.ok(c.writeRaw(frameHeader(100, http2.FrameHeaders, http2.FlagHeadersEndHeaders, 1), make([]byte, 10)))
			if half {
				c.ok(c.nc.(*tls.Conn).CloseWrite())
				c.readToEnd()
			} else {
				c.ok(c.nc.Close())
			}
			e.settled(t)
			if st := e.s.Stats(); st.ProtocolErrors != 0 {
				t.Errorf("Stats().ProtocolErrors = %d, want 0: a cut-off frame is no protocol error", st.ProtocolErrors)
			}
		})
	}
}

// TestFrameTooLarge: a frame header announcing more than 16384 octets
// (SETTINGS_MAX_FRAME_SIZE) ends the connection with GOAWAY
// FRAME_SIZE_ERROR, before its payload is read.
func TestFrameTooLarge(t *testing.T) {
	for _, tt := range []struct {
		length int
		typ    http2.FrameType
	}{
		{maxFrame + 1, http2.FrameData},
		{1<<24 - 1, http2.FrameHeaders},
		{maxFrame + 1, http2.FramePing},
	} {
		t.Run(fmt.Sprintf("%v of %d", tt.typ, tt.length), func(t *testing.T) {
			e := newEnv(t, Config{}, nil)
			c := e.dial(t)
			c.ok(c.writeRaw(frameHeader(tt.length, tt.typ, 0, 1)))
			c.readToEnd()
			if got := c.summary(); got != "GOAWAY(FRAME_SIZE_ERROR)" {
				t.Errorf("server answered %q, want GOAWAY(FRAME_SIZE_ERROR)", got)
			}
			if n := e.s.Stats().ProtocolErrors; n != 1 {
				t.Errorf("Stats().ProtocolErrors = %d, want 1", n)
			}
			e.settled(t)
		})
	}
}

// TestHeaderBlockTimeout: a header block left unfinished, or trickled in a
// byte at a time, ends the connection with GOAWAY PROTOCOL_ERROR
// ReadHeaderTimeout after its HEADERS, counted in Stats().Timeouts.
func TestHeaderBlockTimeout(t *testing.T) {
	const timeout = 500 * time.Millisecond
	for _, trickle := range []bool{false, true} {
		t.Run(map[bool]string{false: "HEADERS without END_HEADERS", true: "one octet per CONTINUATION"}[trickle], func(t *testing.T) {
			e := newEnv(t, Config{ReadHeaderTimeout: timeout}, nil)
			c := e.dial(t)
			block := c.encode(requestFields("GET", DefaultPath+"?dns=AAABAAABAAAAAAAAB2V4YW1wbGUDY29tAAABAAE", -1)...)
			c.ok(c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:1], EndStream: true}))
			start := time.Now()
			done := make(chan struct{})
			go func() {
				defer close(done)
				for i := 1; trickle && i < len(block)-1; i++ {
					time.Sleep(timeout / 10)
					if c.fr.WriteContinuation(1, false, block[i:i+1]) != nil {
						return
					}
				}
			}()
			c.readToEnd()
			<-done
			if d := time.Since(start); d < timeout-deadlineSlop {
				t.Errorf("connection ended %v after HEADERS, before ReadHeaderTimeout %v", d, timeout)
			}
			if got := c.summary(); got != "GOAWAY(PROTOCOL_ERROR)" {
				t.Errorf("server answered %q, want GOAWAY(PROTOCOL_ERROR)", got)
			}
			if st := e.s.Stats(); st.Timeouts != 1 || st.ProtocolErrors != 1 {
				t.Errorf("Stats() Timeouts %d, ProtocolErrors %d; want 1, 1", st.Timeouts, st.ProtocolErrors)
			}
			e.settled(t)
		})
	}
}

// TestDataBeyondContentLength: a POST whose DATA does not add up to its
// content-length is malformed (RFC 9113 8.1.1): RST_STREAM PROTOCOL_ERROR,
// counted in Stats().StreamErrors. The connection stays usable, and once
// idle it is closed for idleness with nothing left of the reset stream
// (IdleTimeout, not ReadTimeout, and no timeout counted).
func TestDataBeyondContentLength(t *testing.T) {
	q := query(t, "example.com.", dns.TypeA, nil)
	for _, tt := range []struct {
		name string
		clen int
		body [][]byte
	}{
		{"one DATA frame over it", len(q) - 1, [][]byte{q}},
		{"the second DATA frame over it", len(q), [][]byte{q, {0}}},
		{"END_STREAM short of it", len(q) + 1, [][]byte{q}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, Config{IdleTimeout: time.Second}, nil)
			c := e.dial(t)
			c.ok(c.writeRequest(1, "POST", tt.clen, tt.body...))
			c.ok(c.writeRequest(3, "GET", -1, q))
			c.readUntil(c.ended(3))
			if got := c.summary(); got != "1:RST_STREAM(PROTOCOL_ERROR) 3:200" {
				t.Errorf("server answered %q, want 1:RST_STREAM(PROTOCOL_ERROR) 3:200", got)
			}
			c.readToEnd()
			if c.goAway == nil || c.goAway.ErrCode != http2.ErrCodeNo {
				t.Errorf("connection ended with %q, want GOAWAY(NO_ERROR) for idleness", c.summary())
			}
			if st := e.s.Stats(); st.StreamErrors != 1 || st.IdleClosed != 1 || st.Timeouts != 0 {
				t.Errorf("Stats() StreamErrors %d, IdleClosed %d, Timeouts %d; want 1, 1, 0", st.StreamErrors, st.IdleClosed, st.Timeouts)
			}
			e.settled(t)
		})
	}
}

// TestBodyTooLarge: a POST body over 65535 octets gets 413, counted in
// Stats().TooLarge: without content-length when its DATA (within the
// stream window the server grants) passes the limit; with a content-length
// over it at once, before any DATA; with the body sent after all, too. The
// connection stays usable, and a request answered early is no timeout.
func TestBodyTooLarge(t *testing.T) {
	q := query(t, "example.com.", dns.TypeA, nil)
	big := make([]byte, DefaultMaxBodySize+1)
	copy(big, q)
	for _, tt := range []struct {
		name string
		clen int
		body []byte // nil: none
		want string
	}{
		{"no content-length", -1, big, "1:413 3:200"},
		{"content-length only", len(big), nil, "1:413+RST_STREAM(NO_ERROR) 3:200"},
		{"content-length and body", len(big), big, "1:413+RST_STREAM(NO_ERROR) 3:200"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, Config{IdleTimeout: time.Second, ReadTimeout: time.Second}, nil)
			c := e.dial(t)
			block := c.encode(requestFields("POST", DefaultPath, tt.clen)...)
			c.ok(c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndHeaders: true}))
			if tt.body == nil {
				c.readUntil(c.ended(1)) // at once: no DATA sent
			} else {
				c.ok(c.writeData(1, true, tt.body))
			}
			c.ok(c.writeRequest(3, "GET", -1, q))
			c.readUntil(c.ended(3))
			if got := c.summary(); got != tt.want {
				t.Errorf("server answered %q, want %q", got, tt.want)
			}
			c.readToEnd()
			if c.goAway == nil || c.goAway.ErrCode != http2.ErrCodeNo {
				t.Errorf("connection ended with %q, want GOAWAY(NO_ERROR) for idleness", c.summary())
			}
			if st := e.s.Stats(); st.TooLarge != 1 || st.OK != 1 || st.Timeouts != 0 || st.StreamErrors != 0 {
				t.Errorf("Stats() TooLarge %d, OK %d, Timeouts %d, StreamErrors %d; want 1, 1, 0, 0", st.TooLarge, st.OK, st.Timeouts, st.StreamErrors)
			}
			e.settled(t)
		})
	}
}

// TestIgnoredStreamsKeepNoBody: a request reset or answered before its
// body ended (the client stops sending, as RST_STREAM asks) keeps none of
// the body taken so far, though the server ignores the stream's DATA until
// ReadTimeout and MaxConcurrentStreams no longer counts it.
func TestIgnoredStreamsKeepNoBody(t *testing.T) {
	const streams = 100
	heap := func() int64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return int64(m.HeapAlloc)
	}
	for _, tt := range []struct {
		name string
		clen int
		want string
	}{
		{"DATA beyond content-length", DefaultMaxBodySize - 1, "RST_STREAM(PROTOCOL_ERROR)"},
		{"body over MaxBodySize", -1, "413+RST_STREAM(NO_ERROR)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, Config{MaxConcurrentStreams: 10}, nil)
			c := e.dial(t)
			body := make([]byte, DefaultMaxBodySize+1)
			before := heap()
			for id := uint32(1); id < 2*streams; id += 2 {
				block := c.encode(requestFields("POST", DefaultPath, tt.clen)...)
				c.ok(c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true}))
				c.ok(c.writeData(id, false, body))
			}
			c.ok(c.fr.WritePing(false, [8]byte{}))
			c.readUntil(func(http2.Frame) bool { return c.pings == 1 })
			if grown := heap() - before; grown > streams*DefaultMaxBodySize/4 {
				t.Errorf("heap grew by %d KiB for %d streams ignored", grown>>10, streams)
			}
			var want []string
			for id := uint32(1); id < 2*streams; id += 2 {
				want = append(want, fmt.Sprintf("%d:%s", id, tt.want))
			}
			if got, want := c.summary(), strings.Join(append(want, "PING"), " "); got != want {
				t.Errorf("server answered\n%s\nwant\n%s", got, want)
			}
			c.nc.Close()
			e.settled(t)
		})
	}
}

// TestMethodNotAllowed: a method other than GET and POST, known or made
// up, gets 405 with allow: GET, POST; methods are case-sensitive.
func TestMethodNotAllowed(t *testing.T) {
	q := query(t, "example.com.", dns.TypeA, nil)
	for _, tt := range []struct {
		method string
		body   [][]byte
	}{
		{"PATCH", [][]byte{q}},
		{"FROBNICATE", nil},
		{"get", nil},
	} {
		t.Run(tt.method, func(t *testing.T) {
			e := newEnv(t, Config{}, nil)
			c := e.dial(t)
			c.ok(c.writeRequest(1, tt.method, -1, tt.body...))
			c.readUntil(c.ended(1))
			if got := c.summary(); got != "1:405" {
				t.Errorf("server answered %q, want 1:405", got)
			}
			if got := c.streams[1].header["allow"]; got != "GET, POST" {
				t.Errorf("allow: %q, want %q", got, "GET, POST")
			}
			if n := e.s.Stats().MethodNotAllowed; n != 1 {
				t.Errorf("Stats().MethodNotAllowed = %d, want 1", n)
			}
			c.nc.Close()
			e.settled(t)
		})
	}
}

// TestSlowClient: a client that lets its answers pile up is cut off and
// counted in Stats().SlowClients: one that does not read (a tiny socket
// receive buffer, answers of 60 KiB) once a write to it takes longer than
// WriteTimeout, and nothing blocks on the way, not even an answer from
// upstream that arrives meanwhile; one that opens no flow-control window
// once MaxPending octets are held back, long before WriteTimeout. Not one
// octet of an answer passes a closed window.
func TestSlowClient(t *testing.T) {
	q := query(t, "example.com.", dns.TypeA, nil)
	notReading := func(t *testing.T, e *h2env) *h2client {
		c := e.dial(t)
		if err := c.nc.(*tls.Conn).NetConn().(*net.TCPConn).SetReadBuffer(4 << 10); err != nil {
			t.Fatal(err)
		}
		c.ok(c.fr.WriteWindowUpdate(0, maxWindow-65535)) // only the socket holds answers back
		return c
	}
	// stall sends GETs from stream id on, each once the one before is
	// answered, until the server answers no more (or cuts the client
	// off): the reader is stuck writing, and the write that stuck is the
	// one it makes at idle, from inside a read on the socket (onIdle).
	stall := func(t *testing.T, e *h2env, c *h2client, id uint32) {
		for ok := e.s.Stats().OK; e.s.Stats().SlowClients == 0; id += 2 {
			c.ok(c.writeRequest(id, "GET", -1, q))
			for sent := time.Now(); e.s.Stats().OK == ok; time.Sleep(time.Millisecond) {
				if time.Since(sent) > time.Second || e.s.Stats().SlowClients > 0 {
					return
				}
			}
			ok++
		}
	}
	t.Run("does not read", func(t *testing.T) {
		h := answerHandler(t).(funcHandler)
		h.fn = padded(h.fn, 60<<10)
		e := newEnv(t, Config{WriteTimeout: 500 * time.Millisecond}, h)
		c := notReading(t, e)
		stall(t, e, c, 1)
		e.waitStats(t, "SlowClients 1", func(s Stats) bool { return s.SlowClients == 1 })
		e.settled(t)
	})
	t.Run("does not read, answers from upstream", func(t *testing.T) {
		// The reader is stuck writing (WriteTimeout is long) when the
		// held answers from upstream pass MaxPending.
		h := newHeldHandler(t)
		h.fn = padded(h.fn, 60<<10)
		e := newEnv(t, Config{MaxPending: 256 << 10, WriteTimeout: time.Minute}, h)
		c := notReading(t, e)
		async := query(t, "async.example.com.", dns.TypeA, nil)
		for id := uint32(1); id < 2*10; id += 2 {
			c.ok(c.writeRequest(id, "GET", -1, async))
		}
		h.waitHeld(t, 10)
		stall(t, e, c, 21)
		released := make(chan struct{})
		go func() { h.release(); close(released) }()
		select {
		case <-released:
		case <-time.After(readWait):
			t.Fatalf("answering the held queries still blocked after %v", readWait)
		}
		e.waitStats(t, "SlowClients 1", func(s Stats) bool { return s.SlowClients == 1 })
		e.settled(t)
	})
	t.Run("closed window", func(t *testing.T) {
		e := newEnv(t, Config{MaxPending: 64 << 10, MaxConcurrentStreams: 4096, WriteTimeout: time.Minute}, nil)
		c := e.dial(t, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
		for id := uint32(1); id < 2*4096; id += 2 {
			if c.writeRequest(id, "GET", -1, q) != nil {
				break // cut off
			}
		}
		e.waitStats(t, "SlowClients 1", func(s Stats) bool { return s.SlowClients == 1 })
		c.readToEnd()
		for id, st := range c.streams {
			if len(st.body) > 0 || st.status != "200" {
				t.Fatalf("stream %d: %q with %d octets of body, want a 200 held back", id, st.status, len(st.body))
			}
		}
		e.settled(t)
	})
}

// TestRapidReset (CVE-2023-44487): a client that opens streams and resets
// them at once while their queries are in flight gets GOAWAY
// ENHANCE_YOUR_CALM after more than resetBurst seconds' worth of
// MaxResetRate (1000 resets by default), counted in Stats().ResetFloods;
// all along, the queries in flight in the handler never exceed
// MaxConcurrentStreams, however many streams were reset.
func TestRapidReset(t *testing.T) {
	for _, rate := range []int{0, 20} {
		t.Run(fmt.Sprintf("MaxResetRate %d", rate), func(t *testing.T) { testRapidReset(t, rate) })
	}
}

func testRapidReset(t *testing.T, rate int) {
	const maxStreams = 200
	h := newHeldHandler(t)
	e := newEnv(t, Config{MaxConcurrentStreams: maxStreams, MaxResetRate: rate}, h)
	burst := resetBurst * e.s.cfg.MaxResetRate
	c := e.dial(t)
	q := query(t, "async.example.com.", dns.TypeA, nil)
	id, resets := uint32(1), 0
	for batch := byte(0); c.goAway == nil; batch++ {
		if batch == 50 {
			t.Fatalf("no GOAWAY after %d resets; Stats() = %+v", resets, e.s.Stats())
		}
		// More streams than the limit; then a PING, whose ACK says the
		// server has taken in everything before it.
		for range maxStreams + 50 {
			if c.writeRequest(id, "GET", -1, q) != nil || c.fr.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
				break // GOAWAY sent, connection closed
			}
			id, resets = id+2, resets+1
		}
		c.fr.WritePing(false, [8]byte{batch})
		c.readUntil(func(f http2.Frame) bool {
			p, ok := f.(*http2.PingFrame)
			return ok && p.IsAck() || c.goAway != nil
		})
		h.release()
	}
	c.readToEnd()
	if c.goAway.ErrCode != http2.ErrCodeEnhanceYourCalm || resets <= burst {
		t.Errorf("GOAWAY %v after %d resets, want ENHANCE_YOUR_CALM after more than %d", c.goAway.ErrCode, resets, burst)
	}
	if st := e.s.Stats(); st.ResetFloods != 1 || st.ProtocolErrors != 1 {
		t.Errorf("Stats() ResetFloods %d, ProtocolErrors %d; want 1, 1", st.ResetFloods, st.ProtocolErrors)
	}
	if h.maxInFlight != maxStreams {
		t.Errorf("at most %d queries in flight, want MaxConcurrentStreams (%d) and no more", h.maxInFlight, maxStreams)
	}
	e.settled(t)
}

// TestContinuationFlood: a header block that never ends, in CONTINUATION
// frames large or empty, ends the connection with GOAWAY ENHANCE_YOUR_CALM
// once it passes MaxHeaderBytes+16 KiB (frame headers included), counted
// in Stats().HeaderFloods; the server then stops reading: the flood's
// writes fail.
func TestContinuationFlood(t *testing.T) {
	const maxHeader = 4000
	for _, tt := range []struct {
		name string
		pad  int // octets of x-pad per CONTINUATION; 0: empty frames
	}{
		{"1000-octet fields", 1000},
		{"empty frames", 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, Config{MaxHeaderBytes: maxHeader}, nil)
			c := e.dial(t)
			block := c.encode(requestFields("GET", DefaultPath+"?dns=AAABAAABAAAAAAAAB2V4YW1wbGUDY29tAAABAAE", -1)...)
			var frag []byte
			if tt.pad > 0 { // never indexed: every copy costs its full size
				frag = c.encode(hpack.HeaderField{Name: "x-pad", Value: strings.Repeat("x", tt.pad), Sensitive: true})
			}
			c.ok(c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndStream: true}))
			// Enough to pass the limit, then on and on until the server
			// hangs up.
			for sent := frameHeaderLen + len(block); sent <= maxHeader+16<<10; sent += frameHeaderLen + len(frag) {
				c.ok(c.fr.WriteContinuation(1, false, frag))
			}
			flood := make(chan error, 1)
			go func() {
				for {
					if err := c.fr.WriteContinuation(1, false, frag); err != nil {
						flood <- err
						return
					}
				}
			}()
			c.readToEnd()
			select {
			case <-flood:
			case <-time.After(readWait):
				t.Fatalf("the server still takes the flood %v after closing", readWait)
			}
			if got := c.summary(); got != "GOAWAY(ENHANCE_YOUR_CALM)" {
				t.Errorf("server answered %q, want GOAWAY(ENHANCE_YOUR_CALM)", got)
			}
			if st := e.s.Stats(); st.HeaderFloods != 1 || st.ProtocolErrors != 1 {
				t.Errorf("Stats() HeaderFloods %d, ProtocolErrors %d; want 1, 1", st.HeaderFloods, st.ProtocolErrors)
			}
			e.settled(t)
		})
	}
}

// TestStreamLimit: past MaxConcurrentStreams queries in flight, a new
// stream is refused with RST_STREAM REFUSED_STREAM, counted in
// Stats().RefusedStreams; once the queries are answered, new streams are
// taken again.
func TestStreamLimit(t *testing.T) {
	h := newHeldHandler(t)
	e := newEnv(t, Config{MaxConcurrentStreams: 4}, h)
	c := e.dial(t)
	q := query(t, "async.example.com.", dns.TypeA, nil)
	for id := uint32(1); id <= 9; id += 2 {
		c.ok(c.writeRequest(id, "GET", -1, q))
	}
	c.readUntil(c.ended(9))
	h.waitHeld(t, 4)
	if got := c.summary(); got != "9:RST_STREAM(REFUSED_STREAM)" {
		t.Errorf("with 4 queries held the server answered %q, want 9:RST_STREAM(REFUSED_STREAM)", got)
	}
	h.release()
	for id := uint32(1); id <= 7; id += 2 {
		c.readUntil(c.ended(id))
	}
	for id := uint32(11); id <= 17; id += 2 {
		c.ok(c.writeRequest(id, "GET", -1, q))
	}
	h.waitHeld(t, 4)
	h.release()
	for id := uint32(11); id <= 17; id += 2 {
		c.readUntil(c.ended(id))
	}
	if got, want := c.summary(), "1:200 3:200 5:200 7:200 9:RST_STREAM(REFUSED_STREAM) 11:200 13:200 15:200 17:200"; got != want {
		t.Errorf("server answered %q, want %q", got, want)
	}
	if n := e.s.Stats().RefusedStreams; n != 1 || h.maxInFlight != 4 {
		t.Errorf("Stats().RefusedStreams = %d, at most %d in flight; want 1, 4", n, h.maxInFlight)
	}
	c.nc.Close()
	e.settled(t)
}

// TestFlowControlOut: a client with a tiny SETTINGS_INITIAL_WINDOW_SIZE
// gets its answer in DATA frames no larger than its window, one per
// WINDOW_UPDATE, and they add up to the DNS answer.
func TestFlowControlOut(t *testing.T) {
	q := query(t, "example.com.", dns.TypeA, nil)
	for _, window := range []uint32{10, 1} {
		t.Run(fmt.Sprint("window ", window), func(t *testing.T) {
			e := newEnv(t, Config{}, nil)
			c := e.dial(t, http2.Setting{ID: http2.SettingInitialWindowSize, Val: window})
			c.ok(c.writeRequest(1, "GET", -1, q))
			pieces := 0
			c.readUntil(func(f http2.Frame) bool {
				if d, ok := f.(*http2.DataFrame); ok {
					if pieces++; d.Length > window {
						t.Errorf("DATA of %d octets, window %d", d.Length, window)
					}
					if !d.StreamEnded() {
						c.ok(c.fr.WriteWindowUpdate(1, d.Length))
					}
				}
				return c.ended(1)(f)
			})
			st := c.streams[1]
			m := new(dns.Msg)
			if err := m.Unpack(st.body); err != nil || st.status != "200" || len(m.Answer) != 2 {
				t.Fatalf("%s with %d answers (%v), want 200 with 2", st.status, len(m.Answer), err)
			}
			if want := (len(st.body) + int(window) - 1) / int(window); pieces != want {
				t.Errorf("%d octets in %d DATA frames, want %d", len(st.body), pieces, want)
			}
			c.nc.Close()
			e.settled(t)
		})
	}
}

// TestShutdownDrains: Shutdown sends GOAWAY NO_ERROR naming the last
// stream taken, lets the query in flight on it be answered, then closes
// the connection and returns nil.
func TestShutdownDrains(t *testing.T) {
	h := newHeldHandler(t)
	e := newEnv(t, Config{}, h)
	c := e.dial(t)
	c.ok(c.writeRequest(1, "GET", -1, query(t, "async.example.com.", dns.TypeA, nil)))
	h.waitHeld(t, 1)
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), readWait)
		defer cancel()
		shut <- e.s.Shutdown(ctx)
	}()
	c.readUntil(func(http2.Frame) bool { return c.goAway != nil })
	if g := c.goAway; g.ErrCode != http2.ErrCodeNo || g.LastStreamID != 1 || len(c.streams) > 0 {
		t.Errorf("server answered %q, last stream %d; want GOAWAY(NO_ERROR) for 1 and nothing else yet", c.summary(), g.LastStreamID)
	}
	h.release()
	c.readToEnd()
	if got := c.summary(); got != "1:200 GOAWAY(NO_ERROR)" {
		t.Errorf("server answered %q, want 1:200 GOAWAY(NO_ERROR)", got)
	}
	select {
	case err := <-shut:
		if err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	case <-time.After(readWait):
		t.Fatalf("Shutdown still waiting %v after the connection closed", readWait)
	}
	e.settled(t)
}

// TestPipelinedBurst: a client that reads its answers is not cut off when
// a burst of requests, within MaxConcurrentStreams, makes more answers
// than MaxPending: they are written as they are made.
func TestPipelinedBurst(t *testing.T) {
	h := answerHandler(t).(funcHandler)
	h.fn = padded(h.fn, 500)
	e := newEnv(t, Config{MaxPending: 64 << 10}, h)
	c := e.dial(t)
	c.ok(c.fr.WriteWindowUpdate(0, maxWindow-65535))
	const n = DefaultMaxConcurrentStreams // 128 KiB of answers and more
	q := query(t, "example.com.", dns.TypeA, nil)
	c.ok(c.batched(func() {
		for id := uint32(1); id < 2*n; id += 2 {
			c.writeRequest(id, "GET", -1, q)
		}
	}))
	for id := uint32(1); id < 2*n; id += 2 {
		c.readUntil(c.ended(id))
		if st := c.streams[id]; st.status != "200" {
			t.Fatalf("stream %d: %q, want 200", id, st.status)
		}
	}
	if n := e.s.Stats().SlowClients; n != 0 {
		t.Errorf("Stats().SlowClients = %d, want 0", n)
	}
	c.nc.Close()
	e.settled(t)
}

// TestIdleDeadlineWithQueryInFlight: when the idle timeout passes while a
// query is still being resolved, the connection stays open, the reader
// waits again (it does not spin on the passed deadline: the process uses
// far less CPU than the wait lasts), and the answer arrives.
func TestIdleDeadlineWithQueryInFlight(t *testing.T) {
	h := newHeldHandler(t)
	e := newEnv(t, Config{IdleTimeout: 50 * time.Millisecond}, h)
	c := e.dial(t)
	c.ok(c.writeRequest(1, "GET", -1, query(t, "async.example.com.", dns.TypeA, nil)))
	h.waitHeld(t, 1)
	const hold = 600 * time.Millisecond
	cpu0 := processCPU(t)
	time.Sleep(hold)
	if used := processCPU(t) - cpu0; used > hold/3 {
		t.Errorf("the process used %v of CPU in %v with one query held: the reader spins", used, hold)
	}
	h.release()
	c.readUntil(c.ended(1))
	if got := c.summary(); got != "1:200" {
		t.Errorf("server answered %q, want 1:200", got)
	}
	if n := e.s.Stats().IdleClosed; n != 0 {
		t.Errorf("Stats().IdleClosed = %d with a query in flight, want 0", n)
	}
	c.nc.Close()
	e.settled(t)
}

// processCPU is the user and system CPU time the test process used so far.
func processCPU(t *testing.T) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
