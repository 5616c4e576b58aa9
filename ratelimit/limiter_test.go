package ratelimit

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// t0 is the fake clock's epoch: every test passes time explicitly.
var t0 = time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC)

func newLimiter(t testing.TB, p Policy) *Limiter {
	t.Helper()
	if p.Name == "" {
		p.Name = "test"
	}
	l, err := NewLimiter(p)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func addrKey(s string) Key { return KeyFromAddr(netip.MustParseAddr(s), 0) }

// A client at ten times its rate gets the configured rate (±10% over 5 s),
// every refusal carries the exact wait, and a client keeping to its rate on
// another address is never refused meanwhile.
func TestTenTimesRate(t *testing.T) {
	const (
		rate     = 20.0
		burst    = 5
		duration = 5 * time.Second
	)
	l := newLimiter(t, Policy{Rate: rate, Burst: burst})
	abuser, polite := addrKey("203.0.113.9"), addrKey("198.51.100.20")
	abuseEvery := time.Duration(float64(time.Second) / (10 * rate)) // 5 ms
	politeEvery := time.Duration(float64(time.Second) / rate)       // 50 ms

	type refusal struct {
		at   time.Duration
		wait time.Duration
	}
	var (
		allowed    []time.Duration // offsets of the abuser's allowed requests
		refusals   []refusal
		politeSent int
	)
	for off := time.Duration(0); off < duration; off += abuseEvery {
		now := t0.Add(off)
		ok, wait := l.Allow(abuser, now)
		switch {
		case ok && wait != 0:
			t.Fatalf("at %v: allowed with retryAfter %v, want 0", off, wait)
		case ok:
			allowed = append(allowed, off)
		case wait <= 0 || wait > politeEvery:
			// The bucket never goes below zero, so a refused client
			// waits at most the time of one token, 1/rate.
			t.Fatalf("at %v: retryAfter %v, want in (0, %v]", off, wait, politeEvery)
		default:
			refusals = append(refusals, refusal{off, wait})
		}
		if off%politeEvery == 0 {
			politeSent++
			if ok, wait := l.Allow(polite, now); !ok {
				t.Fatalf("at %v: the client at its rate was refused (retryAfter %v)", off, wait)
			}
		}
	}

	want := rate * duration.Seconds()
	got := float64(len(allowed))
	t.Logf("abuser sent %d, allowed %d (configured %.0f over %v), refused %d; polite client sent %d, all allowed",
		int(duration/abuseEvery), len(allowed), want, duration, len(refusals), politeSent)
	if got < want*0.9 || got > want*1.1 {
		t.Errorf("abuser allowed %v requests over %v, want %v ±10%%", got, duration, want)
	}

	// Retry-After is exact: nothing is allowed before refusal+wait, and the
	// first request at or after it is.
	for _, r := range refusals {
		due := r.at + r.wait
		next := -1
		for i, a := range allowed {
			if a > r.at {
				next = i
				break
			}
		}
		if next < 0 {
			if due < duration-abuseEvery {
				t.Fatalf("refused at %v with wait %v but nothing allowed afterwards", r.at, r.wait)
			}
			continue
		}
		if allowed[next] < due {
			t.Fatalf("refused at %v with wait %v (due %v), yet allowed at %v", r.at, r.wait, due, allowed[next])
		}
		firstTick := (due + abuseEvery - 1) / abuseEvery * abuseEvery
		if allowed[next] != firstTick {
			t.Fatalf("refused at %v with wait %v: first allowed at %v, want the first request at or after %v (%v)",
				r.at, r.wait, allowed[next], due, firstTick)
		}
	}
}

func TestRetryAfterExact(t *testing.T) {
	l := newLimiter(t, Policy{Rate: 2, Burst: 5})
	k := addrKey("192.0.2.1")
	for i := range 5 {
		if ok, _ := l.Allow(k, t0); !ok {
			t.Fatalf("request %d of the burst refused", i+1)
		}
	}
	steps := []struct {
		at       time.Duration
		wantOK   bool
		wantWait time.Duration
	}{
		{0, false, 500 * time.Millisecond},
		{100 * time.Millisecond, false, 400 * time.Millisecond},
		{499 * time.Millisecond, false, time.Millisecond},
		{500 * time.Millisecond, true, 0},
		{500 * time.Millisecond, false, 500 * time.Millisecond},
		{750 * time.Millisecond, false, 250 * time.Millisecond},
		{10 * time.Second, true, 0}, // refilled to the burst, not beyond
		{10 * time.Second, true, 0},
		{10 * time.Second, true, 0},
		{10 * time.Second, true, 0},
		{10 * time.Second, true, 0},
		{10 * time.Second, false, 500 * time.Millisecond},
	}
	for i, s := range steps {
		ok, wait := l.Allow(k, t0.Add(s.at))
		if ok != s.wantOK || wait != s.wantWait {
			t.Errorf("step %d at +%v: got (%v, %v), want (%v, %v)", i, s.at, ok, wait, s.wantOK, s.wantWait)
		}
	}
}

// Retry-After is the first nanosecond at which the request is allowed, also
// for rates whose token time is not a whole number of nanoseconds.
func TestRetryAfterIsFirstAllowedInstant(t *testing.T) {
	for _, r := range []float64{3, 7, 0.3, 1e-3, 123.456, 1e6} {
		l := newLimiter(t, Policy{Rate: r, Burst: 1})
		k := addrKey("192.0.2.1")
		now := t0
		for step := range 50 {
			l.Allow(k, now)
			ok, wait := l.Allow(k, now)
			if ok || wait <= 0 {
				t.Fatalf("rate %v step %d: got (%v, %v) right after draining, want a refusal with a wait", r, step, ok, wait)
			}
			if ok, w := l.Allow(k, now.Add(wait-1)); ok {
				t.Fatalf("rate %v step %d: allowed at retryAfter-1ns (%v), want refused (wait %v)", r, step, wait-1, w)
			}
			if ok, _ := l.Allow(k, now.Add(wait)); !ok {
				t.Fatalf("rate %v step %d: refused at exactly retryAfter %v", r, step, wait)
			}
			now = now.Add(wait + time.Duration(step)*time.Millisecond/7)
		}
	}
}

func TestKeyFromAddr(t *testing.T) {
	a := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	tests := []struct {
		name   string
		x, y   netip.Addr
		prefix int
		same   bool
	}{
		{"ipv6 same /64", a("2001:db8:1:2::1"), a("2001:db8:1:2:ffff:ffff:ffff:ffff"), 0, true},
		{"ipv6 next /64", a("2001:db8:1:2::1"), a("2001:db8:1:3::1"), 0, false},
		{"ipv6 /48 policy", a("2001:db8:1:2::1"), a("2001:db8:1:ff::1"), 48, true},
		{"ipv6 /48 policy, other /48", a("2001:db8:1::1"), a("2001:db8:2::1"), 48, false},
		{"ipv6 /60 odd bits", a("2001:db8:1:20::1"), a("2001:db8:1:2f::1"), 60, true},
		{"ipv6 /60 next", a("2001:db8:1:20::1"), a("2001:db8:1:30::1"), 60, false},
		{"ipv6 /128", a("2001:db8::1"), a("2001:db8::2"), 128, false},
		{"ipv6 zone ignored", a("fe80::1%eth0"), a("fe80::2"), 0, true},
		{"ipv4-mapped is ipv4", a("::ffff:192.0.2.1"), a("192.0.2.1"), 0, true},
		{"ipv4 whole address", a("192.0.2.1"), a("192.0.2.2"), 0, false},
		{"ipv4 not a native ipv6 /64", a("192.0.2.1"), a("::"), 0, false},
		{"ipv4-compatible form is not mapped", a("::192.0.2.1"), a("192.0.2.1"), 128, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kx, ky := KeyFromAddr(tt.x, tt.prefix), KeyFromAddr(tt.y, tt.prefix)
			if got := kx == ky; got != tt.same {
				t.Errorf("KeyFromAddr(%v) == KeyFromAddr(%v) is %v (%v, %v), want %v", tt.x, tt.y, got, kx, ky, tt.same)
			}
		})
	}
	if k := KeyFromAddr(netip.Addr{}, 0); k != (Key{}) || k.String() != "invalid" {
		t.Errorf("invalid address: got %v, want the zero Key", k)
	}
	for _, s := range []string{"2001:db8::1", "192.0.2.1", "fe80::1"} {
		if k := KeyFromAddr(netip.MustParseAddr(s), 128); k.isHeader() {
			t.Errorf("KeyFromAddr(%s) is marked as a header key", s)
		}
	}
	if got, want := addrKey("2001:db8:1:2:3:4:5:6").String(), "addr 2001:db8:1:2::"; got != want {
		t.Errorf("String: got %q, want %q", got, want)
	}
}

