package upstream

// An HTTP/2 connection to a DoH server, by the goroutine that owns each
// part: its lifecycle and the callers' side are here (handshake,
// abandonLocked, shutdown; Submit's side is in doh_submit.go); the writer
// goroutine and keepalive are in doh_writer.go, the reader goroutine in
// doh_reader.go, and the header encoding in doh_hpack.go.

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Conn is one HTTP/2 connection to a DoH server, with one writer and one
// reader goroutine.
type h2Conn struct {
	d     *DoH
	nc    net.Conn // the TLS connection
	sock  *rawConn // its socket, if raw: writeInline writes only when its send queue is empty
	bw    *bufio.Writer
	fr    *http2.Framer
	reqCh chan *request // requests for the writer; bounded
	wake  chan struct{} // cap 1: the writer has control frames or window to act on
	quit  chan struct{} // closed by shutdown
	// wmu is held while a batch is written and by writerExit: by the
	// writer, or by a Submit writing its request itself (writeInline).
	wmu sync.Mutex

	closing  atomic.Bool  // no new streams: draining or dead
	inflight atomic.Int32 // active, readable without the lock (connection choice)
	born     time.Time    // monotonic base of lastRead
	lastRead atomic.Int64 // when the reader last got a frame, ns since born

	mu             sync.Mutex
	dead           bool
	err            error // why the connection died
	draining       bool  // GOAWAY received or stream IDs exhausted
	streams        map[uint32]*request
	active         int // streams held by callers: queued or open; mirrored in inflight
	maxStreams     int
	nextID         uint32
	sendWindow     int64 // connection-level flow-control window for our DATA
	peerInitWindow int64
	peerMaxFrame   int
	tableUpdate    int64 // new, smaller HPACK table size to announce; -1 if none
	ctl            ctlFrames
	pingOut        bool    // our PING awaits its ACK
	pingData       [8]byte // its payload (random); written by the writer only
	pingSent       time.Time

	// Writer-owned.
	batch        []*request
	blocked      []*request // waiting for connection send window, in order
	sends        []sendItem
	arena        []byte // query bytes of the current batch
	ctlSpare     ctlFrames
	hdrBuf       []byte
	hdrIndexed   bool  // the first block went out: the dynamic table holds our fields
	hdrLiteral   bool  // do not use the dynamic table (server shrank it)
	pendingTable int64 // table size update to put in the next header block; -1 if none
	armPing      bool  // a PING went out with the last batch: time its ACK

	// Reader-owned.
	dec        *hpack.Decoder
	hStatus    int
	hCType     string // content-type as sent; doh.go judges it
	hCLen      int    // content-length: -1 none, badContentLength
	hEndStream bool   // END_STREAM of the HEADERS frame whose block continues
	connRecvd  uint32 // connection bytes consumed since our last WINDOW_UPDATE
}

func newH2Conn(d *DoH, nc net.Conn) *h2Conn {
	c := &h2Conn{
		d:              d,
		nc:             nc,
		bw:             bufio.NewWriterSize(nc, writeBufSize),
		reqCh:          make(chan *request, 2*maxStreamsPerConn),
		wake:           make(chan struct{}, 1),
		quit:           make(chan struct{}),
		streams:        make(map[uint32]*request, 64),
		maxStreams:     maxStreamsPerConn,
		nextID:         1,
		sendWindow:     65535,
		peerInitWindow: 65535,
		peerMaxFrame:   16384,
		tableUpdate:    -1,
		pendingTable:   -1,
		hCLen:          -1,
		born:           time.Now(),
	}
	c.fr = http2.NewFramer(c.bw, bufio.NewReaderSize(nc, readBufSize))
	c.fr.SetMaxReadFrameSize(16384) // the default we advertise
	c.fr.SetReuseFrames()           // DATA payloads are copied out at once
	c.dec = hpack.NewDecoder(4096, c.onHeaderField)
	c.dec.SetMaxStringLength(16 << 10)
	return c
}

