/// Time-weighted window of a deployment's total ongoing requests (running plus queued at
/// replicas, plus requests waiting at the router), per Ray's "instantaneous merge"
/// (PEERS.md §1, metrics pipeline): each source (a replica id, or "router") is a right-continuous
/// step function whose last value holds until now; the sources are summed into one step
/// function, and that sum is aggregated, weighted by time, over `[now - lookBack, now]`.
///
/// Pure: times are seconds since an arbitrary origin, passed in by the caller. A source that has
/// not reported yet contributes nothing before its first sample; the window starts at the
/// earliest sample when that is later than `now - lookBack`, so a young window is not diluted
/// by time nobody reported on.
public struct MetricsWindow: Sendable, Hashable {
    /// One reported value, valid from `at` until the source's next sample.
    struct Sample: Sendable, Hashable {
        var at: Double
        var value: Double
    }

    /// One source's step function, oldest first, plus when it last reported (a repeated equal
    /// value only moves `lastSeen`, so a source that reports every tick stays small).
    struct Series: Sendable, Hashable {
        var samples: [Sample] = []
        var lastSeen: Double = -.infinity
    }

    /// The window's length in seconds (`look_back_period_s`).
    public let lookBack: Double
    private var series: [String: Series] = [:]
    /// The sources that go stale when they stop reporting (`expire`); the others are held
    /// until removed.
    private var expiring: Set<String> = []

    /// Ray drops a handle's metrics after `max(2 * metrics_interval_s, 10 s)` without an update
    /// (PEERS.md §1); a suitable `staleAfter` for `expire`.
    public static func defaultStaleAfter(metricsIntervalS: Double) -> Double {
        max(2 * metricsIntervalS, 10)
    }

    public init(lookBack: Double) {
        self.lookBack = lookBack.isFinite ? max(lookBack, 0) : 0
    }

    /// The sources that currently have data, sorted.
    public var sources: [String] {
        self.series.keys.sorted()
    }

    /// How many samples are stored in all (bounded by the pruning in `record`).
    var storedSampleCount: Int {
        self.series.values.reduce(0) { $0 + $1.samples.count }
    }

    /// Whether no source has data.
    public var isEmpty: Bool {
        self.series.isEmpty
    }

    /// A sample from one source (a replica id, or "router") at time `at`. Non-finite values or
    /// times are ignored; negative values count as 0 (a request count cannot be negative). A
    /// sample at the same time as an earlier one replaces it; an out-of-order sample is put in
    /// its place (a repeat of the newest value is not stored, only noted as a sign of life, so
    /// an out-of-order sample behind such a repeat holds until the next stored change). Samples
    /// older than the look-back before the source's newest one are dropped, except the one that
    /// gives the value at the window's start.
    ///
    /// `held`: the source reports only changes, and says when it is gone (`remove`): its last
    /// value holds however long it is quiet, and `expire` never drops it. A replica whose node
    /// reports changes only is such a source (the head forgets it with its replica); a router's
    /// count, reported every tick, is not.
    public mutating func record(source: String, value: Double, at: Double, held: Bool = false) {
        guard value.isFinite, at.isFinite else { return }
        if held {
            self.expiring.remove(source)
        } else {
            self.expiring.insert(source)
        }
        let value = max(value, 0)
        // Taken out of the dictionary while edited, so that its samples are not copied.
        var entry = self.series.removeValue(forKey: source) ?? Series()
        entry.lastSeen = max(entry.lastSeen, at)
        if let last = entry.samples.last, at >= last.at {
            if at == last.at {
                entry.samples[entry.samples.count - 1].value = value
            } else if value != last.value {
                entry.samples.append(Sample(at: at, value: value))
            }
        } else if let index = entry.samples.firstIndex(where: { $0.at >= at }) {
            if entry.samples[index].at == at {
                entry.samples[index].value = value
            } else {
                entry.samples.insert(Sample(at: at, value: value), at: index)
            }
        } else {
            entry.samples.append(Sample(at: at, value: value))
        }
        Self.prune(&entry, lookBack: self.lookBack)
        self.series[source] = entry
    }

    /// Drops a source (replica gone).
    public mutating func remove(source: String) {
        self.series[source] = nil
        self.expiring.remove(source)
    }

    /// Drops sources whose last sample is older than `staleAfter` seconds before `now`, but
    /// for held ones (`record`). Visits only the sources that can go stale: it runs on every
    /// autoscaler tick, and a deployment of thousands of replicas has one that can.
    public mutating func expire(now: Double, staleAfter: Double) {
        let cutoff = now - staleAfter
        let stale = self.expiring.filter { (self.series[$0]?.lastSeen ?? -.infinity) < cutoff }
        for source in stale { self.remove(source: source) }
    }