// IPv6 clients in one /64 share a bucket through the whole path.
func TestIPv6PrefixSharesBucket(t *testing.T) {
	l := newLimiter(t, Policy{Rate: 1, Burst: 3})
	for i := range 3 {
		ip := netip.MustParseAddr(fmt.Sprintf("2001:db8:aa:bb::%x", 0x1000+i*7919))
		if ok, _ := l.Allow(l.Key(ip, nil), t0); !ok {
			t.Fatalf("%v refused within the burst of its /64", ip)
		}
	}
	if ok, _ := l.Allow(l.Key(netip.MustParseAddr("2001:db8:aa:bb:dead:beef:1:2"), nil), t0); ok {
		t.Error("a fourth address in the same /64 was allowed past the shared burst of 3")
	}
	if ok, _ := l.Allow(l.Key(netip.MustParseAddr("2001:db8:aa:bc::1"), nil), t0); !ok {
		t.Error("an address in the next /64 was refused: it must have its own bucket")
	}
	if got := l.Stats().Clients; got != 2 {
		t.Errorf("clients: got %d, want 2", got)
	}
}

func TestKeyFromHeader(t *testing.T) {
	a, b := KeyFromHeader([]byte("key-a")), KeyFromHeader([]byte("key-b"))
	if a == b {
		t.Error("two header values share a key")
	}
	if a != KeyFromHeader([]byte("key-a")) {
		t.Error("the same header value gave two keys")
	}
	if !a.isHeader() || !strings.HasPrefix(a.String(), "header ") {
		t.Errorf("header key %v is not marked as one", a)
	}

	l := newLimiter(t, Policy{Rate: 1, Burst: 1, Header: "X-Api-Key"})
	ip := netip.MustParseAddr("192.0.2.7")
	if got, want := l.Key(ip, []byte("k1")), KeyFromHeader([]byte("k1")); got != want {
		t.Errorf("Key with a header value: got %v, want %v", got, want)
	}
	if got, want := l.Key(ip, nil), KeyFromAddr(ip, 0); got != want {
		t.Errorf("Key without the header: got %v, want the address key %v", got, want)
	}
	// Two API keys from one address are two clients.
	l.Allow(l.Key(ip, []byte("k1")), t0)
	if ok, _ := l.Allow(l.Key(ip, []byte("k2")), t0); !ok {
		t.Error("a second API key from the same address was refused")
	}
	if ok, _ := l.Allow(l.Key(ip, []byte("k1")), t0); ok {
		t.Error("the first API key was allowed past its burst of 1")
	}
}

