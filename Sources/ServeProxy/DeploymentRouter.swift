import ServeCore

/// Picks a replica for each request of one deployment and holds requests that cannot be placed
/// yet. Power of two choices over queue lengths (this router's in-flight counts and the
/// replicas' reports), never past a replica's `max_ongoing_requests`; requests beyond every
/// replica's capacity wait in a queue bounded by `max_queued_requests`.
actor DeploymentRouter {
    enum RouterError: Error, Equatable {
        /// More requests are waiting than `max_queued_requests` allows.
        case queueFull(Int)
        /// The deployment was removed while the request waited.
        case gone
        /// No replica runs and none is coming (`DeploymentRoute.unavailable`).
        case unavailable(String)
    }

    private(set) var route: DeploymentRoute
    /// The number of the route-table update `route` came from (`Ingress.update`).
    private var sequence: UInt64
    private var inFlight: [String: Int] = [:]
    private var waiters: [(id: Int, continuation: CheckedContinuation<ReplicaRoute, any Error>)] = []
    private var nextWaiterID = 0
    private var generator = SystemRandomNumberGenerator()
    /// Requests answered, for the autoscaler's "requests waiting at the router".
    var waiting: Int { self.waiters.count }

    init(route: DeploymentRoute, sequence: UInt64 = 0) {
        self.route = route
        self.sequence = sequence
    }

    /// Takes a newer route; one from an older update (delivered late) is ignored.
    func update(_ route: DeploymentRoute, sequence: UInt64) {
        guard sequence >= self.sequence else { return }
        self.sequence = sequence
        self.route = route
        let live = Set(route.replicas.map(\.id))
        self.inFlight = self.inFlight.filter { live.contains($0.key) || $0.value > 0 }
        self.wakeWaiters()
        if let reason = route.unavailable, route.replicas.isEmpty {
            let waiters = self.waiters
            self.waiters.removeAll()
            for waiter in waiters { waiter.continuation.resume(throwing: RouterError.unavailable(reason)) }
        }
    }

    /// Fails every waiting request: the deployment is gone.
    func close() {
        let waiters = self.waiters
        self.waiters.removeAll()
        for waiter in waiters { waiter.continuation.resume(throwing: RouterError.gone) }
    }

    /// A replica with room for one more request, waiting if there is none.
    func acquire(excluding excluded: Set<String> = []) async throws -> ReplicaRoute {
        if let replica = self.pick(excluding: excluded) {
            return replica
        }
        if let reason = self.route.unavailable, self.route.replicas.isEmpty {
            throw RouterError.unavailable(reason)
        }
        let limit = self.route.maxQueuedRequests
        if limit >= 0 && self.waiters.count >= limit {
            throw RouterError.queueFull(limit)
        }
        let id = self.nextWaiterID
        self.nextWaiterID += 1
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                self.waiters.append((id, continuation))
            }
        } onCancel: {
            Task { await self.cancelWaiter(id) }
        }
    }

    func release(_ replicaID: String) {
        if let count = self.inFlight[replicaID] {
            self.inFlight[replicaID] = count > 1 ? count - 1 : nil
        }
        self.wakeWaiters()
    }

    private func cancelWaiter(_ id: Int) {
        guard let index = self.waiters.firstIndex(where: { $0.id == id }) else { return }
        self.waiters.remove(at: index).continuation.resume(throwing: CancellationError())
    }

    private func wakeWaiters() {
        while !self.waiters.isEmpty, let replica = self.pick(excluding: []) {
            self.waiters.removeFirst().continuation.resume(returning: replica)
        }
    }

    /// Chooses and reserves a slot on a replica.
    private func pick(excluding excluded: Set<String>) -> ReplicaRoute? {
        let candidates = excluded.isEmpty ? self.route.replicas : self.route.replicas.filter { !excluded.contains($0.id) }
        let views = candidates.map {
            ReplicaLoadView(
                id: $0.id,
                inFlight: self.inFlight[$0.id] ?? 0,
                reported: $0.reportedQueueLength,
                maxOngoing: self.route.maxOngoingRequests
            )
        }
        guard let index = PowerOfTwoChoices.choose(views, using: &self.generator) else { return nil }
        let replica = candidates[index]
        self.inFlight[replica.id, default: 0] += 1
        return replica
    }
}
