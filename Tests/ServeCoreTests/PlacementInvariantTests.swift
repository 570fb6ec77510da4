import Testing

@testable import ServeCore

/// Random clusters, fed to `Reconciler.plan` pass after pass as the head's controller would, with
/// invariants checked at every action. Seeded, so a failure repeats: the issue names the
/// iteration, and `PlacementInvariantTests.seed` plus that number rebuild it.
@Suite("Placement invariants (randomized)")
struct PlacementInvariantTests {
    static let seed: UInt64 = 0x5EED_91AC_E000

    /// A cluster that carries out reconcile actions and tracks every node's resources and GPU
    /// grants independently of the planner.
    struct Cluster {
        struct Node {
            var id: String
            var state: NodeState
            var total: ResourceSet
            var gpus: GPUAllocator
        }

        var nodes: [Node] = []
        var targets: [DeploymentTarget] = []
        var replicas: [ReplicaRecord] = []
        var reserved: [String: ResourceSet] = [:]
        var nextReplica = 1
        var nextNode = 1

        var views: [NodeView] {
            var available: [String: ResourceSet] = [:]
            var count: [String: Int] = [:]
            for replica in self.replicas {
                guard let nodeID = replica.nodeID, let demand = self.reserved[replica.id] else { continue }
                available[nodeID, default: ResourceSet()] = available[nodeID, default: ResourceSet()].adding(demand)
                count[nodeID, default: 0] += 1
            }
            return self.nodes.map { node in
                NodeView(
                    id: node.id, state: node.state, total: node.total,
                    available: node.total.subtracting(available[node.id] ?? ResourceSet()),
                    replicaCount: count[node.id] ?? 0, gpus: node.gpus
                )
            }
        }

        func target(_ id: DeploymentID) -> DeploymentTarget {
            self.targets.first { $0.id == id }!
        }

        /// Plans with both engines; they must agree action for action.
        mutating func plan() -> [ReconcileAction] {
            let views = self.views
            var results: [[ReconcileAction]] = []
            var next = self.nextReplica
            for engine in [Reconciler.Engine.indexed, .linear] {
                next = self.nextReplica
                results.append(
                    Reconciler.plan(targets: self.targets, replicas: self.replicas, nodes: views, engine: engine) { id in
                        defer { next += 1 }
                        return "\(id.name)#\(next)"
                    }
                )
            }
            #expect(results[0] == results[1], "the indexed planner differs from Placement.choose")
            self.nextReplica = next
            return results[0]
        }
    }

    /// Does `node` have room for `demand` under the deployment's limit, device by device for GPUs?
    static func canTake(
        _ node: NodeView,
        _ demand: ResourceSet,
        mine: Int,
        limit: Int?
    ) -> Bool {
        guard node.state == .alive, demand.fits(in: node.available) else { return false }
        if let limit, mine >= limit { return false }
        return node.gpus?.canAllocate(demand[ResourceSet.gpu]) ?? true
    }

