package dot

import (
	"bufio"
	"errors"
	"io"
)

// headerLen is the size of a DNS header: no query is shorter.
const headerLen = 12

// errShortMessage is a length prefix below a DNS header: the framing is
// broken or the peer does not speak DNS, and the connection is closed.
var errShortMessage = errors.New("message shorter than a DNS header")

// readFrame reads one length-prefixed message (RFC 1035 4.2.2) from br
// into *buf, which it grows as needed, and returns it. A stream that ends
// inside a message gives io.ErrUnexpectedEOF; one that ends between
// messages, io.EOF.
func readFrame(br *bufio.Reader, buf *[]byte) ([]byte, error) {
	p, err := br.Peek(2) // not io.ReadFull into an array: that would escape
	if err != nil {
		if err == io.EOF && len(p) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	n := int(p[0])<<8 | int(p[1])
	br.Discard(2)
	if n < headerLen {
		return nil, errShortMessage
	}
	if cap(*buf) < n {
		*buf = make([]byte, n, max(n, 512))
	}
	msg := (*buf)[:n]
	if _, err := io.ReadFull(br, msg); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return msg, nil
}

// frameBuffered reports whether br holds a whole message already, so that
// reading it does not wait for the network.
func frameBuffered(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Buffered())
	return len(b) >= 2 && len(b) >= 2+(int(b[0])<<8|int(b[1]))
}
