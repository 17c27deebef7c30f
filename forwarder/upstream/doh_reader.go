package upstream

// The reader goroutine of an h2Conn (see doh_conn.go): frames
// demultiplexed by stream, response headers and bodies, GOAWAY and
// SETTINGS. It enforces HTTP/2's own rules on a response (RFC 9113 8.1:
// headers before DATA, a body as long as its content-length) and leaves
// what its status, content type and body mean for DNS to doh.go.

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// readLoop is the connection's only reader.
func (c *h2Conn) readLoop() {
	defer c.d.wg.Done()
	for {
		f, err := c.fr.ReadFrame()
		if err == nil {
			c.lastRead.Store(int64(time.Since(c.born)))
			err = c.handleFrame(f)
		}
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				c.failStream(se.StreamID, fmt.Errorf("%w: %v", ErrBadResponse, se), se.Code)
				continue
			}
			c.mu.Lock()
			dead := c.dead
			c.mu.Unlock()
			if !dead {
				err = fmt.Errorf("%w: reading from %s: %w", ErrConnClosed, c.d.dialAddr, err)
			}
			c.shutdown(err)
			return
		}
	}
}

// failStream fails the open stream id, resetting it with code unless the
// server already ended it (code 0 with end).
func (c *h2Conn) failStream(id uint32, err error, code http2.ErrCode) {
	c.mu.Lock()
	r := c.streams[id]
	if r == nil {
		c.mu.Unlock()
		return
	}
	c.finishLocked(r, err)
	if code != http2.ErrCodeNo {
		c.ctl.rst = append(c.ctl.rst, streamRST{id, code})
		c.signal()
	}
	c.mu.Unlock()
	c.d.complete(r)
}

func (c *h2Conn) handleFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.DataFrame:
		return c.onData(f)
	case *http2.HeadersFrame:
		c.hStatus, c.hCType, c.hCLen = 0, "", -1
		if _, err := c.dec.Write(f.HeaderBlockFragment()); err != nil {
			return http2.ConnectionError(http2.ErrCodeCompression)
		}
		if f.HeadersEnded() {
			return c.endHeaders(f.StreamID, f.StreamEnded())
		}
		c.hEndStream = f.StreamEnded()
	case *http2.ContinuationFrame:
		if _, err := c.dec.Write(f.HeaderBlockFragment()); err != nil {
			return http2.ConnectionError(http2.ErrCodeCompression)
		}
		if f.HeadersEnded() {
			return c.endHeaders(f.StreamID, c.hEndStream)
		}
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		c.mu.Lock()
		err := c.applySettingsLocked(f)
		c.ctl.settingsAck++
		c.mu.Unlock()
		c.signal()
		c.d.pool.kick() // MAX_CONCURRENT_STREAMS may have grown
		return err
	case *http2.PingFrame:
		if f.IsAck() {
			c.mu.Lock()
			ours := c.pingOut && f.Data == c.pingData
			var rtt time.Duration
			if ours {
				c.pingOut = false
				rtt = time.Since(c.pingSent)
			}
			c.mu.Unlock()
			if ours {
				c.d.recordRTT(rtt)
			}
			return nil
		}
		c.mu.Lock()
		if len(c.ctl.pings) < maxQueuedPings {
			c.ctl.pings = append(c.ctl.pings, f.Data)
		}
		c.mu.Unlock()
		c.signal()
	case *http2.GoAwayFrame:
		c.onGoAway(f)
	case *http2.RSTStreamFrame:
		err := fmt.Errorf("%w: %v", ErrStreamReset, f.ErrCode)
		if f.ErrCode == http2.ErrCodeRefusedStream {
			err = ErrRefused
		}
		c.failStream(f.StreamID, err, http2.ErrCodeNo)
	case *http2.WindowUpdateFrame:
		if f.StreamID != 0 {
			return nil // we never send DATA after a stream's first flush
		}
		c.mu.Lock()
		c.sendWindow += int64(f.Increment)
		overflow := c.sendWindow > 1<<31-1
		c.mu.Unlock()
		if overflow {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		c.signal()
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol) // push is disabled
	}
	return nil
}

// badContentLength is hCLen for a content-length that is not one number.
const badContentLength = -2

// onHeaderField collects the response header fields we care about.
func (c *h2Conn) onHeaderField(hf hpack.HeaderField) {
	switch hf.Name {
	case ":status":
		c.hStatus, _ = strconv.Atoi(hf.Value)
	case "content-type":
		c.hCType = hf.Value
	case "content-length":
		// 1*DIGIT (RFC 9110 8.6); anything else, or a second value that
		// differs, makes the response malformed (badContentLength).
		n, err := strconv.ParseUint(hf.Value, 10, 64)
		if errors.Is(err, strconv.ErrRange) {
			n, err = math.MaxInt32, nil // too large, whatever it is
		}
		v := int(min(n, math.MaxInt32))
		switch {
		case err != nil:
			c.hCLen = badContentLength
		case c.hCLen == -1:
			c.hCLen = v
		case c.hCLen != v:
			c.hCLen = badContentLength
		}
	}
}

