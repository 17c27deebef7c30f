package xsk

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// XDPStats are a socket's counters since Open: the kernel's XDP_STATISTICS and
// the socket's own wake-up counters. All are totals, for Prometheus
// counters.
type XDPStats struct {
	// From the kernel.
	RxDropped            uint64 // received packets dropped: no fill-ring frame, or too long for a frame
	RxInvalidDescs       uint64 // invalid descriptors on the RX ring
	TxInvalidDescs       uint64 // TX descriptors the kernel rejected (outside the UMEM or a frame)
	RxRingFull           uint64 // packets dropped because the RX ring was full
	RxFillRingEmptyDescs uint64 // times the kernel found the fill ring empty
	TxRingEmptyDescs     uint64 // times the kernel found the TX ring empty

	// From this package.
	TxKicks      uint64 // sendto calls that pushed TX
	TxKickErrors uint64 // kicks that failed with anything but EAGAIN/EBUSY/ENOBUFS/ENETDOWN
	RxWakeups    uint64 // recvfrom calls made because the fill ring asked for a wake-up
}

// Stats returns the counters. It may be called from any goroutine until
// Close.
func (s *Socket) Stats() (XDPStats, error) {
	s.fdMu.RLock()
	defer s.fdMu.RUnlock()
	if s.fd < 0 {
		return XDPStats{}, fmt.Errorf("xdp statistics: %w", unix.EBADF)
	}
	var k unix.XDPStatistics
	n, err := getsockopt(s.fd, unix.XDP_STATISTICS, unsafe.Pointer(&k), unsafe.Sizeof(k))
	if err != nil {
		return XDPStats{}, fmt.Errorf("xdp statistics: %w", err)
	}
	if n < unsafe.Sizeof(k) {
		// A kernel older than 5.9 fills only the first three (and counts
		// a full RX ring in rx_dropped).
		k.Rx_ring_full, k.Rx_fill_ring_empty_descs, k.Tx_ring_empty_descs = 0, 0, 0
	}
	return XDPStats{
		RxDropped:            k.Rx_dropped,
		RxInvalidDescs:       k.Rx_invalid_descs,
		TxInvalidDescs:       k.Tx_invalid_descs,
		RxRingFull:           k.Rx_ring_full,
		RxFillRingEmptyDescs: k.Rx_fill_ring_empty_descs,
		TxRingEmptyDescs:     k.Tx_ring_empty_descs,
		TxKicks:              s.txKicks.Load(),
		TxKickErrors:         s.txKickErrors.Load(),
		RxWakeups:            s.rxWakeups.Load(),
	}, nil
}

// XDPStat is one named counter of XDPStats.
type XDPStat struct {
	Name  string // a Prometheus label value: rx_dropped, tx_kicks, …
	Count uint64
}

// Each lists the counters by name, for export.
func (s XDPStats) Each() [9]XDPStat {
	return [9]XDPStat{
		{"rx_dropped", s.RxDropped}, {"rx_invalid_descs", s.RxInvalidDescs}, {"tx_invalid_descs", s.TxInvalidDescs},
		{"rx_ring_full", s.RxRingFull}, {"rx_fill_ring_empty_descs", s.RxFillRingEmptyDescs},
		{"tx_ring_empty_descs", s.TxRingEmptyDescs}, {"tx_kicks", s.TxKicks}, {"tx_kick_errors", s.TxKickErrors},
		{"rx_wakeups", s.RxWakeups},
	}
}
