package waitroom

import (
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// hexKey is a distinct, valid 64-hex-digit secret for each n.
func hexKey(n byte) string {
	return strings.Repeat(fmt.Sprintf("%02x", n), KeySize)
}

func mustKeys(t testing.TB, file string) *Keys {
	t.Helper()
	k, err := ParseKeys("keys", []byte(file))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestParseKeys(t *testing.T) {
	file := "# room keys\n\nid " + hexKey(1) + "\nsign 7 " + hexKey(2) + "  # new, signs\nsign 3 " + hexKey(3) + "\n"
	k := mustKeys(t, file)
	if got, want := k.SignKid(), uint8(7); got != want {
		t.Errorf("SignKid = %d, want %d (the first sign line)", got, want)
	}
	for kid, want := range map[int]bool{7: true, 3: true, 0: false, 255: false} {
		if got := k.byKid[kid] != nil; got != want {
			t.Errorf("kid %d known = %v, want %v", kid, got, want)
		}
	}
	if s := k.String(); strings.Contains(s, hexKey(2)[:8]) || strings.Contains(s, hexKey(1)[:8]) {
		t.Errorf("String shows a secret: %q", s)
	}
}

func TestParseKeysErrors(t *testing.T) {
	id, s1, s2 := "id "+hexKey(1)+"\n", "sign 1 "+hexKey(2)+"\n", "sign 2 "+hexKey(3)+"\n"
	tests := []struct {
		name, file, want string
	}{
		{"empty", "", "keys: no id line"},
		{"no sign", "# c\n" + id, "keys: no sign line"},
		{"no id", s1, "keys: no id line"},
		{"short id", "\nid " + hexKey(1)[:62] + "\n" + s1, "keys:2: id key: has 62 hex digits, want 64"},
		{"long sign", id + "sign 1 " + hexKey(2) + "00\n", "keys:2: sign key: has 66 hex digits"},
		{"not hex", id + "sign 1 " + strings.Repeat("zz", KeySize) + "\n", "keys:2: sign key: is not hexadecimal"},
		{"zero key", id + "sign 1 " + strings.Repeat("0", 64) + "\n", "keys:2: sign key: is all zero"},
		{"two ids", id + s1 + "id " + hexKey(9) + "\n", "keys:3: a second id line"},
		{"duplicate kid", id + s1 + "sign 1 " + hexKey(9) + "\n", "keys:3: kid 1 is listed twice"},
		{"duplicate secret", id + s1 + "sign 2 " + hexKey(2) + "\n", "keys:3: sign key is the same secret as line 2"},
		{"id reused to sign", id + "sign 1 " + hexKey(1) + "\n", "keys:2: sign key is the same secret as line 1"},
		{"kid too big", id + "sign 256 " + hexKey(2) + "\n", `keys:2: kid "256" is not a number from 0 to 255`},
		{"kid negative", id + "sign -1 " + hexKey(2) + "\n", `keys:2: kid "-1" is not`},
		{"sign without kid", id + "sign " + hexKey(2) + "\n", "keys:2: want \"sign <kid 0-255> <64 hex digits>\", got 2 fields"},
		{"id extra field", "id " + hexKey(1) + " x\n" + s2, "keys:1: want \"id <64 hex digits>\", got 3 fields"},
		{"unknown directive", id + s1 + "verify 2 " + hexKey(3) + "\n", `keys:3: unknown directive "verify"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseKeys("keys", []byte(tt.file))
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("ParseKeys error = %v, want prefix %q", err, tt.want)
			}
			for _, n := range []byte{1, 2, 3, 9} {
				if strings.Contains(err.Error(), hexKey(n)[:16]) {
					t.Errorf("error shows a secret: %v", err)
				}
			}
		})
	}
}

func TestLoadKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "room.keys")
	if err := os.WriteFile(path, []byte("id "+hexKey(1)+"\nsign x "+hexKey(2)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadKeys(path)
	if want := path + ":2: kid \"x\""; err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("LoadKeys error = %v, want prefix %q", err, want)
	}
	if _, err := LoadKeys(path + ".missing"); err == nil || !strings.Contains(err.Error(), "reading key file") {
		t.Fatalf("LoadKeys of a missing file: %v", err)
	}
}

// TestMACMatchesCryptoHMAC: the stack HMAC agrees with crypto/hmac for
// every message length it accepts.
func TestMACMatchesCryptoHMAC(t *testing.T) {
	key := []byte(hexKey(5)[:KeySize])
	m := newMacKey(key)
	msg := make([]byte, maxMAC)
	for i := range msg {
		msg[i] = byte(i * 7)
	}
	for n := 0; n <= maxMAC; n++ {
		h := hmac.New(sha256.New, key)
		h.Write(msg[:n])
		if got, want := m.sum(msg[:n]), h.Sum(nil); !hmac.Equal(got[:], want) {
			t.Fatalf("sum of %d bytes = %x, want %x", n, got, want)
		}
	}
}
