/// A Prometheus histogram of durations: cumulative counts per upper bound (`le`), their sum and
/// count. A value; whoever records into it holds its own lock.
public struct Histogram: Sendable, Hashable {
    /// Upper bounds in seconds, ascending (`+Inf` is `count`).
    public let bounds: [Double]
    /// Observations at or below each bound.
    public private(set) var cumulativeCounts: [Int]
    public private(set) var sum: Double = 0
    public private(set) var count: Int = 0

    public init(bounds: [Double]) {
        self.bounds = bounds
        self.cumulativeCounts = Array(repeating: 0, count: bounds.count)
    }

    public mutating func record(_ seconds: Double) {
        self.count += 1
        self.sum += seconds
        for (index, bound) in self.bounds.enumerated() where seconds <= bound {
            self.cumulativeCounts[index] += 1
        }
    }

    /// Adds another histogram's observations (the same bounds).
    public mutating func add(_ other: Histogram) {
        precondition(self.bounds == other.bounds, "histograms with other bounds")
        for index in self.cumulativeCounts.indices { self.cumulativeCounts[index] += other.cumulativeCounts[index] }
        self.sum += other.sum
        self.count += other.count
    }

    /// The `_bucket`, `_sum` and `_count` lines of metric `name` with `labels` (may be empty).
    public func prometheusLines(name: String, labels: String = "") -> [String] {
        let prefix = labels.isEmpty ? "" : labels + ","
        let braced = labels.isEmpty ? "" : "{\(labels)}"
        var lines = zip(self.bounds, self.cumulativeCounts).map { bound, count in "\(name)_bucket{\(prefix)le=\"\(bound)\"} \(count)" }
        lines.append("\(name)_bucket{\(prefix)le=\"+Inf\"} \(self.count)")
        lines.append("\(name)_sum\(braced) \(self.sum)")
        lines.append("\(name)_count\(braced) \(self.count)")
        return lines
    }
}
