package bench

import (
	"os"
	"os/exec"
	"runtime"
	"strings"
)

func machineInfo(o CompareOptions) Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), Versions: map[string]string{}}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		// The machine's CPUs, not runtime.NumCPU's: a bench run under
		// taskset -c 0 sees one.
		n := 0
		for _, line := range strings.Split(string(data), "\n") {
			k, v, ok := strings.Cut(line, ":")
			switch k = strings.TrimSpace(k); {
			case ok && k == "model name" && m.CPU == "":
				m.CPU = strings.TrimSpace(v)
			case ok && k == "processor":
				n++
			}
		}
		if n > 0 {
			m.CPUs = n
		}
	}
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(data))
	}
	firstLine := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil && len(out) == 0 {
			return "unavailable: " + err.Error()
		}
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return line
	}
	m.Versions[TargetHAProxy] = firstLine(o.HAProxy, "-v")
	m.Versions[TargetNginx] = firstLine(o.Nginx, "-v")
	m.Versions[TargetPodium] = firstLine(o.Podium, "version")
	return m
}
