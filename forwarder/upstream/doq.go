package upstream

// The DoQ upstream (RFC 9250), its QUIC connections and their reader
// goroutine; a query's life is in doq_query.go.

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/sys/unix"
)

// DoQ error codes (RFC 9250 4.3), sent when a connection or stream is
// closed or cancelled.
const (
	doqNoError          quic.ApplicationErrorCode = 0x0
	doqProtocolError    quic.ApplicationErrorCode = 0x2
	doqRequestCancelled quic.StreamErrorCode      = 0x3
)

// doqIdleTimeout is the QUIC idle timeout a DoQ client offers: a
// connection over which nothing arrives for that long is dead. Keep-alive
// PINGs go out well within it (Options.PingInterval, at most half of it),
// so that a connection to a live server stays up between queries.
const doqIdleTimeout = 30 * time.Second

// errDoQProtocol marks the answers RFC 9250 4.3.3 calls protocol errors:
// a stream holding anything but one message, or a message ID other than
// 0. The query fails with ErrBadResponse, and the connection is closed
// with DOQ_PROTOCOL_ERROR.
var errDoQProtocol = errors.New("DoQ protocol error")

// DoQ is a DNS-over-QUIC upstream (RFC 9250). See the package
// documentation for the design.
type DoQ struct {
	target   string
	dialAddr string // host:port
	ep       *endpoint
	tlsConf  *tls.Config
	quicConf *quic.Config // read at each dial (tests change it before the first)
	timeout  time.Duration
	dialTime time.Duration
	pool     connPool[doqConn, *doqConn]

	ctx    context.Context // cancelled by Close; parent of dials
	cancel context.CancelFunc
	wg     sync.WaitGroup // dial, reader and stream-credit goroutines

	mu     sync.Mutex
	closed bool
	conns  map[*doqConn]struct{}
	isDone atomic.Bool
}

var _ Upstream = (*DoQ)(nil)

// newDoQ builds a DoQ upstream for "quic://host[:port]" (rest is what
// follows the scheme; default port 853). It does no network I/O unless
// Options.Prewarm starts the dials.
func newDoQ(target, rest string, opts Options) (*DoQ, error) {
	dialAddr, host, err := parseHostPort(rest, "853")
	if err != nil {
		return nil, err
	}
	conf, err := tlsConfig(opts, host, "doq")
	if err != nil {
		return nil, err
	}
	conf.MinVersion = tls.VersionTLS13 // QUIC's (RFC 9001)
	keepAlive := doqIdleTimeout / 2
	if opts.PingInterval > 0 {
		keepAlive = min(keepAlive, opts.PingInterval)
	}
	ep, err := newEndpoint(dialAddr, opts.Bootstrap)
	if err != nil {
		return nil, err
	}
	d := &DoQ{
		target:   target,
		dialAddr: dialAddr,
		ep:       ep,
		tlsConf:  conf,
		timeout:  opts.Timeout,
		dialTime: max(2*opts.Timeout, time.Second),
		conns:    make(map[*doqConn]struct{}),
	}
	d.quicConf = &quic.Config{
		HandshakeIdleTimeout: d.dialTime,
		MaxIdleTimeout:       doqIdleTimeout,
		KeepAlivePeriod:      keepAlive,
		// Only the client opens streams, bidirectional ones (RFC 9250 4.2).
		MaxIncomingStreams:    -1,
		MaxIncomingUniStreams: -1,
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.pool = connPool[doqConn, *doqConn]{
		slots: make([]poolSlot[doqConn], opts.Conns),
		what:  "QUIC connection to " + dialAddr, dialed: dialAddr + " over QUIC",
		maxWait: opts.MaxWait,
		spawn:   d.spawn, done: d.wg.Done, dial: d.dial, closed: d.isDone.Load,
	}
	if opts.Prewarm {
		d.pool.prewarm()
	}
	return d, nil
}

// String returns the target as configured.
func (d *DoQ) String() string { return d.target }

// Close stops dialling, fails the queries waiting for a connection and
// those on every connection with ErrClosed, closes the connections
// (DOQ_NO_ERROR) and waits for their goroutines to end.
func (d *DoQ) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.isDone.Store(true)
	conns := make([]*doqConn, 0, len(d.conns))
	for c := range d.conns {
		conns = append(conns, c)
	}
	d.mu.Unlock()
	d.pool.failAll(ErrClosed)
	d.cancel()
	for _, c := range conns {
		c.shutdown(ErrClosed, doqNoError)
	}
	d.wg.Wait()
	return nil
}

