import Foundation
import HTTPTypes
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Serve
import ServeCore
import ServeProto
import ServeProxy
import ServeWire
import ServiceLifecycle

/// How a worker starts: where the head is, what it offers, how it is reached.
public struct WorkerOptions: Sendable {
    public var headHost: String
    public var headPort: Int
    public var token: String
    /// Stable across reconnects; a fresh one per process unless given.
    public var nodeID: String
    public var resources: ResourceSet
    public var gpuIDs: [String]
    public var labels: [String: String]
    public var nodeType: String
    public var acceleratorType: String
    /// Where the data plane listens (port 0: any free port, advertised at registration).
    public var listenHost: String
    public var port: Int
    /// The address the head should dial; nil: the local address of the connection to the head.
    public var advertiseAddress: String?
    public var heartbeatInterval: Duration
    /// The head pings every heartbeat interval; a control stream silent this long is given up
    /// and dialled again (a partition leaves no closed socket to notice). `--head-timeout-s`.
    public var headTimeout: Duration
    /// How long a draining worker (SIGTERM) waits for the head to move its replicas elsewhere
    /// before it stops them itself (`--drain-timeout-s`, `NodeDrain.defaultTimeout`).
    public var drainTimeout: Duration
    public var registry: DeploymentRegistry
    public var logDirectory: URL
    /// This node's HTTP proxy: its own (started when the head's tables say proxies run on every
    /// node), or one that shares its process (the head's, for the head's embedded worker).
    public var proxy: ProxySetup = .own(host: nil, port: nil)
    /// Where this node's Prometheus metrics are served (`--metrics-port`; nil: nowhere).
    public var metricsPort: Int?

    public enum ProxySetup: Sendable, Hashable {
        /// Its own proxy, on `host`/`port` when given, else the config's `http_options`.
        case own(host: String?, port: Int?)
        /// The proxy of the process it runs in, at this address; this node starts none.
        case shared(address: String)
    }

    public init(
        headHost: String,
        headPort: Int,
        token: String,
        nodeID: String = "n-" + String(UInt32.random(in: 0...UInt32.max), radix: 16),
        resources: ResourceSet,
        gpuIDs: [String] = [],
        labels: [String: String] = [:],
        nodeType: String = "",
        acceleratorType: String = "",
        listenHost: String = "0.0.0.0",
        port: Int = 0,
        advertiseAddress: String? = nil,
        heartbeatInterval: Duration = .seconds(1),
        headTimeout: Duration = .seconds(5),
        drainTimeout: Duration = .seconds(NodeDrain.defaultTimeout),
        registry: DeploymentRegistry = .builtIn,
        logDirectory: URL = FileManager.default.temporaryDirectory.appendingPathComponent("swift-serve-logs")
    ) {
        self.headHost = headHost
        self.headPort = headPort
        self.token = token
        self.nodeID = nodeID
        self.resources = resources
        self.gpuIDs = gpuIDs
        self.labels = labels
        self.nodeType = nodeType
        self.acceleratorType = acceleratorType
        self.listenHost = listenHost
        self.port = port
        self.advertiseAddress = advertiseAddress
        self.heartbeatInterval = heartbeatInterval
        self.headTimeout = headTimeout
        self.drainTimeout = drainTimeout
        self.registry = registry
        self.logDirectory = logDirectory
    }
}

/// The head has been silent past `headTimeout`: the control stream is dialled again.
struct HeadSilent: Error, CustomStringConvertible {
    var description: String
}


/// Why a worker gave up instead of retrying.
public struct WorkerRefused: Error, CustomStringConvertible {
    public var description: String
}

/// A worker node: hosts replicas, serves their data plane over HTTP/2, and keeps one control
/// stream to the head (register, heartbeats with per-replica queue lengths, replica state
/// reports; the head sends start/stop/reconfigure on the same stream). It survives losing the
/// head: it retries with backoff and registers again, keeping its replicas running.
public final class WorkerNode: Service, Sendable {
    public let options: WorkerOptions
    let logger: Logger
    private let replicas = NIOLockedValueBox<[String: Replica]>([:])
    /// State reports waiting for the control stream, kept across reconnects. (Not an
    /// AsyncStream read by each connection in turn: cancelling the task that waits on one ends
    /// the stream for good, so every report after the first reconnect would be lost.)
    private let reports = NIOLockedValueBox(PendingReports())

    struct PendingReports {
        var queue: [PBReplicaStateReport] = []
        /// Wakes the connected control stream's sender; nil while disconnected.
        var wake: AsyncStream<Void>.Continuation?
    }
    private let dataServer: NIOLockedValueBox<HTTP2Server?> = NIOLockedValueBox(nil)
    private let stopping = NIOLockedValueBox(false)
    private let controlConnection = NIOLockedValueBox<HTTP2ClientConnection?>(nil)
    /// Replicas being started (not yet in `replicas`), each with whether a stop came for it
    /// meanwhile (it is then stopped as soon as it is up). A drain waits for them too.
    private let starting = NIOLockedValueBox<[String: Bool]>([:])
    /// Whether the control stream is up and registered.
    private let registered = NIOLockedValueBox(false)
    /// The graceful shutdown on SIGTERM (`ServeCore.NodeDrain`).
    private let drain = NIOLockedValueBox(NodeDrain())
    /// This node's HTTP proxy (`ServeProxy`), serving from the last route table the head sent;
    /// the replicas here are called in process. Handle calls from this node's replicas go
    /// through its routers too.
    public let ingress: Ingress
    /// Where this node's process replicas make their handle calls (bound by `run`).
    private let handleListener = NIOLockedValueBox<HandleListener?>(nil)
    private let proxyState = NIOLockedValueBox(ProxyState())
    /// This node's copy of the head's route table (whole, then kept current from changes).
    private let routeTables = NIOLockedValueBox(RouteTableMirror())
    /// Sends a heartbeat at once, while the control stream is up (a cold start waits for no timer).
    private let sendHeartbeatNow: NIOLockedValueBox<(@Sendable () -> Void)?>
    private let metricsServer = NIOLockedValueBox<HTTP1Server?>(nil)
    /// The address the head dials this node at (the proxy's address is shown with it).
    private let advertisedHost = NIOLockedValueBox("127.0.0.1")