// handshake sends the client preface, our SETTINGS and connection
// WINDOW_UPDATE, and waits for the server's SETTINGS, so that its limits are
// known before the first stream.
func (c *h2Conn) handshake(ctx context.Context) error {
	dl, _ := ctx.Deadline()
	if err := c.nc.SetDeadline(dl); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { c.nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := c.bw.WriteString(http2.ClientPreface); err != nil {
		return fmt.Errorf("writing preface: %w", err)
	}
	if err := c.fr.WriteSettings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: streamRecvWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: 64 << 10},
	); err != nil {
		return fmt.Errorf("writing SETTINGS: %w", err)
	}
	if err := c.fr.WriteWindowUpdate(0, connRecvWindow-65535); err != nil {
		return fmt.Errorf("writing WINDOW_UPDATE: %w", err)
	}
	// The first PING measures the round trip at once; its ACK is read by
	// the reader once the connection runs.
	c.pingData = randomPingData()
	if err := c.fr.WritePing(false, c.pingData); err != nil {
		return fmt.Errorf("writing PING: %w", err)
	}
	c.pingOut, c.pingSent = true, time.Now()
	if err := c.bw.Flush(); err != nil {
		return fmt.Errorf("writing preface: %w", err)
	}
	f, err := c.fr.ReadFrame()
	if err != nil {
		return fmt.Errorf("reading server SETTINGS: %w", err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		return fmt.Errorf("expected SETTINGS from server, got %v", f.Header())
	}
	c.mu.Lock()
	err = c.applySettingsLocked(sf)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	if err := c.fr.WriteSettingsAck(); err != nil {
		return fmt.Errorf("writing SETTINGS ACK: %w", err)
	}
	if err := c.bw.Flush(); err != nil {
		return fmt.Errorf("writing SETTINGS ACK: %w", err)
	}
	if !stop() {
		return ctx.Err()
	}
	return c.nc.SetDeadline(time.Time{})
}

// start launches the reader and writer; the caller accounts for them in
// d.wg under d.mu.
func (c *h2Conn) start() {
	c.d.wg.Add(2)
	go c.readLoop()
	go c.writeLoop()
}

func (c *h2Conn) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// releaseLocked gives back the stream slot of a request that has finished
// or been abandoned; the caller kicks the pool's wait queue after
// unlocking (complete does).
func (c *h2Conn) releaseLocked() {
	c.active--
	c.inflight.Add(-1)
	if c.draining && c.active == 0 {
		c.signal() // the writer closes the drained connection
	}
}

// finishLocked finishes an open or queued request with err. The caller
// hands it to complete after unlocking.
func (c *h2Conn) finishLocked(r *request, err error) {
	if r.state == stSent {
		delete(c.streams, r.id)
	}
	r.state, r.err = stDone, err
	c.releaseLocked()
}

// abandonLocked gives up on r, queued or open, with c.mu held: the writer
// drops a queued request, an open stream is reset with CANCEL, and a stream
// that timed out has the connection checked with a PING.
func (c *h2Conn) abandonLocked(r *request, timedOut bool) {
	if r.state == stSent {
		delete(c.streams, r.id)
		c.ctl.rst = append(c.ctl.rst, streamRST{r.id, http2.ErrCodeCancel})
		c.ctl.ping = c.ctl.ping || timedOut
		c.signal()
	}
	r.state = stAbandoned
	c.releaseLocked()
}

// shutdown closes the connection and fails every request on it with err.
// It is idempotent.
func (c *h2Conn) shutdown(err error) {
	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return
	}
	c.dead, c.err = true, err
	c.closing.Store(true)
	victims := make([]*request, 0, len(c.streams))
	for _, r := range c.streams {
		victims = append(victims, r)
	}
	for _, r := range victims {
		c.finishLocked(r, err)
	}
	c.mu.Unlock()
	close(c.quit)
	c.nc.Close()
	for _, r := range victims {
		c.d.complete(r)
	}
	c.drainQueue()
	c.d.removeConn(c)
	c.d.pool.kick() // waiting requests need another connection
}

// drainQueue fails requests left on the queue of a dead connection.
func (c *h2Conn) drainQueue() {
	for {
		select {
		case r := <-c.reqCh:
			c.failQueued(r)
		default:
			return
		}
	}
}

// failQueued fails a request the writer never sent, unless it was abandoned.
func (c *h2Conn) failQueued(r *request) {
	c.mu.Lock()
	if r.state != stQueued {
		c.mu.Unlock()
		return
	}
	err := c.err
	if err == nil {
		err = errDraining
	}
	c.finishLocked(r, err)
	c.mu.Unlock()
	c.d.complete(r)
}
