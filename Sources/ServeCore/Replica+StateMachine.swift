/// Where a replica is in its life (DESIGN.md "Replica state"): PENDING while no node fits it,
/// STARTING once a node has reserved its resources and is bringing it up, RUNNING when it takes
/// traffic, STOPPING while it drains and shuts down; then STOPPED (on request) or FAILED
/// (crashed, failed to start or its health checks). One machine for both sides: the head's
/// records move through it (a record is dropped once STOPPED or FAILED), and so does each
/// worker's `Replica` (which starts at STARTING: PENDING is the head's alone).
public enum ReplicaState: String, Sendable, Hashable, Codable, CaseIterable {
    case pending = "PENDING"
    case starting = "STARTING"
    case running = "RUNNING"
    case stopping = "STOPPING"
    case stopped = "STOPPED"
    case failed = "FAILED"
}

extension ReplicaState {
    /// The states this one may move to, as SWIM's `Status` lists its legal transitions: a
    /// replica only moves forward, and any live replica can be told to stop. A replica that
    /// fails while STARTING or RUNNING (or while it stops) is replaced by a new one, never
    /// revived; STOPPED and FAILED are final.
    public var legalNextStates: Set<ReplicaState> {
        switch self {
        case .pending: [.starting, .stopping]
        case .starting: [.running, .stopping, .failed]
        case .running: [.stopping, .failed]
        case .stopping: [.stopped, .failed]
        case .stopped, .failed: []
        }
    }

    public func canMove(to next: ReplicaState) -> Bool {
        self.legalNextStates.contains(next)
    }

    /// Whether a replica in this state counts toward its deployment's replicas (PENDING,
    /// STARTING and RUNNING: a stopping one is already on its way out).
    public var isLive: Bool {
        switch self {
        case .pending, .starting, .running: true
        case .stopping, .stopped, .failed: false
        }
    }

    /// STOPPED or FAILED: nothing more happens to it.
    public var isFinal: Bool { self.legalNextStates.isEmpty }
}

/// A deployment, named by its application and its own name (deployment names are unique only
/// within an application).
public struct DeploymentID: Sendable, Hashable, Codable, Comparable, CustomStringConvertible {
    public var app: String
    public var name: String

    public init(app: String, name: String) {
        self.app = app
        self.name = name
    }

    /// "app/name": application names may not contain "/", so this is unambiguous.
    public var description: String {
        "\(self.app)/\(self.name)"
    }

    public static func < (lhs: DeploymentID, rhs: DeploymentID) -> Bool {
        (lhs.app, lhs.name) < (rhs.app, rhs.name)
    }
}

/// What the controller knows about one replica: the input to placement and reconciliation.
public struct ReplicaRecord: Sendable, Hashable {
    /// Unique in the cluster, e.g. "Hello#a1b2" (deployment names may not contain "#").
    public var id: String
    public var deployment: DeploymentID
    /// The node hosting it; nil while PENDING.
    public var nodeID: String?
    public var state: ReplicaState
    /// `DeploymentConfig.specVersion` of the config it was started from; a different current
    /// version means it is replaced by a rolling update.
    public var specVersion: String
    /// Why it is PENDING ("needs GPU 0.5; …"), or other news for the status output; empty when
    /// there is nothing to say.
    public var message: String

    public init(
        id: String,
        deployment: DeploymentID,
        nodeID: String? = nil,
        state: ReplicaState = .pending,
        specVersion: String,
        message: String = ""
    ) {
        self.id = id
        self.deployment = deployment
        self.nodeID = nodeID
        self.state = state
        self.specVersion = specVersion
        self.message = message
    }

    /// Moves to `next` if that is a legal transition; returns whether it did. An illegal move
    /// (RUNNING back to STARTING, anything out of STOPPING) is refused, so a late or duplicated
    /// report from a worker cannot resurrect a replica.
    @discardableResult
    public mutating func move(to next: ReplicaState) -> Bool {
        guard self.state.canMove(to: next) else { return false }
        self.state = next
        return true
    }
}