// When a shard is full the least recently seen client goes, not a recent one.
func TestEvictsLeastRecentlySeen(t *testing.T) {
	l := newLimiter(t, Policy{Rate: 1, Burst: 1, MaxClients: 2 * shardCount, IdleTTL: time.Hour})
	// Three clients that land in one shard (capacity 2).
	var keys []Key
	target := -1
	for i := 0; len(keys) < 3; i++ {
		k := KeyFromAddr(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 0)
		if s := l.shardOf(k); target < 0 || s == target {
			target = s
			keys = append(keys, k)
		}
	}
	a, b, c := keys[0], keys[1], keys[2]
	ms := time.Millisecond
	l.Allow(a, t0)             // a drained
	l.Allow(b, t0.Add(100*ms)) // b drained
	l.Allow(a, t0.Add(200*ms)) // a refused, but seen: b is now the oldest
	l.Allow(c, t0.Add(300*ms)) // full shard: evicts b
	at := t0.Add(300 * ms)
	if ok, _ := l.Allow(a, at); ok {
		t.Error("a (recently seen, drained) was forgotten: allowed again before refilling")
	}
	if ok, _ := l.Allow(b, at); !ok {
		t.Error("b (least recently seen) was kept; it should have been evicted and start full")
	}
	st := l.Stats()
	if st.Evicted != 2 { // c evicted b, then b evicted the oldest again
		t.Errorf("evicted: got %d, want 2", st.Evicted)
	}
}