    struct ProxyState {
        var server: HTTPServer?
        var status: PBProxyStatus = .none
        var message = ""
        var address = ""
        /// A bind in progress (tables may arrive meanwhile).
        var binding = false
        /// Where the last bind failed: not tried again for each table, only when it changes.
        var failedAt: String?
    }

    /// `sharedIngress`: the proxy of the process this node runs in (the head's, for its
    /// embedded worker, with `options.proxy` `.shared`); nil: the node makes its own.
    public init(options: WorkerOptions, logger: Logger = Logger(label: "serve.worker"), sharedIngress: Ingress? = nil) {
        self.options = options
        var logger = logger
        logger[metadataKey: "serve.node"] = "\(options.nodeID)"
        self.logger = logger
        let sendNow = NIOLockedValueBox<(@Sendable () -> Void)?>(nil)
        self.sendHeartbeatNow = sendNow
        var proxyLogger = logger
        proxyLogger[metadataKey: "serve.component"] = "proxy"
        self.ingress = sharedIngress ?? Ingress(token: options.token, logger: proxyLogger, onColdDemand: { _ in sendNow.withLockedValue { $0 }?() })
        self.ingress.setLocal(self)
    }

    /// The data plane's port, once `run` has bound it.
    public var dataPort: Int? { self.dataServer.withLockedValue { $0?.port } }

    /// The worker's whole life, as a `Service`: it serves until its `ServiceGroup` shuts down
    /// gracefully (then it drains: `beginDrain`), until it is cancelled (then it leaves at once
    /// and stops its replicas, each within its graceful_shutdown_timeout_s), or until the head
    /// refuses this worker (a wrong token: it throws `WorkerRefused`) or a port cannot be bound.
    public func run() async throws {
        let outcome: Result<Void, any Error>
        do {
            let dataPort = try await self.listen()
            try await withTaskCancellationHandler {
                try await withGracefulShutdownHandler {
                    try await self.controlLoop(dataPort: dataPort)
                } onGracefulShutdown: {
                    self.beginDrain()
                }
            } onCancel: {
                self.leave()
            }
            outcome = .success(())
        } catch is CancellationError {
            outcome = .success(())
        } catch {
            outcome = .failure(error)
        }
        // Not cut short by the cancellation that may have brought us here: each replica still
        // gets its graceful_shutdown_timeout_s, and a child process its SIGTERM before SIGKILL.
        await Task { await self.shutdown() }.value
        try outcome.get()
    }

    /// Binds the data plane, the handle listener and the metrics endpoint; returns the data
    /// plane's port. A port that is taken fails `run` with a `ListenError` naming its flag.
    private func listen() async throws -> Int {
        // Responses to other nodes' proxies are compressed only where it pays (the proxy asks for
        // it only when it is not on loopback; `Compression.betweenNodes`).
        var dataPlane = HTTP2Configuration()
        dataPlane.compression = .betweenNodes
        let (host, port) = (self.options.listenHost, self.options.port)
        let server = try await ListenError.naming("the data plane (--port)", host: host, port: port) {
            try await HTTP2Server.bind(host: host, port: port, configuration: dataPlane) { [self] request, writer in
                try await self.serveData(request, writer)
            }
        }
        self.dataServer.withLockedValue { $0 = server }
        self.logger.info("worker data plane listening", metadata: ["port": "\(server.port)"])
        let handles = try await HandleListener.start(caller: self.ingress, logger: self.logger)
        self.handleListener.withLockedValue { $0 = handles }
        if let metricsPort = self.options.metricsPort {
            let ingress = self.ingress
            let metrics = try await ListenError.naming(
                "the metrics endpoint (--metrics-port)", host: host, port: metricsPort
            ) {
                try await HTTP1Server.bind(host: host, port: metricsPort) { request, writer in
                    guard request.head.path?.prefix(while: { $0 != "?" }) == "/metrics" else {
                        try await writer.respond(HTTPResponse(status: .notFound), body: ByteBuffer(string: "see /metrics\n"))
                        return
                    }
                    try await writer.respond(
                        HTTPResponse(status: .ok, headerFields: [.contentType: "text/plain; version=0.0.4"]),
                        body: ByteBuffer(string: ingress.prometheusLines().joined(separator: "\n") + "\n"))
                }
            }
            self.metricsServer.withLockedValue { $0 = metrics }
            self.logger.info("metrics at /metrics", metadata: ["port": "\(metrics.port)"])
        }
        return server.port
    }

