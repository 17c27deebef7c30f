package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// BenchOptions configure LoadBench: which replies the program steers.
type BenchOptions struct {
	// Target is the address and port the load generator queries; only
	// UDP from it is steered.
	Target netip.AddrPort
	// PortLo and PortHi bound (inclusive) the generator's source ports,
	// the replies' destination ports.
	PortLo, PortHi uint16
	// Queues sizes the xsks map (0: DefaultQueues).
	Queues int
}

// BenchProgram is xdp_bench (bench.c) loaded: it steers the target's
// replies to the generator's ports into the AF_XDP socket of the queue
// they arrive on and passes everything else. Close only once detached.
type BenchProgram struct {
	objs   benchObjects
	queues int
}

// LoadBench loads xdp_bench for opts.
func LoadBench(opts BenchOptions) (*BenchProgram, error) {
	q := opts.Queues
	if q == 0 {
		q = DefaultQueues
	}
	a := opts.Target.Addr().Unmap()
	switch {
	case q < 0 || q > 1<<16:
		return nil, fmt.Errorf("loading the bench XDP program: %d queues is out of range [1, 65536]", q)
	case !a.IsValid() || opts.Target.Port() == 0:
		return nil, fmt.Errorf("loading the bench XDP program: target %v: want an address and a port", opts.Target)
	case opts.PortLo == 0 || opts.PortHi < opts.PortLo:
		return nil, fmt.Errorf("loading the bench XDP program: port range %d-%d is empty", opts.PortLo, opts.PortHi)
	}
	spec, err := loadBench()
	if err != nil {
		return nil, fmt.Errorf("loading the bench XDP program: %w", err)
	}
	spec.Maps["bench_xsks"].MaxEntries = uint32(q)
	// The addresses and the port are compared as the packet holds them:
	// in network order, loaded as native-endian words.
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], opts.Target.Port())
	vars := map[string]any{
		"target_port": binary.NativeEndian.Uint16(port[:]),
		"port_lo":     opts.PortLo,
		"port_hi":     opts.PortHi,
	}
	if a.Is4() {
		b := a.As4()
		vars["family"], vars["target4"] = uint32(4), binary.NativeEndian.Uint32(b[:])
	} else {
		b := a.As16()
		var w [4]uint32
		for i := range w {
			w[i] = binary.NativeEndian.Uint32(b[4*i:])
		}
		vars["family"], vars["target6"] = uint32(6), w
	}
	for name, v := range vars {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("loading the bench XDP program: setting %s: %w", name, err)
		}
	}
	p := &BenchProgram{queues: q}
	if err := spec.LoadAndAssign(&p.objs, nil); err != nil {
		return nil, fmt.Errorf("loading the bench XDP program: %w", err)
	}
	return p, nil
}

// XDP is the program to attach.
func (p *BenchProgram) XDP() *ebpf.Program { return p.objs.XdpBench }

// SetSocket steers the replies arriving on queue into the AF_XDP socket fd.
func (p *BenchProgram) SetSocket(queue, fd int) error {
	if queue < 0 || queue >= p.queues {
		return fmt.Errorf("registering the AF_XDP socket of queue %d: the xsks map has %d queues", queue, p.queues)
	}
	if err := p.objs.BenchXsks.Put(uint32(queue), uint32(fd)); err != nil {
		return fmt.Errorf("registering the AF_XDP socket of queue %d: %w", queue, err)
	}
	return nil
}

// Close releases the program and its map.
func (p *BenchProgram) Close() error {
	return errors.Join(p.objs.benchPrograms.Close(), p.objs.benchMaps.Close())
}
