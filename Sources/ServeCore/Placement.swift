/// A node's liveness as the head sees it (DESIGN.md nodes JSON): ALIVE nodes take replicas,
/// DRAINING ones keep what they have but take nothing new and are being emptied, DEAD ones
/// host nothing.
public enum NodeState: String, Sendable, Hashable, Codable, CaseIterable {
    case alive = "ALIVE"
    case draining = "DRAINING"
    case dead = "DEAD"
}

/// What placement needs to know about a node.
public struct NodeView: Sendable, Hashable {
    public var id: String
    public var state: NodeState
    /// Its logical resources (`--num-cpus`, `--num-gpus`, …, `accelerator_type:NAME` 1).
    public var total: ResourceSet
    /// `total` less what its replicas have reserved.
    public var available: ResourceSet
    /// Replicas it hosts, of every deployment (scale-down empties the emptiest nodes first).
    public var replicaCount: Int
    /// Its GPUs one by one, with the grants its replicas hold, when the caller tracks them.
    /// Then a GPU demand must also fit as `GPUAllocator.allocate` would grant it: a fraction on
    /// one GPU, a whole count on that many completely free GPUs. (After replicas come and go,
    /// 0.8 GPU can be free in total as 0.4 + 0.4, which takes no 0.5 replica.) Nil: only the
    /// `GPU` total in `available` counts.
    public var gpus: GPUAllocator?

    /// `available` defaults to `total`: a node with nothing on it.
    public init(
        id: String,
        state: NodeState = .alive,
        total: ResourceSet,
        available: ResourceSet? = nil,
        replicaCount: Int = 0,
        gpus: GPUAllocator? = nil
    ) {
        self.id = id
        self.state = state
        self.total = total
        self.available = available ?? total
        self.replicaCount = replicaCount
        self.gpus = gpus
    }
}

/// Where a new replica goes: onto a node, or nowhere yet, with the reason a person reads in
/// `serve status` (and the node autoscaler acts on).
public enum PlacementDecision: Sendable, Hashable {
    case node(String)
    case pending(reason: String)
}

/// How a deployment's replicas are laid out over the nodes (`placement_strategy`).
///
/// Ray Serve spreads by default and packs when `RAY_SERVE_USE_PACK_SCHEDULING_STRATEGY` is set
/// (PEERS.md §3 "Placement"); here PACK is the default, as DESIGN.md "Scheduling and resources"
/// asks (whole nodes empty out and can be given back), and SPREAD is the per-deployment choice
/// for replicas that should not share a node's failure.
public enum PlacementStrategy: String, Sendable, Hashable, CaseIterable {
    /// Best fit, preferring nodes in use: the fewest nodes.
    case pack = "PACK"
    /// The node with the fewest replicas of the same deployment, then the most free CPU (Ray's
    /// `SpreadNodeScorer`).
    case spread = "SPREAD"
}

