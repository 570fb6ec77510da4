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
    private let retryCounts = NIOLockedValueBox<[DeploymentID: [RetryReason: Int]]>([:])

    /// Why a request went to another replica.
    public enum RetryReason: String, Sendable, Hashable, CaseIterable {
        /// The replica refused it (full, stopping, unknown) before it reached user code.
        case refused
        /// The replica's node could not be reached.
        case unreachable
        /// An idempotent request's replica failed before answering.
        case failed
    }

    public init() {}

    func record(deployment: DeploymentID, status: Int, seconds: Double) {
        // In place: a copy taken out of the dictionary would copy its arrays on every request.
        self.series.withLockedValue { $0[deployment, default: Series()].record(status: status, seconds: seconds) }
    }

    func recordRetry(deployment: DeploymentID, _ reason: RetryReason) {
        self.retryCounts.withLockedValue { $0[deployment, default: [:]][reason, default: 0] += 1 }
    }

    /// Requests sent to another replica, by deployment and why.
    public var retries: [DeploymentID: [RetryReason: Int]] {
        self.retryCounts.withLockedValue { $0 }
    }

    public var snapshot: [DeploymentID: Series] {
        self.series.withLockedValue { $0 }
    }
}
