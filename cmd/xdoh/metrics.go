package main

import (
	"runtime"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"xdoh/bpf"
	"xdoh/cmd/xdoh/internal/metrics"
	"xdoh/datapath/doh"
	"xdoh/datapath/doq"
	"xdoh/datapath/dot"
	"xdoh/datapath/tcp"
	"xdoh/datapath/udp"
	"xdoh/datapath/xsk"
	"xdoh/forwarder"
	"xdoh/forwarder/cache"
	"xdoh/forwarder/upstream"
)

// collector exports the counters of every part of the app. Everything is
// read at scrape time through the current pipeline and listeners, so a
// reload changes nothing here.
func (a *app) collector() *metrics.Collector {
	c := &metrics.Collector{}
	fs := func(get func(forwarder.Stats) uint64) func() uint64 {
		return func() uint64 { return get(a.pipe.Load().fwd.Stats()) }
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
		{"xdoh_cookie_client_only_total", "Queries with a client cookie and no server cookie (RFC 7873).", func(s forwarder.Stats) uint64 { return s.CookieClientOnly }},
		{"xdoh_cookie_invalid_total", "Queries with a server cookie that was not ours or had expired.", func(s forwarder.Stats) uint64 { return s.CookieBad }},
		{"xdoh_cookie_valid_total", "Queries with a valid server cookie of ours.", func(s forwarder.Stats) uint64 { return s.CookieValid }},
		{"xdoh_badcookie_answers_total", "Queries answered BADCOOKIE (cookies.require).", func(s forwarder.Stats) uint64 { return s.BadCookie }},
		{"xdoh_rrl_cookie_exempt_total", "UDP answers not rate-limited because the query had a valid server cookie.", func(s forwarder.Stats) uint64 { return s.RRL.CookieExempt }},
		{"xdoh_rrl_evictions_total", "Client prefixes still being rate-limited that were forgotten to make room in the full RRL table.", func(s forwarder.Stats) uint64 { return s.RRL.Evictions }},
		{"xdoh_acl_refused_total", "Queries from sources outside a listener's allow list, answered REFUSED.", func(s forwarder.Stats) uint64 { return s.ACLRefused }},
		{"xdoh_acl_dropped_total", "Queries from sources outside a listener's allow list, dropped.", func(s forwarder.Stats) uint64 { return s.ACLDropped }},
	} {
		c.Counter(m.name, m.help, nil, fs(m.get))
	}
	c.Gauge("xdoh_forwarder_upstream_inflight", "Upstream resolutions under way in every pipeline still open; past upstream.max_inflight, queries get SERVFAIL (xdoh_forwarder_overload_total).", nil,
		func() float64 { return float64(a.inflight()) })
	c.Gauge("xdoh_forwarder_upstream_inflight_limit", "upstream.max_inflight of the running pipeline: the bound on xdoh_forwarder_upstream_inflight, and on each target's wait queue.", nil,
		func() float64 { return float64(a.pipe.Load().fwd.MaxInflight()) })
	rrlByCategory := func(name, help string, get func(forwarder.RRLStats) [3]uint64) {
		c.Dynamic(name, help, []string{"category"}, func(d *prometheus.Desc, ch chan<- prometheus.Metric) {
			v := get(a.pipe.Load().fwd.Stats().RRL)
			for i, cat := range forwarder.RRLCategories {
				ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v[i]), cat)
			}
		})
	}
	rrlByCategory("xdoh_rrl_dropped_total", "UDP answers over their client prefix's rate, dropped, by category (responses, nxdomains, errors).",
		func(s forwarder.RRLStats) [3]uint64 { return s.Dropped })
	rrlByCategory("xdoh_rrl_slipped_total", "UDP answers over their client prefix's rate, sent empty with TC set (slip), by category.",
		func(s forwarder.RRLStats) [3]uint64 { return s.Slipped })
	c.Dynamic("xdoh_responses_total", "Queries answered, by listener, client transport and RCODE (none: no answer sent).",
		[]string{"listener", "transport", "rcode"}, func(d *prometheus.Desc, ch chan<- prometheus.Metric) {
			for _, ac := range a.counters.Answers() {
				ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(ac.Count), ac.Listener, ac.Transport, ac.Rcode)
			}
		})
	c.Dynamic("xdoh_query_duration_seconds", "Time from a query entering the pipeline to its answer, by client transport.",
		[]string{"transport"}, func(d *prometheus.Desc, ch chan<- prometheus.Metric) {
			for _, l := range a.counters.Latencies() {
				ch <- constHistogram(d, l, l.Transport)
			}
		})
	c.Dynamic("xdoh_upstream_requests_total", "Exchanges attempted with each upstream target.", []string{"target"},
		func(d *prometheus.Desc, ch chan<- prometheus.Metric) {
			for _, u := range a.counters.Upstreams() {
				ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(u.Attempts), u.Target)
			}
		})
	c.Dynamic("xdoh_upstream_errors_total", "Failed exchanges by upstream target and reason: timeout, busy (no room to queue the query), connection_closed, refused_stream, stream_reset, bad_response, bad_query, closed, other.", []string{"target", "reason"},
		func(d *prometheus.Desc, ch chan<- prometheus.Metric) {
			for _, u := range a.counters.Upstreams() {
				for i, n := range u.Failures {
					ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(n), u.Target, upstream.Reasons[i])
				}
			}
		})
	c.Dynamic("xdoh_upstream_up", "1 while the target is healthy (passive failures and active probes, with hysteresis), by rule group.", []string{"target"},
		func(d *prometheus.Desc, ch chan<- prometheus.Metric) {
			seen := map[string]bool{}
			for _, st := range a.pipe.Load().fwd.Health() {
				if seen[st.Target] { // a target in several groups: report it once
					continue
				}
				seen[st.Target] = true
				v := 0.0
				if st.Up {
					v = 1
				}
				ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, st.Target)
			}
		})
	c.Dynamic("xdoh_upstream_hedges_total", "Hedged queries sent to each target.", []string{"target"},
		func(d *prometheus.Desc, ch chan<- prometheus.Metric) {
			sum := map[string]uint64{}
			for _, st := range a.pipe.Load().fwd.Health() {
				sum[st.Target] += st.Hedges
			}
			for t, n := range sum {
				ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(n), t)
			}
		})
	c.Dynamic("xdoh_upstream_connections", "Connections open to each DoH target (upstream.conns per rule that uses it, fewer while one redials).", []string{"target"},
		func(d *prometheus.Desc, ch chan<- prometheus.Metric) {
			for t, n := range a.ups.connections() {
				ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(n), t)
			}
		})
	c.Dynamic("xdoh_upstream_duration_seconds", "Time of each exchange with an upstream target.", []string{"target"},
		func(d *prometheus.Desc, ch chan<- prometheus.Metric) {
			for _, u := range a.counters.Upstreams() {
				ch <- constHistogram(d, u.Latency, u.Target)
			}
		})
	cs := func(get func(cache.Stats) float64) func() float64 {
		return func() float64 {
			if ch := a.pipe.Load().cache; ch != nil {
				return get(ch.Stats())
			}
			return 0
		}
	}
	cc := func(get func(cache.Stats) uint64) func() uint64 {
		return func() uint64 { return uint64(cs(func(s cache.Stats) float64 { return float64(get(s)) })()) }
	}
	c.Counter("xdoh_cache_hits_total", "Cache lookups answered from a fresh entry.", nil, cc(func(s cache.Stats) uint64 { return s.Hits }))
	c.Counter("xdoh_cache_misses_total", "Cache lookups that found no fresh entry.", nil, cc(func(s cache.Stats) uint64 { return s.Misses }))
	c.Counter("xdoh_cache_stale_total", "Expired entries served within the stale window.", nil, cc(func(s cache.Stats) uint64 { return s.Stale }))
	c.Counter("xdoh_cache_inserts_total", "Responses stored.", nil, cc(func(s cache.Stats) uint64 { return s.Inserts }))
	c.Counter("xdoh_cache_evictions_total", "Entries evicted to make room.", nil, cc(func(s cache.Stats) uint64 { return s.Evictions }))
	c.Counter("xdoh_cache_invalidations_total", "Entries a reload removed because the rule or zone that answers their name changed.", nil, cc(func(s cache.Stats) uint64 { return s.Invalidations }))
	c.Counter("xdoh_cache_flushed_total", "Entries removed by the operator (xdoh ctl cache flush).", nil, cc(func(s cache.Stats) uint64 { return s.Flushed }))
	c.Counter("xdoh_cache_prefetches_total", "Hits that triggered a prefetch.", nil, cc(func(s cache.Stats) uint64 { return s.Prefetches }))
	c.Gauge("xdoh_gomaxprocs", "CPUs running Go code at once (GOMAXPROCS); with procs: 0 on 2 CPUs, 2 while TCP clients are connected, else 1.", nil,
		func() float64 { return float64(runtime.GOMAXPROCS(0)) })
	c.Counter("xdoh_gomaxprocs_changes_total", "Changes of GOMAXPROCS by the automatic procs setting.", nil, func() uint64 {
		if a.procs == nil {
			return 0
		}
		return a.procs.Changes()
	})
	c.Gauge("xdoh_cache_entries", "Entries in the cache (of the running pipeline).", nil, cs(func(s cache.Stats) float64 { return float64(s.Entries) }))
	c.Gauge("xdoh_cache_size_bytes", "Bytes of responses and keys in the cache.", nil, cs(func(s cache.Stats) float64 { return float64(s.Bytes) }))

	c.Dynamic("xdoh_listener_datapath_events_total", "Datapath events by listener: udp_queries, udp_replies, udp_reply_drops, udp_oversize, udp_batches, tcp_queries, tcp_rejected, tcp_rejected_per_client, tcp_idle_closed, tcp_pipeline_full, tcp_backlog_closed, doh_ok, doh_bad_request, doh_unsupported_media, doh_too_large, doh_header_too_large, doh_bad_method, doh_not_found, doh_server_error, doh_handshake_errors, doh_http1_refused, doh_connections, doh_refused, doh_refused_per_client, doh_protocol_errors, doh_stream_errors, doh_refused_streams, doh_reset_floods, doh_header_floods, doh_slow_clients, doh_timeouts, doh_idle_closed, dot_connections, dot_refused, dot_refused_per_client, dot_handshake_errors, dot_handshake_timeouts, dot_queries, dot_answers, dot_protocol_errors, dot_timeouts, dot_idle_closed, dot_pipeline_full, dot_slow_clients, doq_connections, doq_refused, doq_refused_per_client, doq_handshake_errors, doq_handshake_timeouts, doq_queries, doq_answers, doq_protocol_errors, doq_stream_timeouts, doq_idle_closed, doq_write_errors, xsk_queries, xsk_replies, xsk_misses, xsk_malformed, xsk_reply_drops, xsk_truncated.",
		[]string{"listener", "event"}, func(d *prometheus.Desc, ch chan<- prometheus.Metric) {
			a.mu.Lock()
			defer a.mu.Unlock()
			for name, l := range a.listeners {
				emit := func(event string, v uint64) {
					ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), name, event)
				}
				if l.udp != nil {
					emitUDP(emit, l.udp.Stats())
				}
				if l.tcp != nil {
					emitTCP(emit, l.tcp.Stats())
				}
				if l.doh != nil {
					emitDoH(emit, l.doh.Stats())
				}
				if s, ok := l.dot.(*dot.Server); ok {
					emitDoT(emit, s.Stats())
				}
				if s, ok := l.doq.(*doq.Server); ok {
					emitDoQ(emit, s.Stats())
				}
				if l.xsk != nil {
					emitXSK(emit, l.xsk.Stats())
				}
			}
		})
	c.Dynamic("xdoh_xdp_mode", "How each listener's Do53 UDP is served: 1 for the mode in use (native, generic: XDP and AF_XDP; off: kernel sockets only).",
		[]string{"listener", "mode"}, func(d *prometheus.Desc, ch chan<- prometheus.Metric) {
			a.mu.Lock()
			defer a.mu.Unlock()
			for name, l := range a.listeners {
				if l.udp == nil && l.xsk == nil {
					continue
				}
				mode := l.xdpMode
				if mode == "" {
					mode = "off"
				}
				ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, 1, name, mode)
			}
		})
	c.Dynamic("xdoh_xdp_packets_total", "Packets the XDP program saw, by verdict: redirect (to an AF_XDP socket), tx (answered by the program), drop_acl, drop_torn, or pass_<reason> (to the kernel).",
		[]string{"listener", "interface", "verdict"}, func(d *prometheus.Desc, ch chan<- prometheus.Metric) {
			for _, x := range a.xdpInterfaces() {
				for r, n := range x.iface.Verdicts {
					ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(n), x.listener, x.iface.Name, bpf.Reason(r).String())
				}
			}
		})
	c.Dynamic("xdoh_xdp_kernel_answers_total", "Queries the in-kernel answer tier saw, by event: hit (answered by the XDP program, XDP_TX), miss_absent, miss_expired, miss_too_large (for the client's UDP size), miss_not_exact (a query it does not answer), miss_no_room (the frame could not grow), torn (its entry was rewritten during the copy: dropped).",
		[]string{"listener", "interface", "event"}, func(d *prometheus.Desc, ch chan<- prometheus.Metric) {
			for _, x := range a.xdpInterfaces() {
				if !x.iface.KernelCache {
					continue
				}
				for e, n := range x.iface.Answers {
					ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(n), x.listener, x.iface.Name, bpf.AnswerEvent(e).String())
				}
			}
		})
	kernelTier := func(name, help string, vt prometheus.ValueType, get func(xsk.TierStats) float64) {
		c.Dynamic(name, help, []string{"listener"}, func(d *prometheus.Desc, ch chan<- prometheus.Metric) {
			a.mu.Lock()
			defer a.mu.Unlock()
			for lname, l := range a.listeners {
				if l.xsk == nil {
					continue
				}
				if st, ok := l.xsk.TierStats(); ok {
					ch <- prometheus.MustNewConstMetric(d, vt, get(st), lname)
				}
			}
		})
	}
	kernelTier("xdoh_xdp_kernel_cache_promotions_total", "Hot cached answers put into the XDP program's answers map.", prometheus.CounterValue,
		func(s xsk.TierStats) float64 { return float64(s.Promotions) })
	kernelTier("xdoh_xdp_kernel_cache_evictions_total", "Answers taken out of the XDP program's answers map: no longer hot, expired, replaced in the cache, or flushed by a reload.", prometheus.CounterValue,
		func(s xsk.TierStats) float64 { return float64(s.Evictions) })
	kernelTier("xdoh_xdp_kernel_cache_write_errors_total", "Failed batch operations on the XDP program's answers map.", prometheus.CounterValue,
		func(s xsk.TierStats) float64 { return float64(s.WriteErrors) })
	kernelTier("xdoh_xdp_kernel_cache_entries", "Answers in the XDP program's answers map.", prometheus.GaugeValue,
		func(s xsk.TierStats) float64 { return float64(s.Entries) })
	c.Dynamic("xdoh_xsk_ring_events_total", "AF_XDP socket events by queue: the kernel's XDP_STATISTICS (rx_dropped, rx_invalid_descs, rx_ring_full, rx_fill_ring_empty_descs, tx_invalid_descs, tx_ring_empty_descs) and wake-ups (tx_kicks, tx_kick_errors, rx_wakeups).",
		[]string{"listener", "interface", "queue", "event"}, func(d *prometheus.Desc, ch chan<- prometheus.Metric) {
			for _, x := range a.xdpInterfaces() {
				for _, so := range x.iface.Sockets {
					q := strconv.Itoa(so.Queue)
					for _, e := range so.Kernel.Each() {
						ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(e.Count), x.listener, x.iface.Name, q, e.Name)
					}
				}
			}
		})
	c.Dynamic("xdoh_xsk_loop_cpu", "The CPU each AF_XDP queue's loop is bound to, following the CPU that fills its ring (xdp.affinity auto); -1: not bound.",
		[]string{"listener", "interface", "queue"}, func(d *prometheus.Desc, ch chan<- prometheus.Metric) {
			for _, x := range a.xdpInterfaces() {
				for _, so := range x.iface.Sockets {
					ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(so.CPU), x.listener, x.iface.Name, strconv.Itoa(so.Queue))
				}
			}
		})
	c.Dynamic("xdoh_tcp_connections", "Open Do53 TCP connections by listener.", []string{"listener"},
		func(d *prometheus.Desc, ch chan<- prometheus.Metric) {
			a.mu.Lock()
			defer a.mu.Unlock()
			for name, l := range a.listeners {
				if l.tcp != nil {
					ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(l.tcp.Stats().TCPConns), name)
				}
			}
		})
	c.Dynamic("xdoh_encrypted_connections", "Open DoH, DoT and DoQ connections (DoQ: handshakes included) by listener and transport.", []string{"listener", "transport"},
		func(d *prometheus.Desc, ch chan<- prometheus.Metric) {
			a.mu.Lock()
			defer a.mu.Unlock()
			for name, l := range a.listeners {
				if l.doh != nil {
					ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(l.doh.Stats().Open), name, "doh")
				}
				if s, ok := l.dot.(*dot.Server); ok {
					ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(s.Stats().Open), name, "dot")
				}
				if s, ok := l.doq.(*doq.Server); ok {
					ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(s.Stats().Open), name, "doq")
				}
			}
		})
	c.Dynamic("xdoh_querylog_entries_total", "Query-log entries by outcome: logged, dropped (buffer full), sampled_out, write_errors, dnstap_dropped.",
		[]string{"outcome"}, func(d *prometheus.Desc, ch chan<- prometheus.Metric) {
			a.mu.Lock()
			l := a.qlog
			a.mu.Unlock()
			if l == nil {
				return
			}
			s := l.Stats()
			for _, o := range []struct {
				name string
				v    uint64
			}{{"logged", s.Logged}, {"dropped", s.Dropped}, {"sampled_out", s.SampledOut}, {"write_errors", s.WriteErrors}, {"dnstap_dropped", s.DnstapDropped}} {
				ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(o.v), o.name)
			}
		})
	return c
}

