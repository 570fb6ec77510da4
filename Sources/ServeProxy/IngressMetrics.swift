import NIOConcurrencyHelpers
import ServeCore

/// Request counts and latencies per deployment, for the head's Prometheus endpoint.
public final class IngressMetrics: Sendable {
    /// Latency bucket bounds in seconds (Prometheus histogram `le` labels).
    public static let buckets: [Double] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]

    public struct Series: Sendable, Hashable {
        public var requestsByStatus: [Int: Int] = [:]
        public var bucketCounts: [Int]
        public var latencySum: Double = 0
        public var count: Int = 0
        init() { self.bucketCounts = Array(repeating: 0, count: IngressMetrics.buckets.count) }

        mutating func record(status: Int, seconds: Double) {
            self.requestsByStatus[status, default: 0] += 1
            self.count += 1
            self.latencySum += seconds
            for (index, bound) in IngressMetrics.buckets.enumerated() where seconds <= bound {
                self.bucketCounts[index] += 1
            }
        }
    }

    private let series = NIOLockedValueBox<[DeploymentID: Series]>([:])

    public init() {}

    func record(deployment: DeploymentID, status: Int, seconds: Double) {
        // In place: a copy taken out of the dictionary would copy its arrays on every request.
        self.series.withLockedValue { $0[deployment, default: Series()].record(status: status, seconds: seconds) }
    }

    public var snapshot: [DeploymentID: Series] {
        self.series.withLockedValue { $0 }
    }
}
