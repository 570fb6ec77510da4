import Foundation
import HTTPTypes
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Serve
import ServeCore
import ServeProto
import ServeProxy
import ServeWire

/// What a replica reports about its load and lifecycle.
public struct ReplicaStatus: Sendable {
    public var state: PBReplicaState
    /// Requests running now. A replica queues none: one past `max_ongoing_requests` is
    /// refused to the router, which holds it (and counts it for the autoscaler).
    public var running: Int
    public var message: String
}

/// One replica on this worker: it owns the deployment instance (or the child process), counts
/// the requests it is running, admits at most `max_ongoing_requests` at once (one more is
/// refused back to the router, which tries another replica or waits), and drains on stop: no new
/// requests, in-flight ones finish within `graceful_shutdown_timeout_s`.
///
/// Admission and bookkeeping are a few lines under a lock, so a request pays no actor hop and
/// no task for them: it runs in the caller's task (the proxy's, for a request from this node).
final class Replica: Sendable {
    let id: String
    let app: String
    let deployment: String
    let specVersion: String
    let grant: PBResourceGrant
    /// `graceful_shutdown_timeout_s`: how long in-flight requests may take when it stops.
    let gracefulShutdownTimeout: Duration
    /// `health_check_timeout_s`: how long a health check may take, and `reconfigure(userConfig:)`
    /// too before the replica is failed (the bound the deployment already gives its user code).
    let healthCheckTimeout: Duration
    /// The last change (`enqueueChange`) queued, which the next one waits for.
    private let lastChange = NIOLockedValueBox<Task<Void, Never>?>(nil)
    private let body: ReplicaBody
    /// The multiplexed models it holds, for the heartbeats: a Swift replica's `ModelCache`
    /// keeps them; for a process replica, the models last sent to it.
    let models: ReplicaModels
    private let logger: Logger
    private let state: NIOLockedValueBox<State>

    private struct State {
        var ongoing = 0
        var maxOngoing: Int
        var state: ReplicaState = .starting
        var message = ""
        /// Who waits for the last request to end (`stop`), by number: a waiter is resumed once,
        /// by whichever comes first, that or its timeout.
        var drained: [Int: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter = 0
        /// The tasks running a Swift replica's requests now, to cancel when
        /// `graceful_shutdown_timeout_s` runs out while it stops.
        var work: [Int: RunningTask] = [:]
        var nextWork = 0
    }

    /// A request's task, kept only while that request runs here (it is removed before the
    /// request returns), so that `stop` can cancel it.
    private struct RunningTask: @unchecked Sendable {
        let task: UnsafeCurrentTask
    }

    enum ReplicaBody: Sendable {
        case swift(SwiftDeploymentBox)
        case process(ProcessReplica)
    }

    enum Admission {
        case admitted
        case full
        case notRunning(ReplicaState)
    }

    init(start: PBStartReplica, body: ReplicaBody, models: ReplicaModels = ReplicaModels(), logger: Logger) {
        self.id = start.replicaID
        self.app = start.appName
        self.deployment = start.deploymentName
        self.specVersion = start.spec.version
        self.grant = start.grant
        self.gracefulShutdownTimeout = .milliseconds(Int(start.spec.gracefulShutdownTimeoutMs > 0 ? start.spec.gracefulShutdownTimeoutMs : 20_000))
        self.healthCheckTimeout = .milliseconds(Int(start.spec.healthCheckTimeoutMs > 0 ? start.spec.healthCheckTimeoutMs : 30_000))
        self.body = body
        self.models = models
        self.logger = logger
        self.state = NIOLockedValueBox(State(maxOngoing: max(1, Int(start.spec.maxOngoingRequests))))
    }

    var status: ReplicaStatus {
        self.state.withLockedValue { ReplicaStatus(state: PBReplicaState($0.state), running: $0.ongoing, message: $0.message) }
    }

    /// Moves along `ServeCore.ReplicaState`'s legal transitions; an illegal move is a bug, logged
    /// and not made.
    func setState(_ next: ReplicaState, message: String = "") {
        let from = self.state.withLockedValue { state -> ReplicaState? in
            guard state.state.canMove(to: next) else { return state.state }
            state.state = next
            state.message = message
            return nil
        }
        if let from {
            self.logger.error("a replica state change that its lifecycle does not allow (a bug); ignored", metadata: ["from": "\(from)", "to": "\(next)"])
        }
    }

    func setMaxOngoing(_ value: Int) {
        self.state.withLockedValue { $0.maxOngoing = max(1, value) }
    }

