package waitroom

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// TestCoordinatorHeld: while a coordinated room is held (paused or closed
// by the admin API, on every edge through the shared control) the leader
// moves the watermark no further, and on release it admits at the rate
// from then on, not the backlog of the time held.
func TestCoordinatorHeld(t *testing.T) {
	m := newMulti(t, 2)
	live := m.edges
	for range 20 { // 4 s at 300 a second: the first 2 s settle
		m.step(60, live)
	}
	a0 := m.admittedAll(live[0])
	if a0 == 0 {
		t.Fatal("nothing admitted before the hold: the test would prove nothing")
	}
	for _, e := range live {
		e.coord.SetHeld(true)
	}
	for range 25 { // 5 s held
		m.step(0, live)
	}
	if a1 := m.admittedAll(live[0]); a1 != a0 {
		t.Fatalf("%d places admitted while the room was held", a1-a0)
	}
	for _, e := range live {
		e.coord.SetHeld(false)
	}
	t0 := m.clock.NowMs()
	for range 10 { // 2 s open again
		m.step(0, live)
	}
	m.checkRate("2 s after the hold", a0, m.admittedAll(live[0]), m.clock.NowMs()-t0)
}

// TestCoordinatorSharedControl: a control one edge saves reaches another
// edge's watcher; one that does not parse is ignored and the watch goes on.
func TestCoordinatorSharedControl(t *testing.T) {
	m := newMulti(t, 2)
	got := make(chan Control, 4)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.edges[1].coord.WatchControl(ctx, func(c Control) { got <- c }) }()
	t.Cleanup(func() { cancel(); <-done })
	next := func() Control {
		t.Helper()
		select {
		case c := <-got:
			return c
		case <-time.After(hangGuard):
			t.Fatalf("no control reached the other edge in %v", hangGuard)
			return Control{}
		}
	}
	want := Control{Status: "closed", Rate: 250, ConfigRate: 100}
	if err := m.edges[0].coord.SaveControl(ctx, want); err != nil {
		t.Fatal(err)
	}
	if c := next(); c != want {
		t.Fatalf("the other edge got %+v, want %+v", c, want)
	}
	kv := m.agent.Client().KV()
	for _, bad := range []string{`{"status":"sold"}`, `not json`, `{"status":"open","rate":-1}`} {
		if _, err := kv.Put(&api.KVPair{Key: m.edges[0].coord.controlKey(), Value: []byte(bad)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	want = Control{Status: "paused"}
	if err := m.edges[0].coord.SaveControl(ctx, want); err != nil {
		t.Fatal(err)
	}
	if c := next(); c != want {
		t.Fatalf("after three bad controls the other edge got %+v, want %+v (a bad one applied?)", c, want)
	}
}
