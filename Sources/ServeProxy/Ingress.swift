import HTTPTypes
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServeCore
import ServeWire

/// The HTTP ingress: matches a request's path to an application by longest route prefix, picks
/// a replica of its ingress deployment, and forwards the request as one HTTP/2 stream to the
/// worker hosting it, streaming bodies both ways.
///
/// Answers: 404 no route; 503 over `max_queued_requests` or no replica; 502 when the replica or
/// its node fails mid-request; 504 past `request_timeout_s`; 413 past `max_body_bytes`.
///
/// Failures (README "Failure behaviour"): a request no replica has accepted yet (refused, or
/// its node unreachable) goes to another replica, up to `maxUnreachable` unreachable ones; a
/// GET or HEAD without a body whose replica fails before answering is sent once more to
/// another replica; anything else whose replica or node dies mid-request is answered 502 with
/// the reason, as soon as the connection fails or the node is declared DEAD (`nodeFailed`).
public final class Ingress: Sendable {
    private let token: String
    private let logger: Logger
    private let table = NIOLockedValueBox(RouteTable())
    private let routers = NIOLockedValueBox<[DeploymentID: DeploymentRouter]>([:])
    /// The newest route-table update applied (`update`'s `sequence`).
    private let applied = NIOLockedValueBox<UInt64>(0)
    private let connections: NodeConnections
    public let metrics = IngressMetrics()

    public init(token: String, logger: Logger = Logger(label: "serve.ingress")) {
        self.token = token
        self.logger = logger
        self.connections = NodeConnections(logger: logger)
    }

    /// Installs a new routing table (called by the controller on every change).
    ///
    /// `sequence` numbers the controller's updates in the order it made them: the controller is
    /// an actor that may publish again while an earlier update is still on its way here, so an
    /// update older than one applied already is ignored (whole, and by each router): a stale
    /// table must never bring back a dead replica or hide a live one.
    public func update(_ table: RouteTable, sequence: UInt64) async {
        // The check and the swap are one step under the routers' lock (the table's and the
        // sequence's locks are only ever taken inside it here), so two updates cannot cross.
        let plan: (changed: [(DeploymentRouter, DeploymentRoute)], removed: [DeploymentRouter])? = self.routers.withLockedValue { routers in
            let fresh = self.applied.withLockedValue { applied in
                guard sequence > applied else { return false }
                applied = sequence
                return true
            }
            guard fresh else { return nil }
            var changed: [(DeploymentRouter, DeploymentRoute)] = []
            var seen = Set<DeploymentID>()
            for app in table.applications {
                let route = app.ingress
                seen.insert(route.id)
                if let router = routers[route.id] {
                    changed.append((router, route))
                } else {
                    routers[route.id] = DeploymentRouter(route: route, sequence: sequence)
                }
            }
            let removedIDs = routers.keys.filter { !seen.contains($0) }
            let removed = removedIDs.compactMap { routers.removeValue(forKey: $0) }
            self.table.withLockedValue { $0 = table }
            return (changed, removed)
        }
        guard let plan else { return }
        for (router, route) in plan.changed { await router.update(route, sequence: sequence) }
        for router in plan.removed { await router.close() }
    }

    /// Requests waiting at the router, per deployment (the autoscaler counts them as demand).
    public func waitingRequests() async -> [DeploymentID: Int] {
        let routers = self.routers.withLockedValue { $0 }
        var result: [DeploymentID: Int] = [:]
        for (id, router) in routers { result[id] = await router.waiting }
        return result
    }

    public func close() async {
        await self.connections.closeAll()
    }

    /// The controller declared the node at `host:port` DEAD: its connection is closed at once,
    /// so requests in flight there fail now (502 with `reason`) rather than when TCP gives up.
    public func nodeFailed(host: String, port: Int, reason: String) {
        self.connections.fail(host: host, port: port, reason: reason)
    }

    /// Replicas found unreachable (connection refused or reset before the request was sent)
    /// that one request tries before it is answered 503.
    static let maxUnreachable = 3

    /// Request bodies up to this size (by Content-Length) are read whole before a replica is
    /// chosen, so that a refused or unreachable attempt can be repeated elsewhere.
    static let keptBodyBytes = 64 << 10

    // MARK: serving

