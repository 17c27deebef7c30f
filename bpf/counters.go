package bpf

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// Reason is why the program gave a packet its verdict. Every packet counts
// under exactly one reason; the name's prefix is the verdict.
type Reason uint32

// The reasons, in the order of enum reason in xdp.c.
const (
	ReasonRedirect        = Reason(xdpReasonREASON_REDIRECT)          // XDP_REDIRECT into the queue's AF_XDP socket
	ReasonPassNoSocket    = Reason(xdpReasonREASON_PASS_NO_SOCKET)    // a listener's packet on a queue without a socket
	ReasonPassNotIP       = Reason(xdpReasonREASON_PASS_NOT_IP)       // ARP, LLDP, 3+ VLAN tags, IP version mismatch, ...
	ReasonPassNotUDP      = Reason(xdpReasonREASON_PASS_NOT_UDP)      // TCP, ICMP, ...
	ReasonPassFragment    = Reason(xdpReasonREASON_PASS_FRAGMENT)     // IPv4 fragment (MF or an offset)
	ReasonPassIPOptions   = Reason(xdpReasonREASON_PASS_IP_OPTIONS)   // IPv4 header with options
	ReasonPassIPv6Ext     = Reason(xdpReasonREASON_PASS_IPV6EXT)      // IPv6 extension header (fragment header included)
	ReasonPassBadLength   = Reason(xdpReasonREASON_PASS_BAD_LENGTH)   // truncated header, lengths that disagree with the frame
	ReasonPassBadChecksum = Reason(xdpReasonREASON_PASS_BAD_CHECKSUM) // IPv4 header checksum
	ReasonPassShortDNS    = Reason(xdpReasonREASON_PASS_SHORT_DNS)    // UDP payload under 12 bytes
	ReasonPassNotListener = Reason(xdpReasonREASON_PASS_NOT_LISTENER) // no listener on that address and port
	ReasonDropACL         = Reason(xdpReasonREASON_DROP_ACL)          // source outside an ACLDrop listener's allow list
	ReasonTX              = Reason(xdpReasonREASON_TX)                // answered from the answers map (XDP_TX)
	ReasonDropTorn        = Reason(xdpReasonREASON_DROP_TORN)         // an answers entry rewritten under the copy: dropped
	NumReasons            = Reason(xdpReasonREASON_MAX)
)

var reasonNames = [NumReasons]string{
	ReasonRedirect:        "redirect",
	ReasonPassNoSocket:    "pass_no_socket",
	ReasonPassNotIP:       "pass_not_ip",
	ReasonPassNotUDP:      "pass_not_udp",
	ReasonPassFragment:    "pass_fragment",
	ReasonPassIPOptions:   "pass_ip_options",
	ReasonPassIPv6Ext:     "pass_ipv6_ext",
	ReasonPassBadLength:   "pass_bad_length",
	ReasonPassBadChecksum: "pass_bad_checksum",
	ReasonPassShortDNS:    "pass_short_dns",
	ReasonPassNotListener: "pass_not_listener",
	ReasonDropACL:         "drop_acl",
	ReasonTX:              "tx",
	ReasonDropTorn:        "drop_torn",
}

// String is the reason's name, usable as a Prometheus label value.
func (r Reason) String() string {
	if r < NumReasons {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", uint32(r))
}

// Counters are packets per reason since Load, summed over the CPUs.
type Counters [NumReasons]uint64

// Counters reads the per-CPU counters (one system call): read them at scrape
// time, the datapath does no metric work per packet.
func (p *Program) Counters() (Counters, error) {
	var c Counters
	if err := sumPerCPU(p.objs.Counters, c[:], nil, nil); err != nil {
		return c, fmt.Errorf("reading the XDP counters: %w", err)
	}
	return c, nil
}

// QueueCPUs reads, for each CPU, how many packets it has redirected to the
// socket of queue since Load: the CPU whose softirq fills that socket's RX
// ring. out must hold one entry per possible CPU (ebpf.PossibleCPU).
func (p *Program) QueueCPUs(queue int, out []uint64) error {
	if queue < 0 || queue >= p.queues {
		return fmt.Errorf("reading queue %d's CPUs: the program has %d queues", queue, p.queues)
	}
	if err := p.objs.QueueCpus.Lookup(uint32(queue), out); err != nil {
		return fmt.Errorf("reading queue %d's CPUs: %w", queue, err)
	}
	return nil
}

// sumPerCPU reads entries 0 to len(out)-1 of a per-CPU array of u64 in one
// batch and sums each over the CPUs into out. keys and vals are scratch
// (len(out) and len(out) × possible CPUs long); nil allocates them.
func sumPerCPU(m *ebpf.Map, out []uint64, keys []uint32, vals []uint64) error {
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	if len(keys) != len(out) || len(vals) != len(out)*ncpu {
		keys, vals = make([]uint32, len(out)), make([]uint64, len(out)*ncpu)
	}
	n, err := m.BatchLookup(new(ebpf.MapBatchCursor), keys, vals, nil)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	if n != len(out) {
		return fmt.Errorf("got %d of %d entries", n, len(out))
	}
	clear(out)
	for i, k := range keys {
		for _, v := range vals[i*ncpu : (i+1)*ncpu] {
			out[k] += v
		}
	}
	return nil
}
