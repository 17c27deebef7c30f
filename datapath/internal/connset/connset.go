// Package connset is the set of live connections every stream listener
// keeps (Do53 TCP, DoT, DoH, DoQ): it admits a connection against a total
// limit and a limit per client address, forgets it when it ends, and on
// shutdown asks every connection to drain, waits, and closes what is left
// when the deadline comes. One copy of what each server used to do with its
// own map, mutex and loops.
//
// The set knows nothing of the connections beyond their identity and their
// client's address: how to drain one and how to close one are the
// caller's, passed to Shutdown.
package connset

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
)

// Why Add refused a connection.
var (
	// ErrTotal: the set holds its total limit of connections.
	ErrTotal = errors.New("connection limit reached")
	// ErrPerClient: the client's address holds its limit of connections.
	ErrPerClient = errors.New("per-client connection limit reached")
	// ErrClosed: the set is shutting down.
	ErrClosed = errors.New("shutting down")
)

// Set is a set of live connections of type C (a pointer, as a rule). The
// zero Set is not usable; make one with New.
type Set[C comparable] struct {
	total, perClient int

	mu      sync.Mutex
	conns   map[C]netip.Addr
	clients map[netip.Addr]int
	closed  bool
	empty   chan struct{} // Shutdown's: closed when the set is closed and empty
}

// New returns a set that admits at most total connections, and at most
// perClient from one client address; 0 (or less) means no limit.
func New[C comparable](total, perClient int) *Set[C] {
	return &Set[C]{total: total, perClient: perClient, conns: map[C]netip.Addr{}, clients: map[netip.Addr]int{}}
}

// Add admits c from client, or says why not (ErrTotal, ErrPerClient,
// ErrClosed). IPv4-mapped IPv6 addresses count as their IPv4 address. An
// invalid client address is counted against the total limit only.
func (s *Set[C]) Add(c C, client netip.Addr) error {
	client = client.Unmap()
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return ErrClosed
	case s.total > 0 && len(s.conns) >= s.total:
		return ErrTotal
	case s.perClient > 0 && client.IsValid() && s.clients[client] >= s.perClient:
		return ErrPerClient
	}
	if _, dup := s.conns[c]; dup {
		return nil
	}
	s.conns[c] = client
	if client.IsValid() {
		s.clients[client]++
	}
	return nil
}

// Admit is Add for a stream listener's accepted connection nc: when c is
// refused, nc is closed, and reset (SO_LINGER 0) if a limit refused it,
// so the client learns at once and no TIME_WAIT is kept for it. It
// returns Add's error.
func (s *Set[C]) Admit(c C, client netip.Addr, nc net.Conn) error {
	err := s.Add(c, client)
	if err != nil {
		if tc, ok := nc.(*net.TCPConn); ok && !errors.Is(err, ErrClosed) {
			tc.SetLinger(0)
		}
		nc.Close()
	}
	return err
}

// Forget removes c and reports whether it was in the set; forgetting a
// connection that is not in the set (any more) does nothing.
func (s *Set[C]) Forget(c C) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	client, ok := s.conns[c]
	if !ok {
		return false
	}
	delete(s.conns, c)
	if client.IsValid() {
		if n := s.clients[client] - 1; n > 0 {
			s.clients[client] = n
		} else {
			delete(s.clients, client)
		}
	}
	if s.empty != nil && len(s.conns) == 0 {
		close(s.empty)
		s.empty = nil
	}
	return true
}

// Len is the number of connections in the set.
func (s *Set[C]) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Clients is the number of client addresses with a connection in the set.
func (s *Set[C]) Clients() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.clients)
}

// Range calls f for every connection, under the set's lock (f must not
// call the set's methods), until f returns false.
func (s *Set[C]) Range(f func(C) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if !f(c) {
			return
		}
	}
}

// Snapshot lists the connections.
func (s *Set[C]) Snapshot() []C {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]C, 0, len(s.conns))
	for c := range s.conns {
		out = append(out, c)
	}
	return out
}

// Shutdown closes the set to new connections and calls drain on each one
// in it: drain must make the connection finish what it has in flight and
// end, and must not block. It waits until every connection is forgotten or
// ctx ends; then it calls kill on each one still there (kill must end the
// connection at once, without blocking) and waits for them to be
// forgotten. It returns ctx's error if kill was needed. The callbacks run
// without the set's lock held: they may call Forget. Calling Shutdown
// twice is allowed; the second call just waits.
func (s *Set[C]) Shutdown(ctx context.Context, drain, kill func(C)) error {
	s.mu.Lock()
	first := !s.closed
	s.closed = true
	s.mu.Unlock()
	if first {
		for _, c := range s.Snapshot() {
			drain(c)
		}
	}
	if s.wait(ctx.Done()) {
		return nil
	}
	for _, c := range s.Snapshot() {
		kill(c)
	}
	s.wait(nil)
	return ctx.Err()
}

// wait waits until the set is empty (true) or stop is closed (false).
func (s *Set[C]) wait(stop <-chan struct{}) bool {
	s.mu.Lock()
	if len(s.conns) == 0 {
		s.mu.Unlock()
		return true
	}
	if s.empty == nil {
		s.empty = make(chan struct{})
	}
	empty := s.empty
	s.mu.Unlock()
	select {
	case <-empty:
		return true
	case <-stop:
		return false
	}
}