    /// The graceful shutdown (SIGTERM: the group's graceful shutdown reaches `run`): the worker
    /// reports DRAINING, the head starts replacements for its replicas elsewhere and then stops
    /// them here (in-flight requests finish), and once nothing is left (or `drainTimeout` passed,
    /// or the head is unreachable) `run` stops what remains and returns.
    private func beginDrain() {
        let hosted = self.hostedCount
        let connected = self.isRegistered
        let directives = self.drain.withLockedValue {
            $0.begin(now: Self.now, timeout: self.options.drainTimeout.seconds, replicas: hosted, connected: connected)
        }
        // Load balancers see the proxy going (503 on /-/healthz) while it still serves.
        self.ingress.setDraining(true)
        self.proxyState.withLockedValue { if $0.server != nil { $0.status = .draining } }
        guard directives.isEmpty else { return self.act(directives) }
        self.logger.info("draining: the head moves this node's replicas elsewhere, then it exits", metadata: ["replicas": "\(self.hostedCount)"])
        Task {
            while !self.isStopping {
                try? await Task.sleep(for: .milliseconds(100))
                let (hosted, connected) = (self.hostedCount, self.isRegistered)
                let directives = self.drain.withLockedValue {
                    $0.update(replicas: hosted, connected: connected, now: Self.now)
                }
                self.act(directives)
            }
        }
    }

    private func act(_ directives: [NodeDrain.Directive]) {
        for case .exit(let reason) in directives {
            self.logger.info("leaving the cluster: \(reason)")
            Task {
                // What still runs here stops first, each replica finishing its requests, while
                // the head still hears this node (it is told of each stop, and does not declare
                // the node DEAD and cut those requests); then the control stream closes.
                await self.stopReplicas(reason: "the node is leaving: \(reason)")
                self.leave()
            }
        }
    }

    /// Ends the control stream: `run` then stops whatever is left and returns.
    private func leave() {
        self.stopping.withLockedValue { $0 = true }
        if let connection = self.controlConnection.withLockedValue({ $0 }) {
            Task { await connection.closeNow() }
        }
    }

    private var isStopping: Bool { self.stopping.withLockedValue { $0 } }
    private var isRegistered: Bool { self.registered.withLockedValue { $0 } }
    private var hostedCount: Int {
        self.replicas.withLockedValue { $0.count } + self.starting.withLockedValue { $0.count }
    }

    /// Seconds on the process's monotonic clock: the time input of the ServeCore machines.
    static var now: Double { MonotonicTime.now }

    /// Stops every replica (gracefully) and the data plane: the end of `run`.
    private func shutdown() async {
        self.stopping.withLockedValue { $0 = true }
        await self.stopProxy()
        await self.metricsServer.withLockedValue { $0 }?.shutdown(gracePeriod: .seconds(1))
        await self.stopReplicas(reason: "the worker is shutting down")
        await self.handleListener.withLockedValue { $0 }?.shutdown()
        let server = self.dataServer.withLockedValue { $0 }
        await server?.shutdown(gracePeriod: .seconds(2))
    }

    /// Stops every replica here at once, each within its `graceful_shutdown_timeout_s`, and
    /// reports them stopped.
    private func stopReplicas(reason: String) async {
        let replicas = self.replicas.withLockedValue { dict in
            defer { dict.removeAll() }
            return Array(dict.values)
        }
        await withTaskGroup(of: Void.self) { group in
            for replica in replicas {
                group.addTask {
                    await replica.stop(timeout: replica.gracefulShutdownTimeout)
                    self.report(replica.id, .stopped, reason, specVersion: replica.specVersion)
                }
            }
        }
    }

    // MARK: the proxy

    /// Starts this node's proxy when the tables say proxies run on every node (and it has none
    /// yet), stops it when they say otherwise. A port that cannot be bound leaves the proxy
    /// UNHEALTHY with the reason (shown in the nodes JSON), and the node serving replicas.
    private func configureProxy(_ update: PBRouteTableUpdate) async {
        guard case .own(let hostFlag, let portFlag) = self.options.proxy, !self.isStopping else { return }
        let host = hostFlag ?? (update.httpHost.isEmpty ? "0.0.0.0" : update.httpHost)
        let port = portFlag ?? Int(update.httpPort)
        let wanted = update.proxyLocation.location == .everyNode
        enum Step { case none, bind, stop(HTTPServer) }
        let step = self.proxyState.withLockedValue { state -> Step in
            if wanted {
                guard state.server == nil, !state.binding, state.failedAt != "\(host):\(port)" else { return .none }
                state.binding = true
                state.status = .starting
                return .bind
            }
            state.failedAt = nil
            state.status = .none
            state.message = ""
            state.address = ""
            guard let server = state.server else { return .none }
            state.server = nil
            return .stop(server)
        }
        switch step {
        case .none:
            return
        case .stop(let server):
            self.logger.info("stopping this node's proxy: proxy_location is \(update.proxyLocation.location.rawValue)")
            await server.shutdown(gracePeriod: .seconds(5))
        case .bind:
            let ingress = self.ingress
            do {
                let server = try await HTTPServer.bind(host: host, port: port) { request, writer in
                    try await ingress.handle(request, writer)
                }
                let shown = host == "0.0.0.0" || host == "::" ? self.advertisedHost.withLockedValue { $0 } : host
                self.proxyState.withLockedValue {
                    $0.server = server
                    $0.binding = false
                    $0.failedAt = nil
                    $0.status = self.ingress.isDraining ? .draining : .healthy
                    $0.message = ""
                    $0.address = "\(shown):\(server.port)"
                }
                self.logger.info("proxy listening", metadata: ["address": "\(host):\(server.port)"])
                if self.isStopping { await self.stopProxy() }
            } catch {
                let message = "cannot listen on \(host):\(port): \(error)"
                self.proxyState.withLockedValue {
                    $0.binding = false
                    $0.failedAt = "\(host):\(port)"
                    $0.status = .unhealthy
                    $0.message = message
                }
                self.logger.error("the proxy could not start; this node serves its replicas to other proxies only", metadata: ["error": "\(message)"])
            }
        }
    }

