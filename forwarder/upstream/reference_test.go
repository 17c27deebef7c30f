package upstream

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/http2"

	"xdoh/forwarder/upstream/upstreamtest"
)

// refDoH is a reference DoH client: RFC 8484 POST on net/http over
// golang.org/x/net/http2.Transport, written as plainly as possible, so
// that the fault tests can hold our client against it. Its Submit spends a
// goroutine per query, which is fine here and nowhere else. It maps what
// it sees to our error sentinels by the same rules (HTTP status, content
// type, size, stream reset, GOAWAY, deadline).
type refDoH struct {
	url     string
	client  *http.Client
	tr      *http2.Transport
	timeout time.Duration
	ctx     context.Context // cancelled by Close
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	closed  atomic.Bool
}

var _ Upstream = (*refDoH)(nil)

func newRefDoH(t testing.TB, url string, opts Options) *refDoH {
	if opts.RootCAs == nil {
		opts.RootCAs = upstreamtest.PKI(t).Pool
	}
	tr := &http2.Transport{TLSClientConfig: &tls.Config{RootCAs: opts.RootCAs, ServerName: opts.ServerName}}
	r := &refDoH{url: url, tr: tr, client: &http.Client{Transport: tr}, timeout: cmp.Or(opts.Timeout, DefaultTimeout)}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	t.Cleanup(func() { r.Close() })
	return r
}

func (r *refDoH) String() string { return r.url }

func (r *refDoH) Close() error {
	r.closed.Store(true)
	r.cancel()
	r.wg.Wait()
	r.tr.CloseIdleConnections()
	return nil
}

type refCall struct {
	settled atomic.Bool
	cancel  context.CancelFunc
}

func (c *refCall) Cancel() { c.settled.Store(true); c.cancel() }

func (r *refDoH) Submit(query []byte, timeout time.Duration, done func([]byte, error)) Canceler {
	if len(query) < headerLen || len(query) > maxResponseSize {
		done(nil, fmt.Errorf("upstream %s: %w", r.url, ErrBadQuery))
		return nil
	}
	if r.closed.Load() {
		done(nil, fmt.Errorf("upstream %s: %w", r.url, ErrClosed))
		return nil
	}
	if timeout <= 0 || timeout > r.timeout {
		timeout = r.timeout
	}
	ctx, cancel := context.WithTimeout(r.ctx, timeout)
	c := &refCall{cancel: cancel}
	q := bytes.Clone(query)
	r.wg.Go(func() {
		defer cancel()
		resp, err := r.exchange(ctx, q)
		if c.settled.CompareAndSwap(false, true) {
			if err != nil {
				resp, err = nil, fmt.Errorf("upstream %s: %w", r.url, err)
			}
			done(resp, err)
		}
	})
	return c
}

func (r *refDoH) exchange(ctx context.Context, q []byte) ([]byte, error) {
	id := [2]byte{q[0], q[1]}
	q[0], q[1] = 0, 0 // RFC 8484 4.1
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.url, bytes.NewReader(q))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", upstreamtest.DNSMessage)
	req.Header.Set("Accept", upstreamtest.DNSMessage)
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, r.classify(ctx, err)
	}
	defer resp.Body.Close()
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); resp.StatusCode != http.StatusOK || mt != upstreamtest.DNSMessage {
		return nil, fmt.Errorf("%w: HTTP status %d, content-type %q", ErrBadResponse, resp.StatusCode, mt)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseSize+1))
	switch {
	case err != nil:
		return nil, r.classify(ctx, err)
	case len(body) > maxResponseSize:
		return nil, fmt.Errorf("%w: body exceeds %d bytes", ErrBadResponse, maxResponseSize)
	}
	qm, m := new(dns.Msg), new(dns.Msg)
	if qm.Unpack(q) != nil || m.Unpack(body) != nil || !m.Response || len(m.Question) != 1 ||
		!strings.EqualFold(m.Question[0].Name, qm.Question[0].Name) || m.Question[0].Qtype != qm.Question[0].Qtype {
		return nil, fmt.Errorf("%w: not an answer to the query", ErrBadResponse)
	}
	body[0], body[1] = id[0], id[1]
	return body, nil
}

// classify maps a transport error to our sentinels.
func (r *refDoH) classify(ctx context.Context, err error) error {
	var se http2.StreamError
	var ga http2.GoAwayError
	var ne net.Error
	switch {
	case r.closed.Load():
		return fmt.Errorf("%w: %w", ErrClosed, err)
	case errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("%w: %w", ErrTimeout, err)
	case errors.As(err, &se) && se.Code == http2.ErrCodeRefusedStream:
		return fmt.Errorf("%w: %w", ErrRefused, err)
	case errors.As(err, &se):
		return fmt.Errorf("%w: %w", ErrStreamReset, err)
	case errors.As(err, &ga):
		return fmt.Errorf("%w: %w", ErrGoAway, err)
	case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.ErrUnexpectedEOF) ||
		strings.Contains(err.Error(), "client connection force closed") ||
		strings.Contains(err.Error(), "client connection lost"):
		return fmt.Errorf("%w: %w", ErrConnClosed, err)
	}
	return err
}
