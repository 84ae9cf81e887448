package main

import (
	"math"
	"testing"
)

// The same cases as tests/bench/test_stats.py: the Go client and rillet.bench.stats agree on every figure.
func TestPercentileIsTheBenchmarksDefinition(t *testing.T) {
	cases := []struct {
		samples []float64
		q, want float64
	}{
		{[]float64{7}, 99, 7},
		{[]float64{1, 2, 3, 4}, 50, 2.5},
		{[]float64{1, 2, 3, 4}, 0, 1},
		{[]float64{1, 2, 3, 4}, 100, 4},
		{[]float64{1, 2, 3, 4}, 90, 3.7},
		{[]float64{10, 20, 30, 40, 50, 60, 70, 80, 90, 100}, 99, 99.1},
		{[]float64{10, 20, 30, 40, 50, 60, 70, 80, 90, 100}, 10, 19},
	}
	for _, c := range cases {
		if got := percentile(c.samples, c.q); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("percentile(%v, %v) = %v, want %v", c.samples, c.q, got, c.want)
		}
	}
}