    public func handle(_ request: HTTPServerRequest, _ writer: any HTTPResponseWriter) async throws {
        let path = request.head.path ?? "/"
        if path == "/-/healthz" { return try await self.text(writer, .ok, "success") }
        let table = self.table.withLockedValue { $0 }
        if path == "/-/routes" {
            var routes: [String: JSONValue] = [:]
            for app in table.applications { routes[app.routePrefix] = .string(app.name) }
            return try await writer.respond(
                HTTPResponse(status: .ok, headerFields: [.contentType: "application/json"]),
                body: ByteBuffer(string: JSONValue.object(routes).jsonString())
            )
        }
        guard let app = table.match(path) else {
            return try await self.text(writer, .notFound, "no application serves \(path); see /-/routes")
        }
        if let length = request.head.headerFields[.contentLength].flatMap(Int.init), length > table.maxBodyBytes {
            return try await self.text(writer, .contentTooLarge, "the body is over the \(table.maxBodyBytes)-byte limit")
        }
        guard let router = self.routers.withLockedValue({ $0[app.ingress.id] }) else {
            return try await self.text(writer, .serviceUnavailable, "\(app.name) is not ready")
        }
        let started = ContinuousClock.now
        let progress = ForwardProgress()
        let outcome = await self.forward(request, app: app, router: router, table: table, writer: writer, progress: progress)
        self.metrics.record(deployment: app.ingress.id, status: outcome, seconds: (ContinuousClock.now - started).seconds)
        if let cut = progress.cut { throw cut }
    }

    /// Forwards and answers; returns the status sent (for metrics).
    private func forward(
        _ request: HTTPServerRequest,
        app: ApplicationRoute,
        router: DeploymentRouter,
        table: RouteTable,
        writer: any HTTPResponseWriter,
        progress: ForwardProgress
    ) async -> Int {
        do {
            return try await Self.withTimeout(table.requestTimeout) {
                try await withTaskCancellationHandler {
                    try await self.forwardOnce(request, app: app, router: router, table: table, writer: writer, progress: progress)
                } onCancel: {
                    // The deadline passed: end the stream to the replica, so nothing waits on it.
                    progress.cancelStream()
                }
            }
        } catch let failure as IngressFailure where !progress.headSent {
            try? await self.text(writer, failure.status, failure.message)
            return failure.status.code
        } catch {
            self.logger.debug("request failed after its response began", metadata: ["error": "\(error)"])
            // The head went out: only a cut (connection closed short, RST_STREAM) says the body
            // is incomplete, so the server is told to make one rather than end it cleanly.
            progress.cutResponse(error)
            return 502
        }
    }

    /// What a forwarded request has got to: the stream to cancel, and whether the response head
    /// has gone to the client (after that, no error status can be sent).
    final class ForwardProgress: Sendable {
        private struct State {
            var stream: HTTP2ClientStream?
            var headSent = false
            var cancelled = false
            var cut: (any Error)?
        }
        private let state = NIOLockedValueBox(State())

        var headSent: Bool { self.state.withLockedValue { $0.headSent } }

        /// The response failed after its head went out (the handler throws it, so the server cuts).
        var cut: (any Error)? { self.state.withLockedValue { $0.cut } }
        func cutResponse(_ error: any Error) { self.state.withLockedValue { $0.cut = error } }

        func markHeadSent() { self.state.withLockedValue { $0.headSent = true } }

        /// Records the stream; false if the request was cancelled already.
        func attach(_ stream: HTTP2ClientStream) -> Bool {
            let cancelled = self.state.withLockedValue { state -> Bool in
                state.stream = stream
                return state.cancelled
            }
            if cancelled { stream.cancel(error: .timeout) }
            return !cancelled
        }

        func cancelStream() {
            let stream = self.state.withLockedValue { state -> HTTP2ClientStream? in
                state.cancelled = true
                return state.stream
            }
            stream?.cancel(error: .timeout)
        }
    }

    /// Errors answered with a status, when no response has started yet.
    struct IngressFailure: Error {
        var status: HTTPResponse.Status
        var message: String
    }

