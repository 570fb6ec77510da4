import Testing

@testable import ServeCore

/// The dashboard's timeline ring, on a clock the tests move by hand.
@Suite("Deployment history")
struct DeploymentHistoryTests {
    let a = DeploymentID(app: "app", name: "A")
    let b = DeploymentID(app: "app", name: "B")

    func reading(_ target: Int, running: Int? = nil, ongoing: Int = 0, queued: Int = 0) -> DeploymentHistory.Reading {
        DeploymentHistory.Reading(target: target, running: running ?? target, ongoing: ongoing, queued: queued)
    }

    @Test("a sample is due once an interval has passed since the last")
    func sampledOncePerInterval() {
        var history = DeploymentHistory(configuration: .init(window: 60, interval: 1))
        #expect(history.isDue(now: 0))
        history.sample([self.a: self.reading(1)], now: 0)
        #expect(!history.isDue(now: 0.9))
        #expect(history.isDue(now: 1))
    }

    @Test("a sample equal to the previous one is not stored; a change is, oldest first")
    func repeatsAreNotStored() {
        var history = DeploymentHistory(configuration: .init(window: 60, interval: 1))
        for t in 0..<10 { history.sample([self.a: self.reading(1)], now: Double(t)) }
        history.sample([self.a: self.reading(1, ongoing: 3)], now: 10)
        history.sample([self.a: self.reading(2, running: 1, ongoing: 3, queued: 1)], now: 11)
        let samples = history.samples(self.a, now: 11)
        #expect(samples.map(\.t) == [0, 10, 11])
        #expect(samples.last?.reading == self.reading(2, running: 1, ongoing: 3, queued: 1))
    }

    @Test("samples older than the window go, except the one that holds at the window's start")
    func windowEviction() {
        var history = DeploymentHistory(configuration: .init(window: 10, interval: 1))
        for t in 0...30 { history.sample([self.a: self.reading(1, ongoing: t)], now: Double(t)) }
        let samples = history.samples(self.a, now: 30)
        // The window is [20, 30]: the sample at 20 holds at its start.
        #expect(samples.map(\.t) == (20...30).map(Double.init))
        #expect(samples.first?.reading.ongoing == 20)

        // A value that held since long before the window's start is still the value there.
        history.sample([self.a: self.reading(1, ongoing: 99)], now: 31)
        for t in 32...60 { history.sample([self.a: self.reading(1, ongoing: 99)], now: Double(t)) }
        #expect(history.samples(self.a, now: 60).map(\.t) == [31])
    }

    @Test("each deployment keeps at most maxSamples, however fast the samples come")
    func sampleBound() {
        let configuration = DeploymentHistory.Configuration(window: 100, interval: 0.5)
        #expect(configuration.maxSamples == 201)
        var history = DeploymentHistory(configuration: configuration)
        // Ten times faster than the interval (a caller that ignores `isDue`), all within the window.
        for step in 0..<1000 {
            history.sample([self.a: self.reading(1, ongoing: step)], now: Double(step) * 0.05)
        }
        let samples = history.samples(self.a, now: 49.95)
        #expect(samples.count == 201)
        // The newest are kept, in order.
        #expect(samples.last?.reading.ongoing == 999)
        #expect(samples.first?.reading.ongoing == 799)
        #expect(samples.map(\.t) == samples.map(\.t).sorted())
    }

    @Test("decisions are kept in order, bounded, and those older than the window go")
    func decisions() {
        var history = DeploymentHistory(configuration: .init(window: 100, interval: 1, maxDecisions: 3))
        for step in 0..<5 {
            history.decided(self.a, .init(t: Double(step), kind: "autoscale", before: step, after: step + 1, reason: "step \(step)"))
        }
        #expect(history.decisions(self.a, now: 10).map(\.reason) == ["step 2", "step 3", "step 4"])
        // Past the window, on the next sample.
        history.sample([self.a: self.reading(5)], now: 103.5)
        #expect(history.decisions(self.a, now: 103.5).map(\.after) == [5])
        // And read at a later time, without a sample since.
        #expect(history.decisions(self.a, now: 200).isEmpty)
    }

    @Test("a deployment left out of a sample was deleted: its samples and decisions go")
    func deletedDeploymentsAreDropped() {
        var history = DeploymentHistory(configuration: .init(window: 60, interval: 1))
        history.sample([self.a: self.reading(1), self.b: self.reading(2)], now: 0)
        history.decided(self.b, .init(t: 0.5, kind: "scale", before: 2, after: 3, reason: "config changed num_replicas"))
        #expect(history.deployments == [self.a, self.b])
        history.sample([self.a: self.reading(1)], now: 1)
        #expect(history.deployments == [self.a])
        #expect(history.samples(self.b, now: 1).isEmpty)
        #expect(history.decisions(self.b, now: 1).isEmpty)
    }

    @Test("JSON: Unix times from the caller's offset, the window, and each deployment's series")
    func json() throws {
        var history = DeploymentHistory(configuration: .init(window: 900, interval: 1))
        history.sample([self.a: self.reading(2, running: 1, ongoing: 4, queued: 3)], now: 10)
        history.decided(self.a, .init(t: 10.25, kind: "autoscale", before: 1, after: 2, reason: "ongoing 4 / target 2"))
        let json = history.json(now: 12, unixNow: 1_000_012)
        #expect(json["window_s"]?.doubleValue == 900)
        #expect(json["interval_s"]?.doubleValue == 1)
        #expect(json["now"]?.doubleValue == 1_000_012)
        let series = try #require(json["deployments"]?["app/A"])
        #expect(series["app"]?.stringValue == "app")
        #expect(series["deployment"]?.stringValue == "A")
        let sample = try #require(series["samples"]?.arrayValue?.first)
        #expect(sample["t"]?.doubleValue == 1_000_010)
        #expect(sample["target"]?.doubleValue == 2)
        #expect(sample["running"]?.doubleValue == 1)
        #expect(sample["ongoing"]?.doubleValue == 4)
        #expect(sample["queued"]?.doubleValue == 3)
        let decision = try #require(series["decisions"]?.arrayValue?.first)
        #expect(decision["t"]?.doubleValue == 1_000_010.25)
        #expect(decision["kind"]?.stringValue == "autoscale")
        #expect(decision["before"]?.doubleValue == 1)
        #expect(decision["after"]?.doubleValue == 2)
        #expect(decision["reason"]?.stringValue == "ongoing 4 / target 2")
    }

    @Test("the ring drops its oldest when full and refills the room that removals make")
    func ring() {
        var ring = Ring<Int>(capacity: 3)
        for value in 1...5 { ring.append(value) }
        #expect(Array(ring) == [3, 4, 5])
        ring.removeFirst()
        #expect(Array(ring) == [4, 5])
        ring.append(6)
        ring.append(7)
        #expect(Array(ring) == [5, 6, 7])
        ring.removeFirst()
        ring.removeFirst()
        ring.removeFirst()
        ring.removeFirst()
        #expect(ring.count == 0 && ring.first == nil && ring.last == nil)
        ring.append(8)
        #expect(Array(ring) == [8])
        // Growing after removals (storage not yet at capacity, oldest not in its first slot).
        var growing = Ring<Int>(capacity: 4)
        growing.append(1)
        growing.append(2)
        growing.removeFirst()
        growing.append(3)
        growing.append(4)
        growing.append(5)
        #expect(Array(growing) == [2, 3, 4, 5])
        growing.append(6)
        #expect(Array(growing) == [3, 4, 5, 6])
    }
}
