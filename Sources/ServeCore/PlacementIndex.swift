/// The nodes of one `Reconciler.plan` pass, laid out so that placing thousands of replicas does
/// not scan every node's resource dictionaries for each one.
///
/// It decides exactly as `Placement.choose` does on the same nodes (the reconciler tests run
/// both and compare every action), but:
/// - resource names are numbered once, and each node's availability is a row of integers, so a
///   fit check is a few integer comparisons instead of dictionary lookups;
/// - for PACK, the ALIVE nodes are kept sorted by the packing key (available CPU ascending,
///   replica count descending, id), in two groups (nodes without GPUs, nodes with GPUs). The
///   best fit is then the first node, from the first one with enough CPU, that fits; it is
///   usually found after a handful of nodes, and a reservation moves one node within its group;
/// - a demand that fitted nowhere keeps failing until something is reserved (availability only
///   shrinks within a pass), so its pending reason is worked out once per reservation, not once
///   per replica.
///
/// For SPREAD, the ALIVE nodes are also kept sorted by available CPU descending, then id, with a
/// count of nodes per number of the deployment's replicas: the scan stops at the first node that
/// fits and has the fewest replicas of the deployment any node has (usually among the first
/// few), and otherwise takes the first node of the lowest count it met.
///
/// A node's `gpus`, when given, are checked and granted device by device, as in
/// `Placement.choose`. Node ids are taken to be unique; a repeated id is ignored after its first
/// node.
struct PlacementIndex {
    /// A demand in the index's terms.
    struct Demand {
        var resources: ResourceSet
        /// (resource number, units) for every non-zero quantity of a resource some node has.
        var entries: [(dim: Int, units: Int64)]
        var cpu: Int64
        var gpu: ResourceQuantity
        var wantsGPU: Bool
        /// Asks for a positive amount of a resource that no node has at all.
        var impossible: Bool
    }

    private struct SpreadKey: Comparable {
        var negativeCPU: Int64
        var rank: Int32

        static func < (lhs: SpreadKey, rhs: SpreadKey) -> Bool {
            (lhs.negativeCPU, lhs.rank) < (rhs.negativeCPU, rhs.rank)
        }
    }

    private struct PackKey: Comparable {
        var cpu: Int64
        var negativeCount: Int
        var rank: Int32

        static func < (lhs: PackKey, rhs: PackKey) -> Bool {
            (lhs.cpu, lhs.negativeCount, lhs.rank) < (rhs.cpu, rhs.negativeCount, rhs.rank)
        }
    }

    let ids: [String]
    let indexByID: [String: Int]
    private let alive: [Bool]
    private let hasGPU: [Bool]
    /// Position of each node's id in ascending id order: ties go to the smaller id.
    private let rank: [Int32]
    private let dimByName: [String: Int]
    private let dims: Int
    /// `ids.count` rows of `dims` units each; row `n`, resource `d` is at `n * dims + d`.
    private var available: [Int64]
    private(set) var replicaCount: [Int]
    /// `NodeView.gpus`, as this pass's grants change them.
    private var gpus: [GPUAllocator?]
    /// ALIVE nodes by packing key: [0] those without GPUs, [1] those with.
    private var packOrder: [[Int32]]
    /// ALIVE nodes by available CPU, most first, then id.
    private var spreadOrder: [Int32]
    /// ALIVE nodes in ascending id order (pending reasons list nodes that way).
    private let aliveByID: [Int]
    /// How many ALIVE nodes hold 0, 1, 2, … of the current deployment's replicas.
    private var nodesWithMine: [Int]
    /// Bumped by every reservation.
    private(set) var generation = 0
    /// The current deployment's replicas per node, and the nodes where that is non-zero.
    private var mine: [Int]
    private var touched: [Int] = []

    static let cpuDim = 0

    init(nodes: [NodeView]) {
        var ids: [String] = []
        var indexByID: [String: Int] = [:]
        var unique: [NodeView] = []
        for node in nodes where indexByID[node.id] == nil {
            indexByID[node.id] = ids.count
            ids.append(node.id)
            unique.append(node)
        }
        var dimByName: [String: Int] = [ResourceSet.cpu: Self.cpuDim]
        for node in unique {
            for name in node.available.quantities.keys where dimByName[name] == nil {
                dimByName[name] = dimByName.count
            }
        }
        let dims = dimByName.count
        var available = [Int64](repeating: 0, count: unique.count * dims)
        for (index, node) in unique.enumerated() {
            for (name, quantity) in node.available.quantities {
                available[index * dims + dimByName[name]!] = quantity.units
            }
        }
        let byID = unique.indices.sorted { unique[$0].id < unique[$1].id }
        var rank = [Int32](repeating: 0, count: unique.count)
        for (position, index) in byID.enumerated() {
            rank[index] = Int32(position)
        }

        self.ids = ids
        self.indexByID = indexByID
        self.alive = unique.map { $0.state == .alive }
        self.hasGPU = unique.map { $0.total[ResourceSet.gpu] > .zero }
        self.rank = rank
        self.dimByName = dimByName
        self.dims = dims
        self.available = available
        self.replicaCount = unique.map(\.replicaCount)
        self.gpus = unique.map(\.gpus)
        self.aliveByID = byID.filter { unique[$0].state == .alive }
        self.mine = [Int](repeating: 0, count: unique.count)
        self.nodesWithMine = [self.aliveByID.count]
        self.spreadOrder = []
        self.packOrder = [[], []]
        for index in unique.indices where self.alive[index] {
            self.packOrder[self.hasGPU[index] ? 1 : 0].append(Int32(index))
        }
        for group in 0..<2 {
            var order = self.packOrder[group]
            order.sort { self.packKey(Int($0)) < self.packKey(Int($1)) }
            self.packOrder[group] = order
        }
        var spreadOrder = self.aliveByID.map { Int32($0) }
        spreadOrder.sort { self.spreadKey(Int($0)) < self.spreadKey(Int($1)) }
        self.spreadOrder = spreadOrder
    }

