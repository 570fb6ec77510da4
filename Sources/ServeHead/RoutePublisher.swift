import ServeCore
import ServeProto
import ServeProxy

/// The route tables the controller gives every node's proxy, numbered in the order made. Each
/// table goes out as the change from the one before (`RouteTable.changes(from:)`), which every
/// node holds: a node is sent the whole current table when it registers, then every change on
/// the same ordered stream. A change is as large as what changed, not as the cluster.
struct RoutePublisher {
    /// Where proxies run and what they bind: sent with every table.
    struct Settings: Hashable {
        var proxyLocation: ProxyLocation
        var httpHost: String
        var httpPort: Int
    }

    private struct Published {
        var version: TableVersion
        var table: RouteTable
        var settings: Settings
        var madeAtUnixMs: Int64
    }

    /// When the head started (Unix ms): the epoch of its tables, so that a restarted head's
    /// tables are newer than any the proxies kept from before.
    let epoch: UInt64
    private var current: Published?

    init(epoch: UInt64) {
        self.epoch = epoch
    }

    /// The version of the newest table (nil before the first).
    var version: TableVersion? { self.current?.version }

    /// The next table: its version and the message for the nodes (the change from the last
    /// table, or the whole table if it is the first); nil when it is the table they hold.
    mutating func publish(_ table: RouteTable, settings: Settings, madeAtUnixMs: Int64) -> (version: TableVersion, update: PBRouteTableUpdate)? {
        if let current, current.table == table, current.settings == settings { return nil }
        let version = TableVersion(epoch: self.epoch, sequence: (self.current?.version.sequence ?? 0) + 1)
        let update = table.update(
            version: version, changedFrom: self.current.map { ($0.version, $0.table) },
            proxyLocation: settings.proxyLocation, httpHost: settings.httpHost, httpPort: settings.httpPort, madeAtUnixMs: madeAtUnixMs)
        self.current = Published(version: version, table: table, settings: settings, madeAtUnixMs: madeAtUnixMs)
        return (version, update)
    }

    /// The whole newest table, for a node that registers (nil before the first).
    func wholeTable() -> PBRouteTableUpdate? {
        guard let current else { return nil }
        return current.table.update(
            version: current.version, proxyLocation: current.settings.proxyLocation, httpHost: current.settings.httpHost,
            httpPort: current.settings.httpPort, madeAtUnixMs: current.madeAtUnixMs)
    }
}
