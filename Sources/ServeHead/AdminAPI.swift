import HTTPTypes
import Logging
import NIOCore
import ServeCore
import ServeProxy
import ServeWire

/// The head's REST API (Ray's dashboard endpoints for Serve): deploy, status, delete, nodes,
/// events, the timeline's history, Prometheus metrics, and the dashboard page.
struct AdminAPI: Sendable {
    let controller: Controller
    let ingress: Ingress
    /// When set, mutating calls need `Authorization: Bearer <token>`.
    let requiredToken: String?
    /// The cluster token, for the head's own calls to workers (a replica's logs).
    let clusterToken: String
    /// Every config change is saved here before it is deployed.
    let store: StateStore
    let knownHandlers: Set<String>
    let logger: Logger
    /// Shuts the head down gracefully (as SIGTERM does).
    let onShutdown: @Sendable () async -> Void
    /// The node autoscaler, when the head has a cluster config.
    var nodeAutoscaler: NodeAutoscaler? = nil

    func handle(_ request: HTTPServerRequest, _ writer: any HTTPResponseWriter) async throws {
        let path = String((request.head.path ?? "/").prefix(while: { $0 != "?" }))
        let method = request.head.method
        let mutating = method != .get && method != .head
        self.logger.debug("admin call", metadata: ["method": "\(method)", "path": "\(path)"])
        if mutating, !self.isAuthorized(request) {
            self.logger.warning(
                "refused an admin call with a wrong or missing cluster token",
                metadata: ["method": "\(method)", "path": "\(path)", "peer": "\(request.remoteAddress.map { "\($0)" } ?? "?")"])
            return try await self.json(writer, .unauthorized, ["error": "this call needs Authorization: Bearer <cluster token> (the serve CLI sends SERVE_TOKEN)"])
        }
        let trimmed = path.hasSuffix("/") && path.count > 1 ? String(path.dropLast()) : path
        switch (method, trimmed) {
        case (.get, "/api/serve/applications"):
            try await self.json(writer, .ok, await self.controller.statusJSON())
        case (.put, "/api/serve/applications"):
            try await self.putApplications(request, writer)
        case (.delete, "/api/serve/applications"):
            guard try await self.deploy(ServeConfig(httpOptions: await self.controller.config.httpOptions), writer) else { return }
            try await self.json(writer, .ok, ["result": "deleted all applications"])
        case (.delete, _) where trimmed.hasPrefix("/api/serve/applications/"):
            try await self.deleteApplication(String(trimmed.dropFirst("/api/serve/applications/".count)), writer)
        case (.get, "/api/cluster/nodes"):
            try await self.json(writer, .ok, await self.clusterNodesJSON())
        case (.get, "/api/serve/events"):
            try await self.json(writer, .ok, await self.controller.eventsJSON())
        case (.get, _) where trimmed.hasPrefix(Self.replicasPath) && trimmed.hasSuffix("/logs"):
            // A process replica's output, which can hold anything its program printed: the token
            // is asked for, as for the mutating calls.
            if !self.isAuthorized(request) {
                return try await self.json(writer, .unauthorized, ["error": "a replica's logs need Authorization: Bearer <cluster token> (serve logs sends SERVE_TOKEN)"])
            }
            try await self.relayLogs(request.head.path ?? "/", writer)
        case (.get, "/api/serve/history"):
            try await self.json(writer, .ok, await self.controller.historyJSON())
        case (.get, "/"):
            // The dashboard reads the GETs above; it is served with the others, without the
            // token (it changes nothing), and may load nothing from elsewhere (`Dashboard.page`).
            try await writer.respond(
                HTTPResponse(status: .ok, headerFields: Dashboard.headerFields),
                body: ByteBuffer(string: Dashboard.page)
            )
        case (.get, "/metrics"):
            let text = await Metrics.prometheusText(controller: self.controller, ingress: self.ingress)
            try await writer.respond(
                HTTPResponse(status: .ok, headerFields: [.contentType: "text/plain; version=0.0.4"]),
                body: ByteBuffer(string: text)
            )
        case (.post, "/api/serve/shutdown"):
            // `serve shutdown` deletes every application, as Ray's does: a head started again on
            // the state dir starts empty. (SIGTERM stops the head but keeps the config.)
            guard try await self.deploy(ServeConfig(httpOptions: await self.controller.config.httpOptions), writer) else { return }
            try await self.json(writer, .ok, ["result": "shutting down"])
            await self.onShutdown()
        case (.get, "/-/healthz"):
            try await self.json(writer, .ok, ["result": "ok"])
        default:
            try await self.json(writer, .notFound, ["error": .string("no endpoint \(method) \(path)")])
        }
    }

    /// Whether the call carries the token the head requires (always, when it requires none).
    private func isAuthorized(_ request: HTTPServerRequest) -> Bool {
        guard let token = self.requiredToken else { return true }
        return ConstantTime.isBearer(request.head.headerFields[.authorization], token: token)
    }

