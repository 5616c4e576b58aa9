package waitroom

import "testing"

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
