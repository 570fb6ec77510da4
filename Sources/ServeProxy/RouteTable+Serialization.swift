import ServeCore
import ServeProto

/// The route table's entries as the head sends them to every node's proxy, and back (whole
/// tables and changes: `RouteTable+Changes.swift`).
extension DeploymentRoute {
    init(_ entry: PBDeploymentRouteEntry, app: String) {
        self.init(
            id: DeploymentID(app: app, name: entry.deployment),
            maxOngoingRequests: Int(entry.maxOngoingRequests),
            maxQueuedRequests: Int(entry.maxQueuedRequests),
            replicas: entry.replicas.map {
                ReplicaRoute(
                    id: $0.replicaID, nodeID: $0.nodeID, host: $0.host, port: Int($0.port), models: $0.modelIds)
            },
            unavailable: entry.unavailable.isEmpty ? nil : entry.unavailable
        )
    }
}

extension PBDeploymentRouteEntry {
    init(_ route: DeploymentRoute) {
        self.init(fieldsOf: route)
        self.replicas = route.replicas.map(PBReplicaRouteEntry.init)
    }

    /// The deployment's own fields, no replicas yet.
    init(fieldsOf route: DeploymentRoute) {
        self.init()
        self.deployment = route.id.name
        self.maxOngoingRequests = UInt32(clamping: route.maxOngoingRequests)
        self.maxQueuedRequests = Int32(clamping: route.maxQueuedRequests)
        self.unavailable = route.unavailable ?? ""
    }
}

extension PBReplicaRouteEntry {
    init(_ replica: ReplicaRoute) {
        self.init()
        self.replicaID = replica.id
        self.nodeID = replica.nodeID
        self.host = replica.host
        self.port = UInt32(clamping: replica.port)
        self.modelIds = replica.models
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
