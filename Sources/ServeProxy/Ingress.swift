import HTTPTypes
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServeCore
import ServeWire

/// The replicas of the proxy's own node, reached without a socket: the node program (a worker,
/// or the head's embedded worker) implements this, so `ServeProxy` imports neither.
public protocol LocalReplicas: Sendable {
    /// The node these replicas run on (`ReplicaRoute.nodeID`).
    var nodeID: String { get }
    /// Serves `request` on replica `replicaID` in process: a Swift replica as a call, a process
    /// replica over its loopback port. The request head is already rewritten for the replica
    /// (prefix stripped, `x-forwarded-prefix` set).
    func serve(replica replicaID: String, _ request: HTTPServerRequest, _ writer: any HTTPResponseWriter) async throws -> LocalAnswer
}

/// How a local replica took a request.
public enum LocalAnswer: Sendable, Hashable {
    /// It answered (the response went to the writer) with this status.
    case answered(Int)
    /// It did not take the request (full, stopping, not on this node): nothing was read or
    /// written, so another replica may take it.
    case refused(String)
}

/// The HTTP proxy of one node: matches a request's path to an application by longest route
/// prefix, picks a replica of its ingress deployment (this node's first), and calls it in
/// process (`LocalReplicas`) or forwards the request as one HTTP/2 stream to the worker hosting
/// it, streaming bodies both ways. Every node runs one, from the last route table the head sent,
/// so serving goes on while the head is away.
///
/// Answers: 404 no route; 503 over `max_queued_requests` or no replica; 502 when the replica or
/// its node fails mid-request; 504 past `request_timeout_s`; 413 past `max_body_bytes`.
/// Retries are `ServeCore.RetryPolicy`'s decisions; replica choice is `ServeCore.RequestRouter`'s.
public final class Ingress: Sendable {
    private struct Tables {
        var table = RouteTable()
        var routers: [DeploymentID: DeploymentRouter] = [:]
        /// The newest table version applied (`update`), nil before the first.
        var version: TableVersion?
        /// Counts the tables applied: the routers' own order.
        var applied: UInt64 = 0
        var draining = false
    }

    private let token: String
    private let logger: Logger
    private let tables = NIOLockedValueBox(Tables())
    private let local = NIOLockedValueBox<(any LocalReplicas)?>(nil)
    private let connections: NodeConnections
    /// Called when a request starts waiting at a router for a deployment with no replica (the
    /// node tells the head at once: a cold start must not wait for the next heartbeat).
    private let onColdDemand: (@Sendable (DeploymentID) -> Void)?
    public let metrics = IngressMetrics()

    public init(
        token: String,
        logger: Logger = Logger(label: "serve.proxy"),
        onColdDemand: (@Sendable (DeploymentID) -> Void)? = nil
    ) {
        self.token = token
        self.logger = logger
        self.connections = NodeConnections(logger: logger)
        self.onColdDemand = onColdDemand
    }

    /// The replicas of this node, reached in process (set once the node's worker exists).
    public func setLocal(_ local: (any LocalReplicas)?) {
        self.local.withLockedValue { $0 = local }
        // Which replicas are local changed: routers learn it from the table applied again.
        let (table, version) = self.tables.withLockedValue { ($0.table, $0.version) }
        if let version { self.apply(table, version: version, force: true) }
    }

    /// Installs a route table. `version` orders the tables as the head made them (across head
    /// restarts too): one older than a table applied already is ignored, whole and by each
    /// router, so a late table never brings back a stopped replica or hides a live one.
    public func update(_ table: RouteTable, version: TableVersion) {
        self.apply(table, version: version, force: false)
    }

