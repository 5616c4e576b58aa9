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
		{"NewPlace+AppendToken", func() { buf = r.AppendToken(buf[:0], r.NewPlace(alice, nowMs, expMs)) }},
	}
	for _, tt := range tests {
		if got := testing.AllocsPerRun(100, tt.fn); got != 0 {
			t.Errorf("%s: %v allocations, want 0", tt.name, got)
		}
	}
}