    func demand(_ resources: ResourceSet) -> Demand {
        var entries: [(dim: Int, units: Int64)] = []
        var impossible = false
        for (name, quantity) in resources.quantities {
            if let dim = self.dimByName[name] {
                entries.append((dim, quantity.units))
            } else if quantity > .zero {
                impossible = true
            }
        }
        entries.sort { $0.dim < $1.dim }
        return Demand(
            resources: resources,
            entries: entries,
            cpu: resources[ResourceSet.cpu].units,
            gpu: resources[ResourceSet.gpu],
            wantsGPU: resources[ResourceSet.gpu] > .zero,
            impossible: impossible
        )
    }

    /// Starts counting a deployment's replicas per node (for SPREAD and the per-node limit):
    /// `nodeIDs` has one entry per replica it has on a node; unknown ids are ignored.
    mutating func setDeploymentReplicas(onNodes nodeIDs: [String]) {
        for index in self.touched { self.mine[index] = 0 }
        self.touched.removeAll(keepingCapacity: true)
        self.nodesWithMine = [self.aliveByID.count]
        for nodeID in nodeIDs {
            guard let index = self.indexByID[nodeID] else { continue }
            self.addMine(index)
        }
    }

    /// One more of the current deployment's replicas on node `index`.
    private mutating func addMine(_ index: Int) {
        let before = self.mine[index]
        if before == 0 { self.touched.append(index) }
        self.mine[index] = before + 1
        guard self.alive[index] else { return }
        if self.nodesWithMine.count <= before + 1 { self.nodesWithMine.append(0) }
        self.nodesWithMine[before] -= 1
        self.nodesWithMine[before + 1] += 1
    }

    /// `Placement.choose` on these nodes, with the deployment counts from
    /// `setDeploymentReplicas`: the node's index, or what kept every node out.
    func choose(
        _ demand: Demand,
        strategy: PlacementStrategy,
        maxReplicasPerNode limit: Int?
    ) -> Result<Int, Failure> {
        var failure = Failure()
        guard !demand.impossible else { return .failure(failure) }
        let chosen: Int?
        switch strategy {
        case .pack:
            if demand.wantsGPU {
                let plain = self.firstFit(demand, group: 0, limit: limit, failure: &failure)
                let gpu = self.firstFit(demand, group: 1, limit: limit, failure: &failure)
                if let plain, let gpu {
                    chosen = self.packKey(plain) < self.packKey(gpu) ? plain : gpu
                } else {
                    chosen = plain ?? gpu
                }
            } else {
                chosen =
                    self.firstFit(demand, group: 0, limit: limit, failure: &failure)
                    ?? self.firstFit(demand, group: 1, limit: limit, failure: &failure)
            }
        case .spread:
            chosen = self.spread(demand, limit: limit, failure: &failure)
        }
        if let chosen { return .success(chosen) }
        return .failure(failure)
    }

    /// Why `choose` failed, before it is put in words (which takes a scan of every node).
    struct Failure: Error {
        /// Some node fitted but was at `maxReplicasPerNode`.
        var limitReached = false
        /// Nodes where everything fitted but their GPUs, device by device.
        var gpusSplit: [Int] = []
    }

    /// The words for a failed `choose`, exactly as `Placement.choose` puts them.
    func reason(_ failure: Failure, demand: Demand, limit: Int?) -> String {
        if !failure.gpusSplit.isEmpty {
            let nodes = failure.gpusSplit.sorted { self.rank[$0] < self.rank[$1] }.map { (id: self.ids[$0], gpus: self.gpus[$0]!) }
            return Placement.gpuSplitReason(demand.gpu, nodes: nodes)
        }
        if failure.limitReached, let limit {
            return Placement.limitReason(limit)
        }
        let aliveIDs = self.aliveByID.map { self.ids[$0] }
        return Placement.pendingReason(demand: demand.resources, aliveIDs: aliveIDs) { position, name in
            guard let dim = self.dimByName[name] else { return .zero }
            return ResourceQuantity(units: self.available[self.aliveByID[position] * self.dims + dim])
        }
    }

