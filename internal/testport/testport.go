// Package testport hands tests the loopback ports of the processes they
// start: an edge, an origin, a Consul agent, a whole demo.
//
// Such a port is released by the test before the child binds it, so
// something else may take it in between. Two things did, on a busy
// machine:
//   - Any outgoing connection: a port the kernel hands out for ":0" lies
//     in the ephemeral range, which every connect on the machine draws
//     from. Seen as "bind: address already in use" when the edge of one
//     test package started beside the load of four others.
//   - Another test: a stopped agent's ports went to a parallel test's
//     agent, whose services the stopped one's watcher then read.
//
// So a port is drawn at random below the ephemeral range, where the kernel
// never picks one on its own, is handed out once per test process, and is
// claimed for the life of the process with a lock file (where the system
// has flock), so that two test processes running at once never draw the
// same one.
package testport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// low is the first port drawn: above the well-known and registered ports
// that system services commonly take.
const low = 10000

var handedOut struct {
	sync.Mutex
	ports map[int]bool
}

// Free returns n distinct ports free on 127.0.0.1 for TCP, and for UDP too
// when udp is set (Serf listens on both).
func Free(n int, udp bool) ([]int, error) {
	return draw(n, udp, false)
}

// Run returns the first of n consecutive free TCP ports (a demo that puts
// origin N on the first + N - 1).
func Run(n int) (int, error) {
	ports, err := draw(n, false, true)
	if err != nil {
		return 0, err
	}
	return ports[0], nil
}

func draw(n int, udp, consecutive bool) ([]int, error) {
	hi := EphemeralStart()
	handedOut.Lock()
	defer handedOut.Unlock()
	if handedOut.ports == nil {
		handedOut.ports = map[int]bool{}
	}
	for attempt := 0; attempt < 200; attempt++ {
		var got []int
		if consecutive {
			base := low + rand.IntN(hi-low-n)
			for p := base; p < base+n; p++ {
				if !take(p, udp) {
					got = nil
					break
				}
				got = append(got, p)
			}
		} else {
			for tries := 0; len(got) < n && tries < 50*n; tries++ {
				if p := low + rand.IntN(hi-low); take(p, udp) {
					got = append(got, p)
				}
			}
		}
		if len(got) == n {
			return got, nil
		}
		// A consecutive run broken partway: its claimed ports stay handed
		// out, wasted but harmless.
	}
	return nil, fmt.Errorf("testport: no %d free ports in %d-%d after 200 tries", n, low, hi-1)
}

// take claims p for this process when nobody has it: not handed out here,
// no lock file held by another process, and bindable now. Called with
// handedOut held.
func take(p int, udp bool) bool {
	if handedOut.ports[p] || !claim(p) {
		return false
	}
	handedOut.ports[p] = true // claimed: never drawn again here, bindable or not
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	l.Close()
	if udp {
		u, err := net.ListenPacket("udp", addr)
		if err != nil {
			return false
		}
		u.Close()
	}
	return true
}

// EphemeralStart is the first port of the kernel's ephemeral range
// (net.ipv4.ip_local_port_range), or 32768, Linux's default, where the file
// cannot be read (other systems start theirs higher still).
func EphemeralStart() int {
	const linuxDefault = 32768
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return linuxDefault
	}
	fields := strings.Fields(string(b))
	if len(fields) != 2 {
		return linuxDefault
	}
	n, err := strconv.Atoi(fields[0])
	if err != nil || n <= low+1000 {
		return linuxDefault
	}
	return n
}
