// Package metrics exports xdoh's counters to Prometheus. The hot path keeps
// plain atomic counters (forwarder.Stats, cache.Stats, the datapaths'
// Stats); this collector reads them at scrape time, so a query does no
// Prometheus work. Names follow xdoh_<subsystem>_<name>_<unit>, counters end
// in _total, and a test lints them with promlint.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metric is one exported series read by a function at scrape time.
type metric struct {
	desc *prometheus.Desc
	typ  prometheus.ValueType
	read func() float64
}

// Collector is a prometheus.Collector over read functions.
type Collector struct {
	ms  []metric
	dyn []dynamic
}

// dynamic is a metric family whose label values are known only at scrape.
type dynamic struct {
	desc    *prometheus.Desc
	collect func(desc *prometheus.Desc, ch chan<- prometheus.Metric)
}

// Dynamic adds a family with variable labels, emitted by collect at scrape
// time (for example one counter per listener, transport and rcode).
func (c *Collector) Dynamic(name, help string, labels []string, collect func(desc *prometheus.Desc, ch chan<- prometheus.Metric)) {
	c.dyn = append(c.dyn, dynamic{prometheus.NewDesc(name, help, labels, nil), collect})
}

// Counter adds a counter (name must end in _total).
func (c *Collector) Counter(name, help string, labels prometheus.Labels, read func() uint64) {
	c.ms = append(c.ms, metric{prometheus.NewDesc(name, help, nil, labels), prometheus.CounterValue, func() float64 { return float64(read()) }})
}

// Gauge adds a gauge.
func (c *Collector) Gauge(name, help string, labels prometheus.Labels, read func() float64) {
	c.ms = append(c.ms, metric{prometheus.NewDesc(name, help, nil, labels), prometheus.GaugeValue, read})
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range c.ms {
		ch <- m.desc
	}
	for _, d := range c.dyn {
		ch <- d.desc
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	for _, m := range c.ms {
		ch <- prometheus.MustNewConstMetric(m.desc, m.typ, m.read())
	}
	for _, d := range c.dyn {
		d.collect(d.desc, ch)
	}
}

// Registry returns a registry with c plus the Go runtime and process collectors.
func (c *Collector) Registry() (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	for _, col := range []prometheus.Collector{c, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("registering metrics: %w", err)
		}
	}
	return reg, nil
}

// Server serves /metrics, /healthz (the process is up) and /readyz (every
// listener answers queries: SetReady was called).
type Server struct {
	srv   *http.Server
	ln    net.Listener
	ready atomic.Bool
}

// Listen binds addr and serves reg in the background.
func Listen(addr string, reg *prometheus.Registry) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening for metrics on %s: %w", addr, err)
	}
	s := &Server{ln: ln}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.ready.Load() {
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

// Addr is the bound address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// SetReady marks the process ready for /readyz.
func (s *Server) SetReady(ready bool) { s.ready.Store(ready) }

// Shutdown stops the server.
func (s *Server) Shutdown(ctx context.Context) error {
	if err := s.srv.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("stopping metrics server: %w", err)
	}
	return nil
}