// constHistogram turns a cumulative latency histogram into a Prometheus one.
func constHistogram(d *prometheus.Desc, l forwarder.Latency, labels ...string) prometheus.Metric {
	buckets := make(map[float64]uint64, len(forwarder.LatencyBuckets))
	for i, b := range forwarder.LatencyBuckets {
		buckets[b.Seconds()] = l.Buckets[i]
	}
	return prometheus.MustNewConstHistogram(d, l.Buckets[len(l.Buckets)-1], l.Sum.Seconds(), buckets, labels...)
}

func emitUDP(emit func(string, uint64), s udp.Stats) {
	emit("udp_queries", s.Queries)
	emit("udp_replies", s.Replies)
	emit("udp_reply_drops", s.ReplyDrops)
	emit("udp_oversize", s.Truncated)
	emit("udp_batches", s.Batches)
}

func emitXSK(emit func(string, uint64), s xsk.Stats) {
	emit("xsk_queries", s.Queries)
	emit("xsk_replies", s.Replies)
	emit("xsk_misses", s.Misses)
	emit("xsk_malformed", s.Malformed)
	emit("xsk_reply_drops", s.NoFrame)
	emit("xsk_truncated", s.Truncated)
}

// xdpInterfaces reads every listener's attached interfaces (verdict
// counters and socket statistics), for one scrape.
func (a *app) xdpInterfaces() []listenerIface {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []listenerIface
	for name, l := range a.listeners {
		if l.xsk == nil {
			continue
		}
		for _, x := range l.xsk.Interfaces() {
			out = append(out, listenerIface{listener: name, iface: x})
		}
	}
	return out
}