    private func apply(_ table: RouteTable, version: TableVersion, force: Bool) {
        let localNode = self.local.withLockedValue { $0?.nodeID }
        let removed: [DeploymentRouter]? = self.tables.withLockedValue { tables in
            if let applied = tables.version, version < applied || (version == applied && !force) { return nil }
            tables.version = version
            tables.applied += 1
            let order = tables.applied
            var seen = Set<DeploymentID>()
            // Every deployment has a router: the ingress ones for HTTP, all of them for handles.
            for app in table.applications {
                for route in app.deployments {
                    seen.insert(route.id)
                    if let router = tables.routers[route.id] {
                        router.update(route, localNode: localNode, version: order)
                    } else {
                        tables.routers[route.id] = DeploymentRouter(
                            route: route, localNode: localNode, version: order, onColdWait: self.coldWait(route.id))
                    }
                }
            }
            let gone = tables.routers.keys.filter { !seen.contains($0) }
            tables.table = table
            return gone.compactMap { tables.routers.removeValue(forKey: $0) }
        }
        for router in removed ?? [] { router.close() }
    }

    /// The node of the replicas called in process (nil: none).
    public var localNodeID: String? { self.local.withLockedValue { $0?.nodeID } }

    private func coldWait(_ id: DeploymentID) -> (@Sendable () -> Void)? {
        guard let callback = self.onColdDemand else { return nil }
        return { callback(id) }
    }

    /// The newest table version applied (nil: none yet).
    public var tableVersion: TableVersion? { self.tables.withLockedValue { $0.version } }

    /// A draining node's proxy: `/-/healthz` answers 503 so load balancers move away, while
    /// requests are still served.
    public func setDraining(_ draining: Bool) {
        self.tables.withLockedValue { $0.draining = draining }
    }

    public var isDraining: Bool { self.tables.withLockedValue { $0.draining } }

    /// Requests waiting at the routers, per deployment (the autoscaler counts them as demand).
    public func waitingRequests() -> [DeploymentID: Int] {
        let routers = self.tables.withLockedValue { $0.routers }
        var result: [DeploymentID: Int] = [:]
        for (id, router) in routers {
            let waiting = router.waiting
            if waiting > 0 { result[id] = waiting }
        }
        return result
    }

    public func close() async {
        let routers = self.tables.withLockedValue { $0.routers.values }
        for router in routers { router.close() }
        await self.connections.closeAll()
    }

    /// The head declared the node at `host:port` DEAD: its connection is closed at once,
    /// so requests in flight there fail now (502 with `reason`) rather than when TCP gives up.
    public func nodeFailed(host: String, port: Int, reason: String) {
        self.connections.fail(host: host, port: port, reason: reason)
    }

    /// Request bodies up to this size (by Content-Length) are read whole before they are sent to
    /// another node, so that a refused or unreachable try can be repeated elsewhere (a replica in
    /// this process refuses before reading anything, so its requests stream as they come).
    static let keptBodyBytes = ApplicationConfig.maxRetryBodyBytes

    /// `serve_multiplexed_model_id`: the model a request is for (DESIGN.md "Batching, multiplexing").
    static let multiplexedModelID = HTTPField.Name(Multiplexing.header)!

    // MARK: serving

    public func handle(_ request: HTTPServerRequest, _ writer: any HTTPResponseWriter) async throws {
        let path = request.head.path ?? "/"
        let (table, populated, draining) = self.tables.withLockedValue { ($0.table, $0.version != nil, $0.draining) }
        if path.hasPrefix("/-/") {
            return try await self.builtIn(path, table: table, populated: populated, draining: draining, writer)
        }
        guard let app = table.match(path) else {
            if populated && !table.servesHTTP {
                return try await self.text(
                    writer, .notFound, "proxy_location is Disabled: no application is served over HTTP (deployments are reached through handles)")
            }
            return try await self.text(writer, .notFound, "no application serves \(path); see /-/routes")
        }
        let target = Target(deployment: app.ingress.id, routePrefix: app.routePrefix, idempotent: app.idempotent)
        try await self.serve(request, to: target, table: table, writer)
    }

    /// A handle call: `request` (its path as the deployment sees it) goes to a replica of
    /// `deployment` of application `app` through this node's router (local first, the same
    /// limits, waiting through a cold start, counted as demand), with the ingress's answers: 404
    /// for a deployment the tables do not know, 503, 502, 504. A call cancelled by its caller
    /// cancels the replica's work (a local Swift replica's task, a remote one's stream).
    public func call(app: String, deployment: String, _ request: HTTPServerRequest, _ writer: any HTTPResponseWriter) async throws {
        let (table, populated) = self.tables.withLockedValue { ($0.table, $0.version != nil) }
        let id = DeploymentID(app: app, name: deployment)
        guard let application = table.applications.first(where: { $0.name == app }),
            application.deployments.contains(where: { $0.id == id })
        else {
            if !populated { return try await self.text(writer, .serviceUnavailable, "Route table is not populated yet.") }
            return try await self.text(writer, .notFound, "no deployment \(deployment) in application \(app)")
        }
        try await self.serve(request, to: Target(deployment: id, routePrefix: nil, idempotent: application.idempotent), table: table, writer)
    }

