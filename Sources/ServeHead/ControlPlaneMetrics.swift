import NIOConcurrencyHelpers
import ServeCore
import ServeProto

/// The head's control plane, measured: how long each heartbeat takes from its arrival on a
/// control stream to the controller being done with it, and the route tables sent. Recorded
/// off the controller's actor (behind a lock) and served on the admin port's `/metrics`.
public final class ControlPlaneMetrics: Sendable {
    /// Heartbeat bounds: from 50 µs (a quiet head) to 2.5 s (one that falls behind).
    static let heartbeatBounds: [Double] = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5]

    private struct State {
        var heartbeats = Histogram(bounds: ControlPlaneMetrics.heartbeatBounds)
        var tables = 0
        var tableBytes = 0
    }

    private let state = NIOLockedValueBox(State())

    public init() {}

    func heartbeatHandled(seconds: Double) {
        self.state.withLockedValue { $0.heartbeats.record(seconds) }
    }

    /// A table published to every node (its size is what each node is sent).
    func publishedTable(bytes: Int) {
        self.state.withLockedValue {
            $0.tables += 1
            $0.tableBytes += bytes
        }
    }

    func prometheusLines() -> [String] {
        let state = self.state.withLockedValue { $0 }
        var lines = ["# HELP serve_head_heartbeat_seconds From a heartbeat's arrival on a control stream to the controller done with it."]
        lines.append("# TYPE serve_head_heartbeat_seconds histogram")
        lines += state.heartbeats.prometheusLines(name: "serve_head_heartbeat_seconds")
        lines.append("# HELP serve_head_route_tables_total Route tables published to the nodes' proxies.")
        lines.append("# TYPE serve_head_route_tables_total counter")
        lines.append("serve_head_route_tables_total \(state.tables)")
        lines.append("# HELP serve_head_route_table_bytes_total Bytes of the route tables (changes) published, as each node is sent them.")
        lines.append("# TYPE serve_head_route_table_bytes_total counter")
        lines.append("serve_head_route_table_bytes_total \(state.tableBytes)")
        return lines
    }
}
