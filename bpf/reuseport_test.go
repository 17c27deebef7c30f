package bpf

import (
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// reuseportSocket opens a UDP socket with SO_REUSEPORT bound to
// 127.0.0.1:port (0: the kernel picks) and returns it with its port; the
// test's end closes it unless closed[fd] says it was closed already.
func reuseportSocket(t *testing.T, port int, closed map[int]bool) (int, int) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !closed[fd] {
			unix.Close(fd)
		}
	})
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fd, sa.(*unix.SockaddrInet4).Port
}

// spray sends n datagrams to 127.0.0.1:port, each from a socket of its
// own (so a port of its own, and a flow hash of its own), and returns how
// many each of fds received. It reads as it sends, so that no socket's
// receive buffer overflows.
func spray(t *testing.T, port, n int, fds []int) []int {
	t.Helper()
	got := make([]int, len(fds))
	total := 0
	buf := make([]byte, 64)
	drain := func() {
		for i, fd := range fds {
			for {
				if _, _, err := unix.Recvfrom(fd, buf, 0); err != nil {
					break
				}
				got[i]++
				total++
			}
		}
	}
	for i := range n {
		c, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		err = unix.Sendto(c, fmt.Appendf(nil, "q%d", i), 0, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}})
		unix.Close(c)
		if err != nil {
			t.Fatal(err)
		}
		drain()
	}
	for deadline := time.Now().Add(2 * time.Second); total < n && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		drain()
	}
	if total != n {
		t.Fatalf("%d of %d datagrams received (%v)", total, n, got)
	}
	return got
}

// TestSteerReuseport: two sockets of an "old" process and two of a "new"
// one share a port. The kernel spreads datagrams over all four; once the
// new ones are steered, the old ones get none, and the new ones share
// them. When a steered socket closes, its share goes back to the kernel's
// choice: nothing is lost.
func TestSteerReuseport(t *testing.T) {
	closed := map[int]bool{}
	old1, port := reuseportSocket(t, 0, closed)
	old2, _ := reuseportSocket(t, port, closed)
	new1, _ := reuseportSocket(t, port, closed)
	new2, _ := reuseportSocket(t, port, closed)
	all := []int{old1, old2, new1, new2}
	const n = 400

	got := spray(t, port, n, all)
	if got[0]+got[1] == 0 {
		t.Fatalf("unsteered: the old sockets got nothing (%v); the test cannot tell steering apart", got)
	}

	err := SteerReuseport([]int{new1, new2})
	if errors.Is(err, os.ErrPermission) && !errors.As(err, new(*ebpf.VerifierError)) {
		t.Skipf("skipping: loading a BPF program needs root or CAP_BPF (uid %d): %v", os.Geteuid(), err)
	}
	if err != nil {
		t.Fatalf("%+v", err)
	}
	got = spray(t, port, n, all)
	if got[0]+got[1] != 0 || got[2] == 0 || got[3] == 0 {
		t.Fatalf("steered: per socket %v, want none on the old two (first) and a share on each new one", got)
	}

	unix.Close(new2) // its entry leaves the map
	closed[new2] = true
	got = spray(t, port, n, []int{old1, old2, new1})
	if got[2] == 0 {
		t.Fatalf("one steered socket closed: per socket %v, want a share still on the open new one", got)
	}
}
