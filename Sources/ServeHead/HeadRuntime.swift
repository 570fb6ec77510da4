import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Serve
import ServeCore
import ServeProxy
import ServeWire
import ServiceLifecycle
import UnixSignals

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

/// A head: the cluster port (workers' control streams), the HTTP ingress, the admin API and the
/// Serve controller. `start` binds the ports and restores the config; `run` runs the parts as
/// services of one `ServiceGroup` until the head shuts down. (`ServeEmbedded` adds the head's
/// own worker to that group.)
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
    private let shutdownTimeout: Double
    private let shutdownRequests: ShutdownRequests
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
        let shutdownRequests = ShutdownRequests()

        let cluster = ClusterService.router(controller: controller, token: token, logger: logger)
        let clusterServer = try await ListenError.naming(
            "the cluster port (--port)", host: options.clusterHost, port: options.clusterPort
        ) {
            try await HTTP2Server.bind(host: options.clusterHost, port: options.clusterPort) { request, writer in
                if try await !cluster.handle(request, writer) { try await RPCRouter.unimplemented(request, writer) }
            }
        }
        let clusterHost = options.clusterHost == "0.0.0.0" || options.clusterHost == "::" ? "127.0.0.1" : options.clusterHost
        let nodeAutoscaler = try options.nodeAutoscaling.map { setup in
            let context = NodeProviderContext(clusterAddress: "\(clusterHost):\(clusterServer.port)", token: token, stateDirectory: options.stateDirectory)
            return NodeAutoscaler(config: setup.config, provider: try setup.makeProvider(context), controller: controller, logger: logger)
        }
        let httpServer = try await ListenError.naming(
            "the HTTP ingress (--http-port)", host: options.httpHost, port: options.httpPort
        ) {
            try await HTTPServer.bind(host: options.httpHost, port: options.httpPort) { request, writer in
                try await ingress.handle(request, writer)
            }
        }
        let admin = AdminAPI(
            controller: controller,
            ingress: ingress,
            requiredToken: given ? token : nil,
            clusterToken: token,
            store: store,
            knownHandlers: options.registry.names,
            logger: logger,
            onShutdown: { await shutdownRequests.request() },
            nodeAutoscaler: nodeAutoscaler
        )
        let adminServer = try await ListenError.naming(
            "the admin API (--admin-port)", host: options.adminHost, port: options.adminPort
        ) {
            try await HTTP1Server.bind(host: options.adminHost, port: options.adminPort) { request, writer in
                try await admin.handle(request, writer)
            }
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
            shutdownRequests: shutdownRequests,
            shutdownTimeout: options.shutdownTimeout,
            logger: logger
        )
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
        shutdownRequests: ShutdownRequests,
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
        self.shutdownRequests = shutdownRequests
        self.logger = logger
    }

    /// Runs the head until it shuts down gracefully (a signal in `gracefulShutdownSignals`,
    /// `requestShutdown()`, `POST /api/serve/shutdown`), or until one of its parts fails (then
    /// the others are cancelled and the error is thrown). Once per head.
    ///
    /// Its parts are the services of one `ServiceGroup`, which starts them together and stops
    /// them one at a time in the reverse of this order (`services(hosting:)`):
    ///
    /// 1. the HTTP ingress stops accepting; open connections close after their current request,
    ///    and requests in flight get up to `--shutdown-timeout-s`;
    /// 2. the applications' replicas stop, on every node, each finishing its requests within
    ///    `graceful_shutdown_timeout_s`; the config stays in the state dir;
    /// 3. `node`, the node of this process (the embedded worker): it drains and leaves;
    /// 4. the controller's timers (failure detector, application autoscaler, reconcile tick);
    /// 5. the node autoscaler, which terminates the nodes it launched;
    /// 6. the admin API, then the cluster port (workers' control streams).
    ///
    /// Then the ingress's connections to other nodes close. `onReady` runs once the group runs
    /// (its signals trapped), `onShutdown` when its graceful shutdown begins (`Announcements`).
    public func run(
        hosting node: (any Service)? = nil,
        gracefulShutdownSignals: [UnixSignal] = [],
        onReady: @escaping @Sendable () -> Void = {},
        onShutdown: @escaping @Sendable () -> Void = {}
    ) async throws {
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: self.services(hosting: node) + [Announcements(ready: onReady, stopping: onShutdown)],
                gracefulShutdownSignals: gracefulShutdownSignals,
                logger: self.logger
            )
        )
        await self.shutdownRequests.attach(group)
        do {
            try await group.run()
        } catch {
            self.logger.error("a part of the head failed; the others were stopped", metadata: ["error": "\(error)"])
            await self.ingress.close()
            throw error
        }
        await self.ingress.close()
    }

    /// Shuts the head down gracefully, as SIGTERM does (before `run` too: it then starts and
    /// stops at once).
    public func requestShutdown() async {
        await self.shutdownRequests.request()
    }

    /// The head's parts in the order they start (they stop in reverse: see `run`).
    private func services(hosting node: (any Service)?) -> [any Service] {
        let controller = self.controller
        let ingress = self.ingress
        let logger = self.logger
        let shutdownTimeout = self.shutdownTimeout
        var services: [any Service] = [
            ServerService("cluster port", self.clusterServer, gracePeriod: .seconds(1), logger: logger),
            ServerService("admin API", self.adminServer, gracePeriod: .seconds(1), logger: logger),
        ]
        // Its own pace: a provider call can take seconds.
        if let nodeAutoscaler = self.nodeAutoscaler { services.append(nodeAutoscaler) }
        services += [
            // Retries PENDING replicas, rolls updates forward.
            Ticker("reconcile tick") {
                await controller.reconcileTick()
                return .seconds(1)
            },
            // The application autoscaler: decisions in wall time, so a slow pass does not
            // stretch the delays (Ray issue #62004).
            Ticker("application autoscaler") {
                await controller.autoscale(waitingAtRouter: ingress.waitingRequests())
                return .milliseconds(100)
            },
            // The failure detector, woken for the next ping or deadline: a silent node is
            // declared DEAD within milliseconds of its heartbeat timeout.
            Ticker("failure detector") {
                let wait = await controller.checkLiveness()
                return .milliseconds(Int(min(500, max(5, (wait * 1000).rounded(.up)))))
            },
        ]
        if let node { services.append(node) }
        services.append(Applications(controller: controller, logger: logger))
        let grace = TimeAmount.milliseconds(Int64(shutdownTimeout * 1000))
        services.append(
            ServerService("HTTP ingress", self.httpServer, gracePeriod: grace, logger: logger) {
                logger.info(
                    "no longer accepting HTTP requests; letting those in flight finish",
                    metadata: ["timeout_s": "\(shutdownTimeout)"])
            })
        return services
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
