package upstreamtest

import (
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// FakeH2 is a raw HTTP/2 server over TLS built on the Framer, for fault
// injection: onRequest decides, for every complete request (a POST, or a
// GET in one HEADERS frame), whether and how it is answered. It runs on
// the connection's read goroutine; conn counts the connections from 1.
// PINGs are acknowledged unless SetAckPing says otherwise.
type FakeH2 struct {
	NConn atomic.Int32 // connections accepted
	Pings atomic.Int32 // PINGs received, all connections
	Gets  atomic.Int32 // GET requests (one HEADERS frame each), all connections

	ln        net.Listener
	settings  []http2.Setting
	tableSize uint32 // HPACK decoder table size (the SETTINGS we announce)
	onRequest func(fc *FakeConn, conn int, id uint32, q *dns.Msg)
	ackPing   func(conn, n int) bool // guarded by mu

	mu   sync.Mutex
	open []net.Conn
	wg   sync.WaitGroup
}

// FakeConn is one connection of a FakeH2, for onRequest to act on.
type FakeConn struct {
	mu     sync.Mutex
	nc     net.Conn
	fr     *http2.Framer
	enc    *hpack.Encoder
	encBuf bytes.Buffer
}

// StartFakeH2 starts a FakeH2 that announces settings, with the PKI's
// certificate; it stops at the end of the test.
func StartFakeH2(t testing.TB, settings []http2.Setting, onRequest func(fc *FakeConn, conn int, id uint32, q *dns.Msg)) *FakeH2 {
	t.Helper()
	return StartFakeH2Cert(t, PKI(t).Cert, settings, onRequest)
}

// StartFakeH2Cert is StartFakeH2 presenting cert instead of the PKI's
// (a certificate for another name, or from another CA).
func StartFakeH2Cert(t testing.TB, cert tls.Certificate, settings []http2.Setting, onRequest func(fc *FakeConn, conn int, id uint32, q *dns.Msg)) *FakeH2 {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"h2"},
	})
	if err != nil {
		t.Fatal(err)
	}
	f := &FakeH2{ln: ln, settings: settings, tableSize: 4096, onRequest: onRequest}
	for _, s := range settings {
		if s.ID == http2.SettingHeaderTableSize {
			f.tableSize = s.Val
		}
	}
	f.wg.Add(1)
	go f.accept()
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		for _, c := range f.open {
			c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

// SetAckPing decides which PINGs are acknowledged from now on: the nth
// (from 1) on connection conn is if ack says so. (The server reads it under
// f.mu: the client's socket calls do not order memory for the race
// detector.)
func (f *FakeH2) SetAckPing(ack func(conn, n int) bool) {
	f.mu.Lock()
	f.ackPing = ack
	f.mu.Unlock()
}

// URL is the server's DoH URL.
func (f *FakeH2) URL() string { return "https://" + f.ln.Addr().String() + "/dns-query" }

// CloseConn closes the server's end of connection conn (from 1).
func (f *FakeH2) CloseConn(conn int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.open[conn-1].Close()
}

func (f *FakeH2) accept() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		f.open = append(f.open, c)
		f.mu.Unlock()
		f.wg.Add(1)
		go f.serve(c, int(f.NConn.Add(1)))
	}
}

