/// The dashboard's timeline: per deployment, the last `window` seconds of its target and running
/// replicas, the requests running at its replicas and those waiting at the routers, and the
/// decisions that changed its target (DESIGN.md "Dashboard"; served by `GET /api/serve/history`).
///
/// Pure: times are seconds on any monotonic clock, passed in by the caller (the controller's
/// autoscaler tick). The history is sampled at most once per `interval`; a sample equal to the
/// deployment's previous one is not stored, because each sample holds until the next (the last
/// one until now), so an idle deployment costs one sample however long it idles, and a busy one
/// at most `Configuration.maxSamples`. Decisions are kept to `Configuration.maxDecisions` per
/// deployment. Both are rings of a fixed size: the oldest entry makes room for the newest.
public struct DeploymentHistory: Sendable {
    public struct Configuration: Sendable, Hashable {
        /// How far back the timeline goes, seconds (default 900: the dashboard's 15 minutes).
        public var window: Double
        /// The least time between two samples, seconds (default 1: the dashboard polls once a
        /// second).
        public var interval: Double
        /// Decisions kept per deployment (default 64: one every 14 s over the whole window; more
        /// would not be told apart on a plot).
        public var maxDecisions: Int

        public init(window: Double = 900, interval: Double = 1, maxDecisions: Int = 64) {
            self.window = window.isFinite ? max(window, 1) : 900
            self.interval = interval.isFinite ? max(interval, 0.001) : 1
            self.maxDecisions = max(maxDecisions, 1)
        }

        /// Samples kept per deployment: one per interval over the window, and the one before it
        /// that gives the value at the window's start.
        public var maxSamples: Int {
            Int((self.window / self.interval).rounded(.up)) + 1
        }
    }

    /// What one deployment looked like at `t`.
    public struct Sample: Sendable, Hashable {
        public var t: Double
        public var reading: Reading
    }

    /// The values sampled, without the time.
    public struct Reading: Sendable, Hashable {
        /// The replicas the controller wants.
        public var target: Int
        /// Replicas RUNNING (of any version: during a rolling update, old and new serve).
        public var running: Int
        /// Requests running at its replicas, as they last reported.
        public var ongoing: Int
        /// Requests waiting at the routers (every proxy's and the handles') for a replica.
        public var queued: Int

        public init(target: Int, running: Int, ongoing: Int, queued: Int) {
            self.target = target
            self.running = running
            self.ongoing = ongoing
            self.queued = queued
        }
    }

    /// A change of the target, with the event's kind ("autoscale", "scale") and reason.
    public struct Decision: Sendable, Hashable {
        public var t: Double
        public var kind: String
        public var before: Int
        public var after: Int
        public var reason: String

        public init(t: Double, kind: String, before: Int, after: Int, reason: String) {
            self.t = t
            self.kind = kind
            self.before = before
            self.after = after
            self.reason = reason
        }
    }

    struct Series: Sendable {
        var samples: Ring<Sample>
        var decisions: Ring<Decision>
    }

