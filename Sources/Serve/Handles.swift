import HTTPTypes
import NIOConcurrencyHelpers
import NIOCore
import ServeWire

/// Reaches a deployment through the routers of this node (the worker gives its replicas one):
/// local replicas first, power of two choices, the callee's `max_ongoing_requests` and
/// `max_queued_requests`, waiting through a cold start, counted as the callee's demand. It
/// answers as the HTTP ingress does (404 unknown deployment, 503, 502, 504) through `writer`.
public protocol DeploymentCaller: Sendable {
    func call(app: String, deployment: String, _ request: HTTPServerRequest, _ writer: any HTTPResponseWriter) async throws
}

extension ReplicaContext {
    /// A handle to deployment `deployment` of application `app` (nil: this replica's own).
    public func handle(_ deployment: String, app: String? = nil) -> DeploymentHandle {
        DeploymentHandle(app: app ?? self.app, deployment: deployment, caller: self.caller)
    }
}

/// Calls one deployment from another (Ray Serve's `DeploymentHandle`). A call runs in the
/// caller's task: cancel it (the caller's client went away, its deadline passed) and the
/// callee's work is cancelled too, down to its replica, on this node or another.
///
/// Answers are HTTP answers: a call that reached no replica returns the status the ingress would
/// have answered (503 over the callee's queue limit, 504 past `request_timeout_s`, ...), so
/// check `status`. It throws only when there is no answer to give: the call was cancelled, or
/// the response was cut short after it began.
public struct DeploymentHandle: Sendable {
    public let app: String
    public let deployment: String
    /// The multiplexed model its calls are for (sent as `serve_multiplexed_model_id`).
    public private(set) var multiplexedModelID: String?
    let caller: (any DeploymentCaller)?

    public init(app: String, deployment: String, caller: (any DeploymentCaller)?) {
        self.app = app
        self.deployment = deployment
        self.caller = caller
    }

    /// The same handle, its calls for multiplexed model `multiplexedModelID` (Ray's
    /// `handle.options(multiplexed_model_id=...)`): they go to a replica holding the model if
    /// one has room.
    public func options(multiplexedModelID: String?) -> DeploymentHandle {
        var handle = self
        handle.multiplexedModelID = multiplexedModelID
        return handle
    }

    /// Calls the deployment with `request` (its path is the one the callee sees) and returns the
    /// whole response (a streamed one is gathered to its end). The call runs in this task: no
    /// task or pipe of its own.
    public func call(_ request: ServeRequest) async throws -> ServeResponse {
        let (caller, forwarded) = try self.prepare(request)
        let collector = HandleCollector()
        do {
            try await caller.call(app: self.app, deployment: self.deployment, forwarded, collector)
        } catch {
            // Before the head, the call's own error; after it, a cut.
            guard collector.response != nil else { throw error }
            throw HandleResponseCut(description: "the response was cut short: \(error)")
        }
        guard let response = collector.response, collector.ended else {
            throw HandleResponseCut(description: collector.response == nil ? "the call ended without an answer" : "the response ended before its body did")
        }
        return response
    }

    /// Calls the deployment and returns its response as soon as its head arrives, the body
    /// streaming in as the callee writes it (relay it with `ServeResponse.streaming(status:
    /// headers:_:)`, or read it). Letting the body go before its end, or cancelling the task
    /// waiting for the head, cancels the rest of the call.
    public func stream(_ request: ServeRequest) async throws -> ServeStreamingResponse {
        let (caller, forwarded) = try self.prepare(request)
        let receiver = HandleReceiver()
        let (app, deployment) = (self.app, self.deployment)
        // The call outlives this function (its body streams on), so it runs in a task of its
        // own, tied to the caller's by cancellation: here while the head is awaited, then
        // through the body (a body let go cancels the call).
        let call = Task {
            do {
                try await caller.call(app: app, deployment: deployment, forwarded, receiver)
                receiver.ended(nil)
            } catch {
                receiver.ended(error)
            }
        }
        receiver.pipe.onReaderGone { call.cancel() }
        let head = try await withTaskCancellationHandler {
            try await receiver.head()
        } onCancel: {
            call.cancel()
        }
        return ServeStreamingResponse(status: head.status, headers: head.headerFields, body: receiver.pipe.takeBody())
    }

    /// The node's caller, and `request` as it goes to it (with the multiplexed model, if any).
    private func prepare(_ request: ServeRequest) throws -> (any DeploymentCaller, HTTPServerRequest) {
        guard let caller = self.caller else {
            throw DeploymentError("this replica has no handles: it does not run on a node")
        }
        var headers = request.headers
        if let model = self.multiplexedModelID { headers[.serveMultiplexedModelID] = model }
        let forwarded = HTTPServerRequest(
            head: HTTPRequest(method: request.method, scheme: "http", authority: nil, path: request.path, headerFields: headers),
            body: request.body,
            hasBody: request.hasBody)
        return (caller, forwarded)
    }
}

