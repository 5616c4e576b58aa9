package ratelimit

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
)

var testTrusted = []netip.Prefix{
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("fd00::/8"),
}

func TestClientIP(t *testing.T) {
	tests := []struct {
		name string
		peer string
		xff  string
		want string
	}{
		{"untrusted peer, no header", "203.0.113.5", "", "203.0.113.5"},
		{"untrusted peer ignores header", "203.0.113.5", "198.51.100.1", "203.0.113.5"},
		{"trusted peer, no header", "127.0.0.1", "", "127.0.0.1"},
		{"trusted peer, one client", "127.0.0.1", "198.51.100.1", "198.51.100.1"},
		{"right-most untrusted wins over spoofed left", "127.0.0.1", "1.2.3.4, 198.51.100.1", "198.51.100.1"},
		{"skips trusted hops", "127.0.0.1", "1.2.3.4, 198.51.100.1, 10.0.0.7, 10.0.0.8", "198.51.100.1"},
		{"all trusted: left-most", "127.0.0.1", "10.0.0.1, 10.0.0.2", "10.0.0.1"},
		{"malformed right-most: the peer", "127.0.0.1", "198.51.100.1, bogus", "127.0.0.1"},
		{"malformed after a trusted hop: that hop", "127.0.0.1", "198.51.100.1, bogus, 10.0.0.9", "10.0.0.9"},
		{"malformed left of the client is never read", "127.0.0.1", "bogus, 198.51.100.1", "198.51.100.1"},
		{"empty entries skipped", "127.0.0.1", " , 198.51.100.1 ,, ", "198.51.100.1"},
		{"tabs and spaces", "127.0.0.1", "\t198.51.100.1\t", "198.51.100.1"},
		{"ipv4 with port", "127.0.0.1", "198.51.100.1:4711", "198.51.100.1"},
		{"ipv6 in brackets with port", "127.0.0.1", "[2001:db8::1]:443", "2001:db8::1"},
		{"ipv6 in brackets", "127.0.0.1", "[2001:db8::1]", "2001:db8::1"},
		{"bare ipv6", "::1", "2001:db8::1", "2001:db8::1"},
		{"ipv6 zone is malformed", "::1", "fe80::1%eth0", "::1"},
		{"port out of range is malformed", "127.0.0.1", "198.51.100.1:65536", "127.0.0.1"},
		{"leading zero is malformed", "127.0.0.1", "198.51.100.01", "127.0.0.1"},
		{"mapped client unmapped", "127.0.0.1", "::ffff:198.51.100.1", "198.51.100.1"},
		{"mapped peer is trusted as ipv4", "::ffff:127.0.0.1", "198.51.100.1", "198.51.100.1"},
		{"mapped untrusted peer unmapped", "::ffff:203.0.113.5", "198.51.100.1", "203.0.113.5"},
		{"trusted ipv6 hop skipped", "::1", "2001:db8::1, fd00::5", "2001:db8::1"},
		{"obfuscated identifier is malformed", "127.0.0.1", "unknown", "127.0.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ClientIP(netip.MustParseAddr(tt.peer), []byte(tt.xff), testTrusted)
			if want := netip.MustParseAddr(tt.want); got != want {
				t.Errorf("ClientIP(%s, %q) = %v, want %v", tt.peer, tt.xff, got, want)
			}
		})
	}
}

func TestClientIPFields(t *testing.T) {
	peer := netip.MustParseAddr("127.0.0.1")
	tests := []struct {
		name   string
		fields []string
		want   string
	}{
		{"the last field is read first", []string{"1.2.3.4", "198.51.100.1"}, "198.51.100.1"},
		{"walks into the earlier field past trusted hops", []string{"198.51.100.1", "10.0.0.1"}, "198.51.100.1"},
		{"stops at a malformed entry", []string{"198.51.100.1", "bogus, 10.0.0.1"}, "10.0.0.1"},
		{"no fields", nil, "127.0.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var fields [][]byte
			for _, f := range tt.fields {
				fields = append(fields, []byte(f))
			}
			got := ClientIPFields(peer, fields, testTrusted)
			if want := netip.MustParseAddr(tt.want); got != want {
				t.Errorf("ClientIPFields(%q) = %v, want %v", tt.fields, got, want)
			}
			if len(tt.fields) > 0 {
				joined := []byte(strings.Join(tt.fields, ", "))
				if one := ClientIP(peer, joined, testTrusted); one != got {
					t.Errorf("ClientIP of the joined fields %q = %v, differs from %v", joined, one, got)
				}
			}
		})
	}
}

