package waitroom

import (
	"context"
	"fmt"
	"math"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podium-edge/podium/discovery/consul/consultest"
)

// The tests of many edges run three coordinators ("edges") in one process
// against a real Consul agent, on one fake clock that the test moves in
// steps: at each step every edge publishes, the leader ticks, and the
// test waits (an event: the coordinators' changes channel) until every
// edge has adopted the leader's new watermark. Nothing waits on time but
// the hang guards.

const (
	multiRate   = 100.0 // places a second, over all edges
	multiStepMs = 200
	hangGuard   = 60 * time.Second
)

type multiEdge struct {
	id    string
	gate  *Gate
	coord *Coordinator
	stop  context.CancelFunc
	done  chan struct{}
	own   []Place    // the places issued on this edge
	idhs  [][16]byte // their identity hashes
}

type multi struct {
	t      *testing.T
	agent  *consultest.Agent
	clock  *fakeClock
	room   *Room
	edges  []*multiEdge
	places []Place // every place issued, in queue order
	next   int     // visitors so far
	// aloneFor is the coordinators' AloneFor; zero for the default.
	aloneFor time.Duration
}

func newMulti(t *testing.T, n int) *multi { return newMultiAlone(t, n, 0) }

func newMultiAlone(t *testing.T, n int, aloneFor time.Duration) *multi {
	m := &multi{t: t, agent: consultest.Start(t), clock: newFakeClock(opensMs), room: testRoom(t), aloneFor: aloneFor}
	for i := range n {
		m.edges = append(m.edges, m.start(fmt.Sprintf("edge-%d", i), 0))
	}
	return m
}

// start runs an edge's gate and coordinator; holdMs holds a restarted
// edge's gate as the proxy does.
func (m *multi) start(id string, holdMs int64) *multiEdge {
	m.t.Helper()
	gate := mustGate(m.t, GateConfig{Room: "final", Epoch: 1, OpensAtMs: opensMs, Rate: multiRate, HoldUntilMs: holdMs}, m.clock, &ConsulHistory{Client: m.agent.Client()})
	coord, err := NewCoordinator(CoordinatorConfig{Client: m.agent.Client(), EdgeID: id, PublishEvery: -1, TickEvery: -1, AloneFor: m.aloneFor}, gate)
	if err != nil {
		m.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &multiEdge{id: id, gate: gate, coord: coord, stop: cancel, done: make(chan struct{})}
	go func() { defer close(e.done); coord.Run(ctx) }()
	m.t.Cleanup(func() { e.close(m.t) })
	return e
}

// close stops an edge's coordinator and waits for it to release the lock.
func (e *multiEdge) close(t *testing.T) {
	e.stop()
	select {
	case <-e.done:
	case <-time.After(hangGuard):
		t.Fatalf("%s: coordinator still running %v after Close", e.id, hangGuard)
	}
}

// arrive places k new visitors at the clock's time, round-robin over the
// live edges.
func (m *multi) arrive(k int, live []*multiEdge) {
	now := m.clock.NowMs()
	for range k {
		id := fmt.Appendf(nil, "198.51.%d.%d", m.next/256, m.next%256)
		e := live[m.next%len(live)]
		m.next++
		idh := m.room.IdentityHash(id)
		p := e.gate.Join(idh, m.room.PlaceFor(id, now))
		e.own, e.idhs = append(e.own, p), append(e.idhs, idh)
		i, _ := slices.BinarySearchFunc(m.places, p, comparePlaces)
		m.places = slices.Insert(m.places, i, p)
	}
}

func comparePlaces(a, b Place) int {
	switch {
	case a.Before(b):
		return -1
	case b.Before(a):
		return 1
	}
	return 0
}

// leader waits until exactly one live edge leads and returns it.
func (m *multi) leader(live []*multiEdge) *multiEdge {
	m.t.Helper()
	deadline := time.After(hangGuard)
	for {
		var chs []<-chan struct{}
		var leaders []*multiEdge
		for _, e := range live {
			chs = append(chs, e.coord.Changes())
			if e.coord.Leader() {
				leaders = append(leaders, e)
			}
		}
		if len(leaders) == 1 {
			return leaders[0]
		}
		cases := []reflect.SelectCase{{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(deadline)}}
		for _, ch := range chs {
			cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ch)})
		}
		if i, _, _ := reflect.Select(cases); i == 0 {
			m.t.Fatalf("no single leader among %d edges after %v (%d lead)", len(live), hangGuard, len(leaders))
		}
	}
}