    public let configuration: Configuration
    private var series: [DeploymentID: Series] = [:]
    /// When `sample` last ran (nil: never).
    public private(set) var lastSampled: Double?

    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
    }

    /// Whether a sample is due at `now` (an interval has passed since the last one).
    public func isDue(now: Double) -> Bool {
        guard let last = self.lastSampled else { return true }
        return now - last >= self.configuration.interval
    }

    /// Takes one sample of every deployment at `now`. A deployment left out of `readings` was
    /// deleted: its history goes with it. Samples past the window are dropped, except the one
    /// that gives each deployment's value at the window's start.
    public mutating func sample(_ readings: [DeploymentID: Reading], now: Double) {
        self.lastSampled = now
        for id in self.series.keys where readings[id] == nil {
            self.series[id] = nil
        }
        for (id, reading) in readings {
            var series = self.series[id] ?? self.newSeries()
            if series.samples.last?.reading != reading {
                series.samples.append(Sample(t: now, reading: reading))
            }
            self.expire(&series, now: now)
            self.series[id] = series
        }
    }

    /// Notes a change of a deployment's target at `now`.
    public mutating func decided(_ id: DeploymentID, _ decision: Decision) {
        var series = self.series[id] ?? self.newSeries()
        series.decisions.append(decision)
        self.series[id] = series
    }

    /// The deployments that have a history, sorted.
    public var deployments: [DeploymentID] {
        self.series.keys.sorted()
    }

    /// One deployment's samples within the window before `now`, oldest first (the first may be
    /// older: it holds at the window's start).
    public func samples(_ id: DeploymentID, now: Double) -> [Sample] {
        guard let series = self.series[id] else { return [] }
        let start = now - self.configuration.window
        let all = Array(series.samples)
        // The newest sample at or before the window's start still holds there.
        let first = all.lastIndex { $0.t <= start } ?? 0
        return Array(all[first...])
    }

    /// One deployment's decisions within the window before `now`, oldest first.
    public func decisions(_ id: DeploymentID, now: Double) -> [Decision] {
        guard let series = self.series[id] else { return [] }
        let start = now - self.configuration.window
        return series.decisions.filter { $0.t >= start }
    }

    private func newSeries() -> Series {
        Series(samples: Ring(capacity: self.configuration.maxSamples), decisions: Ring(capacity: self.configuration.maxDecisions))
    }

    private func expire(_ series: inout Series, now: Double) {
        let start = now - self.configuration.window
        // Keep the newest sample at or before the window's start: it holds there.
        while series.samples.count > 1, let second = series.samples.element(at: 1), second.t <= start {
            series.samples.removeFirst()
        }
        while let first = series.decisions.first, first.t < start {
            series.decisions.removeFirst()
        }
    }

    /// The whole history as `GET /api/serve/history` serves it: times as Unix seconds (`now` is
    /// `unixNow` on the caller's wall clock), so that the page can place them beside the events.
    public func json(now: Double, unixNow: Double) -> JSONValue {
        let offset = unixNow - now
        func time(_ t: Double) -> JSONValue { .number((((t + offset) * 1000).rounded()) / 1000) }
        var deployments: [String: JSONValue] = [:]
        for id in self.deployments {
            deployments["\(id)"] = .object([
                "app": .string(id.app),
                "deployment": .string(id.name),
                "samples": .array(self.samples(id, now: now).map { sample in
                    .object([
                        "t": time(sample.t),
                        "target": .number(Double(sample.reading.target)),
                        "running": .number(Double(sample.reading.running)),
                        "ongoing": .number(Double(sample.reading.ongoing)),
                        "queued": .number(Double(sample.reading.queued)),
                    ])
                }),
                "decisions": .array(self.decisions(id, now: now).map { decision in
                    .object([
                        "t": time(decision.t),
                        "kind": .string(decision.kind),
                        "before": .number(Double(decision.before)),
                        "after": .number(Double(decision.after)),
                        "reason": .string(decision.reason),
                    ])
                }),
            ])
        }
        return .object([
            "window_s": .number(self.configuration.window),
            "interval_s": .number(self.configuration.interval),
            "now": time(now),
            "deployments": .object(deployments),
        ])
    }
}

/// A fixed-capacity ring, oldest first: appending to a full ring drops its oldest element.
/// The storage grows to the capacity only as elements arrive; removing the oldest is O(1).
struct Ring<Element: Sendable>: Sendable, Sequence {
    let capacity: Int
    /// Slots in use are `count` from `head` on, wrapping; the others hold removed elements until
    /// they are written over.
    private var storage: [Element] = []
    private var head = 0
    private(set) var count = 0

    init(capacity: Int) {
        self.capacity = Swift.max(capacity, 1)
    }

    var first: Element? { self.element(at: 0) }
    var last: Element? { self.element(at: self.count - 1) }

    /// The element `offset` places after the oldest.
    func element(at offset: Int) -> Element? {
        guard offset >= 0, offset < self.count else { return nil }
        return self.storage[(self.head + offset) % self.storage.count]
    }

    mutating func append(_ element: Element) {
        if self.count < self.storage.count {
            self.storage[(self.head + self.count) % self.storage.count] = element
            self.count += 1
        } else if self.storage.count < self.capacity {
            // Every slot is in use and there is room to grow: put the oldest first, then append.
            if self.head != 0 {
                self.storage = Array(self.storage[self.head...] + self.storage[..<self.head])
                self.head = 0
            }
            self.storage.append(element)
            self.count += 1
        } else {
            self.storage[self.head] = element
            self.head = (self.head + 1) % self.storage.count
        }
    }

    mutating func removeFirst() {
        guard self.count > 0 else { return }
        self.head = (self.head + 1) % self.storage.count
        self.count -= 1
    }

    func makeIterator() -> AnyIterator<Element> {
        var offset = 0
        return AnyIterator {
            defer { offset += 1 }
            return self.element(at: offset)
        }
    }
}