// 1,000 requests with 1,000 different spoofed X-Forwarded-For values from
// an untrusted peer are one client; the same through a trusted proxy are
// 1,000 clients, each limited on its own.
func TestSpoofedForwardedFor(t *testing.T) {
	const n, burst = 1000, 10
	for _, tt := range []struct {
		name        string
		peer        string
		wantClients int
		wantAllowed int
	}{
		{"untrusted peer", "203.0.113.66", 1, burst},
		{"trusted proxy", "10.1.2.3", n, n},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := newLimiter(t, Policy{Rate: 1, Burst: burst})
			peer := netip.MustParseAddr(tt.peer)
			allowed, keys := 0, map[Key]bool{}
			for i := range n {
				// A client-supplied (spoofed) entry, the real client
				// the proxy saw, and the proxy's own hop.
				xff := fmt.Sprintf("6.6.6.%d, 100.64.%d.%d, 10.0.0.1", i%256, i/256, i%256)
				ip := ClientIP(peer, []byte(xff), testTrusted)
				k := l.Key(ip, nil)
				keys[k] = true
				if ok, _ := l.Allow(k, t0); ok {
					allowed++
				}
			}
			if len(keys) != tt.wantClients || allowed != tt.wantAllowed {
				t.Errorf("%d keys, %d allowed; want %d keys, %d allowed", len(keys), allowed, tt.wantClients, tt.wantAllowed)
			}
			if got := l.Stats().Clients; got != tt.wantClients {
				t.Errorf("limiter holds %d clients, want %d", got, tt.wantClients)
			}
		})
	}
}

func TestAllowList(t *testing.T) {
	al := NewAllowList([]netip.Prefix{
		netip.MustParsePrefix("192.0.2.0/24"),
		netip.MustParsePrefix("::ffff:198.51.100.0/120"), // mapped form of 198.51.100.0/24
		netip.MustParsePrefix("2001:db8:abcd::1/48"),     // not masked as written
		{}, // invalid: skipped
	})
	tests := []struct {
		addr string
		want bool
	}{
		{"192.0.2.77", true},
		{"::ffff:192.0.2.77", true},
		{"192.0.3.1", false},
		{"198.51.100.9", true},
		{"2001:db8:abcd:1::9", true},
		{"2001:db8:abce::1", false},
	}
	for _, tt := range tests {
		if got := al.Contains(netip.MustParseAddr(tt.addr)); got != tt.want {
			t.Errorf("Contains(%s) = %v, want %v", tt.addr, got, tt.want)
		}
	}
	if got := len(al.Prefixes()); got != 3 {
		t.Errorf("%d prefixes kept, want 3", got)
	}
	var none *AllowList
	if none.Contains(netip.MustParseAddr("192.0.2.1")) || (&AllowList{}).Contains(netip.MustParseAddr("192.0.2.1")) {
		t.Error("a nil or zero AllowList contains an address")
	}
}

// refEntries parses a header with the standard library, independently of
// walkXFF: split on commas, trim, strip a port, netip.ParseAddr. ok is false
// for a malformed entry.
type refEntry struct {
	addr netip.Addr
	ok   bool
}

