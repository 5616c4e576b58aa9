package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podium-edge/podium/waitroom"
)

const msNs = int64(time.Millisecond)

// visitorAt is a visitor whose first request was sent at sentMs and
// answered 1 ms later, placed at sentMs with tie-break tb.
func visitorAt(sentMs int64, tb uint64) visitorRecord {
	return visitorRecord{FirstSent: sentMs * msNs, FirstRecv: (sentMs + 1) * msNs, Place: waitroom.Place{Ms: sentMs, TB: tb}, PlaceOK: true}
}

func TestCheckOrder(t *testing.T) {
	// a arrives at 1000 ms, b at 1010 ms: a clearly first.
	inOrder := func() []visitorRecord {
		a, b := visitorAt(1000, 5), visitorAt(1010, 1)
		a.LastWaitSent, a.AdmittedRecv, a.PassedAfter, a.PassedAt = 3000*msNs, 4000*msNs, 3500*msNs, 3600*msNs
		b.LastWaitSent, b.AdmittedRecv, b.PassedAfter, b.PassedAt = 3100*msNs, 4100*msNs, 3500*msNs, 3600*msNs
		return []visitorRecord{a, b}
	}
	tests := []struct {
		name   string
		mutate func(vs []visitorRecord)
		want   OrderCheck
	}{
		{"in order", func([]visitorRecord) {}, OrderCheck{}},
		{"later arrival admitted while the earlier still waits", func(vs []visitorRecord) {
			vs[0].LastWaitSent = 4200 * msNs // a told to wait after b's 2xx
			vs[0].AdmittedRecv = 5000 * msNs
		}, OrderCheck{ByArrival: 1, ByPlace: 1}},
		{"later arrival passed in an earlier step", func(vs []visitorRecord) {
			vs[1].PassedAfter, vs[1].PassedAt = 3400*msNs, 3500*msNs
		}, OrderCheck{ByStep: 1}},
		{"earlier arrival never passed", func(vs []visitorRecord) {
			vs[0].PassedAt, vs[0].PassedAfter, vs[0].AdmittedRecv = 0, 0, 0
		}, OrderCheck{ByStep: 1}},
		{"arrivals within the granularity are not ordered", func(vs []visitorRecord) {
			// b sent 0.5 ms after a's answer: the same millisecond may hold
			// both, and the hash breaks the tie the other way.
			vs[1].FirstSent, vs[1].FirstRecv = vs[0].FirstRecv+msNs/2, vs[0].FirstRecv+2*msNs
			vs[1].Place = waitroom.Place{Ms: 1001, TB: 1}
			vs[0].Place = waitroom.Place{Ms: 1001, TB: 5}
			vs[0].LastWaitSent = 4200 * msNs
			vs[0].PassedAfter, vs[0].PassedAt = 3600*msNs, 3700*msNs
			vs[0].AdmittedRecv = 5000 * msNs
		}, OrderCheck{}},
		{"earlier place told to wait after a later one got in", func(vs []visitorRecord) {
			// Arrival within the granularity, so only the place order says
			// a was first.
			vs[1].FirstSent, vs[1].FirstRecv = vs[0].FirstRecv+msNs/2, vs[0].FirstRecv+2*msNs
			vs[1].Place = waitroom.Place{Ms: 1001, TB: 9}
			vs[0].Place = waitroom.Place{Ms: 1001, TB: 5}
			vs[0].LastWaitSent = 4200 * msNs
			vs[0].AdmittedRecv = 5000 * msNs
		}, OrderCheck{ByPlace: 1}},
		{"let in before the watermark passed", func(vs []visitorRecord) {
			vs[1].AdmittedRecv = 3400 * msNs
			vs[0].LastWaitSent = 3000 * msNs
		}, OrderCheck{AdmittedBeforePassed: 1}},
		{"place stamped outside the round trip", func(vs []visitorRecord) {
			vs[1].Place.Ms = 999 // before b's request was sent
			vs[1].LastWaitSent = 2000 * msNs
		}, OrderCheck{PlaceOutsideRoundTrip: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			vs := inOrder()
			tc.mutate(vs)
			got := checkOrder(vs, time.Millisecond)
			got.Example, got.Compared, got.Granularity = "", 0, 0
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// The order check holds at the bench's scale (20,000 visitors: a sweep,
// not pairs) and still finds one visitor kept out among them.
func TestCheckOrderScales(t *testing.T) {
	vs := make([]visitorRecord, 20000)
	for i := range vs {
		v := visitorAt(int64(1+i/2), uint64(i))
		v.LastWaitSent = int64(10_000+i/2) * msNs
		v.PassedAfter, v.PassedAt = int64(10_000+i/2)*msNs+1, int64(10_000+i/2)*msNs+2
		v.AdmittedRecv = int64(20_000+i/2) * msNs
		vs[i] = v
	}
	if got := checkOrder(vs, time.Millisecond); got.ByArrival+got.ByPlace+got.ByStep+got.AdmittedBeforePassed+got.PlaceOutsideRoundTrip != 0 || got.Compared != len(vs) {
		t.Errorf("in-order visitors: %+v", got)
	}
	vs[100].LastWaitSent = vs[19_999].AdmittedRecv + 1 // the 101st told to wait after the last got in
	if got := checkOrder(vs, time.Millisecond); got.ByArrival == 0 || got.ByPlace == 0 {
		t.Errorf("one early visitor kept out: %+v", got)
	}
}

func TestRates(t *testing.T) {
	origin := int64(1_000) * 1e9
	// 500 admissions a second for 40 s, evenly.
	var adm []int64
	for i := range 20_000 {
		adm = append(adm, origin+int64(i)*2*msNs)
	}
	start, end, ok := steadyWindow(adm, 5*time.Second)
	if !ok || start != origin+5e9 || end != origin+int64(19_999)*2*msNs-5e9 {
		t.Fatalf("steadyWindow = %d, %d, %v", start-origin, end-origin, ok)
	}
	w := clientRate(adm, start, end, origin)
	if !withinPercent(w.Rate, 500, 1) || w.StartS != 5 {
		t.Errorf("even admissions: %+v, want 500/s from 5 s", w)
	}
	// One admission in eight missing: 437.5/s, more than 10% short.
	var short []int64
	for i, a := range adm {
		if i%8 != 0 {
			short = append(short, a)
		}
	}
	if w := clientRate(short, start, end, origin); withinPercent(w.Rate, 500, 10) {
		t.Errorf("one admission in eight missing went unnoticed: %+v", w)
	}
	if _, _, ok := steadyWindow(adm[:10], 5*time.Second); ok {
		t.Error("a window shorter than its margins is empty")
	}
	// The counter scraped each second, rising 500 a second.
	var sc []scrape
	for s := range 40 {
		sc = append(sc, scrape{At: origin + int64(s)*1e9 + 3e8, Admitted: float64(500 * s)})
	}
	if w := counterRate(sc, start, end, origin); !withinPercent(w.Rate, 500, 0.01) || w.StartS != 5.3 || w.EndS != 34.3 {
		t.Errorf("counterRate = %+v", w)
	}
	sc[20].Admitted += 3000 // one scrape off: the window's last is not it
	sc[34].Admitted += 3000
	if w := counterRate(sc, start, end, origin); withinPercent(w.Rate, 500, 10) {
		t.Errorf("a counter 3000 high at the window's end: %+v, want far from 500", w)
	}
	// The watermark's pass times.
	vs := []visitorRecord{visitorAt(10, 1), visitorAt(20, 1), visitorAt(30, 1), {PlaceOK: false}}
	samples := []watermarkSample{{At: 100, W: waitroom.Place{Ms: 5}}, {At: 200, W: waitroom.Place{Ms: 20, TB: 1}}, {At: 300, W: waitroom.Place{Ms: 20, TB: 2}}}
	setPassTimes(vs, samples)
	if vs[0].PassedAt != 200 || vs[0].PassedAfter != 100 || vs[1].PassedAt != 300 || vs[2].PassedAt != 0 || vs[3].PassedAt != 0 {
		t.Errorf("pass times: %+v", vs)
	}
}

// goodLoad is a load figure that meets every requirement.
func goodLoad() *WaitroomLoad {
	w := RateWindow{Rate: 500, Count: 15000, StartS: 10, EndS: 40}
	return &WaitroomLoad{Visitors: 20000, Admitted: 20000, AdmitPerSecond: 500, PassRate: w, QueueDrainRate: w, ClientRate: w, EdgeRate: w,
		Order: OrderCheck{Granularity: time.Millisecond},
		Attacks: map[string]AttackFigure{
			attackForged: {Sent: 10, Answered: 10, Waited: 10}, attackCopied: {Sent: 10, Answered: 10, Waited: 10}, attackReplayed: {Sent: 10, Answered: 10, Waited: 10}},
		RefusedDelta: map[string]float64{"bad_mac": 10, "copied": 20}}
}

func TestLoadRequirements(t *testing.T) {
	for _, r := range loadRequirements(goodLoad()) {
		if !r.OK {
			t.Errorf("good load: %s failed: %s", r.Name, r.Got)
		}
	}
	tests := []struct {
		name   string
		fails  string
		mutate func(l *WaitroomLoad)
	}{
		{"a visitor never admitted", "visitors admitted", func(l *WaitroomLoad) { l.Admitted-- }},
		{"rate 11% low", "watermark", func(l *WaitroomLoad) { l.PassRate.Rate = 444 }},
		{"queue falls 11% fast", "queue_length", func(l *WaitroomLoad) { l.QueueDrainRate.Rate = 556 }},
		{"queue never measured", "queue_length", func(l *WaitroomLoad) { l.QueueDrainRate = RateWindow{Rate: math.NaN()} }},
		{"order by arrival", "by arrival", func(l *WaitroomLoad) { l.Order.ByArrival = 1 }},
		{"order by step", "by admission step", func(l *WaitroomLoad) { l.Order.ByStep = 1 }},
		{"order by place", "by place", func(l *WaitroomLoad) { l.Order.ByPlace = 1 }},
		{"let in early", "before the watermark", func(l *WaitroomLoad) { l.Order.AdmittedBeforePassed = 1 }},
		{"a replay admitted", "tokens admitted", func(l *WaitroomLoad) {
			a := l.Attacks[attackReplayed]
			a.Admitted, a.Waited = 1, 9
			l.Attacks[attackReplayed] = a
		}},
		{"no forgery sent", "attacks sent", func(l *WaitroomLoad) {
			l.Attacks[attackForged] = AttackFigure{}
			l.RefusedDelta["bad_mac"] = 0
		}},
		{"a forgery not counted", "refused-token metric", func(l *WaitroomLoad) { l.RefusedDelta["bad_mac"] = 9 }},
		{"a visitor's token refused", "refused-token metric", func(l *WaitroomLoad) { l.RefusedDelta["expired"] = 1 }},
		{"a 502", "5xx", func(l *WaitroomLoad) { l.Status5xx = 1 }},
		{"a reset", "client errors", func(l *WaitroomLoad) { l.ClientErrors = 1 }},
		{"a 403", "unexpected", func(l *WaitroomLoad) { l.Unexpected = 1 }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := goodLoad()
			tc.mutate(l)
			rep := WaitroomReport{Requirements: loadRequirements(l)}
			var failed []string
			for _, r := range rep.Failed() {
				failed = append(failed, r.Name)
			}
			if len(failed) != 1 || !strings.Contains(failed[0], tc.fails) {
				t.Errorf("failed %q, want exactly the one naming %q", failed, tc.fails)
			}
		})
	}
	// The 2xx collected come in waves: shown against the bound, never
	// failing the run.
	l := goodLoad()
	l.ClientRate.Rate, l.EdgeRate.Rate = 556, math.NaN()
	rep := WaitroomReport{Requirements: loadRequirements(l)}
	if f := rep.Failed(); len(f) != 0 {
		t.Errorf("claims outside the bound failed the run: %+v", f)
	}
	outside := 0
	for _, r := range rep.Requirements {
		if r.Info && !r.OK {
			outside++
		}
	}
	if outside != 2 {
		t.Errorf("%d info lines outside the bound, want 2 (clients' and the edge counter's)", outside)
	}
}

func TestCostRequirements(t *testing.T) {
	tests := []struct {
		name       string
		ratio      float64
		unexpected int64
		ok         bool
	}{
		{"within", 1.4, 0, true},
		{"at the bound", 1.5, 0, true},
		{"over", 1.51, 0, false},
		{"not measured", 0, 0, false},
		{"an unexpected answer", 1.0, 1, false},
	}
	for _, tc := range tests {
		c := &WaitroomCost{MaxRatio: 1.5, Ratio: tc.ratio, Rounds: 1, Listing: []CostRound{{}}, Waiting: []CostRound{{Unexpected: tc.unexpected}}}
		ok := true
		for _, r := range costRequirements(c) {
			ok = ok && r.OK
		}
		if ok != tc.ok {
			t.Errorf("%s: ok = %v, want %v", tc.name, ok, tc.ok)
		}
	}
	if got := median([]float64{30, 10, 20, 40}); got != 30 {
		t.Errorf("median of 4 = %v, want the upper middle as medianRound", got)
	}
}

func TestWaitroomMarkdownShowsFailures(t *testing.T) {
	l := goodLoad()
	l.Status5xx = 3
	rep := &WaitroomReport{Load: l, Requirements: loadRequirements(l),
		Cost: &WaitroomCost{Rounds: 1, Ratio: 1.2, Listing: []CostRound{{MicrosPerRequest: 10}}, Waiting: []CostRound{{MicrosPerRequest: 12}}, RoundRatios: []float64{1.2}}}
	var b bytes.Buffer
	WriteWaitroomMarkdown(&b, rep)
	for _, want := range []string{"1 requirement(s) FAILED", "| responses 5xx | 0 | 3 | **FAIL** |", "| median | 0.0 | 0.0 | **1.20**"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, b.String())
		}
	}
}

// The forgeries the attackers send are refused for their MAC, not as
// malformed: they are tokens an edge without the MAC check would take.
func TestForgeTokenIsRefusedForItsMAC(t *testing.T) {
	keys, err := waitroom.ParseKeys("k", []byte("id "+strings.Repeat("ab", 32)+"\nsign 1 "+strings.Repeat("cd", 32)+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	room, err := waitroom.NewRoom(roomName, 1, math.MinInt64/2, keys)
	if err != nil {
		t.Fatal(err)
	}
	id := identity(visitorAddr([4]byte{203, 0, 113, 0}, 0))
	own := room.AppendToken(nil, room.NewPlace(id, 5_000, 1e15))
	if _, reason := room.Verify(own, id, 6_000); reason != waitroom.Valid {
		t.Fatalf("the forger's own token: %v", reason)
	}
	for n := range 2 {
		if _, reason := room.Verify(forgeToken(own, n, 1_000), id, 6_000); reason != waitroom.BadMAC {
			t.Errorf("forgery %d: %v, want bad_mac", n, reason)
		}
	}
	if string(forgeToken(own, 1, 5_000)) != string(own) {
		t.Error("moving the place to where it is changed the token: forgeToken writes the wrong bytes")
	}
}

// The whole bench at a small scale, against a real edge built from this
// tree: it runs, writes its report, and the figures that do not depend on
// the machine's quiet meet their requirements.
func TestWaitroomBenchSmall(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs an edge")
	}
	if _, err := exec.LookPath("taskset"); err != nil {
		t.Fatalf("taskset not installed: %v", err)
	}
	dir := t.TempDir()
	podium := filepath.Join(dir, "podium")
	if out, err := exec.Command("go", "build", "-o", podium, "../cmd/podium").CombinedOutput(); err != nil {
		t.Fatalf("building podium: %v\n%s", err, out)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	rep, err := Waitroom(ctx, WaitroomOptions{
		Podium: podium, Exe: []string{self, "bench"}, Env: []string{childEnv + "=1"}, ResultsDir: dir,
		Visitors: 500, Arrival: 2 * time.Second, AdmitPerSecond: 100, Refresh: time.Second, Connections: 64,
		CostRate: 300, CostDuration: time.Second, CostRounds: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "waitroom.json"))
	if err != nil {
		t.Fatal(err)
	}
	var onDisk WaitroomReport
	if err := json.Unmarshal(data, &onDisk); err != nil || onDisk.Load == nil || onDisk.Cost == nil {
		t.Fatalf("waitroom.json: %v", err)
	}
	if md, err := os.ReadFile(filepath.Join(dir, "waitroom.md")); err != nil || !bytes.Contains(md, []byte("## Cost")) {
		t.Errorf("waitroom.md: %v", err)
	}
	if csv, err := os.ReadFile(filepath.Join(dir, "waitroom", "visitors.csv")); err != nil || bytes.Count(csv, []byte("\n")) != 501 {
		t.Errorf("visitors.csv: %v, want a header and 500 lines", err)
	}
	// The queue gauge is scraped once a second, too coarse for the few
	// seconds this queue lasts; the cost ratio depends on the machine's
	// quiet. The rest must hold anywhere (the 2xx collected are info).
	for _, r := range rep.Requirements {
		noisy := strings.Contains(r.Name, "queue_length") || strings.Contains(r.Name, "÷")
		if !r.OK && !r.Info && !noisy {
			t.Errorf("%s: want %s, got %s", r.Name, r.Want, r.Got)
		}
	}
	l := rep.Load
	if l.Order.Compared != 500 || l.Attacks[attackForged].Sent == 0 || l.PassRate.Count == 0 {
		t.Errorf("load figure: %d compared, %+v attacks, pass rate %+v", l.Order.Compared, l.Attacks, l.PassRate)
	}
	if c := rep.Cost; c.Queued < 500 || c.ListingMicros <= 0 || c.WaitingMicros <= 0 {
		t.Errorf("cost figure: %+v", c)
	}
}