    /// Carries out one pass's actions on `cluster`, checking each against the state it meets.
    static func applyChecking(_ actions: [ReconcileAction], to cluster: inout Cluster, context: String) {
        var views = Dictionary(uniqueKeysWithValues: cluster.views.map { ($0.id, $0) })
        var mine: [DeploymentID: [String: Int]] = [:]
        for replica in cluster.replicas {
            if let nodeID = replica.nodeID { mine[replica.deployment, default: [:]][nodeID, default: 0] += 1 }
        }
        var index = Dictionary(uniqueKeysWithValues: cluster.replicas.enumerated().map { ($1.id, $0) })

        func place(_ replicaID: String, _ deployment: DeploymentID, on nodeID: String) {
            let target = cluster.target(deployment)
            let demand = target.demand
            guard let node = views[nodeID] else {
                Issue.record("\(context): \(replicaID) placed on unknown node \(nodeID)")
                return
            }
            // Over-commit, demands met by the node (accelerator, custom), the limit, and GPUs.
            #expect(node.state == .alive, "\(context): \(replicaID) on \(node.state) \(nodeID)")
            #expect(demand.fits(in: node.available), "\(context): \(nodeID) over-committed by \(replicaID) (\(demand) into \(node.available))")
            for (name, quantity) in demand.quantities {
                #expect(node.total[name] >= quantity, "\(context): \(nodeID) lacks \(name) for \(replicaID)")
            }
            if let limit = target.maxReplicasPerNode {
                #expect((mine[deployment]?[nodeID] ?? 0) < limit, "\(context): max_replicas_per_node exceeded on \(nodeID)")
            }
            let nodeIndex = cluster.nodes.firstIndex { $0.id == nodeID }!
            let grant = cluster.nodes[nodeIndex].gpus.allocate(replicaID: replicaID, amount: demand[ResourceSet.gpu])
            #expect(grant != nil, "\(context): \(nodeID) cannot grant GPU \(demand[ResourceSet.gpu]) to \(replicaID)")
            var view = node
            view.available = view.available.subtracting(demand)
            view.replicaCount += 1
            view.gpus = cluster.nodes[nodeIndex].gpus
            views[nodeID] = view
            mine[deployment, default: [:]][nodeID, default: 0] += 1
            cluster.reserved[replicaID] = demand
        }

        func assertNothingTakes(_ demand: ResourceSet, _ deployment: DeploymentID, _ replicaID: String) {
            let limit = cluster.target(deployment).maxReplicasPerNode
            for node in views.values {
                #expect(
                    !Self.canTake(node, demand, mine: mine[deployment]?[node.id] ?? 0, limit: limit),
                    "\(context): \(replicaID) PENDING though \(node.id) could take it"
                )
            }
        }

        for action in actions {
            switch action {
            case .start(let replicaID, let deployment, let nodeID):
                place(replicaID, deployment, on: nodeID)
                index[replicaID] = cluster.replicas.count
                cluster.replicas.append(
                    ReplicaRecord(
                        id: replicaID, deployment: deployment, nodeID: nodeID, state: .starting,
                        specVersion: cluster.target(deployment).specVersion
                    )
                )
            case .pend(let replicaID, let deployment, let reason):
                assertNothingTakes(cluster.target(deployment).demand, deployment, replicaID)
                #expect(!reason.isEmpty)
                if let at = index[replicaID] {
                    cluster.replicas[at].message = reason
                } else {
                    index[replicaID] = cluster.replicas.count
                    cluster.replicas.append(
                        ReplicaRecord(
                            id: replicaID, deployment: deployment, state: .pending,
                            specVersion: cluster.target(deployment).specVersion, message: reason
                        )
                    )
                }
            case .place(let replicaID, let nodeID):
                let at = index[replicaID]!
                #expect(cluster.replicas[at].state == .pending)
                place(replicaID, cluster.replicas[at].deployment, on: nodeID)
                cluster.replicas[at].move(to: .starting)
                cluster.replicas[at].nodeID = nodeID
                cluster.replicas[at].message = ""
            case .stop(let replicaID):
                let at = index[replicaID]!
                if cluster.replicas[at].state == .pending {
                    cluster.replicas[at].state = .stopping  // dropped below
                } else {
                    let moved = cluster.replicas[at].move(to: .stopping)
                    #expect(moved)
                }
            }
        }
        // PENDING replicas that were retried without news: nothing can take them either
        // (availability only shrank since their retry).
        for replica in cluster.replicas where replica.state == .pending {
            assertNothingTakes(cluster.target(replica.deployment).demand, replica.deployment, replica.id)
        }
        cluster.replicas.removeAll { $0.state == .stopping && $0.nodeID == nil }

