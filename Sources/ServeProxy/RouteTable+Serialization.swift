import ServeCore
import ServeProto

/// The route table as the head sends it to every node's proxy (`PBRouteTableUpdate`), and back.
extension RouteTable {
    public init(_ update: PBRouteTableUpdate) {
        self.init(
            applications: update.applications.compactMap { app in
                let deployments = app.deployments.map { DeploymentRoute($0, app: app.name) }
                guard let ingress = deployments.first else { return nil }
                return ApplicationRoute(
                    name: app.name, routePrefix: app.routePrefix, ingress: ingress, others: Array(deployments.dropFirst()),
                    idempotent: app.idempotent)
            },
            requestTimeout: update.requestTimeoutMs > 0 ? .milliseconds(Int64(clamping: update.requestTimeoutMs)) : nil,
            maxBodyBytes: Int(clamping: update.maxBodyBytes),
            servesHTTP: update.proxyLocation.location != .disabled
        )
    }

    /// The message for the proxies: this table, its version and where proxies run.
    public func update(version: TableVersion, proxyLocation: ProxyLocation, httpHost: String, httpPort: Int) -> PBRouteTableUpdate {
        var update = PBRouteTableUpdate()
        update.epoch = version.epoch
        update.sequence = version.sequence
        update.applications = self.applications.map { app in
            PBApplicationRouteEntry.with {
                $0.name = app.name
                $0.routePrefix = app.routePrefix
                $0.idempotent = app.idempotent
                $0.deployments = app.deployments.map(PBDeploymentRouteEntry.init)
            }
        }
        if let timeout = self.requestTimeout {
            let components = timeout.components
            update.requestTimeoutMs = UInt64(clamping: components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000)
        }
        update.maxBodyBytes = UInt64(clamping: self.maxBodyBytes)
        update.proxyLocation = PBProxyLocation(proxyLocation)
        update.httpHost = httpHost
        update.httpPort = UInt32(clamping: httpPort)
        return update
    }
}

extension DeploymentRoute {
    init(_ entry: PBDeploymentRouteEntry, app: String) {
        self.init(
            id: DeploymentID(app: app, name: entry.deployment),
            maxOngoingRequests: Int(entry.maxOngoingRequests),
            maxQueuedRequests: Int(entry.maxQueuedRequests),
            replicas: entry.replicas.map {
                ReplicaRoute(
                    id: $0.replicaID, nodeID: $0.nodeID, host: $0.host, port: Int($0.port),
                    reportedQueueLength: Int($0.reportedQueueLength), models: $0.modelIds)
            },
            unavailable: entry.unavailable.isEmpty ? nil : entry.unavailable
        )
    }
}

extension PBDeploymentRouteEntry {
    init(_ route: DeploymentRoute) {
        self.init()
        self.deployment = route.id.name
        self.maxOngoingRequests = UInt32(clamping: route.maxOngoingRequests)
        self.maxQueuedRequests = Int32(clamping: route.maxQueuedRequests)
        self.unavailable = route.unavailable ?? ""
        self.replicas = route.replicas.map { replica in
            PBReplicaRouteEntry.with {
                $0.replicaID = replica.id
                $0.nodeID = replica.nodeID
                $0.host = replica.host
                $0.port = UInt32(clamping: replica.port)
                $0.reportedQueueLength = UInt32(clamping: replica.reportedQueueLength)
                $0.modelIds = replica.models
            }
        }
    }
}

extension TableVersion {
    public init(_ update: PBRouteTableUpdate) {
        self.init(epoch: update.epoch, sequence: update.sequence)
    }
}

extension PBProxyLocation {
    public init(_ location: ProxyLocation) {
        switch location {
        case .everyNode: self = .everyNode
        case .headOnly: self = .headOnly
        case .disabled: self = .disabled
        }
    }

    public var location: ProxyLocation {
        switch self {
        case .headOnly: .headOnly
        case .disabled: .disabled
        case .everyNode, .UNRECOGNIZED: .everyNode
        }
    }
}
