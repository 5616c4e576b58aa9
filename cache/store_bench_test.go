package cache

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkPurgePath is the cost of one purchase's purge of one game's
// path, holding one entry, in a store of n entries of other paths: it must
// not grow with n, or a buy storm's purges cost more the fuller the cache.
// Each iteration stores the
// entry again (untimed) and purges it.
func BenchmarkPurgePath(b *testing.B) {
	for _, n := range []int{1_000, 10_000, 100_000} {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			s, err := NewStore(1<<30, 16, 1<<20)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			p := Policy{TTL: time.Hour}
			mk := func(k string) *Entry {
				e, _ := p.Entry([]byte(k), Hash([]byte(k)), resp(200), false)
				return e
			}
			for i := range n {
				storeNow(s, mk(fmt.Sprintf("/static/app.%d.css\x00edge", i)))
			}
			path := []byte("/api/games/7")
			e := mk("/api/games/7\x00edge")
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				storeNow(s, e)
				b.StartTimer()
				if s.PurgePath(path) != 1 {
					b.Fatal("the path's entries were not purged")
				}
			}
		})
	}
}
