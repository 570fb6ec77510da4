import NIOConcurrencyHelpers
import ServeCore

/// Drives one deployment's `ServeCore.RequestRouter` behind a lock: a request takes a replica
/// with no actor hop and no task; only a request that must wait suspends, on a continuation
/// that `release`, `update` or its cancellation resumes.
final class DeploymentRouter: Sendable {
    private struct State {
        var core: RequestRouter
        /// The route and local node the core was last given.
        var route: DeploymentRoute
        var localNode: String?
        var routes: [ReplicaRoute] { self.route.replicas }
        var continuations: [Int: CheckedContinuation<ReplicaRoute, any Error>] = [:]
        var generator = SystemRandomNumberGenerator()
    }

    private let state: NIOLockedValueBox<State>
    let id: DeploymentID
    /// Called when a request starts waiting while the deployment has no replica at all (a cold
    /// start: the node tells the head at once).
    private let onColdWait: (@Sendable () -> Void)?

    init(route: DeploymentRoute, localNode: String?, version: UInt64 = 0, onColdWait: (@Sendable () -> Void)? = nil) {
        self.id = route.id
        self.onColdWait = onColdWait
        self.state = NIOLockedValueBox(State(
            core: RequestRouter(
                replicas: Self.views(route.replicas, localNode: localNode),
                maxOngoing: route.maxOngoingRequests,
                maxQueued: route.maxQueuedRequests,
                unavailable: route.unavailable,
                version: version),
            route: route,
            localNode: localNode))
    }

    private static func views(_ replicas: [ReplicaRoute], localNode: String?) -> [RequestRouter.Replica] {
        replicas.map {
            RequestRouter.Replica(id: $0.id, isLocal: $0.nodeID == localNode, models: Set($0.models))
        }
    }

    /// Whether a replica of this deployment runs on `node` (its requests then stream their
    /// bodies to it, unread).
    func hasReplica(on node: String) -> Bool {
        self.state.withLockedValue { $0.routes.contains { $0.nodeID == node } }
    }

    /// Requests waiting for a replica.
    var waiting: Int { self.state.withLockedValue { $0.core.waiting } }

    /// Takes a newer route; one from an older table is ignored, and so is the same route again
    /// (a table where another deployment changed: the router keeps the models it assumes its
    /// replicas hold until their own entry changes).
    func update(_ route: DeploymentRoute, localNode: String?, version: UInt64) {
        let resumes = self.state.withLockedValue { state -> [Resume] in
            guard version >= state.core.version, route != state.route || localNode != state.localNode else { return [] }
            let wakes = state.core.update(
                replicas: Self.views(route.replicas, localNode: localNode),
                maxOngoing: route.maxOngoingRequests,
                maxQueued: route.maxQueuedRequests,
                unavailable: route.unavailable,
                version: version,
                using: &state.generator)
            state.route = route
            state.localNode = localNode
            return Self.resumes(wakes, &state)
        }
        Self.run(resumes)
    }

    /// Fails every waiting request: the deployment is gone.
    func close() {
        let resumes = self.state.withLockedValue { state in Self.resumes(state.core.close(), &state) }
        Self.run(resumes)
    }

    /// A replica with room for one more request (its slot reserved until `release`), waiting if
    /// there is none; for multiplexed model `model`, one holding it if it can.
    func acquire(excluding excluded: Set<String> = [], model: String? = nil) async throws -> ReplicaRoute {
        // Most requests find a replica at once: no continuation, no queue entry.
        let first = self.state.withLockedValue { state -> Result<ReplicaRoute, RequestRouter.Failure>? in
            switch state.core.acquire(excluding: excluded, model: model, mayWait: false, using: &state.generator) {
            case .replica(let index): return .success(state.routes[index])
            case .failed(let failure): return .failure(failure)
            case .wait, .mustWait: return nil
            }
        }
        if let first { return try first.get() }
        let waiting = NIOLockedValueBox(WaitState.notYet)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<ReplicaRoute, any Error>) in
                enum Step {
                    case resume(Result<ReplicaRoute, any Error>)
                    /// Queued; `cold` when the deployment has no replica at all.
                    case queued(cold: Bool)
                }
                let step = self.state.withLockedValue { state -> Step in
                    switch state.core.acquire(excluding: excluded, model: model, using: &state.generator) {
                    case .replica(let index): return .resume(.success(state.routes[index]))
                    case .failed(let failure): return .resume(.failure(failure))
                    case .mustWait: preconditionFailure("acquire with mayWait queues")
                    case .wait(let waiter):
                        let cancelled = waiting.withLockedValue { wait -> Bool in
                            if case .cancelled = wait { return true }
                            wait = .waiting(waiter)
                            return false
                        }
                        if cancelled {
                            _ = state.core.cancel(waiter)
                            return .resume(.failure(CancellationError()))
                        }
                        // Stored under the same lock that published the number: a cancellation
                        // that reads the number finds the continuation.
                        state.continuations[waiter] = continuation
                        return .queued(cold: state.routes.isEmpty)
                    }
                }
                switch step {
                case .resume(let result): continuation.resume(with: result)
                case .queued(let cold): if cold { self.onColdWait?() }
                }
            }
        } onCancel: {
            let waiter = waiting.withLockedValue { wait -> Int? in
                guard case .waiting(let waiter) = wait else {
                    wait = .cancelled
                    return nil
                }
                return waiter
            }
            guard let waiter else { return }
            let continuation = self.state.withLockedValue { state -> CheckedContinuation<ReplicaRoute, any Error>? in
                guard state.core.cancel(waiter) else { return nil }
                return state.continuations.removeValue(forKey: waiter)
            }
            continuation?.resume(throwing: CancellationError())
        }
    }

    private enum WaitState {
        case notYet
        case waiting(Int)
        case cancelled
    }

    /// The request on `replicaID` ended: its slot goes to a waiting request, if any.
    func release(_ replicaID: String) {
        let resumes = self.state.withLockedValue { state -> [Resume] in
            let wakes = state.core.release(replicaID, using: &state.generator)
            return wakes.isEmpty ? [] : Self.resumes(wakes, &state)
        }
        if !resumes.isEmpty { Self.run(resumes) }
    }

    private typealias Resume = (CheckedContinuation<ReplicaRoute, any Error>, Result<ReplicaRoute, any Error>)

    private static func resumes(_ wakes: [RequestRouter.Wake], _ state: inout State) -> [Resume] {
        wakes.compactMap { wake in
            switch wake {
            case .replica(let waiter, let index):
                guard let continuation = state.continuations.removeValue(forKey: waiter) else { return nil }
                return (continuation, .success(state.routes[index]))
            case .failed(let waiter, let failure):
                guard let continuation = state.continuations.removeValue(forKey: waiter) else { return nil }
                return (continuation, .failure(failure))
            }
        }
    }

    /// Continuations are resumed outside the lock.
    private static func run(_ resumes: [Resume]) {
        for (continuation, result) in resumes { continuation.resume(with: result) }
    }
}
