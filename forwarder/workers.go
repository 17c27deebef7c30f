package forwarder

import "time"

// workers runs upstream resolutions on reused goroutines. A fresh goroutine
// per miss costs a newproc and, for the pipeline's call depth, stack growth
// (about a tenth of the miss path's CPU in a profile); a parked worker costs
// one channel handoff. The number of workers is bounded by the caller (the
// in-flight semaphore); idle ones exit after a while.
type workers struct {
	jobs chan func()
	idle time.Duration
}

func newWorkers(idle time.Duration) *workers {
	return &workers{jobs: make(chan func()), idle: idle}
}

// run hands job to an idle worker, or starts one.
func (w *workers) run(job func()) {
	select {
	case w.jobs <- job:
	default:
		go w.loop(job)
	}
}

func (w *workers) loop(job func()) {
	t := time.NewTimer(w.idle)
	defer t.Stop()
	for {
		job()
		t.Reset(w.idle)
		select {
		case job = <-w.jobs:
		case <-t.C:
			return
		}
	}
}