    private func forwardOnce(
        _ request: HTTPServerRequest,
        app: ApplicationRoute,
        router: DeploymentRouter,
        table: RouteTable,
        writer: any HTTPResponseWriter,
        progress: ForwardProgress
    ) async throws -> Int {
        var head = request.head
        head.path = RouteTable.strip(prefix: app.routePrefix, from: request.head.path ?? "/")
        head.headerFields[ServeHeaders.forwardedPrefix] = app.routePrefix
        head.headerFields[ServeHeaders.token] = self.token
        head.headerFields[.connection] = nil
        head.headerFields[.transferEncoding] = nil
        head.addForwardedFields(client: request.remoteAddress)
        let hasBody = request.hasBody

        // A small body is read first and kept, so that the request can go to another replica
        // if the first refuses it or cannot be reached (a streamed body is consumed by the
        // first attempt). A route marked idempotent keeps bodies up to 1 MiB, for its retry.
        let keepLimit = app.idempotent ? ApplicationConfig.maxRetryBodyBytes : Self.keptBodyBytes
        var buffered: ByteBuffer?
        if hasBody, let length = request.head.headerFields[.contentLength].flatMap(Int.init), length <= keepLimit {
            do {
                buffered = try await request.body.collect(upTo: ApplicationConfig.maxRetryBodyBytes)
            } catch {
                throw IngressFailure(status: .badRequest, message: "the request body could not be read: \(error)")
            }
        }

        // A replica that refuses (full, stopping, gone) or cannot be reached never saw the
        // request: try another, as long as the body was kept or has not started streaming. A
        // GET or HEAD without a body, or any request to a route marked idempotent whose body
        // was kept, may also be sent again once if its replica fails before answering
        // (RFC 9110 §9.2.2).
        let idempotent = hasBody
            ? app.idempotent && buffered != nil
            : (request.head.method == .get || request.head.method == .head || app.idempotent)
        var refusedBy: Set<String> = []
        var unreachable = 0
        var retriedAfterFailure = false
        while true {
            let replica: ReplicaRoute
            do {
                replica = try await router.acquire(excluding: refusedBy)
            } catch DeploymentRouter.RouterError.queueFull(let limit) {
                throw IngressFailure(status: .serviceUnavailable, message: "\(app.ingress.id) has \(limit) requests queued already (max_queued_requests); retry later")
            } catch DeploymentRouter.RouterError.gone {
                throw IngressFailure(status: .serviceUnavailable, message: "\(app.name) was removed")
            } catch DeploymentRouter.RouterError.unavailable(let reason) {
                throw IngressFailure(status: .serviceUnavailable, message: "\(app.ingress.id) has no replica to take the request: \(reason)")
            }
            head.headerFields[ServeHeaders.replica] = replica.id
            let outcome: Attempt
            do {
                outcome = try await self.attempt(
                    head, request: request, hasBody: hasBody, buffered: buffered, replica: replica, table: table, writer: writer, progress: progress)
            } catch {
                await router.release(replica.id)
                throw error
            }
            await router.release(replica.id)
            switch outcome {
            case .answered(let status):
                return status
            case .refused(let refusal, let bodyStarted):
                refusedBy.insert(replica.id)
                if bodyStarted {
                    // Part of the body may have gone to the refusing replica: it cannot be sent
                    // again. (Bodies up to `keptBodyBytes` are kept and never get here.)
                    throw IngressFailure(
                        status: .serviceUnavailable,
                        message: "replica \(replica.id) refused the request (\(refusal)) while its body streamed; send it again")
                }
                self.metrics.recordRetry(deployment: app.ingress.id, .refused)
            case .unreachable(let error):
                // Never reached the replica: its node is gone or going. Try another.
                self.connections.forget(host: replica.host, port: replica.port)
                refusedBy.insert(replica.id)
                unreachable += 1
                self.metrics.recordRetry(deployment: app.ingress.id, .unreachable)
                let reason = "replica \(replica.id) on node \(replica.nodeID) is unreachable: \(error)\(self.connections.reason(host: replica.host, port: replica.port))"
                self.logger.info("retrying a request on another replica", metadata: ["serve.replica": "\(replica.id)", "error": "\(error)"])
                guard unreachable < Self.maxUnreachable else {
                    throw IngressFailure(status: .serviceUnavailable, message: "no replica of \(app.ingress.id) could be reached (\(unreachable) tried); last: \(reason)")
                }
            case .failed(let error):
                let reason = "replica \(replica.id) on node \(replica.nodeID) failed before answering: \(error)\(self.connections.reason(host: replica.host, port: replica.port))"
                guard idempotent && !retriedAfterFailure else { throw IngressFailure(status: .badGateway, message: reason) }
                retriedAfterFailure = true
                refusedBy.insert(replica.id)
                self.metrics.recordRetry(deployment: app.ingress.id, .failed)
                self.logger.info("retrying an idempotent request on another replica", metadata: ["serve.replica": "\(replica.id)", "error": "\(error)"])
            }
        }
    }