    /// Where a request goes: a deployment, reached over HTTP (its application's route prefix is
    /// stripped from the path) or through a handle (the path is the deployment's already).
    struct Target {
        var deployment: DeploymentID
        var routePrefix: String?
        var idempotent: Bool
    }

    private func serve(_ request: HTTPServerRequest, to target: Target, table: RouteTable, _ writer: any HTTPResponseWriter) async throws {
        if let length = request.head.headerFields[.contentLength].flatMap(Int.init), length > table.maxBodyBytes {
            return try await self.text(writer, .contentTooLarge, "the body is over the \(table.maxBodyBytes)-byte limit")
        }
        guard let router = self.tables.withLockedValue({ $0.routers[target.deployment] }) else {
            return try await self.text(writer, .serviceUnavailable, "\(target.deployment) is not ready")
        }
        let started = ContinuousClock.now
        let progress = ForwardProgress(writer)
        let outcome = await self.forward(request, to: target, router: router, table: table, writer: writer, progress: progress)
        self.metrics.record(deployment: target.deployment, status: outcome, seconds: (ContinuousClock.now - started).seconds)
        if let cut = progress.cut { throw cut }
    }

    /// `/-/healthz` and `/-/routes`, as Ray's proxy answers them.
    private func builtIn(_ path: String, table: RouteTable, populated: Bool, draining: Bool, _ writer: any HTTPResponseWriter) async throws {
        switch path.prefix(while: { $0 != "?" }) {
        case "/-/healthz":
            if draining { return try await self.text(writer, .serviceUnavailable, "This node is being drained.") }
            if !populated { return try await self.text(writer, .serviceUnavailable, "Route table is not populated yet.") }
            return try await self.text(writer, .ok, "success")
        case "/-/routes":
            var routes: [String: JSONValue] = [:]
            for app in table.applications where table.servesHTTP { routes[app.routePrefix] = .string(app.name) }
            return try await writer.respond(
                HTTPResponse(status: .ok, headerFields: [.contentType: "application/json"]),
                body: ByteBuffer(string: JSONValue.object(routes).jsonString())
            )
        default:
            return try await self.text(writer, .notFound, "no such built-in endpoint: \(path) (there are /-/healthz and /-/routes)")
        }
    }

    /// Forwards and answers; returns the status sent (for metrics).
    private func forward(
        _ request: HTTPServerRequest,
        to target: Target,
        router: DeploymentRouter,
        table: RouteTable,
        writer: any HTTPResponseWriter,
        progress: ForwardProgress
    ) async -> Int {
        do {
            return try await withDeadline(after: table.requestTimeout) {
                try await withTaskCancellationHandler {
                    try await self.forwardOnce(request, to: target, router: router, table: table, progress: progress)
                } onCancel: {
                    // The deadline passed: end the stream to the replica, so nothing waits on it.
                    progress.cancelStream()
                }
            }
        } catch let failure as IngressFailure where !progress.headSent {
            try? await self.text(writer, failure.status, failure.message)
            return failure.status.code
        } catch is DeadlineExceeded where !progress.headSent {
            let timeout = table.requestTimeout.map { " (\($0))" } ?? ""
            try? await self.text(writer, .gatewayTimeout, "no answer within request_timeout_s\(timeout)")
            return 504
        } catch {
            self.logger.debug("request failed after its response began", metadata: ["error": "\(error)"])
            // The head went out: only a cut (connection closed short, RST_STREAM) says the body
            // is incomplete, so the server is told to make one rather than end it cleanly.
            progress.cutResponse(error)
            return 502
        }
    }

