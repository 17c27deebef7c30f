package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/cilium/ebpf"
)

// DefaultQueues is the size of the xsks map when Options.Queues is 0.
const DefaultQueues = 64

// Limits of the maps (max_entries in xdp.c).
const (
	MaxListeners  = 1024  // listeners: addresses with ports, over all IDs
	MaxACLEntries = 65536 // acl4 and acl6 each: prefixes, over all IDs
)

// Listener flags (LISTENER_* in xdp.c).
const (
	flagACLDrop = 1 << iota
	flagACL
	flagAnswers
)

// Options configure Load.
type Options struct {
	// Queues is the number of rx queues that can get a socket: the size of
	// the xsks map. Packets from a queue at or past it reach the kernel.
	// 0 means DefaultQueues.
	Queues int
	// Answers loads the in-kernel answer tier; without it listeners'
	// Answers flags are ignored and the verifier never sees the tier.
	Answers bool
	// AnswerEntries sizes the in-kernel answer tier's map (an LRU) and its
	// hit counters. 0 means DefaultAnswerEntries.
	AnswerEntries int
}

// Program is the loaded XDP program with its maps. It is not attached to any
// interface: link.AttachXDP(link.XDPOptions{Program: p.XDP(), ...}) does that.
// Its methods may be called concurrently, except Close.
type Program struct {
	objs    objects
	queues  int
	answers int        // AnswerEntries
	tier    bool       // Options.Answers
	mu      sync.Mutex // serializes SetListeners

	hitMu   sync.Mutex // AnswerHits' buffers
	hitKeys []uint32
	hitVals []uint64
}

// objects is what Load takes from the collection: the program and the maps
// it uses, not the .bss that only carries enum reason into the BTF.
type objects struct {
	xdpPrograms
	xdpMaps
}

// Load loads the program and creates its maps, with no listener and no
// socket: until SetListeners, every packet is XDP_PASS (pass_not_listener).
// A verifier error is wrapped (errors.As an *ebpf.VerifierError, print it with
// %+v for the log).
func Load(opts Options) (*Program, error) {
	q := opts.Queues
	if q == 0 {
		q = DefaultQueues
	}
	if q < 0 || q > 1<<16 {
		return nil, fmt.Errorf("loading the XDP program: %d queues is out of range [1, 65536]", q)
	}
	spec, err := loadXdp()
	if err != nil {
		return nil, fmt.Errorf("loading the XDP program: %w", err)
	}
	a := opts.AnswerEntries
	if a == 0 {
		a = DefaultAnswerEntries
	}
	if a < 0 || a > MaxAnswerEntries {
		return nil, fmt.Errorf("loading the XDP program: %d answer entries is out of range [1, %d]", a, MaxAnswerEntries)
	}
	spec.Maps[xdpMapXsks].MaxEntries = uint32(q)
	spec.Maps[xdpMapQueueCpus].MaxEntries = uint32(q)
	// The LRU keeps up to 128 free nodes per CPU and evicts to refill
	// them before it is full: headroom so that the a entries userspace
	// bounds itself to stay.
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("loading the XDP program: %w", err)
	}
	spec.Maps[xdpMapAnswers].MaxEntries = uint32(a + lruHeadroom*ncpu)
	spec.Maps[xdpMapAnswerHits].MaxEntries = uint32(a)
	if opts.Answers {
		if err := spec.Variables["answers_on"].Set(uint32(1)); err != nil {
			return nil, fmt.Errorf("loading the XDP program: turning the answer tier on: %w", err)
		}
		if err := spec.Variables["name_seed"].Set(nameSeed); err != nil {
			return nil, fmt.Errorf("loading the XDP program: seeding the name hash: %w", err)
		}
	}
	p := &Program{queues: q, answers: a, tier: opts.Answers}
	if err := spec.LoadAndAssign(&p.objs, nil); err != nil {
		return nil, fmt.Errorf("loading the XDP program: %w", err)
	}
	return p, nil
}

// Close releases the program and its maps. An attached link keeps the
// program and the maps it uses alive until the link is closed.
func (p *Program) Close() error {
	return errors.Join(p.objs.xdpPrograms.Close(), p.objs.xdpMaps.Close())
}

// Answers says whether the answer tier was loaded (Options.Answers).
func (p *Program) Answers() bool { return p.tier }

// XDP is the program to attach.
func (p *Program) XDP() *ebpf.Program { return p.objs.XdpDns }

// SetSocket steers queue's listener packets into the AF_XDP socket fd, which
// must be bound to that queue of the interface the program is attached to.
func (p *Program) SetSocket(queue, fd int) error {
	if queue < 0 || queue >= p.queues {
		return fmt.Errorf("registering the AF_XDP socket of queue %d: the xsks map has %d queues", queue, p.queues)
	}
	if err := p.objs.Xsks.Put(uint32(queue), uint32(fd)); err != nil {
		return fmt.Errorf("registering the AF_XDP socket of queue %d: %w", queue, err)
	}
	return nil
}