func refEntries(xff string) []refEntry {
	var out []refEntry
	for _, e := range strings.Split(xff, ",") {
		e = strings.Trim(e, " \t")
		if e == "" {
			continue
		}
		host := e
		if strings.HasPrefix(e, "[") {
			end := strings.IndexByte(e, ']')
			if end < 0 {
				out = append(out, refEntry{})
				continue
			}
			host = e[1:end]
			if rest := e[end+1:]; rest != "" && !refPort(rest) {
				out = append(out, refEntry{})
				continue
			}
			if !strings.Contains(host, ":") { // brackets hold IPv6 only
				out = append(out, refEntry{})
				continue
			}
		} else if strings.Count(e, ":") == 1 {
			c := strings.IndexByte(e, ':')
			host = e[:c]
			if !refPort(e[c:]) || !strings.Contains(host, ".") {
				out = append(out, refEntry{})
				continue
			}
		}
		a, err := netip.ParseAddr(host)
		if err != nil || a.Zone() != "" {
			out = append(out, refEntry{})
			continue
		}
		out = append(out, refEntry{a.Unmap(), true})
	}
	return out
}

func refPort(s string) bool {
	if len(s) < 2 || len(s) > 6 || s[0] != ':' {
		return false
	}
	for _, c := range s[1:] {
		if c < '0' || c > '9' {
			return false
		}
	}
	n, err := strconv.Atoi(s[1:])
	return err == nil && n <= 65535
}

// refClientIP is ClientIP written the obvious way, on refEntries.
func refClientIP(peer netip.Addr, xff string, trusted []netip.Prefix) netip.Addr {
	cur := peer.Unmap()
	if !inPrefixes(trusted, cur) {
		return cur
	}
	es := refEntries(xff)
	for i := len(es) - 1; i >= 0; i-- {
		if !es[i].ok {
			return cur
		}
		cur = es[i].addr
		if !inPrefixes(trusted, cur) {
			return cur
		}
	}
	return cur
}

// FuzzClientIP: ClientIP never panics, returns the peer or an address the
// header holds, and agrees with the standard-library reference.
func FuzzClientIP(f *testing.F) {
	for _, s := range []string{
		"", "198.51.100.1", "1.2.3.4, 198.51.100.1, 10.0.0.7", "bogus, 10.0.0.1", "[2001:db8::1]:443",
		"::ffff:1.2.3.4", "fe80::1%eth0", "1:2:3:4:5:6:7:8", "::", "1::", "::1.2.3.4", "1.2.3.4:80, ,,",
		"[::1]", "[1.2.3.4]", "001.2.3.4", "1.2.3.256", "::ffff:10.0.0.1", "1:2:3:4:5:6:1.2.3.4",
	} {
		f.Add("127.0.0.1", s)
		f.Add("203.0.113.1", s)
	}
	f.Fuzz(func(t *testing.T, peerS, xff string) {
		peer, err := netip.ParseAddr(peerS)
		if err != nil {
			peer = netip.MustParseAddr("127.0.0.1")
		}
		got := ClientIP(peer, []byte(xff), testTrusted)
		if got == peer.Unmap() {
			return
		}
		found := false
		for _, e := range refEntries(xff) {
			if e.ok && e.addr == got {
				found = true
				break
			}
		}
		if !found {
			t.Fatalf("ClientIP(%v, %q) = %v: neither the peer nor an address in the header", peer, xff, got)
		}
		if want := refClientIP(peer, xff, testTrusted); got != want {
			t.Fatalf("ClientIP(%v, %q) = %v, the reference says %v", peer, xff, got, want)
		}
	})
}

// FuzzParseAddr holds the hand-written address parser to netip.ParseAddr.
func FuzzParseAddr(f *testing.F) {
	for _, s := range []string{
		"1.2.3.4", "0.0.0.0", "255.255.255.255", "1.2.3", "1.2.3.4.5", "01.2.3.4", "::", "::1", "1::",
		"1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8:9", "1::2::3", "::ffff:1.2.3.4", "1:2:3:4:5:6:1.2.3.4",
		"1:2:3:4:5:6:7:1.2.3.4", "12345::", "fe80::1%eth0", ":1", "1:", "1.2.3.4:5", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := parseAddr([]byte(s))
		want, err := netip.ParseAddr(s)
		wantOK := err == nil && want.Zone() == ""
		if ok != wantOK || (ok && got != want) {
			t.Fatalf("parseAddr(%q) = %v, %v; netip.ParseAddr = %v, %v", s, got, ok, want, err)
		}
	})
}
