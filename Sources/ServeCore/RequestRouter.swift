/// One deployment's request router, as a value: which replica takes a request, which requests
/// wait, and which waiting request a freed slot wakes. No I/O and no clock: the proxy
/// (`ServeProxy.DeploymentRouter`) keeps one behind a lock per deployment and only carries out
/// what its methods return (resume a waiter with a replica, or with an error).
///
/// Rules (DESIGN.md "The data plane on every node", PEERS.md §2):
/// - power of two choices over queue lengths, never past a replica's `max_ongoing_requests` by
///   this router's own count;
/// - replicas on the router's own node first (`Replica.isLocal`: called in process or on
///   loopback), the others only when no local replica has room;
/// - a request that no replica can take waits, at most `max_queued_requests` of them (-1:
///   unbounded); a waiting request keeps the replicas it must avoid (those that refused it) and
///   is woken only with another;
/// - a request for a multiplexed model (`serve_multiplexed_model_id`) goes to a replica holding
///   the model, else to one of those holding the fewest models, then power of two choices and
///   local first within that set: loading a model costs far more than a hop between nodes, so
///   the model's preference comes before locality. Having sent a model to a replica, the router
///   counts it as held there until the next table says what the replica reports;
/// - a route from an older table than the one applied is ignored.
public struct RequestRouter: Sendable {
    public struct Replica: Sendable, Hashable {
        public var id: String
        /// On the router's own node.
        public var isLocal: Bool
        /// The multiplexed models it holds, as it last reported (plus those this router sent it
        /// since).
        public var models: Set<String>

        public init(id: String, isLocal: Bool, models: Set<String> = []) {
            self.id = id
            self.isLocal = isLocal
            self.models = models
        }
    }

    public enum Failure: Error, Sendable, Hashable {
        /// More requests wait than `max_queued_requests` allows.
        case queueFull(Int)
        /// The deployment was removed while the request waited.
        case gone
        /// No replica runs and none is coming (the reason is the deployment's).
        case unavailable(String)
        /// Every replica refused the request or could not be reached.
        case exhausted
    }

    /// What `acquire` decided.
    public enum Acquired: Sendable, Hashable {
        /// Go to the replica at this index of `replicas` (its slot is reserved: `release` it).
        case replica(Int)
        /// Wait under this number until `release`, `update` or `cancel` says more.
        case wait(Int)
        /// No replica has room now, and the caller asked not to be queued (`mayWait: false`).
        case mustWait
        case failed(Failure)
    }

    /// A waiting request woken, with the index of its replica or why it failed.
    public enum Wake: Sendable, Hashable {
        case replica(waiter: Int, index: Int)
        case failed(waiter: Int, Failure)
    }

    /// The most requests one router holds when `max_queued_requests` is -1 ("unbounded", as in
    /// Ray): past it they are answered 503 like a full queue, so a flood cannot grow memory
    /// without end.
    public static let unboundedQueueLimit = 100_000

    public private(set) var replicas: [Replica]
    public private(set) var maxOngoing: Int
    public private(set) var maxQueued: Int
    public private(set) var unavailable: String?
    /// The table version `replicas` came from.
    public private(set) var version: UInt64
    private var inFlight: [String: Int] = [:]
    /// Waiting requests by number, and their order (numbers of finished waits are skipped).
    private var waiters: [Int: Waiter] = [:]
    private var order: [Int] = []
    private var orderStart = 0
    private var nextWaiter = 0

    /// What a waiting request needs: replicas to avoid, and its model.
    private struct Waiter: Sendable {
        var excluded: Set<String>
        var model: String?
    }

    public init(replicas: [Replica], maxOngoing: Int, maxQueued: Int, unavailable: String? = nil, version: UInt64 = 0) {
        self.replicas = replicas
        self.maxOngoing = max(1, maxOngoing)
        self.maxQueued = maxQueued
        self.unavailable = unavailable
        self.version = version
    }

    /// Requests waiting for a replica (the autoscaler counts them as demand).
    public var waiting: Int { self.waiters.count }

    /// This router's requests in flight on `replicaID`.
    public func inFlight(_ replicaID: String) -> Int { self.inFlight[replicaID] ?? 0 }

    /// A replica for one request (for multiplexed model `model`, if any), avoiding `excluded`;
    /// or a number to wait under (`.mustWait` instead, leaving the queue as it is, when
    /// `mayWait` is false); or why not.
    public mutating func acquire<G: RandomNumberGenerator>(
        excluding excluded: Set<String> = [], model: String? = nil, mayWait: Bool = true, using generator: inout G
    ) -> Acquired {
        if let index = self.pick(excluding: excluded, model: model, using: &generator) { return .replica(index) }
        if let reason = self.unavailable, self.replicas.isEmpty { return .failed(.unavailable(reason)) }
        if !excluded.isEmpty && self.replicas.allSatisfy({ excluded.contains($0.id) }) { return .failed(.exhausted) }
        let limit = self.maxQueued >= 0 ? self.maxQueued : Self.unboundedQueueLimit
        if self.waiters.count >= limit { return .failed(.queueFull(limit)) }
        guard mayWait else { return .mustWait }
        let number = self.nextWaiter
        self.nextWaiter += 1
        self.waiters[number] = Waiter(excluded: excluded, model: model)
        self.order.append(number)
        return .wait(number)
    }

    /// A request on `replicaID` ended: its slot may wake a waiting one.
    public mutating func release<G: RandomNumberGenerator>(_ replicaID: String, using generator: inout G) -> [Wake] {
        if let count = self.inFlight[replicaID] {
            self.inFlight[replicaID] = count > 1 ? count - 1 : nil
        }
        return self.wake(using: &generator)
    }

