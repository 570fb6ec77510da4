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

    /// `available` defaults to `total`: a node with nothing on it.
    public init(
        id: String,
        state: NodeState = .alive,
        total: ResourceSet,
        available: ResourceSet? = nil,
        replicaCount: Int = 0
    ) {
        self.id = id
        self.state = state
        self.total = total
        self.available = available ?? total
        self.replicaCount = replicaCount
    }
}

/// Where a new replica goes: onto a node, or nowhere yet, with the reason a person reads in
/// `serve status` (and the node autoscaler acts on).
public enum PlacementDecision: Sendable, Hashable {
    case node(String)
    case pending(reason: String)
}

/// Replica placement: the Ray autoscaler's packing rule from the guide's "Ray Serve Autoscaling"
/// section, as pure functions of a resource demand and a view of the nodes.
public enum Placement {
    /// Packs onto the fewest nodes, so that scale-down can empty whole nodes and the node
    /// autoscaler can give them back (the guide: Serve removes replicas "in a way that results in
    /// the most nodes having no Ray actors or tasks running on them").
    ///
    /// Among ALIVE nodes where `demand` fits in `available`: the one left with the least
    /// available CPU after placement (the most packed), then the one with more replicas, then
    /// by id. One refinement from Ray's scheduler (which avoids GPU nodes for work that needs
    /// no GPU): a demand with no GPU prefers nodes without GPUs, so CPU-only replicas do not use
    /// up the CPUs that GPU replicas need on a GPU node.
    ///
    /// No fit gives `.pending` with a readable reason, e.g. "needs GPU 0.5, accelerator_type:A100
    /// 1; no node has them free (largest free: GPU 0.25 on n-2)", or "no alive node".
    public static func choose(demand: ResourceSet, nodes: [NodeView]) -> PlacementDecision {
        let wantsGPU = demand[ResourceSet.gpu] > .zero
        var best: (node: NodeView, key: (Int, Int64, Int))?
        for node in nodes where node.state == .alive && demand.fits(in: node.available) {
            let spendsGPUNode = !wantsGPU && node.total[ResourceSet.gpu] > .zero ? 1 : 0
            let cpuAfter = (node.available[ResourceSet.cpu] - demand[ResourceSet.cpu]).units
            let key = (spendsGPUNode, cpuAfter, -node.replicaCount)
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
        return .pending(reason: Self.pendingReason(demand: demand, nodes: nodes))
    }

    /// Why `demand` fits no node, for a person. Either some resource is short on every node
    /// ("needs GPU 0.5; no node has it free (largest free: GPU 0.25 on n-2)"), or each is free
    /// somewhere but never all on one node ("needs CPU 2, GPU 1; no single node has all of them
    /// free (n-1 lacks GPU; n-2 lacks CPU)"). Says "fits on ID" if an ALIVE node has room after
    /// all (it is meant for demands that `choose` could not place).
    public static func pendingReason(demand: ResourceSet, nodes: [NodeView]) -> String {
        let alive = nodes.filter { $0.state == .alive }.sorted { $0.id < $1.id }
        guard !alive.isEmpty else { return "no alive node" }

        var lacking: [(name: String, needed: ResourceQuantity)] = []
        var largest: [String] = []
        for name in demand.orderedNames {
            let needed = demand[name]
            var bestFree = ResourceQuantity.zero
            var bestNode: String?
            for node in alive where node.available[name] > bestFree {
                bestFree = node.available[name]
                bestNode = node.id
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

        if let fitting = alive.first(where: { demand.fits(in: $0.available) }) {
            return "fits on \(fitting.id)"
        }
        let needs = demand.orderedEntries.map { "\($0.name) \($0.quantity)" }.joined(separator: ", ")
        let shown = 3
        var perNode = alive.prefix(shown).map { node in
            "\(node.id) lacks \(demand.shortfall(in: node.available).map(\.name).joined(separator: ", "))"
        }
        if alive.count > shown { perNode.append("\(alive.count - shown) more") }
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
        var candidates = replicas.filter { $0.state.isLive }
        var counts: [String: Int] = [:]
        for node in nodes { counts[node.id] = node.replicaCount }
        func stateRank(_ state: ReplicaState) -> Int {
            switch state {
            case .pending: 0
            case .starting: 1
            case .running: 2
            case .stopping: 3
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
}
