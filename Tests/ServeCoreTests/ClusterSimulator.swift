import Testing

@testable import ServeCore

/// A cluster in memory that carries out reconcile actions the way the head's controller would,
/// so tests can feed `Reconciler.plan` its own results pass after pass.
struct ClusterSimulator {
    struct Node {
        var id: String
        var state: NodeState
        var total: ResourceSet
    }

    var nodes: [Node]
    var targets: [DeploymentTarget] = []
    var replicas: [ReplicaRecord] = []
    /// What each placed replica reserved, by replica id.
    var reserved: [String: ResourceSet] = [:]
    var nextReplicaNumber = 1

    init(nodes: [(String, ResourceSet)]) {
        self.nodes = nodes.map { Node(id: $0.0, state: .alive, total: $0.1) }
    }

    mutating func addNode(_ id: String, _ total: ResourceSet) {
        self.nodes.append(Node(id: id, state: .alive, total: total))
    }

    mutating func setNodeState(_ id: String, _ state: NodeState) {
        for index in self.nodes.indices where self.nodes[index].id == id {
            self.nodes[index].state = state
        }
    }

    /// What placement sees: a node's total less what every replica on it (stopping ones too,
    /// until they are gone) reserved.
    var nodeViews: [NodeView] {
        self.nodes.map { node in
            let hosted = self.replicas.filter { $0.nodeID == node.id }
            var available = node.total
            for replica in hosted {
                available = available.subtracting(self.reserved[replica.id] ?? ResourceSet())
            }
            return NodeView(
                id: node.id,
                state: node.state,
                total: node.total,
                available: available,
                replicaCount: hosted.count
            )
        }
    }

    func target(_ id: DeploymentID) -> DeploymentTarget {
        self.targets.first { $0.id == id }!
    }

    mutating func plan() -> [ReconcileAction] {
        var number = self.nextReplicaNumber
        let actions = Reconciler.plan(targets: self.targets, replicas: self.replicas, nodes: self.nodeViews) { id in
            defer { number += 1 }
            let digits = String(number)
            return "\(id.name)#" + String(repeating: "0", count: max(0, 4 - digits.count)) + digits
        }
        self.nextReplicaNumber = number
        return actions
    }

    mutating func apply(_ actions: [ReconcileAction]) {
        for action in actions {
            switch action {
            case .start(let replicaID, let deployment, let nodeID):
                let target = self.target(deployment)
                self.replicas.append(
                    ReplicaRecord(
                        id: replicaID, deployment: deployment, nodeID: nodeID, state: .starting,
                        specVersion: target.specVersion
                    )
                )
                self.reserved[replicaID] = target.demand
            case .pend(let replicaID, let deployment, let reason):
                if let index = self.index(replicaID) {
                    self.replicas[index].message = reason
                } else {
                    self.replicas.append(
                        ReplicaRecord(
                            id: replicaID, deployment: deployment, state: .pending,
                            specVersion: self.target(deployment).specVersion, message: reason
                        )
                    )
                }
            case .place(let replicaID, let nodeID):
                let index = self.index(replicaID)!
                precondition(self.replicas[index].move(to: .starting))
                self.replicas[index].nodeID = nodeID
                self.replicas[index].message = ""
                self.reserved[replicaID] = self.target(self.replicas[index].deployment).demand
            case .stop(let replicaID):
                let index = self.index(replicaID)!
                if self.replicas[index].state == .pending {
                    self.replicas.remove(at: index)
                } else {
                    precondition(self.replicas[index].move(to: .stopping))
                }
            }
        }
    }

    /// Time passes: STARTING replicas come up, STOPPING ones finish and free their resources.
    mutating func settle() {
        for index in self.replicas.indices where self.replicas[index].state == .starting {
            self.replicas[index].move(to: .running)
        }
        for replica in self.replicas where replica.state == .stopping {
            self.reserved[replica.id] = nil
        }
        self.replicas.removeAll { $0.state == .stopping }
    }

    /// A node dies: the caller drops its replicas, as the head does when it declares it DEAD.
    mutating func killNode(_ id: String) {
        self.setNodeState(id, .dead)
    }

    /// Plans, applies and settles until a pass plans nothing; returns the number of passes.
    @discardableResult
    mutating func converge(maxPasses: Int = 50) -> Int {
        for pass in 1...maxPasses {
            let actions = self.plan()
            if actions.isEmpty { return pass }
            self.apply(actions)
            self.settle()
        }
        Issue.record("did not converge in \(maxPasses) passes")
        return maxPasses
    }

    func index(_ replicaID: String) -> Int? {
        self.replicas.firstIndex { $0.id == replicaID }
    }

    func live(_ deployment: DeploymentID) -> [ReplicaRecord] {
        self.replicas.filter { $0.deployment == deployment && $0.state.isLive }
    }

    func running(_ deployment: DeploymentID, version: String? = nil) -> [ReplicaRecord] {
        self.replicas.filter {
            $0.deployment == deployment && $0.state == .running && (version == nil || $0.specVersion == version)
        }
    }

    func count(on nodeID: String) -> Int {
        self.replicas.filter { $0.nodeID == nodeID }.count
    }
}
