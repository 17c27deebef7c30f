package xsk

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ring is one of the four single-producer single-consumer rings shared with
// the kernel. The fill and TX rings are produced by us and consumed by the
// kernel; RX and completion the other way round. Each side only writes its
// own index and reads the other's.
//
// The indices are free-running uint32 counters; entry i lives at
// entries[i&mask]. Publishing an index is a store with release semantics
// after the entries are written, and reading the other side's index is a
// load with acquire semantics before the entries are read, pairing with the
// kernel's smp_store_release/smp_load_acquire. Go's sync/atomic operations
// are sequentially consistent, which is at least that.
//
// Like libxdp, each side caches the other side's index and reloads it only
// when the cached value does not promise enough room (producer) or entries
// (consumer), so a batch costs one or two atomic operations, not one per
// descriptor.
type ring[T uint64 | unix.XDPDesc] struct {
	producer *uint32
	consumer *uint32
	flags    *uint32
	entries  []T
	mask     uint32
	size     uint32

	// cachedProd and cachedCons are this side's view. On a producer ring
	// cachedProd is the next entry to reserve and cachedCons is the
	// consumer index plus size (so cachedCons-cachedProd is the room). On
	// a consumer ring cachedCons is the next entry to take and cachedProd
	// the last producer index loaded.
	cachedProd uint32
	cachedCons uint32

	mem []byte // the mapping, for Close
}

// mapRing maps a ring of size entries at the page offset pgoff of the
// socket and points r into it using off from XDP_MMAP_OFFSETS.
func mapRing[T uint64 | unix.XDPDesc](r *ring[T], fd int, pgoff int64, off unix.XDPRingOffset, size uint32, producer bool) error {
	var zero T
	length := int(off.Desc) + int(size)*int(unsafe.Sizeof(zero))
	mem, err := unix.Mmap(fd, pgoff, length, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("mapping ring at page offset %#x: %w", pgoff, err)
	}
	r.mem = mem
	r.producer = (*uint32)(unsafe.Pointer(&mem[off.Producer]))
	r.consumer = (*uint32)(unsafe.Pointer(&mem[off.Consumer]))
	r.flags = (*uint32)(unsafe.Pointer(&mem[off.Flags]))
	r.entries = unsafe.Slice((*T)(unsafe.Pointer(&mem[off.Desc])), size)
	r.size = size
	r.mask = size - 1
	r.init(producer)
	return nil
}

// init sets the cached indices from the shared ones (all zero on a fresh
// socket).
func (r *ring[T]) init(producer bool) {
	if producer {
		r.cachedProd = atomic.LoadUint32(r.producer)
		r.cachedCons = atomic.LoadUint32(r.consumer) + r.size
	} else {
		r.cachedProd = atomic.LoadUint32(r.producer)
		r.cachedCons = atomic.LoadUint32(r.consumer)
	}
}

func (r *ring[T]) unmap() {
	if r.mem != nil {
		unix.Munmap(r.mem)
		r.mem = nil
		r.entries = nil
		r.producer, r.consumer, r.flags = nil, nil, nil
	}
}

// free returns how many entries a producer can reserve now, at least n if
// that many are free (it reloads the consumer index only when the cached
// one does not promise n).
func (r *ring[T]) free(n uint32) uint32 {
	room := r.cachedCons - r.cachedProd
	if room >= n {
		return room
	}
	r.cachedCons = atomic.LoadUint32(r.consumer) + r.size
	return r.cachedCons - r.cachedProd
}

// reserve claims up to n entries for writing and returns the index of the
// first and how many were claimed. The entries are not visible to the
// kernel until submit.
func (r *ring[T]) reserve(n uint32) (idx, got uint32) {
	got = min(r.free(n), n)
	idx = r.cachedProd
	r.cachedProd += got
	return idx, got
}

// submit publishes every reserved entry to the kernel.
func (r *ring[T]) submit() {
	atomic.StoreUint32(r.producer, r.cachedProd)
}

// pending reports whether a producer ring holds entries the kernel has not
// consumed yet.
func (r *ring[T]) pending() bool {
	return atomic.LoadUint32(r.consumer) != r.cachedProd
}

// avail returns how many entries a consumer can take now, up to n (it
// reloads the producer index only when the cached one has fewer than n).
func (r *ring[T]) avail(n uint32) uint32 {
	entries := r.cachedProd - r.cachedCons
	if entries < n {
		r.cachedProd = atomic.LoadUint32(r.producer)
		entries = r.cachedProd - r.cachedCons
	}
	return min(entries, n)
}

// peek claims up to n filled entries for reading and returns the index of
// the first and how many. The kernel may not reuse them until release.
func (r *ring[T]) peek(n uint32) (idx, got uint32) {
	got = r.avail(n)
	idx = r.cachedCons
	r.cachedCons += got
	return idx, got
}

// release gives every peeked entry back to the kernel.
func (r *ring[T]) release() {
	atomic.StoreUint32(r.consumer, r.cachedCons)
}

// needWakeup reports whether the kernel set XDP_RING_NEED_WAKEUP on the
// ring: it will not look at the ring again until a syscall wakes it.
func (r *ring[T]) needWakeup() bool {
	return atomic.LoadUint32(r.flags)&unix.XDP_RING_NEED_WAKEUP != 0
}