        // No node over-committed in any resource, no GPU granted past 1.
        for node in cluster.nodes {
            var used = ResourceSet()
            for replica in cluster.replicas where replica.nodeID == node.id {
                used = used.adding(cluster.reserved[replica.id] ?? ResourceSet())
            }
            #expect(used.fits(in: node.total), "\(context): \(node.id) holds \(used) of \(node.total)")
            #expect(node.gpus.usage.values.allSatisfy { $0 <= 1 }, "\(context): \(node.id) GPUs \(node.gpus.usage)")
            let granted = node.gpus.usage.values.reduce(ResourceQuantity.zero, +)
            #expect(granted == used[ResourceSet.gpu], "\(context): \(node.id) grants \(granted) GPU, reserves \(used[ResourceSet.gpu])")
        }
    }

    // MARK: Generators

    static let customNames = ["custom_a", "custom_b", "disk"]
    static let acceleratorTypes = ["A100", "T4", "L4"]
    static let gpuFractions: [ResourceQuantity] = [0.1, 0.125, 0.2, 0.25, 0.3, 0.5, 0.6, 0.75, 1, 1, 2, 4]

    static func randomNode(_ id: String, using random: inout SeededGenerator) -> Cluster.Node {
        var total = ResourceSet()
        total[ResourceSet.cpu] = ResourceQuantity(units: Int64.random(in: 0...32, using: &random) * 5_000)
        let gpuCount = Bool.random(using: &random) ? 0 : Int.random(in: 1...8, using: &random)
        total[ResourceSet.gpu] = ResourceQuantity(integer: Int64(gpuCount))
        if Int.random(in: 0..<3, using: &random) > 0 {
            total[ResourceSet.memory] = ResourceQuantity(integer: Int64.random(in: 1...64, using: &random) << 30)
        }
        for name in Self.customNames where Int.random(in: 0..<4, using: &random) == 0 {
            total[name] = ResourceQuantity(units: Int64.random(in: 1...8, using: &random) * 5_000)
        }
        if gpuCount > 0, Bool.random(using: &random) {
            total[ResourceSet.acceleratorKey(Self.acceleratorTypes.randomElement(using: &random)!)] = 1
        }
        return Cluster.Node(
            id: id, state: .alive, total: total,
            gpus: GPUAllocator(gpuIDs: (0..<gpuCount).map(String.init))
        )
    }

    static func randomDemand(using random: inout SeededGenerator) -> ResourceSet {
        var demand = ResourceSet()
        demand[ResourceSet.cpu] = [0, 0.5, 1, 1, 1, 2, 3, 4].randomElement(using: &random)!
        if Int.random(in: 0..<5, using: &random) < 2 {
            demand[ResourceSet.gpu] = Self.gpuFractions.randomElement(using: &random)!
        }
        if Int.random(in: 0..<3, using: &random) == 0 {
            demand[ResourceSet.memory] = ResourceQuantity(integer: Int64.random(in: 1...16, using: &random) << 30)
        }
        if Int.random(in: 0..<5, using: &random) == 0 {
            demand[Self.customNames.randomElement(using: &random)!] = [0.5, 1, 2].randomElement(using: &random)!
        }
        if Int.random(in: 0..<6, using: &random) == 0 {
            demand[ResourceSet.acceleratorKey(Self.acceleratorTypes.randomElement(using: &random)!)] = 1
        }
        return demand
    }

    static func randomTarget(_ number: Int, using random: inout SeededGenerator) -> DeploymentTarget {
        DeploymentTarget(
            id: DeploymentID(app: "app\(number % 2)", name: "D\(number)"),
            replicas: Int.random(in: 0...12, using: &random),
            specVersion: "v\(Int.random(in: 0...1, using: &random))",
            demand: Self.randomDemand(using: &random),
            strategy: Bool.random(using: &random) ? .pack : .spread,
            maxReplicasPerNode: Int.random(in: 0..<4, using: &random) == 0 ? Int.random(in: 1...3, using: &random) : nil
        )
    }

    /// Time passes, and the world changes a little.
    static func perturb(_ cluster: inout Cluster, using random: inout SeededGenerator) {
        // Some STARTING replicas come up; some STOPPING ones finish and give back their GPUs.
        for index in cluster.replicas.indices {
            let replica = cluster.replicas[index]
            if replica.state == .starting, Int.random(in: 0..<4, using: &random) > 0 {
                cluster.replicas[index].move(to: .running)
            }
        }
        var finished: [String] = []
        for replica in cluster.replicas where replica.state == .stopping && Int.random(in: 0..<3, using: &random) > 0 {
            finished.append(replica.id)
        }
        for replicaID in finished {
            let replica = cluster.replicas.first { $0.id == replicaID }!
            if let nodeID = replica.nodeID, let at = cluster.nodes.firstIndex(where: { $0.id == nodeID }) {
                cluster.nodes[at].gpus.release(replicaID: replicaID)
            }
            cluster.reserved[replicaID] = nil
        }
        cluster.replicas.removeAll { finished.contains($0.id) }

        switch Int.random(in: 0..<10, using: &random) {
        case 0, 1:
            // Rescale a deployment.
            if !cluster.targets.isEmpty {
                let at = Int.random(in: 0..<cluster.targets.count, using: &random)
                cluster.targets[at].replicas = Int.random(in: 0...14, using: &random)
            }
        case 2:
            // A new spec: a rolling update.
            if !cluster.targets.isEmpty {
                let at = Int.random(in: 0..<cluster.targets.count, using: &random)
                cluster.targets[at].specVersion += "+"
            }
        case 3:
            // A node dies: its replicas are gone with it, as the head drops them.
            if let at = cluster.nodes.indices.filter({ cluster.nodes[$0].state != .dead }).randomElement(using: &random) {
                let nodeID = cluster.nodes[at].id
                cluster.nodes[at].state = .dead
                for replica in cluster.replicas where replica.nodeID == nodeID {
                    cluster.reserved[replica.id] = nil
                    cluster.nodes[at].gpus.release(replicaID: replica.id)
                }
                cluster.replicas.removeAll { $0.nodeID == nodeID }
            }
        case 4:
            if let at = cluster.nodes.indices.filter({ cluster.nodes[$0].state == .alive }).randomElement(using: &random) {
                cluster.nodes[at].state = .draining
            }
        case 5:
            cluster.nodes.append(Self.randomNode("n-\(cluster.nextNode)", using: &random))
            cluster.nextNode += 1
        case 6:
            // A deployment is deleted, or a new one arrives.
            if Bool.random(using: &random), !cluster.targets.isEmpty {
                cluster.targets.remove(at: Int.random(in: 0..<cluster.targets.count, using: &random))
            } else {
                cluster.targets.append(Self.randomTarget(100 + cluster.nextReplica, using: &random))
            }
        case 7:
            if !cluster.targets.isEmpty {
                let at = Int.random(in: 0..<cluster.targets.count, using: &random)
                cluster.targets[at].strategy = cluster.targets[at].strategy == .pack ? .spread : .pack
                cluster.targets[at].maxReplicasPerNode = Bool.random(using: &random) ? nil : Int.random(in: 1...3, using: &random)
            }
        default:
            break
        }
    }

    // MARK: Tests

    @Test("2,000 random clusters: no over-commit, demands met, PENDING only when nothing could take it, GPUs ≤ 1 each")
    func randomClusters() {
        var random = SeededGenerator(seed: Self.seed)
        var placed = 0
        var pended = 0
        for iteration in 0..<2_000 {
            var cluster = Cluster()
            let nodeCount = Int.random(in: 1...20, using: &random)
            for _ in 0..<nodeCount {
                cluster.nodes.append(Self.randomNode("n-\(cluster.nextNode)", using: &random))
                cluster.nextNode += 1
            }
            // Ids not in placement order, so ties by id are exercised.
            cluster.nodes.shuffle(using: &random)
            for number in 0..<Int.random(in: 1...6, using: &random) {
                cluster.targets.append(Self.randomTarget(number, using: &random))
            }
            for pass in 0..<6 {
                let actions = cluster.plan()
                for action in actions {
                    switch action {
                    case .start, .place: placed += 1
                    case .pend: pended += 1
                    case .stop: break
                    }
                }
                Self.applyChecking(actions, to: &cluster, context: "iteration \(iteration) pass \(pass)")
                Self.perturb(&cluster, using: &random)
            }
        }
        // The generator exercises both outcomes plenty.
        print("randomClusters: \(placed) placements, \(pended) pending decisions checked")
        #expect(placed > 20_000)
        #expect(pended > 2_000)
    }

    @Test("a uniform cluster packs onto exactly ceil(total demand / node size) nodes")
    func uniformPacking() {
        var random = SeededGenerator(seed: Self.seed &+ 1)
        for iteration in 0..<500 {
            // Node size = perNode × demand, so the bound is reachable; CPU-only or GPU-only.
            let perNode = Int.random(in: 1...8, using: &random)
            let onGPUs = Bool.random(using: &random)
            let name = onGPUs ? ResourceSet.gpu : ResourceSet.cpu
            let demandAmount: ResourceQuantity =
                onGPUs
                ? [0.125, 0.25, 0.5, 1, 2].randomElement(using: &random)!
                : [0.25, 0.5, 1, 2, 3].randomElement(using: &random)!
            let size = demandAmount * perNode
            if onGPUs && size.units % ResourceQuantity.scale != 0 { continue }
            let nodeCount = Int.random(in: 1...20, using: &random)
            var cluster = Cluster()
            for number in 1...nodeCount {
                let gpuIDs = onGPUs ? (0..<Int(size.integerPart)).map(String.init) : []
                cluster.nodes.append(
                    Cluster.Node(id: "n-\(number)", state: .alive, total: [name: size], gpus: GPUAllocator(gpuIDs: gpuIDs))
                )
            }
            cluster.nodes.shuffle(using: &random)
            let demand: ResourceSet = [name: demandAmount]
            let capacity = nodeCount * perNode
            // Several deployments of the same demand share the nodes.
            let deployments = Int.random(in: 1...3, using: &random)
            for number in 0..<deployments {
                cluster.targets.append(
                    DeploymentTarget(id: DeploymentID(app: "a", name: "D\(number)"), replicas: 0, specVersion: "v1", demand: demand)
                )
            }
            for step in 0..<6 {
                // One deployment scales up and down at random. Several only grow: scaling one of
                // them down empties its emptiest nodes, which need not leave the others packed
                // (nothing moves running replicas to compact them, in Ray either).
                if deployments == 1 {
                    cluster.targets[0].replicas = Int.random(in: 0...capacity, using: &random)
                } else {
                    for at in cluster.targets.indices {
                        let room = capacity - cluster.targets.map(\.replicas).reduce(0, +)
                        cluster.targets[at].replicas += Int.random(in: 0...(room / deployments), using: &random)
                    }
                }
                let total = cluster.targets.map(\.replicas).reduce(0, +)
                for pass in 0..<20 {
                    let actions = cluster.plan()
                    if actions.isEmpty { break }
                    Self.applyChecking(actions, to: &cluster, context: "uniform \(iteration) step \(step) pass \(pass)")
                    for index in cluster.replicas.indices where cluster.replicas[index].state == .starting {
                        cluster.replicas[index].move(to: .running)
                    }
                    for replica in cluster.replicas where replica.state == .stopping {
                        let at = cluster.nodes.firstIndex { $0.id == replica.nodeID }!
                        cluster.nodes[at].gpus.release(replicaID: replica.id)
                        cluster.reserved[replica.id] = nil
                    }
                    cluster.replicas.removeAll { $0.state == .stopping }
                }
                #expect(cluster.replicas.count == total)
                #expect(cluster.replicas.allSatisfy { $0.state == .running })
                let used = Set(cluster.replicas.compactMap(\.nodeID)).count
                let bound = (total + perNode - 1) / perNode
                #expect(
                    used == bound,
                    "uniform \(iteration) step \(step): \(total) × \(demand) on nodes of \(size) used \(used), bound \(bound)"
                )
            }
        }
    }

    /// The scale-down rule as first written: rescan every candidate for each pick. The grouped
    /// version must choose exactly the same replicas.
    static func stopsByRescanning(count: Int, replicas: [ReplicaRecord], nodes: [NodeView]) -> [String] {
        var candidates = replicas.filter { $0.state.isLive }
        var counts: [String: Int] = [:]
        for node in nodes { counts[node.id] = node.replicaCount }
        func stateRank(_ state: ReplicaState) -> Int {
            switch state {
            case .pending: 0
            case .starting: 1
            case .running: 2
            case .stopping, .stopped, .failed: 3
            }
        }
        var chosen: [String] = []
        while chosen.count < count, !candidates.isEmpty {
            var bestIndex = 0
            var bestKey = (Int.max, Int.max)
            for (index, replica) in candidates.enumerated() {
                let onNode = replica.state == .pending ? 0 : replica.nodeID.flatMap { counts[$0] } ?? 0
                let key = (stateRank(replica.state), onNode)
                if key < bestKey || (key == bestKey && replica.id > candidates[bestIndex].id) {
                    bestIndex = index
                    bestKey = key
                }
            }
            let picked = candidates.remove(at: bestIndex)
            if picked.state != .pending, let nodeID = picked.nodeID, let onNode = counts[nodeID] {
                counts[nodeID] = onNode - 1
            }
            chosen.append(picked.id)
        }
        return chosen
    }

    @Test("scale-down picks exactly what rescanning every candidate per pick would")
    func stopChoiceMatchesRescanning() {
        var random = SeededGenerator(seed: Self.seed &+ 2)
        let deployment = DeploymentID(app: "a", name: "D")
        for _ in 0..<2_000 {
            let nodeCount = Int.random(in: 0...8, using: &random)
            var nodes = (0..<nodeCount).map { NodeView(id: "n-\($0)", total: ["CPU": 8], replicaCount: Int.random(in: 0...6, using: &random)) }
            nodes.shuffle(using: &random)
            var ids = Array(0..<Int.random(in: 0...30, using: &random))
            ids.shuffle(using: &random)
            let replicas = ids.map { number in
                // The states a head's record can be in (it drops STOPPED and FAILED ones).
                let state = [ReplicaState.pending, .starting, .running, .stopping].randomElement(using: &random)!
                // Some on nodes the caller does not list.
                let nodeID: String? = state == .pending ? nil : "n-\(Int.random(in: 0...(nodeCount + 1), using: &random))"
                return ReplicaRecord(id: "D#\(number)", deployment: deployment, nodeID: nodeID, state: state, specVersion: "v1")
            }
            let count = Int.random(in: 0...(replicas.count + 2), using: &random)
            #expect(
                Placement.chooseReplicasToStop(count: count, replicas: replicas, nodes: nodes)
                    == Self.stopsByRescanning(count: count, replicas: replicas, nodes: nodes)
            )
        }
    }

    @Test("large clusters: the indexed planner places exactly as Placement.choose, PACK and SPREAD")
    func largeClustersMatch() {
        var random = SeededGenerator(seed: Self.seed &+ 3)
        for iteration in 0..<3 {
            var cluster = Cluster()
            for _ in 0..<Int.random(in: 100...200, using: &random) {
                var node = Self.randomNode("n-\(cluster.nextNode)", using: &random)
                if Int.random(in: 0..<10, using: &random) == 0 { node.state = .draining }
                cluster.nodes.append(node)
                cluster.nextNode += 1
            }
            cluster.nodes.shuffle(using: &random)
            for number in 0..<30 {
                var target = Self.randomTarget(number, using: &random)
                target.replicas = Int.random(in: 0...40, using: &random)
                cluster.targets.append(target)
            }
            for pass in 0..<2 {
                let actions = cluster.plan()  // compares the engines
                Self.applyChecking(actions, to: &cluster, context: "large \(iteration) pass \(pass)")
                Self.perturb(&cluster, using: &random)
            }
        }
    }
}
