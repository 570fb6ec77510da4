import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Serve
import ServeCore
import ServeProxy
import ServeWire

/// How a head starts (the flags of `serve-head`).
public struct HeadOptions: Sendable {
    public var clusterHost = "0.0.0.0"
    public var clusterPort = 6380
    public var httpHost = "0.0.0.0"
    public var httpPort = 8000
    public var adminHost = "127.0.0.1"
    public var adminPort = 8265
    /// nil: SERVE_TOKEN, else the one kept in the state dir, else a new one.
    public var token: String?
    /// The deployed config and the head-made token live here (`StateStore`).
    public var stateDirectory: URL
    /// After a restart that restored a config from the state dir, how long the head starts no
    /// replica, so that workers reconnecting (their retry backoff tops out at 5 s) have the
    /// replicas they kept running adopted rather than doubled.
    public var reconnectGrace: Duration = .seconds(10)
    /// Deployed at start (`--config`) and saved, instead of the config in the state dir.
    public var config: ServeConfig?
    public var registry: DeploymentRegistry = .builtIn
    /// The node autoscaler's config and provider (`--cluster-config`); nil: no node autoscaling.
    public var nodeAutoscaling: NodeAutoscaling?
    /// A worker silent this long is DEAD (`--heartbeat-timeout-s`, default 5 s).
    public var heartbeatTimeout: Double = FailureDetector.Configuration.defaultHeartbeatTimeout
    /// On shutdown (SIGTERM), how long requests in flight at the ingress may take to finish
    /// before the head stops anyway (`--shutdown-timeout-s`, default 30 s).
    public var shutdownTimeout: Double = 30
    /// How far back the dashboard's timeline goes (`--history-window-s`, default 900 s: 15
    /// minutes); the head keeps that much per deployment (`DeploymentHistory`).
    public var historyWindow: Double = DeploymentHistory.Configuration().window

    public init(stateDirectory: URL = HeadOptions.defaultStateDirectory) {
        self.stateDirectory = stateDirectory
    }

    public static var defaultStateDirectory: URL {
        FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".swift-serve/head")
    }
}

/// A running head: the cluster port (workers' control streams), the HTTP ingress, the admin
/// API and the Serve controller. (`ServeEmbedded` adds the head's own worker.)
public final class HeadRuntime: Sendable {
    public let controller: Controller
    public let ingress: Ingress
    public let nodeAutoscaler: NodeAutoscaler?
    public let token: String
    /// Whether the token came from the operator (then the admin API's mutating calls need it).
    public let tokenWasGiven: Bool
    public let clusterPort: Int
    public let httpPort: Int
    public let adminPort: Int
    /// Holds the state dir's lock for as long as the head runs.
    public let store: StateStore
    /// The config this head found in its state dir and deployed at start (nil: none).
    public let restoredConfig: ServeConfig?
    private let clusterServer: HTTP2Server
    private let httpServer: HTTPServer
    private let adminServer: HTTP1Server
    private let tasks: NIOLockedValueBox<[Task<Void, Never>]>
    private let shutdownTimeout: Double
    private let ingressStopped = NIOLockedValueBox(false)
    private let stopped: AsyncStream<Void>
    private let stop: AsyncStream<Void>.Continuation
    private let logger: Logger

    public static func start(_ options: HeadOptions, logger: Logger = Logger(label: "serve.head")) async throws -> HeadRuntime {
        let store = try StateStore(directory: options.stateDirectory)
        let (token, given) = try Self.token(options, store: store)
        let ingress = Ingress(token: token, logger: logger)
        let controller = Controller(
            ingress: ingress,
            failureDetection: FailureDetector.Configuration(heartbeatTimeout: options.heartbeatTimeout),
            history: DeploymentHistory.Configuration(window: options.historyWindow),
            logger: logger
        )
        let saved = try store.loadConfig().flatMap { $0.applications.isEmpty ? nil : $0 }
        var restored: ServeConfig?
        if let config = options.config {
            try await controller.deploy(config, savingTo: store)
        } else if let saved {
            // A restart: workers may still run this config's replicas, and reconnect within
            // their backoff. Starting none before then lets the controller adopt them.
            logger.info(
                "deploying the config kept in the state dir",
                metadata: ["applications": "\(saved.applications.map(\.name))", "serve.state_dir": "\(store.directory.path)"])
            await controller.holdStarts(for: options.reconnectGrace)
            await controller.deploy(saved)
            restored = saved
        }
        let (stopped, stop) = AsyncStream<Void>.makeStream()

        let cluster = ClusterService.router(controller: controller, token: token, logger: logger)
        let clusterServer = try await HTTP2Server.bind(host: options.clusterHost, port: options.clusterPort) { request, writer in
            if try await !cluster.handle(request, writer) { try await RPCRouter.unimplemented(request, writer) }
        }
        let clusterHost = options.clusterHost == "0.0.0.0" || options.clusterHost == "::" ? "127.0.0.1" : options.clusterHost
        let nodeAutoscaler = try options.nodeAutoscaling.map { setup in
            let context = NodeProviderContext(clusterAddress: "\(clusterHost):\(clusterServer.port)", token: token, stateDirectory: options.stateDirectory)
            return NodeAutoscaler(config: setup.config, provider: try setup.makeProvider(context), controller: controller, logger: logger)
        }
        let httpServer = try await HTTPServer.bind(host: options.httpHost, port: options.httpPort) { request, writer in
            try await ingress.handle(request, writer)
        }
        let admin = AdminAPI(
            controller: controller,
            ingress: ingress,
            requiredToken: given ? token : nil,
            clusterToken: token,
            store: store,
            knownHandlers: options.registry.names,
            logger: logger,
            onShutdown: { stop.yield() },
            nodeAutoscaler: nodeAutoscaler
        )
        let adminServer = try await HTTP1Server.bind(host: options.adminHost, port: options.adminPort) { request, writer in
            try await admin.handle(request, writer)
        }

        let runtime = HeadRuntime(
            controller: controller,
            ingress: ingress,
            nodeAutoscaler: nodeAutoscaler,
            token: token,
            tokenWasGiven: given,
            store: store,
            restoredConfig: restored,
            clusterServer: clusterServer,
            httpServer: httpServer,
            adminServer: adminServer,
            stopped: stopped,
            stop: stop,
            shutdownTimeout: options.shutdownTimeout,
            logger: logger
        )
        runtime.startBackgroundTasks()
        return runtime
    }

