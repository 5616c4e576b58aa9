package waitroom

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"testing"
)

const (
	opensMs = int64(1_790_000_000_000) // the sale opens
	nowMs   = opensMs + 5_000
	expMs   = nowMs + 600_000
)

var (
	keysFile = "id " + hexKey(1) + "\nsign 1 " + hexKey(2) + "\n"
	alice    = []byte("alice's client key")
	bob      = []byte("bob's client key")
)

func mustRoom(t testing.TB, name string, epoch uint32, keys *Keys) *Room {
	t.Helper()
	r, err := NewRoom(name, epoch, opensMs, keys)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func testRoom(t testing.TB) *Room {
	return mustRoom(t, "final", 1, mustKeys(t, keysFile))
}

func TestTokenRoundTrip(t *testing.T) {
	r := testRoom(t)
	for _, want := range []Token{
		r.NewPlace(alice, nowMs, expMs),
		{Kind: KindAdmission, Confirmed: true, IDH: r.IdentityHash(alice), Place: Place{Ms: -1, TB: math.MaxUint64}, AdmittedMs: nowMs, ExpMs: expMs},
	} {
		tok := r.AppendToken(nil, want)
		if len(tok) != TokenLen {
			t.Fatalf("token is %d bytes, want TokenLen %d", len(tok), TokenLen)
		}
		got, reason := r.Verify(tok, alice, nowMs)
		want.Kid = 1
		if reason != Valid || got != want {
			t.Fatalf("Verify = %+v, %v; want %+v, valid", got, reason, want)
		}
	}
}

func TestVerifyRefusals(t *testing.T) {
	keys := mustKeys(t, keysFile)
	r := mustRoom(t, "final", 1, keys)
	tok := string(r.AppendToken(nil, r.NewPlace(alice, nowMs, expMs)))
	sign := func(room *Room) string { return string(room.AppendToken(nil, room.NewPlace(alice, nowMs, expMs))) }
	otherKid := mustKeys(t, "id "+hexKey(1)+"\nsign 9 "+hexKey(2)+"\n") // same secret, unknown kid
	otherSecret := mustKeys(t, "id "+hexKey(1)+"\nsign 1 "+hexKey(3)+"\n")
	// raw re-encodes tok with byte i changed by f.
	raw := func(i int, f func(byte) byte) string {
		b, err := encoding.DecodeString(tok)
		if err != nil {
			t.Fatal(err)
		}
		b[i] = f(b[i])
		return encoding.EncodeToString(b)
	}
	tests := []struct {
		name     string
		tok      string
		identity []byte
		now      int64
		want     Reason
	}{
		{"valid", tok, alice, nowMs, Valid},
		{"empty", "", alice, nowMs, Malformed},
		{"truncated", tok[:TokenLen-1], alice, nowMs, Malformed},
		{"extended", tok + "A", alice, nowMs, Malformed},
		{"not base64url", "+" + tok[1:], alice, nowMs, Malformed},
		{"standard base64 padding", tok[:TokenLen-1] + "=", alice, nowMs, Malformed},
		{"newline inside", tok[:50] + "\n" + tok[51:], alice, nowMs, Malformed},
		// The last character carries 2 unused bits; a strict decoder
		// refuses them set, so a token has one spelling.
		{"unused bits set", tok[:TokenLen-1] + string(encodeStd[strings.IndexByte(encodeStd, tok[TokenLen-1])|1]), alice, nowMs, Malformed},
		{"version 2", raw(offVer, func(byte) byte { return 2 }), alice, nowMs, Malformed},
		{"kind X", raw(offKind, func(byte) byte { return 'X' }), alice, nowMs, Malformed},
		{"unknown flag", raw(offFlags, func(byte) byte { return 2 }), alice, nowMs, Malformed},
		{"another room", sign(mustRoom(t, "semi", 1, keys)), alice, nowMs, WrongRoom},
		{"older epoch", sign(mustRoom(t, "final", 0, keys)), alice, nowMs, StaleEpoch},
		{"unknown kid", sign(mustRoom(t, "final", 1, otherKid)), alice, nowMs, UnknownKid},
		{"forged with another secret", sign(mustRoom(t, "final", 1, otherSecret)), alice, nowMs, BadMAC},
		{"kind P to A", raw(offKind, func(byte) byte { return 'A' }), alice, nowMs, BadMAC},
		{"earlier place", raw(offPosMs+7, func(b byte) byte { return b - 1 }), alice, nowMs, BadMAC},
		{"later expiry", raw(offExp, func(b byte) byte { return b + 1 }), alice, nowMs, BadMAC},
		{"MAC altered", raw(rawLen-1, func(b byte) byte { return b ^ 1 }), alice, nowMs, BadMAC},
		{"copied to bob", tok, bob, nowMs, Copied},
		{"copied to no identity", tok, nil, nowMs, Copied},
		{"expired", tok, alice, expMs, Expired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, got := r.Verify([]byte(tt.tok), tt.identity, tt.now); got != tt.want {
				t.Errorf("Verify = %v, want %v", got, tt.want)
			}
		})
	}
}

