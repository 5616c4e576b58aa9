package waitroom

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
)

// Reason says why Verify refused a token. The set is fixed so that the
// refusals counter has one series per reason.
type Reason uint8

// Reasons, in the order Verify checks them.
const (
	Valid      Reason = iota
	Malformed         // not a token of this format: length, encoding, version, kind, flags
	WrongRoom         // signed for another room
	StaleEpoch        // signed before the room was reset
	UnknownKid        // its key is not (or no longer) in the key file
	BadMAC            // forged or altered
	Copied            // genuine, but issued to another identity
	Expired           // genuine and this visitor's, but now >= exp
)

var reasonNames = [...]string{"valid", "malformed", "wrong_room", "stale_epoch", "unknown_kid", "bad_mac", "copied", "expired"}

// String is the reason's metric label, e.g. "bad_mac".
func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", r)
}

// Kind is what a token grants.
type Kind byte

// Kinds.
const (
	KindPlace     Kind = 'P' // a place in the queue
	KindAdmission Kind = 'A' // admitted: may use the guarded path
)

// Place is a position in a room's queue; smaller is earlier. Ms is the
// arrival in Unix milliseconds (opens_at for the pre-queue); TB breaks
// ties: the identity hash after opening, the draw in the pre-queue.
type Place struct {
	Ms int64
	TB uint64
}

// Before reports whether p is earlier in the queue than q.
func (p Place) Before(q Place) bool { return p.Ms < q.Ms || p.Ms == q.Ms && p.TB < q.TB }

// Token is a decoded token. It is a plain value: copy it freely.
type Token struct {
	Kind       Kind
	Confirmed  bool     // flags bit 0
	Kid        uint8    // the key that signed it; AppendToken sets it
	IDH        [16]byte // Room.IdentityHash of the visitor it was issued to
	Place      Place
	AdmittedMs int64 // when admitted; KindAdmission only, else 0
	ExpMs      int64 // valid while now < ExpMs
}

// The binary layout, all integers big-endian. The MAC covers every byte
// before it, so nothing in the token can change without the key.
const (
	tokenVersion = 1
	offVer       = 0
	offKind      = 1
	offKid       = 2
	offFlags     = 3
	offRoom      = 4  // [8]byte, Room hash
	offEpoch     = 12 // u32
	offIDH       = 16 // [16]byte
	offPosMs     = 32 // i64
	offPosTB     = 40 // u64
	offT         = 48 // i64, admitted time
	offExp       = 56 // i64
	offMAC       = 64 // [16]byte, HMAC-SHA256(sign[kid], bytes 0-63)[:16]
	rawLen       = 80

	flagConfirmed = 1

	// A 128-bit tag: forging one takes 2^128 tries on average, and
	// truncating HMAC to half the hash is what RFC 2104 §5 allows.
	macLen = rawLen - offMAC
)

// TokenLen is the length of an encoded token in bytes (base64url without
// padding, which cookies and headers carry unquoted).
const TokenLen = (rawLen*8 + 5) / 6

// encoding is strict: Go's decoder otherwise ignores the unused low bits of
// the last character, so four spellings would decode to one token.
var encoding = base64.RawURLEncoding.Strict()

// maxRoomName bounds a room name so that a derivation fits maxMAC.
const maxRoomName = 64

// maxRawIdentity is the longest identity used as it is; a longer one is
// hashed first, so any identity fits maxMAC.
const maxRawIdentity = 64

// Room issues and verifies the tokens of one waiting room. It is immutable
// once made and safe for concurrent use; share the pointer. A reload that
// changes the keys, epoch or opening makes a new Room.
type Room struct {
	name      string
	hash      [8]byte
	epoch     uint32
	opensAtMs int64
	keys      *Keys
}

