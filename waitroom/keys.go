package waitroom

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// KeySize is the length of every secret in a key file: 32 bytes, written
// as 64 hex digits. HMAC-SHA256 gains nothing from a longer key and a
// shorter one is refused (RFC 2104 §3: keys shorter than the hash output
// are "strongly discouraged").
const KeySize = 32

// Keys are a room's secrets, read from a key file:
//
//	# comments and blank lines are allowed
//	id   <64 hex>          exactly one: derives identity hashes and draws
//	sign <kid> <64 hex>    kid 0-255; the first one signs, every one verifies
//
// The id secret never rotates while a sale runs: it fixes every visitor's
// identity hash and pre-queue draw, so changing it reshuffles the queue.
// Sign keys rotate: add the new sign line first (it signs from the next
// load), keep the old one below it until every token it signed has
// expired (the session lifetime), then drop it.
//
// Keys are immutable once loaded and safe for concurrent use. Copy the
// pointer, not the value. Its String never shows a secret.
type Keys struct {
	id      macKey
	signKid uint8
	nsign   int
	byKid   [256]*macKey // nil: kid unknown
}

// LoadKeys reads and parses the key file at path. Errors name the file and
// line, as "path:3: ...".
func LoadKeys(path string) (*Keys, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading key file: %w", err)
	}
	return ParseKeys(path, data)
}

// ParseKeys parses a key file's contents; name prefixes every error with
// the line, as "name:3: ...". No error shows a secret.
func ParseKeys(name string, data []byte) (*Keys, error) {
	k := &Keys{}
	haveID, haveSign := false, false
	seen := map[[KeySize]byte]int{} // secret -> line, to refuse reuse
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		fail := func(format string, a ...any) error {
			return fmt.Errorf("%s:%d: %s", name, n, fmt.Sprintf(format, a...))
		}
		var hexKey string
		switch f[0] {
		case "id":
			if len(f) != 2 {
				return nil, fail("want \"id <64 hex digits>\", got %d fields", len(f))
			}
			if haveID {
				return nil, fail("a second id line; a key file has exactly one")
			}
			hexKey = f[1]
		case "sign":
			if len(f) != 3 {
				return nil, fail("want \"sign <kid 0-255> <64 hex digits>\", got %d fields", len(f))
			}
			kid, err := strconv.ParseUint(f[1], 10, 8)
			if err != nil {
				return nil, fail("kid %q is not a number from 0 to 255", f[1])
			}
			if k.byKid[kid] != nil {
				return nil, fail("kid %d is listed twice", kid)
			}
			hexKey = f[2]
		default:
			return nil, fail("unknown directive %q; want id or sign", f[0])
		}
		secret, err := parseSecret(hexKey)
		if err != nil {
			return nil, fail("%s key: %v", f[0], err)
		}
		if prev, ok := seen[secret]; ok {
			return nil, fail("%s key is the same secret as line %d; each key must be distinct", f[0], prev)
		}
		seen[secret] = n
		if f[0] == "id" {
			k.id, haveID = newMacKey(secret[:]), true
			continue
		}
		kid, _ := strconv.ParseUint(f[1], 10, 8)
		mk := newMacKey(secret[:])
		k.byKid[kid] = &mk
		if !haveSign {
			k.signKid, haveSign = uint8(kid), true
		}
		k.nsign++
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	switch {
	case !haveID:
		return nil, fmt.Errorf("%s: no id line; add \"id <64 hex digits>\" (e.g. from openssl rand -hex 32)", name)
	case !haveSign:
		return nil, fmt.Errorf("%s: no sign line; add \"sign 1 <64 hex digits>\" (e.g. from openssl rand -hex 32)", name)
	}
	return k, nil
}

var errKeyZero = errors.New("is all zero bytes; generate one with openssl rand -hex 32")

func parseSecret(s string) (secret [KeySize]byte, err error) {
	if len(s) != 2*KeySize {
		return secret, fmt.Errorf("has %d hex digits, want %d (%d bytes)", len(s), 2*KeySize, KeySize)
	}
	if _, err := hex.Decode(secret[:], []byte(s)); err != nil {
		return secret, errors.New("is not hexadecimal")
	}
	if subtle.ConstantTimeCompare(secret[:], make([]byte, KeySize)) == 1 {
		return secret, errKeyZero
	}
	return secret, nil
}

// SignKid is the kid of the key that signs: the first sign line.
func (k *Keys) SignKid() uint8 { return k.signKid }

// String describes k without its secrets.
func (k *Keys) String() string {
	return fmt.Sprintf("waitroom keys: %d sign keys, kid %d signs", k.nsign, k.signKid)
}

// macKey is an HMAC-SHA256 key (RFC 2104) as its padded inner and outer
// blocks, so that sum needs no hash.Hash: crypto/hmac's New allocates, and
// the verify path must not (STYLE habit 7).
type macKey struct {
	ipad, opad [sha256.BlockSize]byte
}

func newMacKey(key []byte) macKey {
	var m macKey
	// Keys are KeySize bytes, shorter than the block, so they are padded,
	// never hashed (RFC 2104 §2).
	copy(m.ipad[:], key)
	copy(m.opad[:], key)
	for i := range m.ipad {
		m.ipad[i] ^= 0x36
		m.opad[i] ^= 0x5c
	}
	return m
}

// maxMAC is the longest message sum takes: a token body, or a derivation
// input (derive bounds it).
const maxMAC = 192

// sum is HMAC-SHA256(key, msg). The buffers live on the stack, so it does
// not allocate. msg must be at most maxMAC bytes.
func (m *macKey) sum(msg []byte) [sha256.Size]byte {
	var in [sha256.BlockSize + maxMAC]byte
	copy(in[:], m.ipad[:])
	n := sha256.BlockSize + copy(in[sha256.BlockSize:], msg)
	if n-sha256.BlockSize != len(msg) {
		panic("waitroom: MAC input too long")
	}
	inner := sha256.Sum256(in[:n])
	var out [sha256.BlockSize + sha256.Size]byte
	copy(out[:], m.opad[:])
	copy(out[sha256.BlockSize:], inner[:])
	return sha256.Sum256(out[:])
}
