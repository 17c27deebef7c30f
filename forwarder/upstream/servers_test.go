package upstream

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"hash/fnv"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"xdoh/datapath/doh"
)

// Test servers, all on loopback port 0.

var testPKI = sync.OnceValues(func() (*doh.PKI, error) { return doh.NewPKI("127.0.0.1", "localhost") })

func pki(t testing.TB) *doh.PKI {
	t.Helper()
	p, err := testPKI()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// ipFor derives a distinct answer address from a name, so that concurrent
// answers can be matched to their queries.
func ipFor(name string) net.IP {
	h := fnv.New32a()
	h.Write([]byte(name))
	v := h.Sum32()
	return net.IPv4(10, byte(v>>16), byte(v>>8), byte(v))
}

// answerFor builds the A answer the test servers give for q.
func answerFor(q *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(q)
	name := q.Question[0].Name
	m.Answer = append(m.Answer, &dns.A{
		Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
		A:   ipFor(name),
	})
	return m
}

func makeQuery(t testing.TB, name string, id uint16) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.Id = id
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkAnswer unpacks resp and checks ID, question and the answer address.
func checkAnswer(t testing.TB, resp []byte, name string, id uint16) {
	t.Helper()
	m := new(dns.Msg)
	if err := m.Unpack(resp); err != nil {
		t.Fatalf("unpacking response for %s: %v", name, err)
	}
	if m.Id != id {
		t.Errorf("%s: response ID %#x, want %#x", name, m.Id, id)
	}
	if len(m.Question) != 1 || m.Question[0].Name != name {
		t.Fatalf("%s: response question %v", name, m.Question)
	}
	if len(m.Answer) != 1 {
		t.Fatalf("%s: %d answers, want 1", name, len(m.Answer))
	}
	a, ok := m.Answer[0].(*dns.A)
	if !ok || !a.A.Equal(ipFor(name)) {
		t.Errorf("%s: answer %v, want %v", name, m.Answer[0], ipFor(name))
	}
}

// dohHandler is an RFC 8484 server for the tests. It rejects requests that
// break the protocol with 400 and misbehaves for a few special names.
type dohHandler struct {
	requests atomic.Int64
	canceled chan string // names whose request context ended before an answer
}

func (h *dohHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.requests.Add(1)
	if r.ProtoMajor != 2 || r.Method != http.MethodPost ||
		r.Header.Get("Content-Type") != dnsMessage || r.Header.Get("Accept") != dnsMessage {
		http.Error(w, "not an RFC 8484 POST", http.StatusBadRequest)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil || r.ContentLength != int64(len(body)) {
		http.Error(w, "bad body", http.StatusBadRequest)
		return
	}
	q := new(dns.Msg)
	if err := q.Unpack(body); err != nil || q.Id != 0 || len(q.Question) != 1 {
		http.Error(w, "bad DNS query", http.StatusBadRequest)
		return
	}
	name := q.Question[0].Name
	switch name {
	case "status500.example.":
		http.Error(w, "boom", http.StatusInternalServerError)
		return
	case "garbage.example.":
		w.Header().Set("Content-Type", dnsMessage)
		w.Write([]byte("this is not a DNS message at all"))
		return
	case "texttype.example.":
		w.Header().Set("Content-Type", "text/plain")
		out, _ := answerFor(q).Pack()
		w.Write(out)
		return
	case "otherquestion.example.":
		q.Question[0].Name = "elsewhere.example."
	case "slow.example.":
		<-r.Context().Done()
		select {
		case h.canceled <- name:
		default:
		}
		return
	}
	out, err := answerFor(q).Pack()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", dnsMessage)
	w.Write(out)
}

// dohServer is an in-process Go HTTPS/2 server answering DNS.
type dohServer struct {
	*httptest.Server
	h     *dohHandler
	conns atomic.Int64 // TCP connections accepted
}

func startDoHServer(t testing.TB, http2Enabled bool) *dohServer {
	t.Helper()
	s := &dohServer{h: &dohHandler{canceled: make(chan string, 16)}}
	s.Server = httptest.NewUnstartedServer(s.h)
	s.EnableHTTP2 = http2Enabled
	s.TLS = &tls.Config{Certificates: []tls.Certificate{pki(t).Cert}}
	s.Config.ErrorLog = log.New(io.Discard, "", 0) // handshake failures are expected
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.conns.Add(1)
		}
	}
	s.StartTLS()
	t.Cleanup(s.Close)
	return s
}