    /// Stops the proxy gracefully: no new connections, each open one closes after its current
    /// request.
    private func stopProxy() async {
        let server = self.proxyState.withLockedValue { state -> HTTPServer? in
            defer { state.server = nil }
            if state.server != nil { state.status = .drained }
            return state.server
        }
        await server?.shutdown(gracePeriod: .seconds(5))
    }

    private func proxyReport() -> PBProxyReport {
        var report = PBProxyReport()
        switch self.options.proxy {
        case .shared(let address):
            // That proxy gets its tables in process; the head knows their version itself.
            report.httpAddress = address
            report.status = self.ingress.isDraining ? .draining : .healthy
        case .own:
            if let version = self.ingress.tableVersion {
                report.tableEpoch = version.epoch
                report.tableSequence = version.sequence
            }
            self.proxyState.withLockedValue { state in
                report.httpAddress = state.address
                report.status = state.status
                report.message = state.message
            }
        }
        return report
    }

    // MARK: data plane

    private func serveData(_ request: HTTPServerRequest, _ writer: HTTP2ResponseWriter) async throws {
        guard ConstantTime.equals(request.head.headerFields[ServeHeaders.token], self.options.token) else {
            self.logger.warning(
                "refused a data-plane request with a wrong or missing cluster token",
                metadata: ["peer": "\(request.remoteAddress.map { "\($0)" } ?? "?")"])
            try await writer.respond(.unauthorized, text: "this worker needs the cluster token\n")
            return
        }
        if let path = request.head.path, path.hasPrefix(ReplicaLogs.workerPath) {
            return try await self.serveLogs(path, writer)
        }
        guard let replicaID = request.head.headerFields[ServeHeaders.replica],
            let replica = self.replicas.withLockedValue({ $0[replicaID] })
        else {
            let name = request.head.headerFields[ServeHeaders.replica] ?? "(none)"
            try await Replica.refuse(writer, reason: "unknown", "no replica \(name) on node \(self.options.nodeID)")
            return
        }
        try await replica.serve(request, writer)
    }

    // MARK: control plane

    /// `GET /-/logs/REPLICA?offset=N` from the head (`serve logs`): a process replica's output
    /// from byte `offset` (at most `ReplicaLogs.maxChunk`), with where it starts and where the
    /// next read starts. A file rotated below `offset` is read from its start again.
    private func serveLogs(_ path: String, _ writer: HTTP2ResponseWriter) async throws {
        guard let (replicaID, offset) = ReplicaLogs.parseWorkerPath(path) else {
            return try await writer.respond(HTTPResponse(status: .badRequest), body: ByteBuffer(string: "GET /-/logs/REPLICA?offset=N\n"))
        }
        let replica = self.replicas.withLockedValue { $0[replicaID] }
        guard let replica else {
            return try await writer.respond(
                HTTPResponse(status: .notFound), body: ByteBuffer(string: "no replica \(replicaID) runs on node \(self.options.nodeID)\n"))
        }
        guard let url = replica.logURL else {
            return try await writer.respond(
                HTTPResponse(status: .notFound),
                body: ByteBuffer(
                    string: "\(replicaID) is a Swift replica: its lines are in its worker's own log (serve-worker's output), with serve.replica=\(replicaID)\n"))
        }
        // File I/O on a thread made for blocking work, never on the connection's event loop.
        let chunk = try await NIOThreadPool.singleton.runIfActive { try ReplicaLogs.read(url, from: offset) }
        var fields = HTTPFields()
        fields[.contentType] = "text/plain; charset=utf-8"
        fields[ReplicaLogs.offsetField] = String(chunk.start)
        fields[ReplicaLogs.nextField] = String(chunk.next)
        try await writer.respond(HTTPResponse(status: .ok, headerFields: fields), body: chunk.bytes)
    }

    private func controlLoop(dataPort: Int) async throws {
        var backoff: Duration = .milliseconds(100)
        while !Task.isCancelled && !self.isStopping {
            do {
                try await self.connectOnce(dataPort: dataPort) { backoff = .milliseconds(100) }
                if self.isStopping { return }
                self.logger.warning("the control stream to the head ended; reconnecting")
            } catch let error as RPCError where error.code == .unauthenticated || error.code == .permissionDenied {
                throw WorkerRefused(description: "the head refused this worker: \(error.message)")
            } catch let error as WorkerRefused {
                throw error
            } catch is CancellationError {
                return
            } catch {
                if self.isStopping { return }
                self.logger.warning(
                    "cannot reach the head; retrying",
                    metadata: ["head": "\(self.options.headHost):\(self.options.headPort)", "error": "\(error)", "retry_in": "\(backoff)"]
                )
            }
            if self.isStopping { return }
            try await Task.sleep(for: backoff + .milliseconds(Int.random(in: 0...50)))
            backoff = min(backoff * 2, .seconds(5))
        }
    }

