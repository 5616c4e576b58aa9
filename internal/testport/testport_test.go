package testport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// A child process of the test binary: claims the port in
// PODIUM_TESTPORT_CLAIM and says whether it got it.
func TestMain(m *testing.M) {
	if p := os.Getenv("PODIUM_TESTPORT_CLAIM"); p != "" {
		port, _ := strconv.Atoi(p)
		fmt.Println(claim(port))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// The ports lie below the kernel's ephemeral range, or an outgoing
// connection elsewhere on the machine can take one between the test's
// check and the child's bind; and no port is handed out twice in one
// process, or a parallel test's agent takes a stopped one's.
func TestFreeBelowEphemeralRangeOnce(t *testing.T) {
	limit := EphemeralStart()
	seen := map[int]bool{}
	// 100 ports a run: a process keeps every port it drew, and -count=50
	// in one process must not run out of the 22,000 below the range.
	for range 25 {
		ports, err := Free(4, true)
		if err != nil {
			t.Fatal(err)
		}
		for _, port := range ports {
			if port < low || port >= limit {
				t.Fatalf("port %d of %v outside %d-%d", port, ports, low, limit-1)
			}
			if seen[port] {
				t.Fatalf("port %d handed out twice (now in %v)", port, ports)
			}
			seen[port] = true
			for _, network := range []string{"tcp", "udp"} {
				addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
				var err error
				if network == "tcp" {
					var l net.Listener
					if l, err = net.Listen(network, addr); err == nil {
						l.Close()
					}
				} else {
					var c net.PacketConn
					if c, err = net.ListenPacket(network, addr); err == nil {
						c.Close()
					}
				}
				if err != nil {
					t.Fatalf("port %d handed out, but %s: %v", port, network, err)
				}
			}
		}
	}
}

func TestRunIsConsecutive(t *testing.T) {
	base, err := Run(5)
	if err != nil {
		t.Fatal(err)
	}
	handedOut.Lock()
	defer handedOut.Unlock()
	for p := base; p < base+5; p++ {
		if !handedOut.ports[p] {
			t.Errorf("port %d of the run from %d is not marked handed out", p, base)
		}
	}
}

// Two test processes never hold the same port: a port this process drew is
// refused to another.
func TestClaimedPortRefusedToAnotherProcess(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Log("no flock here: the bind check alone") // nothing to check
		return
	}
	ports, err := Free(1, false)
	if err != nil {
		t.Fatal(err)
	}
	child := func(port int) string {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "PODIUM_TESTPORT_CLAIM="+strconv.Itoa(port))
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("child: %v", err)
		}
		return strings.TrimSpace(string(out))
	}
	if got := child(ports[0]); got != "false" {
		t.Errorf("another process claimed port %d, which this one holds: %s", ports[0], got)
	}
	// A port nobody holds: the child gets it, and releases it when it exits.
	var free int
	for i, p := 0, low+rand.IntN(EphemeralStart()-low-100); i < 100 && free == 0; i, p = i+1, p+1 {
		handedOut.Lock()
		taken := handedOut.ports[p]
		handedOut.Unlock()
		if !taken && child(p) == "true" {
			free = p
		}
	}
	if free == 0 {
		t.Fatal("no port of 100 a child process could claim")
	}
	handedOut.Lock()
	ok := claim(free)
	handedOut.Unlock()
	if !ok {
		t.Errorf("port %d still held after the child that claimed it exited", free)
	}
}
