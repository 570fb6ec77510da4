import Synchronization
import Foundation
import HTTPTypes
import NIOCore
import NIOPosix
import ServeCore
import ServeWire

/// `echo`: returns the request body, or the path when there is none.
struct EchoDeployment: Deployment {
    var isNonBlocking: Bool { true }

    func handle(_ request: ServeRequest) async throws -> ServeResponse {
        let body = try await request.body.collect(upTo: 100 << 20)
        if body.readableBytes == 0 {
            return .text(request.path)
        }
        var headers = HTTPFields()
        headers[.contentType] = request.headers[.contentType] ?? "application/octet-stream"
        return ServeResponse(status: .ok, headers: headers, body: body)
    }
}

/// Reads a number of milliseconds from `?ms=`, else from `user_config.ms`, else `fallback`.
private func milliseconds(_ request: ServeRequest, _ userConfig: JSONValue?, fallback: Double) -> Double {
    if let value = request.query("ms").flatMap(Double.init) { return value }
    if case .object(let object) = userConfig, case .number(let value)? = object["ms"] { return value }
    return fallback
}

/// `sleep`: waits `ms` milliseconds (from `?ms=` or `user_config: {ms: …}`), then answers.
/// Its `user_config` can change without a restart (`reconfigure`).
final class SleepDeployment: Deployment {
    private let userConfig: Mutex<JSONValue?>
    /// It only awaits a timer.
    var isNonBlocking: Bool { true }

    init(context: ReplicaContext) {
        self.userConfig = Mutex(context.userConfig)
    }

    func handle(_ request: ServeRequest) async throws -> ServeResponse {
        _ = try await request.body.collect(upTo: 100 << 20)
        let ms = milliseconds(request, self.userConfig.withLock { $0 }, fallback: 100)
        try await Self.sleep(milliseconds: ms)
        return .text("slept \(ms) ms\n")
    }

    func reconfigure(userConfig: JSONValue?) async throws {
        self.userConfig.withLock { $0 = userConfig }
    }

    /// Waits on an event loop's timer (epoll's, to the microsecond), cancellably. `Task.sleep`
    /// on Linux wakes through libdispatch, whose timers may fire late by up to a tenth of the
    /// interval: about 1 ms of a 10 ms sleep, which would swamp what this handler measures.
    static func sleep(milliseconds: Double) async throws {
        try await Self.sleep(for: .nanoseconds(Int64(milliseconds * 1_000_000)))
    }

    static func sleep(for duration: Duration) async throws {
        let loop = MultiThreadedEventLoopGroup.currentEventLoop ?? MultiThreadedEventLoopGroup.singleton.any()
        let (seconds, attoseconds) = duration.components
        let timer = loop.scheduleTask(in: .nanoseconds(max(0, seconds * 1_000_000_000 + attoseconds / 1_000_000_000))) {}
        try await withTaskCancellationHandler {
            try await timer.futureResult.get()
        } onCancel: {
            timer.cancel()
        }
    }
}

/// `cpu`: burns `ms` milliseconds of CPU, on at most `num_cpus` threads of the replica at once.
actor CPUDeployment: Deployment {
    private var userConfig: JSONValue?
    private let threads: ThreadBudget

    init(context: ReplicaContext) {
        self.userConfig = context.userConfig
        self.threads = context.threads
    }

    func handle(_ request: ServeRequest) async throws -> ServeResponse {
        _ = try await request.body.collect(upTo: 100 << 20)
        let ms = milliseconds(request, self.userConfig, fallback: 10)
        let iterations = try await self.threads.run { () -> UInt64 in
            let clock = ContinuousClock()
            let end = clock.now + .milliseconds(ms)
            var counter: UInt64 = 0
            while clock.now < end {
                for _ in 0..<1000 { counter &+= 1 }
            }
            return counter
        }
        return .text("burned \(ms) ms of CPU (\(iterations) iterations)\n")
    }

    func reconfigure(userConfig: JSONValue?) async throws {
        self.userConfig = userConfig
    }
}

/// `env`: describes the replica: ids, its resource grant, and its environment (DESIGN.md).
struct EnvDeployment: Deployment {
    let context: ReplicaContext
    var isNonBlocking: Bool { true }

    func handle(_ request: ServeRequest) async throws -> ServeResponse {
        _ = try await request.body.collect(upTo: 100 << 20)
        var resources: [String: JSONValue] = [:]
        for (name, quantity) in self.context.grant.quantities {
            resources[name] = .number(quantity.doubleValue)
        }
        let environment = self.context.environment.mapValues { JSONValue.string($0) }
        let value = JSONValue.object([
            "replica_id": .string(self.context.replicaID),
            "node_id": .string(self.context.nodeID),
            "app": .string(self.context.app),
            "deployment": .string(self.context.deployment),
            "num_cpus": .number(self.context.grant[ResourceSet.cpu].doubleValue),
            "num_gpus": .number(self.context.grant[ResourceSet.gpu].doubleValue),
            "resources": .object(resources),
            "gpu_ids": .array(self.context.gpuIDs.map { .string($0) }),
            "OMP_NUM_THREADS": .string(self.context.environment["OMP_NUM_THREADS"] ?? ""),
            "CUDA_VISIBLE_DEVICES": .string(self.context.environment["CUDA_VISIBLE_DEVICES"] ?? ""),
            "thread_budget": .number(Double(self.context.threads.limit)),
            "env": .object(environment),
        ])
        return .json(value)
    }
}