    /// How one try on one replica ended, when it did not throw an answer for the client.
    private enum Attempt {
        /// The response went to the client, with this status.
        case answered(Int)
        /// The replica refused the request (it never reached user code).
        case refused(String, bodyStarted: Bool)
        /// The replica could not be reached; nothing of the request was sent.
        case unreachable(HTTP2Error)
        /// The replica or its node failed before answering.
        case failed(any Error)
    }

    /// One try on one replica.
    private func attempt(
        _ head: HTTPRequest,
        request: HTTPServerRequest,
        hasBody: Bool,
        buffered: ByteBuffer?,
        replica: ReplicaRoute,
        table: RouteTable,
        writer: any HTTPResponseWriter,
        progress: ForwardProgress
    ) async throws -> Attempt {
        let stream: HTTP2ClientStream
        let response: HTTP2Response
        var bodyStarted = false
        do {
            let connection = try await self.connections.connection(host: replica.host, port: replica.port)
            if let buffered {
                stream = try await connection.openStream(head, body: buffered)
            } else {
                stream = try await connection.openStream(head, endStream: !hasBody)
            }
            guard progress.attach(stream) else { throw HTTP2Error.timeout }
            if hasBody && buffered == nil {
                bodyStarted = true
                // The body streams to the replica while its response streams back.
                Task {
                    do {
                        var sent = 0
                        for try await chunk in request.body {
                            sent += chunk.readableBytes
                            guard sent <= table.maxBodyBytes else { throw HTTP2Error.bodyTooLarge(limit: table.maxBodyBytes) }
                            try await stream.write(chunk)
                        }
                        try await stream.finish()
                    } catch HTTP2Error.badBody(let reason) {
                        // A body that cannot be read (not the gzip it claims) fails the request
                        // with that error, so it is answered 400 as the client's fault.
                        stream.cancel(error: .badBody(reason))
                    } catch HTTP2Error.bodyTooLarge(let limit) {
                        stream.cancel(error: .bodyTooLarge(limit: limit))
                    } catch {
                        stream.cancel()
                    }
                }
            }
            response = try await stream.response()
        } catch HTTP2Error.timeout {
            throw IngressFailure(status: .gatewayTimeout, message: "no answer within request_timeout_s")
        } catch HTTP2Error.badBody(let reason) {
            throw IngressFailure(status: .badRequest, message: "the request body could not be read: \(reason)")
        } catch HTTP2Error.bodyTooLarge(let limit) {
            throw IngressFailure(status: .contentTooLarge, message: "the body is over the \(limit)-byte limit")
        } catch let error as HTTP2Error where error.isSafeToRetry && !bodyStarted {
            return .unreachable(error)
        } catch {
            return .failed(error)
        }
        if response.head.status == .serviceUnavailable, let refusal = response.head.headerFields[ServeHeaders.refused] {
            _ = try? await response.body.collect(upTo: 1 << 16)
            return .refused(refusal, bodyStarted: bodyStarted)
        }
        progress.markHeadSent()
        if let (body, trailers) = response.body.takeIfEnded() {
            // The usual small answer arrived whole with its head: one write, not three.
            if trailers?.isEmpty ?? true {
                try await writer.respond(response.head, body: body, trailers: nil)
            } else {
                try await writer.writeHead(response.head)
                if body.readableBytes > 0 { try await writer.write(body) }
                try await writer.finish(trailers: trailers)
            }
            return .answered(response.head.status.code)
        }
        try await writer.writeHead(response.head)
        // From here an error can only cut the body short (the head went out already).
        for try await chunk in response.body {
            try await writer.write(chunk)
        }
        try await writer.finish(trailers: response.body.trailers)
        return .answered(response.head.status.code)
    }

    private func text(_ writer: any HTTPResponseWriter, _ status: HTTPResponse.Status, _ message: String) async throws {
        try await writer.respond(
            HTTPResponse(status: status, headerFields: [.contentType: "text/plain; charset=utf-8"]),
            body: ByteBuffer(string: message + "\n")
        )
    }

    static func withTimeout<T: Sendable>(_ timeout: Duration?, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        guard let timeout else { return try await body() }
        return try await withThrowingTaskGroup(of: T.self) { group in
            group.addTask { try await body() }
            group.addTask {
                try await Task.sleep(for: timeout)
                throw IngressFailure(status: .gatewayTimeout, message: "no answer within request_timeout_s (\(timeout))")
            }
            defer { group.cancelAll() }
            return try await group.next()!
        }
    }
}

