package querylog

import (
	"errors"
	"net"
	"os"
	"sync/atomic"
	"time"

	dnstap "github.com/dnstap/golang-dnstap"
	"google.golang.org/protobuf/proto"
)

// dnstapVersion is the dnstap "version" field: the software that wrote it.
const dnstapVersion = "xdoh"

// socketProtocol maps a transport name to dnstap's SocketProtocol. DoH and
// DoH-FIPS are both DOH (RFC 8484), DoT and DoT-FIPS both DOT: dnstap has no
// FIPS distinction, and the JSON log keeps it. This dnstap has no DoQ.
func socketProtocol(transport string) (dnstap.SocketProtocol, bool) {
	switch transport {
	case "UDP":
		return dnstap.SocketProtocol_UDP, true
	case "TCP":
		return dnstap.SocketProtocol_TCP, true
	case "DoH", "DoH-FIPS":
		return dnstap.SocketProtocol_DOH, true
	case "DoT", "DoT-FIPS":
		return dnstap.SocketProtocol_DOT, true
	}
	return 0, false
}

// dnstapEncoder turns a record into CLIENT_QUERY and CLIENT_RESPONSE frames.
// It reuses its message and buffer, so frames are valid only until the next
// encode.
type dnstapEncoder struct {
	dt   dnstap.Dnstap
	msg  dnstap.Message
	buf  []byte
	addr []byte
}

func newDnstapEncoder(identity string) *dnstapEncoder {
	d := &dnstapEncoder{}
	if identity != "" {
		d.dt.Identity = []byte(identity)
	}
	d.dt.Version = []byte(dnstapVersion)
	d.dt.Type = dnstap.Dnstap_MESSAGE.Enum()
	d.dt.Message = &d.msg
	return d
}

// encode calls emit with the query frame and, when r has a response, the
// response frame.
func (d *dnstapEncoder) encode(r *record, emit func(frame []byte) error) error {
	e := &r.e
	m := &d.msg
	*m = dnstap.Message{}
	if e.Client.IsValid() {
		a := e.Client.Addr().Unmap()
		if a.Is4() {
			a4 := a.As4()
			d.addr = append(d.addr[:0], a4[:]...)
			m.SocketFamily = dnstap.SocketFamily_INET.Enum()
		} else {
			a16 := a.As16()
			d.addr = append(d.addr[:0], a16[:]...)
			m.SocketFamily = dnstap.SocketFamily_INET6.Enum()
		}
		m.QueryAddress = d.addr
		m.QueryPort = proto.Uint32(uint32(e.Client.Port()))
	}
	if p, ok := socketProtocol(e.Transport); ok {
		m.SocketProtocol = p.Enum()
	}
	m.QueryTimeSec = proto.Uint64(uint64(e.Time.Unix()))
	m.QueryTimeNsec = proto.Uint32(uint32(e.Time.Nanosecond()))
	m.QueryMessage = e.Query
	m.Type = dnstap.Message_CLIENT_QUERY.Enum()

	if err := d.marshal(); err != nil {
		return err
	}
	if err := emit(d.buf); err != nil {
		return err
	}
	if len(e.Response) == 0 {
		return nil
	}

	rt := e.Time.Add(e.Latency)
	m.Type = dnstap.Message_CLIENT_RESPONSE.Enum()
	m.QueryMessage = nil
	m.ResponseTimeSec = proto.Uint64(uint64(rt.Unix()))
	m.ResponseTimeNsec = proto.Uint32(uint32(rt.Nanosecond()))
	m.ResponseMessage = e.Response
	if err := d.marshal(); err != nil {
		return err
	}
	return emit(d.buf)
}

func (d *dnstapEncoder) marshal() error {
	b, err := proto.MarshalOptions{}.MarshalAppend(d.buf[:0], &d.dt)
	if err != nil {
		return err
	}
	d.buf = b
	return nil
}

// dnstapFile writes a Frame Streams file. A file holds one stream (START …
// STOP), so it is truncated on open and on reopen, as dnstap's own tools do.
type dnstapFile struct {
	path string
	f    *os.File
	w    dnstap.Writer
	enc  *dnstapEncoder
	emit func([]byte) error
}

var _ sink = (*dnstapFile)(nil)

