package dot

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"xdoh/datapath/internal/pipetest"
	"xdoh/forwarder"
)

// TestLimits: each bound closes the connection, is counted, and leaves no
// connection (and so no goroutine: Shutdown in start's cleanup waits for
// them) behind.
func TestLimits(t *testing.T) {
	tests := []struct {
		name  string
		cfg   Config
		do    func(t *testing.T, s *Server) net.Conn // returns the connection the server must close
		count func(Stats) uint64
	}{
		{
			name: "handshake never finishes",
			cfg:  Config{HandshakeTimeout: 200 * time.Millisecond},
			do: func(t *testing.T, s *Server) net.Conn {
				c, err := net.Dial("tcp", s.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				c.Write([]byte{0x16, 0x03, 0x01}) // the start of a ClientHello record, then nothing
				return c
			},
			count: func(s Stats) uint64 { return s.HandshakeTimeouts },
		},
		{
			name: "not TLS",
			cfg:  Config{},
			do: func(t *testing.T, s *Server) net.Conn {
				c, err := net.Dial("tcp", s.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				c.Write(frame(pipetest.Query(t, "plain.example.org", 1)))
				return c
			},
			count: func(s Stats) uint64 { return s.HandshakeErrors },
		},
		{
			name:  "idle",
			cfg:   Config{IdleTimeout: 200 * time.Millisecond},
			do:    func(t *testing.T, s *Server) net.Conn { return dial(t, s) },
			count: func(s Stats) uint64 { return s.IdleClosed },
		},
		{
			name: "length prefix that lies",
			cfg:  Config{ReadTimeout: 200 * time.Millisecond},
			do: func(t *testing.T, s *Server) net.Conn {
				c := dial(t, s)
				q := pipetest.Query(t, "lie.example.org", 1)
				c.Write(append([]byte{0x01, 0xf4}, q...)) // says 500 octets, sends fewer
				return c
			},
			count: func(s Stats) uint64 { return s.Timeouts },
		},
		{
			name: "message shorter than a header",
			cfg:  Config{},
			do: func(t *testing.T, s *Server) net.Conn {
				c := dial(t, s)
				c.Write([]byte{0, 3, 1, 2, 3})
				return c
			},
			count: func(s Stats) uint64 { return s.ProtocolErrors },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := start(t, tt.cfg, pipetest.Forwarder(t, &pipetest.Upstream{}, nil))
			c := tt.do(t, s)
			defer c.Close()
			closedByServer(t, c)
			waitFor(t, "the counter", func() bool { return tt.count(s.Stats()) == 1 })
			waitFor(t, "no open connection", func() bool { return s.Stats().Open == 0 })
		})
	}
}

// TestMaxConns: past MaxConns a connection is closed before its handshake
// and counted; once one closes, the next is served.
func TestMaxConns(t *testing.T) {
	s := start(t, Config{MaxConns: 2}, pipetest.Forwarder(t, &pipetest.Upstream{}, nil))
	a, b := dial(t, s), dial(t, s)
	waitFor(t, "two open connections", func() bool { return s.Stats().Open == 2 })
	_, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", s.Addr().String(),
		&tls.Config{RootCAs: pki(t).Pool, ServerName: "localhost"})
	if err == nil {
		t.Fatal("a third connection completed its handshake")
	}
	// The refusal is counted after the connection is closed: the client
	// may see the close first.
	waitFor(t, "1 refused and 2 served", func() bool { st := s.Stats(); return st.Refused == 1 && st.Conns == 2 })
	a.Close()
	waitFor(t, "one open connection", func() bool { return s.Stats().Open == 1 })
	c := dial(t, s)
	c.Write(frame(pipetest.Query(t, pipetest.LocalA, 7)))
	if m := readAnswer(t, c); m.Id != 7 {
		t.Errorf("answer ID %d, want 7", m.Id)
	}
	_ = b
}

// TestMaxConnsPerClient: past MaxConnsPerClient from one address a
// connection is reset before its handshake and counted apart from
// MaxConns; another address still connects, and a closed connection
// frees its client's slot.
func TestMaxConnsPerClient(t *testing.T) {
	s := start(t, Config{MaxConnsPerClient: 2}, pipetest.Forwarder(t, &pipetest.Upstream{}, nil))
	a := dial(t, s)
	dial(t, s)
	waitFor(t, "two open connections", func() bool { return s.Stats().Open == 2 })
	tlsCfg := &tls.Config{RootCAs: pki(t).Pool, ServerName: "localhost", NextProtos: []string{ALPN}}
	if c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", s.Addr().String(), tlsCfg); err == nil {
		c.Close()
		t.Fatal("a third connection from 127.0.0.1 completed its handshake")
	}
	waitFor(t, "1 refused per client, 0 refused in total, 2 served", func() bool {
		st := s.Stats()
		return st.RefusedPerClient == 1 && st.Refused == 0 && st.Conns == 2
	})
	other := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	c, err := tls.DialWithDialer(other, "tcp", s.Addr().String(), tlsCfg)
	if err != nil {
		t.Fatalf("from 127.0.0.2: %v", err)
	}
	defer c.Close()
	c.Write(frame(pipetest.Query(t, pipetest.LocalA, 3)))
	if m := readAnswer(t, c); m.Id != 3 {
		t.Errorf("answer ID %d, want 3", m.Id)
	}
	a.Close()
	waitFor(t, "two open connections", func() bool { return s.Stats().Open == 2 })
	d := dial(t, s)
	d.Write(frame(pipetest.Query(t, pipetest.LocalA, 4)))
	if m := readAnswer(t, d); m.Id != 4 {
		t.Errorf("answer ID %d, want 4", m.Id)
	}
}

// bigHandler answers every query at once with a 60 KiB message: a few
// fill a socket buffer.
type bigHandler struct{}

func (bigHandler) Answer(r *forwarder.Request, out []byte) ([]byte, bool) {
	out = out[:60<<10]
	clear(out)
	copy(out, r.Msg[:2])
	out[2] = 0x80 // QR
	return out, true
}

func (bigHandler) Resolve(r *forwarder.Request, out []byte, _ func([]byte)) ([]byte, bool) {
	return bigHandler{}.Answer(r, out)
}

// TestClientNeverReads: a client that sends queries and reads none of its
// answers (a tiny receive buffer) is cut off once a write to it takes
// longer than WriteTimeout, and counted in SlowClients.
func TestClientNeverReads(t *testing.T) {
	s := start(t, Config{WriteTimeout: 300 * time.Millisecond}, bigHandler{})
	d := &net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4<<10) })
		return nil
	}}
	c, err := tls.DialWithDialer(d, "tcp", s.Addr().String(), &tls.Config{RootCAs: pki(t).Pool, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	q := frame(pipetest.Query(t, pipetest.LocalA, 1))
	// Count-based: at most 2000 queries (120 MB of answers), far more
	// than any socket buffers hold; the server stops reading once stuck.
	for i := 0; i < 2000 && s.Stats().SlowClients == 0; i++ {
		c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := c.Write(q); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			break // cut off
		}
	}
	waitFor(t, "SlowClients 1", func() bool { return s.Stats().SlowClients == 1 })
	waitFor(t, "no open connection", func() bool { return s.Stats().Open == 0 })
}
