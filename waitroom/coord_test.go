package waitroom

import (
	"bytes"
	"maps"
	"math"
	"slices"
	"testing"
)

// TestMergeHistories: the merge is the further watermark at each time,
// so each place's first checkpoint past it is the earlier of the two.
func TestMergeHistories(t *testing.T) {
	cp := func(ms, w int64) Checkpoint { return Checkpoint{Ms: ms, W: Place{Ms: w}} }
	for _, tc := range []struct {
		name    string
		a, b    []Checkpoint
		want    []Checkpoint
		earlier map[int64]int64 // place ms -> when the merge admits it
	}{
		{name: "one empty", a: []Checkpoint{cp(10, 5), cp(20, 8)}, want: []Checkpoint{cp(10, 5), cp(20, 8)}},
		{name: "same", a: []Checkpoint{cp(10, 5)}, b: []Checkpoint{cp(10, 5)}, want: []Checkpoint{cp(10, 5)}},
		{
			name: "local ran ahead while alone",
			a:    []Checkpoint{cp(10, 5), cp(20, 8), cp(30, 20)}, // the gate's own, ticking alone from 20
			b:    []Checkpoint{cp(10, 5), cp(20, 8), cp(40, 12)}, // the leader's, back at 40
			want: []Checkpoint{cp(10, 5), cp(20, 8), cp(30, 20)},
		},
		{
			name: "leader ahead later",
			a:    []Checkpoint{cp(10, 5), cp(30, 9)},
			b:    []Checkpoint{cp(10, 5), cp(25, 7), cp(40, 12)},
			want: []Checkpoint{cp(10, 5), cp(25, 7), cp(30, 9), cp(40, 12)},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, order := range [][2][]Checkpoint{{tc.a, tc.b}, {tc.b, tc.a}} {
				if got := mergeHistories(order[0], order[1]); !slices.Equal(got, tc.want) {
					t.Errorf("merge = %v, want %v", got, tc.want)
				}
			}
		})
	}
}

// TestTrimHistory keeps the newest checkpoint before the cutoff as the
// floor, so a place passed long ago is still spent after the trim.
func TestTrimHistory(t *testing.T) {
	h := []Checkpoint{{Ms: 10, W: Place{Ms: 1}}, {Ms: 20, W: Place{Ms: 2}}, {Ms: 30, W: Place{Ms: 3}}, {Ms: 40, W: Place{Ms: 4}}}
	for _, tc := range []struct {
		cutoff int64
		want   int // checkpoints kept, from the end
	}{{0, 4}, {10, 4}, {15, 4}, {25, 3}, {30, 3}, {31, 2}, {100, 1}} {
		got := trimHistory(h, tc.cutoff)
		if !slices.Equal(got, h[len(h)-tc.want:]) {
			t.Errorf("trim at %d = %v, want the last %d", tc.cutoff, got, tc.want)
		}
	}
	c := newFakeClock(100_000)
	g := mustGate(t, GateConfig{Room: "r", Rate: 1, ClaimWindowMs: 1000}, c, &MemStore{})
	g.adopt(trimHistory(h, 31), 0)
	if s, _ := g.Check(Place{Ms: 1}); s != Spent {
		t.Errorf("a place passed before the trimmed part: %v, want spent", s)
	}
}

// TestEncodings round-trips counts and histories and refuses damage.
func TestEncodings(t *testing.T) {
	counts := map[int64]uint32{1_700_000_000_000: 3, 1_700_000_000_005: 1, 1_700_000_000_100: 70000, -5: 2}
	b := appendArrivals(nil, 1_700_000_001_000, counts)
	got := map[int64]uint32{}
	stamp, err := parseArrivals(b, math.MinInt64, got)
	if err != nil || stamp != 1_700_000_001_000 || !maps.Equal(got, counts) {
		t.Fatalf("arrivals round trip: %v %d %v, want %v", err, stamp, got, counts)
	}
	got = map[int64]uint32{}
	if _, err := parseArrivals(b, 1_700_000_000_005, got); err != nil || len(got) != 2 {
		t.Errorf("arrivals from a millisecond: %v %v, want 2 entries", err, got)
	}
	h := []Checkpoint{{Ms: 5, W: Place{Ms: 1, TB: math.MaxUint64}}, {Ms: 9, W: Place{Ms: 2}}, {Ms: 9, W: Place{Ms: 2, TB: 7}}}
	passed, h2, err := parseHistory(appendHistory(nil, 12.5, h))
	if err != nil || passed != 12.5 || !slices.Equal(h2, h) {
		t.Fatalf("history round trip: %v %v %v", err, passed, h2)
	}
	passed, h2, err = parseHistory(appendHistoryAt(nil, 1_790_000_000_000, 12.5, h))
	if err != nil || passed != 12.5 || !slices.Equal(h2, h) {
		t.Fatalf("stamped history round trip: %v %v %v", err, passed, h2)
	}
	if a, b := appendHistoryAt(nil, 1, 2, h), appendHistoryAt(nil, 2, 2, h); bytes.Equal(a, b) {
		t.Error("two stamps encode the same history alike: a leader's heartbeat would not be a write")
	}
	back := appendHistory(nil, 1, []Checkpoint{{Ms: 5, W: Place{Ms: 3}}, {Ms: 6, W: Place{Ms: 2}}})
	for name, bad := range map[string][]byte{
		"empty": nil, "version": {9}, "truncated": appendHistory(nil, 1, h)[:20], "goes back": back,
		"stamp only": {historyV2, 0x80}, "stamped truncated": appendHistoryAt(nil, 5, 1, h)[:12],
		"arrivals truncated": b[:len(b)-1], "arrivals trailing": append(slices.Clone(b), 0),
	} {
		var err error
		if len(name) > 8 && name[:8] == "arrivals" {
			_, err = parseArrivals(bad, 0, nil)
		} else {
			_, _, err = parseHistory(bad)
		}
		if err == nil {
			t.Errorf("%s: parsed, want an error", name)
		}
	}
}

// FuzzParseHistory: whatever a KV value holds, parsing never panics, and
// what parses encodes to bytes that parse back to the same values (not
// always the same bytes: a varint may be written long).
func FuzzParseHistory(f *testing.F) {
	f.Add(appendHistory(nil, 3, []Checkpoint{{Ms: 5, W: Place{Ms: 1, TB: 9}}}))
	f.Add(appendHistoryAt(nil, 1_790_000_000_000, 3, []Checkpoint{{Ms: 5, W: Place{Ms: 1, TB: 9}}}))
	f.Add(appendArrivals(nil, 7, map[int64]uint32{5: 1, 9: 2}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if passed, h, err := parseHistory(b); err == nil {
			p2, h2, err := parseHistory(appendHistory(nil, passed, h))
			if err != nil || p2 != passed || !slices.Equal(h2, h) {
				t.Errorf("history %x re-encodes as %v %v %v", b, err, p2, h2)
			}
		}
		m := map[int64]uint32{}
		if stamp, err := parseArrivals(b, math.MinInt64, m); err == nil {
			if _, err := parseArrivals(appendArrivals(nil, stamp, m), math.MinInt64, nil); err != nil {
				t.Errorf("arrivals %x re-encode badly: %v", b, err)
			}
		}
	})
}