// NewRoom makes the room name (1 to 64 bytes) with its keys. epoch is
// bound into every token and identity hash: raising it (a room reset, a
// new sale on the same name) refuses every older token as stale_epoch.
// opensAtMs is the opening in Unix milliseconds; arrivals up to and
// including it form the pre-queue.
func NewRoom(name string, epoch uint32, opensAtMs int64, keys *Keys) (*Room, error) {
	if name == "" || len(name) > maxRoomName {
		return nil, fmt.Errorf("waitroom: room name %q: want 1 to %d bytes", name, maxRoomName)
	}
	if keys == nil {
		return nil, errors.New("waitroom: room " + name + ": no keys")
	}
	r := &Room{name: name, epoch: epoch, opensAtMs: opensAtMs, keys: keys}
	// The room hash only tells rooms apart; it needs no key, since the
	// MAC covers it.
	h := sha256.Sum256([]byte("podium waitroom room\x00" + name))
	copy(r.hash[:], h[:])
	return r, nil
}

// Name is the room's name.
func (r *Room) Name() string { return r.name }

// derive is HMAC-SHA256(id, label ‖ len(room) ‖ room ‖ mid ‖ identity),
// where identity is 0x00 ‖ identity when it is at most maxRawIdentity
// bytes and 0x01 ‖ SHA-256(identity) when longer. The length byte and the
// marker keep distinct inputs distinct. It does not allocate.
func (r *Room) derive(label string, mid []byte, identity []byte) [sha256.Size]byte {
	var buf [maxMAC]byte
	n := copy(buf[:], label)
	buf[n] = byte(len(r.name))
	n++
	n += copy(buf[n:], r.name)
	n += copy(buf[n:], mid)
	if len(identity) <= maxRawIdentity {
		buf[n] = 0
		n++
		n += copy(buf[n:], identity)
	} else {
		buf[n] = 1
		n++
		h := sha256.Sum256(identity)
		n += copy(buf[n:], h[:])
	}
	return r.keys.id.sum(buf[:n])
}

// IdentityHash is the 16-byte hash a token binds its visitor by:
// HMAC-SHA256(id, "idh" ‖ room ‖ epoch ‖ identity)[:16]. identity is the
// rate limiter's client key. It does not allocate.
func (r *Room) IdentityHash(identity []byte) (idh [16]byte) {
	var e [4]byte
	binary.BigEndian.PutUint32(e[:], r.epoch)
	h := r.derive("idh", e[:], identity)
	copy(idh[:], h[:])
	return idh
}

// Draw is identity's place among the pre-queue:
// HMAC-SHA256(id, "draw" ‖ room ‖ opens_at_ms ‖ identity)[:8]. It depends
// on nothing but the identity, the room and its opening, so a new token
// draws the same number.
func (r *Room) Draw(identity []byte) uint64 {
	var o [8]byte
	binary.BigEndian.PutUint64(o[:], uint64(r.opensAtMs))
	h := r.derive("draw", o[:], identity)
	return binary.BigEndian.Uint64(h[:8])
}

// PlaceFor is the place of identity arriving at nowMs: (opens_at, Draw)
// up to the opening, the pre-queue that is shuffled when the sale opens;
// (nowMs, the identity hash's first 8 bytes) after it, first come first
// served.
func (r *Room) PlaceFor(identity []byte, nowMs int64) Place {
	if nowMs <= r.opensAtMs {
		return Place{Ms: r.opensAtMs, TB: r.Draw(identity)}
	}
	return r.PlaceForHash(identity, r.IdentityHash(identity), nowMs)
}

// PlaceForHash is PlaceFor for a caller that has identity's hash
// (IdentityHash) already: one HMAC fewer.
func (r *Room) PlaceForHash(identity []byte, idh [16]byte, nowMs int64) Place {
	if nowMs <= r.opensAtMs {
		return Place{Ms: r.opensAtMs, TB: r.Draw(identity)}
	}
	return Place{Ms: nowMs, TB: binary.BigEndian.Uint64(idh[:8])}
}

// NewPlace is the place token of identity arriving at nowMs, valid until
// expMs. AppendToken encodes it.
func (r *Room) NewPlace(identity []byte, nowMs, expMs int64) Token {
	return Token{Kind: KindPlace, IDH: r.IdentityHash(identity), Place: r.PlaceFor(identity, nowMs), ExpMs: expMs}
}

