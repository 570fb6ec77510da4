import ServeProto
import ServeProxy

/// When each route table reached the simulated proxies: per version, how many nodes applied it
/// and the first and last arrival (Unix ms, and seconds on the monotonic clock). The spread from
/// first to last is the delivery spread of that table (until the head stamps its tables with
/// the time they were made, which gives each node's own delay).
///
/// And each table's `made_at_unix_ms` (the head's clock, the same machine's here): from it to the
/// last arrival is how long the table took to reach every node.
struct TableArrivals: Sendable {
    struct Arrival: Sendable, Hashable {
        var version: TableVersion
        var applied = 0
        var firstUnixMs: Int64
        var lastUnixMs: Int64
        var firstMonotonic: Double
        var lastMonotonic: Double
        /// The table's size: replicas over all deployments.
        var replicas: Int
        /// When the head made it (Unix ms; 0: not stamped).
        var madeUnixMs: Int64 = 0
    }

    /// Versions kept, newest last; older ones are forgotten.
    static let limit = 2000
    private(set) var arrivals: [TableVersion: Arrival] = [:]
    private(set) var order: [TableVersion] = []

    mutating func arrived(_ version: TableVersion, replicas: Int, madeUnixMs: Int64, unixMs: Int64, monotonic: Double) {
        if var arrival = self.arrivals[version] {
            arrival.applied += 1
            arrival.firstUnixMs = min(arrival.firstUnixMs, unixMs)
            arrival.lastUnixMs = max(arrival.lastUnixMs, unixMs)
            arrival.firstMonotonic = min(arrival.firstMonotonic, monotonic)
            arrival.lastMonotonic = max(arrival.lastMonotonic, monotonic)
            self.arrivals[version] = arrival
            return
        }
        self.arrivals[version] = Arrival(
            version: version, applied: 1, firstUnixMs: unixMs, lastUnixMs: unixMs, firstMonotonic: monotonic,
            lastMonotonic: monotonic, replicas: replicas, madeUnixMs: madeUnixMs)
        let index = self.order.lastIndex(where: { $0 < version }).map { $0 + 1 } ?? 0
        self.order.insert(version, at: index)
        if self.order.count > Self.limit {
            for old in self.order.prefix(self.order.count - Self.limit) { self.arrivals[old] = nil }
            self.order.removeFirst(self.order.count - Self.limit)
        }
    }

    /// The kept arrivals, oldest version first.
    var all: [Arrival] { self.order.compactMap { self.arrivals[$0] } }
}