const encodeStd = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// TestEveryAlteration: no change to any one character of a token, nor to
// any one bit of the bytes it encodes, is accepted, and each bit flip is
// refused for the reason of the field it lands in.
func TestEveryAlteration(t *testing.T) {
	r := testRoom(t)
	tok := r.AppendToken(nil, r.NewPlace(alice, nowMs, expMs))
	alt := make([]byte, len(tok))
	for i := range tok {
		for c := range 256 {
			if byte(c) == tok[i] {
				continue
			}
			copy(alt, tok)
			alt[i] = byte(c)
			if _, reason := r.Verify(alt, alice, nowMs); reason == Valid {
				t.Fatalf("token with byte %d changed from %q to %q is valid", i, tok[i], byte(c))
			}
		}
	}
	b, err := encoding.DecodeString(string(tok))
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		want := BadMAC
		switch {
		case i == offVer, i == offKind:
			want = Malformed
		case i >= offRoom && i < offEpoch:
			want = WrongRoom
		case i >= offEpoch && i < offIDH:
			want = StaleEpoch
		case i == offKid:
			want = UnknownKid
		}
		for bit := range 8 {
			if i == offFlags {
				// Bit 0 is "confirmed", which only the MAC guards.
				want = Malformed
				if bit == 0 {
					want = BadMAC
				}
			}
			b[i] ^= 1 << bit
			if _, got := r.Verify(encoding.AppendEncode(nil, b), alice, nowMs); got != want {
				t.Errorf("byte %d bit %d flipped: Verify = %v, want %v", i, bit, got, want)
			}
			b[i] ^= 1 << bit
		}
	}
}

// TestKeyRotation: a new sign key listed first signs; the old one below it
// still verifies what it signed; once dropped, its tokens are unknown_kid.
func TestKeyRotation(t *testing.T) {
	id := "id " + hexKey(1) + "\n"
	old, next := "sign 1 "+hexKey(2)+"\n", "sign 2 "+hexKey(3)+"\n"
	before := mustRoom(t, "final", 1, mustKeys(t, id+old))
	during := mustRoom(t, "final", 1, mustKeys(t, id+next+old))
	after := mustRoom(t, "final", 1, mustKeys(t, id+next))

	oldTok := before.AppendToken(nil, before.NewPlace(alice, nowMs, expMs))
	newTok := during.AppendToken(nil, during.NewPlace(alice, nowMs, expMs))
	tests := []struct {
		name    string
		room    *Room
		tok     []byte
		want    Reason
		wantKid uint8
	}{
		{"old token, both keys", during, oldTok, Valid, 1},
		{"new token, both keys", during, newTok, Valid, 2},
		{"new token, new key only", after, newTok, Valid, 2},
		{"old token, old key dropped", after, oldTok, UnknownKid, 0},
		{"new token before the new key", before, newTok, UnknownKid, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, reason := tt.room.Verify(tt.tok, alice, nowMs)
			if reason != tt.want || got.Kid != tt.wantKid {
				t.Errorf("Verify = kid %d, %v; want kid %d, %v", got.Kid, reason, tt.wantKid, tt.want)
			}
		})
	}
}

// TestExpiryBoundary: valid while now < exp, to the millisecond.
func TestExpiryBoundary(t *testing.T) {
	r := testRoom(t)
	tok := r.AppendToken(nil, r.NewPlace(alice, nowMs, expMs))
	for _, tt := range []struct {
		now  int64
		want Reason
	}{{expMs - 1, Valid}, {expMs, Expired}, {expMs + 1, Expired}} {
		if _, got := r.Verify(tok, alice, tt.now); got != tt.want {
			t.Errorf("Verify at exp%+d ms = %v, want %v", tt.now-expMs, got, tt.want)
		}
	}
}

