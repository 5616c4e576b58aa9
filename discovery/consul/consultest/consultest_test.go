package consultest

import "testing"

// The agent's ports must lie below the kernel's ephemeral range, or an
// outgoing connection elsewhere on the machine can take one while the agent
// is down for an outage and the restart then fails to bind; and no port is
// handed out twice in one process, or a parallel test's agent takes a
// stopped one's.
func TestFreePortsBelowEphemeralRange(t *testing.T) {
	limit := ephemeralStart()
	seen := map[int]bool{} // across calls: a port is handed out once
	for range 1500 {
		p, err := freePorts()
		if err != nil {
			t.Fatal(err)
		}
		all := []int{p.http, p.server, p.serfLAN, p.serfWAN}
		for _, port := range all {
			if port < 10000 || port >= limit {
				t.Fatalf("port %d of %v outside 10000-%d", port, all, limit-1)
			}
			if seen[port] {
				t.Fatalf("port %d handed out twice (now in %v): a stopped agent's port went to another", port, all)
			}
			seen[port] = true
		}
	}
}
