import Foundation
import Logging
import ServeCore
import ServeHead
import ServeWorker
import ServiceLifecycle
import UnixSignals

/// A head plus, unless it gets no CPUs, a worker in the same process that hosts replicas with
/// the machine's resources, like a Ray head node: one process is a whole working cluster. The
/// worker reaches the head over loopback like any other worker, so the two still meet only on
/// the wire (this is the one module that links both). `run` runs both in the head's
/// `ServiceGroup`.
public final class EmbeddedCluster: Sendable {
    public let head: HeadRuntime
    public let worker: WorkerNode?

    /// The head node's own resources (the flags of `serve-head`).
    public struct LocalResources: Sendable {
        /// nil: the machine's cores. 0: the head hosts no replicas.
        public var numCPUs: Double?
        public var numGPUs: Double?
        public var memory: Double?
        public var custom: [String: Double] = [:]
        public var acceleratorType: String?
        public var labels: [String: String] = [:]
        public init() {}
    }

    public static func start(
        head options: HeadOptions,
        resources: LocalResources = LocalResources(),
        logger: Logger = Logger(label: "serve.head")
    ) async throws -> EmbeddedCluster {
        let head = try await HeadRuntime.start(options, logger: logger)
        guard resources.numCPUs != 0 else {
            return EmbeddedCluster(head: head, worker: nil)
        }
        let detected = NodeResources.detectedGPUs()
        let offered = NodeResources.make(
            numCPUs: resources.numCPUs,
            numGPUs: resources.numGPUs,
            memory: resources.memory,
            custom: resources.custom,
            acceleratorType: resources.acceleratorType,
            detectedGPUs: detected
        )
        var workerOptions = WorkerOptions(
            headHost: "127.0.0.1",
            headPort: head.clusterPort,
            token: head.token,
            nodeID: "head-" + String(UInt32.random(in: 0...UInt32.max), radix: 16),
            resources: offered,
            gpuIDs: NodeResources.gpuIDs(for: offered, detected: detected),
            labels: resources.labels,
            nodeType: "head",
            acceleratorType: resources.acceleratorType ?? "",
            listenHost: "127.0.0.1",
            registry: options.registry
        )
        // The head's proxy is this node's: it calls the replicas here in process.
        let shownHost = options.httpHost == "0.0.0.0" || options.httpHost == "::" ? "127.0.0.1" : options.httpHost
        workerOptions.proxy = .shared(address: "\(shownHost):\(head.httpPort)")
        let worker = WorkerNode(options: workerOptions, logger: Logger(label: "serve.worker"), sharedIngress: head.ingress)
        return EmbeddedCluster(head: head, worker: worker)
    }

    private init(head: HeadRuntime, worker: WorkerNode?) {
        self.head = head
        self.worker = worker
    }

    /// Runs the head with its worker until the head shuts down gracefully (a signal in
    /// `gracefulShutdownSignals`, `head.requestShutdown()`, `POST /api/serve/shutdown`): the
    /// ingress stops (requests in flight finish), the applications stop (gracefully), the worker
    /// drains and leaves, then the rest of the head stops (`HeadRuntime.run`). A part that fails
    /// stops the others and its error is thrown.
    /// `onReady` and `onShutdown`: as `HeadRuntime.run`'s.
    public func run(
        gracefulShutdownSignals: [UnixSignal] = [],
        onReady: @escaping @Sendable () -> Void = {},
        onShutdown: @escaping @Sendable () -> Void = {}
    ) async throws {
        try await self.head.run(
            hosting: self.worker, gracefulShutdownSignals: gracefulShutdownSignals, onReady: onReady, onShutdown: onShutdown)
    }
}
