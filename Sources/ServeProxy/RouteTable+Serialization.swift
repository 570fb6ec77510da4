import ServeCore
import ServeProto

/// The route table as the head sends it to every node's proxy (`PBRouteTableUpdate`), and back.
extension RouteTable {
    public init(_ update: PBRouteTableUpdate) {
        self.init(
            applications: update.applications.map { app in
                ApplicationRoute(
                    name: app.name,
                    routePrefix: app.routePrefix,
                    ingress: DeploymentRoute(
                        id: DeploymentID(app: app.name, name: app.deployment),
                        maxOngoingRequests: Int(app.maxOngoingRequests),
                        maxQueuedRequests: Int(app.maxQueuedRequests),
                        replicas: app.replicas.map {
                            ReplicaRoute(
                                id: $0.replicaID, nodeID: $0.nodeID, host: $0.host, port: Int($0.port),
                                reportedQueueLength: Int($0.reportedQueueLength))
                        },
                        unavailable: app.unavailable.isEmpty ? nil : app.unavailable
                    ),
                    idempotent: app.idempotent
                )
            },
            requestTimeout: update.requestTimeoutMs > 0 ? .milliseconds(Int64(clamping: update.requestTimeoutMs)) : nil,
            maxBodyBytes: Int(clamping: update.maxBodyBytes)
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
                $0.deployment = app.ingress.id.name
                $0.maxOngoingRequests = UInt32(clamping: app.ingress.maxOngoingRequests)
                $0.maxQueuedRequests = Int32(clamping: app.ingress.maxQueuedRequests)
                $0.unavailable = app.ingress.unavailable ?? ""
                $0.replicas = app.ingress.replicas.map { replica in
                    PBReplicaRouteEntry.with {
                        $0.replicaID = replica.id
                        $0.nodeID = replica.nodeID
                        $0.host = replica.host
                        $0.port = UInt32(clamping: replica.port)
                        $0.reportedQueueLength = UInt32(clamping: replica.reportedQueueLength)
                    }
                }
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
