//go:build unix

package bench

import (
	"os"
	"syscall"
)

// cpuUse is this process's CPU use so far.
type cpuUse = syscall.Rusage

// rusage is this process's CPU use so far.
func rusage() cpuUse {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru
}

func generatorCost(a, b cpuUse, requests int64) GeneratorCost {
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	g := GeneratorCost{
		UserSeconds:   tv(b.Utime) - tv(a.Utime),
		SystemSeconds: tv(b.Stime) - tv(a.Stime),
		MaxRSSKiB:     int64(b.Maxrss), // KiB on Linux, where the comparison runs
		PID:           os.Getpid(),
	}
	if requests > 0 {
		g.MicrosPerRequest = (g.UserSeconds + g.SystemSeconds) * 1e6 / float64(requests)
	}
	return g
}
