package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"math"
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
	_, e1, e2 := startConsulRoomEdges(t)
	clock := e1.clock
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

// startConsulRoomEdges starts a Consul agent and two edges ("edge-1",
// "edge-2") whose room "final" it coordinates, on one fake clock and one
// upstream.
func startConsulRoomEdges(t *testing.T) (agent *consultest.Agent, e1, e2 *roomEdge) {
	t.Helper()
	agent = consultest.Start(t)
	clock := &roomClock{}
	clock.ms.Store(roomT0)
	dir := t.TempDir()
	keys := writeRoomKeys(t, dir)
	up := newUpstream(t)
	return agent, startConsulRoomEdge(t, agent, clock, dir, keys, up, "edge-1"), startConsulRoomEdge(t, agent, clock, dir, keys, up, "edge-2")
}

// startConsulRoomEdge starts an edge whose room "final" (10/s) is
// coordinated through agent, as edge id.
func startConsulRoomEdge(t *testing.T, agent *consultest.Agent, clock *roomClock, dir, keys string, up *testUpstream, id string) *roomEdge {
	t.Helper()
	build := func(cfg *config.Edge, log *slog.Logger) (*Proxy, error) { return newProxy(cfg, log, clock, 0) }
	e := startEdgeWith(t, nil, nil, nil, build, func(cfg *config.Edge) {
		cfg.TrustedProxies = []string{"127.0.0.0/8"}
		cfg.WaitingRoomStateDir = t.TempDir() // the admin controls; the history is in Consul
		cfg.Discovery.Consul = &config.Consul{Address: agent.Addr}
		cfg.WaitingRoomStore = config.WaitingRoomStore{Consul: true, EdgeID: id}
		cfg.WaitingRooms = []config.WaitingRoom{{Name: "final", Paths: []string{"/games/*/buy"},
			AdmitPerSecond: 10, KeyFile: keys, Refresh: config.Duration(time.Second)}}
	})
	e.p.Pool().Update([]balancer.Config{{Addr: up.addr, Weight: 1}})
	return &roomEdge{testEdge: e, up: up, clock: clock, dir: dir, keys: keys}
}

// TestWaitingRoomConsulAlone: with the agent stopped, an edge's room
// admits alone at its share of the rate (10/s over two edges: 5/s),
// while the edge's own ticker runs beside the coordinator (it must leave
// a coordinated gate alone: holding it every tick would leave the
// coordinator no budget).
func TestWaitingRoomConsulAlone(t *testing.T) {
	agent, e1, e2 := startConsulRoomEdges(t)
	clock := e1.clock
	rt1, rt2 := e1.p.state.Load().rooms[0].rt, e2.p.state.Load().rooms[0].rt
	ctx := context.Background()
	for _, rt := range []*roomRuntime{rt2, rt1} { // both publish: two edges share the rate
		if err := rt.coord.Publish(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 60 {
		e1.visit(t, "GET", "/games/1/buy", fmt.Sprintf("198.51.100.%d", i+1), "", false)
	}
	agent.Stop()
	// Read once the agent is down: no later publish can change it, and
	// the ones of the edges' own loops that started before edge-2's
	// first are long over.
	if n := rt1.coord.Edges(); n != 2 {
		t.Fatalf("edges seen publishing: %d, want 2", n)
	}
	step := func() {
		clock.ms.Add(200)
		e1.p.tickRooms() // the edge's own ticker, four times a coordinator tick here
		e1.p.tickRooms()
		_ = rt1.coord.Tick(ctx)
	}
	for i := 0; rt1.coord.Up(); i++ {
		if i > 50 {
			t.Fatal("still following a leader 10 s into the outage")
		}
		step()
	}
	p0, t0 := rt1.gate.Passed(), clock.NowMs()
	for range 25 {
		step()
	}
	got, want := rt1.gate.Passed()-p0, 10.0/2*float64(clock.NowMs()-t0)/1000
	t.Logf("alone: %.1f places passed in %d ms, want %.0f", got, clock.NowMs()-t0, want)
	if math.Abs(got-want) > 0.1*want+1 {
		t.Errorf("alone: %.1f places passed in %d ms, want %.0f (half of 10/s) ± 10%%", got, clock.NowMs()-t0, want)
	}
	if v := gaugeValue(t, e1, "podium_edge_waitroom_coordination_up"); v != "0" {
		t.Errorf("coordination_up %s while alone, want 0", v)
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