    /// What a forwarded request has got to: the stream to cancel, and whether the response head
    /// has gone to the client (after that, no error status can be sent). It is also the writer
    /// the replica answers through, so that a local replica's answer counts as sent too.
    final class ForwardProgress: HTTPResponseWriter {
        private struct State {
            var stream: HTTP2ClientStream?
            var headSent = false
            var cancelled = false
            var cut: (any Error)?
        }
        private let state = NIOLockedValueBox(State())
        private let writer: any HTTPResponseWriter

        init(_ writer: any HTTPResponseWriter) {
            self.writer = writer
        }

        var headSent: Bool { self.state.withLockedValue { $0.headSent } }

        /// Marks the head sent, unless the deadline passed first: then the replica's answer
        /// (a handler cancelled by the deadline answers too) is dropped, and the proxy answers
        /// 504 itself.
        private func beginResponse() throws {
            let cancelled = self.state.withLockedValue { state -> Bool in
                if !state.cancelled { state.headSent = true }
                return state.cancelled
            }
            if cancelled { throw CancellationError() }
        }

        func respond(_ head: HTTPResponse, body: ByteBuffer?, trailers: HTTPFields?) async throws {
            try self.beginResponse()
            try await self.writer.respond(head, body: body, trailers: trailers)
        }

        func writeHead(_ head: HTTPResponse) async throws {
            try self.beginResponse()
            try await self.writer.writeHead(head)
        }

        func write(_ chunk: ByteBuffer) async throws {
            try await self.writer.write(chunk)
        }

        func finish(trailers: HTTPFields?) async throws {
            try await self.writer.finish(trailers: trailers)
        }

        /// The response failed after its head went out (the handler throws it, so the server cuts).
        var cut: (any Error)? { self.state.withLockedValue { $0.cut } }
        func cutResponse(_ error: any Error) { self.state.withLockedValue { $0.cut = error } }

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
        to target: Target,
        router: DeploymentRouter,
        table: RouteTable,
        progress: ForwardProgress
    ) async throws -> Int {
        let head = Self.forwardedHead(request, to: target)
        let local = self.local.withLockedValue { $0 }
        let kept = try await Self.keptBody(of: request, router: router, local: local)
        var policy = RetryPolicy(idempotent: Self.isIdempotent(request, target: target, kept: kept))
        // A multiplexed model's request goes where the model is held (it passes on unchanged).
        let model = head.headerFields[Self.multiplexedModelID].flatMap { $0.isEmpty ? nil : $0 }
        while true {
            let replica: ReplicaRoute
            do {
                replica = try await router.acquire(excluding: policy.excluded, model: model)
            } catch let failure as RequestRouter.Failure {
                let (status, message) = policy.answer(for: failure, deployment: "\(target.deployment)", app: target.deployment.app)
                throw IngressFailure(status: HTTPResponse.Status(code: status), message: message)
            }
            let tried: Tried
            if let local, replica.nodeID == local.nodeID {
                tried = try await self.tryLocal(replica, local, head: head, request: request, kept: kept, router: router, progress: progress)
            } else {
                tried = try await self.tryRemote(
                    replica, head: head, request: request, kept: kept, router: router, table: table, progress: progress)
            }
            switch tried {
            case .answered(let status):
                return status
            case .notAnswered(let outcome):
                try await self.retryOrFail(outcome, policy: &policy, target: target, replica: replica)
            }
        }
    }

    /// The request as a replica gets it: no connection-specific fields, and under a route
    /// prefix, the prefix stripped from the path and the client named in `Forwarded` fields.
    private static func forwardedHead(_ request: HTTPServerRequest, to target: Target) -> HTTPRequest {
        var head = request.head
        head.headerFields = head.headerFields.removingConnectionSpecific
        head.headerFields[ServeHeaders.forwardedPrefix] = target.routePrefix
        if let prefix = target.routePrefix {
            head.path = RouteTable.strip(prefix: prefix, from: request.head.path ?? "/")
            head.addForwardedFields(client: request.remoteAddress)
        }
        return head
    }

