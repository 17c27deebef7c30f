package upstreamtest

// DNS over QUIC (RFC 9250) and DNS over TLS test servers, and UDP faults
// for QUIC: DoQServer (quic-go, answers from miekg/dns), StartDoTFault,
// UDPSink and UDPRelay, on loopback port 0. BIND 9.18 speaks DoT but not
// DoQ, and no DoQ server is installed here (knotd serves DoQ from 3.3 on;
// this is 3.2), so DoQServer is the DoQ peer of the tests.

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/quic-go/quic-go"
)

// DoQServerTLS returns the TLS configuration of the DoQ and DoT test
// servers: PKI's certificate, ALPN alpn, session tickets (Go's default)
// so that clients can resume.
func DoQServerTLS(t testing.TB, alpn string) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{PKI(t).Cert}, NextProtos: []string{alpn}, MinVersion: tls.VersionTLS12}
}

// DoQQuery is one query a DoQServer received on a stream of its own.
type DoQQuery struct {
	Conn    *quic.Conn
	ConnIdx int // from 1, in accept order
	Stream  *quic.Stream
	Wire    []byte // the message as received, without its length
	Msg     *dns.Msg
}

// Answer writes m, length-prefixed, on the query's stream and ends the
// stream (FIN), as RFC 9250 4.2 has a server do.
func (r *DoQQuery) Answer(m *dns.Msg) {
	WriteFrame(streamConn{r.Stream}, MustPack(m))
	r.Stream.Close()
}

// streamConn lets WriteFrame write on a stream.
type streamConn struct{ *quic.Stream }

func (streamConn) LocalAddr() net.Addr  { return nil }
func (streamConn) RemoteAddr() net.Addr { return nil }

// DoQServer is a DNS-over-QUIC server on quic-go. It reads each stream to
// its end (so a client that never sends the FIN is never answered), and
// hands the query to its handler, which answers (DoQQuery.Answer), holds
// or misbehaves. It counts what it sees.
type DoQServer struct {
	Addr       string
	NConn      atomic.Int32 // connections accepted
	Streams    atomic.Int32 // streams accepted
	NonZeroIDs atomic.Int32 // queries whose message ID was not 0 (RFC 9250 4.2.1)
	Cancelled  atomic.Int32 // streams the client reset with DOQ_REQUEST_CANCELLED before its query was read

	ln     *quic.Listener
	pc     net.PacketConn
	handle func(*DoQQuery)
	wg     sync.WaitGroup
}

// DoQServerOptions configure StartDoQServer.
type DoQServerOptions struct {
	// QUIC is the server's QUIC configuration (nil: quic-go's defaults,
	// with 0-RTT off and a 100-stream limit per connection; a handshake
	// idle timeout of 0 is 500ms).
	QUIC *quic.Config
	// NoAccept: the server accepts connections but never a stream.
	NoAccept bool
}