// spawn accounts for a pool dial goroutine; false once closed.
func (d *DoQ) spawn() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false
	}
	d.wg.Add(1)
	return true
}

// dial connects (the QUIC and TLS handshakes, ALPN doq, no 0-RTT: a
// query in early data could be replayed), registers and starts one
// connection for the pool. Each connection has a UDP socket of its own,
// which reports ICMP errors (IP_RECVERR): a port unreachable ends the
// dial, or the connection, at once instead of at a timeout, as it ends a
// Do53 UDP socket.
func (d *DoQ) dial() (*doqConn, error) {
	ctx, cancel := context.WithTimeout(d.ctx, d.dialTime)
	defer cancel()
	type dialled struct {
		qc *quic.Conn
		pc *net.UDPConn
	}
	dc, err := dialEach(ctx, d.ep, func(ctx context.Context, a netip.AddrPort) (dialled, error) {
		raddr := net.UDPAddrFromAddrPort(a)
		network, level, opt := "udp4", unix.IPPROTO_IP, unix.IP_RECVERR
		if a.Addr().Is6() {
			network, level, opt = "udp6", unix.IPPROTO_IPV6, unix.IPV6_RECVERR
		}
		pc, err := net.ListenUDP(network, nil)
		if err != nil {
			return dialled{}, fmt.Errorf("opening UDP socket: %w", err)
		}
		if rc, err := pc.SyscallConn(); err == nil {
			rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), level, opt, 1) }) // best effort
		}
		qc, err := quic.Dial(ctx, pc, raddr, d.tlsConf, d.quicConf)
		if err != nil {
			pc.Close()
			return dialled{}, err
		}
		return dialled{qc, pc}, nil
	})
	if err != nil {
		return nil, err
	}
	qc, pc := dc.qc, dc.pc
	if p := qc.ConnectionState().TLS.NegotiatedProtocol; p != "doq" {
		qc.CloseWithError(doqProtocolError, "")
		pc.Close()
		return nil, fmt.Errorf("server did not negotiate DoQ via ALPN (got %q)", p)
	}
	c := &doqConn{
		d:       d,
		qc:      qc,
		pc:      pc,
		wake:    make(chan struct{}, 1),
		quit:    make(chan struct{}),
		queries: make(map[*doqQuery]struct{}, 64),
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		qc.CloseWithError(doqNoError, "")
		pc.Close()
		return nil, ErrClosed
	}
	d.conns[c] = struct{}{}
	d.wg.Add(1)
	go c.read()
	return c, nil
}

func (d *DoQ) removeConn(c *doqConn) {
	d.mu.Lock()
	delete(d.conns, c)
	d.mu.Unlock()
}

// doqConn is one QUIC connection to a DoQ server: each query on its own
// bidirectional stream, opened by the caller (Submit) and read by the
// connection's one reader goroutine once the stream's end is known.
type doqConn struct {
	d        *DoQ
	qc       *quic.Conn
	pc       *net.UDPConn  // its socket; closed after it
	closing  atomic.Bool   // takes no new queries: dead
	inflight atomic.Int32  // queries on it, readable without the lock
	wake     chan struct{} // cap 1: fins has streams to read
	quit     chan struct{} // closed by shutdown

	mu       sync.Mutex
	dead     bool
	err      error                  // why it died
	queries  map[*doqQuery]struct{} // queries with a stream on it
	fins     []finished             // streams whose end is known, for the reader
	spare    *quic.Stream           // opened by awaitStream for the next query
	awaiting bool                   // awaitStream runs

	batch []finished // reader-owned
}

