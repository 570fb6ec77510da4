import HTTPTypes
import NIOConcurrencyHelpers
import NIOCore
import Serve
import ServeCore
import ServeWire
import Testing

/// `DeploymentHandle` in process, against a stand-in for the node's routers that answers as a
/// callee would: what a call returns when, what letting go of it or cancelling it does.
@Suite("Deployment handles")
struct HandleTests {
    /// Answers each call with `answer`, and records what happened to it.
    final class Callee: DeploymentCaller {
        let answer: @Sendable (HTTPServerRequest, any HTTPResponseWriter) async throws -> Void
        let calls = NIOLockedValueBox<[(app: String, deployment: String, path: String)]>([])
        let cancelled = AsyncStream<Void>.makeStream()

        init(_ answer: @escaping @Sendable (HTTPServerRequest, any HTTPResponseWriter) async throws -> Void) {
            self.answer = answer
        }

        func call(app: String, deployment: String, _ request: HTTPServerRequest, _ writer: any HTTPResponseWriter) async throws {
            self.calls.withLockedValue { $0.append((app, deployment, request.head.path ?? "")) }
            do {
                try await self.answer(request, writer)
            } catch {
                if Task.isCancelled || error is CancellationError || error is HTTPBodyPipe.ReaderGone { self.cancelled.continuation.yield() }
                throw error
            }
        }

        /// Waits (at most `timeout`) until a call saw it was cancelled.
        func waitForCancellation(timeout: Duration = .seconds(10)) async throws {
            let stream = self.cancelled.stream
            try await withThrowingTaskGroup(of: Bool.self) { group in
                group.addTask {
                    for await _ in stream { return true }
                    return false
                }
                group.addTask {
                    try await Task.sleep(for: timeout)
                    return false
                }
                let seen = try await group.next() ?? false
                group.cancelAll()
                #expect(seen, "the call was not cancelled within \(timeout)")
            }
        }
    }

    static func context(_ caller: any DeploymentCaller) -> ReplicaContext {
        ReplicaContext(
            replicaID: "Front#1", app: "shop", deployment: "Front", nodeID: "n-1", grant: ResourceSet(), gpuIDs: [],
            environment: [:], userConfig: nil, caller: caller)
    }

    @Test("call gathers a streamed answer whole; the request reaches the deployment named, of this app by default")
    func callGathers() async throws {
        let callee = Callee { request, writer in
            let body = try await request.body.collect(upTo: 1 << 20)
            try await writer.writeHead(HTTPResponse(status: .created, headerFields: [.contentType: "text/plain"]))
            for piece in ["a", "b", String(buffer: body)] { try await writer.write(ByteBuffer(string: piece)) }
            try await writer.finish(trailers: nil)
        }
        let context = Self.context(callee)
        let answer = try await context.handle("Model").call(ServeRequest(method: .post, path: "/x?y=1", body: ByteBuffer(string: "c")))
        #expect(answer.status == .created && String(buffer: answer.body) == "abc")
        #expect(answer.headers[.contentType] == "text/plain")
        _ = try await context.handle("Env", app: "other").call(ServeRequest(path: "/"))
        let calls = callee.calls.withLockedValue { $0.map { "\($0.app)/\($0.deployment)\($0.path)" } }
        #expect(calls == ["shop/Model/x?y=1", "other/Env/"])
    }

    @Test("stream returns with the head, while the callee is still writing; the body then comes piece by piece")
    func streamReturnsAtTheHead() async throws {
        let gate = AsyncStream<Void>.makeStream()
        let callee = Callee { _, writer in
            try await writer.writeHead(HTTPResponse(status: .ok))
            try await writer.write(ByteBuffer(string: "first"))
            for await _ in gate.stream { break }
            try await writer.write(ByteBuffer(string: "second"))
            try await writer.finish(trailers: nil)
        }
        let response = try await Self.context(callee).handle("Model").stream(ServeRequest(path: "/"))
        var pieces = response.body.makeAsyncIterator()
        #expect(try await pieces.next().map { String(buffer: $0) } == "first")
        gate.continuation.yield()
        var rest = ""
        while let piece = try await pieces.next() { rest += String(buffer: piece) }
        #expect(rest == "second")
    }

