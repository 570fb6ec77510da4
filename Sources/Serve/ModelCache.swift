import HTTPTypes
import NIOConcurrencyHelpers
import ServeCore

extension HTTPField.Name {
    /// `serve_multiplexed_model_id`: the model a request is for (Ray Serve's header).
    public static let serveMultiplexedModelID = HTTPField.Name(Multiplexing.header)!
}

extension ServeRequest {
    /// The multiplexed model this request is for (`serve_multiplexed_model_id`), if any.
    public var multiplexedModelID: String? {
        self.headers[.serveMultiplexedModelID].flatMap { $0.isEmpty ? nil : $0 }
    }
}

/// The models one replica holds, as its node reports them with every heartbeat (routers then
/// send a model's requests where it is held). A `ModelCache` keeps it up to date; for a process
/// replica the node keeps the models last routed to it (`use`), at most `capacity`. A change
/// of which models are held asks the node for a heartbeat at once.
public final class ReplicaModels: Sendable {
    private let lru: NIOLockedValueBox<ModelLRU>
    private let onChange: (@Sendable () -> Void)?

    public init(capacity: Int = Multiplexing.defaultMaxModelsPerReplica, onChange: (@Sendable () -> Void)? = nil) {
        self.lru = NIOLockedValueBox(ModelLRU(capacity: capacity))
        self.onChange = onChange
    }

    /// The ids held, least recently used first.
    public var ids: [String] { self.lru.withLockedValue { $0.ids } }

    /// A request for `id` was sent to the replica: it holds `id` now, the least recently used
    /// one evicted past the capacity.
    public func use(_ id: String) {
        let changed = self.lru.withLockedValue { lru in !lru.use(id).hit }
        if changed { self.onChange?() }
    }

    /// What a model cache holds now (at most `capacity` of them are kept).
    public func set(_ ids: [String]) {
        let changed = self.lru.withLockedValue { lru -> Bool in
            let before = Set(lru.ids)
            var fresh = ModelLRU(capacity: lru.capacity)
            for id in ids { _ = fresh.use(id) }
            lru = fresh
            return Set(fresh.ids) != before
        }
        if changed { self.onChange?() }
    }

    public func setCapacity(_ capacity: Int) {
        let evicted = self.lru.withLockedValue { $0.setCapacity(capacity) }
        if !evicted.isEmpty { self.onChange?() }
    }
}

/// A replica's multiplexed models (Ray Serve's `@serve.multiplexed`): loads a model the first
/// time a request needs it, keeps at most `maxModels` (user_config's
/// `max_num_models_per_replica`, default 3), evicts the least recently used, and tells the
/// replica's node which ids it holds so that routers send each model's requests here.
///
/// ```swift
/// let models: ModelCache<MyModel>
/// init(context: ReplicaContext) {
///     models = ModelCache(context: context) { id in try await MyModel.load(id) }
/// }
/// func handle(_ request: ServeRequest) async throws -> ServeResponse {
///     let model = try await models.model(for: request)   // by its serve_multiplexed_model_id
///     ...
/// }
/// ```
///
/// Calls for a model being loaded wait for that one load; a load that fails is not kept (the
/// next call tries again). A caller cancelled while its model loads still waits for the load
/// (others may need it).
public final class ModelCache<Model: Sendable>: Sendable {
    private struct State {
        var lru: ModelLRU
        var entries: [String: Task<Model, any Error>] = [:]
    }

    private let state: NIOLockedValueBox<State>
    private let held: ReplicaModels
    private let load: @Sendable (String) async throws -> Model
    private let unload: (@Sendable (String, Model) async -> Void)?

    /// `maxModels` nil: the replica's `user_config.max_num_models_per_replica`, else 3. `unload`
    /// is given each evicted model once its load has finished.
    public init(
        context: ReplicaContext,
        maxModels: Int? = nil,
        load: @escaping @Sendable (String) async throws -> Model,
        unload: (@Sendable (String, Model) async -> Void)? = nil
    ) {
        let capacity = maxModels ?? Multiplexing.maxModels(userConfig: context.userConfig)
        self.state = NIOLockedValueBox(State(lru: ModelLRU(capacity: capacity)))
        self.held = context.models
        self.held.setCapacity(capacity)
        self.load = load
        self.unload = unload
    }

    /// The ids held (or loading), least recently used first.
    public var ids: [String] { self.state.withLockedValue { $0.lru.ids } }

    public var maxModels: Int { self.state.withLockedValue { $0.lru.capacity } }

    /// The model `request` names in `serve_multiplexed_model_id`.
    public func model(for request: ServeRequest) async throws -> Model {
        guard let id = request.multiplexedModelID else {
            throw DeploymentError(
                "the request names no model: send the \(Multiplexing.header) header (or use a handle's options(multiplexedModelID:))"
            )
        }
        return try await self.model(id)
    }

    /// Model `id`, loaded if it is not held.
    public func model(_ id: String) async throws -> Model {
        let load = self.load
        let (task, evicted, ids) = self.state.withLockedValue { state in
            let use = state.lru.use(id)
            let task = state.entries[id] ?? Task { try await load(id) }
            state.entries[id] = task
            let evicted = use.evicted.compactMap { old in state.entries.removeValue(forKey: old).map { (old, $0) } }
            return (task, evicted, state.lru.ids)
        }
        self.held.set(ids)
        self.unloadLater(evicted)
        do {
            return try await task.value
        } catch {
            let ids = self.state.withLockedValue { state -> [String]? in
                guard state.entries[id] == task else { return nil }
                state.entries[id] = nil
                state.lru.remove(id)
                return state.lru.ids
            }
            if let ids { self.held.set(ids) }
            throw error
        }
    }

    /// A new bound (from `reconfigure`), evicting the least recently used past it.
    public func setMaxModels(_ maxModels: Int) {
        let (evicted, ids) = self.state.withLockedValue { state in
            let evicted = state.lru.setCapacity(maxModels).compactMap { old in
                state.entries.removeValue(forKey: old).map { (old, $0) }
            }
            return (evicted, state.lru.ids)
        }
        self.held.setCapacity(maxModels)
        self.held.set(ids)
        self.unloadLater(evicted)
    }

    /// Gives `unload` each evicted model once its load has finished.
    private func unloadLater(_ evicted: [(String, Task<Model, any Error>)]) {
        guard let unload = self.unload else { return }
        for (old, loading) in evicted {
            Task { if let model = try? await loading.value { await unload(old, model) } }
        }
    }

    /// `user_config.max_num_models_per_replica`, when it names one.
    public func reconfigure(userConfig: JSONValue?) {
        self.setMaxModels(Multiplexing.maxModels(userConfig: userConfig, fallback: self.maxModels))
    }
}