    /// Time-weighted aggregate over `[now - lookBack, now]` of the SUM over sources, each
    /// source's last value holding until now. `aggregation` is "mean", "max" or "min" (anything
    /// else is read as "mean"). Max and min are over the values the sum held for a positive
    /// time inside the window, and its value at `now`. nil when no source has a sample at or
    /// before `now`. When the window has no length (all data at `now`, or `lookBack` 0) it is
    /// the sum at `now`.
    public func aggregate(now: Double, aggregation: String) -> Double? {
        self.aggregate(now: now, aggregation: aggregation, over: self.lookBack)
    }

    /// The same aggregate over `[now - length, now]` instead of the whole look-back (a shorter
    /// window such as the panic window; samples older than `lookBack` may already be pruned,
    /// so a longer `length` sees no further back than the look-back). A negative or non-finite
    /// `length` counts as 0.
    public func aggregate(now: Double, aggregation: String, over length: Double) -> Double? {
        guard now.isFinite else { return nil }
        let windowLength = length.isFinite ? max(length, 0) : 0
        // Every source's samples up to `now`, and where the merged function starts.
        var earliest = Double.infinity
        var perSource: [ArraySlice<Sample>] = []
        perSource.reserveCapacity(self.series.count)
        for entry in self.series.values {
            let end = Self.firstIndex(in: entry.samples[...], after: now)
            guard end > 0 else { continue }
            let slice = entry.samples[..<end]
            earliest = min(earliest, slice[slice.startIndex].at)
            perSource.append(slice)
        }
        guard !perSource.isEmpty else { return nil }
        let start = max(now - windowLength, earliest)

        switch aggregation.lowercased() {
        case "max": return Self.extreme(perSource, start: start, now: now).highest
        case "min": return Self.extreme(perSource, start: start, now: now).lowest
        default:
            // The integral of the sum is the sum of the sources' integrals: no merge needed.
            var integral = 0.0
            var level = 0.0
            for slice in perSource {
                let first = Self.firstIndex(in: slice, after: start)
                var value = first > slice.startIndex ? slice[first - 1].value : 0
                var from = start
                for sample in slice[first...] {
                    integral += value * (sample.at - from)
                    value = sample.value
                    from = sample.at
                }
                integral += value * (now - from)
                level += value
            }
            let length = now - start
            return length > 0 ? integral / length : level
        }
    }

    /// The highest and lowest values of the summed step function over `[start, now]`: those it
    /// held for a positive time, and its value at `now`. The sum is recomputed at each instant,
    /// so no rounding drift builds up.
    private static func extreme(_ perSource: [ArraySlice<Sample>], start: Double, now: Double) -> (highest: Double, lowest: Double) {
        var values = [Double](repeating: 0, count: perSource.count)
        var events: [(at: Double, source: Int, value: Double)] = []
        for (source, slice) in perSource.enumerated() {
            let first = Self.firstIndex(in: slice, after: start)
            if first > slice.startIndex {
                values[source] = slice[first - 1].value
            }
            for sample in slice[first...] {
                events.append((sample.at, source, sample.value))
            }
        }
        events.sort { $0.at < $1.at }

        var level = values.reduce(0, +)
        var highest = -Double.infinity
        var lowest = Double.infinity
        var segmentStart = start
        var index = events.startIndex
        while index < events.endIndex {
            let at = events[index].at
            if at > segmentStart {
                highest = max(highest, level)
                lowest = min(lowest, level)
                segmentStart = at
            }
            // Apply every change at this instant before the next segment.
            while index < events.endIndex, events[index].at == at {
                values[events[index].source] = events[index].value
                index += 1
            }
            level = values.reduce(0, +)
        }
        return (max(highest, level), min(lowest, level))
    }

    /// The index of the first sample later than `time` (samples are in time order).
    private static func firstIndex(in samples: ArraySlice<Sample>, after time: Double) -> Int {
        var low = samples.startIndex
        var high = samples.endIndex
        while low < high {
            let middle = low + (high - low) / 2
            if samples[middle].at > time {
                high = middle
            } else {
                low = middle + 1
            }
        }
        return low
    }

    /// The latest summed value: every source's newest sample (for cold start decisions).
    public func latest() -> Double {
        self.series.values.reduce(0) { $0 + ($1.samples.last?.value ?? 0) }
    }

    /// Keeps the samples newer than the look-back before the newest one, plus the last one at or
    /// before that point (it gives the value at the start of any later window).
    private static func prune(_ entry: inout Series, lookBack: Double) {
        guard let newest = entry.samples.last?.at, entry.samples.count > 1 else { return }
        let cutoff = newest - lookBack
        guard let boundary = entry.samples.lastIndex(where: { $0.at <= cutoff }), boundary > 0 else { return }
        entry.samples.removeFirst(boundary)
    }
}