// finished is a query's stream whose final size is known: the server
// sent its FIN (or reset the stream).
type finished struct {
	q    *doqQuery
	st   *quic.Stream
	size int64
}

func (c *doqConn) usable() bool { return !c.closing.Load() }

func (c *doqConn) load() int32 { return c.inflight.Load() }

// openStream returns a new stream for a query. When the server's stream
// limit (its MAX_STREAMS) is reached it returns nil, and unless one runs
// already it starts awaitStream, which waits until deadline for the
// server to allow another. err: c is dead.
func (c *doqConn) openStream(deadline time.Time) (*quic.Stream, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead {
		return nil, c.err
	}
	if st := c.spare; st != nil {
		c.spare = nil
		return st, nil
	}
	st, err := c.qc.OpenStream()
	if err == nil {
		return st, nil
	}
	if !isStreamLimit(err) {
		return nil, fmt.Errorf("%w: opening a stream: %w", ErrConnClosed, err)
	}
	if !c.awaiting && time.Until(deadline) > 0 {
		c.awaiting = true
		c.d.wg.Add(1)
		go c.awaitStream(deadline)
	}
	return nil, nil
}

// isStreamLimit reports whether err is quic-go's StreamLimitReachedError
// (OpenStream returns a pointer to one).
func isStreamLimit(err error) bool {
	var p *quic.StreamLimitReachedError
	return errors.As(err, &p) || errors.As(err, new(quic.StreamLimitReachedError))
}

// awaitStream waits (OpenStreamSync) until deadline, the first waiting
// query's, for the server to allow one more stream, keeps it for the next
// query and hands the pool's waiting queries to the connections. One runs
// per connection at a time, and only while queries wait for a stream: no
// goroutine per query.
func (c *doqConn) awaitStream(deadline time.Time) {
	defer c.d.wg.Done()
	ctx, cancel := context.WithDeadline(c.qc.Context(), deadline)
	st, err := c.qc.OpenStreamSync(ctx)
	cancel()
	c.mu.Lock()
	c.awaiting = false
	if err == nil && !c.dead {
		c.spare = st
	}
	c.mu.Unlock()
	c.d.pool.kick()
}

// add registers q as having a stream on c; false: c is dead.
func (c *doqConn) add(q *doqQuery) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead {
		return false
	}
	c.queries[q] = struct{}{}
	c.inflight.Add(1)
	return true
}

// remove takes q off c if it is there: then the caller completes it.
// False: the reader or shutdown has it, or it was never here.
func (c *doqConn) remove(q *doqQuery) bool {
	c.mu.Lock()
	_, ok := c.queries[q]
	delete(c.queries, q)
	c.mu.Unlock()
	if ok {
		c.inflight.Add(-1)
	}
	return ok
}

// finish is the final-size callback of q's stream st: it runs on the
// QUIC connection's own goroutine and must not block, so it only queues
// the stream for the reader.
func (c *doqConn) finish(q *doqQuery, st *quic.Stream, size int64) {
	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return
	}
	c.fins = append(c.fins, finished{q: q, st: st, size: size})
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// shutdown closes c with code and fails its queries with err (retried
// once if err is retryable). It is idempotent.
func (c *doqConn) shutdown(err error, code quic.ApplicationErrorCode) {
	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return
	}
	c.dead, c.err = true, err
	c.closing.Store(true)
	victims := make([]*doqQuery, 0, len(c.queries))
	for q := range c.queries {
		victims = append(victims, q)
	}
	clear(c.queries)
	c.fins = nil
	c.inflight.Store(0)
	c.mu.Unlock()
	close(c.quit)
	c.qc.CloseWithError(code, "")
	c.pc.Close() // ends the QUIC transport's goroutines
	for _, q := range victims {
		q.connFailed(err)
	}
	c.d.removeConn(c)
	c.d.pool.kick() // a query waiting for the pool may need another connection
}

