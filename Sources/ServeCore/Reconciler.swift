/// What the controller wants for one deployment: how many replicas, of which spec, each
/// reserving what.
public struct DeploymentTarget: Sendable, Hashable {
    public var id: DeploymentID
    /// The replica count wanted now: `num_replicas`, or the application autoscaler's decision.
    public var replicas: Int
    /// `DeploymentConfig.specVersion`; replicas of another version are replaced.
    public var specVersion: String
    /// `DeploymentConfig.resourceDemand`: what each new replica reserves.
    public var demand: ResourceSet

    public init(id: DeploymentID, replicas: Int, specVersion: String, demand: ResourceSet) {
        self.id = id
        self.replicas = replicas
        self.specVersion = specVersion
        self.demand = demand
    }
}

/// One directive from a reconcile pass; the head's controller actor carries them out (SWIM's
/// instance/shell split, STYLE.md).
public enum ReconcileAction: Sendable, Hashable {
    /// A new replica: reserve `demand` on that node and start it (record it STARTING).
    case start(replicaID: String, deployment: DeploymentID, nodeID: String)
    /// A replica that fits nowhere: a new one to record as PENDING with this reason, or an
    /// existing PENDING one whose reason changed (emitted only on a change, so a steady cluster
    /// plans nothing).
    case pend(replicaID: String, deployment: DeploymentID, reason: String)
    /// An existing PENDING replica now fits: reserve its demand there and start it.
    case place(replicaID: String, nodeID: String)
    /// Stop the replica (a PENDING one is simply dropped).
    case stop(replicaID: String)
}

/// The Serve controller's decision, desired against actual, as a pure function: the head calls
/// `plan` on every loop tick and whenever something changes, and acts on the result.
public enum Reconciler {
    /// One pass of the controller loop. `replicas` is every replica the controller knows of (any
    /// state); new replica ids come from `makeReplicaID` (the caller makes e.g. "Hello#a1b2").
    ///
    /// - Deployments not in `targets` have all their replicas stopped (deleted applications).
    /// - Too few live (non-STOPPING) replicas with the current spec: start or pend new ones.
    ///   Placement runs in order on a working copy of node availability and replica counts, so
    ///   several starts in one pass pack as they would one by one.
    /// - Too many: stop some, chosen by `Placement.chooseReplicasToStop` (emptiest nodes first).
    /// - PENDING replicas are retried, before any new replica is placed (they waited longer):
    ///   `.place` when they now fit, `.pend` when their reason changed.
    /// - A changed `specVersion` is a rolling update: new-version replicas are started first, at
    ///   most `max(1, 20% of target)` in flight (Ray's rolling batch), and old RUNNING replicas
    ///   are stopped only as new ones reach RUNNING, so serving capacity stays at the target.
    ///   Only when new replicas fit nowhere (the old ones hold the room) are old ones stopped
    ///   ahead of them, and never below `target - batch` serving. Old replicas that serve
    ///   nothing yet (PENDING, STARTING) are stopped at once.
    /// - Replicas on DRAINING nodes are replaced the same way: new ones elsewhere first, then
    ///   the draining ones stopped, so a drained node empties without dropping capacity.
    /// - Replicas on DEAD nodes, or on nodes missing from `nodes`, count as gone: they are
    ///   neither counted nor stopped (the caller marks them when it declares the node dead),
    ///   and replacements are started for them.
    ///
    /// Actions come in a stable order: stops for deleted deployments, then per target (in the
    /// order given) its stops, retried PENDING replicas, and new replicas.
    public static func plan(
        targets: [DeploymentTarget],
        replicas: [ReplicaRecord],
        nodes: [NodeView],
        makeReplicaID: (DeploymentID) -> String
    ) -> [ReconcileAction] {
        var pass = ReconcilePass(nodes: nodes)
        let wanted = Set(targets.map(\.id))

        let orphans = replicas.filter { !wanted.contains($0.deployment) && $0.state.isLive && !pass.isGone($0) }
        for replica in orphans.sorted(by: { $0.id < $1.id }) {
            pass.actions.append(.stop(replicaID: replica.id))
        }

        var planned: Set<DeploymentID> = []
        for target in targets where planned.insert(target.id).inserted {
            let mine = replicas.filter { $0.deployment == target.id && $0.state.isLive && !pass.isGone($0) }
            pass.reconcile(target, replicas: mine, makeReplicaID: makeReplicaID)
        }
        return pass.actions
    }

    /// Replicas replaced at a time in a rolling update: 20% of the target, rounded down, at
    /// least one (Ray's `max(int(target * 0.2), 1)` batch).
    public static func rollingBatchSize(target: Int) -> Int {
        max(1, target / 5)
    }
}

/// The working state of one `Reconciler.plan` pass: node availability as this pass's starts
/// reserve it, and the actions so far.
private struct ReconcilePass {
    let originalNodes: [NodeView]
    var nodes: [NodeView]
    let indexByID: [String: Int]
    var actions: [ReconcileAction] = []