func TestIdleExpiry(t *testing.T) {
	// IdleTTL 1 s is shorter than the 10 s a drained bucket of 10 at 1/s
	// takes to refill, so the effective TTL is 10 s.
	l := newLimiter(t, Policy{Rate: 1, Burst: 10, IdleTTL: time.Second})
	a := addrKey("192.0.2.1")
	for range 10 {
		l.Allow(a, t0)
	}
	other := func(i int) Key {
		for j := i; ; j++ {
			k := KeyFromAddr(netip.AddrFrom4([4]byte{10, 1, byte(j >> 8), byte(j)}), 0)
			if l.shardOf(k) == l.shardOf(a) && k != a {
				return k
			}
		}
	}
	l.Allow(other(0), t0.Add(5*time.Second)) // passes a's shard: a is not idle long enough
	if st := l.Stats(); st.Expired != 0 {
		t.Fatalf("expired %d after 5 s, want 0: a drained bucket must outlive its refill time", st.Expired)
	}
	// a has earned 5 tokens in 5 s, no more: it was not forgotten.
	n := 0
	for range 10 {
		if ok, _ := l.Allow(a, t0.Add(5*time.Second)); ok {
			n++
		}
	}
	if n != 5 {
		t.Errorf("after 5 s a was allowed %d requests, want 5", n)
	}
	// Not yet 10 s after a's (and the other client's) last request.
	l.Allow(other(1000), t0.Add(14*time.Second))
	if st := l.Stats(); st.Expired != 0 || st.Clients != 3 {
		t.Fatalf("after 14 s: %+v, want none expired and 3 clients", st)
	}
	// 10 s after, traffic in the shard expires both.
	l.Allow(other(1000), t0.Add(15*time.Second))
	if st := l.Stats(); st.Expired != 2 || st.Clients != 1 {
		t.Errorf("after 15 s: %+v, want 2 expired and 1 client left", st)
	}
	// Sweep forgets everyone idle for 10 s, even with no traffic.
	if n := l.Sweep(t0.Add(24 * time.Second)); n != 0 {
		t.Errorf("Sweep at 24 s dropped %d, want 0", n)
	}
	if n := l.Sweep(t0.Add(25 * time.Second)); n != 1 {
		t.Errorf("Sweep at 25 s dropped %d, want 1", n)
	}
	if st := l.Stats(); st.Clients != 0 || st.Expired != 3 {
		t.Errorf("after Sweep: %+v, want 0 clients and 3 expired", st)
	}
	// Freed slots are reused, and a new client starts full.
	for i := range 10 {
		if ok, _ := l.Allow(a, t0.Add(30*time.Second)); !ok {
			t.Fatalf("request %d of a fresh burst refused", i+1)
		}
	}
}

