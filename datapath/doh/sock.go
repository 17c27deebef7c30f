package doh

import (
	"io"
	"net"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sock is a client's TCP socket under TLS.
//
// A read that finds the socket empty calls idle once before it waits: that
// is the moment the reader has taken in everything the client sent so far,
// so the answers to all of it leave in one write, and nothing is written
// while more input is already waiting (TLS hands over one record per read,
// so "the buffered frames are used up" is not that moment).
//
// Between cork and uncork, writes are collected and then leave in one
// write: crypto/tls writes each record on its own.
//
// The socket is non-blocking, so its reads and writes go to the kernel as
// raw system calls, without the scheduler's syscall bookkeeping: when one
// took more than 20 µs the runtime handed the only P to another thread,
// and on a small VM those hand-offs (thread wake-ups) cost more than the
// calls. A write the socket cannot take whole goes through the poller.
type sock struct {
	net.Conn
	rc   syscall.RawConn
	idle func() // runs on the reading goroutine

	wmu    sync.Mutex // TLS may write an alert from the reader while a flush is corked
	corked bool
	wbuf   []byte

	// State of the read in progress, for readFn.
	p      []byte
	n      int
	err    error
	idled  bool
	readFn func(fd uintptr) bool

	// fresh is set when data was read; the reader clears it once that data
	// is acknowledged (see conn.onIdle).
	fresh bool
}

// newSock wraps a TCP connection.
func newSock(raw *net.TCPConn, idle func()) (*sock, error) {
	rc, err := raw.SyscallConn()
	if err != nil {
		return nil, err
	}
	s := &sock{Conn: raw, rc: rc, idle: idle}
	s.readFn = s.read
	return s, nil
}

func (s *sock) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.corked {
		s.wbuf = append(s.wbuf, p...)
		return len(p), nil
	}
	return s.Conn.Write(p)
}

// cork holds writes back until uncork.
func (s *sock) cork() {
	s.wmu.Lock()
	s.corked = true
	s.wmu.Unlock()
}

// uncork writes what cork held back, in one write.
func (s *sock) uncork() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.corked = false
	err := s.writeAll(s.wbuf)
	if cap(s.wbuf) > maxSpare {
		s.wbuf = nil
	}
	s.wbuf = s.wbuf[:0]
	return err
}

func (s *sock) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.p, s.n, s.err, s.idled = p, 0, nil, false
	if err := s.rc.Read(s.readFn); err != nil {
		return 0, err // the deadline passed, or the socket was closed
	}
	s.p = nil
	return s.n, s.err
}

// read is the non-blocking read RawConn.Read retries until it reports
// true; false makes it wait for the socket to become readable.
func (s *sock) read(fd uintptr) bool {
	for {
		n, err := rawRead(fd, s.p)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			if !s.idled {
				s.idled = true
				s.idle()
			}
			return false
		case err != nil:
			s.n, s.err = 0, err
		case n == 0:
			s.n, s.err = 0, io.EOF
		default:
			s.n = n
			s.fresh = true
		}
		return true
	}
}

// rawRead is read(2) on the non-blocking socket.
func rawRead(fd uintptr, p []byte) (int, error) {
	r, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// writeAll writes b with write(2) on the non-blocking socket, and what the
// socket does not take at once through the poller.
func (s *sock) writeAll(b []byte) error {
	n := 0
	if len(b) > 0 {
		s.rc.Control(func(fd uintptr) {
			for n < len(b) {
				r, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&b[n])), uintptr(len(b)-n))
				switch {
				case e == unix.EINTR:
				case e != 0:
					return // EAGAIN, or an error the poller's write reports
				default:
					n += int(r)
				}
			}
		})
	}
	if n == len(b) {
		return nil
	}
	_, err := s.Conn.Write(b[n:])
	return err
}