type listenerIface struct {
	listener string
	iface    xsk.Iface
}

func emitTCP(emit func(string, uint64), s tcp.Stats) {
	emit("tcp_queries", s.TCPQueries)
	emit("tcp_rejected", s.TCPRejected)
	emit("tcp_rejected_per_client", s.TCPRejectedPerClient)
	emit("tcp_idle_closed", s.TCPIdleClosed)
	emit("tcp_pipeline_full", s.TCPPipelineFull)
	emit("tcp_backlog_closed", s.TCPBacklogClosed)
}

func emitDoH(emit func(string, uint64), s doh.Stats) {
	emit("doh_ok", s.OK)
	emit("doh_bad_request", s.BadRequest)
	emit("doh_unsupported_media", s.UnsupportedMediaType)
	emit("doh_too_large", s.TooLarge)
	emit("doh_header_too_large", s.HeaderTooLarge)
	emit("doh_bad_method", s.MethodNotAllowed)
	emit("doh_not_found", s.NotFound)
	emit("doh_server_error", s.ServerError)
	emit("doh_handshake_errors", s.HandshakeErrors)
	emit("doh_http1_refused", s.HTTP1)
	emit("doh_connections", s.Conns)
	emit("doh_refused", s.Refused)
	emit("doh_refused_per_client", s.RefusedPerClient)
	emit("doh_protocol_errors", s.ProtocolErrors)
	emit("doh_stream_errors", s.StreamErrors)
	emit("doh_refused_streams", s.RefusedStreams)
	emit("doh_reset_floods", s.ResetFloods)
	emit("doh_header_floods", s.HeaderFloods)
	emit("doh_slow_clients", s.SlowClients)
	emit("doh_timeouts", s.Timeouts)
	emit("doh_idle_closed", s.IdleClosed)
}

