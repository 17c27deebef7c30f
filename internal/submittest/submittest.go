// Package submittest lets a test's fake upstream, written as a blocking
// function of a context, serve Submit (forwarder/group's Exchanger): one
// goroutine per query, which real upstreams do not spend, but fakes may.
package submittest

import (
	"bytes"
	"context"
	"sync/atomic"
	"time"
)

// Go runs fn on a copy of query on its own goroutine, with a context that
// ends after timeout (none when timeout <= 0) or when the query is
// cancelled, and calls done once with its result unless the query was
// cancelled first. It returns the query's Canceler.
func Go(query []byte, timeout time.Duration, done func([]byte, error), fn func(ctx context.Context, query []byte) ([]byte, error)) interface{ Cancel() } {
	ctx, cancel := context.WithCancel(context.Background())
	if timeout > 0 {
		ctx, cancel = context.WithTimeout(context.Background(), timeout)
	}
	c := &call{cancel: cancel}
	query = bytes.Clone(query)
	go func() {
		defer cancel()
		resp, err := fn(ctx, query)
		if c.settled.CompareAndSwap(false, true) {
			done(resp, err)
		}
	}()
	return c
}

// call is one query: the first of its answer and its Cancel wins.
type call struct {
	cancel  context.CancelFunc
	settled atomic.Bool
}

func (c *call) Cancel() {
	if c.settled.CompareAndSwap(false, true) {
		c.cancel()
	}
}