    /// Reserves `demand` on node `index`: its availability shrinks, it hosts one more replica
    /// (of the current deployment too), and it moves to its new place in the packing order.
    mutating func reserve(_ demand: Demand, on index: Int, replicaID: String) {
        let group = self.hasGPU[index] ? 1 : 0
        if self.alive[index] {
            let key = self.packKey(index)
            let found = Self.lowerBound(self.packOrder[group]) { self.packKey($0) < key }
            precondition(found < self.packOrder[group].count && self.packOrder[group][found] == Int32(index))
            self.packOrder[group].remove(at: found)
            let spreadKey = self.spreadKey(index)
            let spreadFound = Self.lowerBound(self.spreadOrder) { self.spreadKey($0) < spreadKey }
            precondition(spreadFound < self.spreadOrder.count && self.spreadOrder[spreadFound] == Int32(index))
            self.spreadOrder.remove(at: spreadFound)
        }
        let row = index * self.dims
        for entry in demand.entries {
            self.available[row + entry.dim] -= entry.units
        }
        self.replicaCount[index] += 1
        if demand.wantsGPU, self.gpus[index] != nil {
            _ = self.gpus[index]!.allocate(replicaID: replicaID, amount: demand.gpu)
        }
        self.addMine(index)
        self.generation += 1
        if self.alive[index] {
            let key = self.packKey(index)
            self.packOrder[group].insert(Int32(index), at: Self.lowerBound(self.packOrder[group]) { self.packKey($0) < key })
            let spreadKey = self.spreadKey(index)
            self.spreadOrder.insert(Int32(index), at: Self.lowerBound(self.spreadOrder) { self.spreadKey($0) < spreadKey })
        }
    }

    // MARK: Searching

    private func spreadKey(_ index: Int) -> SpreadKey {
        SpreadKey(negativeCPU: -self.available[index * self.dims + Self.cpuDim], rank: self.rank[index])
    }

    private func packKey(_ index: Int) -> PackKey {
        PackKey(
            cpu: self.available[index * self.dims + Self.cpuDim],
            negativeCount: -self.replicaCount[index],
            rank: self.rank[index]
        )
    }

    private func fits(_ demand: Demand, _ index: Int) -> Bool {
        let row = index * self.dims
        for entry in demand.entries where self.available[row + entry.dim] < entry.units {
            return false
        }
        return true
    }

    /// The first position in `order` whose node does not satisfy `isBelow`.
    private static func lowerBound(_ order: [Int32], _ isBelow: (Int) -> Bool) -> Int {
        var low = 0
        var high = order.count
        while low < high {
            let middle = (low + high) / 2
            if isBelow(Int(order[middle])) {
                low = middle + 1
            } else {
                high = middle
            }
        }
        return low
    }

    /// The best PACK node of one group: the first in key order, from the first with enough CPU,
    /// that fits and is under the limit.
    private func firstFit(_ demand: Demand, group: Int, limit: Int?, failure: inout Failure) -> Int? {
        let order = self.packOrder[group]
        var start = 0
        if demand.cpu != 0 {
            let cpu = demand.cpu
            let dims = self.dims
            start = Self.lowerBound(order) { self.available[$0 * dims + Self.cpuDim] < cpu }
        }
        for position in start..<order.count {
            let index = Int(order[position])
            guard self.fits(demand, index) else { continue }
            if let limit, self.mine[index] >= limit {
                failure.limitReached = true
                continue
            }
            if demand.wantsGPU, let gpus = self.gpus[index], !gpus.canAllocate(demand.gpu) {
                failure.gpusSplit.append(index)
                continue
            }
            return index
        }
        return nil
    }

    /// The best SPREAD node: fewest of this deployment's replicas, then most available CPU, then
    /// the smallest id. Scanning by available CPU, the first node met at each count is the best
    /// of that count, and a node at the lowest count any ALIVE node has cannot be beaten.
    private func spread(_ demand: Demand, limit: Int?, failure: inout Failure) -> Int? {
        let fewest = self.nodesWithMine.firstIndex { $0 > 0 } ?? 0
        var best: (index: Int, mine: Int)?
        for position in self.spreadOrder.indices {
            let index = Int(self.spreadOrder[position])
            let mine = self.mine[index]
            if let best, best.mine <= mine { continue }
            guard self.fits(demand, index) else { continue }
            if let limit, mine >= limit {
                failure.limitReached = true
                continue
            }
            if demand.wantsGPU, let gpus = self.gpus[index], !gpus.canAllocate(demand.gpu) {
                failure.gpusSplit.append(index)
                continue
            }
            best = (index, mine)
            if mine <= fewest { break }
        }
        return best?.index
    }
}
