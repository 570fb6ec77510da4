import Foundation
import HTTPTypes
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

@testable import ServeWire

/// Resets, timeouts, GOAWAY, dead peers: each surfaces as a typed error on the streams it hits,
/// and nothing else is disturbed.
@Suite("HTTP/2 failures", .serialized)
struct HTTP2FailureTests {
    /// A handler that never answers until released.
    final class Gate: Sendable {
        private let stream: AsyncStream<Void>
        private let continuation: AsyncStream<Void>.Continuation
        init() { (self.stream, self.continuation) = AsyncStream.makeStream() }
        func wait() async { for await _ in self.stream { return } }
        func open() { self.continuation.yield(); self.continuation.finish() }
    }

    @Test("a request past its deadline fails with .timeout and the connection stays usable")
    func requestTimeout() async throws {
        let gate = Gate()
        let handlerDone = Gate()
        let handlerSawReset = NIOLockedValueBox(false)
        let server = try await HTTP2Server.bind(host: "127.0.0.1", port: 0) { request, writer in
            if request.head.path == "/stuck" {
                await gate.wait()
                // The client's reset (RST_STREAM CANCEL) cancels the handler's task: nobody
                // waits for this answer any more.
                handlerSawReset.withLockedValue { $0 = Task.isCancelled }
                handlerDone.open()
                try await writer.respond(HTTPResponse(status: .ok), body: ByteBuffer(string: "late"))
                return
            }
            try await writer.respond(HTTPResponse(status: .ok), body: ByteBuffer(string: "fine"))
        }
        let client = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.port)
        await #expect(throws: HTTP2Error.timeout) {
            _ = try await client.send(request(.get, "/stuck"), timeout: .milliseconds(200))
        }
        // Answered after the reset on the same connection: the server has processed the reset.
        let next = try await client.send(request(.get, "/other"))
        #expect(String(buffer: try await next.body.collect(upTo: 100)) == "fine")
        gate.open()
        await handlerDone.wait()
        #expect(handlerSawReset.withLockedValue { $0 }, "the stuck handler was not cancelled by the client's reset")
        await client.close()
        await server.close()
    }

    @Test("a stream reset by the server fails the client's body with .streamReset")
    func serverReset() async throws {
        let server = try await HTTP2Server.bind(host: "127.0.0.1", port: 0) { request, writer in
            guard request.head.path == "/reset" else {
                try await writer.respond(HTTPResponse(status: .ok))
                return
            }
            try await writer.writeHead(HTTPResponse(status: .ok))
            try await writer.write(ByteBuffer(string: "partial"))
            writer.reset(code: HTTP2ErrorCode.internalError)
        }
        let client = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.port)
        // The reset may overtake the head (nghttp2 drops frames queued for a reset stream), so
        // the failure can surface at the head or in the body: either way it is the reset.
        await #expect(throws: HTTP2Error.streamReset(code: HTTP2ErrorCode.internalError)) {
            let response = try await client.send(request(.get, "/reset"))
            _ = try await response.body.collect(upTo: 1 << 20)
        }
        let again = try await client.send(request(.get, "/fine"))
        #expect(again.head.status == .ok)
        await client.close()
        await server.close()
    }

    @Test("a handler that throws before answering gives a 500; after the head, a reset")
    func handlerErrors() async throws {
        struct Boom: Error {}
        let server = try await HTTP2Server.bind(host: "127.0.0.1", port: 0) { request, writer in
            if request.head.path == "/late" {
                try await writer.writeHead(HTTPResponse(status: .ok))
                try await writer.write(ByteBuffer(string: "half"))
            }
            throw Boom()
        }
        let client = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.port)
        let early = try await client.send(request(.get, "/early"))
        #expect(early.head.status == .internalServerError)
        await #expect(throws: HTTP2Error.streamReset(code: HTTP2ErrorCode.internalError)) {
            let late = try await client.send(request(.get, "/late"))
            _ = try await late.body.collect(upTo: 1 << 20)
        }
        await client.close()
        await server.close()
    }

    @Test("a killed server process fails every pending call on the connection promptly")
    func serverProcessKilled() async throws {
        let echo = try ChildProcess(try builtBinary("serve-wire-echo"), ["--port", "0", "--threads", "1"])
        let output = try await echo.waitForOutput(containing: "listening on")
        let port = try #require(output.split(separator: ":").last.flatMap { Int($0.prefix(while: \.isNumber)) })
        let client = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: port)

        // 20 streams mid-body: each has sent part of its body and is reading the echo.
        let streams = try await withThrowingTaskGroup(of: HTTP2ClientStream.self) { group in
            for index in 0..<20 {
                group.addTask {
                    let stream = try await client.openStream(request(.post, "/pending/\(index)"))
                    try await stream.write(ByteBuffer(string: "first part of \(index)"))
                    return stream
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        for stream in streams {
            let response = try await stream.response()
            var iterator = response.body.makeAsyncIterator()
            _ = try await iterator.next()
        }
        let started = ContinuousClock.now
        echo.kill()
        let errors = await withTaskGroup(of: (any Error)?.self) { group in
            for stream in streams {
                group.addTask {
                    do {
                        let response = try await stream.response()
                        for try await _ in response.body {}
                        return nil
                    } catch {
                        return error
                    }
                }
            }
            return await group.reduce(into: [(any Error)?]()) { $0.append($1) }
        }
        let elapsed = ContinuousClock.now - started
        #expect(errors.count == 20)
        for error in errors {
            #expect(error as? HTTP2Error == .connectionClosed, "got \(String(describing: error))")
        }
        #expect(elapsed < .seconds(5), "pending calls took \(elapsed) to fail")
        await #expect(throws: HTTP2Error.self) {
            _ = try await client.send(request(.get, "/after"))
        }
        #expect(!client.isAvailable)
    }

    @Test("a client that vanishes mid-stream fails the server handler's reads and writes")
    func clientVanishes() async throws {
        let failures = NIOLockedValueBox<[HTTP2Error]>([])
        let reading = Gate()
        let server = try await HTTP2Server.bind(host: "127.0.0.1", port: 0) { request, writer in
            do {
                try await writer.writeHead(HTTPResponse(status: .ok))
                reading.open()
                for try await chunk in request.body { try await writer.write(chunk) }
            } catch let error as HTTP2Error {
                failures.withLockedValue { $0.append(error) }
            }
        }
        let client = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.port)
        let stream = try await client.openStream(request(.post, "/vanish"))
        try await stream.write(ByteBuffer(string: "hello"))
        await reading.wait()
        await client.closeNow()
        // The handler ends by itself once the connection is gone; poll its record of that.
        let deadline = ContinuousClock.now + .seconds(10)
        while failures.withLockedValue({ $0.isEmpty }) && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(failures.withLockedValue { $0 } == [.connectionClosed])
        await server.close()
    }

    @Test("graceful shutdown refuses new streams but lets open ones finish")
    func gracefulShutdown() async throws {
        let gate = Gate()
        let entered = Gate()
        let server = try await HTTP2Server.bind(host: "127.0.0.1", port: 0) { request, writer in
            entered.open()
            await gate.wait()
            try await writer.respond(HTTPResponse(status: .ok), body: ByteBuffer(string: "finished"))
        }
        let client = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.port)
        let inFlight = try await client.openStream(request(.get, "/slow"), endStream: true)
        await entered.wait()
        async let shutdown: Void = server.shutdown(gracePeriod: .seconds(30))
        // The client learns of the GOAWAY; new streams on this connection are refused.
        let deadline = ContinuousClock.now + .seconds(10)
        while client.isAvailable && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(!client.isAvailable)
        do {
            _ = try await client.send(request(.get, "/new"))
            Issue.record("a new stream after GOAWAY should fail")
        } catch let error as HTTP2Error {
            #expect(error.isSafeToRetry, "got \(error)")
        }
        gate.open()
        let response = try await inFlight.response()
        #expect(String(buffer: try await response.body.collect(upTo: 100)) == "finished")
        await shutdown
        try await client.closeFuture.get()
    }

    @Test("an idle connection is closed after its idle timeout")
    func idleTimeout() async throws {
        var configuration = HTTP2Configuration()
        configuration.idleTimeout = .milliseconds(200)
        let server = try await startEchoServer(configuration: configuration)
        let client = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.port)
        let response = try await client.send(request(.get, "/once"))
        #expect(response.head.status == .ok)
        _ = try await response.body.collect(upTo: 100)
        let closed = Task { try await client.closeFuture.get() }
        let outcome = try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask { try await closed.value; return true }
            group.addTask { try await Task.sleep(for: .seconds(20)); return false }
            let first = try await group.next()!
            group.cancelAll()
            return first
        }
        #expect(outcome, "the idle connection was not closed")
        await server.close()
    }

    @Test("reacting to a response on the event loop may start new streams (no re-entrancy into nghttp2)")
    func reentrancy() async throws {
        let server = try await startEchoServer()
        let client = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.port)
        let first = try await client.openStream(request(.get, "/first"), endStream: true)
        let connection = client.connection
        // This callback runs on the event loop while the connection is handling the frames that
        // completed the first response; it opens a stream and flushes from right there.
        let second: EventLoopFuture<HTTP2Response> = first.responseFuture.flatMapThrowing { _ in
            let opened = try connection.value.openClientStream(
                head: request(.get, "/second"),
                body: nil,
                endStream: true,
                timeout: nil
            )
            connection.value.flush()
            return opened.response
        }.flatMap { $0 }
        let response = try await second.get()
        #expect(String(buffer: try await response.body.collect(upTo: 100)) == "/second")
        await client.close()
        await server.close()
    }
}