// read is the connection's reader: it reads the answers of the streams
// whose end the server has sent, and shuts the connection down when QUIC
// closes it (idle timeout, the server closing it, a transport error).
func (c *doqConn) read() {
	defer c.d.wg.Done()
	lost := c.qc.Context().Done()
	for {
		select {
		case <-c.wake:
		case <-c.quit:
			return
		case <-lost:
			c.shutdown(fmt.Errorf("%w: QUIC connection to %s: %w", ErrConnClosed, c.d.dialAddr, context.Cause(c.qc.Context())), doqNoError)
			return
		}
		c.mu.Lock()
		c.batch, c.fins = c.fins, c.batch[:0]
		c.mu.Unlock()
		for i := range c.batch {
			c.answer(&c.batch[i])
			c.batch[i] = finished{}
		}
	}
}

// answer reads the answer on a finished stream and completes its query,
// unless the query has given up on the stream (timed out, cancelled, or
// moved to another connection) or shutdown has it.
func (c *doqConn) answer(f *finished) {
	q := f.q
	q.mu.Lock()
	current := q.st == f.st && !q.settled.Load()
	q.mu.Unlock()
	if !current {
		return
	}
	resp, err := readAnswer(f.st, f.size, q.deadline)
	if !c.remove(q) {
		return
	}
	if err == nil {
		err = checkResponse(q.wire[2:], resp)
	}
	q.complete(resp, err)
	if errors.Is(err, errDoQProtocol) {
		c.shutdown(fmt.Errorf("%w: %w", ErrConnClosed, err), doqProtocolError)
		return
	}
	c.d.pool.kick()
}

// readAnswer reads the one message on stream st, whose final size is
// size, by deadline: its 2-octet length, which must account for the whole
// stream, and the message, which must carry ID 0 (RFC 9250 4.2, 4.2.1).
// It reads the end of the stream too, which completes its receiving side.
func readAnswer(st *quic.Stream, size int64, deadline time.Time) ([]byte, error) {
	if size < 2+headerLen || size > 2+maxResponseSize {
		var b [1]byte
		if _, err := st.Read(b[:]); errors.As(err, new(*quic.StreamError)) {
			return nil, streamReadErr(err) // a reset's final size, not the stream's
		}
		st.CancelRead(quic.StreamErrorCode(doqProtocolError))
		return nil, fmt.Errorf("%w: %w: a stream of %d bytes cannot hold one DNS message", ErrBadResponse, errDoQProtocol, size)
	}
	st.SetReadDeadline(deadline)
	var l [2]byte
	if _, err := io.ReadFull(st, l[:]); err != nil {
		return nil, streamReadErr(err)
	}
	n := int64(binary.BigEndian.Uint16(l[:]))
	if 2+n != size {
		st.CancelRead(quic.StreamErrorCode(doqProtocolError))
		return nil, fmt.Errorf("%w: %w: a message of %d bytes on a stream of %d: one message per stream", ErrBadResponse, errDoQProtocol, n, size)
	}
	resp := make([]byte, n)
	if _, err := io.ReadFull(st, resp); err != nil {
		return nil, streamReadErr(err)
	}
	var end [1]byte
	if _, err := st.Read(end[:]); err != io.EOF {
		return nil, fmt.Errorf("%w: %w: data after the final size", ErrBadResponse, errDoQProtocol)
	}
	if resp[0] != 0 || resp[1] != 0 {
		return nil, fmt.Errorf("%w: %w: message ID %#04x, want 0", ErrBadResponse, errDoQProtocol, binary.BigEndian.Uint16(resp))
	}
	return resp, nil
}

// streamReadErr is the error of a failed read of an answer's stream.
func streamReadErr(err error) error {
	var se *quic.StreamError
	var ne net.Error
	switch {
	case errors.As(err, &se) && se.Remote:
		return fmt.Errorf("%w: %w", ErrStreamReset, err)
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("reading the answer's stream: %w", ErrTimeout)
	}
	return fmt.Errorf("%w: reading the answer's stream: %w", ErrConnClosed, err)
}
