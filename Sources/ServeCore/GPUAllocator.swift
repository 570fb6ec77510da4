/// Which of a node's GPUs each replica gets, as `CUDA_VISIBLE_DEVICES` names them: the
/// per-device half of the guide's "Fractional GPUs" that `ResourceSet` (one `GPU` number per
/// node) leaves out.
///
/// Ray's rule (PEERS.md §5 "GPUs"): a whole request (1, 2, …) takes that many GPUs nobody uses;
/// a fraction shares one device, and Ray "fills one GPU before moving to the next", so 0.5, 0.5,
/// 0.5 land on GPU 0, GPU 0, GPU 1 and a later whole-GPU replica still finds GPU 2 free. Amounts
/// are fixed point, so ten 0.1 grants fill one GPU exactly.
///
/// "Lowest" means first in the `gpuIDs` order given at `init` (the node's own order, e.g. "0",
/// "1", …, "10"; not string order). A pure value: the head keeps one per node and rebuilds it
/// with `restore` from the replicas a node reports.
public struct GPUAllocator: Sendable, Hashable {
    /// The node's GPUs, in allocation order.
    public let gpuIDs: [String]
    /// Units granted per GPU, parallel to `gpuIDs`.
    private var used: [Int64]
    /// Restored grants on ids this node does not list (a node that came back with fewer GPUs):
    /// kept so `release` and `usage` stay truthful, never allocated from.
    private var foreignUsed: [String: Int64] = [:]
    /// Each replica's grant: GPU id → units.
    private var grants: [String: [Share]] = [:]

    private struct Share: Sendable, Hashable {
        var gpuID: String
        var units: Int64
    }

    private static let whole = ResourceQuantity.scale

    /// Duplicate ids are ignored after their first appearance.
    public init(gpuIDs: [String]) {
        var seen: Set<String> = []
        self.gpuIDs = gpuIDs.filter { seen.insert($0).inserted }
        self.used = Array(repeating: 0, count: self.gpuIDs.count)
    }

    /// Grants already held (e.g. rebuilt from the replicas a node runs): replica id → (GPU ids,
    /// amount). The amount is split evenly over the ids (2 GPUs on ["0", "1"]: 1 each), the last
    /// id taking any remainder. A grant the replica already held is replaced. Nothing is checked:
    /// a restore records what is, even if it over-commits a GPU.
    public mutating func restore(replicaID: String, gpuIDs: [String], amount: ResourceQuantity) {
        self.release(replicaID: replicaID)
        guard !gpuIDs.isEmpty else {
            self.grants[replicaID] = []
            return
        }
        let count = Int64(gpuIDs.count)
        let each = amount.units / count
        var shares: [Share] = []
        for (position, gpuID) in gpuIDs.enumerated() {
            let units = position == gpuIDs.count - 1 ? amount.units - each * (count - 1) : each
            shares.append(Share(gpuID: gpuID, units: units))
            self.add(units, to: gpuID)
        }
        self.grants[replicaID] = shares
    }

    /// GPU ids for a new grant: whole numbers take that many completely free GPUs (lowest ids
    /// first); a fraction goes on the GPU that is already most used and still has room (fractions
    /// fill one GPU before the next: 0.5, 0.5, 0.5 → GPU 0, GPU 0, GPU 1), else on the lowest free
    /// one. nil if it does not fit, and for amounts above 1 that are not whole (Ray refuses
    /// those) or below 0. Amount 0 → [] (CUDA_VISIBLE_DEVICES will be empty). A grant the replica
    /// already held is released first.
    public mutating func allocate(replicaID: String, amount: ResourceQuantity) -> [String]? {
        self.release(replicaID: replicaID)
        guard let indices = Self.pick(amount: amount.units, used: self.used) else { return nil }
        let perGPU = amount.units < Self.whole ? amount.units : Self.whole
        var shares: [Share] = []
        for index in indices {
            self.used[index] += perGPU
            shares.append(Share(gpuID: self.gpuIDs[index], units: perGPU))
        }
        self.grants[replicaID] = shares
        return shares.map(\.gpuID)
    }

    /// Whether `allocate` would succeed for `amount` now.
    public func canAllocate(_ amount: ResourceQuantity) -> Bool {
        Self.pick(amount: amount.units, used: self.used) != nil
    }

    /// Gives back the replica's grant; nothing happens for a replica that holds none.
    public mutating func release(replicaID: String) {
        guard let shares = self.grants.removeValue(forKey: replicaID) else { return }
        for share in shares {
            self.add(-share.units, to: share.gpuID)
        }
    }

    /// Per GPU id: how much is granted (for status). Every GPU of the node appears, unused ones
    /// with 0, plus any restored id the node does not list.
    public var usage: [String: ResourceQuantity] {
        var usage: [String: ResourceQuantity] = [:]
        for (index, gpuID) in self.gpuIDs.enumerated() {
            usage[gpuID] = ResourceQuantity(units: self.used[index])
        }
        for (gpuID, units) in self.foreignUsed {
            usage[gpuID] = ResourceQuantity(units: units)
        }
        return usage
    }

    /// The GPU ids granted to a replica, in grant order; nil when it holds no grant.
    public func grant(of replicaID: String) -> [String]? {
        self.grants[replicaID].map { $0.map(\.gpuID) }
    }

    /// How many GPUs have nothing granted on them.
    var wholeFreeCount: Int {
        self.used.filter { $0 == 0 }.count
    }

    /// The most that is free on any one GPU.
    var largestFreeOnOneGPU: ResourceQuantity {
        ResourceQuantity(units: max(0, self.used.map { Self.whole - $0 }.max() ?? 0))
    }

    private mutating func add(_ units: Int64, to gpuID: String) {
        if let index = self.gpuIDs.firstIndex(of: gpuID) {
            self.used[index] += units
        } else {
            let total = (self.foreignUsed[gpuID] ?? 0) + units
            self.foreignUsed[gpuID] = total == 0 ? nil : total
        }
    }

    /// The rule itself, over units used per GPU: indices for the grant, [] for 0, nil if it
    /// does not fit.
    static func pick(amount: Int64, used: [Int64]) -> [Int]? {
        if amount == 0 { return [] }
        guard amount > 0 else { return nil }
        if amount >= Self.whole {
            guard amount % Self.whole == 0 else { return nil }
            let count = Int(amount / Self.whole)
            var chosen: [Int] = []
            for index in used.indices where used[index] == 0 {
                chosen.append(index)
                if chosen.count == count { return chosen }
            }
            return nil
        }
        var best: Int?
        for index in used.indices where used[index] + amount <= Self.whole {
            if let current = best {
                if used[index] > used[current] { best = index }
            } else {
                best = index
            }
        }
        return best.map { [$0] }
    }
}