func TestCapacityBound(t *testing.T) {
	const maxClients = 4 * shardCount
	l := newLimiter(t, Policy{Rate: 1, Burst: 1, MaxClients: maxClients})
	const n = 10000
	for i := range n {
		l.Allow(KeyFromAddr(netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}), 0), t0)
	}
	st := l.Stats()
	// 10,000 clients over 64 shards fill every shard (each sees ~156).
	if st.Clients != maxClients || st.Evicted != n-maxClients {
		t.Errorf("after %d clients: %+v, want %d clients and %d evicted", n, st, maxClients, n-maxClients)
	}
}

func TestPolicyValidate(t *testing.T) {
	good := Policy{Name: "buy", Rate: 2, Burst: 5}
	tests := []struct {
		name string
		edit func(*Policy)
		want string // substring of the error; "" for valid
	}{
		{"valid", func(*Policy) {}, ""},
		{"valid with everything", func(p *Policy) {
			p.Header, p.IPv6Prefix, p.MaxClients, p.IdleTTL = "X-Api-Key", 56, 1000, time.Hour
		}, ""},
		{"no name", func(p *Policy) { p.Name = "" }, "name is empty"},
		{"zero rate", func(p *Policy) { p.Rate = 0 }, "rate must be a positive number"},
		{"negative rate", func(p *Policy) { p.Rate = -1 }, "rate must be a positive number"},
		{"zero burst", func(p *Policy) { p.Burst = 0 }, "burst must be at least 1"},
		{"bad header", func(p *Policy) { p.Header = "X Api Key" }, "not a valid header name"},
		{"prefix too long", func(p *Policy) { p.IPv6Prefix = 129 }, "ipv6_prefix must be between 1 and 128"},
		{"too few clients", func(p *Policy) { p.MaxClients = 10 }, "max_clients must be between 64"},
		{"negative ttl", func(p *Policy) { p.IdleTTL = -time.Second }, "idle_ttl must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := good
			tt.edit(&p)
			err := p.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("got %v, want no error", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
			if _, lerr := NewLimiter(p); (lerr == nil) != (err == nil) {
				t.Errorf("NewLimiter error %v disagrees with Validate %v", lerr, err)
			}
		})
	}
	if err := (Policy{Name: "x", Rate: 1}).Validate(); err == nil || !strings.Contains(err.Error(), `ratelimit policy "x": `) {
		t.Errorf("error %v does not name the policy", err)
	}
}

func TestRetryAfterSeconds(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want int64
	}{
		{0, 1}, {time.Nanosecond, 1}, {time.Second, 1}, {time.Second + 1, 2},
		{2500 * time.Millisecond, 3}, {time.Duration(1<<63 - 1), (1<<63 - 1) / int64(time.Second)},
	}
	for _, tt := range tests {
		if got := RetryAfterSeconds(tt.d); got != tt.want {
			t.Errorf("RetryAfterSeconds(%v) = %d, want %d", tt.d, got, tt.want)
		}
	}
	if got := string(AppendRetryAfter([]byte("x"), 1500*time.Millisecond)); got != "x2" {
		t.Errorf("AppendRetryAfter: got %q, want %q", got, "x2")
	}
}

// TestShardsEvenForEverySeed: the seed is random per limiter, so the spread
// of clients over shards must be even for every seed, not on average. 4096
// consecutive IPv4 clients (what one /20 sends) must reach every shard
// about 64 times. The hash this replaced left, for about one seed in 300,
// runs of such addresses off some shards, which made TestIdleExpiry fail
// 11 times in 3000 runs.
func TestShardsEvenForEverySeed(t *testing.T) {
	for range 2000 {
		l := newLimiter(t, Policy{Rate: 1, Burst: 1})
		var per [shardCount]int
		for j := range 4096 {
			per[l.shardOf(addrKey(netip.AddrFrom4([4]byte{10, 1, byte(j >> 8), byte(j)}).String()))]++
		}
		for s, n := range per {
			if n < 24 || n > 120 {
				t.Fatalf("seed %#x: shard %d holds %d of 4096 consecutive clients, want about 64", l.seed, s, n)
			}
		}
	}
}