    @Test("letting the body go before its end cancels the call")
    func lettingGoCancels() async throws {
        let callee = Callee { _, writer in
            try await writer.writeHead(HTTPResponse(status: .ok))
            while true {
                try await writer.write(ByteBuffer(repeating: 0x61, count: 16 << 10))
                try await Task.sleep(for: .milliseconds(5))
            }
        }
        do {
            let response = try await Self.context(callee).handle("Model").stream(ServeRequest(path: "/"))
            var pieces = response.body.makeAsyncIterator()
            _ = try await pieces.next()
        }
        try await callee.waitForCancellation()
    }

    @Test("cancelling the caller while it waits for the head cancels the call")
    func callerCancelled() async throws {
        let callee = Callee { _, _ in try await Task.sleep(for: .seconds(60)) }
        let call = Task { try await Self.context(callee).handle("Model").call(ServeRequest(path: "/")) }
        while callee.calls.withLockedValue({ $0.isEmpty }) { try await Task.sleep(for: .milliseconds(5)) }
        call.cancel()
        try await callee.waitForCancellation()
        await #expect(throws: (any Error).self) { try await call.value }
    }

    @Test("an answer cut short after its head fails the reader of its body; an error before any head is thrown by the call")
    func cuts() async throws {
        struct Broke: Error {}
        let cut = Callee { _, writer in
            try await writer.writeHead(HTTPResponse(status: .ok))
            try await writer.write(ByteBuffer(string: "partial"))
            throw Broke()
        }
        await #expect(throws: HandleResponseCut.self) { _ = try await Self.context(cut).handle("Model").call(ServeRequest(path: "/")) }
        let failed = Callee { _, _ in throw Broke() }
        await #expect(throws: Broke.self) { _ = try await Self.context(failed).handle("Model").call(ServeRequest(path: "/")) }
        // Outside a node there is nothing to call.
        let alone = ReplicaContext(
            replicaID: "r", app: "a", deployment: "d", nodeID: "n", grant: ResourceSet(), gpuIDs: [], environment: [:], userConfig: nil)
        await #expect(throws: DeploymentError.self) { _ = try await alone.handle("Model").call(ServeRequest(path: "/")) }
    }

    @Test("the README's storyteller: a handle call, then server-sent events")
    func storyteller() async throws {
        struct Storyteller: Deployment {
            let model: DeploymentHandle
            init(context: ReplicaContext) { model = context.handle("Model") }
            func handle(_ request: ServeRequest) async throws -> ServeResponse {
                let answer = try await model.call(ServeRequest(path: "/generate?prompt=once"))
                guard answer.status == .ok else { return answer }
                let words = String(buffer: answer.body).split(separator: " ")
                return .eventStream { events in
                    for word in words { try await events.send(String(word), event: "word") }
                }
            }
        }
        let callee = Callee { request, writer in
            #expect(request.head.path == "/generate?prompt=once")
            try await writer.respond(HTTPResponse(status: .ok), body: ByteBuffer(string: "once upon\na"), trailers: nil)
        }
        let response = try await Storyteller(context: Self.context(callee)).handle(ServeRequest(path: "/"))
        #expect(response.headers[.contentType] == "text/event-stream" && response.headers[.contentLength] == nil)
        // The stream writes into a pipe here, as it would into the client's connection.
        let pipe = HTTPBodyPipe()
        let body = pipe.takeBody()
        try await response.stream?(ServeBodyWriter(PipeWriter(pipe: pipe)))
        pipe.finish()
        let text = String(buffer: try await body.collect(upTo: 1 << 20))
        #expect(text == "event: word\ndata: once\n\nevent: word\ndata: upon\ndata: a\n\n")
    }
}

/// A response writer whose body goes into a pipe.
struct PipeWriter: HTTPResponseWriter {
    let pipe: HTTPBodyPipe
    func respond(_ head: HTTPResponse, body: ByteBuffer?, trailers: HTTPFields?) async throws {
        if let body { try await self.pipe.write(body) }
    }
    func writeHead(_ head: HTTPResponse) async throws {}
    func write(_ chunk: ByteBuffer) async throws { try await self.pipe.write(chunk) }
    func finish(trailers: HTTPFields?) async throws { self.pipe.finish(trailers: trailers) }
}