    private func admit() -> Admission {
        self.state.withLockedValue { state in
            guard state.state == .running else { return .notRunning(state.state) }
            guard state.ongoing < state.maxOngoing else { return .full }
            state.ongoing += 1
            return .admitted
        }
    }

    private func finishedOne() {
        let waiters = self.state.withLockedValue { state -> [CheckedContinuation<Void, Never>] in
            state.ongoing -= 1
            guard state.ongoing == 0 else { return [] }
            defer { state.drained.removeAll() }
            return Array(state.drained.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Serves one request that came over the data plane from another node's proxy, or refuses
    /// it with a 503 (`serve-refused`) that proxy can retry elsewhere.
    func serve(_ request: HTTPServerRequest, _ writer: any HTTPResponseWriter) async throws {
        if case .refused(let reason) = try await self.serveLocal(request, writer) {
            let message = reason == "full" ? "replica \(self.id) is at max_ongoing_requests" : "replica \(self.id) is not running (\(reason))"
            try await Self.refuse(writer, reason: reason, message)
        }
    }

    /// Serves one request in the caller's task (from this node's proxy, or `serve` above);
    /// refused, it reads and writes nothing.
    func serveLocal(_ request: HTTPServerRequest, _ writer: any HTTPResponseWriter) async throws -> LocalAnswer {
        switch self.admit() {
        case .full:
            return .refused("full")
        case .notRunning(let state):
            return .refused("\(state)")
        case .admitted:
            break
        }
        defer { self.finishedOne() }
        switch self.body {
        case .swift(let box):
            let number = self.track()
            defer { self.untrack(number) }
            return .answered(try await box.serve(request, writer, logger: self.logger, replicaID: self.id))
        case .process(let process):
            // The process cannot say which models it holds: it is taken to hold the last ones
            // sent to it (the header passes through to it unchanged).
            if let model = request.head.headerFields[.serveMultiplexedModelID], !model.isEmpty { self.models.use(model) }
            let capture = StatusCapture(writer)
            try await process.serve(request, capture)
            return .answered(capture.status)
        }
    }

    static func refuse(_ writer: any HTTPResponseWriter, reason: String, _ message: String) async throws {
        var fields = HTTPFields()
        fields[ServeHeaders.refused] = reason
        fields[.contentType] = "text/plain; charset=utf-8"
        try await writer.respond(HTTPResponse(status: .serviceUnavailable, headerFields: fields), body: ByteBuffer(string: message + "\n"))
    }

    /// Records the current task (cancelled if the replica stops past its graceful timeout).
    private func track() -> Int {
        withUnsafeCurrentTask { task in
            self.state.withLockedValue { state in
                state.nextWork += 1
                if let task { state.work[state.nextWork] = RunningTask(task: task) }
                return state.nextWork
            }
        }
    }

    private func untrack(_ number: Int) {
        self.state.withLockedValue { _ = $0.work.removeValue(forKey: number) }
    }

    /// Waits until no request is running (resumed by the last one to finish), or `timeout`.
    private func waitUntilIdle(timeout: Duration) async {
        let number: Int? = self.state.withLockedValue { state in
            guard state.ongoing > 0 else { return nil }
            state.nextWaiter += 1
            return state.nextWaiter
        }
        guard let number else { return }
        let timer = Task {
            try? await Task.sleep(for: timeout)
            self.state.withLockedValue { $0.drained.removeValue(forKey: number) }?.resume()
        }
        await withCheckedContinuation { continuation in
            let idle = self.state.withLockedValue { state -> Bool in
                guard state.ongoing > 0 else { return true }
                state.drained[number] = continuation
                return false
            }
            if idle { continuation.resume() }
        }
        timer.cancel()
    }

    /// Stops taking requests, lets in-flight ones finish for up to `timeout`, then stops the body
    /// (a child process gets SIGTERM, then SIGKILL). Ray's graceful shutdown.
    func stop(timeout: Duration) async {
        self.setState(.stopping)
        await self.waitUntilIdle(timeout: timeout)
        // Swift requests still running are cancelled (cooperatively: they answer 503 as soon as
        // they notice); a child process is stopped below, cutting its requests short.
        self.state.withLockedValue { state in
            for running in state.work.values { running.task.cancel() }
        }
        if case .process(let process) = self.body {
            await process.terminate(grace: timeout)
        }
        self.setState(.stopped)
    }

    /// A process replica's output file (nil for a Swift replica, which logs to its worker's log).
    var logURL: URL? {
        if case .process(let process) = self.body { return process.logURL }
        return nil
    }

    /// One health check: a Swift deployment's `checkHealth()`; for a command deployment, that
    /// its process is alive and answers (`health_path` with 2xx, else `GET /` with anything).
    func checkHealth() async throws {
        switch self.body {
        case .swift(let box):
            try await box.instance.checkHealth()
        case .process(let process):
            try await process.checkHealth(timeout: self.healthCheckTimeout)
        }
    }

    /// Runs `change` after every change queued before it (the head's order), aside from the
    /// caller: the caller returns at once.
    func enqueueChange(_ change: @escaping @Sendable () async -> Void) {
        self.lastChange.withLockedValue { last in
            let previous = last
            last = Task {
                await previous?.value
                await change()
            }
        }
    }

    func reconfigure(userConfig: JSONValue?) async throws {
        switch self.body {
        case .swift(let box):
            try await box.instance.reconfigure(userConfig: userConfig)
        case .process:
            self.models.setCapacity(Multiplexing.maxModels(userConfig: userConfig))
        }
    }
}

/// A Swift deployment instance and how requests reach it.
struct SwiftDeploymentBox: Sendable {
    let instance: any Deployment

    /// Returns the status answered.
    func serve(_ request: HTTPServerRequest, _ writer: any HTTPResponseWriter, logger: Logger, replicaID: String) async throws -> Int {
        let serveRequest = ServeRequest(
            method: request.head.method,
            path: request.head.path ?? "/",
            routePrefix: request.head.headerFields[ServeHeaders.forwardedPrefix] ?? "/",
            headers: request.head.headerFields,
            body: request.body,
            hasBody: request.hasBody
        )
        let response: ServeResponse
        do {
            response = try await self.run { try await self.instance.handle(serveRequest) }
        } catch where Task.isCancelled {
            // Its replica stopped and `graceful_shutdown_timeout_s` ran out first, or the client
            // went away (then nobody reads this).
            try await writer.respond(
                .serviceUnavailable, text: "replica \(replicaID) was stopped before this request finished (graceful_shutdown_timeout_s passed)\n")
            return 503
        } catch {
            logger.warning("deployment raised an error", metadata: ["error": "\(error)"])
            try await writer.respond(.internalServerError, text: "the deployment failed: \(error)\n")
            return 500
        }
        let head = HTTPResponse(status: response.status, headerFields: response.headers)
        guard let stream = response.stream else {
            try await writer.respond(head, body: response.body)
            return response.status.code
        }
        // Streamed: each piece goes out as it is written. An error from here on can only cut
        // the body short, which the server shows the client as a cut.
        try await writer.writeHead(head)
        if response.body.readableBytes > 0 { try await writer.write(response.body) }
        try await self.run { try await stream(ServeBodyWriter(writer)) }
        try await writer.finish(trailers: nil)
        return response.status.code
    }

    /// Runs user code where it belongs: on the connection's event loop for a deployment that
    /// only awaits, else on the shared pool, where a slow handler cannot stall the node's sockets.
    private func run<T: Sendable>(_ work: () async throws -> T) async throws -> T {
        if self.instance.isNonBlocking { return try await work() }
        return try await withTaskExecutorPreference(globalConcurrentExecutor) { try await work() }
    }
}

/// Passes a response on and keeps its status (a process replica's answer, for the proxy's
/// metrics).
final class StatusCapture: HTTPResponseWriter, @unchecked Sendable {  // `status` is written before it is read, by one task
    private let writer: any HTTPResponseWriter
    private(set) var status = 0

    init(_ writer: any HTTPResponseWriter) {
        self.writer = writer
    }

    func respond(_ head: HTTPResponse, body: ByteBuffer?, trailers: HTTPFields?) async throws {
        self.status = head.status.code
        try await self.writer.respond(head, body: body, trailers: trailers)
    }

    func writeHead(_ head: HTTPResponse) async throws {
        self.status = head.status.code
        try await self.writer.writeHead(head)
    }

    func write(_ chunk: ByteBuffer) async throws {
        try await self.writer.write(chunk)
    }

    func finish(trailers: HTTPFields?) async throws {
        try await self.writer.finish(trailers: trailers)
    }
}

extension PBReplicaState {
    /// A replica's state as the control protocol carries it.
    init(_ state: ReplicaState) {
        switch state {
        case .pending: self = .pending
        case .starting: self = .starting
        case .running: self = .running
        case .stopping: self = .stopping
        case .stopped: self = .stopped
        case .failed: self = .failed
        }
    }
}