// step moves the clock by dtMs with arrivals visitors, runs one beat of
// every live edge, and waits until each has adopted the leader's
// watermark.
func (m *multi) step(arrivals int, live []*multiEdge) {
	m.t.Helper()
	ctx := context.Background()
	m.clock.ms.Add(multiStepMs)
	m.arrive(arrivals, live)
	for _, e := range live {
		if err := e.coord.Publish(ctx); err != nil {
			m.t.Fatalf("%s: %v", e.id, err)
		}
	}
	l := m.leader(live)
	if err := l.coord.Tick(ctx); err != nil {
		m.t.Fatalf("leader %s: %v", l.id, err)
	}
	want := l.gate.Watermark()
	for _, e := range live {
		if e != l {
			if err := e.coord.Tick(ctx); err != nil {
				m.t.Fatalf("%s: %v", e.id, err)
			}
		}
		m.waitWatermark(e, want)
	}
}

// waitWatermark waits until e has adopted watermark w.
func (m *multi) waitWatermark(e *multiEdge, w Place) {
	m.t.Helper()
	deadline := time.After(hangGuard)
	for {
		ch := e.coord.Changes()
		if got := e.gate.Watermark(); !got.Before(w) {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			m.t.Fatalf("%s: watermark %v, leader's %v, still after %v", e.id, e.gate.Watermark(), w, hangGuard)
		}
	}
}

// admittedAll counts the places e admits, failing the test unless they
// are the first places in queue order over every edge.
func (m *multi) admittedAll(e *multiEdge) int {
	m.t.Helper()
	return admitted(m.t, e.gate, m.places)
}

// checkRate fails unless the places admitted between two counts are the
// rate's over ms, within ±10%.
func (m *multi) checkRate(what string, from, to int, ms int64) {
	m.t.Helper()
	got := float64(to - from)
	want := multiRate * float64(ms) / 1000
	m.t.Logf("%s: %d admitted in %d ms, want %.0f ± 10%%", what, to-from, ms, want)
	if math.Abs(got-want) > 0.1*want {
		m.t.Errorf("%s: %v places admitted in %v ms, want %v ± 10%%", what, got, ms, want)
	}
}

// TestCoordinatedRate: three edges, visitors spread over them, one rate
// over all of them, in arrival order across edges; the leader closed, and
// another takes over with the rate unchanged; an edge restarted finds the
// history and its visitors still counted.
func TestCoordinatedRate(t *testing.T) {
	m := newMulti(t, 3)
	live := m.edges
	// 300 visitors a second for 10 s (3000), three times the rate.
	for range 50 {
		m.step(60, live)
	}
	for _, e := range live {
		if got, want := e.gate.Queued(), float64(len(m.places)-m.admittedAll(e)); math.Abs(got-want) > 0.1*want+2*60 {
			t.Errorf("%s: queue %v, want about %v (every edge's, not its own %d)", e.id, got, want, len(e.own))
		}
	}
	// Admission has run for 8 s (the first 2 s settle).
	t0, a0 := m.clock.NowMs(), m.admittedAll(live[0])
	m.checkRate("first 8 s", 0, a0, 8000)
	for _, e := range live[1:] {
		if got := m.admittedAll(e); got != a0 {
			t.Errorf("%s admits %d places, %s %d: the edges disagree", e.id, got, live[0].id, a0)
		}
	}

	// The leader closes: another takes over, and the rate holds.
	old := m.leader(live)
	old.close(t)
	live = slices.DeleteFunc(slices.Clone(live), func(e *multiEdge) bool { return e == old })
	for range 25 {
		m.step(0, live)
	}
	if m.leader(live) == old {
		t.Fatal("the closed edge still leads")
	}
	t1, a1 := m.clock.NowMs(), m.admittedAll(live[0])
	m.checkRate("5 s around the handover", a0, a1, t1-t0)

	// The closed edge restarts: it knows the history at once (an
	// admitted place of its own is admitted), and while it is held its
	// key keeps its visitors counted, until their pages come back and
	// join again (as proxy.waitingRoom does with a waiting token).
	re := m.start(old.id, m.clock.NowMs()+3000)
	if got, want := m.admittedAll(re), a1; got != want {
		t.Errorf("restarted edge admits %d places, want the shared history's %d", got, want)
	}
	live = append(live, re)
	for i := range 25 {
		if i == 5 {
			for j, p := range old.own {
				if s, _ := re.gate.Check(p); s == Waiting {
					re.gate.Join(old.idhs[j], p)
				}
			}
		}
		if i < 10 {
			// New visitors on the held edge are counted too.
			m.arrive(10, []*multiEdge{re})
		}
		m.step(0, live)
	}
	t2, a2 := m.clock.NowMs(), m.admittedAll(re)
	m.checkRate("5 s after the restart", a1, a2, t2-t1)
}

