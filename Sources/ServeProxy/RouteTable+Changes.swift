import ServeCore
import ServeProto

/// Route tables as changes: the head sends a node its whole table once, when the node
/// registers, and after that only what changed (DESIGN.md "Route tables"). With a proxy on every
/// node, a whole table of 10,000 replicas sent to 1,000 nodes on every replica that starts would
/// be gigabytes; the change is a few entries.
extension RouteTable {
    /// The applications of this table that differ from `base`, as the entries of an incremental
    /// update, and the names of `base`'s applications this table no longer has. An application
    /// whose own fields or list of deployments changed is sent whole; otherwise only its changed
    /// deployments, each with only its added or changed replicas and the ids of those gone.
    public func changes(from base: RouteTable) -> (changed: [PBApplicationRouteEntry], removed: [String]) {
        let before = Dictionary(base.applications.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        var changed: [PBApplicationRouteEntry] = []
        for app in self.applications {
            guard let old = before[app.name], old.hasSameShape(as: app) else {
                changed.append(PBApplicationRouteEntry(app))
                continue
            }
            let deployments = zip(old.deployments, app.deployments).compactMap { old, new in
                old == new ? nil : PBDeploymentRouteEntry(new, changedFrom: old)
            }
            guard !deployments.isEmpty else { continue }
            changed.append(PBApplicationRouteEntry.with {
                $0.name = app.name
                $0.partial = true
                $0.deployments = deployments
            })
        }
        let names = Set(self.applications.map(\.name))
        let removed = base.applications.map(\.name).filter { !names.contains($0) }
        return (changed, removed)
    }

    /// The message for the proxies: this table and its version, whole (`base` nil) or as the
    /// changes from `base` (the table of `base.version`, which every receiver holds). A table
    /// whose applications are in another order than `base`'s (new ones last) is sent whole.
    public func update(
        version: TableVersion, changedFrom base: (version: TableVersion, table: RouteTable)? = nil,
        proxyLocation: ProxyLocation, httpHost: String, httpPort: Int, madeAtUnixMs: Int64 = 0
    ) -> PBRouteTableUpdate {
        var update = PBRouteTableUpdate()
        update.epoch = version.epoch
        update.sequence = version.sequence
        if let base, self.keepsOrder(of: base.table) {
            precondition(base.version.epoch == version.epoch && base.version.sequence < version.sequence, "a change is from an older table of the same head")
            let (changed, removed) = self.changes(from: base.table)
            update.baseSequence = base.version.sequence
            update.applications = changed
            update.removedApplications = removed
        } else {
            update.applications = self.applications.map(PBApplicationRouteEntry.init)
        }
        if let timeout = self.requestTimeout {
            let components = timeout.components
            update.requestTimeoutMs = UInt64(clamping: components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000)
        }
        update.maxBodyBytes = UInt64(clamping: self.maxBodyBytes)
        update.proxyLocation = PBProxyLocation(proxyLocation)
        update.httpHost = httpHost
        update.httpPort = UInt32(clamping: httpPort)
        update.madeAtUnixMs = madeAtUnixMs
        return update
    }
}

extension RouteTable {
    /// Whether this table's applications are `base`'s that it keeps, in their order, then new
    /// ones: the order a node's copy gets from the changes.
    func keepsOrder(of base: RouteTable) -> Bool {
        let names = Set(self.applications.map(\.name))
        let kept = base.applications.map(\.name).filter { names.contains($0) }
        return self.applications.prefix(kept.count).map(\.name) == kept
    }
}

extension ApplicationRoute {
    /// The same application fields and the same deployments in the same order (their routes may
    /// differ): a change to it can be sent as its changed deployments.
    func hasSameShape(as other: ApplicationRoute) -> Bool {
        self.name == other.name && self.routePrefix == other.routePrefix && self.idempotent == other.idempotent
            && self.deployments.map(\.id) == other.deployments.map(\.id)
    }
}

extension PBApplicationRouteEntry {
    init(_ app: ApplicationRoute) {
        self.init()
        self.name = app.name
        self.routePrefix = app.routePrefix
        self.idempotent = app.idempotent
        self.deployments = app.deployments.map { PBDeploymentRouteEntry($0) }
    }
}

extension PBDeploymentRouteEntry {
    /// The changes from `old` to `new` (the same deployment): whole fields, changed replicas.
    init(_ new: DeploymentRoute, changedFrom old: DeploymentRoute) {
        self.init(fieldsOf: new)
        self.partial = true
        let before = Dictionary(old.replicas.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        self.replicas = new.replicas.filter { before[$0.id] != $0 }.map(PBReplicaRouteEntry.init)
        let now = Set(new.replicas.map(\.id))
        self.removedReplicas = old.replicas.map(\.id).filter { !now.contains($0) }
    }
}

/// A node's copy of the head's route table, kept current from the whole table the head sends
/// when the node registers and the changes it sends after that.
public struct RouteTableMirror: Sendable {
    public private(set) var table = RouteTable()
    /// The version of `table`; nil before the first whole table.
    public private(set) var version: TableVersion?

