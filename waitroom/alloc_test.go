//go:build !race

// Allocation counts are only meaningful without the race detector, which
// allocates on its own.

package waitroom

import "testing"

func TestAllocs(t *testing.T) {
	r := testRoom(t)
	tok := r.AppendToken(nil, r.NewPlace(alice, nowMs, expMs))
	buf := make([]byte, 0, TokenLen)
	long := make([]byte, 200)
	var sink Token
	buy := mustPattern(t, "/games/*/buy")
	var matched bool
	tests := []struct {
		name string
		fn   func()
	}{
		{"Verify valid", func() {
			var reason Reason
			if sink, reason = r.Verify(tok, alice, nowMs); reason != Valid {
				t.Fatal(reason)
			}
		}},
		{"Verify copied", func() { sink, _ = r.Verify(tok, bob, nowMs) }},
		{"IdentityHash long identity", func() { sink.IDH = r.IdentityHash(long) }},
		{"Pattern.Match", func() { matched = buy.Match([]byte("//GAMES/1;x/buy/")) }},
		{"NewPlace+AppendToken", func() { buf = r.AppendToken(buf[:0], r.NewPlace(alice, nowMs, expMs)) }},
	}
	_ = matched
	for _, tt := range tests {
		if got := testing.AllocsPerRun(100, tt.fn); got != 0 {
			t.Errorf("%s: %v allocations, want 0", tt.name, got)
		}
	}
}
