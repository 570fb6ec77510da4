import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServeCore

/// Request counts and latencies per deployment, for the node's Prometheus endpoint.
///
/// Counted in shards, one per event loop that serves requests (a request's handler runs on its
/// connection's loop), each behind its own lock, and summed when scraped: the request path
/// never contends on one lock across loops (issue 13, item 11).
public final class IngressMetrics: Sendable {
    /// Latency bucket bounds in seconds (Prometheus histogram `le` labels).
    public static let buckets: [Double] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]

    public struct Series: Sendable, Hashable {
        public var requestsByStatus: [Int: Int] = [:]
        public var latency = Histogram(bounds: IngressMetrics.buckets)
        init() {}

        mutating func add(_ other: Series) {
            self.requestsByStatus.merge(other.requestsByStatus, uniquingKeysWith: +)
            self.latency.add(other.latency)
        }

        mutating func record(status: Int, seconds: Double) {
            self.requestsByStatus[status, default: 0] += 1
            self.latency.record(seconds)
        }
    }

    private struct Shard {
        var series: [DeploymentID: Series] = [:]
        var retries: [DeploymentID: [RetryReason: Int]] = [:]
    }

    /// More shards than this machine has event loops (one per core), so each loop has its own
    /// in practice; a request off any loop uses shard 0.
    private let shards: [NIOLockedValueBox<Shard>]

    private var shard: NIOLockedValueBox<Shard> {
        guard let loop = MultiThreadedEventLoopGroup.currentEventLoop else { return self.shards[0] }
        return self.shards[Int(UInt(bitPattern: ObjectIdentifier(loop).hashValue) % UInt(self.shards.count))]
    }

    /// Why a request went to another replica.
    public typealias RetryReason = RetryPolicy.Reason

    public init(shards: Int = 4 * System.coreCount) {
        self.shards = (0..<max(1, shards)).map { _ in NIOLockedValueBox(Shard()) }
    }

    func record(deployment: DeploymentID, status: Int, seconds: Double) {
        // In place: a copy taken out of the dictionary would copy its arrays on every request.
        self.shard.withLockedValue { $0.series[deployment, default: Series()].record(status: status, seconds: seconds) }
    }

    func recordRetry(deployment: DeploymentID, _ reason: RetryReason) {
        self.shard.withLockedValue { $0.retries[deployment, default: [:]][reason, default: 0] += 1 }
    }

    /// Requests sent to another replica, by deployment and why.
    public var retries: [DeploymentID: [RetryReason: Int]] {
        var total: [DeploymentID: [RetryReason: Int]] = [:]
        for shard in self.shards {
            for (id, reasons) in shard.withLockedValue({ $0.retries }) {
                total[id, default: [:]].merge(reasons, uniquingKeysWith: +)
            }
        }
        return total
    }

    public var snapshot: [DeploymentID: Series] {
        var total: [DeploymentID: Series] = [:]
        for shard in self.shards {
            for (id, series) in shard.withLockedValue({ $0.series }) { total[id, default: Series()].add(series) }
        }
        return total
    }
}

extension Ingress {
    /// This proxy's series in Prometheus text: requests by status, errors, latency, retries and
    /// the requests waiting at its routers. Each node serves its own (the head on its admin
    /// port, a worker on `--metrics-port`), labelled with the node, so one scrape config
    /// covers the cluster.
    public func prometheusLines(node: String? = nil) -> [String] {
        let node = node ?? self.localNodeID
        func labels(_ id: DeploymentID) -> String { PrometheusLabels.deployment(id, node: node) }
        var lines: [String] = []
        let series = self.metrics.snapshot.sorted { "\($0.key)" < "\($1.key)" }
        lines.append("# HELP serve_requests_total Requests answered by the proxy, by deployment and status code.")
        lines.append("# TYPE serve_requests_total counter")
        for (id, series) in series {
            for (status, count) in series.requestsByStatus.sorted(by: { $0.key < $1.key }) {
                lines.append("serve_requests_total{\(labels(id)),code=\"\(status)\"} \(count)")
            }
        }
        lines.append("# HELP serve_request_errors_total Requests answered with a 5xx status.")
        lines.append("# TYPE serve_request_errors_total counter")
        for (id, series) in series {
            let errors = series.requestsByStatus.filter { $0.key >= 500 }.values.reduce(0, +)
            lines.append("serve_request_errors_total{\(labels(id))} \(errors)")
        }
        lines.append("# HELP serve_request_latency_seconds Proxy latency per request.")
        lines.append("# TYPE serve_request_latency_seconds histogram")
        for (id, series) in series {
            lines += series.latency.prometheusLines(name: "serve_request_latency_seconds", labels: labels(id))
        }
        lines.append("# HELP serve_request_retries_total Requests the proxy sent to another replica, by why.")
        lines.append("# TYPE serve_request_retries_total counter")
        for (id, reasons) in self.metrics.retries.sorted(by: { "\($0.key)" < "\($1.key)" }) {
            for (reason, count) in reasons.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
                lines.append("serve_request_retries_total{\(labels(id)),reason=\"\(reason.rawValue)\"} \(count)")
            }
        }
        lines.append("# HELP serve_router_queued_requests Requests waiting at the proxy's router for a replica.")
        lines.append("# TYPE serve_router_queued_requests gauge")
        for (id, count) in self.waitingRequests().sorted(by: { "\($0.key)" < "\($1.key)" }) {
            lines.append("serve_router_queued_requests{\(labels(id))} \(count)")
        }
        return lines
    }
}
