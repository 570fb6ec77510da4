import ServeCore

/// Everything the ingress needs to route, as the controller last published it. The proxy
/// imports neither the head nor the worker: it is handed this table.
public struct RouteTable: Sendable, Hashable {
    public var applications: [ApplicationRoute]
    public var requestTimeout: Duration?
    public var maxBodyBytes: Int
    /// False under `proxy_location: Disabled`: no HTTP request reaches an application (404);
    /// its deployments are reached through handles only, with this same table.
    public var servesHTTP: Bool

    public init(applications: [ApplicationRoute] = [], requestTimeout: Duration? = nil, maxBodyBytes: Int = 100 << 20, servesHTTP: Bool = true) {
        self.applications = applications
        self.requestTimeout = requestTimeout
        self.maxBodyBytes = maxBodyBytes
        self.servesHTTP = servesHTTP
    }

    /// The application whose route prefix is the longest prefix of `path` (on a segment
    /// boundary: "/hello" serves "/hello" and "/hello/x", not "/helloworld").
    public func match(_ path: String) -> ApplicationRoute? {
        guard self.servesHTTP else { return nil }
        let pathOnly = path.prefix(while: { $0 != "?" })
        var best: ApplicationRoute?
        for app in self.applications where Self.matches(prefix: app.routePrefix, path: pathOnly) {
            if best == nil || app.routePrefix.count > best!.routePrefix.count { best = app }
        }
        return best
    }

    static func matches(prefix: String, path: Substring) -> Bool {
        if prefix == "/" { return true }
        guard path.hasPrefix(prefix) else { return false }
        if path.count == prefix.count { return true }
        return path[path.index(path.startIndex, offsetBy: prefix.count)] == "/" || prefix.hasSuffix("/")
    }

    /// `path` with `prefix` removed, always starting with "/" (query kept).
    public static func strip(prefix: String, from path: String) -> String {
        guard prefix != "/" else { return path }
        let rest = path.dropFirst(prefix.count)
        if rest.isEmpty { return "/" }
        if rest.first == "?" { return "/" + rest }
        return rest.first == "/" ? String(rest) : "/" + rest
    }
}

/// Orders route tables as the head made them: by the head's start (`epoch`, so a restarted
/// head's tables are newer), then its counter within that run.
public struct TableVersion: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var epoch: UInt64
    public var sequence: UInt64

    public init(epoch: UInt64, sequence: UInt64) {
        self.epoch = epoch
        self.sequence = sequence
    }

    public static func < (lhs: TableVersion, rhs: TableVersion) -> Bool {
        (lhs.epoch, lhs.sequence) < (rhs.epoch, rhs.sequence)
    }

    public var description: String { "\(self.epoch).\(self.sequence)" }
}

public struct ApplicationRoute: Sendable, Hashable {
    public var name: String
    public var routePrefix: String
    /// The deployment that takes the application's HTTP traffic.
    public var ingress: DeploymentRoute
    /// Its other deployments, reached through handles only.
    public var others: [DeploymentRoute]
    /// `ApplicationConfig.idempotent`: any request may be retried once on another replica.
    public var idempotent: Bool

    public init(name: String, routePrefix: String, ingress: DeploymentRoute, others: [DeploymentRoute] = [], idempotent: Bool = false) {
        self.name = name
        self.routePrefix = routePrefix
        self.ingress = ingress
        self.others = others
        self.idempotent = idempotent
    }

    /// Every deployment of the application, its ingress first.
    public var deployments: [DeploymentRoute] { [self.ingress] + self.others }
}

public struct DeploymentRoute: Sendable, Hashable {
    public var id: DeploymentID
    public var maxOngoingRequests: Int
    /// -1: unbounded.
    public var maxQueuedRequests: Int
    public var replicas: [ReplicaRoute]
    /// Why no replica is coming (its replicas keep failing to start), when none runs: requests
    /// are then answered 503 with this reason at once instead of waiting for a replica.
    public var unavailable: String?

    public init(id: DeploymentID, maxOngoingRequests: Int, maxQueuedRequests: Int, replicas: [ReplicaRoute], unavailable: String? = nil) {
        self.id = id
        self.maxOngoingRequests = maxOngoingRequests
        self.maxQueuedRequests = maxQueuedRequests
        self.replicas = replicas
        self.unavailable = unavailable
    }
}

/// A RUNNING replica and the worker address that serves it.
public struct ReplicaRoute: Sendable, Hashable {
    public var id: String
    public var nodeID: String
    public var host: String
    public var port: Int
    /// The multiplexed models it holds, as it last reported.
    public var models: [String]

    public init(id: String, nodeID: String, host: String, port: Int, models: [String] = []) {
        self.id = id
        self.nodeID = nodeID
        self.host = host
        self.port = port
        self.models = models
    }
}
