package doq

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"xdoh/forwarder"
)

const (
	headerLen = 12 // a DNS header: no query is shorter
	// maxStreamData is the most a stream may carry: one message of the
	// largest size and its prefix. One octet more shows a second message.
	maxStreamData = 2 + 65535
)

// protocolError ends the connection with DOQ_PROTOCOL_ERROR; its text is
// the reason phrase.
type protocolError string

func (e protocolError) Error() string { return string(e) }

// errStreamTimeout: the stream's query did not arrive in time.
var errStreamTimeout = errors.New("query not received within StreamReadTimeout")

// conn is one client connection: serve accepts its streams, and each
// stream has a goroutine (serveStream) until it is answered.
type conn struct {
	s      *Server
	qc     *quic.Conn
	client netip.AddrPort

	ctx     context.Context // AcceptStream's: cancelled by stop
	cancel  context.CancelFunc
	streams sync.WaitGroup
}

func newConn(s *Server, qc *quic.Conn) *conn {
	c := &conn{s: s, qc: qc}
	if ap, err := netip.ParseAddrPort(qc.RemoteAddr().String()); err == nil {
		c.client = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	c.ctx, c.cancel = context.WithCancel(qc.Context())
	return c
}

// serve accepts streams until the connection ends or the server stops;
// then it waits for the streams it started and, on a stop, closes the
// connection with DOQ_NO_ERROR.
func (c *conn) serve() {
	defer c.s.wg.Done()
	defer c.cancel()
	for {
		st, err := c.qc.AcceptStream(c.ctx)
		if err != nil {
			break
		}
		c.streams.Add(1)
		go c.serveStream(st)
	}
	c.streams.Wait()
	if c.qc.Context().Err() == nil {
		c.qc.CloseWithError(CodeNoError, "")
	}
}

// stop makes serve take no more streams and close the connection once the
// ones it has are answered.
func (c *conn) stop() { c.cancel() }

// job is what one stream needs, pooled: the buffers, the request, and the
// channel Resolve's callback signals on.
type job struct {
	out   []byte // the pipeline's answer buffer (64 KiB)
	in    []byte // the stream's data as read
	wbuf  []byte // the answer, length-prefixed
	ok    bool   // wbuf holds an answer
	req   forwarder.Request
	ready chan struct{}
	done  func([]byte) // answered, bound once
}

func newJob() *job {
	j := &job{out: make([]byte, 65536), in: make([]byte, 0, 512), ready: make(chan struct{}, 1)}
	j.done = j.answered
	return j
}

// frame stores resp, length-prefixed, as the answer to write; nil means
// the query gets none.
func (j *job) frame(resp []byte) {
	j.ok = len(resp) >= headerLen && len(resp) <= 0xffff
	if j.ok {
		j.wbuf = append(append(j.wbuf[:0], byte(len(resp)>>8), byte(len(resp))), resp...)
	}
}

// answered is Resolve's callback: it must not block, and the stream's
// goroutine is waiting on ready.
func (j *job) answered(resp []byte) {
	j.frame(resp)
	j.ready <- struct{}{}
}

// serveStream reads the stream's query, runs the pipeline on it, and
// writes the answer followed by FIN.
func (c *conn) serveStream(st *quic.Stream) {
	defer c.streams.Done()
	s := c.s
	j := s.jobs.Get().(*job)
	defer s.jobs.Put(j)
	st.SetReadDeadline(time.Now().Add(s.cfg.StreamReadTimeout))
	msg, err := readQuery(st, &j.in)
	var pe protocolError
	switch {
	case errors.As(err, &pe):
		s.stats.protocolErrors.Add(1)
		s.log(slog.LevelDebug, "DoQ protocol error", "client", c.client, "err", err)
		c.qc.CloseWithError(CodeProtocolError, string(pe))
		return
	case errors.Is(err, errStreamTimeout):
		s.stats.streamTimeouts.Add(1)
		st.CancelRead(CodeRequestCancelled)
		st.CancelWrite(CodeRequestCancelled)
		return
	case err != nil: // the stream or the connection is gone
		st.CancelWrite(CodeRequestCancelled)
		return
	}
	s.stats.queries.Add(1)
	j.req = forwarder.Request{Msg: msg, Transport: forwarder.TransportDoQ, Client: c.client, Listener: s.cfg.Name}
	if resp, ok := s.h.Answer(&j.req, j.out); ok {
		j.frame(resp)
	} else if resp, ok = s.h.Resolve(&j.req, j.out, j.done); ok {
		j.frame(resp)
	} else {
		<-j.ready // the pipeline always calls back, within its query timeout
	}
	if !j.ok { // the query gets no answer
		st.CancelWrite(CodeRequestCancelled)
		return
	}
	st.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
	if _, err := st.Write(j.wbuf); err != nil {
		s.stats.writeErrors.Add(1)
		st.CancelWrite(CodeRequestCancelled)
		return
	}
	st.Close() // FIN: the answer is complete
	s.stats.answers.Add(1)
}

// readQuery reads a stream to its FIN and returns the one query on it
// (into *buf, grown as needed). What RFC 9250 makes a protocol error is a
// protocolError: more than one message, a FIN inside the message, no FIN
// after it (within the read deadline), a message shorter than a DNS
// header, a DNS ID other than 0.
func readQuery(r io.Reader, buf *[]byte) ([]byte, error) {
	in := (*buf)[:0]
	for {
		if len(in) == cap(in) {
			in = append(in, 0)[:len(in)] // grow
		}
		n, err := r.Read(in[len(in):min(cap(in), maxStreamData+1)])
		in = in[:len(in)+n]
		*buf = in
		if len(in) >= 2 && len(in) > 2+msgLen(in) {
			return nil, protocolError("more than one message on a stream")
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if len(in) >= 2 && len(in) == 2+msgLen(in) {
					return nil, protocolError("no FIN after the query")
				}
				return nil, errStreamTimeout
			}
			return nil, err
		}
	}
	switch {
	case len(in) < 2 || len(in) < 2+msgLen(in):
		return nil, protocolError("FIN inside the message")
	case msgLen(in) < headerLen:
		return nil, protocolError("message shorter than a DNS header")
	case in[2] != 0 || in[3] != 0:
		return nil, protocolError("DNS message ID not 0 (RFC 9250 4.2.1)")
	}
	return in[2:], nil
}

// msgLen is the length prefix at the start of b (len(b) >= 2).
func msgLen(b []byte) int { return int(b[0])<<8 | int(b[1]) }
