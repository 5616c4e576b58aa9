package origin

import (
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// The benchmarks drive a real origin over loopback HTTP against the test
// cluster that TestMain starts:
//
//	go test -run '^$' -bench . -benchtime 5s ./origin/
//
// Each reports its throughput as a custom metric (purchases/s, reqs/s);
// ns/op is the same figure inverted, across all goroutines.

func reportRate(b *testing.B, start time.Time, unit string) {
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), unit)
}

// benchBuy posts one-seat purchases to the games that pick chooses.
func benchBuy(b *testing.B, pick func(i int64) int64) {
	s := startServer(b, nil)
	var n, failed atomic.Int64
	b.SetParallelism(16) // 32 concurrent buyers on 2 cores
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			r, err := doErr("POST", fmt.Sprintf("%s/api/games/%d/buy", s.URL, pick(i)),
				fmt.Sprintf(`{"quantity": 1, "email": "bench%d@example.com"}`, i), "Content-Type", "application/json")
			if err != nil || r.Status != http.StatusCreated {
				failed.Add(1)
			}
		}
	})
	reportRate(b, start, "purchases/s")
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d of %d purchases failed", f, b.N)
	}
}

// BenchmarkPurchaseHotGame: every buyer wants the same game, so every
// purchase queues on one row lock: the worst case of a ticket drop.
func BenchmarkPurchaseHotGame(b *testing.B) {
	game := createGame(b, 10_000_000)
	benchBuy(b, func(int64) int64 { return game })
}

// BenchmarkPurchaseSpread: purchases round-robin over the whole seeded
// programme (624 games), so row locks rarely meet.
func BenchmarkPurchaseSpread(b *testing.B) {
	benchBuy(b, func(i int64) int64 { return 1 + i%seedGames })
}

// BenchmarkListGames: GET /api/games (first page, 100 games, ~27 KB) from the
// origin directly, read from the replicas.
func BenchmarkListGames(b *testing.B) {
	s := startServer(b, nil)
	b.SetParallelism(16)
	var failed atomic.Int64
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r, err := doErr("GET", s.URL+"/api/games", "")
			if err != nil || r.Status != http.StatusOK {
				failed.Add(1)
			}
		}
	})
	reportRate(b, start, "reqs/s")
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d of %d listings failed", f, b.N)
	}
}