/// The writer a whole-answer handle call (`call`) answers through: it gathers the response.
final class HandleCollector: HTTPResponseWriter {
    private struct State {
        var response: ServeResponse?
        var ended = false
    }
    private let state = NIOLockedValueBox(State())

    /// The head and what came of the body, once a head came.
    var response: ServeResponse? { self.state.withLockedValue { $0.response } }
    /// Whether the body ended (not cut).
    var ended: Bool { self.state.withLockedValue { $0.ended } }

    func respond(_ head: HTTPResponse, body: ByteBuffer?, trailers: HTTPFields?) async throws {
        self.state.withLockedValue {
            $0.response = ServeResponse(status: head.status, headers: head.headerFields, body: body ?? ByteBuffer())
            $0.ended = true
        }
    }

    func writeHead(_ head: HTTPResponse) async throws {
        self.state.withLockedValue { $0.response = ServeResponse(status: head.status, headers: head.headerFields) }
    }

    func write(_ chunk: ByteBuffer) async throws {
        var chunk = chunk
        _ = self.state.withLockedValue { $0.response?.body.writeBuffer(&chunk) }
    }

    func finish(trailers: HTTPFields?) async throws {
        self.state.withLockedValue { $0.ended = true }
    }
}

/// A response as it arrives through a handle: the head, then the body as the callee writes it.
public struct ServeStreamingResponse: Sendable {
    public var status: HTTPResponse.Status
    public var headers: HTTPFields
    /// The body, piece by piece; reading it throws if the response is cut short.
    public var body: HTTPBody
}

/// A handle call's response cut short after it began (the callee or its node failed, or the
/// callee's stream threw).
public struct HandleResponseCut: Error, Sendable, CustomStringConvertible {
    public var description: String
}

/// The writer a handle call answers through: the head goes to the caller waiting in `head()`,
/// the body into a pipe the caller reads (its writes wait while the caller is behind).
final class HandleReceiver: HTTPResponseWriter {
    private struct State {
        var head: HTTPResponse?
        var waiter: CheckedContinuation<HTTPResponse, any Error>?
        var failure: (any Error)?
    }
    private let state = NIOLockedValueBox(State())
    let pipe = HTTPBodyPipe()

    /// The response head, once the call has one (or its error). Not itself cancellable: the
    /// caller cancels the call, which then ends with an error.
    func head() async throws -> HTTPResponse {
        try await withCheckedThrowingContinuation { continuation in
            let ready = self.state.withLockedValue { state -> Result<HTTPResponse, any Error>? in
                if let head = state.head { return .success(head) }
                if let failure = state.failure { return .failure(failure) }
                state.waiter = continuation
                return nil
            }
            if let ready { continuation.resume(with: ready) }
        }
    }

    private func deliver(_ head: HTTPResponse) {
        let waiter = self.state.withLockedValue { state -> CheckedContinuation<HTTPResponse, any Error>? in
            state.head = head
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: head)
    }

    /// The call returned: nil when it answered, else its error. Before a head, the caller gets
    /// the error; after, the body ends cut short with it (or ends, if the call finished it).
    func ended(_ error: (any Error)?) {
        let waiter = self.state.withLockedValue { state -> CheckedContinuation<HTTPResponse, any Error>? in
            guard state.head == nil else { return nil }
            state.failure = error ?? HandleResponseCut(description: "the call ended without an answer")
            defer { state.waiter = nil }
            return state.waiter
        }
        if let waiter {
            waiter.resume(throwing: error ?? HandleResponseCut(description: "the call ended without an answer"))
        } else if let error {
            self.pipe.fail(HandleResponseCut(description: "the response was cut short: \(error)"))
        } else {
            // An answer the callee never finished (it threw after its head) ends as a cut too.
            self.pipe.fail(HandleResponseCut(description: "the response ended before its body did"))
        }
    }

    func respond(_ head: HTTPResponse, body: ByteBuffer?, trailers: HTTPFields?) async throws {
        self.deliver(head)
        if let body { try await self.pipe.write(body) }
        self.pipe.finish(trailers: trailers)
    }

    func writeHead(_ head: HTTPResponse) async throws {
        self.deliver(head)
    }

    func write(_ chunk: ByteBuffer) async throws {
        try await self.pipe.write(chunk)
    }

    func finish(trailers: HTTPFields?) async throws {
        self.pipe.finish(trailers: trailers)
    }
}
