package proxy

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/podium-edge/podium/balancer"
	"github.com/podium-edge/podium/config"
	"github.com/podium-edge/podium/discovery/consul/consultest"
)

// TestWaitingRoomConsul: two edges with waiting_room_store.consul on one
// real agent run the room as one queue: a visitor placed on one edge is
// admitted on the other once the shared watermark has passed it, and
// each edge reports podium_edge_waitroom_coordination_up 1. The clock is
// the test's; the coordinators' loops run on their own tickers, and the
// test waits for the watermark to be adopted (an event), not for time.
func TestWaitingRoomConsul(t *testing.T) {
	agent := consultest.Start(t)
	clock := &roomClock{}
	clock.ms.Store(roomT0)
	dir := t.TempDir()
	keys := writeRoomKeys(t, dir)
	up := newUpstream(t)
	start := func(id string) *roomEdge {
		build := func(cfg *config.Edge, log *slog.Logger) (*Proxy, error) { return newProxy(cfg, log, clock, 0) }
		e := startEdgeWith(t, nil, nil, nil, build, func(cfg *config.Edge) {
			cfg.TrustedProxies = []string{"127.0.0.0/8"}
			cfg.WaitingRoomStateDir = t.TempDir() // unused: the state is in Consul
			cfg.Discovery.Consul = &config.Consul{Address: agent.Addr}
			cfg.WaitingRoomStore = config.WaitingRoomStore{Consul: true, EdgeID: id}
			cfg.WaitingRooms = []config.WaitingRoom{{Name: "final", Paths: []string{"/games/*/buy"},
				AdmitPerSecond: 10, KeyFile: keys, Refresh: config.Duration(time.Second)}}
		})
		e.p.Pool().Update([]balancer.Config{{Addr: up.addr, Weight: 1}})
		return &roomEdge{testEdge: e, up: up, clock: clock, dir: dir, keys: keys}
	}
	e1, e2 := start("edge-1"), start("edge-2")
	a := e1.visit(t, "GET", "/games/1/buy", "203.0.113.1", "", false)
	clock.ms.Add(1)
	b := e2.visit(t, "GET", "/games/1/buy", "203.0.113.2", "", false)
	if a.status != 200 || b.status != 200 || a.token == "" || b.token == "" || strings.Contains(a.body+b.body, "hello from") {
		t.Fatalf("arrivals: want waiting pages with tokens, got %d %q, %d %q", a.status, a.token, b.status, b.token)
	}
	// Past the hold (refresh 1 s + 1 s) and the settle time (2 s).
	clock.ms.Add(2_500)
	for _, e := range []*roomEdge{e1, e2} {
		rt := e.p.state.Load().rooms[0].rt
		deadline := time.After(60 * time.Second)
		for {
			ch := rt.coord.Changes()
			if rt.gate.Watermark().Ms > roomT0+1 {
				break
			}
			select {
			case <-ch:
			case <-deadline:
				t.Fatalf("watermark %v: the shared history never passed the visitors", rt.gate.Watermark())
			}
		}
	}
	// Each visitor's token admits on the other edge.
	for _, tc := range []struct {
		e          *roomEdge
		who, token string
	}{{e2, "203.0.113.1", a.token}, {e1, "203.0.113.2", b.token}} {
		if v := tc.e.visit(t, "GET", "/games/1/buy", tc.who, tc.token, false); v.status != 200 || !strings.Contains(v.body, "hello from") {
			t.Errorf("%s on the other edge: status %d, not admitted\n%s", tc.who, v.status, v.body)
		}
	}
	for i, e := range []*roomEdge{e1, e2} {
		if got := gaugeValue(t, e, "podium_edge_waitroom_coordination_up"); got != "1" {
			t.Errorf("edge %d: coordination_up %s, want 1", i+1, got)
		}
	}
}

// gaugeValue is the value of the room "final"'s gauge name, as text.
func gaugeValue(t *testing.T, e *roomEdge, name string) string {
	t.Helper()
	mfs, err := e.p.metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "room" && l.GetValue() == "final" {
					return fmt.Sprint(m.GetGauge().GetValue())
				}
			}
		}
	}
	return "absent"
}
