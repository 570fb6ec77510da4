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
    public var running: Int
    public var queued: Int
    public var message: String
}

/// One replica on this worker: its admission control (`max_ongoing_requests`), its lifecycle,
/// and the code that answers requests (a Swift deployment or a child process).
///
/// Admission is a lock-protected counter, not an actor hop, since every request passes it.
final class Replica: Sendable {
    let id: String
    let app: String
    let deployment: String
    let specVersion: String
    let grant: PBResourceGrant
    private let body: ReplicaBody
    private let logger: Logger

    private struct Counters {
        var ongoing = 0
        var maxOngoing: Int
        var state: PBReplicaState = .starting
        var message = ""
        var drained: [CheckedContinuation<Void, Never>] = []
    }

    private let counters: NIOLockedValueBox<Counters>

    enum ReplicaBody: Sendable {
        case swift(SwiftDeploymentBox)
        case process(ProcessReplica)
    }

    init(start: PBStartReplica, body: ReplicaBody, logger: Logger) {
        self.id = start.replicaID
        self.app = start.appName
        self.deployment = start.deploymentName
        self.specVersion = start.spec.version
        self.grant = start.grant
        self.body = body
        self.logger = logger
        self.counters = NIOLockedValueBox(Counters(maxOngoing: max(1, Int(start.spec.maxOngoingRequests))))
    }

    var status: ReplicaStatus {
        self.counters.withLockedValue { ReplicaStatus(state: $0.state, running: $0.ongoing, queued: 0, message: $0.message) }
    }

    func setState(_ state: PBReplicaState, message: String = "") {
        self.counters.withLockedValue {
            $0.state = state
            $0.message = message
        }
    }

    func setMaxOngoing(_ value: Int) {
        self.counters.withLockedValue { $0.maxOngoing = max(1, value) }
    }

    /// Serves one data-plane request, or refuses it with a 503 the router can retry elsewhere.
    func serve(_ request: HTTPServerRequest, _ writer: any HTTPResponseWriter) async throws {
        enum Admission { case admitted, full, notRunning(PBReplicaState) }
        let admission: Admission = self.counters.withLockedValue { counters in
            guard counters.state == .running else { return .notRunning(counters.state) }
            guard counters.ongoing < counters.maxOngoing else { return .full }
            counters.ongoing += 1
            return .admitted
        }
        switch admission {
        case .full:
            return try await Self.refuse(writer, reason: "full", "replica \(self.id) is at max_ongoing_requests")
        case .notRunning(let state):
            return try await Self.refuse(writer, reason: "\(state)", "replica \(self.id) is not running (\(state))")
        case .admitted:
            break
        }
        defer { self.finishedOne() }
        switch self.body {
        case .swift(let box):
            try await box.serve(request, writer, logger: self.logger)
        case .process(let process):
            try await process.serve(request, writer)
        }
    }

    static func refuse(_ writer: any HTTPResponseWriter, reason: String, _ message: String) async throws {
        var fields = HTTPFields()
        fields[ServeHeaders.refused] = reason
        fields[.contentType] = "text/plain; charset=utf-8"
        try await writer.respond(HTTPResponse(status: .serviceUnavailable, headerFields: fields), body: ByteBuffer(string: message + "\n"))
    }

    private func finishedOne() {
        let waiters: [CheckedContinuation<Void, Never>] = self.counters.withLockedValue { counters in
            counters.ongoing -= 1
            guard counters.ongoing == 0 else { return [] }
            defer { counters.drained.removeAll() }
            return counters.drained
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Stops taking requests, lets in-flight ones finish for up to `timeout`, then stops the body
    /// (a child process gets SIGTERM, then SIGKILL). Ray's graceful shutdown.
    func stop(timeout: Duration) async {
        let idle: Bool = self.counters.withLockedValue { counters in
            counters.state = .stopping
            return counters.ongoing == 0
        }
        if !idle {
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    await withCheckedContinuation { continuation in
                        let already = self.counters.withLockedValue { counters -> Bool in
                            if counters.ongoing == 0 { return true }
                            counters.drained.append(continuation)
                            return false
                        }
                        if already { continuation.resume() }
                    }
                }
                group.addTask { try? await Task.sleep(for: timeout) }
                await group.next()
                group.cancelAll()
            }
            // A waiter left behind by the timeout is resumed when the last request ends.
        }
        if case .process(let process) = self.body {
            await process.terminate(grace: timeout)
        }
        self.setState(.stopped)
    }

    func reconfigure(userConfig: JSONValue?) async throws {
        if case .swift(let box) = self.body {
            try await box.instance.reconfigure(userConfig: userConfig)
        }
    }

    /// Health of the replica's code: a Swift deployment's `checkHealth`, a process that is still
    /// running (and answers its health path, if it has one).
    func checkHealth() async throws {
        switch self.body {
        case .swift(let box): try await box.instance.checkHealth()
        case .process(let process): try await process.checkHealth()
        }
    }
}

/// A Swift deployment instance and how requests reach it.
struct SwiftDeploymentBox: Sendable {
    let instance: any Deployment
    let routePrefixDefault: String

    func serve(_ request: HTTPServerRequest, _ writer: any HTTPResponseWriter, logger: Logger) async throws {
        let serveRequest = ServeRequest(
            method: request.head.method,
            path: request.head.path ?? "/",
            routePrefix: request.head.headerFields[ServeHeaders.forwardedPrefix] ?? self.routePrefixDefault,
            headers: request.head.headerFields,
            body: request.body
        )
        let response: ServeResponse
        do {
            // User code runs on the shared pool, never on the connection's event loop.
            response = try await withTaskExecutorPreference(globalConcurrentExecutor) {
                try await self.instance.handle(serveRequest)
            }
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
