import Testing

@testable import ServeCore

@Suite("Metrics window")
struct MetricsWindowTests {
    func close(_ value: Double?, _ expected: Double, within tolerance: Double = 1e-9) -> Bool {
        guard let value else { return false }
        return abs(value - expected) <= tolerance
    }

    @Test("the mean is weighted by how long each value held")
    func timeWeightedMean() {
        var window = MetricsWindow(lookBack: 30)
        window.record(source: "r1", value: 2, at: 0)
        window.record(source: "r1", value: 6, at: 15)
        // 2 for 15 s, then 6 for 5 s: (30 + 30) / 20 = 3; the window starts at the first sample.
        #expect(self.close(window.aggregate(now: 20, aggregation: "mean"), 3))
        // 2 for 15 s and 6 for 15 s.
        #expect(self.close(window.aggregate(now: 30, aggregation: "mean"), 4))
    }

    @Test("sources are summed as step functions, each holding its last value until now")
    func sumOfSources() {
        var window = MetricsWindow(lookBack: 10)
        window.record(source: "r1", value: 1, at: 0)
        window.record(source: "router", value: 3, at: 5)
        // [0, 5): 1; [5, 10]: 1 + 3.
        #expect(self.close(window.aggregate(now: 10, aggregation: "mean"), 2.5))
        #expect(window.aggregate(now: 10, aggregation: "max") == 4)
        #expect(window.aggregate(now: 10, aggregation: "min") == 1)
        #expect(window.latest() == 4)
        // Long after the last samples, the window holds only the last values.
        #expect(window.aggregate(now: 100, aggregation: "mean") == 4)
        #expect(window.aggregate(now: 100, aggregation: "min") == 4)
    }

    @Test("max and min over a step function, ignoring instants that held no time")
    func maxAndMin() {
        var window = MetricsWindow(lookBack: 60)
        window.record(source: "a", value: 4, at: 0)
        window.record(source: "a", value: 9, at: 10)
        window.record(source: "a", value: 1, at: 20)
        // A value replaced at the same instant never held.
        window.record(source: "a", value: 100, at: 25)
        window.record(source: "b", value: 0, at: 25)
        window.record(source: "a", value: 2, at: 25)
        #expect(window.aggregate(now: 30, aggregation: "max") == 9)
        #expect(window.aggregate(now: 30, aggregation: "min") == 1)
        #expect(self.close(window.aggregate(now: 30, aggregation: "mean"), (40 + 90 + 5 + 10) / 30))
        // The value at `now` counts for max and min even though it has held no time yet.
        window.record(source: "b", value: 20, at: 30)
        #expect(window.aggregate(now: 30, aggregation: "max") == 22)
        #expect(self.close(window.aggregate(now: 30, aggregation: "mean"), (40 + 90 + 5 + 10) / 30))
    }

    @Test("the window is clipped to look_back_period_s")
    func lookBackClipping() {
        var window = MetricsWindow(lookBack: 30)
        window.record(source: "r1", value: 100, at: -100)
        window.record(source: "r1", value: 10, at: 0)
        window.record(source: "r1", value: 0, at: 50)
        // [30, 60]: 10 for 20 s, 0 for 10 s; the 100 long before is outside.
        #expect(self.close(window.aggregate(now: 60, aggregation: "mean"), 200.0 / 30))
        #expect(window.aggregate(now: 60, aggregation: "max") == 10)
        #expect(window.aggregate(now: 60, aggregation: "min") == 0)
        // Later, only the 0 is left in the window.
        #expect(window.aggregate(now: 81, aggregation: "max") == 0)
    }

    @Test("a window with no data is nil, and samples after now do not count")
    func emptyWindow() {
        var window = MetricsWindow(lookBack: 30)
        #expect(window.aggregate(now: 0, aggregation: "mean") == nil)
        #expect(window.latest() == 0)
        #expect(window.isEmpty)
        window.record(source: "r1", value: 5, at: 10)
        #expect(window.aggregate(now: 9, aggregation: "mean") == nil)
        #expect(window.aggregate(now: 10, aggregation: "mean") == 5)
        window.remove(source: "r1")
        #expect(window.aggregate(now: 20, aggregation: "mean") == nil)
        #expect(window.isEmpty)
    }

    @Test("stale sources expire; a repeated value still counts as a sign of life")
    func staleExpiry() {
        var window = MetricsWindow(lookBack: 30)
        window.record(source: "gone", value: 7, at: 0)
        window.record(source: "alive", value: 3, at: 0)
        window.record(source: "alive", value: 3, at: 8)
        window.expire(now: 10, staleAfter: 5)
        #expect(window.sources == ["alive"])
        #expect(window.latest() == 3)
        #expect(window.aggregate(now: 10, aggregation: "mean") == 3)
        // Exactly `staleAfter` old is not yet stale.
        window.expire(now: 13, staleAfter: 5)
        #expect(window.sources == ["alive"])
        window.expire(now: 13.5, staleAfter: 5)
        #expect(window.aggregate(now: 14, aggregation: "mean") == nil)
    }

