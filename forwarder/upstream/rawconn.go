package upstream

import (
	"io"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawTCP is a TCP connection whose reads and writes are raw system calls on
// its non-blocking socket; when the socket is not ready the goroutine parks
// in the runtime's network poller, as with net.TCPConn, and the connection's
// deadlines apply the same way.
//
// Why: net.TCPConn's reads and writes enter the runtime's syscall state,
// and the first such call after the process was idle wakes the runtime's
// monitor thread (sysmon) and sets it polling every 20 µs again. A
// forwarder at a few thousand queries per second goes idle and busy
// thousands of times a second; on a virtual machine those wake-ups cost
// more CPU than the queries. A read or write on a non-blocking socket never
// blocks, so it needs no syscall state.
//
// One Read and one Write may run at a time (tls.Conn serializes each).
type rawTCP struct {
	*net.TCPConn
	rc syscall.RawConn

	rb   []byte
	rn   int
	rerr syscall.Errno
	rfn  func(uintptr) bool // c.tryRead, bound once

	wb   []byte
	wn   int
	werr syscall.Errno
	wfn  func(uintptr) bool // c.tryWrite, bound once
}

// newRawTCP wraps tc; it returns nil if tc's socket cannot be reached.
func newRawTCP(tc *net.TCPConn) *rawTCP {
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	c := &rawTCP{TCPConn: tc, rc: rc}
	c.rfn, c.wfn = c.tryRead, c.tryWrite
	return c
}

func (c *rawTCP) Read(b []byte) (int, error) {
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
	case c.rn == 0:
		return 0, io.EOF
	}
	return c.rn, nil
}

func (c *rawTCP) tryRead(fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&c.rb[0])), uintptr(len(c.rb)))
		switch e {
		case 0:
			c.rn = int(n)
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		c.rerr = e
		return true
	}
}

func (c *rawTCP) Write(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	c.wb, c.wn, c.werr = b, 0, 0
	err := c.rc.Write(c.wfn)
	n := c.wn
	c.wb = nil
	switch {
	case err != nil:
		return n, c.opError("write", err)
	case c.werr != 0:
		return n, c.opError("write", c.werr)
	}
	return n, nil
}

// tryWrite writes what is left of c.wb; false waits until the socket is
// writable again.
func (c *rawTCP) tryWrite(fd uintptr) bool {
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

func (c *rawTCP) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
