package dot

import (
	"crypto/tls"
	"net"
	"testing"
	"time"

	"xdoh/datapath/internal/pipetest"
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
	if st := s.Stats(); st.Refused != 1 || st.Conns != 2 {
		t.Errorf("stats %+v, want 1 refused and 2 served", st)
	}
	a.Close()
	waitFor(t, "one open connection", func() bool { return s.Stats().Open == 1 })
	c := dial(t, s)
	c.Write(frame(pipetest.Query(t, pipetest.LocalA, 7)))
	if m := readAnswer(t, c); m.Id != 7 {
		t.Errorf("answer ID %d, want 7", m.Id)
	}
	_ = b
}