// fakeH2 is a raw HTTP/2 server built on the Framer, for fault injection.
// onRequest runs on the connection's read goroutine for every complete
// request; conn counts from 1. PINGs are acknowledged unless ackPing (see
// setAckPing) says otherwise for the nth PING (from 1) of conn.
type fakeH2 struct {
	ln        net.Listener
	settings  []http2.Setting
	tableSize uint32 // HPACK decoder table size (the SETTINGS we announce)
	onRequest func(fc *fakeConn, conn int, id uint32, q *dns.Msg)
	ackPing   func(conn, n int) bool // guarded by mu
	pings     atomic.Int32           // PINGs received, all connections

	nconn atomic.Int32
	mu    sync.Mutex
	open  []net.Conn
	wg    sync.WaitGroup
}

type fakeConn struct {
	mu     sync.Mutex
	nc     net.Conn
	fr     *http2.Framer
	enc    *hpack.Encoder
	encBuf bytes.Buffer
}

func startFakeH2(t testing.TB, settings []http2.Setting, onRequest func(fc *fakeConn, conn int, id uint32, q *dns.Msg)) *fakeH2 {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{pki(t).Cert},
		NextProtos:   []string{"h2"},
	})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeH2{ln: ln, settings: settings, tableSize: 4096, onRequest: onRequest}
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

// setAckPing decides which PINGs are acknowledged from now on. (The server
// reads it under f.mu: the client's socket calls do not order memory for
// the race detector.)
func (f *fakeH2) setAckPing(ack func(conn, n int) bool) {
	f.mu.Lock()
	f.ackPing = ack
	f.mu.Unlock()
}

func (f *fakeH2) URL() string { return "https://" + f.ln.Addr().String() + "/dns-query" }

func (f *fakeH2) accept() {
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
		go f.serve(c, int(f.nconn.Add(1)))
	}
}

func (f *fakeH2) serve(c net.Conn, idx int) {
	defer f.wg.Done()
	defer c.Close()
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c, preface); err != nil || string(preface) != http2.ClientPreface {
		return
	}
	fc := &fakeConn{nc: c, fr: http2.NewFramer(c, c)}
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
			f.pings.Add(1)
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

// respond answers stream id with the standard A answer for q.
func (fc *fakeConn) respond(id uint32, q *dns.Msg) {
	out, _ := answerFor(q).Pack()
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.encBuf.Reset()
	fc.enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
	fc.enc.WriteField(hpack.HeaderField{Name: "content-type", Value: dnsMessage})
	fc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: fc.encBuf.Bytes(), EndHeaders: true})
	fc.fr.WriteData(id, true, out)
}

func (fc *fakeConn) goAway(last uint32, code http2.ErrCode) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.fr.WriteGoAway(last, code, nil)
}

func (fc *fakeConn) rst(id uint32, code http2.ErrCode) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.fr.WriteRSTStream(id, code)
}

func (fc *fakeConn) close() { fc.nc.Close() }

// do53Server is a miekg/dns server on UDP and TCP on one loopback port.
// Over UDP it truncates answers for big.example.; over TCP it gives 40 A
// records.
type do53Server struct {
	addr    string
	udp     *dns.Server
	tcp     *dns.Server
	queries atomic.Int64

	mu      sync.Mutex
	sources map[string]bool // "udp 127.0.0.1:port" / "tcp …": client sockets seen
}

// clients returns how many distinct client sockets of network (udp or tcp)
// sent queries.
func (s *do53Server) clients(network string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for k := range s.sources {
		if strings.HasPrefix(k, network+" ") {
			n++
		}
	}
	return n
}