/// Replica placement: the Ray autoscaler's packing rule from the guide's "Ray Serve Autoscaling"
/// section, and Ray Serve's spread rule, as pure functions of a resource demand and a view of
/// the nodes.
public enum Placement {
    /// Where one new replica of a deployment goes.
    ///
    /// `.pack` packs onto the fewest nodes, so that scale-down can empty whole nodes and the node
    /// autoscaler can give them back (the guide: Serve removes replicas "in a way that results in
    /// the most nodes having no Ray actors or tasks running on them"). Among ALIVE nodes where
    /// `demand` fits in `available`: the one left with the least available CPU after placement
    /// (the most packed), then the one with more replicas, then by id. One refinement from Ray's
    /// scheduler (which avoids GPU nodes for work that needs no GPU): a demand with no GPU prefers
    /// nodes without GPUs, so CPU-only replicas do not use up the CPUs that GPU replicas need on a
    /// GPU node.
    ///
    /// `.spread`, among the same fitting nodes: the one with the fewest replicas of this
    /// deployment (`deploymentReplicasPerNode`, by node id; missing ids count 0), then the one
    /// with the most available CPU, then by id.
    ///
    /// With `maxReplicasPerNode`, nodes that already hold that many replicas of this deployment
    /// are left out under either strategy (Ray's `max_replicas_per_node`). A node whose `gpus`
    /// are known must also be able to grant the GPU demand device by device.
    ///
    /// No fit gives `.pending` with a readable reason, e.g. "needs GPU 0.5, accelerator_type:A100
    /// 1; no node has them free (largest free: GPU 0.25 on n-2)", "no alive node", when nodes
    /// fit but each is at the limit, "max_replicas_per_node 1 reached on every node that fits",
    /// or when the GPU total fits but no device has the room, "needs GPU 0.5 on one GPU; the free
    /// GPU is split over devices (most on one GPU: 0.4 on n-1)".
    public static func choose(
        demand: ResourceSet,
        nodes: [NodeView],
        strategy: PlacementStrategy = .pack,
        deploymentReplicasPerNode: [String: Int] = [:],
        maxReplicasPerNode: Int? = nil
    ) -> PlacementDecision {
        let gpuDemand = demand[ResourceSet.gpu]
        let wantsGPU = gpuDemand > .zero
        var best: (node: NodeView, key: (Int64, Int64, Int64))?
        var fitsButFull = false
        var gpusSplit: [(id: String, gpus: GPUAllocator)] = []
        for node in nodes where node.state == .alive && demand.fits(in: node.available) {
            let mine = deploymentReplicasPerNode[node.id] ?? 0
            if let limit = maxReplicasPerNode, mine >= limit {
                fitsButFull = true
                continue
            }
            if wantsGPU, let gpus = node.gpus, !gpus.canAllocate(gpuDemand) {
                gpusSplit.append((node.id, gpus))
                continue
            }
            let key: (Int64, Int64, Int64)
            switch strategy {
            case .pack:
                let spendsGPUNode: Int64 = !wantsGPU && node.total[ResourceSet.gpu] > .zero ? 1 : 0
                let cpuAfter = (node.available[ResourceSet.cpu] - demand[ResourceSet.cpu]).units
                key = (spendsGPUNode, cpuAfter, -Int64(node.replicaCount))
            case .spread:
                key = (Int64(mine), -node.available[ResourceSet.cpu].units, 0)
            }
            if let current = best {
                if key < current.key || (key == current.key && node.id < current.node.id) {
                    best = (node, key)
                }
            } else {
                best = (node, key)
            }
        }
        if let best {
            return .node(best.node.id)
        }
        if !gpusSplit.isEmpty {
            return .pending(reason: Self.gpuSplitReason(gpuDemand, nodes: gpusSplit.sorted { $0.id < $1.id }))
        }
        if fitsButFull, let limit = maxReplicasPerNode {
            return .pending(reason: Self.limitReason(limit))
        }
        return .pending(reason: Self.pendingReason(demand: demand, nodes: nodes))
    }

    /// The pending reason when nodes fit but each already runs `limit` replicas of the deployment.
    static func limitReason(_ limit: Int) -> String {
        "max_replicas_per_node \(limit) reached on every node that fits"
    }

    /// The pending reason when `amount` GPU is free in total on `nodes` (ascending ids) but on
    /// none of them device by device.
    static func gpuSplitReason(_ amount: ResourceQuantity, nodes: [(id: String, gpus: GPUAllocator)]) -> String {
        if amount.units >= ResourceQuantity.scale {
            var best: (id: String, count: Int)?
            for node in nodes {
                let count = node.gpus.wholeFreeCount
                if best == nil || count > best!.count { best = (node.id, count) }
            }
            let detail = best.map { " (most whole GPUs free: \($0.count) on \($0.id))" } ?? ""
            return "needs GPU \(amount) as whole free GPUs; the free GPU is split over devices\(detail)"
        }
        var best: (id: String, free: ResourceQuantity)?
        for node in nodes {
            let free = node.gpus.largestFreeOnOneGPU
            if best == nil || free > best!.free { best = (node.id, free) }
        }
        let detail = best.map { " (most on one GPU: \($0.free) on \($0.id))" } ?? ""
        return "needs GPU \(amount) on one GPU; the free GPU is split over devices\(detail)"
    }

    /// Why `demand` fits no node, for a person. Either some resource is short on every node
    /// ("needs GPU 0.5; no node has it free (largest free: GPU 0.25 on n-2)"), or each is free
    /// somewhere but never all on one node ("needs CPU 2, GPU 1; no single node has all of them
    /// free (n-1 lacks GPU; n-2 lacks CPU)"). Says "fits on ID" if an ALIVE node has room after
    /// all (it is meant for demands that `choose` could not place).
    public static func pendingReason(demand: ResourceSet, nodes: [NodeView]) -> String {
        let alive = nodes.filter { $0.state == .alive }.sorted { $0.id < $1.id }
        return Self.pendingReason(demand: demand, aliveIDs: alive.map(\.id)) { index, name in
            alive[index].available[name]
        }
    }