    /// `PUT /api/serve/applications`: the whole config, checked (every problem with its field
    /// path, and nothing changed), saved and deployed; allowed but not working as meant (a
    /// batch size max_ongoing_requests caps) comes back as warnings, as in the events.
    private func putApplications(_ request: HTTPServerRequest, _ writer: any HTTPResponseWriter) async throws {
        let body = try await request.body.collect(upTo: Self.maxConfigBytes)
        let text = String(buffer: body)
        let config: ServeConfig
        do {
            let known = self.knownHandlers.union(await self.controller.knownHandlerNames())
            config = try ConfigParser.parse(text, knownHandlers: known)
        } catch {
            self.logger.info("refused a config", metadata: ["problems": "\(error.problems.count)"])
            return try await self.json(writer, .badRequest, [
                "error": .string("the config was refused; nothing changed"),
                "problems": .array(error.problems.map { .object(["path": .string($0.path), "message": .string($0.message)]) }),
            ])
        }
        guard try await self.deploy(config, writer) else { return }
        let warnings = ConfigParser.warnings(for: config)
        try await self.json(writer, .ok, [
            "result": "deployed", "applications": .array(config.applications.map { .string($0.name) }),
            "warnings": .array(warnings.map { .object(["path": .string($0.path), "message": .string($0.message)]) }),
        ])
    }

    /// `DELETE /api/serve/applications/NAME`: the config without that application, deployed.
    private func deleteApplication(_ name: String, _ writer: any HTTPResponseWriter) async throws {
        var config = await self.controller.config
        guard config.applications.contains(where: { $0.name == name }) else {
            return try await self.json(writer, .notFound, ["error": .string("no application named '\(name)'")])
        }
        config.applications.removeAll { $0.name == name }
        guard try await self.deploy(config, writer) else { return }
        try await self.json(writer, .ok, ["result": .string("deleted \(name)")])
    }

    /// The largest config body accepted (a larger one gets 413).
    static let maxConfigBytes = 16 << 20

    /// Saves and deploys `config`; if the state dir cannot be written, answers 500 saying so and
    /// returns false, and nothing changed.
    private func deploy(_ config: ServeConfig, _ writer: any HTTPResponseWriter) async throws -> Bool {
        do {
            try await self.controller.deploy(config, savingTo: self.store)
            return true
        } catch {
            self.logger.error("cannot save the config; nothing changed", metadata: ["error": "\(error)"])
            try await self.json(writer, .internalServerError, ["error": .string("nothing changed: \(error)")])
            return false
        }
    }

    static let replicasPath = "/api/serve/replicas/"

    /// `GET /api/serve/replicas/REPLICA/logs?offset=N`: asks the replica's worker for its output
    /// (`ReplicaLogs`) and passes the answer on.
    private func relayLogs(_ path: String, _ writer: any HTTPResponseWriter) async throws {
        let rest = path.dropFirst(Self.replicasPath.count)
        let segment = rest.prefix(while: { $0 != "/" }) + rest.drop(while: { $0 != "?" })
        guard let (replica, offset) = ReplicaLogs.parse(segment: segment) else {
            return try await self.json(writer, .badRequest, ["error": "GET /api/serve/replicas/REPLICA/logs?offset=N"])
        }
        guard let (host, port) = await self.controller.dataPlaneAddress(ofReplica: replica) else {
            return try await self.json(writer, .notFound, ["error": .string("no replica \(replica) runs on a live node")])
        }
        let connection: HTTP2ClientConnection
        do {
            connection = try await HTTP2ClientConnection.connect(host: host, port: port, connectTimeout: .seconds(5))
        } catch {
            return try await self.json(writer, .badGateway, ["error": .string("the node of \(replica) at \(host):\(port) cannot be reached: \(error)")])
        }
        defer { Task { await connection.closeNow() } }
        let head = HTTPRequest(
            method: .get, scheme: "http", authority: "\(host):\(port)", path: ReplicaLogs.workerPath(replica: replica, offset: offset),
            headerFields: [ServeHeaders.token: self.clusterToken])
        let response = try await connection.openStream(head, endStream: true, timeout: .seconds(30)).response()
        let body = try await response.body.collect(upTo: ReplicaLogs.maxChunk + (64 << 10))
        try await writer.respond(response.head, body: body)
    }

    private func json(_ writer: any HTTPResponseWriter, _ status: HTTPResponse.Status, _ value: JSONValue) async throws {
        try await writer.respond(
            HTTPResponse(status: status, headerFields: [.contentType: "application/json"]),
            body: ByteBuffer(string: value.jsonString() + "\n")
        )
    }
}

/// Prometheus text exposition of the head's view.
enum Metrics {
    static func prometheusText(controller: Controller, ingress: Ingress) async -> String {
        // The head's own proxy (every worker's serves the same series on its --metrics-port).
        var lines = ingress.prometheusLines()
        lines += controller.metrics.prometheusLines()
        lines.append("# HELP serve_replicas Replicas per deployment and state.")
        lines.append("# TYPE serve_replicas gauge")
        for (id, states) in await controller.replicaStates().sorted(by: { "\($0.key)" < "\($1.key)" }) {
            for (state, count) in states.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
                lines.append("serve_replicas{\(PrometheusLabels.deployment(id)),state=\"\(state.rawValue)\"} \(count)")
            }
        }
        lines.append("# HELP serve_ongoing_requests Requests running at replicas, as they report (requests waiting at the router are serve_router_queued_requests).")
        lines.append("# TYPE serve_ongoing_requests gauge")
        for (id, count) in await controller.ongoingRequests().sorted(by: { "\($0.key)" < "\($1.key)" }) {
            lines.append("serve_ongoing_requests{\(PrometheusLabels.deployment(id))} \(count)")
        }
        lines.append("# HELP serve_nodes Nodes the head knows, by state.")
        lines.append("# TYPE serve_nodes gauge")
        let nodeStates = await controller.nodeStates.values.reduce(into: [NodeState: Int]()) { $0[$1, default: 0] += 1 }
        for state in NodeState.allCases {
            lines.append("serve_nodes{state=\"\(state.rawValue)\"} \(nodeStates[state] ?? 0)")
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