func (f *FakeH2) serve(c net.Conn, idx int) {
	defer f.wg.Done()
	defer c.Close()
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c, preface); err != nil || string(preface) != http2.ClientPreface {
		return
	}
	fc := &FakeConn{nc: c, fr: http2.NewFramer(c, c)}
	fc.enc = hpack.NewEncoder(&fc.encBuf)
	fc.mu.Lock()
	err := fc.fr.WriteSettings(f.settings...)
	fc.mu.Unlock()
	if err != nil {
		return
	}
	var method, path string
	dec := hpack.NewDecoder(f.tableSize, func(hf hpack.HeaderField) {
		switch hf.Name {
		case ":method":
			method = hf.Value
		case ":path":
			path = hf.Value
		}
	})
	bodies := map[uint32][]byte{}
	npings := 0
	for {
		fr, err := fc.fr.ReadFrame()
		if err != nil {
			return
		}
		switch fr := fr.(type) {
		case *http2.PingFrame:
			if fr.IsAck() {
				continue
			}
			f.Pings.Add(1)
			npings++
			f.mu.Lock()
			ack := f.ackPing
			f.mu.Unlock()
			if ack == nil || ack(idx, npings) {
				fc.mu.Lock()
				fc.fr.WritePing(true, fr.Data)
				fc.mu.Unlock()
			}
		case *http2.SettingsFrame:
			if !fr.IsAck() {
				fc.mu.Lock()
				fc.fr.WriteSettingsAck()
				fc.mu.Unlock()
			}
		case *http2.HeadersFrame:
			method, path = "", ""
			if _, err := dec.Write(fr.HeaderBlockFragment()); err != nil {
				return // HPACK misuse: connection error
			}
			if method == "GET" && fr.HeadersEnded() && fr.StreamEnded() {
				// RFC 8484 4.1 in one HEADERS frame: ?dns=, base64url.
				b64, ok := strings.CutPrefix(path, "/dns-query?dns=")
				wire, err := base64.RawURLEncoding.DecodeString(b64)
				q := new(dns.Msg)
				if !ok || err != nil || q.Unpack(wire) != nil {
					return
				}
				f.Gets.Add(1)
				f.onRequest(fc, idx, fr.StreamID, q)
				continue
			}
			if method != "POST" || path != "/dns-query" {
				return
			}
			bodies[fr.StreamID] = nil
		case *http2.DataFrame:
			id := fr.StreamID
			bodies[id] = append(bodies[id], fr.Data()...)
			if n := fr.Header().Length; n > 0 { // give the connection window back
				fc.mu.Lock()
				fc.fr.WriteWindowUpdate(0, n)
				fc.mu.Unlock()
			}
			if fr.StreamEnded() {
				q := new(dns.Msg)
				if err := q.Unpack(bodies[id]); err != nil {
					return
				}
				delete(bodies, id)
				f.onRequest(fc, idx, id, q)
			}
		}
	}
}

// Respond answers stream id with AnswerFor(q).
func (fc *FakeConn) Respond(id uint32, q *dns.Msg) {
	fc.RespondWith(id, 200, DNSMessage, MustPack(AnswerFor(q)))
}

// RespondWith answers stream id with status, content type (none if "")
// and body, split into DATA frames of 16 KiB.
func (fc *FakeConn) RespondWith(id uint32, status int, contentType string, body []byte) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.encBuf.Reset()
	st := "200" // strconv.Itoa allocates from 100 on: keep the benchmarks' server lean
	if status != 200 {
		st = strconv.Itoa(status)
	}
	fc.enc.WriteField(hpack.HeaderField{Name: ":status", Value: st})
	if contentType != "" {
		fc.enc.WriteField(hpack.HeaderField{Name: "content-type", Value: contentType})
	}
	fc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: fc.encBuf.Bytes(), EndHeaders: true})
	for {
		n := min(len(body), 16384)
		if fc.fr.WriteData(id, n == len(body), body[:n]) != nil || n == len(body) {
			return
		}
		body = body[n:]
	}
}

// GoAway sends GOAWAY with the last stream ID processed.
func (fc *FakeConn) GoAway(last uint32, code http2.ErrCode) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.fr.WriteGoAway(last, code, nil)
}

// RST resets stream id.
func (fc *FakeConn) RST(id uint32, code http2.ErrCode) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.fr.WriteRSTStream(id, code)
}

// Write writes raw bytes on the connection, framed or not.
func (fc *FakeConn) Write(b []byte) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.nc.Write(b)
}

// Close closes the connection (with a TLS close_notify).
func (fc *FakeConn) Close() { fc.nc.Close() }

// ResetTCP resets the TCP connection under fc (RST, no TLS close_notify).
func (fc *FakeConn) ResetTCP() {
	tc := fc.nc.(*tls.Conn).NetConn().(*net.TCPConn)
	tc.SetLinger(0)
	tc.Close()
}
