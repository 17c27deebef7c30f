package upstream

import (
	"testing"

	"xdoh/forwarder/upstream/upstreamtest"
)

// TestContract runs upstreamtest's contract suite against DoH, Do53 over
// UDP and over TCP, DoT and DoQ. (It lives in package upstream, as the other tests
// do: upstreamtest does not import upstream, so there is no cycle.)
func TestContract(t *testing.T) {
	errs := upstreamtest.Errors{Timeout: ErrTimeout, Closed: ErrClosed, BadQuery: ErrBadQuery, Retryable: Retryable}
	for _, tr := range []upstreamtest.Transport{upstreamtest.DoH, upstreamtest.UDP, upstreamtest.TCP, upstreamtest.DoT, upstreamtest.DoQ} {
		t.Run(tr.String(), func(t *testing.T) {
			upstreamtest.RunContract(t, tr, errs, func(t *testing.T, tg upstreamtest.Target) upstreamtest.Upstream {
				u, err := New(tg.URL, Options{RootCAs: tg.RootCAs, Timeout: tg.Timeout, Conns: tg.Conns})
				if err != nil {
					t.Fatal(err)
				}
				return u
			})
		})
	}
}
