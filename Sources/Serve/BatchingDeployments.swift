import NIOConcurrencyHelpers
import ServeCore

/// Reads a number from `user_config`, else `fallback`.
private func number(_ userConfig: JSONValue?, _ key: String, fallback: Double) -> Double {
    userConfig?[key]?.doubleValue ?? fallback
}

/// `batched`: a model on an accelerator that runs one batch at a time and costs `batch_ms`
/// (default 5) per batch plus `item_ms` (default 0.1) per item, as a GPU does: a batch of 16
/// takes nearly as long as one call. Requests are batched by a `Batcher` set from `user_config`
/// (`max_batch_size`, `batch_wait_timeout_s`, `max_concurrent_batches`; `max_batch_size: 1`
/// is the unbatched model), changeable without a restart. Each request is one item (its body,
/// else `?item=`, else its path) and is answered with JSON: the item, the size of the batch it
/// ran in, and the replica.
final class BatchedDeployment: Deployment {
    private struct Costs {
        var batchMs: Double
        var itemMs: Double
        init(_ userConfig: JSONValue?) {
            self.batchMs = number(userConfig, "batch_ms", fallback: 5)
            self.itemMs = number(userConfig, "item_ms", fallback: 0.1)
        }
    }

    private let costs: NIOLockedValueBox<Costs>
    private let batcher: Batcher<String, JSONValue>
    /// It only awaits (a timer stands for the accelerator).
    var isNonBlocking: Bool { true }

    init(context: ReplicaContext) {
        let costs = NIOLockedValueBox(Costs(context.userConfig))
        let replicaID = context.replicaID
        self.costs = costs
        self.batcher = Batcher(BatchConfiguration(userConfig: context.userConfig)) { items in
            let cost = costs.withLockedValue { $0.batchMs + $0.itemMs * Double(items.count) }
            do {
                try await SleepDeployment.sleep(milliseconds: cost)
            } catch {
                return items.map { _ in .failure(error) }
            }
            return items.map {
                .success([
                    "item": .string($0), "batch_size": .number(Double(items.count)), "replica_id": .string(replicaID),
                ])
            }
        }
    }

    func handle(_ request: ServeRequest) async throws -> ServeResponse {
        let body = try await request.body.collect(upTo: 1 << 20)
        let item = body.readableBytes > 0 ? String(buffer: body) : request.query("item") ?? request.pathWithoutQuery
        return .json(try await self.batcher.submit(item))
    }

    func reconfigure(userConfig: JSONValue?) async throws {
        self.costs.withLockedValue { $0 = Costs(userConfig) }
        self.batcher.reconfigure(userConfig: userConfig)
    }
}

/// `multiplexed`: a replica serving many models, at most `max_num_models_per_replica` (default
/// 3) loaded at once, each load taking `load_ms` (default 200). The model is the request's
/// `serve_multiplexed_model_id` header (routers prefer replicas holding it), else `?model=`
/// (routed as any request: the benchmark's baseline). It answers with JSON: the model, the
/// replica, the models it holds after this request, and whether the model was held already.
final class MultiplexedDeployment: Deployment {
    /// A "model": what was loaded, for whom.
    struct Model: Sendable {
        var id: String
    }

    private let loadMs: NIOLockedValueBox<Double>
    private let models: ModelCache<Model>
    private let replicaID: String
    var isNonBlocking: Bool { true }

    init(context: ReplicaContext) {
        let loadMs = NIOLockedValueBox(number(context.userConfig, "load_ms", fallback: 200))
        self.loadMs = loadMs
        self.replicaID = context.replicaID
        self.models = ModelCache(context: context) { id in
            try await SleepDeployment.sleep(milliseconds: loadMs.withLockedValue { $0 })
            return Model(id: id)
        }
    }

    func handle(_ request: ServeRequest) async throws -> ServeResponse {
        _ = try await request.body.collect(upTo: 1 << 20)
        guard let id = request.multiplexedModelID ?? request.query("model").flatMap({ $0.isEmpty ? nil : $0 }) else {
            return .text("name a model: the \(Multiplexing.header) header, or ?model=\n", status: .badRequest)
        }
        let held = self.models.ids.contains(id)
        let model = try await self.models.model(id)
        return .json([
            "model_id": .string(model.id),
            "replica_id": .string(self.replicaID),
            "models": .array(self.models.ids.map { .string($0) }),
            "max_models": .number(Double(self.models.maxModels)),
            "hit": .bool(held),
        ])
    }

    func reconfigure(userConfig: JSONValue?) async throws {
        self.loadMs.withLockedValue { $0 = number(userConfig, "load_ms", fallback: 200) }
        self.models.reconfigure(userConfig: userConfig)
    }
}