    /// A small body, read first and kept so that the request can go to another replica if the
    /// first refuses it or cannot be reached (a streamed body is consumed by the first attempt);
    /// nil when there is none, it is large, or a replica on this node can take it as it streams.
    private static func keptBody(
        of request: HTTPServerRequest,
        router: DeploymentRouter,
        local: (any LocalReplicas)?
    ) async throws -> ByteBuffer? {
        // HTTP/2 requests may carry a body with neither Content-Length nor Transfer-Encoding
        // (RFC 9113 §8.1): whether one comes is what the connection saw, not a header.
        guard request.hasBody, let length = request.head.headerFields[.contentLength].flatMap(Int.init),
            length <= Self.keptBodyBytes, local.map({ !router.hasReplica(on: $0.nodeID) }) ?? true
        else { return nil }
        do {
            return try await request.body.collect(upTo: Self.keptBodyBytes)
        } catch {
            throw IngressFailure(status: .badRequest, message: "the request body could not be read: \(error)")
        }
    }

    /// Whether a failure mid-request may be retried: a request without a body when its method
    /// is GET or HEAD or its route says so; one with a body only when its route says so and the
    /// body was kept.
    private static func isIdempotent(_ request: HTTPServerRequest, target: Target, kept: ByteBuffer?) -> Bool {
        request.hasBody
            ? target.idempotent && kept != nil
            : (request.head.method == .get || request.head.method == .head || target.idempotent)
    }

    /// How one try on one replica ended.
    private enum Tried {
        /// The response went to the client, with this status.
        case answered(Int)
        /// It did not: the retry policy decides what follows.
        case notAnswered(RetryPolicy.Outcome)
    }

    /// One try on a replica on this node: a function call away. It refuses before reading
    /// anything, so the client's body streams to it as it arrives (a kept one was read for an
    /// earlier try elsewhere).
    private func tryLocal(
        _ replica: ReplicaRoute,
        _ local: any LocalReplicas,
        head: HTTPRequest,
        request: HTTPServerRequest,
        kept: ByteBuffer?,
        router: DeploymentRouter,
        progress: ForwardProgress
    ) async throws -> Tried {
        defer { router.release(replica.id) }
        let body = kept.map { HTTPBody(bytes: $0) } ?? request.body
        let forwarded = HTTPServerRequest(head: head, body: body, remoteAddress: request.remoteAddress, hasBody: request.hasBody)
        switch try await local.serve(replica: replica.id, forwarded, progress) {
        case .answered(let status):
            return .answered(status)
        case .refused(let reason):
            return .notAnswered(.refused(replica: replica.id, reason: reason, bodyStarted: false))
        }
    }

    /// One try on a replica on another node, through its worker's data plane.
    private func tryRemote(
        _ replica: ReplicaRoute,
        head: HTTPRequest,
        request: HTTPServerRequest,
        kept: ByteBuffer?,
        router: DeploymentRouter,
        table: RouteTable,
        progress: ForwardProgress
    ) async throws -> Tried {
        var remoteHead = head
        remoteHead.headerFields[ServeHeaders.token] = self.token
        remoteHead.headerFields[ServeHeaders.replica] = replica.id
        let attempt: Attempt
        do {
            attempt = try await self.attempt(
                remoteHead, request: request, hasBody: request.hasBody, kept: kept, replica: replica, table: table,
                progress: progress)
        } catch {
            router.release(replica.id)
            throw error
        }
        router.release(replica.id)
        let node = "replica \(replica.id) on node \(replica.nodeID)"
        switch attempt {
        case .answered(let status):
            return .answered(status)
        case .refused(let reason, let bodyStarted):
            return .notAnswered(.refused(replica: replica.id, reason: reason, bodyStarted: bodyStarted))
        case .unreachable(let error):
            self.connections.forget(host: replica.host, port: replica.port)
            let reason = "\(node) is unreachable: \(error)\(self.connections.reason(host: replica.host, port: replica.port))"
            self.logger.info("retrying a request on another replica", metadata: ["serve.replica": "\(replica.id)", "error": "\(error)"])
            return .notAnswered(.unreachable(replica: replica.id, reason: reason))
        case .failed(let error):
            let reason = "\(node) failed before answering: \(error)\(self.connections.reason(host: replica.host, port: replica.port))"
            return .notAnswered(.failed(replica: replica.id, reason: reason))
        }
    }

