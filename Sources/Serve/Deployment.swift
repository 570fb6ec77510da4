import HTTPTypes
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServeCore
import ServeWire

/// A request as a deployment sees it: the route prefix already stripped from the path.
public struct ServeRequest: Sendable {
    public var method: HTTPRequest.Method
    /// The path after the application's route prefix, with its query string (always starts with "/").
    public var path: String
    /// The route prefix that was stripped (also sent to command deployments as X-Forwarded-Prefix).
    public var routePrefix: String
    public var headers: HTTPFields
    /// The body, streamed as it arrives.
    public var body: HTTPBody
    /// Whether the request carries a body at all (one sent on to a process replica without one
    /// goes without any framing, as a plain GET does).
    public var hasBody: Bool

    public init(method: HTTPRequest.Method, path: String, routePrefix: String = "/", headers: HTTPFields = [:], body: HTTPBody, hasBody: Bool = true) {
        self.method = method
        self.path = path
        self.routePrefix = routePrefix
        self.headers = headers
        self.body = body
        self.hasBody = hasBody
    }

    /// A request made here, for a handle call: `body` whole (nil: none; its length is sent).
    public init(method: HTTPRequest.Method = .get, path: String, headers: HTTPFields = [:], body: ByteBuffer? = nil) {
        var headers = headers
        if let body { headers[.contentLength] = String(body.readableBytes) }
        self.init(method: method, path: path, headers: headers, body: body.map { HTTPBody(bytes: $0) } ?? .empty, hasBody: body != nil)
    }

    /// The path without its query string.
    public var pathWithoutQuery: String {
        String(self.path.prefix(while: { $0 != "?" }))
    }

    /// The value of one query parameter (`?ms=10` → `query("ms") == "10"`), not percent-decoded.
    public func query(_ name: String) -> String? {
        guard let mark = self.path.firstIndex(of: "?") else { return nil }
        for pair in self.path[self.path.index(after: mark)...].split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            if parts.first.map(String.init) == name { return parts.count > 1 ? String(parts[1]) : "" }
        }
        return nil
    }
}

/// A deployment's answer: whole (`body`), or streamed piece by piece (`streaming`, `eventStream`).
public struct ServeResponse: Sendable {
    public var status: HTTPResponse.Status
    public var headers: HTTPFields
    /// The body; for a streamed response, its first bytes.
    public var body: ByteBuffer
    /// Writes the rest of a streamed body, piece by piece, after `body`: each piece reaches the
    /// client as it is written (HTTP/1.1 chunked, HTTP/2 DATA frames), through every proxy. Nil
    /// for a whole response.
    public var stream: (@Sendable (ServeBodyWriter) async throws -> Void)?

    public init(status: HTTPResponse.Status = .ok, headers: HTTPFields = [:], body: ByteBuffer = ByteBuffer()) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// A response whose body `write` writes piece by piece. Its length is not known in advance,
    /// so any `content-length` in `headers` is dropped. Should `write` throw after the first
    /// piece went out, the client sees the body cut short (never a complete answer).
    public static func streaming(
        status: HTTPResponse.Status = .ok, headers: HTTPFields = [:], _ write: @escaping @Sendable (ServeBodyWriter) async throws -> Void
    ) -> ServeResponse {
        var headers = headers
        headers[.contentLength] = nil
        var response = ServeResponse(status: status, headers: headers)
        response.stream = write
        return response
    }

    /// A response that streams the buffers of `sequence` as they come.
    public static func streaming<Body: AsyncSequence & Sendable>(
        status: HTTPResponse.Status = .ok, headers: HTTPFields = [:], _ sequence: Body
    ) -> ServeResponse where Body.Element == ByteBuffer {
        .streaming(status: status, headers: headers) { writer in
            for try await piece in sequence { try await writer.write(piece) }
        }
    }

    /// Server-sent events (`text/event-stream`, not cached, each event sent as it is made).
    public static func eventStream(
        headers: HTTPFields = [:], _ send: @escaping @Sendable (ServerSentEvents) async throws -> Void
    ) -> ServeResponse {
        var headers = headers
        headers[.contentType] = "text/event-stream"
        headers[.cacheControl] = "no-cache"
        return .streaming(headers: headers) { writer in try await send(ServerSentEvents(writer)) }
    }

    public static func text(_ text: String, status: HTTPResponse.Status = .ok) -> ServeResponse {
        ServeResponse(status: status, headers: [.contentType: "text/plain; charset=utf-8"], body: ByteBuffer(string: text))
    }

    public static func json(_ value: JSONValue, status: HTTPResponse.Status = .ok) -> ServeResponse {
        ServeResponse(status: status, headers: [.contentType: "application/json"], body: ByteBuffer(string: value.jsonString()))
    }
}

/// What a replica knows about itself: identity, the resources it was granted, and the
/// environment it runs with (`OMP_NUM_THREADS` from its `num_cpus`, `CUDA_VISIBLE_DEVICES` from
/// its GPU grant, and `runtime_env.env_vars`).
public struct ReplicaContext: Sendable {
    public var replicaID: String
    public var app: String
    public var deployment: String
    public var nodeID: String
    /// The resources reserved for this replica.
    public var grant: ResourceSet
    public var gpuIDs: [String]
    /// The environment the replica runs with: the worker's own, then its grant, then runtime_env.
    public var environment: [String: String]
    public var userConfig: JSONValue?
    /// Lets CPU-bound work run on at most `num_cpus` threads at once (at least one).
    public var threads: ThreadBudget
    /// Reaches other deployments for `handle(_:app:)`: the node's routers (nil outside a node).
    public var caller: (any DeploymentCaller)?
    /// The multiplexed models this replica holds, reported with its node's heartbeats (a
    /// `ModelCache` made from this context keeps it).
    public var models: ReplicaModels

