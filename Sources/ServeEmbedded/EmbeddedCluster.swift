import Foundation
import Logging
import ServeCore
import ServeHead
import ServeWorker

/// A head plus, unless it gets no CPUs, a worker in the same process that hosts replicas with
/// the machine's resources, like a Ray head node: one process is a whole working cluster. The
/// worker reaches the head over loopback like any other worker, so the two still meet only on
/// the wire (this is the one module that links both).
public final class EmbeddedCluster: Sendable {
    public let head: HeadRuntime
    public let worker: WorkerNode?
    private let workerTask: Task<Void, Never>?

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
            return EmbeddedCluster(head: head, worker: nil, workerTask: nil)
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
        let task = Task {
            do {
                try await worker.run()
            } catch {
                logger.error("the head's worker stopped", metadata: ["error": "\(error)"])
            }
        }
        return EmbeddedCluster(head: head, worker: worker, workerTask: task)
    }

    private init(head: HeadRuntime, worker: WorkerNode?, workerTask: Task<Void, Never>?) {
        self.head = head
        self.worker = worker
        self.workerTask = workerTask
    }

    /// Stops the ingress (requests in flight finish), the applications (gracefully), the
    /// worker, then the head.
    public func shutdown() async {
        await self.head.stopIngress()
        await self.head.controller.deploy(ServeConfig(applications: []))
        // The worker's run drains its replicas and returns.
        self.worker?.stop()
        await self.workerTask?.value
        await self.head.shutdown()
    }
}
