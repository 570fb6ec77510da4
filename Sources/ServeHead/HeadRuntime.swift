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
    public var stateDirectory: URL
    public var registry: DeploymentRegistry = .builtIn
    /// A worker silent this long is DEAD (`--heartbeat-timeout-s`, default 5 s).
    public var heartbeatTimeout: Double = FailureDetector.Configuration.defaultHeartbeatTimeout
    /// On shutdown (SIGTERM), how long requests in flight at the ingress may take to finish
    /// before the head stops anyway (`--shutdown-timeout-s`, default 30 s).
    public var shutdownTimeout: Double = 30

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
    public let token: String
    /// Whether the token came from the operator (then the admin API's mutating calls need it).
    public let tokenWasGiven: Bool
    public let clusterPort: Int
    public let httpPort: Int
    public let adminPort: Int
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
        let (token, given) = try Self.token(options)
        let ingress = Ingress(token: token, logger: logger)
        let controller = Controller(
            ingress: ingress,
            failureDetection: FailureDetector.Configuration(heartbeatTimeout: options.heartbeatTimeout),
            logger: logger
        )
        let (stopped, stop) = AsyncStream<Void>.makeStream()

        let cluster = ClusterService.router(controller: controller, token: token, logger: logger)
        let clusterServer = try await HTTP2Server.bind(host: options.clusterHost, port: options.clusterPort) { request, writer in
            if try await !cluster.handle(request, writer) { try await RPCRouter.unimplemented(request, writer) }
        }
        let httpServer = try await HTTPServer.bind(host: options.httpHost, port: options.httpPort) { request, writer in
            try await ingress.handle(request, writer)
        }
        let admin = AdminAPI(
            controller: controller,
            ingress: ingress,
            requiredToken: given ? token : nil,
            knownHandlers: options.registry.names,
            logger: logger,
            onShutdown: { stop.yield() }
        )
        let adminServer = try await HTTP1Server.bind(host: options.adminHost, port: options.adminPort) { request, writer in
            try await admin.handle(request, writer)
        }

        let runtime = HeadRuntime(
            controller: controller,
            ingress: ingress,
            token: token,
            tokenWasGiven: given,
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
        token: String,
        tokenWasGiven: Bool,
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
        self.token = token
        self.tokenWasGiven = tokenWasGiven
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
                await controller.autoscale(waitingAtRouter: await ingress.waitingRequests())
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
        self.tasks.withLockedValue { $0 = [tick, autoscaler, liveness] }
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
    /// then the other servers.
    public func shutdown() async {
        await self.stopIngress()
        await self.controller.deploy(ServeConfig(httpOptions: await self.controller.config.httpOptions, applications: []))
        let tasks = self.tasks.withLockedValue { $0 }
        for task in tasks { task.cancel() }
        await self.adminServer.shutdown(gracePeriod: .seconds(1))
        await self.clusterServer.shutdown(gracePeriod: .seconds(1))
        await self.ingress.close()
        self.stop.finish()
    }

    /// The cluster token: the operator's, or the one the head keeps in its state dir (made on
    /// first start, written atomically with mode 0600).
    static func token(_ options: HeadOptions) throws -> (String, given: Bool) {
        if let token = options.token ?? ProcessInfo.processInfo.environment["SERVE_TOKEN"], !token.isEmpty {
            return (token, true)
        }
        let file = options.stateDirectory.appendingPathComponent("token")
        if let saved = try? String(contentsOf: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines), !saved.isEmpty {
            return (saved, false)
        }
        var generator = SystemRandomNumberGenerator()
        let token = (0..<4).map { _ in String(generator.next() as UInt64, radix: 16).leftPadded(16) }.joined()
        try FileManager.default.createDirectory(at: options.stateDirectory, withIntermediateDirectories: true)
        let temporary = file.appendingPathExtension("tmp")
        try Data(token.utf8).write(to: temporary)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: temporary.path)
        // rename(2) is atomic: a crash leaves the old token or the new one, never half of one.
        guard rename(temporary.path, file.path) == 0 else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: file.path])
        }
        return (token, false)
    }
}

extension String {
    fileprivate func leftPadded(_ length: Int) -> String {
        String(repeating: "0", count: max(0, length - self.count)) + self
    }
}