func startDo53Server(t testing.TB) *do53Server {
	t.Helper()
	var pc net.PacketConn
	var ln net.Listener
	for try := 0; ln == nil; try++ {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err != nil {
			pc.Close() // the TCP port of this UDP port is taken: another one
			if try == 20 {
				t.Fatalf("no loopback port free for both UDP and TCP in 20 tries: %v", err)
			}
		}
	}
	pc.(*net.UDPConn).SetReadBuffer(4 << 20) // bursts of hundreds of queries; best effort
	s := &do53Server{addr: pc.LocalAddr().String(), sources: make(map[string]bool)}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		s.queries.Add(1)
		_, isUDP := w.RemoteAddr().(*net.UDPAddr)
		s.mu.Lock()
		s.sources[w.RemoteAddr().Network()+" "+w.RemoteAddr().String()] = true
		s.mu.Unlock()
		m := answerFor(q)
		if q.Question[0].Name == "big.example." {
			m.Answer = nil
			if isUDP {
				m.Truncated = true
			} else {
				for i := range 40 {
					m.Answer = append(m.Answer, &dns.A{
						Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
						A:   net.IPv4(10, 0, 0, byte(i)),
					})
				}
			}
		}
		w.WriteMsg(m)
	})
	started := make(chan struct{}, 2)
	s.udp = &dns.Server{PacketConn: pc, Handler: h, NotifyStartedFunc: func() { started <- struct{}{} }}
	s.tcp = &dns.Server{Listener: ln, Handler: h, NotifyStartedFunc: func() { started <- struct{}{} },
		MaxTCPQueries: -1} // the default closes a connection after 128 queries
	var wg sync.WaitGroup
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			srv.ActivateAndServe()
		}()
	}
	<-started
	<-started
	t.Cleanup(func() {
		s.udp.Shutdown()
		s.tcp.Shutdown()
		wg.Wait()
	})
	return s
}

// spoofingUDPServer answers every query first with a datagram carrying the
// wrong ID, then one with the wrong question, then the real answer.
func spoofingUDPServer(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveUDP(t, pc, func(q *dns.Msg, reply func([]byte)) {
		good, _ := answerFor(q).Pack()
		wrongID := bytes.Clone(good)
		binary.BigEndian.PutUint16(wrongID, q.Id+1)
		other := q.Copy()
		other.Question[0].Name = "spoofed.example."
		wrongQ, _ := answerFor(other).Pack()
		for _, b := range [][]byte{wrongID, wrongQ, []byte{1, 2, 3}, good} {
			reply(b)
		}
	})
	return pc.LocalAddr().String()
}

// serveUDP hands every DNS query that arrives on pc to handle, with a reply
// function that sends a datagram back to its sender, until the test ends
// (which closes pc and waits for the serving goroutine).
func serveUDP(t testing.TB, pc net.PacketConn, handle func(q *dns.Msg, reply func([]byte))) {
	done := make(chan struct{})
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			q := new(dns.Msg)
			if q.Unpack(buf[:n]) != nil || len(q.Question) != 1 {
				continue
			}
			handle(q, func(msg []byte) { pc.WriteTo(msg, from) })
		}
	}()
}

// tcpDNSServer is a raw RFC 7766 server for fault injection. For every
// query on connection conn (counting from 1) it asks onQuery what to do.
type tcpDNSServer struct {
	ln      net.Listener
	onQuery func(conn int, q *dns.Msg) tcpAction
	nconn   atomic.Int32
	wg      sync.WaitGroup
	mu      sync.Mutex
	open    []net.Conn
}

type tcpAction int

const (
	tcpAnswer tcpAction = iota
	tcpIgnore           // read, never answer
	tcpClose            // close the connection without answering
)

func startTCPDNSServer(t testing.TB, onQuery func(conn int, q *dns.Msg) tcpAction) *tcpDNSServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &tcpDNSServer{ln: ln, onQuery: onQuery}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.open = append(s.open, c)
			s.mu.Unlock()
			idx := int(s.nconn.Add(1))
			s.wg.Go(func() { s.serve(c, idx) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for _, c := range s.open {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *tcpDNSServer) serve(c net.Conn, idx int) {
	defer c.Close()
	for {
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			return
		}
		b := make([]byte, binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(c, b); err != nil {
			return
		}
		q := new(dns.Msg)
		if q.Unpack(b) != nil || len(q.Question) != 1 {
			return
		}
		switch s.onQuery(idx, q) {
		case tcpIgnore:
			continue
		case tcpClose:
			return
		}
		out, _ := answerFor(q).Pack()
		c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(out))), out...))
	}
}