// DeleteSocket sends queue's packets to the kernel again. Deleting a queue
// without a socket is not an error.
func (p *Program) DeleteSocket(queue int) error {
	if queue < 0 || queue >= p.queues {
		return fmt.Errorf("removing the AF_XDP socket of queue %d: the xsks map has %d queues", queue, p.queues)
	}
	if err := p.objs.Xsks.Delete(uint32(queue)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("removing the AF_XDP socket of queue %d: %w", queue, err)
	}
	return nil
}

// Listener is one address the program steers to the sockets.
type Listener struct {
	// ID keys the listener's ACL entries. Listeners that share an ID share
	// one ACL: they must have the same Allow and ACLDrop.
	ID uint32
	// Addr is the destination. An unspecified address (0.0.0.0, ::) is the
	// family's wildcard: any local address of that family, on Addr's port,
	// unless another listener has the exact address. An IPv4-mapped IPv6
	// address is IPv4. The zone is ignored.
	Addr netip.AddrPort
	// Allow is the source ACL. Empty allows every source.
	Allow []netip.Prefix
	// ACLDrop drops the sources Allow does not cover in XDP (drop_acl).
	// Without it the program steers them and userspace decides (REFUSED).
	ACLDrop bool
	// Answers lets the program answer the listener's queries from the
	// answers map (XDP_TX); sources outside Allow never are.
	Answers bool
}

// SetListeners replaces the listeners and their ACLs.
//
// It is not atomic. It adds the new ACL entries, then the listeners, then
// removes what is no longer wanted, so a listener that keeps its ID sees the
// union of its old and new allow lists for the moment in between; give a
// listener a new ID to switch its ACL at once. On error the maps hold a mix;
// calling SetListeners again repairs them.
func (p *Program) SetListeners(ls []Listener) error {
	want, err := compile(ls)
	if err != nil {
		return fmt.Errorf("setting the XDP listeners: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.apply(want); err != nil {
		return fmt.Errorf("setting the XDP listeners: %w", err)
	}
	return nil
}

// tables are the contents of the steering maps.
type tables struct {
	listeners map[xdpListenerKey]xdpListenerValue
	acl4      map[xdpAcl4Key]struct{}
	acl6      map[xdpAcl6Key]struct{}
}

// compile checks ls and turns it into map entries.
func compile(ls []Listener) (tables, error) {
	t := tables{
		listeners: make(map[xdpListenerKey]xdpListenerValue, len(ls)),
		acl4:      map[xdpAcl4Key]struct{}{},
		acl6:      map[xdpAcl6Key]struct{}{},
	}
	type acl struct {
		allow []netip.Prefix
		drop  bool
		first int
	}
	acls := map[uint32]acl{}
	for i, l := range ls {
		a := l.Addr.Addr().Unmap()
		if !a.IsValid() || l.Addr.Port() == 0 {
			return t, fmt.Errorf("listeners[%d]: address %s: need an IP address and a port", i, l.Addr)
		}
		k := listenerKey(a, l.Addr.Port())
		if _, dup := t.listeners[k]; dup {
			return t, fmt.Errorf("listeners[%d]: address %s is given twice", i, netip.AddrPortFrom(a, l.Addr.Port()))
		}
		allow, err := normalize(l.Allow)
		if err != nil {
			return t, fmt.Errorf("listeners[%d].allow: %w", i, err)
		}
		drop := l.ACLDrop && len(allow) > 0 // empty allows everyone: nothing to drop
		if prev, seen := acls[l.ID]; seen {
			if prev.drop != drop || !slices.Equal(prev.allow, allow) {
				return t, fmt.Errorf("listeners[%d]: id %d has another allow list or ACL action than listeners[%d]", i, l.ID, prev.first)
			}
		} else {
			acls[l.ID] = acl{allow: allow, drop: drop, first: i}
			for _, pfx := range allow {
				addACL(t, l.ID, pfx)
			}
		}
		v := xdpListenerValue{Id: l.ID}
		if drop {
			v.Flags |= flagACLDrop
		}
		if len(allow) > 0 {
			v.Flags |= flagACL
		}
		if l.Answers {
			v.Flags |= flagAnswers
		}
		t.listeners[k] = v
	}
	if len(t.listeners) > MaxListeners {
		return t, fmt.Errorf("%d listener addresses, at most %d fit", len(t.listeners), MaxListeners)
	}
	if n := max(len(t.acl4), len(t.acl6)); n > MaxACLEntries {
		return t, fmt.Errorf("%d ACL prefixes of one family, at most %d fit", n, MaxACLEntries)
	}
	return t, nil
}

// normalize masks, sorts and deduplicates an allow list.
func normalize(ps []netip.Prefix) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(ps))
	for i, p := range ps {
		if !p.IsValid() {
			return nil, fmt.Errorf("[%d]: %q is not a prefix", i, p)
		}
		out = append(out, p.Masked())
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(out), nil
}

