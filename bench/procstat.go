package bench

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// machineBusySeconds is the CPU time all CPUs spent not idle since boot,
// from /proc/stat: user, nice, system, irq, softirq and steal (guest time
// is already inside user).
func machineBusySeconds() float64 {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var ticks int64
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		v, _ := strconv.ParseInt(f[i], 10, 64)
		ticks += v
	}
	return float64(ticks) / clockTicks
}

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat:
// 100 on every Linux architecture Go supports (the kernel ABI fixes it,
// whatever CONFIG_HZ is).
const clockTicks = 100

// cpuSeconds is the CPU time pids have used: the nanosecond run time of
// each of their threads (/proc/PID/task/TID/schedstat) where the kernel
// keeps it, else utime+stime from /proc/PID/stat. Those count 10 ms ticks:
// a proxy that served a 2 s run at a few hundred requests a second (a
// test's run on a loaded machine) used less than one tick and read as 0 µs
// per request. schedstat misses a thread that exits between two reads; the
// proxies compared keep theirs (one worker thread; Go's threads live on).
func cpuSeconds(pids []int) (float64, error) {
	if s, ok := schedCPUSeconds(pids); ok {
		return s, nil
	}
	return tickCPUSeconds(pids)
}

// schedCPUSeconds sums the first field of every thread's schedstat (time on
// a CPU, in nanoseconds); false when the kernel does not keep it.
func schedCPUSeconds(pids []int) (float64, bool) {
	var ns int64
	for _, pid := range pids {
		dir := "/proc/" + strconv.Itoa(pid) + "/task/"
		tasks, err := os.ReadDir(dir)
		if err != nil {
			return 0, false
		}
		for _, t := range tasks {
			data, err := os.ReadFile(dir + t.Name() + "/schedstat")
			if errors.Is(err, os.ErrNotExist) {
				if _, serr := os.Stat(dir + t.Name()); serr == nil {
					return 0, false // the thread is there, its schedstat is not: no CONFIG_SCHED_INFO
				}
				continue // the thread exited since ReadDir
			}
			if err != nil {
				return 0, false
			}
			f := strings.Fields(string(data))
			if len(f) == 0 {
				return 0, false
			}
			v, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return 0, false
			}
			ns += v
		}
	}
	return float64(ns) / 1e9, true
}

// tickCPUSeconds sums utime+stime of pids from /proc/PID/stat.
func tickCPUSeconds(pids []int) (float64, error) {
	var ticks int64
	for _, pid := range pids {
		data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return 0, fmt.Errorf("reading /proc/%d/stat: %w", pid, err)
		}
		f, err := statFields(data)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		// Fields 14 and 15 (utime, stime) of proc(5); f[0] is field 3.
		u, _ := strconv.ParseInt(f[11], 10, 64)
		s, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += u + s
	}
	return float64(ticks) / clockTicks, nil
}

// statFields splits /proc/PID/stat after the command name, which may
// itself hold spaces and parentheses: the name ends at the last ')'.
func statFields(data []byte) ([]string, error) {
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return nil, errors.New("no command name")
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return nil, errors.New("too few fields")
	}
	return f, nil
}

// processTree returns pid and its descendants, found by parent pid in
// /proc: nginx's worker is the master's child.
func processTree(pid int) []int {
	parent := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		f, err := statFields(data)
		if err != nil {
			continue
		}
		pp, _ := strconv.Atoi(f[1])
		parent[pp] = append(parent[pp], p)
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, parent[out[i]]...)
	}
	return out
}

// peakRSS sums VmHWM over pids, in KiB.
func peakRSS(pids []int) int64 {
	var total int64
	for _, pid := range pids {
		f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				total += kb
			}
		}
		f.Close()
	}
	return total
}