    init(nodes: [NodeView]) {
        self.originalNodes = nodes
        self.nodes = nodes
        var indexByID: [String: Int] = [:]
        for (index, node) in nodes.enumerated() where indexByID[node.id] == nil {
            indexByID[node.id] = index
        }
        self.indexByID = indexByID
    }

    func node(_ id: String?) -> NodeView? {
        id.flatMap { self.indexByID[$0] }.map { self.originalNodes[$0] }
    }

    /// A placed replica whose node is DEAD or unknown no longer exists for planning purposes.
    func isGone(_ replica: ReplicaRecord) -> Bool {
        guard replica.state != .pending else { return false }
        return (self.node(replica.nodeID)?.state ?? .dead) == .dead
    }

    func isDraining(_ replica: ReplicaRecord) -> Bool {
        replica.state != .pending && self.node(replica.nodeID)?.state == .draining
    }

    mutating func reconcile(
        _ target: DeploymentTarget,
        replicas: [ReplicaRecord],
        makeReplicaID: (DeploymentID) -> String
    ) {
        let wantedCount = max(0, target.replicas)
        let batch = Reconciler.rollingBatchSize(target: wantedCount)
        var current: [ReplicaRecord] = []
        var outdated: [ReplicaRecord] = []
        for replica in replicas {
            if replica.specVersion == target.specVersion && !self.isDraining(replica) {
                current.append(replica)
            } else {
                outdated.append(replica)
            }
        }

        // Too many current-version replicas: the usual scale-down.
        if current.count > wantedCount {
            let excess = Placement.chooseReplicasToStop(
                count: current.count - wantedCount,
                replicas: current,
                nodes: self.originalNodes
            )
            self.stop(excess)
            let stopped = Set(excess)
            current.removeAll { stopped.contains($0.id) }
        }

        // Outdated replicas that serve nothing yet are stopped at once: no capacity is lost.
        self.stop(outdated.filter { $0.state != .running }.map(\.id).sorted())

        // Outdated RUNNING replicas are stopped as replacements reach RUNNING; only when
        // replacements fit nowhere, ahead of them, down to `target - batch` serving.
        let outdatedRunning = outdated.filter { $0.state == .running }
        let newRunning = current.filter { $0.state == .running }.count
        let newPending = current.filter { $0.state == .pending }.count
        let serving = outdatedRunning.count + newRunning
        var stopCount = max(0, serving - wantedCount)
        if newPending > 0 {
            stopCount += min(newPending, max(0, serving - stopCount - (wantedCount - batch)))
        }
        stopCount = min(stopCount, outdatedRunning.count)
        let outdatedStops = Placement.chooseReplicasToStop(
            count: stopCount,
            replicas: outdatedRunning,
            nodes: self.originalNodes
        )
        self.stop(outdatedStops)
        let outdatedLeft = outdatedRunning.count - outdatedStops.count

        // PENDING replicas first: they have waited longest.
        for replica in current where replica.state == .pending {
            switch Placement.choose(demand: target.demand, nodes: self.nodes) {
            case .node(let nodeID):
                self.reserve(target.demand, on: nodeID)
                self.actions.append(.place(replicaID: replica.id, nodeID: nodeID))
            case .pending(let reason):
                if reason != replica.message {
                    self.actions.append(.pend(replicaID: replica.id, deployment: target.id, reason: reason))
                }
            }
        }

        // New replicas: all that are missing, except that replacements for outdated ones are
        // limited to `batch` in flight.
        let missing = wantedCount - current.count
        let toStart: Int
        if outdated.isEmpty {
            toStart = missing
        } else {
            let inFlight = current.count - newRunning
            let shortOfTarget = wantedCount - (outdatedLeft + current.count)
            toStart = min(missing, max(0, shortOfTarget) + max(0, batch - inFlight))
        }
        for _ in 0..<max(0, toStart) {
            let replicaID = makeReplicaID(target.id)
            switch Placement.choose(demand: target.demand, nodes: self.nodes) {
            case .node(let nodeID):
                self.reserve(target.demand, on: nodeID)
                self.actions.append(.start(replicaID: replicaID, deployment: target.id, nodeID: nodeID))
            case .pending(let reason):
                self.actions.append(.pend(replicaID: replicaID, deployment: target.id, reason: reason))
            }
        }
    }

    mutating func stop(_ replicaIDs: [String]) {
        for replicaID in replicaIDs {
            self.actions.append(.stop(replicaID: replicaID))
        }
    }

    mutating func reserve(_ demand: ResourceSet, on nodeID: String) {
        guard let index = self.indexByID[nodeID] else { return }
        self.nodes[index].available = self.nodes[index].available.subtracting(demand)
        self.nodes[index].replicaCount += 1
    }
}