    /// What this node tells the head when it registers: where it serves, what it offers, what
    /// it can run, and the replicas it still runs (a head that restarted adopts them).
    private func registration(dataPort: Int, localAddress: String) -> PBRegisterNode {
        var register = PBRegisterNode()
        register.nodeID = self.options.nodeID
        register.protocolVersion = ControlPaths.protocolVersion
        register.headTimeoutMs = UInt32(min(max(self.options.headTimeout.seconds * 1000, 0), Double(UInt32.max)))
        register.address = self.options.advertiseAddress ?? localAddress
        register.port = UInt32(dataPort)
        register.totalResources = PBResourceSet.with { $0.quantitiesE4 = self.options.resources.quantitiesE4 }
        register.labels = self.options.labels
        register.nodeType = self.options.nodeType
        register.acceleratorType = self.options.acceleratorType
        register.numGpus = UInt32(self.options.gpuIDs.count)
        register.gpuIds = self.options.gpuIDs
        register.workerVersion = ServeVersion.string
        register.handlerNames = self.options.registry.names.sorted()
        for replica in self.replicas.withLockedValue({ Array($0.values) }) {
            let state = replica.status.state
            register.runningReplicas.append(PBRunningReplica.with {
                $0.replicaID = replica.id
                $0.appName = replica.app
                $0.deploymentName = replica.deployment
                $0.specVersion = replica.specVersion
                $0.state = state
                $0.grant = replica.grant
            })
        }
        return register
    }

