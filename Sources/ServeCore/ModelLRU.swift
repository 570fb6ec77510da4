/// Model multiplexing's shared vocabulary (DESIGN.md "Batching, multiplexing"): the request
/// header that names a model, and the per-replica bound Ray's `@serve.multiplexed` has.
public enum Multiplexing {
    /// The request header naming the model a request is for (Ray Serve's).
    public static let header = "serve_multiplexed_model_id"
    /// Ray's `max_num_models_per_replica` default.
    public static let defaultMaxModelsPerReplica = 3

    /// `user_config.max_num_models_per_replica`, read by convention (the validator has checked
    /// it is a whole number of at least 1), else `fallback`.
    public static func maxModels(userConfig: JSONValue?, fallback: Int = Self.defaultMaxModelsPerReplica) -> Int {
        guard let value = userConfig?["max_num_models_per_replica"]?.doubleValue else { return fallback }
        return Int(min(max(value, 1), 1_000_000))
    }
}

/// The models one replica holds, least recently used first, at most `capacity` of them: a
/// Swift replica's model cache keeps one to know what to load and evict, and a process
/// replica's node keeps one of the models last routed to it (it cannot ask the process). No
/// I/O; the ids are what the replica reports with its node's heartbeats.
public struct ModelLRU: Sendable, Hashable {
    public private(set) var capacity: Int
    /// Held ids, least recently used first.
    public private(set) var ids: [String] = []

    public init(capacity: Int = Multiplexing.defaultMaxModelsPerReplica) {
        self.capacity = max(1, capacity)
    }

    /// What `use` found.
    public struct Use: Sendable, Hashable {
        /// The model was held already.
        public var hit: Bool
        /// Models evicted to make room (least recently used first).
        public var evicted: [String]
    }

    /// `id` is used now: it becomes the most recently used, added (evicting the least recently
    /// used past the capacity) if it was not held.
    public mutating func use(_ id: String) -> Use {
        if let index = self.ids.firstIndex(of: id) {
            self.ids.remove(at: index)
            self.ids.append(id)
            return Use(hit: true, evicted: [])
        }
        self.ids.append(id)
        return Use(hit: false, evicted: self.trim())
    }

    /// `id` is not held any more (its load failed). False if it was not held.
    @discardableResult
    public mutating func remove(_ id: String) -> Bool {
        guard let index = self.ids.firstIndex(of: id) else { return false }
        self.ids.remove(at: index)
        return true
    }

    /// A new capacity; returns the models evicted to fit it.
    public mutating func setCapacity(_ capacity: Int) -> [String] {
        self.capacity = max(1, capacity)
        return self.trim()
    }

    private mutating func trim() -> [String] {
        guard self.ids.count > self.capacity else { return [] }
        let evicted = Array(self.ids.prefix(self.ids.count - self.capacity))
        self.ids.removeFirst(evicted.count)
        return evicted
    }
}
