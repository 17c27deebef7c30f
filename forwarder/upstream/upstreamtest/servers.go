package upstreamtest

// Well-behaved test servers on loopback port 0 and the answers they give:
// an RFC 8484 server on net/http (StartDoHServer) and a miekg/dns server
// on UDP and TCP (StartDo53Server). The fault servers are in fakeh2.go and
// faults.go.

import (
	"bytes"
	"crypto/tls"
	"encoding/base64"
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

	"xdoh/datapath/tlsconf"
)

// DNSMessage is RFC 8484's media type.
const DNSMessage = "application/dns-message"

// BootstrapHost is a name the test servers' certificate carries that no
// resolver knows (.test is reserved, RFC 2606): a target named by it
// reaches them only through bootstrap addresses.
const BootstrapHost = "dns.test"

var testPKI = sync.OnceValues(func() (*tlsconf.PKI, error) { return tlsconf.NewPKI("127.0.0.1", "localhost", BootstrapHost) })

// PKI returns the CA and server certificate (127.0.0.1, localhost,
// BootstrapHost) that the test servers present, one per test binary.
func PKI(t testing.TB) *tlsconf.PKI {
	t.Helper()
	p, err := testPKI()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// IPFor derives a distinct answer address from a name, so that concurrent
// answers can be matched to their queries.
func IPFor(name string) net.IP {
	h := fnv.New32a()
	h.Write([]byte(name))
	v := h.Sum32()
	return net.IPv4(10, byte(v>>16), byte(v>>8), byte(v))
}

// AnswerFor builds the A answer the test servers give for q: IPFor of its
// name.
func AnswerFor(q *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(q)
	name := q.Question[0].Name
	m.Answer = append(m.Answer, &dns.A{
		Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
		A:   IPFor(name),
	})
	return m
}

// MustPack packs the test servers' own messages, which always pack (an
// error would show as an unanswered query).
func MustPack(m *dns.Msg) []byte {
	out, _ := m.Pack()
	return out
}

// Spoofs are what an off-path attacker or a confused server sends before
// the real answer to q: its ID with another question, a neighbour's ID,
// and garbage.
func Spoofs(q *dns.Msg) [][]byte {
	wrongID := AnswerFor(q)
	wrongID.Id = q.Id + 1
	other := q.Copy()
	other.Question[0].Name = "spoofed.example."
	return [][]byte{MustPack(wrongID), MustPack(AnswerFor(other)), {1, 2, 3}}
}

// dohHandler is an RFC 8484 server. It rejects requests that break the
// protocol with 400 and misbehaves for a few special names (DoHServer).
type dohHandler struct {
	s *DoHServer
}

func (h dohHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.s.Requests.Add(1)
	var body []byte
	switch {
	case r.ProtoMajor != 2 || r.Header.Get("Accept") != DNSMessage:
		http.Error(w, "not an RFC 8484 request", http.StatusBadRequest)
		return
	case r.Method == http.MethodGet:
		h.s.Gets.Add(1)
		// RFC 8484 4.1: one dns parameter, base64url without padding, no body.
		v := r.URL.Query()["dns"]
		var err error
		if len(v) == 1 {
			body, err = base64.RawURLEncoding.DecodeString(v[0])
		}
		if len(v) != 1 || err != nil || r.ContentLength > 0 || r.Header.Get("Content-Type") != "" {
			http.Error(w, "not an RFC 8484 GET", http.StatusBadRequest)
			return
		}
	case r.Method == http.MethodPost && r.Header.Get("Content-Type") == DNSMessage:
		var err error
		body, err = io.ReadAll(r.Body)
		if err != nil || r.ContentLength != int64(len(body)) {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
	default:
		http.Error(w, "not an RFC 8484 POST or GET", http.StatusBadRequest)
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
		w.Header().Set("Content-Type", DNSMessage)
		w.Write([]byte("this is not a DNS message at all"))
		return
	case "texttype.example.":
		w.Header().Set("Content-Type", "text/plain")
		w.Write(MustPack(AnswerFor(q)))
		return
	case "otherquestion.example.":
		q.Question[0].Name = "elsewhere.example."
	case "slow.example.":
		<-r.Context().Done()
		select {
		case h.s.Canceled <- name:
		default:
		}
		return
	}
	w.Header().Set("Content-Type", DNSMessage)
	w.Write(MustPack(AnswerFor(q)))
}

// DoHServer is an in-process Go HTTPS server answering DNS (RFC 8484 POST
// and GET, the query with ID 0)
// with AnswerFor, except for these names: status500.example. gets HTTP
// 500, garbage.example. a body that is no DNS message, texttype.example.
// the answer as text/plain, otherquestion.example. an answer to another
// question, and slow.example. nothing until the request is cancelled.
type DoHServer struct {
	*httptest.Server
	Requests atomic.Int64
	Gets     atomic.Int64 // requests by GET
	Canceled chan string  // names whose request context ended before an answer
	Conns    atomic.Int64 // TCP connections accepted
}

// StartDoHServer starts a DoHServer, with HTTP/2 or only HTTP/1.1.
func StartDoHServer(t testing.TB, http2Enabled bool) *DoHServer {
	t.Helper()
	s := &DoHServer{Canceled: make(chan string, 16)}
	s.Server = httptest.NewUnstartedServer(dohHandler{s})
	s.EnableHTTP2 = http2Enabled
	s.TLS = &tls.Config{Certificates: []tls.Certificate{PKI(t).Cert}}
	s.Config.ErrorLog = log.New(io.Discard, "", 0) // handshake failures are expected
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.Conns.Add(1)
		}
	}
	s.StartTLS()
	t.Cleanup(s.Close)
	return s
}