    /// A waiting request gave up (its client left, or its deadline passed). False if it was not
    /// waiting any more (woken already).
    public mutating func cancel(_ waiter: Int) -> Bool {
        self.waiters.removeValue(forKey: waiter) != nil
    }

    /// A newer table's replicas and limits. One from an older table is ignored (returns no
    /// wake): a late update must never bring back a stopped replica.
    public mutating func update<G: RandomNumberGenerator>(
        replicas: [Replica],
        maxOngoing: Int,
        maxQueued: Int,
        unavailable: String?,
        version: UInt64,
        using generator: inout G
    ) -> [Wake] {
        guard version >= self.version else { return [] }
        self.version = version
        self.replicas = replicas
        self.maxOngoing = max(1, maxOngoing)
        self.maxQueued = maxQueued
        self.unavailable = unavailable
        let live = Set(replicas.map(\.id))
        self.inFlight = self.inFlight.filter { live.contains($0.key) }
        var wakes = self.wake(using: &generator)
        if let reason = unavailable, replicas.isEmpty {
            wakes += self.failAll(.unavailable(reason))
        } else {
            // A waiting request that every remaining replica refused has nowhere to go.
            for number in self.pendingOrder where self.replicas.allSatisfy({ self.waiters[number]!.excluded.contains($0.id) }) && !self.replicas.isEmpty {
                self.waiters[number] = nil
                wakes.append(.failed(waiter: number, .exhausted))
            }
        }
        return wakes
    }

    /// The deployment is gone: every waiting request fails.
    public mutating func close() -> [Wake] {
        self.failAll(.gone)
    }

    private mutating func failAll(_ failure: Failure) -> [Wake] {
        let numbers = self.pendingOrder
        self.waiters.removeAll()
        self.order.removeAll()
        self.orderStart = 0
        return numbers.map { .failed(waiter: $0, failure) }
    }

    /// Waiting numbers, oldest first.
    private var pendingOrder: [Int] {
        self.order[self.orderStart...].filter { self.waiters[$0] != nil }
    }

    /// Wakes waiting requests in order while replicas have room; one whose exclusions leave it
    /// no room keeps its place and lets later ones by.
    private mutating func wake<G: RandomNumberGenerator>(using generator: inout G) -> [Wake] {
        var wakes: [Wake] = []
        var position = self.orderStart
        while position < self.order.count {
            let number = self.order[position]
            guard let waiter = self.waiters[number] else {
                if position == self.orderStart { self.orderStart += 1 }
                position += 1
                continue
            }
            guard let index = self.pick(excluding: waiter.excluded, model: waiter.model, using: &generator) else {
                // Nothing has room for anyone: stop here. (With exclusions, a later request may
                // still fit.)
                if waiter.excluded.isEmpty { break }
                position += 1
                continue
            }
            self.waiters[number] = nil
            wakes.append(.replica(waiter: number, index: index))
            if position == self.orderStart { self.orderStart += 1 }
            position += 1
        }
        self.compact()
        return wakes
    }

    private mutating func compact() {
        if self.orderStart == self.order.count {
            self.order.removeAll(keepingCapacity: true)
            self.orderStart = 0
        } else if self.orderStart > 64 && self.orderStart * 2 > self.order.count {
            self.order.removeFirst(self.orderStart)
            self.orderStart = 0
        }
    }

    /// Reserves a slot: power of two choices among the local replicas with room, else among the
    /// others; for a model, only among the replicas with room that hold it, else among those
    /// holding the fewest models.
    private mutating func pick<G: RandomNumberGenerator>(excluding excluded: Set<String>, model: String?, using generator: inout G) -> Int? {
        var local: [Int] = []
        var remote: [Int] = []
        for (index, replica) in self.replicas.enumerated() where !excluded.contains(replica.id) {
            guard (self.inFlight[replica.id] ?? 0) < self.maxOngoing else { continue }
            if replica.isLocal { local.append(index) } else { remote.append(index) }
        }
        if let model {
            (local, remote) = self.preferring(model, local: local, remote: remote)
        }
        let pool = local.isEmpty ? remote : local
        let chosen: Int
        switch pool.count {
        case 0:
            return nil
        case 1:
            chosen = pool[0]
        default:
            let first = Int.random(in: 0..<pool.count, using: &generator)
            var second = Int.random(in: 0..<(pool.count - 1), using: &generator)
            if second >= first { second += 1 }
            chosen = self.load(pool[second]) < self.load(pool[first]) ? pool[second] : pool[first]
        }
        self.inFlight[self.replicas[chosen].id, default: 0] += 1
        if let model { self.replicas[chosen].models.insert(model) }
        return chosen
    }

    /// The candidates holding `model`, else those holding the fewest models (each split into
    /// local and remote as given).
    private func preferring(_ model: String, local: [Int], remote: [Int]) -> (local: [Int], remote: [Int]) {
        let holdsModel = { (index: Int) in self.replicas[index].models.contains(model) }
        let holders = (local.filter(holdsModel), remote.filter(holdsModel))
        if !holders.0.isEmpty || !holders.1.isEmpty { return holders }
        guard let fewest = (local + remote).map({ self.replicas[$0].models.count }).min() else { return (local, remote) }
        let holdsFewest = { (index: Int) in self.replicas[index].models.count == fewest }
        return (local.filter(holdsFewest), remote.filter(holdsFewest))
    }

    /// What this router has in flight at the replica. Other routers' requests are not counted
    /// (the head's tables carry no loads: they would change with every heartbeat); a replica
    /// refuses past its own limit and the request is tried on another.
    private func load(_ index: Int) -> Int {
        self.inFlight[self.replicas[index].id] ?? 0
    }
}
