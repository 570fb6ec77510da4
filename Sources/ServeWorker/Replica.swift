import Foundation
import HTTPTypes
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Serve
import ServeCore
import ServeProto
import ServeWire

/// What a replica reports about its load and lifecycle.
public struct ReplicaStatus: Sendable {
    public var state: PBReplicaState
    /// Requests running now. A replica queues none: one past `max_ongoing_requests` is
    /// refused to the router, which holds it (and counts it for the autoscaler).
    public var running: Int
    public var message: String
}

/// One replica on this worker, as an actor: it owns the deployment instance (or the child
/// process), counts the requests it is running, admits at most `max_ongoing_requests` at once
/// (one more is refused back to the router, which tries another replica or waits), and drains on
/// stop: no new requests, in-flight ones finish within `graceful_shutdown_timeout_s`.
///
/// Only admission and bookkeeping are isolated; the request itself runs outside the actor, so a
/// replica serves its requests concurrently.
actor Replica {
    nonisolated let id: String
    nonisolated let app: String
    nonisolated let deployment: String
    nonisolated let specVersion: String
    nonisolated let grant: PBResourceGrant
    /// `graceful_shutdown_timeout_s`: how long in-flight requests may take when it stops.
    nonisolated let gracefulShutdownTimeout: Duration
    /// `health_check_timeout_s`: how long a health check may take, and `reconfigure(userConfig:)`
    /// too before the replica is failed (the bound the deployment already gives its user code).
    nonisolated let healthCheckTimeout: Duration
    /// The last change (`enqueueChange`) queued, which the next one waits for.
    private nonisolated let lastChange = NIOLockedValueBox<Task<Void, Never>?>(nil)
    private nonisolated let body: ReplicaBody
    private nonisolated let logger: Logger

    private var ongoing = 0
    private var maxOngoing: Int
    private var state: PBReplicaState = .starting
    private var message = ""
    /// Who waits for the last request to end (`stop`), by number: a waiter is resumed once,
    /// by whichever comes first, that or its timeout.
    private var drained: [Int: CheckedContinuation<Void, Never>] = [:]
    private var nextWaiter = 0
    /// Requests of a Swift replica running now, to cancel when `graceful_shutdown_timeout_s`
    /// runs out while it stops.
    private var work: [Int: Task<Void, any Error>] = [:]
    private var nextWork = 0

    enum ReplicaBody: Sendable {
        case swift(SwiftDeploymentBox)
        case process(ProcessReplica)
    }

    enum Admission {
        case admitted
        case full
        case notRunning(PBReplicaState)
    }

    init(start: PBStartReplica, body: ReplicaBody, logger: Logger) {
        self.id = start.replicaID
        self.app = start.appName
        self.deployment = start.deploymentName
        self.specVersion = start.spec.version
        self.grant = start.grant
        self.gracefulShutdownTimeout = .milliseconds(Int(start.spec.gracefulShutdownTimeoutMs > 0 ? start.spec.gracefulShutdownTimeoutMs : 20_000))
        self.healthCheckTimeout = .milliseconds(Int(start.spec.healthCheckTimeoutMs > 0 ? start.spec.healthCheckTimeoutMs : 30_000))
        self.body = body
        self.logger = logger
        self.maxOngoing = max(1, Int(start.spec.maxOngoingRequests))
    }

    var status: ReplicaStatus {
        ReplicaStatus(state: self.state, running: self.ongoing, message: self.message)
    }

    func setState(_ state: PBReplicaState, message: String = "") {
        self.state = state
        self.message = message
    }

    func setMaxOngoing(_ value: Int) {
        self.maxOngoing = max(1, value)
    }

    private func admit() -> Admission {
        guard self.state == .running else { return .notRunning(self.state) }
        guard self.ongoing < self.maxOngoing else { return .full }
        self.ongoing += 1
        return .admitted
    }

    private func finishedOne() {
        self.ongoing -= 1
        guard self.ongoing == 0 else { return }
        let waiters = self.drained.values
        self.drained.removeAll()
        for waiter in waiters { waiter.resume() }
    }

    /// Serves one data-plane request, or refuses it with a 503 the router can retry elsewhere.
    nonisolated func serve(_ request: HTTPServerRequest, _ writer: any HTTPResponseWriter) async throws {
        switch await self.admit() {
        case .full:
            return try await Self.refuse(writer, reason: "full", "replica \(self.id) is at max_ongoing_requests")
        case .notRunning(let state):
            return try await Self.refuse(writer, reason: "\(state)", "replica \(self.id) is not running (\(state))")
        case .admitted:
            break
        }
        do {
            switch self.body {
            case .swift(let box):
                // On its own task, so that a stop past the graceful timeout can cancel it.
                let logger = self.logger
                let replicaID = self.id
                let work = Task { try await box.serve(request, writer, logger: logger, replicaID: replicaID) }
                let number = await self.track(work)
                do {
                    try await withTaskCancellationHandler { try await work.value } onCancel: { work.cancel() }
                } catch {
                    await self.untrack(number)
                    throw error
                }
                await self.untrack(number)
            case .process(let process):
                try await process.serve(request, writer)
            }
        } catch {
            await self.finishedOne()
            throw error
        }
        await self.finishedOne()
    }

    static func refuse(_ writer: any HTTPResponseWriter, reason: String, _ message: String) async throws {
        var fields = HTTPFields()
        fields[ServeHeaders.refused] = reason
        fields[.contentType] = "text/plain; charset=utf-8"
        try await writer.respond(HTTPResponse(status: .serviceUnavailable, headerFields: fields), body: ByteBuffer(string: message + "\n"))
    }

    private func track(_ task: Task<Void, any Error>) -> Int {
        self.nextWork += 1
        self.work[self.nextWork] = task
        return self.nextWork
    }

    private func untrack(_ number: Int) {
        self.work[number] = nil
    }

    /// Waits until no request is running (resumed by the last one to finish), or `timeout`.
    private func waitUntilIdle(timeout: Duration) async {
        if self.ongoing == 0 { return }
        self.nextWaiter += 1
        let number = self.nextWaiter
        let timer = Task {
            try? await Task.sleep(for: timeout)
            self.giveUpWaiting(number)
        }
        await withCheckedContinuation { self.drained[number] = $0 }
        timer.cancel()
    }

    private func giveUpWaiting(_ number: Int) {
        self.drained.removeValue(forKey: number)?.resume()
    }

    /// Stops taking requests, lets in-flight ones finish for up to `timeout`, then stops the body
    /// (a child process gets SIGTERM, then SIGKILL). Ray's graceful shutdown.
    func stop(timeout: Duration) async {
        self.state = .stopping
        await self.waitUntilIdle(timeout: timeout)
        // Swift requests still running are cancelled (cooperatively: they answer 503 as soon as
        // they notice); a child process is stopped below, cutting its requests short.
        for task in self.work.values { task.cancel() }
        if case .process(let process) = self.body {
            await process.terminate(grace: timeout)
        }
        self.state = .stopped
    }

    /// One health check: a Swift deployment's `checkHealth()`; for a command deployment, that
    /// its process is alive and answers (`health_path` with 2xx, else `GET /` with anything).
    nonisolated func checkHealth() async throws {
        switch self.body {
        case .swift(let box):
            try await box.instance.checkHealth()
        case .process(let process):
            try await process.checkHealth(timeout: self.healthCheckTimeout)
        }
    }

    /// Runs `change` after every change queued before it (the head's order), aside from the
    /// caller: the caller returns at once.
    nonisolated func enqueueChange(_ change: @escaping @Sendable () async -> Void) {
        self.lastChange.withLockedValue { last in
            let previous = last
            last = Task {
                await previous?.value
                await change()
            }
        }
    }

    nonisolated func reconfigure(userConfig: JSONValue?) async throws {
        if case .swift(let box) = self.body {
            try await box.instance.reconfigure(userConfig: userConfig)
        }
    }
}