func openDnstapFile(path, identity string) (*dnstapFile, error) {
	s := &dnstapFile{path: path, enc: newDnstapEncoder(identity)}
	s.emit = func(frame []byte) error {
		_, err := s.w.WriteFrame(frame)
		return err
	}
	if err := s.open(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *dnstapFile) open() error {
	f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	w, err := dnstap.NewWriter(f, nil)
	if err != nil {
		f.Close()
		return err
	}
	s.f, s.w = f, w
	return nil
}

func (s *dnstapFile) write(r *record) error {
	if s.w == nil {
		return errors.New("dnstap file not open")
	}
	return s.enc.encode(r, s.emit)
}

func (s *dnstapFile) flush() error {
	if fl, ok := s.w.(interface{ Flush() error }); ok {
		return fl.Flush()
	}
	return nil
}

func (s *dnstapFile) reopen() error {
	err := s.close()
	return errors.Join(err, s.open())
}

func (s *dnstapFile) close() error {
	if s.w == nil {
		return nil
	}
	err := s.w.Close() // writes STOP and flushes
	err = errors.Join(err, s.f.Close())
	s.w, s.f = nil, nil
	return err
}

// Socket output tuning: a dead or slow collector costs dropped frames, never
// a stalled writer goroutine.
const (
	dnstapDialTimeout  = time.Second
	dnstapWriteTimeout = 2 * time.Second
	dnstapRetry        = 5 * time.Second
)

// dnstapSocket sends frames to a Frame Streams collector on a unix socket
// (bidirectional handshake). Frames pass through a bounded channel to a
// goroutine of its own, which dials lazily, redials at most every
// dnstapRetry, and drops (and counts) frames while it has no connection.
type dnstapSocket struct {
	addr    *net.UnixAddr
	enc     *dnstapEncoder
	frames  chan []byte
	done    chan struct{}
	dropped *atomic.Uint64
	emit    func([]byte) error

	// owned by the socket goroutine
	conn     net.Conn
	w        dnstap.Writer
	lastDial time.Time
}

var _ sink = (*dnstapSocket)(nil)

func newDnstapSocket(path, identity string, buffer int, dropped *atomic.Uint64) *dnstapSocket {
	if buffer <= 0 {
		buffer = defaultBuffer
	}
	s := &dnstapSocket{
		addr:    &net.UnixAddr{Name: path, Net: "unix"},
		enc:     newDnstapEncoder(identity),
		frames:  make(chan []byte, 2*buffer),
		done:    make(chan struct{}),
		dropped: dropped,
	}
	s.emit = func(frame []byte) error {
		select {
		case s.frames <- append([]byte(nil), frame...):
		default:
			s.dropped.Add(1)
		}
		return nil
	}
	go s.run()
	return s
}

func (s *dnstapSocket) write(r *record) error { return s.enc.encode(r, s.emit) }
func (s *dnstapSocket) flush() error          { return nil } // the socket goroutine flushes when idle
func (s *dnstapSocket) reopen() error         { return nil } // a socket needs no rotation

func (s *dnstapSocket) close() error {
	close(s.frames)
	<-s.done
	return nil
}

func (s *dnstapSocket) run() {
	defer close(s.done)
	defer s.disconnect()
	for frame := range s.frames {
		if s.w == nil && time.Since(s.lastDial) >= dnstapRetry {
			s.connect()
		}
		if s.w == nil {
			s.dropped.Add(1)
			continue
		}
		if _, err := s.w.WriteFrame(frame); err != nil {
			s.dropped.Add(1)
			s.abort()
			continue
		}
		if len(s.frames) == 0 {
			if fl, ok := s.w.(interface{ Flush() error }); ok && fl.Flush() != nil {
				s.abort()
			}
		}
	}
}

func (s *dnstapSocket) connect() {
	s.lastDial = time.Now()
	d := net.Dialer{Timeout: dnstapDialTimeout}
	c, err := d.Dial(s.addr.Network(), s.addr.String())
	if err != nil {
		return
	}
	w, err := dnstap.NewWriter(c, &dnstap.WriterOptions{Bidirectional: true, Timeout: dnstapWriteTimeout})
	if err != nil {
		c.Close()
		return
	}
	s.conn, s.w = c, w
}

// abort drops a broken connection without the STOP handshake.
func (s *dnstapSocket) abort() {
	if s.conn != nil {
		s.conn.Close()
	}
	s.conn, s.w = nil, nil
}

// disconnect ends the stream cleanly (STOP, wait for FINISH) and closes.
func (s *dnstapSocket) disconnect() {
	if s.w != nil {
		s.w.Close()
	}
	s.abort()
}
