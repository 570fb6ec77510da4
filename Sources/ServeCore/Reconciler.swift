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
    /// `DeploymentConfig.placementStrategy`: how new replicas are laid out over the nodes.
    public var strategy: PlacementStrategy = .pack
    /// `DeploymentConfig.maxReplicasPerNode`: no node gets more of this deployment's replicas
    /// (STOPPING ones included, while they still run there); nil is no limit.
    public var maxReplicasPerNode: Int? = nil

    public init(
        id: DeploymentID,
        replicas: Int,
        specVersion: String,
        demand: ResourceSet,
        strategy: PlacementStrategy = .pack,
        maxReplicasPerNode: Int? = nil
    ) {
        self.id = id
        self.replicas = replicas
        self.specVersion = specVersion
        self.demand = demand
        self.strategy = strategy
        self.maxReplicasPerNode = maxReplicasPerNode
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
    /// - Too few live (non-STOPPING) replicas with the current spec: start or pend new ones, on
    ///   the node `Placement.choose` picks with the target's `strategy` and
    ///   `maxReplicasPerNode`. Placement runs in order on a working copy of node availability,
    ///   replica counts and the deployment's replicas per node (every replica of it on a node,
    ///   STOPPING ones too, since they still run there), so several starts in one pass pack or
    ///   spread as they would one by one. Where `NodeView.gpus` is given, each start's GPUs are
    ///   granted on the pass's copy too (the caller still makes the real grant, with
    ///   `GPUAllocator.allocate`, when it carries the action out: the same rule, so the same
    ///   devices).
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
    ///
    /// Cost: about linear in replicas plus nodes for a steady cluster; each placement is a
    /// search of a sorted node index (`PlacementIndex`), not a scan of every node's resources,
    /// so 10,000 new replicas on 1,000 nodes plan in milliseconds (`benchmarks/placement`).
    public static func plan(
        targets: [DeploymentTarget],
        replicas: [ReplicaRecord],
        nodes: [NodeView],
        makeReplicaID: (DeploymentID) -> String
    ) -> [ReconcileAction] {
        Self.plan(targets: targets, replicas: replicas, nodes: nodes, engine: .indexed, makeReplicaID: makeReplicaID)
    }

    /// How a pass searches for nodes: `.indexed` in production; `.linear` calls
    /// `Placement.choose` for every replica, the reference the tests hold `.indexed` to.
    enum Engine {
        case indexed
        case linear
    }

    static func plan(
        targets: [DeploymentTarget],
        replicas: [ReplicaRecord],
        nodes: [NodeView],
        engine: Engine,
        makeReplicaID: (DeploymentID) -> String
    ) -> [ReconcileAction] {
        var pass = ReconcilePass(nodes: nodes, engine: engine)
        let wanted = Set(targets.map(\.id))

        var byDeployment: [DeploymentID: [ReplicaRecord]] = [:]
        var orphans: [ReplicaRecord] = []
        for replica in replicas where !pass.isGone(replica) {
            if wanted.contains(replica.deployment) {
                byDeployment[replica.deployment, default: []].append(replica)
            } else if replica.state.isLive {
                orphans.append(replica)
            }
        }
        for replica in orphans.sorted(by: { $0.id < $1.id }) {
            pass.actions.append(.stop(replicaID: replica.id))
        }

        var planned: Set<DeploymentID> = []
        for (ordinal, target) in targets.enumerated() where planned.insert(target.id).inserted {
            let all = byDeployment[target.id] ?? []
            pass.beginTarget(ordinal, target, placedOn: all.compactMap { $0.state == .pending ? nil : $0.nodeID })
            pass.reconcile(target, replicas: all.filter(\.state.isLive), makeReplicaID: makeReplicaID)
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
    let indexByID: [String: Int]
    /// Each node's state, and its replica count as the pass began (for choosing stops).
    let stateByID: [String: NodeState]
    let replicaCountByID: [String: Int]
    var actions: [ReconcileAction] = []
    let engine: Reconciler.Engine

    // `.indexed`: the node index, and the current target's demand in its terms.
    var index: PlacementIndex
    var demand: PlacementIndex.Demand?
    /// The last failure to place the current target, and the reservation count it saw: until
    /// something is reserved, every replica of the target fails the same way.
    var lastFailure: (ordinal: Int, generation: Int, reason: String)?
    var ordinal = 0

    // `.linear`: node views as this pass's starts change them, and the current deployment's
    // replicas per node id.
    var nodes: [NodeView]
    var mine: [String: Int] = [:]

    init(nodes: [NodeView], engine: Reconciler.Engine) {
        self.engine = engine
        self.nodes = engine == .linear ? nodes : []
        self.index = PlacementIndex(nodes: engine == .indexed ? nodes : [])
        var indexByID: [String: Int] = [:]
        var stateByID: [String: NodeState] = [:]
        var replicaCountByID: [String: Int] = [:]
        for (index, node) in nodes.enumerated() {
            if indexByID[node.id] == nil {
                indexByID[node.id] = index
                stateByID[node.id] = node.state
            }
            // As `Placement.chooseReplicasToStop` reads `nodes`: the last of a repeated id.
            replicaCountByID[node.id] = node.replicaCount
        }
        self.indexByID = indexByID
        self.stateByID = stateByID
        self.replicaCountByID = replicaCountByID
    }

    /// A placed replica whose node is DEAD or unknown no longer exists for planning purposes.
    func isGone(_ replica: ReplicaRecord) -> Bool {
        guard replica.state != .pending else { return false }
        return (replica.nodeID.flatMap { self.stateByID[$0] } ?? .dead) == .dead
    }

    func isDraining(_ replica: ReplicaRecord) -> Bool {
        replica.state != .pending && replica.nodeID.flatMap { self.stateByID[$0] } == .draining
    }

    mutating func reconcile(
        _ target: DeploymentTarget,
        replicas: [ReplicaRecord],
        makeReplicaID: (DeploymentID) -> String
    ) {
        let wanted = max(0, target.replicas)
        let batch = Reconciler.rollingBatchSize(target: wanted)
        let (all, outdated) = self.partition(replicas, by: target)
        let current = self.scaleDown(all, to: wanted)
        let outdatedLeft = self.stopOutdated(outdated, current: current, wanted: wanted, batch: batch)
        self.retryPending(current, of: target)
        let count = Self.newReplicaCount(
            wanted: wanted, batch: batch, current: current, outdated: outdated.count, outdatedLeft: outdatedLeft)
        self.startNew(count, of: target, makeReplicaID: makeReplicaID)
    }

    /// Current replicas (the target's spec, not on a draining node) and outdated ones (to be
    /// replaced).
    private func partition(
        _ replicas: [ReplicaRecord],
        by target: DeploymentTarget
    ) -> (current: [ReplicaRecord], outdated: [ReplicaRecord]) {
        var current: [ReplicaRecord] = []
        var outdated: [ReplicaRecord] = []
        for replica in replicas {
            if replica.specVersion == target.specVersion && !self.isDraining(replica) {
                current.append(replica)
            } else {
                outdated.append(replica)
            }
        }
        return (current, outdated)
    }

    /// Too many current replicas: the usual scale-down, emptiest nodes first. Returns those kept.
    private mutating func scaleDown(_ current: [ReplicaRecord], to wanted: Int) -> [ReplicaRecord] {
        guard current.count > wanted else { return current }
        let excess = Placement.chooseReplicasToStop(
            count: current.count - wanted,
            replicas: current,
            replicaCountByNode: self.replicaCountByID
        )
        self.stop(excess)
        let stopped = Set(excess)
        return current.filter { !stopped.contains($0.id) }
    }

    /// Stops outdated replicas: at once those that serve nothing yet (no capacity is lost);
    /// RUNNING ones as replacements reach RUNNING, or, only when replacements fit nowhere, ahead
    /// of them down to `wanted - batch` serving. Returns how many outdated RUNNING ones are left.
    private mutating func stopOutdated(
        _ outdated: [ReplicaRecord],
        current: [ReplicaRecord],
        wanted: Int,
        batch: Int
    ) -> Int {
        self.stop(outdated.filter { $0.state != .running }.map(\.id).sorted())
        let outdatedRunning = outdated.filter { $0.state == .running }
        let newRunning = current.filter { $0.state == .running }.count
        let newPending = current.filter { $0.state == .pending }.count
        let serving = outdatedRunning.count + newRunning
        var stopCount = max(0, serving - wanted)
        if newPending > 0 {
            stopCount += min(newPending, max(0, serving - stopCount - (wanted - batch)))
        }
        stopCount = min(stopCount, outdatedRunning.count)
        let stops = Placement.chooseReplicasToStop(
            count: stopCount,
            replicas: outdatedRunning,
            replicaCountByNode: self.replicaCountByID
        )
        self.stop(stops)
        return outdatedRunning.count - stops.count
    }

    /// PENDING replicas, before any new one (they have waited longest): placed where they now
    /// fit, or re-pended when the reason they wait changed.
    private mutating func retryPending(_ current: [ReplicaRecord], of target: DeploymentTarget) {
        for replica in current where replica.state == .pending {
            switch self.choose(target) {
            case .node(let nodeID):
                self.reserve(target.demand, on: nodeID, replicaID: replica.id)
                self.actions.append(.place(replicaID: replica.id, nodeID: nodeID))
            case .pending(let reason):
                if reason != replica.message {
                    self.actions.append(.pend(replicaID: replica.id, deployment: target.id, reason: reason))
                }
            }
        }
    }

    /// New replicas to start: all that are missing, except that replacements for outdated ones
    /// are limited to `batch` in flight.
    private static func newReplicaCount(
        wanted: Int,
        batch: Int,
        current: [ReplicaRecord],
        outdated: Int,
        outdatedLeft: Int
    ) -> Int {
        let missing = wanted - current.count
        guard outdated > 0 else { return missing }
        let inFlight = current.count - current.filter { $0.state == .running }.count
        let shortOfTarget = wanted - (outdatedLeft + current.count)
        return min(missing, max(0, shortOfTarget) + max(0, batch - inFlight))
    }

    /// Starts `count` new replicas where they fit, or records them PENDING with the reason.
    private mutating func startNew(_ count: Int, of target: DeploymentTarget, makeReplicaID: (DeploymentID) -> String) {
        for _ in 0..<max(0, count) {
            let replicaID = makeReplicaID(target.id)
            switch self.choose(target) {
            case .node(let nodeID):
                self.reserve(target.demand, on: nodeID, replicaID: replicaID)
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

    /// Starts placement for one target: `placedOn` has the node id of each of its replicas
    /// that is on a node.
    mutating func beginTarget(_ ordinal: Int, _ target: DeploymentTarget, placedOn: [String]) {
        self.ordinal = ordinal
        switch self.engine {
        case .indexed:
            self.index.setDeploymentReplicas(onNodes: placedOn)
            self.demand = self.index.demand(target.demand)
        case .linear:
            self.mine = [:]
            for nodeID in placedOn { self.mine[nodeID, default: 0] += 1 }
        }
    }

    /// Where the next replica of the current target goes.
    mutating func choose(_ target: DeploymentTarget) -> PlacementDecision {
        switch self.engine {
        case .linear:
            return Placement.choose(
                demand: target.demand,
                nodes: self.nodes,
                strategy: target.strategy,
                deploymentReplicasPerNode: self.mine,
                maxReplicasPerNode: target.maxReplicasPerNode
            )
        case .indexed:
            if let failure = self.lastFailure, failure.ordinal == self.ordinal,
                failure.generation == self.index.generation
            {
                return .pending(reason: failure.reason)
            }
            let demand = self.demand!
            switch self.index.choose(demand, strategy: target.strategy, maxReplicasPerNode: target.maxReplicasPerNode) {
            case .success(let node):
                return .node(self.index.ids[node])
            case .failure(let failure):
                let reason = self.index.reason(failure, demand: demand, limit: target.maxReplicasPerNode)
                self.lastFailure = (self.ordinal, self.index.generation, reason)
                return .pending(reason: reason)
            }
        }
    }

    mutating func reserve(_ demand: ResourceSet, on nodeID: String, replicaID: String) {
        switch self.engine {
        case .indexed:
            guard let node = self.index.indexByID[nodeID] else { return }
            self.index.reserve(self.demand!, on: node, replicaID: replicaID)
        case .linear:
            guard let index = self.indexByID[nodeID] else { return }
            self.nodes[index].available = self.nodes[index].available.subtracting(demand)
            self.nodes[index].replicaCount += 1
            let gpu = demand[ResourceSet.gpu]
            if gpu > .zero, self.nodes[index].gpus != nil {
                _ = self.nodes[index].gpus!.allocate(replicaID: replicaID, amount: gpu)
            }
            self.mine[nodeID, default: 0] += 1
        }
    }
}