// Do53Server is a miekg/dns server on UDP and TCP on one loopback port.
// Over UDP it truncates answers for big.example.; over TCP it gives 40 A
// records.
type Do53Server struct {
	Addr    string
	Queries atomic.Int64
	udp     *dns.Server
	tcp     *dns.Server

	mu      sync.Mutex
	sources map[string]bool // "udp 127.0.0.1:port" / "tcp …": client sockets seen
}

// Clients returns how many distinct client sockets of network (udp or
// tcp) sent queries.
func (s *Do53Server) Clients(network string) int {
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

// StartDo53Server starts a Do53Server, stopped at the end of the test.
func StartDo53Server(t testing.TB) *Do53Server {
	t.Helper()
	pc, ln := listenUDPAndTCP(t)
	pc.(*net.UDPConn).SetReadBuffer(4 << 20) // bursts of hundreds of queries; best effort
	s := &Do53Server{Addr: pc.LocalAddr().String(), sources: make(map[string]bool)}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		s.Queries.Add(1)
		_, isUDP := w.RemoteAddr().(*net.UDPAddr)
		s.mu.Lock()
		s.sources[w.RemoteAddr().Network()+" "+w.RemoteAddr().String()] = true
		s.mu.Unlock()
		m := AnswerFor(q)
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
		wg.Go(func() { srv.ActivateAndServe() })
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

// listenUDPAndTCP opens a UDP socket and a TCP listener on the same
// loopback port.
func listenUDPAndTCP(t testing.TB) (net.PacketConn, net.Listener) {
	t.Helper()
	for try := 0; ; try++ {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln
		}
		pc.Close() // the TCP port of this UDP port is taken: another one
		if try == 20 {
			t.Fatalf("no loopback port free for both UDP and TCP in 20 tries: %v", err)
		}
	}
}

// SpoofingUDPServer answers every query first with a datagram carrying the
// wrong ID, then one with the wrong question, then garbage, then the real
// answer. It returns its address.
func SpoofingUDPServer(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ServeUDP(t, pc, func(q *dns.Msg, reply func([]byte)) {
		good := MustPack(AnswerFor(q))
		wrongID := bytes.Clone(good)
		binary.BigEndian.PutUint16(wrongID, q.Id+1)
		other := q.Copy()
		other.Question[0].Name = "spoofed.example."
		for _, b := range [][]byte{wrongID, MustPack(AnswerFor(other)), {1, 2, 3}, good} {
			reply(b)
		}
	})
	return pc.LocalAddr().String()
}

// ServeUDP hands every DNS query that arrives on pc to handle, with a
// reply function that sends a datagram back to its sender, until the test
// ends (which closes pc and waits for the serving goroutine).
func ServeUDP(t testing.TB, pc net.PacketConn, handle func(q *dns.Msg, reply func([]byte))) {
	serveUDP(t, pc, func(q *dns.Msg, _ net.Addr, reply func([]byte)) { handle(q, reply) })
}

// serveUDP is ServeUDP with the sender's address.
func serveUDP(t testing.TB, pc net.PacketConn, handle func(q *dns.Msg, from net.Addr, reply func([]byte))) {
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
			handle(q, from, func(msg []byte) { pc.WriteTo(msg, from) })
		}
	}()
}
