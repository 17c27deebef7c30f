package bpf

import (
	"errors"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// TestBenchProgram runs xdp_bench on crafted replies: only UDP from the
// target to a port of the range is redirected.
func TestBenchProgram(t *testing.T) {
	for _, fam := range []struct {
		name          string
		target, other string
		local, local2 string
	}{
		{"ipv4", "198.51.100.2:53", "198.51.100.3", "198.51.100.1", "198.51.100.9"},
		{"ipv6", "[2001:db8::2]:53", "2001:db8::3", "2001:db8::1", "2001:db8::9"},
	} {
		t.Run(fam.name, func(t *testing.T) {
			target := netip.MustParseAddrPort(fam.target)
			p, err := LoadBench(BenchOptions{Target: target, PortLo: 40000, PortHi: 40999, Queues: 2})
			if errors.Is(err, os.ErrPermission) && !errors.As(err, new(*ebpf.VerifierError)) {
				t.Skipf("skipping: loading an XDP program needs root or CAP_BPF: %v", err)
			}
			if err != nil {
				t.Fatalf("%+v", err)
			}
			defer p.Close()
			fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW, 0)
			if err != nil {
				t.Skipf("skipping: no AF_XDP socket: %v", err)
			}
			defer unix.Close(fd)
			if err := p.SetSocket(0, fd); err != nil { // BPF_PROG_RUN runs on rx queue 0
				t.Fatal(err)
			}
			if err := p.SetSocket(2, fd); err == nil {
				t.Error("SetSocket(2) on 2 queues: no error")
			}
			local := func(port uint16) netip.AddrPort {
				return netip.AddrPortFrom(netip.MustParseAddr(fam.local), port)
			}
			for _, c := range []struct {
				name string
				pkt  pkt
				want uint32
			}{
				{"reply, first port", pkt{src: target, dst: local(40000), payload: query(t)}, xdpRedirect},
				{"reply, last port", pkt{src: target, dst: local(40999), payload: query(t)}, xdpRedirect},
				{"reply to another local address", pkt{src: target, dst: netip.AddrPortFrom(netip.MustParseAddr(fam.local2), 40500), payload: query(t)}, xdpRedirect},
				{"below the range", pkt{src: target, dst: local(39999), payload: query(t)}, xdpPass},
				{"above the range", pkt{src: target, dst: local(41000), payload: query(t)}, xdpPass},
				{"other source port", pkt{src: netip.AddrPortFrom(target.Addr(), 54), dst: local(40000), payload: query(t)}, xdpPass},
				{"other source address", pkt{src: netip.AddrPortFrom(netip.MustParseAddr(fam.other), 53), dst: local(40000), payload: query(t)}, xdpPass},
				{"TCP", pkt{src: target, dst: local(40000), proto: 6, payload: query(t)}, xdpPass},
				{"truncated", pkt{src: target, dst: local(40000), payload: query(t), cut: 30}, xdpPass},
			} {
				frame := c.pkt.bytes()
				got, err := p.XDP().Run(&ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+64)})
				if err != nil {
					t.Fatalf("%s: %v", c.name, err)
				}
				if got != c.want {
					t.Errorf("%s: verdict %d, want %d", c.name, got, c.want)
				}
			}
		})
	}
	if _, err := LoadBench(BenchOptions{Target: netip.MustParseAddrPort("192.0.2.1:53"), PortLo: 2, PortHi: 1}); err == nil {
		t.Error("empty port range: no error")
	}
}