    /// `pendingReason` over any representation of the nodes: `aliveIDs` are the ALIVE nodes'
    /// ids in ascending order, and `available(i, name)` is what the `i`th of them has free.
    static func pendingReason(
        demand: ResourceSet,
        aliveIDs: [String],
        available: (Int, String) -> ResourceQuantity
    ) -> String {
        guard !aliveIDs.isEmpty else { return "no alive node" }
        let names = demand.orderedNames

        var lacking: [(name: String, needed: ResourceQuantity)] = []
        var largest: [String] = []
        for name in names {
            let needed = demand[name]
            var bestFree = ResourceQuantity.zero
            var bestNode: String?
            for index in aliveIDs.indices {
                let free = available(index, name)
                if free > bestFree {
                    bestFree = free
                    bestNode = aliveIDs[index]
                }
            }
            if bestFree < needed {
                lacking.append((name, needed))
                if let bestNode { largest.append("\(name) \(bestFree) on \(bestNode)") }
            }
        }
        if !lacking.isEmpty {
            let needs = lacking.map { "\($0.name) \($0.needed)" }.joined(separator: ", ")
            let pronoun = lacking.count == 1 ? "it" : "them"
            let detail = largest.isEmpty ? "" : " (largest free: \(largest.joined(separator: ", ")))"
            return "needs \(needs); no node has \(pronoun) free\(detail)"
        }

        func short(_ index: Int) -> [String] {
            names.filter { demand[$0] > available(index, $0) }
        }
        if let fitting = aliveIDs.indices.first(where: { short($0).isEmpty }) {
            return "fits on \(aliveIDs[fitting])"
        }
        let needs = demand.orderedEntries.map { "\($0.name) \($0.quantity)" }.joined(separator: ", ")
        let shown = 3
        var perNode = aliveIDs.indices.prefix(shown).map { index in
            "\(aliveIDs[index]) lacks \(short(index).joined(separator: ", "))"
        }
        if aliveIDs.count > shown { perNode.append("\(aliveIDs.count - shown) more") }
        return "needs \(needs); no single node has all of them free (\(perNode.joined(separator: "; ")))"
    }

    /// Which replicas to stop when scaling down by `count`. Replicas that serve nothing go first
    /// (PENDING, then STARTING), then RUNNING ones from the nodes with the fewest replicas, so
    /// whole nodes empty out (the guide's scale-down rule); ties go to the newest replica (reverse
    /// lexicographic id).
    ///
    /// Node counts are updated as replicas are picked: with two nodes of two replicas each,
    /// stopping two empties one node instead of taking one from each. STOPPING replicas are never
    /// picked. A replica whose node is not in `nodes` counts as on an empty node. Returns `count`
    /// ids, or fewer if there are not that many.
    public static func chooseReplicasToStop(count: Int, replicas: [ReplicaRecord], nodes: [NodeView]) -> [String] {
        guard count > 0 else { return [] }
        var counts: [String: Int] = [:]
        for node in nodes { counts[node.id] = node.replicaCount }
        return Self.chooseReplicasToStop(count: count, replicas: replicas, replicaCountByNode: counts)
    }

    /// `chooseReplicasToStop` with the nodes' replica counts by id, built once by a caller that
    /// asks many times (the reconciler, once per deployment).
    ///
    /// The greedy rule, without rescanning every candidate for each pick: candidates are grouped
    /// by state, then by node (PENDING ones, and those on unknown nodes, in one group whose
    /// count is always 0), each group newest first. A pick takes the newest replica of the
    /// group with the fewest replicas on its node, newest first on ties, and lowers that node's
    /// count, which is what rescanning every candidate would pick.
    static func chooseReplicasToStop(count: Int, replicas: [ReplicaRecord], replicaCountByNode: [String: Int]) -> [String] {
        guard count > 0 else { return [] }
        var counts = replicaCountByNode
        var chosen: [String] = []
        for state in [ReplicaState.pending, .starting, .running] where chosen.count < count {
            var groups: [String: [String]] = [:]
            var unplaced: [String] = []
            for replica in replicas where replica.state == state {
                if state != .pending, let nodeID = replica.nodeID, counts[nodeID] != nil {
                    groups[nodeID, default: []].append(replica.id)
                } else {
                    unplaced.append(replica.id)
                }
            }
            // Each group oldest first, so the newest is popped from the end.
            var order: [(nodeID: String?, ids: [String])] = [(nil, unplaced.sorted())]
            for (nodeID, ids) in groups {
                order.append((nodeID, ids.sorted()))
            }
            while chosen.count < count {
                var best: (slot: Int, count: Int, id: String)?
                for slot in order.indices {
                    guard let newest = order[slot].ids.last else { continue }
                    let onNode = order[slot].nodeID.map { counts[$0]! } ?? 0
                    if let current = best {
                        if onNode < current.count || (onNode == current.count && newest > current.id) {
                            best = (slot, onNode, newest)
                        }
                    } else {
                        best = (slot, onNode, newest)
                    }
                }
                guard let best else { break }
                order[best.slot].ids.removeLast()
                if let nodeID = order[best.slot].nodeID {
                    counts[nodeID]! -= 1
                }
                chosen.append(best.id)
            }
        }
        return chosen
    }
}