    public init(
        replicaID: String,
        app: String,
        deployment: String,
        nodeID: String,
        grant: ResourceSet,
        gpuIDs: [String],
        environment: [String: String],
        userConfig: JSONValue?,
        caller: (any DeploymentCaller)? = nil,
        models: ReplicaModels = ReplicaModels()
    ) {
        self.replicaID = replicaID
        self.app = app
        self.deployment = deployment
        self.nodeID = nodeID
        self.grant = grant
        self.gpuIDs = gpuIDs
        self.environment = environment
        self.userConfig = userConfig
        self.caller = caller
        self.models = models
        self.threads = ThreadBudget(threads: max(1, Int(grant[ResourceSet.cpu].doubleValue)))
    }
}

/// A deployment written in Swift: one instance per replica.
///
/// Replicas are actors on their worker, so an instance's `handle` may be called for several
/// requests at once (up to `max_ongoing_requests`); keep shared state in an actor, or make the
/// type itself one.
public protocol Deployment: Sendable {
    /// Answers one request.
    func handle(_ request: ServeRequest) async throws -> ServeResponse
    /// Called with a new `user_config` when only it changed (no restart), as Ray's `reconfigure`.
    func reconfigure(userConfig: JSONValue?) async throws
    /// Throws when the replica is unhealthy. The worker calls it every `health_check_period_s`;
    /// a call that throws, or takes longer than `health_check_timeout_s`, is a failed check, and
    /// three in a row get the replica replaced (Ray Serve's `check_health`).
    func checkHealth() async throws
    /// True for a deployment whose `handle` never blocks a thread and does no heavy CPU work
    /// (it only awaits): it then runs on the connection's event loop, which saves the two
    /// thread hops to the shared pool and back on every request. Default false: user code runs
    /// on the pool, where a slow handler cannot stall the node's sockets.
    var isNonBlocking: Bool { get }
}

extension Deployment {
    public func reconfigure(userConfig: JSONValue?) async throws {}
    public func checkHealth() async throws {}
    public var isNonBlocking: Bool { false }
}

/// Makes deployment instances by name: the built-in handlers, and any a custom worker binary
/// registers before it starts (`examples/custom-worker`).
public struct DeploymentRegistry: Sendable {
    public typealias Factory = @Sendable (ReplicaContext) async throws -> any Deployment
    private var factories: [String: Factory] = [:]

    public init() {}

    /// The handlers every stock binary has: `echo`, `sleep`, `cpu`, `env`, for composition and
    /// streaming `compose` and `tokens`, and for batching and multiplexing `batched` and
    /// `multiplexed`.
    public static var builtIn: DeploymentRegistry {
        var registry = DeploymentRegistry()
        registry.register("echo") { _ in EchoDeployment() }
        registry.register("sleep") { context in SleepDeployment(context: context) }
        registry.register("cpu") { context in CPUDeployment(context: context) }
        registry.register("env") { context in EnvDeployment(context: context) }
        registry.register("compose") { context in ComposeDeployment(context: context) }
        registry.register("tokens") { context in TokensDeployment(context: context) }
        registry.register("batched") { context in BatchedDeployment(context: context) }
        registry.register("multiplexed") { context in MultiplexedDeployment(context: context) }
        return registry
    }

    public mutating func register(_ name: String, _ factory: @escaping Factory) {
        self.factories[name] = factory
    }

    public var names: Set<String> { Set(self.factories.keys) }

    public func make(_ name: String, context: ReplicaContext) async throws -> any Deployment {
        guard let factory = self.factories[name] else {
            throw DeploymentError("no deployment handler named '\(name)' in this worker; known: \(self.names.sorted().joined(separator: ", "))")
        }
        return try await factory(context)
    }
}

public struct DeploymentError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Holds CPU-bound work to a number of threads (a replica's `num_cpus`), the way
/// OMP_NUM_THREADS holds a process replica: callers beyond the budget wait their turn.
///
/// The threads are the budget's own (a `NIOThreadPool` of `limit` threads, started on first
/// use and stopped when the budget goes): never the Swift concurrency pool, which has one
/// thread per core and runs every router, heartbeat and other replica of the node, nor an event
/// loop (STYLE.md, "The request path"). Work run inline there held those threads for as long as
/// it burned, so an `echo` beside two busy `cpu` replicas waited ~100 ms instead of ~1 ms.
public final class ThreadBudget: Sendable {
    public let limit: Int
    private let pool = NIOLockedValueBox<NIOThreadPool?>(nil)

    public init(threads: Int) {
        self.limit = max(1, threads)
    }

    /// Runs `work` on one of the budget's threads once one is free (in the order asked), and
    /// returns its result. A cancelled caller still waits for work already running: a thread
    /// cannot be interrupted.
    public func run<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        let pool = self.pool.withLockedValue { pool -> NIOThreadPool in
            if let pool { return pool }
            let started = NIOThreadPool(numberOfThreads: self.limit)
            started.start()
            pool = started
            return started
        }
        return try await pool.runIfActive(work)
    }

    deinit {
        self.pool.withLockedValue { $0 }?.shutdownGracefully { _ in }
    }
}