// endHeaders acts on a complete header block of stream id.
func (c *h2Conn) endHeaders(id uint32, endStream bool) error {
	if err := c.dec.Close(); err != nil {
		return http2.ConnectionError(http2.ErrCodeCompression)
	}
	c.mu.Lock()
	r := c.streams[id]
	if r == nil {
		c.mu.Unlock()
		return nil
	}
	var err error
	code := http2.ErrCodeCancel // reset with this if err ends the stream early
	switch {
	case r.gotHeaders: // trailers
	case c.hStatus >= 100 && c.hStatus < 200 && !endStream: // informational
		c.mu.Unlock()
		return nil
	default:
		err = checkHeaders(c.hStatus, c.hCType, c.hCLen)
		if err == nil && c.hCLen == badContentLength {
			err = fmt.Errorf("%w: content-length is not one number", ErrBadResponse)
			code = http2.ErrCodeProtocol // malformed (RFC 9113 8.1.1)
		}
		if err == nil {
			r.gotHeaders, r.clen = true, c.hCLen
			if c.hCLen > 0 {
				r.resp = make([]byte, 0, c.hCLen)
			}
		}
	}
	if err == nil && !endStream {
		c.mu.Unlock()
		return nil
	}
	if err == nil {
		err = bodyEnd(r)
	}
	c.finishLocked(r, err)
	if err != nil && !endStream {
		c.ctl.rst = append(c.ctl.rst, streamRST{id, code})
		c.signal()
	}
	c.mu.Unlock()
	c.d.complete(r)
	return nil
}

func (c *h2Conn) onData(f *http2.DataFrame) error {
	var wakeWriter bool
	c.mu.Lock()
	// Connection flow control counts every DATA byte, padding included,
	// whether or not its stream is still wanted.
	n := f.Header().Length
	c.connRecvd += n
	if c.connRecvd >= connRecvWindow/2 {
		c.ctl.connWU += c.connRecvd
		c.connRecvd = 0
		wakeWriter = true
	}
	r := c.streams[f.StreamID]
	if r == nil {
		c.mu.Unlock()
		if wakeWriter {
			c.signal()
		}
		return nil
	}
	var err error
	code := http2.ErrCodeCancel // reset with this if err ends the stream early
	data := f.Data()
	if !r.gotHeaders {
		err = fmt.Errorf("%w: DATA before response headers", ErrBadResponse)
		code = http2.ErrCodeProtocol // malformed (RFC 9113 8.1.1)
	} else if err = checkBodySize(len(r.resp) + len(data)); err == nil {
		if r.clen >= 0 && len(r.resp)+len(data) > r.clen {
			err = fmt.Errorf("%w: body exceeds its content-length of %d", ErrBadResponse, r.clen)
			code = http2.ErrCodeProtocol
		} else {
			if r.resp == nil {
				r.resp = make([]byte, 0, max(len(data), 512))
			}
			r.resp = append(r.resp, data...)
		}
	}
	end := f.StreamEnded()
	if err == nil && end {
		err = bodyEnd(r)
	}
	if err == nil && !end {
		r.recvd += n
		if r.recvd >= streamRecvWindow/2 {
			c.ctl.streamWU = append(c.ctl.streamWU, streamWU{r.id, r.recvd})
			r.recvd = 0
			wakeWriter = true
		}
		c.mu.Unlock()
		if wakeWriter {
			c.signal()
		}
		return nil
	}
	c.finishLocked(r, err)
	if err != nil && !end {
		c.ctl.rst = append(c.ctl.rst, streamRST{r.id, code})
		wakeWriter = true
	}
	c.mu.Unlock()
	if wakeWriter {
		c.signal()
	}
	c.d.complete(r)
	return nil
}

// bodyEnd checks a response body at the end of its stream: what DoH
// wants of it (checkBody), and as long as its content-length said (RFC
// 9113 8.1.1: else malformed).
func bodyEnd(r *request) error {
	if err := checkBody(r.resp); err != nil {
		return err
	}
	if r.clen >= 0 && len(r.resp) != r.clen {
		return fmt.Errorf("%w: body of %d bytes, content-length %d", ErrBadResponse, len(r.resp), r.clen)
	}
	return nil
}

// onGoAway marks the connection draining and fails the streams the server
// will not process; their callers retry them on a new connection.
func (c *h2Conn) onGoAway(f *http2.GoAwayFrame) {
	err := fmt.Errorf("%w (last stream %d, %v)", ErrGoAway, f.LastStreamID, f.ErrCode)
	var victims []*request
	c.mu.Lock()
	c.draining = true
	c.closing.Store(true)
	for id, r := range c.streams {
		if id > f.LastStreamID {
			victims = append(victims, r)
		}
	}
	for _, r := range victims {
		c.finishLocked(r, err)
	}
	c.mu.Unlock()
	c.signal() // fail queued requests; close if nothing is left
	for _, r := range victims {
		c.d.complete(r)
	}
	c.d.pool.kick() // waiting requests need another connection
}

// applySettingsLocked applies the server's SETTINGS.
func (c *h2Conn) applySettingsLocked(f *http2.SettingsFrame) error {
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingMaxConcurrentStreams:
			c.maxStreams = int(min(s.Val, maxStreamsPerConn))
		case http2.SettingInitialWindowSize:
			c.peerInitWindow = int64(s.Val)
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = int(s.Val)
		case http2.SettingHeaderTableSize:
			if s.Val < c.d.hdr.tableSize {
				c.tableUpdate = int64(s.Val)
			}
		}
		return nil
	})
	return err
}
