package group

import (
	"fmt"
	"slices"
)

// Policy orders the healthy targets of a group for each query.
type Policy uint8

const (
	// Ordered: failover in configured order.
	Ordered Policy = iota
	// RoundRobin: configured order, rotated by one each query.
	RoundRobin
	// Fastest: lowest EWMA round-trip time first, never-measured first.
	Fastest
)

// ParsePolicy parses "ordered", "round_robin" or "fastest".
func ParsePolicy(s string) (Policy, error) {
	switch s {
	case "ordered":
		return Ordered, nil
	case "round_robin":
		return RoundRobin, nil
	case "fastest":
		return Fastest, nil
	}
	return 0, fmt.Errorf("parsing policy: unknown policy %q (want ordered, round_robin or fastest)", s)
}

func (p Policy) String() string {
	switch p {
	case Ordered:
		return "ordered"
	case RoundRobin:
		return "round_robin"
	case Fastest:
		return "fastest"
	}
	return fmt.Sprintf("policy(%d)", uint8(p))
}

// order appends to dst the indices of the targets in the order a query
// tries them: the healthy ones per the policy, then the down ones in
// configured order; drained ones not at all. nUp is the number of healthy
// ones. Each target's health is read once, so every target appears at
// most once.
func (g *Group) order(dst []int) (order []int, nUp int) {
	var downBuf [maxStackTargets]int
	down := downBuf[:0]
	for i, t := range g.targets {
		switch {
		case t.drained.Load(): // no new queries at all
		case t.healthy.Load():
			dst = append(dst, i)
		default:
			down = append(down, i)
		}
	}
	nUp = len(dst)
	up := dst[:nUp]
	switch g.cfg.Policy {
	case RoundRobin:
		if nUp > 1 {
			rotate(up, int((g.seq.Add(1)-1)%uint64(nUp)))
		}
	case Fastest:
		// Insertion sort: a handful of targets. EWMAs may move while we
		// sort; that only makes the order slightly stale.
		for a := 1; a < nUp; a++ {
			for b := a; b > 0 && g.targets[up[b]].ewma.Load() < g.targets[up[b-1]].ewma.Load(); b-- {
				up[b], up[b-1] = up[b-1], up[b]
			}
		}
		if nUp > 1 {
			if seq := g.seq.Add(1); seq%exploreEvery == 0 {
				j := 1 + int(seq/exploreEvery)%(nUp-1)
				up[0], up[j] = up[j], up[0]
			}
		}
	}
	return append(dst, down...), nUp
}

// rotate moves s[k:] to the front of s.
func rotate(s []int, k int) {
	slices.Reverse(s[:k])
	slices.Reverse(s[k:])
	slices.Reverse(s)
}
