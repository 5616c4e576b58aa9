package consultest

import "testing"

// The agent's ports must lie below the kernel's ephemeral range, or an
// outgoing connection elsewhere on the machine can take one while the agent
// is down for an outage and the restart then fails to bind.
func TestFreePortsBelowEphemeralRange(t *testing.T) {
	limit := ephemeralStart()
	for range 20 {
		p, err := freePorts()
		if err != nil {
			t.Fatal(err)
		}
		all := []int{p.http, p.server, p.serfLAN, p.serfWAN}
		seen := map[int]bool{}
		for _, port := range all {
			if port < 10000 || port >= limit {
				t.Fatalf("port %d of %v outside 10000-%d", port, all, limit-1)
			}
			if seen[port] {
				t.Fatalf("port %d picked twice in %v", port, all)
			}
			seen[port] = true
		}
	}
}