    private init(
        controller: Controller,
        ingress: Ingress,
        nodeAutoscaler: NodeAutoscaler?,
        token: String,
        tokenWasGiven: Bool,
        store: StateStore,
        restoredConfig: ServeConfig?,
        clusterServer: HTTP2Server,
        httpServer: HTTPServer,
        adminServer: HTTP1Server,
        stopped: AsyncStream<Void>,
        stop: AsyncStream<Void>.Continuation,
        shutdownTimeout: Double,
        logger: Logger
    ) {
        self.shutdownTimeout = shutdownTimeout
        self.controller = controller
        self.ingress = ingress
        self.nodeAutoscaler = nodeAutoscaler
        self.token = token
        self.tokenWasGiven = tokenWasGiven
        self.store = store
        self.restoredConfig = restoredConfig
        self.clusterServer = clusterServer
        self.httpServer = httpServer
        self.adminServer = adminServer
        self.clusterPort = clusterServer.port
        self.httpPort = httpServer.port
        self.adminPort = adminServer.port
        self.stopped = stopped
        self.stop = stop
        self.logger = logger
        self.tasks = NIOLockedValueBox([])
    }

    private func startBackgroundTasks() {
        let controller = self.controller
        // The controller loop's tick: retries PENDING replicas, rolls updates forward.
        let tick = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                await controller.reconcile()
            }
        }
        // The application autoscaler's loop: decisions in wall time, so a slow pass does not
        // stretch the delays (Ray issue #62004).
        let ingress = self.ingress
        let autoscaler = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(100))
                await controller.autoscale(waitingAtRouter: ingress.waitingRequests())
            }
        }
        // The failure detector's timer, woken for the next ping or deadline: a silent node is
        // declared DEAD within milliseconds of its heartbeat timeout.
        let liveness = Task {
            while !Task.isCancelled {
                let wait = await controller.checkLiveness()
                try? await Task.sleep(for: .milliseconds(Int(min(500, max(5, (wait * 1000).rounded(.up))))))
            }
        }
        // The node autoscaler's loop (its own pace: a provider call can take seconds).
        let nodeAutoscaler = self.nodeAutoscaler.map { nodes in Task { await nodes.run() } }
        self.tasks.withLockedValue { $0 = [tick, autoscaler, liveness] + (nodeAutoscaler.map { [$0] } ?? []) }
    }

    /// Waits until `shutdown()` or `POST /api/serve/shutdown`.
    public func waitUntilShutdownRequested() async {
        for await _ in self.stopped { return }
    }

    public func requestShutdown() {
        self.stop.yield()
    }

    /// The first step of a graceful shutdown (SIGTERM): the HTTP ingress stops accepting
    /// connections, each open one closes after the request it is serving, and requests in
    /// flight get up to `--shutdown-timeout-s` to finish (then their connections are closed).
    /// Replicas keep serving until then.
    public func stopIngress() async {
        let first = self.ingressStopped.withLockedValue { stopped in
            defer { stopped = true }
            return !stopped
        }
        guard first else { return }
        self.logger.info("no longer accepting HTTP requests; letting those in flight finish", metadata: ["timeout_s": "\(self.shutdownTimeout)"])
        await self.httpServer.shutdown(gracePeriod: .milliseconds(Int64(self.shutdownTimeout * 1000)))
    }

    /// Stops everything: the ingress (in-flight requests finish), the replicas (gracefully),
    /// then the other servers. The config stays in the state dir: a head started again on it
    /// serves the same applications.
    public func shutdown() async {
        await self.stopIngress()
        await self.controller.deploy(ServeConfig(httpOptions: await self.controller.config.httpOptions, applications: []))
        let tasks = self.tasks.withLockedValue { $0 }
        for task in tasks { task.cancel() }
        await self.nodeAutoscaler?.shutdown()
        await self.adminServer.shutdown(gracePeriod: .seconds(1))
        await self.clusterServer.shutdown(gracePeriod: .seconds(1))
        await self.ingress.close()
        self.stop.finish()
    }

    /// The cluster token: the operator's, or the one the head keeps in its state dir (made on
    /// first start, written atomically with mode 0600).
    static func token(_ options: HeadOptions, store: StateStore) throws -> (String, given: Bool) {
        if let token = options.token ?? ProcessInfo.processInfo.environment["SERVE_TOKEN"], !token.isEmpty {
            return (token, true)
        }
        if let saved = store.loadToken() {
            return (saved, false)
        }
        var generator = SystemRandomNumberGenerator()
        let token = (0..<4).map { _ in String(generator.next() as UInt64, radix: 16).leftPadded(16) }.joined()
        try store.saveToken(token)
        return (token, false)
    }
}

extension String {
    fileprivate func leftPadded(_ length: Int) -> String {
        String(repeating: "0", count: max(0, length - self.count)) + self
    }
}
