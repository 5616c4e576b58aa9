package ratelimit

import (
	"encoding/binary"
	"encoding/hex"
	"hash/maphash"
	"net/netip"
)

// Key identifies one client of one policy: an address (IPv4 whole, IPv6
// masked to a prefix) or a hash of a header value. It is a 16-byte
// comparable value, which Go's maps hash and compare as two words, used as
// a map key without allocating. The zero Key is the key of an invalid
// address (and of ::), shared by every such client.
type Key struct {
	b [16]byte
}

// headerMark is the first byte of every header key. ff00::/8 is IPv6
// multicast, which is never the source of a connection, so no address key
// begins with it and a header key never equals an address key.
const headerMark = 0xff

// KeyFromAddr keys a client address. IPv4 (and IPv4-mapped IPv6, which is
// the same host reached over a dual-stack socket) is keyed by the full
// address. IPv6 is keyed by its first v6prefix bits, so a host that rotates
// through the addresses of its /64 stays one client; v6prefix outside
// 1..128 means DefaultIPv6Prefix. Zones are ignored. An invalid address
// gives the zero Key.
func KeyFromAddr(a netip.Addr, v6prefix int) Key {
	a = a.Unmap()
	switch {
	case a.Is4():
		// As16 of an IPv4 address is its ::ffff:a.b.c.d form, which no
		// masked native IPv6 key can equal below /96, and which is the
		// same host at /96 and above.
		return Key{b: a.As16()}
	case a.Is6():
		if v6prefix < 1 || v6prefix > 128 {
			v6prefix = DefaultIPv6Prefix
		}
		b := a.As16()
		full, rest := v6prefix/8, v6prefix%8
		if rest != 0 {
			b[full] &= ^byte(0xff >> rest)
			full++
		}
		clear(b[full:])
		return Key{b: b}
	}
	return Key{}
}

// Two independent 64-bit hashes make the header key: 120 of their bits,
// behind headerMark. The seeds are random per process, so a client cannot
// choose two values that collide (and share, or steal, a bucket), and
// buckets need not survive a restart anyway.
var headerSeeds = [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}

// KeyFromHeader keys a client on a header value, such as an API key. The
// value is hashed, not kept: two different values share a bucket only if
// 120 bits of two keyed hashes collide, odds of about n²/2¹²¹ for n
// distinct values, which is never in practice. A header key never equals an
// address key. It does not allocate.
//
// An empty value is a value like any other, so every request without the
// header would share one bucket; Limiter.Key falls back to the address.
func KeyFromHeader(v []byte) Key {
	var k Key
	binary.LittleEndian.PutUint64(k.b[:8], maphash.Bytes(headerSeeds[0], v))
	binary.LittleEndian.PutUint64(k.b[8:], maphash.Bytes(headerSeeds[1], v))
	k.b[0] = headerMark
	return k
}

func (k Key) isHeader() bool { return k.b[0] == headerMark }

// String describes k for logs and tests: "addr 2001:db8:1:2::",
// "header 3f…", or "invalid". It allocates; keep it off the hot path.
func (k Key) String() string {
	switch {
	case k == Key{}:
		return "invalid"
	case k.isHeader():
		return "header " + hex.EncodeToString(k.b[1:])
	}
	return "addr " + netip.AddrFrom16(k.b).Unmap().String()
}
