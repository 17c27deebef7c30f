package main

// The upstream clients, shared between pipelines: a reload keeps the
// running client (and its connections) of every target whose settings did
// not change, and dials only new or changed ones.

import (
	"crypto/sha256"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"xdoh/forwarder/upstream"
)

// upKey is what makes an upstream client: the target and every
// upstream.Options field buildPipeline sets. caSum is the CA file's
// SHA-256, so that a CA file changed under the same path is read again.
// n tells apart the uses of the same settings within one pipeline (two
// rules with the same target): each has its own client, as at start.
type upKey struct {
	target     string
	caFile     string
	caSum      [sha256.Size]byte
	serverName string
	bootstrap  string // the addresses, comma-separated: a key must be comparable
	method     string
	timeout    time.Duration
	conns      int
	maxWait    int
	n          int
}

func (k upKey) options() upstream.Options {
	var bootstrap []netip.Addr
	if k.bootstrap != "" {
		for _, a := range strings.Split(k.bootstrap, ",") {
			bootstrap = append(bootstrap, netip.MustParseAddr(a)) // from newUpKey
		}
	}
	return upstream.Options{
		CAFile:     k.caFile,
		ServerName: k.serverName,
		Bootstrap:  bootstrap,
		Method:     k.method,
		Timeout:    k.timeout,
		Conns:      k.conns,
		MaxWait:    k.maxWait,
		Prewarm:    true, // connections ready before the first query
	}
}

// newUpKey is the key of a target with opts (as buildPipeline fills
// them), reading the CA file if there is one.
func newUpKey(target string, opts upstream.Options) (upKey, error) {
	k := upKey{target: target, caFile: opts.CAFile, serverName: opts.ServerName, method: opts.Method, timeout: opts.Timeout, conns: opts.Conns, maxWait: opts.MaxWait}
	if k.caFile != "" {
		b, err := os.ReadFile(k.caFile)
		if err != nil {
			return k, fmt.Errorf("reading the CA file: %w", err)
		}
		k.caSum = sha256.Sum256(b)
	}
	var bs []string
	for _, a := range opts.Bootstrap {
		bs = append(bs, a.String())
	}
	k.bootstrap = strings.Join(bs, ",")
	return k, nil
}

// upstreams holds the upstream clients with the number of pipelines
// that use each. Reloads are serialised, but a pipeline may be closed
// from a retire timer: a mutex guards the map.
type upstreams struct {
	mu sync.Mutex
	m  map[upKey]*sharedUp
}

type sharedUp struct {
	up   upstream.Upstream
	refs int
}

// acquire returns the client for k, making it if there is none; dialled
// says it was made now.
func (r *upstreams) acquire(target string, k upKey) (up upstream.Upstream, dialled bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s := r.m[k]; s != nil {
		s.refs++
		return s.up, false, nil
	}
	if up, err = upstream.New(target, k.options()); err != nil {
		return nil, false, err
	}
	if r.m == nil {
		r.m = map[upKey]*sharedUp{}
	}
	r.m[k] = &sharedUp{up: up, refs: 1}
	return up, true, nil
}

// release gives back one use of k's client and closes it after the last.
func (r *upstreams) release(k upKey) {
	r.mu.Lock()
	s := r.m[k]
	if s == nil {
		r.mu.Unlock()
		return
	}
	s.refs--
	if s.refs > 0 {
		r.mu.Unlock()
		return
	}
	delete(r.m, k)
	r.mu.Unlock()
	_ = s.up.Close() // outside the lock: a close may wait for its connections
}

// connections returns the connections open to each target whose client
// reports them (DoH), summed over its clients.
func (r *upstreams) connections() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int{}
	for k, s := range r.m {
		if c, ok := s.up.(interface{ Connections() int }); ok {
			out[k.target] += c.Connections()
		}
	}
	return out
}

// len is the number of clients open.
func (r *upstreams) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.m)
}