    /// One control stream: dial, register, then heartbeats, state reports and the head's
    /// silence watched beside the head's messages, until the stream or the connection ends.
    private func connectOnce(dataPort: Int, onRegistered: () -> Void) async throws {
        let connection = try await HTTP2ClientConnection.connect(host: self.options.headHost, port: self.options.headPort)
        self.controlConnection.withLockedValue { $0 = connection }
        defer { Task { await connection.closeNow() } }
        if self.isStopping { return }
        let (call, send) = try await self.openControlStream(on: connection)
        var responses = try await call.responses().makeAsyncIterator()
        let answer = try await self.register(dataPort: dataPort, on: connection, send: send, answers: &responses)
        onRegistered()
        self.registered.withLockedValue { $0 = true }
        defer { self.registered.withLockedValue { $0 = false } }
        self.logger.info("registered with the head", metadata: ["head": "\(self.options.headHost):\(self.options.headPort)"])
        let interval = answer.heartbeatIntervalMs > 0 ? Duration.milliseconds(Int(answer.heartbeatIntervalMs)) : self.options.heartbeatInterval
        let lastHeard = NIOLockedValueBox(ContinuousClock.now)

        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await self.watchForSilence(of: connection, lastHeard: lastHeard) }
            let kick = self.sendHeartbeats(in: &group, every: interval, send: send)
            self.sendHeartbeatNow.withLockedValue { $0 = kick }
            defer { self.sendHeartbeatNow.withLockedValue { $0 = nil } }
            let wake = self.sendStateReports(in: &group, send: send)
            self.reports.withLockedValue { $0.wake = wake }
            wake.yield()  // what piled up while disconnected
            defer { self.reports.withLockedValue { $0.wake = nil } }
            // The head closing the stream (or the connection failing) ends this try.
            defer { group.cancelAll() }
            while let message = try await responses.next() {
                lastHeard.withLockedValue { $0 = .now }
                try await self.handle(message, send: send)
            }
        }
    }

    /// The control call on `connection`, and how to send on it (each message numbered).
    private func openControlStream(
        on connection: HTTP2ClientConnection
    ) async throws -> (RPCBidirectionalCall<PBWorkerMessage, PBHeadMessage>, @Sendable (PBWorkerMessage) async throws -> Void) {
        let client = RPCClient(connection: connection, metadata: [.authorization: "Bearer \(self.options.token)"])
        let call = try await client.bidirectional(
            ControlPaths.connect, requestType: PBWorkerMessage.self, responseType: PBHeadMessage.self)
        let sequence = NIOLockedValueBox<UInt64>(0)
        let send: @Sendable (PBWorkerMessage) async throws -> Void = { message in
            var message = message
            message.sequence = sequence.withLockedValue { $0 += 1; return $0 }
            try await call.send(message)
        }
        return (call, send)
    }

    /// Sends the registration and reads the head's answer; a refusal throws `WorkerRefused`.
    private func register(
        dataPort: Int, on connection: HTTP2ClientConnection, send: @Sendable (PBWorkerMessage) async throws -> Void,
        answers: inout RPCInbound<PBHeadMessage>.AsyncIterator
    ) async throws -> PBRegisterAnswer {
        let register = self.registration(dataPort: dataPort, localAddress: connection.localAddress?.ipAddress ?? "127.0.0.1")
        self.advertisedHost.withLockedValue { $0 = register.address }
        try await send(PBWorkerMessage.with { $0.register = register })
        guard let first = try await answers.next(), case .registerAnswer(let answer)? = first.kind else {
            throw RPCError(.internal, "the head did not answer the registration")
        }
        guard answer.accepted else {
            throw WorkerRefused(description: "the head refused registration: \(answer.refusalReason)")
        }
        return answer
    }

    /// The head pings every heartbeat interval: silence means the link or the head is gone
    /// without a closed socket to show it (a partition). Throws `HeadSilent` (dial again).
    private func watchForSilence(of connection: HTTP2ClientConnection, lastHeard: NIOLockedValueBox<ContinuousClock.Instant>) async throws {
        let headTimeout = self.options.headTimeout
        while true {
            try await Task.sleep(for: .milliseconds(100))
            let silent = ContinuousClock.now - lastHeard.withLockedValue { $0 }
            if silent > headTimeout {
                self.logger.warning("the head has been silent; dialling it again", metadata: ["silent": "\(silent)"])
                // Closing ends the read of the head's messages (a read cannot be cancelled).
                await connection.closeNow()
                throw HeadSilent(description: "nothing from the head for \(silent) (--head-timeout-s \(headTimeout))")
            }
        }
    }

    /// Heartbeats: one every interval, and one at once for news the head should not wait for (a
    /// request waiting for a deployment with no replica, a replica holding other multiplexed
    /// models), at most one every 20 ms (a kick sooner is folded into the next). One task sends
    /// them all, so each carries the changes since the last. Returns the kick.
    private func sendHeartbeats(
        in group: inout ThrowingTaskGroup<Void, any Error>, every interval: Duration, send: @escaping @Sendable (PBWorkerMessage) async throws -> Void
    ) -> @Sendable () -> Void {
        let (kicks, kick) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        group.addTask {
            while true {
                try await Task.sleep(for: interval)
                kick.yield()
            }
        }
        group.addTask {
            var told = HeartbeatMemory()
            var number: UInt64 = 0
            kick.yield()
            for await _ in kicks {
                number += 1
                let heartbeat = await self.heartbeat(number, since: &told)
                try await send(PBWorkerMessage.with { $0.heartbeat = heartbeat })
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        return { kick.yield() }
    }

    /// Sends the state reports, in order, each time it is woken (the returned continuation); a
    /// report that cannot be sent waits, with those after it, for the next stream.
    private func sendStateReports(
        in group: inout ThrowingTaskGroup<Void, any Error>, send: @escaping @Sendable (PBWorkerMessage) async throws -> Void
    ) -> AsyncStream<Void>.Continuation {
        let (wakes, wake) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        group.addTask {
            for await _ in wakes {
                let batch = self.reports.withLockedValue { pending in
                    defer { pending.queue.removeAll() }
                    return pending.queue
                }
                for (index, report) in batch.enumerated() {
                    do {
                        try await send(PBWorkerMessage.with { $0.replicaState = report })
                    } catch {
                        // Sent again on the next connection (the head ignores repeats).
                        self.reports.withLockedValue { $0.queue.insert(contentsOf: batch[index...], at: 0) }
                        throw error
                    }
                }
            }
        }
        return wake
    }

    /// What the head has been told on the current control stream, so a heartbeat carries only
    /// what changed.
    struct HeartbeatMemory {
        var replicas: [String: PBReplicaLoad] = [:]
        var proxy: PBProxyReport?
    }

    /// The next heartbeat: health and waiting requests always; each replica whose load, state or
    /// models changed, and the proxy when it changed, since `told` (all of them in the first).
    private func heartbeat(_ number: UInt64, since told: inout HeartbeatMemory) async -> PBHeartbeat {
        var heartbeat = PBHeartbeat()
        heartbeat.nodeID = self.options.nodeID
        heartbeat.sequence = number
        heartbeat.sentAtUnixMs = Int64(Date().timeIntervalSince1970 * 1000)
        let draining = self.isStopping || self.drain.withLockedValue { $0.isDraining || $0.isDone }
        heartbeat.health = PBNodeHealth.with { $0.status = draining ? .draining : .ok }
        let proxy = self.proxyReport()
        if proxy != told.proxy {
            heartbeat.proxy = proxy
            told.proxy = proxy
        }
        // A shared proxy's waiting requests are its own process's (the head counts them itself).
        let waiting: [DeploymentID: Int]
        if case .own = self.options.proxy { waiting = self.ingress.waitingRequests() } else { waiting = [:] }
        heartbeat.waiting = waiting.map { id, count in
            PBRouterDemand.with {
                $0.app = id.app
                $0.deployment = id.name
                $0.waiting = UInt32(clamping: count)
            }
        }
        var live: [String: PBReplicaLoad] = [:]
        for replica in self.replicas.withLockedValue({ Array($0.values) }) {
            let status = replica.status
            let load = PBReplicaLoad.with {
                $0.replicaID = replica.id
                $0.runningRequests = UInt32(status.running)
                $0.state = status.state
                $0.modelIds = replica.models.ids
            }
            live[replica.id] = load
            if told.replicas[replica.id] != load { heartbeat.replicas.append(load) }
        }
        told.replicas = live
        return heartbeat
    }

    private func handle(_ message: PBHeadMessage, send: @escaping @Sendable (PBWorkerMessage) async throws -> Void) async throws {
        switch message.kind {
        case .startReplica(let start):
            // Starting can take long (a process replica waits for its port): do it aside.
            Task { await self.startReplica(start) }
        case .stopReplica(let stop):
            Task { await self.stopReplica(stop) }
        case .reconfigureReplica(let change):
            guard let replica = self.replicas.withLockedValue({ $0[change.replicaID] }) else { return }
            // User code never runs on this loop: a reconfigure() that takes long would stall
            // every command and ping behind it, and past --head-timeout-s the whole node would
            // be given up. It runs aside, in order with the replica's other changes, and one
            // that fails or outlasts its timeout fails its replica alone.
            replica.enqueueChange { [self] in
                if change.hasMaxOngoingRequests { replica.setMaxOngoing(Int(change.maxOngoingRequests)) }
                guard change.hasUserConfigJson else { return }
                let config = try? JSONValue.parse(String(decoding: change.userConfigJson, as: UTF8.self))
                let timeout = replica.healthCheckTimeout
                if let error = await Self.outcome(
                    of: { try await replica.reconfigure(userConfig: config) }, timeout: timeout, what: "reconfigure()")
                {
                    await self.fail(replica, because: "reconfigure failed: \(error)")
                }
            }
        case .ping:
            // It has reset the head's silence (`HeadSilent`); the heartbeats show the head this
            // node alive.
            break
        case .routes(let update):
            // A node whose process already has a proxy (the head's embedded worker) needs none.
            guard case .own = self.options.proxy else { break }
            // A change from a table this node does not hold ends the stream (`MissingBase`): it
            // registers again and is sent the whole table.
            let applied = try self.routeTables.withLockedValue { mirror -> (RouteTable, TableVersion)? in
                guard try mirror.apply(update), let version = mirror.version else { return nil }
                return (mirror.table, version)
            }
            if let (table, version) = applied { self.ingress.update(table, version: version) }
            Task { await self.configureProxy(update) }
        case .registerAnswer, .none:
            break
        }
    }

    private func report(_ replicaID: String, _ state: PBReplicaState, _ message: String, specVersion: String) {
        let report = PBReplicaStateReport.with {
            $0.replicaID = replicaID
            $0.state = state
            $0.message = message
            $0.specVersion = specVersion
            $0.atUnixMs = Int64(Date().timeIntervalSince1970 * 1000)
        }
        self.reports.withLockedValue { pending in
            pending.queue.append(report)
            if pending.queue.count > Self.pendingReportLimit { pending.queue = pending.queue.latestPerKey(\.replicaID) }
            pending.wake?.yield()
        }
    }

    /// State reports kept while the head is away, before they are folded to the latest per
    /// replica (only a replica's last state matters to a head that hears it late).
    static let pendingReportLimit = 1024

    /// The replica's environment: what its grant implies, then runtime_env.env_vars.
    private func environment(for start: PBStartReplica) -> [String: String] {
        var environment: [String: String] = [:]
        environment["OMP_NUM_THREADS"] = String(max(1, start.grant.ompNumThreads))
        environment["CUDA_VISIBLE_DEVICES"] = start.grant.gpuIds.joined(separator: ",")
        environment["SERVE_REPLICA_ID"] = start.replicaID
        environment["SERVE_DEPLOYMENT"] = start.deploymentName
        environment["SERVE_APP"] = start.appName
        for (name, value) in start.spec.env { environment[name] = value }
        return environment
    }

    /// Starts a replica: its Swift deployment or child process, then RUNNING (or FAILED with
    /// why). A stop that came while it started stops it at once.
    private func startReplica(_ start: PBStartReplica) async {
        let id = start.replicaID
        let fresh = self.starting.withLockedValue { starting in
            guard starting[id] == nil else { return false }
            starting[id] = false
            return true
        }
        guard fresh, self.replicas.withLockedValue({ $0[id] }) == nil else { return }
        defer { self.starting.withLockedValue { _ = $0.removeValue(forKey: id) } }
        self.report(id, .starting, "", specVersion: start.spec.version)
        var logger = self.logger
        logger[metadataKey: "serve.replica"] = "\(id)"
        let userConfig = start.spec.userConfigJson.isEmpty
            ? nil : try? JSONValue.parse(String(decoding: start.spec.userConfigJson, as: UTF8.self))
        let kick = self.sendHeartbeatNow
        let models = ReplicaModels(capacity: Multiplexing.maxModels(userConfig: userConfig)) { kick.withLockedValue { $0 }?() }
        do {
            let body = try await self.makeBody(for: start, userConfig: userConfig, models: models, logger: logger)
            let replica = Replica(start: start, body: body, models: models, logger: logger)
            replica.setState(.running)
            // In `replicas` before it leaves `starting`, so a stop always finds it in one.
            self.replicas.withLockedValue { $0[id] = replica }
            if self.starting.withLockedValue({ $0.removeValue(forKey: id) }) == true {
                self.replicas.withLockedValue { _ = $0.removeValue(forKey: id) }
                await replica.stop(timeout: replica.gracefulShutdownTimeout)
                logger.info("replica stopped: a stop came while it started")
                self.report(id, .stopped, "stopped while it started", specVersion: start.spec.version)
                return
            }
            self.report(id, .running, "", specVersion: start.spec.version)
            logger.info("replica running")
            self.monitorHealth(replica, spec: start.spec)
        } catch {
            logger.error("replica failed to start", metadata: ["error": "\(error)"])
            self.report(id, .failed, "failed to start: \(error)", specVersion: start.spec.version)
        }
    }

    /// What the replica runs: a Swift deployment made by the registry, in this process, or a
    /// child process launched and waited for (its exit reports the replica FAILED).
    private func makeBody(
        for start: PBStartReplica, userConfig: JSONValue?, models: ReplicaModels, logger: Logger
    ) async throws -> Replica.ReplicaBody {
        let id = start.replicaID
        let environment = self.environment(for: start)
        switch start.spec.entrypoint {
        case .handlerName(let name):
            let context = ReplicaContext(
                replicaID: id,
                app: start.appName,
                deployment: start.deploymentName,
                nodeID: self.options.nodeID,
                grant: ResourceSet(quantitiesE4: start.grant.resources.quantitiesE4),
                gpuIDs: start.grant.gpuIds,
                environment: environment,
                userConfig: userConfig,
                caller: self.ingress,
                models: models
            )
            return .swift(SwiftDeploymentBox(instance: try await self.options.registry.make(name, context: context)))
        case .command(let command):
            var processEnvironment = ProcessInfo.processInfo.environment
            processEnvironment["SERVE_TOKEN"] = nil
            if let handles = self.handleListener.withLockedValue({ $0 }) {
                processEnvironment["SERVE_HANDLE_URL"] = handles.url
                processEnvironment["SERVE_HANDLE_TOKEN"] = handles.token
            }
            for (name, value) in environment { processEnvironment[name] = value }
            let process = try await ProcessReplica.launch(
                replicaID: id,
                argv: command.argv,
                environment: processEnvironment,
                workingDirectory: start.spec.workingDir,
                healthPath: start.spec.healthPath,
                logDirectory: self.options.logDirectory,
                readyTimeout: .milliseconds(Int(max(start.spec.healthCheckTimeoutMs, 30_000))),
                logger: logger
            ) { [self] status, tail in
                self.logger.warning("a replica process exited", metadata: ["serve.replica": "\(id)", "status": "\(status)"])
                self.replicas.withLockedValue { $0[id] = nil }
                self.report(id, .failed, "the process exited with status \(status); its output ends with:\n\(tail)", specVersion: start.spec.version)
            }
            return .process(process)
        case .none:
            throw DeploymentError("the replica spec names neither a handler nor a command")
        }
    }

    /// Drives the replica's `HealthMonitor` (ServeCore) every `health_check_period_s` while it
    /// runs: three failed checks in a row and it is reported FAILED (the head replaces it) and
    /// stopped.
    private func monitorHealth(_ replica: Replica, spec: PBReplicaSpec) {
        let configuration = HealthMonitor.Configuration(
            period: spec.healthCheckPeriodMs > 0 ? Double(spec.healthCheckPeriodMs) / 1000 : 10,
            timeout: spec.healthCheckTimeoutMs > 0 ? Double(spec.healthCheckTimeoutMs) / 1000 : 30
        )
        Task {
            var monitor = HealthMonitor(configuration: configuration, now: Self.now)
            while let wake = monitor.nextWake {
                try? await Task.sleep(for: .milliseconds(max(1, Int((wake - Self.now) * 1000))))
                // Stopped, replaced or crashed meanwhile: nothing more to watch.
                guard self.replicas.withLockedValue({ $0[replica.id] }) === replica, replica.status.state == .running else { return }
                var directives = monitor.tick(now: Self.now)
                while !directives.isEmpty {
                    switch directives.removeFirst() {
                    case .runCheck(let number):
                        let error = await Self.outcome(of: { try await replica.checkHealth() }, timeout: .milliseconds(Int(configuration.timeout * 1000)))
                        if let error {
                            self.logger.warning("a health check failed", metadata: ["serve.replica": "\(replica.id)", "error": "\(error)"])
                            directives += monitor.failed(number: number, error, now: Self.now)
                        } else {
                            directives += monitor.succeeded(number: number, now: Self.now)
                        }
                    case .unhealthy(let reason):
                        await self.fail(replica, because: "unhealthy: \(reason)")
                        return
                    }
                }
            }
        }
    }

    /// Reports a replica FAILED (the head replaces it) and stops it, unless it already left.
    private func fail(_ replica: Replica, because reason: String) async {
        guard self.replicas.withLockedValue({ map in
            guard map[replica.id] === replica else { return false }
            map[replica.id] = nil
            return true
        }) else { return }
        self.logger.error("replica failed; stopping it", metadata: ["serve.replica": "\(replica.id)", "reason": "\(reason)"])
        self.report(replica.id, .failed, reason, specVersion: replica.specVersion)
        await replica.stop(timeout: replica.gracefulShutdownTimeout)
    }

    /// Runs a health check (or other user code: `what`), giving up on it after `timeout` (a hung
    /// call may go on running; its late answer is dropped). Nil when it succeeded, else why not.
    static func outcome(
        of check: @escaping @Sendable () async throws -> Void, timeout: Duration, what: String = "the health check"
    ) async -> String? {
        do {
            try await withDeadline(abandoningAfter: timeout, check)
            return nil
        } catch is DeadlineExceeded {
            return "\(what) did not answer within \(timeout)"
        } catch {
            return "\(error)"
        }
    }

    private func stopReplica(_ stop: PBStopReplica) async {
        guard let replica = self.replicas.withLockedValue({ $0[stop.replicaID] }) else {
            let starting = self.starting.withLockedValue { starting in
                guard starting[stop.replicaID] != nil else { return false }
                starting[stop.replicaID] = true
                return true
            }
            // One still starting is stopped (and reported) as soon as it is up.
            if !starting { self.report(stop.replicaID, .stopped, "not running on this node", specVersion: "") }
            return
        }
        self.report(replica.id, .stopping, stop.reason, specVersion: replica.specVersion)
        let timeout = Duration.milliseconds(Int(stop.gracefulTimeoutMs > 0 ? stop.gracefulTimeoutMs : 20_000))
        await replica.stop(timeout: timeout)
        self.replicas.withLockedValue { $0[stop.replicaID] = nil }
        self.logger.info("replica stopped", metadata: ["serve.replica": "\(replica.id)", "reason": "\(stop.reason)"])
        self.report(replica.id, .stopped, stop.reason, specVersion: replica.specVersion)
    }
}

/// This node's replicas, as its proxy (and the head's, for the embedded worker) calls them: in
/// process, with no socket.
extension WorkerNode: LocalReplicas {
    public var nodeID: String { self.options.nodeID }

    public func serve(replica replicaID: String, _ request: HTTPServerRequest, _ writer: any HTTPResponseWriter) async throws -> LocalAnswer {
        guard let replica = self.replicas.withLockedValue({ $0[replicaID] }) else {
            return .refused("no replica \(replicaID) on node \(self.options.nodeID)")
        }
        return try await replica.serveLocal(request, writer)
    }
}