    /// What the retry policy makes of a try that did not answer: a pause and another try, or
    /// the answer it says (thrown).
    private func retryOrFail(
        _ outcome: RetryPolicy.Outcome,
        policy: inout RetryPolicy,
        target: Target,
        replica: ReplicaRoute
    ) async throws {
        switch policy.decide(outcome, deployment: "\(target.deployment)") {
        case .retry(let reason):
            self.metrics.recordRetry(deployment: target.deployment, reason)
            if let pause = policy.pauseBeforeRetry { try await Task.sleep(for: pause) }
            if reason == .failed {
                self.logger.info("retrying an idempotent request on another replica", metadata: ["serve.replica": "\(replica.id)"])
            }
        case .fail(let status, let message):
            throw IngressFailure(status: HTTPResponse.Status(code: status), message: message)
        }
    }

    /// How one try on one replica on another node ended, when it did not throw an answer for
    /// the client.
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

    /// One try on one replica on another node, over an HTTP/2 stream.
    private func attempt(
        _ head: HTTPRequest,
        request: HTTPServerRequest,
        hasBody: Bool,
        kept: ByteBuffer?,
        replica: ReplicaRoute,
        table: RouteTable,
        progress: ForwardProgress
    ) async throws -> Attempt {
        let stream: HTTP2ClientStream
        let response: HTTP2Response
        var bodyStarted = false
        do {
            let connection = try await self.connections.connection(host: replica.host, port: replica.port)
            if let kept {
                stream = try await connection.openStream(head, body: kept)
            } else {
                stream = try await connection.openStream(head, endStream: !hasBody)
            }
            guard progress.attach(stream) else { throw HTTP2Error.timeout }
            if hasBody && kept == nil {
                bodyStarted = true
                // The body streams to the replica while its response streams back.
                Task { await Self.send(request.body, to: stream, limit: table.maxBodyBytes) }
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
        try await Self.relay(response, to: progress)
        return .answered(response.head.status.code)
    }

    /// Streams a client's body to a replica's stream, within the route's body limit; a body
    /// that cannot be read, or one over the limit, fails the stream with that error.
    private static func send(_ body: HTTPBody, to stream: HTTP2ClientStream, limit: Int) async {
        do {
            var sent = 0
            for try await chunk in body {
                sent += chunk.readableBytes
                guard sent <= limit else { throw HTTP2Error.bodyTooLarge(limit: limit) }
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

    /// Passes a replica's response to the client.
    private static func relay(_ response: HTTP2Response, to writer: ForwardProgress) async throws {
        if let (body, trailers) = response.body.takeIfEnded() {
            // The usual small answer arrived whole with its head: one write, not three.
            if trailers?.isEmpty ?? true {
                try await writer.respond(response.head, body: body, trailers: nil)
            } else {
                try await writer.writeHead(response.head)
                if body.readableBytes > 0 { try await writer.write(body) }
                try await writer.finish(trailers: trailers)
            }
            return
        }
        try await writer.writeHead(response.head)
        // From here an error can only cut the body short (the head went out already).
        for try await chunk in response.body {
            try await writer.write(chunk)
        }
        try await writer.finish(trailers: response.body.trailers)
    }

    private func text(_ writer: any HTTPResponseWriter, _ status: HTTPResponse.Status, _ message: String) async throws {
        try await writer.respond(status, text: message + "\n")
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

    /// Bodies between nodes are compressed only where it pays: never on loopback, never below
    /// 64 KiB, at zlib level 1 (`HTTP2Configuration.Compression.betweenNodes`).
    static func configuration(host: String) -> HTTP2Configuration {
        var configuration = HTTP2Configuration()
        configuration.compression = HTTP2Configuration.Compression.betweenNodes.forPeer(host: host)
        return configuration
    }

    func connection(host: String, port: Int) async throws -> HTTP2ClientConnection {
        let (key, loop) = Self.key(host: host, port: port)
        let entry = self.connections.withLockedValue { connections -> Entry in
            if let entry = connections[key] { return entry }
            let task = Task {
                try await HTTP2ClientConnection.connect(
                    host: host,
                    port: port,
                    configuration: Self.configuration(host: host),
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