// AppendToken appends t, signed with the room's signing key (t.Kid is
// ignored), in its encoded form (TokenLen bytes) to dst.
func (r *Room) AppendToken(dst []byte, t Token) []byte {
	var b [rawLen]byte
	b[offVer] = tokenVersion
	b[offKind] = byte(t.Kind)
	b[offKid] = r.keys.signKid
	if t.Confirmed {
		b[offFlags] = flagConfirmed
	}
	copy(b[offRoom:], r.hash[:])
	binary.BigEndian.PutUint32(b[offEpoch:], r.epoch)
	copy(b[offIDH:], t.IDH[:])
	binary.BigEndian.PutUint64(b[offPosMs:], uint64(t.Place.Ms))
	binary.BigEndian.PutUint64(b[offPosTB:], t.Place.TB)
	binary.BigEndian.PutUint64(b[offT:], uint64(t.AdmittedMs))
	binary.BigEndian.PutUint64(b[offExp:], uint64(t.ExpMs))
	mac := r.keys.byKid[r.keys.signKid].sum(b[:offMAC])
	copy(b[offMAC:], mac[:macLen])
	return encoding.AppendEncode(dst, b[:])
}

// Verify decodes tok, presented by identity at nowMs, and returns it with
// Valid, or the reason it is refused. It checks, in order: length,
// encoding, version, kind and flags; room; epoch; kid; MAC; that it was
// issued to identity; now < exp. It takes no lock and does not allocate.
func (r *Room) Verify(tok, identity []byte, nowMs int64) (Token, Reason) {
	t, reason := r.verifyMAC(tok)
	if reason != Valid {
		return t, reason
	}
	return t, t.check(r.IdentityHash(identity), nowMs)
}

// VerifyHash is Verify for a caller that has the presenting identity's
// hash (IdentityHash) already: one HMAC fewer.
func (r *Room) VerifyHash(tok []byte, idh [16]byte, nowMs int64) (Token, Reason) {
	t, reason := r.verifyMAC(tok)
	if reason != Valid {
		return t, reason
	}
	return t, t.check(idh, nowMs)
}

// check is the last of Verify's checks: issued to idh, and now < exp.
func (t *Token) check(idh [16]byte, nowMs int64) Reason {
	if t.IDH != idh {
		return Copied
	}
	if nowMs >= t.ExpMs {
		return Expired
	}
	return Valid
}

// verifyMAC runs Verify's checks up to the MAC's.
func (r *Room) verifyMAC(tok []byte) (Token, Reason) {
	var t Token
	var b [rawLen]byte
	if len(tok) != TokenLen {
		return t, Malformed
	}
	if n, err := encoding.Decode(b[:], tok); err != nil || n != rawLen {
		return t, Malformed
	}
	if b[offVer] != tokenVersion ||
		Kind(b[offKind]) != KindPlace && Kind(b[offKind]) != KindAdmission ||
		b[offFlags]&^flagConfirmed != 0 {
		return t, Malformed
	}
	if [8]byte(b[offRoom:offEpoch]) != r.hash {
		return t, WrongRoom
	}
	if binary.BigEndian.Uint32(b[offEpoch:]) != r.epoch {
		return t, StaleEpoch
	}
	key := r.keys.byKid[b[offKid]]
	if key == nil {
		return t, UnknownKid
	}
	mac := key.sum(b[:offMAC])
	if !hmac.Equal(mac[:macLen], b[offMAC:]) {
		return t, BadMAC
	}
	t = Token{
		Kind:       Kind(b[offKind]),
		Confirmed:  b[offFlags]&flagConfirmed != 0,
		Kid:        b[offKid],
		IDH:        [16]byte(b[offIDH:offPosMs]),
		Place:      Place{Ms: int64(binary.BigEndian.Uint64(b[offPosMs:])), TB: binary.BigEndian.Uint64(b[offPosTB:])},
		AdmittedMs: int64(binary.BigEndian.Uint64(b[offT:])),
		ExpMs:      int64(binary.BigEndian.Uint64(b[offExp:])),
	}
	return t, Valid
}