// ownAdmitted counts the places of e's own visitors that e admits.
func ownAdmitted(e *multiEdge) int {
	n := 0
	for _, p := range e.own {
		if s, _ := e.gate.Check(p); s != Waiting {
			n++
		}
	}
	return n
}

// TestCoordinatorOutage: with the agent stopped, each edge hears no
// leader, and after StaleAfter admits alone at a third of the rate (three
// edges were publishing), so the total stays within the rate; once the
// agent is back a leader is elected and the rate is one again.
func TestCoordinatorOutage(t *testing.T) {
	const aloneFor = 12 * time.Second
	m := newMultiAlone(t, 3, aloneFor)
	for range 50 { // 3000 visitors, 1000 on each edge
		m.step(60, m.edges)
	}
	for range 5 {
		m.step(0, m.edges)
	}
	if n := m.edges[0].coord.Edges(); n != 3 {
		t.Fatalf("edges seen publishing: %d, want 3", n)
	}
	m.agent.Stop()
	ctx := context.Background()
	outageStep := func() {
		m.clock.ms.Add(multiStepMs)
		for _, e := range m.edges {
			if err := e.coord.Publish(ctx); err == nil {
				t.Fatalf("%s: publish with the agent stopped: no error", e.id)
			}
			if err := e.coord.Tick(ctx); err != nil {
				t.Fatalf("%s: %v", e.id, err)
			}
		}
	}
	// No new checkpoint for StaleAfter: every edge goes alone.
	for i := 0; m.edges[0].coord.Up() || m.edges[1].coord.Up() || m.edges[2].coord.Up(); i++ {
		if i > int(DefaultStaleAfter.Milliseconds()/multiStepMs)+1 {
			t.Fatalf("edges still up %d steps into the outage", i)
		}
		outageStep()
	}
	t0 := m.clock.NowMs()
	var before []int
	for _, e := range m.edges {
		before = append(before, ownAdmitted(e))
	}
	for range 50 {
		outageStep()
	}
	total := 0
	for i, e := range m.edges {
		total += ownAdmitted(e) - before[i]
		// Alone, each edge still admits its own visitors in order.
		own := slices.SortedFunc(slices.Values(e.own), comparePlaces)
		admitted(t, e.gate, own)
	}
	m.checkRate("10 s alone, all edges", 0, total, m.clock.NowMs()-t0)

	// Past AloneFor the leader (were there one beside them) would count
	// them gone and give their share away: they stop admitting.
	for m.clock.NowMs()-t0 < aloneFor.Milliseconds() {
		outageStep()
	}
	before = before[:0]
	for _, e := range m.edges {
		before = append(before, ownAdmitted(e))
	}
	for range 10 {
		outageStep()
	}
	for i, e := range m.edges {
		if n := ownAdmitted(e) - before[i]; n != 0 {
			t.Errorf("%s admitted %d places alone, after AloneFor", e.id, n)
		}
	}

	// The agent is back: a leader again, every edge follows it, and the
	// rate is one over all of them.
	m.agent.Start()
	for range 5 {
		m.step(0, m.edges)
	}
	for _, e := range m.edges {
		if !e.coord.Up() {
			t.Errorf("%s: not following the leader after the agent came back", e.id)
		}
	}
	t1 := m.clock.NowMs()
	var a1 []int
	for _, e := range m.edges {
		a1 = append(a1, ownAdmitted(e))
	}
	for range 25 {
		m.step(0, m.edges)
	}
	total = 0
	for i, e := range m.edges {
		total += ownAdmitted(e) - a1[i]
	}
	m.checkRate("5 s after the agent came back", 0, total, m.clock.NowMs()-t1)
}

// TestCoordinatorSettle: the settle time must cover a count's way to the
// leader (a publish interval, a leader tick) and a margin for skew and
// round trips; the default does, with the default intervals.
func TestCoordinatorSettle(t *testing.T) {
	client, err := api.NewClient(&api.Config{Address: "127.0.0.1:1"}) // never dialled
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		settleMs int64
		cfg      CoordinatorConfig
		ok       bool
	}{
		{0, CoordinatorConfig{}, true}, // DefaultSettleMs, DefaultPublishEvery, DefaultCoordTick
		{950, CoordinatorConfig{}, true},
		{949, CoordinatorConfig{}, false},
		{1500, CoordinatorConfig{PublishEvery: time.Second}, false},
	} {
		g := mustGate(t, GateConfig{Room: "r", Rate: 1, SettleMs: tc.settleMs}, newFakeClock(0), &MemStore{})
		tc.cfg.Client, tc.cfg.EdgeID = client, "e"
		_, err := NewCoordinator(tc.cfg, g)
		if (err == nil) != tc.ok {
			t.Errorf("settle %d ms, %+v: error %v, want ok %v", tc.settleMs, tc.cfg, err, tc.ok)
		}
	}
}