// TestDerivation: the identity hash and the draw are the documented HMACs
// of the identity alone, computed here with crypto/hmac.
func TestDerivation(t *testing.T) {
	r := testRoom(t)
	idBytes := make([]byte, KeySize)
	for i := range idBytes {
		idBytes[i] = 1
	}
	mac := func(parts ...[]byte) []byte {
		h := hmac.New(sha256.New, idBytes)
		for _, p := range parts {
			h.Write(p)
		}
		return h.Sum(nil)
	}
	long := []byte(strings.Repeat("x", maxRawIdentity+1))
	longSum := sha256.Sum256(long)
	for _, tt := range []struct {
		name     string
		identity []byte
		enc      []byte
	}{
		{"short", alice, append([]byte{0}, alice...)},
		{"empty", nil, []byte{0}},
		{"longest raw", long[:maxRawIdentity], append([]byte{0}, long[:maxRawIdentity]...)},
		{"hashed", long, append([]byte{1}, longSum[:]...)},
	} {
		room := append([]byte{byte(len("final"))}, "final"...)
		wantIDH := mac([]byte("idh"), room, binary.BigEndian.AppendUint32(nil, 1), tt.enc)
		if got := r.IdentityHash(tt.identity); string(got[:]) != string(wantIDH[:16]) {
			t.Errorf("%s: IdentityHash = %x, want %x", tt.name, got, wantIDH[:16])
		}
		wantDraw := mac([]byte("draw"), room, binary.BigEndian.AppendUint64(nil, uint64(opensMs)), tt.enc)
		if got := r.Draw(tt.identity); got != binary.BigEndian.Uint64(wantDraw) {
			t.Errorf("%s: Draw = %x, want %x", tt.name, got, wantDraw[:8])
		}
	}
}

// TestPlaces: before the opening every new token of one identity holds the
// same place, its draw; after it, the arrival millisecond, ties broken by
// the identity hash.
func TestPlaces(t *testing.T) {
	r := testRoom(t)
	first := r.NewPlace(alice, opensMs-3_600_000, expMs)
	for _, arrival := range []int64{opensMs - 3_600_000, opensMs - 1, opensMs} {
		tok := r.AppendToken(nil, r.NewPlace(alice, arrival, expMs+arrival))
		got, reason := r.Verify(tok, alice, arrival)
		if reason != Valid || got.Place != first.Place {
			t.Errorf("place token issued at opens%+d ms: %v, place %+v; want valid, %+v", arrival-opensMs, reason, got.Place, first.Place)
		}
	}
	if want := (Place{Ms: opensMs, TB: r.Draw(alice)}); first.Place != want {
		t.Errorf("pre-queue place = %+v, want %+v", first.Place, want)
	}
	idh := r.IdentityHash(alice)
	if got, want := r.PlaceFor(alice, opensMs+1), (Place{Ms: opensMs + 1, TB: binary.BigEndian.Uint64(idh[:8])}); got != want {
		t.Errorf("place after opening = %+v, want %+v", got, want)
	}
	if !r.PlaceFor(alice, opensMs).Before(r.PlaceFor(bob, opensMs+1)) {
		t.Errorf("a pre-queue place is not before a place taken after opening")
	}
	if r.Draw(alice) == r.Draw(bob) {
		t.Errorf("alice and bob draw the same number")
	}
	reopened, err := NewRoom("final", 1, opensMs+1, r.keys)
	if err != nil {
		t.Fatal(err)
	}
	if r.Draw(alice) == reopened.Draw(alice) {
		t.Errorf("moving the opening did not redraw")
	}
}

// TestDrawUniform: the draws of 10,000 identities fall evenly into 16
// buckets, by their top bits (which order the pre-queue) and by their low
// bits. The χ² bound, 56.49 for 15 degrees of freedom, is exceeded by
// chance with probability 1e-6; the identities and keys are fixed, so the
// test is deterministic anyway.
func TestDrawUniform(t *testing.T) {
	r := testRoom(t)
	const n, buckets, bound = 10_000, 16, 56.49
	var top, low [buckets]int
	for i := range n {
		d := r.Draw(fmt.Appendf(nil, "198.51.%d.%d", i/256, i%256))
		top[d>>60]++
		low[d%buckets]++
	}
	for _, c := range []struct {
		name   string
		counts [buckets]int
	}{{"top 4 bits", top}, {"low 4 bits", low}} {
		chi2, e := 0.0, float64(n)/buckets
		for _, o := range c.counts {
			chi2 += (float64(o) - e) * (float64(o) - e) / e
		}
		if chi2 > bound {
			t.Errorf("draw %s: χ² = %.1f > %.2f; counts %v", c.name, chi2, bound, c.counts)
		}
	}
}

func TestReasonString(t *testing.T) {
	for r, want := range map[Reason]string{Valid: "valid", Malformed: "malformed", BadMAC: "bad_mac", Copied: "copied", Expired: "expired", 99: "reason(99)"} {
		if got := r.String(); got != want {
			t.Errorf("Reason(%d).String() = %q, want %q", r, got, want)
		}
	}
}

func TestNewRoomErrors(t *testing.T) {
	keys := mustKeys(t, keysFile)
	for _, tt := range []struct {
		name string
		keys *Keys
	}{{"", keys}, {strings.Repeat("r", maxRoomName+1), keys}, {"final", nil}} {
		if _, err := NewRoom(tt.name, 1, opensMs, tt.keys); err == nil {
			t.Errorf("NewRoom(%q, keys %v) succeeded", tt.name, tt.keys != nil)
		}
	}
}