/// A Swift deployment instance and how requests reach it.
struct SwiftDeploymentBox: Sendable {
    let instance: any Deployment

    func serve(_ request: HTTPServerRequest, _ writer: any HTTPResponseWriter, logger: Logger, replicaID: String) async throws {
        let serveRequest = ServeRequest(
            method: request.head.method,
            path: request.head.path ?? "/",
            routePrefix: request.head.headerFields[ServeHeaders.forwardedPrefix] ?? "/",
            headers: request.head.headerFields,
            body: request.body
        )
        let response: ServeResponse
        do {
            // User code runs on the shared pool, never on the connection's event loop.
            response = try await withTaskExecutorPreference(globalConcurrentExecutor) {
                try await self.instance.handle(serveRequest)
            }
        } catch where Task.isCancelled {
            // Its replica stopped and `graceful_shutdown_timeout_s` ran out first.
            try await writer.respond(
                HTTPResponse(status: .serviceUnavailable, headerFields: [.contentType: "text/plain; charset=utf-8"]),
                body: ByteBuffer(string: "replica \(replicaID) was stopped before this request finished (graceful_shutdown_timeout_s passed)\n")
            )
            return
        } catch {
            logger.warning("deployment raised an error", metadata: ["error": "\(error)"])
            try await writer.respond(
                HTTPResponse(status: .internalServerError, headerFields: [.contentType: "text/plain; charset=utf-8"]),
                body: ByteBuffer(string: "the deployment failed: \(error)\n")
            )
            return
        }
        try await writer.respond(HTTPResponse(status: response.status, headerFields: response.headers), body: response.body)
    }
}