func emitDoT(emit func(string, uint64), s dot.Stats) {
	emit("dot_connections", s.Conns)
	emit("dot_refused", s.Refused)
	emit("dot_refused_per_client", s.RefusedPerClient)
	emit("dot_handshake_errors", s.HandshakeErrors)
	emit("dot_handshake_timeouts", s.HandshakeTimeouts)
	emit("dot_queries", s.Queries)
	emit("dot_answers", s.Answers)
	emit("dot_protocol_errors", s.ProtocolErrors)
	emit("dot_timeouts", s.Timeouts)
	emit("dot_idle_closed", s.IdleClosed)
	emit("dot_pipeline_full", s.PipelineFull)
	emit("dot_slow_clients", s.SlowClients)
}

func emitDoQ(emit func(string, uint64), s doq.Stats) {
	emit("doq_connections", s.Conns)
	emit("doq_refused", s.Refused)
	emit("doq_refused_per_client", s.RefusedPerClient)
	emit("doq_handshake_errors", s.HandshakeErrors)
	emit("doq_handshake_timeouts", s.HandshakeTimeouts)
	emit("doq_queries", s.Queries)
	emit("doq_answers", s.Answers)
	emit("doq_protocol_errors", s.ProtocolErrors)
	emit("doq_stream_timeouts", s.StreamTimeouts)
	emit("doq_idle_closed", s.IdleClosed)
	emit("doq_write_errors", s.WriteErrors)
}