    /// A change whose base is not the table held: the head and this node disagree about what the
    /// node holds. The node drops its control stream and registers again (it then gets the
    /// whole table).
    public struct MissingBase: Error, CustomStringConvertible {
        public var held: TableVersion?
        public var base: TableVersion
        public var description: String {
            "a route table change from \(self.base) arrived, but this node holds \(self.held.map { "\($0)" } ?? "no table")"
        }
    }

    public init() {}

    /// Applies a whole table or a change. Returns false for a table older than (or the same as)
    /// the one held, which is ignored; throws `MissingBase` for a change from a table not held.
    public mutating func apply(_ update: PBRouteTableUpdate) throws(MissingBase) -> Bool {
        let version = TableVersion(update)
        if let held = self.version, version <= held { return false }
        var table = RouteTable(settingsOf: update)
        if update.baseSequence == 0 {
            table.applications = update.applications.compactMap(ApplicationRoute.init)
        } else {
            let base = TableVersion(epoch: update.epoch, sequence: update.baseSequence)
            guard base == self.version else { throw MissingBase(held: self.version, base: base) }
            table.applications = Self.applying(update, to: self.table.applications)
        }
        self.table = table
        self.version = version
        return true
    }

    /// `applications` with an incremental update's changes: removed ones dropped, whole ones
    /// replaced or added (in the head's order: new ones last), partial ones merged.
    private static func applying(_ update: PBRouteTableUpdate, to applications: [ApplicationRoute]) -> [ApplicationRoute] {
        let removed = Set(update.removedApplications)
        var result = applications.filter { !removed.contains($0.name) }
        var index = Dictionary(result.enumerated().map { ($1.name, $0) }, uniquingKeysWith: { first, _ in first })
        for entry in update.applications {
            if entry.partial {
                guard let at = index[entry.name] else { continue }
                result[at].merge(entry)
            } else if let app = ApplicationRoute(entry) {
                if let at = index[app.name] {
                    result[at] = app
                } else {
                    index[app.name] = result.count
                    result.append(app)
                }
            }
        }
        return result
    }
}

extension RouteTable {
    /// A table with `update`'s settings and no applications yet.
    init(settingsOf update: PBRouteTableUpdate) {
        self.init(
            applications: [],
            requestTimeout: update.requestTimeoutMs > 0 ? .milliseconds(Int64(clamping: update.requestTimeoutMs)) : nil,
            maxBodyBytes: Int(clamping: update.maxBodyBytes),
            servesHTTP: update.proxyLocation.location != .disabled
        )
    }
}

extension ApplicationRoute {
    /// A whole application entry (nil: it has no deployment, so no ingress).
    init?(_ entry: PBApplicationRouteEntry) {
        let deployments = entry.deployments.map { DeploymentRoute($0, app: entry.name) }
        guard let ingress = deployments.first else { return nil }
        self.init(name: entry.name, routePrefix: entry.routePrefix, ingress: ingress, others: Array(deployments.dropFirst()), idempotent: entry.idempotent)
    }

    /// Merges a partial entry: each of its deployments replaces or changes this application's
    /// deployment of that name.
    mutating func merge(_ entry: PBApplicationRouteEntry) {
        for change in entry.deployments {
            if self.ingress.id.name == change.deployment {
                self.ingress.merge(change)
            } else if let at = self.others.firstIndex(where: { $0.id.name == change.deployment }) {
                self.others[at].merge(change)
            }
        }
    }
}

extension DeploymentRoute {
    /// Takes a deployment entry: whole, or partial (its replicas changed or added, some removed).
    mutating func merge(_ change: PBDeploymentRouteEntry) {
        let changed = DeploymentRoute(change, app: self.id.app)
        guard change.partial else {
            self = changed
            return
        }
        self.maxOngoingRequests = changed.maxOngoingRequests
        self.maxQueuedRequests = changed.maxQueuedRequests
        self.unavailable = changed.unavailable
        let gone = Set(change.removedReplicas).union(changed.replicas.map(\.id))
        self.replicas = (self.replicas.filter { !gone.contains($0.id) } + changed.replicas).sorted { $0.id < $1.id }
    }
}
