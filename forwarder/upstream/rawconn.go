package upstream

import (
	"io"
	"net"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawConn is a TCP connection, or a connected UDP socket, whose reads and
// writes are raw system calls on its non-blocking socket; when the socket
// is not ready the goroutine parks in the runtime's network poller, as with
// the net package's connections, and the connection's deadlines apply the
// same way. Everything else is the wrapped connection's.
//
// Why: the net package's reads and writes enter the runtime's syscall state,
// and the first such call after the process was idle wakes the runtime's
// monitor thread (sysmon) and sets it polling every 20 µs again. A
// forwarder at a few thousand queries per second goes idle and busy
// thousands of times a second; on a virtual machine those wake-ups cost
// more CPU than the queries. A read or write on a non-blocking socket never
// blocks, so it needs no syscall state.
//
// One Read may run at a time (each connection has one reader); Writes are
// serialized, as the net package serializes them (a Do53 UDP socket is
// written by every caller).
type rawConn struct {
	net.Conn
	rc     syscall.RawConn
	stream bool // TCP: reading 0 bytes is the end of the stream, not an empty datagram

	rb   []byte
	rn   int
	rerr syscall.Errno
	rfn  func(uintptr) bool // c.tryRead, bound once
	// readIdle, if set, runs on the reader's goroutine when a read finds
	// the socket empty, before it waits. It must not close the connection.
	readIdle func()

	wmu   sync.Mutex
	wb    []byte
	wn    int
	werr  syscall.Errno
	wfn   func(uintptr) bool // c.tryWrite, bound once
	nowfn func(uintptr)      // c.tryWrite for Control, bound once
}

// newRawConn wraps a *net.TCPConn or a connected *net.UDPConn; any other
// connection, or one whose socket cannot be reached, is returned as it is.
func newRawConn(nc net.Conn) net.Conn {
	var (
		rc     syscall.RawConn
		err    error
		stream bool
	)
	switch c := nc.(type) {
	case *net.TCPConn:
		rc, err = c.SyscallConn()
		stream = true
	case *net.UDPConn:
		rc, err = c.SyscallConn()
	default:
		return nc
	}
	if err != nil {
		return nc
	}
	c := &rawConn{Conn: nc, rc: rc, stream: stream}
	c.rfn, c.wfn = c.tryRead, c.tryWrite
	c.nowfn = func(fd uintptr) { c.tryWrite(fd) }
	return c
}

func (c *rawConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	c.rb, c.rn, c.rerr = b, 0, 0
	err := c.rc.Read(c.rfn)
	c.rb = nil
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case c.rerr != 0:
		return 0, c.opError("read", c.rerr)
	case c.rn == 0 && c.stream:
		return 0, io.EOF
	}
	return c.rn, nil
}

func (c *rawConn) tryRead(fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&c.rb[0])), uintptr(len(c.rb)))
		switch e {
		case 0:
			c.rn = int(n)
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			if c.readIdle != nil {
				c.readIdle()
			}
			return false
		}
		c.rerr = e
		return true
	}
}

func (c *rawConn) Write(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	c.wmu.Lock()
	c.wb, c.wn, c.werr = b, 0, 0
	err := c.rc.Write(c.wfn)
	n, werr := c.wn, c.werr
	c.wb = nil
	c.wmu.Unlock()
	switch {
	case err != nil:
		return n, c.opError("write", err)
	case werr != 0:
		return n, c.opError("write", werr)
	}
	return n, nil
}

// writeNow writes as much of b as the socket takes now, without waiting
// for it: n < len(b) with a nil error when it is full. Deadlines do not
// apply.
func (c *rawConn) writeNow(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	c.wmu.Lock()
	c.wb, c.wn, c.werr = b, 0, 0
	err := c.rc.Control(c.nowfn)
	n, werr := c.wn, c.werr
	c.wb = nil
	c.wmu.Unlock()
	switch {
	case err != nil:
		return n, c.opError("write", err)
	case werr != 0:
		return n, c.opError("write", werr)
	}
	return n, nil
}

// tryWrite writes what is left of c.wb; false waits until the socket is
// writable again.
func (c *rawConn) tryWrite(fd uintptr) bool {
	for c.wn < len(c.wb) {
		p := c.wb[c.wn:]
		n, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch e {
		case 0:
			c.wn += int(n)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			c.werr = e
			return true
		}
	}
	return true
}

// sendQueueEmpty reports whether everything written has been sent and
// acknowledged (SIOCOUTQ is 0), so that a small write cannot block.
func (c *rawConn) sendQueueEmpty() bool {
	empty := false
	_ = c.rc.Control(func(fd uintptr) {
		n, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQ)
		empty = err == nil && n == 0
	})
	return empty
}

func (c *rawConn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
