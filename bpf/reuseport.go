package bpf

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// SteerReuseport attaches reuseport_steer (reuseport.c) to the
// SO_REUSEPORT group of the UDP sockets fds, all bound to one address:
// from then on the kernel gives each datagram to one of fds, by its flow
// hash as before, and none to the group's other sockets. Those are an
// older process's during an overlapping restart, which then stop
// receiving at once and can drain and close without losing a query the
// kernel queued on them. The program replaces any the group had (the
// older process's); it and its map live as long as the group, and a
// socket of fds that closes leaves the map, its share going back to the
// kernel's choice among all the group's sockets. Needs CAP_BPF (or
// CAP_SYS_ADMIN): without it the error wraps os.ErrPermission and the
// group keeps choosing by hash alone.
func SteerReuseport(fds []int) error {
	if len(fds) == 0 {
		return nil
	}
	spec, err := loadReuseport()
	if err != nil {
		return fmt.Errorf("loading the reuseport program: %w", err)
	}
	spec.Maps["socks"].MaxEntries = uint32(len(fds))
	if err := spec.Variables["nsocks"].Set(uint32(len(fds))); err != nil {
		return fmt.Errorf("loading the reuseport program: setting nsocks: %w", err)
	}
	var objs reuseportObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		return fmt.Errorf("loading the reuseport program: %w", err)
	}
	defer objs.Close() // the attachment keeps the program, the program its map
	for i, fd := range fds {
		if err := objs.Socks.Put(uint32(i), uint64(fd)); err != nil {
			return fmt.Errorf("steering the reuseport group: adding socket %d: %w", i, err)
		}
	}
	if err := unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_EBPF, objs.ReuseportSteer.FD()); err != nil {
		return fmt.Errorf("steering the reuseport group: SO_ATTACH_REUSEPORT_EBPF: %w", err)
	}
	return nil
}
