package waitroom

import (
	"encoding/binary"
	"testing"
)

func BenchmarkAppendToken(b *testing.B) {
	r := testRoom(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 0, TokenLen)
		for pb.Next() {
			buf = r.AppendToken(buf[:0], r.NewPlace(alice, nowMs, expMs))
		}
	})
}

func BenchmarkVerify(b *testing.B) {
	r := testRoom(b)
	tok := r.AppendToken(nil, r.NewPlace(alice, nowMs, expMs))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, reason := r.Verify(tok, alice, nowMs); reason != Valid {
				b.Fatal(reason)
			}
		}
	})
}

// gate20k is a gate with 20,000 identities queued over 10 s (two a
// millisecond, issue 18's load), nothing admitted yet, and the place of
// the last of them.
func gate20k(tb testing.TB) (*Gate, Place) {
	tb.Helper()
	const n, overMs = 20_000, 10_000
	c := newFakeClock(opensMs + overMs + 1)
	g, err := NewGate(GateConfig{Room: "final", Epoch: 1, OpensAtMs: opensMs, Rate: 500}, c, &MemStore{})
	if err != nil {
		tb.Fatal(err)
	}
	var last Place
	for i := range n {
		var idh [16]byte
		binary.BigEndian.PutUint64(idh[:], uint64(i))
		last = g.Join(idh, Place{Ms: opensMs + int64(i)*overMs/n, TB: uint64(i) * 0x9E3779B97F4A7C15})
	}
	return g, last
}

// BenchmarkAhead20k is the gate's side of a waiting-page refresh with
// 20,000 visitors queued: the position of the last of them.
func BenchmarkAhead20k(b *testing.B) {
	g, last := gate20k(b)
	if a := g.Ahead(last); a < 19_990 {
		b.Fatalf("Ahead(last) = %v, want about 20,000", a)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			g.Ahead(last)
		}
	})
}