// StartDoQServer starts a DoQServer, stopped at the end of the test. A nil
// handle answers every query with AnswerFor.
func StartDoQServer(t testing.TB, opts DoQServerOptions, handle func(*DoQQuery)) *DoQServer {
	t.Helper()
	if handle == nil {
		handle = func(r *DoQQuery) { r.Answer(AnswerFor(r.Msg)) }
	}
	conf := &quic.Config{}
	if opts.QUIC != nil {
		conf = opts.QUIC.Clone()
	}
	if conf.HandshakeIdleTimeout == 0 {
		// A client that gives up a dial (Close) leaves the server its
		// half of the handshake until this timeout: the tests count
		// goroutines soon after.
		conf.HandshakeIdleTimeout = 500 * time.Millisecond
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := quic.Listen(pc, DoQServerTLS(t, "doq"), conf)
	if err != nil {
		pc.Close()
		t.Fatal(err)
	}
	s := &DoQServer{Addr: pc.LocalAddr().String(), ln: ln, pc: pc, handle: handle}
	ctx, cancel := context.WithCancel(context.Background())
	s.wg.Go(func() {
		for {
			c, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			idx := int(s.NConn.Add(1))
			s.wg.Go(func() {
				select {
				case <-ctx.Done():
					c.CloseWithError(0, "")
				case <-c.Context().Done():
				}
			})
			if !opts.NoAccept {
				s.wg.Go(func() { s.serveConn(ctx, c, idx) })
			}
		}
	})
	t.Cleanup(func() {
		cancel()
		ln.Close()
		s.wg.Wait()
		pc.Close()
	})
	return s
}

// URL is the server as a DoQ target.
func (s *DoQServer) URL() string { return "quic://" + s.Addr }

func (s *DoQServer) serveConn(ctx context.Context, c *quic.Conn, idx int) {
	for {
		st, err := c.AcceptStream(ctx)
		if err != nil {
			return
		}
		s.Streams.Add(1)
		s.wg.Go(func() {
			b, err := io.ReadAll(io.LimitReader(st, 2+65535+1))
			if err != nil {
				var se *quic.StreamError
				if asStreamError(err, &se) && se.ErrorCode == 0x3 {
					s.Cancelled.Add(1)
				}
				return
			}
			if len(b) < 2 || int(binary.BigEndian.Uint16(b)) != len(b)-2 {
				st.CancelRead(0x2)
				st.CancelWrite(0x2)
				return
			}
			q := new(dns.Msg)
			if q.Unpack(b[2:]) != nil || len(q.Question) != 1 {
				st.CancelWrite(0x2)
				return
			}
			if q.Id != 0 {
				s.NonZeroIDs.Add(1)
			}
			s.handle(&DoQQuery{Conn: c, ConnIdx: idx, Stream: st, Wire: b[2:], Msg: q})
		})
	}
}

func asStreamError(err error, se **quic.StreamError) bool {
	e, ok := err.(*quic.StreamError)
	if ok {
		*se = e
	}
	return ok
}

// StartDoTFault is StartDo53Fault for DNS over TLS: a TCPDNSServer behind
// TLS (DoQServerTLS with ALPN dot), no UDP. Its Target is "tls://addr";
// its Conn(idx) is a *tls.Conn.
func StartDoTFault(t testing.TB, onTCP TCPHandler) *Do53Fault {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", DoQServerTLS(t, "dot"))
	if err != nil {
		t.Fatal(err)
	}
	f := &Do53Fault{Addr: ln.Addr().String(), sources: make(map[string]bool), tls: true}
	f.tcp.Store(startTCPDNSServer(t, ln, func(conn int, q *dns.Msg) TCPAction {
		f.TCPQueries.Add(1)
		return onTCP(f, conn, q)
	}))
	return f
}

// UDPSink reads every datagram sent to it and answers none: a QUIC
// server whose handshake never finishes.
func UDPSink(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	return pc.LocalAddr().String()
}

// UDPRelay forwards datagrams between one client and a server, and can
// drop them all for a while: a path that goes silent.
type UDPRelay struct {
	Addr string
	drop atomic.Bool
}

// Drop makes the relay drop (true) or forward (false) every datagram.
func (r *UDPRelay) Drop(v bool) { r.drop.Store(v) }

// StartUDPRelay starts a relay to server, stopped at the end of the test.
func StartUDPRelay(t testing.TB, server string) *UDPRelay {
	t.Helper()
	front, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sa, err := net.ResolveUDPAddr("udp", server)
	if err != nil {
		t.Fatal(err)
	}
	r := &UDPRelay{Addr: front.LocalAddr().String()}
	var mu sync.Mutex
	backs := map[string]*net.UDPConn{} // one upstream socket per client
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := front.ReadFrom(buf)
			if err != nil {
				return
			}
			if r.drop.Load() {
				continue
			}
			mu.Lock()
			back := backs[from.String()]
			if back == nil {
				if back, err = net.DialUDP("udp", nil, sa); err != nil {
					mu.Unlock()
					continue
				}
				backs[from.String()] = back
				wg.Go(func() {
					b := make([]byte, 65535)
					for {
						n, err := back.Read(b)
						if err != nil {
							return
						}
						if !r.drop.Load() {
							front.WriteTo(b[:n], from)
						}
					}
				})
			}
			mu.Unlock()
			back.Write(buf[:n])
		}
	})
	t.Cleanup(func() {
		front.Close()
		mu.Lock()
		for _, b := range backs {
			b.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return r
}
