package bench

import (
	"os"
	"syscall"
	"testing"
	"time"
)

// The proxy's CPU is read to well under a 10 ms tick: 5 ms of work by this
// process reads as about 5 ms, where utime+stime would say 0 or 10.
func TestCPUSecondsBelowATick(t *testing.T) {
	rusage := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	pids := []int{os.Getpid()}
	c0, err := cpuSeconds(pids)
	if err != nil {
		t.Fatal(err)
	}
	r0 := rusage()
	for rusage()-r0 < 5*time.Millisecond { // burn CPU, not wall time
	}
	r := rusage() - r0
	c1, err := cpuSeconds(pids)
	if err != nil {
		t.Fatal(err)
	}
	got := time.Duration((c1 - c0) * 1e9)
	if got < r/2 || got > 2*r {
		t.Errorf("cpuSeconds moved by %v while the process used %v (getrusage)", got, r)
	}
}