    @Test("a held source (changes only) keeps its last value however long it is quiet, until removed; expiry drops only the others")
    func heldSources() {
        var window = MetricsWindow(lookBack: 30)
        window.record(source: "replica", value: 4, at: 0, held: true)
        window.record(source: "router", value: 2, at: 0)
        window.expire(now: 100, staleAfter: 5)
        #expect(window.sources == ["replica"])
        #expect(window.latest() == 4)
        #expect(window.aggregate(now: 100, aggregation: "mean") == 4)
        // A source reported as expiring again can go stale again; held again, it holds.
        window.record(source: "replica", value: 1, at: 100)
        window.expire(now: 106, staleAfter: 5)
        #expect(window.isEmpty)
        window.record(source: "replica", value: 3, at: 110, held: true)
        window.expire(now: 500, staleAfter: 5)
        #expect(window.latest() == 3)
        window.remove(source: "replica")
        #expect(window.isEmpty)
    }

    @Test("removing a source drops its whole history")
    func removal() {
        var window = MetricsWindow(lookBack: 30)
        window.record(source: "r1", value: 4, at: 0)
        window.record(source: "r2", value: 6, at: 0)
        #expect(window.aggregate(now: 10, aggregation: "mean") == 10)
        window.remove(source: "r2")
        #expect(window.aggregate(now: 10, aggregation: "mean") == 4)
        #expect(window.aggregate(now: 10, aggregation: "max") == 4)
        #expect(window.latest() == 4)
        window.remove(source: "never-there")
        #expect(window.sources == ["r1"])
    }

    @Test("look-back 0 or all data at now gives the value at now; unknown names mean 'mean'")
    func degenerateWindows() {
        var instant = MetricsWindow(lookBack: 0)
        instant.record(source: "r1", value: 2, at: 0)
        instant.record(source: "r1", value: 8, at: 5)
        #expect(instant.aggregate(now: 7, aggregation: "mean") == 8)
        #expect(instant.aggregate(now: 7, aggregation: "min") == 8)

        var window = MetricsWindow(lookBack: 30)
        window.record(source: "r1", value: 3, at: 10)
        window.record(source: "r2", value: 4, at: 10)
        #expect(window.aggregate(now: 10, aggregation: "mean") == 7)
        window.record(source: "r1", value: 1, at: 20)
        #expect(window.aggregate(now: 30, aggregation: "MEAN") == window.aggregate(now: 30, aggregation: "mean"))
        #expect(window.aggregate(now: 30, aggregation: "median") == window.aggregate(now: 30, aggregation: "mean"))
    }

    @Test("out-of-order and same-instant samples; bad values ignored, negatives count as 0")
    func orderingAndValues() {
        var window = MetricsWindow(lookBack: 30)
        window.record(source: "r1", value: 2, at: 0)
        window.record(source: "r1", value: 6, at: 20)
        window.record(source: "r1", value: 4, at: 10)  // late report, put in its place
        #expect(self.close(window.aggregate(now: 30, aggregation: "mean"), (20 + 40 + 60) / 30))
        window.record(source: "r1", value: 8, at: 20)  // same instant: replaces 6
        #expect(window.latest() == 8)
        window.record(source: "r1", value: .nan, at: 25)
        window.record(source: "r1", value: 1, at: .infinity)
        #expect(window.latest() == 8)
        window.record(source: "r2", value: -3, at: 25)
        #expect(window.latest() == 8)
        #expect(window.aggregate(now: 30, aggregation: "min") == 2)
    }

    @Test("storage stays bounded by the look-back")
    func bounded() {
        var window = MetricsWindow(lookBack: 30)
        for tick in 0..<10_000 {
            window.record(source: "r1", value: Double(tick % 7), at: Double(tick) / 10)
            window.record(source: "router", value: 0, at: Double(tick) / 10)
        }
        // 30 s of 0.1 s samples, plus the one giving the value at the window's start; the
        // router's repeated zero is one sample.
        #expect(window.storedSampleCount <= 302 + 1)
        let mean = window.aggregate(now: 999.9, aggregation: "mean") ?? -1
        #expect(mean > 2.8 && mean < 3.2)
    }

    @Test("the default staleness is Ray's max(2 × metrics_interval_s, 10 s)")
    func defaultStaleness() {
        #expect(MetricsWindow.defaultStaleAfter(metricsIntervalS: 10) == 20)
        #expect(MetricsWindow.defaultStaleAfter(metricsIntervalS: 1) == 10)
    }
}
