package querylog

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
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

// dnstapFile writes a Frame Streams file: one stream of START, data
// frames and STOP. Opening a file that already holds a stream (a SIGHUP
// without rotation, a restart) continues that stream: the STOP at its end
// is cut off and the new data frames follow, so nothing is truncated and
// the file stays one stream. It cannot start a second stream after the
// first: readers (BIND's dnstap-read, golang-dnstap) stop at the first
// STOP and would not show what follows. A file cut off mid-frame (its
// writer was killed) is cut back to its last whole frame; a file that is
// not a dnstap Frame Stream is left alone and the open fails.
type dnstapFile struct {
	path string
	f    *os.File
	w    *bufio.Writer
	enc  *dnstapEncoder
	emit func([]byte) error
}

var _ sink = (*dnstapFile)(nil)

// Frame Streams control frames (farsightsec/fstrm's control.h).
const (
	fsControlStart       = 2
	fsControlStop        = 3
	fsControlContentType = 1
	// fsMaxFrame bounds a data frame when an existing file is read back:
	// a larger length is damage, and the file is cut there.
	fsMaxFrame = 1 << 20
)

// fsStop is the STOP control frame: escape, length 4, type STOP.
var fsStop = []byte{0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, fsControlStop}

// fsStart is the START control frame with dnstap's content type.
func fsStart() []byte {
	ct := dnstap.FSContentType
	b := binary.BigEndian.AppendUint32(nil, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(12+len(ct)))
	b = binary.BigEndian.AppendUint32(b, fsControlStart)
	b = binary.BigEndian.AppendUint32(b, fsControlContentType)
	b = binary.BigEndian.AppendUint32(b, uint32(len(ct)))
	return append(b, ct...)
}

func openDnstapFile(path, identity string) (*dnstapFile, error) {
	s := &dnstapFile{path: path, enc: newDnstapEncoder(identity)}
	s.emit = func(frame []byte) error {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(frame)))
		if _, err := s.w.Write(n[:]); err != nil {
			return err
		}
		_, err := s.w.Write(frame)
		return err
	}
	if err := s.open(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *dnstapFile) open() error {
	f, err := os.OpenFile(s.path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err == nil && st.Size() > 0 {
		var end int64
		if end, err = fsStreamEnd(f, st.Size()); err == nil {
			if err = f.Truncate(end); err == nil {
				_, err = f.Seek(end, io.SeekStart)
			}
		}
		if err != nil {
			err = fmt.Errorf("continuing the dnstap file %s: %w", s.path, err)
		}
	} else if err == nil {
		_, err = f.Write(fsStart())
	}
	if err != nil {
		f.Close()
		return err
	}
	s.f, s.w = f, bufio.NewWriterSize(f, 64<<10)
	return nil
}

// fsStreamEnd checks that f (size octets) starts a dnstap Frame Stream and
// returns where new data frames go: before its STOP, or after its last
// whole frame when it has none.
func fsStreamEnd(f *os.File, size int64) (int64, error) {
	start := fsStart()
	head := make([]byte, len(start))
	if _, err := f.ReadAt(head, 0); err != nil || !bytes.Equal(head, start) {
		return 0, errors.New("it exists and does not start a dnstap Frame Stream (move it away)")
	}
	tail := make([]byte, len(fsStop))
	if size >= int64(len(start)+len(fsStop)) {
		if _, err := f.ReadAt(tail, size-int64(len(fsStop))); err == nil && bytes.Equal(tail, fsStop) {
			return size - int64(len(fsStop)), nil
		}
	}
	// No STOP at the end: its writer died. Walk to the last whole frame.
	r := bufio.NewReader(io.NewSectionReader(f, 0, size))
	off := int64(len(start))
	if _, err := r.Discard(len(start)); err != nil {
		return 0, err
	}
	var n [8]byte
	for {
		if _, err := io.ReadFull(r, n[:4]); err != nil {
			return off, nil
		}
		l := int64(binary.BigEndian.Uint32(n[:4]))
		ctl := l == 0
		if ctl {
			if _, err := io.ReadFull(r, n[4:8]); err != nil {
				return off, nil
			}
			l = int64(binary.BigEndian.Uint32(n[4:8]))
		}
		if l > fsMaxFrame {
			return off, nil
		}
		if ctl && l >= 4 {
			var typ [4]byte
			if _, err := io.ReadFull(r, typ[:]); err != nil {
				return off, nil
			}
			if binary.BigEndian.Uint32(typ[:]) == fsControlStop {
				return 0, errors.New("it holds more than one Frame Stream (move it away)")
			}
			l -= 4
		}
		if _, err := r.Discard(int(l)); err != nil {
			return off, nil
		}
		if ctl {
			off += 8 + 4 + l
		} else {
			off += 4 + l
		}
	}
}

func (s *dnstapFile) write(r *record) error {
	if s.w == nil {
		return errors.New("dnstap file not open")
	}
	return s.enc.encode(r, s.emit)
}

func (s *dnstapFile) flush() error {
	if s.w == nil {
		return nil
	}
	return s.w.Flush()
}

func (s *dnstapFile) reopen() error {
	err := s.close()
	return errors.Join(err, s.open())
}

func (s *dnstapFile) close() error {
	if s.w == nil {
		return nil
	}
	_, err := s.w.Write(fsStop)
	err = errors.Join(err, s.w.Flush(), s.f.Close())
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