func listenerKey(a netip.Addr, port uint16) xdpListenerKey {
	k := xdpListenerKey{Port: hton16(port), Family: 6, Addr: a.As16()}
	if a.Is4() {
		k.Family = 4
	}
	return k
}

// addACL adds one allow prefix of listener id. The id is big-endian so that
// it is the first 32 bits of the trie's prefix.
func addACL(t tables, id uint32, p netip.Prefix) {
	if p.Addr().Is4() {
		t.acl4[xdpAcl4Key{Prefixlen: 32 + uint32(p.Bits()), Id: hton32(id), Addr: p.Addr().As4()}] = struct{}{}
		return
	}
	t.acl6[xdpAcl6Key{Prefixlen: 32 + uint32(p.Bits()), Id: hton32(id), Addr: p.Addr().As16()}] = struct{}{}
}

// apply makes the maps hold want: additions first, removals last.
func (p *Program) apply(want tables) error {
	m := &p.objs.xdpMaps
	have4, err := keys[xdpAcl4Key](m.Acl4)
	if err != nil {
		return fmt.Errorf("reading acl4: %w", err)
	}
	have6, err := keys[xdpAcl6Key](m.Acl6)
	if err != nil {
		return fmt.Errorf("reading acl6: %w", err)
	}
	haveL, err := keys[xdpListenerKey](m.Listeners)
	if err != nil {
		return fmt.Errorf("reading listeners: %w", err)
	}
	if err := putAll(m.Acl4, want.acl4, func(xdpAcl4Key, struct{}) uint32 { return 0 }); err != nil {
		return fmt.Errorf("writing acl4: %w", err)
	}
	if err := putAll(m.Acl6, want.acl6, func(xdpAcl6Key, struct{}) uint32 { return 0 }); err != nil {
		return fmt.Errorf("writing acl6: %w", err)
	}
	if err := putAll(m.Listeners, want.listeners, func(_ xdpListenerKey, v xdpListenerValue) xdpListenerValue { return v }); err != nil {
		return fmt.Errorf("writing listeners: %w", err)
	}
	if err := deleteAll(m.Listeners, stale(haveL, want.listeners)); err != nil {
		return fmt.Errorf("removing listeners: %w", err)
	}
	if err := deleteAll(m.Acl4, stale(have4, want.acl4)); err != nil {
		return fmt.Errorf("removing from acl4: %w", err)
	}
	if err := deleteAll(m.Acl6, stale(have6, want.acl6)); err != nil {
		return fmt.Errorf("removing from acl6: %w", err)
	}
	return nil
}

// keys lists the keys of a map.
func keys[K any](m *ebpf.Map) ([]K, error) {
	var (
		out []K
		k   K
	)
	it := m.Iterate()
	for it.Next(&k, new([]byte)) {
		out = append(out, k)
	}
	return out, it.Err()
}

func stale[K comparable, V any](have []K, want map[K]V) []K {
	var out []K
	for _, k := range have {
		if _, ok := want[k]; !ok {
			out = append(out, k)
		}
	}
	return out
}

// putAll writes entries in one batch, or one by one where the map type has
// no batch update.
func putAll[K comparable, V, W any](m *ebpf.Map, entries map[K]V, value func(K, V) W) error {
	if len(entries) == 0 {
		return nil
	}
	ks := make([]K, 0, len(entries))
	vs := make([]W, 0, len(entries))
	for k, v := range entries {
		ks = append(ks, k)
		vs = append(vs, value(k, v))
	}
	_, err := m.BatchUpdate(ks, vs, nil)
	if !errors.Is(err, ebpf.ErrNotSupported) {
		return err
	}
	for i := range ks {
		if err := m.Put(ks[i], vs[i]); err != nil {
			return err
		}
	}
	return nil
}

// deleteAll removes ks in one batch, or one by one where the map type has no
// batch delete.
func deleteAll[K any](m *ebpf.Map, ks []K) error {
	if len(ks) == 0 {
		return nil
	}
	_, err := m.BatchDelete(ks, nil)
	if !errors.Is(err, ebpf.ErrNotSupported) {
		return err
	}
	for _, k := range ks {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	return nil
}

// hton16 and hton32 give the value whose bytes in host order are v in
// network order: the __be16 and __be32 fields of the C structs.
func hton16(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

func hton32(v uint32) uint32 {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return binary.NativeEndian.Uint32(b[:])
}