extension Duration {
    var seconds: Double {
        Double(self.components.seconds) + Double(self.components.attoseconds) / 1e18
    }
}

/// HTTP/2 connections to the workers, opened on first use and replaced when they fail: one per
/// worker and per event loop of the ingress. A request's handler runs on its client connection's
/// event loop, and a connection to the worker on that same loop lets the whole exchange (open the
/// stream, read the response, answer the client) run on one thread without a hop.
final class NodeConnections: Sendable {
    private struct Node: Hashable {
        var host: String
        var port: Int
    }
    private struct Key: Hashable {
        var node: Node
        var loop: ObjectIdentifier?
    }
    private enum Entry {
        case connecting(Task<HTTP2ClientConnection, any Error>)
        case ready(HTTP2ClientConnection)
    }
    private let connections = NIOLockedValueBox<[Key: Entry]>([:])
    /// Why a node's connections were closed by `fail`, until a new connection to it succeeds.
    private let reasons = NIOLockedValueBox<[Node: String]>([:])
    private let logger: Logger

    init(logger: Logger) {
        self.logger = logger
    }

    private static func key(host: String, port: Int) -> (Key, (any EventLoop)?) {
        let loop = MultiThreadedEventLoopGroup.currentEventLoop
        return (Key(node: Node(host: host, port: port), loop: loop.map { ObjectIdentifier($0) }), loop)
    }

    func connection(host: String, port: Int) async throws -> HTTP2ClientConnection {
        let (key, loop) = Self.key(host: host, port: port)
        let entry = self.connections.withLockedValue { connections -> Entry in
            if let entry = connections[key] { return entry }
            let task = Task {
                try await HTTP2ClientConnection.connect(
                    host: host,
                    port: port,
                    eventLoopGroup: loop ?? MultiThreadedEventLoopGroup.singleton,
                    connectTimeout: .seconds(5)
                )
            }
            connections[key] = .connecting(task)
            return .connecting(task)
        }
        switch entry {
        case .ready(let connection):
            if connection.isAvailable { return connection }
            self.forget(key, connection)
            return try await self.connection(host: host, port: port)
        case .connecting(let task):
            do {
                let connection = try await task.value
                self.connections.withLockedValue { connections in
                    if case .connecting = connections[key] { connections[key] = .ready(connection) }
                }
                if connection.isAvailable {
                    self.reasons.withLockedValue { _ = $0.removeValue(forKey: key.node) }
                    return connection
                }
                self.forget(key, connection)
                return try await self.connection(host: host, port: port)
            } catch {
                self.connections.withLockedValue { connections in
                    if case .connecting = connections[key] { connections[key] = nil }
                }
                throw error
            }
        }
    }

    /// Drops this event loop's connection to a worker (it failed), so the next request dials anew.
    func forget(host: String, port: Int) {
        let (key, _) = Self.key(host: host, port: port)
        _ = self.connections.withLockedValue { $0.removeValue(forKey: key) }
    }

    private func forget(_ key: Key, _ connection: HTTP2ClientConnection) {
        self.connections.withLockedValue { connections in
            if case .ready(let current) = connections[key], current === connection { connections[key] = nil }
            if case .connecting = connections[key] { connections[key] = nil }
        }
    }

    /// Closes every connection to a node declared DEAD (their open streams fail at once) and
    /// keeps the reason for the answers of the requests that were on them.
    func fail(host: String, port: Int, reason: String) {
        let node = Node(host: host, port: port)
        self.reasons.withLockedValue { $0[node] = reason }
        let entries = self.connections.withLockedValue { connections in
            let keys = connections.keys.filter { $0.node == node }
            return keys.compactMap { connections.removeValue(forKey: $0) }
        }
        guard !entries.isEmpty else { return }
        Task { await Self.close(entries) }
    }

    /// "; <why>" when the node at `host:port` was declared DEAD, else "".
    func reason(host: String, port: Int) -> String {
        self.reasons.withLockedValue { $0[Node(host: host, port: port)] }.map { "; \($0)" } ?? ""
    }

    func closeAll() async {
        let entries = self.connections.withLockedValue { connections in
            defer { connections.removeAll() }
            return Array(connections.values)
        }
        await Self.close(entries)
    }

    private static func close(_ entries: [Entry]) async {
        for entry in entries {
            switch entry {
            case .ready(let connection): await connection.closeNow()
            case .connecting(let task): await (try? task.value)?.closeNow()
            }
        }
    }
}
