package waitroom

import (
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
)

// fullStore is a FileStore that also keeps every checkpoint appended, in
// memory, uncompacted: what Check answered before compaction.
type fullStore struct {
	*FileStore
	all []Checkpoint
}

func (s *fullStore) Append(key string, c Checkpoint) error {
	s.all = append(s.all, c)
	return s.FileStore.Append(key, c)
}

// checkIn is Gate.Check over history h at now.
func checkIn(h []Checkpoint, p Place, now, claimMs int64) (Status, int64) {
	i := sort.Search(len(h), func(i int) bool { return p.Before(h[i].W) })
	switch {
	case i == len(h):
		return Waiting, 0
	case now-h[i].Ms < claimMs:
		return Admitted, h[i].Ms
	}
	return Spent, h[i].Ms
}

// TestGateHistoryBounded: an hour of 50 ms ticks, with a visitor every
// 200 ms for the first and last ten minutes and an empty room between,
// leaves a history, in memory and in the state dir, of about the claim
// window's checkpoints, not a checkpoint a tick (72,000); Check answers
// as it did over the whole history, for every place (those passed
// within the claim window admitted at the same time, the older ones
// spent), and so does a gate restarted on the compacted file.
func TestGateHistoryBounded(t *testing.T) {
	const t0 = 1_790_000_000_000
	const claimMs = 60_000
	dir := t.TempDir()
	store := &fullStore{FileStore: &FileStore{Dir: dir}}
	defer store.Close()
	c := newFakeClock(t0)
	cfg := GateConfig{Room: "final", Epoch: 1, OpensAtMs: t0, Rate: 10, SettleMs: 500, ClaimWindowMs: claimMs}
	g := mustGate(t, cfg, c, store)
	var ps []Place
	maxMem := 0
	for i := 0; c.NowMs() < t0+3_600_000; i++ {
		c.ms.Add(50)
		if since := c.NowMs() - t0; i%4 == 0 && (since < 600_000 || since > 3_000_000) {
			ps = append(ps, g.Join([16]byte{byte(i), byte(i >> 8), byte(i >> 16)}, Place{Ms: c.NowMs(), TB: uint64(i) << 32}))
		}
		if err := g.Tick(); err != nil {
			t.Fatal(err)
		}
		maxMem = max(maxMem, len(*g.history.Load()))
	}
	// Kept: the claim window and a minute (historyKeepMs) of a
	// checkpoint each tick that passed a visitor (a visitor every fourth
	// tick, passed over two at 10/s) and one a second otherwise: under
	// 0.6 of a checkpoint a tick, where one each tick was 1.
	keep := int((claimMs + 60_000) / 50 * 6 / 10)
	if maxMem > keep {
		t.Errorf("the history in memory reached %d checkpoints, want at most %d", maxMem, keep)
	}
	file := filepath.Join(dir, "final.1."+strconv.FormatInt(t0, 10)+".log")
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(file); err != nil || fi.Mode() != 0o600 {
		t.Errorf("the compacted history file: %v, %v; want a plain file, mode 0600", fi.Mode(), err)
	}
	if lines := bytes.Count(data, []byte("\n")); lines > 2*keep+minCompact {
		t.Errorf("the history file has %d lines after an hour, want at most %d", lines, 2*keep+minCompact)
	}
	t.Logf("%d checkpoints in an hour; at most %d in memory, %d lines in the file", len(store.all), maxMem, bytes.Count(data, []byte("\n")))
	if len(store.all) < 5_000 {
		t.Fatalf("only %d checkpoints recorded in an hour: the test does not exercise compaction", len(store.all))
	}
	g2 := mustGate(t, cfg, c, store)
	now := c.NowMs()
	admitted := 0
	for _, p := range ps {
		ws, wms := checkIn(store.all, p, now, claimMs)
		if ws == Admitted {
			admitted++
		}
		for name, g := range map[string]*Gate{"compacted": g, "restarted": g2} {
			if s, ms := g.Check(p); s != ws || s == Admitted && ms != wms {
				t.Fatalf("%s: Check(%v) = %v at %d, want %v at %d (the whole history's answer)", name, p, s, ms, ws, wms)
			}
		}
	}
	if admitted < 100 {
		t.Errorf("only %d places admitted within the claim window: the test checks too little", admitted)
	}
}

// TestGateRecordsIdleWatermark: a watermark that moves over milliseconds
// nobody counted here is still recorded, once a second, so a place
// counted nowhere here (another edge's token, a restored place that came
// back late) is admitted within historyEveryMs of the watermark passing
// it, not never.
func TestGateRecordsIdleWatermark(t *testing.T) {
	const t0 = 1_790_000_000_000
	c := newFakeClock(t0)
	g := mustGate(t, GateConfig{Room: "r", OpensAtMs: t0, Rate: 10, SettleMs: 500}, c, &MemStore{})
	uncounted := Place{Ms: t0 + 1_000, TB: 7}
	tickTo(t, g, c, t0+1_500+historyEveryMs, 50)
	if w := g.Watermark(); !uncounted.Before(w) {
		t.Fatalf("watermark %v, want past %v", w, uncounted)
	}
	if s, _ := g.Check(uncounted); s != Admitted {
		t.Errorf("a place the watermark passed %d ms ago is %v, want admitted", historyEveryMs, s)
	}
	if n := len(*g.history.Load()); n > 3 {
		t.Errorf("%d checkpoints in %d ms of an empty room, want one a second", n, 1_500+historyEveryMs)
	}
}