// TestCoordinatorSessionLost: the leader's session destroyed (as Consul
// does when its TTL runs out) ends its leadership; a leader is elected
// again and the rate holds. A write under the lost session is refused by
// the transaction's session check, so an edge that still believes it
// leads cannot move the shared history.
func TestCoordinatorSessionLost(t *testing.T) {
	m := newMulti(t, 2)
	for range 25 {
		m.step(60, m.edges)
	}
	t0, a0 := m.clock.NowMs(), m.admittedAll(m.edges[0])
	old := m.leader(m.edges)
	sid := *old.coord.session.Load()
	ch := old.coord.Changes()
	if _, err := m.agent.Client().Session().Destroy(sid, nil); err != nil {
		t.Fatal(err)
	}
	// The old leader's lock monitor sees the session gone (an event).
	for old.coord.session.Load() != nil && *old.coord.session.Load() == sid {
		select {
		case <-ch:
			ch = old.coord.Changes()
		case <-time.After(hangGuard):
			t.Fatalf("%s still leads with destroyed session %s after %v", old.id, sid, hangGuard)
		}
	}
	// A stale leader's write is refused.
	other := m.edges[0]
	if other == old {
		other = m.edges[1]
	}
	m.clock.ms.Add(multiStepMs)
	hist, _, err := m.agent.Client().KV().Get(other.coord.historyKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = other.coord.leaderTick(context.Background(), sid)
	after, _, _ := m.agent.Client().KV().Get(other.coord.historyKey, nil)
	if err == nil || after.ModifyIndex != hist.ModifyIndex {
		t.Fatalf("a write under a destroyed session: error %v, history index %d -> %d; want refused, unchanged", err, hist.ModifyIndex, after.ModifyIndex)
	}
	for range 25 {
		m.step(0, m.edges)
	}
	m.checkRate("5 s around the lost session", a0, m.admittedAll(m.edges[0]), m.clock.NowMs()-t0)
}

// TestCoordinatorHeldEdgeCounts: an edge that joins a running room is
// held after its start (GateConfig.HoldUntilMs), and the visitors it
// places meanwhile are published and counted at once: the watermark does
// not pass them for nothing, over the rate, while the queue is short.
func TestCoordinatorHeldEdgeCounts(t *testing.T) {
	m := newMulti(t, 1)
	for range 5 {
		m.step(0, m.edges)
	}
	held := m.start("edge-new", m.clock.NowMs()+3000)
	live := append(m.edges, held)
	t0 := m.clock.NowMs()
	for i := range 25 {
		if i < 15 {
			m.arrive(40, []*multiEdge{held}) // 200 a second, twice the rate
		}
		m.step(0, live)
	}
	// Nobody waited at t0, and a place waits the settle time: the rate
	// bounds what is admitted after it.
	got, limit := m.admittedAll(m.edges[0]), multiRate*float64(m.clock.NowMs()-t0-DefaultSettleMs)/1000
	t.Logf("%d of %d admitted in %d ms at %v/s", got, len(m.places), m.clock.NowMs()-t0, multiRate)
	if float64(got) > 1.1*limit {
		t.Errorf("%d places admitted in %d ms, more than the rate's %v after the settle time (+10%%): the held edge's visitors were not counted", got, m.clock.NowMs()-t0, limit)
	}
}

// TestCoordinatorPartition: an edge that stopped publishing may be cut
// off from Consul and admitting its share alone, so the leader keeps that
// share back; once it has been silent for StaleAfter + AloneFor (when it
// stops admitting alone), or has closed, the share comes back.
func TestCoordinatorPartition(t *testing.T) {
	m := newMulti(t, 2)
	kv := m.agent.Client().KV()
	cut := m.edges[0].coord.arrivals + "edge-cut"
	stamp := func(ms int64) {
		t.Helper()
		if _, err := kv.Put(&api.KVPair{Key: cut, Value: appendArrivals(nil, ms, nil)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	for range 50 { // 3000 visitors: a queue for all three cases
		m.step(60, m.edges)
	}
	for _, tc := range []struct {
		name  string
		stamp func() int64
		share float64
	}{
		{"silent 5 s: alone", func() int64 { return m.clock.NowMs() - 5_000 }, 2.0 / 3},
		{"silent past AloneFor: gone", func() int64 { return m.clock.NowMs() - (DefaultStaleAfter + DefaultAloneFor).Milliseconds() - 1 }, 1},
		{"closed", func() int64 { return 0 }, 1},
	} {
		stamp(tc.stamp())
		t0, a0 := m.clock.NowMs(), m.admittedAll(m.edges[0])
		for range 25 {
			m.step(0, m.edges)
		}
		got, want := float64(m.admittedAll(m.edges[0])-a0), multiRate*tc.share*float64(m.clock.NowMs()-t0)/1000
		t.Logf("%s: %v admitted, want %.0f ± 10%%", tc.name, got, want)
		if math.Abs(got-want) > 0.1*want {
			t.Errorf("%s: %v places admitted in %d ms, want %.0f ± 10%%", tc.name, got, m.clock.NowMs()-t0, want)
		}
	}
}

// TestCoordinatedHistoryBounded: the shared history in Consul holds the
// claim window and a minute of checkpoints, and while nobody is passed,
// one a second: not one each leader tick (5 a second), which the
// followers downloaded whole at every write (review 18, 10).
func TestCoordinatedHistoryBounded(t *testing.T) {
	agent := consultest.Start(t)
	clock := newFakeClock(opensMs)
	room := testRoom(t)
	const claimMs = 10_000
	gate := mustGate(t, GateConfig{Room: "final", Epoch: 1, OpensAtMs: opensMs, Rate: multiRate, ClaimWindowMs: claimMs}, clock, &ConsulHistory{Client: agent.Client()})
	coord, err := NewCoordinator(CoordinatorConfig{Client: agent.Client(), EdgeID: "edge-0", PublishEvery: -1, TickEvery: -1}, gate)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); coord.Run(ctx) }()
	defer func() { cancel(); <-done }()
	deadline := time.After(hangGuard)
	for !coord.Leader() {
		select {
		case <-coord.Changes():
		case <-deadline:
			t.Fatalf("no leader after %v", hangGuard)
		}
	}
	var ps []Place
	const steps = (claimMs + 60_000 + 30_000) / multiStepMs
	for i := range steps {
		clock.ms.Add(multiStepMs)
		if i < 100 { // visitors for the first 20 s, then nobody
			id := fmt.Appendf(nil, "198.51.100.%d", i)
			ps = append(ps, gate.Join(room.IdentityHash(id), room.PlaceFor(id, clock.NowMs())))
		}
		if err := coord.Publish(ctx); err != nil {
			t.Fatal(err)
		}
		if err := coord.Tick(ctx); err != nil {
			t.Fatal(err)
		}
	}
	pair, _, err := agent.Client().KV().Get(coord.historyKey, nil)
	if err != nil || pair == nil {
		t.Fatalf("reading the shared history: %v, %v", pair, err)
	}
	_, h, err := parseHistory(pair.Value)
	if err != nil {
		t.Fatal(err)
	}
	// The last 70 s were idle: a checkpoint a second, and the floor.
	if limit := (claimMs+60_000)/historyEveryMs + 5; len(h) > limit {
		t.Errorf("the shared history holds %d checkpoints, want at most %d", len(h), limit)
	}
	if s, _ := gate.Check(ps[len(ps)-1]); s != Spent {
		t.Errorf("the last visitor, passed over a minute ago, is %v, want spent", s)
	}
}

// TestCoordinatedMaxActive: with max_active's free places set on each of
// two edges (5 each), the leader passes at most its own 5 times the two
// live edges, however long it ticks at 100 a second with 60 waiting
// (review 18, 6); the follower, hearing the leader's heartbeat, does not
// take the stuck watermark for a dead leader.
func TestCoordinatedMaxActive(t *testing.T) {
	m := newMulti(t, 2)
	for _, e := range m.edges {
		e.gate.SetFree(5)
	}
	for range 60 { // one a millisecond: whole places pass, not shares of one
		m.clock.ms.Add(1)
		m.arrive(1, m.edges)
	}
	for range 30 { // 6 s: past the settle time, 600 places of budget
		m.step(0, m.edges)
	}
	l := m.leader(m.edges)
	if n := m.admittedAll(l); n != 10 {
		t.Errorf("%d admitted, want 10 (5 free on each of 2 edges)", n)
	}
	// Blocked for over StaleAfter, the leader's watermark has not moved,
	// but it wrote its history (a heartbeat): nobody admits alone.
	for _, e := range m.edges {
		if !e.coord.Up() {
			t.Errorf("%s went alone while the leader was blocked by max_active", e.id)
		}
	}
}
