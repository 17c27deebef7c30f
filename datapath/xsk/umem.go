package xsk

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Headroom is where the kernel puts a received packet inside its frame:
// XDP_PACKET_HEADROOM bytes after the frame's base, the room an XDP program
// may grow into with bpf_xdp_adjust_head. The UMEM is registered with
// headroom 0, so nothing is added to it. Use the RX descriptor's Addr, which
// already includes the offset, rather than this constant.
const Headroom = unix.XDP_PACKET_HEADROOM

// Defaults of SocketConfig.
const (
	DefaultFrameSize = 4096
	DefaultNumFrames = 4096
	DefaultRingSize  = 2048
)

// umem is the packet memory shared with the kernel: numFrames frames of
// frameSize bytes, page aligned because it comes from mmap.
type umem struct {
	mem       []byte
	frameSize uint64
	frameMask uint64 // ^(frameSize-1): addr&frameMask is the frame's base
}

func newUMEM(frameSize, numFrames int) (umem, error) {
	mem, err := unix.Mmap(-1, 0, frameSize*numFrames, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return umem{}, fmt.Errorf("mapping %d frames of %d bytes: %w", numFrames, frameSize, err)
	}
	return umem{mem: mem, frameSize: uint64(frameSize), frameMask: ^(uint64(frameSize) - 1)}, nil
}

// register hands the memory to the socket fd as its UMEM.
func (u *umem) register(fd int) error {
	reg := unix.XDPUmemReg{
		Addr: uint64(uintptr(unsafe.Pointer(&u.mem[0]))),
		Len:  uint64(len(u.mem)),
		Size: uint32(u.frameSize),
		// Headroom 0: RX data still starts XDP_PACKET_HEADROOM into the
		// frame; a non-zero value would only push it further.
		Headroom: 0,
	}
	return setsockopt(fd, unix.XDP_UMEM_REG, unsafe.Pointer(&reg), unsafe.Sizeof(reg))
}

func (u *umem) unmap() {
	if u.mem != nil {
		unix.Munmap(u.mem)
		u.mem = nil
	}
}

// Frames is a free list of UMEM frame addresses: a fixed stack filled once,
// so Get and Put never allocate. It is not safe for concurrent use; the
// socket's loop owns it, like the rings.
type Frames struct {
	addrs     []uint64
	frameMask uint64
}

// NewFrames returns a free list holding every frame of a UMEM of numFrames
// frames of frameSize bytes (a power of two).
func NewFrames(frameSize, numFrames int) *Frames {
	f := &Frames{
		addrs:     make([]uint64, numFrames),
		frameMask: ^(uint64(frameSize) - 1),
	}
	// Hand out low addresses first: the stack pops from the end.
	for i := range f.addrs {
		f.addrs[i] = uint64(numFrames-1-i) * uint64(frameSize)
	}
	return f
}

// Len returns how many frames are free.
func (f *Frames) Len() int { return len(f.addrs) }

// Get takes a free frame and returns its base address; false when none is
// left.
func (f *Frames) Get() (uint64, bool) {
	n := len(f.addrs)
	if n == 0 {
		return 0, false
	}
	addr := f.addrs[n-1]
	f.addrs = f.addrs[:n-1]
	return addr, true
}

// GetN takes up to len(dst) free frames into dst and returns how many.
func (f *Frames) GetN(dst []uint64) int {
	n := min(len(dst), len(f.addrs))
	copy(dst, f.addrs[len(f.addrs)-n:])
	f.addrs = f.addrs[:len(f.addrs)-n]
	return n
}

// Put returns the frame holding addr (any address inside it, such as an RX
// or completion descriptor's) to the list. Putting more frames than the
// UMEM has means a frame was freed twice, and panics.
func (f *Frames) Put(addr uint64) {
	if len(f.addrs) == cap(f.addrs) {
		panic("xsk: Frames.Put: more frames than the UMEM has (a frame was freed twice)")
	}
	f.addrs = append(f.addrs, addr&f.frameMask)
}

// PutN returns every frame in addrs, as Put.
func (f *Frames) PutN(addrs []uint64) {
	for _, a := range addrs {
		f.Put(a)
	}
}
