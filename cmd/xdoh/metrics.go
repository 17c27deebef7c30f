package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"xdoh/cmd/xdoh/internal/metrics"
	"xdoh/forwarder"
	"xdoh/forwarder/cache"
)

// collector exports the counters of every part of a running app.
func (a *app) collector() *metrics.Collector {
	c := &metrics.Collector{}
	fs := func(get func(forwarder.Stats) uint64) func() uint64 {
		return func() uint64 { return get(a.fwd.Stats()) }
	}
	for _, m := range []struct {
		name, help string
		get        func(forwarder.Stats) uint64
	}{
		{"xdoh_forwarder_queries_total", "Queries that entered the pipeline, every transport.", func(s forwarder.Stats) uint64 { return s.Queries }},
		{"xdoh_forwarder_dropped_total", "Packets that were not queries (short, QR set): no reply.", func(s forwarder.Stats) uint64 { return s.Dropped }},
		{"xdoh_forwarder_formerr_total", "Malformed queries answered FORMERR.", func(s forwarder.Stats) uint64 { return s.FormErr }},
		{"xdoh_forwarder_local_answers_total", "Answers built from a local zone (cache misses).", func(s forwarder.Stats) uint64 { return s.Local }},
		{"xdoh_forwarder_blocked_total", "Queries answered NXDOMAIN by a block rule.", func(s forwarder.Stats) uint64 { return s.Blocked }},
		{"xdoh_forwarder_forwarded_total", "Queries resolved upstream.", func(s forwarder.Stats) uint64 { return s.Forwarded }},
		{"xdoh_forwarder_servfail_total", "SERVFAIL answers xdoh produced itself.", func(s forwarder.Stats) uint64 { return s.ServFail }},
		{"xdoh_forwarder_overload_total", "Queries refused with SERVFAIL because the in-flight bound was reached.", func(s forwarder.Stats) uint64 { return s.Overload }},
		{"xdoh_forwarder_upstream_errors_total", "Failed or unusable upstream attempts.", func(s forwarder.Stats) uint64 { return s.UpstreamErrors }},
		{"xdoh_forwarder_truncated_total", "Answers truncated to the client's UDP size.", func(s forwarder.Stats) uint64 { return s.Truncated }},
		{"xdoh_forwarder_stale_answers_total", "Stale answers served because every target failed (RFC 8767).", func(s forwarder.Stats) uint64 { return s.Stale }},
		{"xdoh_forwarder_coalesced_total", "Queries that waited on an identical query already in flight.", func(s forwarder.Stats) uint64 { return s.Coalesced }},
		{"xdoh_forwarder_prefetches_total", "Background refreshes of cache entries about to expire.", func(s forwarder.Stats) uint64 { return s.Prefetches }},
	} {
		c.Counter(m.name, m.help, nil, fs(m.get))
	}
	if ch := a.cache; ch != nil {
		cs := func(get func(cache.Stats) uint64) func() uint64 {
			return func() uint64 { return get(ch.Stats()) }
		}
		c.Counter("xdoh_cache_hits_total", "Cache lookups answered from a fresh entry.", nil, cs(func(s cache.Stats) uint64 { return s.Hits }))
		c.Counter("xdoh_cache_misses_total", "Cache lookups that found no fresh entry.", nil, cs(func(s cache.Stats) uint64 { return s.Misses }))
		c.Counter("xdoh_cache_stale_total", "Expired entries served within the stale window.", nil, cs(func(s cache.Stats) uint64 { return s.Stale }))
		c.Counter("xdoh_cache_inserts_total", "Responses stored.", nil, cs(func(s cache.Stats) uint64 { return s.Inserts }))
		c.Counter("xdoh_cache_evictions_total", "Entries evicted to make room.", nil, cs(func(s cache.Stats) uint64 { return s.Evictions }))
		c.Counter("xdoh_cache_prefetches_total", "Hits that triggered a prefetch.", nil, cs(func(s cache.Stats) uint64 { return s.Prefetches }))
		c.Gauge("xdoh_cache_entries", "Entries in the cache.", nil, func() float64 { return float64(ch.Stats().Entries) })
		c.Gauge("xdoh_cache_size_bytes", "Bytes of responses and keys in the cache.", nil, func() float64 { return float64(ch.Stats().Bytes) })
	}
	for _, u := range a.udp {
		l := prometheus.Labels{"listener": u.Name()}
		c.Counter("xdoh_udp_queries_total", "Datagrams received on Do53 UDP.", l, func() uint64 { return u.Stats().Queries })
		c.Counter("xdoh_udp_replies_total", "Replies sent on Do53 UDP.", l, func() uint64 { return u.Stats().Replies })
		c.Counter("xdoh_udp_reply_drops_total", "Replies that could not be sent (socket buffer full).", l, func() uint64 { return u.Stats().ReplyDrops })
		c.Counter("xdoh_udp_oversize_total", "Datagrams over 4096 octets, dropped.", l, func() uint64 { return u.Stats().Truncated })
		c.Counter("xdoh_udp_batches_total", "recvmmsg calls that returned datagrams.", l, func() uint64 { return u.Stats().Batches })
	}
	for _, s := range a.do53 {
		l := prometheus.Labels{"listener": s.Name()}
		c.Counter("xdoh_tcp_queries_total", "Queries received on Do53 TCP (and UDP with udp_engine gnet).", l, func() uint64 { return s.Stats().TCPQueries + s.Stats().UDPQueries })
		c.Gauge("xdoh_tcp_connections", "Open Do53 TCP connections.", l, func() float64 { return float64(s.Stats().TCPConns) })
		c.Counter("xdoh_tcp_rejected_connections_total", "TCP connections closed at once: over max_conns.", l, func() uint64 { return s.Stats().TCPRejected })
		c.Counter("xdoh_tcp_idle_closed_total", "TCP connections closed after idle_timeout.", l, func() uint64 { return s.Stats().TCPIdleClosed })
		c.Counter("xdoh_tcp_pipeline_full_total", "TCP queries answered SERVFAIL: max_pipeline in flight on the connection.", l, func() uint64 { return s.Stats().TCPPipelineFull })
		c.Counter("xdoh_tcp_backlog_closed_total", "TCP connections closed because the client did not read its answers.", l, func() uint64 { return s.Stats().TCPBacklogClosed })
	}
	return c
}
